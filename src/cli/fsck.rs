//! `portcullis fsck`: the read-only check of a stopped gateway's data directory
//! ([`crate::fsck`]). Exit 0 when clean, 1 when it found problems, 2 when it could not run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::gateway::config::DEFAULT_DATA_DIR;

#[derive(Debug, Args)]
pub struct FsckArgs {
    #[arg(long, env = "PORTCULLIS_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: FsckArgs) -> ExitCode {
    let report = match crate::fsck::check(&args.data_dir) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: fsck could not run: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", report.text());
    }
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
