//! The disk buffer's ledger: the `head` file, which says where the first record not yet
//! acknowledged is. Written and parsed here, nowhere else.
//!
//! Layout: two 16-byte slots, written in turn, each `seq u64 | crc32(seq) u32 | 0u32`,
//! little-endian; the valid slot with the larger `seq` is the head. Written without fsync (at
//! most once a second with `fsync`): losing it to a power cut only re-sends acknowledged
//! records, which every sink of this project drops by reading id. A torn slot fails its CRC and
//! the other one counts.

use std::{
    fs::File,
    io,
    os::unix::fs::FileExt,
    path::Path,
    time::{Duration, Instant},
};

/// While writes of the ledger keep failing, how often that is said again.
const FAILING_REMINDER: Duration = Duration::from_secs(3600);

/// The open `head` file.
pub struct Ledger {
    file: File,
    /// The slot the next write goes to.
    slot: u64,
    synced: Instant,
    /// While writes fail: when that was last said, and the failures since.
    failing: Option<(Instant, u64)>,
}

impl Ledger {
    /// Opens (creating) `dir/head`, and reads the head it holds (0 for a new buffer).
    pub fn open(dir: &Path) -> io::Result<(Ledger, u64)> {
        let file = crate::own_files::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("head"))?;
        let head = Self::read(&file)?;
        let ledger = Ledger {
            file,
            slot: 0,
            synced: Instant::now(),
            failing: None,
        };
        Ok((ledger, head))
    }

    /// The head `file` (a `head` file, opened for reading) holds; 0 if neither slot is valid.
    pub(super) fn read(file: &File) -> io::Result<u64> {
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

    /// Records `head` in the next slot; with `fsync`, syncs it at most once a second.
    pub fn record(&mut self, head: u64, fsync: bool) {
        let slot = self.slot;
        self.slot ^= 1;
        let mut rec = [0u8; 16];
        rec[0..8].copy_from_slice(&head.to_le_bytes());
        rec[8..12].copy_from_slice(&crc32fast::hash(&head.to_le_bytes()).to_le_bytes());
        // Said when it starts, hourly while it lasts, and when it ends: a card remounted
        // read-only fails every write, and the readings drained meanwhile would each have
        // logged it (thousands of lines over the error that matters).
        match (self.file.write_at(&rec, slot * 16), &mut self.failing) {
            (Ok(_), None) => {}
            (Ok(_), Some((_, n))) => {
                tracing::info!(
                    failures = *n,
                    "recording the disk buffer's position works again"
                );
                self.failing = None;
            }
            (Err(e), None) => {
                tracing::warn!(error = %e, "recording the disk buffer's position failed; delivered readings may be sent again after a restart (while it keeps failing, this is said hourly)");
                self.failing = Some((Instant::now(), 1));
            }
            (Err(e), Some((said, n))) => {
                *n += 1;
                if said.elapsed() >= FAILING_REMINDER {
                    tracing::warn!(error = %e, failures = *n, "recording the disk buffer's position still fails");
                    *said = Instant::now();
                }
            }
        }
        if fsync && self.synced.elapsed() >= Duration::from_secs(1) {
            let _ = self.file.sync_data();
            self.synced = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_ledger_that_cannot_be_written_is_said_once_not_per_acknowledgement() {
        let dir = tempfile::tempdir().unwrap();
        let (_, head) = Ledger::open(dir.path()).unwrap();
        assert_eq!(head, 0);
        // As on a card remounted read-only: the file opens, every write fails.
        let mut ledger = Ledger {
            file: File::open(dir.path().join("head")).unwrap(),
            slot: 0,
            synced: Instant::now(),
            failing: None,
        };
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for head in 1..=1000 {
                ledger.record(head, true);
            }
            // Writable again (the card replaced, the file system remounted).
            ledger.file = crate::own_files::options()
                .write(true)
                .open(dir.path().join("head"))
                .unwrap();
            ledger.record(1001, true);
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("position failed").count(), 1, "{text}");
        assert_eq!(text.matches("still fails").count(), 0, "{text}");
        assert!(text.contains("works again failures=1000"), "{text}");
        let (_, head) = Ledger::open(dir.path()).unwrap();
        assert_eq!(head, 1001);
    }
}
