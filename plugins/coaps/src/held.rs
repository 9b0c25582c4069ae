//! The requests that wait in the ingress for room in the sinks' queues: oldest first, bounded
//! by the readings they hold (that is their memory), so that a fleet whose devices each keep a
//! request or a few in flight is queued, not refused, while a sink that stays slow cannot make
//! the ingress grow without end. One device holds at most a share of the room (a quarter of
//! the readings, at least [`MIN_SHARE`], and [`MAX_REQUESTS`] requests), so that a device
//! flooding the ingress faster than the sinks store cannot keep every other one out. No I/O,
//! no clock.

use std::{collections::HashMap, collections::VecDeque, hash::Hash};

/// The readings one device may hold, at least (unless the whole queue holds fewer).
pub const MIN_SHARE: usize = 10_000;
/// The requests one device may hold: far more than any device keeps in flight (NSTART).
pub const MAX_REQUESTS: usize = 1024;

/// What a waiting request weighs, and whose it is.
pub trait Weighed {
    /// Whose it is (the device).
    type Owner: Hash + Eq + Clone;
    /// The readings it holds.
    fn readings(&self) -> usize;
    /// Whose it is.
    fn owner(&self) -> Self::Owner;
}

/// The waiting requests, oldest first.
#[derive(Debug)]
pub struct Waiting<T: Weighed> {
    queue: VecDeque<T>,
    readings: usize,
    max_readings: usize,
    /// The readings one owner may hold.
    share: usize,
    /// Per owner: readings and requests held.
    owners: HashMap<T::Owner, (usize, usize)>,
}

impl<T: Weighed> Waiting<T> {
    /// A queue that holds at most `max_readings` readings.
    pub fn new(max_readings: usize) -> Waiting<T> {
        Waiting {
            queue: VecDeque::new(),
            readings: 0,
            max_readings,
            share: (max_readings / 4).max(MIN_SHARE).min(max_readings),
            owners: HashMap::new(),
        }
    }

    /// Queues `r` last, or gives it back if its readings would take the queue past its bound,
    /// or its owner past its share.
    pub fn push_back(&mut self, r: T) -> Result<(), T> {
        let n = r.readings();
        if self.readings + n > self.max_readings {
            return Err(r);
        }
        let owner = r.owner();
        let (held, requests) = self.owners.get(&owner).copied().unwrap_or((0, 0));
        // A device holding nothing gets in with a request larger than its share.
        if (held > 0 && held + n > self.share) || requests >= MAX_REQUESTS {
            return Err(r);
        }
        self.owners.insert(owner, (held + n, requests + 1));
        self.readings += n;
        self.queue.push_back(r);
        Ok(())
    }

    /// Puts back first a request just taken that could not go yet (never refused: it was in
    /// the queue a moment ago).
    pub fn push_front(&mut self, r: T) {
        let n = r.readings();
        let e = self.owners.entry(r.owner()).or_insert((0, 0));
        *e = (e.0 + n, e.1 + 1);
        self.readings += n;
        self.queue.push_front(r);
    }

    /// Takes the oldest.
    pub fn pop_front(&mut self) -> Option<T> {
        let r = self.queue.pop_front()?;
        let n = r.readings();
        self.readings -= n;
        let owner = r.owner();
        if let Some(e) = self.owners.get_mut(&owner) {
            *e = (e.0 - n, e.1 - 1);
            if e.1 == 0 {
                self.owners.remove(&owner);
            }
        }
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
        type Owner = &'static str;
        fn readings(&self) -> usize {
            self.1
        }
        /// Each its own device, but for the test of shares.
        fn owner(&self) -> &'static str {
            self.0
        }
    }

    #[test]
    fn one_device_holds_at_most_its_share_and_the_others_still_get_in() {
        // A device flooding faster than the sinks store filled the whole queue, and every
        // other device's request got a 5.03 at once.
        let mut w = Waiting::new(200_000);
        let mut n = 0;
        while w.push_back(R("flood", 1_000)).is_ok() {
            n += 1;
        }
        assert_eq!(n, 50, "a quarter of 200,000 readings");
        w.push_back(R("other", 1)).expect("another device gets in");
        // Its share frees as its requests go.
        w.pop_front().unwrap();
        w.push_back(R("flood", 1_000))
            .expect("room in its share again");
        // At most MAX_REQUESTS requests, however small.
        let mut w = Waiting::new(200_000);
        for _ in 0..MAX_REQUESTS {
            w.push_back(R("tiny", 1)).unwrap();
        }
        assert!(w.push_back(R("tiny", 1)).is_err());
        w.push_back(R("other", 1)).unwrap();
        // A request larger than the share gets in when its device holds nothing.
        let mut w = Waiting::new(200_000);
        w.push_back(R("big", 60_000)).unwrap();
        assert!(w.push_back(R("big", 1)).is_err());
        // A small queue: the share is the whole queue, as before.
        let mut w = Waiting::new(100);
        w.push_back(R("one", 100)).unwrap();
        // Put back first, it keeps its owner's count.
        let r = w.pop_front().unwrap();
        w.push_front(r);
        assert!(w.push_back(R("one", 1)).is_err());
        assert_eq!(w.pop_front(), Some(R("one", 100)));
        w.push_back(R("one", 100)).unwrap();
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
