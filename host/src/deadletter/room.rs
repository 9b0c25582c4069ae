//! The room a dead-letter directory has: the bytes its files hold in all, and those of each
//! device's files. Blocking file I/O (a count lists the directory).
//!
//! Three bounds hold a device that sends readings a sink always refuses:
//! - the directory's, `dead_letter_max_size`: what of the gateway's own device does not fit
//!   is held (and the sink with it) until an operator makes room, so that nothing is lost:
//!   its readings have nowhere else to go;
//! - each other device's share, `dead_letter_device_share`: what a device's files would take
//!   past it is not kept and not held, its source is told the readings were refused. Without
//!   it one device (one stolen key, one broken firmware) fills the directory, and then holds
//!   the sink, and every device's readings with it, for good. A device of a `coaps-ingress`
//!   keeps what the server refused in its own dead-letter directory;
//! - the other devices' files fill the directory up to seven eighths at most
//!   ([`shared_max`]): past that their refused readings are not kept either, and the gateway's
//!   own device keeps the last eighth.
//!
//! A file's device is in its name, as the first 16 hex digits of the SHA-256 of the device's
//! name (`SECONDS-MICROS-N-OWNER.jsonl`), so that a count reads no file: an attacker's files
//! are many and small. A file of an earlier version (`SECONDS-MICROS-N.jsonl`) counts in the
//! directory's bytes only.

use sha2::{Digest, Sha256};
use std::{
    collections::HashMap,
    fs::DirEntry,
    io,
    path::Path,
    time::{Duration, Instant},
};

/// Whose files: the first 8 bytes of the SHA-256 of a device's name.
pub type Owner = u64;

/// The owner of `device`'s files.
pub fn owner(device: &str) -> Owner {
    let h = Sha256::digest(device.as_bytes());
    u64::from_be_bytes(h[..8].try_into().expect("8 bytes"))
}

/// The owner a dead-letter file's name says, if it says one.
pub fn owner_of(name: &str) -> Option<Owner> {
    let stem = name.strip_suffix(".jsonl")?;
    let mut parts = stem.split('-');
    let (_, _, _, key, none) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next(),
    );
    if none.is_some() || key.len() != 16 {
        return None;
    }
    u64::from_str_radix(key, 16).ok()
}

/// How old an unfinished `.NAME.tmp` file must be to be taken for one a crash left.
pub const STALE_TMP: Duration = Duration::from_secs(3600);

/// How long a count is trusted for a device past its share: files removed meanwhile (`gateway
/// dead-letters resend`, say) give it room again only once counted, and counting lists the
/// whole directory, which a device sending refused readings must not make the sink do for
/// each of them.
pub const RECOUNT_SHARE: Duration = Duration::from_secs(60);

/// Bytes in all and by owner.
#[derive(Debug, Default, Clone)]
struct Counted {
    total: u64,
    by_owner: HashMap<Owner, u64>,
}

impl Counted {
    fn of(&self, o: Owner) -> u64 {
        self.by_owner.get(&o).copied().unwrap_or(0)
    }

    fn add(&mut self, len: u64, owner: Option<Owner>) {
        self.total += len;
        if let Some(o) = owner {
            *self.by_owner.entry(o).or_default() += len;
        }
    }

    fn merge(&mut self, other: &Counted) {
        self.total += other.total;
        for (o, n) in &other.by_owner {
            *self.by_owner.entry(*o).or_default() += n;
        }
    }

    fn sub(&mut self, len: u64, owner: Option<Owner>) {
        self.total = self.total.saturating_sub(len);
        if let Some(o) = owner {
            if let Some(u) = self.by_owner.get_mut(&o) {
                *u = u.saturating_sub(len);
                if *u == 0 {
                    self.by_owner.remove(&o);
                }
            }
        }
    }
}

/// Why a file has no room.
#[derive(Debug)]
pub enum NoRoom {
    /// The directory is full, for a file that is held until there is room (of the gateway's
    /// own device, or of readings of several devices).
    Full(io::Error),
    /// Its device's files take their share, `used` of `share` bytes: it is not kept.
    Share { used: u64, share: u64 },
    /// The directory holds `total` bytes, and a file of a device with a share may fill it up
    /// to `max` ([`shared_max`]): it is not kept either.
    /// (Held, it would hold the sink for every device, once the files of a few devices at
    /// their shares fill the directory.)
    Crowded { total: u64, max: u64 },
    /// The directory could not be counted.
    Io(io::Error),
}

impl NoRoom {
    /// Why a file of a device is not kept, for the log; `None` if it is held.
    pub fn not_kept(&self) -> Option<String> {
        match self {
            NoRoom::Share { used, share } => Some(format!(
                "its dead-letter files hold {used} bytes, past its share of {share} (dead_letter_device_share)"
            )),
            NoRoom::Crowded { total, max } => Some(format!(
                "the dead-letter directory holds {total} bytes, and other devices' files may fill it up to {max} (dead_letter_max_size, less an eighth kept for the gateway's own device)"
            )),
            NoRoom::Full(_) | NoRoom::Io(_) => None,
        }
    }
}

/// The bytes a dead-letter directory holds, as last counted and added to since.
#[derive(Debug, Default)]
pub struct Room {
    /// What the directory holds, with the files being written; `None`: not counted yet.
    counted: Option<Counted>,
    /// When it was last counted.
    at: Option<Instant>,
    /// The files being written (reserved, not yet renamed into place), which a count does not
    /// see: added to each count.
    writing: Counted,
}

/// How full the files of devices with a share may make the directory: its last eighth is left
/// to the gateway's own device, whose refused readings are held when it is full (eight devices
/// at the default share would otherwise hold the sink through it).
pub fn shared_max(max: u64) -> u64 {
    max - max / 8
}

/// Whether `c` has room for a file of `len` bytes of `owner`, whose files may hold at most
/// `share` (`None`: no share, held when the directory is full; an empty directory takes such a
/// file of any size, since one larger than the bound could never be kept otherwise).
fn verdict(
    c: &Counted,
    len: u64,
    owner: Option<Owner>,
    share: Option<u64>,
    max: u64,
) -> Result<(), NoRoom> {
    if let (Some(o), Some(share)) = (owner, share) {
        let used = c.of(o);
        if used.saturating_add(len) > share {
            return Err(NoRoom::Share { used, share });
        }
        let most = shared_max(max);
        if c.total.saturating_add(len) > most {
            return Err(NoRoom::Crowded {
                total: c.total,
                max: most,
            });
        }
        return Ok(());
    }
    if c.total == 0 || c.total.saturating_add(len) <= max {
        return Ok(());
    }
    Err(NoRoom::Full(io::Error::new(
        io::ErrorKind::StorageFull,
        format!(
            "the dead-letter directory holds {} bytes and this batch needs {len} more, past its dead_letter_max_size of {max}: resend or remove its files (`gateway dead-letters list`, `resend`)",
            c.total
        ),
    )))
}

impl Room {
    /// Whether the last count, trusted for [`RECOUNT_SHARE`], says a file of `owner` (of no
    /// share when `share` is `None`) of at least `least` bytes is not kept: checked before
    /// the file's text is made, which costs what the batch holds.
    pub fn refuses(
        &self,
        least: u64,
        owner: Option<Owner>,
        share: Option<u64>,
        max: u64,
    ) -> Option<NoRoom> {
        let c = self.counted.as_ref().filter(|_| self.fresh())?;
        share?;
        verdict(c, least, owner, share, max).err()
    }

    fn fresh(&self) -> bool {
        self.at.is_some_and(|at| at.elapsed() < RECOUNT_SHARE)
    }

    /// Takes `len` bytes of the room of `dir` (at most `max` in all) for a file of `owner`,
    /// whose files may hold at most `share` bytes, and the files of all devices with a share
    /// at most [`shared_max`] (`share` `None`: the gateway's own device, or readings of several
    /// devices, which have no share and are held when the directory is full).
    ///
    /// The directory is counted again when a file that would be held does not fit (an
    /// operator may have made room); for one that would not be kept, at most every
    /// [`RECOUNT_SHARE`].
    pub fn reserve(
        &mut self,
        dir: &Path,
        len: u64,
        owner: Option<Owner>,
        max: u64,
        share: Option<u64>,
    ) -> Result<(), NoRoom> {
        let recount = match &self.counted {
            None => true,
            Some(c) => match verdict(c, len, owner, share, max) {
                Ok(()) => false,
                Err(_) if share.is_none() => true,
                Err(_) => !self.fresh(),
            },
        };
        if recount {
            let mut c = count(dir).map_err(NoRoom::Io)?;
            c.merge(&self.writing);
            self.counted = Some(c);
            self.at = Some(Instant::now());
        }
        let c = self.counted.as_mut().expect("counted");
        verdict(c, len, owner, share, max)?;
        c.add(len, owner);
        self.writing.add(len, owner);
        Ok(())
    }

    /// The file `len` bytes were reserved for is in place: a count sees it now.
    pub fn written(&mut self, len: u64, owner: Option<Owner>) {
        self.writing.sub(len, owner);
    }

    /// Gives back `len` bytes of `owner`'s, taken for a file that was not written.
    pub fn unreserve(&mut self, len: u64, owner: Option<Owner>) {
        self.writing.sub(len, owner);
        if let Some(c) = self.counted.as_mut() {
            c.sub(len, owner);
        }
    }

    /// A file of `owner` that held `old` bytes holds `new` now.
    pub fn resize(&mut self, old: u64, new: u64, owner: Option<Owner>) {
        if let Some(c) = self.counted.as_mut() {
            c.add(new, owner);
            c.sub(old, owner);
        }
    }
}

/// Bytes of the finished files in `dir`, in all and by owner (a file removed meanwhile, by
/// `gateway dead-letters resend` say, counts nothing). Not the `.NAME.tmp` files: one being
/// written now has its room reserved already, and one a crash left behind between its creation
/// and its rename, which `list` does not show, would take room for good; those older than
/// [`STALE_TMP`] are removed.
fn count(dir: &Path) -> io::Result<Counted> {
    let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
    let unfinished = |e: &DirEntry| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.starts_with('.') && name.ends_with(".tmp")
    };
    let mut c = Counted::default();
    let d = match std::fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) if gone(&e) => return Ok(c),
        Err(e) => return Err(e),
    };
    for e in d {
        if let Some(e) = e.as_ref().ok().filter(|e| unfinished(e)) {
            // Left by a crash: no write takes an hour. (Not sooner: `resend` runs beside the
            // service, whose write may be in progress.)
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|a| a > STALE_TMP));
            if stale {
                let _ = std::fs::remove_file(e.path());
            }
            continue;
        }
        let (e, len) = match e.and_then(|e| e.metadata().map(|m| (e, m.len()))) {
            Ok(found) => found,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        c.total += len;
        if let Some(o) = owner_of(&e.file_name().to_string_lossy()) {
            *c.by_owner.entry(o).or_default() += len;
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_name_says_its_owner_and_an_older_one_none() {
        let o = owner("pi-01");
        assert_ne!(o, owner("pi-02"));
        assert_eq!(
            owner_of(&format!("1764583200-000123-7-{o:016x}.jsonl")),
            Some(o)
        );
        for old in [
            "1764583200-000123-7.jsonl",
            "1764583200-000123-7-abc.jsonl",
            "1764583200-000123-7-0123456789abcdef-1.jsonl",
            "1764583200-000123-7-0123456789abcdeg.jsonl",
            "1764583200-000123-7-0123456789abcdef.json",
        ] {
            assert_eq!(owner_of(old), None, "{old}");
        }
    }

    /// Reserves in `room` as `DeadLetters` does (a share of 100 bytes for a device, none for
    /// `None`, 1000 in all), and writes the file (a count finds only files).
    fn file(room: &mut Room, dir: &Path, len: u64, o: Option<Owner>) -> Result<(), NoRoom> {
        let share = o.map(|_| 100);
        room.reserve(dir, len, o, 1000, share)?;
        let key = o.map(|o| format!("-{o:016x}")).unwrap_or_default();
        let n = std::fs::read_dir(dir).unwrap().count();
        std::fs::write(
            dir.join(format!("1-000001-{n}{key}.jsonl")),
            vec![0; len as usize],
        )
        .unwrap();
        room.written(len, o);
        Ok(())
    }

    #[test]
    fn a_device_keeps_its_share_the_devices_seven_eighths_and_only_the_own_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let devices: Vec<Option<Owner>> = (0..10).map(|i| Some(owner(&format!("d{i}")))).collect();
        let mut room = Room::default();
        // A device's files hold its share at most, its first one too.
        assert!(matches!(
            file(&mut room, dir, 101, devices[0]),
            Err(NoRoom::Share {
                used: 0,
                share: 100
            })
        ));
        file(&mut room, dir, 60, devices[0]).unwrap();
        file(&mut room, dir, 40, devices[0]).unwrap();
        match file(&mut room, dir, 1, devices[0]) {
            Err(
                e @ NoRoom::Share {
                    used: 100,
                    share: 100,
                },
            ) => {
                assert!(e.not_kept().unwrap().contains("dead_letter_device_share"))
            }
            other => panic!("{other:?}"),
        }
        // The devices fill the directory up to seven eighths (875 bytes), then the next is not
        // kept, though within its share.
        for d in &devices[1..9] {
            file(&mut room, dir, 95, *d).unwrap();
        }
        assert_eq!(room.counted.as_ref().unwrap().total, 860);
        match file(&mut room, dir, 20, devices[9]) {
            Err(
                e @ NoRoom::Crowded {
                    total: 860,
                    max: 875,
                },
            ) => {
                assert!(e.not_kept().unwrap().contains("dead_letter_max_size"))
            }
            other => panic!("{other:?}"),
        }
        // The gateway's own device (no share) has the rest, then is held.
        file(&mut room, dir, 140, None).unwrap();
        assert!(matches!(
            file(&mut room, dir, 1, None),
            Err(NoRoom::Full(_))
        ));
        // Both refusals are known from the count before the file's text is made.
        assert!(matches!(
            room.refuses(1, devices[0], Some(100), 1000),
            Some(NoRoom::Share { .. })
        ));
        assert!(matches!(
            room.refuses(1, devices[9], Some(100), 1000),
            Some(NoRoom::Crowded { .. })
        ));
        assert!(
            room.refuses(1, None, None, 1000).is_none(),
            "held ones are counted again"
        );
        // Room given back is room again.
        room.unreserve(40, devices[0]);
        room.unreserve(140, None);
        room.reserve(dir, 1, devices[9], 1000, Some(100))
            .expect("room for a device once the devices' part has it");
    }

    #[test]
    fn a_device_refused_again_does_not_make_the_directory_listed_again() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let (a, c) = (Some(owner("a")), Some(owner("c")));
        let mut room = Room::default();
        file(&mut room, dir, 100, a).unwrap();
        file(&mut room, dir, 900, None).unwrap();
        let counted = room.at;
        // Each refusal of a device past its share, or of one in the full directory, takes the
        // count it has (a listing of 650,000 files per refused reading held every device).
        for _ in 0..3 {
            assert!(room.reserve(dir, 1, a, 1000, Some(100)).is_err());
            assert!(room.reserve(dir, 1, c, 1000, Some(100)).is_err());
        }
        assert_eq!(room.at, counted, "not listed again");
        // A file that would be held is counted again at once: an operator may have made room.
        std::fs::remove_file(dir.join("1-000001-1.jsonl")).unwrap();
        room.reserve(dir, 1, None, 1000, None)
            .expect("the room an operator made");
        assert_ne!(room.at, counted);
    }

    #[test]
    fn a_file_being_written_keeps_its_room_across_a_count() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let o = owner("a");
        let a = Some(o);
        let mut room = Room::default();
        // Reserved by one thread, not yet in place, when another's file makes a count.
        room.reserve(dir, 90, a, 1000, Some(100)).unwrap();
        file(&mut room, dir, 950, None).unwrap_err();
        room.reserve(dir, 1, None, 1000, None).unwrap();
        let c = room.counted.as_ref().unwrap();
        assert_eq!((c.total, c.of(o)), (91, 90), "{c:?}");
        // Not written after all: the room comes back, once, and the device is forgotten.
        room.unreserve(90, a);
        let c = room.counted.as_ref().unwrap();
        assert_eq!((c.total, c.of(o), c.by_owner.len()), (1, 0, 0), "{c:?}");
        assert!(room.writing.by_owner.is_empty());
    }

    #[test]
    fn a_count_finds_each_owners_files() {
        let dir = tempfile::tempdir().unwrap();
        let o = owner("pi-01");
        std::fs::write(
            dir.path().join(format!("1-000001-0-{o:016x}.jsonl")),
            [0; 300],
        )
        .unwrap();
        std::fs::write(dir.path().join("1-000001-1.jsonl"), [0; 50]).unwrap();
        let c = count(dir.path()).unwrap();
        assert_eq!((c.total, c.of(o), c.by_owner.len()), (350, 300, 1));
        // Counted afresh, the device is past a share of 300 (and was counted as such).
        let mut room = Room::default();
        assert!(matches!(
            room.reserve(dir.path(), 1, Some(o), 1000, Some(300)),
            Err(NoRoom::Share { used: 300, .. })
        ));
        // Its files removed by another process: the count is trusted for RECOUNT_SHARE.
        std::fs::remove_file(dir.path().join(format!("1-000001-0-{o:016x}.jsonl"))).unwrap();
        assert!(room
            .reserve(dir.path(), 1, Some(o), 1000, Some(300))
            .is_err());
        room.at = Instant::now().checked_sub(RECOUNT_SHARE);
        room.reserve(dir.path(), 1, Some(o), 1000, Some(300))
            .expect("counted again");
    }
}
