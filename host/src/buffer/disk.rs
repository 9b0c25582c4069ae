//! The disk buffer: an append-only log of records in segment files, plus the position of the
//! first record its sink has not acknowledged. Blocking file I/O, called from two threads: the
//! buffer's writer thread appends, the sink's thread takes and acknowledges.
//!
//! On disk, in the buffer's directory:
//! - `NNNNNNNNNNNNNNNNNNNN.seg`: segments named after the sequence number of their first record,
//!   in the layout of [`super::segment`]. A record holds up to one sink batch of readings
//!   ([`super::codec`]).
//! - `head`: two 16-byte slots, written in turn, each `seq u64 | crc32 u32 | 0u32`; the valid slot
//!   with the larger `seq` is the first record not yet acknowledged. It is written without fsync:
//!   losing it to a power cut only re-sends acknowledged records, which every sink of this project
//!   drops by reading id.
//!
//! A record is durable once `append` returns (the segment is fdatasync'ed, and the directory too
//! when a segment is created), unless the buffer was opened with `fsync = "never"`. At open, every
//! segment is scanned: a torn tail (a crash mid-write, a power cut) is cut off and counted; a
//! damaged record in the middle costs that record alone (counted, logged, skipped). Files that
//! are not the buffer's own are left alone and never stop a start.

use super::{
    codec,
    segment::{self, Hole, OpenSegment, Unreadable, MAGIC},
};
use crate::config::{BufferSettings, WhenFull};
use gateway_sdk::Reading;
use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::{self, Write},
    ops::Range,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Condvar, Mutex,
    },
    time::{Duration, Instant},
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
struct Segment {
    first: u64,
    records: u64,
    bytes: u64,
    readings: u64,
    acked_readings: u64,
    /// Damaged records found at open, skipped when reading.
    holes: Vec<Hole>,
}

impl Segment {
    fn end(&self) -> u64 {
        self.first + self.records
    }
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

struct State {
    segments: VecDeque<Segment>,
    /// Sequence number of the next record appended.
    next_seq: u64,
    /// Every record below this is acknowledged (or dropped).
    head: u64,
    head_file: File,
    head_slot: u64,
    head_synced: Instant,
}

impl State {
    /// Bytes of all segments.
    fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }
    /// Readings appended and not acknowledged or dropped.
    fn pending(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.readings.saturating_sub(s.acked_readings))
            .sum()
    }
}

struct WriterState {
    file: Option<File>,
    scratch: Vec<u8>,
}

/// A durable, bounded queue of reading batches on disk.
pub struct DiskBuffer {
    dir: PathBuf,
    max_size: u64,
    segment_size: u64,
    when_full: WhenFull,
    fsync: bool,
    state: Mutex<State>,
    writer: Mutex<WriterState>,
    appended: Condvar,
    freed: Condvar,
    /// Counters.
    pub stats: BufferStats,
    /// Held (locked) while the buffer is open: a second gateway on the same directory is refused.
    _lock: File,
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

/// What one [`DiskBuffer::take`] returned: readings from one or more records, in order.
#[derive(Debug, Default)]
pub struct Taken {
    /// The readings.
    pub readings: Vec<Reading>,
    /// The readings of each record, as ranges of `readings`.
    pub records: Vec<Range<usize>>,
    seqs: Vec<u64>,
    head_to: Option<u64>,
    live_to: Option<u64>,
}

#[derive(Default)]
struct Cursor {
    /// The next record to read from the file.
    seq: u64,
    open: Option<OpenSegment>,
    /// A record read but not taken (it did not fit in the write); it comes first next time.
    peeked: Option<(u64, Vec<Reading>)>,
}

impl Cursor {
    fn at(seq: u64) -> Cursor {
        Cursor {
            seq,
            open: None,
            peeked: None,
        }
    }
    /// The first record not taken yet.
    fn position(&self) -> u64 {
        self.peeked.as_ref().map_or(self.seq, |p| p.0)
    }
}

/// What a reader needs to know of a segment.
struct SegmentView {
    first: u64,
    end: u64,
    holes: Vec<Hole>,
}

struct Live {
    /// The first record of the live lane; the backlog lane ends here.
    start: u64,
    cursor: Cursor,
    /// Live records below this are acknowledged.
    acked: u64,
}

/// The sink's reading position: the backlog lane, oldest first, and, while a backlog is being
/// sent, a live lane that carries records appended since, so that fresh readings are not held
/// behind hours of old ones.
pub struct Reader {
    head: Cursor,
    live: Option<Live>,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn read_head(file: &File) -> io::Result<u64> {
    let mut buf = [0u8; 32];
    let n = file.read_at(&mut buf, 0)?;
    let mut best = 0;
    for slot in buf[..n - n % 16].chunks(16) {
        let seq = u64::from_le_bytes(slot[0..8].try_into().unwrap());
        let sum = u32::from_le_bytes(slot[8..12].try_into().unwrap());
        if crc32fast::hash(&seq.to_le_bytes()) == sum {
            best = best.max(seq);
        }
    }
    Ok(best)
}

impl DiskBuffer {
    /// Opens (creating if needed) the buffer in `dir`, recovering what an earlier run left:
    /// torn tails are cut off and counted, acknowledged segments removed.
    pub fn open(dir: &Path, settings: &BufferSettings) -> io::Result<DiskBuffer> {
        std::fs::create_dir_all(dir)?;
        let lock = File::create(dir.join("lock"))?;
        if let Err(e) = lock.try_lock() {
            return Err(match e {
                std::fs::TryLockError::WouldBlock => io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "it is in use by another gateway process (two gateways must not share a data_dir)",
                ),
                std::fs::TryLockError::Error(e) => e,
            });
        }
        let stats = BufferStats::default();
        let head_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("head"))?;
        let mut head = read_head(&head_file)?;
        let mut segments = VecDeque::new();
        for (first, path) in Self::segment_files(dir)? {
            let Some(seg) = Self::scan(&path, first, head, &stats)? else {
                continue;
            };
            let fully_acked = seg.end() <= head;
            if seg.records == 0 || fully_acked {
                std::fs::remove_file(&path)?;
                continue;
            }
            segments.push_back(seg);
        }
        let next_seq = segments.back().map_or(head, Segment::end).max(head);
        // The head can be older than every segment left (its file is not synced): start at the
        // first record there is.
        if let Some(s) = segments.front() {
            head = head.max(s.first);
        }
        let state = State {
            segments,
            next_seq,
            head,
            head_file,
            head_slot: 0,
            head_synced: Instant::now(),
        };
        let (pending, bytes) = (state.pending(), state.bytes());
        stats.recovered.store(pending, Ordering::Relaxed);
        if pending > 0 {
            tracing::info!(
                dir = %dir.display(),
                readings = pending,
                bytes,
                segments = state.segments.len(),
                "disk buffer recovered readings not yet delivered; they go out first, oldest first"
            );
        }
        let max_size = settings.max_size;
        Ok(DiskBuffer {
            dir: dir.to_owned(),
            max_size,
            segment_size: (max_size / 8).clamp(64 << 10, 64 << 20),
            when_full: settings.when_full,
            fsync: settings.fsync,
            state: Mutex::new(state),
            writer: Mutex::new(WriterState {
                file: None,
                scratch: Vec::new(),
            }),
            appended: Condvar::new(),
            freed: Condvar::new(),
            stats,
            _lock: lock,
        })
    }

    /// The segment files of `dir`, by first record. Anything else there (a stray file, a
    /// directory, a name that is not exactly a segment's) is logged and left alone.
    fn segment_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if matches!(name.as_ref(), "head" | "lock") || name.ends_with(".damaged") {
                continue;
            }
            let first = name
                .strip_suffix(".seg")
                .filter(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u64>().ok());
            match first {
                Some(n) if entry.file_type()?.is_file() => found.push((n, entry.path())),
                _ => tracing::warn!(
                    file = %entry.path().display(),
                    "a file in the disk buffer's directory that is not the buffer's own; leaving it alone"
                ),
            }
        }
        found.sort_unstable_by_key(|f| f.0);
        Ok(found)
    }

    /// Reads a segment's records: damage in the middle is skipped record by record, a torn
    /// tail is cut off. A file that is not a segment (bad magic) is renamed `NAME.damaged` and
    /// left out (`None`).
    fn scan(
        path: &Path,
        first: u64,
        head: u64,
        stats: &BufferStats,
    ) -> io::Result<Option<Segment>> {
        let Some(scan) = segment::scan(path, first, head)? else {
            let aside = path.with_extension("seg.damaged");
            stats.corrupt_records.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                segment = %path.display(),
                moved_to = %aside.display(),
                "not a disk buffer segment (bad magic); moved aside, the buffer goes on without it"
            );
            std::fs::rename(path, &aside)?;
            return Ok(None);
        };
        for h in &scan.holes {
            stats
                .corrupt_records
                .fetch_add(h.to - h.from, Ordering::Relaxed);
            stats.corrupt_bytes.fetch_add(h.bytes, Ordering::Relaxed);
            tracing::error!(
                segment = %path.display(),
                records = h.to - h.from,
                first_record = h.from,
                bytes = h.bytes,
                "disk buffer records damaged (checksum or header wrong); skipping them, the records after them are intact"
            );
        }
        let len = scan.len;
        if scan.valid_end < len {
            let cut = len - scan.valid_end;
            stats.corrupt_records.fetch_add(1, Ordering::Relaxed);
            stats.corrupt_bytes.fetch_add(cut, Ordering::Relaxed);
            tracing::warn!(
                segment = %path.display(),
                at = scan.valid_end,
                bytes = cut,
                records_kept = scan.records,
                reason = %scan.tail_problem.as_deref().unwrap_or_default(),
                "disk buffer segment has a torn or corrupt tail (a crash or power cut mid-write); cutting it off"
            );
            let file = OpenOptions::new().write(true).open(path)?;
            file.set_len(scan.valid_end)?;
            file.sync_all()?;
        }
        Ok(Some(Segment {
            first,
            records: scan.records,
            bytes: scan.valid_end.min(len),
            readings: scan.readings,
            acked_readings: scan.acked_readings,
            holes: scan.holes,
        }))
    }

    /// Readings appended and not yet acknowledged or dropped.
    pub fn pending(&self) -> u64 {
        self.state.lock().unwrap().pending()
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.state.lock().unwrap().bytes()
    }

    /// A reader that starts at the oldest unacknowledged record.
    pub fn reader(&self) -> Reader {
        Reader {
            head: Cursor::at(self.state.lock().unwrap().head),
            live: None,
        }
    }

    /// Appends `batches` as records of at most `record_readings` readings each (a batch larger
    /// than that is one record of its own), durably, before returning. Waits for space while
    /// the buffer is full and `when_full = "block"`, until `stop()` says to give up.
    pub fn append(
        &self,
        batches: &[&[Reading]],
        record_readings: usize,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), AppendError> {
        let mut w = self.writer.lock().unwrap();
        let w = &mut *w;
        let mut buf = std::mem::take(&mut w.scratch);
        buf.clear();
        let first_seq = self.state.lock().unwrap().next_seq;
        let (mut records, mut readings) = (0u64, 0u64);
        let mut group: Vec<&[Reading]> = Vec::new();
        let mut group_n = 0;
        let mut flush = |group: &mut Vec<&[Reading]>, n: &mut usize, buf: &mut Vec<u8>| {
            if group.is_empty() {
                return;
            }
            segment::write_record(buf, first_seq + records, *n as u32, |buf| {
                for b in group.iter() {
                    codec::encode(b, buf);
                }
            });
            records += 1;
            readings += *n as u64;
            group.clear();
            *n = 0;
        };
        for b in batches.iter().filter(|b| !b.is_empty()) {
            if group_n > 0 && group_n + b.len() > record_readings {
                flush(&mut group, &mut group_n, &mut buf);
            }
            group.push(b);
            group_n += b.len();
        }
        flush(&mut group, &mut group_n, &mut buf);
        if records == 0 {
            w.scratch = buf;
            return Ok(());
        }
        let result = self
            .make_room(w, buf.len() as u64, stop)
            .and_then(|()| self.write_records(w, &buf, records, readings));
        w.scratch = buf;
        result
    }

    /// Waits for, or makes, room for `need` more bytes.
    fn make_room(
        &self,
        w: &mut WriterState,
        need: u64,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), AppendError> {
        let mut st = self.state.lock().unwrap();
        let mut warned = false;
        while st.bytes() > 0 && st.bytes() + need > self.max_size {
            match self.when_full {
                WhenFull::Block => {
                    if !warned {
                        tracing::warn!(
                            bytes = st.bytes(),
                            max_size = self.max_size,
                            readings = st.pending(),
                            "disk buffer is full: holding the sources back until the sink catches up"
                        );
                        warned = true;
                    }
                    if stop() {
                        return Err(AppendError::Stopped);
                    }
                    st = self
                        .freed
                        .wait_timeout(st, Duration::from_millis(100))
                        .unwrap()
                        .0;
                }
                WhenFull::DropOldest => {
                    if st.segments.len() <= 1 {
                        // The only segment is the one being written: start a new one so the
                        // old one can go.
                        drop(st);
                        self.roll(w)?;
                        st = self.state.lock().unwrap();
                        if st.segments.len() <= 1 {
                            break;
                        }
                    }
                    let seg = st.segments.pop_front().expect("two segments");
                    let lost = seg.readings.saturating_sub(seg.acked_readings);
                    st.head = st.head.max(seg.end());
                    self.stats.dropped.fetch_add(lost, Ordering::Relaxed);
                    tracing::warn!(
                        readings = lost,
                        bytes = seg.bytes,
                        dropped_total = self.stats.dropped.load(Ordering::Relaxed),
                        "disk buffer is full: dropped its oldest readings (when_full = \"drop_oldest\")"
                    );
                    if let Err(e) = std::fs::remove_file(segment_path(&self.dir, seg.first)) {
                        tracing::error!(error = %e, "removing a dropped disk buffer segment failed");
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts a new segment at the next sequence number.
    fn roll(&self, w: &mut WriterState) -> io::Result<()> {
        let first = {
            let mut st = self.state.lock().unwrap();
            if st.segments.back().is_some_and(|s| s.records == 0) {
                st.segments.pop_back();
            }
            st.next_seq
        };
        let path = segment_path(&self.dir, first);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        file.write_all(MAGIC)?;
        if self.fsync {
            file.sync_data()?;
            sync_dir(&self.dir)?;
        }
        w.file = Some(file);
        let mut st = self.state.lock().unwrap();
        st.segments.push_back(Segment {
            first,
            records: 0,
            bytes: MAGIC.len() as u64,
            readings: 0,
            acked_readings: 0,
            holes: Vec::new(),
        });
        Ok(())
    }

    fn write_records(
        &self,
        w: &mut WriterState,
        buf: &[u8],
        records: u64,
        readings: u64,
    ) -> Result<(), AppendError> {
        let current = {
            let st = self.state.lock().unwrap();
            st.segments
                .back()
                .filter(|s| s.end() == st.next_seq)
                .map(|s| (s.bytes, s.records))
        };
        let size = match current {
            Some((bytes, records))
                if w.file.is_some() && (records == 0 || bytes < self.segment_size) =>
            {
                bytes
            }
            _ => {
                self.roll(w)?;
                MAGIC.len() as u64
            }
        };
        let file = w.file.as_mut().expect("a segment is open");
        let written =
            file.write_all(buf)
                .and_then(|()| if self.fsync { file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            // Cut the torn bytes off, and write the retry into a new segment, so that no reader
            // ever sees bytes at an offset change.
            let _ = file.set_len(size);
            w.file = None;
            return Err(e.into());
        }
        let mut st = self.state.lock().unwrap();
        let seg = st.segments.back_mut().expect("the current segment");
        seg.records += records;
        seg.readings += readings;
        seg.bytes += buf.len() as u64;
        st.next_seq += records;
        drop(st);
        self.stats.appended.fetch_add(readings, Ordering::Relaxed);
        self.appended.notify_all();
        Ok(())
    }

    /// Takes up to `max_readings` readings (whole records; a single record may be larger), the
    /// oldest first, plus records appended since a backlog began. Waits up to `first_wait` for a
    /// first record, then until `more_until` for the write to fill. `None` if nothing came.
    pub fn take(
        &self,
        reader: &mut Reader,
        max_readings: usize,
        first_wait: Duration,
        more_until: Duration,
    ) -> Option<Taken> {
        let mut taken = Taken::default();
        let start = Instant::now();
        let mut deadline = start + first_wait;
        let mut filling = false;
        loop {
            let (segments, next_seq) = {
                let mut st = self.state.lock().unwrap();
                // Segments dropped under us: skip what they held.
                if reader.head.position() < st.head && taken.records.is_empty() {
                    reader.head = Cursor::at(st.head);
                }
                let has_new = |r: &Reader, st: &State| {
                    r.head.position() < r.live.as_ref().map_or(st.next_seq, |l| l.start)
                        || r.live
                            .as_ref()
                            .is_some_and(|l| l.cursor.position() < st.next_seq)
                };
                if !has_new(reader, &st) {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    st = self.appended.wait_timeout(st, deadline - now).unwrap().0;
                    if !has_new(reader, &st) {
                        continue;
                    }
                }
                let segs: Vec<SegmentView> = st
                    .segments
                    .iter()
                    .map(|s| SegmentView {
                        first: s.first,
                        end: s.end(),
                        holes: s.holes.clone(),
                    })
                    .collect();
                (segs, st.next_seq)
            };
            let before = taken.records.len();
            self.read_lanes(reader, &mut taken, &segments, next_seq, max_readings);
            if taken.readings.len() >= max_readings {
                break;
            }
            if !taken.records.is_empty() && !filling {
                filling = true;
                deadline = Instant::now() + more_until;
            }
            if taken.records.len() == before {
                // Records announced but not readable (dropped or skipped meanwhile): do not spin.
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                std::thread::sleep((deadline - now).min(Duration::from_millis(10)));
            }
        }
        (!taken.records.is_empty()).then_some(taken)
    }

    fn read_lanes(
        &self,
        reader: &mut Reader,
        taken: &mut Taken,
        segments: &[SegmentView],
        next_seq: u64,
        max: usize,
    ) {
        if let Some(live) = reader.live.as_mut() {
            let share = (max / 4).max(1);
            while taken.readings.len() < share
                && self.next_record(&mut live.cursor, segments, next_seq, taken, share)
            {
            }
            taken.live_to = Some(live.cursor.position());
        }
        let limit = reader.live.as_ref().map_or(next_seq, |l| l.start);
        while taken.readings.len() < max {
            if !self.next_record(&mut reader.head, segments, limit, taken, max) {
                break;
            }
        }
        taken.head_to = Some(reader.head.position());
        // A full write with more waiting behind it: a backlog. Records appended from now on
        // travel in the live lane beside it.
        if reader.live.is_none() && taken.readings.len() >= max && reader.head.position() < next_seq
        {
            reader.live = Some(Live {
                start: next_seq,
                cursor: Cursor::at(next_seq),
                acked: next_seq,
            });
            tracing::info!(
                backlog_records = next_seq - reader.head.seq,
                "sending a backlog from the disk buffer, oldest first; new readings go out beside it"
            );
        }
    }

    /// Adds the cursor's next record below `limit` to `taken` if it fits in `max` readings (or
    /// `taken` is empty); `false` if there is none or it does not fit.
    fn next_record(
        &self,
        cur: &mut Cursor,
        segments: &[SegmentView],
        limit: u64,
        taken: &mut Taken,
        max: usize,
    ) -> bool {
        let (seq, readings) = match cur.peeked.take() {
            Some(p) => p,
            None => match self.read_next(cur, segments, limit) {
                Some(r) => r,
                None => return false,
            },
        };
        if !taken.readings.is_empty() && taken.readings.len() + readings.len() > max {
            cur.peeked = Some((seq, readings));
            return false;
        }
        let at = taken.readings.len();
        taken.readings.extend(readings);
        taken.records.push(at..taken.readings.len());
        taken.seqs.push(seq);
        true
    }

    /// Reads the record at the cursor if there is one below `limit`. Damaged records are
    /// skipped (and counted, unless the scan at open counted them).
    fn read_next(
        &self,
        cur: &mut Cursor,
        segments: &[SegmentView],
        limit: u64,
    ) -> Option<(u64, Vec<Reading>)> {
        loop {
            if cur.seq >= limit {
                return None;
            }
            let seg = segments
                .iter()
                .find(|s| s.end > cur.seq && s.first < s.end)?;
            if seg.first > cur.seq {
                cur.seq = seg.first;
                cur.open = None;
                continue;
            }
            if cur.open.as_ref().map(|o| o.first) != Some(seg.first) {
                match OpenSegment::open(&segment_path(&self.dir, seg.first), seg.first) {
                    Ok(o) => cur.open = Some(o),
                    Err(_) => {
                        // Dropped by `drop_oldest` meanwhile.
                        cur.seq = seg.end;
                        cur.open = None;
                        continue;
                    }
                }
            }
            let open = cur.open.as_mut().expect("opened above");
            let (to, counted, why) = match open.read(cur.seq, &seg.holes) {
                Ok(readings) => {
                    let seq = cur.seq;
                    cur.seq += 1;
                    return Some((seq, readings));
                }
                Err(Unreadable::Hole { to, new, why }) => (to.min(seg.end), !new, why),
                Err(Unreadable::Rest(why)) => {
                    cur.open = None;
                    (seg.end, false, why)
                }
                Err(Unreadable::Io(e)) => {
                    cur.open = None;
                    (seg.end, false, e.to_string())
                }
            };
            if !counted {
                let skipped = to - cur.seq;
                self.stats
                    .corrupt_records
                    .fetch_add(skipped, Ordering::Relaxed);
                tracing::error!(
                    segment = seg.first,
                    record = cur.seq,
                    records_skipped = skipped,
                    error = %why,
                    "disk buffer record unreadable; skipping it, reading goes on after it"
                );
            }
            cur.seq = to;
        }
    }

    /// Marks everything in `taken` acknowledged: the sink stored it (or refused it for good).
    /// Segments wholly acknowledged are removed.
    pub fn ack(&self, reader: &mut Reader, taken: Taken) {
        let mut st = self.state.lock().unwrap();
        for (seq, range) in taken.seqs.iter().zip(&taken.records) {
            if *seq < st.head {
                continue; // dropped meanwhile
            }
            let n = range.len() as u64;
            if let Some(seg) = st
                .segments
                .iter_mut()
                .find(|s| s.first <= *seq && *seq < s.end())
            {
                seg.acked_readings = (seg.acked_readings + n).min(seg.readings);
            }
        }
        if let (Some(live), Some(to)) = (reader.live.as_mut(), taken.live_to) {
            live.acked = live.acked.max(to);
        }
        if let Some(to) = taken.head_to {
            st.head = st.head.max(to);
        }
        if let Some(live) = reader.live.take() {
            if st.head >= live.start {
                st.head = st.head.max(live.acked);
                reader.head = live.cursor;
                tracing::info!("disk buffer backlog sent");
            } else {
                reader.live = Some(live);
            }
        }
        let mut removed = false;
        while st.segments.len() > 1 && st.segments[0].end() <= st.head {
            let seg = st.segments.pop_front().expect("checked");
            removed = true;
            if let Err(e) = std::fs::remove_file(segment_path(&self.dir, seg.first)) {
                tracing::error!(error = %e, "removing a delivered disk buffer segment failed");
            }
        }
        let slot = st.head_slot;
        st.head_slot ^= 1;
        let mut rec = [0u8; 16];
        rec[0..8].copy_from_slice(&st.head.to_le_bytes());
        rec[8..12].copy_from_slice(&crc32fast::hash(&st.head.to_le_bytes()).to_le_bytes());
        if let Err(e) = st.head_file.write_at(&rec, slot * 16) {
            tracing::warn!(error = %e, "recording the disk buffer's position failed; delivered readings may be sent again after a restart");
        }
        if self.fsync && st.head_synced.elapsed() >= Duration::from_secs(1) {
            let _ = st.head_file.sync_data();
            st.head_synced = Instant::now();
        }
        drop(st);
        if removed {
            self.freed.notify_all();
        }
    }
}
