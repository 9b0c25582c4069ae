//! The established sessions in the order of their last activity, for the session cap: the
//! least recently active one is found without a look at every session. No I/O.
//!
//! A session's activity changes with every datagram, and a datagram must not pay for an
//! ordered structure. So each session has an entry, made when it is admitted, with the
//! activity known then; entries are kept in a min-heap, and only the one at the top is
//! brought up to date: when it is no longer its session's activity, it goes back with the
//! session's activity now, and the next top is looked at. The first top entry that is up to
//! date is the least recently active session: every other session was active at least when
//! its entry says, which is no earlier. A session is brought up to date at most once per
//! activity, so a look costs, over time, a few heap steps per session that was active.
//!
//! Sessions without an identity are kept apart: they make room first (see
//! [`crate::admission::sessions_to_evict`], which this finds the same sessions as). An entry
//! names its session by address and a serial number given at admission; an ended session's
//! entry is dropped when it reaches the top, or when entries outnumber twice the sessions
//! ([`Recency::needs_compacting`]).

use std::{cmp::Reverse, collections::BinaryHeap, net::SocketAddr, time::Instant};

/// One entry: (last activity, serial) first, the smallest at the top.
type Entry = Reverse<(Instant, u64, SocketAddr)>;

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Recency {
    anonymous: BinaryHeap<Entry>,
    identified: BinaryHeap<Entry>,
    serial: u64,
}

impl Recency {
    /// A session of `peer` is admitted, last active at `last`; its serial (never 0), which
    /// the session keeps for [`Recency::least_recent`]'s look-ups.
    pub fn admitted(&mut self, peer: SocketAddr, anonymous: bool, last: Instant) -> u64 {
        self.serial += 1;
        let serial = self.serial;
        self.heap(anonymous).push(Reverse((last, serial, peer)));
        serial
    }

    fn heap(&mut self, anonymous: bool) -> &mut BinaryHeap<Entry> {
        if anonymous {
            &mut self.anonymous
        } else {
            &mut self.identified
        }
    }

    /// Takes out the least recently active session, one without an identity if there is any
    /// (only those when `anonymous_only`). `activity(peer, serial)` is that session's last
    /// activity now, `None` if it ended (or is not to go).
    pub fn least_recent(
        &mut self,
        anonymous_only: bool,
        mut activity: impl FnMut(SocketAddr, u64) -> Option<Instant>,
    ) -> Option<SocketAddr> {
        for anonymous in [true, false] {
            if !anonymous && anonymous_only {
                break;
            }
            let heap = self.heap(anonymous);
            while let Some(Reverse((last, serial, peer))) = heap.pop() {
                match activity(peer, serial) {
                    Some(now) if now == last => return Some(peer),
                    Some(now) => heap.push(Reverse((now, serial, peer))),
                    None => {}
                }
            }
        }
        None
    }

    /// Entries, those of ended sessions included.
    pub fn len(&self) -> usize {
        self.anonymous.len() + self.identified.len()
    }

    /// Whether the entries outnumber twice the `sessions` established (and a few): then
    /// [`Recency::compact`] keeps the memory in proportion to the sessions.
    pub fn needs_compacting(&self, sessions: usize) -> bool {
        self.len() > 2 * sessions + 64
    }

    /// Keeps only the entries of `live` sessions, (peer, serial, anonymous, last activity).
    pub fn compact(&mut self, live: impl Iterator<Item = (SocketAddr, u64, bool, Instant)>) {
        self.anonymous.clear();
        self.identified.clear();
        for (peer, serial, anonymous, last) in live {
            self.heap(anonymous).push(Reverse((last, serial, peer)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::{sessions_to_evict, Established};
    use std::{collections::HashMap, time::Duration};

    /// A session as the server holds it.
    struct Live {
        serial: u64,
        anonymous: bool,
        last: Instant,
    }

    /// Random admissions, activity, ends and evictions; every eviction takes the session
    /// [`sessions_to_evict`] (which looks at all of them) would.
    #[test]
    fn finds_the_sessions_a_look_at_all_of_them_would() {
        let t0 = Instant::now();
        let mut next = gateway_coap::xorshift(0x2545_f491_4f6c_dd1d);
        let mut rand = move |n: u64| next() % n;
        let mut recency = Recency::default();
        let mut live: HashMap<SocketAddr, Live> = HashMap::new();
        let mut evictions = 0;
        for step in 1..20_000u64 {
            // Strictly later at each step: no two sessions tie.
            let now = t0 + Duration::from_micros(step);
            let peer = SocketAddr::from(([10, 0, 0, 1], rand(300) as u16));
            match rand(10) {
                0..=3 if !live.contains_key(&peer) => {
                    let anonymous = rand(4) == 0;
                    let serial = recency.admitted(peer, anonymous, now);
                    live.insert(
                        peer,
                        Live {
                            serial,
                            anonymous,
                            last: now,
                        },
                    );
                }
                0..=6 => {
                    if let Some(s) = live.get_mut(&peer) {
                        s.last = now;
                    }
                }
                7 => {
                    live.remove(&peer);
                }
                _ => {
                    let anonymous_only = rand(3) == 0;
                    let sessions: Vec<Established<'_>> = live
                        .iter()
                        .map(|(a, s)| Established {
                            peer: *a,
                            last: s.last,
                            identity: (!s.anonymous).then_some("device"),
                        })
                        .collect();
                    let newcomer = SocketAddr::from(([10, 0, 0, 2], 1));
                    let identity = (!anonymous_only).then_some("newcomer");
                    let want = sessions_to_evict(&sessions, newcomer, identity, 1000, live.len())
                        .map(|v| v.first().copied())
                        .unwrap_or_default();
                    let got = recency.least_recent(anonymous_only, |a, serial| {
                        live.get(&a).filter(|s| s.serial == serial).map(|s| s.last)
                    });
                    assert_eq!(got, want, "step {step}");
                    if let Some(a) = got {
                        live.remove(&a);
                        evictions += 1;
                    }
                }
            }
            if recency.needs_compacting(live.len()) {
                recency.compact(
                    live.iter()
                        .map(|(a, s)| (*a, s.serial, s.anonymous, s.last)),
                );
            }
            assert!(recency.len() <= 2 * live.len() + 65);
        }
        assert!(evictions > 1000, "{evictions}");
    }

    /// A session that ended, and another later at its address, are told apart by serial.
    #[test]
    fn a_later_session_at_the_same_address_is_not_taken_for_the_one_before() {
        let t0 = Instant::now();
        let peer = SocketAddr::from(([10, 0, 0, 1], 1));
        let mut recency = Recency::default();
        let first = recency.admitted(peer, false, t0);
        let second = recency.admitted(peer, false, t0 + Duration::from_secs(1));
        assert_ne!(first, second);
        let mut asked = Vec::new();
        let got = recency.least_recent(false, |_, serial| {
            asked.push(serial);
            (serial == second).then_some(t0 + Duration::from_secs(1))
        });
        assert_eq!(got, Some(peer));
        assert_eq!(asked, [first, second]);
        assert_eq!(recency.len(), 0);
    }
}
