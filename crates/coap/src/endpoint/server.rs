//! The server half of the endpoint: requests in (de-duplicated, Block1 reassembled within
//! budgets, refused when they carry what this endpoint does not understand), handed to the
//! application, and its answers out (piggybacked, or separate after an empty ACK).

use super::{
    Cached, DedupKey, Endpoint, Event, Pending, Reassembly, Remembering, RequestId, Token,
};
use crate::message::{
    block1_of, decode_uint, empty, encode_uint, matching_options, path_of, refuse_options,
    response, retry_later, Block,
};
use coap_lite::{CoapOption, MessageType, Packet, ResponseType};
use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    time::Instant,
};

/// Entries looked at to forget one answered request, when the de-duplication memory is full.
const DEDUP_TRIES: usize = 16;

/// Requests of each peer that the de-duplication memory keeps for the exchange lifetime even
/// when it is full (up to four times [`crate::Config::dedup_capacity`] in all): a peer's
/// retransmission then finds its answer however many requests others send meanwhile (at
/// 100,000 requests/s, 16,384 entries last 0.16 s, and one peer could flush them on purpose),
/// and a request whose answer was lost is not taken twice. As many as a client keeps in
/// flight (NSTART; the uplink's default is 8).
pub const DEDUP_KEPT_PER_PEER: usize = 8;

impl<P: Copy + Eq + Hash> Endpoint<P> {
    /// Answers request `id` (from [`Event::Request`]). Piggybacked on the ACK if the request has
    /// not been acknowledged yet, otherwise sent as a separate CON response. `false`: the
    /// request is not waiting (any more: its peer was forgotten meanwhile), and nothing is sent
    /// or registered.
    pub fn respond(&mut self, now: Instant, id: RequestId, mut resp: Packet) -> bool {
        let Some(p) = self.pending.remove(&id) else {
            return false;
        };
        // The peer's life, for the answer's entry (looked up once with its waiting list).
        let (life, done) = match self.dedup_peers.get_mut(&p.peer) {
            Some(r) => {
                // Answers mostly come in the order of the requests: it is first, or near.
                if let Some(i) = r.waiting.iter().position(|w| *w == id) {
                    r.waiting.remove(i);
                }
                (Some(r.life), r.holds_nothing())
            }
            None => (None, false),
        };
        if done {
            // Its entries left while it waited (see `dedup_leaves`): nothing of it is left.
            self.dedup_peers.remove(&p.peer);
        }
        self.drop_answered();
        resp.set_token(p.token.clone());
        self.observe_answer(now, p.peer, &p.token, p.observe, &mut resp);
        if let Some(b) = p.block1 {
            resp.clear_option(CoapOption::Block1);
            resp.add_option(CoapOption::Block1, Block { more: false, ..b }.encode());
        }
        if p.con && !p.empty_acked {
            resp.header.set_type(MessageType::Acknowledgement);
            resp.header.message_id = p.mid;
            if let Ok(bytes) = self.send(p.peer, &resp) {
                self.store_answer((p.peer, p.mid, life), bytes);
            }
        } else if p.con {
            resp.header.set_type(MessageType::Confirmable);
            resp.header.message_id = self.mid(p.peer);
            let _ = self.send_con(now, p.peer, &resp, None);
        } else {
            resp.header.set_type(MessageType::NonConfirmable);
            resp.header.message_id = self.mid(p.peer);
            if let Ok(bytes) = self.send(p.peer, &resp) {
                self.store_answer((p.peer, p.mid, life), bytes);
            }
        }
        true
    }

    /// The request `key`, just taken out of the de-duplication memory, leaves it: `false` if
    /// it is one of its peer's last [`DEDUP_KEPT_PER_PEER`] and `keep_last` says those stay
    /// (the caller puts it back), else `true`, and the peer's count goes down (unless the key
    /// is of a life since ended, which nobody counts).
    fn dedup_leaves(&mut self, (peer, mid, life): DedupKey<P>, keep_last: bool) -> bool {
        match self.dedup_peers.get_mut(&peer) {
            Some(r) if r.life != life => {}
            Some(r) if keep_last && r.last.contains(&mid) => return false,
            // A peer with requests still waiting keeps its record, entries or not: an empty
            // ACK turned a waiting request's entry into an answer, which may leave before the
            // application answers, and forgetting the peer must still find the request.
            Some(r) => {
                r.count = r.count.saturating_sub(1);
                if r.holds_nothing() {
                    self.dedup_peers.remove(&peer);
                }
            }
            None => {}
        }
        true
    }

    /// The turn of `key`, just taken off the front of the expiry order, has come (it expired,
    /// or a full memory needs room): it stays, looked at again a lifetime from `now`, if it
    /// is still being processed for its peer's present life, or if it is one of its peer's
    /// last requests, `keep_last` says those stay and the memory holds fewer than four times
    /// its capacity; otherwise it leaves. A forgotten session's request leaves, even one in
    /// progress: nobody answers it.
    pub(super) fn dedup_turn(&mut self, now: Instant, key: DedupKey<P>, keep_last: bool) {
        let Some(cached) = self.dedup.remove(&key) else {
            return;
        };
        let stays = if matches!(cached, Cached::Processing) {
            self.lives_on(key)
        } else {
            let room = self.dedup.len() < 4 * self.config.dedup_capacity;
            !self.dedup_leaves(key, keep_last && room)
        };
        if stays {
            // The expiry order stays sorted: everything in it expires before this.
            self.dedup.insert(key, cached);
            self.dedup_order
                .push_back((now + self.config.exchange_lifetime(), key));
        }
    }

    /// Whether `key` is of its peer's present life (not of a session since forgotten).
    fn lives_on(&self, (peer, _, life): DedupKey<P>) -> bool {
        self.dedup_peers.get(&peer).is_some_and(|r| r.life == life)
    }

    /// Drops the entries at the front of [`Endpoint::separate`] whose requests were answered
    /// (or forgotten), so that the front is the next empty ACK due. Answers mostly come in
    /// the order of the requests, so the queue stays about as long as the requests waiting.
    pub(super) fn drop_answered(&mut self) {
        while let Some((_, id)) = self.separate.front() {
            if self.pending.get(id).is_some_and(|p| !p.empty_acked) {
                break;
            }
            self.separate.pop_front();
        }
    }

    pub(super) fn on_request(&mut self, now: Instant, peer: P, req: Packet) {
        let mid = req.header.message_id;
        let con = req.header.get_type() == MessageType::Confirmable;
        let lives = &mut self.lives;
        let r = self.dedup_peers.entry(peer).or_insert_with(|| {
            *lives += 1;
            Remembering {
                life: *lives,
                count: 0,
                last: VecDeque::new(),
                waiting: Vec::new(),
            }
        });
        let key = (peer, mid, r.life);
        // One look-up (one keyed hash of the key) finds a repeat or takes the new request's
        // place; the room it needs is made below, among the older entries.
        match self.dedup.entry(key) {
            std::collections::hash_map::Entry::Occupied(c) => {
                self.stats.duplicates += 1;
                match c.get() {
                    Cached::Answer(bytes) => self.out.push_back((peer, bytes.clone())),
                    // Still working on it: say nothing yet. The answer goes piggybacked on the
                    // ACK as soon as it is ready (the client retransmits until then), or, past
                    // `separate_after`, an empty ACK goes out and the answer follows
                    // separately. An early empty ACK would turn every slow answer into a
                    // separate CON that costs a round trip more, and a whole server
                    // ACK_TIMEOUT when it is lost.
                    Cached::Processing => {}
                }
                return;
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Cached::Processing);
            }
        }
        // Counted now, so that the peer stays while older entries leave below, and among its
        // last requests: those the loop below keeps are its last DEDUP_KEPT_PER_PEER, this one
        // included (the one before them is no longer kept, and may make room).
        r.count += 1;
        if r.last.len() == DEDUP_KEPT_PER_PEER {
            r.last.pop_front();
        }
        r.last.push_back(mid);
        // At capacity, forget the oldest answered request (never one still being processed,
        // nor one of a peer's last DEDUP_KEPT_PER_PEER). A few tries only: when the oldest
        // are all kept (thousands of requests waiting for the sinks), a walk of the whole
        // queue per request would cost O(n) each; the memory stays bounded by the requests in
        // progress and the peers' last requests then.
        let mut tries = self.dedup_order.len().min(DEDUP_TRIES);
        while self.dedup.len() > self.config.dedup_capacity && tries > 0 {
            tries -= 1;
            let Some((_, old)) = self.dedup_order.pop_front() else {
                break;
            };
            self.dedup_turn(now, old, true);
        }
        self.dedup_order
            .push_back((now + self.config.exchange_lifetime(), key));

        let token = req.get_token().to_vec();
        if let Some((code, why)) = refuse_options(&req) {
            self.stats.bad_options += 1;
            if !con {
                // RFC 7252 §5.4.1: a NON request with such an option is rejected.
                if let Ok(bytes) = self.send(peer, &empty(MessageType::Reset, mid)) {
                    self.cache_answer(peer, mid, bytes);
                }
                return;
            }
            return self.answer_now(peer, mid, con, &token, response(code, &why));
        }
        let block1 = match block1_of(&req) {
            None => None,
            Some(Some(b)) => Some(b),
            // SZX 7 is reserved: 4.00 (RFC 7959 2.2); a value too long was refused above.
            Some(None) => {
                return self.answer_now(
                    peer,
                    mid,
                    con,
                    &token,
                    response(ResponseType::BadRequest, "Block1 with the reserved SZX 7"),
                )
            }
        };
        let Some(b) = block1 else {
            if req.payload.len() > self.config.max_body {
                return self.too_large(peer, mid, con, &token);
            }
            return self.deliver(now, peer, mid, con, token, req, None);
        };
        // Block1: reassemble by peer, path and token; a client that changes its token between
        // blocks (RFC 7959 allows it) is followed by peer, path, Request-Tag and
        // Content-Format, where one transfer alone can be the one meant. Two transfers that
        // could (a client that changes tokens and sends no Request-Tag, RFC 9175 3.3) are told
        // "incomplete" rather than spliced into one body.
        let path = path_of(&req);
        let key = (peer, path.clone(), token.clone());
        let matching = matching_options(&req);
        if b.num > 0 && !self.reassembly.contains_key(&key) {
            let mut candidates = self.reassembly.iter().filter(|(k, r)| {
                k.0 == peer && k.1 == path && r.next_num == b.num && r.matching == matching
            });
            if let (Some((k, _)), None) = (candidates.next(), candidates.next()) {
                let k = k.clone();
                let r = self.reassembly.remove(&k).expect("present");
                self.reassembly.insert(key.clone(), r);
            }
        }
        if b.num == 0 {
            if let Some(total) = req
                .get_first_option(CoapOption::Size1)
                .and_then(|v| decode_uint(v))
            {
                if total as usize > self.config.max_body {
                    return self.too_large(peer, mid, con, &token);
                }
            }
            let fresh = !self.reassembly.contains_key(&key);
            let per_peer = if fresh {
                self.reassembly.keys().filter(|k| k.0 == peer).count()
            } else {
                0
            };
            let (cap, per_peer_cap) = (
                self.config.max_reassemblies,
                self.config.max_reassemblies_per_peer,
            );
            if fresh && per_peer < per_peer_cap && self.reassembly.len() >= cap {
                self.share_transfers(now, peer, per_peer);
            }
            if fresh && (self.reassembly.len() >= cap || per_peer >= per_peer_cap) {
                return self.answer_now(
                    peer,
                    mid,
                    con,
                    &token,
                    response(
                        ResponseType::ServiceUnavailable,
                        "too many block-wise transfers",
                    ),
                );
            }
            self.reassembly.insert(
                key.clone(),
                Reassembly {
                    body: Vec::new(),
                    next_num: 0,
                    szx: b.szx,
                    expires: now + self.config.exchange_lifetime(),
                    matching: matching.clone(),
                },
            );
        }
        let Some(r) = self.reassembly.get_mut(&key) else {
            return self.answer_now(
                peer,
                mid,
                con,
                &token,
                response(ResponseType::RequestEntityIncomplete, "block 0 missing"),
            );
        };
        if b.num != r.next_num
            || b.szx != r.szx
            || (b.more && req.payload.len() != b.size())
            || r.matching != matching
        {
            self.reassembly.remove(&key);
            return self.answer_now(
                peer,
                mid,
                con,
                &token,
                response(ResponseType::RequestEntityIncomplete, "blocks out of order"),
            );
        }
        if r.body.len() + req.payload.len() > self.config.max_body {
            self.reassembly.remove(&key);
            return self.too_large(peer, mid, con, &token);
        }
        // The bytes every transfer holds, and this peer's, with this block added.
        let add = req.payload.len();
        let (all, mine) = self
            .reassembly
            .iter()
            .fold((add, add), |(all, mine), (k, r)| {
                let held = r.body.len();
                (all + held, if k.0 == peer { mine + held } else { mine })
            });
        if mine > self.config.max_reassembly_bytes_per_peer
            || (all > self.config.max_reassembly_bytes
                && !self.make_room(peer, mine, all - self.config.max_reassembly_bytes))
        {
            self.reassembly.remove(&key);
            self.stats.reassembly_refusals += 1;
            let busy = retry_later("too many block-wise bytes in progress", 2);
            return self.answer_now(peer, mid, con, &token, busy);
        }
        let r = self.reassembly.get_mut(&key).expect("present");
        r.body.extend_from_slice(&req.payload);
        r.next_num += 1;
        r.expires = now + self.config.exchange_lifetime();
        if b.more {
            let mut cont = response(ResponseType::Continue, "");
            cont.add_option(CoapOption::Block1, b.encode());
            return self.answer_now(peer, mid, con, &token, cont);
        }
        let r = self.reassembly.remove(&key).expect("present");
        let mut whole = req;
        whole.payload = r.body;
        whole.clear_option(CoapOption::Block1);
        self.deliver(now, peer, mid, con, token, whole, Some(b));
    }

    /// Records the answer to a request the cache holds (one it evicted stays forgotten).
    pub(super) fn cache_answer(&mut self, peer: P, mid: u16, bytes: Vec<u8>) {
        let life = self.dedup_peers.get(&peer).map(|r| r.life);
        self.store_answer((peer, mid, life), bytes);
    }

    /// [`Endpoint::cache_answer`] with the peer's life looked up already (`None`: it has no
    /// entries).
    fn store_answer(&mut self, (peer, mid, life): (P, u16, Option<u64>), bytes: Vec<u8>) {
        if let Some(c) = life.and_then(|life| self.dedup.get_mut(&(peer, mid, life))) {
            *c = Cached::Answer(bytes);
        }
    }

    pub(super) fn too_large(&mut self, peer: P, mid: u16, con: bool, token: &[u8]) {
        let mut r = response(ResponseType::RequestEntityTooLarge, "request too large");
        r.add_option(CoapOption::Size1, encode_uint(self.config.max_body as u32));
        self.answer_now(peer, mid, con, token, r);
    }

    /// Answers a request at once, without the application.
    pub(super) fn answer_now(
        &mut self,
        peer: P,
        mid: u16,
        con: bool,
        token: &[u8],
        mut resp: Packet,
    ) {
        resp.set_token(token.to_vec());
        resp.header.set_type(if con {
            MessageType::Acknowledgement
        } else {
            MessageType::NonConfirmable
        });
        resp.header.message_id = if con { mid } else { self.mid(peer) };
        if let Ok(bytes) = self.send(peer, &resp) {
            self.cache_answer(peer, mid, bytes);
        }
    }

    /// At the cap of block-wise transfers: the peer holding the most of them, if it holds
    /// more than `peer` would with one more, gives up its oldest (its next block gets 4.08 and
    /// it starts again), so that a few peers cannot keep every other's uploads out; if none
    /// does, the transfer without a block for longest goes, once that is MAX_TRANSMIT_SPAN.
    fn share_transfers(&mut self, now: Instant, peer: P, mine: usize) {
        let mut held: HashMap<P, usize> = HashMap::new();
        for k in self.reassembly.keys() {
            *held.entry(k.0).or_default() += 1;
        }
        held.remove(&peer);
        let top = held
            .iter()
            .max_by_key(|(_, n)| **n)
            .filter(|(_, &most)| most > mine + 1)
            .map(|(&top, _)| top);
        // Otherwise the transfer that has had no block the longest, once that is longer than
        // a client goes on retransmitting one (MAX_TRANSMIT_SPAN): peers that each hold one
        // transfer open with a block every few minutes do not keep everyone else's out.
        let idle_since = now + self.config.exchange_lifetime() - self.config.max_transmit_span();
        if let Some(k) = self
            .reassembly
            .iter()
            .filter(|(k, r)| match top {
                Some(top) => k.0 == top,
                None => k.0 != peer && r.expires <= idle_since,
            })
            .min_by_key(|(_, r)| r.expires)
            .map(|(k, _)| k.clone())
        {
            self.reassembly.remove(&k);
            self.stats.reassembly_refusals += 1;
        }
    }

    /// Frees `over` bytes of the overall reassembly budget for `peer`, which holds `mine`:
    /// the peer holding the most, if it holds more than `mine`, loses its largest transfer
    /// (its next block gets 4.08 and it starts again), and so on. `false` if that is not
    /// enough: `peer` is then the one holding the most. So a few peers with large transfers
    /// in progress (one device identity may hold several sessions) cannot keep out another
    /// peer's smaller one, while a peer alone over the budget is refused as before.
    fn make_room(&mut self, peer: P, mine: usize, mut over: usize) -> bool {
        let mut held: HashMap<P, usize> = HashMap::new();
        for (k, r) in &self.reassembly {
            *held.entry(k.0).or_default() += r.body.len();
        }
        held.remove(&peer);
        while over > 0 {
            let Some((&top, &most)) = held.iter().max_by_key(|(_, n)| **n) else {
                return false;
            };
            if most <= mine {
                return false;
            }
            let k = self
                .reassembly
                .iter()
                .filter(|(k, _)| k.0 == top)
                .max_by_key(|(_, r)| r.body.len())
                .map(|(k, _)| k.clone())
                .expect("a peer holding bytes has a transfer");
            let freed = self.reassembly.remove(&k).expect("present").body.len();
            self.stats.reassembly_refusals += 1;
            held.insert(top, most - freed);
            over = over.saturating_sub(freed);
        }
        true
    }

    pub(super) fn deliver(
        &mut self,
        now: Instant,
        peer: P,
        mid: u16,
        con: bool,
        token: Token,
        packet: Packet,
        block1: Option<Block>,
    ) {
        let observe = self.observe_request(peer, &token, &packet);
        self.next_request += 1;
        let id = RequestId(self.next_request);
        if let Some(r) = self.dedup_peers.get_mut(&peer) {
            r.waiting.push(id);
        }
        if con {
            self.separate
                .push_back((now + self.config.separate_after, id));
        }
        self.pending.insert(
            id,
            Pending {
                peer,
                mid,
                token,
                con,
                empty_acked: false,
                block1,
                observe,
            },
        );
        self.events.push_back(Event::Request { id, peer, packet });
    }
}
