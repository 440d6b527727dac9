//! `portcullis signing-key`: the token-signing keys every gateway shares, through the
//! admin API: list them, rotate (a new key signs from now on; the old ones verify the
//! tokens they signed until those expired, or are dropped at once after a leak).

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::admin_client::{AdminClient, ClientArgs, cell, items, print, render_table};

#[derive(Debug, Args)]
pub struct SigningKeyArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: SigningKeyCommand,
}

#[derive(Debug, Subcommand)]
pub enum SigningKeyCommand {
    /// List the keys: kid, created, retired, whether it signs, when it leaves the ring.
    List,
    /// Make a new key the signing key on every gateway; the others are retired and keep
    /// verifying the tokens they signed until those expired.
    Rotate {
        /// Delete the previous keys instead (a leaked key): every token they signed is
        /// refused at once, and docker clients must log in again.
        #[arg(long)]
        drop_previous: bool,
        /// Confirm --drop-previous.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

pub fn run(args: SigningKeyArgs) -> anyhow::Result<()> {
    let client = AdminClient::new(&args.client)?;
    let value = match args.command {
        SigningKeyCommand::List => client.call(Method::GET, "/signing-keys", None)?,
        SigningKeyCommand::Rotate { drop_previous, yes } => {
            if drop_previous && !yes {
                anyhow::bail!(
                    "--drop-previous refuses every token the previous keys signed at once \
                     (docker clients must log in again); pass --yes to confirm"
                );
            }
            let body = json!({ "dropPrevious": drop_previous });
            client.call(Method::POST, "/signing-keys/rotate", Some(&body))?
        }
    };
    print(&args.client, &value, keys_table)?;
    Ok(())
}

fn keys_table(keys: &Value) -> String {
    let rows: Vec<Vec<String>> = items(keys)
        .into_iter()
        .map(|k| {
            vec![
                cell(&k["kid"]),
                cell(&k["created"]),
                cell(&k["retired"]),
                cell(&k["signing"]),
                cell(&k["dropsAt"]),
            ]
        })
        .collect();
    render_table(&["KID", "CREATED", "RETIRED", "SIGNING", "DROPS_AT"], &rows)
}
