//! `portcullis serve`: runs the registry on one listener: `/admin/v1/...` is the admin
//! API, everything else the bundled storage backend. Data lives in `--data-dir`:
//! `control.redb` (identity), `admin-password` (when generated), and the storage files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use clap::Args;
use portcullis_storage::{Registry, StorageConfig};

use crate::admin::{self, AdminState};
use crate::identity::{AdminAccount, AdminPasswordSource, IdentityStore};
use crate::policy::PolicyEngine;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5000", env = "PORTCULLIS_LISTEN")]
    pub listen: String,
    /// Directory for all data (metadata, blobs, keys).
    #[arg(long, default_value = "./data", env = "PORTCULLIS_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Extra directories of `*.cedar` policies (besides `./policies` when present).
    #[arg(long = "policy-dir", value_name = "DIR")]
    pub policy_dirs: Vec<PathBuf>,
    /// The admin account's password; generated and stored in the data directory if unset.
    #[arg(long, env = "PORTCULLIS_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Ignore a second initialisation (tests may call in-process).
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

fn policy_dirs(extra: &[PathBuf]) -> Vec<PathBuf> {
    let default = Path::new("policies");
    let mut dirs = Vec::new();
    if default.is_dir() {
        dirs.push(default.to_path_buf());
    }
    dirs.extend(extra.iter().cloned());
    dirs
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let data_dir = &args.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data directory `{}`", data_dir.display()))?;
    let store = IdentityStore::open(&data_dir.join("control.redb"))
        .context("opening the identity store")?;
    let (admin, source) = AdminAccount::open(data_dir, args.admin_password.as_deref())?;
    if let AdminPasswordSource::Generated { password, path } = &source {
        eprintln!(
            "\n================ PORTCULLIS ADMIN PASSWORD (shown once) ================\n\
             user: admin\npassword: {password}\n\
             stored in {} (mode 0600); set PORTCULLIS_ADMIN_PASSWORD to choose your own\n\
             =========================================================================\n",
            path.display()
        );
    }
    let engine = Arc::new(PolicyEngine::load(&policy_dirs(&args.policy_dirs))?);
    engine.spawn_reloader();
    let registry = Registry::open(StorageConfig::new(data_dir.clone()))
        .context("opening the storage backend")?;
    registry.start_background();

    let state = AdminState {
        store,
        admin: Arc::new(admin),
        engine,
    };
    let app = Router::new()
        .merge(admin::router(state))
        .fallback_service(portcullis_storage::router(registry));

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding `{}`", args.listen))?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    std::io::stdout().flush()?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving")?;
    tracing::info!("shut down");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
