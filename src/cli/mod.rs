//! The `portcullis` command line: `serve` runs the registry; `token`, `scope-map` and
//! `policy` are tools for operators (the first two are clients of the admin API, as are
//! `config` and `signing-key`); `fsck` and `migrate` work on a stopped gateway's data directory.

mod admin_client;
mod config;
mod fsck;
mod manifest;
mod migrate;
mod policy;
mod registry_client;
mod repository;
mod scope_map;
mod serve;
mod signature_trust;
mod signing_key;
mod token;
mod trust;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about = "Container registry gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the registry (bundled storage backend and admin API).
    Serve(Box<serve::ServeArgs>),
    /// Manage repository-scoped tokens.
    Token(token::TokenArgs),
    /// Manage scope maps.
    #[command(name = "scope-map")]
    ScopeMap(scope_map::ScopeMapArgs),
    /// Validate, test, explain and export Cedar policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// List, untag and delete repository content; show and change repository attributes.
    Repository(repository::RepositoryArgs),
    /// Inspect a repository's manifests.
    Manifest(manifest::ManifestArgs),
    /// Registry-level settings (the content-trust switch).
    Config(config::ConfigArgs),
    /// Content-trust key management (`rotate-kek`).
    Trust(trust::TrustArgs),
    /// Verification identities of OCI signatures (sigstore/cosign keys, Notary Project
    /// CA certificates).
    #[command(name = "signature-trust")]
    SignatureTrust(signature_trust::SignatureTrustArgs),
    /// The token-signing keys shared by every gateway: list, rotate.
    #[command(name = "signing-key")]
    SigningKey(signing_key::SigningKeyArgs),
    /// Check a stopped gateway's data directory (read-only); exit 0 clean, 1 problems,
    /// 2 could not run.
    Fsck(fsck::FsckArgs),
    /// Copy a stopped gateway's data directory (blob files and meta.redb) to S3 +
    /// PostgreSQL, verifying every digest; rerun after an interruption to finish (what is
    /// already there is skipped). Exits 1 if anything could not be copied.
    Migrate(portcullis_storage::cli::MigrateArgs),
}

/// Parses arguments, runs the command, and maps failures to a message and exit code 1
/// (clap exits with 2 on usage errors by itself).
pub fn main() -> ExitCode {
    // The raw matches keep `--repository REPO ACTION...` grouped per occurrence.
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Token(cmd) => token::run(cmd, &matches),
        Command::ScopeMap(cmd) => scope_map::run(cmd, &matches),
        Command::Policy(cmd) => policy::run(cmd),
        Command::Repository(args) => repository::run(args),
        Command::Manifest(args) => manifest::run(args),
        Command::Config(args) => config::run(args),
        Command::Trust(args) => trust::run(args),
        Command::SignatureTrust(args) => signature_trust::run(args),
        Command::SigningKey(args) => signing_key::run(args),
        Command::Fsck(args) => return fsck::run(args),
        Command::Migrate(args) => migrate::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
