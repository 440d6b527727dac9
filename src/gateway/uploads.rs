//! The cap on blob upload sessions one principal has open at once. Each open session
//! holds state (and, in the bundled store, a partial file) until it completes, is
//! cancelled or expires, so a token could otherwise open them without end.
//!
//! Sessions are learnt from the answers the client gets, whichever backend gave them
//! (the bundled store or an upstream): a `202` to `POST …/blobs/uploads/` opens the
//! session its `Location` names; a `201` to its `PUT`, a `204` to its `DELETE` or a
//! `404` for it close it; one idle longer than the upload expiry is forgotten. An
//! upload start over the cap is refused `429 TOOMANYREQUESTS` with `Retry-After`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use moka::sync::Cache;
use portcullis_storage::CacheSize;

use super::errors::GatewayError;

/// Principals whose sessions are tracked at once.
const CAPACITY: u64 = 100_000;
/// What a refused client is told to wait: sessions free up as uploads finish.
const RETRY_AFTER_SECS: u64 = 10;

type Sessions = Arc<Mutex<HashMap<String, Instant>>>;

pub struct UploadSessions {
    max: usize,
    /// Sessions idle longer are forgotten (the store removes them too).
    expiry: Duration,
    /// Principal (as the audit names it) → session id → last activity.
    open: Cache<String, Sessions>,
}

impl UploadSessions {
    pub fn new(max: usize, expiry: Duration) -> UploadSessions {
        UploadSessions {
            max,
            expiry,
            open: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_idle(expiry)
                .build(),
        }
    }

    /// The tracked principals.
    pub fn cache_size(&self) -> CacheSize {
        CacheSize::counted("upload_sessions", &self.open)
    }

    /// Refuses a new upload session for `principal` when it has `max` open.
    pub fn admit(&self, principal: &str) -> Result<(), GatewayError> {
        let Some(sessions) = self.open.get(principal) else {
            return Ok(());
        };
        let mut sessions = sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, seen| seen.elapsed() < self.expiry);
        if sessions.len() < self.max {
            return Ok(());
        }
        Err(GatewayError::TooManyRequests {
            reason: format!(
                "{principal} has {} blob upload sessions open, the limit: finish or cancel one",
                sessions.len()
            ),
            retry_after: RETRY_AFTER_SECS,
        })
    }

    /// Learns from an answered upload request (`start`: an upload start, else a request
    /// on a session at `path`).
    pub fn observe(
        &self,
        principal: &str,
        start: bool,
        (method, path): (&Method, &str),
        status: StatusCode,
        location: Option<&str>,
    ) {
        if start {
            if status != StatusCode::ACCEPTED {
                return;
            }
            let Some(id) = location.and_then(session_id) else {
                return;
            };
            let sessions = self.open.get_with(principal.to_owned(), Sessions::default);
            let mut sessions = sessions.lock().unwrap_or_else(|p| p.into_inner());
            sessions.insert(id.to_owned(), Instant::now());
            return;
        }
        let (Some(id), Some(sessions)) = (session_id(path), self.open.get(principal)) else {
            return;
        };
        let mut sessions = sessions.lock().unwrap_or_else(|p| p.into_inner());
        let closed = status == StatusCode::NOT_FOUND
            || (*method == Method::PUT && status == StatusCode::CREATED)
            || (*method == Method::DELETE && status.is_success());
        if closed {
            sessions.remove(id);
        } else if let Some(seen) = sessions.get_mut(id) {
            *seen = Instant::now();
        }
    }
}

/// The session id of an upload URL (`…/blobs/uploads/<id>[?query]`).
fn session_id(url: &str) -> Option<&str> {
    let path = url.split(['?', '#']).next()?;
    let (_, id) = path.rsplit_once("/blobs/uploads/")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_open_on_202_and_close_on_completion_cancel_or_404() {
        let u = UploadSessions::new(2, Duration::from_secs(60));
        let p = "token:ci/password1";
        let start = |id: &str| {
            u.observe(
                p,
                true,
                (&Method::POST, "/v2/a/blobs/uploads/"),
                StatusCode::ACCEPTED,
                Some(&format!("/v2/a/blobs/uploads/{id}?_state=x")),
            );
        };
        start("one");
        assert!(u.admit(p).is_ok());
        start("two");
        assert!(matches!(
            u.admit(p),
            Err(GatewayError::TooManyRequests { .. })
        ));
        assert!(u.admit("token:other/password1").is_ok());
        // A PATCH keeps it open; the PUT that completes it closes it.
        let on = |method, status| {
            u.observe(p, false, (&method, "/v2/a/blobs/uploads/one"), status, None);
        };
        on(Method::PATCH, StatusCode::ACCEPTED);
        assert!(u.admit(p).is_err());
        on(Method::PUT, StatusCode::CREATED);
        assert!(u.admit(p).is_ok());
        start("three");
        u.observe(
            p,
            false,
            (&Method::DELETE, "/v2/a/blobs/uploads/two"),
            StatusCode::NO_CONTENT,
            None,
        );
        assert!(u.admit(p).is_ok());
    }

    #[test]
    fn session_ids_come_from_upload_urls_only() {
        assert_eq!(session_id("/v2/a/b/blobs/uploads/u-1?x=y"), Some("u-1"));
        assert_eq!(session_id("/v2/a/blobs/uploads/"), None);
        assert_eq!(session_id("/v2/a/manifests/x"), None);
    }
}
