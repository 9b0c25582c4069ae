//! Retransmission timeouts from measured round trips, after CoCoA (draft-ietf-core-cocoa): per
//! peer, a *strong* estimator fed by exchanges answered without a retransmission and a *weak*
//! one fed by exchanges answered after one or two (their round trip counted from the first
//! transmission, so an ambiguous answer can only make the estimate larger), each kept as RFC
//! 6298's smoothed RTT and variance. Their timeouts blend into the one used for the next
//! request: `overall = 0.5 strong + 0.5 overall`, `overall = 0.25 weak + 0.75 overall`.
//!
//! Unlike CoCoA, a weak sample counts only while the strong estimator has had nothing for a
//! while (8 timeouts): on a lossy path most weak samples are a lost first transmission, and
//! counting its whole wait fed the timeout back into itself (25 % loss each way: the timeout
//! grew several fold and delivery halved). A path whose round trip grew past the timeout gives
//! only weak samples, and so still learns it.
//!
//! Within RFC 7252's rules: a new request waits `overall` times a random factor in
//! [1, ACK_RANDOM_FACTOR] before its first retransmission, starting at ACK_TIMEOUT before
//! anything was measured (or at a round trip measured by the DTLS handshake), and each
//! retransmission doubles the timeout, as RFC 7252 does, at most MAX_RETRANSMIT times; a
//! timeout that began above 3 s grows by 1.5 instead, as in CoCoA, so that long timeouts do
//! not grow out of proportion. CoCoA's factor of 3 below 1 s is not used: on a lossy path
//! (25 % of datagrams lost each way) it left most NSTART slots waiting seconds for a
//! retransmission (3.6 requests/s in the simulator, against 8.4 with doubling; the 200 ms
//! floor and doubling still spread five transmissions over 6 s or more).
//! As in CoCoA, the measured timeout may be below RFC 7252's default of
//! 2 s, which is what makes a fast lossy path usable; `min_rto` (200 ms) guards against a run
//! of lucky samples. An estimate that is not refreshed ages back toward ACK_TIMEOUT.
//! No I/O, no clock: times come in.

use std::time::{Duration, Instant};

/// RFC 6298's smoothed round trip and its variance, in seconds.
#[derive(Debug, Clone, Copy)]
struct Estimator {
    srtt: f64,
    rttvar: f64,
}

impl Estimator {
    /// Takes a sample; returns `srtt + k * rttvar`.
    fn sample(slot: &mut Option<Estimator>, rtt: f64, k: f64) -> f64 {
        let e = match slot {
            None => slot.insert(Estimator {
                srtt: rtt,
                rttvar: rtt / 2.0,
            }),
            Some(e) => {
                e.rttvar = 0.75 * e.rttvar + 0.25 * (e.srtt - rtt).abs();
                e.srtt = 0.875 * e.srtt + 0.125 * rtt;
                e
            }
        };
        e.srtt + k * e.rttvar
    }
}

/// The retransmission timeout toward one peer.
#[derive(Debug, Clone)]
pub struct Rto {
    overall: f64,
    strong: Option<Estimator>,
    weak: Option<Estimator>,
    updated: Instant,
    /// When the strong estimator last had a sample.
    strong_at: Option<Instant>,
}

impl Rto {
    /// Before any measurement: `initial` (ACK_TIMEOUT).
    pub fn new(initial: Duration, now: Instant) -> Rto {
        Rto {
            overall: initial.as_secs_f64(),
            strong: None,
            weak: None,
            updated: now,
            strong_at: None,
        }
    }

    /// The timeout for a new request now, within `[min, max]`. An estimate under 1 s that
    /// nothing refreshed for 16 of its own lengths doubles; one over 3 s that nothing refreshed
    /// for 4 of its lengths moves halfway to `initial` (CoCoA's aging).
    pub fn current(
        &mut self,
        now: Instant,
        initial: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let idle = now.saturating_duration_since(self.updated).as_secs_f64();
        if self.overall < 1.0 && idle > 16.0 * self.overall {
            self.overall = (2.0 * self.overall).min(1.0);
            self.updated = now;
        } else if self.overall > 3.0 && idle > 4.0 * self.overall {
            self.overall = (self.overall + initial.as_secs_f64()) / 2.0;
            self.updated = now;
        }
        Duration::from_secs_f64(self.overall.clamp(min.as_secs_f64(), max.as_secs_f64()))
    }

    /// The estimate as it stands, in seconds (before the aging [`Rto::current`] applies).
    pub fn estimate(&self) -> f64 {
        self.overall
    }

    /// An answer came `rtt` after the request's first transmission, which went out
    /// `transmissions` times in all: one is a strong sample, two or three a weak one, more
    /// none at all (too ambiguous).
    pub fn answered(&mut self, now: Instant, rtt: Duration, transmissions: u32) {
        let rtt = rtt.as_secs_f64();
        match transmissions {
            1 => {
                let rto = Estimator::sample(&mut self.strong, rtt, 4.0);
                self.overall = 0.5 * rto + 0.5 * self.overall;
                self.strong_at = Some(now);
            }
            2 | 3
                if self.strong_at.is_none_or(|t| {
                    now.saturating_duration_since(t).as_secs_f64() > 8.0 * self.overall
                }) =>
            {
                let rto = Estimator::sample(&mut self.weak, rtt, 1.0);
                self.overall = 0.25 * rto + 0.75 * self.overall;
            }
            _ => return,
        }
        self.updated = now;
    }

    /// A round trip measured before any request (a DTLS handshake's first flight, answered
    /// before it was sent again): the estimate starts from it, as RFC 6298 starts from its
    /// first sample (`srtt + 4 * rttvar`, three round trips), instead of from ACK_TIMEOUT.
    pub fn seed(&mut self, now: Instant, rtt: Duration) {
        let rtt = rtt.as_secs_f64();
        let e = Estimator {
            srtt: rtt,
            rttvar: rtt / 2.0,
        };
        self.overall = e.srtt + 4.0 * e.rttvar;
        self.strong = Some(e);
        self.updated = now;
        self.strong_at = Some(now);
    }

    /// When it last changed.
    pub fn updated(&self) -> Instant {
        self.updated
    }

    /// How much a timeout that began at `initial` grows at each retransmission: RFC 7252's
    /// doubling, and CoCoA's 1.5 above 3 s.
    pub fn backoff(initial: Duration) -> f64 {
        if initial.as_secs_f64() > 3.0 {
            1.5
        } else {
            2.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(f64) -> Duration = Duration::from_secs_f64;

    #[test]
    fn a_steady_path_pulls_the_timeout_toward_its_round_trip() {
        let t0 = Instant::now();
        let mut rto = Rto::new(S(2.0), t0);
        for i in 0..30 {
            rto.answered(t0 + S(i as f64), S(0.2), 1);
        }
        let now = t0 + S(30.0);
        let t = rto.current(now, S(2.0), S(0.0), S(60.0));
        assert!(t < S(0.3), "{t:?}");
        // The floor.
        assert_eq!(rto.current(now, S(2.0), S(0.5), S(60.0)), S(0.5));
    }

    #[test]
    fn a_round_trip_measured_before_the_first_request_sets_its_timeout() {
        let t0 = Instant::now();
        let mut rto = Rto::new(S(2.0), t0);
        rto.seed(t0, S(0.08));
        let t = rto.current(t0, S(2.0), S(0.0), S(60.0));
        assert!((t.as_secs_f64() - 0.24).abs() < 1e-9, "{t:?}");
        // Later samples go on from there.
        rto.answered(t0, S(0.08), 1);
        assert!(rto.current(t0, S(2.0), S(0.0), S(60.0)) < S(0.3));
    }

    #[test]
    fn a_slow_path_raises_it_and_ambiguous_samples_count_less() {
        let t0 = Instant::now();
        let mut rto = Rto::new(S(2.0), t0);
        rto.answered(t0, S(5.0), 1);
        let t = rto.current(t0, S(2.0), S(1.0), S(60.0));
        // 0.5 * (5 + 4 * 2.5) + 0.5 * 2
        assert!((t.as_secs_f64() - 8.5).abs() < 1e-9, "{t:?}");
        let mut weak = Rto::new(S(2.0), t0);
        weak.answered(t0, S(5.0), 2);
        let w = weak.current(t0, S(2.0), S(1.0), S(60.0));
        // 0.25 * (5 + 1 * 2.5) + 0.75 * 2
        assert!((w.as_secs_f64() - 3.375).abs() < 1e-9, "{w:?}");
        weak.answered(t0, S(50.0), 4);
        assert_eq!(
            weak.current(t0, S(2.0), S(1.0), S(60.0)),
            w,
            "four transmissions: no sample"
        );
    }

    #[test]
    fn on_a_lossy_path_a_lost_first_transmission_does_not_raise_it() {
        let t0 = Instant::now();
        let mut rto = Rto::new(S(2.0), t0);
        let mut now = t0;
        for _ in 0..50 {
            now += S(0.1);
            rto.answered(now, S(0.06), 1);
            // The first transmission lost: answered after the retransmission 0.25 s later.
            now += S(0.1);
            rto.answered(now, S(0.31), 2);
        }
        let t = rto.current(now, S(2.0), S(0.0), S(60.0));
        assert!(t < S(0.15), "{t:?}");
    }

    #[test]
    fn estimates_age_back_toward_the_default() {
        let t0 = Instant::now();
        let mut rto = Rto::new(S(2.0), t0);
        rto.answered(t0, S(10.0), 1);
        let high = rto.current(t0, S(2.0), S(1.0), S(60.0));
        let later = rto.current(t0 + high * 5, S(2.0), S(1.0), S(60.0));
        assert!(later < high, "{high:?} -> {later:?}");
        assert_eq!(Rto::backoff(S(0.5)), 2.0);
        assert_eq!(Rto::backoff(S(2.0)), 2.0);
        assert_eq!(Rto::backoff(S(4.0)), 1.5);
    }
}
