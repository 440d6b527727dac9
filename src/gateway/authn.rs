//! Authentication: the `Authorization` header → who is asking. Owns the Basic scheme
//! (the admin account, or a token name and one of its passwords), the Bearer scheme
//! (ES256 JWTs from `/oauth2/token`), refresh tokens, and the caches in front of both.
//!
//! A verified JWT only proves who it was issued to and when; on every request the
//! principal is checked again against the current identity snapshot (token exists,
//! enabled, the same password still in its slot and not expired), so revocation is
//! immediate even for tokens handed out earlier.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use moka::sync::Cache;
use portcullis_storage::CacheSize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::errors::GatewayError;
use super::jwt::{AccessEntry, Claims, Issuer, PrincipalKind, Subject, TokenUse};
use super::throttle::Throttle;
use crate::identity::basic::decode_basic;
use crate::identity::scope::ADMIN_USER;
use crate::identity::{
    AdminAccount, AuthError, IdentitySnapshot, IdentityStore, PasswordRecord, PasswordSlot,
    Principal, TokenStatus, UnixSeconds, now_unix,
};

/// How many Basic credentials are remembered.
const CACHE_CAPACITY: u64 = 100_000;
/// Bytes of verified JWTs remembered: keyed by the token itself (no hash per request), so
/// the bound is on size, not count.
const BEARER_CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// What one cached claim set costs besides its token, roughly.
const CLAIMS_WEIGHT: u32 = 512;
/// Basic results are keyed by snapshot version, so old entries are merely unreachable;
/// this bounds how long they occupy memory.
const BASIC_CACHE_TTL: Duration = Duration::from_secs(600);
/// The one message for an unknown token or a wrong password, so neither is revealed.
const BAD_CREDENTIALS: &str = "invalid username or password";

/// The outcome of authentication for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub principal: Principal,
    /// `Some` for bearer tokens: the JWT's access claim, which bounds what the request may
    /// do (shared with the cached verification, not copied per request).
    pub bearer_access: Option<Arc<[AccessEntry]>>,
}

/// Cache hit and miss counts, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

/// A verified JWT: its claims, with the access claim moved out into a shared slice.
struct Verified {
    claims: Claims,
    /// The issuer's ring generation it was verified under.
    ring: u64,
    access: Arc<[AccessEntry]>,
    /// 1 + the identity snapshot version in which the token's password was last found to
    /// be the one the JWT names (0: not yet). Snapshots are immutable, so within one
    /// version the salt hash need not be computed again on every request.
    password_seen: AtomicU64,
}

/// (token name, SHA-256 of the secret, identity snapshot version): any control-plane
/// write changes the version, so a cached result never outlives a change.
type BasicKey = (String, [u8; 32], u64);

pub struct Authenticator {
    store: Arc<IdentityStore>,
    admin: Arc<AdminAccount>,
    issuer: Arc<Issuer>,
    /// The compact JWS itself → its verified claims. The exact string is the key: hashing
    /// it with SHA-256 first cost more than the rest of authentication.
    /// aHash (keyed per process): SipHash over a JWT of several hundred bytes was the
    /// larger part of a cache hit.
    bearer: Cache<Arc<str>, Arc<Verified>, ahash::RandomState>,
    basic: Cache<BasicKey, PasswordSlot>,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Failed-login throttling of Basic credentials.
    throttle: Arc<Throttle>,
}

impl Authenticator {
    pub fn new(
        store: Arc<IdentityStore>,
        admin: Arc<AdminAccount>,
        issuer: Arc<Issuer>,
    ) -> Authenticator {
        // Claims are re-checked for expiry on every hit; the TTL only frees memory.
        let bearer_ttl = issuer.ttl() + Duration::from_secs(120);
        Authenticator {
            store,
            admin,
            issuer,
            bearer: Cache::builder()
                .max_capacity(BEARER_CACHE_BYTES)
                .weigher(|token: &Arc<str>, _| {
                    u32::try_from(token.len())
                        .unwrap_or(u32::MAX)
                        .saturating_add(CLAIMS_WEIGHT)
                })
                .time_to_live(bearer_ttl)
                .build_with_hasher(ahash::RandomState::new()),
            basic: Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(BASIC_CACHE_TTL)
                .build(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            throttle: Arc::new(Throttle::new(Default::default(), Default::default())),
        }
    }

    /// This authenticator with `throttle` for failed logins (the default one audits
    /// nothing).
    pub fn with_throttle(mut self, throttle: Arc<Throttle>) -> Authenticator {
        self.throttle = throttle;
        self
    }

    /// Every request that needs a decision passes here first: none is decided from a
    /// shared control plane's snapshot older than its staleness bound (rights may have
    /// been revoked meanwhile).
    fn fresh(&self) -> Result<(), GatewayError> {
        self.store.fresh().map_err(|stale| {
            GatewayError::Unavailable(format!(
                "{stale}: refusing to decide on rights that may have changed"
            ))
        })
    }

    /// The failed-login throttle (the admin API's Basic check shares it).
    pub fn throttle(&self) -> &Arc<Throttle> {
        &self.throttle
    }

    /// No header → Anonymous. Bad/disabled/expired/deleted → GatewayError::InvalidCredentials;
    /// Basic credentials of a throttled name or from a throttled `client` →
    /// GatewayError::TooManyRequests.
    pub fn authenticate(
        &self,
        authorization: Option<&HeaderValue>,
        client: Option<IpAddr>,
    ) -> Result<Authenticated, GatewayError> {
        self.authenticate_at(authorization, client, now_unix())
    }

    fn authenticate_at(
        &self,
        authorization: Option<&HeaderValue>,
        client: Option<IpAddr>,
        now: UnixSeconds,
    ) -> Result<Authenticated, GatewayError> {
        self.fresh()?;
        let Some(value) = authorization else {
            return Ok(Authenticated {
                principal: Principal::Anonymous,
                bearer_access: None,
            });
        };
        let value = value
            .to_str()
            .map_err(|_| invalid("the authorization header is not ascii"))?;
        let (scheme, credentials) = value
            .trim()
            .split_once(' ')
            .ok_or_else(|| invalid("the authorization header has no credentials"))?;
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let (user, password) =
                decode_basic(credentials).map_err(|e| invalid(&e.to_string()))?;
            Ok(Authenticated {
                principal: self.basic_throttled(&user, &password, client, now)?,
                bearer_access: None,
            })
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let verified = self.verify_bearer(credentials, now)?;
            let principal = recheck(
                &self.admin,
                &self.store.snapshot(),
                &verified.claims.subject,
                now,
                Some(&verified.password_seen),
            )?;
            Ok(Authenticated {
                principal,
                bearer_access: Some(Arc::clone(&verified.access)),
            })
        } else {
            Err(invalid(&format!(
                "unsupported authorization scheme `{}`",
                scheme.to_ascii_lowercase()
            )))
        }
    }

    /// Checks a user name and password from `client`: `admin` against the admin account,
    /// anything else as a token name against that token's password slots; throttled.
    pub fn basic(
        &self,
        user: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<Principal, GatewayError> {
        self.basic_throttled(user, password, client, now_unix())
    }

    fn basic_throttled(
        &self,
        user: &str,
        password: &str,
        client: Option<IpAddr>,
        now: UnixSeconds,
    ) -> Result<Principal, GatewayError> {
        self.fresh()?;
        self.throttle.check(user, client)?;
        let checked = self.basic_at(user, password, now);
        match &checked {
            Ok(_) => self.throttle.succeeded(user),
            Err(_) => self.throttle.failed(user, client),
        }
        checked
    }

    fn basic_at(
        &self,
        user: &str,
        password: &str,
        now: UnixSeconds,
    ) -> Result<Principal, GatewayError> {
        if user == ADMIN_USER {
            return if self.admin.verify(user, password) {
                Ok(Principal::Admin)
            } else {
                Err(invalid(BAD_CREDENTIALS))
            };
        }
        let snapshot = self.store.snapshot();
        let key = (
            user.to_owned(),
            Sha256::digest(password.as_bytes()).into(),
            snapshot.version,
        );
        let slot = match self.basic.get(&key) {
            Some(slot) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                // Same snapshot, same token state; only the clock can have moved.
                let expired = snapshot
                    .tokens
                    .get(user)
                    .and_then(|t| t.password(slot))
                    .is_none_or(|record| record.is_expired(now));
                if expired {
                    return Err(auth_error(user, AuthError::Expired(slot)));
                }
                slot
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                let slot = snapshot
                    .verify_password(user, password, now)
                    .map_err(|e| auth_error(user, e))?;
                self.basic.insert(key, slot);
                slot
            }
        };
        Ok(Principal::Token {
            name: user.to_owned(),
            slot,
        })
    }

    /// Verifies a JWS (cached until it expires) without re-checking the principal.
    fn verify_bearer(&self, token: &str, now: UnixSeconds) -> Result<Arc<Verified>, GatewayError> {
        let ring = self.issuer.generation();
        if let Some(verified) = self.bearer.get(token)
            && verified.ring == ring
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            verified
                .claims
                .check_time(now)
                .map_err(|e| invalid(&e.to_string()))?;
            return Ok(verified);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let mut claims = self
            .issuer
            .verify(token, TokenUse::Access, now)
            .map_err(|e| invalid(&e.to_string()))?;
        let access = std::mem::take(&mut claims.access).into();
        let verified = Arc::new(Verified {
            claims,
            ring,
            access,
            password_seen: AtomicU64::new(0),
        });
        self.bearer.insert(Arc::from(token), Arc::clone(&verified));
        Ok(verified)
    }

    /// Checks a refresh token (`grant_type=refresh_token`) and the principal it names,
    /// as it stands now.
    pub fn refresh(&self, refresh_token: &str) -> Result<Principal, GatewayError> {
        self.fresh()?;
        let now = now_unix();
        let claims = self
            .issuer
            .verify(refresh_token, TokenUse::Refresh, now)
            .map_err(|e| invalid(&e.to_string().replacen("bearer", "refresh", 1)))?;
        recheck(
            &self.admin,
            &self.store.snapshot(),
            &claims.subject,
            now,
            None,
        )
    }

    /// What a token minted now for `principal` records about it, so that later uses can
    /// tell whether the same password is still in place.
    pub fn subject(&self, principal: &Principal) -> Result<Subject, GatewayError> {
        Ok(match principal {
            Principal::Admin => Subject {
                sub: ADMIN_USER.to_owned(),
                principal: PrincipalKind::Admin,
                slot: None,
                password_created: Some(self.admin.record().created_at),
                password_id: Some(password_id(self.admin.record())),
            },
            Principal::Anonymous => Subject {
                sub: String::new(),
                principal: PrincipalKind::Anonymous,
                slot: None,
                password_created: None,
                password_id: None,
            },
            Principal::Token { name, slot } => {
                let snapshot = self.store.snapshot();
                let record = snapshot
                    .tokens
                    .get(name)
                    .and_then(|t| t.password(*slot))
                    .ok_or_else(|| invalid(&gone(name, *slot)))?;
                Subject {
                    sub: name.clone(),
                    principal: PrincipalKind::Token,
                    slot: Some(*slot),
                    password_created: Some(record.created_at),
                    password_id: Some(password_id(record)),
                }
            }
        })
    }

    /// JWT and Basic cache hits and misses since start.
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// The credential caches' sizes, the throttle's with them.
    pub fn cache_sizes(&self) -> [CacheSize; 4] {
        let [by_user, by_client] = self.throttle.cache_sizes();
        [
            CacheSize::weighed("bearer_tokens", &self.bearer),
            CacheSize::counted("basic_credentials", &self.basic),
            by_user,
            by_client,
        ]
    }
}

/// The principal a token names, if it is still valid in `snapshot` at `now`. `seen`
/// remembers (per verified JWT) the snapshot in which the password was last matched.
fn recheck(
    admin: &AdminAccount,
    snapshot: &IdentitySnapshot,
    subject: &Subject,
    now: UnixSeconds,
    seen: Option<&AtomicU64>,
) -> Result<Principal, GatewayError> {
    match subject.principal {
        // Bound to the admin password the token was issued under: changing it revokes.
        PrincipalKind::Admin => {
            if subject
                .password_id
                .as_deref()
                .is_some_and(|id| password_id_matches(admin.record(), id))
            {
                Ok(Principal::Admin)
            } else {
                Err(invalid(
                    "the admin password has changed since this token was issued",
                ))
            }
        }
        PrincipalKind::Anonymous => Ok(Principal::Anonymous),
        PrincipalKind::Token => {
            let name = &subject.sub;
            let slot = subject
                .slot
                .ok_or_else(|| invalid("bearer token names no password slot"))?;
            let token = snapshot
                .tokens
                .get(name)
                .ok_or_else(|| invalid(&format!("token `{name}` no longer exists")))?;
            if token.status == TokenStatus::Disabled {
                return Err(auth_error(name, AuthError::Disabled));
            }
            let record = token
                .password(slot)
                .ok_or_else(|| invalid(&gone(name, slot)))?;
            // 0 means "not yet", so a version that has no successor is never remembered.
            let seen_in = snapshot.version.checked_add(1);
            let known = seen
                .zip(seen_in)
                .is_some_and(|(s, v)| s.load(Ordering::Relaxed) == v);
            if subject.password_created != Some(record.created_at)
                || !(known
                    || subject
                        .password_id
                        .as_deref()
                        .is_some_and(|id| password_id_matches(record, id)))
            {
                return Err(invalid(&format!(
                    "{} of token `{name}` has been regenerated",
                    slot.as_str()
                )));
            }
            if let (Some(seen), Some(v), false) = (seen, seen_in, known) {
                seen.store(v, Ordering::Relaxed);
            }
            if record.is_expired(now) {
                return Err(auth_error(name, AuthError::Expired(slot)));
            }
            Ok(Principal::Token {
                name: name.clone(),
                slot,
            })
        }
    }
}

/// Identifies one generated password without revealing anything about the secret: a
/// hash of its random salt (a regenerated password gets a new salt).
fn password_id(record: &PasswordRecord) -> String {
    hex::encode(password_id_bytes(record))
}

/// `password_id(record) == id`, without allocating (it runs on every bearer request).
fn password_id_matches(record: &PasswordRecord, id: &str) -> bool {
    let mut expected = [0u8; 2 * PASSWORD_ID_LEN];
    hex::encode_to_slice(password_id_bytes(record), &mut expected).is_ok()
        && bool::from(expected.as_slice().ct_eq(id.as_bytes()))
}

/// Bytes of the salt's SHA-256 that identify a password.
const PASSWORD_ID_LEN: usize = 12;

fn password_id_bytes(record: &PasswordRecord) -> [u8; PASSWORD_ID_LEN] {
    let digest: [u8; 32] = Sha256::digest(record.salt).into();
    let mut id = [0u8; PASSWORD_ID_LEN];
    for (byte, digest_byte) in id.iter_mut().zip(digest) {
        *byte = digest_byte;
    }
    id
}

fn gone(name: &str, slot: PasswordSlot) -> String {
    format!("{} of token `{name}` has been deleted", slot.as_str())
}

fn auth_error(name: &str, error: AuthError) -> GatewayError {
    match error {
        AuthError::UnknownToken | AuthError::WrongPassword => invalid(BAD_CREDENTIALS),
        AuthError::Disabled => invalid(&format!("token `{name}` is disabled")),
        AuthError::Expired(slot) => {
            invalid(&format!("{} of token `{name}` has expired", slot.as_str()))
        }
    }
}

fn invalid(reason: &str) -> GatewayError {
    GatewayError::InvalidCredentials {
        reason: reason.to_owned(),
        scope: None,
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    use crate::identity::scope::parse_rule;
    use crate::identity::store::{NewToken, TokenScope, TokenUpdate};

    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<IdentityStore>,
        issuer: Arc<Issuer>,
        authn: Authenticator,
        /// password1, password2 of token `ci-bot`.
        secrets: [String; 2],
    }

    const ADMIN_PASSWORD: &str = "admin-secret";

    async fn fixture(expires_at: Option<UnixSeconds>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = IdentityStore::open(&dir.path().join("control.redb")).unwrap();
        let created = store
            .create_token(&NewToken {
                name: "ci-bot".into(),
                scope: TokenScope::ScopeMap("_repositories_pull".into()),
                status: TokenStatus::Enabled,
                passwords: vec![PasswordSlot::Password1, PasswordSlot::Password2],
                expires_at,
            })
            .await
            .unwrap();
        let secret = |slot| {
            created
                .passwords
                .iter()
                .find(|p| p.slot == slot)
                .unwrap()
                .value
                .clone()
        };
        let secrets = [
            secret(PasswordSlot::Password1),
            secret(PasswordSlot::Password2),
        ];
        let issuer =
            Arc::new(Issuer::generated("registry.test", Duration::from_secs(300)).unwrap());
        let admin = Arc::new(AdminAccount::new(ADMIN_PASSWORD).unwrap());
        let authn = Authenticator::new(Arc::clone(&store), admin, Arc::clone(&issuer));
        Fixture {
            _dir: dir,
            store,
            issuer,
            authn,
            secrets,
        }
    }

    fn basic(user: &str, password: &str) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "Basic {}",
            STANDARD.encode(format!("{user}:{password}"))
        ))
        .unwrap()
    }

    fn token(slot: PasswordSlot) -> Principal {
        Principal::Token {
            name: "ci-bot".into(),
            slot,
        }
    }

    impl Fixture {
        fn auth(&self, header: &HeaderValue) -> Result<Authenticated, GatewayError> {
            self.authn.authenticate_at(Some(header), None, now_unix())
        }

        fn bearer_for(&self, principal: &Principal, access: Vec<AccessEntry>) -> HeaderValue {
            let subject = self.authn.subject(principal).unwrap();
            let signed = self
                .issuer
                .sign(TokenUse::Access, subject, access, now_unix())
                .unwrap();
            HeaderValue::from_str(&format!("Bearer {}", signed.token)).unwrap()
        }
    }

    fn reason(result: Result<Authenticated, GatewayError>) -> String {
        match result {
            Err(GatewayError::InvalidCredentials { reason, scope }) => {
                assert_eq!(scope, None);
                reason
            }
            other => panic!("expected invalid credentials, got {other:?}"),
        }
    }

    fn pull_access() -> Vec<AccessEntry> {
        vec![AccessEntry {
            kind: "repository".into(),
            name: "samples/app".into(),
            actions: vec!["pull".into()],
        }]
    }

    #[tokio::test]
    async fn no_header_is_anonymous() {
        let f = fixture(None).await;
        let who = f.authn.authenticate(None, None).unwrap();
        assert_eq!(who.principal, Principal::Anonymous);
        assert_eq!(who.bearer_access, None);
    }

    #[tokio::test]
    async fn basic_admin_and_token_passwords() {
        let f = fixture(None).await;
        assert_eq!(
            f.auth(&basic("admin", ADMIN_PASSWORD)).unwrap().principal,
            Principal::Admin
        );
        assert_eq!(
            reason(f.auth(&basic("admin", "nope"))),
            "invalid username or password"
        );
        let who = f.auth(&basic("ci-bot", &f.secrets[1])).unwrap();
        assert_eq!(who.principal, token(PasswordSlot::Password2));
        assert_eq!(who.bearer_access, None);
        assert_eq!(
            f.auth(&basic("ci-bot", &f.secrets[0])).unwrap().principal,
            token(PasswordSlot::Password1)
        );
        // Unknown token and wrong password read the same.
        assert_eq!(
            reason(f.auth(&basic("ci-bot", "wrong"))),
            "invalid username or password"
        );
        assert_eq!(
            reason(f.auth(&basic("nobody", &f.secrets[0]))),
            "invalid username or password"
        );
        // The admin user name is exact.
        assert_eq!(
            reason(f.auth(&basic("ADMIN", ADMIN_PASSWORD))),
            "invalid username or password"
        );
    }

    #[tokio::test]
    async fn basic_results_are_cached_per_snapshot_version() {
        let f = fixture(None).await;
        let h = basic("ci-bot", &f.secrets[0]);
        f.auth(&h).unwrap();
        assert_eq!(f.authn.cache_stats(), CacheStats { hits: 0, misses: 1 });
        f.auth(&h).unwrap();
        assert_eq!(f.authn.cache_stats(), CacheStats { hits: 1, misses: 1 });
        // Any control-plane write is a new version: the next call verifies again.
        f.store
            .create_scope_map(
                "unrelated",
                "",
                &[parse_rule("x/*", &["content/read"]).unwrap()],
            )
            .await
            .unwrap();
        f.auth(&h).unwrap();
        assert_eq!(f.authn.cache_stats(), CacheStats { hits: 1, misses: 2 });
        // A failure is never cached as a success.
        assert!(f.auth(&basic("ci-bot", "wrong")).is_err());
        assert!(f.auth(&basic("ci-bot", "wrong")).is_err());
    }

    #[tokio::test]
    async fn bearer_carries_its_access_claim_and_is_cached() {
        let f = fixture(None).await;
        let h = f.bearer_for(&token(PasswordSlot::Password1), pull_access());
        let who = f.auth(&h).unwrap();
        assert_eq!(who.principal, token(PasswordSlot::Password1));
        assert_eq!(who.bearer_access, Some(pull_access().into()));
        let before = f.authn.cache_stats();
        assert_eq!(f.auth(&h).unwrap(), who);
        assert_eq!(f.authn.cache_stats().hits, before.hits + 1);
        let admin = f.bearer_for(&Principal::Admin, vec![]);
        assert_eq!(f.auth(&admin).unwrap().principal, Principal::Admin);
        let anon = f.bearer_for(&Principal::Anonymous, vec![]);
        let who = f.auth(&anon).unwrap();
        assert_eq!(who.principal, Principal::Anonymous);
        assert_eq!(who.bearer_access, Some(Arc::from([])));
    }

    #[tokio::test]
    async fn expired_bearer_fails_even_from_the_cache() {
        let f = fixture(None).await;
        let h = f.bearer_for(&token(PasswordSlot::Password1), vec![]);
        f.auth(&h).unwrap();
        let later = now_unix() + 300 + 61;
        let err = f.authn.authenticate_at(Some(&h), None, later);
        assert_eq!(reason(err), "bearer token has expired");
    }

    #[tokio::test]
    async fn disabled_token_fails_on_the_very_next_request() {
        let f = fixture(None).await;
        let b = basic("ci-bot", &f.secrets[0]);
        let jwt = f.bearer_for(&token(PasswordSlot::Password1), pull_access());
        f.auth(&b).unwrap();
        f.auth(&jwt).unwrap();
        let disable = TokenUpdate {
            status: Some(TokenStatus::Disabled),
            ..TokenUpdate::default()
        };
        f.store.update_token("ci-bot", &disable).await.unwrap();
        assert_eq!(reason(f.auth(&b)), "token `ci-bot` is disabled");
        assert_eq!(reason(f.auth(&jwt)), "token `ci-bot` is disabled");
        let enable = TokenUpdate {
            status: Some(TokenStatus::Enabled),
            ..TokenUpdate::default()
        };
        f.store.update_token("ci-bot", &enable).await.unwrap();
        f.auth(&b).unwrap();
        f.auth(&jwt).unwrap();
    }

    #[tokio::test]
    async fn expired_password_fails_for_basic_and_bearer() {
        let now = now_unix();
        let f = fixture(Some(now + 100)).await;
        let b = basic("ci-bot", &f.secrets[0]);
        let jwt = f.bearer_for(&token(PasswordSlot::Password1), vec![]);
        f.authn.authenticate_at(Some(&b), None, now).unwrap();
        f.authn.authenticate_at(Some(&jwt), None, now).unwrap();
        // The cached Basic result and the cached JWT are both re-checked against the clock.
        let later = now + 100;
        assert_eq!(
            reason(f.authn.authenticate_at(Some(&b), None, later)),
            "password1 of token `ci-bot` has expired"
        );
        assert_eq!(
            reason(f.authn.authenticate_at(Some(&jwt), None, later)),
            "password1 of token `ci-bot` has expired"
        );
    }

    #[tokio::test]
    async fn deleted_token_fails_on_the_very_next_request() {
        let f = fixture(None).await;
        let b = basic("ci-bot", &f.secrets[0]);
        let jwt = f.bearer_for(&token(PasswordSlot::Password1), vec![]);
        f.auth(&b).unwrap();
        f.auth(&jwt).unwrap();
        f.store.delete_token("ci-bot").await.unwrap();
        assert_eq!(reason(f.auth(&b)), "invalid username or password");
        assert_eq!(reason(f.auth(&jwt)), "token `ci-bot` no longer exists");
    }

    #[tokio::test]
    async fn regenerated_or_deleted_slot_invalidates_its_tokens_only() {
        let f = fixture(None).await;
        let old = basic("ci-bot", &f.secrets[0]);
        let jwt1 = f.bearer_for(&token(PasswordSlot::Password1), vec![]);
        let jwt2 = f.bearer_for(&token(PasswordSlot::Password2), vec![]);
        f.auth(&old).unwrap();
        f.auth(&jwt1).unwrap();
        let regenerated = f
            .store
            .generate_passwords("ci-bot", &[PasswordSlot::Password1], None)
            .await
            .unwrap();
        assert_eq!(reason(f.auth(&old)), "invalid username or password");
        assert_eq!(
            reason(f.auth(&jwt1)),
            "password1 of token `ci-bot` has been regenerated"
        );
        // The other slot is untouched (zero-downtime rotation) and the new password works.
        f.auth(&jwt2).unwrap();
        let new = basic("ci-bot", &regenerated.passwords[0].value);
        assert_eq!(
            f.auth(&new).unwrap().principal,
            token(PasswordSlot::Password1)
        );
        assert_eq!(
            f.auth(&f.bearer_for(&token(PasswordSlot::Password1), vec![]))
                .unwrap()
                .principal,
            token(PasswordSlot::Password1)
        );
        f.store
            .delete_password("ci-bot", PasswordSlot::Password2)
            .await
            .unwrap();
        assert_eq!(
            reason(f.auth(&jwt2)),
            "password2 of token `ci-bot` has been deleted"
        );
    }

    #[tokio::test]
    async fn forged_or_foreign_bearer_tokens_are_refused() {
        let f = fixture(None).await;
        let other = Issuer::generated("registry.test", Duration::from_secs(300)).unwrap();
        let subject = f.authn.subject(&Principal::Admin).unwrap();
        let foreign = other
            .sign(TokenUse::Access, subject.clone(), vec![], now_unix())
            .unwrap();
        let h = HeaderValue::from_str(&format!("Bearer {}", foreign.token)).unwrap();
        assert!(reason(f.auth(&h)).starts_with("bearer token was signed by an unknown key"));
        // A refresh token is not a bearer token.
        let refresh = f
            .issuer
            .sign(TokenUse::Refresh, subject, vec![], now_unix())
            .unwrap();
        let h = HeaderValue::from_str(&format!("Bearer {}", refresh.token)).unwrap();
        assert!(reason(f.auth(&h)).starts_with("bearer token has type"));
    }

    #[tokio::test]
    async fn refresh_tokens_recheck_the_principal() {
        let f = fixture(None).await;
        let subject = f.authn.subject(&token(PasswordSlot::Password1)).unwrap();
        let refresh = f
            .issuer
            .sign(TokenUse::Refresh, subject, vec![], now_unix())
            .unwrap();
        assert_eq!(
            f.authn.refresh(&refresh.token).unwrap(),
            token(PasswordSlot::Password1)
        );
        let access = f
            .issuer
            .sign(
                TokenUse::Access,
                f.authn.subject(&Principal::Admin).unwrap(),
                vec![],
                now_unix(),
            )
            .unwrap();
        assert!(f.authn.refresh(&access.token).is_err());
        assert!(f.authn.refresh("garbage").is_err());
        f.store
            .update_token(
                "ci-bot",
                &TokenUpdate {
                    status: Some(TokenStatus::Disabled),
                    ..TokenUpdate::default()
                },
            )
            .await
            .unwrap();
        assert!(matches!(
            f.authn.refresh(&refresh.token),
            Err(GatewayError::InvalidCredentials { reason, .. }) if reason == "token `ci-bot` is disabled"
        ));
    }

    /// Per-request cost of each path; run with
    /// `cargo test --release --lib gateway::authn::tests::timing -- --ignored --nocapture`.
    #[tokio::test]
    #[ignore = "a measurement, not a check"]
    async fn timing() {
        let f = fixture(None).await;
        let mean = |label: &str, mut run: Box<dyn FnMut() + '_>| {
            const N: u32 = 20_000;
            let start = std::time::Instant::now();
            for _ in 0..N {
                run();
            }
            println!(
                "{label}: {:.2} µs",
                start.elapsed().as_secs_f64() * 1e6 / f64::from(N)
            );
        };
        let b = basic("ci-bot", &f.secrets[0]);
        let jwt = f.bearer_for(&token(PasswordSlot::Password1), pull_access());
        let raw = jwt
            .to_str()
            .unwrap()
            .trim_start_matches("Bearer ")
            .to_owned();
        let now = now_unix();
        mean("basic, cache hit", Box::new(|| assert!(f.auth(&b).is_ok())));
        mean(
            "basic, cache miss (password check)",
            Box::new(|| {
                assert!(
                    f.store
                        .snapshot()
                        .verify_password("ci-bot", &f.secrets[0], now)
                        .is_ok()
                )
            }),
        );
        mean(
            "bearer, cache hit",
            Box::new(|| assert!(f.auth(&jwt).is_ok())),
        );
        mean(
            "bearer, cache miss (ES256 verify)",
            Box::new(|| assert!(f.issuer.verify(&raw, TokenUse::Access, now).is_ok())),
        );
        mean(
            "ES256 sign",
            Box::new(|| {
                let subject = f.authn.subject(&token(PasswordSlot::Password1)).unwrap();
                assert!(
                    f.issuer
                        .sign(TokenUse::Access, subject, vec![], now)
                        .is_ok()
                );
            }),
        );
    }

    #[tokio::test]
    async fn malformed_headers_are_invalid_credentials_never_panics() {
        let f = fixture(None).await;
        let cases: &[&[u8]] = &[
            b"",
            b"Basic",
            b"Basic ",
            b"Basic !!!",
            b"Basic bm9jb2xvbg==", // "nocolon"
            b"Basic /w==",         // not utf-8
            b"Bearer",
            b"Bearer ",
            b"Bearer a.b.c",
            b"Bearer \xff\xfe",
            b"Digest username=x",
            b"\xe9\xe9 \xe9",
        ];
        for case in cases {
            let h = HeaderValue::from_bytes(case).unwrap();
            assert!(
                matches!(f.auth(&h), Err(GatewayError::InvalidCredentials { .. })),
                "{}",
                String::from_utf8_lossy(case)
            );
        }
        // The scheme is case-insensitive.
        let h = basic("admin", ADMIN_PASSWORD);
        let lower =
            HeaderValue::from_str(&h.to_str().unwrap().replacen("Basic", "basic", 1)).unwrap();
        assert_eq!(f.auth(&lower).unwrap().principal, Principal::Admin);
    }
}
