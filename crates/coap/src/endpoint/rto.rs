//! Retransmission timeouts from measured round trips, after CoCoA (draft-ietf-core-cocoa): per
//! peer, a *strong* estimator fed by exchanges answered without a retransmission and a *weak*
//! one fed by exchanges answered after one or two (their round trip counted from the first
//! transmission, so an ambiguous answer can only make the estimate larger), each kept as RFC
//! 6298's smoothed RTT and variance. Their timeouts blend into the one used for the next
//! request: `overall = 0.5 strong + 0.5 overall`, `overall = 0.25 weak + 0.75 overall`.
//!
//! Within RFC 7252's rules: a new request waits `overall` times a random factor in
//! [1, ACK_RANDOM_FACTOR] before its first retransmission, starting at ACK_TIMEOUT before
//! anything was measured, and each retransmission backs the timeout off exponentially (by
//! CoCoA's variable factor: 3 below 1 s, so that a short timeout that fires again backs off
//! fast, 2 up to 3 s, 1.5 above, so that long timeouts do not grow out of proportion) at most
//! MAX_RETRANSMIT times. As in CoCoA, the measured timeout may be below RFC 7252's default of
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
}

impl Rto {
    /// Before any measurement: `initial` (ACK_TIMEOUT).
    pub fn new(initial: Duration, now: Instant) -> Rto {
        Rto {
            overall: initial.as_secs_f64(),
            strong: None,
            weak: None,
            updated: now,
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

    /// An answer came `rtt` after the request's first transmission, which went out
    /// `transmissions` times in all: one is a strong sample, two or three a weak one, more
    /// none at all (too ambiguous).
    pub fn answered(&mut self, now: Instant, rtt: Duration, transmissions: u32) {
        let rtt = rtt.as_secs_f64();
        match transmissions {
            1 => {
                let rto = Estimator::sample(&mut self.strong, rtt, 4.0);
                self.overall = 0.5 * rto + 0.5 * self.overall;
            }
            2 | 3 => {
                let rto = Estimator::sample(&mut self.weak, rtt, 1.0);
                self.overall = 0.25 * rto + 0.75 * self.overall;
            }
            _ => return,
        }
        self.updated = now;
    }

    /// When it last changed.
    pub fn updated(&self) -> Instant {
        self.updated
    }

    /// CoCoA's variable backoff: how much a timeout that began at `initial` grows at each
    /// retransmission.
    pub fn backoff(initial: Duration) -> f64 {
        match initial.as_secs_f64() {
            t if t < 1.0 => 3.0,
            t if t > 3.0 => 1.5,
            _ => 2.0,
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
    fn estimates_age_back_toward_the_default() {
        let t0 = Instant::now();
        let mut rto = Rto::new(S(2.0), t0);
        rto.answered(t0, S(10.0), 1);
        let high = rto.current(t0, S(2.0), S(1.0), S(60.0));
        let later = rto.current(t0 + high * 5, S(2.0), S(1.0), S(60.0));
        assert!(later < high, "{high:?} -> {later:?}");
        assert_eq!(Rto::backoff(S(0.5)), 3.0);
        assert_eq!(Rto::backoff(S(2.0)), 2.0);
        assert_eq!(Rto::backoff(S(4.0)), 1.5);
    }
}
