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
//! segment is scanned: a torn tail (a crash mid-write, a power cut) is cut off and counted; a
//! damaged record in the middle costs that record alone (counted, logged, skipped). Files that
//! are not the buffer's own are left alone and never stop a start.
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
};

/// Counters of a disk buffer.
#[derive(Debug, Default)]
pub struct BufferStats {
    /// Readings dropped by `when_full = "drop_oldest"`.
    pub dropped: AtomicU64,
    /// Records found torn or corrupt (at open or while reading) and skipped.
    pub corrupt_records: AtomicU64,
    /// Bytes cut off or skipped with them.
    pub corrupt_bytes: AtomicU64,
    /// Readings found in the buffer at open, not yet acknowledged.
    pub recovered: AtomicU64,
    /// Readings appended since open.
    pub appended: AtomicU64,
}

#[derive(Debug, Clone)]
pub(super) struct Segment {
    pub(super) first: u64,
    pub(super) records: u64,
    pub(super) bytes: u64,
    pub(super) readings: u64,
    pub(super) acked_readings: u64,
    /// Damaged records found at open, skipped when reading.
    pub(super) holes: Vec<Hole>,
    /// When the segment was started (for a recovered one, its file's creation time): its
    /// readings are no older.
    pub(super) started: std::time::SystemTime,
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
    /// Every record below this is acknowledged (or dropped).
    pub(super) head: u64,
    /// Where `head` is recorded.
    pub(super) ledger: Ledger,
}

impl State {
    /// Removes the oldest segments whose records are all acknowledged, never the one being
    /// written; whether any went.
    pub(super) fn remove_delivered(&mut self, dir: &Path) -> bool {
        let mut removed = false;
        while self.segments.len() > 1 && self.segments[0].end() <= self.head {
            let seg = self.segments.pop_front().expect("checked");
            removed = true;
            if let Err(e) = std::fs::remove_file(segment::path(dir, seg.first)) {
                tracing::error!(error = %e, "removing a delivered disk buffer segment failed");
            }
        }
        removed
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

    /// How long ago the oldest segment still holding unacknowledged readings was started: an
    /// upper bound of the oldest reading's age in the buffer (its wait for the sink). `None`
    /// when the buffer holds nothing.
    pub fn oldest_age(&self) -> Option<std::time::Duration> {
        let st = self.state.lock().unwrap();
        let seg = st.segments.iter().find(|s| s.readings > s.acked_readings)?;
        Some(seg.started.elapsed().unwrap_or_default())
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.state.lock().unwrap().bytes()
    }
}
