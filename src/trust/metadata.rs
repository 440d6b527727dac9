//! The signed envelope `{"signed":{…},"signatures":[{"keyid","method","sig"}]}` and the role
//! bodies notary writes (`_type` `Root`/`Targets`/`Snapshot`/`Timestamp`), with the raw file
//! bytes kept: stored and served verbatim, and what meta hashes cover.
//!
//! Signatures are checked over the canonical JSON of the parsed `signed` object; a role's
//! threshold counts distinct key ids with a valid signature.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256, Sha512};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Role;
use super::canonical::canonical_json;
use super::keys::PublicKey;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("malformed metadata: {0}")]
    Malformed(String),
    #[error("signature key id {0} does not match the id of its key")]
    InvalidKeyId(String),
    #[error("valid signatures did not meet threshold for {role}: {valid} of {threshold}")]
    Threshold {
        role: String,
        valid: usize,
        threshold: usize,
    },
    #[error("{0} metadata is expired")]
    Expired(String),
    #[error("{role} does not match the hashes or length recorded for it: {msg}")]
    Hash { role: String, msg: String },
}

/// Highest version accepted: notary stores versions as Go `int`, and generated files add 1.
pub const MAX_VERSION: u64 = i64::MAX.unsigned_abs();
/// Most signatures one file may carry: each costs a verification under the store's
/// single writer, and no real role has more signers than this.
pub const MAX_SIGNATURES: usize = 64;

fn malformed(msg: impl Into<String>) -> MetadataError {
    MetadataError::Malformed(msg.into())
}

/// One signature of the envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub keyid: String,
    pub method: String,
    pub sig: Vec<u8>,
}

/// A parsed metadata file: exact bytes, the `signed` object and the common fields.
#[derive(Debug, Clone)]
pub struct SignedFile {
    pub raw: Bytes,
    pub signed: Value,
    pub signatures: Vec<Signature>,
    pub kind: String,
    pub version: u64,
    pub expires: OffsetDateTime,
}

impl SignedFile {
    /// Parses the envelope and `signed`'s `_type`, `version` and `expires` (notary's
    /// `SignedMeta`); anything else wrong is left to the role body parsers.
    pub fn parse(raw: Bytes) -> Result<SignedFile, MetadataError> {
        let mut doc: Value =
            serde_json::from_slice(&raw).map_err(|e| malformed(format!("invalid json: {e}")))?;
        let signed = doc
            .get_mut("signed")
            .map(Value::take)
            .unwrap_or(Value::Null);
        if !signed.is_object() {
            return Err(malformed("\"signed\" is not an object"));
        }
        let signatures = match doc.get("signatures") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) if items.len() > MAX_SIGNATURES => {
                return Err(malformed(format!(
                    "{} signatures, at most {MAX_SIGNATURES} are accepted",
                    items.len()
                )));
            }
            Some(Value::Array(items)) => items
                .iter()
                .map(parse_signature)
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(malformed("\"signatures\" is not an array")),
        };
        let kind = signed
            .get("_type")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("missing \"_type\""))?
            .to_owned();
        let version = signed
            .get("version")
            .and_then(Value::as_u64)
            .filter(|v| *v <= MAX_VERSION)
            .ok_or_else(|| {
                malformed(format!(
                    "\"version\" is not an integer between 0 and {MAX_VERSION}"
                ))
            })?;
        let expires = signed
            .get("expires")
            .and_then(Value::as_str)
            .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
            .ok_or_else(|| malformed("\"expires\" is not an RFC 3339 time"))?;
        Ok(SignedFile {
            raw,
            signed,
            signatures,
            kind,
            version,
            expires,
        })
    }

    /// Checks `_type`, a version ≥ 1 and (unless `now` is None) expiry.
    pub fn check_common(
        &self,
        role: &Role,
        now: Option<OffsetDateTime>,
    ) -> Result<(), MetadataError> {
        let expected = type_name(role);
        if self.kind != expected {
            return Err(malformed(format!(
                "{role} has _type {:?}, expected {expected:?}",
                self.kind
            )));
        }
        if self.version < 1 {
            return Err(malformed(format!("{role} version must be at least 1")));
        }
        if let Some(now) = now
            && self.expires < now
        {
            return Err(MetadataError::Expired(role.to_string()));
        }
        Ok(())
    }

    /// Verifies the signatures over canonical(`signed`) against `keys` (key id → key) with
    /// `threshold` distinct valid key ids (notary's `VerifySignatures`).
    pub fn verify(&self, role: &Role, keys: &RoleKeys) -> Result<(), MetadataError> {
        let threshold_error = |valid| MetadataError::Threshold {
            role: role.to_string(),
            valid,
            threshold: keys.threshold,
        };
        if keys.threshold < 1 || self.signatures.is_empty() {
            return Err(threshold_error(0));
        }
        let message = canonical_json(&self.signed).map_err(|e| malformed(e.to_string()))?;
        let mut valid = BTreeSet::new();
        for signature in &self.signatures {
            // A key counts once: further signatures naming it cost nothing.
            if valid.contains(signature.keyid.as_str()) {
                continue;
            }
            let Some(key) = keys.keys.get(&signature.keyid) else {
                continue;
            };
            if key.id() != signature.keyid {
                return Err(MetadataError::InvalidKeyId(signature.keyid.clone()));
            }
            if key
                .verify(&signature.method, &message, &signature.sig)
                .is_ok()
            {
                valid.insert(signature.keyid.as_str());
            }
        }
        if valid.len() < keys.threshold {
            return Err(threshold_error(valid.len()));
        }
        Ok(())
    }
}

/// The `_type` notary writes for a role (delegations are `Targets` too).
pub fn type_name(role: &Role) -> &'static str {
    match role.as_str() {
        "root" => "Root",
        "snapshot" => "Snapshot",
        "timestamp" => "Timestamp",
        _ => "Targets",
    }
}

fn parse_signature(v: &Value) -> Result<Signature, MetadataError> {
    let field = |name: &str| {
        v.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| malformed(format!("signature without \"{name}\"")))
    };
    let sig = B64
        .decode(field("sig")?)
        .map_err(|e| malformed(format!("signature is not base64: {e}")))?;
    Ok(Signature {
        keyid: field("keyid")?.to_owned(),
        // notary lowercases the method on parse.
        method: field("method")?.to_ascii_lowercase(),
        sig,
    })
}

/// The keys allowed to sign a role and how many distinct ones must.
#[derive(Debug, Clone, Default)]
pub struct RoleKeys {
    pub keys: BTreeMap<String, PublicKey>,
    pub threshold: usize,
}

/// Reads `{"keyids":[…],"threshold":N}` and resolves the key ids in `all_keys`; a listed id
/// without a key is an error.
fn role_keys(
    role: &Value,
    all_keys: &BTreeMap<String, PublicKey>,
    name: &str,
) -> Result<RoleKeys, MetadataError> {
    let threshold = role
        .get("threshold")
        .and_then(Value::as_u64)
        .filter(|t| *t >= 1)
        .ok_or_else(|| malformed(format!("{name}: threshold must be an integer ≥ 1")))?;
    let keyids = role
        .get("keyids")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed(format!("{name}: missing keyids")))?;
    let mut keys = BTreeMap::new();
    for id in keyids {
        let id = id
            .as_str()
            .ok_or_else(|| malformed(format!("{name}: key id is not a string")))?;
        let key = all_keys
            .get(id)
            .ok_or_else(|| malformed(format!("{name}: key {id} is not among the keys")))?;
        keys.insert(id.to_owned(), key.clone());
    }
    Ok(RoleKeys {
        keys,
        threshold: usize::try_from(threshold).unwrap_or(usize::MAX),
    })
}

fn parse_keys(v: Option<&Value>) -> Result<BTreeMap<String, PublicKey>, MetadataError> {
    let mut keys = BTreeMap::new();
    if let Some(map) = v.and_then(Value::as_object) {
        for (id, key) in map {
            let key = PublicKey::from_json(key).map_err(|e| malformed(format!("key {id}: {e}")))?;
            keys.insert(id.clone(), key);
        }
    }
    Ok(keys)
}

/// A root body: every key and the four base roles (all required, every keyid present).
#[derive(Debug, Clone)]
pub struct Root {
    pub roles: BTreeMap<String, RoleKeys>,
}

impl Root {
    pub fn parse(file: &SignedFile) -> Result<Root, MetadataError> {
        file.check_common(&Role::root(), None)?;
        let keys = parse_keys(file.signed.get("keys"))?;
        let mut roles = BTreeMap::new();
        for name in ["root", "targets", "snapshot", "timestamp"] {
            let role = file
                .signed
                .get("roles")
                .and_then(|r| r.get(name))
                .ok_or_else(|| malformed(format!("root does not define the {name} role")))?;
            roles.insert(name.to_owned(), role_keys(role, &keys, name)?);
        }
        Ok(Root { roles })
    }

    /// The keys of a base role (always present after [`Root::parse`]).
    pub fn role(&self, role: &Role) -> &RoleKeys {
        static NONE: RoleKeys = RoleKeys {
            keys: BTreeMap::new(),
            threshold: 0,
        };
        self.roles.get(role.as_str()).unwrap_or(&NONE)
    }
}

/// A delegation declared by a targets role.
#[derive(Debug, Clone)]
pub struct Delegation {
    pub name: Role,
    pub keys: RoleKeys,
    /// Target name prefixes the delegation may sign (`""`: every name); notary's
    /// `path_hash_prefixes` are not read, so a delegation using only those signs nothing.
    pub paths: Vec<String>,
}

impl Delegation {
    /// Whether the delegation may sign a target called `name` (notary's `CheckPaths`).
    pub fn covers(&self, name: &str) -> bool {
        self.paths
            .iter()
            .any(|prefix| name.starts_with(prefix.as_str()))
    }
}

/// A targets (or delegation) body.
#[derive(Debug, Clone)]
pub struct Targets {
    pub targets: BTreeMap<String, FileMeta>,
    pub delegations: Vec<Delegation>,
}

impl Targets {
    /// Parses the body of `role`; delegations must be direct children of `role`.
    pub fn parse(file: &SignedFile, role: &Role) -> Result<Targets, MetadataError> {
        file.check_common(role, None)?;
        let mut targets = BTreeMap::new();
        if let Some(map) = file.signed.get("targets").and_then(Value::as_object) {
            for (name, meta) in map {
                targets.insert(name.clone(), FileMeta::parse(meta, name)?);
            }
        }
        let delegations_value = file.signed.get("delegations");
        let keys = parse_keys(delegations_value.and_then(|d| d.get("keys")))?;
        let mut delegations = Vec::new();
        let declared = delegations_value
            .and_then(|d| d.get("roles"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for declared in declared {
            let name = declared
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| malformed(format!("{role}: delegation without a name")))?;
            let name = Role::parse(name)
                .ok()
                .filter(|n| n.parent().as_ref() == Some(role) && !name.ends_with(".json"))
                .ok_or_else(|| {
                    malformed(format!(
                        "{role}: delegation {name:?} is not a direct child of {role}"
                    ))
                })?;
            let keys = role_keys(declared, &keys, name.as_str())?;
            let paths = match declared.get("paths") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(paths)) => paths
                    .iter()
                    .map(|p| p.as_str().map(str::to_owned))
                    .collect::<Option<_>>()
                    .ok_or_else(|| malformed(format!("{name}: a path is not a string")))?,
                Some(_) => return Err(malformed(format!("{name}: paths is not an array"))),
            };
            delegations.push(Delegation { name, keys, paths });
        }
        Ok(Targets {
            targets,
            delegations,
        })
    }

    pub fn delegation(&self, name: &Role) -> Option<&Delegation> {
        self.delegations.iter().find(|d| &d.name == name)
    }
}

/// A snapshot body: meta of root, targets and delegations.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub meta: BTreeMap<String, FileMeta>,
}

impl Snapshot {
    /// Parses a snapshot; `root` and `targets` entries need a 32-byte sha256.
    pub fn parse(file: &SignedFile) -> Result<Snapshot, MetadataError> {
        file.check_common(&Role::snapshot(), None)?;
        let meta = parse_meta(&file.signed)?;
        for required in ["root", "targets"] {
            let ok = meta
                .get(required)
                .and_then(|m| m.hashes.get("sha256"))
                .is_some_and(|h| h.len() == 32);
            if !ok {
                return Err(malformed(format!("snapshot has no sha256 for {required}")));
            }
        }
        Ok(Snapshot { meta })
    }
}

/// A timestamp body: the meta of the snapshot.
#[derive(Debug, Clone)]
pub struct Timestamp {
    pub snapshot: FileMeta,
}

impl Timestamp {
    pub fn parse(file: &SignedFile) -> Result<Timestamp, MetadataError> {
        file.check_common(&Role::timestamp(), None)?;
        let snapshot = parse_meta(&file.signed)?
            .remove("snapshot")
            .ok_or_else(|| malformed("timestamp has no snapshot meta"))?;
        Ok(Timestamp { snapshot })
    }
}

fn parse_meta(signed: &Value) -> Result<BTreeMap<String, FileMeta>, MetadataError> {
    let map = signed
        .get("meta")
        .and_then(Value::as_object)
        .ok_or_else(|| malformed("missing \"meta\""))?;
    map.iter()
        .map(|(name, meta)| Ok((name.clone(), FileMeta::parse(meta, name)?)))
        .collect()
}

/// Length and hashes (raw digests, base64 on the wire) of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub length: u64,
    pub hashes: BTreeMap<String, Vec<u8>>,
}

impl FileMeta {
    fn parse(v: &Value, name: &str) -> Result<FileMeta, MetadataError> {
        let length = v
            .get("length")
            .and_then(Value::as_u64)
            .ok_or_else(|| malformed(format!("{name}: length is not a non-negative integer")))?;
        let mut hashes = BTreeMap::new();
        if let Some(map) = v.get("hashes").and_then(Value::as_object) {
            for (algorithm, digest) in map {
                let digest = digest
                    .as_str()
                    .and_then(|d| B64.decode(d).ok())
                    .ok_or_else(|| malformed(format!("{name}: {algorithm} hash is not base64")))?;
                hashes.insert(algorithm.clone(), digest);
            }
        }
        Ok(FileMeta { length, hashes })
    }

    /// Meta of `bytes` with sha256 and sha512, as notary generates it.
    pub fn of(bytes: &[u8]) -> FileMeta {
        let hashes = BTreeMap::from([
            ("sha256".to_owned(), Sha256::digest(bytes).to_vec()),
            ("sha512".to_owned(), Sha512::digest(bytes).to_vec()),
        ]);
        FileMeta {
            length: bytes.len() as u64,
            hashes,
        }
    }

    pub fn to_json(&self) -> Value {
        let hashes: Map<String, Value> = self
            .hashes
            .iter()
            .map(|(algorithm, digest)| (algorithm.clone(), Value::String(B64.encode(digest))))
            .collect();
        json!({"hashes": hashes, "length": self.length})
    }

    /// notary's `CheckHashes` (at least one of sha256/sha512, every present one matching),
    /// plus the length clients enforce.
    pub fn check(&self, role: &Role, bytes: &[u8]) -> Result<(), MetadataError> {
        let mismatch = |msg: String| MetadataError::Hash {
            role: role.to_string(),
            msg,
        };
        let mut checked = 0;
        if let Some(expected) = self.hashes.get("sha256") {
            if Sha256::digest(bytes).as_slice() != expected.as_slice() {
                return Err(mismatch("sha256 differs".to_owned()));
            }
            checked += 1;
        }
        if let Some(expected) = self.hashes.get("sha512") {
            if Sha512::digest(bytes).as_slice() != expected.as_slice() {
                return Err(mismatch("sha512 differs".to_owned()));
            }
            checked += 1;
        }
        if checked == 0 {
            return Err(mismatch("no sha256 or sha512 hash".to_owned()));
        }
        if self.length != bytes.len() as u64 {
            return Err(mismatch(format!(
                "length {} differs from {}",
                self.length,
                bytes.len()
            )));
        }
        Ok(())
    }
}

/// Serialises a generated file as notary does: `{"signed":<canonical>,"signatures":[…]}`.
pub fn envelope(signed: &Value, signatures: &[Value]) -> Result<Bytes, MetadataError> {
    let canonical = canonical_json(signed).map_err(|e| malformed(e.to_string()))?;
    let signatures = serde_json::to_vec(signatures).map_err(|e| malformed(e.to_string()))?;
    let mut out = Vec::with_capacity(canonical.len() + signatures.len() + 32);
    out.extend_from_slice(b"{\"signed\":");
    out.extend_from_slice(&canonical);
    out.extend_from_slice(b",\"signatures\":");
    out.extend_from_slice(&signatures);
    out.push(b'}');
    Ok(Bytes::from(out))
}

/// The notary CLI's compatibility fixtures (tests/fixtures/notary/README.md), byte-exact.
#[cfg(test)]
pub(crate) mod fixtures {
    pub const V01_GUN: &str = "docker.com/notary0.1/samplerepo";
    pub const V01_ROOT: &[u8] = include_bytes!("../../tests/fixtures/notary/notary0.1/root.json");
    pub const V01_TARGETS: &[u8] =
        include_bytes!("../../tests/fixtures/notary/notary0.1/targets.json");
    pub const V01_SNAPSHOT: &[u8] =
        include_bytes!("../../tests/fixtures/notary/notary0.1/snapshot.json");
    pub const V01_TIMESTAMP: &[u8] =
        include_bytes!("../../tests/fixtures/notary/notary0.1/timestamp.json");
    pub const V03_GUN: &str = "docker.com/notary0.3/tst";
    pub const V03_ROOT: &[u8] = include_bytes!("../../tests/fixtures/notary/notary0.3/root.json");
    pub const V03_TARGETS: &[u8] =
        include_bytes!("../../tests/fixtures/notary/notary0.3/targets.json");
    pub const V03_RELEASES: &[u8] =
        include_bytes!("../../tests/fixtures/notary/notary0.3/targets/releases.json");
    pub const V03_SNAPSHOT: &[u8] =
        include_bytes!("../../tests/fixtures/notary/notary0.3/snapshot.json");
    pub const V03_TIMESTAMP: &[u8] =
        include_bytes!("../../tests/fixtures/notary/notary0.3/timestamp.json");
}

#[cfg(test)]
mod tests;
