//! The requests that wait in the ingress for room in the sinks' queues: oldest first, bounded
//! by the readings they hold (that is their memory), so that a fleet whose devices each keep a
//! request or a few in flight is queued, not refused, while a sink that stays slow cannot make
//! the ingress grow without end. No I/O, no clock.

use std::collections::VecDeque;

/// What a waiting request weighs.
pub trait Weighed {
    /// The readings it holds.
    fn readings(&self) -> usize;
}

/// The waiting requests, oldest first.
#[derive(Debug)]
pub struct Waiting<T> {
    queue: VecDeque<T>,
    readings: usize,
    max_readings: usize,
}

impl<T: Weighed> Waiting<T> {
    /// A queue that holds at most `max_readings` readings.
    pub fn new(max_readings: usize) -> Waiting<T> {
        Waiting {
            queue: VecDeque::new(),
            readings: 0,
            max_readings,
        }
    }

    /// Queues `r` last, or gives it back if its readings would take the queue past its bound.
    pub fn push_back(&mut self, r: T) -> Result<(), T> {
        if self.readings + r.readings() > self.max_readings {
            return Err(r);
        }
        self.readings += r.readings();
        self.queue.push_back(r);
        Ok(())
    }

    /// Puts back first a request just taken that could not go yet (never refused: it was in
    /// the queue a moment ago).
    pub fn push_front(&mut self, r: T) {
        self.readings += r.readings();
        self.queue.push_front(r);
    }

    /// Takes the oldest.
    pub fn pop_front(&mut self) -> Option<T> {
        let r = self.queue.pop_front()?;
        self.readings -= r.readings();
        Some(r)
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The readings of the waiting requests.
    #[cfg(test)]
    pub fn readings(&self) -> usize {
        self.readings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct R(&'static str, usize);

    impl Weighed for R {
        fn readings(&self) -> usize {
            self.1
        }
    }

    #[test]
    fn the_bound_is_the_readings_held_not_the_requests() {
        let mut w = Waiting::new(100);
        // Many small requests fit: a fleet with one request each in flight.
        for _ in 0..60 {
            w.push_back(R("one", 1)).unwrap();
        }
        w.push_back(R("twenty", 20)).unwrap();
        assert_eq!(w.readings(), 80);
        // One that would go past the bound is given back; a smaller one still fits.
        assert_eq!(w.push_back(R("big", 21)), Err(R("big", 21)));
        w.push_back(R("last", 20)).unwrap();
        assert_eq!(w.readings(), 100);
        assert_eq!(w.push_back(R("more", 1)), Err(R("more", 1)));
    }

    #[test]
    fn oldest_first_and_one_put_back_keeps_its_place() {
        let mut w = Waiting::new(10);
        w.push_back(R("a", 4)).unwrap();
        w.push_back(R("b", 6)).unwrap();
        let a = w.pop_front().unwrap();
        assert_eq!(a, R("a", 4));
        assert_eq!(w.readings(), 6);
        w.push_front(a);
        assert_eq!(w.readings(), 10);
        assert_eq!(w.pop_front(), Some(R("a", 4)));
        assert_eq!(w.pop_front(), Some(R("b", 6)));
        assert!(w.is_empty());
        assert_eq!(w.readings(), 0);
        assert_eq!(w.pop_front(), None);
    }
}
