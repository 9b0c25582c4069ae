//! The disk buffer: an append-only log of records in segment files, plus the position of the
//! first record its sink has not acknowledged. Blocking file I/O, called from two threads: the
//! buffer's writer thread appends, the sink's thread takes and acknowledges.
//!
//! On disk, in the buffer's directory:
//! - `NNNNNNNNNNNNNNNNNNNN.seg`: segments named after the sequence number of their first record,
//!   in the layout of [`super::segment`]. A record holds up to one sink batch of readings
//!   ([`super::codec`]).
//! - `head`: where the first record not yet acknowledged is, in the layout of [`super::ledger`].
//!
//! A record is durable once `append` returns (the segment is fdatasync'ed, and the directory too
//! when a segment is created), unless the buffer was opened with `fsync = "never"`. At open, every
//! segment not wholly delivered is scanned (one whose successor begins at or below the head is
//! removed unread): a torn tail (a crash mid-write, a power cut) is cut off and counted; a
//! damaged record in the middle costs that record alone (counted, logged, skipped); records
//! missing between two segments are counted. Files that are not the buffer's own are left alone
//! and never stop a start.
//!
//! The parts, each owning one concern: [`super::segment`] the segment file layout,
//! [`super::ledger`] the head, `recovery` opening and checking what a run left,
//! `writer` appending and the `when_full` policy, [`super::reader`] taking and
//! acknowledging. This file holds the shared state and the locking: `state` (segments, head)
//! is locked briefly by both threads; `writer` is held by the appending thread only.

use super::{
    ledger::Ledger,
    segment::{self, Hole},
};
use crate::config::WhenFull;
use std::{
    collections::VecDeque,
    fs::File,
    io,
    path::{Path, PathBuf},
    sync::{atomic::AtomicU64, Condvar, Mutex},
    time::{Duration, Instant},
};

/// Counters of a disk buffer.
#[derive(Debug, Default)]
pub struct BufferStats {
    /// Readings dropped by `when_full = "drop_oldest"`.
    pub dropped: AtomicU64,
    /// Records found torn or corrupt (at open or while reading) and skipped.
    pub corrupt_records: AtomicU64,
    /// Readings of records skipped while reading (damage found then, a segment file removed
    /// by someone else): counted once the head passes them, as settled, never delivered.
    pub lost: AtomicU64,
    /// Bytes cut off or skipped with them.
    pub corrupt_bytes: AtomicU64,
    /// Readings found in the buffer at open, not yet acknowledged.
    pub recovered: AtomicU64,
    /// Readings appended since open.
    pub appended: AtomicU64,
}

impl BufferStats {
    /// Readings that will never be delivered from the buffer: dropped or lost.
    pub fn gone(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
            + self.lost.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[derive(Debug, Clone)]
pub(super) struct Segment {
    pub(super) first: u64,
    pub(super) records: u64,
    pub(super) bytes: u64,
    pub(super) readings: u64,
    pub(super) acked_readings: u64,
    /// Damaged records found at open or while reading, skipped when reading.
    pub(super) holes: Vec<Hole>,
    /// Its file was found removed by someone else (its records counted lost then).
    pub(super) gone: bool,
}

impl Segment {
    pub(super) fn end(&self) -> u64 {
        self.first + self.records
    }
}

pub(super) struct State {
    pub(super) segments: VecDeque<Segment>,
    /// Sequence number of the next record appended.
    pub(super) next_seq: u64,
    /// Every record below this is acknowledged, dropped, or skipped by the reader (damaged,
    /// or its file gone).
    pub(super) head: u64,
    /// Records the reader skipped (damaged, in no segment, or their file gone), not yet passed
    /// by the head.
    pub(super) skipped: Vec<std::ops::Range<u64>>,
    /// Records the reader has taken and not yet settled, each with its readings: a segment
    /// `drop_oldest` drops under them does not count them dropped, as their write may still
    /// store them (counted when it does not: [`DiskBuffer::untake`]).
    pub(super) in_flight: std::collections::BTreeMap<u64, u64>,
    /// Where `head` is recorded.
    pub(super) ledger: Ledger,
    /// When the records were appended, coarsely.
    pub(super) marks: Marks,
}

/// When records were appended, on the monotonic clock (a step of the wall clock, as NTP makes
/// on a Pi after boot, changes nothing): one mark per second of appends at most, each saying
/// that the records from its `seq` on were appended no earlier than it. The age of the mark
/// covering the head is then an upper bound of the oldest unacknowledged reading's wait,
/// within about a second. Past [`Marks::MAX`] every other mark goes (the bound stays one,
/// coarser), so a week-long outage keeps 160 KiB of them at most.
#[derive(Debug, Default)]
pub(super) struct Marks(VecDeque<Mark>);

#[derive(Debug, Clone, Copy)]
struct Mark {
    seq: u64,
    /// When it was made, less `before`: for a segment found at open, its file's age then.
    at: Instant,
    before: Duration,
}

impl Marks {
    const MAX: usize = 4096;
    const EVERY: Duration = Duration::from_secs(1);

    /// Records appended from `seq` on, now; marks below `head` are forgotten.
    pub(super) fn appended(&mut self, seq: u64, head: u64) {
        self.appended_at(seq, head, Instant::now());
    }

    fn appended_at(&mut self, seq: u64, head: u64, now: Instant) {
        self.forget_below(head);
        if self
            .0
            .back()
            .is_some_and(|m| m.before.is_zero() && now.duration_since(m.at) < Self::EVERY)
        {
            return;
        }
        if self.0.len() >= Self::MAX {
            let mut i = 0;
            self.0.retain(|_| {
                i += 1;
                i % 2 == 1
            });
        }
        self.0.push_back(Mark {
            seq,
            at: now,
            before: Duration::ZERO,
        });
    }

    /// Records from `seq` on found at open in a file made at `made` (by the wall clock).
    pub(super) fn found(&mut self, seq: u64, made: std::time::SystemTime) {
        self.0.push_back(Mark {
            seq,
            at: Instant::now(),
            before: made.elapsed().unwrap_or_default(),
        });
    }

    /// Forgets the marks that no record at or above `head` needs.
    pub(super) fn forget_below(&mut self, head: u64) {
        while self.0.len() >= 2 && self.0[1].seq <= head {
            self.0.pop_front();
        }
    }

    /// How long ago the record `head` was appended, at most.
    pub(super) fn age_at(&self, head: u64) -> Duration {
        self.age_then(head, Instant::now())
    }

    fn age_then(&self, head: u64, now: Instant) -> Duration {
        self.0
            .iter()
            .take_while(|m| m.seq <= head)
            .last()
            .or(self.0.front())
            .map_or(Duration::ZERO, |m| {
                now.saturating_duration_since(m.at) + m.before
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_age_is_the_heads_append_not_the_segments() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut m = Marks::default();
        // Records 0..10 at t0, 10..20 half a second later (no mark), 20..30 at t0 + 5 s.
        m.appended_at(0, 0, t0);
        m.appended_at(10, 0, t0 + s / 2);
        m.appended_at(20, 0, t0 + 5 * s);
        assert_eq!(m.0.len(), 2);
        assert_eq!(m.age_then(0, t0 + 6 * s), 6 * s);
        assert_eq!(m.age_then(15, t0 + 6 * s), 6 * s, "an upper bound");
        // Once 0..20 are acknowledged, the age is that of record 20: 1 s, not 6.
        m.forget_below(20);
        assert_eq!(m.0.len(), 1);
        assert_eq!(m.age_then(20, t0 + 6 * s), s);
    }

    #[test]
    fn records_skipped_before_are_not_counted_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = State {
            segments: VecDeque::new(),
            next_seq: 100,
            head: 0,
            skipped: vec![10..20, 15..30, 40..50],
            in_flight: Default::default(),
            ledger: Ledger::open(dir.path()).unwrap().0,
            marks: Marks::default(),
        };
        assert_eq!(st.not_skipped(0..10), 10);
        assert_eq!(st.not_skipped(5..35), 5 + 5);
        assert_eq!(st.not_skipped(12..18), 0);
        assert_eq!(st.not_skipped(35..60), 5 + 10);
        // The head passes what it reaches, no further.
        st.head = 10;
        st.pass_skipped();
        assert_eq!(st.head, 30);
        assert_eq!(st.skipped, vec![40..50]);
    }

    #[test]
    fn a_found_segment_counts_from_its_file_and_marks_stay_bounded() {
        let mut m = Marks::default();
        let hour = Duration::from_secs(3600);
        m.found(0, std::time::SystemTime::now() - hour);
        assert!(m.age_at(0) >= hour && m.age_at(0) < hour + Duration::from_secs(5));
        // A file from the future (the clock was behind when it was made): no age yet, then
        // growing.
        let mut m = Marks::default();
        m.found(0, std::time::SystemTime::now() + hour);
        assert!(m.age_at(0) < Duration::from_secs(5));
        // A week of appends, one a second: at most MAX marks, the bound still the oldest's.
        let t0 = Instant::now();
        let mut m = Marks::default();
        for i in 0..604_800u64 {
            m.appended_at(i, 0, t0 + Duration::from_secs(i));
        }
        assert!(m.0.len() <= Marks::MAX, "{}", m.0.len());
        let end = t0 + Duration::from_secs(604_800);
        assert_eq!(m.age_then(0, end), Duration::from_secs(604_800));
        let age = m.age_then(600_000, end);
        assert!(age >= Duration::from_secs(4_800), "{age:?}");
        assert!(age < Duration::from_secs(4_800 + 604_800 / 1000), "{age:?}");
    }
}

/// Removes segment `first`'s file (`what`: why it goes, for the log). One removed by someone
/// else is no error: its records were counted lost when reading met it.
pub(super) fn remove_segment(dir: &Path, first: u64, what: &str) {
    match std::fs::remove_file(segment::path(dir, first)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            tracing::error!(error = %e, "removing a {what} disk buffer segment failed")
        }
        _ => {}
    }
}

impl State {
    /// Moves the head past the skipped records it has reached (never taken, so none is in
    /// flight), and forgets those below it.
    pub(super) fn pass_skipped(&mut self) {
        while let Some(end) = self.skipped_at_head() {
            self.head = end;
        }
        let head = self.head;
        self.skipped.retain(|r| r.end > head);
    }

    /// The end of a skipped range the head is in, if it is in one.
    pub(super) fn skipped_at_head(&self) -> Option<u64> {
        let head = self.head;
        self.skipped
            .iter()
            .find(|r| r.start <= head && head < r.end)
            .map(|r| r.end)
    }

    /// How many of the records `r` no range of `skipped` covers.
    pub(super) fn not_skipped(&self, r: std::ops::Range<u64>) -> u64 {
        let mut over: Vec<_> = self
            .skipped
            .iter()
            .filter(|o| o.start < r.end && r.start < o.end)
            .map(|o| o.start.max(r.start)..o.end.min(r.end))
            .collect();
        over.sort_unstable_by_key(|o| o.start);
        let (mut covered, mut at) = (0, r.start);
        for o in over {
            if o.end > at {
                covered += o.end - o.start.max(at);
                at = o.end;
            }
        }
        r.end - r.start - covered
    }

    /// Removes the oldest segments whose records are all acknowledged, never the one being
    /// written; whether any went.
    pub(super) fn remove_delivered(&mut self, dir: &Path) -> bool {
        let mut removed = false;
        while self.segments.len() > 1 && self.segments[0].end() <= self.head {
            let seg = self.segments.pop_front().expect("checked");
            removed = true;
            remove_segment(dir, seg.first, "delivered");
        }
        removed
    }
    /// The records `seqs`, taken, are settled or given back: in flight no more.
    pub(super) fn landed(&mut self, seqs: &[u64]) {
        for seq in seqs {
            self.in_flight.remove(seq);
        }
    }
    /// Whether a segment holds a record (delivered or not).
    pub(super) fn holds_records(&self) -> bool {
        self.segments.iter().any(|s| s.records > 0)
    }
    /// Bytes of all segments.
    pub(super) fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }
    /// Readings appended and not acknowledged or dropped.
    pub(super) fn pending(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.readings.saturating_sub(s.acked_readings))
            .sum()
    }
}

pub(super) struct WriterState {
    pub(super) file: Option<File>,
    pub(super) scratch: Vec<u8>,
}

/// A durable, bounded queue of reading batches on disk.
pub struct DiskBuffer {
    pub(super) dir: PathBuf,
    pub(super) max_size: u64,
    pub(super) segment_size: u64,
    pub(super) when_full: WhenFull,
    pub(super) fsync: bool,
    pub(super) state: Mutex<State>,
    pub(super) writer: Mutex<WriterState>,
    /// Signalled when records are appended.
    pub(super) appended: Condvar,
    /// Signalled when segments are removed.
    pub(super) freed: Condvar,
    /// Counters.
    pub stats: BufferStats,
    /// Held (locked) while the buffer is open: a second gateway on the same directory is refused.
    pub(super) _lock: File,
}

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// Writing or syncing the segment failed; nothing of this append is in the buffer.
    #[error("writing the disk buffer failed: {0}")]
    Io(#[from] io::Error),
    /// The buffer is full (`when_full = "block"`) and the caller asked to stop waiting.
    #[error("the disk buffer is full and the gateway is stopping")]
    Stopped,
}

impl DiskBuffer {
    /// The buffer's directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Readings appended and not yet acknowledged or dropped.
    pub fn pending(&self) -> u64 {
        self.state.lock().unwrap().pending()
    }

    /// How long the oldest reading not yet acknowledged has waited in the buffer, at most
    /// (within about a second: the buffer marks when records were appended, once a second at
    /// most). `None` when the buffer holds nothing.
    pub fn oldest_age(&self) -> Option<std::time::Duration> {
        let st = self.state.lock().unwrap();
        (st.pending() > 0).then(|| st.marks.age_at(st.head))
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.state.lock().unwrap().bytes()
    }
}
