//! TLS for the gateway's listeners (pingora's rustls backend): checking a configured
//! certificate and key before pingora loads them (pingora panics on bad files), and the
//! self-signed mode, which creates a private CA (`ca.pem`, key `ca-key.pem`) and a server
//! certificate for `localhost`, `127.0.0.1`, `::1`, the machine's host name, the listen
//! host and the public URL's host in `<data_dir>/tls/` on first start, reuses them
//! afterwards and re-issues the server certificate from the same CA when a name is
//! missing. Clients trust `<data_dir>/tls/ca.pem` (the CLI's `--ca-cert`, docker's
//! `certs.d/<host>/ca.crt`); delete the directory to regenerate everything.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use pingora::listeners::tls::TlsSettings;
use pingora::tls::{ServerConfig, install_default_crypto_provider, load_certs_and_key_files};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use x509_parser::extensions::GeneralName;

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
/// The server certificate names `names` ([`subject_names`]); one missing a name (another
/// `--listen` or `--public-url`, a renamed machine) is issued again by the same CA, so
/// clients keep trusting `ca.pem`.
pub fn self_signed(data_dir: &Path, names: &[String]) -> Result<TlsFiles, TlsError> {
    let dir = data_dir.join("tls");
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        ca: Some(dir.join("ca.pem")),
    };
    let ca_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca-key.pem");
    if files.cert.is_file() && files.key.is_file() && ca_path.is_file() {
        // The private keys stay owner-only (tightened, logged, when they are not).
        for key in [&files.key, &ca_key_path] {
            portcullis_storage::private::tighten(key, portcullis_storage::private::FILE_MODE)
                .map_err(|source| TlsError::Write {
                    path: key.clone(),
                    source,
                })?;
        }
        let missing = missing_names(&files.cert, names);
        if missing.is_empty() {
            return Ok(files);
        }
        tracing::warn!(
            cert = %files.cert.display(),
            "the self-signed certificate does not name {}; issuing a new one",
            missing.join(", ")
        );
    }
    std::fs::create_dir_all(&dir).map_err(|source| TlsError::Write {
        path: dir.clone(),
        source,
    })?;

    // The CA kept from an earlier start (clients already trust it), else a new one.
    let kept_ca = match (
        std::fs::read_to_string(&ca_path),
        std::fs::read_to_string(&ca_key_path),
    ) {
        (Ok(ca_pem), Ok(key_pem)) => KeyPair::from_pem(&key_pem).ok().map(|k| (ca_pem, k)),
        _ => None,
    };
    let (ca_pem, ca_key) = match kept_ca {
        Some(kept) => kept,
        None => {
            if ca_path.is_file() {
                tracing::warn!(
                    ca = %ca_path.display(),
                    "no key for the existing CA; generating a new CA: clients must trust the new ca.pem"
                );
            }
            let ca_key = KeyPair::generate()?;
            let ca_cert = ca_params()?.self_signed(&ca_key)?;
            write(&ca_key_path, ca_key.serialize_pem().as_bytes(), 0o600)?;
            write(&ca_path, ca_cert.pem().as_bytes(), 0o644)?;
            (ca_cert.pem(), ca_key)
        }
    };
    // Same distinguished name, key usages and key identifier method as the CA certificate.
    let issuer = Issuer::new(ca_params()?, &ca_key);

    let server_key = KeyPair::generate()?;
    let mut server_params = CertificateParams::new(names.to_vec())?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "portcullis");
    let server_cert = server_params.signed_by(&server_key, &issuer)?;

    write(&files.key, server_key.serialize_pem().as_bytes(), 0o600)?;
    // The chain: server certificate, then the CA.
    let chain = format!("{}{}", server_cert.pem(), ca_pem);
    write(&files.cert, chain.as_bytes(), 0o644)?;
    Ok(files)
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Portcullis local CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// The names of `names` the first certificate in `cert` lacks (all of them when it
/// cannot be read).
fn missing_names(cert: &Path, names: &[String]) -> Vec<String> {
    let present = std::fs::read(cert)
        .ok()
        .and_then(|pem| {
            let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
            let cert = pem.parse_x509().ok()?;
            let san = cert.subject_alternative_name().ok()??;
            Some(
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                        GeneralName::IPAddress(b) => ip_from_bytes(b).map(|ip| ip.to_string()),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .unwrap_or_default();
    names
        .iter()
        .filter(|n| !present.contains(&canonical_name(n)))
        .cloned()
        .collect()
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

/// A name as a certificate holds it: an address in its canonical form, a DNS name in
/// lower case.
fn canonical_name(name: &str) -> String {
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => name.to_ascii_lowercase(),
    }
}

/// The names a self-signed certificate covers: `localhost`, the loopback addresses, this
/// machine's host name (clients on the network use it when the gateway listens on a
/// wildcard address), the listen host unless it is a wildcard, and the public URL's host.
pub fn subject_names(
    listen_host: &str,
    public_host: Option<&str>,
    machine: Option<&str>,
) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut add = |name: &str| {
        let host = name.trim_start_matches('[').trim_end_matches(']');
        let wildcard = host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified());
        if !host.is_empty()
            && !wildcard
            && !names
                .iter()
                .any(|n| canonical_name(n) == canonical_name(host))
        {
            names.push(host.to_owned());
        }
    };
    for name in ["localhost", "127.0.0.1", "::1"] {
        add(name);
    }
    if let Some(machine) = machine {
        add(machine);
    }
    add(listen_host);
    if let Some(public) = public_host {
        add(public);
    }
    names
}

/// This machine's host name (Linux: the kernel's UTS name), when it has one.
pub fn machine_host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| {
            let name = std::fs::read_to_string(path).ok()?;
            let name = name.trim();
            (!name.is_empty() && name != "(none)").then(|| name.to_owned())
        })
}

/// The host of `listen` (`HOST:PORT`, `[V6]:PORT`), as written.
pub fn listen_host(listen: &str) -> &str {
    listen.rsplit_once(':').map_or(listen, |(host, _)| host)
}

/// The host of a public URL (`https://HOST[:PORT][/...]`).
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split_once(']')?.0,
        None => authority.split(':').next()?,
    };
    (!host.is_empty()).then_some(host)
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

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn self_signed_files_are_created_once_reused_and_reissued_for_new_names() {
        let dir = tempfile::tempdir().unwrap();
        let first_names = names(&["localhost", "registry.local"]);
        let files = self_signed(dir.path(), &first_names).unwrap();
        let first = std::fs::read(&files.cert).unwrap();
        let ca = std::fs::read(files.ca.as_ref().unwrap()).unwrap();
        settings(&files).unwrap();
        let again = self_signed(dir.path(), &first_names).unwrap();
        assert_eq!(again, files);
        assert_eq!(
            std::fs::read(&again.cert).unwrap(),
            first,
            "reused, not regenerated"
        );
        use std::os::unix::fs::PermissionsExt;
        for key in [files.key.clone(), dir.path().join("tls/ca-key.pem")] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
        // A new name: a new server certificate from the same CA.
        let more = names(&["localhost", "registry.local", "10.1.2.3"]);
        let reissued = self_signed(dir.path(), &more).unwrap();
        assert_ne!(std::fs::read(&reissued.cert).unwrap(), first);
        assert_eq!(std::fs::read(reissued.ca.as_ref().unwrap()).unwrap(), ca);
        assert!(missing_names(&reissued.cert, &more).is_empty());
        assert_eq!(missing_names(&reissued.cert, &names(&["other"])), ["other"]);
        settings(&reissued).unwrap();
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
    fn names_cover_loopback_the_machine_the_listen_and_public_hosts_but_not_wildcards() {
        assert_eq!(
            subject_names("0.0.0.0", None, Some("build-7")),
            ["localhost", "127.0.0.1", "::1", "build-7"]
        );
        assert_eq!(
            subject_names("[::]", Some("registry.example"), Some("build-7")),
            [
                "localhost",
                "127.0.0.1",
                "::1",
                "build-7",
                "registry.example"
            ]
        );
        assert_eq!(subject_names("10.0.0.5", None, None)[3], "10.0.0.5");
        assert_eq!(subject_names("localhost", Some("[::1]"), None).len(), 3);
        assert_eq!(subject_names("[fd00::5]", None, None)[3], "fd00::5");
    }

    #[test]
    fn hosts_of_listen_addresses_and_urls() {
        assert_eq!(listen_host("0.0.0.0:5000"), "0.0.0.0");
        assert_eq!(listen_host("[::]:5000"), "[::]");
        assert_eq!(
            url_host("https://registry.example"),
            Some("registry.example")
        );
        assert_eq!(
            url_host("https://registry.example:8443/x"),
            Some("registry.example")
        );
        assert_eq!(url_host("https://[fd00::1]:8443"), Some("fd00::1"));
        assert_eq!(url_host("https://"), None);
    }
}
