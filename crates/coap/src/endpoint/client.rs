//! The client half of the endpoint: requests, NSTART slots, Block1 transfers out, and the
//! answers to them (piggybacked, separate, or RST).

use super::{observe, ClientError, ClientExchange, Endpoint, Event, Token};
use crate::message::{block1_of, empty, encode_uint, Block, REQUEST_TAG};
use crate::Code;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, ResponseType};
use std::{hash::Hash, time::Instant};

impl<P: Copy + Eq + Hash> Endpoint<P> {
    /// Sends a request; the outcome arrives as [`Event::Response`] with the returned token.
    /// A payload larger than one block goes out block-wise (Block1). With NSTART requests to
    /// `peer` in flight already, it waits for one of them to finish.
    pub fn request(
        &mut self,
        now: Instant,
        peer: P,
        mut packet: Packet,
        confirmable: bool,
    ) -> Token {
        let token: Token = (self.rng)().to_be_bytes()[..6].to_vec();
        let szx = self.config.block_szx.min(6);
        let blockwise = self.config.exchanges_for(packet.payload.len()) > 1;
        // One copy of the payload: a block-wise request's blocks are cut from `body`, any
        // other goes as its packet holds it (a queue of a write's requests held two).
        let body = if blockwise {
            std::mem::take(&mut packet.payload)
        } else {
            Vec::new()
        };
        let ex = ClientExchange {
            started: false,
            request: packet,
            con: confirmable,
            body,
            offset: 0,
            szx,
            blockwise,
            separate_deadline: None,
            mid: 0,
        };
        self.exchanges.insert((peer, token.clone()), ex);
        self.slots
            .entry(peer)
            .or_default()
            .1
            .push_back(token.clone());
        self.start_waiting(now, peer);
        token
    }

    /// Drops a request that has not been sent yet (it waits for an NSTART slot) and gives it
    /// back; `None` if it is on its way already, or finished. No event follows a cancelled
    /// request.
    pub fn cancel(&mut self, peer: P, token: &Token) -> Option<Packet> {
        let key = (peer, token.clone());
        if self.exchanges.get(&key).is_none_or(|e| e.started) {
            return None;
        }
        self.release(None, peer, token).map(|mut ex| {
            if ex.blockwise {
                ex.request.payload = ex.body;
            }
            ex.request
        })
    }

    /// Forgets a client exchange: a started one gives its NSTART slot up (the next waiting
    /// request takes it at the next output, see `start_freed`), a waiting one leaves the queue.
    fn release(&mut self, now: Option<Instant>, peer: P, token: &Token) -> Option<ClientExchange> {
        let ex = self.exchanges.remove(&(peer, token.clone()))?;
        if let Some((active, waiting)) = self.slots.get_mut(&peer) {
            if ex.started {
                *active = active.saturating_sub(1);
                self.last_now = now.or(self.last_now);
                self.freed.push(peer);
            } else {
                waiting.retain(|t| t != token);
            }
        }
        Some(ex)
    }

    /// Gives a request up, sent or not: its retransmissions stop, its NSTART slot goes to the
    /// next waiting request, and no event follows. A late answer to it is unmatched.
    pub fn abandon(&mut self, now: Instant, peer: P, token: &Token) {
        if self
            .release(Some(now), peer, token)
            .is_some_and(|ex| ex.started)
        {
            self.outgoing
                .retain(|_, o| o.peer != peer || o.token.as_ref() != Some(token));
            self.prune_due();
        }
    }

    /// Starts `peer`'s waiting requests while it has free NSTART slots.
    pub(super) fn start_waiting(&mut self, now: Instant, peer: P) {
        let nstart = self.config.nstart.max(1);
        loop {
            let Some((active, waiting)) = self.slots.get_mut(&peer) else {
                return;
            };
            if *active >= nstart {
                return;
            }
            let Some(token) = waiting.pop_front() else {
                if *active == 0 {
                    self.slots.remove(&peer);
                }
                return;
            };
            *active += 1;
            if let Some(ex) = self.exchanges.get_mut(&(peer, token.clone())) {
                ex.started = true;
            }
            self.send_next_block(now, peer, &token);
        }
    }

    /// Ends a client exchange with `result`, and lets the next waiting request to its peer go.
    pub(super) fn complete(
        &mut self,
        now: Instant,
        peer: P,
        token: Token,
        result: Result<Packet, ClientError>,
    ) {
        if let (Some(ex), Ok(r)) = (self.release(Some(now), peer, &token), &result) {
            self.observe_accepted(now, peer, &token, &ex.request, r);
        }
        self.events.push_back(Event::Response {
            token,
            peer,
            result,
        });
    }

    pub(super) fn send_next_block(&mut self, now: Instant, peer: P, token: &Token) {
        let mid = self.mid(peer);
        let Some(ex) = self.exchanges.get_mut(&(peer, token.clone())) else {
            return;
        };
        let mut p = ex.request.clone();
        p.set_token(token.clone());
        p.header.message_id = mid;
        p.header.set_type(if ex.con {
            MessageType::Confirmable
        } else {
            MessageType::NonConfirmable
        });
        if ex.blockwise {
            let size = 1usize << (ex.szx + 4);
            let end = (ex.offset + size).min(ex.body.len());
            p.payload = ex.body[ex.offset..end].to_vec();
            let block = Block {
                num: (ex.offset / size) as u32,
                more: end < ex.body.len(),
                szx: ex.szx,
            };
            p.clear_option(CoapOption::Block1);
            p.add_option(CoapOption::Block1, block.encode());
            // Request-Tag (RFC 9175): this transfer's token, which no other transfer of this
            // client has while it runs, so that a server cannot take another transfer's
            // blocks for this one's (after it forgot this one, say).
            p.clear_option(CoapOption::Unknown(REQUEST_TAG));
            p.add_option(CoapOption::Unknown(REQUEST_TAG), token.to_vec());
            if ex.offset == 0 {
                p.add_option(CoapOption::Size1, encode_uint(ex.body.len() as u32));
            }
        }
        ex.mid = mid;
        ex.separate_deadline = None;
        let con = ex.con;
        let sent = if con {
            self.send_con(now, peer, &p, Some(token.clone()))
        } else {
            self.send(peer, &p).map(|_| ())
        };
        if let Err(e) = sent {
            self.complete(now, peer, token.clone(), Err(ClientError::Encode(e)));
        } else if !con {
            // NON: wait for a response as if it had been acknowledged.
            if let Some(ex) = self.exchanges.get_mut(&(peer, token.clone())) {
                ex.separate_deadline = Some(
                    now + self
                        .config
                        .exchange_lifetime()
                        .min(self.config.separate_timeout),
                );
            }
        }
    }

    pub(super) fn on_ack_or_reset(
        &mut self,
        now: Instant,
        peer: P,
        mid: u16,
        reset: bool,
        resp: Option<Packet>,
    ) {
        // A piggybacked response must carry the request's token; one that does not is ignored
        // and the request keeps being retransmitted.
        let token_ok = match (&resp, self.outgoing.get(&(peer, mid))) {
            (Some(r), Some(o)) => o.token.as_deref().is_some_and(|t| t == r.get_token()),
            _ => true,
        };
        if !token_ok {
            self.stats.unmatched += 1;
            return;
        }
        let Some(o) = self.outgoing.remove(&(peer, mid)) else {
            if !(reset && self.reset_of_notification(peer, mid)) {
                self.stats.unmatched += 1;
            }
            return;
        };
        if !reset && !o.replaced {
            self.measured(now, peer, o.first_sent, o.retransmits + 1);
        }
        let Some(token) = o.token else {
            // The ACK (or RST) of a separate response or a notification of ours.
            if let Some(t) = o.notice {
                if reset {
                    self.end_observation(peer, t);
                } else {
                    self.notification_acked(now, peer, t, mid);
                }
            }
            return;
        };
        if reset {
            self.complete(now, peer, token, Err(ClientError::Reset));
            return;
        }
        match resp {
            Some(r) if r.get_token() == token.as_slice() => self.on_response(now, peer, token, r),
            Some(_) => self.stats.unmatched += 1,
            None => {
                // Empty ACK: the response will come separately.
                let deadline = now + self.config.separate_timeout;
                if let Some(ex) = self.exchanges.get_mut(&(peer, token)) {
                    ex.separate_deadline = Some(deadline);
                }
            }
        }
    }

    pub(super) fn on_separate_response(&mut self, now: Instant, peer: P, r: Packet, con: bool) {
        let mid = r.header.message_id;
        if con {
            let _ = self.send(peer, &empty(MessageType::Acknowledgement, mid));
        }
        if self.seen_responses.contains_key(&(peer, mid)) {
            return;
        }
        let token = r.get_token().to_vec();
        if !self.exchanges.contains_key(&(peer, token.clone())) {
            if self.on_notification(now, peer, &r) {
                self.seen_responses
                    .insert((peer, mid), now + self.config.exchange_lifetime());
                return;
            }
            self.stats.unmatched += 1;
            if con {
                // Unknown exchange: RST instead of the ACK queued above.
                self.out.pop_back();
                self.reset(peer, mid);
            } else if observe::observe_of(&r).is_some() {
                // A notification nobody observes (any more): RST cancels it (RFC 7641 §3.6).
                self.reset(peer, mid);
            }
            return;
        }
        self.seen_responses
            .insert((peer, mid), now + self.config.exchange_lifetime());
        // A response may overtake the ACK of our request: stop retransmitting it.
        let inflight = self.exchanges.get(&(peer, token.clone())).map(|e| e.mid);
        if let Some(m) = inflight {
            self.outgoing.remove(&(peer, m));
        }
        self.on_response(now, peer, token, r);
    }

    pub(super) fn on_response(&mut self, now: Instant, peer: P, token: Token, r: Packet) {
        let key = (peer, token.clone());
        let Some(ex) = self.exchanges.get_mut(&key) else {
            return;
        };
        let continue_ = matches!(
            r.header.code,
            MessageClass::Response(ResponseType::Continue)
        );
        // A server that acts on each block as it comes (RFC 7959 2.5's non-atomic handling)
        // answers a block that is not the last with a success, not 2.31: the rest of the body
        // must still go, and only the answer to the last block is the request's.
        let size = 1usize << (ex.szx + 4);
        let not_last = ex.offset + size < ex.body.len();
        let success = Code::of(&r).is_some_and(Code::is_success);
        // The Block1 option of an answer names the block it acknowledges (RFC 7959 2.3): an
        // answer about another block than the one in flight must not move the transfer on,
        // or a block would be skipped (or the request taken as stored) on a stale answer. A
        // server that asks for smaller blocks numbers it in its size (the same byte offset);
        // one that echoes our number is taken too.
        let sent = (ex.offset / size) as u32;
        if let (true, Some(Some(b))) = (ex.blockwise, block1_of(&r)) {
            let at = (b.num as usize).checked_shl(u32::from(b.szx) + 4);
            if b.num != sent && at != Some(ex.offset) {
                let e = format!(
                    "the answer acknowledges block {} but block {sent} was sent",
                    b.num
                );
                self.complete(now, peer, token, Err(ClientError::Protocol(e)));
                return;
            }
        }
        if ex.blockwise && (continue_ || (success && not_last)) {
            // The server may ask for smaller blocks: continue at the same byte offset.
            if let Some(Some(b)) = block1_of(&r) {
                let acked_end = ex.offset + size;
                if b.szx < ex.szx {
                    ex.szx = b.szx;
                }
                ex.offset = acked_end.min(ex.body.len());
            } else {
                ex.offset = (ex.offset + size).min(ex.body.len());
            }
            if ex.offset < ex.body.len() {
                self.send_next_block(now, peer, &token);
                return;
            }
        }
        let ex = self.exchanges.get(&key).expect("present");
        // A 2.31 Continue asks for another block: as a final answer (no blocks, or none left)
        // it means the server did not take the request, and must not pass for success.
        let result = if continue_ && (!ex.blockwise || ex.offset >= ex.body.len()) {
            Err(ClientError::Protocol(
                "2.31 Continue as a final response".into(),
            ))
        } else {
            Ok(r)
        };
        self.complete(now, peer, token, result);
    }
}
