//! The command-line pieces `portcullis-storage` and the gateway's `portcullis` share, so
//! both take the same flags and run the same code: where blobs and metadata live, and
//! the `migrate` command.

use std::path::PathBuf;

use clap::Args;
use clap::builder::BoolishValueParser;

use crate::meta::MetadataLocation;
use crate::s3::{S3Config, S3Settings};
use crate::{StorageConfig, Stores};

/// Where blobs live: the data directory unless `--storage` names a bucket.
#[derive(Debug, Args)]
pub struct BlobArgs {
    /// Blobs in this bucket (s3://BUCKET[/PREFIX]) instead of DATA_DIR/blobs.
    /// Credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY [default: local disk].
    #[arg(long, value_name = "s3://BUCKET[/PREFIX]", env = "PORTCULLIS_STORAGE")]
    pub storage: Option<String>,
    /// S3 endpoint, http[s]://HOST[:PORT] [default: AWS_ENDPOINT_URL, else AWS].
    #[arg(long, value_name = "URL", env = "PORTCULLIS_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region [default: AWS_REGION; us-east-1 with an endpoint].
    #[arg(long, value_name = "REGION", env = "PORTCULLIS_S3_REGION")]
    pub s3_region: Option<String>,
    /// Path-style S3 requests (endpoint/bucket/key) rather than virtual-hosted [default: true].
    #[arg(long, value_name = "BOOL", env = "PORTCULLIS_S3_PATH_STYLE", value_parser = BoolishValueParser::new())]
    pub s3_path_style: Option<bool>,
    /// Blob GETs redirect to a pre-signed S3 URL valid this long; 0 streams them through
    /// the server [default: 0].
    #[arg(long, value_name = "SECONDS", env = "PORTCULLIS_S3_REDIRECT_SECONDS")]
    pub s3_redirect_seconds: Option<u64>,
}

impl BlobArgs {
    /// The store's configuration for `data_dir` with these blob settings.
    pub fn config(&self, data_dir: PathBuf) -> anyhow::Result<StorageConfig> {
        let mut config = StorageConfig::new(data_dir);
        if let Some(url) = &self.storage {
            let settings = S3Settings {
                endpoint: self.s3_endpoint.clone(),
                region: self.s3_region.clone(),
                path_style: self.s3_path_style,
                redirect_seconds: self.s3_redirect_seconds,
            };
            config.s3 = Some(S3Config::resolve(url, &settings)?);
        }
        Ok(config)
    }
}

/// Where the metadata lives: `--metadata`.
#[derive(Debug, Args)]
pub struct MetadataArg {
    /// Where the metadata lives: `local` (meta.redb in the data directory) or a
    /// PostgreSQL URL, postgres://USER:PASSWORD@HOST:PORT/DATABASE, shared by any number
    /// of processes.
    #[arg(
        long = "metadata",
        value_name = "local|postgres://...",
        env = "PORTCULLIS_METADATA",
        hide_env_values = true,
        default_value = "local",
        value_parser = MetadataLocation::parse
    )]
    pub location: MetadataLocation,
}

/// What `migrate` reports that it could not copy.
#[derive(Debug, thiserror::Error)]
#[error("migrate: {0} items not copied (listed above); fix them and run migrate again")]
struct NotCopied(usize);

/// `migrate`'s flags.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The stopped registry's data directory (its blob files and meta.redb).
    #[arg(long)]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub metadata: MetadataArg,
    #[command(flatten)]
    pub blobs: BlobArgs,
}

/// Runs `migrate`: copies the local store in `--data-dir` to the S3 bucket and
/// PostgreSQL database given ([`crate::migrate::migrate`]) and prints what it did.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let MigrateArgs {
        data_dir,
        metadata,
        blobs,
    } = args;
    if blobs.storage.is_none() || metadata.location == MetadataLocation::Local {
        anyhow::bail!(
            "migrate copies to S3 and PostgreSQL: give --storage s3://BUCKET[/PREFIX] \
             and --metadata postgres://..."
        );
    }
    let mut config = blobs.config(data_dir.clone())?;
    config.metadata = metadata.location;
    let target = Stores::connect(&config).await?;
    let r = crate::migrate::migrate(&data_dir, &target).await?;
    println!(
        "migrate: blobs {} copied ({} bytes), {} already there; blob links {} copied, \
         {} already there; manifests {} copied (with {} tags), {} already there; \
         {} failed",
        r.blobs_copied,
        r.bytes_copied,
        r.blobs_skipped,
        r.links_copied,
        r.links_skipped,
        r.manifests_copied,
        r.tags_copied,
        r.manifests_skipped,
        r.failures.len()
    );
    for failure in &r.failures {
        println!("not copied: {failure}");
    }
    if r.failures.is_empty() {
        Ok(())
    } else {
        Err(NotCopied(r.failures.len()).into())
    }
}
