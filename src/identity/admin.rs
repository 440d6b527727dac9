//! The bootstrap admin account (user `admin`). Its password comes from
//! `PORTCULLIS_ADMIN_PASSWORD` (or config); when none is given, one is generated at
//! first start, stored in `<data-dir>/admin-password` (mode 0600) and reused by later
//! starts. Only a salted hash is kept in memory.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::model::PasswordRecord;
use super::scope::ADMIN_USER;
use super::secret::{generate_secret, hash_secret, verify_secret};
use super::store::{IdentityStore, IdentityStoreError};

/// The file under the data directory that holds a generated admin password.
pub const ADMIN_PASSWORD_FILE: &str = "admin-password";

#[derive(Debug, thiserror::Error)]
pub enum AdminAccountError {
    #[error("the configured admin password is empty")]
    EmptyPassword,
    #[error("admin password file `{path}` is empty; delete it to generate a new password")]
    EmptyFile { path: PathBuf },
    #[error("admin password file `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("storing the admin password's record: {0}")]
    Store(#[from] IdentityStoreError),
}

/// Where the admin password came from; a generated one is returned once, to be shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminPasswordSource {
    Configured,
    File(PathBuf),
    Generated { password: String, path: PathBuf },
}

#[derive(Debug, Clone)]
pub struct AdminAccount {
    record: PasswordRecord,
}

impl AdminAccount {
    pub fn new(password: &str) -> Result<Self, AdminAccountError> {
        if password.is_empty() {
            return Err(AdminAccountError::EmptyPassword);
        }
        Ok(AdminAccount {
            record: hash_secret(password, 0, None),
        })
    }

    /// Uses `configured` if given, else the password file, else generates and stores one.
    /// The password's record is kept in `store` (see
    /// [`IdentityStore::admin_password_record`]).
    pub async fn open(
        data_dir: &Path,
        configured: Option<&str>,
        store: &IdentityStore,
    ) -> Result<(Self, AdminPasswordSource), AdminAccountError> {
        let (password, source) = Self::read(data_dir, configured)?;
        let record = store.admin_password_record(&password).await?;
        Ok((AdminAccount { record }, source))
    }

    /// The record tokens issued to the admin are bound to.
    pub fn record(&self) -> &PasswordRecord {
        &self.record
    }

    /// The admin password: `configured`, else the password file's, else a new one
    /// written there.
    fn read(
        data_dir: &Path,
        configured: Option<&str>,
    ) -> Result<(Zeroizing<String>, AdminPasswordSource), AdminAccountError> {
        if let Some(p) = configured {
            if p.is_empty() {
                return Err(AdminAccountError::EmptyPassword);
            }
            return Ok((
                Zeroizing::new(p.to_owned()),
                AdminPasswordSource::Configured,
            ));
        }
        let path = data_dir.join(ADMIN_PASSWORD_FILE);
        let io = |source| AdminAccountError::Io {
            path: path.clone(),
            source,
        };
        match fs::read_to_string(&path) {
            Ok(text) => {
                let password = text.trim_end_matches(['\r', '\n']);
                if password.is_empty() {
                    return Err(AdminAccountError::EmptyFile { path });
                }
                Ok((
                    Zeroizing::new(password.to_owned()),
                    AdminPasswordSource::File(path),
                ))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let password = generate_secret();
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io)?;
                file.write_all(format!("{password}\n").as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(io)?;
                Ok((
                    Zeroizing::new(password.clone()),
                    AdminPasswordSource::Generated { password, path },
                ))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Whether `user`/`password` are the admin's; the password is compared in constant time.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let password_ok = verify_secret(&self.record, password);
        user == ADMIN_USER && password_ok
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn store(dir: &Path) -> std::sync::Arc<IdentityStore> {
        IdentityStore::open(&dir.join("control.redb")).unwrap()
    }

    #[tokio::test]
    async fn configured_password_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (a, src) = AdminAccount::open(dir.path(), Some("s3cret"), &store(dir.path()))
            .await
            .unwrap();
        assert_eq!(src, AdminPasswordSource::Configured);
        assert!(a.verify("admin", "s3cret"));
        assert!(!a.verify("admin", "s3cret2"));
        assert!(!a.verify("Admin", "s3cret"));
        assert!(!dir.path().join(ADMIN_PASSWORD_FILE).exists());
        assert!(matches!(
            AdminAccount::open(dir.path(), Some(""), &store(dir.path())).await,
            Err(AdminAccountError::EmptyPassword)
        ));
    }

    #[tokio::test]
    async fn generated_once_then_read_back_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let (a, src) = AdminAccount::open(dir.path(), None, &s).await.unwrap();
        let AdminPasswordSource::Generated { password, path } = src else {
            panic!("not generated: {src:?}")
        };
        assert!(password.len() >= 43);
        assert!(a.verify("admin", &password));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (b, src) = AdminAccount::open(dir.path(), None, &s).await.unwrap();
        assert_eq!(src, AdminPasswordSource::File(path.clone()));
        assert!(b.verify("admin", &password));
        fs::write(&path, "\n").unwrap();
        assert!(matches!(
            AdminAccount::open(dir.path(), None, &s).await,
            Err(AdminAccountError::EmptyFile { .. })
        ));
    }

    #[tokio::test]
    async fn the_record_survives_a_restart_and_changes_with_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let (a, _) = AdminAccount::open(dir.path(), Some("one"), &s)
            .await
            .unwrap();
        let (b, _) = AdminAccount::open(dir.path(), Some("one"), &s)
            .await
            .unwrap();
        assert_eq!(a.record(), b.record());
        let (c, _) = AdminAccount::open(dir.path(), Some("two"), &s)
            .await
            .unwrap();
        assert_ne!(a.record().salt, c.record().salt);
        assert!(c.verify("admin", "two") && !c.verify("admin", "one"));
    }
}
