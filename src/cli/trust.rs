//! `portcullis trust rotate-kek`: re-encrypts the server-held trust keys, and the
//! token-signing keys, under a new key-encryption passphrase. Offline: the server holds
//! `control.redb` open while it runs. Embedded control plane only: with
//! `--control-plane postgres://` it refuses (the keys there are shared by every gateway,
//! which would all need the new passphrase at once).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::control_plane::EmbeddedDb;
use crate::gateway::config::{ControlPlane, DEFAULT_DATA_DIR};
use crate::gateway::signing_keys;
use crate::trust::kek::{self, PASSPHRASE_FILE, PassphraseSource};
use crate::trust::store::TrustStore;

#[derive(Debug, Args)]
pub struct TrustArgs {
    #[command(subcommand)]
    command: TrustCommand,
}

#[derive(Debug, Subcommand)]
enum TrustCommand {
    /// Re-encrypt the server-held trust keys (timestamp, snapshot) under a new
    /// passphrase; stop the server first.
    RotateKek(RotateKekArgs),
}

#[derive(Debug, Args)]
struct RotateKekArgs {
    #[arg(long, env = "PORTCULLIS_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// File holding the current passphrase [default: <data-dir>/trust-key-passphrase].
    #[arg(
        long,
        value_name = "FILE",
        env = "PORTCULLIS_TRUST_KEY_PASSPHRASE_FILE"
    )]
    trust_key_passphrase_file: Option<PathBuf>,
    /// The current passphrase, from the environment only.
    #[arg(
        long,
        hide = true,
        env = "PORTCULLIS_TRUST_KEY_PASSPHRASE",
        hide_env_values = true
    )]
    trust_key_passphrase: Option<String>,
    /// Where the control plane lives; only `embedded` is supported here.
    #[arg(
        long,
        value_name = "embedded|postgres://...",
        env = "PORTCULLIS_CONTROL_PLANE",
        hide_env_values = true
    )]
    control_plane: Option<String>,
    /// File holding the new passphrase; without it a new one is generated into
    /// <data-dir>/trust-key-passphrase (mode 0600).
    #[arg(long, value_name = "FILE")]
    new_passphrase_file: Option<PathBuf>,
}

pub fn run(args: TrustArgs) -> anyhow::Result<()> {
    let TrustCommand::RotateKek(args) = args.command;
    let control_plane = ControlPlane::parse(args.control_plane.as_deref().unwrap_or_default())
        .map_err(|e| anyhow::anyhow!("--control-plane: {e}"))?;
    if let ControlPlane::Postgres(url) = control_plane {
        anyhow::bail!(
            "trust rotate-kek works on the embedded control plane (control.redb) only; the \
             trust keys in `{}` are shared by every gateway and cannot be re-encrypted \
             from here",
            portcullis_storage::pg::redact(&url)
        );
    }
    let path = args.data_dir.join("control.redb");
    let db = EmbeddedDb::open_existing(&path).with_context(|| {
        format!(
            "opening `{}` (is the server still running?)",
            path.display()
        )
    })?;
    let db = Arc::new(db);
    let store = TrustStore::open(Arc::clone(&db)).context("opening the trust store")?;
    let old = PassphraseSource::new(args.trust_key_passphrase_file, args.trust_key_passphrase);
    let new = PassphraseSource::new(args.new_passphrase_file.clone(), None);
    let (old_kek, _) = kek::unlock(&store, &args.data_dir, &old)?;
    let count = kek::rotate(&store, &args.data_dir, &old, &new)?;
    let (new_kek, _) = kek::unlock(&store, &args.data_dir, &new)?;
    let signing = signing_keys::reseal_embedded(&db, &old_kek, &new_kek)
        .context("re-encrypting the token-signing keys")?;
    let place = args
        .new_passphrase_file
        .unwrap_or_else(|| args.data_dir.join(PASSPHRASE_FILE));
    println!(
        "re-encrypted {count} server-held trust key(s) and {signing} token-signing key(s); \
         the passphrase is now the one in {}",
        place.display()
    );
    Ok(())
}
