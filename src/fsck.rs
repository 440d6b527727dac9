//! `portcullis fsck`: a read-only check of a stopped gateway's data directory. The bundled
//! store (blob bytes against their digests, manifests against what they reference, tags,
//! leftovers of unfinished writes) is `portcullis_storage::fsck`; this adds the control
//! plane (`control.redb`): identity records decode and tokens' scope maps exist, and every
//! GUN's trust metadata validates root → targets/delegations → snapshot → timestamp.
//! It checks the embedded control plane only: with `--control-plane postgres://…` the
//! identity records live in PostgreSQL, whose transactions keep them consistent.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use portcullis_storage::fsck::{self as store_fsck, Finding, FsckError, ReadOnlyDb, Severity};
use serde::Serialize;

use crate::identity::store::check_tables;
use crate::trust::store::{ReadTxn, TrustStore};
use crate::trust::validate::check_stored;
use crate::trust::{Role, ServerKey, TrustState};

/// What the control-plane check looked at.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ControlCounts {
    pub tokens: usize,
    pub scope_maps: usize,
    pub repositories: usize,
    pub trust_guns: usize,
}

/// The whole report: counts, then findings in the order found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub data_dir: PathBuf,
    pub store: store_fsck::StoreCounts,
    pub control: ControlCounts,
    pub problems: usize,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems == 0
    }

    /// The human report: a summary line per area, then one line per finding.
    pub fn text(&self) -> String {
        let s = &self.store;
        let c = &self.control;
        let mut out = format!(
            "data directory {}\n\
             store: {} blob(s) ({} bytes), {} manifest(s), {} tag(s), {} repositor(ies)\n\
             control plane: {} token(s), {} scope map(s), {} repository attribute record(s), \
             trust data for {} GUN(s)\n",
            self.data_dir.display(),
            s.blobs,
            s.blob_bytes,
            s.manifests,
            s.tags,
            s.repositories,
            c.tokens,
            c.scope_maps,
            c.repositories,
            c.trust_guns,
        );
        for f in &self.findings {
            let label = match f.severity {
                Severity::Problem => "PROBLEM",
                Severity::Garbage => "garbage",
                Severity::Note => "note",
            };
            out.push_str(&format!("{label}: {}: {}\n", f.subject, f.message));
        }
        out.push_str(&if self.is_clean() {
            "clean: no problems found\n".to_owned()
        } else {
            format!("{} problem(s) found\n", self.problems)
        });
        out
    }
}

/// Checks the data directory; `Err` when the check could not run (the server holds the
/// files, the directory is not a data directory, a file cannot be read).
pub fn check(data_dir: &Path) -> Result<Report, FsckError> {
    let (store, mut findings) = store_fsck::check_store(data_dir)?;
    let control = check_control(&data_dir.join("control.redb"), &mut findings)?;
    Ok(Report {
        data_dir: data_dir.to_owned(),
        store,
        control,
        problems: findings
            .iter()
            .filter(|f| f.severity == Severity::Problem)
            .count(),
        findings,
    })
}

fn check_control(path: &Path, findings: &mut Vec<Finding>) -> Result<ControlCounts, FsckError> {
    let (db, note) = ReadOnlyDb::open(path)?;
    findings.extend(note);
    let read_err = |e: &dyn std::fmt::Display| FsckError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let txn = db.begin_read().map_err(|e| read_err(&e))?;
    let identity = check_tables(&txn).map_err(|e| read_err(&e))?;
    findings.extend(
        identity
            .problems
            .into_iter()
            .map(|(subject, message)| Finding::new(Severity::Problem, subject, message)),
    );
    let trust = TrustStore::reader(txn);
    let guns = trust.guns().map_err(|e| read_err(&e))?;
    for gun in &guns {
        let roles = trust.roles(gun).map_err(|e| read_err(&e))?;
        let mut parsed = Vec::new();
        for role in roles {
            match Role::parse(&role) {
                Ok(r) => parsed.push(r),
                Err(e) => findings.push(Finding::new(
                    Severity::Problem,
                    format!("trust {gun}"),
                    format!("stored role is invalid: {e}"),
                )),
            }
        }
        let state = StoredGun {
            txn: &trust,
            gun,
            error: Default::default(),
        };
        let checked = check_stored(gun, &state, &parsed);
        if let Some(e) = state.error.into_inner() {
            return Err(read_err(&e));
        }
        if let Err(e) = checked {
            findings.push(Finding::new(Severity::Problem, format!("trust {gun}"), e));
        }
    }
    Ok(ControlCounts {
        tokens: identity.tokens,
        scope_maps: identity.scope_maps,
        repositories: identity.repositories,
        trust_guns: guns.len(),
    })
}

/// One GUN's stored files, as validation reads them; a database error is kept for the
/// caller (the trait has no error path).
struct StoredGun<'t> {
    txn: &'t ReadTxn,
    gun: &'t str,
    error: std::cell::RefCell<Option<crate::trust::store::TrustStoreError>>,
}

impl TrustState for StoredGun<'_> {
    fn current(&self, role: &Role) -> Option<Bytes> {
        match self.txn.current(self.gun, role.as_str()) {
            Ok(file) => file.map(|f| f.bytes),
            Err(e) => {
                self.error.borrow_mut().get_or_insert(e);
                None
            }
        }
    }

    /// The checks only verify signatures; no key is needed.
    fn server_key(&self, _role: &Role, _key_id: &str) -> Option<ServerKey> {
        None
    }
}
