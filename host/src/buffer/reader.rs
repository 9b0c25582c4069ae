//! Taking from a disk buffer and acknowledging, on the sink's thread: whole records, oldest
//! first, with a live lane beside a backlog so that fresh readings are not held behind hours
//! of old ones; the head moves (and acknowledged segments go) only on acknowledgement.

use super::{
    disk::{DiskBuffer, State},
    segment::{self, Hole, OpenSegment, Unreadable},
};
use gateway_sdk::Reading;
use std::{
    ops::Range,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

/// After segment `first` could not be read: tries it again in a second, and logs it at most
/// once a minute for the cursor.
fn warn_unread(cur: &mut Cursor, first: u64, e: &std::io::Error) {
    cur.retry_at = Some(Instant::now() + Duration::from_secs(1));
    if cur
        .warned
        .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
    {
        return;
    }
    cur.warned = Some(Instant::now());
    tracing::error!(
        segment = first,
        record = cur.seq,
        error = %e,
        "disk buffer segment cannot be read; nothing is skipped, reading tries again every second (if the file is lost for good, removing it makes its records count as lost and reading go on)"
    );
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
    /// When a read error was last logged: a disk that keeps failing is said once a minute.
    warned: Option<Instant>,
    /// After a read error, when to try that segment again (not at every take's 10 ms poll:
    /// each try opens the file and walks its record headers).
    retry_at: Option<Instant>,
}

impl Cursor {
    fn at(seq: u64) -> Cursor {
        Cursor {
            seq,
            open: None,
            peeked: None,
            warned: None,
            retry_at: None,
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
    gone: bool,
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

impl DiskBuffer {
    /// A reader that starts at the oldest unacknowledged record.
    pub fn reader(&self) -> Reader {
        let mut st = self.state.lock().unwrap();
        // What an earlier reader took is settled by nobody now.
        st.in_flight.clear();
        Reader {
            head: Cursor::at(st.head),
            live: None,
        }
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
                        gone: s.gone,
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
        if taken.records.is_empty() {
            // Only skipped records, maybe: at the head, nothing of them is in flight, and no
            // acknowledgement may come to pass them.
            let st = self.state.lock().unwrap();
            if st.skipped_at_head().is_some() {
                self.settle(st);
            }
            return None;
        }
        Some(taken)
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
            // A quarter of each write while the backlog lane has records left to give; all
            // of it once the backlog is all taken and only waits for its acknowledgements,
            // or the write could not fill and would wait out `more_until` every time.
            let backlog_left = reader.head.position() < live.start;
            let share = if backlog_left { (max / 4).max(1) } else { max };
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
        {
            let mut st = self.state.lock().unwrap();
            if seq < st.head {
                // Dropped by `drop_oldest` as it was read, and counted then: not sent.
                return true;
            }
            st.in_flight.insert(seq, readings.len() as u64);
        }
        let at = taken.readings.len();
        taken.readings.extend(readings);
        taken.records.push(at..taken.readings.len());
        taken.seqs.push(seq);
        true
    }

    /// Reads the record at the cursor if there is one below `limit`. Damaged records are
    /// skipped (and counted, unless the scan at open counted them). A segment that cannot be
    /// opened or read for another reason than damage (too many open files, EIO from a flaky
    /// SD card, a link planted in its place) is not skipped: nothing is read now, and the next
    /// take tries again from the same record.
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
                // Records no segment holds (counted at open, or dropped meanwhile).
                self.skip(cur, seg.first.min(limit), false);
                cur.open = None;
                continue;
            }
            if cur.open.as_ref().map(|o| o.first) != Some(seg.first) {
                if cur.retry_at.is_some_and(|t| Instant::now() < t) {
                    return None;
                }
                let open = if seg.gone {
                    Err(std::io::ErrorKind::NotFound.into())
                } else {
                    OpenSegment::open(&segment::path(&self.dir, seg.first), seg.first)
                };
                match open {
                    Ok(o) => {
                        cur.open = Some(o);
                        cur.retry_at = None;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        // Dropped by `drop_oldest` meanwhile, or removed by someone else.
                        let lost = self.lost_segment(seg);
                        self.skip(cur, seg.end.min(limit), lost);
                        cur.open = None;
                        continue;
                    }
                    Err(e) => {
                        cur.open = None;
                        warn_unread(cur, seg.first, &e);
                        return None;
                    }
                }
            }
            let open = cur.open.as_mut().expect("opened above");
            // Where reading goes on after the damage, and why.
            let (to, why) = match open.read(cur.seq, &seg.holes) {
                Ok(readings) => {
                    let seq = cur.seq;
                    cur.seq += 1;
                    return Some((seq, readings));
                }
                Err(Unreadable::Hole { to, new, why }) => {
                    if let Some(hole) = new {
                        self.note_hole(seg.first, hole);
                    }
                    (to.min(seg.end), why)
                }
                Err(Unreadable::Rest(why)) => {
                    cur.open = None;
                    (seg.end, why)
                }
                Err(Unreadable::Io(e)) => {
                    // Read again from the segment's start next time.
                    cur.open = None;
                    warn_unread(cur, seg.first, &e);
                    return None;
                }
            };
            // Never past this lane's limit: the records after it are the other lane's.
            let (from, counted) = (cur.seq, self.skip(cur, to.min(limit), true));
            if counted > 0 {
                tracing::error!(
                    segment = seg.first,
                    record = from,
                    records_skipped = counted,
                    error = %why,
                    "disk buffer record unreadable; skipping it, reading goes on after it"
                );
            }
        }
    }

    /// Moves `cur` on to `to` past records it did not read, noting them skipped: once the head
    /// reaches them they are settled ([`State::pass_skipped`]), with nothing taken after them.
    /// If they are `lost` (damaged, or their file gone), those no reader skipped before (the
    /// other lane, a reader before a reload, the scan at open) are counted; how many.
    fn skip(&self, cur: &mut Cursor, to: u64, lost: bool) -> u64 {
        if to <= cur.seq {
            return 0;
        }
        let mut st = self.state.lock().unwrap();
        let new = if lost { st.not_skipped(cur.seq..to) } else { 0 };
        st.skipped.push(cur.seq..to);
        drop(st);
        cur.seq = to;
        self.stats.corrupt_records.fetch_add(new, Ordering::Relaxed);
        new
    }

    /// Notes damage found while reading segment `first`, so that a later walk through it (a
    /// reader made anew, a read again after an I/O error, the other lane) jumps over it.
    fn note_hole(&self, first: u64, hole: Hole) {
        let mut st = self.state.lock().unwrap();
        if let Some(s) = st.segments.iter_mut().find(|s| s.first == first) {
            if !s
                .holes
                .iter()
                .any(|h| h.from <= hole.from && hole.from < h.to)
            {
                s.holes.push(hole);
                s.holes.sort_unstable_by_key(|h| h.from);
            }
        }
    }

    /// Whether `seg`, whose file is gone, is still the buffer's (not dropped by `drop_oldest`,
    /// which counts its own): its records are lost. Said once.
    fn lost_segment(&self, seg: &SegmentView) -> bool {
        let mut st = self.state.lock().unwrap();
        let Some(s) = st.segments.iter_mut().find(|s| s.first == seg.first) else {
            return false;
        };
        if !s.gone {
            s.gone = true;
            tracing::error!(
                segment = seg.first,
                "disk buffer segment file is gone (removed by someone else?); its records are lost, reading goes on after it"
            );
        }
        true
    }

    /// Marks everything in `taken` acknowledged: the sink stored it (or refused it for good).
    /// Segments wholly acknowledged are removed.
    pub fn ack(&self, reader: &mut Reader, taken: Taken) {
        let mut st = self.state.lock().unwrap();
        st.landed(&taken.seqs);
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
        match (reader.live.as_mut(), taken.live_to) {
            (Some(live), Some(to)) => live.acked = live.acked.max(to),
            // Taken from a live lane that has merged since (a write settled after the one
            // that finished the backlog): settlements come in order, so all below is stored.
            (None, Some(to)) => st.head = st.head.max(to),
            _ => {}
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
        self.settle(st);
    }

    /// Gives `taken` back without acknowledging it (the shutdown stopped its write): its
    /// records stay on disk for the next start, but those `drop_oldest` dropped meanwhile are
    /// dropped now, unless `settled(i)` says the write stored (or refused) record `i`.
    pub fn untake(&self, taken: &Taken, settled: impl Fn(usize) -> bool) {
        let mut st = self.state.lock().unwrap();
        st.landed(&taken.seqs);
        let dropped: u64 = (taken.seqs.iter().zip(&taken.records).enumerate())
            .filter(|(i, (seq, _))| **seq < st.head && !settled(*i))
            .map(|(_, (_, r))| r.len() as u64)
            .sum();
        if dropped > 0 {
            self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
            tracing::warn!(
                readings = dropped,
                "readings of the disk buffer's oldest, dropped while their write was in progress, were not stored either: dropped (when_full = \"drop_oldest\")"
            );
        }
    }

    /// After the head moved: passes the skipped records at it, counts what the segments it
    /// passed lost, removes them, and records the head.
    fn settle(&self, mut st: std::sync::MutexGuard<'_, State>) {
        st.pass_skipped();
        let head = st.head;
        st.marks.forget_below(head);
        // What the segments the head passed held beyond the readings acknowledged was in
        // records skipped (damage found while reading, a file removed): lost, not pending.
        let mut lost = 0;
        for s in st.segments.iter_mut().filter(|s| s.end() <= head) {
            lost += s.readings.saturating_sub(s.acked_readings);
            s.acked_readings = s.readings;
        }
        if lost > 0 {
            self.stats.lost.fetch_add(lost, Ordering::Relaxed);
        }
        let removed = st.remove_delivered(&self.dir);
        // A full Block buffer whose only segment is now delivered: its writer rolls it away.
        let only_delivered = st.segments.len() == 1 && st.segments[0].end() <= st.head;
        let head = st.head;
        st.ledger.record(head, self.fsync);
        drop(st);
        if removed || only_delivered {
            self.freed.notify_all();
        }
    }
}
