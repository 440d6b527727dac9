use super::fixtures::*;
use super::*;

fn file(bytes: &'static [u8]) -> SignedFile {
    SignedFile::parse(Bytes::from_static(bytes)).unwrap()
}

fn role(name: &str) -> Role {
    Role::parse(name).unwrap()
}

#[test]
fn canonical_signed_equals_what_the_notary_cli_signed() {
    for bytes in [
        V01_ROOT,
        V01_TARGETS,
        V01_SNAPSHOT,
        V01_TIMESTAMP,
        V03_ROOT,
        V03_TARGETS,
        V03_RELEASES,
        V03_SNAPSHOT,
        V03_TIMESTAMP,
    ] {
        let text = std::str::from_utf8(bytes).unwrap();
        let inner = text.strip_prefix("{\"signed\":").unwrap();
        let end = inner.rfind(",\"signatures\":").unwrap();
        let canonical = canonical_json(&file(bytes).signed).unwrap();
        assert_eq!(std::str::from_utf8(&canonical).unwrap(), &inner[..end]);
    }
}

#[test]
fn key_ids_recompute() {
    let mut count = 0;
    for bytes in [V01_ROOT, V03_ROOT] {
        let signed = file(bytes).signed;
        for (id, key) in signed["keys"].as_object().unwrap() {
            assert_eq!(&PublicKey::from_json(key).unwrap().id(), id);
            count += 1;
        }
    }
    let targets = file(V03_TARGETS).signed;
    for (id, key) in targets["delegations"]["keys"].as_object().unwrap() {
        assert_eq!(&PublicKey::from_json(key).unwrap().id(), id);
        count += 1;
    }
    assert_eq!(count, 9);
}

#[test]
fn fixture_signatures_verify_ecdsa_and_rsapss() {
    for (root, targets, snapshot, timestamp) in [
        (V01_ROOT, V01_TARGETS, V01_SNAPSHOT, V01_TIMESTAMP),
        (V03_ROOT, V03_TARGETS, V03_SNAPSHOT, V03_TIMESTAMP),
    ] {
        let root_file = file(root);
        let body = Root::parse(&root_file).unwrap();
        for (bytes, name) in [
            (root, "root"),
            (targets, "targets"),
            (snapshot, "snapshot"),
            (timestamp, "timestamp"),
        ] {
            let role = role(name);
            file(bytes).verify(&role, body.role(&role)).unwrap();
        }
    }
    let releases = file(V03_RELEASES);
    assert_eq!(releases.signatures[0].method, "rsapss");
    assert_eq!(releases.signatures[0].sig.len(), 256);
    let targets = Targets::parse(&file(V03_TARGETS), &Role::targets()).unwrap();
    let delegation = targets.delegation(&role("targets/releases")).unwrap();
    releases.verify(&delegation.name, &delegation.keys).unwrap();
}

#[test]
fn hashes_cover_the_exact_file_bytes() {
    let snapshot = Snapshot::parse(&file(V03_SNAPSHOT)).unwrap();
    for (name, bytes) in [
        ("root", V03_ROOT),
        ("targets", V03_TARGETS),
        ("targets/releases", V03_RELEASES),
    ] {
        snapshot.meta[name].check(&role(name), bytes).unwrap();
    }
    let timestamp = Timestamp::parse(&file(V03_TIMESTAMP)).unwrap();
    timestamp
        .snapshot
        .check(&Role::snapshot(), V03_SNAPSHOT)
        .unwrap();
    // notary0.1 snapshots carry sha256 only.
    let old = Snapshot::parse(&file(V01_SNAPSHOT)).unwrap();
    assert_eq!(old.meta["targets"].hashes.len(), 1);
    old.meta["targets"]
        .check(&Role::targets(), V01_TARGETS)
        .unwrap();
    let mut changed = V03_TARGETS.to_vec();
    changed.push(b' ');
    assert!(matches!(
        snapshot.meta["targets"].check(&Role::targets(), &changed),
        Err(MetadataError::Hash { .. })
    ));
    let no_hashes = FileMeta {
        length: 3,
        hashes: BTreeMap::new(),
    };
    assert!(no_hashes.check(&Role::root(), b"abc").is_err());
}

#[test]
fn tampered_signed_fails_the_threshold() {
    let text = std::str::from_utf8(V03_TARGETS)
        .unwrap()
        .replace("\"length\":11309", "\"length\":11308");
    let tampered = SignedFile::parse(Bytes::from(text)).unwrap();
    let root = Root::parse(&file(V03_ROOT)).unwrap();
    let err = tampered
        .verify(&Role::targets(), root.role(&Role::targets()))
        .unwrap_err();
    assert!(
        matches!(
            err,
            MetadataError::Threshold {
                valid: 0,
                threshold: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn signature_key_id_must_be_the_key_s_id() {
    let root = Root::parse(&file(V03_ROOT)).unwrap();
    let mut keys = root.role(&Role::targets()).clone();
    let (id, key) = keys.keys.pop_first().unwrap();
    // The same key filed under the id of another key: notary's ErrInvalidKeyID.
    let mut wrong = file(V03_TARGETS);
    wrong.signatures[0].keyid = "0".repeat(64);
    keys.keys.insert("0".repeat(64), key);
    assert!(matches!(
        wrong.verify(&Role::targets(), &keys),
        Err(MetadataError::InvalidKeyId(_))
    ));
    // A signature naming an unknown id is ignored.
    let mut upper = file(V03_TARGETS);
    upper.signatures[0].keyid = id.to_uppercase();
    let err = upper
        .verify(&Role::targets(), root.role(&Role::targets()))
        .unwrap_err();
    assert!(matches!(err, MetadataError::Threshold { valid: 0, .. }));
}

#[test]
fn structure_errors() {
    let bad = |s: &'static str| SignedFile::parse(Bytes::from_static(s.as_bytes())).unwrap_err();
    assert!(matches!(bad("{"), MetadataError::Malformed(_)));
    assert!(matches!(
        bad(r#"{"signed":1,"signatures":[]}"#),
        MetadataError::Malformed(_)
    ));
    assert!(matches!(
        bad(r#"{"signed":{"_type":"Targets","version":1,"expires":"soon"},"signatures":[]}"#),
        MetadataError::Malformed(_)
    ));
    // A root file uploaded as targets is refused by its _type.
    let root_as_targets = Targets::parse(&file(V03_ROOT), &Role::targets()).unwrap_err();
    assert!(
        root_as_targets.to_string().contains("_type"),
        "{root_as_targets}"
    );
    // Delegations must be direct children of the declaring role.
    let releases = role("targets/releases");
    let grandchild = Targets::parse(&file(V03_TARGETS), &releases).unwrap_err();
    assert!(
        grandchild.to_string().contains("direct child"),
        "{grandchild}"
    );
}

#[test]
fn versions_above_i64_max_are_refused() {
    let doc = |version: u64| {
        Bytes::from(format!(
            r#"{{"signed":{{"_type":"Targets","version":{version},"expires":"2030-01-01T00:00:00Z"}},"signatures":[]}}"#
        ))
    };
    assert_eq!(
        SignedFile::parse(doc(MAX_VERSION)).unwrap().version,
        MAX_VERSION
    );
    for version in [MAX_VERSION + 1, u64::MAX] {
        let err = SignedFile::parse(doc(version)).unwrap_err();
        assert!(matches!(err, MetadataError::Malformed(_)), "{err}");
    }
}

#[test]
fn signature_count_is_capped_and_a_key_counts_once() {
    let mut doc: Value = serde_json::from_slice(V03_TARGETS).unwrap();
    let first = doc["signatures"][0].clone();
    doc["signatures"] = Value::Array(vec![first; MAX_SIGNATURES]);
    let at_cap = SignedFile::parse(Bytes::from(serde_json::to_vec(&doc).unwrap())).unwrap();
    // 64 copies of one valid signature are one key, not a threshold of 2.
    let root = Root::parse(&file(V03_ROOT)).unwrap();
    let mut keys = root.role(&Role::targets()).clone();
    at_cap.verify(&Role::targets(), &keys).unwrap();
    keys.threshold = 2;
    assert!(matches!(
        at_cap.verify(&Role::targets(), &keys),
        Err(MetadataError::Threshold {
            valid: 1,
            threshold: 2,
            ..
        })
    ));
    doc["signatures"]
        .as_array_mut()
        .unwrap()
        .push(json!({"keyid": "a", "method": "ecdsa", "sig": ""}));
    let err = SignedFile::parse(Bytes::from(serde_json::to_vec(&doc).unwrap())).unwrap_err();
    assert!(err.to_string().contains("at most 64"), "{err}");
}

#[test]
fn delegation_paths_are_prefixes() {
    let targets = Targets::parse(&file(V03_TARGETS), &Role::targets()).unwrap();
    let releases = targets.delegation(&role("targets/releases")).unwrap();
    assert_eq!(releases.paths, [""]);
    assert!(releases.covers("anything"));
    let limited = Delegation {
        paths: vec!["v1".to_owned(), "stable-".to_owned()],
        ..releases.clone()
    };
    assert!(limited.covers("v1.2") && limited.covers("stable-x"));
    assert!(!limited.covers("latest") && !limited.covers("v"));
    let none = Delegation {
        paths: Vec::new(),
        ..releases.clone()
    };
    assert!(!none.covers(""));
}
