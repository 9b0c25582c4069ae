//! The requests that wait in the ingress for room in the sinks' queues: oldest first, bounded
//! by the readings they hold and by those readings' bytes (that is their memory: a reading of
//! a long text value or long names weighs many of the usual ones), so that a fleet whose
//! devices each keep a request or a few in flight is queued, not refused, while a sink that
//! stays slow cannot make the ingress grow without end. One device holds at most a share of
//! the room (a quarter of the readings, at least [`MIN_SHARE`], a quarter of the bytes, and
//! [`MAX_REQUESTS`] requests), so that a device flooding the ingress faster than the sinks
//! store cannot keep every other one out. No I/O, no clock.

use std::{collections::HashMap, collections::VecDeque, hash::Hash};

/// The readings one device may hold, at least (unless the whole queue holds fewer).
pub const MIN_SHARE: usize = 10_000;
/// The requests one device may hold: far more than any device keeps in flight (NSTART).
pub const MAX_REQUESTS: usize = 1024;

/// What `r` weighs in memory: itself, its value's text or bytes, and its labels' text, as if
/// none were shared with another reading.
pub fn reading_bytes(r: &gateway_sdk::Reading) -> usize {
    let value = match &r.value {
        gateway_sdk::Value::Text(t) => t.len(),
        gateway_sdk::Value::Bytes(b) => b.len(),
        _ => 0,
    };
    let labels: usize = [&r.device, &r.sensor, &r.name, &r.unit]
        .iter()
        .map(|l| l.as_str().len())
        .sum();
    std::mem::size_of::<gateway_sdk::Reading>() + value + labels
}

/// What a waiting request weighs, and whose it is.
pub trait Weighed {
    /// Whose it is (the device).
    type Owner: Hash + Eq + Clone;
    /// The readings it holds.
    fn readings(&self) -> usize;
    /// The memory they take, in bytes (an upper bound).
    fn bytes(&self) -> usize;
    /// Whose it is.
    fn owner(&self) -> Self::Owner;
}

/// The waiting requests, oldest first.
#[derive(Debug)]
pub struct Waiting<T: Weighed> {
    /// Each request with its owner and weight, as counted when it came in (weighing it reads
    /// every reading: done once, not again when it goes).
    queue: VecDeque<(T, T::Owner, Held)>,
    held: Held,
    max: Held,
    /// What one owner may hold (its requests apart).
    share: Held,
    /// Per owner: what it holds.
    owners: HashMap<T::Owner, Held>,
}

/// What some requests hold.
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    readings: usize,
    bytes: usize,
    requests: usize,
}

impl Held {
    fn of(r: &impl Weighed) -> Held {
        Held {
            readings: r.readings(),
            bytes: r.bytes(),
            requests: 1,
        }
    }

    fn add(self, o: Held) -> Held {
        Held {
            readings: self.readings + o.readings,
            bytes: self.bytes + o.bytes,
            requests: self.requests + o.requests,
        }
    }

    fn sub(self, o: Held) -> Held {
        Held {
            readings: self.readings - o.readings,
            bytes: self.bytes - o.bytes,
            requests: self.requests - o.requests,
        }
    }

    /// Whether it holds more readings or bytes than `max`.
    fn past(self, max: Held) -> bool {
        self.readings > max.readings || self.bytes > max.bytes
    }
}

impl<T: Weighed> Waiting<T> {
    /// A queue that holds at most `max_readings` readings and `max_bytes` bytes of them.
    pub fn new(max_readings: usize, max_bytes: usize) -> Waiting<T> {
        Waiting {
            queue: VecDeque::new(),
            held: Held::default(),
            max: Held {
                readings: max_readings,
                bytes: max_bytes,
                requests: usize::MAX,
            },
            share: Held {
                readings: (max_readings / 4).max(MIN_SHARE).min(max_readings),
                bytes: max_bytes / 4,
                requests: MAX_REQUESTS,
            },
            owners: HashMap::new(),
        }
    }

    /// Queues `r` last, or gives it back if it would take the queue past its bounds, or its
    /// owner past its share.
    pub fn push_back(&mut self, r: T) -> Result<(), T> {
        let w = Held::of(&r);
        if self.held.add(w).past(self.max) {
            return Err(r);
        }
        let owner = r.owner();
        let held = self.owners.get(&owner).copied().unwrap_or_default();
        // A device holding nothing gets in with a request larger than its share.
        if (held.requests > 0 && held.add(w).past(self.share))
            || held.requests >= self.share.requests
        {
            return Err(r);
        }
        self.owners.insert(owner.clone(), held.add(w));
        self.held = self.held.add(w);
        self.queue.push_back((r, owner, w));
        Ok(())
    }

    /// Puts back first a request just taken that could not go yet (never refused: it was in
    /// the queue a moment ago).
    pub fn push_front(&mut self, r: T) {
        let (w, owner) = (Held::of(&r), r.owner());
        let e = self.owners.entry(owner.clone()).or_default();
        *e = e.add(w);
        self.held = self.held.add(w);
        self.queue.push_front((r, owner, w));
    }

    /// Takes the oldest.
    pub fn pop_front(&mut self) -> Option<T> {
        let (r, owner, w) = self.queue.pop_front()?;
        self.held = self.held.sub(w);
        if let Some(e) = self.owners.get_mut(&owner) {
            *e = e.sub(w);
            if e.requests == 0 {
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
        self.held.readings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct R(&'static str, usize);

    /// A reading of these tests weighs 100 bytes, but for [`Big`].
    impl Weighed for R {
        type Owner = &'static str;
        fn readings(&self) -> usize {
            self.1
        }
        fn bytes(&self) -> usize {
            self.1 * 100
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
        let mut w = Waiting::new(200_000, usize::MAX);
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
        let mut w = Waiting::new(200_000, usize::MAX);
        for _ in 0..MAX_REQUESTS {
            w.push_back(R("tiny", 1)).unwrap();
        }
        assert!(w.push_back(R("tiny", 1)).is_err());
        w.push_back(R("other", 1)).unwrap();
        // A request larger than the share gets in when its device holds nothing.
        let mut w = Waiting::new(200_000, usize::MAX);
        w.push_back(R("big", 60_000)).unwrap();
        assert!(w.push_back(R("big", 1)).is_err());
        // A small queue: the share is the whole queue, as before.
        let mut w = Waiting::new(100, usize::MAX);
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
        let mut w = Waiting::new(100, usize::MAX);
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
        let mut w = Waiting::new(10, usize::MAX);
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

    #[derive(Debug, PartialEq)]
    struct Big(&'static str, usize);

    /// A request of one reading of `.1` bytes (a long text value).
    impl Weighed for Big {
        type Owner = &'static str;
        fn readings(&self) -> usize {
            1
        }
        fn bytes(&self) -> usize {
            self.1
        }
        fn owner(&self) -> &'static str {
            self.0
        }
    }

    #[test]
    fn a_reading_weighs_its_size_its_text_and_its_labels() {
        use gateway_sdk::{Label, Reading, ReadingId, Timestamp, Value};
        let label = Label::from;
        let mut r = Reading {
            id: ReadingId([0; 16]),
            time: Timestamp::now(),
            device: label("pi-07"),
            sensor: label("28-0316"),
            name: label("temperature"),
            unit: label("Cel"),
            value: Value::Float(21.5),
        };
        let size = std::mem::size_of::<Reading>();
        // The README says 128 bytes on a 64-bit machine.
        #[cfg(target_pointer_width = "64")]
        assert_eq!(size, 128);
        assert_eq!(reading_bytes(&r), size + 5 + 7 + 11 + 3);
        r.value = Value::Text("x".repeat(1000).into());
        assert_eq!(reading_bytes(&r), size + 26 + 1000);
    }

    #[test]
    fn the_bytes_are_bounded_too_and_one_device_holds_a_quarter_of_them() {
        // Before, a request was weighed in readings only: one device's requests of one
        // reading each, a text of up to 1 MiB, could hold 1,024 MiB in each worker.
        const MIB: usize = 1 << 20;
        let mut w = Waiting::new(200_000, 64 * MIB);
        let mut n = 0;
        while w.push_back(Big("texts", MIB)).is_ok() {
            n += 1;
        }
        assert_eq!(n, 16, "a quarter of 64 MiB");
        for other in ["b", "c", "d"] {
            for _ in 0..16 {
                w.push_back(Big(other, MIB)).unwrap();
            }
        }
        // The queue is full in bytes with 64 readings in it.
        assert_eq!(w.readings(), 64);
        assert!(w.push_back(Big("e", 1)).is_err());
        w.pop_front().unwrap();
        w.push_back(Big("e", MIB)).expect("room again");
        // Small readings are bounded by their count, as before.
        let mut w = Waiting::new(100, 64 * MIB);
        w.push_back(R("one", 100)).unwrap();
        assert!(w.push_back(R("two", 1)).is_err());
    }
}
