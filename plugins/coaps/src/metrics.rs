//! What the ingress shows on the host's metrics page ([`gateway_sdk::metrics`]): its DTLS
//! endpoint (sessions now, handshakes by result and reason, evictions) and its CoAP requests
//! (answers by code, latency from arrival to answer, readings stored and duplicates dropped).
//! Worker 0 publishes the figures every second; they are shared by every worker.

use crate::serving::{Counters, LATENCY_BUCKETS};
use gateway_coaps_tokio::ServerStats;
use gateway_dtls::server::FAILURE_REASONS;
use gateway_sdk::metrics::Metrics;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

fn get(a: &AtomicU64) -> u64 {
    a.load(Relaxed)
}

/// The figures of `c` (the requests) and `s` (the DTLS endpoint) now.
pub fn of(c: &Counters, s: &ServerStats) -> Metrics {
    let mut m = Metrics::new();
    m.gauge(
        "gateway_dtls_sessions",
        "DTLS sessions established now.",
        &[],
        s.established_now.load(Relaxed).max(0) as f64,
    )
    .gauge(
        "gateway_dtls_handshakes_in_progress",
        "DTLS handshakes in progress now.",
        &[],
        s.handshaking_now.load(Relaxed).max(0) as f64,
    );
    const HANDSHAKES: &str = "DTLS handshakes by result: ok (full) and resumed; failed by reason (a failure of an established session counts too); refused after the handshake (no identity, denied); evicted while stalled.";
    let (all, resumed) = (get(&s.sessions), get(&s.resumed));
    m.counter(
        "gateway_dtls_handshakes_total",
        HANDSHAKES,
        &[("result", "ok")],
        all.saturating_sub(resumed),
    )
    .counter(
        "gateway_dtls_handshakes_total",
        HANDSHAKES,
        &[("result", "resumed")],
        resumed,
    );
    for (reason, n) in FAILURE_REASONS.iter().zip(&s.failures) {
        m.counter(
            "gateway_dtls_handshakes_total",
            HANDSHAKES,
            &[("result", "failed"), ("reason", reason)],
            get(n),
        );
    }
    for (reason, n) in [("no_identity", &s.unauthenticated), ("denied", &s.denied)] {
        m.counter(
            "gateway_dtls_handshakes_total",
            HANDSHAKES,
            &[("result", "refused"), ("reason", reason)],
            get(n),
        );
    }
    m.counter(
        "gateway_dtls_handshakes_total",
        HANDSHAKES,
        &[("result", "evicted"), ("reason", "stalled")],
        get(&s.evicted_handshakes),
    );
    const DROPPED: &str = "DTLS sessions dropped by the server: to make room (the session caps), replaced by a new handshake from the same address, or idle.";
    for (reason, n) in [
        ("capacity", &s.evicted_sessions),
        ("replaced", &s.replaced),
        ("idle", &s.idle_evictions),
    ] {
        m.counter(
            "gateway_dtls_sessions_dropped_total",
            DROPPED,
            &[("reason", reason)],
            get(n),
        );
    }
    m.counter(
        "gateway_dtls_cookies_sent_total",
        "HelloVerifyRequests sent (ClientHellos without a valid cookie).",
        &[],
        get(&s.cookies_sent),
    )
    .counter(
        "gateway_coap_requests_total",
        "CoAP requests received.",
        &[],
        get(&c.requests),
    );
    for (i, n) in c.codes.iter().enumerate() {
        let n = get(n);
        if n > 0 {
            let code = format!("{}.{:02}", i / 32, i % 32);
            m.counter(
                "gateway_coap_responses_total",
                "CoAP answers by response code (2.04: stored; 4.xx: refused for good; 5.03: try again).",
                &[("code", &code)],
                n,
            );
        }
    }
    let mut cumulative = Vec::with_capacity(LATENCY_BUCKETS.len());
    let mut seen = 0;
    for (le, n) in LATENCY_BUCKETS.iter().zip(&c.latency.buckets) {
        seen += get(n);
        cumulative.push((*le, seen));
    }
    let count = seen + get(&c.latency.buckets[LATENCY_BUCKETS.len()]);
    m.histogram(
        "gateway_coap_request_duration_seconds",
        "From a request's arrival to its answer (a 2.04 waits until every sink stored the readings).",
        &[],
        &cumulative,
        get(&c.latency.sum_ns) as f64 / 1e9,
        count,
    )
    .counter(
        "gateway_ingress_readings_total",
        "Readings every routed sink stored.",
        &[],
        get(&c.readings),
    )
    .counter(
        "gateway_ingress_duplicate_readings_total",
        "Readings dropped as repeats of ones already stored.",
        &[],
        get(&c.duplicates),
    );
    m
}
