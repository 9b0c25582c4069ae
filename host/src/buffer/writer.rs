//! Appending to a disk buffer, on the buffer's writer thread: records are encoded into one
//! buffer, room is made (or waited for) as `when_full` says, and the bytes are written and
//! synced before `append` returns. A segment is rolled when it reaches its size.

use super::{
    codec,
    disk::{AppendError, DiskBuffer, Segment, State, WriterState},
    segment::{self, MAGIC},
};
use crate::config::WhenFull;
use gateway_sdk::Reading;
use std::{
    fs::File,
    io::{self, Write},
    path::Path,
    sync::atomic::Ordering,
    time::Duration,
};

/// How often a writer held back by a full Block buffer checks whether it was told to stop.
/// Room is signalled, not polled: an acknowledgement that frees room wakes the writer. The
/// unit tests wait far longer, so that a missing wake-up shows as a stall.
const FULL_POLL: Duration = if cfg!(test) {
    Duration::from_secs(5)
} else {
    Duration::from_millis(100)
};

/// Whether `e` says that the file system has no room left (or the user's quota is used up).
fn out_of_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// How many of the first `readings` (at least one) fit a record of at most `max` readings
/// and [`segment::RECORD_BYTES`], and the bytes they take at most.
fn fitting(readings: &[Reading], max: usize) -> (usize, usize) {
    let mut bytes = 0;
    for (i, r) in readings.iter().enumerate() {
        let b = codec::bound(r);
        if i > 0 && (i >= max || bytes + b > segment::RECORD_BYTES) {
            return (i, bytes);
        }
        bytes += b;
    }
    (readings.len(), bytes)
}

impl DiskBuffer {
    /// Appends `batches` as records of at most `record_readings` readings and
    /// [`segment::RECORD_BYTES`] each (a batch larger than that is cut into several),
    /// durably, before returning. Waits for space while
    /// the buffer is full and `when_full = "block"`, until `stop()` says to give up, or
    /// `past_max()` says to write past `max_size` instead (a run that is draining: what is
    /// queued is bounded, no more comes, and what is not written is lost).
    pub fn append(
        &self,
        batches: &[&[Reading]],
        record_readings: usize,
        stop: &dyn Fn() -> bool,
        past_max: &dyn Fn() -> bool,
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
        let mut group_bytes = 0;
        for b in batches.iter().filter(|b| !b.is_empty()) {
            let mut rest: &[Reading] = b;
            while !rest.is_empty() {
                // A batch goes whole into a record if it fits one, else cut into pieces that
                // do: a record longer than segment::MAX_RECORD would be read as corrupt.
                let (n, bytes) = fitting(rest, record_readings);
                let (piece, after) = rest.split_at(n);
                if group_n > 0
                    && (group_n + n > record_readings
                        || group_bytes + bytes > segment::RECORD_BYTES)
                {
                    flush(&mut group, &mut group_n, &mut buf);
                    group_bytes = 0;
                }
                group.push(piece);
                group_n += n;
                group_bytes += bytes;
                rest = after;
            }
        }
        flush(&mut group, &mut group_n, &mut buf);
        if records == 0 {
            w.scratch = buf;
            return Ok(());
        }
        let write = |w: &mut WriterState| {
            self.make_room(w, buf.len() as u64, stop, past_max)
                .and_then(|()| self.write_records(w, &buf, records, readings))
        };
        let result = match write(w) {
            // The file system filled before `max_size` did (other files share it): room is
            // made there as `when_full` says, from the oldest segment, and the write tried once
            // more. Not enough room yet: the caller's retry comes back here, and the next
            // oldest goes (the reader may still hold the dropped one's file open).
            Err(AppendError::Io(e))
                if out_of_space(&e)
                    && self.when_full == WhenFull::DropOldest
                    && self.drop_oldest_for_space(w) =>
            {
                write(w)
            }
            r => r,
        };
        w.scratch = buf;
        result
    }

    /// Waits for, or makes, room for `need` more bytes (see [`DiskBuffer::append`] for `stop`
    /// and `past_max`).
    fn make_room(
        &self,
        w: &mut WriterState,
        need: u64,
        stop: &dyn Fn() -> bool,
        past_max: &dyn Fn() -> bool,
    ) -> Result<(), AppendError> {
        let mut st = self.state.lock().unwrap();
        let mut warned = false;
        while st.holds_records() && st.bytes() + need > self.max_size {
            match self.when_full {
                WhenFull::Block => {
                    // All that is held is delivered, but in the segment being written, which
                    // the reader never removes (a `max_size` of about one segment, or an
                    // append larger than the room left): start a new one, and the delivered
                    // one goes.
                    if st.segments.len() == 1 && st.segments[0].end() <= st.head {
                        drop(st);
                        self.roll(w)?;
                        st = self.state.lock().unwrap();
                        st.remove_delivered(&self.dir);
                        continue;
                    }
                    if past_max() {
                        tracing::warn!(
                            bytes = st.bytes(),
                            max_size = self.max_size,
                            more = need,
                            "disk buffer is full, and the gateway is stopping: writing what is queued past max_size, so that none of it is lost"
                        );
                        break;
                    }
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
                    st = self.freed.wait_timeout(st, FULL_POLL).unwrap().0;
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
                    self.drop_oldest(&mut st, "disk buffer is full");
                }
            }
        }
        Ok(())
    }

    /// Drops the oldest segment (`when_full = "drop_oldest"`), counting its readings not
    /// acknowledged as dropped. `why` starts the warning.
    fn drop_oldest(&self, st: &mut State, why: &str) {
        let seg = st.segments.pop_front().expect("a segment to drop");
        // Those of its readings a write is storing now are counted as that write settles.
        let flying: u64 = st
            .in_flight
            .range(seg.first..seg.end())
            .map(|(_, n)| n)
            .sum();
        let lost = seg
            .readings
            .saturating_sub(seg.acked_readings)
            .saturating_sub(flying);
        st.head = st.head.max(seg.end());
        // Recorded, so that the next start does not take the records dropped for ones gone
        // without a word.
        let head = st.head;
        st.ledger.record(head, self.fsync);
        self.stats.dropped.fetch_add(lost, Ordering::Relaxed);
        tracing::warn!(
            readings = lost,
            bytes = seg.bytes,
            dropped_total = self.stats.dropped.load(Ordering::Relaxed),
            "{why}: dropped its oldest readings (when_full = \"drop_oldest\")"
        );
        super::disk::remove_segment(&self.dir, seg.first, "dropped");
    }

    /// After a write failed for want of room on the file system: drops the oldest segment
    /// that holds records, even the one being written (its file is closed, and the next write
    /// starts a new one). Whether there was one.
    fn drop_oldest_for_space(&self, w: &mut WriterState) -> bool {
        let mut st = self.state.lock().unwrap();
        if st.segments.front().is_none_or(|s| s.records == 0) {
            return false;
        }
        if st.segments.len() == 1 {
            w.file = None;
        }
        self.drop_oldest(&mut st, "the file system of the disk buffer is full");
        true
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
        let path = segment::path(&self.dir, first);
        let mut file = crate::own_files::options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let made = file.write_all(MAGIC).and_then(|()| {
            if self.fsync {
                file.sync_data()?;
                sync_dir(&self.dir)?;
            }
            Ok(())
        });
        if let Err(e) = made {
            // A full disk, most often: no segment is left behind with half a header.
            let _ = std::fs::remove_file(&path);
            return Err(e);
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
            gone: false,
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
        // A segment file someone removed (to get reading past it when it could not be read,
        // say) is written on no more: what went into it would go with it, acknowledged. Looked
        // at once an append is written (one fstat an append): then it is written again, once,
        // into a new segment.
        let removed = |w: &WriterState| {
            w.file.as_ref().is_some_and(|f| {
                use std::os::unix::fs::MetadataExt;
                f.metadata().is_ok_and(|m| m.nlink() == 0)
            })
        };
        for attempt in 0.. {
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
                // Cut the torn bytes off, and write the retry into a new segment, so that no
                // reader ever sees bytes at an offset change.
                let _ = file.set_len(size);
                w.file = None;
                return Err(e.into());
            }
            // Removed (before the write or during it): written again, once, into a new
            // segment. The records keep their numbers; no reader reads them from the removed
            // file, whose segment does not cover them.
            if attempt == 0 && removed(w) {
                w.file = None;
                continue;
            }
            break;
        }
        let mut st = self.state.lock().unwrap();
        let seg = st.segments.back_mut().expect("the current segment");
        seg.records += records;
        seg.readings += readings;
        seg.bytes += buf.len() as u64;
        let (seq, head) = (st.next_seq, st.head);
        st.marks.appended(seq, head);
        st.next_seq += records;
        drop(st);
        self.stats.appended.fetch_add(readings, Ordering::Relaxed);
        self.appended.notify_all();
        Ok(())
    }
}
