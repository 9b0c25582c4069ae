//! Per-instance counters, logged periodically and at shutdown.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
    time::{Duration, Instant},
};

/// A source's counters.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Batches handed to the sinks' queues.
    pub batches: AtomicU64,
    /// Readings handed to the sinks' queues.
    pub readings: AtomicU64,
    /// Times the instance was rebuilt after a failure.
    pub restarts: AtomicU64,
}

/// One sink as the run, the metrics page and the logs see it: its name, its counters and its
/// disk buffer, if it has one.
#[derive(Clone)]
pub struct SinkView {
    pub name: String,
    pub stats: std::sync::Arc<SinkStats>,
    pub buffer: Option<std::sync::Arc<crate::buffer::DiskBuffer>>,
}

impl SinkView {
    /// Readings the sink accepted and has neither stored, refused, dropped by its disk
    /// buffer's `when_full = "drop_oldest"`, nor lost in records of that buffer found damaged
    /// while reading: what is in its queue, its buffer and its writes.
    pub fn pending(&self) -> u64 {
        let gone = self.buffer.as_ref().map_or(0, |b| b.stats.gone());
        let before = self.stats.buffer_gone.load(Ordering::Relaxed);
        self.stats.pending().saturating_sub(gone + before)
    }
}

/// What a run holds now, for the metrics page and the periodic log: a reload replaces it.
#[derive(Clone, Default)]
pub struct Snapshot {
    /// Each source's name and counters.
    pub sources: Vec<(String, std::sync::Arc<SourceStats>)>,
    /// Each sink.
    pub sinks: Vec<SinkView>,
}

/// The run's [`Snapshot`], shared with the threads that show it.
#[derive(Clone, Default)]
pub struct Views(std::sync::Arc<std::sync::RwLock<Snapshot>>);

impl Views {
    /// The instances now.
    pub fn get(&self) -> Snapshot {
        self.0.read().unwrap().clone()
    }
    /// Replaces the instances.
    pub fn set(&self, s: Snapshot) {
        *self.0.write().unwrap() = s;
    }
}

/// A sink's counters.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Readings put on the sink's queue.
    pub accepted: AtomicU64,
    /// Readings the sink durably took.
    pub written: AtomicU64,
    /// Writes that succeeded.
    pub writes: AtomicU64,
    /// Writes that failed with a retryable error and were retried.
    pub retries: AtomicU64,
    /// Readings the sink refused for good (dropped, counted).
    pub rejected: AtomicU64,
    /// Of those, readings its dead-letter directory did not keep: their device's files took
    /// its share of it (`dead_letter_device_share`), or the directory was full.
    pub not_kept: AtomicU64,
    /// Readings accepted onto the queue and then handed back to their source not taken (a
    /// buffered sink's writer that could not keep a refused reading in its dead-letter
    /// directory): no longer pending.
    pub returned: AtomicU64,
    /// Times the instance was rebuilt after a failure.
    pub restarts: AtomicU64,
    /// Batches a source offered without waiting (`try_emit`) while the queue was full.
    pub refused_full: AtomicU64,
    /// Writes made on a source's thread, the sink being idle and quick (counted in `writes`
    /// too; see [`crate::pipeline::direct`]).
    pub direct: AtomicU64,
    /// The plugin call the sink is in ([`SinkStats::in_call`]): when it began, in
    /// milliseconds since [`epoch_ms`]'s epoch plus one, shifted left by [`CALL_BITS`], with
    /// the call's kind and [`STALLED`] in the low bits; 0: in none.
    call: AtomicU64,
    /// When the oldest write the sink was handed (`submit`) and has not said the end of was
    /// handed over, in milliseconds since [`epoch_ms`]'s epoch plus one; 0: none.
    awaited: AtomicU64,
    /// Readings the sink refused for good that wait for room in its dead-letter directory
    /// (full, or not writable); 0: none. The sink takes nothing else meanwhile.
    pub dead_letter_held: AtomicU64,
    /// Readings the sink's earlier disk buffers dropped (`when_full = "drop_oldest"`) or lost
    /// in damaged records, before a reload opened the buffer again with new settings (the
    /// buffer's own counters start again at 0): no longer pending.
    pub buffer_gone: AtomicU64,
}

/// A plugin call of a sink, as [`SinkStats::in_call`] marks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// Building the instance (its constructor: connecting to a database, say).
    Start,
    /// Writing a batch, or handing one over (`submit`).
    Write,
    /// Closing the instance.
    Close,
}

impl Call {
    fn bits(self) -> u64 {
        match self {
            Call::Start => 1,
            Call::Write => 2,
            Call::Close => 3,
        }
    }
    fn of(bits: u64) -> Call {
        match bits & 3 {
            1 => Call::Start,
            3 => Call::Close,
            _ => Call::Write,
        }
    }
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Call::Start => "start",
            Call::Write => "write",
            Call::Close => "close",
        })
    }
}

/// Low bits of [`SinkStats`]' call word: the kind (2 bits) and [`STALLED`].
const CALL_BITS: u32 = 3;
/// Set in the call word once the call was logged as stalled ([`SinkStats::stalled`]).
const STALLED: u64 = 4;

/// Milliseconds since the first time this was asked (a monotonic clock).
fn epoch_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A sink marked as in a plugin call until this is dropped; then, if the call was logged as
/// stalled, its end is logged too.
pub struct InCall<'a> {
    stats: &'a SinkStats,
}

impl Drop for InCall<'_> {
    fn drop(&mut self) {
        let word = self.stats.call.swap(0, Ordering::Relaxed);
        if word & STALLED != 0 {
            let took = Duration::from_millis(epoch_ms().saturating_sub((word >> CALL_BITS) - 1));
            crate::overdue::log_returned(&format!("the sink's {} call", Call::of(word)), took);
        }
    }
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl SourceStats {
    /// Logs one line.
    pub fn log(&self, name: &str) {
        tracing::info!(
            source = name,
            readings = get(&self.readings),
            batches = get(&self.batches),
            restarts = get(&self.restarts),
            "source stats"
        );
    }
}

impl SinkStats {
    /// Counts a write of `n` readings that succeeded.
    pub fn wrote(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks the sink as in `call` (a call into its plugin) until the guard is dropped, so that
    /// one that does not return shows ([`SinkStats::call`], [`crate::run`]'s stall check).
    pub fn in_call(&self, call: Call) -> InCall<'_> {
        let word = ((epoch_ms() + 1) << CALL_BITS) | call.bits();
        self.call.store(word, Ordering::Relaxed);
        InCall { stats: self }
    }

    /// The plugin call the sink is in, and how long it has lasted; `None`: in none.
    pub fn call(&self) -> Option<(Call, Duration)> {
        Self::lasted(self.call.load(Ordering::Relaxed))
    }

    /// The call the sink is in if it has lasted `after` or longer, marked so that its end is
    /// logged: which call, how long, and when it began (milliseconds of the process's
    /// monotonic clock, which tells one call from the next); `None` if it is in none, or in a
    /// shorter one.
    pub fn stalled(&self, after: Duration) -> Option<(Call, Duration, u64)> {
        let word = self.call.load(Ordering::Relaxed);
        let (call, lasted) = Self::lasted(word).filter(|(_, l)| *l >= after)?;
        // Marks this call only: if it ended meanwhile, the word changed and nothing is marked.
        self.call
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                (now & !STALLED == word & !STALLED).then_some(now | STALLED)
            })
            .ok()
            .map(|_| (call, lasted, word >> CALL_BITS))
    }

    fn lasted(word: u64) -> Option<(Call, Duration)> {
        (word != 0).then(|| {
            let since = (word >> CALL_BITS) - 1;
            (
                Call::of(word),
                Duration::from_millis(epoch_ms().saturating_sub(since)),
            )
        })
    }

    /// Notes when the oldest write handed over (`submit`) and not answered yet was handed
    /// over; `None`: every one is answered.
    pub fn awaiting(&self, since: Option<Instant>) {
        let word = since.map_or(0, |t| {
            epoch_ms().saturating_sub(t.elapsed().as_millis() as u64) + 1
        });
        self.awaited.store(word, Ordering::Relaxed);
    }

    /// How long the oldest write handed over and not answered has waited, and when it was
    /// handed over (which tells one from the next); `None`: every one is answered.
    pub fn awaited(&self) -> Option<(Duration, u64)> {
        let word = self.awaited.load(Ordering::Relaxed);
        (word != 0).then(|| {
            (
                Duration::from_millis(epoch_ms().saturating_sub(word - 1)),
                word,
            )
        })
    }

    /// Readings accepted but neither written nor rejected yet, those a disk buffer dropped
    /// included ([`SinkView::pending`] leaves them out).
    pub fn pending(&self) -> u64 {
        get(&self.accepted)
            .saturating_sub(get(&self.written) + get(&self.rejected) + get(&self.returned))
    }

    /// Logs one line; `pending` as [`SinkView::pending`] counts them.
    pub fn log(&self, name: &str, pending: u64) {
        tracing::info!(
            sink = name,
            written = get(&self.written),
            writes = get(&self.writes),
            direct_writes = get(&self.direct),
            pending,
            retries = get(&self.retries),
            rejected = get(&self.rejected),
            rejected_not_kept = get(&self.not_kept),
            restarts = get(&self.restarts),
            refused_full = get(&self.refused_full),
            "sink stats"
        );
    }
}

/// Logs one line about a sink's disk buffer.
pub fn log_buffer(name: &str, b: &crate::buffer::DiskBuffer) {
    tracing::info!(
        sink = name,
        held = b.pending(),
        bytes = b.bytes(),
        appended = get(&b.stats.appended),
        recovered = get(&b.stats.recovered),
        dropped = get(&b.stats.dropped),
        corrupt_records = get(&b.stats.corrupt_records),
        lost = get(&b.stats.lost),
        "disk buffer stats"
    );
}
