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
//! - an established session must have an identity the server accepts (not on `deny`, and one
//!   at all when `require_identity`), or it is closed at once;
//! - handshakes that take longer than `handshake_timeout`, and sessions idle for
//!   `session_idle`, are dropped.

use crate::{
    admission::{self, Admit, Established, Handshake, Limits},
    context::{server_context, ServerSettings},
    hello::{hello_verify_request, parse_client_hello, ClientHello, CookieJar},
    session::{Session, State},
    DtlsError,
};
use gateway_coap::{
    coap_lite::Packet, retry_later, Config as CoapConfig, Endpoint, Event, RequestId,
};
use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
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
    /// Handshakes that failed (the log says why).
    pub handshake_failures: AtomicU64,
    /// Sessions closed at once because the peer had no authenticated identity.
    pub unauthenticated: AtomicU64,
    /// Sessions closed at once because the peer's identity is on the deny list.
    pub denied: AtomicU64,
    /// Datagrams from addresses without a session, dropped.
    pub no_session: AtomicU64,
    /// ClientHellos dropped because the handshake capacity was full (they are sent again),
    /// and sessions without an identity refused at the session cap.
    pub over_capacity: AtomicU64,
    /// Stalled handshakes dropped to make room for newer ones (see [`crate::admission`]).
    pub evicted_handshakes: AtomicU64,
    /// Sessions dropped to make room for a newcomer (the session cap, or its identity's).
    pub evicted_sessions: AtomicU64,
    /// Sessions replaced by a new handshake from the same address (RFC 6347 §4.2.8).
    pub replaced: AtomicU64,
    /// Sessions dropped for idleness.
    pub idle_evictions: AtomicU64,
}

/// What a 5.03 for a request the application has no room for looks like: try again in 5 s.
pub fn busy() -> Packet {
    retry_later("busy", 5)
}

/// A handshake whose peer has sent nothing for this long may make room for a new one: a DTLS
/// client that keeps up retransmits its flight after 1 s at the latest.
const STALLED_AFTER: Duration = Duration::from_millis(750);

/// How long a cookie secret lives; a cookie of the previous one is still taken.
const COOKIE_LIFETIME: Duration = Duration::from_secs(300);

/// One peer of a server.
struct Peer {
    session: Session,
    /// The client random of the ClientHello that began the handshake: a ClientHello with
    /// another random is a new handshake (a device that rebooted mid-handshake), not a
    /// retransmission.
    random: [u8; 32],
    /// Set when the session is established and admitted: the peer's authenticated identity.
    identity: Option<Arc<str>>,
}

/// A CoAP-over-DTLS server, without sockets. See the module documentation.
pub struct Server {
    cfg: Config,
    ctx: openssl::ssl::SslContext,
    peers: HashMap<SocketAddr, Peer>,
    /// The peers whose handshake is in progress.
    handshakes: HashSet<SocketAddr>,
    cookies: CookieJar,
    endpoint: Endpoint<SocketAddr>,
    stats: Arc<Stats>,
    /// Peers whose session may have output, or may have ended, since the last pump.
    touched: HashSet<SocketAddr>,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
}

fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Server {
    /// A server with `cfg`'s settings (the DTLS context is built and checked here: certificate
    /// and key files are read). `rng` gives CoAP message ids and tokens.
    pub fn new(
        cfg: Config,
        now: Instant,
        rng: Box<dyn FnMut() -> u64 + Send>,
    ) -> Result<Server, DtlsError> {
        Ok(Server {
            ctx: server_context(&cfg.tls)?,
            endpoint: Endpoint::new(cfg.coap.clone(), rng),
            cfg,
            peers: HashMap::new(),
            handshakes: HashSet::new(),
            cookies: CookieJar::new(now, COOKIE_LIFETIME),
            stats: Arc::new(Stats::default()),
            touched: HashSet::new(),
            out: VecDeque::new(),
        })
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

    /// A datagram from `peer`.
    pub fn handle(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8]) {
        self.on_datagram(now, peer, datagram);
        self.pump();
    }

    /// The application's answer to request `id` (after [`Server::poll_event`] gave it).
    pub fn respond(&mut self, now: Instant, id: RequestId, packet: Packet) {
        self.endpoint.respond(now, id, packet);
        self.pump();
    }

    /// Timers: DTLS retransmissions, handshake deadlines, idle sessions, CoAP retransmissions.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (a, p) in self.peers.iter_mut() {
            if !p.session.is_established() {
                p.session.handle_timeout(now);
                p.session.check_deadline(now, self.cfg.handshake_timeout);
                self.touched.insert(*a);
            }
        }
        let idle: Vec<SocketAddr> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.session.is_established()
                    && now.saturating_duration_since(p.session.last_activity())
                        >= self.cfg.session_idle
            })
            .map(|(a, _)| *a)
            .collect();
        for a in idle {
            count(&self.stats.idle_evictions);
            tracing::info!(peer = %a, "idle session dropped");
            self.drop_peer(a, true);
        }
        self.endpoint.handle_timeout(now);
        self.pump();
    }

    /// The next request for the application.
    pub fn poll_event(&mut self) -> Option<Incoming> {
        while let Some(ev) = self.endpoint.poll_event() {
            if let Event::Request { id, peer, packet } = ev {
                let identity = self.peers.get(&peer).and_then(|p| p.identity.clone());
                return Some(Incoming {
                    id,
                    peer,
                    identity,
                    packet,
                });
            }
        }
        None
    }

    /// The next datagram to send, and to whom.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    /// When to call [`Server::handle_timeout`] next. OpenSSL's handshake timers are read
    /// relative to `now` (they run on the real clock).
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let mut next = self.endpoint.poll_timeout();
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for p in self.peers.values() {
            let s = &p.session;
            if let Some(d) = s.timeout() {
                at(now + d);
            }
            if !s.is_established() {
                at(s.started() + self.cfg.handshake_timeout);
            } else {
                at(s.last_activity() + self.cfg.session_idle);
            }
        }
        next.map(|n| n.max(now))
    }

    /// Forgets a peer: its session, its handshake, its CoAP exchanges. With `close`, a
    /// close_notify goes out first.
    fn drop_peer(&mut self, peer: SocketAddr, close: bool) {
        self.handshakes.remove(&peer);
        self.touched.remove(&peer);
        if let Some(mut p) = self.peers.remove(&peer) {
            if close {
                p.session.close();
                while let Some(d) = p.session.poll_transmit() {
                    self.out.push_back((peer, d));
                }
            }
        }
        self.endpoint.forget_peer(peer);
    }

    /// Moves the CoAP endpoint's messages into their sessions, the sessions' records to the
    /// output, and forgets the sessions that ended.
    fn pump(&mut self) {
        while let Some((peer, bytes)) = self.endpoint.poll_transmit() {
            if let Some(p) = self.peers.get_mut(&peer) {
                let _ = p.session.send(&bytes);
                self.touched.insert(peer);
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
            self.drop_peer(peer, false);
            if e != DtlsError::Closed {
                count(&self.stats.handshake_failures);
                tracing::warn!(%peer, error = %e, "DTLS session failed");
            } else {
                tracing::debug!(%peer, "DTLS session closed by the peer");
            }
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
        self.touched.insert(peer);
        let was_established = p.session.is_established();
        let data = p.session.handle_datagram(now, d);
        if !was_established && p.session.is_established() && !self.admit(peer) {
            return;
        }
        for app in data {
            self.endpoint.handle_datagram(now, peer, &app);
        }
    }

    /// A ClientHello that begins a new association: answered statelessly until it carries a
    /// cookie made for its address, then given a session, making room if needed.
    fn on_new_hello(&mut self, now: Instant, peer: SocketAddr, d: &[u8], ch: &ClientHello) {
        if !self.cookies.check(now, peer, ch) {
            // Stateless: one small datagram back, nothing kept.
            let cookie = self.cookies.make(now, peer, ch);
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
            self.drop_peer(peer, false);
        }
        let in_progress: Vec<Handshake> = self
            .handshakes
            .iter()
            .filter_map(|a| {
                let s = &self.peers.get(a)?.session;
                Some(Handshake {
                    peer: *a,
                    started: s.started(),
                    heard: s.last_progress(),
                })
            })
            .collect();
        let limits = Limits {
            max_total: self.cfg.max_handshakes,
            per_address: self.cfg.max_handshakes_per_address,
            stalled_after: STALLED_AFTER,
        };
        match admission::handshake(&in_progress, peer.ip(), now, limits) {
            Admit::Wait => {
                count(&self.stats.over_capacity);
                tracing::debug!(%peer, handshakes = in_progress.len(), "handshake capacity full: the ClientHello is dropped (it will be sent again)");
                return;
            }
            Admit::Start(evict) => {
                for old in evict {
                    count(&self.stats.evicted_handshakes);
                    tracing::debug!(peer = %old, "stalled handshake dropped to make room for a newer one");
                    self.drop_peer(old, false);
                }
            }
        }
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
                    },
                );
            }
            Err(e) => {
                count(&self.stats.handshake_failures);
                tracing::warn!(%peer, error = %e, "handshake refused");
            }
        }
    }

    /// A session was just established: it stays only if its peer has an identity the server
    /// accepts and there is room for it. `false` if it was closed.
    fn admit(&mut self, peer: SocketAddr) -> bool {
        self.handshakes.remove(&peer);
        let p = self.peers.get(&peer).expect("the peer being admitted");
        let identity = p.session.peer_identity();
        let (resumed, cipher) = (p.session.resumed(), p.session.cipher().map(str::to_owned));
        let refused = self
            .refusal(identity.as_deref())
            .or_else(|| self.make_room(peer, identity.as_deref()));
        if let Some(why) = refused {
            tracing::warn!(%peer, identity = ?identity, "DTLS session refused: {why}");
            self.drop_peer(peer, true);
            return false;
        }
        count(&self.stats.sessions);
        if resumed {
            count(&self.stats.resumed);
        }
        tracing::info!(%peer, identity = ?identity, cipher = ?cipher, resumed, "DTLS session established");
        if let Some(p) = self.peers.get_mut(&peer) {
            p.identity = identity.map(Arc::from);
        }
        true
    }

    /// Why a session with `identity` may not carry data, if it may not.
    fn refusal(&self, identity: Option<&str>) -> Option<String> {
        match identity {
            Some(id) if self.cfg.deny.contains(id) => {
                count(&self.stats.denied);
                Some(format!("identity {id:?} is on the deny list"))
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
        let established: Vec<Established<'_>> = self
            .peers
            .iter()
            .filter(|(a, _)| **a != peer && !self.handshakes.contains(a))
            .map(|(a, p)| Established {
                peer: *a,
                last: p.session.last_activity(),
                identity: p.identity.as_deref(),
            })
            .collect();
        let Some(evict) = admission::sessions_to_evict(
            &established,
            peer,
            identity,
            self.cfg.max_sessions_per_identity,
            self.cfg.max_sessions,
        ) else {
            count(&self.stats.over_capacity);
            return Some(format!(
                "at the session cap ({}), and a peer without an identity makes room only among those without one",
                self.cfg.max_sessions
            ));
        };
        for old in evict {
            count(&self.stats.evicted_sessions);
            tracing::info!(peer = %old, newcomer = %peer, "least recently active session dropped to make room");
            self.drop_peer(old, true);
        }
        None
    }
}
