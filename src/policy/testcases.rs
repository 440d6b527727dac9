//! Policy test cases kept beside the policies (`DIR/tests/*.toml`): each file defines
//! scope maps, tokens and repository attributes inline, optionally extra policy files
//! (e.g. `../examples/x.cedar`), and cases `request → expected decision`.
//!
//! ```toml
//! policies = ["../examples/no-prod-deletes.cedar"]   # relative to this file
//! anonymous_pull = false
//! [[scope_maps]]
//! name = "ci"
//! rules = [{ repository = "prod/*", actions = ["content/read", "content/delete"] }]
//! [[tokens]]
//! name = "ci-token"
//! scope_map = "ci"
//! # status = "disabled"; password1 = { created_at = 0, expires_at = 100 }; password2 = ...
//! [[repositories]]
//! name = "locked/app"
//! write_enabled = false
//! [[cases]]
//! name = "no deletes under prod"
//! principal = "token:ci-token"     # or "token:NAME:password2", "admin", "anonymous"
//! action = "content/delete"
//! repository = "prod/app"
//! # tag, digest, signed, signatures (names), signature_artifact, source_ip, now (default 1767225600), operation (default "other")
//! expect = "deny"
//! ```

use imbl::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use portcullis_oci::Digest;
use serde::Deserialize;

use super::{
    AuthzRequest, Decision, Operation, PolicyEngine, PolicyError, Reference, RequestContext,
};
use crate::identity::{
    Action, IdentitySnapshot, PasswordRecord, PasswordSlot, Principal, RepositoryAttributes,
    ScopeMap, ScopeRule, Token, TokenStatus, UnixSeconds,
};

/// Default request time of a case: 2026-01-01T00:00:00Z.
pub const DEFAULT_NOW: UnixSeconds = 1_767_225_600;

/// Why a test file could not be run.
#[derive(Debug, thiserror::Error)]
pub enum TestFileError {
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Toml {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{}: case `{case}`: {message}", path.display())]
    Case {
        path: PathBuf,
        case: String,
        message: String,
    },
    #[error("{}: policies: {source}", path.display())]
    Policies { path: PathBuf, source: PolicyError },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    policies: Vec<PathBuf>,
    #[serde(default)]
    anonymous_pull: bool,
    #[serde(default)]
    scope_maps: Vec<TestScopeMap>,
    #[serde(default)]
    tokens: Vec<TestToken>,
    #[serde(default)]
    repositories: Vec<TestRepository>,
    #[serde(default)]
    cases: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestScopeMap {
    name: String,
    #[serde(default)]
    description: String,
    rules: Vec<ScopeRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestToken {
    name: String,
    scope_map: String,
    #[serde(default = "enabled")]
    status: TokenStatus,
    /// Defaults to a password created at 0 that never expires.
    #[serde(default = "default_password")]
    password1: Option<TestPassword>,
    #[serde(default)]
    password2: Option<TestPassword>,
}

fn enabled() -> TokenStatus {
    TokenStatus::Enabled
}

fn default_password() -> Option<TestPassword> {
    Some(TestPassword {
        created_at: 0,
        expires_at: None,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestPassword {
    #[serde(default)]
    created_at: UnixSeconds,
    expires_at: Option<UnixSeconds>,
}

impl TestPassword {
    fn record(&self) -> PasswordRecord {
        PasswordRecord {
            salt: [0; 16],
            hash: [0; 32],
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestRepository {
    name: String,
    #[serde(default = "yes")]
    read_enabled: bool,
    #[serde(default = "yes")]
    write_enabled: bool,
    #[serde(default = "yes")]
    delete_enabled: bool,
    #[serde(default = "yes")]
    list_enabled: bool,
    #[serde(default)]
    signed_only: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    principal: String,
    action: Action,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
    #[serde(default)]
    signed: bool,
    /// `context.signatures`.
    #[serde(default)]
    signatures: Vec<String>,
    #[serde(default)]
    signature_artifact: bool,
    source_ip: Option<IpAddr>,
    now: Option<UnixSeconds>,
    #[serde(default)]
    operation: Operation,
    expect: Expect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub expected_allow: bool,
    pub decision: Decision,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.expected_allow == self.decision.allowed
    }
}

/// `*.toml` files directly in `dir/tests`, sorted (none when the directory is absent).
pub fn test_files(dir: &Path) -> Result<Vec<PathBuf>, TestFileError> {
    let tests = dir.join("tests");
    if !tests.is_dir() {
        return Ok(Vec::new());
    }
    let io = |source| TestFileError::Io {
        path: tests.clone(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&tests).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Runs one test file against the policies of `dir` plus the file's own `policies`.
pub fn run_file(dir: &Path, path: &Path) -> Result<Vec<CaseResult>, TestFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TestFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    let file: TestFile = toml::from_str(&text).map_err(|source| TestFileError::Toml {
        path: path.to_owned(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let extra: Vec<PathBuf> = file.policies.iter().map(|p| base.join(p)).collect();
    let engine = PolicyEngine::load_with_files(&[dir.to_owned()], &extra).map_err(|source| {
        TestFileError::Policies {
            path: path.to_owned(),
            source,
        }
    })?;
    engine.set_anonymous_pull(file.anonymous_pull);
    let snapshot = snapshot(&file);
    file.cases
        .iter()
        .map(|case| {
            let request = request(case).map_err(|message| TestFileError::Case {
                path: path.to_owned(),
                case: case.name.clone(),
                message,
            })?;
            Ok(CaseResult {
                name: case.name.clone(),
                expected_allow: case.expect == Expect::Allow,
                decision: Decision::clone(&engine.authorize(&snapshot, request)),
            })
        })
        .collect()
}

fn snapshot(file: &TestFile) -> IdentitySnapshot {
    let mut scope_maps: HashMap<String, Arc<ScopeMap>> =
        crate::identity::scope::system_scope_maps()
            .into_iter()
            .map(|m| (m.name.clone(), Arc::new(m)))
            .collect();
    for m in &file.scope_maps {
        let map = ScopeMap {
            name: m.name.to_ascii_lowercase(),
            description: m.description.clone(),
            rules: m.rules.clone(),
            system: false,
            created_at: 0,
            updated_at: 0,
        };
        scope_maps.insert(map.name.clone(), Arc::new(map));
    }
    let tokens = file
        .tokens
        .iter()
        .map(|t| {
            let token = Token {
                name: t.name.clone(),
                scope_map: t.scope_map.clone(),
                status: t.status,
                password1: t.password1.as_ref().map(TestPassword::record),
                password2: t.password2.as_ref().map(TestPassword::record),
                created_at: 0,
                updated_at: 0,
            };
            (t.name.clone(), Arc::new(token))
        })
        .collect();
    let repositories = file
        .repositories
        .iter()
        .map(|r| {
            let attrs = RepositoryAttributes {
                read_enabled: r.read_enabled,
                write_enabled: r.write_enabled,
                delete_enabled: r.delete_enabled,
                list_enabled: r.list_enabled,
                signed_only: r.signed_only,
            };
            (r.name.clone(), attrs)
        })
        .collect();
    IdentitySnapshot {
        version: 1,
        tokens,
        scope_maps,
        repositories,
        ..IdentitySnapshot::default()
    }
}

/// `admin`, `anonymous`, `token:NAME` or `token:NAME:password2`.
pub fn parse_principal(text: &str) -> Result<Principal, String> {
    match text {
        "admin" => return Ok(Principal::Admin),
        "anonymous" => return Ok(Principal::Anonymous),
        _ => {}
    }
    let rest = text.strip_prefix("token:").ok_or_else(|| {
        format!("principal `{text}`: expected `admin`, `anonymous` or `token:NAME[:password1|password2]`")
    })?;
    let (name, slot) = match rest.rsplit_once(':') {
        Some((name, "password1")) => (name, PasswordSlot::Password1),
        Some((name, "password2")) => (name, PasswordSlot::Password2),
        Some((_, other)) => {
            return Err(format!(
                "principal `{text}`: unknown password slot `{other}`"
            ));
        }
        None => (rest, PasswordSlot::Password1),
    };
    Ok(Principal::Token {
        name: name.to_owned(),
        slot,
    })
}

fn request(case: &TestCase) -> Result<AuthzRequest, String> {
    let reference = match (&case.tag, &case.digest) {
        (Some(_), Some(_)) => return Err("give `tag` or `digest`, not both".into()),
        (Some(tag), None) => Some(Reference::Tag(tag.clone())),
        (None, Some(digest)) => Some(Reference::Digest(
            Digest::parse(digest).map_err(|e| e.to_string())?,
        )),
        (None, None) => None,
    };
    Ok(AuthzRequest {
        principal: parse_principal(&case.principal)?,
        action: case.action,
        repository: case.repository.clone(),
        context: RequestContext {
            reference,
            signed: case.signed,
            signatures: {
                let mut names = case.signatures.clone();
                names.sort_unstable();
                names.dedup();
                names.into()
            },
            signature_artifact: case.signature_artifact,
            source_ip: case.source_ip,
            now: case.now.unwrap_or(DEFAULT_NOW),
            operation: case.operation,
        },
    })
}
