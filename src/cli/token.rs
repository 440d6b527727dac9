//! `portcullis token`: create, update, delete, list and show repository-scoped tokens and
//! generate or delete their passwords, through the admin API (like `az acr token`).

use clap::{ArgGroup, ArgMatches, Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Value, json};

use super::admin_client::{
    AdminClient, ClientArgs, cell, confirm, items, print, render_table, repository_groups,
};

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Status {
    Enabled,
    Disabled,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Enabled => "enabled",
            Status::Disabled => "disabled",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token with a new `<name>-scope-map` (--repository) or an existing scope
    /// map (--scope-map); both passwords are generated and shown once.
    #[command(group(ArgGroup::new("scope").required(true).args(["scope_map", "repository"])))]
    Create {
        #[arg(long, short = 'n')]
        name: String,
        /// An existing scope map.
        #[arg(long)]
        scope_map: Option<String>,
        /// A repository pattern and its actions, e.g. `--repository samples/* content/read`.
        #[arg(long, num_args = 2.., value_names = ["REPO", "ACTION"], action = clap::ArgAction::Append)]
        repository: Vec<String>,
        #[arg(long, value_enum, ignore_case = true, default_value_t = Status::Enabled)]
        status: Status,
        /// Do not generate passwords now.
        #[arg(long)]
        no_passwords: bool,
        /// Days until the generated passwords expire (default: never).
        #[arg(long)]
        expiration_in_days: Option<u32>,
    },
    /// Change a token's status or scope map.
    Update {
        #[arg(long, short = 'n')]
        name: String,
        #[arg(long, value_enum, ignore_case = true)]
        status: Option<Status>,
        #[arg(long)]
        scope_map: Option<String>,
    },
    /// Delete a token (its scope map stays).
    Delete {
        #[arg(long, short = 'n')]
        name: String,
        /// Do not prompt for confirmation (there is a prompt only on a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// List tokens.
    List,
    /// Show one token.
    Show {
        #[arg(long, short = 'n')]
        name: String,
    },
    /// Manage a token's passwords.
    #[command(subcommand)]
    Credential(CredentialCommand),
}

#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Generate new values for password1 and/or password2 (both when neither is given);
    /// the other slot keeps working.
    Generate {
        #[arg(long, short = 'n')]
        name: String,
        #[arg(long)]
        password1: bool,
        #[arg(long)]
        password2: bool,
        #[arg(long)]
        expiration_in_days: Option<u32>,
    },
    /// Delete password1, password2 or both.
    #[command(group(ArgGroup::new("slot").required(true).multiple(true).args(["password1", "password2"])))]
    Delete {
        #[arg(long, short = 'n')]
        name: String,
        #[arg(long)]
        password1: bool,
        #[arg(long)]
        password2: bool,
    },
}

pub fn run(args: TokenArgs, matches: &ArgMatches) -> anyhow::Result<()> {
    let client = AdminClient::new(&args.client)?;
    let (value, table): (Value, fn(&Value) -> String) = match args.command {
        TokenCommand::Create {
            name,
            scope_map,
            repository: _,
            status,
            no_passwords,
            expiration_in_days,
        } => {
            let mut body = json!({
                "name": name,
                "status": status.as_str(),
                "noPasswords": no_passwords,
                "expirationInDays": expiration_in_days,
            });
            if let Some(map) = scope_map {
                body["scopeMap"] = json!(map);
            } else {
                body["repositories"] =
                    repository_groups(matches, &["token", "create"], "repository");
            }
            (
                client.call(Method::POST, "/tokens", Some(&body))?,
                token_table,
            )
        }
        TokenCommand::Update {
            name,
            status,
            scope_map,
        } => {
            let body = json!({ "status": status.map(Status::as_str), "scopeMap": scope_map });
            let body = strip_nulls(body);
            (
                client.call(Method::PATCH, &format!("/tokens/{name}"), Some(&body))?,
                token_table,
            )
        }
        TokenCommand::Delete { name, yes } => {
            confirm(yes, &format!("This deletes token `{name}`."), false)?;
            (
                client.call(Method::DELETE, &format!("/tokens/{name}"), None)?,
                token_table,
            )
        }
        TokenCommand::List => (client.call(Method::GET, "/tokens", None)?, token_table),
        TokenCommand::Show { name } => (
            client.call(Method::GET, &format!("/tokens/{name}"), None)?,
            token_table,
        ),
        TokenCommand::Credential(CredentialCommand::Generate {
            name,
            password1,
            password2,
            expiration_in_days,
        }) => {
            let slots: Vec<&str> = [(password1, "password1"), (password2, "password2")]
                .into_iter()
                .filter_map(|(on, s)| on.then_some(s))
                .collect();
            let body = strip_nulls(json!({
                "passwords": slots,
                "expirationInDays": expiration_in_days,
            }));
            (
                client.call(
                    Method::POST,
                    &format!("/tokens/{name}/credentials/generate"),
                    Some(&body),
                )?,
                |v| passwords_table(&v["passwords"]),
            )
        }
        TokenCommand::Credential(CredentialCommand::Delete {
            name,
            password1,
            password2,
        }) => {
            // Both flags together delete both passwords (as `az`), one request each; the
            // answer is the token after the last.
            let slots = [(password1, "password1"), (password2, "password2")];
            let mut after = Value::Null;
            for (_, slot) in slots.iter().filter(|(chosen, _)| *chosen) {
                after = client.call(
                    Method::DELETE,
                    &format!("/tokens/{name}/credentials/{slot}"),
                    None,
                )?;
            }
            (after, token_table)
        }
    };
    print(&args.client, &value, table)?;
    Ok(())
}

fn strip_nulls(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.retain(|_, x| !x.is_null());
    }
    v
}

/// Tokens as a table; password values generated by this call follow in a second table.
fn token_table(v: &Value) -> String {
    let tokens = items(v);
    let slot = |t: &Value, name: &str| {
        t["credentials"]["passwords"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .map(|p| match p["expiry"].as_str() {
                Some(e) => format!("expires {e}"),
                None => "set".to_owned(),
            })
            .unwrap_or_else(|| "-".to_owned())
    };
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                cell(&t["name"]),
                cell(&t["scopeMap"]),
                cell(&t["status"]),
                slot(t, "password1"),
                slot(t, "password2"),
                cell(&t["creationDate"]),
            ]
        })
        .collect();
    let mut out = render_table(
        &[
            "NAME",
            "SCOPE MAP",
            "STATUS",
            "PASSWORD1",
            "PASSWORD2",
            "CREATED",
        ],
        &rows,
    );
    let shown: Vec<Value> = tokens
        .iter()
        .flat_map(|t| {
            t["credentials"]["passwords"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|p| p.get("value").is_some())
        .collect();
    if !shown.is_empty() {
        out.push('\n');
        out.push_str(&passwords_table(&Value::Array(shown)));
    }
    out
}

fn passwords_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v)
        .iter()
        .map(|p| {
            vec![
                cell(&p["name"]),
                cell(&p["value"]),
                cell(&p["creationTime"]),
                cell(&p["expiry"]),
            ]
        })
        .collect();
    render_table(&["PASSWORD", "VALUE", "CREATED", "EXPIRY"], &rows)
}
