//! The CoAP-over-DTLS server as a sans-IO state machine: one [`Server`] holds every peer's DTLS
//! session and one CoAP endpoint, and is handed datagrams, answers and the time.
//!
//! Inputs: [`Server::handle`] (a datagram from a peer), [`Server::respond`] (the application's
//! answer to a request), [`Server::handle_timeout`]. Outputs: [`Server::poll_event`] (requests
//! for the application), [`Server::poll_transmit`] (datagrams to send), and
//! [`Server::poll_timeout`] (when to call `handle_timeout` next). After every input, drain the
//! events, then the transmits, then ask for the timeout.
//!
//! The session rules live here, so that they are tested with simulated time:
//! - a ClientHello without a cookie made for its address is answered statelessly
//!   ([`crate::hello`]);
//! - a verified ClientHello from an address that has a session starts a new association (RFC
//!   6347 §4.2.8: a device that rebooted keeps its port), while the ClientHello that began an
//!   established session, sent again, is dropped;
//! - handshake and session capacity, per host, per identity and in all ([`crate::admission`]);
//!   a verified ClientHello that finds no slot waits in the [`crate::lobby`] and starts as soon
//!   as one frees; a handshake that gives up its slot is parked, and completes if its peer
//!   answers after all;
//! - an established session must have an identity the server accepts (not on `deny`, and one
//!   at all when `require_identity`), or it is closed at once;
//! - handshakes that take longer than `handshake_timeout`, and sessions idle for
//!   `session_idle`, are dropped.

use crate::{
    admission::{self, Admit, Established, Handshake, Limits},
    context::{server_context, ServerSettings},
    hello::{hello_verify_request, parse_client_hello, ClientHello, CookieJar},
    lobby::Lobby,
    recency::Recency,
    session::{Session, State},
    DtlsError,
};
use gateway_coap::{
    coap_lite::Packet, retry_later, Config as CoapConfig, Endpoint, Event, Keyed, RequestId, Token,
};
use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// DTLS settings.
    pub tls: ServerSettings,
    /// CoAP parameters and limits.
    pub coap: CoapConfig,
    /// Most established sessions at once; a newcomer past it replaces the least recently
    /// active session (one without an identity first).
    pub max_sessions: usize,
    /// Most established sessions of one identity; a newer one replaces its oldest.
    pub max_sessions_per_identity: usize,
    /// Most handshakes in progress at once (who makes room past it: [`crate::admission`]).
    pub max_handshakes: usize,
    /// Most handshakes in progress from one IP address.
    pub max_handshakes_per_address: usize,
    /// A session without traffic for this long is dropped.
    pub session_idle: Duration,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
    /// Close every session whose peer has no authenticated identity (no PSK identity, no
    /// verified client certificate) as soon as it is established.
    pub require_identity: bool,
    /// Identities refused at every handshake, full or resumed.
    pub deny: HashSet<String>,
}

/// A request for the application.
#[derive(Debug)]
pub struct Incoming {
    /// Pass to [`Server::respond`].
    pub id: RequestId,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The peer's authenticated identity (PSK identity or certificate common name), fixed when
    /// its session was established; `None` only when the server does not require one.
    pub identity: Option<Arc<str>>,
    /// The request, body reassembled.
    pub packet: Packet,
}

/// Counters of a server. Atomics, so that another thread may read them while it runs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Sessions established (full or resumed handshakes).
    pub sessions: AtomicU64,
    /// Of those, abbreviated handshakes that resumed an earlier session.
    pub resumed: AtomicU64,
    /// HelloVerifyRequests sent (ClientHellos without a valid cookie).
    pub cookies_sent: AtomicU64,
    /// Full handshakes whose client chain was taken on an earlier verification of the very
    /// same chain instead of being verified again: the server context's own count
    /// ([`crate::chains_reused`]), which every worker shares.
    pub chains_reused: Arc<AtomicU64>,
    /// Handshakes that failed, and established sessions that ended in an error (the log says
    /// why). Each is also counted by reason in [`Stats::failures`].
    pub handshake_failures: AtomicU64,
    /// [`Stats::handshake_failures`] by reason, indexed as [`FAILURE_REASONS`].
    pub failures: [AtomicU64; FAILURE_REASONS.len()],
    /// Established sessions now (kept up to date by the driver from [`Server::sessions`], one
    /// difference per worker at a time, so that workers sharing the counters add up).
    pub established_now: std::sync::atomic::AtomicI64,
    /// Handshakes in progress now (the same way).
    pub handshaking_now: std::sync::atomic::AtomicI64,
    /// Sessions closed at once because the peer had no authenticated identity.
    pub unauthenticated: AtomicU64,
    /// Sessions closed at once because the peer's identity is on the deny list.
    pub denied: AtomicU64,
    /// Resumed sessions refused because the client certificate of the session they resume
    /// has expired since.
    pub expired_resumptions: AtomicU64,
    /// Sessions refused after their handshake at the session cap (a peer without an identity
    /// makes room only among those without one). Also counted in [`Stats::over_capacity`].
    pub refused_at_capacity: AtomicU64,
    /// Sessions ended because the client certificate their identity comes from expired.
    pub expired: AtomicU64,
    /// Datagrams from addresses without a session, dropped.
    pub no_session: AtomicU64,
    /// ClientHellos that found the handshake capacity full (they wait in the lobby, or are
    /// dropped when it is full, and sent again), and sessions without an identity refused at
    /// the session cap.
    pub over_capacity: AtomicU64,
    /// Handshakes started from the lobby, after waiting for a slot.
    pub from_lobby: AtomicU64,
    /// Handshakes that gave up their slot to a newer one (stalled, or of the host holding the
    /// most): parked, they still complete if their peer answers (see [`crate::admission`]).
    pub parked_handshakes: AtomicU64,
    /// Parked handshakes forgotten because too many were parked (their peer never answered
    /// in time; it starts again with a new ClientHello).
    pub evicted_handshakes: AtomicU64,
    /// Sessions dropped to make room for a newcomer (the session cap, or its identity's).
    pub evicted_sessions: AtomicU64,
    /// Sessions replaced by a new handshake from the same address (RFC 6347 §4.2.8).
    pub replaced: AtomicU64,
    /// Sessions dropped for idleness.
    pub idle_evictions: AtomicU64,
    /// Times a worker that had run out of work found the next datagram or answer by
    /// busy-polling (counted by the driver).
    pub polled: AtomicU64,
    /// Times a worker waited in its event loop for a datagram, an answer or a timer, asleep
    /// unless one was there already (counted by the driver).
    pub slept: AtomicU64,
}

/// The reasons a DTLS session fails, as [`Stats::failures`] counts them: the peer's certificate
/// refused (unknown CA, expired, revoked), the peer's alert or a protocol error in the
/// handshake, a handshake that took too long, anything else.
pub const FAILURE_REASONS: [&str; 4] = ["certificate", "handshake", "timeout", "other"];

/// The index in [`FAILURE_REASONS`] of `e`'s reason.
pub fn failure_reason(e: &DtlsError) -> usize {
    match e {
        DtlsError::Certificate(_) => 0,
        DtlsError::Handshake(m) | DtlsError::Other(m)
            if m.contains("certificate") || m.contains("revoked") =>
        {
            0
        }
        DtlsError::Handshake(_) => 1,
        DtlsError::HandshakeTimeout(_) => 2,
        _ => 3,
    }
}

/// What a 5.03 for a request the application has no room for looks like: try again in 5 s.
pub fn busy() -> Packet {
    retry_later("busy", 5)
}

/// A handshake whose peer has sent nothing for this long may make room for a new one: a DTLS
/// client that keeps up retransmits its flight after 1 s at the latest.
const STALLED_AFTER: Duration = Duration::from_millis(750);

/// Parked handshakes (see [`crate::admission`]) per handshake slot (`max_handshakes`). In a
/// reconnect storm of 5,000 devices against this machine's 2 cores, with the load generator on
/// the same cores, up to about 400 were parked at once; with room for only 100, 142 devices
/// that answered late found their handshake forgotten and failed.
const PARKED_PER_SLOT: usize = 4;

/// How long a cookie secret lives; a cookie of the previous one is still taken.
const COOKIE_LIFETIME: Duration = Duration::from_secs(300);

/// Most verified ClientHellos waiting for a handshake slot (a few hundred bytes each, at most
/// [`crate::lobby::MAX_WAITING_BYTES`]: 16 MiB at worst).
const LOBBY_CAPACITY: usize = 8192;

/// One peer of a server.
struct Peer {
    session: Session,
    /// The client random of the ClientHello that began the handshake: a ClientHello with
    /// another random is a new handshake (a device that rebooted mid-handshake), not a
    /// retransmission.
    random: [u8; 32],
    /// Set when the session is established and admitted: the peer's authenticated identity.
    identity: Option<Arc<str>>,
    /// When the certificate that identity comes from expires (the session then ends): a
    /// session outlives no certificate, resumed or kept busy.
    expires: Option<Instant>,
    /// An observing session pinged ([`OBSERVE_PROBE_AFTER`]): its last activity then, and
    /// when the ping went.
    probed: Option<(Instant, Instant)>,
    /// Set when the session is admitted: its serial in [`Server::recency`] (0 before).
    serial: u64,
}

/// How long an observing session may go without a datagram from its client before it is
/// pinged (RFC 7641 §4.5 has a server make sure of its observers at least every 24 hours). A
/// client that is there answers, and its session goes on; one that is gone does not, and its
/// session is dropped `session_idle` after the ping (or the ping's exchange lifetime, 247 s by
/// default, if that is longer: the ping's retransmissions get their time), its observations
/// with it. The pings go out at the idle check, which runs every `session_idle` (daily at
/// least) while a session observes: all that are due in one pass, up to that much late.
pub const OBSERVE_PROBE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A CoAP-over-DTLS server, without sockets. See the module documentation.
pub struct Server {
    cfg: Config,
    ctx: openssl::ssl::SslContext,
    peers: HashMap<SocketAddr, Peer, Keyed>,
    /// The peers whose handshake is in progress.
    handshakes: HashSet<SocketAddr, Keyed>,
    /// Of those, the ones that gave up their slot ([`crate::admission`]): they count against
    /// no limit and take no timer but their deadline, and complete if their peer answers.
    /// At most [`PARKED_PER_SLOT`] × `max_handshakes` of them.
    parked: HashSet<SocketAddr, Keyed>,
    cookies: CookieJar,
    endpoint: Endpoint<SocketAddr>,
    stats: Arc<Stats>,
    /// Peers whose session may have output, or may have ended, since the last pump.
    touched: HashSet<SocketAddr, Keyed>,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Verified ClientHellos waiting for a handshake slot.
    lobby: Lobby,
    /// Set when a handshake slot may have freed: the lobby is looked at.
    slot_freed: bool,
    /// When `handle_timeout` last looked at the lobby: every handshake stalled by then was
    /// weighed for the first in line.
    lobby_weighed: Option<Instant>,
    /// No established session can be idle before this (the idle scan is skipped until then).
    idle_check: Option<Instant>,
    /// Established sessions per identity, by address: a device at its own cap makes room
    /// among these few, without a look at the others.
    per_identity: HashMap<Arc<str>, Vec<SocketAddr>>,
    /// Established sessions by last activity: at the session cap, the least recently active
    /// is found without a look at the others.
    recency: Recency,
    /// Observers no longer registered, for [`Server::poll_deregistered`].
    gone: VecDeque<(SocketAddr, Token)>,
    /// Requests with the identity of the session they came in on, for [`Server::poll_event`].
    early: VecDeque<Incoming>,
    /// Warnings about peers, a few a minute ([`crate::quiet`]).
    quiet: crate::quiet::Quiet,
}

/// The certificate_expired alert (RFC 5246 §7.2.2).
const CERTIFICATE_EXPIRED: u8 = 45;

/// What a session that is dropped sends its peer first.
#[derive(Clone, Copy)]
enum Ending {
    /// Nothing (a handshake given up, a session already ended, one replaced).
    Silent,
    /// close_notify: the peer may resume the session.
    Notify,
    /// A fatal alert: the peer learns why, and does not offer the session again.
    Alert(u8),
}

fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What the workers of one server share (each worker is a [`Server`] on a socket of its own,
/// the kernel keeping each peer on one): the DTLS context, so that a session established on
/// one worker resumes on any; the cookie secret, so that a cookie made by one is taken by any;
/// and the counters. Sessions themselves never move between workers.
#[derive(Clone)]
pub struct Shared {
    ctx: openssl::ssl::SslContext,
    cookie_master: [u8; 32],
    start: Instant,
    stats: Arc<Stats>,
}

impl Shared {
    /// Builds and checks the DTLS context of `cfg` (certificate and key files are read) for
    /// `workers` workers with `cfg`'s caps each, and draws a cookie secret.
    ///
    /// The context's session cache keeps as many sessions as the workers may hold established
    /// together (OpenSSL keeps 20,480 whatever the caps, each with the client's certificates,
    /// for two hours after the session ended; a device that makes full handshakes again and
    /// again adds one each time): a server sized for a few devices stays small.
    pub fn new(cfg: &Config, workers: usize, now: Instant) -> Result<Shared, DtlsError> {
        let mut cookie_master = [0u8; 32];
        openssl::rand::rand_bytes(&mut cookie_master)
            .map_err(|e| DtlsError::Other(format!("random bytes: {e}")))?;
        let ctx = server_context(&cfg.tls)?;
        let cached = cfg.max_sessions.saturating_mul(workers).clamp(64, 1 << 30);
        // SAFETY: a valid context, not yet shared with anything.
        unsafe {
            openssl_sys::SSL_CTX_sess_set_cache_size(
                foreign_types::ForeignType::as_ptr(&ctx),
                cached as libc::c_long,
            )
        };
        let stats = Stats {
            chains_reused: crate::verified::reuse_counter(&ctx).unwrap_or_default(),
            ..Stats::default()
        };
        Ok(Shared {
            ctx,
            cookie_master,
            start: now,
            stats: Arc::new(stats),
        })
    }

    /// The counters of every worker together.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

impl Server {
    /// A server with `cfg`'s settings (the DTLS context is built and checked here: certificate
    /// and key files are read). `rng` gives CoAP message ids and tokens.
    pub fn new(
        cfg: Config,
        now: Instant,
        rng: Box<dyn FnMut() -> u64 + Send>,
    ) -> Result<Server, DtlsError> {
        let shared = Shared::new(&cfg, 1, now)?;
        Ok(Server::with_shared(cfg, &shared, rng))
    }

    /// One worker of a server whose workers share `shared` (see [`Shared`]).
    pub fn with_shared(
        cfg: Config,
        shared: &Shared,
        rng: Box<dyn FnMut() -> u64 + Send>,
    ) -> Server {
        Server {
            ctx: shared.ctx.clone(),
            endpoint: Endpoint::new(cfg.coap.clone(), rng),
            cfg,
            peers: HashMap::default(),
            handshakes: HashSet::default(),
            parked: HashSet::default(),
            cookies: CookieJar::shared(shared.cookie_master, shared.start, COOKIE_LIFETIME),
            stats: shared.stats.clone(),
            touched: HashSet::default(),
            out: VecDeque::new(),
            lobby: Lobby::new(LOBBY_CAPACITY),
            slot_freed: false,
            lobby_weighed: None,
            idle_check: None,
            per_identity: HashMap::new(),
            recency: Recency::default(),
            gone: VecDeque::new(),
            early: VecDeque::new(),
            quiet: Default::default(),
        }
    }

    /// The counters, shared: they may be read from another thread.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Established sessions and handshakes in progress.
    pub fn sessions(&self) -> (usize, usize) {
        let hs = self.handshakes.len();
        (self.peers.len() - hs, hs)
    }

    /// The identity of `peer`'s established session, if it has one.
    pub fn identity(&self, peer: SocketAddr) -> Option<&str> {
        self.peers.get(&peer)?.identity.as_deref()
    }

    /// Verified ClientHellos waiting for a handshake slot.
    pub fn waiting(&self) -> usize {
        self.lobby.len()
    }

    /// A datagram from `peer`.
    pub fn handle(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8]) {
        self.on_datagram(now, peer, datagram);
        self.pump(now);
        self.serve_lobby(now);
    }

    /// The application's answer to request `id` (after [`Server::poll_event`] gave it). An
    /// answer with an Observe option to a GET with `Observe: 0` registers its client (see
    /// [`gateway_coap::Endpoint::notify`]).
    pub fn respond(&mut self, now: Instant, id: RequestId, packet: Packet) -> bool {
        let waiting = self.endpoint.respond(now, id, packet);
        self.pump(now);
        waiting
    }

    /// A notification to the client observing with `token` from `peer` (RFC 7641). `false`:
    /// it is not registered (any more); stop notifying it.
    pub fn notify(&mut self, now: Instant, peer: SocketAddr, token: &[u8], packet: Packet) -> bool {
        let sent = self.endpoint.notify(now, peer, token, packet);
        self.pump(now);
        sent
    }

    /// Clients registered for notifications on this server now.
    pub fn observers(&self) -> usize {
        self.endpoint.observers()
    }

    /// The next client that is no longer registered for notifications (it said so, did not
    /// acknowledge one, or its session ended). Drain it with the events.
    pub fn poll_deregistered(&mut self) -> Option<(SocketAddr, Token)> {
        self.sort_events(None);
        self.gone.pop_front()
    }

    /// Timers: DTLS retransmissions, handshake deadlines, idle sessions, CoAP retransmissions,
    /// the lobby. Only handshakes are looked at one by one; established sessions only when one
    /// may have become idle.
    pub fn handle_timeout(&mut self, now: Instant) {
        for a in self.handshakes.iter() {
            if let Some(p) = self.peers.get_mut(a) {
                if !self.parked.contains(a) {
                    p.session.handle_timeout(now);
                }
                p.session.check_deadline(now, self.cfg.handshake_timeout);
                self.touched.insert(*a);
            }
        }
        if self.idle_check.is_some_and(|t| now >= t) {
            self.drop_idle(now);
        }
        self.endpoint.handle_timeout(now);
        self.pump(now);
        // A handshake may have stalled (and may now make room), or a waiting device given up.
        self.slot_freed = true;
        self.serve_lobby(now);
        self.lobby_weighed = Some(now);
    }

    /// Ends `peer`'s session: the certificate of its identity has expired.
    fn end_expired(&mut self, peer: SocketAddr) {
        count(&self.stats.expired);
        let identity = self.peers.get(&peer).and_then(|p| p.identity.clone());
        tracing::info!(%peer, identity = ?identity, "session ended: the client certificate of its identity has expired");
        self.drop_peer(peer, Ending::Alert(CERTIFICATE_EXPIRED));
    }

    /// How often the idle check looks at established sessions: every `session_idle`, and at
    /// least daily, so that a session that comes to observe is pinged after a day's silence
    /// however long `session_idle` is.
    fn recheck(&self) -> Duration {
        self.cfg.session_idle.min(OBSERVE_PROBE_AFTER)
    }

    /// Drops the sessions idle for `session_idle` and those whose certificate has expired,
    /// and notes when the next one can be.
    fn drop_idle(&mut self, now: Instant) {
        let idle_for = self.cfg.session_idle;
        // A pinged client has at least the ping's whole retransmission span to answer.
        let answer_for = idle_for.max(self.endpoint.config().exchange_lifetime());
        let recheck = self.recheck();
        let mut next: Option<Instant> = None;
        let mut idle = Vec::new();
        let mut expired = Vec::new();
        let mut probes = Vec::new();
        // A session that observes is quiet by nature (notifications flow the other way, and
        // a device may post seldom). A client that went away is noticed by its CON
        // notifications going unacknowledged; one whose resources stay silent gets none, so
        // after OBSERVE_PROBE_AFTER without a datagram from it, it is pinged: it answers, or
        // its session goes idle_for later.
        let observing = self.endpoint.observing_peers();
        for (a, p) in &mut self.peers {
            if !p.session.is_established() {
                continue;
            }
            if p.expires.is_some_and(|t| t <= now) {
                expired.push(*a);
                continue;
            }
            let last = p.session.last_activity();
            let at = if observing.contains(a) {
                match p.probed {
                    // Pinged since its client's last datagram: it had its time to answer.
                    Some((before, sent)) if before == last => sent + answer_for,
                    _ => {
                        if last + OBSERVE_PROBE_AFTER <= now {
                            p.probed = Some((last, now));
                            probes.push(*a);
                        }
                        // Looked at again a session_idle on (a day at most), as before there
                        // were pings: its observations may have ended meanwhile (a CON
                        // notification given up), and then it is idle as any session.
                        now + recheck
                    }
                }
            } else {
                last + idle_for
            };
            let at = p.expires.map_or(at, |e| e.min(at));
            if at <= now {
                idle.push(*a);
            } else {
                // Daily at least (session_idle may be longer): a session may come to observe.
                let at = at.min(now + recheck);
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        self.idle_check = next;
        for a in probes {
            tracing::debug!(peer = %a, "observing session silent for a day: pinged");
            self.endpoint.ping(now, a);
        }
        for a in expired {
            self.end_expired(a);
        }
        for a in idle {
            count(&self.stats.idle_evictions);
            tracing::info!(peer = %a, "idle session dropped");
            self.drop_peer(a, Ending::Notify);
        }
    }

    /// The next request for the application.
    pub fn poll_event(&mut self) -> Option<Incoming> {
        self.sort_events(None);
        self.early.pop_front()
    }

    /// Sorts the endpoint's events: requests for the application, clients gone. `from`: the
    /// peer whose datagram the endpoint just took, and its session's identity.
    ///
    /// The endpoint makes requests only of the datagrams it is handed, and each datagram's
    /// are sorted right after it, with its session's identity. A request met anywhere else
    /// has no session to vouch for it: it is dropped (the device sends it again, on a
    /// session), never handed over without its identity.
    fn sort_events(&mut self, from: Option<(SocketAddr, Option<Arc<str>>)>) {
        while let Some(ev) = self.endpoint.poll_event() {
            match ev {
                Event::Request { id, peer, packet } => match &from {
                    Some((p, identity)) if *p == peer => self.early.push_back(Incoming {
                        id,
                        peer,
                        identity: identity.clone(),
                        packet,
                    }),
                    _ => {
                        debug_assert!(false, "a request of {peer} outside its datagram");
                        tracing::warn!(%peer, "a request without its session's identity dropped");
                    }
                },
                Event::Deregistered { peer, token } => self.gone.push_back((peer, token)),
                Event::Response { .. } | Event::Notification { .. } => {}
            }
        }
    }

    /// The next datagram to send, and to whom.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    /// When to call [`Server::handle_timeout`] next. OpenSSL's handshake timers are read
    /// relative to `now` (they run on the real clock). Costs one look at each handshake in
    /// progress, not at each session.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let mut next = self.endpoint.poll_timeout();
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if let Some(t) = self.idle_check {
            at(t);
        }
        for (a, p) in self
            .handshakes
            .iter()
            .filter_map(|a| Some((a, self.peers.get(a)?)))
        {
            let s = &p.session;
            at(s.started() + self.cfg.handshake_timeout);
            if self.parked.contains(a) {
                continue;
            }
            if let Some(d) = s.timeout() {
                at(now + d);
            }
            // When it stalls, it may make room for a waiting device. A stall the lobby was
            // already weighed after weighs the same until something else changes (which has a
            // timer or a datagram of its own): waking for it again would wake at once, for
            // ever, while the first in line waits on its own host's limit.
            let stalls = s.last_progress() + STALLED_AFTER;
            if !self.lobby.is_empty() && self.lobby_weighed.is_none_or(|w| stalls > w) {
                at(stalls);
            }
        }
        if let Some(t) = self.lobby.next_expiry(self.cfg.handshake_timeout) {
            at(t);
        }
        next.map(|n| n.max(now))
    }

    /// Forgets a peer: its session, its handshake, its CoAP exchanges; `ending` says what goes
    /// out first.
    fn drop_peer(&mut self, peer: SocketAddr, ending: Ending) {
        // A handshake that never completed has no CoAP state to forget: skipping the walk over
        // the endpoint's maps keeps a failed handshake (two datagrams, no key work) from
        // costing time in proportion to everything the server holds.
        let handshaking = self.handshakes.remove(&peer);
        if handshaking {
            self.slot_freed = true;
        }
        self.parked.remove(&peer);
        self.touched.remove(&peer);
        if let Some(mut p) = self.peers.remove(&peer) {
            if let Some(id) = &p.identity {
                if let Some(mine) = self.per_identity.get_mut(id) {
                    mine.retain(|a| *a != peer);
                    if mine.is_empty() {
                        self.per_identity.remove(id);
                    }
                }
            }
            let said = match ending {
                Ending::Silent => false,
                Ending::Notify => {
                    p.session.close();
                    true
                }
                Ending::Alert(alert) => {
                    p.session.close_fatal(alert);
                    true
                }
            };
            while let Some(d) = said.then(|| p.session.poll_transmit()).flatten() {
                self.out.push_back((peer, d));
            }
        }
        if !handshaking {
            self.endpoint.forget_peer(peer);
        }
    }

    /// Moves the CoAP endpoint's messages into their sessions, the sessions' records to the
    /// output, and forgets the sessions that ended.
    fn pump(&mut self, now: Instant) {
        // A message's record goes out at once, with the session at hand: a second look-up of
        // the peer (two keyed hashes) per answer is a few percent of a request's work.
        while let Some((peer, bytes)) = self.endpoint.poll_transmit() {
            if let Some(p) = self.peers.get_mut(&peer) {
                let _ = p.session.send(&bytes);
                Self::take_output(&mut self.out, &mut self.touched, peer, p);
            }
        }
        let mut closed = Vec::new();
        for peer in self.touched.drain() {
            let Some(p) = self.peers.get_mut(&peer) else {
                continue;
            };
            while let Some(d) = p.session.poll_transmit() {
                self.out.push_back((peer, d));
            }
            if let State::Closed(e) = p.session.state() {
                closed.push((peer, e.clone()));
            }
        }
        for (peer, e) in closed {
            self.drop_peer(peer, Ending::Silent);
            if e != DtlsError::Closed {
                count(&self.stats.handshake_failures);
                count(&self.stats.failures[failure_reason(&e)]);
                if self.quiet.allow(now) {
                    tracing::warn!(%peer, error = %e, "DTLS session failed");
                }
            } else {
                tracing::debug!(%peer, "DTLS session closed by the peer");
            }
        }
    }

    /// Moves what `p`'s session has to send to the output; if it ended, it is looked at in
    /// [`Server::pump`] (to be dropped).
    fn take_output(
        out: &mut VecDeque<(SocketAddr, Vec<u8>)>,
        touched: &mut HashSet<SocketAddr, Keyed>,
        peer: SocketAddr,
        p: &mut Peer,
    ) {
        while let Some(d) = p.session.poll_transmit() {
            out.push_back((peer, d));
        }
        if matches!(p.session.state(), State::Closed(_)) {
            touched.insert(peer);
        }
    }

    fn on_datagram(&mut self, now: Instant, peer: SocketAddr, d: &[u8]) {
        if let Some(ch) = parse_client_hello(d) {
            // A retransmission of the ClientHello that began the session goes to its handshake
            // while there is one, and is dropped once it is established (a duplicate, or a
            // replay, must not end it); any other ClientHello starts a new association.
            if self.peers.get(&peer).is_none_or(|p| p.random != ch.random) {
                return self.on_new_hello(now, peer, d, &ch);
            }
            if !self.handshakes.contains(&peer) {
                tracing::trace!(%peer, "the ClientHello of an established session again; dropped");
                return;
            }
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            count(&self.stats.no_session);
            tracing::trace!(%peer, "datagram without a session dropped");
            return;
        };
        if p.expires.is_some_and(|t| t <= now) {
            // Its certificate expired before the timer that ends it ran.
            self.end_expired(peer);
            return;
        }
        let was_completed = p.session.handshake_completed();
        let heard = p.session.last_progress();
        let data = p.session.handle_datagram(now, d);
        // What it answers (a handshake flight, an alert) goes out now, with the session at
        // hand, rather than after another look-up in `pump`.
        Self::take_output(&mut self.out, &mut self.touched, peer, p);
        if p.session.last_progress() != heard && self.parked.remove(&peer) {
            tracing::debug!(%peer, "a parked handshake moves again; it takes a slot back");
        }
        // The requests in this datagram carry the identity of the session that decrypted them,
        // taken now: by the time the application polls, that session may have failed (an
        // alert after the data, in the same datagram) or been replaced by a new handshake from
        // the same address, and the address would then name another identity, or none.
        let mut identity = p.identity.clone();
        // Admitted when its handshake completes, even if it has ended since (a close_notify
        // after data, in the datagram that completed it): its data then passes the same
        // checks and carries its identity, and dropping it forgets its CoAP state.
        if !was_completed && p.session.handshake_completed() {
            if !self.admit(now, peer) {
                return;
            }
            // Admission gave it its identity.
            identity = self.peers.get(&peer).and_then(|p| p.identity.clone());
        }
        if data.is_empty() {
            return;
        }
        for app in data {
            self.endpoint.handle_datagram(now, peer, &app);
        }
        self.sort_events(Some((peer, identity)));
    }

    /// A ClientHello that begins a new association: answered statelessly until it carries a
    /// cookie made for its address, then given a session, making room if needed.
    fn on_new_hello(&mut self, now: Instant, peer: SocketAddr, d: &[u8], ch: &ClientHello) {
        // Bound to the association the address has (see CookieJar::make): a recorded
        // ClientHello with a cookie made before it began cannot end it.
        let bound = self.peers.get(&peer).map(|p| p.random);
        let bound = bound.as_ref().map_or(&[][..], |r| &r[..]);
        if !self.cookies.check(now, peer, ch, bound) {
            // Stateless: one small datagram back, nothing kept.
            let cookie = self.cookies.make(now, peer, ch, bound);
            self.out
                .push_back((peer, hello_verify_request(ch, &cookie)));
            count(&self.stats.cookies_sent);
            return;
        }
        if self.peers.contains_key(&peer) {
            // RFC 6347 §4.2.8: a verified ClientHello at epoch 0 from an address with a session
            // (or a handshake) starts a new association: a device that rebooted keeps its port.
            tracing::info!(%peer, "peer started a new handshake; its old session is replaced");
            count(&self.stats.replaced);
            self.drop_peer(peer, Ending::Silent);
        }
        let limits = self.limits();
        match admission::handshake(&self.in_progress(), peer.ip(), now, limits) {
            Admit::Wait => {
                count(&self.stats.over_capacity);
                let waits = self.lobby.offer(now, peer, d, ch);
                tracing::debug!(%peer, handshakes = self.handshakes.len(), waiting = self.lobby.len(), "handshake capacity full: the ClientHello {}", if waits { "waits for a slot" } else { "is dropped (the lobby is full too; it will be sent again)" });
            }
            Admit::Start(evict) => {
                self.lobby.remove(peer);
                self.park_handshakes(evict);
                self.start_handshake(now, peer, d, ch);
            }
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_total: self.cfg.max_handshakes,
            per_address: self.cfg.max_handshakes_per_address,
            stalled_after: STALLED_AFTER,
        }
    }

    /// The handshakes that hold a slot, as admission sees them.
    fn in_progress(&self) -> Vec<Handshake> {
        self.handshakes_where(false)
    }

    /// The handshakes in progress that are parked (`true`) or hold a slot (`false`).
    fn handshakes_where(&self, parked: bool) -> Vec<Handshake> {
        self.handshakes
            .iter()
            .filter(|a| self.parked.contains(*a) == parked)
            .filter_map(|a| {
                let s = &self.peers.get(a)?.session;
                Some(Handshake {
                    peer: *a,
                    started: s.started(),
                    heard: s.last_progress(),
                })
            })
            .collect()
    }

    /// `give_up` give their slots to a newcomer: they are parked, and past [`PARKED_PER_SLOT`]
    /// × `max_handshakes` parked, the host with the most parked forgets its oldest.
    fn park_handshakes(&mut self, give_up: Vec<SocketAddr>) {
        for old in give_up {
            count(&self.stats.parked_handshakes);
            tracing::debug!(peer = %old, "handshake parked: it gave its slot to a newer one, and completes if its peer answers");
            self.parked.insert(old);
            self.slot_freed = true;
        }
        while self.parked.len() > PARKED_PER_SLOT * self.cfg.max_handshakes.max(1) {
            let Some(old) = admission::park_victim(&self.handshakes_where(true)) else {
                break;
            };
            count(&self.stats.evicted_handshakes);
            tracing::debug!(peer = %old, "parked handshake forgotten: too many are parked");
            self.drop_peer(old, Ending::Silent);
        }
    }

    /// Starts the handshake that `peer`'s verified ClientHello `d` asks for.
    fn start_handshake(&mut self, now: Instant, peer: SocketAddr, d: &[u8], ch: &ClientHello) {
        match Session::server(&self.ctx, d, &ch.cookie, self.cfg.tls.mtu, now) {
            Ok(session) => {
                self.handshakes.insert(peer);
                self.touched.insert(peer);
                self.peers.insert(
                    peer,
                    Peer {
                        session,
                        random: ch.random,
                        identity: None,
                        expires: None,
                        probed: None,
                        serial: 0,
                    },
                );
            }
            Err(e) => {
                count(&self.stats.handshake_failures);
                count(&self.stats.failures[failure_reason(&e)]);
                if self.quiet.allow(now) {
                    tracing::warn!(%peer, error = %e, "handshake refused");
                }
            }
        }
    }

    /// Starts the handshakes of waiting devices while there are slots for them: first come,
    /// first served, skipping a host at its own limit; the first in line may also take the
    /// slot of a stalled handshake.
    fn serve_lobby(&mut self, now: Instant) {
        if self.lobby.is_empty() || !std::mem::take(&mut self.slot_freed) {
            return;
        }
        let gave_up = self.lobby.expire(now, self.cfg.handshake_timeout);
        if gave_up > 0 {
            tracing::debug!(peers = gave_up, "devices waited for a handshake slot as long as a handshake may take, and were forgotten");
        }
        let limits = self.limits();
        loop {
            let in_progress = self.in_progress();
            let room = admission::Room::new(&in_progress, limits);
            let w = match self.lobby.take_first(|w| room.fits(w.peer.ip())) {
                Some(w) => w,
                None => {
                    // The first in line may take a stalled handshake's slot.
                    let Some(first) = self.lobby.first() else {
                        return;
                    };
                    match admission::handshake(&in_progress, first.peer.ip(), now, limits) {
                        Admit::Start(evict) => {
                            self.park_handshakes(evict);
                            self.lobby.take_first(|_| true).expect("the first in line")
                        }
                        Admit::Wait => return,
                    }
                }
            };
            if self.peers.contains_key(&w.peer) {
                // It has a session or a handshake already (it came in another way).
                continue;
            }
            count(&self.stats.from_lobby);
            let waited = now.saturating_duration_since(w.since);
            tracing::debug!(peer = %w.peer, ?waited, "handshake starts after waiting for a slot");
            self.start_handshake(now, w.peer, &w.datagram, &w.hello);
            self.pump(now);
        }
    }

    /// A session was just established: it stays only if its peer has an identity the server
    /// accepts and there is room for it. `false` if it was closed.
    fn admit(&mut self, now: Instant, peer: SocketAddr) -> bool {
        self.handshakes.remove(&peer);
        self.parked.remove(&peer);
        self.slot_freed = true;
        let p = self.peers.get(&peer).expect("the peer being admitted");
        let identity = p.session.peer_identity();
        let (resumed, cipher) = (p.session.resumed(), p.session.cipher().map(str::to_owned));
        // A full handshake verified the certificate now; a resumed one carries the first
        // handshake's, which may have expired since.
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
        let expires = p.session.peer_not_after().map(|t| {
            now + t
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .min(CENTURY)
        });
        // Out of the session cache too, when the session is refused for what it is: a
        // refused handshake would push the devices' sessions out of it, and resuming it
        // would only be refused again. A refusal of a peer without an identity is warned
        // about a few times a minute at most ([`crate::quiet`]): anyone can cause one at
        // every handshake. One of a credential the server once took (denied, expired, a
        // certificate named after a PSK device) is always said: that is the line an operator
        // looks for, and a flood of anonymous failures must not hide it.
        if expires.is_some_and(|t| t <= now) {
            count(&self.stats.expired_resumptions);
            p.session.forget_resumption(&self.ctx);
            tracing::warn!(%peer, identity = ?identity, "DTLS session refused: the client certificate of the session it resumes has expired");
            self.drop_peer(peer, Ending::Alert(CERTIFICATE_EXPIRED));
            return false;
        }
        // A certificate's name that is also a PSK identity here would act as that device.
        let by_certificate = expires.is_some();
        if let Some(why) = self.refusal(identity.as_deref(), by_certificate) {
            p.session.forget_resumption(&self.ctx);
            if identity.is_some() || self.quiet.allow(now) {
                tracing::warn!(%peer, identity = ?identity, "DTLS session refused: {why}");
            }
            self.drop_peer(peer, Ending::Notify);
            return false;
        }
        if let Some(why) = self.make_room(peer, identity.as_deref()) {
            if self.quiet.allow(now) {
                tracing::warn!(%peer, identity = ?identity, "DTLS session refused: {why}");
            }
            self.drop_peer(peer, Ending::Notify);
            return false;
        }
        count(&self.stats.sessions);
        if resumed {
            count(&self.stats.resumed);
        }
        tracing::info!(%peer, identity = ?identity, cipher = ?cipher, resumed, "DTLS session established");
        if let Some(p) = self.peers.get_mut(&peer) {
            let identity: Option<Arc<str>> = identity.map(Arc::from);
            if let Some(id) = &identity {
                self.per_identity.entry(id.clone()).or_default().push(peer);
            }
            p.serial = self
                .recency
                .admitted(peer, identity.is_none(), p.session.last_activity());
            p.identity = identity;
            p.expires = expires;
            let idle_at = p.session.last_activity() + self.recheck();
            let check = expires.map_or(idle_at, |e| e.min(idle_at));
            self.idle_check = Some(self.idle_check.map_or(check, |t| t.min(check)));
        }
        if self
            .recency
            .needs_compacting(self.peers.len() - self.handshakes.len())
        {
            self.recency.compact(
                self.peers
                    .iter()
                    .filter(|(_, p)| p.serial != 0)
                    .map(|(a, p)| {
                        let last = p.session.last_activity();
                        (*a, p.serial, p.identity.is_none(), last)
                    }),
            );
        }
        true
    }

    /// Why a session with `identity` (from a client certificate if `by_certificate`, else
    /// from a PSK) may not carry data, if it may not.
    fn refusal(&self, identity: Option<&str>, by_certificate: bool) -> Option<String> {
        match identity {
            Some(id) if self.cfg.deny.contains(id) => {
                count(&self.stats.denied);
                Some(format!("identity {id:?} is on the deny list"))
            }
            // PSK identities and certificate names are one namespace (a device is its name,
            // whichever proved it): a certificate the CA issued for a PSK device's name, from
            // a request a device made, say, would post, read and delete as that device.
            Some(id) if by_certificate && self.cfg.tls.psk.contains_key(id) => {
                count(&self.stats.denied);
                Some(format!("the client certificate's name {id:?} is a PSK identity here, and only its key may act as it"))
            }
            None if self.cfg.require_identity => {
                count(&self.stats.unauthenticated);
                Some("the peer has no authenticated identity (no PSK, no verified client certificate)".into())
            }
            _ => None,
        }
    }

    /// Drops the sessions that must make room for `peer`'s (see
    /// [`admission::sessions_to_evict`]); why it may not stay, if there is no room.
    fn make_room(&mut self, peer: SocketAddr, identity: Option<&str>) -> Option<String> {
        // Room for it without looking at any session: under both caps.
        let sessions = self.peers.len() - self.handshakes.len() - 1;
        let own: &[SocketAddr] = identity
            .and_then(|id| self.per_identity.get(id))
            .map_or(&[], Vec::as_slice);
        let max_sessions = self.cfg.max_sessions.max(1);
        let per_identity = self.cfg.max_sessions_per_identity.max(1);
        if sessions < max_sessions && own.len() < per_identity {
            return None;
        }
        // The identity's own least recently active sessions beyond its share, found in its
        // own list, which is then at most that long (a device at its cap that keeps opening
        // sessions made every handshake visit all 20,000)...
        let mut evict = Vec::new();
        if own.len() >= per_identity {
            let own: Vec<Established<'_>> = own
                .iter()
                .filter(|a| **a != peer && !self.handshakes.contains(a))
                .filter_map(|a| self.peers.get_key_value(a))
                .map(|(a, p)| Established {
                    peer: *a,
                    last: p.session.last_activity(),
                    identity: p.identity.as_deref(),
                })
                .collect();
            evict = admission::sessions_to_evict(&own, peer, identity, per_identity, usize::MAX)
                .unwrap_or_default();
        }
        // ...then, at the session cap, the least recently active of all (one without an
        // identity first), found in `recency` without a look at the others.
        while sessions - evict.len() >= max_sessions {
            // A serial is given at admission: the newcomer, and handshakes, have none yet.
            let peers = &self.peers;
            let Some(old) = self.recency.least_recent(identity.is_none(), |a, serial| {
                let p = peers.get(&a).filter(|p| p.serial == serial)?;
                (!evict.contains(&a)).then(|| p.session.last_activity())
            }) else {
                count(&self.stats.over_capacity);
                count(&self.stats.refused_at_capacity);
                return Some(format!(
                    "at the session cap ({}), and a peer without an identity makes room only among those without one",
                    self.cfg.max_sessions
                ));
            };
            evict.push(old);
        }
        for old in evict {
            count(&self.stats.evicted_sessions);
            tracing::info!(peer = %old, newcomer = %peer, "least recently active session dropped to make room");
            self.drop_peer(old, Ending::Notify);
        }
        None
    }
}
