//! ES256 JSON Web Tokens: the bearer tokens `/oauth2/token` hands out and the refresh
//! tokens docker keeps as its identity token. Owns the signing key (PKCS#8 PEM in the
//! data directory, created once, mode 0600) and the compact JWS encoding (RFC 7515):
//! `base64url(header).base64url(claims).base64url(r || s)`.
//!
//! The header `kid` is the libtrust fingerprint of the public key (what docker
//! distribution 2.x matches against its trusted keys), so an upstream registry can be
//! configured to trust these tokens too.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::identity::{PasswordSlot, UnixSeconds};
use crate::trust::signer::random_p256_key;

/// The key file inside the data directory.
pub const SIGNING_KEY_FILE: &str = "token-signing-key.pem";
/// The `iss` claim of every token this gateway mints.
pub const ISSUER: &str = "portcullis";
/// How long a refresh token (docker's stored identity token) stays usable. Every use
/// re-checks the principal, so revocation does not wait for this.
pub const REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY: i64 = 60;
const ALG: &str = "ES256";

/// Which kind of token a JWS is; the header `typ` keeps the two from standing in for
/// each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUse {
    /// A bearer token for registry requests (`typ: JWT`, as docker distribution expects).
    Access,
    /// A refresh token for `grant_type=refresh_token`.
    Refresh,
}

impl TokenUse {
    fn typ(self) -> &'static str {
        match self {
            TokenUse::Access => "JWT",
            TokenUse::Refresh => "portcullis-refresh+jwt",
        }
    }
}

/// One entry of the Docker `access` claim.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    Admin,
    Token,
    Anonymous,
}

/// Who a token was issued to, precisely enough to re-check on every use: the token
/// name, the password slot, and which password was in that slot (its creation time
/// and an id derived from its salt), so a regenerated slot invalidates earlier tokens.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// Token name, `admin`, or empty for anonymous (as the Docker spec says).
    pub sub: String,
    pub principal: PrincipalKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<PasswordSlot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_created: Option<UnixSeconds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_id: Option<String>,
}

/// The claims of every token this issuer signs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub exp: UnixSeconds,
    pub nbf: UnixSeconds,
    pub iat: UnixSeconds,
    pub jti: String,
    #[serde(flatten)]
    pub subject: Subject,
    #[serde(default)]
    pub access: Vec<AccessEntry>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

/// A freshly signed token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedToken {
    pub token: String,
    pub claims: Claims,
}

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("cannot read or write the token signing key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token signing key {path} is not a PKCS#8 P-256 key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("cannot encode the token signing key: {0}")]
    Encode(String),
    #[error("bearer token is malformed: {0}")]
    Malformed(String),
    #[error("bearer token uses algorithm `{0}`, expected ES256")]
    Algorithm(String),
    #[error("bearer token has type `{0}` where another was expected")]
    Type(String),
    #[error("bearer token was signed by an unknown key `{0}`")]
    UnknownKey(String),
    #[error("bearer token signature is invalid")]
    Signature,
    #[error("bearer token is for `{0}`, not this registry")]
    Audience(String),
    #[error("bearer token was issued by `{0}`, not this registry")]
    IssuerMismatch(String),
    #[error("bearer token has expired")]
    Expired,
    #[error("bearer token is not valid yet")]
    NotYetValid,
}

/// Signs and verifies the gateway's tokens with one ES256 key.
pub struct Issuer {
    signing: SigningKey,
    verifying: VerifyingKey,
    kid: String,
    service: String,
    ttl: Duration,
}

impl Issuer {
    /// Loads the key from `data_dir`, creating it (atomically, mode 0600) at first start.
    pub fn load_or_create(
        data_dir: &Path,
        service: &str,
        ttl: Duration,
    ) -> Result<Issuer, JwtError> {
        let path = data_dir.join(SIGNING_KEY_FILE);
        let signing = match fs::read_to_string(&path) {
            Ok(pem) => parse_key(&path, &pem)?,
            Err(e) if e.kind() == ErrorKind::NotFound => create_key(&path)?,
            Err(source) => return Err(JwtError::Io { path, source }),
        };
        Issuer::new(signing, service, ttl)
    }

    fn new(signing: SigningKey, service: &str, ttl: Duration) -> Result<Issuer, JwtError> {
        let verifying = *signing.verifying_key();
        let spki = verifying
            .to_public_key_der()
            .map_err(|e| JwtError::Encode(e.to_string()))?;
        Ok(Issuer {
            signing,
            verifying,
            kid: libtrust_key_id(spki.as_bytes()),
            service: service.to_owned(),
            ttl,
        })
    }

    /// The `kid` in every header: the libtrust fingerprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The audience (`aud`) tokens are minted for and checked against.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Lifetime of access tokens (`expires_in`).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Signs a token for `subject` valid from `now`: access tokens for the issuer's
    /// ttl, refresh tokens for [`REFRESH_TTL`] (with no access claim).
    pub fn sign(
        &self,
        token_use: TokenUse,
        subject: Subject,
        access: Vec<AccessEntry>,
        now: UnixSeconds,
    ) -> Result<SignedToken, JwtError> {
        let ttl = match token_use {
            TokenUse::Access => self.ttl,
            TokenUse::Refresh => REFRESH_TTL,
        };
        let claims = Claims {
            iss: ISSUER.to_owned(),
            aud: self.service.clone(),
            exp: now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            subject,
            access,
        };
        let header = Header {
            alg: ALG.to_owned(),
            typ: token_use.typ().to_owned(),
            kid: self.kid.clone(),
        };
        let signing_input = format!("{}.{}", encode_json(&header)?, encode_json(&claims)?);
        let signature: Signature = self.signing.sign(signing_input.as_bytes());
        let token = format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        );
        Ok(SignedToken { token, claims })
    }

    /// Checks a compact JWS: shape, header (alg, typ, kid), signature, then the claims
    /// (iss, aud, exp and nbf with a small leeway). Nothing is decoded as claims before
    /// the signature holds.
    pub fn verify(
        &self,
        token: &str,
        token_use: TokenUse,
        now: UnixSeconds,
    ) -> Result<Claims, JwtError> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed(
                "expected three dot-separated parts".into(),
            ));
        };
        let header: Header = decode_json(header_b64, "header")?;
        if header.alg != ALG {
            return Err(JwtError::Algorithm(header.alg));
        }
        if header.typ != token_use.typ() {
            return Err(JwtError::Type(header.typ));
        }
        if header.kid != self.kid {
            return Err(JwtError::UnknownKey(header.kid));
        }
        let signature_bytes = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| JwtError::Malformed("signature is not base64url".into()))?;
        let signature = Signature::from_slice(&signature_bytes).map_err(|_| JwtError::Signature)?;
        let signing_input_len = header_b64.len() + 1 + claims_b64.len();
        let signing_input = token
            .get(..signing_input_len)
            .ok_or_else(|| JwtError::Malformed("truncated".into()))?;
        self.verifying
            .verify(signing_input.as_bytes(), &signature)
            .map_err(|_| JwtError::Signature)?;
        let claims: Claims = decode_json(claims_b64, "claims")?;
        if claims.iss != ISSUER {
            return Err(JwtError::IssuerMismatch(claims.iss));
        }
        if claims.aud != self.service {
            return Err(JwtError::Audience(claims.aud));
        }
        claims.check_time(now)?;
        Ok(claims)
    }
}

impl Claims {
    /// Whether the token is within `nbf ..= exp` at `now`, with a small leeway; callers
    /// that cache verified claims check this again on every use.
    pub fn check_time(&self, now: UnixSeconds) -> Result<(), JwtError> {
        if now > self.exp.saturating_add(LEEWAY) {
            return Err(JwtError::Expired);
        }
        if now < self.nbf.saturating_sub(LEEWAY) {
            return Err(JwtError::NotYetValid);
        }
        Ok(())
    }
}

fn encode_json<T: Serialize>(value: &T) -> Result<String, JwtError> {
    serde_json::to_vec(value)
        .map(|json| URL_SAFE_NO_PAD.encode(json))
        .map_err(|e| JwtError::Encode(e.to_string()))
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str, what: &str) -> Result<T, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed(format!("{what} is not base64url")))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| JwtError::Malformed(format!("{what} is not the expected JSON")))
}

fn parse_key(path: &Path, pem: &str) -> Result<SigningKey, JwtError> {
    SigningKey::from_pkcs8_pem(pem).map_err(|e| JwtError::BadKey {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Generates a key and publishes it under `path` without ever exposing a partial file:
/// written to a temporary name (0600), synced, then hard-linked into place, which fails
/// if another process won the race — then that process's key is used.
fn create_key(path: &Path) -> Result<SigningKey, JwtError> {
    let io = |source| JwtError::Io {
        path: path.to_owned(),
        source,
    };
    let signing = random_p256_key();
    let pem = signing
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| JwtError::Encode(e.to_string()))?;
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(pem.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| fs::hard_link(&tmp, path));
    // The temporary name is removed whatever happened; the link (if any) keeps the data.
    let _ = fs::remove_file(&tmp);
    match written {
        Ok(()) => Ok(signing),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let pem = fs::read_to_string(path).map_err(io)?;
            parse_key(path, &pem)
        }
        Err(e) => Err(io(e)),
    }
}

/// libtrust's key id: SHA-256 of the DER SubjectPublicKeyInfo, first 240 bits, base32
/// (RFC 4648, unpadded: exactly 48 characters), in 12 groups of 4 joined by `:`.
fn libtrust_key_id(spki_der: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(spki_der);
    let mut chars = Vec::with_capacity(48);
    // 30 bytes = 6 groups of 5 bytes = 6 × 8 base32 characters.
    for chunk in digest.iter().take(30).collect::<Vec<_>>().chunks(5) {
        let bits = chunk
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(**b));
        for i in (0..8).rev() {
            chars.push(char::from(ALPHABET[((bits >> (i * 5)) & 31) as usize]));
        }
    }
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const NOW: UnixSeconds = 1_800_000_000;

    fn issuer() -> (tempfile::TempDir, Issuer) {
        let dir = tempfile::tempdir().unwrap();
        let issuer =
            Issuer::load_or_create(dir.path(), "registry.test", Duration::from_secs(300)).unwrap();
        (dir, issuer)
    }

    fn subject() -> Subject {
        Subject {
            sub: "ci-bot".into(),
            principal: PrincipalKind::Token,
            slot: Some(PasswordSlot::Password2),
            password_created: Some(1_700_000_000),
            password_id: Some("abcd".into()),
        }
    }

    fn access() -> Vec<AccessEntry> {
        vec![AccessEntry {
            kind: "repository".into(),
            name: "samples/app".into(),
            actions: vec!["pull".into(), "push".into()],
        }]
    }

    fn b64json(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    fn parts(token: &str) -> Vec<String> {
        token.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn signed_token_verifies_and_round_trips_claims() {
        let (_d, issuer) = issuer();
        let signed = issuer
            .sign(TokenUse::Access, subject(), access(), NOW)
            .unwrap();
        let claims = issuer.verify(&signed.token, TokenUse::Access, NOW).unwrap();
        assert_eq!(claims, signed.claims);
        assert_eq!(claims.aud, "registry.test");
        assert_eq!(claims.exp, NOW + 300);
        assert_eq!(claims.access, access());
        let p = parts(&signed.token);
        assert_eq!(URL_SAFE_NO_PAD.decode(&p[2]).unwrap().len(), 64);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&p[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"], issuer.kid());
        let body: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&p[1]).unwrap()).unwrap();
        assert_eq!(body["sub"], "ci-bot");
        assert_eq!(body["slot"], "password2");
        assert_eq!(body["access"][0]["type"], "repository");
    }

    #[test]
    fn key_is_created_once_with_mode_0600_and_reused() {
        let (dir, first) = issuer();
        let path = dir.path().join(SIGNING_KEY_FILE);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let pem = fs::read_to_string(&path).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let second =
            Issuer::load_or_create(dir.path(), "registry.test", Duration::from_secs(300)).unwrap();
        assert_eq!(first.kid(), second.kid());
        assert_eq!(fs::read_to_string(&path).unwrap(), pem);
        let signed = first
            .sign(TokenUse::Access, subject(), vec![], NOW)
            .unwrap();
        assert!(second.verify(&signed.token, TokenUse::Access, NOW).is_ok());
        // Only the key file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn kid_has_the_libtrust_shape() {
        let (_d, issuer) = issuer();
        let groups: Vec<&str> = issuer.kid().split(':').collect();
        assert_eq!(groups.len(), 12);
        assert!(groups.iter().all(|g| {
            g.len() == 4
                && g.bytes()
                    .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        }));
        // Known vector (python: base32 of sha256(b"")[:30]).
        assert_eq!(
            libtrust_key_id(&[]),
            "4OYM:IQUY:7QOB:JGX3:6TEJ:S35Z:EQT2:4QPE:MSNZ:GTFE:SWMR:W6CS"
        );
    }

    #[test]
    fn a_corrupt_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SIGNING_KEY_FILE), "not a key").unwrap();
        let err = Issuer::load_or_create(dir.path(), "s", Duration::from_secs(60));
        assert!(matches!(err, Err(JwtError::BadKey { .. })));
    }

    #[test]
    fn tampered_payload_or_signature_is_rejected() {
        let (_d, issuer) = issuer();
        let signed = issuer
            .sign(TokenUse::Access, subject(), vec![], NOW)
            .unwrap();
        let p = parts(&signed.token);
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&p[1]).unwrap()).unwrap();
        claims["access"] = serde_json::to_value(access()).unwrap();
        let forged = format!("{}.{}.{}", p[0], b64json(&claims), p[2]);
        assert!(matches!(
            issuer.verify(&forged, TokenUse::Access, NOW),
            Err(JwtError::Signature)
        ));
        let mut sig = URL_SAFE_NO_PAD.decode(&p[2]).unwrap();
        sig[10] ^= 1;
        let forged = format!("{}.{}.{}", p[0], p[1], URL_SAFE_NO_PAD.encode(&sig));
        assert!(matches!(
            issuer.verify(&forged, TokenUse::Access, NOW),
            Err(JwtError::Signature)
        ));
    }

    #[test]
    fn another_key_is_rejected_even_with_our_kid() {
        let (_d, ours) = issuer();
        let theirs =
            Issuer::new(random_p256_key(), "registry.test", Duration::from_secs(300)).unwrap();
        let signed = theirs
            .sign(TokenUse::Access, subject(), vec![], NOW)
            .unwrap();
        assert!(matches!(
            ours.verify(&signed.token, TokenUse::Access, NOW),
            Err(JwtError::UnknownKey(_))
        ));
        // Same token with our kid spliced into the header: the signature still fails.
        let p = parts(&signed.token);
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": ours.kid()});
        let forged = format!("{}.{}.{}", b64json(&header), p[1], p[2]);
        assert!(matches!(
            ours.verify(&forged, TokenUse::Access, NOW),
            Err(JwtError::Signature)
        ));
    }

    #[test]
    fn expiry_and_not_before_allow_a_small_leeway() {
        let (_d, issuer) = issuer();
        let signed = issuer
            .sign(TokenUse::Access, subject(), vec![], NOW)
            .unwrap();
        let t = &signed.token;
        assert!(issuer.verify(t, TokenUse::Access, NOW + 300 + 60).is_ok());
        assert!(matches!(
            issuer.verify(t, TokenUse::Access, NOW + 300 + 61),
            Err(JwtError::Expired)
        ));
        assert!(issuer.verify(t, TokenUse::Access, NOW - 60).is_ok());
        assert!(matches!(
            issuer.verify(t, TokenUse::Access, NOW - 61),
            Err(JwtError::NotYetValid)
        ));
    }

    #[test]
    fn alg_none_and_unsigned_tokens_are_rejected() {
        let (_d, issuer) = issuer();
        let signed = issuer
            .sign(TokenUse::Access, subject(), vec![], NOW)
            .unwrap();
        let p = parts(&signed.token);
        for alg in ["none", "HS256", "ES384"] {
            let header = serde_json::json!({"alg": alg, "typ": "JWT", "kid": issuer.kid()});
            for sig in ["", p[2].as_str()] {
                let forged = format!("{}.{}.{}", b64json(&header), p[1], sig);
                assert!(matches!(
                    issuer.verify(&forged, TokenUse::Access, NOW),
                    Err(JwtError::Algorithm(_))
                ));
            }
        }
        let unsigned = format!("{}.{}.", p[0], p[1]);
        assert!(issuer.verify(&unsigned, TokenUse::Access, NOW).is_err());
    }

    #[test]
    fn refresh_and_access_tokens_do_not_stand_in_for_each_other() {
        let (_d, issuer) = issuer();
        let refresh = issuer
            .sign(TokenUse::Refresh, subject(), vec![], NOW)
            .unwrap();
        assert_eq!(refresh.claims.exp, NOW + REFRESH_TTL.as_secs() as i64);
        assert!(matches!(
            issuer.verify(&refresh.token, TokenUse::Access, NOW),
            Err(JwtError::Type(_))
        ));
        assert!(
            issuer
                .verify(&refresh.token, TokenUse::Refresh, NOW)
                .is_ok()
        );
        let access = issuer
            .sign(TokenUse::Access, subject(), vec![], NOW)
            .unwrap();
        assert!(matches!(
            issuer.verify(&access.token, TokenUse::Refresh, NOW),
            Err(JwtError::Type(_))
        ));
    }

    #[test]
    fn wrong_audience_is_rejected() {
        let (dir, issuer) = issuer();
        let other =
            Issuer::load_or_create(dir.path(), "other.test", Duration::from_secs(300)).unwrap();
        let signed = other
            .sign(TokenUse::Access, subject(), vec![], NOW)
            .unwrap();
        assert!(matches!(
            issuer.verify(&signed.token, TokenUse::Access, NOW),
            Err(JwtError::Audience(a)) if a == "other.test"
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let (_d, issuer) = issuer();
        for garbage in [
            "",
            ".",
            "..",
            "...",
            "a.b.c",
            "a.b.c.d",
            "eyJ.eyJ.sig",
            "é.é.é",
            "!!!.???.***",
            "eyJhbGciOiJFUzI1NiJ9.e30.",
        ] {
            assert!(
                issuer.verify(garbage, TokenUse::Access, NOW).is_err(),
                "{garbage}"
            );
        }
    }
}
