//! `portcullis scope_map` (placeholder until its owner fills it in).

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ScopeMapCommand {
    /// Not yet available.
    List,
}

pub fn run(_cmd: ScopeMapCommand) -> anyhow::Result<()> {
    anyhow::bail!("not yet available")
}
