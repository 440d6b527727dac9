//! The token-signing keys every gateway shares: stored in the control plane
//! (`control_plane::signing_keys`), sealed by the trust key-encryption key with the kid
//! as associated data, and held by each gateway as the [`Issuer`]'s key ring.
//!
//! The first gateway to start on an empty control plane creates the first key (from the
//! data directory's `token-signing-key.pem` when there is one, so tokens minted before
//! the ring stay valid; the file is removed once the ring holds its key). A rotation
//! stores a new key, which signs from then on everywhere, and retires the old one: it
//! keeps verifying until no token it signed can still be valid — a refresh token lives
//! [`REFRESH_TTL`], an access token the token TTL, both with the clock-skew leeway —
//! then it leaves the ring. A rotation that drops the previous keys (a leaked key)
//! refuses their tokens at once. Gateways learn of a rotation by `NOTIFY` on
//! `portcullis_control_keys` and by a poll every [`POLL`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use p256::ecdsa::SigningKey;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use serde::Serialize;

use super::jwt::{self, Issuer, JwtError, KeyRing, LEEWAY, REFRESH_TTL};
use crate::control_plane::signing_keys::{CHANNEL, SigningKeyStore, StoredKey};
use crate::control_plane::sync::{self, Refresh};
use crate::control_plane::{ControlDb, ControlStoreError};
use crate::identity::{UnixSeconds, now_unix};
use crate::trust::kek::Kek;
use crate::trust::service::TrustService;
use crate::trust::signer::random_p256_key;

/// The safety-net poll of the key records.
pub const POLL: Duration = Duration::from_secs(5);

/// How long a retired key keeps verifying: the longest-lived token it may have signed
/// (a refresh token), plus the clock-skew leeway.
#[allow(clippy::cast_possible_wrap, reason = "30 days in seconds")]
pub const OVERLAP: i64 = REFRESH_TTL.as_secs() as i64 + LEEWAY;

#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    #[error(transparent)]
    Store(#[from] ControlStoreError),
    #[error(transparent)]
    Jwt(#[from] JwtError),
    #[error(
        "token-signing key `{0}` does not open with the trust key-encryption key: every \
         gateway sharing the control plane needs the same trust key passphrase"
    )]
    Sealed(String),
    #[error("the control plane holds no token-signing key that signs")]
    NoSigningKey,
}

/// A key as `GET /admin/v1/signing-keys` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    pub kid: String,
    pub created: UnixSeconds,
    pub retired: Option<UnixSeconds>,
    /// Whether tokens are signed with it now.
    pub signing: bool,
    /// When it leaves the ring (retired keys).
    pub drops_at: Option<UnixSeconds>,
}

/// The shared key ring of one gateway: the store, the KEK that opens the keys, and the
/// issuer whose ring it keeps current.
pub struct SigningKeys {
    store: SigningKeyStore,
    trust: Arc<TrustService>,
    issuer: Arc<Issuer>,
    /// Held while reading and swapping in a ring, so an older read never replaces a
    /// newer ring.
    applying: tokio::sync::Mutex<()>,
}

impl SigningKeys {
    /// Reads the ring from `db`, creating the first key if there is none; the issuer of
    /// `service` tokens valid for `ttl` that signs with it.
    pub async fn open(
        db: ControlDb,
        trust: Arc<TrustService>,
        data_dir: &Path,
        service: &str,
        ttl: Duration,
    ) -> Result<Arc<SigningKeys>, SigningKeyError> {
        let store = SigningKeyStore::new(db);
        let legacy = jwt::read_legacy_key(data_dir)?;
        if store.list().await?.is_empty() {
            let key = legacy.clone().unwrap_or_else(random_p256_key);
            let stored = store.create_first(seal(&trust, &key, now_unix())?).await?;
            if stored {
                tracing::info!(
                    kid = %jwt::key_id(key.verifying_key())?,
                    from_file = legacy.is_some(),
                    "token-signing key ring created"
                );
            }
        }
        let ring = ring_of(&trust, &store.list().await?, now_unix(), None)?;
        if let Some(legacy) = legacy {
            let kid = jwt::key_id(legacy.verifying_key())?;
            let path = data_dir.join(jwt::SIGNING_KEY_FILE);
            if ring.kids().any(|k| k == kid) {
                // The sealed copy in the control plane is the key now.
                std::fs::remove_file(&path).map_err(|source| JwtError::Io {
                    path: path.clone(),
                    source,
                })?;
            } else {
                tracing::warn!(
                    path = %path.display(),
                    %kid,
                    "this key is not in the shared token-signing key ring (another gateway \
                     created the ring): tokens it signed are no longer accepted"
                );
            }
        }
        Ok(Arc::new(SigningKeys {
            store,
            trust,
            issuer: Arc::new(Issuer::new(ring, service, ttl)),
            applying: tokio::sync::Mutex::new(()),
        }))
    }

    /// The issuer that signs and verifies with the ring.
    pub fn issuer(&self) -> &Arc<Issuer> {
        &self.issuer
    }

    /// Every stored key, oldest first.
    pub async fn list(&self) -> Result<Vec<KeyInfo>, SigningKeyError> {
        let keys = self.store.list().await?;
        let signing = signing_key(&keys).map(|k| k.kid.clone());
        Ok(keys
            .into_iter()
            .map(|k| KeyInfo {
                signing: signing.as_deref() == Some(k.kid.as_str()),
                drops_at: k.retired.map(|at| at.saturating_add(OVERLAP)),
                kid: k.kid,
                created: k.created,
                retired: k.retired,
            })
            .collect())
    }

    /// Stores a new key that signs from now on and retires the others — or, with
    /// `drop_previous` (a leaked key), deletes them: every token they signed is refused
    /// from then on. The new key.
    pub async fn rotate(&self, drop_previous: bool) -> Result<KeyInfo, SigningKeyError> {
        let now = now_unix();
        let key = seal(&self.trust, &random_p256_key(), now)?;
        let kid = key.kid.clone();
        let drop_before = if drop_previous {
            UnixSeconds::MAX
        } else {
            now.saturating_sub(OVERLAP)
        };
        self.store.rotate(key, now, drop_before).await?;
        self.apply().await?;
        tracing::info!(%kid, drop_previous, "token-signing key rotated");
        Ok(KeyInfo {
            kid,
            created: now,
            retired: None,
            signing: true,
            drops_at: None,
        })
    }

    /// Re-reads the ring and puts it in force.
    async fn apply(&self) -> Result<(), SigningKeyError> {
        let _applying = self.applying.lock().await;
        let current = self.issuer.ring();
        let ring = ring_of(
            &self.trust,
            &self.store.list().await?,
            now_unix(),
            Some(&current),
        )?;
        let mut before: Vec<&str> = current.kids().collect();
        let mut after: Vec<&str> = ring.kids().collect();
        before.sort_unstable();
        after.sort_unstable();
        if before != after || current.kid() != ring.kid() {
            tracing::info!(
                kid = ring.kid(),
                keys = after.len(),
                "token-signing key ring changed"
            );
            self.issuer.replace_ring(ring);
        }
        Ok(())
    }

    /// Starts following changes made through other gateways (PostgreSQL only).
    pub fn spawn_sync(self: &Arc<Self>) {
        sync::spawn(
            self.store.db(),
            CHANNEL,
            "portcullis signing-keys listener",
            POLL,
            Arc::clone(self) as Arc<dyn Refresh>,
        );
    }
}

impl Refresh for SigningKeys {
    fn refresh(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.apply().await {
                tracing::error!(error = %e, "token-signing keys not refreshed; the ring in force stays");
            }
        })
    }
}

/// Re-seals the keys in `control.redb` from the `old` to the `new` key-encryption key
/// (`portcullis trust rotate-kek`); how many.
pub fn reseal_embedded(
    db: &crate::control_plane::EmbeddedDb,
    old: &Kek,
    new: &Kek,
) -> Result<usize, SigningKeyError> {
    crate::control_plane::signing_keys::reseal_embedded(db, |key| {
        let aad = aad(&key.kid);
        let plain = old
            .open(&aad, &key.sealed)
            .ok_or_else(|| SigningKeyError::Sealed(key.kid.clone()))?;
        Ok(new.seal(&aad, &plain))
    })
}

/// The associated data a key is sealed under: its slot.
fn aad(kid: &str) -> Vec<u8> {
    format!("token-signing-key\n{kid}").into_bytes()
}

fn seal(
    trust: &TrustService,
    key: &SigningKey,
    now: UnixSeconds,
) -> Result<StoredKey, SigningKeyError> {
    let kid = jwt::key_id(key.verifying_key())?;
    let der = key
        .to_pkcs8_der()
        .map_err(|e| JwtError::Encode(e.to_string()))?;
    Ok(StoredKey {
        sealed: trust.kek().seal(&aad(&kid), der.as_bytes()),
        kid,
        created: now,
        retired: None,
    })
}

fn unseal(trust: &TrustService, stored: &StoredKey) -> Result<SigningKey, SigningKeyError> {
    let der = trust
        .kek()
        .open(&aad(&stored.kid), &stored.sealed)
        .ok_or_else(|| SigningKeyError::Sealed(stored.kid.clone()))?;
    let key = SigningKey::from_pkcs8_der(&der)
        .map_err(|e| ControlStoreError::Corrupt(format!("signing key `{}`: {e}", stored.kid)))?;
    if jwt::key_id(key.verifying_key())? != stored.kid {
        return Err(ControlStoreError::Corrupt(format!(
            "signing key `{}`: the key has another kid",
            stored.kid
        ))
        .into());
    }
    Ok(key)
}

/// The newest key not retired: the one that signs.
fn signing_key(keys: &[StoredKey]) -> Option<&StoredKey> {
    keys.iter()
        .filter(|k| k.retired.is_none())
        .max_by(|a, b| (a.created, &a.kid).cmp(&(b.created, &b.kid)))
}

/// The ring of `keys` at `now`: the signing key, and every other key not retired or
/// retired less than [`OVERLAP`] ago. Keys `known` already holds are taken from it rather
/// than unsealed again (opening a key derives its public key: the poll stays cheap).
pub(crate) fn ring_of(
    trust: &TrustService,
    keys: &[StoredKey],
    now: UnixSeconds,
    known: Option<&KeyRing>,
) -> Result<KeyRing, SigningKeyError> {
    let signing = signing_key(keys).ok_or(SigningKeyError::NoSigningKey)?;
    let others = keys
        .iter()
        .filter(|k| k.kid != signing.kid)
        .filter(|k| k.retired.is_none_or(|at| now <= at.saturating_add(OVERLAP)))
        .map(
            |k| match known.and_then(|ring| ring.verifying_key(&k.kid)) {
                Some(key) => Ok(key),
                None => unseal(trust, k).map(|key| *key.verifying_key()),
            },
        )
        .collect::<Result<Vec<_>, _>>()?;
    let signing = match known {
        Some(ring) if ring.kid() == signing.kid => ring.signing_key().clone(),
        _ => unseal(trust, signing)?,
    };
    Ok(KeyRing::new(signing, &others)?)
}
