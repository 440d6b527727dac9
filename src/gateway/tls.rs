//! TLS for the gateway's listeners (pingora's rustls backend): checking a configured
//! certificate and key before pingora loads them (pingora panics on bad files), and the
//! self-signed mode, which creates a private CA and a server certificate for
//! `localhost`, `127.0.0.1`, `::1` and the listen host in `<data_dir>/tls/` on first
//! start and reuses them afterwards. Clients trust `<data_dir>/tls/ca.pem` (the CLI's
//! `--ca-cert`, docker's `certs.d/<host>/ca.crt`); delete the directory to regenerate.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use pingora::listeners::tls::TlsSettings;
use pingora::tls::{ServerConfig, install_default_crypto_provider, load_certs_and_key_files};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot load certificate `{cert}` / key `{key}`: {reason}")]
    Load {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("writing `{path}`: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating the self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("path `{0}` is not valid UTF-8")]
    Path(PathBuf),
}

/// A certificate chain and key on disk, and the CA clients should trust when private.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

/// Pingora listener settings for `files`, after checking that they load.
pub fn settings(files: &TlsFiles) -> Result<TlsSettings, TlsError> {
    let cert = utf8(&files.cert)?;
    let key = utf8(&files.key)?;
    let load_error = |reason: String| TlsError::Load {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason,
    };
    install_default_crypto_provider();
    let (chain, private_key) = load_certs_and_key_files(cert, key)
        .map_err(|e| load_error(e.to_string()))?
        .ok_or_else(|| load_error("no certificate or no private key in the files".into()))?;
    ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| load_error(e.to_string()))?;
    TlsSettings::intermediate(cert, key).map_err(|e| load_error(e.to_string()))
}

fn utf8(path: &Path) -> Result<&str, TlsError> {
    path.to_str()
        .ok_or_else(|| TlsError::Path(path.to_path_buf()))
}

/// The self-signed CA and server certificate in `<data_dir>/tls/`, created when absent.
pub fn self_signed(data_dir: &Path, listen_host: &str) -> Result<TlsFiles, TlsError> {
    let dir = data_dir.join("tls");
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        ca: Some(dir.join("ca.pem")),
    };
    let ca_path = dir.join("ca.pem");
    if files.cert.is_file() && files.key.is_file() && ca_path.is_file() {
        // The private key stays owner-only (tightened, logged, when it is not).
        portcullis_storage::private::tighten(&files.key, portcullis_storage::private::FILE_MODE)
            .map_err(|source| TlsError::Write {
                path: files.key.clone(),
                source,
            })?;
        return Ok(files);
    }
    std::fs::create_dir_all(&dir).map_err(|source| TlsError::Write {
        path: dir.clone(),
        source,
    })?;

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Portcullis local CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let server_key = KeyPair::generate()?;
    let mut server_params = CertificateParams::new(subject_names(listen_host))?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "portcullis");
    let server_cert = server_params.signed_by(&server_key, &issuer)?;

    write(&ca_path, ca_cert.pem().as_bytes(), 0o644)?;
    write(&files.key, server_key.serialize_pem().as_bytes(), 0o600)?;
    // The chain: server certificate, then the CA.
    let chain = format!("{}{}", server_cert.pem(), ca_cert.pem());
    write(&files.cert, chain.as_bytes(), 0o644)?;
    Ok(files)
}

/// `localhost`, the loopback addresses and the listen host (unless it is a wildcard).
fn subject_names(listen_host: &str) -> Vec<String> {
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let host = listen_host.trim_start_matches('[').trim_end_matches(']');
    let wildcard = host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified());
    if !host.is_empty() && !wildcard && !names.iter().any(|n| n == host) {
        names.push(host.to_owned());
    }
    names
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let error = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(error)?;
    file.write_all(bytes).map_err(error)?;
    file.sync_all().map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_files_are_created_once_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let files = self_signed(dir.path(), "registry.local").unwrap();
        let first = std::fs::read(&files.cert).unwrap();
        settings(&files).unwrap();
        let again = self_signed(dir.path(), "registry.local").unwrap();
        assert_eq!(again, files);
        assert_eq!(
            std::fs::read(&again.cert).unwrap(),
            first,
            "reused, not regenerated"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn bad_files_are_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, "not a certificate").unwrap();
        let files = TlsFiles {
            cert: cert.clone(),
            key: cert,
            ca: None,
        };
        assert!(matches!(settings(&files), Err(TlsError::Load { .. })));
    }

    #[test]
    fn names_cover_loopback_and_the_listen_host_but_not_wildcards() {
        assert_eq!(subject_names("0.0.0.0"), ["localhost", "127.0.0.1", "::1"]);
        assert_eq!(subject_names("[::]").len(), 3);
        assert_eq!(subject_names("10.0.0.5")[3], "10.0.0.5");
        assert_eq!(subject_names("localhost").len(), 3);
    }
}
