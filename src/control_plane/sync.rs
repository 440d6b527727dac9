//! Keeping a gateway's in-memory copy of control-plane records current when they live in
//! PostgreSQL: a listener on the records' notification channel wakes a refresh at once,
//! and a poll refreshes anyway every few seconds (a notification lost while the listener
//! reconnects, or a key whose overlap window ended). Embedded control planes need neither:
//! their only writer is this process, which refreshes after its own writes.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use portcullis_storage::pg::Notified;
use tokio::sync::Notify;

use super::ControlDb;

/// Something that re-reads its records from the control plane.
pub trait Refresh: Send + Sync + 'static {
    /// Re-reads and swaps in what changed; failures are logged and the copy in memory
    /// stays in force.
    fn refresh(&self) -> BoxFuture<'_, ()>;
}

/// Wakes the refresh loop on a notification, and once the listener listens again after
/// a loss (whatever was announced meanwhile).
struct Wake(Arc<Notify>);

impl Notified for Wake {
    fn notified(&self, _payload: &str) {
        self.0.notify_one();
    }

    fn listening(&self, listening: bool) {
        if listening {
            self.0.notify_one();
        }
    }
}

/// Spawns, on the current tokio runtime, the listener on `channel` and the refresh loop
/// of `target` (every `poll` at least). Nothing for an embedded control plane.
pub fn spawn(
    db: &ControlDb,
    channel: &'static str,
    application_name: &str,
    poll: Duration,
    target: Arc<dyn Refresh>,
) {
    let Some(pg) = db.postgres() else {
        return;
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(
            channel,
            "control-plane refresh not started: no tokio runtime"
        );
        return;
    };
    let wake = Arc::new(Notify::new());
    runtime.spawn(pg.listen(channel, application_name, Arc::new(Wake(Arc::clone(&wake)))));
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = wake.notified() => {}
                _ = tick.tick() => {}
            }
            target.refresh().await;
        }
    });
}
