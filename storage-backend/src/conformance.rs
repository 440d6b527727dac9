//! The storage conformance suite: what every [`BlobStore`] and [`MetadataStore`] must do,
//! written once against the traits (as distribution's storage-driver test suite is).
//! An implementation runs all of it with one line in a test file:
//!
//! ```ignore
//! portcullis_storage::conformance_tests!(|dir| make_stores(dir));
//! ```
//!
//! where the closure gets a fresh empty directory per case and returns the [`Stores`]
//! under test (an implementation that needs no directory ignores it). Each case becomes
//! one `#[test]`. The default stores run it in this crate's unit tests.
//!
//! Compiled for this crate's tests and with the `conformance` feature.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a conformance check fails by panicking, as a test does"
)]

use std::future::Future;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;

use crate::blobstore::{BlobStore, ByteStream};
use crate::error::StorageError;
use crate::manifest;
use crate::meta::{MetadataStore, now_secs};
use crate::names::{Digest, Reference};
use crate::registry::Stores;

/// Runs each case of the suite as a `#[test]` against the [`Stores`] that `$make`
/// (`|dir: &Path| -> Stores`) returns.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            blob_put_get_is_byte_exact,
            blob_digest_mismatch_is_refused_and_leaves_nothing,
            blob_range_reads,
            blob_stat_and_idempotent_delete,
            blob_list_by_age,
            upload_append_checks_offsets_and_resumes,
            upload_commit_makes_the_blob_visible_and_ends_the_session,
            upload_listing_and_cancel,
            meta_manifest_put_get_delete,
            meta_tag_overwrite_and_delete,
            meta_referrers_by_subject_and_artifact_type,
            meta_repository_list,
            meta_upload_sessions,
            meta_upload_state_is_compare_and_swap,
            meta_upload_state_has_one_winner_per_version,
            meta_gc_keeps_referenced_and_recent_content,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        mod storage_conformance {
            #[allow(unused_imports, reason = "for what `$make` names")]
            use super::*;
            $(
                #[test]
                fn $case() {
                    $crate::conformance::run($make, $crate::conformance::$case);
                }
            )*
        }
    };
}

/// Runs one case on a fresh runtime with stores made in a fresh temporary directory.
pub fn run<F, C, Fut>(make: F, case: C)
where
    F: FnOnce(&Path) -> Stores,
    C: FnOnce(Stores) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temporary directory");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async { case(make(dir.path())).await });
}

fn body(data: &[u8]) -> ByteStream {
    let data = Bytes::copy_from_slice(data);
    Box::pin(futures_util::stream::iter([Ok(data)]))
}

/// `data` as several chunks, as a request body arrives.
fn chunked(data: &[u8], chunk: usize) -> ByteStream {
    let chunks: Vec<_> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures_util::stream::iter(chunks))
}

/// `len` bytes of distinct content for `seed`.
fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

async fn read(blobs: &dyn BlobStore, digest: &Digest, offset: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::new();
    blobs
        .get(digest, offset, len)
        .await
        .expect("get")
        .read_to_end(&mut out)
        .await
        .expect("read blob");
    out
}

async fn put(blobs: &dyn BlobStore, data: &[u8]) -> Digest {
    let digest = Digest::of(data);
    let lock = Mutex::new(());
    let (size, placed) = blobs
        .put(&digest, chunked(data, 4096), &lock)
        .await
        .expect("put");
    drop(placed);
    assert_eq!(size, data.len() as u64);
    digest
}

pub async fn blob_put_get_is_byte_exact(s: Stores) {
    let data = content(1, 300_000);
    let digest = Digest::of(&data);
    let lock = Mutex::new(());
    {
        let (size, _placed) = s
            .blobs
            .put(&digest, chunked(&data, 65_536), &lock)
            .await
            .unwrap();
        assert_eq!(size, 300_000);
        assert!(
            lock.try_lock().is_err(),
            "put returns the placement lock held"
        );
    }
    assert_eq!(read(&*s.blobs, &digest, 0, 300_000).await, data);
    // Content addressing: the same bytes again are fine and change nothing.
    put(&*s.blobs, &data).await;
    assert_eq!(read(&*s.blobs, &digest, 0, 300_000).await, data);
    let empty = put(&*s.blobs, b"").await;
    assert!(read(&*s.blobs, &empty, 0, 0).await.is_empty());
}

pub async fn blob_digest_mismatch_is_refused_and_leaves_nothing(s: Stores) {
    let data = content(2, 10_000);
    let claimed = Digest::of(b"something else");
    let lock = Mutex::new(());
    let err = s
        .blobs
        .put(&claimed, body(&data), &lock)
        .await
        .map(|(size, _)| size)
        .unwrap_err();
    assert!(
        matches!(&err, StorageError::DigestMismatch { expected, actual }
            if *expected == claimed && *actual == Digest::of(&data)),
        "{err}"
    );
    for d in [&claimed, &Digest::of(&data)] {
        assert!(s.blobs.stat(d).await.unwrap().is_none(), "{d} visible");
        assert!(s.blobs.get(d, 0, 0).await.is_err());
    }
    let later = SystemTime::now() + Duration::from_secs(60);
    assert!(s.blobs.list(later).await.unwrap().is_empty());
    assert!(s.blobs.uploads().await.unwrap().is_empty(), "no bytes left");
}

pub async fn blob_range_reads(s: Stores) {
    let data = content(3, 1000);
    let digest = put(&*s.blobs, &data).await;
    assert_eq!(read(&*s.blobs, &digest, 0, 10).await, &data[..10]);
    assert_eq!(read(&*s.blobs, &digest, 500, 250).await, &data[500..750]);
    assert_eq!(read(&*s.blobs, &digest, 999, 1).await, &data[999..]);
    assert!(read(&*s.blobs, &digest, 1000, 0).await.is_empty());
    for (offset, len) in [(999, 2), (1000, 1), (2000, 1), (u64::MAX, 1)] {
        assert!(
            matches!(
                s.blobs.get(&digest, offset, len).await.map(|_| ()),
                Err(StorageError::RangeUnsatisfiable(_))
            ),
            "bytes {offset}+{len} of 1000"
        );
    }
}

pub async fn blob_stat_and_idempotent_delete(s: Stores) {
    let data = content(4, 4321);
    let digest = Digest::of(&data);
    assert!(s.blobs.stat(&digest).await.unwrap().is_none());
    let before = SystemTime::now() - Duration::from_secs(5);
    put(&*s.blobs, &data).await;
    let stat = s.blobs.stat(&digest).await.unwrap().expect("stored");
    assert_eq!(stat.size, 4321);
    assert!(stat.modified > before);
    s.blobs.delete(&digest).await.unwrap();
    assert!(s.blobs.stat(&digest).await.unwrap().is_none());
    assert!(s.blobs.get(&digest, 0, 1).await.is_err());
    s.blobs.delete(&digest).await.unwrap();
}

pub async fn blob_list_by_age(s: Stores) {
    let mut stored = vec![put(&*s.blobs, b"one").await, put(&*s.blobs, b"two").await];
    stored.sort();
    let later = SystemTime::now() + Duration::from_secs(60);
    let mut listed = s.blobs.list(later).await.unwrap();
    listed.sort();
    assert_eq!(listed, stored);
    let earlier = SystemTime::now() - Duration::from_secs(60);
    assert!(s.blobs.list(earlier).await.unwrap().is_empty());
    s.blobs.delete(&stored[0]).await.unwrap();
    assert_eq!(s.blobs.list(later).await.unwrap(), vec![stored[1].clone()]);
}

pub async fn upload_append_checks_offsets_and_resumes(s: Stores) {
    let b = &*s.blobs;
    assert!(matches!(
        b.upload_offset("unknown").await,
        Err(StorageError::UploadUnknown(_))
    ));
    b.create_upload("u").await.unwrap();
    assert_eq!(b.upload_offset("u").await.unwrap(), 0);
    assert_eq!(
        b.append_upload("u", None, body(b"hello ")).await.unwrap(),
        6
    );
    // A chunk that does not continue at the offset is refused and changes nothing.
    for range in [(0, 4), (7, 10), (6, 5)] {
        let err = b
            .append_upload("u", Some(range), body(b"xxxxx"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StorageError::RangeInvalid { offset: 6, .. }),
            "{range:?}: {err}"
        );
    }
    assert_eq!(
        b.append_upload("u", Some((6, 10)), chunked(b"world", 2))
            .await
            .unwrap(),
        11
    );
    // A body that breaks midway: the session keeps a prefix, and its offset says how
    // much, so the client resumes from there.
    let broken: ByteStream = Box::pin(futures_util::stream::iter([
        Ok(Bytes::from_static(b", again")),
        Err(std::io::Error::other("client went away")),
    ]));
    assert!(b.append_upload("u", Some((11, 30)), broken).await.is_err());
    let offset = b.upload_offset("u").await.unwrap();
    assert!((11..=18).contains(&offset), "offset {offset}");
    let full = b"hello world, again!";
    let rest = &full[offset as usize..];
    b.append_upload("u", Some((offset, 18)), body(rest))
        .await
        .unwrap();
    assert_eq!(b.upload_offset("u").await.unwrap(), 19);
    let digest = Digest::of(full);
    let lock = Mutex::new(());
    let (size, _placed) = b
        .commit_upload("u", &digest, body(b""), &lock)
        .await
        .unwrap();
    assert_eq!(size, 19);
    assert_eq!(read(b, &digest, 0, 19).await, full);
}

pub async fn upload_commit_makes_the_blob_visible_and_ends_the_session(s: Stores) {
    let b = &*s.blobs;
    let data = content(5, 200_000);
    let digest = Digest::of(&data);
    b.create_upload("u").await.unwrap();
    b.append_upload("u", None, chunked(&data[..150_000], 10_000))
        .await
        .unwrap();
    assert!(
        b.stat(&digest).await.unwrap().is_none(),
        "nothing visible before the commit"
    );
    let lock = Mutex::new(());
    {
        let (size, _placed) = b
            .commit_upload("u", &digest, body(&data[150_000..]), &lock)
            .await
            .unwrap();
        assert_eq!(size, 200_000);
        assert!(lock.try_lock().is_err(), "placement lock returned held");
    }
    assert_eq!(
        b.stat(&digest).await.unwrap().map(|s| s.size),
        Some(200_000)
    );
    assert_eq!(read(b, &digest, 0, 200_000).await, data);
    assert!(matches!(
        b.upload_offset("u").await,
        Err(StorageError::UploadUnknown(_))
    ));
    assert!(b.uploads().await.unwrap().is_empty());

    // The wrong digest: refused, nothing visible, the session is over.
    b.create_upload("v").await.unwrap();
    b.append_upload("v", None, body(b"abc")).await.unwrap();
    let wrong = Digest::of(b"abd");
    let err = b
        .commit_upload("v", &wrong, body(b""), &lock)
        .await
        .map(|(size, _)| size)
        .unwrap_err();
    assert!(matches!(err, StorageError::DigestMismatch { .. }), "{err}");
    assert!(b.stat(&wrong).await.unwrap().is_none());
    assert!(b.stat(&Digest::of(b"abc")).await.unwrap().is_none());
    assert!(matches!(
        b.upload_offset("v").await,
        Err(StorageError::UploadUnknown(_))
    ));
}

pub async fn upload_listing_and_cancel(s: Stores) {
    let b = &*s.blobs;
    let before = SystemTime::now() - Duration::from_secs(5);
    b.create_upload("a").await.unwrap();
    b.create_upload("b").await.unwrap();
    b.append_upload("b", None, body(b"data")).await.unwrap();
    let mut listed = b.uploads().await.unwrap();
    listed.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(
        listed.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    for u in &listed {
        assert!(!u.busy, "{} is idle", u.id);
        assert!(u.modified > before && u.modified <= SystemTime::now() + Duration::from_secs(5));
    }
    b.cancel_upload("a").await.unwrap();
    b.cancel_upload("a").await.unwrap();
    assert!(matches!(
        b.upload_offset("a").await,
        Err(StorageError::UploadUnknown(_))
    ));
    let listed = b.uploads().await.unwrap();
    assert_eq!(
        listed.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    assert_eq!(b.upload_offset("b").await.unwrap(), 4);
}

// ---- metadata ----

pub(crate) fn digest_of(c: char) -> Digest {
    Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
}

/// An image manifest over blobs `config` and `layer` (1 byte each), with an optional
/// subject and artifact type; its bytes, digest and parse.
pub(crate) fn image(
    config: &Digest,
    layer: &Digest,
    subject: Option<(&Digest, usize)>,
    artifact_type: Option<&str>,
) -> (Vec<u8>, Digest, manifest::ParsedManifest) {
    let mut m = serde_json::json!({
        "schemaVersion": 2, "mediaType": manifest::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.as_str(), "size": 1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.as_str(), "size": 1}],
    });
    if let Some((s, size)) = subject {
        m["subject"] = serde_json::json!({"mediaType": manifest::OCI_MANIFEST, "digest": s.as_str(), "size": size});
    }
    if let Some(t) = artifact_type {
        m["artifactType"] = serde_json::json!(t);
    }
    let bytes = serde_json::to_vec_pretty(&m).unwrap();
    let parsed = manifest::parse(&bytes, None).unwrap();
    (bytes.clone(), Digest::of(&bytes), parsed)
}

/// Links blobs `a` and `b` (1 byte each) into `repo`.
async fn link_ab(m: &dyn MetadataStore, repo: &str) {
    for c in ['a', 'b'] {
        m.commit_blob(repo, &digest_of(c), 1, None).await.unwrap();
    }
}

fn tag(t: &str) -> Reference {
    Reference::Tag(t.to_owned())
}

pub async fn meta_manifest_put_get_delete(s: Stores) {
    let m = &*s.meta;
    let (bytes, digest, parsed) = image(&digest_of('a'), &digest_of('b'), None, None);
    let err = m
        .put_manifest("r", &digest, &bytes, &parsed, &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StorageError::ManifestBlobUnknown(d) if *d == digest_of('a')),
        "{err}"
    );
    link_ab(m, "r").await;
    m.put_manifest("r", &digest, &bytes, &parsed, &["v1".into()])
        .await
        .unwrap();
    let (record, stored) = m
        .manifest("r", &digest, true)
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(stored.as_deref(), Some(bytes.as_slice()), "byte-exact");
    assert_eq!(record.media_type, manifest::OCI_MANIFEST);
    assert_eq!(record.size, bytes.len() as u64);
    let (_, none) = m
        .manifest("r", &digest, false)
        .await
        .unwrap()
        .expect("stored");
    assert!(none.is_none());
    assert_eq!(
        m.resolve("r", &tag("v1")).await.unwrap(),
        Some(digest.clone())
    );
    assert!(m.manifest("other", &digest, false).await.unwrap().is_none());

    assert!(m.delete_manifest("r", &digest).await.unwrap());
    assert!(m.manifest("r", &digest, true).await.unwrap().is_none());
    assert_eq!(
        m.resolve("r", &tag("v1")).await.unwrap(),
        None,
        "its tags go too"
    );
    assert!(!m.delete_manifest("r", &digest).await.unwrap());
}

pub async fn meta_tag_overwrite_and_delete(s: Stores) {
    let m = &*s.meta;
    link_ab(m, "r").await;
    let (b1, d1, p1) = image(&digest_of('a'), &digest_of('b'), None, None);
    let (b2, d2, p2) = image(&digest_of('b'), &digest_of('a'), None, None);
    m.put_manifest("r", &d1, &b1, &p1, &["v".into(), "w".into()])
        .await
        .unwrap();
    m.put_manifest("r", &d2, &b2, &p2, &["v".into()])
        .await
        .unwrap();
    assert_eq!(m.resolve("r", &tag("v")).await.unwrap(), Some(d2.clone()));
    assert_eq!(m.resolve("r", &tag("w")).await.unwrap(), Some(d1.clone()));
    let page = m.tags("r", None, None).await.unwrap().expect("known");
    assert_eq!(
        (page.items, page.more),
        (vec!["v".into(), "w".into()], false)
    );
    let page = m.tags("r", None, Some(1)).await.unwrap().expect("known");
    assert_eq!((page.items, page.more), (vec!["v".into()], true));
    let page = m
        .tags("r", Some("v"), Some(1))
        .await
        .unwrap()
        .expect("known");
    assert_eq!((page.items, page.more), (vec!["w".into()], false));

    assert!(m.delete_tag("r", "v").await.unwrap());
    assert!(!m.delete_tag("r", "v").await.unwrap());
    assert_eq!(m.resolve("r", &tag("v")).await.unwrap(), None);
    assert!(
        m.manifest("r", &d2, false).await.unwrap().is_some(),
        "untagging keeps the manifest"
    );
    // Deleting an image by tag takes every tag of its manifest.
    let deleted = m
        .delete_image("r", &tag("w"))
        .await
        .unwrap()
        .expect("deleted");
    assert_eq!(
        (deleted.manifests, deleted.tags),
        (vec![d1.to_string()], vec!["w".into()])
    );
    assert!(
        m.tags("r", None, None)
            .await
            .unwrap()
            .expect("known")
            .items
            .is_empty()
    );
    assert!(m.tags("unknown", None, None).await.unwrap().is_none());
}

pub async fn meta_referrers_by_subject_and_artifact_type(s: Stores) {
    let m = &*s.meta;
    link_ab(m, "r").await;
    let (sb, sd, sp) = image(&digest_of('a'), &digest_of('b'), None, None);
    m.put_manifest("r", &sd, &sb, &sp, &["v1".into()])
        .await
        .unwrap();
    let subject = Some((&sd, sb.len()));
    let (b1, d1, p1) = image(&digest_of('a'), &digest_of('a'), subject, Some("x/sig"));
    let (b2, d2, p2) = image(&digest_of('b'), &digest_of('b'), subject, Some("x/sbom"));
    m.put_manifest("r", &d1, &b1, &p1, &[]).await.unwrap();
    m.put_manifest("r", &d2, &b2, &p2, &[]).await.unwrap();

    let mut all: Vec<_> = m
        .referrers("r", &sd, None)
        .await
        .unwrap()
        .into_iter()
        .map(|(d, r)| (d, r.artifact_type))
        .collect();
    all.sort();
    let mut want = vec![
        (d1.to_string(), Some("x/sig".to_owned())),
        (d2.to_string(), Some("x/sbom".to_owned())),
    ];
    want.sort();
    assert_eq!(all, want);
    let sigs = m.referrers("r", &sd, Some("x/sig")).await.unwrap();
    assert_eq!(
        sigs.into_iter().map(|(d, _)| d).collect::<Vec<_>>(),
        [d1.to_string()]
    );
    assert!(
        m.referrers("r", &sd, Some("x/none"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(m.referrers("r", &d1, None).await.unwrap().is_empty());
    assert!(m.referrers("other", &sd, None).await.unwrap().is_empty());
    m.delete_manifest("r", &d1).await.unwrap();
    assert_eq!(m.referrers("r", &sd, None).await.unwrap().len(), 1);
}

pub async fn meta_repository_list(s: Stores) {
    let m = &*s.meta;
    assert!(m.catalog(None, None).await.unwrap().items.is_empty());
    m.commit_blob("r1", &digest_of('a'), 1, None).await.unwrap();
    link_ab(m, "r2").await;
    let (b, d, p) = image(&digest_of('a'), &digest_of('b'), None, None);
    m.put_manifest("r2", &d, &b, &p, &["v1".into()])
        .await
        .unwrap();
    link_ab(m, "r3").await;
    let page = m.catalog(None, None).await.unwrap();
    assert_eq!(
        (page.items, page.more),
        (vec!["r1".into(), "r2".into(), "r3".into()], false)
    );
    let page = m.catalog(None, Some(2)).await.unwrap();
    assert_eq!(
        (page.items, page.more),
        (vec!["r1".into(), "r2".into()], true)
    );
    let page = m.catalog(Some("r2"), Some(2)).await.unwrap();
    assert_eq!((page.items, page.more), (vec!["r3".into()], false));

    // Deleted: gone at once, with its manifests, tags and links.
    let deleted = m.delete_repository("r2").await.unwrap().expect("known");
    assert_eq!(
        (deleted.manifests, deleted.tags),
        (vec![d.to_string()], vec!["v1".into()])
    );
    assert!(m.delete_repository("r2").await.unwrap().is_none());
    assert!(m.manifest("r2", &d, false).await.unwrap().is_none());
    assert!(
        m.linked_blob_size("r2", &digest_of('a'))
            .await
            .unwrap()
            .is_none()
    );
    assert!(m.tags("r2", None, None).await.unwrap().is_none());
    assert_eq!(m.catalog(None, None).await.unwrap().items, ["r1", "r3"]);

    // Emptied: gone after the GC pass that finds it empty.
    assert!(m.unlink_blob("r1", &digest_of('a')).await.unwrap());
    assert!(!m.unlink_blob("r1", &digest_of('a')).await.unwrap());
    let report = m.gc(now_secs() + 100, false).await.unwrap();
    assert_eq!(
        report.repositories, 2,
        "r1 emptied, r3 only unreferenced links"
    );
    assert!(m.catalog(None, None).await.unwrap().items.is_empty());
}

pub async fn meta_upload_sessions(s: Stores) {
    let m = &*s.meta;
    let now = now_secs();
    m.create_upload("u1", "r").await.unwrap();
    m.create_upload("u2", "s").await.unwrap();
    let (repo, started) = m.upload("u1").await.unwrap().expect("recorded");
    assert_eq!(repo, "r");
    assert!(started.abs_diff(now) <= 5, "started {started}, now {now}");
    assert!(m.upload("nope").await.unwrap().is_none());
    let mut sessions = m.uploads().await.unwrap();
    sessions.sort();
    assert_eq!(
        sessions
            .iter()
            .map(|(id, repo, _)| (id.as_str(), repo.as_str()))
            .collect::<Vec<_>>(),
        [("u1", "r"), ("u2", "s")]
    );
    assert!(m.remove_upload("u1").await.unwrap());
    assert!(!m.remove_upload("u1").await.unwrap());
    // Committing a blob ends its session.
    m.commit_blob("s", &digest_of('a'), 1, Some("u2"))
        .await
        .unwrap();
    assert!(m.uploads().await.unwrap().is_empty());
    assert_eq!(
        m.linked_blob_size("s", &digest_of('a'))
            .await
            .unwrap()
            .map(|l| l.size),
        Some(1)
    );
}

pub async fn meta_upload_state_is_compare_and_swap(s: Stores) {
    let m = &*s.meta;
    let now = now_secs();
    assert!(m.upload_state("u").await.unwrap().is_none());
    assert!(
        !m.set_upload_state("u", b"one", 1).await.unwrap(),
        "no record yet"
    );
    assert!(m.set_upload_state("u", b"one", 0).await.unwrap());
    assert!(
        !m.set_upload_state("u", b"other", 0).await.unwrap(),
        "created twice"
    );
    assert!(m.set_upload_state("u", b"two", 1).await.unwrap());
    assert!(
        !m.set_upload_state("u", b"stale", 1).await.unwrap(),
        "stale version"
    );
    let state = m.upload_state("u").await.unwrap().expect("recorded");
    assert_eq!((state.bytes.as_slice(), state.version), (&b"two"[..], 2));
    assert!(state.updated_at.abs_diff(now) <= 5, "{state:?}, now {now}");
    // Apart from the sessions the registry records: ending those leaves it.
    m.create_upload("u", "r").await.unwrap();
    m.commit_blob("r", &digest_of('a'), 1, Some("u"))
        .await
        .unwrap();
    let ids: Vec<String> = m
        .upload_states()
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, ["u"]);
    assert!(m.remove_upload_state("u").await.unwrap());
    assert!(!m.remove_upload_state("u").await.unwrap());
    assert!(m.upload_state("u").await.unwrap().is_none());
    assert!(m.upload_states().await.unwrap().is_empty());
    assert!(m.set_upload_state("u", b"again", 0).await.unwrap());
}

/// Writers racing from one version: exactly one wins each round, so a record that
/// counts its own replacements ends at the number of rounds.
pub async fn meta_upload_state_has_one_winner_per_version(s: Stores) {
    const WRITERS: usize = 6;
    const ROUNDS: u64 = 10;
    assert!(s.meta.set_upload_state("c", b"0", 0).await.unwrap());
    let tasks: Vec<_> = (0..WRITERS)
        .map(|_| {
            let m = s.meta.clone();
            tokio::spawn(async move {
                let mut wins = 0u64;
                loop {
                    let state = m.upload_state("c").await.unwrap().expect("recorded");
                    let n: u64 = String::from_utf8(state.bytes).unwrap().parse().unwrap();
                    if n == ROUNDS {
                        return wins;
                    }
                    let next = (n + 1).to_string();
                    if m.set_upload_state("c", next.as_bytes(), state.version)
                        .await
                        .unwrap()
                    {
                        wins += 1;
                    }
                }
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        wins += t.await.unwrap();
    }
    assert_eq!(wins, ROUNDS, "each version replaced exactly once");
    let state = s.meta.upload_state("c").await.unwrap().expect("recorded");
    assert_eq!((state.bytes, state.version), (b"10".to_vec(), ROUNDS + 1));
}

pub async fn meta_gc_keeps_referenced_and_recent_content(s: Stores) {
    let m = &*s.meta;
    link_ab(m, "r").await;
    m.commit_blob("r", &digest_of('c'), 1, None).await.unwrap();
    let (b, d, p) = image(&digest_of('a'), &digest_of('b'), None, None);
    m.put_manifest("r", &d, &b, &p, &["v1".into()])
        .await
        .unwrap();
    // Within the grace period nothing goes.
    assert!(
        m.gc(now_secs() - 100, false)
            .await
            .unwrap()
            .blobs
            .is_empty()
    );
    // Past it: only the blob no manifest references; a dry run changes nothing.
    let later = now_secs() + 100;
    assert_eq!(m.gc(later, true).await.unwrap().blobs, [digest_of('c')]);
    assert!(m.blob_known(&digest_of('c')).await.unwrap());
    assert_eq!(m.gc(later, false).await.unwrap().blobs, [digest_of('c')]);
    assert!(!m.blob_known(&digest_of('c')).await.unwrap());
    assert!(m.blob_known(&digest_of('a')).await.unwrap());
    // Untagged, the manifest and then its blobs go.
    m.delete_tag("r", "v1").await.unwrap();
    let report = m.gc(later, false).await.unwrap();
    assert_eq!((report.manifests, report.blobs.len()), (1, 2));
    assert!(m.manifest("r", &d, false).await.unwrap().is_none());
}
