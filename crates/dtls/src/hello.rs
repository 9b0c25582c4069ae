//! The stateless front of a DTLS server (RFC 6347 §4.2.1): a datagram that may be a
//! ClientHello is read here, and one without a valid cookie is answered with a
//! HelloVerifyRequest and forgotten, so a spoofed source address gets one small datagram back
//! and no state. Only a ClientHello that carries a cookie [`CookieJar`] made for its address
//! gets a [`crate::Session`].

use openssl::{hash::MessageDigest, pkey::PKey, sign::Signer};
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
/// under a secret that rotates; a cookie from the previous secret is still accepted.
pub struct CookieJar {
    secret: [u8; 32],
    previous: [u8; 32],
    rotated: Instant,
    lifetime: Duration,
}

impl CookieJar {
    /// A jar whose secret rotates every `lifetime`.
    pub fn new(now: Instant, lifetime: Duration) -> Self {
        let mut s = [0u8; 32];
        openssl::rand::rand_bytes(&mut s).expect("random bytes");
        CookieJar {
            secret: s,
            previous: s,
            rotated: now,
            lifetime,
        }
    }

    fn mac(secret: &[u8], peer: SocketAddr, random: &[u8]) -> Vec<u8> {
        let key = PKey::hmac(secret).expect("hmac key");
        let mut s = Signer::new(MessageDigest::sha256(), &key).expect("signer");
        s.update(peer.to_string().as_bytes()).expect("hmac");
        s.update(random).expect("hmac");
        s.sign_to_vec().expect("hmac")[..16].to_vec()
    }

    fn rotate(&mut self, now: Instant) {
        if now.saturating_duration_since(self.rotated) >= self.lifetime {
            self.previous = self.secret;
            openssl::rand::rand_bytes(&mut self.secret).expect("random bytes");
            self.rotated = now;
        }
    }

    /// The cookie for `peer` and `ch`.
    pub fn make(&mut self, now: Instant, peer: SocketAddr, ch: &ClientHello) -> Vec<u8> {
        self.rotate(now);
        Self::mac(&self.secret, peer, &ch.random)
    }

    /// Whether `ch` carries a cookie this jar made for `peer`.
    pub fn check(&mut self, now: Instant, peer: SocketAddr, ch: &ClientHello) -> bool {
        self.rotate(now);
        !ch.cookie.is_empty()
            && (ch.cookie == Self::mac(&self.secret, peer, &ch.random)
                || ch.cookie == Self::mac(&self.previous, peer, &ch.random))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
