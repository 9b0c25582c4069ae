//! The ingress at work, on its source thread: each request the server machine decodes is taken
//! through [`crate::request`]'s steps and emitted on its own (so that a sink's refusal of one
//! device's readings is that device's alone), and answered once the sinks are done with it.
//! When the sinks' queues are full, admitted requests wait here, in order, and go out after
//! the sinks' next write; only one that waited `hold` gets a 5.03. The server machine never
//! waits for a sink.

use crate::{
    held::{Waiting, Weighed},
    latest::{self, Latest},
    observe::Observers,
    request::{self, Refused, Route, ANONYMOUS},
    seen::{Admitted, Keys, Seen},
};
use gateway_coap::{
    coap_lite::{CoapOption, Packet},
    encode_uint, observe_of, retry_later, Block, Code, RequestId, Token,
};
use gateway_coaps_tokio::{Handler, Incoming, Responder, ServerStats};
use gateway_sdk::{tracing, ErrorKind, PluginError, Reading, SourceContext, Timestamp};
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// How often the worker that logs publishes the metrics (a scrape every 15 s or more sees
/// figures at most this old).
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Names kept per worker from one request to the next (a device sends the same ones every
/// time): at most this many, about 100 bytes each.
const LABELS_KEPT: usize = 4096;

/// Request and reading counters, logged periodically and published as metrics.
pub struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) readings: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) bad_requests: AtomicU64,
    pub(crate) unavailable: AtomicU64,
    /// Requests that waited for room in the sinks' queues.
    pub(crate) held: AtomicU64,
    /// Answers by code, indexed as CoAP encodes it (class * 32 + detail).
    pub(crate) codes: Vec<AtomicU64>,
    /// How long requests waited for their answer.
    pub(crate) latency: Latency,
    /// Observers registered now, and notifications sent.
    pub(crate) observers: AtomicU64,
    pub(crate) notifications: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            requests: AtomicU64::default(),
            readings: AtomicU64::default(),
            duplicates: AtomicU64::default(),
            bad_requests: AtomicU64::default(),
            unavailable: AtomicU64::default(),
            held: AtomicU64::default(),
            codes: (0..256).map(|_| AtomicU64::default()).collect(),
            latency: Latency::default(),
            observers: AtomicU64::default(),
            notifications: AtomicU64::default(),
        }
    }
}

/// The upper bounds (seconds) of the latency histogram's buckets: from a request answered at
/// once to one that waited for a slow database.
pub(crate) const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A histogram of request latencies (arrival to answer), lock-free.
#[derive(Default)]
pub(crate) struct Latency {
    /// Observations in each bucket alone (not cumulative), and above the last.
    pub(crate) buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    pub(crate) sum_ns: AtomicU64,
}

impl Latency {
    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|le| s <= *le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }
}

impl Counters {
    /// Counts an answer with `packet`'s code to a request that arrived at `since`.
    fn answered(&self, packet: &Packet, since: Instant) {
        if let Some(c) = Code::of(packet) {
            let i = usize::from(c.class) * 32 + usize::from(c.detail);
            if let Some(n) = self.codes.get(i) {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency.observe(since.elapsed());
    }
}

/// What the ingress needs of its configuration here.
pub struct Settings {
    /// The resource devices POST to, without slashes.
    pub path: String,
    /// Most SenML records per request.
    pub max_records: usize,
    /// Largest body.
    pub max_body: usize,
    /// Max-Age of a 5.03.
    pub retry_after: u32,
    /// How long an admitted request may wait for room in the sinks' queues.
    pub hold: Duration,
    /// Most readings, and most bytes of them ([`Weighed::bytes`]), in the requests waiting
    /// for room (in this worker); a request that would go past either gets a 5.03 at once.
    pub max_held: (usize, usize),
    /// Whether this worker logs the counters (one of them does).
    pub logs: bool,
    /// Identities that may read and forget every device's last readings.
    pub readers: Vec<String>,
    /// Largest answer payload: a larger one goes block by block.
    pub max_block: usize,
    /// Whether peers without an identity may post (as `anonymous`).
    pub allow_anonymous: bool,
}

/// What the workers share: the memory of reading ids, the counters, the last readings and
/// their observers.
pub struct Together {
    seen: Arc<Mutex<Seen>>,
    counters: Arc<Counters>,
    latest: Arc<Mutex<Latest>>,
    observers: Arc<Mutex<Observers>>,
}

impl Together {
    /// `dedup_ids` sizes the memory of reading ids already stored; `latest` the table of
    /// last readings (devices, readings per device, bytes); `observers` how many clients may
    /// observe them.
    pub fn new(dedup_ids: usize, latest: (usize, usize, usize), observers: usize) -> Together {
        Together {
            seen: Arc::new(Mutex::new(Seen::new(dedup_ids))),
            counters: Arc::default(),
            latest: Arc::new(Mutex::new(Latest::new(latest.0, latest.1, latest.2))),
            observers: Arc::new(Mutex::new(Observers::new(observers))),
        }
    }
}

/// Whether a GET asks to register for notifications: `Observe: 0`, for the whole
/// representation or its first block.
fn registers(req: &Packet) -> bool {
    let first_block = req
        .get_first_option(CoapOption::Block2)
        .and_then(|v| Block::decode(v))
        .is_none_or(|b| b.num == 0);
    observe_of(req) == Some(0) && first_block
}

/// An admitted request waiting for room in the sinks' queues.
struct Held {
    id: RequestId,
    peer: SocketAddr,
    readings: Vec<Reading>,
    keys: Keys,
    since: Instant,
}

impl Weighed for Held {
    /// The device of its readings (authorized: the peer's own); for peers without an
    /// identity (all `anonymous`), the host they send from (an IPv6 host by its /64), so
    /// that one of them cannot keep the others out.
    type Owner = (gateway_sdk::Label, Option<std::net::IpAddr>);
    fn readings(&self) -> usize {
        self.readings.len()
    }
    fn bytes(&self) -> usize {
        self.readings.iter().map(crate::held::reading_bytes).sum()
    }
    fn owner(&self) -> Self::Owner {
        let device = self
            .readings
            .first()
            .map_or_else(|| gateway_sdk::Label::from(""), |r| r.device.clone());
        // A host as the handshake limits count it: an IPv6 /64, or the IPv4 address of a
        // mapped one (on a dual-stack listener every IPv4 peer comes as ::ffff:a.b.c.d, and
        // its /64 would make all of them one owner).
        let host = (device.as_str() == request::ANONYMOUS)
            .then(|| gateway_dtls::admission::host_of(self.peer.ip()));
        (device, host)
    }
}

/// The [`Handler`] of the ingress's server.
pub struct Serving<'a> {
    ctx: &'a SourceContext,
    settings: Settings,
    responder: Responder,
    stats: Arc<ServerStats>,
    seen: Arc<Mutex<Seen>>,
    counters: Arc<Counters>,
    latest: Arc<Mutex<Latest>>,
    observers: Arc<Mutex<Observers>>,
    held: Waiting<Held>,
    /// A reader's discovery answer (links and ETag), and the list of devices it was made of.
    discovery: Option<(Arc<Vec<String>>, Arc<(Vec<u8>, [u8; 8])>)>,
    /// Device, sensor, measurement and unit names kept from one request to the next.
    labels: gateway_senml::Labels,
    last_log: Instant,
    last_publish: Instant,
    stop_by: Option<Instant>,
}

impl<'a> Serving<'a> {
    /// The handler of one worker.
    pub fn new(
        ctx: &'a SourceContext,
        settings: Settings,
        responder: Responder,
        stats: Arc<ServerStats>,
        together: Arc<Together>,
    ) -> Self {
        let max_held = settings.max_held;
        Serving {
            ctx,
            settings,
            responder,
            stats,
            seen: together.seen.clone(),
            counters: together.counters.clone(),
            latest: together.latest.clone(),
            observers: together.observers.clone(),
            held: Waiting::new(max_held.0, max_held.1),
            discovery: None,
            labels: gateway_senml::Labels::new(LABELS_KEPT),
            last_log: Instant::now(),
            last_publish: Instant::now(),
            stop_by: None,
        }
    }

    fn refuse(&self, id: RequestId, peer: SocketAddr, r: Refused) {
        let counter = if r.bad {
            &self.counters.bad_requests
        } else {
            &self.counters.unavailable
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, code = %Code::of(&r.reply).unwrap_or(Code::new(0, 0)), why = %r.why, "request refused");
        self.answer(id, r.reply, Instant::now());
    }

    /// Emits `h`'s readings without waiting; gives `h` back if the sinks' queues are full.
    fn emit(&self, h: Held) -> Result<(), Held> {
        let Held {
            id,
            peer,
            readings,
            keys,
            since,
        } = h;
        let n = readings.len() as u64;
        let retry_after = self.settings.retry_after;
        let (responder, seen, counters, ack_keys) = (
            self.responder.clone(),
            self.seen.clone(),
            self.counters.clone(),
            keys.clone(),
        );
        let sent = self.ctx.try_emit_with(readings, move |outcome| match outcome {
            Ok(()) => {
                seen.lock().expect("seen").stored(&ack_keys);
                counters.readings.fetch_add(n, Ordering::Relaxed);
                let reply = request::stored();
                counters.answered(&reply, since);
                responder.respond(id, reply);
            }
            Err(e) => {
                seen.lock().expect("seen").failed(&ack_keys);
                if e.kind == ErrorKind::REJECTED {
                    counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, readings = n, error = %e.message(), "a sink refused readings for good; the device is told 4.22");
                } else {
                    counters.unavailable.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, readings = n, error = %e.message(), "readings not stored; the device is told to retry");
                }
                let reply = request::not_stored(&e, retry_after);
                counters.answered(&reply, since);
                responder.respond(id, reply);
            }
        });
        match sent {
            Ok(()) => Ok(()),
            Err(e) => match e.batch {
                Some(readings) if e.error.kind == ErrorKind::RETRY => Err(Held {
                    id,
                    peer,
                    readings,
                    keys,
                    since,
                }),
                Some(_) => {
                    self.unavailable(id, &keys, &e.error, since);
                    Ok(())
                }
                // The host took the batch and could not deliver it: the acknowledgement
                // above answers the device (once), not this.
                None => Ok(()),
            },
        }
    }

    /// The discovery answer's links for `identity` (the devices whose last readings it may
    /// read) and their ETag. A reader's, of every device, is made once per change of the
    /// devices held: a reader of a large fleet asks for it block by block.
    fn links(&mut self, identity: Option<&str>) -> Arc<(Vec<u8>, [u8; 8])> {
        let made = |devices: &[String]| {
            let links = request::discovery(&self.settings.path, devices).payload;
            let tag = latest::etag(&links);
            Arc::new((links, tag))
        };
        let mut table = self.latest.lock().expect("latest");
        match identity {
            Some(who) if self.settings.readers.iter().any(|r| r == who) => {
                let devices = table.devices();
                drop(table);
                match &self.discovery {
                    Some((of, links)) if Arc::ptr_eq(of, &devices) => links.clone(),
                    _ => {
                        let links = made(&devices);
                        self.discovery = Some((devices, links.clone()));
                        links
                    }
                }
            }
            Some(who) if table.has(who) => made(&[who.to_owned()]),
            _ => made(&[]),
        }
    }

    /// `GET /{path}/{device}[/{sensor}]` and `DELETE /{path}/{device}`.
    fn read_back(&self, inc: &Incoming, route: Route) {
        let (id, peer, identity) = (inc.id, inc.peer, inc.identity.as_deref());
        let (Route::Latest { device, .. } | Route::Forget { device }) = &route else {
            return;
        };
        if !latest::may_read(identity, device, &self.settings.readers) {
            let who = identity.unwrap_or("a peer without an identity");
            let r = Refused::bad(
                gateway_coap::coap_lite::ResponseType::Forbidden,
                format!("{who} may read only its own last readings, not {device}'s"),
            );
            return self.refuse(id, peer, r);
        }
        let mut table = self.latest.lock().expect("latest");
        let answer = match &route {
            Route::Latest { device, sensor } => match table.get(device, sensor.as_deref()) {
                Some(readings) if registers(&inc.packet) => {
                    // The answer is queued before the table is let go: a notification of a
                    // newer state (queued under the same lock) then always follows the answer
                    // that registers its client, on the same worker's queue.
                    let answer = latest::answer(&inc.packet, &readings, self.settings.max_block);
                    match answer {
                        Ok(p) => {
                            self.register(inc, device, sensor.as_deref(), p);
                            return;
                        }
                        Err(r) => Err(r),
                    }
                }
                Some(readings) => {
                    drop(table);
                    latest::answer(&inc.packet, &readings, self.settings.max_block)
                }
                None => Err(Refused::bad(
                    gateway_coap::coap_lite::ResponseType::NotFound,
                    format!("no readings of {device} here (yet)"),
                )),
            },
            _ if table.forget(device) => {
                drop(table);
                let mut observers = self.observers.lock().expect("observers");
                observers.forgotten(device);
                self.counted(&observers);
                tracing::info!(%peer, device = %device, who = ?identity, "last readings forgotten");
                Ok(gateway_coap::response(
                    gateway_coap::coap_lite::ResponseType::Deleted,
                    "",
                ))
            }
            _ => Err(Refused::bad(
                gateway_coap::coap_lite::ResponseType::NotFound,
                format!("no readings of {device} here"),
            )),
        };
        match answer {
            Ok(p) => self.answer(id, p, Instant::now()),
            Err(r) => self.refuse(id, peer, r),
        }
    }

    /// Answers with `p` a GET of last readings that asks to register (see [`registers`]):
    /// registers its client if there is room, and the answer then carries an Observe option.
    /// Should the request's session have ended meanwhile (an alert in the same datagram), the
    /// worker says so through [`Handler::deregistered`] and the registration goes.
    fn register(&self, inc: &Incoming, device: &str, sensor: Option<&str>, mut p: Packet) {
        let mut observers = self.observers.lock().expect("observers");
        let added = observers.add(device, sensor, inc.peer, &inc.packet, &self.responder);
        self.counted(&observers);
        let now = Instant::now();
        if !added {
            tracing::debug!(peer = %inc.peer, device, "observer not registered: no room");
            return self.answer(inc.id, p, now);
        }
        p.add_option(CoapOption::Observe, encode_uint(0));
        tracing::debug!(peer = %inc.peer, device, sensor, observers = observers.len(), "observer registered");
        self.counters.answered(&p, now);
        let token = inc.packet.get_token().to_vec();
        self.responder.register(inc.id, inc.peer, token, p);
    }

    /// Brings the observer figures up to date.
    fn counted(&self, o: &Observers) {
        let c = &self.counters;
        c.observers.store(o.len() as u64, Ordering::Relaxed);
        c.notifications.store(o.sent, Ordering::Relaxed);
    }

    /// Answers request `id`, which arrived at `since`, with `packet`, and counts the answer.
    fn answer(&self, id: RequestId, packet: Packet, since: Instant) {
        self.counters.answered(&packet, since);
        self.responder.respond(id, packet);
    }

    /// Answers 5.03 to a request whose readings were admitted but not taken.
    fn unavailable(&self, id: RequestId, keys: &Keys, e: &PluginError, since: Instant) {
        self.seen.lock().expect("seen").failed(keys);
        self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
        let why = if e.kind == ErrorKind::STOPPED {
            "shutting down"
        } else {
            "cannot take readings now"
        };
        self.answer(id, retry_later(why, self.settings.retry_after), since);
    }

    /// Keeps `h` until the sinks' queues have room, or answers 5.03 if too many wait.
    fn hold(&mut self, h: Held) {
        match self.held.push_back(h) {
            Ok(()) => {
                self.counters.held.fetch_add(1, Ordering::Relaxed);
            }
            Err(h) => {
                let e = PluginError::retry(
                    "too many readings (of all devices, or of this one) wait for the sinks",
                );
                self.unavailable(h.id, &h.keys, &e, h.since);
            }
        }
    }

    fn log_stats(&self) {
        let (c, s) = (&self.counters, &self.stats);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        tracing::info!(
            requests = get(&c.requests),
            readings = get(&c.readings),
            duplicates = get(&c.duplicates),
            bad_requests = get(&c.bad_requests),
            unavailable = get(&c.unavailable),
            held = get(&c.held),
            sessions = get(&s.sessions),
            resumed = get(&s.resumed),
            chains_reused = get(&s.chains_reused),
            handshake_failures = get(&s.handshake_failures),
            unauthenticated = get(&s.unauthenticated),
            denied = get(&s.denied),
            expired = get(&s.expired) + get(&s.expired_resumptions),
            parked_handshakes = get(&s.parked_handshakes),
            evicted_handshakes = get(&s.evicted_handshakes),
            waited_for_slot = get(&s.from_lobby),
            evicted_sessions = get(&s.evicted_sessions),
            cookies_sent = get(&s.cookies_sent),
            polled = get(&s.polled),
            slept = get(&s.slept),
            observers = get(&c.observers),
            notifications = get(&c.notifications),
            "ingress stats"
        );
    }
}

impl Handler for Serving<'_> {
    /// One request, step by step (see [`crate::request`]): answered now, or once the sinks
    /// are done with its readings.
    fn request(&mut self, inc: Incoming) {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let (id, peer) = (inc.id, inc.peer);
        if self.stop_by.is_some() {
            let r = retry_later("shutting down", self.settings.retry_after);
            return self.answer(id, r, Instant::now());
        }
        // The driver admits a session without an identity only with `allow_anonymous`; should
        // a request come without one otherwise, it is refused, never stored as `anonymous`.
        let identity = inc.identity.as_deref();
        if identity.is_none() && !self.settings.allow_anonymous {
            let r = Refused::bad(
                gateway_coap::coap_lite::ResponseType::Unauthorized,
                "this server takes requests only from peers with an identity",
            );
            return self.refuse(id, peer, r);
        }
        let put = match request::route(&inc.packet, &self.settings.path) {
            Ok(Route::Readings) => None,
            Ok(Route::Put { device, sensor }) => Some((device, sensor)),
            Ok(Route::Discovery) => {
                // Links come as link-format only: another Accept gets 4.06 (RFC 7252 5.10.4).
                let accept = inc
                    .packet
                    .get_first_option(gateway_coap::coap_lite::CoapOption::Accept)
                    .map(|v| gateway_coap::decode_uint(v));
                if let Some(a) = accept {
                    if a != Some(u32::from(gateway_coap::ContentFormat::LINK_FORMAT.0)) {
                        let r = Refused::bad(
                            gateway_coap::coap_lite::ResponseType::NotAcceptable,
                            "discovery answers in link-format (40) only",
                        );
                        return self.refuse(id, peer, r);
                    }
                }
                let links = self.links(identity);
                // A reader of a large fleet gets many links: block by block.
                return match latest::blockwise(
                    &inc.packet,
                    gateway_coap::ContentFormat::LINK_FORMAT,
                    &links.0,
                    links.1,
                    self.settings.max_block,
                ) {
                    Ok(r) => self.answer(id, r, Instant::now()),
                    Err(r) => self.refuse(id, peer, r),
                };
            }
            Ok(route) => return self.read_back(&inc, route),
            Err(r) => return self.refuse(id, peer, r),
        };
        let device = identity.unwrap_or(ANONYMOUS);
        let s = &self.settings;
        let decoded = request::decode(
            &inc.packet,
            device,
            s.max_records,
            s.max_body,
            Timestamp::now(),
            &mut self.labels,
        );
        let mut pack = match decoded {
            Ok(p) => p,
            Err(r) => return self.refuse(id, peer, r),
        };
        if let Err(r) = request::authorize(identity, &mut pack.readings) {
            return self.refuse(id, peer, r);
        }
        if let Some((device, sensor)) = &put {
            if let Err(r) = request::one_reading_of(&pack.readings, device, sensor) {
                return self.refuse(id, peer, r);
            }
        }
        let admitted = self.seen.lock().expect("seen").admit(pack.readings);
        let Admitted {
            fresh,
            keys,
            duplicates,
        } = match admitted {
            Ok(a) => a,
            Err(r) => return self.refuse(id, peer, r),
        };
        self.counters
            .duplicates
            .fetch_add(duplicates as u64, Ordering::Relaxed);
        let notices = {
            let mut table = self.latest.lock().expect("latest");
            table.record(&fresh);
            // The gauge is set under the observers' lock by every registration, which holds the
            // table's lock too: read here, it is exact, and a request spares the second lock
            // while nobody observes.
            (self.counters.observers.load(Ordering::Relaxed) > 0).then(|| {
                let mut observers = self.observers.lock().expect("observers");
                observers.plan(&fresh, &table)
            })
        };
        if let Some(mut notices) = notices {
            // Encoded with no lock held: a device's state can be hundreds of KB of JSON, in
            // several formats, and every worker needs these locks for every request.
            notices.encode(self.settings.max_block);
            let mut observers = self.observers.lock().expect("observers");
            observers.deliver(notices);
            self.counted(&observers);
        }
        if fresh.is_empty() {
            return self.answer(id, request::stored(), Instant::now());
        }
        let h = Held {
            id,
            peer,
            readings: fresh,
            keys,
            since: Instant::now(),
        };
        if !self.held.is_empty() {
            // Those that came first go first.
            return self.hold(h);
        }
        if let Err(h) = self.emit(h) {
            self.hold(h);
        }
    }

    /// Emits the held requests, oldest first, while the sinks' queues have room; a request
    /// held for longer than `hold` gets a 5.03.
    fn flush(&mut self) {
        while let Some(h) = self.held.pop_front() {
            if h.since.elapsed() >= self.settings.hold {
                let e = PluginError::retry("the sinks' queues stayed full");
                self.unavailable(h.id, &h.keys, &e, h.since);
                continue;
            }
            if let Err(h) = self.emit(h) {
                self.held.push_front(h);
                return;
            }
        }
    }

    fn deregistered(&mut self, peer: SocketAddr, token: Token) {
        let mut observers = self.observers.lock().expect("observers");
        observers.remove(peer, &token);
        self.counted(&observers);
        tracing::debug!(%peer, observers = observers.len(), "observer deregistered");
    }

    fn tick(&mut self) -> bool {
        self.flush();
        if self.ctx.is_stopping() {
            // The sinks keep writing while sources stop: wait (a little) for the batches in
            // flight, so their devices get the 2.04 and do not send them again. New requests
            // meanwhile get a 5.03.
            let by = *self
                .stop_by
                .get_or_insert_with(|| Instant::now() + Duration::from_secs(5));
            let busy = !self.held.is_empty() || self.seen.lock().expect("seen").busy();
            let go_on = busy && Instant::now() < by;
            if !go_on && self.settings.logs {
                self.log_stats();
            }
            return go_on;
        }
        if self.settings.logs && self.last_log.elapsed() >= Duration::from_secs(60) {
            self.last_log = Instant::now();
            self.log_stats();
        }
        if self.settings.logs && self.last_publish.elapsed() >= PUBLISH_EVERY {
            self.last_publish = Instant::now();
            crate::metrics::of(&self.counters, &self.stats).publish(self.ctx.instance());
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found in an audit: on a dual-stack listener an IPv4 peer comes as `::ffff:a.b.c.d`, and
    /// its /64 made every anonymous IPv4 host one owner, so one of them could fill the queue's
    /// share for all.
    #[test]
    fn anonymous_ipv4_hosts_on_a_dual_stack_listener_are_owners_of_their_own() {
        let held = |peer: &str, device: &str| Held {
            id: RequestId(1),
            peer: peer.parse().unwrap(),
            readings: vec![Reading {
                id: gateway_sdk::ReadingId([1; 16]),
                time: Timestamp(1),
                device: gateway_sdk::Label::from(device),
                sensor: gateway_sdk::Label::from("s"),
                name: gateway_sdk::Label::from("t"),
                unit: gateway_sdk::Label::from(""),
                value: gateway_sdk::Value::Float(1.0),
            }],
            keys: Keys::default(),
            since: Instant::now(),
        };
        let owner = |peer: &str| held(peer, ANONYMOUS).owner();
        assert_ne!(
            owner("[::ffff:192.0.2.1]:5000"),
            owner("[::ffff:192.0.2.2]:5000")
        );
        assert_eq!(
            owner("[::ffff:192.0.2.1]:5000"),
            owner("192.0.2.1:6000"),
            "one host, however it came"
        );
        assert_eq!(
            owner("[2001:db8::1]:1"),
            owner("[2001:db8::2]:2"),
            "an IPv6 host by its /64"
        );
        assert_ne!(owner("[2001:db8::1]:1"), owner("[2001:db8:0:1::1]:1"));
        // A device with an identity is its own owner, wherever it sends from.
        assert_eq!(
            held("[::ffff:192.0.2.1]:1", "pi-01").owner(),
            held("192.0.2.9:1", "pi-01").owner()
        );
    }
}
