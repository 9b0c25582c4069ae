//! The thread that moves a buffered sink's queue onto disk: it takes what is queued (many
//! batches per disk write, so a Pi's SD card sees few writes), appends it durably, and only
//! then acknowledges the batches to their sources.

use super::{
    sink::{poll_envelope, Next, IDLE_CHECK},
    Phase, Shutdown,
};
use crate::{
    buffer::{codec, segment, AppendError, DiskBuffer},
    deadletter::DeadLetters,
    stats::SinkStats,
};
use crossbeam_channel::{Receiver, Sender};

use gateway_sdk::{PluginError, Reading};
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
    /// The sink's dead-letter directory: a reading too large for a record goes there.
    pub dead_letters: Arc<DeadLetters>,
    /// The sink's counters: such a reading is counted as rejected.
    pub stats: Arc<SinkStats>,
}

/// Whether `r` fits a disk buffer record.
fn fits_a_record(r: &Reading) -> bool {
    codec::bound(r) <= segment::MAX_RECORD as usize
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
        // Once the run drains, no source emits any more: what is queued here (bounded: the
        // queue and one append's worth) is written past a full buffer's max_size rather than
        // lost when the sink behind it cannot free room before the deadline. Not for a
        // reload's handover, whose successor takes the queue.
        let past_max = || self.shutdown.reached(Phase::Draining) && !stop();
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
            // A reading larger than a record may be is refused for good, into the sink's
            // dead-letter directory: written, it would be read back as corruption and skipped,
            // after its source was told it was stored. The others of its batch go on.
            let mut refused: Vec<Option<PluginError>> = Vec::with_capacity(envelopes.len());
            let envelopes: Vec<super::Envelope> = envelopes
                .into_iter()
                .filter_map(|e| {
                    if e.readings.iter().all(fits_a_record) {
                        refused.push(None);
                        return Some(e);
                    }
                    let (e, why) = self.refuse_too_large(e)?;
                    refused.push(Some(why));
                    Some(e)
                })
                .collect();
            if envelopes.is_empty() {
                continue;
            }
            let n = envelopes.iter().map(|e| e.readings.len()).sum::<usize>();
            let batches: Vec<&[Reading]> =
                envelopes.iter().map(|e| e.readings.as_slice()).collect();
            let mut backoff = Duration::from_millis(100);
            let written = loop {
                match self
                    .buffer
                    .append(&batches, self.record_readings, &stop, &past_max)
                {
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
            for (e, refused) in envelopes.into_iter().zip(refused) {
                e.ack.done(refused.map_or(Ok(()), Err));
            }
        }
        drop(self.done);
    }

    /// Keeps the readings of `e` too large for a record in the dead-letter directory: the
    /// envelope with the others (to append, then acknowledge with the refusal returned), or
    /// `None` when none is left (acknowledged here). When the dead-letter file cannot be
    /// written, the batch is not taken (its source sends it again).
    fn refuse_too_large(&self, e: super::Envelope) -> Option<(super::Envelope, PluginError)> {
        let (fit, huge): (Vec<Reading>, Vec<Reading>) =
            e.readings.iter().cloned().partition(fits_a_record);
        let largest = huge.iter().map(codec::bound).max().unwrap_or(0);
        let why = PluginError::rejected(format!(
            "a reading of {largest} bytes is larger than the disk buffer's records may be ({} MiB)",
            segment::MAX_RECORD >> 20
        ));
        let kept = self.dead_letters.put_new(why.message(), &huge);
        self.stats
            .not_kept
            .fetch_add(kept.not_kept() as u64, Ordering::Relaxed);
        for (path, n) in &kept.files {
            tracing::error!(
                readings = n,
                bytes = largest,
                kept_in = %path.display(),
                "a reading is larger than a disk buffer record may be ({} MiB): it is refused and kept in a dead-letter file; the others of its batch are buffered",
                segment::MAX_RECORD >> 20
            );
        }
        if kept.again > 0 {
            tracing::info!(
                readings = kept.again,
                bytes = largest,
                "a reading larger than a disk buffer record may be came again; a dead-letter file keeps it already (or it was counted as not kept)"
            );
        }
        for (device, n, why) in &kept.not_kept {
            tracing::warn!(
                %device,
                readings = n,
                "a reading is larger than a disk buffer record may be: it is refused, and not kept in a dead-letter file: {why}"
            );
        }
        if let Some(io) = kept.error {
            // Not taken: nothing of it is pending here.
            self.stats
                .returned
                .fetch_add(e.readings.len() as u64, Ordering::Relaxed);
            tracing::error!(
                readings = kept.held.len(),
                bytes = largest,
                io_error = %io,
                dir = %self.dead_letters.dir().display(),
                "a reading is larger than a disk buffer record may be, and its dead-letter file cannot be written: its batch is not taken"
            );
            e.ack.done(Err(PluginError::retry(format!(
                "{}, and its dead-letter file cannot be written: {io}",
                why.message()
            ))));
            return None;
        }
        self.stats
            .rejected
            .fetch_add(huge.len() as u64, Ordering::Relaxed);
        if fit.is_empty() {
            e.ack.done(Err(why));
            return None;
        }
        let rest = super::Envelope {
            readings: Arc::new(fit.into()),
            ack: e.ack,
        };
        Some((rest, why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        buffer::DiskBuffer,
        config::{BufferSettings, WhenFull},
        pipeline::{AckHandle, AckTracker, Envelope},
    };
    use abi_stable::{
        sabi_trait::TD_Opaque,
        std_types::{RResult, RVec},
    };
    use gateway_sdk::{
        abi::{AckFfi, AckFfi_TO},
        testing::sample_readings,
        ErrorKind, Value,
    };
    use std::sync::Mutex;

    type Seen = Arc<Mutex<Option<Result<(), PluginError>>>>;

    struct Outcome(Seen);

    impl AckFfi for Outcome {
        fn done(&mut self, outcome: RResult<(), PluginError>) {
            *self.0.lock().unwrap() = Some(outcome.into_result());
        }
    }

    fn envelope(readings: Vec<Reading>) -> (Envelope, Seen) {
        let seen = Seen::default();
        let ack = AckFfi_TO::from_value(Outcome(seen.clone()), TD_Opaque);
        let e = Envelope {
            readings: Arc::new(RVec::from(readings)),
            ack: AckHandle::new(AckTracker::new(1, Some(ack))),
        };
        (e, seen)
    }

    /// A writer, and what a test holds of it: its queue, its buffer, what disconnects when it
    /// stops, its run's phase.
    struct Rig {
        writer: BufferWriter,
        tx: crossbeam_channel::Sender<Envelope>,
        buffer: Arc<DiskBuffer>,
        writer_done: crossbeam_channel::Receiver<()>,
        shutdown: Shutdown,
    }

    /// A writer onto a buffer in `dir/buffer`, its dead letters in `dir/dead-letter`.
    fn rig(dir: &std::path::Path) -> Rig {
        let settings = BufferSettings {
            max_size: 1 << 30,
            when_full: WhenFull::Block,
            fsync: false,
        };
        let buffer = Arc::new(DiskBuffer::open(&dir.join("buffer"), &settings).unwrap());
        let (tx, rx) = crossbeam_channel::unbounded();
        let (done, writer_done) = crossbeam_channel::bounded::<()>(0);
        let shutdown = Shutdown::new();
        let writer = BufferWriter {
            rx,
            handed: super::super::sink::Handover::default(),
            buffer: buffer.clone(),
            record_readings: 100,
            shutdown: shutdown.clone(),
            done,
            handover: Arc::default(),
            // The gateway's own readings: a huge one, larger than any device's share, is kept.
            dead_letters: Arc::new(
                DeadLetters::new(dir.join("dead-letter"), "sink", "test")
                    .with_own_device("test-device"),
            ),
            stats: Arc::default(),
        };
        Rig {
            writer,
            tx,
            buffer,
            writer_done,
            shutdown,
        }
    }

    #[test]
    fn a_reading_larger_than_a_record_is_refused_and_the_others_are_written() {
        // Written, it made a record the reader takes for corruption (and skips), after its
        // source had been told it was stored.
        let dir = tempfile::tempdir().unwrap();
        let Rig {
            writer,
            tx,
            buffer,
            writer_done,
            shutdown,
        } = rig(dir.path());
        let stats = writer.stats.clone();
        let letters = DeadLetters::new(dir.path().join("dead-letter"), "sink", "test");
        let mut huge = sample_readings(2);
        huge[1].value = Value::Text("x".repeat(segment::MAX_RECORD as usize).as_str().into());
        // The huge one alone comes again (its source sent it again): kept once.
        let (again, again_seen) = envelope(vec![huge[1].clone()]);
        let (big, big_seen) = envelope(huge);
        let (small, small_seen) = envelope(sample_readings(3));
        tx.send(big).unwrap();
        tx.send(small).unwrap();
        tx.send(again).unwrap();
        let thread = std::thread::spawn(move || writer.run("test"));
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while small_seen.lock().unwrap().is_none()
            || big_seen.lock().unwrap().is_none()
            || again_seen.lock().unwrap().is_none()
        {
            assert!(std::time::Instant::now() < end, "every batch acknowledged");
            std::thread::sleep(Duration::from_millis(5));
        }
        shutdown.advance(Phase::Draining);
        assert!(matches!(
            writer_done.recv_timeout(Duration::from_secs(10)),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        ));
        thread.join().unwrap();
        let refused = big_seen.lock().unwrap().take().unwrap().unwrap_err();
        assert_eq!(refused.kind, ErrorKind::REJECTED);
        assert!(
            refused
                .message()
                .contains("larger than the disk buffer's records"),
            "{refused}"
        );
        assert!(small_seen.lock().unwrap().take().unwrap().is_ok());
        // Found in an audit: the reading beside the huge one was refused with it, and the
        // two were in no dead-letter file.
        assert_eq!(
            buffer.pending(),
            4,
            "the small batch and the other of the big one"
        );
        let files = letters.files().unwrap();
        assert_eq!(files.len(), 1, "the huge reading is kept, once");
        assert_eq!(
            stats.rejected.load(Ordering::Relaxed),
            2,
            "settled each time"
        );
        let again = again_seen.lock().unwrap().take().unwrap().unwrap_err();
        assert_eq!(again.kind, ErrorKind::REJECTED);
    }

    /// Review of 3febf6c: a batch the writer could not take (its refused reading could not be
    /// kept) stayed counted as accepted, so the sink's pending count never came back to 0.
    #[test]
    fn a_batch_not_taken_because_its_dead_letter_cannot_be_kept_is_not_pending() {
        let dir = tempfile::tempdir().unwrap();
        // The dead-letter directory cannot be made: a file is in its place.
        std::fs::write(dir.path().join("dead-letter"), "").unwrap();
        let Rig {
            writer,
            tx,
            buffer,
            writer_done: _writer_done,
            shutdown,
        } = rig(dir.path());
        let stats = writer.stats.clone();
        let mut huge = sample_readings(2);
        huge[0].value = Value::Text("x".repeat(segment::MAX_RECORD as usize).as_str().into());
        let (big, seen) = envelope(huge);
        // As a source counts a batch it queued.
        stats.accepted.fetch_add(2, Ordering::Relaxed);
        tx.send(big).unwrap();
        let thread = std::thread::spawn(move || writer.run("test"));
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while seen.lock().unwrap().is_none() {
            assert!(std::time::Instant::now() < end, "the batch acknowledged");
            std::thread::sleep(Duration::from_millis(5));
        }
        shutdown.advance(Phase::Aborting);
        thread.join().unwrap();
        let e = seen.lock().unwrap().take().unwrap().unwrap_err();
        assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
        assert_eq!(buffer.pending(), 0, "nothing of it is buffered");
        assert_eq!(stats.pending(), 0);
        assert_eq!(
            stats.accepted.load(Ordering::Relaxed),
            2,
            "a counter only grows"
        );
    }
}
