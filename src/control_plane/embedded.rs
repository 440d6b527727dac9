//! `control.redb`, the embedded control plane's one database file (identity, trust, keys
//! and policies keep their tables in it), reopened after an I/O failure.
//!
//! redb latches a failed commit (a full disk): every later transaction on that handle is
//! refused (`PreviousIo`, or a discarded allocator state) until the file is opened
//! again. So a transaction that finds the handle latched drops it and reopens the file,
//! which runs redb's repair; while that cannot succeed (the disk still full, a
//! transaction of the old handle still running) the original error is returned and the
//! next transaction tries again. Control-plane writes thus resume once space is freed,
//! without a restart, as data-plane writes do.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use redb::{
    Builder, Database, DatabaseError, ReadTransaction, ReadableDatabase, StorageError,
    TransactionError,
};

/// redb's page cache for `control.redb` (tokens, scope maps, keys, trust metadata: small).
/// Its default, 1 GiB, would let the process grow with the file; see ARCHITECTURE.md,
/// "Memory".
const CACHE_BYTES: usize = 16 << 20;

fn builder() -> Builder {
    let mut b = Builder::new();
    b.set_cache_size(CACHE_BYTES);
    b
}

/// The control plane's redb database; transactions begin here.
#[derive(Debug)]
pub struct EmbeddedDb {
    path: PathBuf,
    /// `None` after a latched failure whose reopen did not succeed yet.
    db: RwLock<Option<Arc<Database>>>,
}

impl EmbeddedDb {
    /// Opens `path`, creating the file if needed.
    pub fn open(path: &Path) -> Result<EmbeddedDb, DatabaseError> {
        Ok(EmbeddedDb {
            path: path.to_owned(),
            db: RwLock::new(Some(Arc::new(builder().create(path)?))),
        })
    }

    /// Opens the existing file `path` (offline commands: a missing file is an error).
    pub fn open_existing(path: &Path) -> Result<EmbeddedDb, DatabaseError> {
        Ok(EmbeddedDb {
            path: path.to_owned(),
            db: RwLock::new(Some(Arc::new(builder().open(path)?))),
        })
    }

    pub fn begin_write(&self) -> Result<redb::WriteTransaction, TransactionError> {
        self.begin(|db| db.begin_write())
    }

    pub fn begin_read(&self) -> Result<ReadTransaction, TransactionError> {
        self.begin(|db| db.begin_read())
    }

    /// Begins a transaction with `begin`; on a latched handle, once more on a reopened one.
    fn begin<T>(
        &self,
        begin: impl Fn(&Database) -> Result<T, TransactionError>,
    ) -> Result<T, TransactionError> {
        let current = self.current();
        let error = match current.as_deref().map(&begin) {
            Some(Err(e)) if latched(&e) => e,
            Some(result) => return result,
            None => TransactionError::Storage(StorageError::PreviousIo),
        };
        match self.reopen(current) {
            Ok(db) => begin(&db),
            Err(reopen) => {
                tracing::warn!(path = %self.path.display(), error = %reopen,
                    "control-plane database not reopened yet after an i/o failure");
                Err(error)
            }
        }
    }

    fn current(&self) -> Option<Arc<Database>> {
        self.db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the latched handle `failed` by a newly opened one (unless another
    /// transaction did so meanwhile).
    fn reopen(&self, failed: Option<Arc<Database>>) -> Result<Arc<Database>, DatabaseError> {
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        match (slot.as_ref(), &failed) {
            (Some(now), Some(failed)) if !Arc::ptr_eq(now, failed) => return Ok(Arc::clone(now)),
            (Some(now), None) => return Ok(Arc::clone(now)),
            _ => {}
        }
        // The file stays locked until the last handle to it is gone.
        *slot = None;
        drop(failed);
        let db = Arc::new(builder().create(&self.path)?);
        tracing::warn!(path = %self.path.display(), "control-plane database reopened after an i/o failure");
        *slot = Some(Arc::clone(&db));
        Ok(db)
    }
}

/// Whether `e` says the handle refuses all work until the file is reopened.
fn latched(e: &TransactionError) -> bool {
    matches!(
        e,
        TransactionError::Storage(
            StorageError::Io(_) | StorageError::PreviousIo | StorageError::Corrupted(_)
        )
    )
}
