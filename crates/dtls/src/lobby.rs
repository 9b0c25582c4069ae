//! Where verified ClientHellos wait for a handshake slot. No I/O, no clock of its own.
//!
//! When every handshake slot is taken, a newcomer's ClientHello used to be dropped: the device
//! sent it again after its retransmission timer (1 s, then 2, 4, 8 s), and in a reconnect storm
//! (a whole fleet at once, after a server restart) most devices found the slots taken again,
//! round after round, until their handshake timeout. A ClientHello that carries a cookie made
//! for its address comes from a peer that receives there (a spoofer cannot get this far), so it
//! may wait here instead, first come first served, and its handshake starts as soon as a slot
//! frees. A retransmission refreshes the entry and keeps its place. The lobby is bounded; past
//! its capacity a ClientHello is dropped as before.
//!
//! A waiting datagram is at most [`MAX_WAITING_BYTES`]: a ClientHello is a few hundred bytes,
//! and a larger datagram would be someone parking junk behind one (up to 64 KiB a place).
//! While there is room, any address may take any number of places: a fleet behind one NAT
//! address reconnects through the lobby as a whole. Once it is full, places are shared out by
//! IP address (an IPv6 address by its /64): a newcomer from an address holding fewer places
//! than the one holding the most
//! takes the newest place of that one (whose device sends its ClientHello again later, as
//! when the lobby is full). So one host, a real one but hostile, that fills the lobby with a
//! port per place cannot lock the fleet's devices out of it during a reconnect storm.

use crate::hello::ClientHello;
use gateway_coap::Keyed;
use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

/// The largest datagram that may wait; a larger ClientHello datagram is dropped (its sender
/// tries again when its timer fires, as when the lobby is full).
pub const MAX_WAITING_BYTES: usize = 2048;

/// The address a place counts against: an IPv4 address (an IPv4-mapped IPv6 one as such), or
/// an IPv6 address's /64, which one host holds whole.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// A ClientHello waiting for a slot.
#[derive(Debug)]
pub struct Waiting {
    /// The peer.
    pub peer: SocketAddr,
    /// Its latest ClientHello datagram.
    pub datagram: Vec<u8>,
    /// The client random and cookie it carries.
    pub hello: ClientHello,
    /// When it first asked.
    pub since: Instant,
}

/// The waiting ClientHellos, oldest first.
#[derive(Debug)]
pub struct Lobby {
    queue: VecDeque<Waiting>,
    capacity: usize,
    /// The peers in `queue`, so that a newcomer is told from a retransmission without a
    /// walk through the line.
    peers: HashSet<SocketAddr, Keyed>,
    /// Places held per IP address.
    per_ip: HashMap<IpAddr, usize, Keyed>,
    /// `holding[k]`: how many addresses hold `k` places (`holding[0]` unused); its last
    /// element is non-zero, so a full lobby tells the most places held without a walk.
    holding: Vec<usize>,
}

impl Lobby {
    /// A lobby for at most `capacity` peers.
    pub fn new(capacity: usize) -> Lobby {
        Lobby {
            queue: VecDeque::new(),
            capacity,
            peers: HashSet::default(),
            per_ip: HashMap::default(),
            holding: vec![0],
        }
    }

    /// `ip` holds one place more (`up`) or one fewer.
    fn count(&mut self, ip: IpAddr, up: bool) {
        let n = self.per_ip.entry(ip).or_default();
        let was = *n;
        *n = if up { was + 1 } else { was - 1 };
        let now = *n;
        if now == 0 {
            self.per_ip.remove(&ip);
        }
        if was > 0 {
            self.holding[was] -= 1;
        }
        if now > 0 {
            if self.holding.len() <= now {
                self.holding.resize(now + 1, 0);
            }
            self.holding[now] += 1;
        }
        while self.holding.len() > 1 && self.holding[self.holding.len() - 1] == 0 {
            self.holding.pop();
        }
    }

    /// Places held by `ip`.
    fn held(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }

    /// Bookkeeping for a place given up (taken, removed, expired or evicted).
    fn left(&mut self, peer: SocketAddr) {
        self.peers.remove(&peer);
        self.count(bucket(peer.ip()), false);
    }

    /// In a full lobby, the newest place of the address holding the most, if that is more than
    /// one place beyond what `ip` holds, is given up for a newcomer from `ip`; whether it was.
    fn make_room_for(&mut self, ip: IpAddr) -> bool {
        let most = self.holding.len() - 1;
        if most <= self.held(ip) + 1 {
            return false;
        }
        let Some(heaviest) = self
            .per_ip
            .iter()
            .find_map(|(ip, n)| (*n == most).then_some(*ip))
        else {
            return false;
        };
        let Some(i) = self
            .queue
            .iter()
            .rposition(|w| bucket(w.peer.ip()) == heaviest)
        else {
            return false;
        };
        let w = self.queue.remove(i).expect("found");
        self.left(w.peer);
        true
    }

    /// Peers waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// `peer` asks (again): a peer already waiting keeps its place, with its latest ClientHello;
    /// a new one queues at the end. `false` if the ClientHello is dropped: the lobby is full
    /// (and its address holds as many places as any, or one fewer), or the datagram is larger
    /// than a ClientHello needs ([`MAX_WAITING_BYTES`]).
    pub fn offer(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        datagram: &[u8],
        hello: &ClientHello,
    ) -> bool {
        if datagram.len() > MAX_WAITING_BYTES {
            return false;
        }
        if self.peers.contains(&peer) {
            if let Some(w) = self.queue.iter_mut().find(|w| w.peer == peer) {
                w.datagram = datagram.to_vec();
                w.hello = hello.clone();
            }
            return true;
        }
        if self.queue.len() >= self.capacity && !self.make_room_for(bucket(peer.ip())) {
            return false;
        }
        self.queue.push_back(Waiting {
            peer,
            datagram: datagram.to_vec(),
            hello: hello.clone(),
            since: now,
        });
        self.peers.insert(peer);
        self.count(bucket(peer.ip()), true);
        true
    }

    /// Forgets `peer` (its handshake started by another way, or it went away).
    pub fn remove(&mut self, peer: SocketAddr) {
        if self.peers.contains(&peer) {
            self.queue.retain(|w| w.peer != peer);
            self.left(peer);
        }
    }

    /// Drops those that have waited `longest` (their devices gave up); how many. The line is
    /// in the order of arrival (a retransmission keeps its place and its time), so they are at
    /// its front.
    pub fn expire(&mut self, now: Instant, longest: Duration) -> usize {
        let mut gone = 0;
        while let Some(w) = self.queue.front() {
            if now.saturating_duration_since(w.since) < longest {
                break;
            }
            let peer = w.peer;
            self.queue.pop_front();
            self.left(peer);
            gone += 1;
        }
        gone
    }

    /// The first in line.
    pub fn first(&self) -> Option<&Waiting> {
        self.queue.front()
    }

    /// The first waiting peer for which `may_start` says yes, taken out of the lobby.
    pub fn take_first(&mut self, mut may_start: impl FnMut(&Waiting) -> bool) -> Option<Waiting> {
        let i = self.queue.iter().position(&mut may_start)?;
        let w = self.queue.remove(i)?;
        self.left(w.peer);
        Some(w)
    }

    /// When the oldest entry expires, given `longest`.
    pub fn next_expiry(&self, longest: Duration) -> Option<Instant> {
        self.queue.front().map(|w| w.since + longest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(n: u8) -> ClientHello {
        ClientHello {
            record_seq: 1,
            random: [n; 32],
            cookie: vec![n],
        }
    }

    /// Peer `n`, on an address of its own.
    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 5684))
    }

    #[test]
    fn first_come_first_served_and_a_retransmission_keeps_its_place() {
        let t0 = Instant::now();
        let mut l = Lobby::new(3);
        assert!(l.offer(t0, addr(1), b"a", &hello(1)));
        assert!(l.offer(t0, addr(2), b"b", &hello(2)));
        assert!(l.offer(t0, addr(1), b"a2", &hello(1)), "a retransmission");
        assert_eq!(l.len(), 2);
        let w = l.take_first(|_| true).unwrap();
        assert_eq!((w.peer, w.datagram.as_slice()), (addr(1), &b"a2"[..]));
        assert_eq!(l.take_first(|_| true).unwrap().peer, addr(2));
        assert!(l.take_first(|_| true).is_none());
    }

    #[test]
    fn the_lobby_is_bounded_and_entries_expire() {
        let t0 = Instant::now();
        let mut l = Lobby::new(2);
        assert!(l.offer(t0, addr(1), b"a", &hello(1)));
        assert!(l.offer(t0 + Duration::from_secs(1), addr(2), b"b", &hello(2)));
        assert!(!l.offer(t0, addr(3), b"c", &hello(3)), "full");
        assert_eq!(
            l.next_expiry(Duration::from_secs(10)),
            Some(t0 + Duration::from_secs(10))
        );
        assert_eq!(
            l.expire(t0 + Duration::from_secs(10), Duration::from_secs(10)),
            1
        );
        assert_eq!(l.take_first(|_| true).unwrap().peer, addr(2));
    }

    #[test]
    fn a_datagram_larger_than_a_client_hello_does_not_wait() {
        let t0 = Instant::now();
        let mut l = Lobby::new(4);
        assert!(!l.offer(t0, addr(1), &[0; MAX_WAITING_BYTES + 1], &hello(1)));
        assert!(l.offer(t0, addr(1), &[0; MAX_WAITING_BYTES], &hello(1)));
        assert!(
            !l.offer(t0, addr(1), &[0; MAX_WAITING_BYTES + 1], &hello(1)),
            "nor as a retransmission"
        );
        assert_eq!(l.first().unwrap().datagram.len(), MAX_WAITING_BYTES);
        // A place given back, by whichever way, is free again.
        assert!(l.offer(t0, addr(2), b"b", &hello(2)));
        l.remove(addr(1));
        assert!(l.offer(t0, addr(1), b"a", &hello(1)), "a newcomer again");
        assert_eq!(l.take_first(|_| true).unwrap().peer, addr(2));
        assert_eq!(
            l.expire(t0 + Duration::from_secs(1), Duration::from_secs(1)),
            1
        );
        assert!(l.is_empty() && l.peers.is_empty() && l.per_ip.is_empty());
    }

    /// Peer `port` of host `host`.
    fn at(host: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, host], port))
    }

    #[test]
    fn a_full_lobby_is_shared_out_by_address_so_one_host_cannot_fill_it() {
        let t0 = Instant::now();
        let mut l = Lobby::new(4);
        // One host takes every place, a port each: while there is room, that is allowed.
        for port in 1..=4 {
            assert!(l.offer(t0, at(9, port), b"x", &hello(9)));
        }
        assert!(
            !l.offer(t0, at(9, 5), b"x", &hello(9)),
            "full for the host itself"
        );
        // Devices on other addresses still get in: each takes the host's newest place.
        assert!(l.offer(t0, addr(1), b"a", &hello(1)));
        assert!(l.offer(t0, addr(2), b"b", &hello(2)));
        assert!(l.offer(t0, addr(3), b"c", &hello(3)));
        assert!(
            !l.offer(t0, addr(4), b"d", &hello(4)),
            "one place each: none is taken from another"
        );
        assert!(l.offer(t0, addr(1), b"a2", &hello(1)), "a retransmission");
        let order: Vec<_> = std::iter::from_fn(|| l.take_first(|_| true))
            .map(|w| w.peer)
            .collect();
        assert_eq!(
            order,
            [at(9, 1), addr(1), addr(2), addr(3)],
            "the host's oldest place kept its turn; its newest ones went"
        );
        assert!(l.peers.is_empty() && l.per_ip.is_empty() && l.holding == [0]);
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64() {
        let t0 = Instant::now();
        let mut l = Lobby::new(4);
        let v6 = |last: u16| {
            SocketAddr::from((
                std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last),
                5684,
            ))
        };
        // One host, four addresses of its /64: four places of one address.
        for n in 1..=4 {
            assert!(l.offer(t0, v6(n), b"x", &hello(9)));
        }
        for n in 1..=3 {
            assert!(l.offer(t0, addr(n), b"a", &hello(n)), "device {n} gets in");
        }
        assert!(!l.offer(t0, addr(4), b"a", &hello(4)), "one place each");
        assert!(
            !l.offer(t0, v6(99), b"x", &hello(9)),
            "nor another of the /64"
        );
    }

    #[test]
    fn a_peer_that_may_not_start_yet_lets_the_next_one_go_first() {
        let t0 = Instant::now();
        let mut l = Lobby::new(4);
        l.offer(t0, addr(1), b"a", &hello(1));
        l.offer(t0, addr(2), b"b", &hello(2));
        assert_eq!(l.take_first(|w| w.peer != addr(1)).unwrap().peer, addr(2));
        l.remove(addr(1));
        assert!(l.is_empty());
    }
}
