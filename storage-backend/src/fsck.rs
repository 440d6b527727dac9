//! A read-only consistency check of a stopped store's data directory (`meta.redb`,
//! `blobs/`, `uploads/`): every blob file hashes to its name, every manifest's bytes hash
//! to its digest and its blobs and index children exist, every tag and blob link points at
//! something stored. Leftovers a crash may leave (upload files, blob files whose metadata
//! commit never happened) are harmless garbage the next GC pass removes, reported apart
//! from problems.
//!
//! Nothing is written: a database that was not shut down cleanly (after `kill -9`) needs
//! redb's repair before it can be read, which [`ReadOnlyDb::open`] runs on a private copy.

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use redb::{Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::meta::{self, MetaContents};
use crate::names::Digest;

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Data is wrong or missing: a client could see it.
    Problem,
    /// Left over by an interrupted write; invisible to clients, removed by GC or expiry.
    Garbage,
    /// Worth knowing, not wrong.
    Note,
}

/// One thing the check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// What it is about: `blob sha256:…`, `manifest repo@sha256:…`, `tag repo:tag`, a file.
    pub subject: String,
    pub message: String,
}

impl Finding {
    pub fn new(severity: Severity, subject: impl Into<String>, message: impl Into<String>) -> Self {
        Finding {
            severity,
            subject: subject.into(),
            message: message.into(),
        }
    }
}

/// What the store check looked at.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct StoreCounts {
    pub blobs: usize,
    pub blob_bytes: u64,
    pub manifests: usize,
    pub tags: usize,
    pub repositories: usize,
}

/// Why a check could not run at all (as opposed to what it found).
#[derive(Debug, thiserror::Error)]
pub enum FsckError {
    #[error("{0} is in use by another process (is the server running? stop it first)")]
    Locked(PathBuf),
    #[error("{0} does not exist (is this a data directory?)")]
    Missing(PathBuf),
    #[error("opening {path}: {source}")]
    Open { path: PathBuf, source: redb::Error },
    #[error("reading {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// A redb file opened for reading only; when it was not shut down cleanly, a repaired
/// private copy (the original is left for the server to repair at its next start).
pub enum ReadOnlyDb {
    Clean(ReadOnlyDatabase),
    Repaired {
        db: Database,
        /// Holds the copy until the handle is dropped.
        _copy: tempfile::TempDir,
    },
}

impl ReadOnlyDb {
    /// Opens `path`; the note says when a repaired copy was read.
    pub fn open(path: &Path) -> Result<(ReadOnlyDb, Option<Finding>), FsckError> {
        let open_err = |e: redb::DatabaseError| FsckError::Open {
            path: path.to_owned(),
            source: e.into(),
        };
        if !path.is_file() {
            return Err(FsckError::Missing(path.to_owned()));
        }
        match ReadOnlyDatabase::open(path) {
            Ok(db) => Ok((ReadOnlyDb::Clean(db), None)),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(FsckError::Locked(path.into())),
            Err(redb::DatabaseError::RepairAborted) => {
                let io_err = |source| FsckError::Io {
                    path: path.to_owned(),
                    source,
                };
                let copy = tempfile::tempdir().map_err(io_err)?;
                let target = copy.path().join("copy.redb");
                std::fs::copy(path, &target).map_err(io_err)?;
                let db = Database::open(&target).map_err(open_err)?;
                let note = Finding::new(
                    Severity::Note,
                    path.display().to_string(),
                    "not shut down cleanly (a crash or kill); checked a repaired copy, \
                     the server repairs the file itself at its next start",
                );
                Ok((ReadOnlyDb::Repaired { db, _copy: copy }, Some(note)))
            }
            Err(e) => Err(open_err(e)),
        }
    }

    pub fn begin_read(&self) -> Result<ReadTransaction, redb::Error> {
        Ok(match self {
            ReadOnlyDb::Clean(db) => db.begin_read()?,
            ReadOnlyDb::Repaired { db, .. } => db.begin_read()?,
        })
    }
}

/// Checks the store in `data_dir` (the layout of [`crate::Stores::open`]); findings in
/// the order found.
pub fn check_store(data_dir: &Path) -> Result<(StoreCounts, Vec<Finding>), FsckError> {
    let meta_path = data_dir.join("meta.redb");
    let (db, note) = ReadOnlyDb::open(&meta_path)?;
    let mut findings: Vec<Finding> = note.into_iter().collect();
    let contents = match &db {
        ReadOnlyDb::Clean(db) => meta::contents(db),
        ReadOnlyDb::Repaired { db, .. } => meta::contents(db),
    }
    .map_err(|e| FsckError::Read {
        path: meta_path.clone(),
        message: e.to_string(),
    })?;
    let files = blob_files(&data_dir.join("blobs"), &mut findings)?;
    let mut counts = check_contents(&contents, &files, &mut findings);
    counts.blob_bytes = files.iter().map(|f| f.size).sum();
    uploads(&data_dir.join("uploads"), &contents.uploads, &mut findings)?;
    Ok((counts, findings))
}

/// A blob file that hashed to its name.
struct BlobFile {
    digest: String,
    size: u64,
}

/// Hashes every file under `blobs/sha256/`; the ones that hash to their name.
fn blob_files(root: &Path, findings: &mut Vec<Finding>) -> Result<Vec<BlobFile>, FsckError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| FsckError::Io { path, source }
    };
    let root = root.join("sha256");
    let mut out = Vec::new();
    let shards = match std::fs::read_dir(&root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        r => r.map_err(io_err(&root))?,
    };
    for shard in shards {
        let shard = shard.map_err(io_err(&root))?.path();
        let shard_name = shard
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !shard.is_dir() {
            findings.push(Finding::new(
                Severity::Garbage,
                shard.display().to_string(),
                "stray file in the blob directory",
            ));
            continue;
        }
        for file in std::fs::read_dir(&shard).map_err(io_err(&shard))? {
            let path = file.map_err(io_err(&shard))?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let digest = format!("sha256:{name}");
            if Digest::parse(&digest).is_err() || !name.starts_with(&shard_name) {
                findings.push(Finding::new(
                    Severity::Garbage,
                    path.display().to_string(),
                    "not a blob file (no digest name in its shard); the store never reads it",
                ));
                continue;
            }
            let (actual, size) = hash_file(&path).map_err(io_err(&path))?;
            if actual != name {
                findings.push(Finding::new(
                    Severity::Problem,
                    format!("blob {digest}"),
                    format!("bytes hash to sha256:{actual} ({size} bytes): the blob is corrupt"),
                ));
                continue;
            }
            out.push(BlobFile { digest, size });
        }
    }
    Ok(out)
}

/// The hex sha256 and size of a file, streamed.
fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex_string(&hasher.finalize()), size))
}

fn hex_string(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The metadata against itself and the verified blob files.
fn check_contents(
    contents: &MetaContents,
    files: &[BlobFile],
    findings: &mut Vec<Finding>,
) -> StoreCounts {
    let mut problem = |subject: String, message: String| {
        findings.push(Finding::new(Severity::Problem, subject, message));
    };
    let good: std::collections::BTreeMap<&str, u64> =
        files.iter().map(|f| (f.digest.as_str(), f.size)).collect();
    // A blob whose file failed its hash is reported once, as a corrupt file, above.
    let corrupt_or_missing = |digest: &str| !good.contains_key(digest);
    for (digest, size) in &contents.blobs {
        match good.get(digest.as_str()) {
            Some(actual) if actual != size => problem(
                format!("blob {digest}"),
                format!("recorded as {size} bytes, the file has {actual}"),
            ),
            Some(_) => {}
            None => problem(
                format!("blob {digest}"),
                "recorded in the metadata but its file is missing or corrupt".to_owned(),
            ),
        }
    }
    let mut orphans = 0usize;
    for file in files {
        if !contents.blobs.contains_key(&file.digest) {
            orphans += 1;
        }
    }
    for (digest, repo) in &contents.links {
        if !contents.blobs.contains_key(digest) {
            problem(
                format!("blob link {repo}@{digest}"),
                "the repository links a blob the store has no record of".to_owned(),
            );
        }
    }
    let manifests: BTreeSet<(&str, &str)> = contents
        .manifests
        .iter()
        .map(|m| (m.repo.as_str(), m.digest.as_str()))
        .collect();
    let mut repositories: BTreeSet<&str> = BTreeSet::new();
    let mut notes = Vec::new();
    for m in &contents.manifests {
        repositories.insert(&m.repo);
        let subject = format!("manifest {}@{}", m.repo, m.digest);
        match &m.bytes {
            None => problem(subject.clone(), "its bytes are missing".to_owned()),
            Some(bytes) => {
                let actual = format!("sha256:{}", hex_string(&Sha256::digest(bytes)));
                if actual != m.digest {
                    problem(
                        subject.clone(),
                        format!("its bytes hash to {actual}: the manifest is corrupt"),
                    );
                }
            }
        }
        let record = match &m.record {
            Ok(r) => r,
            Err(e) => {
                problem(subject, format!("its record does not decode: {e}"));
                continue;
            }
        };
        if let Some(bytes) = &m.bytes
            && bytes.len() as u64 != record.size
        {
            problem(
                subject.clone(),
                format!(
                    "recorded as {} bytes, stored bytes are {}",
                    record.size,
                    bytes.len()
                ),
            );
        }
        for blob in &record.blobs {
            if corrupt_or_missing(blob) {
                problem(
                    subject.clone(),
                    format!("references blob {blob}, which is missing or corrupt"),
                );
            } else if !contents.links.contains(&(blob.clone(), m.repo.clone())) {
                problem(
                    subject.clone(),
                    format!("references blob {blob}, which is not linked into the repository"),
                );
            }
        }
        for child in &record.children {
            if !manifests.contains(&(m.repo.as_str(), child.as_str())) {
                problem(
                    subject.clone(),
                    format!("lists manifest {child}, which the repository does not hold"),
                );
            }
        }
        if let Some(s) = &record.subject
            && !manifests.contains(&(m.repo.as_str(), s.as_str()))
        {
            // OCI lets a referrer be pushed before (or outlive) its subject.
            notes.push(Finding::new(
                Severity::Note,
                subject.clone(),
                format!("refers to subject {s}, which the repository does not hold"),
            ));
        }
    }
    for (repo, tag, digest) in &contents.tags {
        repositories.insert(repo);
        if !manifests.contains(&(repo.as_str(), digest.as_str())) {
            problem(
                format!("tag {repo}:{tag}"),
                format!("points at manifest {digest}, which the repository does not hold"),
            );
        }
    }
    findings.extend(notes);
    if orphans > 0 {
        findings.push(Finding::new(
            Severity::Garbage,
            "blobs/",
            format!(
                "{orphans} blob file(s) without metadata (a crash before the metadata commit); \
                 GC removes them after the grace period"
            ),
        ));
    }
    StoreCounts {
        blobs: contents.blobs.len(),
        blob_bytes: 0,
        manifests: contents.manifests.len(),
        tags: contents.tags.len(),
        repositories: repositories.len(),
    }
}

/// Upload files and session records: leftovers of pushes that never finished.
fn uploads(
    dir: &Path,
    sessions: &BTreeSet<String>,
    findings: &mut Vec<Finding>,
) -> Result<(), FsckError> {
    let files = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        r => r.map_err(|source| FsckError::Io {
            path: dir.to_owned(),
            source,
        })?,
    };
    let mut without_session = 0usize;
    let mut count = 0usize;
    for file in files.flatten() {
        count += 1;
        if !sessions.contains(file.file_name().to_string_lossy().as_ref()) {
            without_session += 1;
        }
    }
    if count > 0 || !sessions.is_empty() {
        findings.push(Finding::new(
            Severity::Garbage,
            "uploads/",
            format!(
                "{count} upload file(s) ({without_session} without a session record) and {} \
                 open session(s); unfinished pushes, removed when they expire",
                sessions.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::meta::{ManifestRecord, MetaManifest};

    fn sha(bytes: &[u8]) -> String {
        format!("sha256:{}", hex_string(&Sha256::digest(bytes)))
    }

    fn record(size: usize, blobs: &[&str], children: &[&str]) -> ManifestRecord {
        ManifestRecord {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: size as u64,
            created_at: 0,
            blobs: blobs.iter().map(|s| s.to_string()).collect(),
            children: children.iter().map(|s| s.to_string()).collect(),
            subject: None,
            artifact_type: None,
            annotations: None,
        }
    }

    fn problems(findings: &[Finding]) -> Vec<String> {
        findings
            .iter()
            .filter(|f| f.severity == Severity::Problem)
            .map(|f| format!("{}: {}", f.subject, f.message))
            .collect()
    }

    #[test]
    fn consistent_contents_have_no_problems_and_each_break_is_named() {
        let layer = sha(b"layer");
        let manifest = b"{\"layers\":[]}".to_vec();
        let digest = sha(&manifest);
        let mut contents = MetaContents::default();
        contents.blobs.insert(layer.clone(), 5);
        contents.links.insert((layer.clone(), "r".into()));
        contents.manifests.push(MetaManifest {
            repo: "r".into(),
            digest: digest.clone(),
            record: Ok(record(manifest.len(), &[&layer], &[])),
            bytes: Some(manifest.clone()),
        });
        contents
            .tags
            .push(("r".into(), "v1".into(), digest.clone()));
        let files = vec![BlobFile {
            digest: layer.clone(),
            size: 5,
        }];
        let mut findings = Vec::new();
        let counts = check_contents(&contents, &files, &mut findings);
        assert_eq!(problems(&findings), Vec::<String>::new());
        assert_eq!(
            (counts.manifests, counts.tags, counts.repositories),
            (1, 1, 1)
        );

        // Blob file gone, a dangling tag, an index child missing, a manifest's bytes changed.
        contents
            .tags
            .push(("r".into(), "gone".into(), sha(b"nothing")));
        contents.manifests.push(MetaManifest {
            repo: "r".into(),
            digest: sha(b"index"),
            record: Ok(record(7, &[], &[&sha(b"child")])),
            bytes: Some(b"tampered".to_vec()),
        });
        let mut findings = Vec::new();
        check_contents(&contents, &[], &mut findings);
        let found = problems(&findings).join("\n");
        for needle in [
            format!("blob {layer}: recorded in the metadata but its file is missing"),
            format!("manifest r@{digest}: references blob {layer}"),
            "tag r:gone: points at manifest".to_owned(),
            format!("lists manifest {}", sha(b"child")),
            "its bytes hash to".to_owned(),
            "recorded as 7 bytes, stored bytes are 8".to_owned(),
        ] {
            assert!(found.contains(&needle), "{needle} not in:\n{found}");
        }
    }
}
