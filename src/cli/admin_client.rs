//! The blocking HTTP client the `token` and `scope-map` commands share: admin Basic
//! auth, JSON in and out, server errors turned into their message, and output as
//! pretty JSON (ACR's shapes) or a table. Also the options and HTTP client every
//! client command shares (registry URL, private CA, output format).

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{ArgMatches, Args, ValueEnum};
use reqwest::Method;
use reqwest::blocking::Client;
use serde_json::Value;

/// Options common to the admin-client commands (valid before or after the subcommand).
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Base URL of the registry.
    #[arg(
        long,
        global = true,
        env = "PORTCULLIS_REGISTRY",
        default_value = "http://127.0.0.1:5000"
    )]
    pub registry: String,
    /// The admin account's password (user `admin`).
    #[arg(
        long = "admin-password",
        global = true,
        env = "PORTCULLIS_ADMIN_PASSWORD",
        hide_env_values = true
    )]
    pub admin_password: Option<String>,
    /// PEM file with the CA certificate(s) that signed the registry's TLS certificate,
    /// trusted in addition to the public roots.
    #[arg(long = "ca-cert", global = true, env = "PORTCULLIS_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Json)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Json,
    Table,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no admin password: set PORTCULLIS_ADMIN_PASSWORD or pass --admin-password")]
    NoPassword,
    #[error("cannot read CA certificate file {}: {source}", .path.display())]
    CaCertRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA certificate file {} holds no usable PEM certificate: {reason}", .path.display())]
    CaCertInvalid { path: PathBuf, reason: String },
    #[error("cannot set up the HTTP client: {0}")]
    Setup(reqwest::Error),
    #[error("request to {url} failed: {source}")]
    Http { url: String, source: reqwest::Error },
    /// The server's own error message.
    #[error("{message} (HTTP {status})")]
    Server { status: u16, message: String },
}

pub struct AdminClient {
    http: Client,
    base: String,
    password: String,
}

impl AdminClient {
    pub fn new(args: &ClientArgs) -> Result<Self, ClientError> {
        let password = args.admin_password.clone().ok_or(ClientError::NoPassword)?;
        Ok(AdminClient {
            http: http_client(args)?,
            base: format!("{}/admin/v1", args.registry.trim_end_matches('/')),
            password,
        })
    }

    /// Sends a request; returns the JSON body (`Null` for an empty one).
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let http_err = |source| ClientError::Http {
            url: url.clone(),
            source,
        };
        let mut req = self
            .http
            .request(method, &url)
            .basic_auth("admin", Some(&self.password));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().map_err(http_err)?;
        let status = resp.status();
        let text = resp.text().map_err(http_err)?;
        let json: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(json);
        }
        Err(server_error(status, &json))
    }
}

/// The HTTP client for `args`: trusts the public roots and the `--ca-cert` bundle.
pub fn http_client(args: &ClientArgs) -> Result<Client, ClientError> {
    let mut builder = Client::builder();
    if let Some(path) = &args.ca_cert {
        let pem = std::fs::read(path).map_err(|source| ClientError::CaCertRead {
            path: path.clone(),
            source,
        })?;
        let invalid = |reason: String| ClientError::CaCertInvalid {
            path: path.clone(),
            reason,
        };
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| invalid(e.to_string()))?;
        if certs.is_empty() {
            return Err(invalid("no CERTIFICATE block".into()));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(ClientError::Setup)
}

/// A refusal as the user should read it: the first OCI error's message, with the
/// server's `detail.reason` when it gives one (denials say which action was missing).
pub fn server_error(status: reqwest::StatusCode, body: &Value) -> ClientError {
    let error = &body["errors"][0];
    let mut message = error["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| match body {
            Value::Null => status.to_string(),
            other => other.to_string(),
        });
    if let Some(reason) = error["detail"]["reason"].as_str() {
        message = format!("{message}: {reason}");
    }
    ClientError::Server {
        status: status.as_u16(),
        message,
    }
}

/// Prints `value` as pretty JSON, or through `table` as a table. `Null` prints nothing.
pub fn print(output: Output, value: &Value, table: impl Fn(&Value) -> String) {
    if value.is_null() {
        return;
    }
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
        ),
        Output::Table => print!("{}", table(value)),
    }
}

/// A left-aligned text table with a header row.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let line = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// A JSON field as text for a table cell (`-` when absent or null).
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The items of a list response, or the single object as a one-item list.
pub fn items(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    }
}

/// The `--repository REPO ACTION...` groups of argument `id` of the subcommand at `path`,
/// as `{repository, actions}` objects (clap's derive flattens occurrences, so they are
/// read from the raw matches).
pub fn repository_groups(matches: &ArgMatches, path: &[&str], id: &str) -> Value {
    let mut m = matches;
    for name in path {
        match m.subcommand() {
            Some((taken, sub)) if taken == *name => m = sub,
            _ => return Value::Array(vec![]),
        }
    }
    let groups = m
        .get_occurrences::<String>(id)
        .map(|occ| {
            occ.map(|g| g.cloned().collect::<Vec<_>>())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    groups
        .iter()
        .filter_map(|g| g.split_first())
        .map(|(repo, actions)| serde_json::json!({ "repository": repo, "actions": actions }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = render_table(
            &["NAME", "STATUS"],
            &[
                vec!["a-long-name".into(), "enabled".into()],
                vec!["b".into(), "-".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME         STATUS\na-long-name  enabled\nb            -\n"
        );
    }

    #[test]
    fn server_errors_carry_the_message_and_the_reason() {
        let body = serde_json::json!({"errors": [{
            "code": "DENIED",
            "message": "requested access to the resource is denied",
            "detail": {"reason": "metadata/write (delete-tag) on `a`"}
        }]});
        let e = server_error(reqwest::StatusCode::FORBIDDEN, &body);
        assert_eq!(
            e.to_string(),
            "requested access to the resource is denied: metadata/write (delete-tag) on `a` \
             (HTTP 403)"
        );
        // A HEAD refusal has no body.
        let e = server_error(reqwest::StatusCode::NOT_FOUND, &Value::Null);
        assert_eq!(e.to_string(), "404 Not Found (HTTP 404)");
    }

    #[test]
    fn ca_cert_files_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let args = |path: PathBuf| ClientArgs {
            registry: "https://127.0.0.1:1".into(),
            admin_password: None,
            ca_cert: Some(path),
            output: Output::Json,
        };
        let missing = dir.path().join("missing.pem");
        let e = http_client(&args(missing)).unwrap_err();
        assert!(matches!(e, ClientError::CaCertRead { .. }), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no pem here\n").unwrap();
        let e = http_client(&args(empty)).unwrap_err();
        assert!(e.to_string().contains("empty.pem"), "{e}");
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        http_client(&args(good)).unwrap();
    }

    #[test]
    fn repository_groups_keep_occurrences_apart() {
        let cmd = clap::Command::new("t").subcommand(
            clap::Command::new("create").arg(
                clap::Arg::new("repository")
                    .long("repository")
                    .num_args(2..)
                    .action(clap::ArgAction::Append),
            ),
        );
        let m = cmd.get_matches_from([
            "t",
            "create",
            "--repository",
            "a/*",
            "content/read",
            "content/write",
            "--repository",
            "b",
            "metadata/read",
        ]);
        assert_eq!(
            repository_groups(&m, &["create"], "repository"),
            serde_json::json!([
                {"repository": "a/*", "actions": ["content/read", "content/write"]},
                {"repository": "b", "actions": ["metadata/read"]}
            ])
        );
        assert_eq!(
            repository_groups(&m, &["other"], "repository"),
            serde_json::json!([])
        );
    }
}
