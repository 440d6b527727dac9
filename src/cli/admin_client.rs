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
        short = 'r',
        global = true,
        env = "PORTCULLIS_REGISTRY",
        default_value = "http://127.0.0.1:5000"
    )]
    pub registry: String,
    /// The admin account's password (user `admin`); default: the `admin-password` file
    /// the server generated in `$PORTCULLIS_DATA_DIR` (or `./data`).
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
    /// Output format (as `az`: json, jsonc, table, tsv, yaml, none).
    #[arg(long, short = 'o', global = true, value_enum, ignore_case = true, default_value_t = Output::Json)]
    pub output: Output,
    /// JMESPath query applied to the result before it is printed (as `az --query`).
    #[arg(long, global = true, value_name = "JMESPATH")]
    pub query: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Json,
    /// Coloured JSON.
    Jsonc,
    Table,
    /// Tab-separated values, one line per item (nested objects and lists left out).
    Tsv,
    Yaml,
    /// Nothing (the exit code tells).
    None,
}

/// The file `portcullis serve` writes a generated admin password to, in its data directory.
const ADMIN_PASSWORD_FILE: &str = "admin-password";

impl ClientArgs {
    /// `--admin-password` / `PORTCULLIS_ADMIN_PASSWORD`, else the password the server
    /// generated into `$PORTCULLIS_DATA_DIR/admin-password` (default `./data`), so the
    /// CLI works next to a `serve` started without a password.
    pub fn admin_password(&self) -> Result<String, ClientError> {
        if let Some(p) = &self.admin_password {
            return Ok(p.clone());
        }
        let dir = std::env::var_os("PORTCULLIS_DATA_DIR")
            .map_or_else(|| PathBuf::from("./data"), PathBuf::from);
        let path = dir.join(ADMIN_PASSWORD_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
            Ok(_) => Err(ClientError::NoPassword(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ClientError::NoPassword(path))
            }
            Err(source) => Err(ClientError::PasswordFile { path, source }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no admin password: set PORTCULLIS_ADMIN_PASSWORD, pass --admin-password, or run where \
         {} exists (PORTCULLIS_DATA_DIR names the data directory)",
        .0.display()
    )]
    NoPassword(PathBuf),
    #[error("cannot read the admin password file {}: {source}", .path.display())]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid --query `{query}`: {reason}")]
    Query { query: String, reason: String },
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
        let password = args.admin_password()?;
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

/// Prints `value` in the `-o` format after the `--query`; `table` renders the command's
/// own table (a queried result gets a generic one). `Null` prints nothing.
pub fn print(
    client: &ClientArgs,
    value: &Value,
    table: impl Fn(&Value) -> String,
) -> Result<(), ClientError> {
    let queried;
    let value = match &client.query {
        Some(query) => {
            queried = apply_query(query, value)?;
            &queried
        }
        None => value,
    };
    print!(
        "{}",
        render(client.output, value, client.query.is_some(), table)
    );
    Ok(())
}

/// The text [`print`] writes.
pub fn render(
    output: Output,
    value: &Value,
    queried: bool,
    table: impl Fn(&Value) -> String,
) -> String {
    if value.is_null() {
        return String::new();
    }
    match output {
        Output::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
        ),
        Output::Jsonc => {
            let mut out = String::new();
            jsonc(value, 0, &mut out);
            out.push('\n');
            out
        }
        Output::Table if queried => generic_table(value),
        Output::Table => table(value),
        Output::Tsv => tsv(value),
        Output::Yaml => {
            let mut out = String::new();
            yaml(value, 0, &mut out);
            out
        }
        Output::None => String::new(),
    }
}

/// Evaluates a JMESPath expression (`az --query`) on `value`.
pub fn apply_query(query: &str, value: &Value) -> Result<Value, ClientError> {
    let error = |reason: String| ClientError::Query {
        query: query.to_owned(),
        reason,
    };
    let expr = jmespath::compile(query).map_err(|e| error(e.to_string()))?;
    let found = expr.search(value).map_err(|e| error(e.to_string()))?;
    serde_json::to_value(&*found).map_err(|e| error(e.to_string()))
}

/// A table of any result: objects' scalar fields as columns (from the first object),
/// scalars under `Result`.
fn generic_table(value: &Value) -> String {
    let items = items(value);
    match items.first() {
        Some(Value::Object(first)) => {
            let headers: Vec<&str> = first
                .iter()
                .filter(|(_, v)| !v.is_object() && !v.is_array())
                .map(|(k, _)| k.as_str())
                .collect();
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|item| headers.iter().map(|h| cell(&item[*h])).collect())
                .collect();
            render_table(&headers, &rows)
        }
        _ => render_table(
            &["Result"],
            &items.iter().map(|v| vec![cell(v)]).collect::<Vec<_>>(),
        ),
    }
}

/// `az -o tsv`: one line per list item, an object's scalar values tab-separated in
/// order, booleans as `True`/`False`, null as an empty field.
fn tsv(value: &Value) -> String {
    fn field(v: &Value) -> Option<String> {
        match v {
            Value::Null => Some(String::new()),
            Value::Bool(true) => Some("True".into()),
            Value::Bool(false) => Some("False".into()),
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Array(_) | Value::Object(_) => None,
        }
    }
    let line = |v: &Value| match v {
        Value::Object(map) => map
            .values()
            .filter_map(field)
            .collect::<Vec<_>>()
            .join("\t"),
        Value::Array(list) => list.iter().filter_map(field).collect::<Vec<_>>().join("\t"),
        other => field(other).unwrap_or_default(),
    };
    let mut out = String::new();
    for item in items(value) {
        let _ = writeln!(out, "{}", line(item));
    }
    out
}

/// A YAML scalar: plain when that reads back as the same string, else double-quoted
/// (a JSON string is a valid YAML double-quoted scalar).
fn yaml_scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::String(s) => yaml_string(s),
        other => other.to_string(),
    }
}

fn yaml_string(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./@-+*".contains(c))
        && !s.starts_with(['-', '.', '@', '+', '*'])
        && s.parse::<f64>().is_err()
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n" | "inf" | "nan"
        );
    if plain {
        s.to_owned()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

fn yaml(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = yaml_string(k);
                match v {
                    Value::Object(m) if !m.is_empty() => {
                        let _ = writeln!(out, "{pad}{key}:");
                        yaml(v, indent + 2, out);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        let _ = writeln!(out, "{pad}{key}:");
                        yaml(v, indent + 2, out);
                    }
                    other => {
                        let _ = writeln!(out, "{pad}{key}: {}", yaml_inline(other));
                    }
                }
            }
        }
        Value::Array(list) if !list.is_empty() => {
            for item in list {
                match item {
                    Value::Object(m) if !m.is_empty() => nested_item(item, indent, out),
                    Value::Array(a) if !a.is_empty() => nested_item(item, indent, out),
                    other => {
                        let _ = writeln!(out, "{pad}- {}", yaml_inline(other));
                    }
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", yaml_inline(other));
        }
    }
}

/// A list item that is itself a mapping or list: rendered two deeper, its first line's
/// indentation replaced by `- `.
fn nested_item(item: &Value, indent: usize, out: &mut String) {
    let mut inner = String::new();
    yaml(item, indent + 2, &mut inner);
    out.push_str(&" ".repeat(indent));
    out.push_str("- ");
    out.push_str(&inner[indent + 2..]);
}

fn yaml_inline(v: &Value) -> String {
    match v {
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        other => yaml_scalar(other),
    }
}

/// Pretty JSON with ANSI colours (keys blue, strings green, other scalars yellow).
fn jsonc(value: &Value, indent: usize, out: &mut String) {
    const KEY: &str = "\x1b[94m";
    const STRING: &str = "\x1b[32m";
    const SCALAR: &str = "\x1b[33m";
    const RESET: &str = "\x1b[0m";
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let pad = " ".repeat(indent + 2);
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push_str("{\n");
            for (i, (k, v)) in map.iter().enumerate() {
                let _ = write!(out, "{pad}{KEY}{}{RESET}: ", quoted(k));
                jsonc(v, indent + 2, out);
                out.push_str(if i + 1 < map.len() { ",\n" } else { "\n" });
            }
            let _ = write!(out, "{}}}", " ".repeat(indent));
        }
        Value::Array(list) if !list.is_empty() => {
            out.push_str("[\n");
            for (i, v) in list.iter().enumerate() {
                out.push_str(&pad);
                jsonc(v, indent + 2, out);
                out.push_str(if i + 1 < list.len() { ",\n" } else { "\n" });
            }
            let _ = write!(out, "{}]", " ".repeat(indent));
        }
        Value::String(s) => {
            let _ = write!(out, "{STRING}{}{RESET}", quoted(s));
        }
        other => {
            let _ = write!(out, "{SCALAR}{other}{RESET}");
        }
    }
}

/// Asks on the terminal unless `--yes`; without a terminal, `refuse_without_terminal`
/// decides between refusing and going on (scripts that predate the prompt).
pub fn confirm(yes: bool, what: &str, refuse_without_terminal: bool) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        if refuse_without_terminal {
            anyhow::bail!("{what} Pass --yes to confirm.");
        }
        return Ok(());
    }
    eprint!("{what} Are you sure you want to continue? (y/n): ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        anyhow::bail!("not confirmed; nothing was deleted")
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
    fn yaml_tsv_and_queries() {
        let v = serde_json::json!([
            {"name": "ci-bot", "status": "enabled", "enabled": true, "n": 2,
             "scope": {"repositories": ["a/*", "b"]}, "empty": [], "note": "yes"},
            {"name": "x: y", "status": null, "enabled": false, "n": 3,
             "scope": {}, "empty": [], "note": "-1"}
        ]);
        let yaml = render(Output::Yaml, &v, false, |_| String::new());
        assert_eq!(
            yaml,
            "- name: ci-bot\n  status: enabled\n  enabled: true\n  \"n\": 2\n  scope:\n    \
             repositories:\n      - a/*\n      - b\n  empty: []\n  note: \"yes\"\n\
             - name: \"x: y\"\n  status: null\n  enabled: false\n  \"n\": 3\n  scope: {}\n  \
             empty: []\n  note: \"-1\"\n"
        );
        assert_eq!(
            render(Output::Tsv, &v, false, |_| String::new()),
            "ci-bot\tenabled\tTrue\t2\tyes\nx: y\t\tFalse\t3\t-1\n"
        );
        let names = apply_query("[?enabled].name", &v).unwrap();
        assert_eq!(names, serde_json::json!(["ci-bot"]));
        assert_eq!(
            render(Output::Table, &names, true, |_| unreachable!()),
            "Result\nci-bot\n"
        );
        assert!(matches!(
            apply_query("[?", &v),
            Err(ClientError::Query { .. })
        ));
        assert_eq!(render(Output::None, &v, false, |_| String::new()), "");
        let colored = render(Output::Jsonc, &serde_json::json!({"a": "b"}), false, |_| {
            String::new()
        });
        assert!(
            colored.contains("\x1b[94m\"a\"\x1b[0m: \x1b[32m\"b\"\x1b[0m"),
            "{colored}"
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
            query: None,
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
