//! `[gateway] metrics = "127.0.0.1:9464"`: Prometheus text metrics at `/metrics`, `/healthz`
//! (the process answers) and `/readyz` (running, not shutting down) for load balancers and
//! Kubernetes probes; `gateway status` reads the same page for a person.
//!
//! A small HTTP/1.0 responder on one thread, std only: a Pi has no use for a web framework.
//! Each connection gets one answer and is closed; a request must arrive within a second and
//! fit in 8 KiB, so a slow or hostile client holds the thread that long at most. Bind it to
//! loopback (the default address is) or to a network your scraper is on: it tells whoever can
//! reach it how much the gateway moves, nothing more (no config values, no readings).

use crate::{
    buffer::DiskBuffer,
    stats::{SinkStats, SourceStats, Views},
};
use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

/// What the page shows: every instance's counters, read when a scrape comes.
#[derive(Clone)]
pub struct Registry {
    /// The run's instances (a reload changes them).
    pub views: Views,
    /// What plugin instances publish.
    pub plugins: Arc<crate::plugin_metrics::PluginMetrics>,
    /// Whether the run is ready (running, not shutting down).
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// One metric family: its name, type and help, then its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

/// `{instance="NAME"}`, escaped as the text format asks.
fn label(key: &str, value: &str) -> String {
    format!("{{{key}=\"{}\"}}", escape(value))
}

/// A label value as the text format writes it: `\`, `"` and newlines escaped.
pub(crate) fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Registry {
    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let now = self.views.get();
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as f64;
        family(
            &mut out,
            "gateway_build_info",
            "gauge",
            "The gateway's version.",
            &[(label("version", env!("CARGO_PKG_VERSION")), 1.0)],
        );
        family(
            &mut out,
            "gateway_ready",
            "gauge",
            "1 while the gateway runs and is not shutting down.",
            &[(String::new(), f64::from(u8::from((self.ready)())))],
        );
        let sources = |f: &dyn Fn(&SourceStats) -> f64| -> Vec<(String, f64)> {
            now.sources
                .iter()
                .map(|(n, s)| (label("instance", n), f(s)))
                .collect()
        };
        family(
            &mut out,
            "gateway_source_readings_total",
            "counter",
            "Readings a source handed to its sinks.",
            &sources(&|s| get(&s.readings)),
        );
        family(
            &mut out,
            "gateway_source_batches_total",
            "counter",
            "Batches a source handed to its sinks.",
            &sources(&|s| get(&s.batches)),
        );
        family(
            &mut out,
            "gateway_source_restarts_total",
            "counter",
            "Times a source was rebuilt after a failure.",
            &sources(&|s| get(&s.restarts)),
        );
        let sinks = |f: &dyn Fn(&SinkStats) -> f64| -> Vec<(String, f64)> {
            now.sinks
                .iter()
                .map(|s| (label("instance", &s.name), f(&s.stats)))
                .collect()
        };
        family(
            &mut out,
            "gateway_sink_accepted_total",
            "counter",
            "Readings put on a sink's queue (or recovered from its disk buffer).",
            &sinks(&|s| get(&s.accepted)),
        );
        family(
            &mut out,
            "gateway_sink_written_total",
            "counter",
            "Readings a sink stored durably.",
            &sinks(&|s| get(&s.written)),
        );
        family(
            &mut out,
            "gateway_sink_writes_total",
            "counter",
            "Writes that succeeded.",
            &sinks(&|s| get(&s.writes)),
        );
        family(
            &mut out,
            "gateway_sink_direct_writes_total",
            "counter",
            "Writes made on the emitting source's thread, the sink being idle and quick (counted in gateway_sink_writes_total too).",
            &sinks(&|s| get(&s.direct)),
        );
        family(
            &mut out,
            "gateway_sink_retries_total",
            "counter",
            "Writes that failed and were retried.",
            &sinks(&|s| get(&s.retries)),
        );
        family(
            &mut out,
            "gateway_sink_rejected_total",
            "counter",
            "Readings a sink refused for good (kept in its dead-letter directory).",
            &sinks(&|s| get(&s.rejected)),
        );
        family(
            &mut out,
            "gateway_sink_restarts_total",
            "counter",
            "Times a sink was rebuilt after a failure.",
            &sinks(&|s| get(&s.restarts)),
        );
        family(
            &mut out,
            "gateway_sink_refused_full_total",
            "counter",
            "Batches offered while a sink's queue was full and not waited for.",
            &sinks(&|s| get(&s.refused_full)),
        );
        family(&mut out, "gateway_sink_pending_readings", "gauge", "Readings a sink accepted and has not stored or refused yet (queue, disk buffer and writes in flight).", &sinks(&|s| s.pending() as f64));
        let buffers: Vec<(&String, &Arc<DiskBuffer>)> = now
            .sinks
            .iter()
            .filter_map(|s| s.buffer.as_ref().map(|b| (&s.name, b)))
            .collect();
        let buffer = |f: &dyn Fn(&DiskBuffer) -> f64| -> Vec<(String, f64)> {
            buffers
                .iter()
                .map(|(n, b)| (label("instance", n), f(b)))
                .collect()
        };
        family(
            &mut out,
            "gateway_buffer_readings",
            "gauge",
            "Readings held in a sink's disk buffer.",
            &buffer(&|b| b.pending() as f64),
        );
        family(
            &mut out,
            "gateway_buffer_bytes",
            "gauge",
            "Bytes of a sink's disk buffer on disk.",
            &buffer(&|b| b.bytes() as f64),
        );
        family(&mut out, "gateway_buffer_oldest_age_seconds", "gauge", "Age of the oldest segment still holding readings (an upper bound of the oldest reading's wait); 0 when empty.", &buffer(&|b| b.oldest_age().map_or(0.0, |d| d.as_secs_f64())));
        family(
            &mut out,
            "gateway_buffer_dropped_total",
            "counter",
            "Readings a full disk buffer dropped (when_full = \"drop_oldest\").",
            &buffer(&|b| get(&b.stats.dropped)),
        );
        family(
            &mut out,
            "gateway_buffer_corrupt_records_total",
            "counter",
            "Damaged records found in a disk buffer and skipped.",
            &buffer(&|b| get(&b.stats.corrupt_records)),
        );
        let host: Vec<String> = out
            .lines()
            .filter_map(|l| Some(l.strip_prefix("# TYPE ")?.split(' ').next()?.to_owned()))
            .collect();
        let host: Vec<&str> = host.iter().map(String::as_str).collect();
        self.plugins.render(&mut out, &host);
        out
    }

    /// The answer to one request line's path: status line and body.
    fn answer(&self, path: &str) -> (&'static str, &'static str, String) {
        const TEXT: &str = "text/plain; charset=utf-8";
        match path {
            "/metrics" => (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                self.render(),
            ),
            "/healthz" => ("200 OK", TEXT, "ok\n".into()),
            "/readyz" if (self.ready)() => ("200 OK", TEXT, "ready\n".into()),
            "/readyz" => (
                "503 Service Unavailable",
                TEXT,
                "not ready: shutting down\n".into(),
            ),
            _ => (
                "404 Not Found",
                TEXT,
                "try /metrics, /healthz or /readyz\n".into(),
            ),
        }
    }
}

/// Binds `addr` and serves `registry` on a thread of its own, for the life of the process.
pub fn serve(addr: SocketAddr, registry: Registry) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        if let Err(e) = respond(c, &registry) {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics: accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(bound)
}

fn respond(mut c: TcpStream, registry: &Registry) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(1)))?;
    c.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 8192];
    let mut n = 0;
    // Only the request line matters, but the whole head is read: closing with unread bytes
    // would reset the connection under the answer.
    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n")
        && !buf[..n].windows(2).any(|w| w == b"\n\n")
        && n < buf.len()
    {
        let got = c.read(&mut buf[n..])?;
        if got == 0 {
            break;
        }
        n += got;
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    let mut parts = line.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, kind, body) = if method == "GET" || method == "HEAD" {
        registry.answer(path.split('?').next().unwrap_or(""))
    } else {
        ("405 Method Not Allowed", "text/plain", "GET only\n".into())
    };
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes())?;
    if method != "HEAD" {
        c.write_all(body.as_bytes())?;
    }
    Ok(())
}

/// `GET path` from `addr`: the status code and the body (for `gateway status` and tests).
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    c.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_owned()))
}
