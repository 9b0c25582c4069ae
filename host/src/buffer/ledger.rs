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

/// The open `head` file.
pub struct Ledger {
    file: File,
    /// The slot the next write goes to.
    slot: u64,
    synced: Instant,
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
        };
        Ok((ledger, head))
    }

    fn read(file: &File) -> io::Result<u64> {
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
        if let Err(e) = self.file.write_at(&rec, slot * 16) {
            tracing::warn!(error = %e, "recording the disk buffer's position failed; delivered readings may be sent again after a restart");
        }
        if fsync && self.synced.elapsed() >= Duration::from_secs(1) {
            let _ = self.file.sync_data();
            self.synced = Instant::now();
        }
    }
}
