//! The one shutdown state of a run: a phase that only moves forward, which every thread reads
//! and can wait on.
//!
//! - [`Phase::Running`]: sources produce, sinks write.
//! - [`Phase::Stopping`]: sources are asked to stop; what they emit meanwhile is still taken.
//! - [`Phase::Draining`]: no more readings are taken; sinks write what they hold and stop (a
//!   buffered sink leaves on disk what it cannot send in its share of the time).
//! - [`Phase::Aborting`]: the shutdown deadline passed: whatever is in progress gives up now.
//!
//! Each phase has a gate, a channel that closes when the phase is reached, so a thread can
//! wait for a phase and for its queue in one `select!` instead of polling a flag.

use crossbeam_channel::{Receiver, Sender};
use std::{
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

/// Where a run is. Ordered: a later phase includes the earlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Sources produce, sinks write.
    Running = 0,
    /// Sources are asked to stop.
    Stopping = 1,
    /// No more readings are taken; sinks write what they hold, then stop.
    Draining = 2,
    /// The deadline passed: give up at once.
    Aborting = 3,
}

impl Phase {
    const ALL: [Phase; 4] = [
        Phase::Running,
        Phase::Stopping,
        Phase::Draining,
        Phase::Aborting,
    ];
}

/// The shared phase of a run. Cheap to clone.
#[derive(Clone)]
pub struct Shutdown(Arc<Inner>);

struct Inner {
    phase: AtomicU8,
    /// One gate per phase after `Running`: closed (disconnected) once it is reached.
    gates: [Receiver<()>; 3],
    openers: Mutex<[Option<Sender<()>>; 3]>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A run in [`Phase::Running`].
    pub fn new() -> Shutdown {
        let (s1, r1) = crossbeam_channel::bounded(0);
        let (s2, r2) = crossbeam_channel::bounded(0);
        let (s3, r3) = crossbeam_channel::bounded(0);
        Shutdown(Arc::new(Inner {
            phase: AtomicU8::new(Phase::Running as u8),
            gates: [r1, r2, r3],
            openers: Mutex::new([Some(s1), Some(s2), Some(s3)]),
        }))
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        Phase::ALL[usize::from(self.0.phase.load(Ordering::SeqCst))]
    }

    /// Whether `p` has been reached.
    pub fn reached(&self, p: Phase) -> bool {
        self.phase() >= p
    }

    /// Moves on to `p` (and through every phase before it); never back.
    pub fn advance(&self, p: Phase) {
        self.0.phase.fetch_max(p as u8, Ordering::SeqCst);
        let mut openers = self.0.openers.lock().unwrap();
        for i in 0..(p as usize) {
            openers[i].take();
        }
    }

    /// A channel that disconnects once `p` is reached, to `select!` on beside other work.
    /// `p` must be after [`Phase::Running`].
    pub fn gate(&self, p: Phase) -> &Receiver<()> {
        &self.0.gates[(p as usize).checked_sub(1).expect("a phase after Running")]
    }

    /// Waits up to `d` for `p`; `true` if it was reached.
    pub fn wait_for(&self, p: Phase, d: Duration) -> bool {
        if self.reached(p) {
            return true;
        }
        matches!(
            self.gate(p).recv_timeout(d),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn phases_only_move_forward_and_wake_their_waiters() {
        let s = Shutdown::new();
        assert_eq!(s.phase(), Phase::Running);
        assert!(!s.wait_for(Phase::Stopping, Duration::from_millis(10)));
        let waiter = {
            let s = s.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                assert!(s.wait_for(Phase::Draining, Duration::from_secs(10)));
                t.elapsed()
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        s.advance(Phase::Draining);
        assert!(
            waiter.join().unwrap() < Duration::from_secs(5),
            "woken, not timed out"
        );
        assert!(s.reached(Phase::Stopping), "earlier phases are reached too");
        s.advance(Phase::Stopping);
        assert_eq!(s.phase(), Phase::Draining, "never back");
        assert!(!s.reached(Phase::Aborting));
        assert!(s.gate(Phase::Stopping).recv().is_err());
    }
}
