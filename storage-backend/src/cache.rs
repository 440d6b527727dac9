//! [`ManifestCache`]: the answers of manifest GET/HEAD kept in memory — tag → digest and
//! digest → manifest (record and exact bytes), per repository, bounded by bytes — so a
//! hit touches neither the metadata store nor the blob store.
//!
//! Invalidation:
//! - In this process, [`crate::Registry`] applies a [`Change`] after every write that can
//!   change an answer (manifest PUT, tag delete, manifest delete, repository delete, GC),
//!   failed ones included: a failed commit may still have happened.
//! - From other processes sharing the metadata ([`crate::meta::PgMeta`]), the store sends
//!   the change inside the writing transaction (PostgreSQL `NOTIFY`, delivered at commit)
//!   and this process's listener applies it ([`crate::meta::MetadataStore::watch`]). While
//!   the listener is not connected a change could be missed, so the cache is emptied and
//!   bypassed until it listens again: correctness before speed.
//! - A lookup that missed fills its entry only if no invalidation ran since it began (a
//!   generation counter), so an answer read before a change is never cached after it.
//!
//! Staleness: another process's change reaches this cache after that process's commit,
//! asynchronously — on one network normally within milliseconds. In that window a GET
//! here may still answer the old digest, as a read replica would; a change made through
//! this process is seen by its next request.

use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use moka::sync::Cache;

use crate::meta::{Change, ChangeSink, ManifestRecord};
use crate::names::Digest;

/// A cached manifest: what GET and HEAD answer.
#[derive(Debug)]
pub struct CachedManifest {
    pub record: Arc<ManifestRecord>,
    pub bytes: Bytes,
}

/// How full one in-memory cache is, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSize {
    pub cache: &'static str,
    pub entries: u64,
    /// The weigher's estimate of the entries' bytes; `None` for a cache bounded by
    /// its number of entries.
    pub bytes: Option<u64>,
}

impl CacheSize {
    /// A cache bounded by its number of entries.
    pub fn counted<K, V, S>(cache: &'static str, of: &Cache<K, V, S>) -> CacheSize
    where
        K: Hash + Eq + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        S: BuildHasher + Clone + Send + Sync + 'static,
    {
        CacheSize {
            bytes: None,
            ..Self::weighed(cache, of)
        }
    }

    /// A cache bounded by a weigher that estimates bytes.
    pub fn weighed<K, V, S>(cache: &'static str, of: &Cache<K, V, S>) -> CacheSize
    where
        K: Hash + Eq + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        S: BuildHasher + Clone + Send + Sync + 'static,
    {
        // moka updates its counts in housekeeping; this brings them up to date, the work
        // its next operation would do anyway.
        of.run_pending_tasks();
        CacheSize {
            cache,
            entries: of.entry_count(),
            bytes: Some(of.weighted_size()),
        }
    }
}

/// Key overhead and bookkeeping counted per entry besides its strings and bytes.
const ENTRY_OVERHEAD: usize = 128;

/// See the module docs.
pub struct ManifestCache {
    /// (repository, tag) → digest
    tags: Cache<(String, String), Digest>,
    /// (repository, digest) → manifest
    manifests: Cache<(String, String), Arc<CachedManifest>>,
    /// Bumped by every invalidation; a fill started under an older value is dropped.
    generation: AtomicU64,
    /// Whether the cache may be used: false while changes could be missed.
    live: AtomicBool,
    /// False for a cache of size 0: never used.
    enabled: bool,
}

fn weight(parts: &[usize]) -> u32 {
    u32::try_from(parts.iter().sum::<usize>() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
}

impl ManifestCache {
    /// A cache of about `max_bytes` (manifests; tags get an eighth more), in use at once
    /// if `live`. `max_bytes == 0` is a cache that is never used.
    pub fn new(max_bytes: u64, live: bool) -> ManifestCache {
        let tags = Cache::builder()
            .max_capacity(max_bytes / 8)
            .weigher(|(repo, tag): &(String, String), _: &Digest| {
                weight(&[repo.len(), tag.len(), 71])
            })
            .build();
        let manifests = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(
                |(repo, digest): &(String, String), m: &Arc<CachedManifest>| {
                    let record = &m.record;
                    let lists: usize = record
                        .blobs
                        .iter()
                        .chain(&record.children)
                        .map(String::len)
                        .sum();
                    weight(&[repo.len(), digest.len(), m.bytes.len(), lists])
                },
            )
            .build();
        ManifestCache {
            tags,
            manifests,
            generation: AtomicU64::new(0),
            live: AtomicBool::new(live && max_bytes > 0),
            enabled: max_bytes > 0,
        }
    }

    /// The generation a lookup starts under, to pass to the fills after its store reads;
    /// `None` when the cache is not in use (then neither look in it nor fill it).
    pub fn begin(&self) -> Option<u64> {
        // The generation first: a change that makes the cache unusable bumps it after
        // clearing `live`, so a fill under this value is dropped then.
        let generation = self.generation.load(Ordering::SeqCst);
        self.live.load(Ordering::SeqCst).then_some(generation)
    }

    pub fn tag(&self, repo: &str, tag: &str) -> Option<Digest> {
        self.tags.get(&(repo.to_owned(), tag.to_owned()))
    }

    pub fn manifest(&self, repo: &str, digest: &Digest) -> Option<Arc<CachedManifest>> {
        self.manifests
            .get(&(repo.to_owned(), digest.as_str().to_owned()))
    }

    pub fn fill_tag(&self, generation: u64, repo: &str, tag: &str, digest: &Digest) {
        let key = (repo.to_owned(), tag.to_owned());
        if self.current(generation) {
            self.tags.insert(key.clone(), digest.clone());
            // An invalidation between the check and the insert: undo the insert.
            if !self.current(generation) {
                self.tags.invalidate(&key);
            }
        }
    }

    pub fn fill_manifest(
        &self,
        generation: u64,
        repo: &str,
        digest: &Digest,
        manifest: Arc<CachedManifest>,
    ) {
        let key = (repo.to_owned(), digest.as_str().to_owned());
        if self.current(generation) {
            self.manifests.insert(key.clone(), manifest);
            if !self.current(generation) {
                self.manifests.invalidate(&key);
            }
        }
    }

    /// The tag and manifest caches' sizes.
    pub fn sizes(&self) -> [CacheSize; 2] {
        [
            CacheSize::weighed("manifest_tags", &self.tags),
            CacheSize::weighed("manifests", &self.manifests),
        ]
    }

    fn current(&self, generation: u64) -> bool {
        self.generation.load(Ordering::SeqCst) == generation
    }

    /// Forgets every answer `change` can have changed.
    pub fn apply(&self, change: &Change) {
        // The bump before the removals: a fill that checked before the bump has inserted
        // by now or sees the bump after its insert (see `fill_tag`).
        self.generation.fetch_add(1, Ordering::SeqCst);
        match change {
            Change::Tags { repo, tags } => {
                for tag in tags {
                    self.tags.invalidate(&(repo.clone(), tag.clone()));
                }
            }
            Change::Manifest { repo, digest, tags } => {
                self.manifests.invalidate(&(repo.clone(), digest.clone()));
                for tag in tags {
                    self.tags.invalidate(&(repo.clone(), tag.clone()));
                }
            }
            Change::All => {
                self.tags.invalidate_all();
                self.manifests.invalidate_all();
            }
        }
    }
}

impl ChangeSink for ManifestCache {
    fn changed(&self, change: &Change) {
        self.apply(change);
    }

    fn watching(&self, watching: bool) {
        if !watching {
            self.live.store(false, Ordering::SeqCst);
        }
        // Emptied on both edges: what was cached may have changed unseen.
        self.apply(&Change::All);
        if watching {
            self.live.store(self.enabled, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(bytes: &'static [u8]) -> Arc<CachedManifest> {
        Arc::new(CachedManifest {
            record: Arc::new(ManifestRecord {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                size: bytes.len() as u64,
                created_at: 0,
                blobs: vec![],
                children: vec![],
                subject: None,
                artifact_type: None,
                annotations: None,
            }),
            bytes: Bytes::from_static(bytes),
        })
    }

    #[test]
    fn a_fill_begun_before_an_invalidation_is_dropped() {
        let cache = ManifestCache::new(1 << 20, true);
        let d = Digest::of(b"a");
        let generation = cache.begin().unwrap();
        cache.apply(&Change::Tags {
            repo: "r".into(),
            tags: vec!["other".into()],
        });
        cache.fill_tag(generation, "r", "v1", &d);
        cache.fill_manifest(generation, "r", &d, manifest(b"a"));
        assert_eq!(cache.tag("r", "v1"), None);
        assert!(cache.manifest("r", &d).is_none());

        let generation = cache.begin().unwrap();
        cache.fill_tag(generation, "r", "v1", &d);
        cache.fill_manifest(generation, "r", &d, manifest(b"a"));
        assert_eq!(cache.tag("r", "v1"), Some(d.clone()));
        assert!(cache.manifest("r", &d).is_some());
        // Another repository's tag of the same name is another entry.
        assert_eq!(cache.tag("s", "v1"), None);

        cache.apply(&Change::Manifest {
            repo: "r".into(),
            digest: d.to_string(),
            tags: vec!["v1".into()],
        });
        assert_eq!(cache.tag("r", "v1"), None);
        assert!(cache.manifest("r", &d).is_none());
    }

    #[test]
    fn a_lost_listener_empties_the_cache_and_turns_it_off_until_back() {
        let cache = ManifestCache::new(1 << 20, false);
        assert_eq!(cache.begin(), None, "not live before the listener is");
        cache.watching(true);
        let d = Digest::of(b"a");
        let generation = cache.begin().unwrap();
        cache.fill_tag(generation, "r", "v1", &d);
        cache.watching(false);
        assert_eq!(cache.begin(), None);
        assert_eq!(cache.tag("r", "v1"), None);
        // A lookup begun before the loss does not fill after it.
        cache.fill_tag(generation, "r", "v1", &d);
        assert_eq!(cache.tag("r", "v1"), None);
        cache.watching(true);
        assert!(cache.begin().is_some());
    }

    #[test]
    fn size_zero_is_never_used() {
        let cache = ManifestCache::new(0, true);
        assert_eq!(cache.begin(), None);
        cache.watching(true);
        assert_eq!(cache.begin(), None);
    }
}
