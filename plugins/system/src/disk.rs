//! Free and total bytes of a filesystem, from `statvfs(3)` (through `rustix`, so that this crate
//! has no unsafe code of its own). Does I/O: one system call per path.

use crate::reject::Reject;
use std::path::Path;

/// What `statvfs` says of a filesystem's size, in blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocks {
    /// `f_blocks`: the filesystem's size, in `f_frsize` units.
    pub blocks: u64,
    /// `f_bavail`: the free blocks an unprivileged process may use (df's "Avail").
    pub available: u64,
    /// `f_frsize`: the unit of `blocks` and `available`.
    pub fragment_size: u64,
    /// `f_bsize`: the preferred I/O size, the unit where a filesystem leaves `f_frsize` at 0.
    pub block_size: u64,
}

/// A filesystem's size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskBytes {
    /// Bytes an unprivileged process may still write (root has the reserved blocks on top).
    pub free: u64,
    /// The filesystem's size.
    pub total: u64,
}

impl Blocks {
    /// The sizes in bytes, or why they cannot be right.
    pub fn bytes(self) -> Result<DiskBytes, Reject> {
        let unit = match self.fragment_size {
            0 => self.block_size,
            n => n,
        };
        if self.available > self.blocks {
            return Err(Reject::OutOfRange);
        }
        let total = self.blocks.checked_mul(unit).ok_or(Reject::OutOfRange)?;
        let free = self.available.checked_mul(unit).ok_or(Reject::OutOfRange)?;
        if i64::try_from(total).is_err() {
            return Err(Reject::OutOfRange);
        }
        Ok(DiskBytes { free, total })
    }
}

/// `statvfs` of the filesystem holding `path`.
pub fn statvfs(path: &Path) -> std::io::Result<Blocks> {
    let s = rustix::fs::statvfs(path)?;
    Ok(Blocks {
        blocks: s.f_blocks,
        available: s.f_bavail,
        fragment_size: s.f_frsize,
        block_size: s.f_bsize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_blocks_times_the_fragment_size() {
        let b = Blocks {
            blocks: 7_500_000,
            available: 5_000_000,
            fragment_size: 4096,
            block_size: 4096,
        };
        assert_eq!(
            b.bytes(),
            Ok(DiskBytes {
                free: 5_000_000 * 4096,
                total: 7_500_000 * 4096
            })
        );
        let no_frsize = Blocks {
            fragment_size: 0,
            block_size: 512,
            ..b
        };
        assert_eq!(no_frsize.bytes().unwrap().total, 7_500_000 * 512);
    }

    #[test]
    fn impossible_sizes_are_refused() {
        let b = Blocks {
            blocks: 10,
            available: 11,
            fragment_size: 4096,
            block_size: 4096,
        };
        assert_eq!(b.bytes(), Err(Reject::OutOfRange));
        let huge = Blocks {
            blocks: u64::MAX / 2,
            available: 0,
            ..b
        };
        assert_eq!(huge.bytes(), Err(Reject::OutOfRange));
    }

    #[test]
    fn statvfs_reads_a_real_filesystem() {
        let b = statvfs(Path::new("/")).unwrap().bytes().unwrap();
        assert!(b.total > 0 && b.free <= b.total, "{b:?}");
        assert!(statvfs(Path::new("/no/such/path/here")).is_err());
    }
}
