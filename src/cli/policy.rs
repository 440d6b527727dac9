//! `portcullis policy` (placeholder until its owner fills it in).

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Not yet available.
    List,
}

pub fn run(_cmd: PolicyCommand) -> anyhow::Result<()> {
    anyhow::bail!("not yet available")
}
