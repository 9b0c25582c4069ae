//! A sink instance on its own thread: gathers queued source batches into writes (by size and by
//! time), retries retryable failures with exponential backoff, rebuilds a failed instance, and
//! acknowledges each source batch once it was written.

use super::{sleep_unless, sleep_while, Envelope};
use crate::{
    buffer::{AppendError, DiskBuffer, Taken},
    config::SinkSettings,
    deadletter::DeadLetters,
    stats::SinkStats,
};
use abi_stable::std_types::RSlice;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use gateway_sdk::{abi::SinkBox, ErrorKind, PluginError, Reading};
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Builds a new instance of the sink's plugin.
pub type SinkFactory = Box<dyn Fn() -> Result<SinkBox, PluginError> + Send>;

/// Everything a sink thread needs.
pub struct SinkRunner {
    /// Instance name.
    pub name: String,
    /// The first instance, built before anything started.
    pub instance: SinkBox,
    /// Builds replacements.
    pub factory: SinkFactory,
    /// Batching, queue and retry settings.
    pub settings: SinkSettings,
    /// First restart delay.
    pub restart_backoff: Duration,
    /// Longest restart delay.
    pub restart_backoff_max: Duration,
    /// Where the sink's batches come from.
    pub input: SinkInput,
    /// Set when the sink should finish what is queued and stop.
    pub drain: Arc<AtomicBool>,
    /// Set when the shutdown deadline passed: give up at once.
    pub abort: Arc<AtomicBool>,
    /// Counters.
    pub stats: Arc<SinkStats>,
    /// Where batches the sink refuses for good are kept.
    pub dead_letters: DeadLetters,
}

/// Where a sink thread takes its batches from.
pub enum SinkInput {
    /// Straight from its queue.
    Queue(Receiver<Envelope>),
    /// From its disk buffer (a [`BufferWriter`] fills it from the queue).
    Buffer(BufferedInput),
}

/// A sink's disk buffer, as the sink thread sees it.
pub struct BufferedInput {
    /// The buffer.
    pub buffer: Arc<DiskBuffer>,
    /// Set once the writer thread has put everything queued on disk and stopped.
    pub writer_done: Arc<AtomicBool>,
    /// How long, once draining, the sink goes on sending what is buffered; the rest stays on
    /// disk for the next start.
    pub drain_budget: Duration,
}

struct Worker {
    name: String,
    instance: Option<SinkBox>,
    factory: SinkFactory,
    settings: SinkSettings,
    restart_backoff: Duration,
    restart_backoff_max: Duration,
    restart_delay: Duration,
    abort: Arc<AtomicBool>,
    stats: Arc<SinkStats>,
    /// Set (for a buffered sink, at shutdown) when a failed write should not be retried: its
    /// readings stay on disk for the next start.
    give_up: Option<Arc<AtomicBool>>,
    dead_letters: DeadLetters,
}

impl SinkRunner {
    /// Runs until drained (or aborted), then closes the instance.
    pub fn run(self) {
        let span = tracing::info_span!("sink", instance = %self.name);
        let _enter = span.enter();
        let SinkRunner {
            name,
            instance,
            factory,
            settings,
            restart_backoff,
            restart_backoff_max,
            input,
            drain,
            abort,
            stats,
            dead_letters,
        } = self;
        let mut w = Worker {
            name,
            instance: Some(instance),
            factory,
            settings,
            restart_backoff,
            restart_backoff_max,
            restart_delay: restart_backoff,
            abort,
            stats,
            give_up: None,
            dead_letters,
        };
        tracing::info!("sink running");
        let rx = match input {
            SinkInput::Queue(rx) => rx,
            SinkInput::Buffer(input) => {
                w.give_up = Some(drain.clone());
                w.run_buffered(&input);
                w.close();
                return;
            }
        };
        let mut carry: Option<Envelope> = None;
        let mut scratch: Vec<Reading> = Vec::new();
        loop {
            if w.abort.load(Ordering::SeqCst) {
                break;
            }
            let first = match carry.take() {
                Some(e) => e,
                None => match next(&rx, &drain, &w.abort) {
                    Some(e) => e,
                    None => break,
                },
            };
            let mut envelopes = vec![first];
            let mut n = envelopes[0].readings.len();
            let deadline = Instant::now() + w.settings.batch_timeout;
            while n < w.settings.batch_size {
                let got = if drain.load(Ordering::SeqCst) {
                    rx.try_recv().ok()
                } else {
                    rx.recv_deadline(deadline).ok()
                };
                let Some(e) = got else { break };
                if n + e.readings.len() > w.settings.batch_size {
                    carry = Some(e);
                    break;
                }
                n += e.readings.len();
                envelopes.push(e);
            }
            if envelopes.len() == 1 {
                let outcome = w.write_settled(&envelopes[0].readings);
                envelopes.pop().expect("one").ack.done(outcome);
                continue;
            }
            scratch.clear();
            scratch.reserve(n);
            let mut spans = Vec::with_capacity(envelopes.len());
            for e in &mut envelopes {
                let start = scratch.len();
                let shared = std::mem::replace(&mut e.readings, Arc::new(Default::default()));
                match Arc::try_unwrap(shared) {
                    Ok(owned) => scratch.extend(owned),
                    Err(shared) => scratch.extend(shared.iter().cloned()),
                }
                spans.push(start..scratch.len());
            }
            let mut envelopes = envelopes.into_iter();
            if let Some(outcome) = w.write_parts(&scratch, &spans, |outcome| {
                envelopes.next().expect("one per part").ack.done(outcome);
                true
            }) {
                for e in envelopes {
                    e.ack.done(outcome.clone());
                }
            }
        }
        let left = rx.len() + usize::from(carry.is_some());
        if left > 0 {
            tracing::error!(
                batches = left,
                readings = w.stats.pending(),
                "sink stopped with batches it did not write"
            );
        }
        drop(carry);
        drop(rx);
        w.close();
    }
}

/// The thread that moves a buffered sink's queue onto disk: it takes what is queued (many
/// batches per disk write, so a Pi's SD card sees few writes), appends it durably, and only then
/// acknowledges the batches to their sources.
pub struct BufferWriter {
    /// The sink's queue.
    pub rx: Receiver<Envelope>,
    /// The buffer.
    pub buffer: Arc<DiskBuffer>,
    /// Most readings per record (the sink's batch size).
    pub record_readings: usize,
    /// Set when the queue should be emptied onto disk and the thread should stop.
    pub drain: Arc<AtomicBool>,
    /// Set when the shutdown deadline passed.
    pub abort: Arc<AtomicBool>,
    /// Set when the thread stopped.
    pub done: Arc<AtomicBool>,
}

impl BufferWriter {
    /// Runs until the queue is drained (or on abort).
    pub fn run(self, name: &str) {
        let span = tracing::info_span!("buffer", instance = %name);
        let _enter = span.enter();
        let limit = self.record_readings.saturating_mul(16).max(1);
        'outer: while let Some(first) = next(&self.rx, &self.drain, &self.abort) {
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
            loop {
                match self.buffer.append(&batches, self.record_readings, &|| {
                    self.abort.load(Ordering::SeqCst)
                }) {
                    Ok(()) => break,
                    Err(AppendError::Io(e)) => {
                        tracing::error!(error = %e, readings = n, "could not write to the disk buffer; the sources are held back until it works again (retrying in {backoff:?})");
                        if sleep_unless(&self.abort, backoff) {
                            break 'outer;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                    // Dropping the envelopes tells their sources the batches were not taken.
                    Err(AppendError::Stopped) => break 'outer,
                }
            }
            drop(batches);
            for e in envelopes {
                e.ack.done(Ok(()));
            }
        }
        self.done.store(true, Ordering::SeqCst);
    }
}

/// The next queued batch; `None` once draining finds the queue empty, or on abort.
fn next(rx: &Receiver<Envelope>, drain: &AtomicBool, abort: &AtomicBool) -> Option<Envelope> {
    loop {
        if abort.load(Ordering::SeqCst) {
            return None;
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(e) => return Some(e),
            Err(RecvTimeoutError::Timeout) if drain.load(Ordering::SeqCst) => {
                return rx.try_recv().ok()
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

impl Worker {
    fn close(&mut self) {
        if let Some(mut inst) = self.instance.take() {
            if let Err(e) = inst.close().into_result() {
                tracing::warn!(error = %e, "closing the sink failed");
            }
        }
        tracing::info!("sink stopped");
    }

    /// Sends what the disk buffer holds, oldest first, acknowledging each write to the buffer.
    fn run_buffered(&mut self, input: &BufferedInput) {
        let buf = &input.buffer;
        let mut reader = buf.reader();
        let mut stop_at: Option<Instant> = None;
        loop {
            if self.abort.load(Ordering::SeqCst) {
                break;
            }
            let draining = self.giving_up();
            if draining
                && Instant::now()
                    >= *stop_at.get_or_insert_with(|| Instant::now() + input.drain_budget)
            {
                break;
            }
            let more = if draining {
                Duration::ZERO
            } else {
                self.settings.batch_timeout
            };
            let Some(taken) = buf.take(
                &mut reader,
                self.settings.batch_size,
                Duration::from_millis(50),
                more,
            ) else {
                if draining && input.writer_done.load(Ordering::SeqCst) {
                    break;
                }
                continue;
            };
            if self.write_taken(&taken) {
                buf.ack(&mut reader, taken);
            } else {
                break;
            }
        }
        let left = buf.pending();
        if left > 0 {
            tracing::info!(
                readings = left,
                bytes = buf.bytes(),
                "readings stay in the disk buffer; they are sent after the next start"
            );
        }
    }

    /// Writes what was taken from the buffer; `false` if the shutdown deadline stopped it (the
    /// records stay in the buffer).
    fn write_taken(&mut self, taken: &Taken) -> bool {
        let stopped =
            |o: &Result<(), PluginError>| matches!(o, Err(e) if e.kind == ErrorKind::STOPPED);
        let mut going = true;
        if let Some(outcome) = self.write_parts(&taken.readings, &taken.records, |o| {
            going = !stopped(&o);
            going
        }) {
            going = !stopped(&outcome);
        }
        going
    }

    /// Writes `all`, made of `parts`. When the sink refuses it for good as a whole, each part is
    /// written on its own, so that one source's bad batch does not take the others with it:
    /// `each` gets each part's outcome in turn and says whether to go on, and `None` is
    /// returned. Otherwise the outcome of the whole. What is refused for good is dead-lettered.
    fn write_parts(
        &mut self,
        all: &[Reading],
        parts: &[std::ops::Range<usize>],
        mut each: impl FnMut(Result<(), PluginError>) -> bool,
    ) -> Option<Result<(), PluginError>> {
        match self.write(all) {
            Err(e) if e.kind == ErrorKind::REJECTED && parts.len() > 1 => {
                tracing::info!(
                    parts = parts.len(),
                    error = %e.message(),
                    "the sink refused a merged batch; writing its parts one by one"
                );
                for part in parts {
                    if !each(self.write_settled(&all[part.clone()])) {
                        break;
                    }
                }
                None
            }
            Err(e) if e.kind == ErrorKind::REJECTED => Some(self.dead_letter(all, e)),
            outcome => Some(outcome),
        }
    }

    /// [`Worker::write`], with a refusal dead-lettered.
    fn write_settled(&mut self, batch: &[Reading]) -> Result<(), PluginError> {
        match self.write(batch) {
            Err(e) if e.kind == ErrorKind::REJECTED => self.dead_letter(batch, e),
            outcome => outcome,
        }
    }

    /// Keeps a batch the sink refused for good (`e`) in its dead-letter directory, and returns
    /// `e`. Until the file is on disk the batch is held (it is not lost because a disk is
    /// full): the write is retried with backoff, until shutdown.
    fn dead_letter(&mut self, batch: &[Reading], e: PluginError) -> Result<(), PluginError> {
        let n = batch.len() as u64;
        let mut backoff = self.settings.retry_backoff;
        loop {
            match self.dead_letters.put(e.message(), batch) {
                Ok(path) => {
                    self.stats.rejected.fetch_add(n, Ordering::Relaxed);
                    tracing::error!(
                        readings = n,
                        error = %e.message(),
                        kept_in = %path.display(),
                        "sink refused the batch for good; its readings are kept in a dead-letter file (`gateway dead-letters` lists and resends them)"
                    );
                    return Err(e);
                }
                Err(io) => {
                    if self.abort.load(Ordering::SeqCst) || self.giving_up() {
                        return Err(PluginError::new(
                            ErrorKind::STOPPED,
                            "shutting down before the refused batch could be dead-lettered",
                        ));
                    }
                    tracing::error!(
                        readings = n,
                        error = %e.message(),
                        dir = %self.dead_letters.dir().display(),
                        io_error = %io,
                        "sink refused the batch for good, and its dead-letter file cannot be written; holding the batch, retrying in {backoff:?}"
                    );
                    self.pause(backoff);
                    backoff = (backoff * 2).min(self.settings.retry_backoff_max);
                }
            }
        }
    }

    /// Set for a buffered sink once it is shutting down: failed writes are not retried, their
    /// readings stay on disk.
    fn giving_up(&self) -> bool {
        self.give_up
            .as_ref()
            .is_some_and(|g| g.load(Ordering::SeqCst))
    }

    /// Writes one batch, retrying and rebuilding as its errors say, until it is written, refused
    /// for good (returned as is: the caller dead-letters it), or the shutdown deadline passes.
    fn write(&mut self, batch: &[Reading]) -> Result<(), PluginError> {
        let n = batch.len() as u64;
        let mut backoff = self.settings.retry_backoff;
        let mut attempts = 0u32;
        loop {
            if self.abort.load(Ordering::SeqCst) {
                return Err(PluginError::new(
                    ErrorKind::STOPPED,
                    "the shutdown deadline passed before the write succeeded",
                ));
            }
            let Some(inst) = self.instance.as_mut() else {
                self.rebuild();
                continue;
            };
            match inst.write(RSlice::from_slice(batch)).into_result() {
                Ok(()) => {
                    self.stats.written.fetch_add(n, Ordering::Relaxed);
                    self.stats.writes.fetch_add(1, Ordering::Relaxed);
                    self.restart_delay = self.restart_backoff;
                    if attempts > 0 {
                        tracing::info!(
                            readings = n,
                            attempts = attempts + 1,
                            "write succeeded after retrying"
                        );
                    }
                    return Ok(());
                }
                Err(e) if e.kind.is_retryable() && self.giving_up() => {
                    tracing::info!(readings = n, error = %e.message(), "write failed while shutting down; its readings stay in the disk buffer");
                    return Err(PluginError::new(ErrorKind::STOPPED, "shutting down"));
                }
                Err(e) if e.kind.is_retryable() => {
                    attempts += 1;
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(readings = n, attempt = attempts, error = %e.message(), "write failed; retrying in {backoff:?}");
                    self.pause(backoff);
                    backoff = (backoff * 2).min(self.settings.retry_backoff_max);
                }
                Err(e) if e.kind.needs_restart() => {
                    self.stats.restarts.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(kind = %e.kind, error = %e.message(), "sink failed; rebuilding it in {:?}", self.restart_delay);
                    // Dropping the broken instance runs the plugin's destructor (guarded by the SDK).
                    self.instance = None;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits `d` before a retry; a shutdown (abort, or drain for a buffered sink) ends it early.
    fn pause(&self, d: Duration) {
        sleep_while(d, || {
            !self.abort.load(Ordering::SeqCst) && !self.giving_up()
        });
    }

    fn rebuild(&mut self) {
        if sleep_unless(&self.abort, self.restart_delay) {
            return;
        }
        self.restart_delay = (self.restart_delay * 2).min(self.restart_backoff_max);
        match (self.factory)() {
            Ok(inst) => {
                tracing::info!(sink = %self.name, "sink rebuilt");
                self.instance = Some(inst);
            }
            Err(e) => {
                tracing::error!(error = %e, "rebuilding the sink failed; next try in {:?}", self.restart_delay)
            }
        }
    }
}
