//! Failed-login throttling: Basic credentials (registry, token endpoint, admin API)
//! are refused with `429 TOOMANYREQUESTS` and `Retry-After` once a user name, or a
//! client address, has failed `max_failures` times within the window (counted from the
//! first failure). A refused attempt is not checked at all (the password could not be
//! learnt from it) and leaves one audit record.
//!
//! A correct password clears its user name's count only: an address guessing at many
//! names stays throttled however many of its own logins succeed. The counts live in
//! bounded moka caches that forget a key when its window has passed.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

use moka::sync::Cache;
use portcullis_storage::CacheSize;

use super::config::LoginThrottle;
use super::errors::GatewayError;
use crate::audit::{Audit, Record};

/// Distinct user names and addresses counted at once (each entry is a few dozen bytes).
const CAPACITY: u64 = 100_000;

/// Failures of one key within its window.
#[derive(Debug)]
struct Failures {
    first: Instant,
    count: u32,
}

pub struct Throttle {
    settings: LoginThrottle,
    by_user: Cache<String, Arc<Mutex<Failures>>>,
    by_client: Cache<IpAddr, Arc<Mutex<Failures>>>,
    audit: Audit,
}

impl Throttle {
    pub fn new(settings: LoginThrottle, audit: Audit) -> Throttle {
        Throttle {
            settings,
            by_user: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(settings.window)
                .build(),
            by_client: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(settings.window)
                .build(),
            audit,
        }
    }

    /// The failure counters' sizes, per user name and per client address.
    pub fn cache_sizes(&self) -> [CacheSize; 2] {
        [
            CacheSize::counted("login_failures_by_user", &self.by_user),
            CacheSize::counted("login_failures_by_client", &self.by_client),
        ]
    }

    /// Seconds until a throttled key may try again; `None` when it is not throttled.
    fn blocked(&self, failures: Option<Arc<Mutex<Failures>>>) -> Option<u64> {
        let failures = failures?;
        let failures = failures.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = failures.first.elapsed();
        if failures.count < self.settings.max_failures || elapsed >= self.settings.window {
            return None;
        }
        // Rounded up: retrying after exactly this many seconds is allowed.
        let left = self.settings.window - elapsed;
        Some(left.as_secs() + u64::from(left.subsec_nanos() > 0))
    }

    /// Refuses the attempt of `user` from `client` when either is throttled, with an
    /// audit record.
    pub fn check(&self, user: &str, client: Option<IpAddr>) -> Result<(), GatewayError> {
        let by_user = self.blocked(self.by_user.get(user));
        let by_client = client.and_then(|ip| self.blocked(self.by_client.get(&ip)));
        let (retry_after, reason) = match (by_user, by_client) {
            (None, None) => return Ok(()),
            (Some(secs), _) => (
                secs,
                format!(
                    "too many failed logins for `{}`",
                    super::errors::clip(user, 64)
                ),
            ),
            (None, Some(secs)) => (secs, "too many failed logins from this address".to_owned()),
        };
        self.audit.record(&Record::LoginThrottled {
            client,
            user,
            retry_after,
        });
        Err(GatewayError::TooManyRequests {
            reason,
            retry_after,
        })
    }

    /// Counts a failed attempt against `user` and `client`.
    pub fn failed(&self, user: &str, client: Option<IpAddr>) {
        let window = self.settings.window;
        let count = |entry: Arc<Mutex<Failures>>| {
            let mut f = entry.lock().unwrap_or_else(|p| p.into_inner());
            if f.first.elapsed() >= window {
                *f = Failures {
                    first: Instant::now(),
                    count: 0,
                };
            }
            f.count = f.count.saturating_add(1);
        };
        let fresh = || {
            Arc::new(Mutex::new(Failures {
                first: Instant::now(),
                count: 0,
            }))
        };
        count(self.by_user.get_with(user.to_owned(), fresh));
        if let Some(ip) = client {
            count(self.by_client.get_with(ip, fresh));
        }
    }

    /// A correct password for `user`: its own count starts again.
    pub fn succeeded(&self, user: &str) {
        if self.by_user.contains_key(user) {
            self.by_user.invalidate(user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(max: u32) -> Throttle {
        Throttle::new(
            LoginThrottle {
                max_failures: max,
                window: Duration::from_secs(60),
            },
            Audit::default(),
        )
    }

    #[test]
    fn names_and_addresses_are_throttled_apart() {
        let t = throttle(2);
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        t.failed("ci", a);
        assert!(t.check("ci", a).is_ok());
        t.failed("ci", b);
        // The name has failed twice (from two addresses): throttled from anywhere.
        let refused = t
            .check("ci", Some(IpAddr::from([10, 0, 0, 3])))
            .unwrap_err();
        match refused {
            GatewayError::TooManyRequests { retry_after, .. } => {
                assert!((1..=60).contains(&retry_after));
            }
            other => panic!("{other:?}"),
        }
        assert!(t.check("other", Some(IpAddr::from([10, 0, 0, 3]))).is_ok());
        // Address a guesses at other names: throttled for every name.
        t.failed("x", a);
        assert!(t.check("fresh", a).is_err());
        // Its correct password for `fresh` clears that name only, not the address.
        t.succeeded("fresh");
        assert!(t.check("fresh", a).is_err());
        assert!(t.check("fresh", b).is_ok());
    }
}
