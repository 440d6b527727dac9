//! The gateway's settings: the TOML file format, and how it combines with command-line
//! flags and environment variables.
//!
//! Precedence, highest first: **flag > environment variable > config file > default**.
//! Every `serve` flag has an environment variable (`PORTCULLIS_LISTEN`,
//! `PORTCULLIS_DATA_DIR`, `PORTCULLIS_UPSTREAM`, `PORTCULLIS_ADMIN_PASSWORD`, …; see
//! `portcullis serve --help`), so a flag wins over its variable and either wins over the
//! file. With nothing set, the gateway listens on `127.0.0.1:5000`, keeps data in
//! `./data` and serves the bundled backend. `deploy/portcullis.toml` documents every key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_storage::s3::{S3Config, S3ConfigError, S3Settings};
use serde::Deserialize;

use super::connections::ConnectionLimits;
use super::forwarded::{InvalidProxy, TrustedProxies};
use crate::audit::AuditTarget;
use crate::trust::KeyAlgorithm;
use crate::trust::kek::PassphraseSource;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:5000";
pub const DEFAULT_DATA_DIR: &str = "./data";
pub const DEFAULT_SERVICE: &str = "portcullis";
pub const DEFAULT_GRACE_SECS: u64 = 5;
/// How long a shared control plane may go unconfirmed before decisions stop.
pub const DEFAULT_CONTROL_PLANE_MAX_STALENESS: Duration = Duration::from_secs(30);
/// Concurrent HTTP/2 streams per connection (pingora's bounded default).
pub const DEFAULT_H2_MAX_STREAMS: u32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file `{path}`: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("`tls.cert` and `tls.key` must be given together (got only `{0}`)")]
    TlsPair(&'static str),
    #[error("choose either a certificate (`tls.cert`/`tls.key`) or `tls.self_signed`, not both")]
    TlsConflict,
    #[error("invalid public_url `{0}`: expected http://HOST[:PORT] or https://HOST[:PORT]")]
    PublicUrl(String),
    #[error("--metadata / PORTCULLIS_METADATA / `storage.metadata`: {0}")]
    Metadata(String),
    #[error("--control-plane / PORTCULLIS_CONTROL_PLANE / `control_plane.url`: {0}")]
    ControlPlane(String),
    #[error("`{0}` must be greater than 0")]
    Zero(&'static str),
    #[error(transparent)]
    TrustedProxy(#[from] InvalidProxy),
    #[error(transparent)]
    Storage(#[from] S3ConfigError),
}

/// How log lines are written (the audit stream is always JSON).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The TOML file as written: every key optional.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub upstream: Option<String>,
    pub admin_listen: Option<String>,
    #[serde(default)]
    pub policy_dirs: Vec<PathBuf>,
    pub admin_password: Option<String>,
    pub public_url: Option<String>,
    pub service: Option<String>,
    pub anonymous_pull: Option<bool>,
    pub shutdown_grace_seconds: Option<u64>,
    pub log_format: Option<LogFormat>,
    pub audit_log: Option<String>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub tls: FileTls,
    #[serde(default)]
    pub trust: FileTrust,
    #[serde(default)]
    pub http2: FileHttp2,
    #[serde(default)]
    pub storage: FileStorage,
    #[serde(default)]
    pub limits: FileLimits,
    #[serde(default)]
    pub control_plane: FileControlPlane,
}

/// `[control_plane]`: where tokens, scope maps, policies, signing keys and trust data live.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileControlPlane {
    /// `embedded` or a `postgres://` URL.
    pub url: Option<String>,
    /// Seconds a gateway keeps deciding from its last snapshot while the shared control
    /// plane cannot be reached.
    pub max_staleness_seconds: Option<u64>,
}

/// Where the control plane lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ControlPlane {
    /// `control.redb` in the data directory: one process.
    #[default]
    Embedded,
    /// A PostgreSQL database shared by any number of gateways.
    Postgres(String),
}

impl ControlPlane {
    /// `embedded` (or empty) or a `postgres://` / `postgresql://` URL.
    pub fn parse(value: &str) -> Result<ControlPlane, String> {
        let value = value.trim();
        if value.is_empty() || value == "embedded" {
            Ok(ControlPlane::Embedded)
        } else if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            Ok(ControlPlane::Postgres(value.to_owned()))
        } else {
            Err(format!(
                "control plane `{}` is neither `embedded` nor a postgres:// URL",
                portcullis_storage::pg::redact(value)
            ))
        }
    }
}

/// `[limits]`: abuse limits (slow and idle clients, connection caps, failed logins,
/// upload sessions).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub header_timeout_seconds: Option<u64>,
    pub keepalive_timeout_seconds: Option<u64>,
    pub body_timeout_seconds: Option<u64>,
    pub max_header_bytes: Option<usize>,
    pub max_connections_per_client: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_failed_logins: Option<u32>,
    pub failed_login_window_seconds: Option<u64>,
    pub max_upload_sessions: Option<usize>,
}

/// Failed-login throttling: after `max_failures` failures within `window` for a user
/// name or from a client address, logins are refused with `429` until the window has
/// passed since the first of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginThrottle {
    pub max_failures: u32,
    pub window: Duration,
}

impl Default for LoginThrottle {
    fn default() -> LoginThrottle {
        LoginThrottle {
            max_failures: 10,
            window: Duration::from_secs(300),
        }
    }
}

/// Default cap on the upload sessions one principal has open at once.
pub const DEFAULT_MAX_UPLOAD_SESSIONS: usize = 64;

/// `[http2]`: HTTP/2 beside HTTP/1.1 on every listener (ALPN `h2` on TLS, prior
/// knowledge `h2c` on plain TCP).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileHttp2 {
    pub enabled: Option<bool>,
    pub max_concurrent_streams: Option<u32>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub self_signed: Option<bool>,
}

/// `[trust]`: content trust (the Notary API).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileTrust {
    /// Algorithm of new server-managed timestamp/snapshot keys: `ecdsa` (P-256) or `ed25519`.
    pub key_algorithm: Option<KeyAlgorithm>,
}

/// `[storage]`: the bundled store's upkeep and limits (ignored with an upstream).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileStorage {
    pub gc_interval_seconds: Option<u64>,
    pub gc_grace_seconds: Option<u64>,
    pub upload_expiry_seconds: Option<u64>,
    pub max_manifest_bytes: Option<usize>,
    /// `local` or a `postgres://` URL.
    pub metadata: Option<String>,
    /// `s3://BUCKET[/PREFIX]`: blobs on S3.
    pub url: Option<String>,
    #[serde(default)]
    pub s3: FileS3,
}

/// `[storage.s3]`: how to reach the bucket of `storage.url` (credentials come from the
/// environment only).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileS3 {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<bool>,
    pub redirect_seconds: Option<u64>,
}

/// The bundled store's settings: [`StorageSettings::default`] are the store's own defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSettings {
    /// Between background GC passes; `None` disables them (`0` in flags and files).
    pub gc_interval: Option<Duration>,
    /// Unreferenced content younger than this is never collected.
    pub gc_grace: Duration,
    /// Upload sessions idle for longer are removed.
    pub upload_expiry: Duration,
    /// Larger manifests are refused.
    pub max_manifest_bytes: usize,
    /// Where the metadata lives.
    pub metadata: portcullis_storage::meta::MetadataLocation,
    /// Blobs on S3 rather than in the data directory.
    pub s3: Option<S3Config>,
}

impl Default for StorageSettings {
    fn default() -> StorageSettings {
        let store = portcullis_storage::StorageConfig::new(PathBuf::new());
        StorageSettings {
            gc_interval: store.gc_interval,
            gc_grace: store.gc_grace,
            upload_expiry: store.upload_expiry,
            max_manifest_bytes: store.max_manifest_bytes,
            metadata: store.metadata,
            s3: store.s3,
        }
    }
}

impl StorageSettings {
    /// The store's configuration for `data_dir`.
    pub fn storage_config(&self, data_dir: PathBuf) -> portcullis_storage::StorageConfig {
        let mut config = portcullis_storage::StorageConfig::new(data_dir);
        config.gc_interval = self.gc_interval;
        config.gc_grace = self.gc_grace;
        config.upload_expiry = self.upload_expiry;
        config.max_manifest_bytes = self.max_manifest_bytes;
        config.metadata = self.metadata.clone();
        config.s3 = self.s3.clone();
        config
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }
}

/// Settings from flags and environment (clap resolves flag over variable); `None`
/// means "not given", so the file or the default applies.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub upstream: Option<String>,
    pub admin_listen: Option<String>,
    /// Added to the file's directories.
    pub policy_dirs: Vec<PathBuf>,
    pub admin_password: Option<String>,
    pub public_url: Option<String>,
    pub service: Option<String>,
    pub anonymous_pull: Option<bool>,
    pub shutdown_grace_seconds: Option<u64>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_self_signed: Option<bool>,
    pub gc_interval_seconds: Option<u64>,
    pub gc_grace_seconds: Option<u64>,
    pub upload_expiry_seconds: Option<u64>,
    pub max_manifest_bytes: Option<usize>,
    pub metadata: Option<String>,
    pub control_plane: Option<String>,
    pub control_plane_max_staleness_seconds: Option<u64>,
    /// `s3://BUCKET[/PREFIX]` and how to reach it.
    pub storage: Option<String>,
    pub s3: S3Settings,
    pub log_format: Option<LogFormat>,
    pub audit_log: Option<String>,
    /// Replaces the file's list when given.
    pub trusted_proxies: Option<Vec<String>>,
    pub trust_key_passphrase: PassphraseSource,
    pub header_timeout_seconds: Option<u64>,
    pub keepalive_timeout_seconds: Option<u64>,
    pub body_timeout_seconds: Option<u64>,
    pub max_header_bytes: Option<usize>,
    pub max_connections_per_client: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_failed_logins: Option<u32>,
    pub failed_login_window_seconds: Option<u64>,
    pub max_upload_sessions: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    Off,
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// A certificate generated into the data directory (reused on the next start).
    SelfSigned,
}

/// The resolved settings the server runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    /// `None`: the bundled backend.
    pub upstream: Option<String>,
    /// `Some`: the admin API listens here only (and answers 404 on `listen`).
    pub admin_listen: Option<String>,
    pub policy_dirs: Vec<PathBuf>,
    pub admin_password: Option<String>,
    /// The base URL clients reach the gateway at (challenge realm); `None`: from each
    /// request's scheme and `Host`.
    pub public_url: Option<String>,
    pub service: String,
    pub anonymous_pull: bool,
    pub shutdown_grace: Duration,
    pub tls: TlsMode,
    /// Algorithm of new server-managed trust keys (existing keys keep theirs).
    pub trust_key_algorithm: KeyAlgorithm,
    pub http2: Http2,
    /// The bundled store's GC, upload expiry and manifest size limit.
    pub storage: StorageSettings,
    pub control_plane: ControlPlane,
    /// How long a shared control plane's snapshot may go unconfirmed before requests
    /// that need a decision are refused (503).
    pub control_plane_max_staleness: Duration,
    pub log_format: LogFormat,
    pub audit_log: AuditTarget,
    /// Peers whose forwarding headers are believed (none by default).
    pub trusted_proxies: TrustedProxies,
    /// Where the passphrase of the trust keys' key-encryption key comes from.
    pub trust_key_passphrase: PassphraseSource,
    /// Slow and idle clients, connection caps.
    pub limits: ConnectionLimits,
    pub login_throttle: LoginThrottle,
    /// Upload sessions one principal may have open at once.
    pub max_upload_sessions: usize,
}

/// HTTP/2 settings (`enabled = false`: HTTP/1.1 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2 {
    pub enabled: bool,
    pub max_concurrent_streams: u32,
}

impl Config {
    /// Combines flags/environment with the file (see the module doc for precedence).
    pub fn resolve(over: Overrides, file: FileConfig) -> Result<Config, ConfigError> {
        let (limits, login_throttle, max_upload_sessions) = resolve_limits(&over, &file.limits)?;
        let cert = over.tls_cert.or(file.tls.cert);
        let key = over.tls_key.or(file.tls.key);
        let self_signed = over
            .tls_self_signed
            .or(file.tls.self_signed)
            .unwrap_or(false);
        let tls = match (cert, key, self_signed) {
            (Some(_), _, true) | (_, Some(_), true) => return Err(ConfigError::TlsConflict),
            (Some(cert), Some(key), false) => TlsMode::Files { cert, key },
            (Some(_), None, _) => return Err(ConfigError::TlsPair("cert")),
            (None, Some(_), _) => return Err(ConfigError::TlsPair("key")),
            (None, None, true) => TlsMode::SelfSigned,
            (None, None, false) => TlsMode::Off,
        };
        let public_url = over.public_url.or(file.public_url);
        if let Some(url) = &public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::PublicUrl(url.clone()));
        }
        let defaults = StorageSettings::default();
        let storage = StorageSettings {
            gc_interval: match over
                .gc_interval_seconds
                .or(file.storage.gc_interval_seconds)
            {
                Some(0) => None,
                Some(secs) => Some(Duration::from_secs(secs)),
                None => defaults.gc_interval,
            },
            gc_grace: over
                .gc_grace_seconds
                .or(file.storage.gc_grace_seconds)
                .map_or(defaults.gc_grace, Duration::from_secs),
            upload_expiry: match over
                .upload_expiry_seconds
                .or(file.storage.upload_expiry_seconds)
            {
                Some(0) => return Err(ConfigError::Zero("upload_expiry_seconds")),
                Some(secs) => Duration::from_secs(secs),
                None => defaults.upload_expiry,
            },
            max_manifest_bytes: match over.max_manifest_bytes.or(file.storage.max_manifest_bytes) {
                Some(0) => return Err(ConfigError::Zero("max_manifest_bytes")),
                Some(bytes) => bytes,
                None => defaults.max_manifest_bytes,
            },
            metadata: match over.metadata.or(file.storage.metadata) {
                Some(value) => portcullis_storage::meta::MetadataLocation::parse(&value)
                    .map_err(ConfigError::Metadata)?,
                None => defaults.metadata,
            },
            s3: match over.storage.or(file.storage.url) {
                Some(url) => {
                    let s3 = S3Settings {
                        endpoint: over.s3.endpoint.or(file.storage.s3.endpoint),
                        region: over.s3.region.or(file.storage.s3.region),
                        path_style: over.s3.path_style.or(file.storage.s3.path_style),
                        redirect_seconds: over
                            .s3
                            .redirect_seconds
                            .or(file.storage.s3.redirect_seconds),
                    };
                    Some(S3Config::resolve(&url, &s3)?)
                }
                None => None,
            },
        };
        let mut policy_dirs = file.policy_dirs;
        policy_dirs.extend(over.policy_dirs);
        let trusted_proxies =
            TrustedProxies::parse(&over.trusted_proxies.unwrap_or(file.trusted_proxies))?;
        Ok(Config {
            listen: over
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
            data_dir: over
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            upstream: over.upstream.or(file.upstream),
            admin_listen: over.admin_listen.or(file.admin_listen),
            policy_dirs,
            admin_password: over.admin_password.or(file.admin_password),
            public_url: public_url.map(|u| u.trim_end_matches('/').to_owned()),
            service: over
                .service
                .or(file.service)
                .unwrap_or_else(|| DEFAULT_SERVICE.to_owned()),
            anonymous_pull: over.anonymous_pull.or(file.anonymous_pull).unwrap_or(false),
            shutdown_grace: Duration::from_secs(
                over.shutdown_grace_seconds
                    .or(file.shutdown_grace_seconds)
                    .unwrap_or(DEFAULT_GRACE_SECS),
            ),
            tls,
            trust_key_algorithm: file.trust.key_algorithm.unwrap_or_default(),
            http2: Http2 {
                enabled: file.http2.enabled.unwrap_or(true),
                // 0 would stall every client: at least one stream.
                max_concurrent_streams: file
                    .http2
                    .max_concurrent_streams
                    .unwrap_or(DEFAULT_H2_MAX_STREAMS)
                    .max(1),
            },
            storage,
            control_plane: match over.control_plane.or(file.control_plane.url) {
                Some(value) => ControlPlane::parse(&value).map_err(ConfigError::ControlPlane)?,
                None => ControlPlane::Embedded,
            },
            control_plane_max_staleness: match over
                .control_plane_max_staleness_seconds
                .or(file.control_plane.max_staleness_seconds)
            {
                Some(0) => return Err(ConfigError::Zero("control_plane.max_staleness_seconds")),
                Some(secs) => Duration::from_secs(secs),
                None => DEFAULT_CONTROL_PLANE_MAX_STALENESS,
            },
            log_format: over.log_format.or(file.log_format).unwrap_or_default(),
            audit_log: over
                .audit_log
                .or(file.audit_log)
                .map_or_else(AuditTarget::default, |t| AuditTarget::parse(&t)),
            trusted_proxies,
            trust_key_passphrase: over.trust_key_passphrase,
            limits,
            login_throttle,
            max_upload_sessions,
        })
    }
}

/// The `[limits]` settings: flag/environment over file over default; none may be 0
/// except `max_connections` (0: from the descriptor limit).
fn resolve_limits(
    over: &Overrides,
    file: &FileLimits,
) -> Result<(ConnectionLimits, LoginThrottle, usize), ConfigError> {
    fn positive<T: PartialEq + Default>(
        value: Option<T>,
        name: &'static str,
    ) -> Result<Option<T>, ConfigError> {
        match value {
            Some(v) if v == T::default() => Err(ConfigError::Zero(name)),
            other => Ok(other),
        }
    }
    let seconds = |flag: Option<u64>, file: Option<u64>, name, default: Duration| {
        positive(flag.or(file), name).map(|v| v.map_or(default, Duration::from_secs))
    };
    let d = ConnectionLimits::default();
    let connections = ConnectionLimits {
        header_timeout: seconds(
            over.header_timeout_seconds,
            file.header_timeout_seconds,
            "header_timeout_seconds",
            d.header_timeout,
        )?,
        keepalive_timeout: seconds(
            over.keepalive_timeout_seconds,
            file.keepalive_timeout_seconds,
            "keepalive_timeout_seconds",
            d.keepalive_timeout,
        )?,
        body_timeout: seconds(
            over.body_timeout_seconds,
            file.body_timeout_seconds,
            "body_timeout_seconds",
            d.body_timeout,
        )?,
        max_header_bytes: positive(
            over.max_header_bytes.or(file.max_header_bytes),
            "max_header_bytes",
        )?
        .unwrap_or(d.max_header_bytes),
        max_connections_per_client: positive(
            over.max_connections_per_client
                .or(file.max_connections_per_client),
            "max_connections_per_client",
        )?
        .unwrap_or(d.max_connections_per_client),
        max_connections: over
            .max_connections
            .or(file.max_connections)
            .filter(|n| *n > 0),
    };
    let t = LoginThrottle::default();
    let throttle = LoginThrottle {
        max_failures: positive(
            over.max_failed_logins.or(file.max_failed_logins),
            "max_failed_logins",
        )?
        .unwrap_or(t.max_failures),
        window: seconds(
            over.failed_login_window_seconds,
            file.failed_login_window_seconds,
            "failed_login_window_seconds",
            t.window,
        )?,
    };
    let uploads = positive(
        over.max_upload_sessions.or(file.max_upload_sessions),
        "max_upload_sessions",
    )?
    .unwrap_or(DEFAULT_MAX_UPLOAD_SESSIONS);
    Ok((connections, throttle, uploads))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let c = Config::resolve(Overrides::default(), FileConfig::default()).unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.upstream, None);
        assert_eq!(c.tls, TlsMode::Off);
        assert_eq!(c.service, "portcullis");
        assert_eq!(c.shutdown_grace, Duration::from_secs(5));
        assert!(!c.anonymous_pull);
        assert_eq!(c.trust_key_algorithm, KeyAlgorithm::Ecdsa);
        assert_eq!(
            c.http2,
            Http2 {
                enabled: true,
                max_concurrent_streams: DEFAULT_H2_MAX_STREAMS
            }
        );
        let f = file("[http2]\nenabled = false\nmax_concurrent_streams = 8\n");
        let c = Config::resolve(Overrides::default(), f).unwrap();
        assert_eq!(
            (c.http2.enabled, c.http2.max_concurrent_streams),
            (false, 8)
        );
    }

    #[test]
    fn trust_key_algorithm_is_a_file_setting() {
        let c = Config::resolve(
            Overrides::default(),
            file("[trust]\nkey_algorithm = \"ed25519\"\n"),
        )
        .unwrap();
        assert_eq!(c.trust_key_algorithm, KeyAlgorithm::Ed25519);
        assert!(toml::from_str::<FileConfig>("[trust]\nkey_algorithm = \"rsa\"\n").is_err());
    }

    #[test]
    fn file_fills_what_flags_and_environment_leave_open() {
        let f = file(
            r#"
            listen = "0.0.0.0:443"
            data_dir = "/var/lib/portcullis"
            upstream = "http://registry:5000"
            policy_dirs = ["/etc/portcullis/policies"]
            service = "registry.example"
            [tls]
            cert = "/etc/cert.pem"
            key = "/etc/key.pem"
            "#,
        );
        let over = Overrides {
            listen: Some("127.0.0.1:8443".into()),
            policy_dirs: vec!["extra".into()],
            ..Overrides::default()
        };
        let c = Config::resolve(over, f).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8443", "flag/env beats the file");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/portcullis"));
        assert_eq!(c.upstream.as_deref(), Some("http://registry:5000"));
        assert_eq!(c.service, "registry.example");
        assert_eq!(
            c.policy_dirs,
            vec![
                PathBuf::from("/etc/portcullis/policies"),
                PathBuf::from("extra")
            ]
        );
        assert_eq!(
            c.tls,
            TlsMode::Files {
                cert: "/etc/cert.pem".into(),
                key: "/etc/key.pem".into()
            }
        );
    }

    #[test]
    fn tls_settings_must_be_consistent() {
        let half = Overrides {
            tls_cert: Some("c.pem".into()),
            ..Overrides::default()
        };
        assert!(matches!(
            Config::resolve(half, FileConfig::default()),
            Err(ConfigError::TlsPair("cert"))
        ));
        let both = Overrides {
            tls_self_signed: Some(true),
            ..Overrides::default()
        };
        let f = file("[tls]\ncert = \"c\"\nkey = \"k\"\n");
        assert!(matches!(
            Config::resolve(both, f),
            Err(ConfigError::TlsConflict)
        ));
    }

    #[test]
    fn unknown_keys_and_bad_urls_are_refused() {
        assert!(toml::from_str::<FileConfig>("lisen = \"x\"").is_err());
        let over = Overrides {
            public_url: Some("registry.example".into()),
            ..Overrides::default()
        };
        assert!(matches!(
            Config::resolve(over, FileConfig::default()),
            Err(ConfigError::PublicUrl(_))
        ));
    }

    #[test]
    fn the_deploy_example_parses_and_states_the_defaults() {
        let text = include_str!("../../deploy/portcullis.toml");
        let f = toml::from_str::<FileConfig>(text).unwrap();
        let c = Config::resolve(Overrides::default(), f).unwrap();
        let d = Config::resolve(Overrides::default(), FileConfig::default()).unwrap();
        assert_eq!(c, d, "every value in the example is the default");
    }

    #[test]
    fn storage_settings_from_file_flags_and_defaults() {
        use portcullis_storage::meta::MetadataLocation;
        let d = Config::resolve(Overrides::default(), FileConfig::default()).unwrap();
        assert_eq!(d.storage, StorageSettings::default());
        assert_eq!(d.storage.gc_interval, Some(Duration::from_secs(3600)));
        assert_eq!(d.storage.max_manifest_bytes, 4 * 1024 * 1024);
        let f = file(
            "[storage]\ngc_interval_seconds = 0\ngc_grace_seconds = 60\n\
             upload_expiry_seconds = 120\nmax_manifest_bytes = 1000\n\
             metadata = \"postgres://file@db/reg\"\n",
        );
        let over = Overrides {
            gc_grace_seconds: Some(5),
            metadata: Some("postgres://flag@db/reg".into()),
            ..Overrides::default()
        };
        let c = Config::resolve(over, f).unwrap();
        assert_eq!(
            c.storage,
            StorageSettings {
                gc_interval: None,
                gc_grace: Duration::from_secs(5),
                upload_expiry: Duration::from_secs(120),
                max_manifest_bytes: 1000,
                metadata: MetadataLocation::Postgres("postgres://flag@db/reg".into()),
                s3: None,
            }
        );
        let bad = Overrides {
            metadata: Some("mysql://u:secret@db/reg".into()),
            ..Overrides::default()
        };
        let err = Config::resolve(bad, FileConfig::default()).unwrap_err();
        assert!(matches!(err, ConfigError::Metadata(_)));
        let message = err.to_string();
        assert!(message.contains("--metadata") && message.contains("mysql://u:***@db/reg"));
        // Blobs on S3: a storage URL that is none is refused, naming it.
        let bad = file("[storage]\nurl = \"/srv/blobs\"\n[storage.s3]\nregion = \"eu-west-1\"\n");
        assert!(matches!(
            Config::resolve(Overrides::default(), bad),
            Err(ConfigError::Storage(S3ConfigError::Url(u))) if u == "/srv/blobs"
        ));
        let zero = Overrides {
            max_manifest_bytes: Some(0),
            ..Overrides::default()
        };
        assert!(matches!(
            Config::resolve(zero, FileConfig::default()),
            Err(ConfigError::Zero("max_manifest_bytes"))
        ));
        assert!(toml::from_str::<FileConfig>("[storage]\ngc = 1\n").is_err());
    }

    #[test]
    fn limits_from_file_flags_and_defaults() {
        let d = Config::resolve(Overrides::default(), FileConfig::default()).unwrap();
        assert_eq!(d.limits, ConnectionLimits::default());
        assert_eq!(d.login_throttle, LoginThrottle::default());
        assert_eq!(d.max_upload_sessions, DEFAULT_MAX_UPLOAD_SESSIONS);
        let f = file(
            "[limits]\nheader_timeout_seconds = 3\nkeepalive_timeout_seconds = 4\n\
             max_connections = 0\nmax_failed_logins = 2\nmax_upload_sessions = 5\n",
        );
        let over = Overrides {
            header_timeout_seconds: Some(7),
            max_connections_per_client: Some(9),
            ..Overrides::default()
        };
        let c = Config::resolve(over, f).unwrap();
        assert_eq!(c.limits.header_timeout, Duration::from_secs(7));
        assert_eq!(c.limits.keepalive_timeout, Duration::from_secs(4));
        assert_eq!(c.limits.max_connections_per_client, 9);
        assert_eq!(c.limits.max_connections, None);
        assert_eq!(c.login_throttle.max_failures, 2);
        assert_eq!(c.max_upload_sessions, 5);
        let zero = Overrides {
            keepalive_timeout_seconds: Some(0),
            ..Overrides::default()
        };
        assert!(matches!(
            Config::resolve(zero, FileConfig::default()),
            Err(ConfigError::Zero("keepalive_timeout_seconds"))
        ));
        assert!(toml::from_str::<FileConfig>("[limits]\nslowloris = 1\n").is_err());
    }

    #[test]
    fn observability_and_proxy_settings() {
        let d = Config::resolve(Overrides::default(), FileConfig::default()).unwrap();
        assert_eq!(d.log_format, LogFormat::Text);
        assert_eq!(d.audit_log, AuditTarget::Stderr);
        assert!(d.trusted_proxies.is_empty());
        let f = file(
            "log_format = \"json\"\naudit_log = \"/var/log/audit.jsonl\"\n\
             trusted_proxies = [\"10.0.0.0/8\"]\n",
        );
        let c = Config::resolve(Overrides::default(), f).unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(
            c.audit_log,
            AuditTarget::File("/var/log/audit.jsonl".into())
        );
        assert!(c.trusted_proxies.trusts("10.1.1.1".parse().unwrap()));
        let over = Overrides {
            audit_log: Some("stdout".into()),
            trusted_proxies: Some(vec!["127.0.0.2/32".into()]),
            ..Overrides::default()
        };
        let f = file("trusted_proxies = [\"10.0.0.0/8\"]\n");
        let c = Config::resolve(over, f).unwrap();
        assert_eq!(c.audit_log, AuditTarget::Stdout);
        assert!(!c.trusted_proxies.trusts("10.1.1.1".parse().unwrap()));
        assert!(c.trusted_proxies.trusts("127.0.0.2".parse().unwrap()));
        let bad = Overrides {
            trusted_proxies: Some(vec!["10.0.0.0/99".into()]),
            ..Overrides::default()
        };
        assert!(matches!(
            Config::resolve(bad, FileConfig::default()),
            Err(ConfigError::TrustedProxy(_))
        ));
        assert!(toml::from_str::<FileConfig>("log_format = \"xml\"").is_err());
    }
}
