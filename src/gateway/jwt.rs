//! ES256 JSON Web Tokens: the bearer tokens `/oauth2/token` hands out and the refresh
//! tokens docker keeps as its identity token. Owns the key ring tokens are signed and
//! verified with ([`KeyRing`]: the newest key signs, every key in the ring verifies,
//! chosen by the header's `kid`; where the keys are kept and rotated is
//! `gateway::signing_keys`) and the compact JWS encoding (RFC 7515):
//! `base64url(header).base64url(claims).base64url(r || s)`.
//!
//! The header `kid` is the libtrust fingerprint of the public key (what docker
//! distribution 2.x matches against its trusted keys), so an upstream registry can be
//! configured to trust these tokens too.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, EncodePublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::identity::{PasswordSlot, UnixSeconds};
use crate::trust::signer::random_p256_key;

/// The key file a gateway kept in its data directory before the key ring: moved into
/// the control plane at first start (`gateway::signing_keys`), so its tokens stay valid.
pub const SIGNING_KEY_FILE: &str = "token-signing-key.pem";
/// The `iss` claim of every token this gateway mints.
pub const ISSUER: &str = "portcullis";
/// How long a refresh token (docker's stored identity token) stays usable. Every use
/// re-checks the principal, so revocation does not wait for this.
pub const REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY: i64 = 60;
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

/// The keys tokens are signed and verified with: the signing key and, by kid, every key
/// that verifies (the signing key among them).
pub struct KeyRing {
    signing: SigningKey,
    kid: String,
    verifying: HashMap<String, VerifyingKey>,
}

impl KeyRing {
    /// A ring signing with `signing` and also verifying with `others` (retired keys).
    pub fn new(signing: SigningKey, others: &[VerifyingKey]) -> Result<KeyRing, JwtError> {
        let kid = key_id(signing.verifying_key())?;
        let mut verifying = HashMap::from([(kid.clone(), *signing.verifying_key())]);
        for key in others {
            verifying.insert(key_id(key)?, *key);
        }
        Ok(KeyRing {
            signing,
            kid,
            verifying,
        })
    }

    /// The kid of the signing key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The kids of every key that verifies.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.verifying.keys().map(String::as_str)
    }

    /// The key of `kid`, if it verifies.
    pub fn verifying_key(&self, kid: &str) -> Option<VerifyingKey> {
        self.verifying.get(kid).copied()
    }

    /// The signing key.
    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.signing
    }
}

/// The libtrust fingerprint of `key`: the `kid` of the tokens it signs.
pub fn key_id(key: &VerifyingKey) -> Result<String, JwtError> {
    let spki = key
        .to_public_key_der()
        .map_err(|e| JwtError::Encode(e.to_string()))?;
    Ok(libtrust_key_id(spki.as_bytes()))
}

/// Signs with the newest key of its ring and verifies with any; the ring is swapped
/// whole when keys rotate.
pub struct Issuer {
    ring: ArcSwap<KeyRing>,
    /// Bumped after every ring change: verifications cached under an earlier one are
    /// checked again (their key may have left the ring).
    generation: AtomicU64,
    service: String,
    ttl: Duration,
}

impl Issuer {
    pub fn new(ring: KeyRing, service: &str, ttl: Duration) -> Issuer {
        Issuer {
            ring: ArcSwap::from_pointee(ring),
            generation: AtomicU64::new(0),
            service: service.to_owned(),
            ttl,
        }
    }

    /// An issuer with one freshly generated key, kept nowhere (tests, fuzzing, benches).
    pub fn generated(service: &str, ttl: Duration) -> Result<Issuer, JwtError> {
        Ok(Issuer::new(
            KeyRing::new(random_p256_key(), &[])?,
            service,
            ttl,
        ))
    }

    /// Puts `ring` in force for every token signed or verified from now on.
    pub fn replace_ring(&self, ring: KeyRing) {
        self.ring.store(Arc::new(ring));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The ring's generation: read it before verifying, and a verification remembered
    /// with it holds while it is current.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The ring in force.
    pub fn ring(&self) -> Arc<KeyRing> {
        self.ring.load_full()
    }

    /// The `kid` of tokens signed now: the libtrust fingerprint of the signing key.
    pub fn kid(&self) -> String {
        self.ring.load().kid.clone()
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
        let ring = self.ring.load();
        let header = Header {
            alg: ALG.to_owned(),
            typ: token_use.typ().to_owned(),
            kid: ring.kid.clone(),
        };
        let signing_input = format!("{}.{}", encode_json(&header)?, encode_json(&claims)?);
        let signature: Signature = ring.signing.sign(signing_input.as_bytes());
        let token = format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        );
        Ok(SignedToken { token, claims })
    }

    /// Checks a compact JWS: shape, header (alg, typ, kid: a key of the ring), signature
    /// by that key, then the claims
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
        let ring = self.ring.load();
        let Some(key) = ring.verifying.get(&header.kid) else {
            return Err(JwtError::UnknownKey(header.kid));
        };
        let signature_bytes = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| JwtError::Malformed("signature is not base64url".into()))?;
        let signature = Signature::from_slice(&signature_bytes).map_err(|_| JwtError::Signature)?;
        let signing_input_len = header_b64.len() + 1 + claims_b64.len();
        let signing_input = token
            .get(..signing_input_len)
            .ok_or_else(|| JwtError::Malformed("truncated".into()))?;
        key.verify(signing_input.as_bytes(), &signature)
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

/// The key a gateway kept in `data_dir` before the key ring, if there is one.
pub fn read_legacy_key(data_dir: &Path) -> Result<Option<SigningKey>, JwtError> {
    let path = data_dir.join(SIGNING_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(pem) => SigningKey::from_pkcs8_pem(&pem)
            .map(Some)
            .map_err(|e| JwtError::BadKey {
                path,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(JwtError::Io { path, source }),
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
    use super::*;

    const NOW: UnixSeconds = 1_800_000_000;

    fn issuer() -> Issuer {
        Issuer::generated("registry.test", Duration::from_secs(300)).unwrap()
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
        let issuer = issuer();
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
    fn every_key_of_the_ring_verifies_and_the_newest_signs() {
        let old = random_p256_key();
        let issuer = Issuer::new(
            KeyRing::new(old.clone(), &[]).unwrap(),
            "registry.test",
            Duration::from_secs(300),
        );
        let old_kid = issuer.kid();
        let before = issuer
            .sign(TokenUse::Access, subject(), vec![], NOW)
            .unwrap();
        // Rotated: a new signing key, the old one still verifying.
        let new = random_p256_key();
        issuer.replace_ring(KeyRing::new(new, &[*old.verifying_key()]).unwrap());
        assert_ne!(issuer.kid(), old_kid);
        let after = issuer
            .sign(TokenUse::Access, subject(), vec![], NOW)
            .unwrap();
        let header = |t: &str| -> serde_json::Value {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts(t)[0]).unwrap()).unwrap()
        };
        assert_eq!(header(&before.token)["kid"], old_kid.as_str());
        assert_eq!(header(&after.token)["kid"], issuer.kid().as_str());
        assert!(issuer.verify(&before.token, TokenUse::Access, NOW).is_ok());
        assert!(issuer.verify(&after.token, TokenUse::Access, NOW).is_ok());
        assert_eq!(issuer.ring().kids().count(), 2);
        // The old key dropped: its tokens name an unknown key.
        issuer.replace_ring(KeyRing::new(random_p256_key(), &[]).unwrap());
        assert!(matches!(
            issuer.verify(&before.token, TokenUse::Access, NOW),
            Err(JwtError::UnknownKey(kid)) if kid == old_kid
        ));
    }

    #[test]
    fn a_legacy_key_file_is_read_and_a_corrupt_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_legacy_key(dir.path()).unwrap().is_none());
        let key = random_p256_key();
        let pem = p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(&key, Default::default()).unwrap();
        std::fs::write(dir.path().join(SIGNING_KEY_FILE), pem.as_bytes()).unwrap();
        assert_eq!(read_legacy_key(dir.path()).unwrap(), Some(key));
        std::fs::write(dir.path().join(SIGNING_KEY_FILE), "not a key").unwrap();
        assert!(matches!(
            read_legacy_key(dir.path()),
            Err(JwtError::BadKey { .. })
        ));
    }

    #[test]
    fn kid_has_the_libtrust_shape() {
        let issuer = issuer();
        let kid = issuer.kid();
        let groups: Vec<&str> = kid.split(':').collect();
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
    fn tampered_payload_or_signature_is_rejected() {
        let issuer = issuer();
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
        let ours = issuer();
        let theirs = Issuer::generated("registry.test", Duration::from_secs(300)).unwrap();
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
        let issuer = issuer();
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
        let issuer = issuer();
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
        let issuer = issuer();
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
        let issuer = issuer();
        let other = Issuer::new(
            KeyRing::new(issuer.ring().signing.clone(), &[]).unwrap(),
            "other.test",
            Duration::from_secs(300),
        );
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
        let issuer = issuer();
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
