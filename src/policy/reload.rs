//! Policy reload: the same directories re-read on SIGHUP or when a policy file changes
//! (polled), validated, and swapped in as a new generation; on error the previous
//! policies stay in force.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::analysis::Loaded;
use super::engine::PolicyEngine;
use super::files::{self, PolicyError};

impl PolicyEngine {
    /// Re-reads the same directories; on error the previous set stays in force.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let policies = files::load_policies(&self.schema, &self.dirs, &self.files)?;
        let generation = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.loaded
            .store(Arc::new(Loaded::new(policies, generation)?));
        Ok(())
    }

    /// Spawns, on the current tokio runtime, SIGHUP handling and a poll of the policy
    /// files (names, sizes, mtimes every 2 s) that reload and log the outcome.
    pub fn spawn_reloader(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("policy reloader not started: no tokio runtime");
            return;
        };
        let engine = Arc::clone(self);
        runtime.spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut hangup = signal(SignalKind::hangup())
                .inspect_err(|e| tracing::warn!("cannot watch SIGHUP: {e}"))
                .ok();
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            let mut seen = files::fingerprint(&engine.dirs);
            loop {
                let reason = tokio::select! {
                    Some(()) = async {
                        match hangup.as_mut() {
                            Some(h) => h.recv().await,
                            None => std::future::pending().await,
                        }
                    } => "SIGHUP",
                    _ = tick.tick() => {
                        let now = files::fingerprint(&engine.dirs);
                        if now == seen {
                            continue;
                        }
                        seen = now;
                        "policy files changed"
                    }
                };
                match engine.reload() {
                    Ok(()) => tracing::info!(
                        reason,
                        policies = engine.policy_count(),
                        "policies reloaded"
                    ),
                    Err(e) => tracing::error!(
                        reason,
                        error = %e,
                        "policy reload failed; previous policies stay in force"
                    ),
                }
            }
        });
    }
}
