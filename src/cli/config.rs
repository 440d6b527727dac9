//! `portcullis config`: registry-level settings through the admin API (like
//! `az acr config`). Today the content-trust switch.

use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Value, json};

use super::admin_client::{AdminClient, ClientArgs, cell, print, render_table};

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Content trust (Docker Content Trust / Notary v1 on the registry host).
    #[command(name = "content-trust", subcommand)]
    ContentTrust(ContentTrustCommand),
}

#[derive(Debug, Subcommand)]
pub enum ContentTrustCommand {
    /// Show whether content trust is enabled.
    Show,
    /// Enable or disable content trust. Enabling restricts nobody who does not use
    /// content trust. Disabling deletes the trust data of every repository (images are
    /// kept) and cannot be undone.
    Update {
        #[arg(long, value_enum, ignore_case = true)]
        status: Status,
        /// Confirm disabling (it deletes every repository's trust data).
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Status {
    Enabled,
    Disabled,
}

const PATH: &str = "/config/content-trust";

pub fn run(args: ConfigArgs) -> anyhow::Result<()> {
    let client = AdminClient::new(&args.client)?;
    let value = match args.command {
        ConfigCommand::ContentTrust(ContentTrustCommand::Show) => {
            client.call(Method::GET, PATH, None)?
        }
        ConfigCommand::ContentTrust(ContentTrustCommand::Update { status, yes }) => {
            let body = match status {
                Status::Enabled => json!({ "status": "enabled" }),
                Status::Disabled if yes => json!({ "status": "disabled", "confirm": true }),
                Status::Disabled => anyhow::bail!(
                    "disabling content trust deletes the trust data of every repository and \
                     cannot be undone (images are kept); pass --yes to confirm"
                ),
            };
            client.call(Method::PUT, PATH, Some(&body))?
        }
    };
    print(&args.client, &value, content_trust_table)?;
    Ok(())
}

fn content_trust_table(v: &Value) -> String {
    render_table(&["CONTENT TRUST"], &[vec![cell(&v["status"])]])
}
