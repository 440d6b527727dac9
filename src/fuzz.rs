//! Entry points for the fuzz targets in `fuzz/` and for their corpus replay in
//! `tests/fuzz_corpus.rs`: one function per parser that sees untrusted bytes, each a thin
//! wrapper that feeds the bytes to the library exactly as a request would. None may
//! panic, whatever the input.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method};

use crate::gateway::authn::Authenticator;
use crate::gateway::jwt::{Issuer, TokenUse};
use crate::identity::{AdminAccount, IdentityStore, now_unix};
use crate::trust::Role;
use crate::trust::metadata::{Root, SignedFile, Snapshot, Targets, Timestamp};

/// A fuzz entry: takes any bytes, never panics.
pub type Entry = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/<name>.rs` and corpus directory.
pub const TARGETS: &[(&str, Entry)] = &[
    ("route", route),
    ("authorization", authorization),
    ("token_query", token_query),
    ("manifest", manifest),
    ("tuf_metadata", tuf_metadata),
    ("canonical_json", canonical_json),
    ("scope_pattern", scope_pattern),
    ("admin_json", admin_json),
    ("range", range),
];

/// `METHOD PATH[?QUERY]`: request classification.
pub fn route(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (method, target) = text.split_once(' ').unwrap_or(("GET", &text));
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let _ = crate::gateway::classify::classify(&method, path, query);
}

/// An `Authorization` header value (Basic or Bearer, a JWT's header and claims).
pub fn authorization(data: &[u8]) {
    let (authn, issuer) = authenticator();
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let _ = authn.authenticate(Some(&value), None);
    }
    let token = String::from_utf8_lossy(data);
    let _ = issuer.verify(&token, TokenUse::Access, now_unix());
    let _ = issuer.verify(&token, TokenUse::Refresh, now_unix());
}

/// The token endpoint's query or form body (`scope=` lists).
pub fn token_query(data: &[u8]) {
    let _ = crate::gateway::token::requested_scopes(&String::from_utf8_lossy(data));
}

/// An image manifest or index, and the digest and reference grammar.
pub fn manifest(data: &[u8]) {
    use portcullis_storage::manifest::parse;
    for content_type in [
        Some("application/vnd.oci.image.manifest.v1+json"),
        Some("application/vnd.oci.image.index.v1+json"),
        Some("application/vnd.docker.distribution.manifest.v2+json"),
        None,
    ] {
        let _ = parse(data, content_type);
    }
    let text = String::from_utf8_lossy(data);
    let _ = portcullis_storage::Digest::parse(&text);
    let _ = portcullis_storage::is_valid_tag(&text);
    let _ = portcullis_storage::is_valid_repository_name(&text);
}

/// A TUF metadata file, parsed as every role.
pub fn tuf_metadata(data: &[u8]) {
    let Ok(file) = SignedFile::parse(Bytes::copy_from_slice(data)) else {
        return;
    };
    let _ = Root::parse(&file);
    let _ = Snapshot::parse(&file);
    let _ = Timestamp::parse(&file);
    for role in ["targets", "targets/releases"] {
        if let Ok(role) = Role::parse(role) {
            let _ = Targets::parse(&file, &role);
        }
    }
}

/// Canonical JSON of any JSON document.
pub fn canonical_json(data: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = crate::trust::canonical::canonical_json(&value);
    }
}

/// A scope-map repository pattern, then matched against itself and a few names.
pub fn scope_pattern(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(pattern) = crate::identity::RepositoryPattern::parse(&text) {
        for name in [text.as_ref(), "a", "a/b", "samples/app"] {
            let _ = pattern.matches(name);
        }
    }
}

/// Every admin API request body.
pub fn admin_json(data: &[u8]) {
    crate::admin::parse_request_bodies(data);
}

/// A `Range` header against a few blob sizes.
pub fn range(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for size in [0, 1, 4096, u64::MAX] {
        let _ = portcullis_storage::parse_range(Some(&text), size);
    }
}

/// One authenticator (and its issuer) per process, over a store in a temporary directory.
fn authenticator() -> &'static (Authenticator, Arc<Issuer>) {
    static AUTHN: OnceLock<(Authenticator, Arc<Issuer>)> = OnceLock::new();
    AUTHN.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("portcullis-fuzz-{}", std::process::id()));
        let open = || -> Option<(Authenticator, Arc<Issuer>)> {
            std::fs::create_dir_all(&dir).ok()?;
            let store = IdentityStore::open(&PathBuf::from(&dir).join("control.redb")).ok()?;
            let admin = Arc::new(AdminAccount::new("fuzz-admin-password").ok()?);
            let issuer = Arc::new(Issuer::generated("portcullis", Duration::from_secs(300)).ok()?);
            Some((
                Authenticator::new(store, admin, Arc::clone(&issuer)),
                issuer,
            ))
        };
        match open() {
            Some(pair) => pair,
            // A harness without a writable temporary directory cannot run this target.
            None => std::process::abort(),
        }
    })
}
