//! `portcullis token` (placeholder until its owner fills it in).

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Not yet available.
    List,
}

pub fn run(_cmd: TokenCommand) -> anyhow::Result<()> {
    anyhow::bail!("not yet available")
}
