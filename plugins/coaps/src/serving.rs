//! The ingress at work, on its source thread: each request the server machine decodes is taken
//! through [`crate::request`]'s steps and emitted on its own (so that a sink's refusal of one
//! device's readings is that device's alone), and answered once the sinks are done with it.
//! When the sinks' queues are full, admitted requests wait here, in order, and go out after
//! the sinks' next write; only one that waited `hold` gets a 5.03. The server machine never
//! waits for a sink.

use crate::request::{self, Admitted, Key, Refused, Route, Seen, ANONYMOUS};
use gateway_coap::{retry_later, Code, RequestId};
use gateway_coaps_tokio::{Handler, Incoming, Responder, ServerStats};
use gateway_sdk::{tracing, ErrorKind, PluginError, Reading, SourceContext, Timestamp};
use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// Request and reading counters, logged periodically.
#[derive(Default)]
pub struct Counters {
    requests: AtomicU64,
    readings: AtomicU64,
    duplicates: AtomicU64,
    bad_requests: AtomicU64,
    unavailable: AtomicU64,
    /// Requests that waited for room in the sinks' queues.
    held: AtomicU64,
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
    /// Most requests waiting for room (in this worker); past it, a 5.03 at once.
    pub max_held: usize,
    /// Whether this worker logs the counters (one of them does).
    pub logs: bool,
}

/// What the workers share: the memory of reading ids, the counters.
pub struct Together {
    seen: Arc<Mutex<Seen>>,
    counters: Arc<Counters>,
}

impl Together {
    /// `dedup_ids` sizes the memory of reading ids already stored.
    pub fn new(dedup_ids: usize) -> Together {
        Together {
            seen: Arc::new(Mutex::new(Seen::new(dedup_ids))),
            counters: Arc::default(),
        }
    }
}

/// An admitted request waiting for room in the sinks' queues.
struct Held {
    id: RequestId,
    peer: SocketAddr,
    readings: Vec<Reading>,
    keys: Vec<Key>,
    since: Instant,
}

/// The [`Handler`] of the ingress's server.
pub struct Serving<'a> {
    ctx: &'a SourceContext,
    settings: Settings,
    responder: Responder,
    stats: Arc<ServerStats>,
    seen: Arc<Mutex<Seen>>,
    counters: Arc<Counters>,
    held: VecDeque<Held>,
    last_log: Instant,
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
        Serving {
            ctx,
            settings,
            responder,
            stats,
            seen: together.seen.clone(),
            counters: together.counters.clone(),
            held: VecDeque::new(),
            last_log: Instant::now(),
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
        self.responder.respond(id, r.reply);
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
                responder.respond(id, request::stored());
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
                responder.respond(id, request::not_stored(&e, retry_after));
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
                _ => {
                    self.unavailable(id, &keys, &e.error);
                    Ok(())
                }
            },
        }
    }

    /// Answers 5.03 to a request whose readings were admitted but not taken.
    fn unavailable(&self, id: RequestId, keys: &[Key], e: &PluginError) {
        self.seen.lock().expect("seen").failed(keys);
        self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
        let why = if e.kind == ErrorKind::STOPPED {
            "shutting down"
        } else {
            "cannot take readings now"
        };
        self.responder
            .respond(id, retry_later(why, self.settings.retry_after));
    }

    /// Keeps `h` until the sinks' queues have room, or answers 5.03 if too many wait.
    fn hold(&mut self, h: Held) {
        if self.held.len() >= self.settings.max_held {
            let e = PluginError::retry("too many requests wait for the sinks");
            return self.unavailable(h.id, &h.keys, &e);
        }
        self.counters.held.fetch_add(1, Ordering::Relaxed);
        self.held.push_back(h);
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
            handshake_failures = get(&s.handshake_failures),
            unauthenticated = get(&s.unauthenticated),
            denied = get(&s.denied),
            evicted_handshakes = get(&s.evicted_handshakes),
            waited_for_slot = get(&s.from_lobby),
            evicted_sessions = get(&s.evicted_sessions),
            cookies_sent = get(&s.cookies_sent),
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
            return self.responder.respond(id, r);
        }
        match request::route(&inc.packet, &self.settings.path) {
            Ok(Route::Readings) => {}
            Ok(Route::Discovery(r)) => return self.responder.respond(id, r),
            Err(r) => return self.refuse(id, peer, r),
        }
        // The driver admits a session without an identity only with `allow_anonymous`.
        let identity = inc.identity.as_deref();
        let device = identity.unwrap_or(ANONYMOUS);
        let s = &self.settings;
        let decoded = request::decode(
            &inc.packet,
            device,
            s.max_records,
            s.max_body,
            Timestamp::now(),
        );
        let mut pack = match decoded {
            Ok(p) => p,
            Err(r) => return self.refuse(id, peer, r),
        };
        if let Err(r) = request::authorize(identity, &mut pack.readings) {
            return self.refuse(id, peer, r);
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
        if fresh.is_empty() {
            return self.responder.respond(id, request::stored());
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
                self.unavailable(h.id, &h.keys, &e);
                continue;
            }
            if let Err(h) = self.emit(h) {
                self.held.push_front(h);
                return;
            }
        }
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
        true
    }
}
