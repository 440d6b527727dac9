//! `portcullis signature-trust`: add, list, show and remove the verification
//! identities of OCI signatures through the admin API — a sigstore/cosign public key
//! (`--public-key`) or Notary Project CA certificates (`--ca-cert`, optionally
//! `--identity`). Policies see the names of those whose signatures verify as
//! `context.signatures`. `report` lists which tags carry which kind of signature.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{ArgGroup, Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::admin_client::{AdminClient, ClientArgs, cell, confirm, items, print, render_table};

#[derive(Debug, Args)]
pub struct SignatureTrustArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: SignatureTrustCommand,
}

#[derive(Debug, Subcommand)]
pub enum SignatureTrustCommand {
    /// Add a verification identity.
    #[command(group(ArgGroup::new("material").required(true).args(["public_key", "ca_cert"])))]
    Add {
        /// The name policies test (`context.signatures.contains("NAME")`).
        #[arg(long, short = 'n')]
        name: String,
        /// sigstore/cosign: the ECDSA P-256 public key, PEM (`cosign.pub`).
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
        /// Notary Project: the trusted CA certificate(s), PEM.
        #[arg(long, value_name = "FILE")]
        ca_cert: Option<PathBuf>,
        /// Notary Project: attributes the signing certificate's subject must carry,
        /// e.g. `CN=release,O=Example`.
        #[arg(long, value_name = "SUBJECT", requires = "ca_cert")]
        identity: Option<String>,
    },
    /// List the verification identities.
    List,
    /// Show one verification identity.
    Show {
        #[arg(long, short = 'n')]
        name: String,
    },
    /// Migration report off Docker Content Trust: per repository and tag, whether the
    /// manifest served is signed by content trust, which trusted OCI signatures verify,
    /// or neither.
    Report,
    /// Remove a verification identity; its signatures no longer count.
    Remove {
        #[arg(long, short = 'n')]
        name: String,
        /// Do not prompt for confirmation (there is a prompt only on a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

fn read(path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading `{}`", path.display()))
}

pub fn run(args: SignatureTrustArgs) -> anyhow::Result<()> {
    let client = AdminClient::new(&args.client)?;
    let value = match args.command {
        SignatureTrustCommand::Add {
            name,
            public_key,
            ca_cert,
            identity,
        } => {
            let mut body = json!({ "name": name });
            if let Some(path) = &public_key {
                body["publicKey"] = json!(read(path)?);
            }
            if let Some(path) = &ca_cert {
                body["caCerts"] = json!(read(path)?);
            }
            if let Some(identity) = identity {
                body["identity"] = json!(identity);
            }
            client.call(Method::POST, "/signature-trust", Some(&body))?
        }
        SignatureTrustCommand::List => client.call(Method::GET, "/signature-trust", None)?,
        SignatureTrustCommand::Show { name } => {
            client.call(Method::GET, &format!("/signature-trust/{name}"), None)?
        }
        SignatureTrustCommand::Report => {
            let value = client.call(Method::GET, "/signature-report", None)?;
            print(&args.client, &value, report_table)?;
            return Ok(());
        }
        SignatureTrustCommand::Remove { name, yes } => {
            confirm(
                yes,
                &format!("Signatures verified by `{name}` stop counting."),
                false,
            )?;
            client.call(Method::DELETE, &format!("/signature-trust/{name}"), None)?
        }
    };
    print(&args.client, &value, table)?;
    Ok(())
}

fn table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v)
        .iter()
        .map(|t| {
            vec![
                cell(&t["name"]),
                cell(&t["kind"]),
                cell(&t["identity"]),
                cell(&t["creationDate"]),
            ]
        })
        .collect();
    render_table(&["NAME", "KIND", "IDENTITY", "CREATED"], &rows)
}

fn report_table(v: &Value) -> String {
    let mut rows = Vec::new();
    for repository in items(v) {
        for tag in repository["tags"].as_array().into_iter().flatten() {
            let oci = tag["signatures"]
                .as_array()
                .map(|names| names.iter().map(cell).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            let content_trust = tag["contentTrust"].as_bool().unwrap_or(false);
            let kind = match (content_trust, oci.is_empty()) {
                (true, true) => "content-trust",
                (true, false) => "both",
                (false, false) => "oci",
                (false, true) => "none",
            };
            rows.push(vec![
                cell(&repository["repository"]),
                cell(&tag["tag"]),
                kind.to_owned(),
                oci,
                cell(&tag["digest"]),
            ]);
        }
    }
    render_table(
        &["REPOSITORY", "TAG", "SIGNED", "OCI SIGNERS", "DIGEST"],
        &rows,
    )
}
