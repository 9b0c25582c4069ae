//! When a server worker that has run out of datagrams polls its socket for a while before it
//! sleeps (busy polling), and when it goes to sleep at once. No I/O: the driver asks
//! [`BusyPoll::window`] when it runs dry and reports how the poll ended.
//!
//! A worker that sleeps in `epoll_wait` between two requests of a device pays, on each
//! request, for being woken: the device's `sendto` wakes the worker's thread (an inter-processor
//! interrupt, on a virtual machine an exit to the hypervisor) and the scheduler switches to it.
//! At one request in flight that wake-up is most of the round trip (measured here: 115 µs per
//! request sleeping, 45 µs polling). Polling for the gap between an answer and the device's next
//! request costs a core meanwhile, so the worker polls only while polling pays:
//!
//! - it polls for at most `budget` each time it runs dry;
//! - after two polls in a row that found nothing (a quiet server, or a gap longer than the
//!   budget), it sleeps at once, and polls again only on every [`PROBE_EVERY`]th time it runs
//!   dry, to find out whether the traffic became dense again.
//!
//! So a quiet server spends at most one budget in [`PROBE_EVERY`] wake-ups polling in vain, and
//! a loaded one seldom polls for long: under load a datagram is waiting already.

use std::time::Duration;

/// How often a worker that stopped polling tries again (in times it ran dry).
pub const PROBE_EVERY: u32 = 16;

/// Polls in vain, in a row, after which a worker sleeps at once.
const GIVE_UP_AFTER: u32 = 2;

/// The busy-polling policy of one worker.
#[derive(Debug, Clone)]
pub struct BusyPoll {
    budget: Duration,
    /// Polls in a row that found nothing.
    misses: u32,
    /// Times run dry since polling stopped.
    dry: u32,
}

impl BusyPoll {
    /// Polls for at most `budget` (zero: never).
    pub fn new(budget: Duration) -> BusyPoll {
        BusyPoll {
            budget,
            misses: 0,
            dry: 0,
        }
    }

    /// The worker ran dry: how long to poll before sleeping (`None`: sleep now).
    pub fn window(&mut self) -> Option<Duration> {
        if self.budget.is_zero() {
            return None;
        }
        if self.misses < GIVE_UP_AFTER {
            return Some(self.budget);
        }
        self.dry += 1;
        if self.dry >= PROBE_EVERY {
            self.dry = 0;
            return Some(self.budget);
        }
        None
    }

    /// The poll found a datagram (or an answer to send).
    pub fn found(&mut self) {
        self.misses = 0;
        self.dry = 0;
    }

    /// The poll found nothing within its window.
    pub fn missed(&mut self) {
        self.misses = self.misses.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Duration = Duration::from_micros(50);

    #[test]
    fn a_zero_budget_never_polls() {
        let mut p = BusyPoll::new(Duration::ZERO);
        for _ in 0..100 {
            assert_eq!(p.window(), None);
            p.missed();
        }
    }

    #[test]
    fn polls_while_polls_find_datagrams() {
        let mut p = BusyPoll::new(B);
        for _ in 0..100 {
            assert_eq!(p.window(), Some(B));
            p.found();
        }
    }

    #[test]
    fn one_miss_is_forgiven() {
        let mut p = BusyPoll::new(B);
        for _ in 0..10 {
            assert_eq!(p.window(), Some(B));
            p.missed();
            assert_eq!(p.window(), Some(B));
            p.found();
        }
    }

    #[test]
    fn a_quiet_worker_polls_once_in_probe_every_times() {
        let mut p = BusyPoll::new(B);
        let mut polled = 0;
        let rounds = 100 * PROBE_EVERY;
        for _ in 0..rounds {
            if p.window().is_some() {
                polled += 1;
                p.missed();
            }
        }
        // The first two, then one per PROBE_EVERY.
        assert_eq!(
            polled,
            GIVE_UP_AFTER + (rounds - GIVE_UP_AFTER) / PROBE_EVERY
        );
    }

    #[test]
    fn a_probe_that_finds_traffic_resumes_polling() {
        let mut p = BusyPoll::new(B);
        p.window();
        p.missed();
        p.window();
        p.missed();
        let mut waited = 0;
        while p.window().is_none() {
            waited += 1;
        }
        assert_eq!(waited, PROBE_EVERY - 1);
        p.found();
        for _ in 0..10 {
            assert_eq!(p.window(), Some(B));
            p.found();
        }
    }
}
