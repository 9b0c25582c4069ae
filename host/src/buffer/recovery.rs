//! Opening a disk buffer: the directory lock, then what an earlier run left, checked segment by
//! segment. A torn tail (a crash or a power cut mid-write) is cut off, a damaged record in the
//! middle is skipped and counted, acknowledged segments are removed, and files that are not the
//! buffer's own are left alone: no damage found there stops a start. A file that cannot be
//! read (an I/O error, not damage) does: it is neither skipped nor set aside, and the start is
//! tried again once the read works.

use super::{
    disk::{BufferStats, DiskBuffer, Marks, Segment, State, WriterState},
    ledger::Ledger,
    segment,
};
use crate::config::BufferSettings;
use std::{
    collections::VecDeque,
    io,
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Condvar, Mutex},
};

impl DiskBuffer {
    /// Opens (creating if needed) the buffer in `dir`, recovering what an earlier run left:
    /// torn tails are cut off and counted, acknowledged segments removed.
    pub fn open(dir: &Path, settings: &BufferSettings) -> io::Result<DiskBuffer> {
        crate::own_files::create_dir_durably(dir)?;
        let lock = crate::own_files::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("lock"))?;
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
        let (ledger, mut head) = Ledger::open(dir)?;
        let mut segments: VecDeque<Segment> = VecDeque::new();
        let mut marks = Marks::default();
        let files = Self::segment_files(dir)?;
        // Segments are contiguous as written: records missing between two left are counted
        // lost (and cover what a cut tail or a file set aside between them cost). After the
        // last segment left, a cut tail or a file set aside counts one record each.
        let mut expected: Option<u64> = None;
        let mut unknown_losses = 0;
        for (i, (first, path)) in files.iter().enumerate() {
            let first = *first;
            // Below the head when the next one starts there: delivered, removed unread (a file
            // that cannot be read then stops no start). The next one's name counts only if it
            // begins as that segment: a stray file named as one says nothing.
            if files
                .get(i + 1)
                .is_some_and(|(next, p)| *next <= head && segment::begins_as(p, *next))
            {
                std::fs::remove_file(path)?;
                continue;
            }
            let Some((seg, torn)) = Self::scan(path, first, head, &stats)? else {
                unknown_losses += 1;
                continue;
            };
            if seg.records == 0 {
                unknown_losses += u64::from(torn);
                std::fs::remove_file(path)?;
                continue;
            }
            let from = expected.map(|e| e.max(head));
            if let Some(from) = from.filter(|f| *f < first) {
                stats
                    .corrupt_records
                    .fetch_add(first - from, Ordering::Relaxed);
                tracing::error!(
                    dir = %dir.display(),
                    first_record = from,
                    records = first - from,
                    "disk buffer records missing between its segments (a segment file removed, emptied, cut short or set aside); counted lost, the buffer goes on without them"
                );
            }
            if from.is_some() {
                unknown_losses = 0;
            }
            unknown_losses += u64::from(torn);
            expected = Some(seg.end());
            if seg.end() <= head {
                std::fs::remove_file(path)?;
                continue;
            }
            // Its records are no older than the file (made when its first was appended).
            let made = std::fs::metadata(path)
                .and_then(|m| m.created().or_else(|_| m.modified()))
                .unwrap_or_else(|_| std::time::SystemTime::now());
            marks.found(seg.first, made);
            segments.push_back(seg);
        }
        stats
            .corrupt_records
            .fetch_add(unknown_losses, Ordering::Relaxed);
        let next_seq = segments.back().map_or(head, Segment::end).max(head);
        // The head can be older than every segment left (its file is synced once a second at
        // most): start at the first record there is.
        if let Some(s) = segments.front().filter(|s| s.first > head) {
            tracing::warn!(
                dir = %dir.display(),
                first_record = head,
                records = s.first - head,
                "disk buffer records before its first segment are not there: delivered just before a crash (the head is saved once a second at most), or their segment file was removed while the gateway was stopped"
            );
            head = s.first;
        }
        // The holes the scan found and counted: skipped, and not counted again.
        let skipped = segments
            .iter()
            .flat_map(|s| s.holes.iter().map(|h| h.from..h.to))
            .collect();
        let state = State {
            segments,
            next_seq,
            head,
            skipped,
            in_flight: Default::default(),
            ledger,
            marks,
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

    /// Whether the buffer in `dir` holds records not yet acknowledged, found without taking its
    /// lock or changing anything (for a buffer that no sink of the config opens, which another
    /// gateway may be using): the head from the ledger, and the newest segments, scanned only
    /// where the head is inside one.
    pub fn holds_unsent(dir: &Path) -> io::Result<bool> {
        let head = match crate::own_files::open_regular(&dir.join("head")) {
            Ok(f) => Ledger::read(&f)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        for (first, path) in Self::segment_files(dir)?.iter().rev() {
            if *first < head {
                return Ok(segment::scan(path, *first, head)?
                    .is_some_and(|s| s.readings > s.acked_readings));
            }
            if std::fs::metadata(path)?.len() > segment::MAGIC.len() as u64 {
                return Ok(true);
            }
        }
        Ok(false)
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

    /// Reads a segment's records: damage in the middle is skipped record by record (and
    /// counted), a torn tail is cut off (and said: `true`; the caller counts what it cost). A
    /// file that is not a segment (bad magic, and no intact record after it) is renamed
    /// `NAME.damaged` (`NAME.N.damaged` if that is taken) and left out (`None`).
    fn scan(
        path: &Path,
        first: u64,
        head: u64,
        stats: &BufferStats,
    ) -> io::Result<Option<(Segment, bool)>> {
        let Some(scan) = segment::scan(path, first, head)? else {
            // Never over an earlier one: each may hold what someone wants to look at.
            let aside = (0..)
                .map(|n| match n {
                    0 => path.with_extension("seg.damaged"),
                    n => path.with_extension(format!("seg.{n}.damaged")),
                })
                .find(|p| p.symlink_metadata().is_err())
                .expect("a free name");
            tracing::error!(
                segment = %path.display(),
                moved_to = %aside.display(),
                "not a disk buffer segment (bad magic); moved aside, the buffer goes on without it"
            );
            std::fs::rename(path, &aside)?;
            return Ok(None);
        };
        if scan.magic_damaged {
            tracing::warn!(
                segment = %path.display(),
                "disk buffer segment's magic is damaged; reading the records that are intact"
            );
        }
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
        let torn = scan.valid_end < len;
        if torn {
            let cut = len - scan.valid_end;
            stats.corrupt_bytes.fetch_add(cut, Ordering::Relaxed);
            tracing::warn!(
                segment = %path.display(),
                at = scan.valid_end,
                bytes = cut,
                records_kept = scan.records,
                reason = %scan.tail_problem.as_deref().unwrap_or_default(),
                "disk buffer segment has a torn or corrupt tail (a crash or power cut mid-write, or damage); cutting it off"
            );
            let file = crate::own_files::options().write(true).open(path)?;
            file.set_len(scan.valid_end)?;
            file.sync_all()?;
        }
        let seg = Segment {
            first,
            records: scan.records,
            bytes: scan.valid_end.min(len),
            readings: scan.readings,
            acked_readings: scan.acked_readings,
            holes: scan.holes,
            gone: false,
        };
        Ok(Some((seg, torn)))
    }
}
