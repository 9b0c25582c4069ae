//! Who makes room when a server's DTLS capacity is full. Pure functions over the server's view
//! of its peers (no I/O, no clock: times come in), so that the rules are tested without sockets.
//!
//! The rules, so that no single host can hold the capacity, and no crowd of honest devices
//! (many Pis behind one NAT, all reconnecting after a server restart) pushes itself out:
//! - a host (an IPv4 address or an IPv6 /64, whatever its ports) has at most `per_address`
//!   handshakes in progress. A new one from it replaces its own oldest *stalled* handshake (one
//!   that no datagram has moved on for `stalled_after`); if none is stalled, the newcomer
//!   waits: its ClientHello is dropped, and it sends it again (DTLS retransmits after 1 s);
//! - at `max_total` handshakes in progress, a host that holds more than the newcomer's host
//!   gives up its oldest handshake (stalled first); failing that, the oldest stalled one goes;
//!   failing that, the newcomer waits;
//! - one identity holds at most `per_identity` sessions: a newer one replaces its own least
//!   recently active (a leaked device key cannot fill the server);
//! - at the session cap, a newcomer replaces the least recently active session without an
//!   identity, or else (if it has one itself) the least recently active session.
//!
//! A handshake in progress is never replaced while its peer keeps it moving: honest handshakes
//! finish. One that gives up its slot is *parked*, not forgotten: it no longer counts against
//! the limits, takes no timer, and completes if its peer answers after all (a device that was
//! merely slow, behind a loaded link or CPU, in a reconnect storm). Parked handshakes are
//! bounded too (four per handshake slot); past the bound, the host that has the most parked loses its oldest
//! ([`park_victim`]), so that one host's silent handshakes cannot push out another's.
//! Handshakes only start after the stateless cookie exchange, so an address here is one the
//! peer can receive at: a spoofer cannot make anyone else's handshake go.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

/// A handshake in progress, as admission sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    /// The peer.
    pub peer: SocketAddr,
    /// When it began.
    pub started: Instant,
    /// When a datagram from the peer last moved it on.
    pub heard: Instant,
}

/// The handshake limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Handshakes in progress in all.
    pub max_total: usize,
    /// Handshakes in progress from one host ([`host_of`]).
    pub per_address: usize,
    /// A handshake that nothing has moved on for this long may be replaced.
    pub stalled_after: Duration,
}

/// What to do with a new handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Start it, after dropping these handshakes.
    Start(Vec<SocketAddr>),
    /// Not now: drop its ClientHello (it will be sent again).
    Wait,
}

/// The host an address belongs to, for the per-address limits: an IPv4 address, or the /64 of
/// an IPv6 one (a single host commonly has a whole /64 to pick addresses from).
pub fn host_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// The handshakes in progress counted per host, to ask of many newcomers at once whether one
/// fits without making room: under the per-host and the total limit (the case in which
/// [`handshake`] starts it and drops nothing).
pub struct Room {
    per_host: HashMap<IpAddr, usize>,
    total: usize,
    limits: Limits,
}

impl Room {
    /// Counts `hs`.
    pub fn new(hs: &[Handshake], limits: Limits) -> Room {
        let mut per_host: HashMap<IpAddr, usize> = HashMap::new();
        for h in hs {
            *per_host.entry(host_of(h.peer.ip())).or_default() += 1;
        }
        Room {
            per_host,
            total: hs.len(),
            limits,
        }
    }

    /// Whether a handshake from `newcomer` fits as things are.
    pub fn fits(&self, newcomer: IpAddr) -> bool {
        let own = self.per_host.get(&host_of(newcomer)).copied().unwrap_or(0);
        self.total < self.limits.max_total.max(1) && own < self.limits.per_address.max(1)
    }
}

/// Whether a handshake from `newcomer` may start, and what makes room for it.
pub fn handshake(hs: &[Handshake], newcomer: IpAddr, now: Instant, limits: Limits) -> Admit {
    let newcomer = host_of(newcomer);
    let host = |h: &Handshake| host_of(h.peer.ip());
    let stalled = |h: &Handshake| now.saturating_duration_since(h.heard) >= limits.stalled_after;
    let oldest = |it: &mut dyn Iterator<Item = &Handshake>| it.min_by_key(|h| h.started).copied();
    let mut evict: Vec<SocketAddr> = Vec::new();
    let own = hs.iter().filter(|h| host(h) == newcomer).count();
    if own >= limits.per_address.max(1) {
        match oldest(&mut hs.iter().filter(|h| host(h) == newcomer && stalled(h))) {
            Some(h) => evict.push(h.peer),
            None => return Admit::Wait,
        }
    }
    if hs.len() - evict.len() < limits.max_total.max(1) {
        return Admit::Start(evict);
    }
    let mut by_ip: HashMap<IpAddr, usize> = HashMap::new();
    for h in hs.iter().filter(|h| !evict.contains(&h.peer)) {
        *by_ip.entry(host(h)).or_default() += 1;
    }
    let mine = by_ip.get(&newcomer).copied().unwrap_or(0);
    let left = |h: &&Handshake| !evict.contains(&h.peer);
    let biggest = by_ip
        .iter()
        .filter(|(ip, n)| **ip != newcomer && **n > mine + 1)
        .max_by_key(|(_, n)| **n)
        .map(|(ip, _)| *ip);
    let victim = match biggest {
        Some(ip) => {
            let theirs = |h: &&Handshake| host(h) == ip;
            oldest(&mut hs.iter().filter(left).filter(theirs).filter(|h| stalled(h)))
                .or_else(|| oldest(&mut hs.iter().filter(left).filter(theirs)))
        }
        None => oldest(&mut hs.iter().filter(left).filter(|h| stalled(h))),
    };
    match victim {
        Some(h) => {
            evict.push(h.peer);
            Admit::Start(evict)
        }
        None => Admit::Wait,
    }
}

/// Which parked handshake to forget when there are too many: the oldest of the host that has
/// the most parked (a host that parks handshakes by the hundred pays for them itself).
pub fn park_victim(parked: &[Handshake]) -> Option<SocketAddr> {
    let mut by_host: HashMap<IpAddr, usize> = HashMap::new();
    for h in parked {
        *by_host.entry(host_of(h.peer.ip())).or_default() += 1;
    }
    let most = by_host.values().copied().max()?;
    parked
        .iter()
        .filter(|h| by_host[&host_of(h.peer.ip())] == most)
        .min_by_key(|h| (h.started, h.peer))
        .map(|h| h.peer)
}

/// An established session, as admission sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Established<'a> {
    /// The peer.
    pub peer: SocketAddr,
    /// When it last sent something.
    pub last: Instant,
    /// Its identity (`None`: admitted with `allow_anonymous`).
    pub identity: Option<&'a str>,
}

/// The sessions to drop when a session of `identity` from `newcomer` is admitted, or `None`
/// if it may not be: the identity's own least recently active sessions beyond `per_identity`
/// (one device credential, leaked or not, cannot hold more), then, while the sessions number
/// more than `max_sessions`, the least recently active session without an identity, or else
/// the least recently active one. A newcomer without an identity makes room only among the
/// sessions without one. `sessions` holds the established sessions.
pub fn sessions_to_evict(
    sessions: &[Established<'_>],
    newcomer: SocketAddr,
    identity: Option<&str>,
    per_identity: usize,
    max_sessions: usize,
) -> Option<Vec<SocketAddr>> {
    let mut evict = Vec::new();
    let mut left: Vec<&Established<'_>> = sessions.iter().filter(|s| s.peer != newcomer).collect();
    if identity.is_some() {
        let mut mine: Vec<&&Established<'_>> =
            left.iter().filter(|s| s.identity == identity).collect();
        mine.sort_by_key(|s| s.last);
        let over = (mine.len() + 1).saturating_sub(per_identity.max(1));
        evict.extend(mine.iter().take(over).map(|s| s.peer));
    }
    left.retain(|s| !evict.contains(&s.peer));
    while left.len() + 1 > max_sessions.max(1) {
        let i = (0..left.len())
            .filter(|&i| identity.is_some() || left[i].identity.is_none())
            .min_by_key(|&i| (left[i].identity.is_some(), left[i].last))?;
        evict.push(left.remove(i).peer);
    }
    Some(evict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), port)
    }

    const LIMITS: Limits = Limits {
        max_total: 100,
        per_address: 10,
        stalled_after: Duration::from_millis(750),
    };

    /// `n` handshakes from `ip`, begun 1 ms apart from `t0 + at_ms`, last heard `heard_ms`
    /// after `t0`.
    fn from(ip: &str, n: u16, t0: Instant, at_ms: u64, heard_ms: u64) -> Vec<Handshake> {
        (0..n)
            .map(|i| Handshake {
                peer: addr(ip, 1000 + i),
                started: t0 + Duration::from_millis(at_ms + u64::from(i)),
                heard: t0 + Duration::from_millis(heard_ms),
            })
            .collect()
    }

    #[test]
    fn a_host_at_its_limit_replaces_its_own_oldest_stalled_handshake() {
        let t0 = Instant::now();
        let hs = from("10.0.0.1", 10, t0, 0, 0);
        let later = t0 + Duration::from_secs(1);
        let ip = "10.0.0.1".parse().unwrap();
        assert_eq!(
            handshake(&hs, ip, later, LIMITS),
            Admit::Start(vec![addr("10.0.0.1", 1000)])
        );
        // Handshakes that are making progress are not replaced: the newcomer waits.
        let soon = t0 + Duration::from_millis(100);
        assert_eq!(handshake(&hs, ip, soon, LIMITS), Admit::Wait);
        // Another host is not held back by the first one's handshakes.
        let other = "10.0.0.2".parse().unwrap();
        assert_eq!(handshake(&hs, other, soon, LIMITS), Admit::Start(vec![]));
    }

    #[test]
    fn at_the_total_cap_a_host_holding_more_gives_one_up() {
        let t0 = Instant::now();
        let limits = Limits {
            max_total: 8,
            ..LIMITS
        };
        let mut hs = from("10.0.0.1", 6, t0, 100, 100);
        hs.extend(from("10.0.0.2", 1, t0, 0, 0));
        hs.extend(from("10.0.0.3", 1, t0, 1, 1));
        let soon = t0 + Duration::from_millis(200);
        // The big holder pays, even though its handshakes are fresh and others' are older.
        assert_eq!(
            handshake(&hs, "10.0.0.4".parse().unwrap(), soon, limits),
            Admit::Start(vec![addr("10.0.0.1", 1000)])
        );
        // A newcomer from the big holder itself finds nobody holding more: only a stalled
        // handshake makes room, and none is stalled yet.
        assert_eq!(
            handshake(&hs, "10.0.0.1".parse().unwrap(), soon, limits),
            Admit::Wait
        );
        let later = t0 + Duration::from_secs(2);
        assert_eq!(
            handshake(&hs, "10.0.0.1".parse().unwrap(), later, limits),
            Admit::Start(vec![addr("10.0.0.2", 1000)])
        );
    }

    #[test]
    fn the_host_with_most_parked_loses_its_oldest() {
        let t0 = Instant::now();
        let mut parked = from("10.0.0.1", 3, t0, 100, 100);
        parked.extend(from("10.0.0.2", 1, t0, 0, 0));
        // 10.0.0.2's handshake is older, but 10.0.0.1 has more parked.
        assert_eq!(park_victim(&parked), Some(addr("10.0.0.1", 1000)));
        let even = from("10.0.0.2", 1, t0, 0, 0)
            .into_iter()
            .chain(from("10.0.0.3", 1, t0, 5, 5))
            .collect::<Vec<_>>();
        assert_eq!(park_victim(&even), Some(addr("10.0.0.2", 1000)));
        assert_eq!(park_victim(&[]), None);
    }

    #[test]
    fn an_ipv6_host_is_its_slash_64() {
        let t0 = Instant::now();
        let hs: Vec<Handshake> = (0..10u16)
            .map(|i| Handshake {
                peer: SocketAddr::new(format!("2001:db8:1:2::{i:x}").parse().unwrap(), 1000),
                started: t0,
                heard: t0,
            })
            .collect();
        let soon = t0 + Duration::from_millis(100);
        assert_eq!(
            handshake(&hs, "2001:db8:1:2::ffff".parse().unwrap(), soon, LIMITS),
            Admit::Wait
        );
        assert_eq!(
            handshake(&hs, "2001:db8:1:3::1".parse().unwrap(), soon, LIMITS),
            Admit::Start(vec![])
        );
        assert_eq!(
            host_of("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn nothing_is_evicted_below_the_limits() {
        let t0 = Instant::now();
        let hs = from("10.0.0.1", 1, t0, 0, 0);
        assert_eq!(
            handshake(&hs, "10.0.0.1".parse().unwrap(), t0, LIMITS),
            Admit::Start(vec![])
        );
    }

    #[test]
    fn the_least_recently_active_session_makes_room_anonymous_ones_first() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let s = |ip: &str, ms: u64, id: Option<&'static str>| Established {
            peer: addr(ip, 1),
            last: at(ms),
            identity: id,
        };
        let sessions = vec![
            s("10.0.0.1", 50, Some("a")),
            s("10.0.0.2", 10, Some("b")),
            s("10.0.0.3", 0, Some("c")),
        ];
        let new = addr("10.0.0.9", 1);
        assert_eq!(
            sessions_to_evict(&sessions, new, Some("d"), 4, 3),
            Some(vec![addr("10.0.0.3", 1)])
        );
        assert_eq!(
            sessions_to_evict(&sessions, new, Some("d"), 4, 4),
            Some(vec![])
        );
        // An anonymous session goes first, however recently it was active.
        let mut with_anon = sessions.clone();
        with_anon.push(s("10.0.0.4", 99, None));
        assert_eq!(
            sessions_to_evict(&with_anon, new, Some("d"), 4, 4),
            Some(vec![addr("10.0.0.4", 1)])
        );
        // A newcomer without an identity replaces only one without an identity.
        assert_eq!(
            sessions_to_evict(&with_anon, new, None, 4, 4),
            Some(vec![addr("10.0.0.4", 1)])
        );
        assert_eq!(sessions_to_evict(&sessions, new, None, 4, 3), None);
    }

    #[test]
    fn one_identity_holds_at_most_its_share_of_sessions() {
        let t0 = Instant::now();
        let sessions: Vec<Established<'_>> = (0..5u16)
            .map(|i| Established {
                peer: addr("10.0.0.1", 100 + i),
                last: t0 + Duration::from_millis(u64::from(i)),
                identity: Some("leaked"),
            })
            .chain([Established {
                peer: addr("10.0.0.2", 1),
                last: t0,
                identity: Some("honest"),
            }])
            .collect();
        // A sixth session of "leaked" replaces its own oldest two, never "honest"'s.
        assert_eq!(
            sessions_to_evict(&sessions, addr("10.0.0.1", 200), Some("leaked"), 4, 1000),
            Some(vec![addr("10.0.0.1", 100), addr("10.0.0.1", 101)])
        );
    }
}
