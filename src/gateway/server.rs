//! Process wiring for `portcullis serve`: opens the gateway from the data directory,
//! starts the background runtime, the bundled store's upkeep and the pingora server, and
//! shuts down on a signal.
//!
//! Runtimes: pingora's `Server::run` owns its own runtimes (one per service) and blocks
//! until shutdown; it cannot run inside another runtime. Tokio work that must outlive
//! requests — the policy reloader, the control-plane follower, storage GC and upload
//! expiry — runs on a dedicated runtime owned here, alive until
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
use pingora::apps::HttpServerOptions;
use pingora::protocols::http::v2::server::{H2Options, default_h2_options};
use pingora::proxy::http_proxy;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;

use super::config::{Config, Http2, TlsMode};
use super::connections::{self, Connections, Tracker};
use super::control::{self, AdminPlacement};
use super::direct::{Direct, H2Settings};
use super::proxy::{Listener, Proxy};
use super::tls::{self, TlsFiles};
use super::{GatewayOptions, Opened};
use crate::audit::Audit;
use crate::gateway::Gateway;
use crate::identity::AdminPasswordSource;

/// Lifetime of issued bearer tokens.
const TOKEN_TTL: Duration = Duration::from_secs(300);
/// How long the first listener may take to accept connections before startup fails.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 flow-control windows. The protocol's 64 KiB default makes a blob upload wait
/// for a window update every 64 KiB; 1 MiB per stream keeps a push streaming, and the
/// connection window bounds what one client can have buffered here across streams.
const H2_STREAM_WINDOW: u32 = 1024 * 1024;
const H2_CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

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
pub fn prepare(config: Config, audit: Audit) -> anyhow::Result<Prepared> {
    let opened = Gateway::open(&GatewayOptions {
        data_dir: config.data_dir.clone(),
        policy_dirs: config.policy_dirs.clone(),
        admin_password: config.admin_password.clone(),
        upstream: config.upstream.clone(),
        service: config.service.clone(),
        token_ttl: TOKEN_TTL,
        storage: config.storage.clone(),
        control_plane: config.control_plane.clone(),
        control_plane_max_staleness: config.control_plane_max_staleness,
        audit,
        trust_key_passphrase: config.trust_key_passphrase.clone(),
        login_throttle: config.login_throttle,
        max_upload_sessions: config.max_upload_sessions,
    })?;
    if let crate::trust::kek::Unlocked::Generated(path) = &opened.trust_kek {
        tracing::warn!(
            passphrase_file = %path.display(),
            "no trust key passphrase was given: generated one beside the data (mode 0600); \
             the server-held trust keys are sealed with it, so copies of control.redb alone \
             do not reveal them. Keep the passphrase elsewhere with `portcullis trust \
             rotate-kek` and --trust-key-passphrase-file"
        );
    }
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
            // A shared control plane: other gateways' writes, and the staleness clock.
            if let Some(follower) = gw.store.follower() {
                tokio::spawn(follower);
            }
            gw.trust.spawn_watch();
        }
        if let Some(registry) = &opened.bundled {
            // The store's own upkeep (e.g. expiring abandoned uploads); requests reach
            // it in process through the proxy.
            let _guard = background.enter();
            registry.start_background();
        }

        let mut server = Server::new_with_opt_and_conf(None, server_conf(&config));
        server.bootstrap();
        let http2 = config.http2;
        // One tracker for both listeners: they share the descriptor budget.
        let tracker = Tracker::new(config.limits.clone(), config.trusted_proxies.clone());
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
            config.trusted_proxies.clone(),
        );
        add_service(
            &mut server,
            proxy,
            "portcullis gateway",
            listen,
            tls.as_ref(),
            http2,
            &tracker,
        )?;
        if let Some(admin_addr) = admin_listen {
            let proxy = Proxy::new(
                Arc::clone(&gw),
                control::admin_router(&gw),
                Listener::Admin,
                tls.is_some(),
                config.public_url.clone(),
                config.trusted_proxies.clone(),
            );
            add_service(
                &mut server,
                proxy,
                "portcullis admin",
                admin_addr,
                tls.as_ref(),
                http2,
                &tracker,
            )?;
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

/// Adds a listener's pingora service. Only requests for an upstream are proxied, so
/// only then does it run pingora's proxy (`HttpProxy`); with the bundled store every
/// response is the gateway's own, and [`Direct`] serves it without the proxy layer.
/// Both speak HTTP/2 beside HTTP/1.1 when it is enabled, and both run under the
/// connection limits ([`Connections`]).
fn add_service(
    server: &mut Server,
    proxy: Proxy,
    name: &str,
    addr: SocketAddr,
    tls: Option<&TlsFiles>,
    http2: Http2,
    tracker: &Arc<Tracker>,
) -> anyhow::Result<()> {
    fn listen<A>(
        service: &mut Service<A>,
        addr: SocketAddr,
        tls: Option<&TlsFiles>,
        http2: Http2,
    ) -> anyhow::Result<()> {
        match tls {
            Some(files) => {
                let mut settings = tls::settings(files)?;
                if http2.enabled {
                    // ALPN offers h2 first, http/1.1 still for clients that ask for it.
                    settings.enable_h2();
                }
                service.add_tls_with_settings(&addr.to_string(), None, settings)
            }
            None => service.add_tcp(&addr.to_string()),
        }
        Ok(())
    }
    let limits = tracker.limits().clone();
    let options = http2.enabled.then(|| H2Settings {
        server: h2c_server_options(limits.keepalive_timeout),
        h2: h2_options(http2),
    });
    if proxy.proxies() {
        let mut app = http_proxy(&server.configuration, proxy);
        if let Some(options) = options {
            app.server_options = Some(options.server);
            app.h2_options = Some(options.h2);
        }
        let app = connections::Prepared::new(app, limits);
        let mut service = Service::new(name.to_owned(), Connections::new(app, Arc::clone(tracker)));
        listen(&mut service, addr, tls, http2)?;
        server.add_service(service);
    } else {
        let app = Direct::new(proxy, options, limits);
        let mut service = Service::new(name.to_owned(), Connections::new(app, Arc::clone(tracker)));
        listen(&mut service, addr, tls, http2)?;
        server.add_service(service);
    }
    Ok(())
}

/// Prior-knowledge h2c on plain TCP (pingora peeks for the connection preface and keeps
/// HTTP/1.1 otherwise; on TLS, ALPN decides), and the idle timeout of an HTTP/2
/// connection without streams (the keep-alive timeout).
fn h2c_server_options(idle: Duration) -> HttpServerOptions {
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    options.h2_idle_timeout = Some(idle);
    options
}

/// The stream limit and flow-control windows of an HTTP/2 connection.
fn h2_options(http2: Http2) -> H2Options {
    // pingora's defaults bound the decoded header list (64 KiB) too.
    let mut options = default_h2_options();
    options
        .max_concurrent_streams(http2.max_concurrent_streams)
        .initial_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW);
    options
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
