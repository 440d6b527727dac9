//! Process wiring for `portcullis serve`: opens the gateway from the data directory,
//! starts the background runtime, the bundled store's upkeep and the pingora server, and
//! shuts down on a signal.
//!
//! Runtimes: pingora's `Server::run` owns its own runtimes (one per service) and blocks
//! until shutdown; it cannot run inside another runtime. Tokio work that must outlive
//! requests — the policy reloader, storage GC and upload expiry — runs on a dedicated runtime owned here, alive until
//! pingora returns.
//!
//! Shutdown: SIGTERM stops accepting, lets in-flight requests finish for the grace
//! period (`shutdown_grace_seconds`), then exits; SIGINT exits at once (pingora's
//! handling).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pingora::proxy::http_proxy_service_with_name;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};

use super::config::{Config, TlsMode};
use super::control::{self, AdminPlacement};
use super::proxy::{Listener, Proxy};
use super::tls::{self, TlsFiles};
use super::{GatewayOptions, Opened};
use crate::gateway::Gateway;
use crate::identity::AdminPasswordSource;

/// Lifetime of issued bearer tokens.
const TOKEN_TTL: Duration = Duration::from_secs(300);
/// How long the first listener may take to accept connections before startup fails.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A gateway opened and its listen addresses resolved, ready to [`run`](Prepared::run).
pub struct Prepared {
    config: Config,
    opened: Opened,
    listen: SocketAddr,
    admin_listen: Option<SocketAddr>,
    tls: Option<TlsFiles>,
}

/// Opens everything in the data directory and checks the listen addresses and TLS
/// files, so configuration mistakes are reported before anything starts.
pub fn prepare(config: Config) -> anyhow::Result<Prepared> {
    let opened = Gateway::open_with_storage(
        &GatewayOptions {
            data_dir: config.data_dir.clone(),
            policy_dirs: config.policy_dirs.clone(),
            admin_password: config.admin_password.clone(),
            upstream: config.upstream.clone(),
            service: config.service.clone(),
            token_ttl: TOKEN_TTL,
        },
        &config.storage,
    )?;
    opened
        .gateway
        .engine
        .set_anonymous_pull(config.anonymous_pull);
    opened
        .gateway
        .trust
        .set_key_algorithm(config.trust_key_algorithm);
    let listen = resolve(&config.listen)?;
    let admin_listen = config.admin_listen.as_deref().map(resolve).transpose()?;
    let tls = match &config.tls {
        TlsMode::Off => None,
        TlsMode::Files { cert, key } => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: None,
        }),
        // The listen host as written (a name stays a name) and the public URL's host.
        TlsMode::SelfSigned => Some(tls::self_signed(
            &config.data_dir,
            &tls::subject_names(
                tls::listen_host(&config.listen),
                config.public_url.as_deref().and_then(tls::url_host),
                tls::machine_host_name().as_deref(),
            ),
        )?),
    };
    if let Some(files) = &tls {
        // Checked now: pingora panics on files it cannot load.
        tls::settings(files)?;
    }
    Ok(Prepared {
        config,
        opened,
        listen,
        admin_listen,
        tls,
    })
}

/// Binds `addr` once to check it is free and to turn port 0 into a concrete port.
/// Pingora binds it again a moment later (with `SO_REUSEADDR`).
fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("binding `{addr}`"))?;
    Ok(listener.local_addr()?)
}

impl Prepared {
    /// How the admin password was obtained (the caller shows a generated one once).
    pub fn admin_password(&self) -> &AdminPasswordSource {
        &self.opened.admin_password
    }

    /// Runs until SIGTERM/SIGINT. Prints `listening on <scheme>://<addr>` as the first
    /// line of stdout once the listener accepts connections.
    pub fn run(self) -> anyhow::Result<()> {
        let Prepared {
            config,
            opened,
            listen,
            admin_listen,
            tls,
        } = self;
        let gw = opened.gateway;
        let background = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("portcullis-bg")
            .enable_all()
            .build()
            .context("starting the background runtime")?;
        {
            let _guard = background.enter();
            gw.engine.spawn_reloader();
        }
        if let Some(registry) = &opened.bundled {
            // The store's own upkeep (e.g. expiring abandoned uploads); requests reach
            // it in process through the proxy.
            let _guard = background.enter();
            registry.start_background();
        }

        let mut server = Server::new_with_opt_and_conf(None, server_conf(&config));
        server.bootstrap();
        let settings = |files: &TlsFiles| tls::settings(files).map_err(anyhow::Error::from);
        let main_listener = Listener::Main {
            admin_api: admin_listen.is_none(),
        };
        let placement = match main_listener {
            Listener::Main { admin_api: true } => AdminPlacement::Included,
            _ => AdminPlacement::Excluded,
        };
        let proxy = Proxy::new(
            Arc::clone(&gw),
            control::app(Arc::clone(&gw), placement),
            main_listener,
            tls.is_some(),
            config.public_url.clone(),
        );
        let mut service =
            http_proxy_service_with_name(&server.configuration, proxy, "portcullis gateway");
        match &tls {
            Some(files) => {
                service.add_tls_with_settings(&listen.to_string(), None, settings(files)?)
            }
            None => service.add_tcp(&listen.to_string()),
        }
        server.add_service(service);
        if let Some(admin_addr) = admin_listen {
            let proxy = Proxy::new(
                Arc::clone(&gw),
                control::admin_router(&gw),
                Listener::Admin,
                tls.is_some(),
                config.public_url.clone(),
            );
            let mut service =
                http_proxy_service_with_name(&server.configuration, proxy, "portcullis admin");
            match &tls {
                Some(files) => {
                    service.add_tls_with_settings(&admin_addr.to_string(), None, settings(files)?)
                }
                None => service.add_tcp(&admin_addr.to_string()),
            }
            server.add_service(service);
        }

        let scheme = if tls.is_some() { "https" } else { "http" };
        let ca = tls.as_ref().and_then(|t| t.ca.clone());
        std::thread::Builder::new()
            .name("portcullis-ready".into())
            .spawn(move || announce(scheme, listen, admin_listen, ca.as_deref()))
            .context("starting the readiness thread")?;

        server.run(RunArgs::default());

        background.shutdown_timeout(Duration::from_secs(1));
        tracing::info!("shut down");
        Ok(())
    }
}

/// Pingora settings: one worker thread per core, the configured grace period, and
/// pid/upgrade files in the data directory rather than `/tmp`.
fn server_conf(config: &Config) -> ServerConf {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    ServerConf {
        threads,
        grace_period_seconds: Some(config.shutdown_grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: config.data_dir.join("portcullis.pid").display().to_string(),
        upgrade_sock: config.data_dir.join("upgrade.sock").display().to_string(),
        ..ServerConf::default()
    }
}

/// Waits until the listener accepts connections, then prints where it is (the first
/// stdout line, which scripts and tests read). Exits the process when it never does.
fn announce(scheme: &str, listen: SocketAddr, admin: Option<SocketAddr>, ca: Option<&Path>) {
    let deadline = Instant::now() + READY_TIMEOUT;
    while TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            eprintln!("error: the gateway did not start listening on {listen}");
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = std::io::stdout().lock();
    let mut lines = vec![format!("listening on {scheme}://{listen}")];
    if let Some(admin) = admin {
        lines.push(format!("admin API on {scheme}://{admin}"));
    }
    if let Some(ca) = ca {
        lines.push(format!(
            "self-signed TLS: clients trust {} (portcullis --ca-cert)",
            ca.display()
        ));
    }
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}
