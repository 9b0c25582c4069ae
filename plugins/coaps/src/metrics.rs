//! What the coaps plugins show on the host's metrics page ([`gateway_sdk::metrics`]).
//!
//! - The ingress: its DTLS endpoint (sessions now, handshakes by result and reason, evictions)
//!   and its CoAP requests (answers by code, latency from arrival to answer, readings stored
//!   and duplicates dropped). Worker 0 publishes every second; the figures are shared by every
//!   worker.
//! - The uplink: its link to the server (connected or not, handshakes by result and reason,
//!   sessions given up for silence, retransmissions and timeouts, the measured retransmission
//!   timeout, requests in flight), from the client's thread every second. They count from 0
//!   again when the uplink builds a new client.

use crate::serving::{Counters, LATENCY_BUCKETS};
use gateway_coaps_tokio::{ClientFigures, ServerStats};
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
    const HANDSHAKES: &str = "DTLS handshakes by result: ok (full) and resumed; failed by reason (a failure of an established session counts too); refused after the handshake (no identity, denied, a resumption of a session whose client certificate has expired since, at the session cap); evicted while stalled.";
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
    for (reason, n) in [
        ("no_identity", &s.unauthenticated),
        ("denied", &s.denied),
        ("expired", &s.expired_resumptions),
        ("capacity", &s.refused_at_capacity),
    ] {
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
    )
    .counter(
        "gateway_dtls_handshakes_parked_total",
        "Handshakes that gave their slot to a newer one (stalled, or of the host holding the most); a parked handshake still completes if its peer answers, and is forgotten (result=\"evicted\") only when too many are parked.",
        &[],
        get(&s.parked_handshakes),
    );
    const DROPPED: &str = "DTLS sessions dropped by the server: to make room (the session caps), replaced by a new handshake from the same address, idle, or at the expiry of the client certificate its identity comes from.";
    for (reason, n) in [
        ("capacity", &s.evicted_sessions),
        ("replaced", &s.replaced),
        ("idle", &s.idle_evictions),
        ("expired", &s.expired),
    ] {
        m.counter(
            "gateway_dtls_sessions_dropped_total",
            DROPPED,
            &[("reason", reason)],
            get(n),
        );
    }
    const WAKEUPS: &str = "Times a worker that had answered everything found its next request or answer by busy-polling (how=\"polled\") or waited for it in its event loop, asleep unless it was there already (how=\"slept\"); see busy_poll.";
    for (how, n) in [("polled", &s.polled), ("slept", &s.slept)] {
        m.counter(
            "gateway_ingress_wakeups_total",
            WAKEUPS,
            &[("how", how)],
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
        "gateway_dtls_chains_reused_total",
        "Full handshakes whose client certificate chain, byte for byte, had verified before and was not verified again (the device still proved its key).",
        &[],
        get(&s.chains_reused),
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
    )
    .gauge(
        "gateway_coap_observers",
        "Clients registered now to be notified of new readings (Observe).",
        &[],
        get(&c.observers) as f64,
    )
    .counter(
        "gateway_coap_notifications_total",
        "Notifications sent to observers.",
        &[],
        get(&c.notifications),
    );
    m
}

/// The uplink's figures.
pub fn uplink(f: &ClientFigures) -> Metrics {
    let mut m = Metrics::new();
    m.gauge(
        "gateway_dtls_client_connected",
        "1 while the uplink has a DTLS session with the server.",
        &[],
        f64::from(u8::from(f.connected)),
    );
    const HANDSHAKES: &str = "The uplink's DTLS handshakes by result: ok (full), resumed; failed by reason (a session that ended in an error counts too).";
    m.counter(
        "gateway_dtls_client_handshakes_total",
        HANDSHAKES,
        &[("result", "ok")],
        f.handshakes,
    )
    .counter(
        "gateway_dtls_client_handshakes_total",
        HANDSHAKES,
        &[("result", "resumed")],
        f.resumed,
    );
    for (reason, n) in FAILURE_REASONS.iter().zip(f.failures) {
        m.counter(
            "gateway_dtls_client_handshakes_total",
            HANDSHAKES,
            &[("result", "failed"), ("reason", reason)],
            n,
        );
    }
    m.counter(
        "gateway_dtls_client_stale_sessions_total",
        "Sessions the uplink gave up because the server answered nothing on them.",
        &[],
        f.stale,
    )
    .counter(
        "gateway_coap_client_retransmissions_total",
        "CoAP messages the uplink sent again.",
        &[],
        f.coap.retransmissions,
    )
    .counter(
        "gateway_coap_client_timeouts_total",
        "CoAP requests the uplink gave up after their last retransmission.",
        &[],
        f.coap.timeouts,
    )
    .gauge(
        "gateway_coap_client_rto_seconds",
        "The retransmission timeout measured for the server (0 before the first request).",
        &[],
        f.rto.map_or(0.0, |d| d.as_secs_f64()),
    )
    .gauge(
        "gateway_coap_client_requests_in_flight",
        "The uplink's requests sent and not answered yet.",
        &[],
        f.in_flight.0 as f64,
    )
    .gauge(
        "gateway_coap_client_requests_waiting",
        "The uplink's requests waiting for a slot (NSTART) or a session.",
        &[],
        f.in_flight.1 as f64,
    );
    m
}
