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
use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};
use portcullis_storage::meta::MetadataLocation;
use portcullis_storage::migrate::migrate;
use portcullis_storage::s3::{S3Config, S3Settings};
use portcullis_storage::{Registry, StorageConfig, Stores, router};
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

/// Where blobs live: the data directory unless `--storage` names a bucket.
#[derive(Args)]
struct BlobArgs {
    /// Blobs in this bucket (s3://BUCKET[/PREFIX]) instead of DATA_DIR/blobs; metadata
    /// stays in the data directory. Credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.
    #[arg(long, value_name = "s3://BUCKET[/PREFIX]", env = "PORTCULLIS_STORAGE")]
    storage: Option<String>,
    /// S3 endpoint (http[s]://HOST[:PORT]) [default: AWS_ENDPOINT_URL, else AWS].
    #[arg(long, value_name = "URL", env = "PORTCULLIS_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// S3 region [default: AWS_REGION; us-east-1 with an endpoint].
    #[arg(long, value_name = "REGION", env = "PORTCULLIS_S3_REGION")]
    s3_region: Option<String>,
    /// Path-style requests (endpoint/bucket/key) rather than virtual-hosted [default: true].
    #[arg(long, value_name = "BOOL", env = "PORTCULLIS_S3_PATH_STYLE", value_parser = BoolishValueParser::new())]
    s3_path_style: Option<bool>,
    /// Blob GETs redirect to a pre-signed S3 URL valid this long; 0 streams them [default: 0].
    #[arg(long, value_name = "SECONDS", env = "PORTCULLIS_S3_REDIRECT_SECONDS")]
    s3_redirect_seconds: Option<u64>,
}

impl BlobArgs {
    fn config(&self, data_dir: PathBuf) -> anyhow::Result<StorageConfig> {
        let mut config = StorageConfig::new(data_dir);
        if let Some(url) = &self.storage {
            let settings = S3Settings {
                endpoint: self.s3_endpoint.clone(),
                region: self.s3_region.clone(),
                path_style: self.s3_path_style,
                redirect_seconds: self.s3_redirect_seconds,
            };
            config.s3 = Some(S3Config::resolve(url, &settings)?);
        }
        Ok(config)
    }
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
    Migrate {
        #[arg(long)]
        data_dir: PathBuf,
        #[command(flatten)]
        metadata: MetadataArg,
        #[command(flatten)]
        blobs: BlobArgs,
    },
}

#[derive(clap::Args)]
struct MetadataArg {
    /// Where the metadata lives: `local` (meta.redb in the data directory) or a
    /// PostgreSQL URL, postgres://USER:PASSWORD@HOST:PORT/DATABASE, shared by any number
    /// of processes.
    #[arg(
        long = "metadata",
        value_name = "local|postgres://...",
        env = "PORTCULLIS_METADATA",
        hide_env_values = true,
        default_value = "local",
        value_parser = MetadataLocation::parse
    )]
    location: MetadataLocation,
}

/// What `migrate` reports that it could not copy.
#[derive(Debug, thiserror::Error)]
#[error("migrate: {0} items not copied (listed above); fix them and run migrate again")]
struct NotCopied(usize);

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
        Command::Migrate {
            data_dir,
            metadata,
            blobs,
        } => {
            if blobs.storage.is_none() || metadata.location == MetadataLocation::Local {
                anyhow::bail!(
                    "migrate copies to S3 and PostgreSQL: give --storage s3://BUCKET[/PREFIX] \
                     and --metadata postgres://..."
                );
            }
            let mut config = blobs.config(data_dir.clone())?;
            config.metadata = metadata.location;
            let target = Stores::connect(&config).await?;
            let r = migrate(&data_dir, &target).await?;
            println!(
                "migrate: blobs {} copied ({} bytes), {} already there; blob links {} copied, \
                 {} already there; manifests {} copied (with {} tags), {} already there; \
                 {} failed",
                r.blobs_copied,
                r.bytes_copied,
                r.blobs_skipped,
                r.links_copied,
                r.links_skipped,
                r.manifests_copied,
                r.tags_copied,
                r.manifests_skipped,
                r.failures.len()
            );
            for failure in &r.failures {
                println!("not copied: {failure}");
            }
            if r.failures.is_empty() {
                Ok(())
            } else {
                Err(NotCopied(r.failures.len()).into())
            }
        }
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
