//! The stateless front of a DTLS server (RFC 6347 §4.2.1): a datagram that may be a
//! ClientHello is read here, and one without a valid cookie is answered with a
//! HelloVerifyRequest and forgotten, so a spoofed source address gets one small datagram back
//! and no state. Only a ClientHello that carries a cookie [`CookieJar`] made for its address
//! gets a [`crate::Session`].

use ring::hmac;
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

/// What a server needs to know about a datagram that may be a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The record sequence number (echoed in the HelloVerifyRequest).
    pub record_seq: u64,
    /// The client's random.
    pub random: [u8; 32],
    /// The cookie it carries (empty on the first try).
    pub cookie: Vec<u8>,
}

fn be(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x))
}

/// Reads a datagram as an epoch-0 DTLS ClientHello (the first record, unfragmented enough to
/// hold the cookie); `None` if it is anything else.
pub fn parse_client_hello(d: &[u8]) -> Option<ClientHello> {
    if d.len() < 13 + 12 || d[0] != 22 || d[1] != 0xfe || be(&d[3..5]) != 0 {
        return None;
    }
    let record_seq = be(&d[5..11]);
    let rlen = be(&d[11..13]) as usize;
    let rec = d.get(13..13 + rlen)?;
    // The handshake header: type, length, message_seq, fragment offset and length.
    let header = rec.get(..12)?;
    if header[0] != 1 || be(&header[6..9]) != 0 {
        return None;
    }
    let frag_len = be(&header[9..12]) as usize;
    let b = rec.get(12..12 + frag_len)?;
    let random: [u8; 32] = b.get(2..34)?.try_into().ok()?;
    let sl = *b.get(34)? as usize;
    let cl = *b.get(35 + sl)? as usize;
    let cookie = b.get(36 + sl..36 + sl + cl)?.to_vec();
    Some(ClientHello {
        record_seq,
        random,
        cookie,
    })
}

/// A HelloVerifyRequest carrying `cookie`, in answer to `ch`.
pub fn hello_verify_request(ch: &ClientHello, cookie: &[u8]) -> Vec<u8> {
    let body_len = 3 + cookie.len();
    let mut v = vec![22, 0xfe, 0xff, 0, 0];
    v.extend_from_slice(&ch.record_seq.to_be_bytes()[2..]);
    v.extend_from_slice(&((12 + body_len) as u16).to_be_bytes());
    v.push(3);
    v.extend_from_slice(&(body_len as u32).to_be_bytes()[1..]);
    v.extend_from_slice(&[0, 0]); // message_seq 0
    v.extend_from_slice(&[0, 0, 0]);
    v.extend_from_slice(&(body_len as u32).to_be_bytes()[1..]);
    v.extend_from_slice(&[0xfe, 0xff]);
    v.push(cookie.len() as u8);
    v.extend_from_slice(cookie);
    v
}

/// Makes and checks stateless cookies: HMAC-SHA256 of the peer's address and the client random
/// under a secret that rotates, then the same bound to the address's association too (see
/// [`CookieJar::make`]); a cookie from the previous secret is still accepted.
///
/// The secret of each period is derived from a master secret and the period's number, so that
/// the jars of several workers made from the same master and start agree on every secret:
/// a cookie made by one worker is taken by any other.
pub struct CookieJar {
    master: [u8; 32],
    start: Instant,
    lifetime: Duration,
    /// The period the secrets below are for.
    period: u64,
    secret: [u8; 32],
    previous: [u8; 32],
}

impl CookieJar {
    /// A jar of its own, whose secret rotates every `lifetime`.
    pub fn new(now: Instant, lifetime: Duration) -> Self {
        let mut master = [0u8; 32];
        openssl::rand::rand_bytes(&mut master).expect("random bytes");
        CookieJar::shared(master, now, lifetime)
    }

    /// A jar that agrees with every other jar made from `master` and `start`.
    pub fn shared(master: [u8; 32], start: Instant, lifetime: Duration) -> Self {
        let mut jar = CookieJar {
            master,
            start,
            lifetime: lifetime.max(Duration::from_millis(1)),
            period: 0,
            secret: [0; 32],
            previous: [0; 32],
        };
        jar.secret = jar.derive(0);
        jar.previous = jar.secret;
        jar
    }

    /// The secret of period `n`.
    fn derive(&self, n: u64) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(hmac(&self.master, &[&n.to_be_bytes()]).as_ref());
        out
    }

    /// 16 bytes of HMAC over the peer's address, its random and `bound`.
    fn mac(secret: &[u8], peer: &[u8], random: &[u8], bound: &[u8]) -> [u8; 16] {
        let mut out = [0; 16];
        out.copy_from_slice(&hmac(secret, &[peer, random, bound]).as_ref()[..16]);
        out
    }

    /// The cookie under `secret`: a tag for the address and random alone, then one bound to
    /// the association (the same when there is none).
    fn cookie(secret: &[u8], peer: SocketAddr, random: &[u8], bound: &[u8]) -> Vec<u8> {
        let peer = peer.to_string();
        let free = Self::mac(secret, peer.as_bytes(), random, &[]);
        let tied = if bound.is_empty() {
            free
        } else {
            Self::mac(secret, peer.as_bytes(), random, bound)
        };
        [free, tied].concat()
    }

    fn rotate(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        let period = (elapsed / self.lifetime.as_nanos()) as u64;
        if period != self.period {
            self.previous = if period == self.period + 1 {
                self.secret
            } else {
                self.derive(period.saturating_sub(1))
            };
            self.secret = self.derive(period);
            self.period = period;
        }
    }

    /// The cookie for `peer` and `ch`, bound to `bound` as well: the client random of the
    /// association the address has now (empty if none). A cookie then proves that the peer
    /// received it since that association began: a ClientHello recorded earlier (with a
    /// cookie still within its lifetime) and sent again by someone who spoofs the address
    /// cannot replace a live session (RFC 6347 §4.2.8: the old association stays until the
    /// client has shown it is reachable).
    pub fn make(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        ch: &ClientHello,
        bound: &[u8],
    ) -> Vec<u8> {
        self.rotate(now);
        Self::cookie(&self.secret, peer, &ch.random, bound)
    }

    /// Whether `ch` carries a cookie this jar made for `peer` and `bound`. With no association
    /// (`bound` empty), a cookie made while one lived is taken too: there is nothing left for
    /// it to replace, and the client that got it is answered. Refused, it would be sent a
    /// second HelloVerifyRequest, which OpenSSL's clients ignore (its message_seq is that of
    /// the first): the device would send the same ClientHello until its handshake timeout.
    pub fn check(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        ch: &ClientHello,
        bound: &[u8],
    ) -> bool {
        self.rotate(now);
        let Some((free, tied)) = ch
            .cookie
            .split_at_checked(16)
            .filter(|(_, t)| t.len() == 16)
        else {
            return false;
        };
        [&self.secret, &self.previous].into_iter().any(|secret| {
            let made = Self::cookie(secret, peer, &ch.random, bound);
            same(free, &made[..16]) && (bound.is_empty() || same(tied, &made[16..]))
        })
    }
}

/// Whether a cookie is the one expected, compared in constant time: the time a compare takes
/// must not tell a spoofer how many of a forged cookie's first bytes were right.
fn same(cookie: &[u8], expected: &[u8]) -> bool {
    cookie.len() == expected.len() && openssl::memcmp::eq(cookie, expected)
}

/// HMAC-SHA256 of `parts` under `key` (ring's: OpenSSL 3.0 built a key object and a signer
/// through its provider lookups for each of the two or three a ClientHello costs).
fn hmac(key: &[u8], parts: &[&[u8]]) -> hmac::Tag {
    let mut c = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
    parts.iter().for_each(|p| c.update(p));
    c.sign()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jars_from_one_master_agree_across_rotations_and_others_do_not() {
        let t0 = Instant::now();
        let life = Duration::from_secs(300);
        let ch = ClientHello {
            record_seq: 0,
            random: [7; 32],
            cookie: Vec::new(),
        };
        let peer: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let mut a = CookieJar::shared([1; 32], t0, life);
        let mut b = CookieJar::shared([1; 32], t0, life);
        let mut other = CookieJar::shared([2; 32], t0, life);
        for at in [0, 299, 300, 301, 1000] {
            let now = t0 + Duration::from_secs(at);
            let with = ClientHello {
                cookie: a.make(now, peer, &ch, &[]),
                ..ch.clone()
            };
            assert!(b.check(now, peer, &with, &[]), "at {at} s");
            assert!(
                !b.check(now, peer, &with, &[9; 32]),
                "bound to no association"
            );
            assert!(!other.check(now, peer, &with, &[]), "at {at} s");
            // Made while an association lived: taken by it, or once it has ended (nothing
            // left to replace), and by no other.
            let tied = ClientHello {
                cookie: a.make(now, peer, &ch, &[9; 32]),
                ..ch.clone()
            };
            assert!(b.check(now, peer, &tied, &[9; 32]));
            assert!(b.check(now, peer, &tied, &[]));
            assert!(!b.check(now, peer, &tied, &[8; 32]), "another association");
            let mut forged = tied.clone();
            forged.cookie[20] ^= 1;
            assert!(
                !b.check(now, peer, &forged, &[9; 32]),
                "its second tag altered"
            );
            forged.cookie[20] ^= 1;
            forged.cookie[3] ^= 1;
            assert!(!b.check(now, peer, &forged, &[]), "its first tag altered");
            // Still taken one period later, not two.
            assert!(b.check(now + life, peer, &with, &[]));
            assert!(!b.check(now + 2 * life, peer, &with, &[]));
        }
    }

    #[test]
    fn short_or_lying_client_hellos_are_not_client_hellos() {
        // A record length shorter than a handshake header (found in review: it panicked).
        let mut d = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        d.extend_from_slice(&[1; 12]);
        assert_eq!(parse_client_hello(&d), None);
        for n in 0..200 {
            let mut d = vec![22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, n as u8];
            d.extend((0..n).map(|i| (i * 7) as u8));
            let _ = parse_client_hello(&d);
        }
    }
}
