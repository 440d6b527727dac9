//! `portcullis scope-map`: create, update, delete, list and show scope maps through the
//! admin API (like `az acr scope-map`).

use clap::{ArgMatches, Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::admin_client::{
    AdminClient, ClientArgs, cell, confirm, items, print, render_table, repository_groups,
};

#[derive(Debug, Args)]
pub struct ScopeMapArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: ScopeMapCommand,
}

#[derive(Debug, Subcommand)]
pub enum ScopeMapCommand {
    /// Create a scope map.
    Create {
        #[arg(long, short = 'n')]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// A repository pattern and its actions, e.g. `--repository samples/* content/read`.
        #[arg(long, num_args = 2.., value_names = ["REPO", "ACTION"], action = clap::ArgAction::Append)]
        repository: Vec<String>,
    },
    /// Change the description, add or remove repository actions; applies at once to every
    /// token using the map.
    Update {
        #[arg(long, short = 'n')]
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, num_args = 2.., value_names = ["REPO", "ACTION"], action = clap::ArgAction::Append)]
        add_repository: Vec<String>,
        /// Removing an action the map does not have is a no-op.
        #[arg(long, num_args = 2.., value_names = ["REPO", "ACTION"], action = clap::ArgAction::Append)]
        remove_repository: Vec<String>,
    },
    /// Delete a scope map no token uses.
    Delete {
        #[arg(long, short = 'n')]
        name: String,
        /// Do not prompt for confirmation (there is a prompt only on a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// List scope maps (system-defined ones included).
    List,
    /// Show one scope map.
    Show {
        #[arg(long, short = 'n')]
        name: String,
    },
}

pub fn run(args: ScopeMapArgs, matches: &ArgMatches) -> anyhow::Result<()> {
    let client = AdminClient::new(&args.client)?;
    let value = match args.command {
        ScopeMapCommand::Create {
            name,
            description,
            repository: _,
        } => {
            let body = json!({
                "name": name,
                "description": description,
                "repositories": repository_groups(matches, &["scope-map", "create"], "repository"),
            });
            client.call(Method::POST, "/scope-maps", Some(&body))?
        }
        ScopeMapCommand::Update {
            name,
            description,
            add_repository: _,
            remove_repository: _,
        } => {
            let mut body = json!({
                "addRepository": repository_groups(matches, &["scope-map", "update"], "add_repository"),
                "removeRepository": repository_groups(matches, &["scope-map", "update"], "remove_repository"),
            });
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            client.call(Method::PATCH, &format!("/scope-maps/{name}"), Some(&body))?
        }
        ScopeMapCommand::Delete { name, yes } => {
            confirm(yes, &format!("This deletes scope map `{name}`."), false)?;
            client.call(Method::DELETE, &format!("/scope-maps/{name}"), None)?
        }
        ScopeMapCommand::List => client.call(Method::GET, "/scope-maps", None)?,
        ScopeMapCommand::Show { name } => {
            client.call(Method::GET, &format!("/scope-maps/{name}"), None)?
        }
    };
    print(&args.client, &value, scope_map_table)?;
    Ok(())
}

fn scope_map_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v)
        .iter()
        .map(|m| {
            let actions = m["actions"]
                .as_array()
                .map(|a| a.iter().map(cell).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            vec![
                cell(&m["name"]),
                cell(&m["type"]),
                cell(&m["creationDate"]),
                cell(&m["description"]),
                actions,
            ]
        })
        .collect();
    render_table(
        &["NAME", "TYPE", "CREATED", "DESCRIPTION", "ACTIONS"],
        &rows,
    )
}
