//! The credentials of HTTP Basic authentication (`Authorization: Basic
//! base64(user:password)`), decoded once for both the gateway and the admin API.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Why Basic credentials could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BasicError {
    #[error("basic credentials are not base64")]
    NotBase64,
    #[error("basic credentials are not utf-8")]
    NotUtf8,
    #[error("basic credentials have no `:` between user and password")]
    NoSeparator,
}

/// The user and password of Basic `credentials` (the header value after the scheme).
pub fn decode_basic(credentials: &str) -> Result<(String, String), BasicError> {
    let bytes = STANDARD
        .decode(credentials)
        .map_err(|_| BasicError::NotBase64)?;
    let text = String::from_utf8(bytes).map_err(|_| BasicError::NotUtf8)?;
    let (user, password) = text.split_once(':').ok_or(BasicError::NoSeparator)?;
    Ok((user.to_owned(), password.to_owned()))
}
