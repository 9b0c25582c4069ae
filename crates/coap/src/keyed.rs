//! The hash of the maps keyed by what peers choose (their addresses, message ids, tokens): the
//! standard library's keyed SipHash, fed each key in one piece. No I/O.

use std::hash::{BuildHasher, DefaultHasher, Hasher, RandomState};

/// The standard library's `RandomState` (SipHash-1-3 with random keys, so a peer cannot pick
/// addresses or message ids that collide), with each key's bytes gathered first and hashed in
/// one call. The hash is the same as `RandomState`'s for the same keys: SipHash reads its input
/// as one stream, wherever the calls split it. What it saves is the per-call work: a socket
/// address alone is four calls (variant, length, octets, port), and the server looks up some
/// fifteen such keys for every request.
#[derive(Clone, Debug, Default)]
pub struct Keyed(RandomState);

impl BuildHasher for Keyed {
    type Hasher = Gathered;
    fn build_hasher(&self) -> Gathered {
        Gathered {
            inner: self.0.build_hasher(),
            buf: [0; GATHERED],
            len: 0,
        }
    }
}

/// Bytes gathered before they go to SipHash: enough for an IPv6 address, its port and a
/// token.
const GATHERED: usize = 48;

/// [`Keyed`]'s hasher.
pub struct Gathered {
    inner: DefaultHasher,
    buf: [u8; GATHERED],
    len: usize,
}

impl Hasher for Gathered {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > GATHERED {
            self.inner.write(&self.buf[..self.len]);
            self.len = 0;
            if bytes.len() > GATHERED {
                self.inner.write(bytes);
                return;
            }
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    #[inline]
    fn finish(&self) -> u64 {
        let mut h = self.inner.clone();
        h.write(&self.buf[..self.len]);
        h.finish()
    }
}

/// The hash of maps keyed by numbers the endpoint gives out itself, one after another
/// (request ids): no peer chooses them, so no secret is needed, and a multiplication spreads a
/// counter over every bit of the hash (a request's id is hashed three times, where SipHash
/// costs about a hundred instructions each).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counted;

impl BuildHasher for Counted {
    type Hasher = CountedHasher;
    fn build_hasher(&self) -> CountedHasher {
        CountedHasher(0)
    }
}

/// [`Counted`]'s hasher.
pub(crate) struct CountedHasher(u64);

impl Hasher for CountedHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only a `RequestId` is hashed with this, and it writes one u64.
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv6Addr, SocketAddr};

    #[test]
    fn hashes_as_the_standard_library_does_with_the_same_keys() {
        let std = RandomState::new();
        let keyed = Keyed(std.clone());
        for port in [0u16, 5684, 65535] {
            let v4: SocketAddr = ([127, 0, 0, 1], port).into();
            let v6: SocketAddr = (Ipv6Addr::LOCALHOST, port).into();
            for peer in [v4, v6] {
                assert_eq!(keyed.hash_one(peer), std.hash_one(peer));
                assert_eq!(keyed.hash_one((peer, port)), std.hash_one((peer, port)));
                let token = vec![7u8; (port % 9) as usize];
                assert_eq!(
                    keyed.hash_one((peer, token.clone())),
                    std.hash_one((peer, token))
                );
                let long = ("x".repeat(100), peer, "gpsflowtemp".to_owned());
                assert_eq!(keyed.hash_one(&long), std.hash_one(&long));
            }
        }
        // Keyed: another map's keys give other hashes.
        let other = Keyed::default();
        let peer: SocketAddr = ([10, 0, 0, 1], 5684).into();
        assert_ne!(other.hash_one(peer), keyed.hash_one(peer));
    }
}
