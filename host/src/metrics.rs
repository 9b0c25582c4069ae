//! `[gateway] metrics = "127.0.0.1:9464"`: Prometheus text metrics at `/metrics`, `/healthz`
//! (the process answers) and `/readyz` (running, not shutting down) for load balancers and
//! Kubernetes probes; `gateway status` reads the same page for a person.
//!
//! A small HTTP/1.0 responder, std only: a Pi has no use for a web framework. Each connection
//! gets one answer, on a thread of its own, and is closed. A request must arrive whole within
//! 2 s and fit in 8 KiB, and the answer be taken within 5 s; at most 64 connections are served
//! at once, at most 4 from one IP address; one past either limit takes the place of the
//! connection (of its address, or of any) that has waited longest for its request, if that one
//! has waited 250 ms, and is closed otherwise. So a slow or hostile client (a slowloris
//! trickling a byte a second, from one address or many) holds a few threads for seconds at
//! most, and cannot keep a load balancer's probes, which ask at once, from their answers.
//! Bind it to loopback (the default address is) or to a network your scraper is on: it tells
//! whoever can reach it how much the gateway moves, nothing more (no config values, no
//! readings).

use crate::{
    buffer::DiskBuffer,
    stats::{SinkStats, SinkView, SourceStats, Views},
};
use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{self, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{atomic::Ordering, Arc, Mutex},
    time::{Duration, Instant},
};

/// Most connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// Most connections from one IP address (an IPv6 address's /64) served at once.
const MAX_PER_ADDRESS: usize = 4;
/// A request must arrive whole within this.
const READ_DEADLINE: Duration = Duration::from_secs(2);
/// An answer must be taken within this.
const WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// What the page shows: every instance's counters, read when a scrape comes.
#[derive(Clone)]
pub struct Registry {
    /// The run's instances (a reload changes them).
    pub views: Views,
    /// What plugin instances publish.
    pub plugins: Arc<crate::plugin_metrics::PluginMetrics>,
    /// Whether the run is ready (running, not shutting down).
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
    /// `[gateway] stall_warning` as the run took it (a reload does not change it).
    pub stall_warning: std::time::Duration,
}

/// The host's families that its page shows only at times: kept from plugins all the same.
const SOMETIMES: &[&str] = &["gateway_clock_synchronized"];

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
        if let Some(synced) = crate::clock::synchronized() {
            family(
                &mut out,
                "gateway_clock_synchronized",
                "gauge",
                "1 while the kernel says the system clock is synchronised (NTP); 0: readings are stamped with a clock nothing has set (a Pi without a real-time clock after a power cut).",
                &[(String::new(), f64::from(u8::from(synced)))],
            );
        }
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
        let views = |f: &dyn Fn(&SinkView) -> f64| -> Vec<(String, f64)> {
            now.sinks
                .iter()
                .map(|s| (label("instance", &s.name), f(s)))
                .collect()
        };
        let sinks = |f: &dyn Fn(&SinkStats) -> f64| views(&|s| f(&s.stats));
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
            "Readings a sink refused for good (kept in its dead-letter directory, but those counted in gateway_sink_rejected_not_kept_total).",
            &sinks(&|s| get(&s.rejected)),
        );
        family(
            &mut out,
            "gateway_sink_rejected_not_kept_total",
            "counter",
            "Readings a sink refused for good that its dead-letter directory did not keep, their device's files taking its share of it (dead_letter_device_share) or the directory being full; their source was told they were refused. Alert on it above 0: a device sends what the store refuses.",
            &sinks(&|s| get(&s.not_kept)),
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
        family(&mut out, "gateway_sink_dead_letter_held_readings", "gauge", "Readings the sink refused for good that wait for room in its dead-letter directory (dead_letter_max_size reached, or the disk full or read-only); the sink takes nothing else meanwhile. Alert on it above 0.", &sinks(&|s| get(&s.dead_letter_held)));
        family(&mut out, "gateway_sink_pending_readings", "gauge", "Readings a sink accepted and has not stored or refused yet (queue, disk buffer and writes in flight).", &views(&|s| s.pending() as f64));
        family(
            &mut out,
            "gateway_stall_warning_seconds",
            "gauge",
            "[gateway] stall_warning as the running gateway took it: a sink call lasting longer is logged as stalled (0: never).",
            &[(String::new(), self.stall_warning.as_secs_f64())],
        );
        family(&mut out, "gateway_sink_call_seconds", "gauge", "How long the sink's current call into its plugin (start, write, close) has lasted; 0: in none. Alert on it: a call past [gateway] stall_warning is logged as stalled.", &sinks(&|s| s.call().map_or(0.0, |(_, d)| d.as_secs_f64())));
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
        family(&mut out, "gateway_buffer_oldest_age_seconds", "gauge", "How long the oldest reading not yet acknowledged has waited in the buffer (an upper bound, within about a second, on the monotonic clock); 0 when empty.", &buffer(&|b| b.oldest_age().map_or(0.0, |d| d.as_secs_f64())));
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
        family(
            &mut out,
            "gateway_buffer_lost_total",
            "counter",
            "Readings in disk buffer records found damaged while reading, or in a segment file removed by someone else: never delivered.",
            &buffer(&|b| get(&b.stats.lost)),
        );
        // The host's names, those of this page and those it shows only at times (a plugin
        // must not fill in for one the host leaves out: a fake "synchronized").
        let host: Vec<String> = out
            .lines()
            .filter_map(|l| Some(l.strip_prefix("# TYPE ")?.split(' ').next()?.to_owned()))
            .chain(SOMETIMES.iter().map(|n| n.to_string()))
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

/// The address a place counts against: an IPv4 address (an IPv4-mapped IPv6 one as such), or
/// an IPv6 address's /64, which one host holds whole.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// The connections being served: how many per address, and which of them are still waiting
/// for their request, oldest first.
#[derive(Default)]
struct Slots(Mutex<Held>);

#[derive(Default)]
struct Held {
    /// Connections per address (at most 64 addresses are ever listed).
    per: HashMap<IpAddr, usize>,
    /// Connections whose request has not arrived whole, oldest first: when the places are
    /// taken, one that has waited [`MIN_WAIT`] makes way for a new connection.
    waiting: std::collections::VecDeque<Waiting>,
    /// Connections shut to make way and not yet ended: no longer counted in `per`.
    leaving: std::collections::HashSet<u64>,
    /// The next connection's number.
    next: u64,
}

/// A connection waiting for its request.
struct Waiting {
    id: u64,
    ip: IpAddr,
    since: Instant,
    /// A handle to shut it.
    conn: TcpStream,
}

/// How long a connection must have waited for its request before it makes way: a client
/// that asks at once (a probe, `gateway status`) is never shut by newcomers, however many.
const MIN_WAIT: Duration = Duration::from_millis(250);

/// A connection's place among [`Slots`], given back when dropped.
struct Slot(Arc<Slots>, IpAddr, u64);

impl Slots {
    /// A place for a connection from `ip` (`conn`, its handle, lets it make way in turn
    /// while its request has not come). Past 4 from its address, the one of that address that
    /// has waited longest for its request (at least [`MIN_WAIT`]) is shut to make way; past 64
    /// in all, the one of any address. With none to shut, the new connection is refused. So
    /// clients that hold connections without asking, from one address or many, cannot keep a
    /// probe that asks at once from its answer.
    fn take(self: &Arc<Self>, ip: IpAddr, conn: Option<TcpStream>) -> Option<Slot> {
        let mut held = self.0.lock().expect("metrics slots");
        let held = &mut *held;
        let all = held.per.values().sum::<usize>();
        let mine = held.per.get(&ip).copied().unwrap_or(0);
        let now = Instant::now();
        let ripe = |w: &Waiting| now.saturating_duration_since(w.since) >= MIN_WAIT;
        let victim = if mine >= MAX_PER_ADDRESS {
            Some(held.waiting.iter().position(|w| w.ip == ip && ripe(w))?)
        } else if all >= MAX_CONNECTIONS {
            Some(held.waiting.iter().position(ripe)?)
        } else {
            None
        };
        if let Some(w) = victim.and_then(|i| held.waiting.remove(i)) {
            let _ = w.conn.shutdown(std::net::Shutdown::Both);
            held.leaving.insert(w.id);
            held.let_go(w.ip);
        }
        *held.per.entry(ip).or_insert(0) += 1;
        let id = held.next;
        held.next += 1;
        if let Some(conn) = conn {
            held.waiting.push_back(Waiting {
                id,
                ip,
                since: now,
                conn,
            });
        }
        Some(Slot(self.clone(), ip, id))
    }
}

impl Held {
    /// One connection from `ip` fewer.
    fn let_go(&mut self, ip: IpAddr) {
        if let Some(n) = self.per.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per.remove(&ip);
            }
        }
    }
}

impl Slot {
    /// The connection's request has come whole: it no longer makes way for others.
    fn asked(&self) {
        let mut held = self.0 .0.lock().expect("metrics slots");
        held.waiting.retain(|w| w.id != self.2);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.0 .0.lock().expect("metrics slots");
        held.waiting.retain(|w| w.id != self.2);
        // One that made way was let go then.
        if !held.leaving.remove(&self.2) {
            held.let_go(self.1);
        }
    }
}

/// Binds `addr` and serves `registry` for the life of the process: a thread accepts, and each
/// connection is answered on a thread of its own (at most 64 at once, 4 per IP address).
pub fn serve(addr: SocketAddr, registry: Registry) -> std::io::Result<SocketAddr> {
    serve_on(TcpListener::bind(addr)?, registry)
}

/// [`serve`] on a socket bound before (`gateway run` binds it before it starts anything, so
/// that a port someone else holds stops the start instead of leaving the gateway without its
/// page while another process answers in its name).
pub fn serve_on(listener: TcpListener, registry: Registry) -> std::io::Result<SocketAddr> {
    let bound = listener.local_addr()?;
    let registry = Arc::new(registry);
    let slots = Arc::new(Slots::default());
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let c = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics: accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                let place = c
                    .peer_addr()
                    .ok()
                    .and_then(|p| slots.take(bucket(p.ip()), c.try_clone().ok()));
                let Some(slot) = place else {
                    tracing::debug!(peer = ?c.peer_addr().ok(), "metrics: too many connections at once; closed");
                    continue;
                };
                let registry = registry.clone();
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .stack_size(128 << 10)
                    .spawn(move || {
                        if let Err(e) = respond(c, &registry, &slot) {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "metrics: no thread for a connection");
                }
            }
        })?;
    Ok(bound)
}

/// What is left of `deadline`, or a timeout error once it has passed.
fn left(deadline: Instant) -> io::Result<Duration> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
    }
    Ok(d)
}

/// Writes `bytes` whole before `deadline`.
fn write_by(c: &mut TcpStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        c.set_write_timeout(Some(left(deadline)?))?;
        match c.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether the head in `buf` has ended, looking only at what came after `from` (and the 3
/// bytes before it, where an end may have begun): a client sending a byte at a time costs
/// one look at each byte, not one at the whole head per byte.
fn head_ended(buf: &[u8], from: usize) -> bool {
    let tail = &buf[from.saturating_sub(3)..];
    tail.windows(4).any(|w| w == b"\r\n\r\n") || tail.windows(2).any(|w| w == b"\n\n")
}

fn respond(mut c: TcpStream, registry: &Registry, slot: &Slot) -> io::Result<()> {
    let deadline = Instant::now() + READ_DEADLINE;
    let mut buf = [0u8; 8192];
    let mut n = 0;
    // Only the request line matters, but the whole head is read: closing with unread bytes
    // would reset the connection under the answer.
    loop {
        c.set_read_timeout(Some(left(deadline)?))?;
        let got = c.read(&mut buf[n..])?;
        if got == 0 {
            break;
        }
        n += got;
        if head_ended(&buf[..n], n - got) || n == buf.len() {
            break;
        }
    }
    slot.asked();
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
    let deadline = Instant::now() + WRITE_DEADLINE;
    write_by(&mut c, head.as_bytes(), deadline)?;
    if method != "HEAD" {
        write_by(&mut c, body.as_bytes(), deadline)?;
    }
    Ok(())
}

/// `GET path` from `addr`: the status code and the body (for `gateway status` and tests).
/// The whole answer must come within 10 s and hold at most 64 MiB: whatever listens there
/// (another program on the port while the gateway is down) cannot hang the command.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    get_within(addr, path, Duration::from_secs(10))
}

fn get_within(addr: SocketAddr, path: &str, within: Duration) -> std::io::Result<(u16, String)> {
    const MAX: usize = 64 << 20;
    let deadline = Instant::now() + within;
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2).min(within))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    write_by(&mut c, request.as_bytes(), deadline)?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let late = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{addr} did not answer whole within {within:?}"),
        )
    };
    loop {
        c.set_read_timeout(Some(left(deadline).map_err(|_| late())?))?;
        match c.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(late())
            }
            Err(e) => return Err(e),
        }
        if answer.len() > MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{addr} answered more than 64 MiB"),
            ));
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_that_trickles_its_answer_cannot_hang_a_get() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            // A byte every 50 ms, for ever (before, each byte restarted a 5 s read timeout).
            while c.write_all(b"x").is_ok() {
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let t = Instant::now();
        let e = get_within(addr, "/metrics", Duration::from_millis(500)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    fn registry() -> Registry {
        Registry {
            views: Views::default(),
            plugins: Arc::default(),
            ready: Arc::new(|| true),
            stall_warning: std::time::Duration::from_secs(30),
        }
    }

    /// A connection to `to` from loopback address `from`.
    fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::from((from, 0)).into()).unwrap();
        s.connect(&to.into()).unwrap();
        s.into()
    }

    #[test]
    fn slow_clients_neither_hold_a_connection_long_nor_keep_probes_from_their_answers() {
        let addr = serve("127.0.0.1:0".parse().unwrap(), registry()).unwrap();
        // A slowloris on another address: ten connections trickling a byte every 300 ms, and
        // one that sends nothing.
        let started = Instant::now();
        let trickling: Vec<_> = (0..10)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut c = connect_from([127, 0, 0, 2], addr);
                    for _ in 0..30 {
                        if c.write_all(b"G").is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    // Closed by the server (an error or end of file) or still open at the end.
                    c.set_read_timeout(Some(Duration::from_millis(100)))
                        .unwrap();
                    let mut b = [0u8; 64];
                    let closed =
                        !matches!(c.read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
                    (closed, started.elapsed())
                })
            })
            .collect();
        let _silent = connect_from([127, 0, 0, 3], addr);
        std::thread::sleep(Duration::from_millis(200));
        // The probe is answered meanwhile, several times.
        for _ in 0..3 {
            assert_eq!(get(addr, "/healthz").unwrap(), (200, "ok\n".to_owned()));
        }
        for t in trickling {
            let (closed, after) = t.join().unwrap();
            assert!(closed, "a trickling client was cut off");
            assert!(after < Duration::from_secs(6), "{after:?}");
        }
    }

    /// Clients on more addresses than 64 / 4 holding every place without asking (any local
    /// user can connect from 127.0.0.2 to 127.0.0.17, a remote one from 16 IPv6 /64s) kept
    /// every probe from its answer: each new connection was closed at once.
    #[test]
    fn clients_holding_every_place_without_asking_make_way_for_a_probe() {
        let addr = serve("127.0.0.1:0".parse().unwrap(), registry()).unwrap();
        let silent: Vec<TcpStream> = (0..(MAX_CONNECTIONS / MAX_PER_ADDRESS) as u8)
            .flat_map(|a| (0..MAX_PER_ADDRESS).map(move |_| connect_from([127, 0, 1, a], addr)))
            .collect();
        assert_eq!(silent.len(), MAX_CONNECTIONS);
        std::thread::sleep(MIN_WAIT * 2);
        for _ in 0..3 {
            assert_eq!(get(addr, "/healthz").unwrap(), (200, "ok\n".to_owned()));
        }
        // The first ones made way: their connections were shut.
        let mut first = &silent[0];
        first
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        assert_eq!(first.read(&mut [0u8; 16]).unwrap(), 0, "shut");
    }

    /// `gateway status` connects from 127.0.0.1, as any local user can: four connections from
    /// there that never ask refused it for as long as they were held.
    #[test]
    fn clients_holding_an_address_s_places_make_way_for_a_probe_from_it() {
        let addr = serve("127.0.0.1:0".parse().unwrap(), registry()).unwrap();
        let _silent: Vec<TcpStream> = (0..MAX_PER_ADDRESS)
            .map(|_| connect_from([127, 0, 0, 1], addr))
            .collect();
        std::thread::sleep(MIN_WAIT * 2);
        for _ in 0..3 {
            assert_eq!(get(addr, "/healthz").unwrap(), (200, "ok\n".to_owned()));
        }
    }

    /// A connection that has just come does not make way: while every place is young, a
    /// newcomer is refused; once they have waited [`MIN_WAIT`], the oldest makes way.
    #[test]
    fn only_a_connection_that_has_waited_makes_way() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        let slots = Arc::new(Slots::default());
        let held: Vec<(Slot, TcpStream)> = (0..MAX_CONNECTIONS)
            .map(|i| {
                let client = TcpStream::connect(to).unwrap();
                let (server, _) = l.accept().unwrap();
                let ip = IpAddr::from([10, 2, (i / 200) as u8, (i % 200) as u8]);
                (slots.take(ip, Some(server)).unwrap(), client)
            })
            .collect();
        assert!(
            slots.take([10, 9, 9, 9].into(), None).is_none(),
            "all young"
        );
        std::thread::sleep(MIN_WAIT);
        assert!(
            slots.take([10, 9, 9, 9].into(), None).is_some(),
            "one made way"
        );
        // The oldest: its connection was shut.
        let mut oldest = &held[0].1;
        oldest
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        assert_eq!(oldest.read(&mut [0u8; 4]).unwrap(), 0);
    }

    #[test]
    fn a_head_is_seen_to_end_wherever_its_end_falls() {
        let head = b"GET / HTTP/1.0\r\nHost: x\r\n\r\n";
        for from in 0..head.len() {
            assert!(head_ended(head, from), "{from}");
            assert!(!head_ended(
                &head[..head.len() - 1],
                from.min(head.len() - 1)
            ));
        }
        assert!(head_ended(b"GET /\n\n", 7));
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64_and_a_mapped_address_as_ipv4() {
        let a: IpAddr = "2001:db8:0:1::5".parse().unwrap();
        let b: IpAddr = "2001:db8:0:1:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:0:2::5".parse().unwrap();
        assert_eq!(bucket(a), bucket(b));
        assert_ne!(bucket(a), bucket(c));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(bucket(mapped), IpAddr::from([10, 0, 0, 7]));
    }

    #[test]
    fn connections_are_limited_in_all_and_per_address() {
        let slots = Arc::new(Slots::default());
        let a: IpAddr = [10, 0, 0, 1].into();
        let mine: Vec<Slot> = (0..MAX_PER_ADDRESS)
            .map(|_| slots.take(a, None).unwrap())
            .collect();
        assert!(slots.take(a, None).is_none(), "per address");
        let others: Vec<Slot> = (0..MAX_CONNECTIONS - MAX_PER_ADDRESS)
            .map(|i| {
                slots
                    .take([10, 1, (i / 200) as u8, (i % 200) as u8].into(), None)
                    .unwrap()
            })
            .collect();
        assert!(slots.take([10, 9, 9, 9].into(), None).is_none(), "in all");
        drop(mine);
        assert!(slots.take(a, None).is_some(), "given back");
        drop(others);
        assert!(slots.0.lock().unwrap().per.is_empty());
    }
}
