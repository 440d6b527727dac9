//! `portcullis migrate`: `portcullis-storage migrate` under the gateway's name, with the
//! same flags and code ([`portcullis_storage::cli::migrate`]): copies a stopped gateway's
//! data directory (blob files and meta.redb) to S3 + PostgreSQL.

use portcullis_storage::cli::MigrateArgs;

pub fn run(args: MigrateArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(portcullis_storage::cli::migrate(args))
}
