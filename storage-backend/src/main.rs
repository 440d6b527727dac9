//! The `portcullis-storage` binary: `serve` runs the registry, `gc` collects
//! garbage offline, `migrate` copies a data directory to S3 + PostgreSQL. Blobs live in the data directory, or on S3 with `--storage
//! s3://BUCKET[/PREFIX]` (endpoint, region and credentials from the AWS SDK variables or
//! the `--s3-*` flags).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use axum::serve::ListenerExt;
use clap::{Parser, Subcommand};
use portcullis_storage::cli::{BlobArgs, MetadataArg, MigrateArgs, migrate};
use portcullis_storage::{Registry, StorageConfig, router};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "portcullis-storage",
    version,
    about = "OCI distribution-spec v1.1 registry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry API.
    Serve {
        #[arg(long, default_value = "127.0.0.1:5000")]
        listen: SocketAddr,
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// Also serve on this unix socket.
        #[arg(long)]
        unix_socket: Option<PathBuf>,
        /// Seconds between background GC passes; 0 disables.
        #[arg(long, default_value_t = 3600)]
        gc_interval_seconds: u64,
        #[arg(long, default_value_t = 3600)]
        gc_grace_seconds: u64,
        #[arg(long, default_value_t = 24 * 3600)]
        upload_expiry_seconds: u64,
        #[arg(long, default_value_t = 4 * 1024 * 1024)]
        max_manifest_bytes: usize,
        #[command(flatten)]
        metadata: MetadataArg,
        #[command(flatten)]
        blobs: BlobArgs,
    },
    /// Collect garbage (with local metadata, offline: the server must not be running on
    /// DIR; with PostgreSQL, online beside running servers).
    Gc {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 3600)]
        grace_seconds: u64,
        /// Report what would be deleted without deleting it.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        metadata: MetadataArg,
        #[command(flatten)]
        blobs: BlobArgs,
    },
    /// Copy the registry in DIR (stopped) to S3 + PostgreSQL, verifying every digest;
    /// rerun after an interruption to finish (what is already there is skipped).
    /// Exits 1 if anything could not be copied.
    Migrate(MigrateArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(Cli::parse().command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            listen,
            data_dir,
            unix_socket,
            gc_interval_seconds,
            gc_grace_seconds,
            upload_expiry_seconds,
            max_manifest_bytes,
            metadata,
            blobs,
        } => {
            let mut config = blobs.config(data_dir)?;
            config.metadata = metadata.location;
            config.gc_interval =
                (gc_interval_seconds > 0).then(|| Duration::from_secs(gc_interval_seconds));
            config.gc_grace = Duration::from_secs(gc_grace_seconds);
            config.upload_expiry = Duration::from_secs(upload_expiry_seconds);
            config.max_manifest_bytes = max_manifest_bytes;
            serve(config, listen, unix_socket).await
        }
        Command::Gc {
            data_dir,
            grace_seconds,
            dry_run,
            metadata,
            blobs,
        } => {
            let mut config = blobs.config(data_dir)?;
            config.metadata = metadata.location;
            let reg = Registry::connect(config).await?;
            let r = reg.gc(Duration::from_secs(grace_seconds), dry_run).await?;
            let verb = if dry_run { "would remove" } else { "removed" };
            println!(
                "gc: {verb} {} manifests, {} blob links, {} blobs, {} repositories, {} orphaned blob files",
                r.manifests,
                r.links,
                r.blobs.len(),
                r.repositories,
                r.orphan_files
            );
            Ok(())
        }
        Command::Migrate(args) => migrate(args).await,
    }
}

async fn serve(
    config: StorageConfig,
    listen: SocketAddr,
    unix_socket: Option<PathBuf>,
) -> anyhow::Result<()> {
    let reg = Registry::connect(config).await?;
    reg.start_background();
    let app = router(reg);
    let tcp = tokio::net::TcpListener::bind(listen).await?;
    let unix = match &unix_socket {
        Some(path) => {
            // A stale socket file from an earlier run would make bind fail.
            let _ = std::fs::remove_file(path);
            Some(tokio::net::UnixListener::bind(path)?)
        }
        None => None,
    };
    let addr = tcp.local_addr()?;
    let mut out = std::io::stdout();
    writeln!(out, "listening on http://{addr}")?;
    out.flush()?;
    tracing::info!(%addr, unix_socket = ?unix_socket, "serving");

    let shutdown = CancellationToken::new();
    tokio::spawn(signal_watch(shutdown.clone()));
    // Without TCP_NODELAY, Nagle holds back the tail of a small response until the
    // client's delayed ACK (~40 ms per small blob GET).
    let tcp = tcp.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "setting TCP_NODELAY");
        }
    });
    let tcp_server =
        axum::serve(tcp, app.clone()).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let servers = async {
        match unix {
            Some(u) => {
                let unix_server =
                    axum::serve(u, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
                let (a, b) = tokio::join!(tcp_server, unix_server);
                a.and(b)
            }
            None => tcp_server.await,
        }
    };
    // Graceful, but bounded: a stalled client cannot hold the process forever.
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    };
    tokio::select! {
        r = servers => r?,
        () = grace => tracing::warn!("connections still open after 10s; exiting"),
    }
    if let Some(path) = unix_socket {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("stopped");
    Ok(())
}

async fn signal_watch(token: CancellationToken) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutting down");
    token.cancel();
}
