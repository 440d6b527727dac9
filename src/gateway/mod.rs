//! The gateway data plane: every registry request is classified, authenticated,
//! decided by Cedar and forwarded. Each step is a module of its own:
//!
//! - [`classify`]: method + path → [`classify::Route`] (repository, operation).
//! - [`authn`]: `Authorization` header → principal (Basic, Bearer JWT), with caches;
//!   [`jwt`] signs and verifies the ES256 tokens with the key ring [`signing_keys`]
//!   keeps in the control plane; [`token`] is `/oauth2/token`.
//! - [`access`]: a classified request + principal → the Cedar checks, and the Docker
//!   scope grants the token endpoint hands out. **This is where a request is authorized.**
//! - [`backend`]: where allowed requests go (the bundled store, called in process, or an
//!   upstream registry) and the lookups decisions need (does a tag exist, the catalog).
//! - [`catalog`]: `/v2/_catalog` filtered to what the caller may read.
//! - [`repository_api`]: repository attributes over HTTP for tokens and the admin.
//! - [`signed`]: signed-only views (`context.signed`, the signed tag list).
//! - [`signatures`]: OCI signatures of a manifest (`context.signatures`), cached.
//! - [`trust_api`]: the Notary v1 API (`/v2/<gun>/_trust/…`) over [`crate::trust`].
//! - [`proxy`]: the request handling on a pingora session tying the steps together,
//!   shared by both data planes; [`in_process`] calls the bundled store in process.
//! - [`upstream`]: the pingora `ProxyHttp` phases in front of an upstream registry.
//! - [`control`]: the in-process axum app for routes the gateway answers itself.
//! - [`direct`]: the data plane with the bundled store, pingora without its proxy layer.
//! - [`errors`]: the gateway's refusals, mapped once to OCI error JSON and challenges.
//! - [`forwarded`]: the client behind trusted proxies (`X-Forwarded-For`, `Forwarded`).
//! - [`throttle`]: failed-login throttling of Basic credentials; [`uploads`]: the cap on
//!   a principal's open upload sessions.
//! - [`connections`]: connection-level abuse limits (head deadline, keep-alive idle
//!   timeout, per-address and descriptor caps) on every listener.
//! - [`server`], [`config`], [`tls`], [`metrics`]: process wiring and operations.

pub mod access;
pub mod authn;
pub mod backend;
pub mod catalog;
pub mod classify;
pub mod config;
pub mod connections;
pub mod control;
pub mod direct;
pub mod errors;
pub mod forwarded;
pub mod in_process;
pub mod jwt;
pub mod metrics;
pub mod proxy;
pub mod repository_api;
pub mod server;
pub mod signatures;
pub mod signed;
pub mod signing_keys;
pub mod throttle;
pub mod tls;
pub mod token;
pub mod trust_api;
pub mod uploads;
pub mod upstream;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use portcullis_storage::{Registry, private};

use crate::audit::{Actor, Audit, Record};
use crate::control_plane::{self, ControlDb, PgControl};
use crate::identity::{AdminAccount, AdminPasswordSource, IdentityStore, Principal};
use crate::policy::PolicyEngine;
use crate::policy::pushed::PushedPolicies;
use crate::trust::KeyAlgorithm;
use crate::trust::kek::{PassphraseSource, Unlocked};
use crate::trust::service::TrustService;

/// Everything a request needs, shared by the proxy and the control app.
pub struct Gateway {
    /// The shared control-plane database (`None`: embedded in the data directory).
    pub control_plane: Option<Arc<PgControl>>,
    pub store: Arc<IdentityStore>,
    pub engine: Arc<PolicyEngine>,
    pub admin: Arc<AdminAccount>,
    pub authn: authn::Authenticator,
    pub issuer: Arc<jwt::Issuer>,
    /// The shared token-signing keys (the issuer's ring) and their rotation.
    pub signing_keys: Arc<signing_keys::SigningKeys>,
    /// Policy sets pushed to the control plane, in force in `engine`.
    pub pushed_policies: Arc<PushedPolicies>,
    pub backend: backend::Backend,
    pub metrics: metrics::Metrics,
    /// Content trust: the Notary API's data and the signed targets views consult.
    pub trust: Arc<TrustService>,
    /// OCI signatures: the parsed verification identities and verified manifests.
    pub signatures: signatures::SignatureCache,
    /// The `service` named in challenges and expected in token requests.
    pub service: String,
    pub audit: Audit,
    /// Open blob upload sessions per principal, and their cap.
    pub uploads: uploads::UploadSessions,
}

/// Per-request facts handlers need beyond the HTTP request; the proxy inserts it as
/// an http extension before calling the control app.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// The client's address (behind trusted proxies, the one they name).
    pub source_ip: Option<IpAddr>,
    /// The request's id (the client's `X-Request-Id` when sane, else generated).
    pub request_id: Arc<str>,
    /// Where this client gets bearer tokens (realm from the request's scheme and host).
    pub challenge: errors::Challenge,
}

/// What [`Gateway::open`] needs: the data directory and the choices of `serve`.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    pub data_dir: PathBuf,
    /// Directories of `*.cedar` policy files (in order).
    pub policy_dirs: Vec<PathBuf>,
    /// The admin password; generated and stored in the data directory when `None`.
    pub admin_password: Option<String>,
    /// Forward to this registry instead of the bundled backend.
    pub upstream: Option<String>,
    /// The `service` of challenges and tokens.
    pub service: String,
    /// Lifetime of issued bearer tokens.
    pub token_ttl: Duration,
    /// The bundled store's GC, upload expiry and manifest size limit.
    pub storage: config::StorageSettings,
    /// Where the control plane lives.
    pub control_plane: config::ControlPlane,
    /// How long a shared control plane's snapshot may go unconfirmed before requests
    /// that need a decision are refused.
    pub control_plane_max_staleness: Duration,
    /// Where audit records go.
    pub audit: Audit,
    /// Where the passphrase of the trust keys' key-encryption key comes from.
    pub trust_key_passphrase: PassphraseSource,
    /// Failed-login throttling.
    pub login_throttle: config::LoginThrottle,
    /// Upload sessions one principal may have open at once.
    pub max_upload_sessions: usize,
}

/// An opened gateway and what the server must still start or show.
pub struct Opened {
    pub gateway: Arc<Gateway>,
    /// The bundled store, whose background tasks the server starts (None with an upstream).
    pub bundled: Option<Arc<Registry>>,
    pub admin_password: AdminPasswordSource,
    /// What unlocking the trust keys' key-encryption key did.
    pub trust_kek: Unlocked,
}

impl Gateway {
    /// Writes the audit record of a decision on a request: `refusal` is what the client
    /// got when it was not allowed. Refusals that decide nothing (a malformed request,
    /// an unavailable backend) leave no record.
    pub fn audit_decision(
        &self,
        meta: &RequestMeta,
        principal: Option<&Principal>,
        (method, path): (&str, &str),
        refusal: Option<&errors::GatewayError>,
    ) {
        use errors::GatewayError as E;
        if !self.audit.is_on() {
            return;
        }
        let decision = match refusal {
            None => "allow",
            Some(E::Denied { .. }) => "deny",
            Some(E::Unsigned { .. }) => "unsigned",
            Some(E::AuthenticationRequired { .. }) => "authentication_required",
            Some(E::InvalidCredentials { .. }) => "invalid_credentials",
            Some(E::InsufficientScope { .. }) => "insufficient_scope",
            Some(_) => return,
        };
        self.audit.record(&Record::Authorization {
            actor: Actor {
                principal: Actor::principal(principal),
                client: meta.source_ip,
                request_id: &meta.request_id,
            },
            method,
            path,
            decision,
            reason: refusal.map(ToString::to_string),
        });
    }

    /// Opens (creating at first start) everything in the data directory and the control
    /// plane: the identity store, the admin account, the token-signing keys, the
    /// policies and the backend. Starts no tasks: the server owns the runtimes
    /// ([`Gateway::spawn_control_sync`]).
    pub fn open(options: &GatewayOptions) -> anyhow::Result<Opened> {
        let data_dir = &options.data_dir;
        // Owner-only data: the directory 0700, databases and keys 0600 (existing ones
        // are tightened, with a log line).
        private::private_dir(data_dir)
            .with_context(|| format!("creating data directory `{}`", data_dir.display()))?;
        let control = data_dir.join("control.redb");
        private::private_file(&control)
            .with_context(|| format!("creating `{}`", control.display()))?;
        for secret in [
            crate::identity::admin::ADMIN_PASSWORD_FILE,
            jwt::SIGNING_KEY_FILE,
        ] {
            let path = data_dir.join(secret);
            private::tighten(&path, private::FILE_MODE)
                .with_context(|| format!("checking the mode of `{}`", path.display()))?;
        }
        let control_db = Arc::new(
            control_plane::EmbeddedDb::open(&control)
                .with_context(|| format!("opening `{}`", control.display()))?,
        );
        let engine = Arc::new(PolicyEngine::load(&options.policy_dirs)?);
        // Everything in the control plane: the same redb file, or PostgreSQL. New trust
        // keys are ECDSA until `serve` applies the configured algorithm.
        let (pg_control, store, (admin, admin_password), (trust, trust_kek), signing_keys, pushed) =
            control_plane::block_on(async {
                let pg_control = match &options.control_plane {
                    config::ControlPlane::Embedded => None,
                    config::ControlPlane::Postgres(url) => Some(PgControl::connect(url).await?),
                };
                let store = match &pg_control {
                    None => IdentityStore::embedded(Arc::clone(&control_db))
                        .context("opening the identity store")?,
                    Some(control) => IdentityStore::postgres(
                        Arc::clone(control),
                        options.control_plane_max_staleness,
                    )
                    .await
                    .context("loading the identity store")?,
                };
                let admin =
                    AdminAccount::open(data_dir, options.admin_password.as_deref(), &store).await?;
                let trust = match &pg_control {
                    None => TrustService::open(
                        Arc::clone(&control_db),
                        KeyAlgorithm::Ecdsa,
                        data_dir,
                        &options.trust_key_passphrase,
                    ),
                    Some(control) => {
                        TrustService::open_shared(
                            Arc::clone(control),
                            KeyAlgorithm::Ecdsa,
                            &options.trust_key_passphrase,
                        )
                        .await
                    }
                }
                .context("opening the trust store")?;
                let db = match &pg_control {
                    None => ControlDb::Embedded(Arc::clone(&control_db)),
                    Some(control) => ControlDb::Postgres(Arc::clone(control)),
                };
                let signing_keys = signing_keys::SigningKeys::open(
                    db.clone(),
                    Arc::clone(&trust.0),
                    data_dir,
                    &options.service,
                    options.token_ttl,
                )
                .await
                .context("loading the token-signing keys")?;
                let pushed = PushedPolicies::open(db, Arc::clone(&engine))
                    .await
                    .context("loading the pushed policies")?;
                anyhow::Ok((pg_control, store, admin, trust, signing_keys, pushed))
            })??;
        let admin = Arc::new(admin);
        let issuer = Arc::clone(signing_keys.issuer());
        let (backend, bundled) = match &options.upstream {
            Some(url) => (backend::Backend::upstream(url)?, None),
            None => {
                let registry = Registry::open(options.storage.storage_config(data_dir.clone()))
                    .context("opening the storage backend")?;
                (
                    backend::Backend::bundled(Arc::clone(&registry)),
                    Some(registry),
                )
            }
        };
        let gateway = Gateway {
            authn: authn::Authenticator::new(
                Arc::clone(&store),
                Arc::clone(&admin),
                Arc::clone(&issuer),
            )
            .with_throttle(Arc::new(throttle::Throttle::new(
                options.login_throttle,
                options.audit.clone(),
            ))),
            control_plane: pg_control,
            store,
            engine,
            admin,
            issuer,
            signing_keys,
            pushed_policies: pushed,
            backend,
            metrics: metrics::Metrics::new().context("registering metrics")?,
            trust,
            signatures: signatures::SignatureCache::default(),
            service: options.service.clone(),
            audit: options.audit.clone(),
            uploads: uploads::UploadSessions::new(
                options.max_upload_sessions,
                options.storage.upload_expiry,
            ),
        };
        Ok(Opened {
            gateway: Arc::new(gateway),
            bundled,
            admin_password,
            trust_kek,
        })
    }

    /// Spawns, on the current runtime, the following of changes other gateways make to
    /// the shared control plane (identity with its staleness clock, trust data,
    /// token-signing keys, pushed policies).
    pub fn spawn_control_sync(&self) {
        if let Some(follower) = self.store.follower() {
            tokio::spawn(follower);
        }
        self.trust.spawn_watch();
        self.signing_keys.spawn_sync();
        self.pushed_policies.spawn_sync();
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A gateway over a temporary data directory, for router tests.

    use super::*;

    /// A gateway with the bundled backend (not served) and the shipped policies,
    /// admin password `admin-secret`.
    pub fn gateway(dir: &std::path::Path) -> Arc<Gateway> {
        match Gateway::open(&options(dir)) {
            Ok(opened) => opened.gateway,
            Err(e) => panic!("opening a test gateway in {}: {e:#}", dir.display()),
        }
    }

    /// The options of [`gateway`]: tests change a field with `..options(dir)`.
    pub fn options(dir: &std::path::Path) -> GatewayOptions {
        GatewayOptions {
            data_dir: dir.to_path_buf(),
            policy_dirs: vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies")],
            admin_password: Some("admin-secret".into()),
            upstream: None,
            service: "portcullis-test".into(),
            token_ttl: Duration::from_secs(300),
            storage: Default::default(),
            control_plane: Default::default(),
            control_plane_max_staleness: config::DEFAULT_CONTROL_PLANE_MAX_STALENESS,
            audit: Audit::default(),
            trust_key_passphrase: PassphraseSource::DataDir,
            login_throttle: Default::default(),
            max_upload_sessions: config::DEFAULT_MAX_UPLOAD_SESSIONS,
        }
    }

    /// Creates an enabled token with password1 and scope-map `rules`; its principal.
    pub async fn token(
        store: &IdentityStore,
        name: &str,
        rules: &[(&str, &[crate::identity::Action])],
    ) -> crate::identity::Principal {
        use crate::identity::store::{NewToken, TokenScope};
        use crate::identity::{PasswordSlot, RepositoryPattern, ScopeRule, TokenStatus};
        let rules = rules
            .iter()
            .map(|(pattern, actions)| ScopeRule {
                repository: RepositoryPattern::parse(pattern).unwrap(),
                actions: actions.iter().copied().collect(),
            })
            .collect();
        store
            .create_token(&NewToken {
                name: name.into(),
                scope: TokenScope::Repositories(rules),
                status: TokenStatus::Enabled,
                passwords: vec![PasswordSlot::Password1],
                expires_at: None,
            })
            .await
            .unwrap();
        crate::identity::Principal::Token {
            name: name.into(),
            slot: PasswordSlot::Password1,
        }
    }

    /// `RequestMeta` for a client on loopback.
    pub fn meta() -> RequestMeta {
        RequestMeta {
            source_ip: Some(IpAddr::from([127, 0, 0, 1])),
            request_id: Arc::from("test-request"),
            challenge: errors::Challenge {
                realm: "http://127.0.0.1:5000/oauth2/token".into(),
                service: "portcullis-test".into(),
            },
        }
    }
}
