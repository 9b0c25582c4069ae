//! Per-instance counters, logged periodically and at shutdown.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Times the instance was rebuilt after a failure.
    pub restarts: AtomicU64,
    /// Batches a source offered without waiting (`try_emit`) while the queue was full.
    pub refused_full: AtomicU64,
    /// Writes made on a source's thread, the sink being idle and quick (counted in `writes`
    /// too; see [`crate::pipeline::direct`]).
    pub direct: AtomicU64,
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

    /// Readings accepted but neither written nor rejected yet.
    pub fn pending(&self) -> u64 {
        get(&self.accepted).saturating_sub(get(&self.written) + get(&self.rejected))
    }

    /// Logs one line.
    pub fn log(&self, name: &str) {
        tracing::info!(
            sink = name,
            written = get(&self.written),
            writes = get(&self.writes),
            direct_writes = get(&self.direct),
            pending = self.pending(),
            retries = get(&self.retries),
            rejected = get(&self.rejected),
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
        "disk buffer stats"
    );
}
