//! [`StorageError`], every failure of the registry, and its one mapping to an
//! [`OciError`] at the HTTP edge. Internal causes are logged, never sent.

use std::path::PathBuf;

use crate::errcode::{ErrorCode, OciError};
use crate::manifest::ManifestError;
use crate::names::{Digest, DigestError};
use crate::route::RouteError;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("metadata database: {0}")]
    Db(#[from] redb::Error),
    #[error(
        "metadata database {0} is in use by another process (is the server running? stop it first)"
    )]
    DbLocked(PathBuf),
    #[error("metadata database: {0}")]
    Pg(tokio_postgres::Error),
    /// The metadata database cannot be reached (stopped, restarting, connection lost,
    /// out of connections) or aborted a transaction that a retry can complete.
    #[error("metadata database unavailable: {0}")]
    MetaUnavailable(String),
    #[error("cannot use metadata database `{url}` (--metadata): {cause}")]
    MetaConnect { url: String, cause: String },
    #[error(
        "metadata database schema version {found} is newer than this binary's {known}: \
         run a newer portcullis (never an older one) against this database"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A request to the S3 blob store failed (after its retries): the service is
    /// unavailable to the client, whatever S3 said.
    #[error("s3 storage ({key}): {error}")]
    ObjectStore {
        key: String,
        error: object_store::Error,
    },
    /// The S3 blob store cannot be used with the settings given (at start).
    #[error(
        "cannot use s3 storage {target}: {cause} (check --storage, --s3-endpoint or \
         AWS_ENDPOINT_URL, --s3-region or AWS_REGION, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    )]
    S3Settings { target: String, cause: String },
    #[error("corrupt metadata record: {0}")]
    Corrupt(String),
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error("repository {0:?} not known to registry")]
    NameUnknown(String),
    #[error("blob {digest} unknown to repository {name:?}")]
    BlobUnknown { name: String, digest: Digest },
    #[error("manifest {reference:?} unknown to repository {name:?}")]
    ManifestUnknown { name: String, reference: String },
    #[error("manifest references blob {0} unknown to the repository")]
    ManifestBlobUnknown(Digest),
    #[error("manifest references manifest {0} unknown to the repository")]
    ManifestChildUnknown(Digest),
    #[error("invalid manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error("manifest is larger than the limit of {limit} bytes")]
    ManifestTooLarge { limit: usize },
    #[error("invalid tag {0:?}")]
    TagInvalid(String),
    #[error("upload {0:?} unknown to registry")]
    UploadUnknown(String),
    /// Another request (of any gateway process) is writing the session: the client
    /// asks for the offset and continues from there.
    #[error("upload {0:?} is being written by another request; get its offset and retry")]
    UploadBusy(String),
    #[error("digest {expected} does not match uploaded content ({actual})")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("range {start}-{end} does not continue the upload at offset {offset}")]
    RangeInvalid { start: u64, end: u64, offset: u64 },
    #[error("requested range {0:?} is not satisfiable")]
    RangeUnsatisfiable(String),
    #[error("invalid upload request: {0}")]
    UploadInvalid(String),
    #[error("size mismatch: {0}")]
    SizeInvalid(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// Whether `e`, or an error it wraps, is the filesystem out of space (ENOSPC) or the
/// user's quota exhausted (EDQUOT): answered with 507 `INSUFFICIENT_STORAGE` everywhere.
pub fn is_out_of_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let full = |io: &std::io::Error| {
        matches!(
            io.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
    };
    let mut next = Some(e);
    while let Some(err) = next {
        if err.downcast_ref::<std::io::Error>().is_some_and(full)
            || matches!(err.downcast_ref::<redb::Error>(), Some(redb::Error::Io(io)) if full(io))
        {
            return true;
        }
        next = err.source();
    }
    false
}

impl StorageError {
    /// The metadata database failed an I/O operation (redb refuses every later one until
    /// it is reopened: see `MetadataStore::recover`).
    pub fn is_database_io(&self) -> bool {
        matches!(
            self,
            StorageError::Db(redb::Error::Io(_) | redb::Error::PreviousIo)
        )
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> StorageError {
        StorageError::Io {
            path: path.into(),
            source,
        }
    }
}

// redb has one error type per operation; all funnel into `redb::Error`.
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> StorageError {
                StorageError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<tokio_postgres::Error> for StorageError {
    fn from(e: tokio_postgres::Error) -> StorageError {
        // Without an SQLSTATE the error is the connection's (refused, lost, closed).
        // Class 08 is a connection exception, 57P0x a server shutting down or starting,
        // 53300 no free connection slot, 40001/40P01 a transaction aborted that a retry
        // would complete.
        let transient = match e.code() {
            None => true,
            Some(code) => {
                let code = code.code();
                code.starts_with("08")
                    || code.starts_with("57P0")
                    || matches!(code, "53300" | "40001" | "40P01")
            }
        };
        if transient {
            StorageError::MetaUnavailable(e.to_string())
        } else {
            StorageError::Pg(e)
        }
    }
}

impl From<deadpool_postgres::PoolError> for StorageError {
    fn from(e: deadpool_postgres::PoolError) -> StorageError {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => StorageError::MetaUnavailable(other.to_string()),
        }
    }
}

impl From<StorageError> for OciError {
    fn from(e: StorageError) -> OciError {
        use StorageError as S;
        if is_out_of_space(&e) {
            tracing::warn!(error = %e, "storage full");
            return OciError::from_code(ErrorCode::InsufficientStorage);
        }
        let msg = e.to_string();
        let code = match &e {
            S::MetaUnavailable(_) => {
                tracing::warn!(error = %e, "metadata database unavailable");
                return OciError::new(
                    ErrorCode::Unavailable,
                    "metadata database unavailable; retry later",
                );
            }
            S::Db(_)
            | S::DbLocked(_)
            | S::Pg(_)
            | S::SchemaTooNew { .. }
            | S::MetaConnect { .. }
            | S::Io { .. }
            | S::Corrupt(_)
            | S::Join(_) => {
                tracing::error!(error = %e, "internal error");
                return OciError::from_code(ErrorCode::Unknown);
            }
            S::ObjectStore { .. } | S::S3Settings { .. } => {
                tracing::error!(error = %e, "blob storage unavailable");
                return OciError::new(ErrorCode::Unavailable, "blob storage is unavailable");
            }
            S::Route(RouteError::NotFound(_)) => {
                return OciError::new(ErrorCode::Unsupported, msg)
                    .with_status(http::StatusCode::NOT_FOUND);
            }
            S::Route(RouteError::ManifestReference { cause, .. }) => {
                return OciError::from(S::Route((**cause).clone()));
            }
            S::Route(RouteError::NameInvalid(_)) => ErrorCode::NameInvalid,
            S::Route(RouteError::TagInvalid(_)) | S::TagInvalid(_) => ErrorCode::TagInvalid,
            S::Route(RouteError::Digest(d)) | S::Digest(d) => match d {
                DigestError::Invalid(_) => ErrorCode::DigestInvalid,
                DigestError::Unsupported(_) => ErrorCode::Unsupported,
            },
            S::NameUnknown(_) => ErrorCode::NameUnknown,
            S::BlobUnknown { .. } => ErrorCode::BlobUnknown,
            S::ManifestUnknown { .. } => ErrorCode::ManifestUnknown,
            S::ManifestBlobUnknown(d) | S::ManifestChildUnknown(d) => {
                return OciError::new(ErrorCode::ManifestBlobUnknown, msg)
                    .with_detail(serde_json::json!({ "digest": d.as_str() }));
            }
            S::Manifest(m) => {
                let invalid = OciError::new(ErrorCode::ManifestInvalid, msg);
                return match m.field() {
                    Some(field) => invalid.with_detail(serde_json::json!({ "field": field })),
                    None => invalid,
                };
            }
            S::ManifestTooLarge { .. } => {
                return OciError::new(ErrorCode::SizeInvalid, msg)
                    .with_status(http::StatusCode::PAYLOAD_TOO_LARGE);
            }
            S::UploadUnknown(_) => ErrorCode::BlobUploadUnknown,
            S::DigestMismatch { .. } => ErrorCode::DigestInvalid,
            S::RangeInvalid { .. } | S::RangeUnsatisfiable(_) | S::UploadBusy(_) => {
                ErrorCode::RangeInvalid
            }
            S::UploadInvalid(_) => ErrorCode::BlobUploadInvalid,
            S::SizeInvalid(_) => ErrorCode::SizeInvalid,
            S::Unsupported(_) => ErrorCode::Unsupported,
        };
        OciError::new(code, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_are_generic() {
        let e = StorageError::Corrupt("secret detail".into());
        let o = OciError::from(e);
        assert_eq!(o.code, ErrorCode::Unknown);
        assert!(!o.message.contains("secret"));
    }

    #[test]
    fn user_errors_name_the_input() {
        let o = OciError::from(StorageError::Route(RouteError::NameInvalid("Bad".into())));
        assert_eq!(o.code, ErrorCode::NameInvalid);
        assert!(o.message.contains("\"Bad\""));
        let o = OciError::from(StorageError::ManifestTooLarge { limit: 5 });
        assert_eq!(o.status, http::StatusCode::PAYLOAD_TOO_LARGE);
    }
}
