//! `portcullis repository`: list repositories and tags, untag, delete images and whole
//! repositories through the registry API, and show or change a repository's attributes
//! through the gateway's repository API (like `az acr repository`). Works with token
//! credentials: what succeeds is what the token's scope map (and policy) allows.

use clap::{ArgGroup, Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::admin_client::{cell, print, render_table};
use portcullis_oci::Reference;

use super::registry_client::{Image, RegistryArgs, RegistryClient, RegistryError};

/// Asks on the terminal unless `--yes`; without a terminal, refuses.
fn confirm(yes: bool, what: &str) -> anyhow::Result<()> {
    super::admin_client::confirm(yes, what, true)
}

#[derive(Debug, Args)]
pub struct RepositoryArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(subcommand)]
    pub command: RepositoryCommand,
}

#[derive(Debug, Subcommand)]
pub enum RepositoryCommand {
    /// List the repositories the caller may list (`metadata/read`).
    List {
        /// At most this many names.
        #[arg(long)]
        top: Option<usize>,
    },
    /// List a repository's tags (`metadata/read`; `--detail` also needs `content/read`).
    ShowTags {
        #[arg(long)]
        repository: String,
        /// Also show each tag's manifest digest.
        #[arg(long)]
        detail: bool,
        /// At most this many tags.
        #[arg(long)]
        top: Option<usize>,
    },
    /// Show a repository's attributes (`metadata/read`).
    Show {
        #[arg(long)]
        repository: String,
    },
    /// Change a repository's attributes (`metadata/write`).
    #[command(group(ArgGroup::new("attribute").required(true).multiple(true)
        .args(["write_enabled", "delete_enabled", "read_enabled", "list_enabled", "signed_only"])))]
    Update {
        #[arg(long)]
        repository: String,
        /// Whether pushes are allowed.
        #[arg(long, value_name = "BOOL")]
        write_enabled: Option<bool>,
        /// Whether deletes are allowed.
        #[arg(long, value_name = "BOOL")]
        delete_enabled: Option<bool>,
        /// Whether pulls are allowed.
        #[arg(long, value_name = "BOOL")]
        read_enabled: Option<bool>,
        /// Whether the repository shows in listings.
        #[arg(long, value_name = "BOOL")]
        list_enabled: Option<bool>,
        /// Whether only signed manifests are served (content trust): pulls by tag need
        /// the tag signed for the manifest served, by digest a signed digest; the tag
        /// list shows signed tags only.
        #[arg(long, value_name = "BOOL")]
        signed_only: Option<bool>,
    },
    /// Remove a tag; the manifest stays (`metadata/write`).
    Untag {
        /// `REPOSITORY:TAG`.
        #[arg(long)]
        image: Image,
    },
    /// Delete an image's manifest (and every tag on it), or a whole repository with
    /// every manifest and tag (`content/delete`, done server-side in one request).
    #[command(group(ArgGroup::new("target").required(true).args(["image", "repository"])))]
    Delete {
        /// `REPOSITORY:TAG` or `REPOSITORY@DIGEST`.
        #[arg(long)]
        image: Option<Image>,
        /// The whole repository: every manifest and tag; it leaves the catalog.
        #[arg(long)]
        repository: Option<String>,
        /// Do not prompt for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

pub fn run(args: RepositoryArgs) -> anyhow::Result<()> {
    let client = RegistryClient::new(&args.registry)?;
    let (value, table): (Value, fn(&Value) -> String) = match args.command {
        RepositoryCommand::List { top } => (json!(truncate(client.catalog()?, top)), names_table),
        RepositoryCommand::ShowTags {
            repository,
            detail,
            top,
        } => {
            let tags = truncate(client.tags(&repository)?, top);
            if detail {
                (tag_details(&client, &repository, &tags)?, tags_table)
            } else {
                (json!(tags), names_table)
            }
        }
        RepositoryCommand::Show { repository } => (
            client.repository_attributes(Method::GET, &repository, None)?,
            attributes_table,
        ),
        RepositoryCommand::Update {
            repository,
            write_enabled,
            delete_enabled,
            read_enabled,
            list_enabled,
            signed_only,
        } => {
            let changes: Map<String, Value> = [
                ("writeEnabled", write_enabled),
                ("deleteEnabled", delete_enabled),
                ("readEnabled", read_enabled),
                ("listEnabled", list_enabled),
                ("signedOnly", signed_only),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), json!(v))))
            .collect();
            let body = Value::Object(changes);
            (
                client.repository_attributes(Method::PATCH, &repository, Some(&body))?,
                attributes_table,
            )
        }
        RepositoryCommand::Untag { image } => {
            if let Reference::Digest(_) = image.reference {
                anyhow::bail!(
                    "untag needs REPOSITORY:TAG; to delete by digest use `repository delete --image`"
                );
            }
            client.delete_manifest(&image.repository, &image.reference)?;
            (Value::Null, names_table)
        }
        RepositoryCommand::Delete {
            image,
            repository,
            yes,
        } => {
            let deleted = match (image, repository) {
                (Some(image), _) => delete_image(&client, &image, yes)?,
                (None, Some(repository)) => delete_repository(&client, &repository, yes)?,
                (None, None) => anyhow::bail!("give --image or --repository"),
            };
            (deleted, deleted_table)
        }
    };
    print(&args.registry.client, &value, table)?;
    Ok(())
}

fn truncate<T>(mut items: Vec<T>, top: Option<usize>) -> Vec<T> {
    if let Some(n) = top {
        items.truncate(n);
    }
    items
}

/// `[{name, digest}]`: the digest of each tag from a manifest `HEAD`.
fn tag_details(
    client: &RegistryClient,
    repository: &str,
    tags: &[String],
) -> Result<Value, RegistryError> {
    let mut out = Vec::with_capacity(tags.len());
    for tag in tags {
        let info = client.head_manifest(repository, &Reference::Tag(tag.clone()))?;
        out.push(json!({ "name": tag, "digest": info.digest, "mediaType": info.media_type }));
    }
    Ok(Value::Array(out))
}

/// Deletes the manifest an image names and every tag pointing at it (the gateway
/// resolves a tag itself, so `content/delete` is all the caller needs).
fn delete_image(client: &RegistryClient, image: &Image, yes: bool) -> anyhow::Result<Value> {
    let named = match &image.reference {
        Reference::Tag(tag) => format!("{}:{tag}", image.repository),
        Reference::Digest(digest) => format!("{}@{digest}", image.repository),
    };
    confirm(
        yes,
        &format!("This deletes the manifest of `{named}` and every tag pointing at it."),
    )?;
    Ok(client.delete_image(&image.repository, &image.reference)?)
}

/// Deletes a whole repository, server-side in one request.
fn delete_repository(
    client: &RegistryClient,
    repository: &str,
    yes: bool,
) -> anyhow::Result<Value> {
    confirm(
        yes,
        &format!("This deletes repository `{repository}` with every manifest and tag in it."),
    )?;
    Ok(client.delete_repository(repository)?)
}

fn names_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| vec![cell(n)])
        .collect();
    render_table(&["Result"], &rows)
}

fn tags_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| vec![cell(&t["name"]), cell(&t["digest"])])
        .collect();
    render_table(&["NAME", "DIGEST"], &rows)
}

fn attributes_table(v: &Value) -> String {
    let a = &v["changeableAttributes"];
    render_table(
        &["NAME", "READ", "WRITE", "DELETE", "LIST", "SIGNED-ONLY"],
        &[vec![
            cell(&v["imageName"]),
            cell(&a["readEnabled"]),
            cell(&a["writeEnabled"]),
            cell(&a["deleteEnabled"]),
            cell(&a["listEnabled"]),
            cell(&a["signedOnly"]),
        ]],
    )
}

fn deleted_table(v: &Value) -> String {
    let rows = |field: &str, kind: &str| -> Vec<Vec<String>> {
        v[field]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| vec![kind.to_owned(), cell(d)])
            .collect()
    };
    let mut all = rows("manifestsDeleted", "manifest");
    all.extend(rows("tagsDeleted", "tag"));
    render_table(&["DELETED", "NAME"], &all)
}
