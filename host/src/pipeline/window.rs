//! The write loop of a sink that takes several batches at once (its `window` is above 1): a
//! radio uplink whose next batch should go out while the last requests of the one before wait
//! for their retransmissions. Batches are submitted in order, each retried on its own as its
//! error says, and settled in the order they were taken, so that the disk buffer's head only
//! moves over records that are stored. One thread, no locks: outcomes come back on a channel.

use super::{
    sink::{Batch, Input, Next, IDLE_CHECK},
    worker::{Failed, Settled, Worker},
    Phase, Shutdown,
};
use abi_stable::{sabi_trait::TD_Opaque, std_types::RResult};
use crossbeam_channel::{Receiver, Sender};
use gateway_sdk::{
    abi::{AckFfi, AckFfi_TO},
    ErrorKind, PluginError,
};
use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// How long the loop waits for an outcome while it could take another batch: the longest a
/// new batch waits to be sent when the window has room.
const ROOM_CHECK: Duration = Duration::from_millis(10);

/// How many batches, per slot of the window, may wait (written, or being written) for an
/// earlier one to be settled: the memory a stalled batch may hold up.
const HELD_PER_SLOT: usize = 2;

/// An outcome, by the ticket of the attempt it ends.
type Outcome = (u64, Result<(), PluginError>);

/// A batch in flight.
struct Flight<B> {
    batch: B,
    /// The ticket of the attempt in flight; 0 while none is (it waits for a retry, or is
    /// settled).
    ticket: u64,
    attempts: u32,
    backoff: Duration,
    retry_at: Option<Instant>,
    settled: Option<Settled>,
    /// [`Window::succeeded`] when its attempt in flight started.
    seen: u64,
    /// When its attempt in flight was handed over, while the sink has not answered it.
    out_since: Option<Instant>,
}

/// The host's half of a submitted write: says how it ended, on the loop's channel. Dropped
/// unanswered (the plugin lost it, or its instance was dropped), it says the write failed and
/// may be retried.
struct Done {
    ticket: u64,
    tx: Option<Sender<Outcome>>,
}

impl AckFfi for Done {
    fn done(&mut self, outcome: RResult<(), PluginError>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send((self.ticket, outcome.into_result()));
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let e = PluginError::retry("the sink dropped the write without saying how it ended");
            let _ = tx.send((self.ticket, Err(e)));
        }
    }
}

/// The loop's state.
struct Window<B> {
    flights: VecDeque<Flight<B>>,
    tx: Sender<Outcome>,
    rx: Receiver<Outcome>,
    next_ticket: u64,
    /// Writes that succeeded so far: a failure after one of them is the batch's own trouble,
    /// not an outage's.
    succeeded: u64,
}

/// Runs the sink with up to `window` batches in flight until its input ends and every batch
/// is settled, a settlement says stop, or the shutdown aborts. What is still in flight then is
/// dropped: a queued batch tells its source it was not taken, a buffered one stays on disk.
pub(super) fn pump<I: Input>(input: &mut I, w: &mut Worker, shutdown: &Shutdown, window: usize) {
    /// Clears what the stall check sees of the writes in flight when the loop ends.
    struct Awaiting(std::sync::Arc<crate::stats::SinkStats>);
    impl Drop for Awaiting {
        fn drop(&mut self) {
            self.0.awaiting(None);
        }
    }
    let _awaiting = Awaiting(w.stats.clone());
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut win = Window {
        flights: VecDeque::new(),
        tx,
        rx,
        next_ticket: 1,
        succeeded: 0,
    };
    let mut ended = false;
    loop {
        if shutdown.reached(Phase::Aborting) {
            for f in win.flights.drain(..) {
                input.abandon(f.batch, f.settled);
            }
            return;
        }
        while win.flights.front().is_some_and(|f| f.settled.is_some()) {
            let f = win.flights.pop_front().expect("front");
            if !input.settle(f.batch, f.settled.expect("settled")) {
                for f in win.flights.drain(..) {
                    input.abandon(f.batch, f.settled);
                }
                return;
            }
        }
        // The oldest write the sink has not answered, for the stall check.
        w.stats
            .awaiting(win.flights.iter().filter_map(|f| f.out_since).min());
        let now = Instant::now();
        for i in 0..win.flights.len() {
            let f = &win.flights[i];
            if f.settled.is_none() && f.retry_at.is_some_and(|t| t <= now) {
                win.flights[i].retry_at = None;
                win.start(w, i);
            }
        }
        // The window counts the batches being written; those already stored wait behind an
        // earlier one that is not (at most `HELD_PER_SLOT` times the window in all), so that
        // one request waiting for its retransmissions does not stop the others.
        let writing = win.flights.iter().filter(|f| f.settled.is_none()).count();
        let room = !ended && writing < window && win.flights.len() < window * HELD_PER_SLOT;
        if room {
            let wait = if win.flights.is_empty() {
                IDLE_CHECK
            } else {
                Duration::ZERO
            };
            match input.poll(w, wait) {
                Next::Batch(batch) => {
                    win.flights.push_back(Flight {
                        batch,
                        ticket: 0,
                        attempts: 0,
                        backoff: w.settings.retry_backoff,
                        retry_at: None,
                        settled: None,
                        seen: 0,
                        out_since: None,
                    });
                    win.start(w, win.flights.len() - 1);
                    continue;
                }
                Next::Idle => {}
                Next::End => ended = true,
            }
        }
        if win.flights.is_empty() {
            if ended {
                return;
            }
            continue;
        }
        let mut wait = if room { ROOM_CHECK } else { IDLE_CHECK };
        if let Some(t) = win.flights.iter().filter_map(|f| f.retry_at).min() {
            wait = wait.min(t.saturating_duration_since(now));
        }
        if let Ok(o) = win.rx.recv_timeout(wait) {
            win.outcome(w, o);
            while let Ok(o) = win.rx.try_recv() {
                win.outcome(w, o);
            }
        }
    }
}

impl<B: Batch> Window<B> {
    /// Submits flight `i` under a new ticket.
    fn start(&mut self, w: &mut Worker, i: usize) {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let done = AckFfi_TO::from_value(
            Done {
                ticket,
                tx: Some(self.tx.clone()),
            },
            TD_Opaque,
        );
        let f = &mut self.flights[i];
        f.ticket = ticket;
        f.attempts += 1;
        f.seen = self.succeeded;
        f.out_since = Some(Instant::now());
        if let Err(e) = w.submit(f.batch.readings(), done) {
            // The instance did not take it: this is the outcome (whatever `done` says later
            // is for a ticket that no longer counts).
            let f = &mut self.flights[i];
            f.ticket = 0;
            f.out_since = None;
            self.ended(w, i, Err(e));
        }
    }

    /// Takes an outcome; one for an attempt that no longer counts is dropped.
    fn outcome(&mut self, w: &mut Worker, (ticket, outcome): Outcome) {
        let Some(i) = self.flights.iter().position(|f| f.ticket == ticket) else {
            return;
        };
        self.flights[i].ticket = 0;
        self.flights[i].out_since = None;
        self.ended(w, i, outcome);
    }

    /// Flight `i`'s attempt ended with `outcome`: settles it, or schedules its retry.
    fn ended(&mut self, w: &mut Worker, i: usize, outcome: Result<(), PluginError>) {
        let now = Instant::now();
        let f = &mut self.flights[i];
        let n = f.batch.readings().len();
        let settled = match outcome.map_err(|e| w.failed(n, e)) {
            Ok(()) => {
                w.wrote(n, f.attempts);
                self.succeeded += 1;
                Settled::Whole(Ok(()))
            }
            Err(Failed::Retry(e)) => {
                // Another write succeeded while this one was out: the backoff grown during
                // an outage does not apply to it any more.
                if self.succeeded > f.seen {
                    f.backoff = w.settings.retry_backoff;
                }
                w.retrying(n, f.attempts, &e, f.backoff);
                f.retry_at = Some(now + f.backoff);
                f.backoff = (f.backoff * 2).min(w.settings.retry_backoff_max);
                return;
            }
            Err(Failed::Restart(e)) => {
                w.restart(&e);
                // The instance is gone, and with it every attempt in flight: all go again
                // once a new one is built.
                for f in self.flights.iter_mut().filter(|f| f.settled.is_none()) {
                    f.ticket = 0;
                    f.retry_at = Some(now);
                }
                return;
            }
            Err(Failed::Final(e)) if e.kind == ErrorKind::REJECTED => {
                w.refused(f.batch.readings(), f.batch.parts(), e)
            }
            Err(Failed::Final(e)) => Settled::Whole(Err(e)),
        };
        let written = matches!(settled, Settled::Whole(Ok(())));
        f.settled = Some(settled);
        if written {
            // The sink takes writes again (a server back after an outage): the batches
            // waiting out a backoff grown during the outage go now, not up to
            // `retry_backoff_max` later, and start their backoff afresh.
            for f in self.flights.iter_mut().filter(|f| f.retry_at.is_some()) {
                f.retry_at = Some(now);
                f.backoff = w.settings.retry_backoff;
            }
        }
    }
}
