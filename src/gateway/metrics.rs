//! The gateway's Prometheus metrics, named by the Prometheus conventions (counters end
//! `_total`, sizes are `_bytes`, durations `_seconds`): requests by route kind, method
//! and status, latency, body bytes in and out, policy decisions, authentication results,
//! cache lookups and sizes, backend errors, storage GC, policy reloads, build info and
//! (on Linux) the process's own metrics, rendered as text for `/metrics`. Each `Metrics`
//! has its own registry, so tests and several gateways in one process do not collide.
//!
//! The hot path never looks a series up by its labels: every series a request touches
//! is resolved once and kept (`with_label_values` hashes the values and searches the
//! family's map under its lock on every call).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::Duration;

use portcullis_storage::CacheSize;
use prometheus::{
    Counter, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    received: IntCounterVec,
    sent: IntCounterVec,
    decisions: IntCounterVec,
    authentications: IntCounterVec,
    /// Requests over HTTP/1.x and over HTTP/2.
    http1: IntCounter,
    http2: IntCounter,
    upstream_errors: [(BackendError, IntCounter); BackendError::ALL.len()],
    storage_errors: [(BackendError, IntCounter); BackendError::ALL.len()],
    handles: Handles,
    /// Counters kept elsewhere (caches, GC, policy reloads), brought up to date on
    /// each render.
    mirrored: Mutex<Mirrored>,
}

/// Counted requests, their latency and body bytes, by (route, method, status).
type RequestSeries =
    HashMap<(&'static str, &'static str, &'static str), RequestHandles, ahash::RandomState>;

struct RequestHandles {
    count: IntCounter,
    latency: Histogram,
    received: IntCounter,
    sent: IntCounter,
}

/// Each series is created on first use, as `with_label_values` would: `/metrics` lists
/// only what happened.
struct Handles {
    allow: OnceLock<IntCounter>,
    deny: OnceLock<IntCounter>,
    /// By `record_authentication`'s result labels.
    authentications: [(&'static str, OnceLock<IntCounter>); 5],
    /// Filled on first use of each label combination (a small, bounded set).
    requests: RwLock<RequestSeries>,
}

/// The results `record_authentication` is given.
const AUTHENTICATION_RESULTS: [&str; 5] = ["anonymous", "admin", "basic", "bearer", "invalid"];

/// How a backend (the upstream registry or the bundled store) failed a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendError {
    /// No connection (refused, unreachable, connect timeout).
    Connect,
    /// The TLS handshake failed.
    Tls,
    /// Reading or writing the exchange timed out.
    Timeout,
    /// The connection broke mid-exchange.
    Io,
    /// The backend answered 5xx.
    Status,
    /// A lookup the gateway made on its own (tag existence, catalog, deletes) failed.
    Lookup,
    Other,
}

impl BackendError {
    const ALL: [BackendError; 7] = [
        BackendError::Connect,
        BackendError::Tls,
        BackendError::Timeout,
        BackendError::Io,
        BackendError::Status,
        BackendError::Lookup,
        BackendError::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            BackendError::Connect => "connect",
            BackendError::Tls => "tls",
            BackendError::Timeout => "timeout",
            BackendError::Io => "io",
            BackendError::Status => "status_5xx",
            BackendError::Lookup => "lookup",
            BackendError::Other => "other",
        }
    }
}

/// Which backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Upstream,
    Storage,
}

/// Hit and miss counts of one cache (`authn`: verified credentials, `decision`:
/// policy decisions), as its owner reports them.
#[derive(Debug, Clone, Copy)]
pub struct CacheReading {
    pub cache: &'static str,
    pub hits: u64,
    pub misses: u64,
}

/// Policy reloads since start, as the policy engine reports them.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReloadReading {
    pub successes: u64,
    pub failures: u64,
    /// Unix seconds of the last successful load (the first load counts).
    pub last_success: u64,
}

/// What `/metrics` copies in from the components that keep their own counts.
#[derive(Debug, Clone, Default)]
pub struct Readings {
    pub caches: [Option<CacheReading>; 2],
    pub reloads: ReloadReading,
    /// The bundled store's GC; `None` with an upstream.
    pub gc: Option<portcullis_storage::GcStats>,
    /// How full each in-memory cache is.
    pub cache_sizes: Vec<CacheSize>,
}

/// The mirrored counters and the cache gauges (see [`Metrics::render`]).
struct Mirrored {
    caches: IntCounterVec,
    reloads: IntCounterVec,
    last_reload: IntGauge,
    gc_runs: IntCounterVec,
    gc_removed: IntCounterVec,
    gc_bytes: IntCounter,
    gc_seconds: Counter,
    cache_entries: IntGaugeVec,
    cache_bytes: IntGaugeVec,
}

/// Latency buckets (seconds): sub-millisecond manifest hits up to multi-minute blobs.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let family = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(family.clone()))?;
    Ok(family)
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = counter_vec(
            &registry,
            "portcullis_requests_total",
            "Requests answered, by route kind, method and status.",
            &["route", "method", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_request_duration_seconds",
                "Time from request start to the end of the response, by route kind.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        registry.register(Box::new(latency.clone()))?;
        let received = counter_vec(
            &registry,
            "portcullis_request_body_bytes_total",
            "Request body bytes read from clients, by route kind.",
            &["route"],
        )?;
        let sent = counter_vec(
            &registry,
            "portcullis_response_body_bytes_total",
            "Response body bytes sent to clients, by route kind.",
            &["route"],
        )?;
        let decisions = counter_vec(
            &registry,
            "portcullis_decisions_total",
            "Policy decisions on registry requests.",
            &["decision"],
        )?;
        let authentications = counter_vec(
            &registry,
            "portcullis_authentications_total",
            "Credential checks, by result (anonymous, basic, bearer, admin, invalid).",
            &["result"],
        )?;
        let protocols = counter_vec(
            &registry,
            "portcullis_requests_by_protocol_total",
            "Requests answered, by HTTP protocol (http/1.1, h2).",
            &["protocol"],
        )?;
        let upstream = counter_vec(
            &registry,
            "portcullis_upstream_errors_total",
            "Failures of the upstream registry, by kind.",
            &["kind"],
        )?;
        let storage = counter_vec(
            &registry,
            "portcullis_storage_errors_total",
            "Failures of the bundled store, by kind.",
            &["kind"],
        )?;
        let build = IntGaugeVec::new(
            Opts::new(
                "portcullis_build_info",
                "The running build: version, target OS and architecture (always 1).",
            ),
            &["version", "os", "arch"],
        )?;
        registry.register(Box::new(build.clone()))?;
        build
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                std::env::consts::ARCH,
            ])
            .set(1);
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let mirrored = Mirrored {
            caches: counter_vec(
                &registry,
                "portcullis_cache_lookups_total",
                "Cache lookups: authn (verified credentials), decision (policy), by result.",
                &["cache", "result"],
            )?,
            reloads: counter_vec(
                &registry,
                "portcullis_policy_reloads_total",
                "Policy reloads (file changes, SIGHUP, admin API), by result.",
                &["result"],
            )?,
            last_reload: register(
                &registry,
                IntGauge::new(
                    "portcullis_policy_last_reload_success_timestamp_seconds",
                    "When the policies in force were loaded (Unix time).",
                )?,
            )?,
            gc_runs: counter_vec(
                &registry,
                "portcullis_gc_runs_total",
                "Garbage-collection passes of the bundled store, by result.",
                &["result"],
            )?,
            gc_removed: counter_vec(
                &registry,
                "portcullis_gc_removed_total",
                "What garbage collection removed, by kind (manifest, blob).",
                &["kind"],
            )?,
            gc_bytes: register(
                &registry,
                IntCounter::new(
                    "portcullis_gc_removed_bytes_total",
                    "Bytes of the blobs garbage collection removed.",
                )?,
            )?,
            gc_seconds: register(
                &registry,
                Counter::new(
                    "portcullis_gc_duration_seconds_total",
                    "Time spent in garbage-collection passes.",
                )?,
            )?,
            cache_entries: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "portcullis_cache_entries",
                        "Entries held by each in-memory cache.",
                    ),
                    &["cache"],
                )?,
            )?,
            cache_bytes: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "portcullis_cache_bytes",
                        "Estimated bytes held by each cache bounded by bytes (ARCHITECTURE.md, Memory).",
                    ),
                    &["cache"],
                )?,
            )?,
        };
        let errors = |family: &IntCounterVec| {
            BackendError::ALL.map(|kind| (kind, family.with_label_values(&[kind.label()])))
        };
        Ok(Metrics {
            upstream_errors: errors(&upstream),
            storage_errors: errors(&storage),
            handles: Handles {
                allow: OnceLock::new(),
                deny: OnceLock::new(),
                authentications: AUTHENTICATION_RESULTS.map(|result| (result, OnceLock::new())),
                requests: RwLock::new(RequestSeries::default()),
            },
            registry,
            requests,
            latency,
            received,
            sent,
            decisions,
            authentications,
            http1: protocols.with_label_values(&["http/1.1"]),
            http2: protocols.with_label_values(&["h2"]),
            mirrored: Mutex::new(mirrored),
        })
    }

    /// One finished request's protocol: `h2` or anything else (HTTP/1.x).
    pub fn observe_protocol(&self, protocol: &str) {
        if protocol == "h2" {
            self.http2.inc();
        } else {
            self.http1.inc();
        }
    }

    /// One finished request. `route` is a route kind (`manifest_get`, `blob_get`,
    /// `token`…); `received` and `sent` are body bytes.
    pub fn observe_request(
        &self,
        route: &'static str,
        method: &str,
        status: u16,
        elapsed: Duration,
        (received, sent): (u64, u64),
    ) {
        // Clients choose the method: a fixed label set keeps the series count bounded.
        let method = match method {
            "GET" => "GET",
            "HEAD" => "HEAD",
            "PUT" => "PUT",
            "POST" => "POST",
            "PATCH" => "PATCH",
            "DELETE" => "DELETE",
            "OPTIONS" => "OPTIONS",
            _ => "other",
        };
        let key = (route, method, status_label(status));
        let observe = |h: &RequestHandles| {
            h.count.inc();
            h.latency.observe(elapsed.as_secs_f64());
            h.received.inc_by(received);
            h.sent.inc_by(sent);
        };
        // A poisoned lock only means another request panicked mid-insert; the map is
        // still consistent (inserts are single calls).
        let known = self
            .handles
            .requests
            .read()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(handles) = known.get(&key) {
            observe(handles);
            return;
        }
        drop(known);
        let handles = RequestHandles {
            count: self.requests.with_label_values(&[key.0, key.1, key.2]),
            latency: self.latency.with_label_values(&[route]),
            received: self.received.with_label_values(&[route]),
            sent: self.sent.with_label_values(&[route]),
        };
        observe(&handles);
        self.handles
            .requests
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, handles);
    }

    pub fn record_decision(&self, allowed: bool) {
        let (handle, label) = if allowed {
            (&self.handles.allow, "allow")
        } else {
            (&self.handles.deny, "deny")
        };
        handle
            .get_or_init(|| self.decisions.with_label_values(&[label]))
            .inc();
    }

    /// `result`: `anonymous`, `admin`, `basic`, `bearer` or `invalid`.
    pub fn record_authentication(&self, result: &str) {
        match self
            .handles
            .authentications
            .iter()
            .find(|(r, _)| *r == result)
        {
            Some((label, counter)) => counter
                .get_or_init(|| self.authentications.with_label_values(&[label]))
                .inc(),
            None => self.authentications.with_label_values(&[result]).inc(),
        }
    }

    /// One failure of `backend`.
    pub fn record_backend_error(&self, backend: Backend, kind: BackendError) {
        let family = match backend {
            Backend::Upstream => &self.upstream_errors,
            Backend::Storage => &self.storage_errors,
        };
        if let Some((_, counter)) = family.iter().find(|(k, _)| *k == kind) {
            counter.inc();
        }
    }

    /// The Prometheus text exposition of every metric. Counters kept by other
    /// components (`readings`) are brought up to their current values first.
    pub fn render(&self, readings: &Readings) -> String {
        self.mirror(readings);
        let mut out = Vec::new();
        // Encoding into a Vec only fails on metric families that cannot exist here.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Advances each mirrored counter to its source's value. The sources only grow and
    /// only this (serialised) code adds to the mirrors, so adding the difference keeps
    /// them equal.
    fn mirror(&self, readings: &Readings) {
        fn advance(counter: &IntCounter, value: u64) {
            counter.inc_by(value.saturating_sub(counter.get()));
        }
        let m = self.mirrored.lock().unwrap_or_else(|e| e.into_inner());
        for reading in readings.caches.iter().flatten() {
            advance(
                &m.caches.with_label_values(&[reading.cache, "hit"]),
                reading.hits,
            );
            advance(
                &m.caches.with_label_values(&[reading.cache, "miss"]),
                reading.misses,
            );
        }
        let reloads = readings.reloads;
        advance(
            &m.reloads.with_label_values(&["success"]),
            reloads.successes,
        );
        advance(&m.reloads.with_label_values(&["failure"]), reloads.failures);
        m.last_reload
            .set(i64::try_from(reloads.last_success).unwrap_or(i64::MAX));
        if let Some(gc) = readings.gc {
            advance(&m.gc_runs.with_label_values(&["success"]), gc.runs);
            advance(&m.gc_runs.with_label_values(&["failure"]), gc.failures);
            advance(&m.gc_removed.with_label_values(&["manifest"]), gc.manifests);
            advance(&m.gc_removed.with_label_values(&["blob"]), gc.blobs);
            advance(&m.gc_bytes, gc.bytes);
            let seconds = Duration::from_nanos(gc.nanos).as_secs_f64();
            m.gc_seconds.inc_by((seconds - m.gc_seconds.get()).max(0.0));
        }
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        for size in &readings.cache_sizes {
            m.cache_entries
                .with_label_values(&[size.cache])
                .set(gauge(size.entries));
            if let Some(bytes) = size.bytes {
                m.cache_bytes
                    .with_label_values(&[size.cache])
                    .set(gauge(bytes));
            }
        }
    }
}

fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> Result<M, prometheus::Error> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// Status codes as static labels, so the label set stays small and allocation-free.
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        206 => "206",
        304 => "304",
        307 => "307",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        413 => "413",
        416 => "416",
        500 => "500",
        502 => "502",
        503 => "503",
        0 => "none",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_text_has_every_family_with_labels() {
        let m = Metrics::new().unwrap();
        m.observe_request(
            "manifest_get",
            "GET",
            200,
            Duration::from_millis(3),
            (0, 10),
        );
        m.observe_request("blob_get", "HEAD", 404, Duration::from_millis(1), (0, 0));
        m.record_decision(true);
        m.record_decision(false);
        m.record_authentication("bearer");
        m.observe_protocol("h2");
        m.record_backend_error(Backend::Upstream, BackendError::Connect);
        // Cached series count on: a second observation adds to the first.
        m.observe_request(
            "manifest_get",
            "GET",
            200,
            Duration::from_millis(3),
            (5, 10),
        );
        m.observe_request(
            "manifest_get",
            "BREW",
            200,
            Duration::from_millis(3),
            (0, 0),
        );
        m.record_authentication("bearer");
        let mut readings = Readings {
            caches: [
                Some(CacheReading {
                    cache: "authn",
                    hits: 7,
                    misses: 2,
                }),
                None,
            ],
            reloads: ReloadReading {
                successes: 1,
                failures: 0,
                last_success: 1_700_000_000,
            },
            gc: Some(portcullis_storage::GcStats {
                runs: 2,
                bytes: 4096,
                nanos: 1_500_000_000,
                ..Default::default()
            }),
            cache_sizes: vec![
                CacheSize {
                    cache: "manifests",
                    entries: 3,
                    bytes: Some(4200),
                },
                CacheSize {
                    cache: "upload_sessions",
                    entries: 5,
                    bytes: None,
                },
            ],
        };
        m.render(&readings);
        readings.caches[0] = Some(CacheReading {
            cache: "authn",
            hits: 9,
            misses: 2,
        });
        let text = m.render(&readings);
        for line in [
            "portcullis_requests_total{method=\"GET\",route=\"manifest_get\",status=\"200\"} 2",
            "portcullis_requests_total{method=\"other\",route=\"manifest_get\",status=\"200\"} 1",
            "portcullis_request_duration_seconds_count{route=\"manifest_get\"} 3",
            "portcullis_request_body_bytes_total{route=\"manifest_get\"} 5",
            "portcullis_response_body_bytes_total{route=\"manifest_get\"} 20",
            "portcullis_decisions_total{decision=\"deny\"} 1",
            "portcullis_authentications_total{result=\"bearer\"} 2",
            "portcullis_requests_by_protocol_total{protocol=\"h2\"} 1",
            "portcullis_upstream_errors_total{kind=\"connect\"} 1",
            "portcullis_storage_errors_total{kind=\"io\"} 0",
            // Mirrored counters equal their source after any number of renders.
            "portcullis_cache_lookups_total{cache=\"authn\",result=\"hit\"} 9",
            "portcullis_policy_reloads_total{result=\"success\"} 1",
            "portcullis_policy_last_reload_success_timestamp_seconds 1700000000",
            "portcullis_gc_runs_total{result=\"success\"} 2",
            "portcullis_gc_removed_bytes_total 4096",
            "portcullis_gc_duration_seconds_total 1.5",
            "portcullis_cache_entries{cache=\"manifests\"} 3",
            "portcullis_cache_bytes{cache=\"manifests\"} 4200",
            "portcullis_cache_entries{cache=\"upload_sessions\"} 5",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("portcullis_request_duration_seconds_bucket{route=\"blob_get\""));
        assert!(!text.contains("portcullis_cache_bytes{cache=\"upload_sessions\"}"));
        assert!(text.contains("portcullis_build_info{arch="));
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_resident_memory_bytes "));
    }
}
