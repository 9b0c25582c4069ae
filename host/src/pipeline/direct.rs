//! Writing a batch on its source's thread, while its sink is idle and quick.
//!
//! A batch normally crosses two threads: the source's `emit` puts it on the sink's queue and
//! wakes the sink's thread, which writes it and runs the source's acknowledgement; for a server
//! like `coaps-ingress` that wakes the source's thread again, to answer. For a sink whose
//! writes take microseconds, those two wake-ups cost more than the write itself (a third of
//! the ingress's CPU went to the scheduler). So while the sink's thread waits for its queue,
//! and its last write was quick, it lends its instance here. An `emit` that finds it lent and
//! the queue empty writes its batch right there, once, and acknowledges it before returning.
//!
//! Everything else goes through the queue as before:
//! - a write here that fails: the sink's thread writes the batch again, with its retries, its
//!   rebuilding of a failed instance and its dead-letter file;
//! - every batch after a write here that took longer than [`QUICK`]: while a slow sink writes,
//!   the batches that come meanwhile form the next write, which serves it better, and a
//!   source's thread is not held up by it;
//! - a batch that finds another queued or being written: a sink stores one source's batches
//!   in the order they came.
//!
//! Sinks with a disk buffer or a window of several batches never lend their instance.

use super::Envelope;
use crate::stats::SinkStats;
use abi_stable::std_types::RSlice;
use crossbeam_channel::{Receiver, Select, Sender};
use gateway_sdk::{abi::SinkBox, PluginError, Reading};
use std::{
    sync::{atomic::Ordering, Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// The longest write that still counts as quick: about what the two thread wake-ups cost that
/// a write on the source's thread saves.
pub const QUICK: Duration = Duration::from_micros(50);

/// One sink's lending desk: shared by its queue's senders and its thread (and, across a
/// reload, the thread that replaces it).
pub struct Direct {
    slot: Mutex<Option<Lent>>,
    stats: Arc<SinkStats>,
}

/// An instance on loan.
struct Lent {
    instance: SinkBox,
    /// The sink's span, entered for a write here so that its logs say whose they are.
    span: tracing::Span,
    /// A write here failed or was slow: nothing more is written here until the sink's
    /// thread has its instance back.
    spoiled: bool,
    /// How a write here failed.
    failed: Option<PluginError>,
}

impl Direct {
    /// A desk counting into `stats`.
    pub fn new(stats: Arc<SinkStats>) -> Arc<Direct> {
        Arc::new(Direct {
            slot: Mutex::new(None),
            stats,
        })
    }

    fn slot(&self) -> MutexGuard<'_, Option<Lent>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `readings` here if an instance is lent, quick, and `queue` holds nothing that
    /// came first: `true` once they are stored (the caller acknowledges them), `false` if the
    /// caller is to queue them.
    pub fn write(&self, queue: &Sender<Envelope>, readings: &[Reading]) -> bool {
        // Another source writing here, or the sink's thread taking its instance back: queue.
        let Ok(mut slot) = self.slot.try_lock() else {
            return false;
        };
        let Some(lent) = slot.as_mut().filter(|l| !l.spoiled) else {
            return false;
        };
        // Checked with the instance held: the sink's thread takes it back before it takes a
        // batch, so whatever is queued now is written after this.
        if !queue.is_empty() {
            return false;
        }
        let _in_sink = lent.span.enter();
        let started = Instant::now();
        let outcome = {
            let _in_call = self.stats.in_call(crate::stats::Call::Write);
            lent.instance
                .write(RSlice::from_slice(readings))
                .into_result()
        };
        let took = started.elapsed();
        if took > QUICK || outcome.is_err() {
            lent.spoiled = true;
        }
        match outcome {
            Ok(()) => {
                let s = &self.stats;
                s.accepted
                    .fetch_add(readings.len() as u64, Ordering::Relaxed);
                s.wrote(readings.len());
                s.direct.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                lent.failed = Some(e);
                false
            }
        }
    }
}

/// A sink thread's side of the desk.
pub struct Lender {
    desk: Arc<Direct>,
    span: tracing::Span,
}

/// What lending gives back.
pub struct Returned {
    /// The instance.
    pub instance: SinkBox,
    /// No write here was slow or failed meanwhile.
    pub quick: bool,
    /// How a write here failed: its batch is queued, and the sink's thread writes it again
    /// (after rebuilding the instance, if the error says so).
    pub failed: Option<PluginError>,
}

impl Lender {
    /// The current sink thread's side of `desk`; its span is the current one.
    pub fn new(desk: Arc<Direct>) -> Lender {
        Lender {
            desk,
            span: tracing::Span::current(),
        }
    }

    /// Lends `instance` while waiting at most `wait` until `queue` has a batch (not taking
    /// it), then takes it back. Another thread's instance at the desk (a reload's predecessor
    /// that has not taken its own back yet) means waiting without lending.
    pub fn lend_while_waiting(
        &self,
        instance: SinkBox,
        queue: &Receiver<Envelope>,
        wait: Duration,
    ) -> Returned {
        let lent = {
            let mut slot = self.desk.slot();
            match *slot {
                Some(_) => Err(instance),
                None => {
                    *slot = Some(Lent {
                        instance,
                        span: self.span.clone(),
                        spoiled: false,
                        failed: None,
                    });
                    Ok(())
                }
            }
        };
        // Ready, not received: a batch stays queued until the instance is back, so no write
        // at the desk can overtake it.
        let mut sel = Select::new();
        sel.recv(queue);
        let _ = sel.ready_timeout(wait);
        match lent {
            Err(instance) => Returned {
                instance,
                quick: true,
                failed: None,
            },
            Ok(()) => {
                // Only the thread that lent an instance takes one from the desk, and nobody
                // lends while one is there: this one is ours.
                let l = self
                    .desk
                    .slot()
                    .take()
                    .expect("the instance this thread lent");
                Returned {
                    instance: l.instance,
                    quick: !l.spoiled,
                    failed: l.failed,
                }
            }
        }
    }
}
