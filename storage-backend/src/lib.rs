//! portcullis-storage: a complete OCI distribution-spec v1.1 registry, the
//! bundled backend of Portcullis, usable on its own.
//!
//! - [`Registry`] is the storage service: it keeps its data in two [`Stores`], blob
//!   bytes ([`blobstore::BlobStore`]) and metadata ([`meta::MetadataStore`]), and
//!   orders their writes so a crash is harmless. The default stores keep the data
//!   directory: metadata in `meta.redb` (redb), blobs content-addressed under
//!   `blobs/sha256/<aa>/<hex>`, upload sessions under `uploads/<uuid>`.
//!   [`s3::S3BlobStore`] keeps blobs and upload sessions in an S3 bucket instead
//!   (`--storage s3://BUCKET[/PREFIX]`), and with `--metadata postgres://…` the metadata
//!   is in PostgreSQL ([`meta::PgMeta`]), so several processes can share them.
//! - [`conformance`] (feature `conformance`) is the contract of both traits as a test
//!   suite; a new implementation runs it with [`conformance_tests!`].
//! - [`migrate`] copies a data directory into S3 + PostgreSQL stores.
//! - [`router`] serves `/v2/…` on top of it.
//! - [`names`], [`route`], [`errcode`]: the OCI domain types and error table, from
//!   `portcullis_oci` (re-exported here so the store's paths stay short).
//!
//! Decisions where the spec leaves room:
//! - Only `sha256` digests; a well-formed `sha512:` digest gets `UNSUPPORTED`.
//! - An empty upload reports `Range: 0-0`, as distribution does.
//! - DELETE of a blob only unlinks it from the repository; GC removes bytes.
//! - GC removes untagged manifests (unless listed by an index in the same
//!   repository, or a referrer whose subject still exists), blob links no
//!   manifest of the repository references, then blobs with neither links
//!   nor references — each only when older than the grace period.
//!   GC also removes blob files that have no metadata (left by a crash
//!   between the file and metadata steps) once older than the grace period.
//! - A blob HEAD refreshes a link older than half the grace period (one
//!   write transaction, ordered against GC), so "layer already exists"
//!   cannot be followed by GC deleting that layer before the manifest PUT.
//! - A repository exists (catalog, tags list) from its first blob link or
//!   manifest until GC finds it empty or it is deleted.
//! - Mount without `from`, or from a repository without the blob, opens a
//!   new upload session (202) rather than revealing anything.
//! - A manifest GET/HEAD by a reference that is no valid tag or digest is
//!   404 `MANIFEST_UNKNOWN` (nothing can exist there); a PUT or DELETE by one
//!   is 400 `TAG_INVALID`/`DIGEST_INVALID`.
//! - `DELETE /acr/v1/<name>` (ACR's path; the distribution API has none)
//!   removes a repository whole in one transaction — manifests, tags, blob
//!   links, catalog entry — and answers 202 with what it deleted.

pub mod blobstore;
pub mod cache;
pub mod cli;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod error;
pub mod fsck;
mod http;
pub mod manifest;
pub mod meta;
pub mod migrate;
pub mod pg;
pub mod private;
pub mod registry;
pub mod s3;
pub mod upload;

pub use cache::CacheSize;
pub use error::StorageError;
pub use http::{RangeRequest, parse_range, router, serve, serve_route};
pub use names::{Digest, is_valid_repository_name, is_valid_tag};
pub use portcullis_oci::{errcode, names, route};
pub use registry::{GcStats, Registry, StorageConfig, Stores};

#[cfg(test)]
conformance_tests!(|dir| Stores::open(dir).expect("default stores"));

/// The same suite with metadata in a real PostgreSQL (one server for this test binary, a
/// database per case) and blobs on the local disk.
#[cfg(test)]
mod postgres {
    use std::sync::Arc;

    use crate::Stores;
    use crate::blobstore::FsBlobStore;
    use crate::meta::PgMeta;

    fn stores(dir: &std::path::Path) -> Stores {
        let url = portcullis_test_support::postgres::Postgres::shared().database();
        // The suite makes the stores inside its runtime; connecting is async.
        let meta = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(PgMeta::connect(&url))
        })
        .expect("connecting to the test database");
        Stores {
            blobs: Arc::new(FsBlobStore::open(dir).expect("blob store")),
            meta: Arc::new(meta),
        }
    }

    crate::conformance_tests!(stores);
}

/// The same suite on the scale-out backend as `portcullis-storage serve --storage s3://…
/// --metadata postgres://…` opens it: blobs under a fresh prefix of this test binary's
/// SeaweedFS, metadata in a fresh database of its PostgreSQL.
#[cfg(test)]
mod s3_postgres {
    use portcullis_test_support::backend::Backend;

    use crate::meta::MetadataLocation;
    use crate::s3::{S3Config, S3Settings};
    use crate::{StorageConfig, Stores};

    fn stores(dir: &std::path::Path) -> Stores {
        // Made off the runtime: the harness uses a blocking HTTP client.
        let storage = std::thread::spawn(|| Backend::S3Pg.storage())
            .join()
            .expect("S3 and PostgreSQL for the test");
        let (Some(s3), Some(url)) = (storage.s3, storage.postgres) else {
            panic!("S3Pg storage without S3 or PostgreSQL");
        };
        let env = s3.env();
        let mut config = StorageConfig::new(dir);
        config.s3 = Some(
            S3Config::resolve_with(&s3.url, &S3Settings::default(), |name| {
                env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
            })
            .expect("S3 settings of the test"),
        );
        config.metadata = MetadataLocation::Postgres(url);
        // The suite makes the stores inside its runtime; connecting is async.
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(Stores::connect(&config))
        })
        .expect("connecting to S3 and PostgreSQL")
    }

    crate::conformance_tests!(stores);
}
