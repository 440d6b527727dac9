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
        let signing = p256::ecdsa::SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
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
