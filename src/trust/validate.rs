//! notary-server's update validation (`server/handlers/validation.go` `validateUpdate`), the
//! snapshot and timestamp the server generates, their refresh on read, and the signed targets
//! docker reads.
//!
//! Everything works on a [`TrustState`] (what the store holds for one GUN) and returns the
//! files to store; persisting them atomically is the store's job.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde_json::{Map, Value, json};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use super::Role;
use super::canonical::canonical_json;
use super::metadata::{
    FileMeta, MAX_VERSION, MetadataError, RoleKeys, Root, SignedFile, Snapshot, Targets, Timestamp,
    envelope,
};
use super::signer::ServerKey;

/// How long generated snapshots live (notary: 3 years).
const SNAPSHOT_LIFETIME: Duration = Duration::days(3 * 365);
/// How long generated timestamps live (notary: 14 days).
const TIMESTAMP_LIFETIME: Duration = Duration::days(14);

/// What the store currently holds for one GUN (current version of each role, raw bytes).
pub trait TrustState {
    fn current(&self, role: &Role) -> Option<Bytes>;
    /// The private key the server holds with this key id, for this GUN and role.
    fn server_key(&self, role: &Role, key_id: &str) -> Option<ServerKey>;
}

/// Why an update was refused; [`UpdateError::code`] and [`UpdateError::detail`] give notary's
/// error code and `SerializableError` detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error("invalid root: {0}")]
    BadRoot(String),
    #[error("invalid targets: {0}")]
    BadTargets(String),
    #[error("invalid snapshot: {0}")]
    BadSnapshot(String),
    #[error("{msg}")]
    BadHierarchy { missing: String, msg: String },
    #[error("invalid update: {0}")]
    Validation(String),
    #[error("malformed json: {0}")]
    MalformedJson(String),
}

impl UpdateError {
    /// notary's error code: `INVALID_UPDATE` or `MALFORMED_JSON` (`VERSION` is the store's).
    pub fn code(&self) -> &'static str {
        match self {
            UpdateError::MalformedJson(_) => "MALFORMED_JSON",
            _ => "INVALID_UPDATE",
        }
    }

    /// notary's `SerializableError`: `{"Name":"ErrBadRoot","Error":{"Msg":…[,"Missing":…]}}`.
    pub fn detail(&self) -> Value {
        let (name, msg) = match self {
            UpdateError::BadRoot(msg) => ("ErrBadRoot", msg),
            UpdateError::BadTargets(msg) => ("ErrBadTargets", msg),
            UpdateError::BadSnapshot(msg) => ("ErrBadSnapshot", msg),
            UpdateError::BadHierarchy { msg, .. } => ("ErrBadHierarchy", msg),
            UpdateError::Validation(msg) => ("ErrValidation", msg),
            UpdateError::MalformedJson(msg) => ("ErrMalformedJSON", msg),
        };
        let mut error = json!({"Msg": msg});
        if let UpdateError::BadHierarchy { missing, .. } = self {
            error["Missing"] = json!(missing);
        }
        json!({"Name": name, "Error": error})
    }
}

/// A target docker can pull by: name (the tag) → manifest digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTarget {
    pub name: String,
    /// Hex sha256.
    pub sha256: String,
}

/// Files to store, parsed (the store indexes them by version; `raw` is stored verbatim).
pub type Files = Vec<(Role, SignedFile)>;

/// The root and targets roles validated so far (notary's `RepoBuilder`).
struct Loaded {
    root: SignedFile,
    root_body: Root,
    targets: BTreeMap<Role, (SignedFile, Targets)>,
}

impl Loaded {
    /// Loads a targets role: signed by the root's targets keys, or by the delegation its
    /// (already loaded) parent declares. `now` None allows an expired file (stored ancestors).
    fn load_targets(
        &mut self,
        role: &Role,
        file: SignedFile,
        now: Option<OffsetDateTime>,
    ) -> Result<(), String> {
        let body = Targets::parse(&file, role).map_err(|e| e.to_string())?;
        let keys = match role.parent() {
            None => self.root_body.role(&Role::targets()),
            Some(parent) => {
                let (_, parent_body) = self
                    .targets
                    .get(&parent)
                    .ok_or_else(|| format!("{role}: parent {parent} is not available"))?;
                &parent_body
                    .delegation(role)
                    .ok_or_else(|| format!("{role} is not delegated by {parent}"))?
                    .keys
            }
        };
        file.verify(role, keys).map_err(|e| e.to_string())?;
        file.check_common(role, now).map_err(|e| e.to_string())?;
        self.targets.insert(role.clone(), (file, body));
        Ok(())
    }
}

/// Validates an upload (multipart parts, role → raw bytes; a `timestamp` part is ignored) and
/// returns every file to store atomically: the uploaded roles (bytes verbatim), a generated
/// snapshot when none was uploaded, and a new timestamp. That versions exceed the stored
/// ones is checked by the store, in the transaction that writes them.
pub fn validate_update(
    gun: &str,
    state: &dyn TrustState,
    upload: Vec<(Role, Bytes)>,
    now: OffsetDateTime,
) -> Result<Files, UpdateError> {
    let mut files = BTreeMap::new();
    for (role, bytes) in upload {
        if role == Role::timestamp() {
            continue;
        }
        let file = SignedFile::parse(bytes)
            .map_err(|e| UpdateError::MalformedJson(format!("{role}: {e}")))?;
        files.insert(role, file);
    }
    let mut out: Vec<(Role, SignedFile)> = Vec::new();

    let stored_root = stored(state, &Role::root())?;
    let (root, root_body) = match (files.remove(&Role::root()), stored_root) {
        (Some(new), previous) => {
            let current = previous.as_ref().map_or(1, |p| p.version);
            if new.version != current && new.version != current + 1 {
                return Err(UpdateError::BadRoot(format!(
                    "root modifications must increment the version: current {current}, new {}",
                    new.version
                )));
            }
            let body =
                validate_root(gun, previous.as_ref(), &new, now).map_err(UpdateError::BadRoot)?;
            out.push((Role::root(), new.clone()));
            (new, body)
        }
        (None, Some(previous)) => {
            let body = Root::parse(&previous).map_err(stored_error)?;
            (previous, body)
        }
        (None, None) => {
            return Err(UpdateError::Validation(
                "no pre-existing root and no root provided in update.".to_owned(),
            ));
        }
    };
    let mut loaded = Loaded {
        root,
        root_body,
        targets: BTreeMap::new(),
    };

    // Shallow roles first, so a delegation's parent is the uploaded one when both are sent.
    let mut targets_roles: Vec<Role> = files.keys().filter(|r| r.is_targets()).cloned().collect();
    targets_roles.sort_by(|a, b| a.depth().cmp(&b.depth()).then_with(|| a.cmp(b)));
    for role in targets_roles {
        let mut missing = Vec::new();
        let mut ancestor = role.parent();
        while let Some(parent) = ancestor {
            if !loaded.targets.contains_key(&parent) {
                missing.push(parent.clone());
            }
            ancestor = parent.parent();
        }
        for parent in missing.iter().rev() {
            // A parent absent from the store makes the child fail to load below.
            if let Some(file) = stored(state, parent)? {
                loaded
                    .load_targets(parent, file, None)
                    .map_err(UpdateError::BadTargets)?;
            }
        }
        if let Some(file) = files.remove(&role) {
            loaded
                .load_targets(&role, file.clone(), Some(now))
                .map_err(UpdateError::BadTargets)?;
            out.push((role, file));
        }
    }

    let uploaded_snapshot = files.remove(&Role::snapshot());
    if let Some(file) = &uploaded_snapshot {
        check_snapshot(state, &loaded, file, now)
            .map_err(|e| UpdateError::BadSnapshot(e.to_string()))?;
        out.push((Role::snapshot(), file.clone()));
    }
    let snapshot = match uploaded_snapshot {
        Some(file) => file,
        None => {
            let file = generate_snapshot(state, &loaded, now)?;
            out.push((Role::snapshot(), file.clone()));
            file
        }
    };
    let timestamp = generate_timestamp(state, &loaded.root_body, &snapshot.raw, now)?;
    out.push((Role::timestamp(), timestamp));
    Ok(out)
}

/// What a stale timestamp/snapshot pair needs (see [`staleness`]).
struct Stale {
    root: Root,
    snapshot: SignedFile,
    /// The snapshot expired and the server holds its keys: re-sign it with these.
    resign_snapshot: Option<Vec<ServerKey>>,
}

/// Whether a GET of `role` (timestamp or snapshot) finds the stored timestamp expired or
/// not matching the snapshot, or the snapshot expired with its key on the server. Signs
/// nothing: the cheap check before taking the write lock.
pub fn is_stale(
    state: &dyn TrustState,
    role: &Role,
    now: OffsetDateTime,
) -> Result<bool, UpdateError> {
    Ok(staleness(state, role, now)?.is_some())
}

fn staleness(
    state: &dyn TrustState,
    role: &Role,
    now: OffsetDateTime,
) -> Result<Option<Stale>, UpdateError> {
    if !role.is_server_managed() {
        return Ok(None);
    }
    let (Some(timestamp), Some(snapshot)) = (
        stored(state, &Role::timestamp())?,
        stored(state, &Role::snapshot())?,
    ) else {
        return Ok(None);
    };
    let consistent = Timestamp::parse(&timestamp)
        .map_err(stored_error)?
        .snapshot
        .check(&Role::snapshot(), &snapshot.raw)
        .is_ok();
    let timestamp_fresh = timestamp.expires >= now && consistent;
    // The common case, on every signed pull: nothing expired, so the root is not read.
    if timestamp_fresh && snapshot.expires >= now {
        return Ok(None);
    }
    let Some(root) = stored(state, &Role::root())? else {
        return Ok(None);
    };
    let root = Root::parse(&root).map_err(stored_error)?;
    // An expired snapshot the server cannot sign is left to the client to judge.
    let resign_snapshot = if snapshot.expires < now {
        signers(state, &Role::snapshot(), root.role(&Role::snapshot()))
    } else {
        None
    };
    if resign_snapshot.is_none() && timestamp_fresh {
        return Ok(None);
    }
    Ok(Some(Stale {
        root,
        snapshot,
        resign_snapshot,
    }))
}

/// On GET of timestamp/snapshot: regenerated files when the stored timestamp (or a snapshot
/// the server can sign) is expired or inconsistent; None when the stored ones are fine.
pub fn refresh(
    gun: &str,
    state: &dyn TrustState,
    role: &Role,
    now: OffsetDateTime,
) -> Result<Option<Files>, UpdateError> {
    let Some(Stale {
        root,
        snapshot,
        resign_snapshot,
    }) = staleness(state, role, now)?
    else {
        return Ok(None);
    };
    let mut files = Vec::new();
    let mut snapshot_bytes = snapshot.raw.clone();
    if let Some(signers) = resign_snapshot {
        // The same meta, re-signed.
        let meta = snapshot
            .signed
            .get("meta")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let signed = snapshot_body(meta, next_version(&Role::snapshot(), Some(&snapshot))?, now);
        let file = sign_by(&signers, &signed)?;
        snapshot_bytes = file.raw.clone();
        files.push((Role::snapshot(), file));
    }
    let timestamp = generate_timestamp(state, &root, &snapshot_bytes, now).map_err(|e| {
        UpdateError::Validation(format!("cannot refresh the timestamp of {gun}: {e}"))
    })?;
    files.push((Role::timestamp(), timestamp));
    Ok(Some(files))
}

/// The signed targets docker would accept, walked as the notary client does: the current
/// root; the snapshot signed by the root's snapshot keys; `targets` signed by a threshold
/// of the root's targets keys, unexpired, matching the snapshot; `targets/releases` only
/// while that `targets` delegates it, signed by a threshold of the delegation's keys,
/// unexpired, matching the snapshot, and only the names the delegation's paths cover. A role
/// that fails counts for nothing. `targets/releases` comes first (the first role naming a
/// target wins, as in docker's `GetTargetByName`); sha256 targets only.
pub fn signed_targets(state: &dyn TrustState, now: OffsetDateTime) -> Vec<SignedTarget> {
    let load = |role: &Role| state.current(role).and_then(|b| SignedFile::parse(b).ok());
    let Some(root) = load(&Role::root())
        .filter(|f| f.check_common(&Role::root(), Some(now)).is_ok())
        .and_then(|f| Root::parse(&f).ok())
    else {
        return Vec::new();
    };
    let Some(snapshot) = load(&Role::snapshot())
        .filter(|f| {
            f.verify(&Role::snapshot(), root.role(&Role::snapshot()))
                .is_ok()
        })
        .and_then(|f| Snapshot::parse(&f).ok())
    else {
        return Vec::new();
    };
    let trusted = |role: &Role, keys: &RoleKeys| -> Option<Targets> {
        let bytes = state.current(role)?;
        snapshot.meta.get(role.as_str())?.check(role, &bytes).ok()?;
        let file = SignedFile::parse(bytes).ok()?;
        file.verify(role, keys).ok()?;
        file.check_common(role, Some(now)).ok()?;
        Targets::parse(&file, role).ok()
    };
    let Some(targets) = trusted(&Role::targets(), root.role(&Role::targets())) else {
        return Vec::new();
    };
    let releases = targets
        .delegation(&Role::releases())
        .and_then(|delegation| {
            let body = trusted(&delegation.name, &delegation.keys)?;
            let covered = body
                .targets
                .into_iter()
                .filter(|(name, _)| delegation.covers(name));
            Some(covered.collect::<Vec<_>>())
        });
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (name, meta) in releases.into_iter().flatten().chain(targets.targets) {
        let Some(sha256) = meta.hashes.get("sha256") else {
            continue;
        };
        if seen.insert(name.clone()) {
            out.push(SignedTarget {
                name,
                sha256: hex::encode(sha256),
            });
        }
    }
    out
}

/// The version after `previous` (1 for a new role), within what files may carry.
fn next_version(role: &Role, previous: Option<&SignedFile>) -> Result<u64, UpdateError> {
    previous
        .map_or(0, |p| p.version)
        .checked_add(1)
        .filter(|v| *v <= MAX_VERSION)
        .ok_or_else(|| {
            UpdateError::Validation(format!("{role} version cannot go past {MAX_VERSION}"))
        })
}

/// A stored file, parsed; a stored file that no longer parses is a server-side problem.
fn stored(state: &dyn TrustState, role: &Role) -> Result<Option<SignedFile>, UpdateError> {
    state
        .current(role)
        .map(|bytes| SignedFile::parse(bytes).map_err(stored_error))
        .transpose()
}

fn stored_error(e: MetadataError) -> UpdateError {
    UpdateError::Validation(format!("stored metadata is invalid: {e}"))
}

/// `trustpinning.ValidateRoot` as the server runs it (no pins): certificates valid for the
/// GUN, rotation signed by a threshold of the previous root's certificates, signed by a
/// threshold of its own, not expired.
fn validate_root(
    gun: &str,
    previous: Option<&SignedFile>,
    new: &SignedFile,
    now: OffsetDateTime,
) -> Result<Root, String> {
    let body = Root::parse(new).map_err(|e| e.to_string())?;
    let own = valid_root_keys(&body, gun, Some(now))?;
    if let Some(previous) = previous {
        let trusted = Root::parse(previous)
            .map_err(|e| format!("stored root is invalid: {e}"))
            .and_then(|previous| valid_root_keys(&previous, gun, None))?;
        new.verify(&Role::root(), &trusted).map_err(|e| {
            format!(
                "root rotation failed: not signed by a threshold of the previous root keys: {e}"
            )
        })?;
    }
    new.verify(&Role::root(), &own).map_err(|e| e.to_string())?;
    new.check_common(&Role::root(), Some(now))
        .map_err(|e| e.to_string())?;
    Ok(body)
}

/// The root role's keys whose certificates pass the root rules (`now` None: expiry unchecked).
fn valid_root_keys(
    root: &Root,
    gun: &str,
    now: Option<OffsetDateTime>,
) -> Result<RoleKeys, String> {
    let mut role = root.role(&Role::root()).clone();
    let mut first_error = None;
    role.keys
        .retain(|id, key| match key.check_root_certificate(gun, now) {
            Ok(()) => true,
            Err(e) => {
                first_error.get_or_insert_with(|| format!("key {id}: {e}"));
                false
            }
        });
    if role.keys.is_empty() {
        return Err(format!(
            "no valid leaf certificates found in any of the root keys: {}",
            first_error.unwrap_or_default()
        ));
    }
    Ok(role)
}

/// An uploaded snapshot: signed by the root's snapshot keys, not expired, and matching the
/// root, every targets role loaded for this update and, when not uploaded, the stored
/// `targets` (stricter than notary, which skips it: clients would fail on the mismatch).
fn check_snapshot(
    state: &dyn TrustState,
    loaded: &Loaded,
    file: &SignedFile,
    now: OffsetDateTime,
) -> Result<(), MetadataError> {
    let body = Snapshot::parse(file)?;
    file.verify(&Role::snapshot(), loaded.root_body.role(&Role::snapshot()))?;
    file.check_common(&Role::snapshot(), Some(now))?;
    let mut roles: Vec<(Role, Bytes)> = vec![(Role::root(), loaded.root.raw.clone())];
    roles.extend(
        loaded
            .targets
            .iter()
            .map(|(role, (file, _))| (role.clone(), file.raw.clone())),
    );
    if !loaded.targets.contains_key(&Role::targets())
        && let Some(stored) = state.current(&Role::targets())
    {
        roles.push((Role::targets(), stored));
    }
    for (role, bytes) in roles {
        let meta = body
            .meta
            .get(role.as_str())
            .ok_or_else(|| MetadataError::Hash {
                role: role.to_string(),
                msg: "the snapshot has no entry for it".to_owned(),
            })?;
        meta.check(&role, &bytes)?;
    }
    Ok(())
}

/// notary's `generateSnapshot`: the stored snapshot's meta updated with the root and every
/// loaded targets role, version + 1, signed with the root's snapshot key the server holds.
fn generate_snapshot(
    state: &dyn TrustState,
    loaded: &Loaded,
    now: OffsetDateTime,
) -> Result<SignedFile, UpdateError> {
    let previous = stored(state, &Role::snapshot())?;
    if previous.is_none() && !loaded.targets.contains_key(&Role::targets()) {
        return Err(UpdateError::Validation(
            "no snapshot exists yet and the update contains no targets to create one from"
                .to_owned(),
        ));
    }
    let mut meta = previous
        .as_ref()
        .and_then(|p| p.signed.get("meta"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_else(Map::new);
    meta.insert("root".to_owned(), FileMeta::of(&loaded.root.raw).to_json());
    for (role, (file, _)) in &loaded.targets {
        meta.insert(role.to_string(), FileMeta::of(&file.raw).to_json());
    }
    let version = next_version(&Role::snapshot(), previous.as_ref())?;
    let signed = snapshot_body(Value::Object(meta), version, now);
    let keys = loaded.root_body.role(&Role::snapshot());
    sign_with(state, &Role::snapshot(), keys, &signed)?.ok_or_else(|| {
        UpdateError::BadHierarchy {
            missing: "snapshot".to_owned(),
            msg: "no snapshot was included in update and server does not hold current snapshot key for repository"
                .to_owned(),
        }
    })
}

/// A snapshot body as notary generates it (3 years).
fn snapshot_body(meta: Value, version: u64, now: OffsetDateTime) -> Value {
    json!({
        "_type": "Snapshot",
        "expires": rfc3339(now + SNAPSHOT_LIFETIME),
        "meta": meta,
        "version": version,
    })
}

/// notary's `generateTimestamp`: version + 1, 14 days, sha256 + sha512 of the snapshot bytes,
/// signed with the root's timestamp key the server holds.
fn generate_timestamp(
    state: &dyn TrustState,
    root: &Root,
    snapshot: &[u8],
    now: OffsetDateTime,
) -> Result<SignedFile, UpdateError> {
    let previous = stored(state, &Role::timestamp())?;
    let signed = json!({
        "_type": "Timestamp",
        "expires": rfc3339(now + TIMESTAMP_LIFETIME),
        "meta": {"snapshot": FileMeta::of(snapshot).to_json()},
        "version": next_version(&Role::timestamp(), previous.as_ref())?,
    });
    let keys = root.role(&Role::timestamp());
    sign_with(state, &Role::timestamp(), keys, &signed)?
        .ok_or_else(|| UpdateError::BadRoot("no timestamp keys exist on the server".to_owned()))
}

/// The keys of `keys` the server holds for `role`; None below the threshold.
fn signers(state: &dyn TrustState, role: &Role, keys: &RoleKeys) -> Option<Vec<ServerKey>> {
    let signers: Vec<ServerKey> = keys
        .keys
        .keys()
        .filter_map(|id| state.server_key(role, id).filter(|key| key.id() == *id))
        .collect();
    (!signers.is_empty() && signers.len() >= keys.threshold).then_some(signers)
}

/// Signs `signed` with every key of `keys` the server holds; None below the threshold.
fn sign_with(
    state: &dyn TrustState,
    role: &Role,
    keys: &RoleKeys,
    signed: &Value,
) -> Result<Option<SignedFile>, UpdateError> {
    signers(state, role, keys)
        .map(|signers| sign_by(&signers, signed))
        .transpose()
}

/// Signs `signed` with each of `signers`.
fn sign_by(signers: &[ServerKey], signed: &Value) -> Result<SignedFile, UpdateError> {
    let invalid = |e: MetadataError| UpdateError::Validation(e.to_string());
    let message = canonical_json(signed).map_err(|e| UpdateError::Validation(e.to_string()))?;
    let signatures: Vec<Value> = signers.iter().map(|key| key.sign(&message)).collect();
    let bytes = envelope(signed, &signatures).map_err(invalid)?;
    SignedFile::parse(bytes).map_err(invalid)
}

/// RFC 3339 in whole seconds, UTC (what Go's `time.Time` parses).
fn rfc3339(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

/// Builders for test repositories: keys (plain ecdsa, x509 roots made with rcgen), metadata
/// bodies, signed envelopes, and an in-memory [`TrustState`].
#[cfg(test)]
pub(crate) mod testkit {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
    use serde_json::{Value, json};
    use time::OffsetDateTime;

    use super::{TrustState, rfc3339};
    use crate::trust::keys::{KeyType, PublicKey};
    use crate::trust::metadata::envelope;
    use crate::trust::{Role, ServerKey};

    /// A client-held P-256 key, as a plain `ecdsa` key or wrapped in a certificate.
    pub struct TestKey {
        signing: p256::ecdsa::SigningKey,
        pub public: PublicKey,
    }

    impl TestKey {
        pub fn ecdsa() -> TestKey {
            let signing =
                p256::ecdsa::SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
            let public = signing
                .verifying_key()
                .to_public_key_der()
                .unwrap()
                .into_vec();
            TestKey {
                signing,
                public: PublicKey {
                    keytype: KeyType::Ecdsa,
                    public,
                },
            }
        }

        /// A root key as docker makes it: self-signed leaf, CN = `gun`, valid 10 years.
        pub fn root(gun: &str) -> TestKey {
            TestKey::root_with(gun, |_| {})
        }

        pub fn root_with(gun: &str, edit: impl FnOnce(&mut rcgen::CertificateParams)) -> TestKey {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, gun);
            let now = OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::days(1);
            params.not_after = now + time::Duration::days(3650);
            edit(&mut params);
            let pem = params.self_signed(&pair).unwrap().pem();
            let signing = p256::ecdsa::SigningKey::from_pkcs8_der(&pair.serialize_der()).unwrap();
            TestKey {
                signing,
                public: PublicKey {
                    keytype: KeyType::EcdsaX509,
                    public: pem.into_bytes(),
                },
            }
        }

        pub fn id(&self) -> String {
            self.public.id()
        }

        fn sign(&self, message: &[u8]) -> Value {
            use base64::Engine as _;
            let sig: p256::ecdsa::Signature = self.signing.sign(message);
            let sig = base64::engine::general_purpose::STANDARD.encode(sig.to_bytes());
            json!({"keyid": self.id(), "method": "ecdsa", "sig": sig})
        }
    }

    /// `{"signed":…,"signatures":[…]}` signed by `keys`.
    pub fn sign(signed: &Value, keys: &[&TestKey]) -> Bytes {
        let message = crate::trust::canonical::canonical_json(signed).unwrap();
        let signatures: Vec<Value> = keys.iter().map(|k| k.sign(&message)).collect();
        envelope(signed, &signatures).unwrap()
    }

    fn key_map(keys: &[&PublicKey]) -> Value {
        Value::Object(keys.iter().map(|k| (k.id(), k.to_json())).collect())
    }

    fn role_json(keys: &[&PublicKey], threshold: usize) -> Value {
        json!({"keyids": keys.iter().map(|k| k.id()).collect::<Vec<_>>(), "threshold": threshold})
    }

    /// The keys a root names for each role.
    pub struct RootKeys<'a> {
        pub root: Vec<&'a PublicKey>,
        pub targets: Vec<&'a PublicKey>,
        pub targets_threshold: usize,
        pub snapshot: &'a PublicKey,
        pub timestamp: &'a PublicKey,
    }

    pub fn root_json(version: u64, keys: &RootKeys<'_>, expires: OffsetDateTime) -> Value {
        let mut all: Vec<&PublicKey> = keys.root.clone();
        all.extend(keys.targets.iter().copied());
        all.extend([keys.snapshot, keys.timestamp]);
        json!({
            "_type": "Root",
            "consistent_snapshot": false,
            "expires": rfc3339(expires),
            "keys": key_map(&all),
            "roles": {
                "root": role_json(&keys.root, 1),
                "targets": role_json(&keys.targets, keys.targets_threshold),
                "snapshot": role_json(&[keys.snapshot], 1),
                "timestamp": role_json(&[keys.timestamp], 1),
            },
            "version": version,
        })
    }

    /// A targets body: `targets` maps a tag to its manifest bytes; `delegations` names each
    /// delegated role with its key.
    pub fn targets_json(
        version: u64,
        targets: &[(&str, &[u8])],
        delegations: &[(&str, &PublicKey)],
        expires: OffsetDateTime,
    ) -> Value {
        let targets: serde_json::Map<String, Value> = targets
            .iter()
            .map(|(name, bytes)| {
                let mut meta = crate::trust::metadata::FileMeta::of(bytes).to_json();
                meta["hashes"].as_object_mut().unwrap().remove("sha512");
                ((*name).to_owned(), meta)
            })
            .collect();
        let keys: Vec<&PublicKey> = delegations.iter().map(|(_, k)| *k).collect();
        let roles: Vec<Value> = delegations
            .iter()
            .map(|(name, key)| {
                let mut role = role_json(&[key], 1);
                role["name"] = json!(name);
                role["paths"] = json!([""]);
                role
            })
            .collect();
        json!({
            "_type": "Targets",
            "delegations": {"keys": key_map(&keys), "roles": roles},
            "expires": rfc3339(expires),
            "targets": targets,
            "version": version,
        })
    }

    /// A snapshot body listing `files` (role name → bytes).
    pub fn snapshot_json(version: u64, files: &[(&str, &Bytes)], expires: OffsetDateTime) -> Value {
        let meta: serde_json::Map<String, Value> = files
            .iter()
            .map(|(name, bytes)| {
                (
                    (*name).to_owned(),
                    crate::trust::metadata::FileMeta::of(bytes).to_json(),
                )
            })
            .collect();
        json!({"_type": "Snapshot", "expires": rfc3339(expires), "meta": meta, "version": version})
    }

    /// One GUN's stored files and the server's keys.
    #[derive(Default)]
    pub struct MemState {
        pub files: BTreeMap<Role, Bytes>,
        pub keys: Vec<(Role, ServerKey)>,
    }

    impl MemState {
        pub fn with_keys(keys: &[(Role, &ServerKey)]) -> MemState {
            MemState {
                files: BTreeMap::new(),
                keys: keys
                    .iter()
                    .map(|(r, k)| (r.clone(), (*k).clone()))
                    .collect(),
            }
        }

        pub fn apply(&mut self, files: Vec<(Role, Bytes)>) {
            self.files.extend(files);
        }
    }

    impl TrustState for MemState {
        fn current(&self, role: &Role) -> Option<Bytes> {
            self.files.get(role).cloned()
        }

        fn server_key(&self, role: &Role, key_id: &str) -> Option<ServerKey> {
            self.keys
                .iter()
                .find(|(r, k)| r == role && k.id() == key_id)
                .map(|(_, k)| k.clone())
        }
    }

    pub fn role(name: &str) -> Role {
        Role::parse(name).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use bytes::Bytes;
    use serde_json::{Value, json};
    use sha2::Digest as _;
    use time::macros::datetime;
    use time::{Duration, OffsetDateTime};

    use super::testkit::*;
    use super::*;
    use crate::trust::KeyAlgorithm;
    use crate::trust::metadata::fixtures::*;

    const GUN: &str = "127.0.0.1:5443/samples/app";
    /// Before the notary0.3 root certificate's notAfter (2026-07-25).
    const V03_NOW: OffsetDateTime = datetime!(2026-07-01 00:00 UTC);

    fn fixture(bytes: &'static [u8]) -> Bytes {
        Bytes::from_static(bytes)
    }

    fn v03_upload() -> Vec<(Role, Bytes)> {
        vec![
            (Role::root(), fixture(V03_ROOT)),
            (Role::targets(), fixture(V03_TARGETS)),
            (role("targets/releases"), fixture(V03_RELEASES)),
            (Role::snapshot(), fixture(V03_SNAPSHOT)),
        ]
    }

    /// Rewrites the first signature of a fixture file (outer formatting is free; `signed`
    /// stays byte-identical in meaning).
    fn with_signature(bytes: &[u8], edit: impl FnOnce(&mut Value)) -> Bytes {
        let mut doc: Value = serde_json::from_slice(bytes).unwrap();
        edit(&mut doc["signatures"][0]);
        Bytes::from(serde_json::to_vec(&doc).unwrap())
    }

    fn raw(files: Files) -> Vec<(Role, Bytes)> {
        files
            .into_iter()
            .map(|(role, file)| (role, file.raw))
            .collect()
    }

    /// `refresh` of the repository, as raw bytes.
    fn refreshed(
        state: &MemState,
        role: &Role,
        now: OffsetDateTime,
    ) -> Result<Option<Vec<(Role, Bytes)>>, UpdateError> {
        Ok(refresh(GUN, state, role, now)?.map(raw))
    }

    fn no_timestamp_key(result: Result<Files, UpdateError>) {
        assert_eq!(
            result.unwrap_err(),
            UpdateError::BadRoot("no timestamp keys exist on the server".into())
        );
    }

    #[test]
    fn notary01_fixtures_validate_up_to_the_timestamp() {
        let upload = vec![
            (Role::root(), fixture(V01_ROOT)),
            (Role::targets(), fixture(V01_TARGETS)),
            (Role::snapshot(), fixture(V01_SNAPSHOT)),
            (Role::timestamp(), Bytes::from_static(b"ignored")),
        ];
        no_timestamp_key(validate_update(
            V01_GUN,
            &MemState::default(),
            upload,
            OffsetDateTime::now_utc(),
        ));
    }

    #[test]
    fn notary03_fixtures_validate_with_rsapss_delegation() {
        no_timestamp_key(validate_update(
            V03_GUN,
            &MemState::default(),
            v03_upload(),
            V03_NOW,
        ));
    }

    #[test]
    fn expired_root_certificate_is_refused() {
        let after = datetime!(2026-07-26 00:00 UTC);
        let err = validate_update(V03_GUN, &MemState::default(), v03_upload(), after).unwrap_err();
        assert!(
            matches!(&err, UpdateError::BadRoot(m) if m.contains("expired")),
            "{err}"
        );
    }

    #[test]
    fn root_certificate_cn_must_match_the_gun() {
        let upload = vec![
            (Role::root(), fixture(V01_ROOT)),
            (Role::targets(), fixture(V01_TARGETS)),
        ];
        let now = OffsetDateTime::now_utc();
        let err = validate_update(
            "docker.com/notary0.1/other",
            &MemState::default(),
            upload,
            now,
        )
        .unwrap_err();
        assert!(
            matches!(&err, UpdateError::BadRoot(m) if m.contains("does not match the GUN")),
            "{err}"
        );
    }

    #[test]
    fn tampered_byte_in_signed_is_refused() {
        let text = std::str::from_utf8(V03_TARGETS)
            .unwrap()
            .replace("\"length\":11309", "\"length\":11308");
        let mut upload = v03_upload();
        upload[1].1 = Bytes::from(text);
        let err = validate_update(V03_GUN, &MemState::default(), upload, V03_NOW).unwrap_err();
        assert!(
            matches!(&err, UpdateError::BadTargets(m) if m.contains("threshold")),
            "{err}"
        );
    }

    #[test]
    fn der_encoded_ecdsa_signature_is_refused() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let der = with_signature(V03_TARGETS, |sig| {
            let raw = b64.decode(sig["sig"].as_str().unwrap()).unwrap();
            let parsed = p256::ecdsa::Signature::from_slice(&raw).unwrap();
            sig["sig"] = json!(b64.encode(parsed.to_der().as_bytes()));
        });
        let mut upload = v03_upload();
        upload[1].1 = der.clone();
        let err = validate_update(V03_GUN, &MemState::default(), upload, V03_NOW).unwrap_err();
        assert!(
            matches!(&err, UpdateError::BadTargets(m) if m.contains("threshold")),
            "{err}"
        );
        // The key itself names the reason.
        let file = crate::trust::metadata::SignedFile::parse(der).unwrap();
        let root = crate::trust::metadata::Root::parse(
            &crate::trust::metadata::SignedFile::parse(fixture(V03_ROOT)).unwrap(),
        )
        .unwrap();
        let key = root.role(&Role::targets()).keys.values().next().unwrap();
        let message = crate::trust::canonical::canonical_json(&file.signed).unwrap();
        let err = key
            .verify("ecdsa", &message, &file.signatures[0].sig)
            .unwrap_err();
        assert!(err.to_string().contains("64 raw bytes"), "{err}");
    }

    #[test]
    fn wrong_key_id_is_refused() {
        let mut upload = v03_upload();
        upload[1].1 = with_signature(V03_TARGETS, |sig| {
            sig["keyid"] = json!(sig["keyid"].as_str().unwrap().to_uppercase());
        });
        let err = validate_update(V03_GUN, &MemState::default(), upload, V03_NOW).unwrap_err();
        assert!(
            matches!(&err, UpdateError::BadTargets(m) if m.contains("threshold")),
            "{err}"
        );
    }

    #[test]
    fn malformed_json_and_missing_root() {
        let upload = vec![(Role::targets(), Bytes::from_static(b"{not json"))];
        let err = validate_update(GUN, &MemState::default(), upload, OffsetDateTime::now_utc())
            .unwrap_err();
        assert!(matches!(err, UpdateError::MalformedJson(_)));
        assert_eq!(err.code(), "MALFORMED_JSON");
        let upload = vec![(Role::targets(), fixture(V01_TARGETS))];
        let err = validate_update(GUN, &MemState::default(), upload, OffsetDateTime::now_utc())
            .unwrap_err();
        assert!(matches!(err, UpdateError::Validation(_)));
        assert_eq!(
            err.detail(),
            json!({"Name": "ErrValidation", "Error": {"Msg": "no pre-existing root and no root provided in update."}})
        );
    }

    /// A repository as docker creates it: x509 root, client targets key, server-held snapshot
    /// and timestamp keys.
    struct Repo {
        root: TestKey,
        targets: TestKey,
        snapshot: ServerKey,
        timestamp: ServerKey,
        state: MemState,
        now: OffsetDateTime,
    }

    impl Repo {
        fn new() -> Repo {
            let snapshot = ServerKey::generate(KeyAlgorithm::Ed25519);
            let timestamp = ServerKey::generate(KeyAlgorithm::Ecdsa);
            let state = MemState::with_keys(&[
                (Role::snapshot(), &snapshot),
                (Role::timestamp(), &timestamp),
            ]);
            let now = OffsetDateTime::now_utc();
            Repo {
                root: TestKey::root(GUN),
                targets: TestKey::ecdsa(),
                snapshot,
                timestamp,
                state,
                now,
            }
        }

        fn root_file(&self, version: u64, signers: &[&TestKey]) -> Bytes {
            let (snapshot, timestamp) = (self.snapshot.public(), self.timestamp.public());
            let keys = RootKeys {
                root: vec![&self.root.public],
                targets: vec![&self.targets.public],
                targets_threshold: 1,
                snapshot: &snapshot,
                timestamp: &timestamp,
            };
            sign(
                &root_json(version, &keys, self.now + Duration::days(3650)),
                signers,
            )
        }

        fn targets_file(&self, version: u64, tags: &[(&str, &[u8])]) -> Bytes {
            sign(
                &targets_json(version, tags, &[], self.now + Duration::days(1095)),
                &[&self.targets],
            )
        }

        fn update(
            &mut self,
            upload: Vec<(Role, Bytes)>,
        ) -> Result<Vec<(Role, Bytes)>, UpdateError> {
            let files = raw(validate_update(GUN, &self.state, upload, self.now)?);
            self.state.apply(files.clone());
            Ok(files)
        }

        fn init(&mut self) -> Vec<(Role, Bytes)> {
            let root = self.root_file(1, &[&self.root]);
            let targets = self.targets_file(1, &[("v1", b"manifest one")]);
            self.update(vec![(Role::root(), root), (Role::targets(), targets)])
                .unwrap()
        }
    }

    fn parsed(files: &[(Role, Bytes)], name: &str) -> crate::trust::metadata::SignedFile {
        let bytes = files
            .iter()
            .find(|(r, _)| r.as_str() == name)
            .unwrap()
            .1
            .clone();
        crate::trust::metadata::SignedFile::parse(bytes).unwrap()
    }

    /// Checks the generated snapshot and timestamp: signed by the server keys, hashes chained.
    fn assert_generated(repo: &Repo, files: &[(Role, Bytes)], versions: (u64, u64)) {
        use crate::trust::metadata::{Root, Snapshot, Timestamp};
        let root = Root::parse(
            &crate::trust::metadata::SignedFile::parse(repo.state.current(&Role::root()).unwrap())
                .unwrap(),
        )
        .unwrap();
        let snapshot = parsed(files, "snapshot");
        snapshot
            .verify(&Role::snapshot(), root.role(&Role::snapshot()))
            .unwrap();
        assert_eq!(snapshot.version, versions.0);
        let body = Snapshot::parse(&snapshot).unwrap();
        for name in ["root", "targets"] {
            body.meta[name]
                .check(&role(name), &repo.state.current(&role(name)).unwrap())
                .unwrap();
        }
        let timestamp = parsed(files, "timestamp");
        timestamp
            .verify(&Role::timestamp(), root.role(&Role::timestamp()))
            .unwrap();
        assert_eq!(timestamp.version, versions.1);
        assert!(timestamp.expires > repo.now + Duration::days(13));
        Timestamp::parse(&timestamp)
            .unwrap()
            .snapshot
            .check(&Role::snapshot(), &snapshot.raw)
            .unwrap();
    }

    #[test]
    fn new_repository_then_updates_round_trip() {
        let mut repo = Repo::new();
        let files = repo.init();
        let names: Vec<&str> = files.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(names, ["root", "targets", "snapshot", "timestamp"]);
        assert_generated(&repo, &files, (1, 1));

        let targets = repo.targets_file(2, &[("v1", b"manifest one"), ("v2", b"manifest two")]);
        let files = repo.update(vec![(Role::targets(), targets)]).unwrap();
        let names: Vec<&str> = files.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(names, ["targets", "snapshot", "timestamp"]);
        assert_generated(&repo, &files, (2, 2));

        let signed = signed_targets(&repo.state, repo.now);
        let v2 = signed.iter().find(|t| t.name == "v2").unwrap();
        assert_eq!(
            v2.sha256,
            hex::encode(sha2::Sha256::digest(b"manifest two"))
        );
        assert_eq!(signed.len(), 2);
    }

    #[test]
    fn refresh_regenerates_expired_timestamp_and_snapshot() {
        let mut repo = Repo::new();
        repo.init();
        assert_eq!(
            refreshed(&repo.state, &Role::timestamp(), repo.now).unwrap(),
            None
        );
        assert_eq!(
            refreshed(&repo.state, &Role::root(), repo.now + Duration::days(30)).unwrap(),
            None
        );

        repo.now += Duration::days(15);
        let files = refreshed(&repo.state, &Role::timestamp(), repo.now)
            .unwrap()
            .unwrap();
        assert_eq!(files.len(), 1);
        repo.state.apply(files.clone());
        let timestamp = parsed(&files, "timestamp");
        assert_eq!(timestamp.version, 2);
        assert!(timestamp.expires > repo.now);
        assert_eq!(
            refreshed(&repo.state, &Role::snapshot(), repo.now).unwrap(),
            None
        );

        // Past the snapshot's 3 years the server re-signs it too, then a timestamp over it.
        repo.now += Duration::days(4 * 365);
        let files = refreshed(&repo.state, &Role::snapshot(), repo.now)
            .unwrap()
            .unwrap();
        repo.state.apply(files.clone());
        let names: Vec<&str> = files.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(names, ["snapshot", "timestamp"]);
        assert_generated(&repo, &files, (2, 3));
    }

    #[test]
    fn refresh_repairs_a_timestamp_that_does_not_match_the_snapshot() {
        let mut repo = Repo::new();
        repo.init();
        let stale = repo.state.current(&Role::timestamp()).unwrap();
        let targets = repo.targets_file(2, &[("v2", b"two")]);
        repo.update(vec![(Role::targets(), targets)]).unwrap();
        repo.state.apply(vec![(Role::timestamp(), stale)]);
        let files = refreshed(&repo.state, &Role::timestamp(), repo.now)
            .unwrap()
            .unwrap();
        assert_eq!(files.len(), 1);
        repo.state.apply(files.clone());
        assert_generated(
            &repo,
            &[
                (
                    Role::snapshot(),
                    repo.state.current(&Role::snapshot()).unwrap(),
                ),
                files[0].clone(),
            ],
            (2, 2),
        );
    }

    #[test]
    fn expired_metadata_is_refused() {
        let mut repo = Repo::new();
        repo.init();
        let expired = targets_json(2, &[], &[], repo.now - Duration::seconds(1));
        let err = repo
            .update(vec![(Role::targets(), sign(&expired, &[&repo.targets]))])
            .unwrap_err();
        assert!(
            matches!(&err, UpdateError::BadTargets(m) if m.contains("expired")),
            "{err}"
        );
    }

    #[test]
    fn threshold_not_met_is_refused() {
        let mut repo = Repo::new();
        let second = TestKey::ecdsa();
        let (snapshot, timestamp) = (repo.snapshot.public(), repo.timestamp.public());
        let keys = RootKeys {
            root: vec![&repo.root.public],
            targets: vec![&repo.targets.public, &second.public],
            targets_threshold: 2,
            snapshot: &snapshot,
            timestamp: &timestamp,
        };
        let root = sign(
            &root_json(1, &keys, repo.now + Duration::days(365)),
            &[&repo.root],
        );
        let body = targets_json(1, &[], &[], repo.now + Duration::days(365));
        let one = sign(&body, &[&repo.targets]);
        let err = repo
            .update(vec![(Role::root(), root.clone()), (Role::targets(), one)])
            .unwrap_err();
        assert!(
            matches!(&err, UpdateError::BadTargets(m) if m.contains("1 of 2")),
            "{err}"
        );
        let both = sign(&body, &[&repo.targets, &second]);
        repo.update(vec![(Role::root(), root), (Role::targets(), both)])
            .unwrap();
    }

    #[test]
    fn root_rotation_needs_old_and_new_root_keys() {
        let mut repo = Repo::new();
        repo.init();
        let old = std::mem::replace(&mut repo.root, TestKey::root(GUN));
        let only_new = repo.root_file(2, &[&repo.root]);
        let err = repo.update(vec![(Role::root(), only_new)]).unwrap_err();
        assert!(
            matches!(&err, UpdateError::BadRoot(m) if m.contains("rotation")),
            "{err}"
        );
        let only_old = repo.root_file(2, &[&old]);
        let err = repo.update(vec![(Role::root(), only_old)]).unwrap_err();
        assert!(
            matches!(&err, UpdateError::BadRoot(m) if m.contains("threshold")),
            "{err}"
        );
        let skipped = repo.root_file(3, &[&old, &repo.root]);
        let err = repo.update(vec![(Role::root(), skipped)]).unwrap_err();
        assert!(
            matches!(&err, UpdateError::BadRoot(m) if m.contains("current 1, new 3")),
            "{err}"
        );
        // Rotation with both: the server re-generates snapshot (root meta) and timestamp.
        let both = repo.root_file(2, &[&old, &repo.root]);
        let files = repo.update(vec![(Role::root(), both)]).unwrap();
        assert_generated(&repo, &files, (2, 2));
    }

    #[test]
    fn snapshot_must_match_the_uploaded_targets() {
        // notary init style: the client holds the snapshot key.
        let mut repo = Repo::new();
        let client_snapshot = TestKey::ecdsa();
        let timestamp = repo.timestamp.public();
        let keys = RootKeys {
            root: vec![&repo.root.public],
            targets: vec![&repo.targets.public],
            targets_threshold: 1,
            snapshot: &client_snapshot.public,
            timestamp: &timestamp,
        };
        let later = repo.now + Duration::days(365);
        let root = sign(&root_json(1, &keys, later), &[&repo.root]);
        let targets = repo.targets_file(1, &[("v1", b"one")]);
        let snapshot = sign(
            &snapshot_json(1, &[("root", &root), ("targets", &targets)], later),
            &[&client_snapshot],
        );
        let files = repo
            .update(vec![
                (Role::root(), root.clone()),
                (Role::targets(), targets.clone()),
                (Role::snapshot(), snapshot),
            ])
            .unwrap();
        assert_eq!(files[2].0, Role::snapshot());

        // Targets changed, snapshot still describing the old targets.
        let changed = repo.targets_file(2, &[("v2", b"two")]);
        let stale = sign(
            &snapshot_json(2, &[("root", &root), ("targets", &targets)], later),
            &[&client_snapshot],
        );
        let err = repo
            .update(vec![
                (Role::targets(), changed.clone()),
                (Role::snapshot(), stale),
            ])
            .unwrap_err();
        assert!(
            matches!(&err, UpdateError::BadSnapshot(m) if m.contains("targets")),
            "{err}"
        );

        // Without a snapshot the server cannot make one: it does not hold that key.
        let err = repo
            .update(vec![(Role::targets(), changed.clone())])
            .unwrap_err();
        assert_eq!(
            err.detail(),
            json!({"Name": "ErrBadHierarchy", "Error": {"Missing": "snapshot", "Msg": "no snapshot was included in update and server does not hold current snapshot key for repository"}})
        );
        // A snapshot alone is checked against the stored targets too.
        let alone = sign(
            &snapshot_json(2, &[("root", &root), ("targets", &changed)], later),
            &[&client_snapshot],
        );
        let err = repo.update(vec![(Role::snapshot(), alone)]).unwrap_err();
        assert!(
            matches!(&err, UpdateError::BadSnapshot(m) if m.contains("targets")),
            "{err}"
        );
        let fresh = sign(
            &snapshot_json(2, &[("root", &root), ("targets", &changed)], later),
            &[&client_snapshot],
        );
        repo.update(vec![(Role::targets(), changed), (Role::snapshot(), fresh)])
            .unwrap();
    }

    #[test]
    fn delegations_are_checked_against_their_parent() {
        let mut repo = Repo::new();
        let releases_key = TestKey::ecdsa();
        let later = repo.now + Duration::days(365);
        let root = repo.root_file(1, &[&repo.root]);
        let body = targets_json(
            1,
            &[("v1", b"from targets")],
            &[("targets/releases", &releases_key.public)],
            later,
        );
        let targets = sign(&body, &[&repo.targets]);
        let releases = sign(
            &targets_json(1, &[("v1", b"from releases")], &[], later),
            &[&releases_key],
        );
        let files = repo
            .update(vec![
                (role("targets/releases"), releases),
                (Role::root(), root),
                (Role::targets(), targets),
            ])
            .unwrap();
        let names: Vec<&str> = files.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "root",
                "targets",
                "targets/releases",
                "snapshot",
                "timestamp"
            ]
        );
        let snapshot =
            crate::trust::metadata::Snapshot::parse(&parsed(&files, "snapshot")).unwrap();
        assert!(snapshot.meta.contains_key("targets/releases"));

        // targets/releases wins for docker.
        let signed = signed_targets(&repo.state, repo.now);
        assert_eq!(signed.len(), 1);
        assert_eq!(
            signed[0].sha256,
            hex::encode(sha2::Sha256::digest(b"from releases"))
        );

        // Alone, against the stored targets; signed by the wrong key, refused.
        let v2 = sign(
            &targets_json(2, &[("v2", b"x")], &[], later),
            &[&releases_key],
        );
        repo.update(vec![(role("targets/releases"), v2)]).unwrap();
        let forged = sign(
            &targets_json(3, &[("v3", b"x")], &[], later),
            &[&repo.targets],
        );
        let err = repo
            .update(vec![(role("targets/releases"), forged)])
            .unwrap_err();
        assert!(
            matches!(&err, UpdateError::BadTargets(m) if m.contains("threshold")),
            "{err}"
        );
        // Not delegated at all.
        let other = sign(&targets_json(1, &[], &[], later), &[&releases_key]);
        let err = repo
            .update(vec![(role("targets/other"), other.clone())])
            .unwrap_err();
        assert!(
            matches!(&err, UpdateError::BadTargets(m) if m.contains("not delegated")),
            "{err}"
        );
        let err = repo
            .update(vec![(role("targets/other/deep"), other)])
            .unwrap_err();
        assert!(
            matches!(&err, UpdateError::BadTargets(m) if m.contains("not available")),
            "{err}"
        );
    }

    fn tags(repo: &Repo, now: OffsetDateTime) -> Vec<(String, String)> {
        signed_targets(&repo.state, now)
            .into_iter()
            .map(|t| (t.name, t.sha256))
            .collect()
    }

    fn sha(bytes: &[u8]) -> String {
        hex::encode(sha2::Sha256::digest(bytes))
    }

    /// A repository with `targets` (v1 → "from targets") delegating `targets/releases`
    /// (v1, v2 → "from releases"), the delegation limited to `paths`.
    fn delegated(paths: Value) -> (Repo, TestKey) {
        let mut repo = Repo::new();
        let releases_key = TestKey::ecdsa();
        let later = repo.now + Duration::days(365);
        let mut body = targets_json(
            1,
            &[("v1", b"from targets")],
            &[("targets/releases", &releases_key.public)],
            later,
        );
        body["delegations"]["roles"][0]["paths"] = paths;
        let releases = sign(
            &targets_json(
                1,
                &[("v1", b"from releases"), ("v2", b"from releases")],
                &[],
                later,
            ),
            &[&releases_key],
        );
        let root = repo.root_file(1, &[&repo.root]);
        repo.update(vec![
            (Role::root(), root),
            (Role::targets(), sign(&body, &[&repo.targets])),
            (Role::releases(), releases),
        ])
        .unwrap();
        (repo, releases_key)
    }

    #[test]
    fn releases_count_only_while_the_current_targets_delegates_them() {
        let (mut repo, _) = delegated(json!([""]));
        let now = repo.now;
        let releases = sha(b"from releases");
        assert_eq!(
            tags(&repo, now),
            [("v1".into(), releases.clone()), ("v2".into(), releases)]
        );
        // targets v2 drops the delegation: the stored releases file no longer counts.
        let targets = repo.targets_file(2, &[("v3", b"three")]);
        repo.update(vec![(Role::targets(), targets)]).unwrap();
        assert_eq!(tags(&repo, now), [("v3".into(), sha(b"three"))]);
    }

    #[test]
    fn delegation_paths_limit_what_releases_sign() {
        let (repo, _) = delegated(json!(["v2"]));
        assert_eq!(
            tags(&repo, repo.now),
            [
                ("v2".into(), sha(b"from releases")),
                ("v1".into(), sha(b"from targets")),
            ]
        );
        let (repo, _) = delegated(json!([]));
        assert_eq!(tags(&repo, repo.now), [("v1".into(), sha(b"from targets"))]);
    }

    #[test]
    fn releases_missing_from_the_snapshot_do_not_count() {
        let (mut repo, _) = delegated(json!([""]));
        let stored = SignedFile::parse(repo.state.current(&Role::snapshot()).unwrap()).unwrap();
        let mut signed = stored.signed.clone();
        signed["meta"]
            .as_object_mut()
            .unwrap()
            .remove("targets/releases");
        let message = canonical_json(&signed).unwrap();
        let resigned = envelope(&signed, &[repo.snapshot.sign(&message)]).unwrap();
        repo.state.apply(vec![(Role::snapshot(), resigned)]);
        assert_eq!(tags(&repo, repo.now), [("v1".into(), sha(b"from targets"))]);
        // A snapshot the root's snapshot keys did not sign: nothing counts.
        let unsigned = envelope(&signed, &[]).unwrap();
        repo.state.apply(vec![(Role::snapshot(), unsigned)]);
        assert!(tags(&repo, repo.now).is_empty());
    }

    #[test]
    fn expired_or_re_keyed_targets_do_not_count() {
        let mut repo = Repo::new();
        repo.init();
        assert_eq!(tags(&repo, repo.now).len(), 1);
        // Past the targets' expiry (1095 days).
        assert!(tags(&repo, repo.now + Duration::days(1100)).is_empty());
        // A root rotating the targets key leaves the old targets unverifiable.
        repo.targets = TestKey::ecdsa();
        let root = repo.root_file(2, &[&repo.root]);
        repo.update(vec![(Role::root(), root)]).unwrap();
        assert!(tags(&repo, repo.now).is_empty());
        let targets = repo.targets_file(2, &[("v2", b"two")]);
        repo.update(vec![(Role::targets(), targets)]).unwrap();
        assert_eq!(tags(&repo, repo.now), [("v2".into(), sha(b"two"))]);
    }

    #[test]
    fn generated_versions_stop_at_the_largest_accepted() {
        let mut repo = Repo::new();
        repo.init();
        let mut stamp: Value =
            serde_json::from_slice(&repo.state.current(&Role::timestamp()).unwrap()).unwrap();
        stamp["signed"]["version"] = json!(MAX_VERSION);
        repo.state
            .apply(vec![(Role::timestamp(), Bytes::from(stamp.to_string()))]);
        let targets = repo.targets_file(2, &[("v2", b"two")]);
        let err = repo.update(vec![(Role::targets(), targets)]).unwrap_err();
        assert!(
            matches!(&err, UpdateError::Validation(m) if m.contains("cannot go past")),
            "{err}"
        );
    }
}
