//! `portcullis serve`: runs the registry gateway (see [`crate::gateway::server`]).
//! Flags and their environment variables override the `--config` TOML file
//! (precedence: flag > environment > file > default; [`crate::gateway::config`]).
//! Data lives in `--data-dir`: `control.redb` (identity), `admin-password` (when
//! generated), the token-signing key, `tls/` (self-signed mode) and the bundled storage.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use clap::builder::BoolishValueParser;
use portcullis_storage::cli::BlobArgs;
use portcullis_storage::s3::S3Settings;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::audit::Audit;
use crate::gateway::config::{Config, FileConfig, LogFormat, Overrides};
use crate::gateway::connections::HandshakeLog;
use crate::gateway::server;
use crate::identity::AdminPasswordSource;
use crate::trust::kek::PassphraseSource;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (see deploy/portcullis.toml); flags and environment win.
    #[arg(long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:5000].
    #[arg(long, env = "PORTCULLIS_LISTEN")]
    pub listen: Option<String>,
    /// Directory for all data (metadata, blobs, keys) [default: ./data].
    #[arg(long, env = "PORTCULLIS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Forward to this registry (http[s]://host[:port]) instead of the bundled backend.
    #[arg(long, value_name = "URL", env = "PORTCULLIS_UPSTREAM")]
    pub upstream: Option<String>,
    /// Serve the admin API on this address only (it answers 404 on --listen then).
    #[arg(long, value_name = "ADDR", env = "PORTCULLIS_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Extra directories of `*.cedar` policies (besides `./policies` when present); repeat
    /// the flag for several (the variable names one).
    #[arg(long = "policy-dir", value_name = "DIR", env = "PORTCULLIS_POLICY_DIR")]
    pub policy_dirs: Vec<PathBuf>,
    /// The admin account's password; generated and stored in the data directory if unset.
    #[arg(long, env = "PORTCULLIS_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// The URL clients reach the gateway at (token realm); default: from each request.
    #[arg(long, value_name = "URL", env = "PORTCULLIS_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The `service` named in challenges and tokens [default: portcullis].
    #[arg(long, env = "PORTCULLIS_SERVICE")]
    pub service: Option<String>,
    /// Let anonymous clients pull (BOOL: true/false, 1/0, yes/no, on/off).
    #[arg(long, env = "PORTCULLIS_ANONYMOUS_PULL", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub anonymous_pull: Option<bool>,
    /// Seconds in-flight requests get after SIGTERM [default: 5].
    #[arg(
        long,
        value_name = "SECONDS",
        env = "PORTCULLIS_SHUTDOWN_GRACE_SECONDS"
    )]
    pub shutdown_grace_seconds: Option<u64>,
    /// PEM certificate chain for TLS (with --tls-key).
    #[arg(long, value_name = "FILE", env = "PORTCULLIS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (with --tls-cert).
    #[arg(long, value_name = "FILE", env = "PORTCULLIS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Generate (once) a private CA and certificate in <data-dir>/tls/ and serve HTTPS.
    #[arg(long, env = "PORTCULLIS_TLS_SELF_SIGNED", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub tls_self_signed: Option<bool>,
    /// Seconds between the bundled store's background GC passes; 0 disables [default: 3600].
    #[arg(long, value_name = "SECONDS", env = "PORTCULLIS_GC_INTERVAL_SECONDS")]
    pub gc_interval_seconds: Option<u64>,
    /// Unreferenced content younger than this is never collected [default: 3600].
    #[arg(long, value_name = "SECONDS", env = "PORTCULLIS_GC_GRACE_SECONDS")]
    pub gc_grace_seconds: Option<u64>,
    /// Upload sessions idle for longer are removed [default: 86400].
    #[arg(long, value_name = "SECONDS", env = "PORTCULLIS_UPLOAD_EXPIRY_SECONDS")]
    pub upload_expiry_seconds: Option<u64>,
    /// Where the bundled store's metadata lives: `local` (meta.redb in the data
    /// directory) or postgres://USER:PASSWORD@HOST:PORT/DATABASE [default: local].
    #[arg(
        long,
        value_name = "local|postgres://...",
        env = "PORTCULLIS_METADATA",
        hide_env_values = true
    )]
    pub metadata: Option<String>,
    /// Where tokens, scope maps, policies, token-signing keys and trust data live:
    /// `embedded` (control.redb in the data directory) or
    /// postgres://USER:PASSWORD@HOST:PORT/DATABASE, shared by every gateway [default: embedded].
    #[arg(
        long,
        value_name = "embedded|postgres://...",
        env = "PORTCULLIS_CONTROL_PLANE",
        hide_env_values = true
    )]
    pub control_plane: Option<String>,
    /// With a postgres:// control plane: how long a gateway that cannot reach it keeps
    /// deciding from its last snapshot before refusing requests with 503 [default: 30].
    #[arg(
        long,
        value_name = "SECONDS",
        env = "PORTCULLIS_CONTROL_PLANE_MAX_STALENESS_SECONDS"
    )]
    pub control_plane_max_staleness_seconds: Option<u64>,
    /// Larger manifests are refused [default: 4194304].
    #[arg(long, value_name = "BYTES", env = "PORTCULLIS_MAX_MANIFEST_BYTES")]
    pub max_manifest_bytes: Option<usize>,
    /// Where blobs live (`--storage s3://…` and how to reach the bucket), the same flags
    /// as `portcullis-storage serve` and `migrate`.
    #[command(flatten)]
    pub blobs: BlobArgs,
    /// Log lines as text or as JSON objects [default: text]; RUST_LOG sets the level.
    #[arg(long, value_enum, ignore_case = true, env = "PORTCULLIS_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Where audit records (JSON lines) go: stderr, stdout, a file path, or off [default:
    /// stderr]. No log level silences them.
    #[arg(
        long,
        value_name = "stderr|stdout|FILE|off",
        env = "PORTCULLIS_AUDIT_LOG"
    )]
    pub audit_log: Option<String>,
    /// Proxies (addresses or CIDR ranges, comma-separated) whose X-Forwarded-For,
    /// Forwarded and X-Forwarded-Proto/-Host are believed [default: none].
    #[arg(
        long,
        value_name = "CIDR[,CIDR...]",
        value_delimiter = ',',
        env = "PORTCULLIS_TRUSTED_PROXIES"
    )]
    pub trusted_proxies: Option<Vec<String>>,
    /// File holding the passphrase that encrypts the server-held trust keys at rest
    /// [default: <data-dir>/trust-key-passphrase, generated on a fresh install].
    #[arg(
        long,
        value_name = "FILE",
        env = "PORTCULLIS_TRUST_KEY_PASSPHRASE_FILE"
    )]
    pub trust_key_passphrase_file: Option<PathBuf>,
    /// The passphrase itself, from the environment only (a flag would show in `ps`).
    #[arg(
        long,
        hide = true,
        env = "PORTCULLIS_TRUST_KEY_PASSPHRASE",
        hide_env_values = true
    )]
    pub trust_key_passphrase: Option<String>,
    /// A request head must be complete this many seconds after its first byte [default: 20].
    #[arg(
        long,
        value_name = "SECONDS",
        env = "PORTCULLIS_HEADER_TIMEOUT_SECONDS"
    )]
    pub header_timeout_seconds: Option<u64>,
    /// Connections idle between requests this long are closed [default: 60].
    #[arg(
        long,
        value_name = "SECONDS",
        env = "PORTCULLIS_KEEPALIVE_TIMEOUT_SECONDS"
    )]
    pub keepalive_timeout_seconds: Option<u64>,
    /// Longest a request-body read or response write may wait for the client [default: 60].
    #[arg(long, value_name = "SECONDS", env = "PORTCULLIS_BODY_TIMEOUT_SECONDS")]
    pub body_timeout_seconds: Option<u64>,
    /// Larger request heads are refused with 431 [default: 65536].
    #[arg(long, value_name = "BYTES", env = "PORTCULLIS_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Open connections per client address; trusted proxies are exempt [default: 256].
    #[arg(long, value_name = "N", env = "PORTCULLIS_MAX_CONNECTIONS_PER_CLIENT")]
    pub max_connections_per_client: Option<usize>,
    /// Open connections in all; at the cap the oldest idle one is closed; 0: the
    /// descriptor limit less 256 [default: 0].
    #[arg(long, value_name = "N", env = "PORTCULLIS_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Failed logins per user name or client address within the window before 429s
    /// [default: 10].
    #[arg(long, value_name = "N", env = "PORTCULLIS_MAX_FAILED_LOGINS")]
    pub max_failed_logins: Option<u32>,
    /// The failed-login window [default: 300].
    #[arg(
        long,
        value_name = "SECONDS",
        env = "PORTCULLIS_FAILED_LOGIN_WINDOW_SECONDS"
    )]
    pub failed_login_window_seconds: Option<u64>,
    /// Blob upload sessions one principal may have open at once [default: 64].
    #[arg(long, value_name = "N", env = "PORTCULLIS_MAX_UPLOAD_SESSIONS")]
    pub max_upload_sessions: Option<usize>,
}

impl ServeArgs {
    fn overrides(self) -> Overrides {
        Overrides {
            listen: self.listen,
            data_dir: self.data_dir,
            upstream: self.upstream,
            admin_listen: self.admin_listen,
            policy_dirs: self.policy_dirs,
            admin_password: self.admin_password,
            public_url: self.public_url,
            service: self.service,
            anonymous_pull: self.anonymous_pull,
            shutdown_grace_seconds: self.shutdown_grace_seconds,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            tls_self_signed: self.tls_self_signed,
            gc_interval_seconds: self.gc_interval_seconds,
            gc_grace_seconds: self.gc_grace_seconds,
            upload_expiry_seconds: self.upload_expiry_seconds,
            max_manifest_bytes: self.max_manifest_bytes,
            metadata: self.metadata,
            control_plane: self.control_plane,
            control_plane_max_staleness_seconds: self.control_plane_max_staleness_seconds,
            storage: self.blobs.storage,
            s3: S3Settings {
                endpoint: self.blobs.s3_endpoint,
                region: self.blobs.s3_region,
                path_style: self.blobs.s3_path_style,
                redirect_seconds: self.blobs.s3_redirect_seconds,
            },
            log_format: self.log_format,
            audit_log: self.audit_log,
            trusted_proxies: self.trusted_proxies,
            trust_key_passphrase: PassphraseSource::new(
                self.trust_key_passphrase_file,
                self.trust_key_passphrase,
            ),
            header_timeout_seconds: self.header_timeout_seconds,
            keepalive_timeout_seconds: self.keepalive_timeout_seconds,
            body_timeout_seconds: self.body_timeout_seconds,
            max_header_bytes: self.max_header_bytes,
            max_connections_per_client: self.max_connections_per_client,
            max_connections: self.max_connections,
            max_failed_logins: self.max_failed_logins,
            failed_login_window_seconds: self.failed_login_window_seconds,
            max_upload_sessions: self.max_upload_sessions,
        }
    }
}

/// Log lines waiting for the writer thread; when full, logging waits (nothing is dropped).
const LOG_QUEUE_LINES: usize = 8192;

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let mut config = Config::resolve(args.overrides(), file)?;
    // Lines are formatted where they are logged but written to stderr by one thread, in
    // batches: a write per audit line on the request path cost a third of the request
    // rate. The guard writes out what is still queued when `run` returns.
    let (log_writer, _log_guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("portcullis-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let (audit, _audit_guard) = Audit::open(&config.audit_log, &log_writer)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(log_writer)
        .with_env_filter(filter);
    // Ignore a second initialisation (tests may call in-process).
    let _ = match config.log_format {
        // Colour only for a terminal: journald and log files get plain text.
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(HandshakeLog)
            .try_init(),
        // Fields at the top level of each object, beside `timestamp`, `level`, `target`.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .finish()
            .with(HandshakeLog)
            .try_init(),
    };
    // `./policies` (the shipped policies when run from a checkout) comes first.
    let default_policies = PathBuf::from("policies");
    if default_policies.is_dir() {
        config.policy_dirs.insert(0, default_policies);
    }
    let prepared = server::prepare(config, audit).context("starting the gateway")?;
    if let AdminPasswordSource::Generated { password, path } = prepared.admin_password() {
        eprintln!(
            "\n================ PORTCULLIS ADMIN PASSWORD (shown once) ================\n\
             user: admin\npassword: {password}\n\
             stored in {} (mode 0600); set PORTCULLIS_ADMIN_PASSWORD to choose your own\n\
             =========================================================================\n",
            path.display()
        );
    }
    prepared.run()
}
