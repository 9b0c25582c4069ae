//! The CoAP endpoint: reliability, de-duplication, separate responses and Block1 transfers for
//! any number of peers. See the crate documentation for the order in which to drain it.

mod client;
#[cfg(test)]
mod due_tests;
mod observe;
mod rto;
mod server;

pub use observe::observe_of;
pub use server::DEDUP_KEPT_PER_PEER;

use crate::message::{empty, Block};
use coap_lite::{MessageClass, MessageType, Packet};
use std::{
    collections::VecDeque,
    hash::Hash,
    time::{Duration, Instant},
};

/// The endpoint's maps are keyed by what peers choose: keyed SipHash, gathered (see [`crate::Keyed`]).
type HashMap<K, V> = std::collections::HashMap<K, V, crate::Keyed>;

/// Transmission parameters and limits.
#[derive(Debug, Clone)]
pub struct Config {
    /// ACK_TIMEOUT.
    pub ack_timeout: Duration,
    /// ACK_RANDOM_FACTOR.
    pub ack_random_factor: f64,
    /// MAX_RETRANSMIT.
    pub max_retransmit: u32,
    /// How long a request may wait for the application before it gets an empty ACK and a
    /// separate response.
    pub separate_after: Duration,
    /// How long a client waits for a separate response after the empty ACK.
    pub separate_timeout: Duration,
    /// Block size exponent for outgoing Block1 transfers: size = 2^(szx+4), 0..=6.
    pub block_szx: u8,
    /// Largest payload sent in one message; larger ones go block-wise. Set it from the path
    /// MTU (a DTLS record carries at most 16 KiB).
    pub max_payload: usize,
    /// Largest request body (after reassembly) a server takes; larger ones get 4.13.
    pub max_body: usize,
    /// Most requests remembered for de-duplication. A full memory forgets the oldest, but not
    /// the last [`DEDUP_KEPT_PER_PEER`] of a peer while it holds fewer than four times this
    /// many: those stay for the exchange lifetime whatever the others send.
    pub dedup_capacity: usize,
    /// Most Block1 transfers reassembled at once.
    pub max_reassemblies: usize,
    /// Most Block1 transfers one peer may have in progress at once.
    pub max_reassemblies_per_peer: usize,
    /// Most bytes held by Block1 transfers in progress, all peers together.
    pub max_reassembly_bytes: usize,
    /// Most bytes held by one peer's Block1 transfers in progress.
    pub max_reassembly_bytes_per_peer: usize,
    /// NSTART (RFC 7252 §4.7): most requests in flight to one peer at once. Requests past it
    /// wait, in order, for one to finish.
    pub nstart: usize,
    /// Retransmission timeouts from measured round trips, per peer (CoCoA-style, see
    /// `endpoint/rto.rs`); `false`: ACK_TIMEOUT for every request, doubled per retransmission.
    pub adaptive_rto: bool,
    /// The smallest measured timeout used (200 ms: a guard against a run of lucky samples;
    /// the estimate itself covers the round trip and its variance), or `ack_timeout` if that
    /// was set lower.
    pub min_rto: Duration,
    /// The largest.
    pub max_rto: Duration,
    /// Observe (RFC 7641): every this many notifications to one client, one goes CON (the
    /// others NON), so that a client that went away is noticed.
    pub observe_con_every: u32,
    /// Observe: a notification goes CON when the last CON to that client is this old.
    pub observe_con_after: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            separate_after: Duration::from_secs(1),
            separate_timeout: Duration::from_secs(60),
            block_szx: 6,
            max_payload: 1024,
            max_body: 1 << 20,
            dedup_capacity: 16_384,
            max_reassemblies: 64,
            max_reassemblies_per_peer: 4,
            max_reassembly_bytes: 8 << 20,
            max_reassembly_bytes_per_peer: 1 << 20,
            nstart: 1,
            adaptive_rto: true,
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(60),
            observe_con_every: 20,
            observe_con_after: Duration::from_secs(60),
        }
    }
}

impl Config {
    /// MAX_TRANSMIT_SPAN + 2 * MAX_LATENCY + PROCESSING_DELAY (RFC 7252 §4.8.2), at most a
    /// day whatever the settings (so that `now` plus it is always an `Instant`).
    pub fn exchange_lifetime(&self) -> Duration {
        const DAY: Duration = Duration::from_secs(86_400);
        (self.max_transmit_span() + Duration::from_secs(200) + self.ack_timeout.min(DAY)).min(DAY)
    }
    /// MAX_TRANSMIT_SPAN (RFC 7252 §4.8.2): the longest a sender goes on retransmitting one
    /// CON message (45 s with the defaults); at most a day.
    pub fn max_transmit_span(&self) -> Duration {
        const DAY: Duration = Duration::from_secs(86_400);
        let doublings = 2f64.powi(self.max_retransmit.min(64) as i32) - 1.0;
        let span = self.ack_timeout.as_secs_f64() * doublings * self.ack_random_factor;
        Duration::try_from_secs_f64(span).unwrap_or(DAY).min(DAY)
    }
    fn block_size(&self) -> usize {
        1 << (self.block_szx.min(6) + 4)
    }
    /// How many round trips a request with a payload of `len` bytes takes at least: 1, or
    /// one per block when it goes block-wise (RFC 7959 Block1).
    pub fn exchanges_for(&self, len: usize) -> usize {
        match len > self.max_payload.max(self.block_size()) {
            true => len.div_ceil(self.block_size()),
            false => 1,
        }
    }
}

/// A request token.
pub type Token = Vec<u8>;

/// Identifies a request handed to the application, for [`Endpoint::respond`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

/// Why a client exchange ended without a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// No ACK after every retransmission, or no separate response in time.
    Timeout,
    /// The peer answered with RST.
    Reset,
    /// The request could not be encoded.
    Encode(String),
    /// The peer answered in a way CoAP does not allow.
    Protocol(String),
}

/// What the endpoint tells the application.
#[derive(Debug, Clone)]
pub enum Event<P> {
    /// A complete request (Block1 reassembled). Answer with [`Endpoint::respond`].
    Request {
        /// Pass this to `respond`.
        id: RequestId,
        /// Who sent it.
        peer: P,
        /// The request, with the whole body as payload.
        packet: Packet,
    },
    /// The outcome of a [`Endpoint::request`].
    Response {
        /// The token `request` returned.
        token: Token,
        /// The peer.
        peer: P,
        /// The final response (after every block), or why there is none.
        result: Result<Packet, ClientError>,
    },
    /// Client: a notification on an observation (a GET with `Observe: 0` whose response
    /// carried an Observe option). One without an Observe option, or not 2.xx, is the last.
    Notification {
        /// The token of the registering request.
        token: Token,
        /// The server.
        peer: P,
        /// The notification.
        packet: Packet,
    },
    /// Server: a client is no longer registered (it said so, it answered a notification
    /// with RST, a CON notification was given up, or its peer was forgotten): stop
    /// notifying it.
    Deregistered {
        /// The client.
        peer: P,
        /// The token of its registration.
        token: Token,
    },
}

/// Counters of what was dropped or refused.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams that are not CoAP; those that were CON got a RST.
    pub malformed: u64,
    /// Duplicate requests answered from the cache.
    pub duplicates: u64,
    /// Messages that matched no exchange (answered with RST when CON).
    pub unmatched: u64,
    /// Retransmissions sent.
    pub retransmissions: u64,
    /// Exchanges given up.
    pub timeouts: u64,
    /// Requests refused for an option they must understand that this endpoint does not
    /// (4.02, RFC 7252 §5.4.1).
    pub bad_options: u64,
    /// Block1 transfers refused because the reassembly budgets were spent, or dropped to make
    /// room for a peer holding less.
    pub reassembly_refusals: u64,
}

struct Outgoing<P> {
    peer: P,
    bytes: Vec<u8>,
    retransmits: u32,
    /// When it first went out, and its first timeout.
    first_sent: Instant,
    initial: Duration,
    timeout: Duration,
    next_at: Instant,
    /// The client exchange this carries, if it is a request.
    token: Option<Token>,
    /// The observation this notifies, if it is a CON notification.
    notice: Option<Token>,
    /// It took the place of an earlier message (a newer notification state): its ACK is no
    /// round-trip sample.
    replaced: bool,
}

/// When a CON message awaiting its ACK is next due, by its key in `outgoing`: the entries of a
/// min-heap, so that the next timeout and the messages due are found without walking every
/// message in flight (a server's CON separate responses and notifications: one per device
/// when a slow sink answers a fleet at once). An entry whose message has gone, or is due at
/// another time since, is stale: skipped when met, and the heap is rebuilt when stale entries
/// outnumber the live ones.
struct Due<P> {
    at: Instant,
    key: (P, u16),
}

impl<P> PartialEq for Due<P> {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl<P> Eq for Due<P> {}

impl<P> PartialOrd for Due<P> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<P> Ord for Due<P> {
    /// Reversed: the earliest is the greatest, at the top of `BinaryHeap`.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.at.cmp(&self.at)
    }
}

struct ClientExchange {
    /// Sent (it holds one of its peer's NSTART slots), or still waiting for a slot.
    started: bool,
    request: Packet,
    con: bool,
    body: Vec<u8>,
    /// Byte offset of the next block to send, when the body goes block-wise.
    offset: usize,
    szx: u8,
    blockwise: bool,
    /// Waiting for a separate response until then.
    separate_deadline: Option<Instant>,
    /// The message id of the message in flight.
    mid: u16,
}

/// A request in the de-duplication memory: of peer `P`, message id `u16`, in the peer's
/// [`Remembering::life`].
type DedupKey<P> = (P, u16, u64);

/// What the de-duplication memory knows of one peer.
struct Remembering {
    /// Which life of the peer its entries belong to. A peer forgotten (its session ended) and
    /// heard from again starts a new life: the entries of an earlier one, left where they are
    /// until they expire or a full memory drops them, never match its requests. So forgetting
    /// a peer costs one removal, not a walk of the whole memory (tens of thousands of entries
    /// for every session that ends).
    life: u64,
    /// Entries of this life.
    count: usize,
    /// The message ids of its last [`DEDUP_KEPT_PER_PEER`] requests, which a full memory
    /// keeps.
    last: VecDeque<u16>,
    /// Its requests waiting for the application. The record stays while there are any,
    /// entries or not (an empty ACK turns a request's entry into an answer, which may leave
    /// before the application answers). Forgetting the peer takes these out of
    /// [`Endpoint::pending`] without a walk over everyone's.
    waiting: Vec<RequestId>,
}

impl Remembering {
    /// Whether it has nothing left to remember: no entry of its life, no request waiting. The
    /// record then goes.
    fn holds_nothing(&self) -> bool {
        self.count == 0 && self.waiting.is_empty()
    }
}

enum Cached {
    /// The application is still working on it.
    Processing,
    /// The bytes sent in answer (a piggybacked response, or an empty ACK).
    Answer(Vec<u8>),
}

struct Pending<P> {
    peer: P,
    mid: u16,
    token: Token,
    con: bool,
    empty_acked: bool,
    /// The Block1 option of the last block, echoed in the response.
    block1: Option<Block>,
    /// A GET with `Observe: 0`: an answer with an Observe option registers the client.
    observe: bool,
}

struct Reassembly {
    body: Vec<u8>,
    next_num: u32,
    szx: u8,
    expires: Instant,
    /// What tells this transfer's blocks from another's beside the token: the Request-Tag
    /// (RFC 9175) and the Content-Format of its block 0. A block whose differ belongs to
    /// another operation.
    matching: crate::message::Matching,
}

/// A CoAP endpoint: client and server at once, for peers identified by `P`.
pub struct Endpoint<P: Copy + Eq + Hash> {
    config: Config,
    rng: Box<dyn FnMut() -> u64 + Send>,
    /// The last message id sent to each peer: ids are per peer (RFC 7252 4.4: not reused with
    /// the same endpoint within EXCHANGE_LIFETIME), each starting at random, so that what is
    /// sent to many peers does not bring one peer's ids round within its de-duplication time.
    mids: HashMap<P, u16>,
    next_request: u64,
    out: VecDeque<(P, Vec<u8>)>,
    events: VecDeque<Event<P>>,
    /// CON messages awaiting their ACK, by (peer, mid).
    outgoing: HashMap<(P, u16), Outgoing<P>>,
    /// When each of `outgoing` is due (and stale entries).
    due: std::collections::BinaryHeap<Due<P>>,
    /// Client exchanges by (peer, token).
    exchanges: HashMap<(P, Token), ClientExchange>,
    /// Per peer: exchanges started, and those waiting for an NSTART slot, in order.
    slots: HashMap<P, (usize, VecDeque<Token>)>,
    /// Peers whose exchange finished since the last output: their next waiting request goes
    /// when the application has seen the events (and could cancel it), with `last_now`.
    freed: Vec<P>,
    last_now: Option<Instant>,
    /// Server de-duplication, by (peer, mid, life), with expiry order.
    dedup: HashMap<DedupKey<P>, Cached>,
    dedup_order: VecDeque<(Instant, DedupKey<P>)>,
    /// Per peer with entries in `dedup` of its present life.
    dedup_peers: HashMap<P, Remembering>,
    /// The last life given to a peer.
    lives: u64,
    /// Separate responses already received (peer, mid), so a retransmission is only re-ACKed.
    seen_responses: HashMap<(P, u16), Instant>,
    pending: std::collections::HashMap<RequestId, Pending<P>, crate::keyed::Counted>,
    /// CON requests waiting for the application, in the order they came, with when they get
    /// an empty ACK if it has not answered by then (`separate_after`): the next one is at the
    /// front, without a look at every request waiting (thousands behind a slow sink). An
    /// entry whose request was answered meanwhile is dropped when it reaches the front.
    separate: VecDeque<(Instant, RequestId)>,
    /// Block1 transfers by (peer, path, token).
    reassembly: HashMap<(P, String, Token), Reassembly>,
    /// Retransmission timeouts per peer, measured ([`Config::adaptive_rto`]).
    rto: HashMap<P, rto::Rto>,
    /// Server: clients registered for notifications, by (peer, token).
    observations: HashMap<(P, Token), observe::Observation>,
    /// Server: the recent NON notifications' message ids, to find what a RST ends.
    notice_mids: HashMap<(P, u16), Token>,
    /// Client: observations held, by (peer, token).
    observing: HashMap<(P, Token), observe::Observing>,
    stats: Stats,
}

impl<P: Copy + Eq + Hash> Endpoint<P> {
    /// A new endpoint. `rng` provides message ids, tokens and retransmission jitter.
    pub fn new(config: Config, rng: Box<dyn FnMut() -> u64 + Send>) -> Self {
        Endpoint {
            config,
            rng,
            mids: HashMap::default(),
            next_request: 0,
            out: VecDeque::new(),
            events: VecDeque::new(),
            outgoing: HashMap::default(),
            due: std::collections::BinaryHeap::new(),
            exchanges: HashMap::default(),
            slots: HashMap::default(),
            freed: Vec::new(),
            last_now: None,
            dedup: HashMap::default(),
            dedup_order: VecDeque::new(),
            dedup_peers: HashMap::default(),
            lives: 0,
            seen_responses: HashMap::default(),
            pending: std::collections::HashMap::default(),
            separate: VecDeque::new(),
            reassembly: HashMap::default(),
            rto: HashMap::default(),
            observations: HashMap::default(),
            notice_mids: HashMap::default(),
            observing: HashMap::default(),
            stats: Stats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The retransmission timeout measured for `peer` so far (`None` before any request to it,
    /// or without [`Config::adaptive_rto`]), for a metrics page.
    pub fn rto_estimate(&self, peer: &P) -> Option<Duration> {
        self.rto
            .get(peer)
            .map(|r| Duration::from_secs_f64(r.estimate()))
    }

    /// Client exchanges and server requests in progress.
    pub fn in_flight(&self) -> (usize, usize) {
        (self.exchanges.len(), self.pending.len())
    }

    /// Entries of the de-duplication memory (a forgotten peer's included, until they expire
    /// or a full memory drops them).
    pub fn remembered(&self) -> usize {
        self.dedup.len()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event<P>> {
        self.events.pop_front()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<(P, Vec<u8>)> {
        self.start_freed();
        self.out.pop_front()
    }

    /// Lets requests go into the NSTART slots that finished exchanges left.
    fn start_freed(&mut self) {
        if let Some(now) = self.last_now {
            for peer in std::mem::take(&mut self.freed) {
                self.start_waiting(now, peer);
            }
        }
    }

    /// When `handle_timeout` should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        // The top may be stale (its message acknowledged since): then the answer is early,
        // and the call to `handle_timeout` it brings finds nothing due and drops it.
        let retransmit = self.due.peek().map(|d| d.at);
        let separate = self.separate.front().map(|(t, _)| *t);
        let waiting = self
            .exchanges
            .values()
            .filter_map(|e| e.separate_deadline)
            .min();
        let dedup = self.dedup_order.front().map(|(t, _)| *t);
        let reasm = self.reassembly.values().map(|r| r.expires).min();
        [retransmit, separate, waiting, dedup, reasm]
            .into_iter()
            .flatten()
            .min()
    }

    fn mid(&mut self, peer: P) -> u16 {
        let rng = &mut self.rng;
        let mid = self.mids.entry(peer).or_insert_with(|| rng() as u16);
        *mid = mid.wrapping_add(1);
        *mid
    }

    /// Most peers whose round trips are remembered (the least recently measured is forgotten).
    const RTO_PEERS: usize = 4096;

    /// The first timeout of a new CON to `peer`: its measured timeout (or ACK_TIMEOUT) times a
    /// random factor in [1, ACK_RANDOM_FACTOR].
    fn initial_timeout(&mut self, now: Instant, peer: P) -> Duration {
        let c = &self.config;
        let base = if c.adaptive_rto {
            if !self.rto.contains_key(&peer) && self.rto.len() >= Self::RTO_PEERS {
                if let Some(old) = self
                    .rto
                    .iter()
                    .min_by_key(|(_, r)| r.updated())
                    .map(|(p, _)| *p)
                {
                    self.rto.remove(&old);
                }
            }
            self.rto
                .entry(peer)
                .or_insert_with(|| rto::Rto::new(c.ack_timeout, now))
                .current(now, c.ack_timeout, c.min_rto.min(c.ack_timeout), c.max_rto)
        } else {
            c.ack_timeout
        };
        let r = (self.rng)() as f64 / u64::MAX as f64;
        base.mul_f64(1.0 + r * (self.config.ack_random_factor - 1.0))
    }

    /// A round trip to `peer` measured below CoAP (the first flight of a DTLS handshake,
    /// answered before it was sent again): with `adaptive_rto`, the first request's timeout
    /// starts from it instead of from ACK_TIMEOUT.
    pub fn round_trip(&mut self, now: Instant, peer: P, rtt: Duration) {
        if !self.config.adaptive_rto {
            return;
        }
        let initial = self.config.ack_timeout;
        self.rto
            .entry(peer)
            .or_insert_with(|| rto::Rto::new(initial, now))
            .seed(now, rtt);
    }

    /// An ACK (or the response) of a CON sent `transmissions` times came: a round-trip sample.
    fn measured(&mut self, now: Instant, peer: P, first_sent: Instant, transmissions: u32) {
        if let Some(r) = self.rto.get_mut(&peer) {
            r.answered(
                now,
                now.saturating_duration_since(first_sent),
                transmissions,
            );
        }
    }

    /// Message `key` of `outgoing` is due `at`.
    fn schedule(&mut self, key: (P, u16), at: Instant) {
        self.due.push(Due { at, key });
    }

    /// Whether `d` still stands for its message: in flight, and due at `d.at`.
    fn is_current(&self, d: &Due<P>) -> bool {
        self.outgoing.get(&d.key).is_some_and(|o| o.next_at == d.at)
    }

    /// Drops the stale entries at the top of `due`, and rebuilds it when it holds more than
    /// twice the messages in flight (plus a few): what `due` holds stays bounded by them.
    fn prune_due(&mut self) {
        while self.due.peek().is_some_and(|d| !self.is_current(d)) {
            self.due.pop();
        }
        if self.due.len() > 2 * self.outgoing.len() + 64 {
            self.due = self
                .outgoing
                .iter()
                .map(|(k, o)| Due {
                    at: o.next_at,
                    key: *k,
                })
                .collect();
        }
    }

    fn send(&mut self, peer: P, p: &Packet) -> Result<Vec<u8>, String> {
        let bytes = p.to_bytes_unlimited().map_err(|e| format!("{e:?}"))?;
        self.out.push_back((peer, bytes.clone()));
        Ok(bytes)
    }

    fn send_con(
        &mut self,
        now: Instant,
        peer: P,
        p: &Packet,
        token: Option<Token>,
    ) -> Result<(), String> {
        let bytes = self.send(peer, p)?;
        let timeout = self.initial_timeout(now, peer);
        self.schedule((peer, p.header.message_id), now + timeout);
        self.outgoing.insert(
            (peer, p.header.message_id),
            Outgoing {
                peer,
                bytes,
                retransmits: 0,
                first_sent: now,
                initial: timeout,
                timeout,
                next_at: now + timeout,
                token,
                notice: None,
                replaced: false,
            },
        );
        Ok(())
    }

    fn reset(&mut self, peer: P, mid: u16) {
        let _ = self.send(peer, &empty(MessageType::Reset, mid));
    }

    /// Takes one datagram from `peer`.
    pub fn handle_datagram(&mut self, now: Instant, peer: P, bytes: &[u8]) {
        self.take_datagram(now, peer, bytes);
        // An ACK takes its message out of `outgoing`: the next timeout stays exact.
        self.prune_due();
    }

    fn take_datagram(&mut self, now: Instant, peer: P, bytes: &[u8]) {
        match crate::message::format_error(bytes) {
            None => {}
            Some(e) => {
                self.stats.malformed += 1;
                // Past Ignore, the 4-byte header and the token are there.
                let con = || (bytes[0] >> 4) & 3 == 0;
                let mid = || u16::from_be_bytes([bytes[2], bytes[3]]);
                match e {
                    crate::message::FormatError::Ignore => {}
                    crate::message::FormatError::Reject if con() => self.reset(peer, mid()),
                    crate::message::FormatError::Reject => {}
                    crate::message::FormatError::UnknownMethod => {
                        // RFC 7252 5.8: a piggybacked 4.05 to a CON; a NON is dropped.
                        let tkl = usize::from(bytes[0] & 0xf);
                        if con() {
                            let mut r = crate::message::response(
                                coap_lite::ResponseType::MethodNotAllowed,
                                "",
                            );
                            r.header.set_type(MessageType::Acknowledgement);
                            r.header.message_id = mid();
                            r.set_token(bytes[4..4 + tkl].to_vec());
                            let _ = self.send(peer, &r);
                        }
                    }
                }
                return;
            }
        }
        let packet = match Packet::from_bytes(bytes) {
            Ok(p) if !matches!(p.header.code, MessageClass::Reserved(_)) => p,
            _ => {
                self.stats.malformed += 1;
                // A CON whose header we can read gets a RST (RFC 7252 §4.2); the rest is dropped.
                if bytes.len() >= 4 && bytes[0] >> 6 == 1 && (bytes[0] >> 4) & 3 == 0 {
                    self.reset(peer, u16::from_be_bytes([bytes[2], bytes[3]]));
                }
                return;
            }
        };
        let mid = packet.header.message_id;
        if matches!(packet.header.code, MessageClass::Response(_))
            && crate::message::unknown_critical_in_response(&packet).is_some()
        {
            // Rejected (RFC 7252 5.4.1): a CON with RST; an ACK or NON is ignored, and the
            // request goes on as if it had not come (retransmitted, then timed out).
            self.stats.malformed += 1;
            if packet.header.get_type() == MessageType::Confirmable {
                self.reset(peer, mid);
            }
            return;
        }
        match (packet.header.get_type(), &packet.header.code) {
            (MessageType::Acknowledgement | MessageType::Reset, MessageClass::Empty) => {
                let is_reset = packet.header.get_type() == MessageType::Reset;
                self.on_ack_or_reset(now, peer, mid, is_reset, None);
            }
            (MessageType::Confirmable, MessageClass::Empty) => self.reset(peer, mid),
            (MessageType::NonConfirmable, MessageClass::Empty) => {}
            (_, MessageClass::Request(_)) => self.on_request(now, peer, packet),
            (MessageType::Acknowledgement, MessageClass::Response(_)) => {
                self.on_ack_or_reset(now, peer, mid, false, Some(packet))
            }
            (t, MessageClass::Response(_)) => {
                self.on_separate_response(now, peer, packet, t == MessageType::Confirmable)
            }
            (_, MessageClass::Reserved(_)) => unreachable!("refused above"),
        }
    }

    /// Retransmits, gives up, sends empty ACKs for slow requests, and forgets what expired.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Retransmissions.
        let mut due: Vec<(P, u16)> = Vec::new();
        while self.due.peek().is_some_and(|d| d.at <= now) {
            let d = self.due.pop().expect("peeked");
            if self.is_current(&d) {
                due.push(d.key);
            }
        }
        for key in due {
            let Some(o) = self.outgoing.get(&key) else {
                continue;
            };
            // A CON notification whose observation has a newer state: that goes instead.
            let key = match o.notice.clone() {
                Some(t) if o.retransmits < self.config.max_retransmit => {
                    self.newest_state(now, key, &t)
                }
                _ => key,
            };
            let Some(o) = self.outgoing.get_mut(&key) else {
                continue;
            };
            if o.retransmits >= self.config.max_retransmit {
                let o = self.outgoing.remove(&key).expect("present");
                self.stats.timeouts += 1;
                if let Some(token) = o.token {
                    self.complete(now, o.peer, token, Err(ClientError::Timeout));
                } else if let Some(token) = o.notice {
                    // A client that does not acknowledge its notifications is gone.
                    self.end_observation(o.peer, token);
                }
                continue;
            }
            o.retransmits += 1;
            o.timeout = if self.config.adaptive_rto {
                o.timeout.mul_f64(rto::Rto::backoff(o.initial))
            } else {
                o.timeout * 2
            };
            o.next_at = now + o.timeout;
            self.stats.retransmissions += 1;
            self.out.push_back((o.peer, o.bytes.clone()));
            let at = o.next_at;
            self.schedule(key, at);
        }
        self.prune_due();
        // Requests the application is slow to answer: acknowledge them now.
        while let Some(&(t, id)) = self.separate.front() {
            if t > now {
                break;
            }
            self.separate.pop_front();
            let Some(p) = self.pending.get_mut(&id) else {
                continue;
            };
            p.empty_acked = true;
            let (peer, mid) = (p.peer, p.mid);
            if let Ok(bytes) = self.send(peer, &empty(MessageType::Acknowledgement, mid)) {
                self.cache_answer(peer, mid, bytes);
            }
        }
        self.drop_answered();
        // Separate responses that never came.
        let late: Vec<(P, Token)> = self
            .exchanges
            .iter()
            .filter(|(_, e)| e.separate_deadline.is_some_and(|d| now >= d))
            .map(|(k, _)| k.clone())
            .collect();
        for (peer, token) in late {
            self.stats.timeouts += 1;
            self.complete(now, peer, token, Err(ClientError::Timeout));
        }
        // Expiry.
        while let Some(&(t, key)) = self.dedup_order.front() {
            if t > now {
                break;
            }
            self.dedup_order.pop_front();
            // One still being processed stays, looked at again a lifetime later.
            self.dedup_turn(now, key, false);
        }
        self.reassembly.retain(|_, r| r.expires > now);
        self.seen_responses.retain(|_, t| *t > now);
    }

    /// Sends `peer` a CoAP ping (an empty CON, RFC 7252 §4.3), retransmitted as any CON is:
    /// a peer that is there answers it with RST, and is heard from. Nothing else follows
    /// from the answer, or from none.
    pub fn ping(&mut self, now: Instant, peer: P) {
        let mid = self.mid(peer);
        let _ = self.send_con(now, peer, &empty(MessageType::Confirmable, mid), None);
    }

    /// Forgets everything about `peer` (its session ended): pending exchanges fail with
    /// [`ClientError::Reset`], requests in progress are dropped.
    pub fn forget_peer(&mut self, peer: P) {
        self.mids.remove(&peer);
        // What was queued for it and not yet taken: it would go on whatever session has the
        // peer's address next.
        self.out.retain(|(p, _)| *p != peer);
        self.outgoing.retain(|(p, _), _| *p != peer);
        self.prune_due();
        let gone: Vec<Token> = self
            .exchanges
            .keys()
            .filter(|(p, _)| *p == peer)
            .map(|(_, t)| t.clone())
            .collect();
        self.slots.remove(&peer);
        self.freed.retain(|p| *p != peer);
        for token in gone {
            self.exchanges.remove(&(peer, token.clone()));
            self.events.push_back(Event::Response {
                token,
                peer,
                result: Err(ClientError::Reset),
            });
        }
        // Its requests in the de-duplication memory end their life: they stay until they
        // expire, or a full memory drops them first, but no later session of the peer's
        // address matches them, nor does their expiry take a later session's entry with it.
        // Those waiting for the application are its own list.
        if let Some(r) = self.dedup_peers.remove(&peer) {
            for id in r.waiting {
                self.pending.remove(&id);
            }
            self.drop_answered();
        }
        self.reassembly.retain(|(p, _, _), _| *p != peer);
        self.seen_responses.retain(|(p, _), _| *p != peer);
        self.observing.retain(|(p, _), _| *p != peer);
        let gone: Vec<Token> = self
            .observations
            .keys()
            .filter(|(p, _)| *p == peer)
            .map(|(_, t)| t.clone())
            .collect();
        for token in gone {
            self.end_observation(peer, token);
        }
    }
}
