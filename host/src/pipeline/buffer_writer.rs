//! The thread that moves a buffered sink's queue onto disk: it takes what is queued (many
//! batches per disk write, so a Pi's SD card sees few writes), appends it durably, and only
//! then acknowledges the batches to their sources.

use super::{
    sink::{poll_envelope, Next, IDLE_CHECK},
    Phase, Shutdown,
};
use crate::buffer::{AppendError, DiskBuffer};
use crossbeam_channel::{Receiver, Sender};

use gateway_sdk::Reading;
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

/// A buffered sink's writer thread.
pub struct BufferWriter {
    /// The sink's queue.
    pub rx: Receiver<super::Envelope>,
    /// Batches a predecessor replaced by a reload took and did not write (a plain sink that
    /// became a buffered one): put on disk first. And where this thread, replaced in turn
    /// while it waits for room, leaves the batches it took.
    pub handed: super::sink::Handover,
    /// The buffer.
    pub buffer: Arc<DiskBuffer>,
    /// Most readings per record (the sink's batch size).
    pub record_readings: usize,
    /// The run's phase: the queue is emptied onto disk at [`Phase::Draining`], given up at
    /// [`Phase::Aborting`].
    pub shutdown: Shutdown,
    /// Dropped when the thread stops (however it stops): the sink thread then knows that
    /// nothing more comes.
    pub done: Sender<()>,
    /// Set when a reload replaces the buffer: the thread stops after the append in progress,
    /// and what is queued stays queued for its successor.
    pub handover: Arc<AtomicBool>,
}

impl BufferWriter {
    /// Runs until the queue is drained (or on abort).
    pub fn run(self, name: &str) {
        let span = tracing::info_span!("buffer", instance = %name);
        let _enter = span.enter();
        let limit = self.record_readings.saturating_mul(16).max(1);
        let aborting = || self.shutdown.reached(Phase::Aborting);
        let handing_over = || self.handover.load(Ordering::Relaxed);
        // A reload that replaces the buffer ends a wait for room too (a full buffer with
        // `when_full = "block"` behind a sink that is down waits for hours).
        let stop = || aborting() || handing_over();
        while !handing_over() {
            let first = match self.handed.rx.try_recv() {
                Ok(e) => e,
                Err(_) => match poll_envelope(&self.rx, &self.shutdown, IDLE_CHECK) {
                    Next::Batch(e) => e,
                    Next::Idle => continue,
                    Next::End => break,
                },
            };
            let mut n = first.readings.len();
            let mut envelopes = vec![first];
            while envelopes.len() < 1024 && n < limit {
                match self.rx.try_recv() {
                    Ok(e) => {
                        n += e.readings.len();
                        envelopes.push(e);
                    }
                    Err(_) => break,
                }
            }
            let batches: Vec<&[Reading]> =
                envelopes.iter().map(|e| e.readings.as_slice()).collect();
            let mut backoff = Duration::from_millis(100);
            let written = loop {
                match self.buffer.append(&batches, self.record_readings, &stop) {
                    Ok(()) => break true,
                    Err(AppendError::Io(e)) => {
                        tracing::error!(error = %e, readings = n, "could not write to the disk buffer; the sources are held back until it works again (retrying in {backoff:?})");
                        // In slices, so that a reload's handover is seen at once.
                        let until = std::time::Instant::now() + backoff;
                        let mut stopped = false;
                        while !stopped && std::time::Instant::now() < until {
                            let left = until.saturating_duration_since(std::time::Instant::now());
                            stopped = self
                                .shutdown
                                .wait_for(Phase::Aborting, left.min(IDLE_CHECK))
                                || handing_over();
                        }
                        if stopped {
                            break false;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                    Err(AppendError::Stopped) => break false,
                }
            };
            drop(batches);
            if !written {
                if handing_over() {
                    tracing::info!(
                        readings = n,
                        "handing the batches not yet on disk to the instance that replaces this buffer"
                    );
                    for e in envelopes {
                        let _ = self.handed.tx.send(e);
                    }
                }
                // Else dropping the envelopes tells their sources the batches were not taken.
                break;
            }
            for e in envelopes {
                e.ack.done(Ok(()));
            }
        }
        drop(self.done);
    }
}
