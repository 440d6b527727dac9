//! `portcullis manifest list-metadata`: a repository's tagged manifests with their
//! tags, media type, size and platform, read through the registry API (like
//! `az acr manifest list-metadata`). Needs `metadata/read` and `content/read`.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::admin_client::{cell, print, render_table};
use portcullis_oci::Reference;

use super::registry_client::{RegistryArgs, RegistryClient, RegistryError};

/// Config media types whose JSON carries `architecture` and `os`.
const IMAGE_CONFIGS: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

#[derive(Debug, Args)]
pub struct ManifestArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(subcommand)]
    pub command: ManifestCommand,
}

#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// List the metadata of a repository's tagged manifests, grouped by digest.
    ListMetadata {
        /// The repository.
        #[arg(long, short = 'n')]
        name: String,
        /// At most this many manifests.
        #[arg(long)]
        top: Option<usize>,
    },
}

pub fn run(args: ManifestArgs) -> anyhow::Result<()> {
    let client = RegistryClient::new(&args.registry)?;
    let ManifestCommand::ListMetadata { name, top } = args.command;
    let mut list = list_metadata(&client, &name)?;
    if let Some(n) = top {
        list.truncate(n);
    }
    print(&args.registry.client, &Value::Array(list), table)?;
    Ok(())
}

/// One entry per distinct manifest digest, in the order of their first tag.
fn list_metadata(client: &RegistryClient, repository: &str) -> Result<Vec<Value>, RegistryError> {
    let mut order = Vec::new();
    let mut by_digest: BTreeMap<String, Value> = BTreeMap::new();
    for tag in client.tags(repository)? {
        let (info, manifest) = client.get_manifest(repository, &Reference::Tag(tag.clone()))?;
        if let Some(entry) = by_digest.get_mut(&info.digest) {
            if let Some(tags) = entry["tags"].as_array_mut() {
                tags.push(json!(tag));
            }
            continue;
        }
        let mut entry = json!({
            "digest": info.digest,
            "mediaType": manifest["mediaType"].as_str().unwrap_or(&info.media_type),
            "manifestSize": info.size,
            "tags": [tag],
        });
        describe_image(client, repository, &manifest, &mut entry)?;
        order.push(info.digest.clone());
        by_digest.insert(info.digest, entry);
    }
    Ok(order
        .into_iter()
        .filter_map(|d| by_digest.remove(&d))
        .collect())
}

/// For an image manifest: `imageSize` (config + layers), `configMediaType`, and the
/// platform from the config. Indexes only list other manifests, so they get none.
fn describe_image(
    client: &RegistryClient,
    repository: &str,
    manifest: &Value,
    entry: &mut Value,
) -> Result<(), RegistryError> {
    let config = &manifest["config"];
    let Some(config_type) = config["mediaType"].as_str() else {
        return Ok(());
    };
    let layers = manifest["layers"].as_array().into_iter().flatten();
    let size: u64 = std::iter::once(config)
        .chain(layers)
        .filter_map(|d| d["size"].as_u64())
        .sum();
    entry["imageSize"] = json!(size);
    entry["configMediaType"] = json!(config_type);
    if let (true, Some(digest)) = (
        IMAGE_CONFIGS.contains(&config_type),
        config["digest"].as_str(),
    ) {
        let blob = client.get_json_blob(repository, digest)?;
        for key in ["architecture", "os"] {
            if let Some(v) = blob[key].as_str() {
                entry[key] = json!(v);
            }
        }
    }
    Ok(())
}

fn table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let tags = m["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .map(cell)
                .collect::<Vec<_>>()
                .join(",");
            let platform = match (m["os"].as_str(), m["architecture"].as_str()) {
                (Some(os), Some(arch)) => format!("{os}/{arch}"),
                _ => "-".to_owned(),
            };
            vec![
                cell(&m["digest"]),
                tags,
                cell(&m["mediaType"]),
                cell(&m["imageSize"]),
                platform,
            ]
        })
        .collect();
    render_table(&["DIGEST", "TAGS", "MEDIA TYPE", "SIZE", "PLATFORM"], &rows)
}
