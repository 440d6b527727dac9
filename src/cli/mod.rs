//! The `portcullis` command line: `serve` runs the registry; `token`, `scope-map` and
//! `policy` are tools for operators (the first two are clients of the admin API).

mod policy;
mod scope_map;
mod serve;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about = "Container registry gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the registry (bundled storage backend and admin API).
    Serve(serve::ServeArgs),
    /// Manage repository-scoped tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Manage scope maps.
    #[command(name = "scope-map", subcommand)]
    ScopeMap(scope_map::ScopeMapCommand),
    /// Validate, test, explain and export Cedar policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

/// Parses arguments, runs the command, and maps failures to a message and exit code 1
/// (clap exits with 2 on usage errors by itself).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Token(cmd) => token::run(cmd),
        Command::ScopeMap(cmd) => scope_map::run(cmd),
        Command::Policy(cmd) => policy::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
