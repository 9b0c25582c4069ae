//! Observe (RFC 7641), both halves.
//!
//! Server: a GET with `Observe: 0` that the application answers 2.xx *with* an Observe option
//! registers the client (by peer and token); the endpoint numbers that answer and every later
//! [`Endpoint::notify`]. Notifications go NON, except every `observe_con_every`-th one, one
//! after `observe_con_after` without a CON, and every one while a CON notification is still
//! unacknowledged: a newer state then takes the older one's place and its retransmissions
//! (§4.5.2), so one client never has two CON notifications in flight. The client is forgotten,
//! with an [`Event::Deregistered`], when it answers a notification with RST, when a CON
//! notification is given up, when it sends `Observe: 1` or a GET without Observe on the same
//! token, and when its peer is forgotten.
//!
//! Client: a GET sent with `Observe: 0` whose answer is 2.xx with an Observe option keeps its
//! token; later responses on it are [`Event::Notification`]s (CON ones ACKed, stale ones by
//! RFC 7641 §3.4's ordering dropped). A notification on a token nobody observes gets RST.

use super::{Endpoint, Event, Outgoing, Token};
use crate::message::{decode_uint, encode_uint};
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use std::{collections::VecDeque, hash::Hash, time::Instant};

/// The Observe option's sequence numbers are 24 bits.
const SEQ_MASK: u32 = 0xFF_FFFF;
/// How many NON notifications per observation a RST can still be matched to.
const RECENT_NONS: usize = 4;

/// A client registered with this server.
pub(super) struct Observation {
    seq: u32,
    /// The CON notification in flight (its message id), if any.
    con_mid: Option<u16>,
    /// NON notifications since the last CON, and when the last CON went out.
    since_con: u32,
    last_con: Instant,
    /// The message ids of the latest NON notifications.
    recent: VecDeque<u16>,
    /// The newest state, waiting for the CON notification in flight to be acknowledged.
    pending: Option<Packet>,
}

/// An observation this client holds.
pub(super) struct Observing {
    seq: u32,
    at: Instant,
}

/// The Observe option's value, if the packet has one that is a valid uint of at most 3 bytes
/// (RFC 7641 §2: a longer one would skew the freshness check of §3.4, which counts in 24 bits).
pub fn observe_of(p: &Packet) -> Option<u32> {
    p.get_first_option(CoapOption::Observe)
        .filter(|v| v.len() <= 3)
        .and_then(|v| decode_uint(v))
}

/// Sets the Observe option to `v`.
pub(crate) fn set_observe(p: &mut Packet, v: u32) {
    p.clear_option(CoapOption::Observe);
    p.add_option(CoapOption::Observe, encode_uint(v & SEQ_MASK));
}

fn is_success(p: &Packet) -> bool {
    crate::Code::of(p).is_some_and(crate::Code::is_success)
}

/// RFC 7641 §3.4: whether a notification numbered `v2` arriving at `t2` is newer than one
/// numbered `v1` at `t1`.
fn fresher(v1: u32, t1: Instant, v2: u32, t2: Instant) -> bool {
    (v1 < v2 && v2 - v1 < 1 << 23)
        || (v1 > v2 && v1 - v2 > 1 << 23)
        || t2 > t1 + std::time::Duration::from_secs(128)
}

impl<P: Copy + Eq + Hash> Endpoint<P> {
    /// Clients registered with this server now.
    pub fn observers(&self) -> usize {
        self.observations.len()
    }

    /// The peers with a client registered now.
    pub fn observing_peers(&self) -> std::collections::HashSet<P> {
        self.observations.keys().map(|(p, _)| *p).collect()
    }

    /// Sends a notification to the client observing with `token` from `peer` (a response
    /// packet: code, options, payload; the endpoint sets type, message id, token and the
    /// Observe number). `false` if there is no such observation (any more): stop notifying it.
    /// A notification that is not 2.xx is the last: it goes CON, without Observe, and ends the
    /// observation.
    pub fn notify(&mut self, now: Instant, peer: P, token: &[u8], mut packet: Packet) -> bool {
        if !is_success(&packet) {
            let Some(o) = self.observations.remove(&(peer, token.to_vec())) else {
                return false;
            };
            self.forget_mids(peer, &o);
            packet.clear_option(CoapOption::Observe);
            packet.set_token(token.to_vec());
            packet.header.set_type(MessageType::Confirmable);
            packet.header.message_id = self.mid(peer);
            let _ = self.send_con(now, peer, &packet, None);
            return true;
        }
        let Some(o) = self.observations.get_mut(&(peer, token.to_vec())) else {
            return false;
        };
        if o.con_mid.is_some() {
            // A CON notification is unacknowledged: the newest state waits, and goes when it
            // is acknowledged or in place of its next retransmission (RFC 7641 4.5.2), so a
            // client that does not answer gets one message per timeout however fast the state
            // changes.
            o.pending = Some(packet);
            return true;
        }
        self.send_notification(now, peer, token, packet);
        true
    }

    /// Numbers and sends a notification to a registered client whose CON notifications are
    /// all acknowledged: NON, or CON every so often.
    fn send_notification(&mut self, now: Instant, peer: P, token: &[u8], mut packet: Packet) {
        let (every, after) = (self.config.observe_con_every, self.config.observe_con_after);
        let mid = self.mid(peer);
        let Some(o) = self.observations.get_mut(&(peer, token.to_vec())) else {
            return;
        };
        o.seq = (o.seq + 1) & SEQ_MASK;
        set_observe(&mut packet, o.seq);
        packet.set_token(token.to_vec());
        packet.header.message_id = mid;
        let con =
            o.since_con + 1 >= every.max(1) || now.saturating_duration_since(o.last_con) >= after;
        if !con {
            packet.header.set_type(MessageType::NonConfirmable);
            o.since_con += 1;
            if o.recent.len() == RECENT_NONS {
                if let Some(old) = o.recent.pop_front() {
                    self.notice_mids.remove(&(peer, old));
                }
            }
            o.recent.push_back(mid);
            self.notice_mids.insert((peer, mid), token.to_vec());
            let _ = self.send(peer, &packet);
            return;
        }
        packet.header.set_type(MessageType::Confirmable);
        (o.con_mid, o.since_con, o.last_con) = (Some(mid), 0, now);
        if self.send_con(now, peer, &packet, None).is_ok() {
            if let Some(out) = self.outgoing.get_mut(&(peer, mid)) {
                out.notice = Some(token.to_vec());
            }
        }
    }

    /// Server: the CON notification `key` is due for retransmission; if a newer state waits,
    /// it goes instead (numbered, with a new message id) and keeps the retransmission state.
    /// Gives the key the message now has.
    pub(super) fn newest_state(&mut self, now: Instant, key: (P, u16), token: &[u8]) -> (P, u16) {
        let peer = key.0;
        let mid = self.mid(peer);
        let Some(o) = self.observations.get_mut(&(peer, token.to_vec())) else {
            return key;
        };
        let Some(mut packet) = o.pending.take() else {
            return key;
        };
        o.seq = (o.seq + 1) & SEQ_MASK;
        set_observe(&mut packet, o.seq);
        packet.set_token(token.to_vec());
        packet.header.message_id = mid;
        packet.header.set_type(MessageType::Confirmable);
        let Ok(bytes) = packet.to_bytes_unlimited() else {
            return key;
        };
        (o.con_mid, o.last_con) = (Some(mid), now);
        let Some(out) = self.outgoing.remove(&key) else {
            return key;
        };
        self.schedule((peer, mid), out.next_at);
        self.outgoing.insert(
            (peer, mid),
            Outgoing {
                bytes,
                replaced: true,
                ..out
            },
        );
        (peer, mid)
    }

    /// Server: what a request's Observe option asks, before the application sees it. `true`:
    /// it asks to register (a GET with `Observe: 0`).
    pub(super) fn observe_request(&mut self, peer: P, token: &Token, req: &Packet) -> bool {
        let get = matches!(req.header.code, MessageClass::Request(RequestType::Get));
        // The later blocks of a large notification are fetched with GETs (RFC 7959 §3.4):
        // those neither register nor end anything.
        let later_block = req
            .get_first_option(CoapOption::Block2)
            .and_then(|v| crate::Block::decode(v))
            .is_some_and(|b| b.num > 0);
        let registers = get && observe_of(req) == Some(0) && !later_block;
        if get && !registers && !later_block {
            // Observe: 1, or a plain GET on the token: the client wants no more notifications.
            self.end_observation(peer, token.clone());
        }
        registers
    }

    /// Server: the answer to a request that asked to register (`registers`) goes out; it
    /// registers the client if it is a success with an Observe option, and never carries one
    /// otherwise.
    pub(super) fn observe_answer(
        &mut self,
        now: Instant,
        peer: P,
        token: &Token,
        registers: bool,
        resp: &mut Packet,
    ) {
        if !(registers && is_success(resp) && observe_of(resp).is_some()) {
            resp.clear_option(CoapOption::Observe);
            if registers {
                self.end_observation(peer, token.clone());
            }
            return;
        }
        // A registration on the same token again goes on from its numbers, which must keep
        // increasing for the client (RFC 7641 4.4).
        let seq = match self.observations.get(&(peer, token.clone())) {
            Some(o) => (o.seq + 1) & SEQ_MASK,
            None => (self.rng)() as u32 & 0xFFFF,
        };
        set_observe(resp, seq);
        let replaced = self.observations.insert(
            (peer, token.clone()),
            Observation {
                seq,
                con_mid: None,
                since_con: 0,
                last_con: now,
                recent: VecDeque::new(),
                pending: None,
            },
        );
        if let Some(o) = replaced {
            self.forget_mids(peer, &o);
        }
    }

    /// Drops what an observation that ended left: its CON in flight, its message ids.
    fn forget_mids(&mut self, peer: P, o: &Observation) {
        if let Some(m) = o.con_mid {
            self.outgoing.remove(&(peer, m));
        }
        for m in &o.recent {
            self.notice_mids.remove(&(peer, *m));
        }
    }

    /// Server: forgets an observation and tells the application, if there was one.
    pub(super) fn end_observation(&mut self, peer: P, token: Token) {
        if let Some(o) = self.observations.remove(&(peer, token.clone())) {
            self.forget_mids(peer, &o);
            self.events.push_back(Event::Deregistered { peer, token });
        }
    }

    /// Server: a RST that matched no CON in flight may answer a NON notification.
    pub(super) fn reset_of_notification(&mut self, peer: P, mid: u16) -> bool {
        match self.notice_mids.get(&(peer, mid)).cloned() {
            Some(t) => {
                self.end_observation(peer, t);
                true
            }
            None => false,
        }
    }

    /// Server: a CON notification was acknowledged; a newer state that waited goes now.
    pub(super) fn notification_acked(&mut self, now: Instant, peer: P, token: Token, mid: u16) {
        let Some(o) = self.observations.get_mut(&(peer, token.clone())) else {
            return;
        };
        if o.con_mid != Some(mid) {
            return;
        }
        o.con_mid = None;
        if let Some(p) = o.pending.take() {
            self.send_notification(now, peer, &token, p);
        }
    }

    /// Client: stops taking notifications on `token` from `peer`; the next one gets RST
    /// (RFC 7641 §3.6). `false` if it was not observing.
    pub fn stop_observing(&mut self, peer: P, token: &[u8]) -> bool {
        self.observing.remove(&(peer, token.to_vec())).is_some()
    }

    /// Client: whether `token` to `peer` is an observation held now.
    pub fn is_observing(&self, peer: P, token: &[u8]) -> bool {
        self.observing.contains_key(&(peer, token.to_vec()))
    }

    /// Client: the final response to a request; if it was a registration that the server
    /// accepted, its token now takes notifications.
    pub(super) fn observe_accepted(
        &mut self,
        now: Instant,
        peer: P,
        token: &Token,
        request: &Packet,
        resp: &Packet,
    ) {
        if !matches!(request.header.code, MessageClass::Request(RequestType::Get))
            || observe_of(request) != Some(0)
        {
            return;
        }
        match observe_of(resp) {
            Some(seq) if is_success(resp) => {
                self.observing
                    .insert((peer, token.clone()), Observing { seq, at: now });
            }
            _ => {
                self.observing.remove(&(peer, token.clone()));
            }
        }
    }

    /// Client: a separate response on a token that is observed (`true`: it was taken, as a
    /// notification or as a stale one dropped).
    pub(super) fn on_notification(&mut self, now: Instant, peer: P, r: &Packet) -> bool {
        let key = (peer, r.get_token().to_vec());
        let Some(o) = self.observing.get_mut(&key) else {
            return false;
        };
        let seq = observe_of(r);
        if let Some(v) = seq {
            if !fresher(o.seq, o.at, v, now) {
                return true;
            }
            (o.seq, o.at) = (v, now);
        }
        if seq.is_none() || !is_success(r) {
            // A final answer: the server ended the observation.
            self.observing.remove(&key);
        }
        self.events.push_back(Event::Notification {
            token: key.1,
            peer,
            packet: r.clone(),
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sequence_numbers_order_across_the_wrap() {
        let t = Instant::now();
        assert!(fresher(1, t, 2, t));
        assert!(!fresher(2, t, 1, t));
        assert!(!fresher(5, t, 5, t));
        assert!(fresher(SEQ_MASK, t, 3, t), "3 follows 2^24-1");
        assert!(!fresher(3, t, SEQ_MASK, t));
        assert!(
            fresher(9, t, 1, t + Duration::from_secs(129)),
            "128 s later anything is newer"
        );
    }

    #[test]
    fn an_observe_value_is_at_most_three_bytes() {
        let with = |v: Vec<u8>| {
            let mut p = Packet::new();
            p.add_option(CoapOption::Observe, v);
            observe_of(&p)
        };
        assert_eq!(with(vec![]), Some(0));
        assert_eq!(with(vec![0xff, 0xff, 0xff]), Some(SEQ_MASK));
        assert_eq!(with(vec![1, 0, 0, 0]), None, "2^24 is no Observe value");
    }
}
