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

/// What `portcullis fsck` asks of one GUN's stored metadata: the chain a client walks —
/// the root signed by a threshold of its own valid root certificates; `targets` and every
/// delegation its parent still delegates signed by the keys the parent names; the snapshot
/// signed by the root's snapshot keys and matching the root and those targets roles; the
/// timestamp signed by the root's timestamp keys and matching the snapshot. Expiry is not
/// checked: an expired file is not a broken one (the server re-signs what it can on read).
pub fn check_stored(gun: &str, state: &dyn TrustState, roles: &[Role]) -> Result<(), String> {
    let need = |role: &Role| -> Result<SignedFile, String> {
        stored(state, role)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no {role} is stored"))
    };
    let root = need(&Role::root())?;
    let root_body = Root::parse(&root).map_err(|e| format!("root: {e}"))?;
    let own = valid_root_keys(&root_body, gun, None).map_err(|e| format!("root: {e}"))?;
    root.verify(&Role::root(), &own)
        .map_err(|e| format!("root: {e}"))?;
    let mut loaded = Loaded {
        root,
        root_body,
        targets: BTreeMap::new(),
    };
    let mut targets_roles: Vec<&Role> = roles.iter().filter(|r| r.is_targets()).collect();
    targets_roles.sort_by(|a, b| a.depth().cmp(&b.depth()).then_with(|| a.cmp(b)));
    for role in targets_roles {
        // A delegation its parent no longer names is left over, and ignored by clients.
        if let Some(parent) = role.parent() {
            let delegated = loaded
                .targets
                .get(&parent)
                .is_some_and(|(_, body)| body.delegation(role).is_some());
            if !delegated {
                continue;
            }
        }
        loaded.load_targets(role, need(role)?, None)?;
    }
    if !loaded.targets.contains_key(&Role::targets()) {
        return Err("no targets is stored".to_owned());
    }
    let snapshot = need(&Role::snapshot())?;
    snapshot
        .verify(&Role::snapshot(), loaded.root_body.role(&Role::snapshot()))
        .map_err(|e| format!("snapshot: {e}"))?;
    let body = Snapshot::parse(&snapshot).map_err(|e| format!("snapshot: {e}"))?;
    let listed = std::iter::once((Role::root(), &loaded.root.raw))
        .chain(loaded.targets.iter().map(|(r, (f, _))| (r.clone(), &f.raw)));
    for (role, bytes) in listed {
        body.meta
            .get(role.as_str())
            .ok_or_else(|| format!("snapshot: no entry for {role}"))?
            .check(&role, bytes)
            .map_err(|e| format!("snapshot: {e}"))?;
    }
    let timestamp = need(&Role::timestamp())?;
    timestamp
        .verify(
            &Role::timestamp(),
            loaded.root_body.role(&Role::timestamp()),
        )
        .map_err(|e| format!("timestamp: {e}"))?;
    Timestamp::parse(&timestamp)
        .map_err(|e| format!("timestamp: {e}"))?
        .snapshot
        .check(&Role::snapshot(), &snapshot.raw)
        .map_err(|e| format!("timestamp: {e}"))
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
pub(crate) mod testkit;

#[cfg(test)]
mod tests;
