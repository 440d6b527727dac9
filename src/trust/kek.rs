//! The key-encryption key (KEK) that seals the server-held trust private keys
//! (timestamp, snapshot) at rest in `control.redb`, as notary-signer seals its keys with
//! a passphrase.
//!
//! The operator's passphrase goes through Argon2id (with a random salt kept beside the
//! keys) to a 256-bit key; each private key is sealed with XChaCha20-Poly1305 under a
//! random nonce, its (GUN, role, key id) as associated data, so a sealed key copied into
//! another slot does not open. A sealed check value tells a wrong passphrase from a
//! corrupt key at start.
//!
//! Where the passphrase comes from: `--trust-key-passphrase-file`, else
//! `PORTCULLIS_TRUST_KEY_PASSPHRASE`, else `<data-dir>/trust-key-passphrase`. On a fresh
//! install with none of them, a random passphrase is generated into that file (mode
//! 0600) with a warning: that keeps the keys out of database copies and backups, and
//! the operator can move the passphrase elsewhere with `portcullis trust rotate-kek`.
//! Once keys are sealed, starting without the passphrase is an error.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use super::pg::PgTrustStore;
use super::store::{TrustStore, TrustStoreError};

/// The passphrase file a fresh install generates inside the data directory.
pub const PASSPHRASE_FILE: &str = "trust-key-passphrase";
/// First byte of a sealed key; a plain key starts with its algorithm byte (1 or 2).
const SEALED: u8 = 0x80;
const NONCE_LEN: usize = 24;
const SALT_LEN: usize = 16;
/// What the check value seals.
const CHECK: &[u8] = b"portcullis trust key-encryption key";

#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error(
        "the server-held trust keys in control.redb are encrypted and no passphrase was \
         given: pass --trust-key-passphrase-file FILE or set PORTCULLIS_TRUST_KEY_PASSPHRASE \
         (or restore `{0}`)"
    )]
    Missing(PathBuf),
    #[error(
        "with --control-plane postgres://, every gateway needs the same trust key \
         passphrase to open the server-held trust keys: pass --trust-key-passphrase-file \
         FILE or set PORTCULLIS_TRUST_KEY_PASSPHRASE (a passphrase generated in one data \
         directory cannot be shared)"
    )]
    SharedNeedsPassphrase,
    #[error("the trust key passphrase does not open the server-held trust keys")]
    WrongPassphrase,
    #[error("the trust key passphrase is empty")]
    EmptyPassphrase,
    #[error("trust key passphrase file `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("server-held trust key `{0}` does not open with the key-encryption key")]
    Corrupt(String),
    #[error("deriving the key-encryption key: {0}")]
    Derive(String),
    #[error(transparent)]
    Store(#[from] TrustStoreError),
}

/// Where `serve` (or `rotate-kek`) was told to find the passphrase.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum PassphraseSource {
    File(PathBuf),
    Value(Zeroizing<String>),
    /// Neither: `<data-dir>/trust-key-passphrase`, generated on a fresh install.
    #[default]
    DataDir,
}

impl std::fmt::Debug for PassphraseSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PassphraseSource::File(path) => f.debug_tuple("File").field(path).finish(),
            // Never print the passphrase.
            PassphraseSource::Value(_) => f.write_str("Value(..)"),
            PassphraseSource::DataDir => f.write_str("DataDir"),
        }
    }
}

impl PassphraseSource {
    /// The file option wins over the variable.
    pub fn new(file: Option<PathBuf>, value: Option<String>) -> PassphraseSource {
        match (file, value) {
            (Some(path), _) => PassphraseSource::File(path),
            (None, Some(value)) => PassphraseSource::Value(Zeroizing::new(value)),
            (None, None) => PassphraseSource::DataDir,
        }
    }
}

/// An unlocked key-encryption key.
pub struct Kek {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    fn derive(passphrase: &[u8], salt: &[u8]) -> Result<Kek, KekError> {
        if passphrase.is_empty() {
            return Err(KekError::EmptyPassphrase);
        }
        let mut key = Zeroizing::new([0u8; 32]);
        argon2::Argon2::default()
            .hash_password_into(passphrase, salt, key.as_mut())
            .map_err(|e| KekError::Derive(e.to_string()))?;
        let cipher = XChaCha20Poly1305::new_from_slice(key.as_ref())
            .map_err(|e| KekError::Derive(e.to_string()))?;
        Ok(Kek { cipher })
    }

    /// `plain` sealed: the marker byte, a random nonce, the ciphertext and its tag.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce_bytes = rand::random::<[u8; NONCE_LEN]>();
        let nonce = XNonce::from_slice(&nonce_bytes);
        // Encryption only fails for plaintexts beyond 256 GiB; a key is 33 bytes.
        let sealed = self
            .cipher
            .encrypt(nonce, Payload { msg: plain, aad })
            .unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(SEALED);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&sealed);
        out
    }

    /// What [`Kek::seal`] sealed under `aad`; `None` if it does not open.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let rest = sealed.strip_prefix(&[SEALED])?;
        if rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
            .map(Zeroizing::new)
    }
}

/// The associated data of one stored key: its slot.
pub fn key_aad(gun: &str, role: &str, key_id: &str) -> Vec<u8> {
    format!("{gun}\n{role}\n{key_id}").into_bytes()
}

/// Whether a stored key is sealed (rather than a plain key from before encryption).
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.first() == Some(&SEALED)
}

/// What [`unlock`] did besides unlocking, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unlocked {
    /// The KEK was set up now, with a passphrase generated into this file.
    Generated(PathBuf),
    /// Set up now with the operator's passphrase.
    Created,
    Existing,
}

/// Reads the passphrase from `source`, unlocks (or on first use sets up) the KEK, and
/// seals any key still stored in plain. Returns the KEK and what happened.
pub fn unlock(
    store: &TrustStore,
    data_dir: &Path,
    source: &PassphraseSource,
) -> Result<(Kek, Unlocked), KekError> {
    let params = store.kek_params()?;
    let default_file = data_dir.join(PASSPHRASE_FILE);
    let (passphrase, generated) = match read_passphrase(source, &default_file)? {
        Some(p) => (p, false),
        None if params.is_none() => (generate_passphrase(&default_file)?, true),
        None => return Err(KekError::Missing(default_file)),
    };
    let (kek, unlocked) = match params {
        Some((salt, check)) => {
            let kek = Kek::derive(passphrase.as_bytes(), &salt)?;
            if kek.open(CHECK, &check).is_none() {
                return Err(KekError::WrongPassphrase);
            }
            (kek, Unlocked::Existing)
        }
        None => {
            let kek = set_up(store, passphrase.as_bytes())?;
            let unlocked = if generated {
                Unlocked::Generated(default_file)
            } else {
                Unlocked::Created
            };
            (kek, unlocked)
        }
    };
    reseal_all(store, |aad, stored| {
        if is_sealed(stored) {
            Ok(None)
        } else {
            Ok(Some(kek.seal(aad, stored)))
        }
    })?;
    Ok((kek, unlocked))
}

/// [`unlock`] for the control-plane PostgreSQL database: the passphrase must be the
/// operator's (every gateway gets the same one); the first gateway to start sets up the
/// salt and check value, the others derive theirs from those. Keys there are always
/// sealed.
pub async fn unlock_shared(
    store: &PgTrustStore,
    source: &PassphraseSource,
) -> Result<(Kek, Unlocked), KekError> {
    if *source == PassphraseSource::DataDir {
        return Err(KekError::SharedNeedsPassphrase);
    }
    let passphrase =
        read_passphrase(source, Path::new(""))?.ok_or(KekError::SharedNeedsPassphrase)?;
    let (kek, params, unlocked) = match store.kek_params().await? {
        Some((salt, check)) => (None, (salt, check), Unlocked::Existing),
        None => {
            let salt = rand::random::<[u8; SALT_LEN]>();
            let kek = Kek::derive(passphrase.as_bytes(), &salt)?;
            let check = kek.seal(CHECK, CHECK);
            let stored = store.kek_params_or_init(&salt, &check).await?;
            // Another gateway may have set them up first.
            let mine = stored.0 == salt;
            (mine.then_some(kek), stored, Unlocked::Created)
        }
    };
    let kek = match kek {
        Some(kek) => kek,
        None => Kek::derive(passphrase.as_bytes(), &params.0)?,
    };
    if kek.open(CHECK, &params.1).is_none() {
        return Err(KekError::WrongPassphrase);
    }
    Ok((kek, unlocked))
}

/// Re-encrypts every server-held key under a KEK from `new` (with a fresh salt), in one
/// transaction; the passphrase file inside the data directory, which no longer opens
/// anything, is removed unless it is where the new passphrase lives. The server must be
/// stopped (it holds the database open).
pub fn rotate(
    store: &TrustStore,
    data_dir: &Path,
    old: &PassphraseSource,
    new: &PassphraseSource,
) -> Result<usize, KekError> {
    let (old_kek, _) = unlock(store, data_dir, old)?;
    let default_file = data_dir.join(PASSPHRASE_FILE);
    let new_passphrase = match new {
        PassphraseSource::DataDir => {
            remove_file(&default_file)?;
            generate_passphrase(&default_file)?
        }
        other => read_passphrase(other, &default_file)?.ok_or(KekError::EmptyPassphrase)?,
    };
    let salt = rand::random::<[u8; SALT_LEN]>();
    let new_kek = Kek::derive(new_passphrase.as_bytes(), &salt)?;
    let check = new_kek.seal(CHECK, CHECK);
    let count = reseal_all(store, |aad, stored| {
        let plain = old_kek
            .open(aad, stored)
            .ok_or_else(|| KekError::Corrupt(String::from_utf8_lossy(aad).replace('\n', "/")))?;
        Ok(Some(new_kek.seal(aad, &plain)))
    })?;
    let txn = store.write()?;
    txn.set_kek_params(&salt, &check)?;
    txn.commit()?;
    if !matches!(new, PassphraseSource::DataDir) {
        remove_file(&default_file)?;
    }
    Ok(count)
}

fn set_up(store: &TrustStore, passphrase: &[u8]) -> Result<Kek, KekError> {
    let salt = rand::random::<[u8; SALT_LEN]>();
    let kek = Kek::derive(passphrase, &salt)?;
    let txn = store.write()?;
    txn.set_kek_params(&salt, &kek.seal(CHECK, CHECK))?;
    txn.commit()?;
    Ok(kek)
}

/// Replaces each stored key for which `change` returns a new value, in one
/// transaction; returns how many keys were looked at.
fn reseal_all(
    store: &TrustStore,
    mut change: impl FnMut(&[u8], &[u8]) -> Result<Option<Vec<u8>>, KekError>,
) -> Result<usize, KekError> {
    let txn = store.write()?;
    let keys = txn.server_keys()?;
    for ((gun, role, id), stored) in &keys {
        if let Some(new) = change(&key_aad(gun, role, id), stored)? {
            txn.replace_server_key(gun, role, id, &new)?;
        }
    }
    txn.commit()?;
    Ok(keys.len())
}

/// The passphrase `source` names; `None` when it is the data directory's file and that
/// does not exist.
fn read_passphrase(
    source: &PassphraseSource,
    default_file: &Path,
) -> Result<Option<Zeroizing<String>>, KekError> {
    let from_file = |path: &Path| -> Result<Option<Zeroizing<String>>, KekError> {
        match fs::read_to_string(path) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                let passphrase = text.trim_end_matches(['\r', '\n']);
                if passphrase.is_empty() {
                    return Err(KekError::EmptyPassphrase);
                }
                Ok(Some(Zeroizing::new(passphrase.to_owned())))
            }
            Err(e) if e.kind() == ErrorKind::NotFound && path == default_file => Ok(None),
            Err(source) => Err(KekError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    };
    match source {
        PassphraseSource::File(path) => from_file(path),
        PassphraseSource::Value(value) if value.is_empty() => Err(KekError::EmptyPassphrase),
        PassphraseSource::Value(value) => Ok(Some(value.clone())),
        PassphraseSource::DataDir => from_file(default_file),
    }
}

/// A random passphrase written to `path` (created new, mode 0600).
fn generate_passphrase(path: &Path) -> Result<Zeroizing<String>, KekError> {
    let passphrase = Zeroizing::new(crate::identity::secret::generate_secret());
    let io = |source| KekError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(passphrase.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    Ok(passphrase)
}

fn remove_file(path: &Path) -> Result<(), KekError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(KekError::Io {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use super::*;

    fn store(dir: &Path) -> TrustStore {
        let db = crate::control_plane::EmbeddedDb::open(&dir.join("control.redb")).unwrap();
        TrustStore::open(Arc::new(db)).unwrap()
    }

    fn put_plain(store: &TrustStore, id: &str, key: &[u8]) {
        let txn = store.write().unwrap();
        txn.put_server_key("gun", "timestamp", id, key).unwrap();
        txn.commit().unwrap();
    }

    fn stored(store: &TrustStore, id: &str) -> Vec<u8> {
        store
            .read()
            .unwrap()
            .server_key("gun", "timestamp", id)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn fresh_install_generates_a_private_passphrase_and_seals_plain_keys() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let plain = [1u8; 33];
        put_plain(&s, "k1", &plain);
        let (kek, unlocked) = unlock(&s, dir.path(), &PassphraseSource::DataDir).unwrap();
        let file = dir.path().join(PASSPHRASE_FILE);
        assert_eq!(unlocked, Unlocked::Generated(file.clone()));
        let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = stored(&s, "k1");
        assert!(is_sealed(&sealed) && !sealed.windows(33).any(|w| w == plain));
        let aad = key_aad("gun", "timestamp", "k1");
        assert_eq!(kek.open(&aad, &sealed).unwrap().as_slice(), plain);
        // Another slot's associated data does not open it.
        assert!(
            kek.open(&key_aad("gun", "snapshot", "k1"), &sealed)
                .is_none()
        );
        // The next start reads the file back.
        let (_, again) = unlock(&s, dir.path(), &PassphraseSource::DataDir).unwrap();
        assert_eq!(again, Unlocked::Existing);
    }

    #[test]
    fn missing_or_wrong_passphrase_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let given = PassphraseSource::Value(Zeroizing::new("operator secret".into()));
        let (_, unlocked) = unlock(&s, dir.path(), &given).unwrap();
        assert_eq!(unlocked, Unlocked::Created);
        assert!(!dir.path().join(PASSPHRASE_FILE).exists());
        let missing = unlock(&s, dir.path(), &PassphraseSource::DataDir).unwrap_err();
        assert!(matches!(missing, KekError::Missing(_)), "{missing}");
        assert!(
            missing
                .to_string()
                .contains("PORTCULLIS_TRUST_KEY_PASSPHRASE")
        );
        let wrong = PassphraseSource::Value(Zeroizing::new("guess".into()));
        assert!(matches!(
            unlock(&s, dir.path(), &wrong),
            Err(KekError::WrongPassphrase)
        ));
    }

    #[test]
    fn rotation_re_encrypts_every_key_under_the_new_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        put_plain(&s, "k1", &[1u8; 33]);
        put_plain(&s, "k2", &[2u8; 33]);
        unlock(&s, dir.path(), &PassphraseSource::DataDir).unwrap();
        let before = stored(&s, "k1");
        let new_file = dir.path().join("elsewhere");
        fs::write(&new_file, "new passphrase\n").unwrap();
        let new = PassphraseSource::File(new_file.clone());
        assert_eq!(
            rotate(&s, dir.path(), &PassphraseSource::DataDir, &new).unwrap(),
            2
        );
        assert!(!dir.path().join(PASSPHRASE_FILE).exists());
        assert_ne!(stored(&s, "k1"), before);
        let (kek, _) = unlock(&s, dir.path(), &new).unwrap();
        for (id, byte) in [("k1", 1u8), ("k2", 2u8)] {
            let aad = key_aad("gun", "timestamp", id);
            assert_eq!(
                kek.open(&aad, &stored(&s, id)).unwrap().as_slice(),
                [byte; 33]
            );
        }
        assert!(matches!(
            unlock(&s, dir.path(), &PassphraseSource::DataDir),
            Err(KekError::Missing(_))
        ));
    }
}
