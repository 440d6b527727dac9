//! `portcullis serve`: runs the registry with an embedded default configuration.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5000", env = "PORTCULLIS_LISTEN")]
    pub listen: String,
    /// Directory for all data (metadata, blobs, keys).
    #[arg(long, default_value = "./data", env = "PORTCULLIS_DATA_DIR")]
    pub data_dir: PathBuf,
}

pub fn run(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet available")
}
