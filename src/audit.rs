//! The audit stream: one JSON line per authorization decision on a registry, trust or
//! repository-API request, per admin-API action and per token-endpoint request, each
//! with the authenticated principal and the client address. It has its own destination
//! (`--audit-log stderr|stdout|<file>`) and is written apart from the logs, so no log
//! level or `RUST_LOG` filter silences it. Records never carry a password, token or
//! request body.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

use crate::identity::Principal;

/// Where audit records go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AuditTarget {
    /// With the logs (they share one writer, so lines never interleave).
    #[default]
    Stderr,
    Stdout,
    /// Appended to this file (created owner-only).
    File(PathBuf),
    /// Not written (load tests; an operator who audits at a proxy instead).
    Off,
}

impl AuditTarget {
    /// `stderr`, `stdout`, `off`, or a file path.
    pub fn parse(value: &str) -> AuditTarget {
        match value {
            "off" => AuditTarget::Off,
            "stderr" => AuditTarget::Stderr,
            "stdout" => AuditTarget::Stdout,
            path => AuditTarget::File(PathBuf::from(path)),
        }
    }
}

/// Records waiting for the writer thread; when full, the request waits (nothing is
/// dropped: an audit trail with gaps is worth little).
const AUDIT_QUEUE_LINES: usize = 8192;

/// The audit sink. Cloning shares the destination; [`Audit::default`] writes nowhere
/// (tests and tools that open a gateway without serving it).
#[derive(Debug, Clone, Default)]
pub struct Audit {
    writer: Option<NonBlocking>,
}

impl Audit {
    /// Writes to `target`; `stderr` is the logs' own writer. The guard flushes what is
    /// queued when dropped (`None` when the logs' guard does that).
    pub fn open(
        target: &AuditTarget,
        stderr: &NonBlocking,
    ) -> std::io::Result<(Audit, Option<WorkerGuard>)> {
        let queue = |writer: Box<dyn Write + Send>| {
            NonBlockingBuilder::default()
                .lossy(false)
                .buffered_lines_limit(AUDIT_QUEUE_LINES)
                .thread_name("portcullis-audit")
                .finish(writer)
        };
        let (writer, guard) = match target {
            AuditTarget::Off => return Ok((Audit::default(), None)),
            AuditTarget::Stderr => (stderr.clone(), None),
            AuditTarget::Stdout => {
                let (writer, guard) = queue(Box::new(std::io::stdout()));
                (writer, Some(guard))
            }
            AuditTarget::File(path) => {
                let mut options = OpenOptions::new();
                options.create(true).append(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let file = options.open(path).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("opening the audit log `{}`: {e}", path.display()),
                    )
                })?;
                let (writer, guard) = queue(Box::new(file));
                (writer, Some(guard))
            }
        };
        Ok((
            Audit {
                writer: Some(writer),
            },
            guard,
        ))
    }

    /// Whether records are written: callers skip building one when not (`--audit-log off`
    /// is for load tests, where that work would be measured).
    pub fn is_on(&self) -> bool {
        self.writer.is_some()
    }

    /// Writes one record as a JSON line, stamped with the time.
    pub fn record(&self, record: &Record<'_>) {
        let Some(writer) = &self.writer else {
            return;
        };
        #[derive(Serialize)]
        struct Stamped<'a> {
            time: String,
            #[serde(flatten)]
            record: &'a Record<'a>,
        }
        let time = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        let mut line = match serde_json::to_vec(&Stamped { time, record }) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "encoding an audit record");
                return;
            }
        };
        line.push(b'\n');
        // One write is one queued line: records never interleave.
        if let Err(e) = writer.clone().write_all(&line) {
            tracing::error!(error = %e, "writing an audit record");
        }
    }
}

/// What a handler adds to the audit record of its request (a response extension), e.g.
/// the content-trust status it set.
#[derive(Debug, Clone)]
pub struct Detail(pub serde_json::Value);

/// Who made a request, from where.
#[derive(Debug, Clone, Serialize)]
pub struct Actor<'a> {
    /// `admin`, `anonymous`, `token:<name>/<password slot>`; `-` before authentication.
    pub principal: String,
    pub client: Option<IpAddr>,
    pub request_id: &'a str,
}

impl Actor<'_> {
    pub fn principal(principal: Option<&Principal>) -> String {
        match principal {
            Some(Principal::Token { name, slot }) => format!("token:{name}/{}", slot.as_str()),
            Some(Principal::Admin) => "admin".to_owned(),
            Some(Principal::Anonymous) => "anonymous".to_owned(),
            None => "-".to_owned(),
        }
    }
}

/// One audit record.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    /// A policy decision on a request (registry, trust data, repository API).
    Authorization {
        #[serde(flatten)]
        actor: Actor<'a>,
        method: &'a str,
        path: &'a str,
        /// `allow`, or why not: `deny`, `authentication_required`,
        /// `insufficient_scope`, `unsigned`.
        decision: &'static str,
        /// The refusal as the client got it.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// An admin-API request (the admin authenticated, or a failed attempt).
    Admin {
        #[serde(flatten)]
        actor: Actor<'a>,
        /// What was done (`token.create`, `content_trust.update`…).
        action: &'a str,
        method: &'a str,
        path: &'a str,
        status: u16,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<serde_json::Value>,
    },
    /// A token-endpoint request: the token issued and what it grants, or why not.
    Token {
        #[serde(flatten)]
        actor: Actor<'a>,
        /// `basic` (GET), `password` or `refresh_token` (POST).
        grant: &'a str,
        status: u16,
        /// The granted scopes (`repository:name:pull,push`), when issued.
        #[serde(skip_serializing_if = "Option::is_none")]
        scopes: Option<Vec<String>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A login refused unchecked: too many failed logins for the name or the address.
    LoginThrottled {
        client: Option<IpAddr>,
        user: &'a str,
        /// Seconds until it may try again (the `Retry-After` it got).
        retry_after: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_off_writes_nothing() {
        assert_eq!(AuditTarget::parse("off"), AuditTarget::Off);
        assert_eq!(AuditTarget::parse("stdout"), AuditTarget::Stdout);
        assert_eq!(
            AuditTarget::parse("/var/log/audit.jsonl"),
            AuditTarget::File(PathBuf::from("/var/log/audit.jsonl"))
        );
        let (stderr, _guard) = tracing_appender::non_blocking(std::io::sink());
        let (audit, guard) = Audit::open(&AuditTarget::Off, &stderr).unwrap();
        assert!(audit.writer.is_none() && guard.is_none());
    }
}
