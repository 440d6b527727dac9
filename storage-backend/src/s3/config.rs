//! Where the S3 blob store is and how to sign for it: `s3://BUCKET[/PREFIX]`, plus the
//! endpoint, region and credentials under the environment names the AWS SDKs read
//! (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`). Explicit settings win over the environment.

/// The S3 blob store's settings.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix without slashes at either end; empty for the bucket's root.
    pub prefix: String,
    /// `http[s]://host[:port]` of an S3-compatible server; `None`: AWS.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// `https://endpoint/bucket/key` rather than `https://bucket.endpoint/key`.
    pub path_style: bool,
    /// Blob GETs answer with a redirect to a pre-signed URL valid this long, instead of
    /// streaming the bytes through the registry.
    pub redirect: Option<std::time::Duration>,
}

// The secret stays out of logs and panics.
impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("path_style", &self.path_style)
            .field("redirect", &self.redirect)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum S3ConfigError {
    #[error("storage `{0}`: expected s3://BUCKET[/PREFIX] (leave it unset for the local disk)")]
    Url(String),
    #[error("s3 endpoint `{0}`: expected http://HOST[:PORT] or https://HOST[:PORT]")]
    Endpoint(String),
    #[error("{0} is not set (S3 storage needs it)")]
    Missing(&'static str),
}

/// Settings given explicitly (flags or the config file); the rest come from the
/// environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<bool>,
    /// Seconds a pre-signed blob URL is valid; `None` or 0: blob GETs stream.
    pub redirect_seconds: Option<u64>,
}

impl S3Config {
    /// `url` with `settings`, then the process environment.
    pub fn resolve(url: &str, settings: &S3Settings) -> Result<S3Config, S3ConfigError> {
        S3Config::resolve_with(url, settings, |name| {
            std::env::var(name).ok().filter(|v| !v.is_empty())
        })
    }

    /// [`S3Config::resolve`] with `env` standing for the environment.
    pub fn resolve_with(
        url: &str,
        settings: &S3Settings,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<S3Config, S3ConfigError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| S3ConfigError::Url(url.to_owned()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // S3's bucket naming rules (3-63 of a-z, 0-9, '.', '-').
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !bucket_ok || prefix.split('/').any(|p| p == "." || p == "..") {
            return Err(S3ConfigError::Url(url.to_owned()));
        }
        let endpoint = settings
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"));
        if let Some(e) = &endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(S3ConfigError::Endpoint(e.clone()));
        }
        let region = match settings
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
        {
            Some(r) => r,
            // S3-compatible servers accept any region in the signature.
            None if endpoint.is_some() => "us-east-1".to_owned(),
            None => return Err(S3ConfigError::Missing("AWS_REGION")),
        };
        Ok(S3Config {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            path_style: settings.path_style.unwrap_or(true),
            redirect: settings
                .redirect_seconds
                .filter(|s| *s > 0)
                .map(std::time::Duration::from_secs),
            endpoint: endpoint.map(|e| e.trim_end_matches('/').to_owned()),
            region,
            access_key_id: env("AWS_ACCESS_KEY_ID")
                .ok_or(S3ConfigError::Missing("AWS_ACCESS_KEY_ID"))?,
            secret_access_key: env("AWS_SECRET_ACCESS_KEY")
                .ok_or(S3ConfigError::Missing("AWS_SECRET_ACCESS_KEY"))?,
            session_token: env("AWS_SESSION_TOKEN"),
        })
    }

    /// `s3://bucket/prefix` at the endpoint, for messages.
    pub fn describe(&self) -> String {
        let at = self.endpoint.as_deref().unwrap_or("AWS");
        format!("s3://{}/{} at {at}", self.bucket, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    const KEYS: [(&str, &str); 2] = [
        ("AWS_ACCESS_KEY_ID", "id"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
    ];

    #[test]
    fn url_settings_and_environment() {
        let mut vars = KEYS.to_vec();
        vars.push(("AWS_ENDPOINT_URL", "http://127.0.0.1:8333/"));
        let c =
            S3Config::resolve_with("s3://bucket/a/b/", &S3Settings::default(), env(&vars)).unwrap();
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str(), c.region.as_str()),
            ("bucket", "a/b", "us-east-1")
        );
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert!(c.path_style);
        let settings = S3Settings {
            endpoint: Some("https://s3.example".into()),
            region: Some("eu-west-1".into()),
            path_style: Some(false),
            redirect_seconds: Some(60),
        };
        let c = S3Config::resolve_with("s3://bucket", &settings, env(&vars)).unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("https://s3.example"));
        assert_eq!((c.prefix.as_str(), c.region.as_str()), ("", "eu-west-1"));
        assert!(!c.path_style);
        assert_eq!(c.redirect, Some(std::time::Duration::from_secs(60)));
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn errors_name_the_setting() {
        let none = S3Settings::default();
        for bad in ["/var/lib/x", "s3://", "s3://B", "s3://ok-bucket/../x"] {
            assert_eq!(
                S3Config::resolve_with(bad, &none, env(&KEYS)),
                Err(S3ConfigError::Url(bad.into()))
            );
        }
        assert_eq!(
            S3Config::resolve_with("s3://bucket", &none, env(&KEYS)),
            Err(S3ConfigError::Missing("AWS_REGION"))
        );
        let mut vars = vec![("AWS_REGION", "us-east-1")];
        assert_eq!(
            S3Config::resolve_with("s3://bucket", &none, env(&vars)),
            Err(S3ConfigError::Missing("AWS_ACCESS_KEY_ID"))
        );
        vars.push(("AWS_ACCESS_KEY_ID", "id"));
        assert_eq!(
            S3Config::resolve_with("s3://bucket", &none, env(&vars)),
            Err(S3ConfigError::Missing("AWS_SECRET_ACCESS_KEY"))
        );
        let e = S3Settings {
            endpoint: Some("localhost:9000".into()),
            ..S3Settings::default()
        };
        assert_eq!(
            S3Config::resolve_with("s3://bucket", &e, env(&KEYS)),
            Err(S3ConfigError::Endpoint("localhost:9000".into()))
        );
    }
}
