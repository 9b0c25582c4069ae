//! Who makes room when a server's DTLS capacity is full. Pure functions over the server's view
//! of its peers (no I/O, no clock: times come in), so that the rules are tested without sockets.
//!
//! The rules, so that no single host can hold the capacity:
//! - a host (an IP address, whatever its ports) has at most `per_address` handshakes in
//!   progress: a new one from it replaces its own oldest;
//! - at `max_total` handshakes in progress, a new one replaces the oldest handshake of the host
//!   that holds the most;
//! - at the session cap, an authenticated newcomer replaces the least recently active session.
//!
//! Handshakes only start after the stateless cookie exchange, so an address here is one the
//! peer can receive at: a spoofer cannot make anyone else's handshake go.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::Instant,
};

/// The handshakes to drop, oldest first, before a new one from `newcomer` starts.
/// `handshakes` maps each peer with a handshake in progress to when it started.
pub fn handshakes_to_evict(
    handshakes: &HashMap<SocketAddr, Instant>,
    newcomer: IpAddr,
    max_total: usize,
    per_address: usize,
) -> Vec<SocketAddr> {
    let mut by_ip: HashMap<IpAddr, Vec<(Instant, SocketAddr)>> = HashMap::new();
    for (addr, started) in handshakes {
        by_ip.entry(addr.ip()).or_default().push((*started, *addr));
    }
    for list in by_ip.values_mut() {
        // Newest first, so that `pop` gives the oldest.
        list.sort_unstable_by(|a, b| b.cmp(a));
    }
    let mut evict = Vec::new();
    let own = by_ip.entry(newcomer).or_default();
    while own.len() >= per_address.max(1) {
        evict.push(own.pop().expect("non-empty").1);
    }
    let mut total = handshakes.len() - evict.len();
    while total >= max_total.max(1) {
        let Some(list) = by_ip
            .values_mut()
            .filter(|l| !l.is_empty())
            .max_by(|a, b| a.len().cmp(&b.len()).then(b.last().cmp(&a.last())))
        else {
            break;
        };
        evict.push(list.pop().expect("non-empty").1);
        total -= 1;
    }
    evict
}

/// The session to drop so that an authenticated newcomer fits under the cap: the one heard
/// from least recently, other than `newcomer`. `sessions` gives each established session's
/// last activity.
pub fn session_to_evict(
    sessions: impl Iterator<Item = (SocketAddr, Instant)>,
    newcomer: SocketAddr,
) -> Option<SocketAddr> {
    sessions
        .filter(|(addr, _)| *addr != newcomer)
        .min_by_key(|(_, last)| *last)
        .map(|(addr, _)| addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn addr(ip: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), port)
    }

    #[test]
    fn one_host_at_its_limit_makes_room_from_its_own_oldest() {
        let t0 = Instant::now();
        let hs: HashMap<_, _> = (0..10)
            .map(|i| (addr("10.0.0.1", 1000 + i), at(t0, u64::from(i))))
            .chain([(addr("10.0.0.2", 5), at(t0, 0))])
            .collect();
        let evict = handshakes_to_evict(&hs, "10.0.0.1".parse().unwrap(), 100, 10);
        assert_eq!(evict, vec![addr("10.0.0.1", 1000)]);
        // Another host is not held back by the first one's handshakes.
        assert!(handshakes_to_evict(&hs, "10.0.0.3".parse().unwrap(), 100, 10).is_empty());
    }

    #[test]
    fn at_the_total_cap_the_biggest_holder_pays() {
        let t0 = Instant::now();
        let mut hs: HashMap<_, _> = (0..6)
            .map(|i| (addr("10.0.0.1", 1000 + i), at(t0, 100 + u64::from(i))))
            .collect();
        hs.insert(addr("10.0.0.2", 7), at(t0, 0)); // older, but from a host with one
        hs.insert(addr("10.0.0.3", 7), at(t0, 1));
        let evict = handshakes_to_evict(&hs, "10.0.0.4".parse().unwrap(), 8, 10);
        assert_eq!(evict, vec![addr("10.0.0.1", 1000)]);
        // A newcomer from the biggest holder pays itself, once for each limit it reaches.
        let evict = handshakes_to_evict(&hs, "10.0.0.1".parse().unwrap(), 7, 6);
        assert_eq!(evict, vec![addr("10.0.0.1", 1000), addr("10.0.0.1", 1001)]);
    }

    #[test]
    fn nothing_is_evicted_below_the_limits() {
        let t0 = Instant::now();
        let hs: HashMap<_, _> = [(addr("10.0.0.1", 1), t0)].into_iter().collect();
        assert!(handshakes_to_evict(&hs, "10.0.0.1".parse().unwrap(), 2, 2).is_empty());
    }

    #[test]
    fn the_least_recently_active_session_makes_room_never_the_newcomer() {
        let t0 = Instant::now();
        let sessions = vec![
            (addr("10.0.0.1", 1), at(t0, 50)),
            (addr("10.0.0.2", 1), at(t0, 10)),
            (addr("10.0.0.3", 1), at(t0, 0)),
        ];
        assert_eq!(
            session_to_evict(sessions.clone().into_iter(), addr("10.0.0.9", 1)),
            Some(addr("10.0.0.3", 1))
        );
        assert_eq!(
            session_to_evict(sessions.into_iter(), addr("10.0.0.3", 1)),
            Some(addr("10.0.0.2", 1))
        );
    }
}
