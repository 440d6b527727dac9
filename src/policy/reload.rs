//! Policy reload: the same directories re-read on SIGHUP or when a policy file changes
//! (polled), or a new pushed set from the control plane, validated together and swapped
//! in as a new generation; on error the previous policies stay in force. Reloads are
//! counted for `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::Duration;

use super::analysis::Loaded;
use super::engine::PolicyEngine;
use super::files::{self, PolicyError, PolicyFile, PushedSet};

/// Policy loads since start (for `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReloadStats {
    pub successes: u64,
    pub failures: u64,
    /// Unix seconds of the last successful load (the first load counts).
    pub last_success: u64,
}

#[derive(Debug, Default)]
pub(super) struct ReloadCounters {
    successes: AtomicU64,
    failures: AtomicU64,
    last_success: AtomicU64,
}

impl ReloadCounters {
    /// Counters of an engine whose policies were loaded just now.
    pub(super) fn started() -> ReloadCounters {
        ReloadCounters {
            last_success: AtomicU64::new(unix_now()),
            ..ReloadCounters::default()
        }
    }
}

fn unix_now() -> u64 {
    u64::try_from(crate::identity::now_unix()).unwrap_or(0)
}

impl PolicyEngine {
    /// Re-reads the same directories (with the pushed set in force); on error the
    /// previous set stays in force. Counted either way ([`PolicyEngine::reload_stats`]).
    pub fn reload(&self) -> Result<(), PolicyError> {
        let pushed = self.pushed.lock().unwrap_or_else(PoisonError::into_inner);
        let pushed_now = pushed.clone();
        self.swap_in(pushed, pushed_now)
    }

    /// Puts `set` in force with the directories' files (validated together); on error
    /// the previous policies, and pushed set, stay in force.
    pub fn set_pushed(&self, set: Option<PushedSet>) -> Result<(), PolicyError> {
        let pushed = self.pushed.lock().unwrap_or_else(PoisonError::into_inner);
        self.swap_in(pushed, set)
    }

    /// Whether `files` would load as the pushed set beside the directories' files.
    /// Changes nothing.
    pub fn check_pushed(&self, files: Vec<PolicyFile>) -> Result<(), PolicyError> {
        let set = PushedSet {
            version: None,
            files,
        };
        files::load_policies(&self.schema, &self.dirs, &self.files, Some(&set)).map(|_| ())
    }

    /// The version of the pushed set in force (0: none).
    pub fn pushed_version(&self) -> i64 {
        self.pushed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(|set| set.version)
            .unwrap_or(0)
    }

    fn swap_in(
        &self,
        mut pushed: MutexGuard<'_, Option<PushedSet>>,
        set: Option<PushedSet>,
    ) -> Result<(), PolicyError> {
        let loaded = files::load_policies(&self.schema, &self.dirs, &self.files, set.as_ref())
            .and_then(|p| {
                let generation = self.next_id.fetch_add(1, Ordering::Relaxed);
                Loaded::new(p, generation)
            });
        let counters = &self.reloads;
        match loaded {
            Ok(loaded) => {
                *pushed = set;
                self.loaded.store(Arc::new(loaded));
                counters.successes.fetch_add(1, Ordering::Relaxed);
                counters.last_success.store(unix_now(), Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                counters.failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Reloads since start and when the policies in force were loaded.
    pub fn reload_stats(&self) -> ReloadStats {
        let counters = &self.reloads;
        ReloadStats {
            successes: counters.successes.load(Ordering::Relaxed),
            failures: counters.failures.load(Ordering::Relaxed),
            last_success: counters.last_success.load(Ordering::Relaxed),
        }
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
