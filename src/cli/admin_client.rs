//! The blocking HTTP client the `token` and `scope-map` commands share: admin Basic
//! auth, JSON in and out, server errors turned into their message, and output as
//! pretty JSON (ACR's shapes) or a table.

use std::fmt::Write as _;

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
            http: Client::new(),
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
        let message = json["errors"][0]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| json.to_string());
        Err(ClientError::Server {
            status: status.as_u16(),
            message,
        })
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
