//! The gateway's Prometheus metrics: requests by route kind, method and status, request
//! latency, policy decisions and authentication results, rendered as text for `/metrics`.
//! Each `Metrics` has its own registry, so tests and several gateways in one process do
//! not collide.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    decisions: IntCounterVec,
    authentications: IntCounterVec,
    caches: IntGaugeVec,
    /// Requests over HTTP/1.x and over HTTP/2, resolved once (no label lookup per request).
    http1: IntCounter,
    http2: IntCounter,
    /// The series every request touches, looked up once: `with_label_values` hashes the
    /// label values and searches the family's map under its lock on every call.
    handles: Handles,
}

/// Counted requests and their latency, by (route, method, status).
type RequestSeries = HashMap<
    (&'static str, &'static str, &'static str),
    (IntCounter, Histogram),
    ahash::RandomState,
>;

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

/// Hit and miss counts of one cache (`authn`: verified credentials, `decision`:
/// policy decisions), as its owner reports them.
#[derive(Debug, Clone, Copy)]
pub struct CacheReading {
    pub cache: &'static str,
    pub hits: u64,
    pub misses: u64,
}

/// Latency buckets (seconds): sub-millisecond manifest hits up to multi-minute blobs.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("portcullis".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Requests answered, by route kind, method and status.",
            ),
            &["route", "method", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from request start to the end of the response, by route kind.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let decisions = IntCounterVec::new(
            Opts::new("decisions_total", "Policy decisions on registry requests."),
            &["decision"],
        )?;
        let authentications = IntCounterVec::new(
            Opts::new(
                "authentications_total",
                "Credential checks, by result (anonymous, basic, bearer, admin, invalid).",
            ),
            &["result"],
        )?;
        let caches = IntGaugeVec::new(
            Opts::new(
                "cache_lookups",
                "Cache lookups since start: authn (verified credentials), decision (policy).",
            ),
            &["cache", "result"],
        )?;
        let protocols = IntCounterVec::new(
            Opts::new(
                "requests_by_protocol_total",
                "Requests answered, by HTTP protocol (http/1.1, h2).",
            ),
            &["protocol"],
        )?;
        registry.register(Box::new(protocols.clone()))?;
        registry.register(Box::new(caches.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(authentications.clone()))?;
        let handles = Handles {
            allow: OnceLock::new(),
            deny: OnceLock::new(),
            authentications: AUTHENTICATION_RESULTS.map(|result| (result, OnceLock::new())),
            requests: RwLock::new(RequestSeries::default()),
        };
        Ok(Metrics {
            handles,
            registry,
            requests,
            latency,
            decisions,
            authentications,
            caches,
            http1: protocols.with_label_values(&["http/1.1"]),
            http2: protocols.with_label_values(&["h2"]),
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

    /// One finished request. `route` is a route kind (`manifest_get`, `blob_get`, `token`…).
    pub fn observe_request(
        &self,
        route: &'static str,
        method: &str,
        status: u16,
        elapsed: Duration,
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
        let seconds = elapsed.as_secs_f64();
        // A poisoned lock only means another request panicked mid-insert; the map is
        // still consistent (inserts are single calls).
        let known = self
            .handles
            .requests
            .read()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((count, latency)) = known.get(&key) {
            count.inc();
            latency.observe(seconds);
            return;
        }
        drop(known);
        let count = self.requests.with_label_values(&[key.0, key.1, key.2]);
        let latency = self.latency.with_label_values(&[route]);
        count.inc();
        latency.observe(seconds);
        self.handles
            .requests
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (count, latency));
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

    /// The Prometheus text exposition of every metric; cache counters live in the
    /// authenticator and the policy engine and are copied in here.
    pub fn render(&self, caches: &[CacheReading]) -> String {
        for reading in caches {
            self.caches
                .with_label_values(&[reading.cache, "hit"])
                .set(saturating_i64(reading.hits));
            self.caches
                .with_label_values(&[reading.cache, "miss"])
                .set(saturating_i64(reading.misses));
        }
        let mut out = Vec::new();
        // Encoding into a Vec only fails on metric families that cannot exist here.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
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
        m.observe_request("manifest_get", "GET", 200, Duration::from_millis(3));
        m.observe_request("blob_get", "HEAD", 404, Duration::from_millis(1));
        m.record_decision(true);
        m.record_decision(false);
        m.record_authentication("bearer");
        m.observe_protocol("h2");
        // Cached series count on: a second observation adds to the first.
        m.observe_request("manifest_get", "GET", 200, Duration::from_millis(3));
        m.observe_request("manifest_get", "BREW", 200, Duration::from_millis(3));
        m.record_authentication("bearer");
        let text = m.render(&[CacheReading {
            cache: "authn",
            hits: 7,
            misses: 2,
        }]);
        assert!(text.contains(
            "portcullis_requests_total{method=\"GET\",route=\"manifest_get\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "portcullis_requests_total{method=\"other\",route=\"manifest_get\",status=\"200\"} 1"
        ));
        assert!(
            text.contains("portcullis_request_duration_seconds_count{route=\"manifest_get\"} 3")
        );
        assert!(text.contains("portcullis_request_duration_seconds_bucket{route=\"blob_get\""));
        assert!(text.contains("portcullis_decisions_total{decision=\"deny\"} 1"));
        assert!(text.contains("portcullis_authentications_total{result=\"bearer\"} 2"));
        assert!(text.contains("portcullis_requests_by_protocol_total{protocol=\"h2\"} 1"));
        assert!(text.contains("portcullis_cache_lookups{cache=\"authn\",result=\"hit\"} 7"));
    }
}
