//! The layout of one segment file of a disk buffer, written and read here: an 8-byte magic,
//! then records `len u32 | crc32 u32 | seq u64 | count u32 | payload`, little-endian, the CRC
//! covering `seq`, `count` and the payload. Blocking file I/O.
//!
//! Damage costs only what it hits. A record whose header or checksum is wrong is skipped by
//! looking for the next intact record after it (`resync`): one with a plausible sequence
//! number, followed by the next record's header (or the end of the file), and a checksum that
//! holds, which random bytes match with odds of about 2^-32 times 2^-64 times 2^-64. (The CRC is
//! no MAC: bytes a reading carries could be made to look like a record; it takes damage to the
//! record holding them for them to be read as one.) Only damage with nothing intact after it (a write torn by a crash or a power cut) is
//! a tail, to be cut off.

use super::codec;
use gateway_sdk::Reading;
use std::{
    fs::File,
    io::{self, BufReader, Read, Seek, SeekFrom},
    os::unix::fs::FileExt,
    path::Path,
};

/// The file of the segment whose first record is `first`: its number, 20 digits, `.seg`.
pub fn path(dir: &Path, first: u64) -> std::path::PathBuf {
    dir.join(format!("{first:020}.seg"))
}

/// The first bytes of every segment.
pub const MAGIC: &[u8; 8] = b"GWBUF1\n\0";
/// Bytes of a record header.
pub const HEADER: usize = 20;
/// A record longer than this is taken for corruption (a reader allocates a record's length).
pub const MAX_RECORD: u32 = 256 << 20;
/// A writer cuts a record once its readings' [`super::codec::bound`] would pass this, so that
/// every record stays far below [`MAX_RECORD`] (only a single reading larger than this makes
/// a record of its own, and one larger than `MAX_RECORD` is refused before it is written).
pub const RECORD_BYTES: usize = 16 << 20;

fn crc(seq: u64, count: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&count.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Appends record `seq` to `buf`: a header, then what `payload` writes, `count` readings.
pub fn write_record(buf: &mut Vec<u8>, seq: u64, count: u32, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; HEADER]);
    payload(buf);
    let len = (buf.len() - start - HEADER) as u32;
    let sum = crc(seq, count, &buf[start + HEADER..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&sum.to_le_bytes());
    buf[start + 8..start + 16].copy_from_slice(&seq.to_le_bytes());
    buf[start + 16..start + 20].copy_from_slice(&count.to_le_bytes());
}

/// Whether the file at `path` begins as segment `first` does: the magic, then a header with
/// that sequence number. (A file named as a segment that is not one says nothing of where the
/// buffer's records are.)
pub fn begins_as(path: &Path, first: u64) -> bool {
    let mut b = [0u8; MAGIC.len() + HEADER];
    crate::own_files::open(path).is_ok_and(|f| f.read_exact_at(&mut b, 0).is_ok())
        && &b[..MAGIC.len()] == MAGIC
        && RecordHeader::parse(&b[MAGIC.len()..]).seq == first
}

/// A record's header.
struct RecordHeader {
    len: u32,
    sum: u32,
    seq: u64,
    count: u32,
}

impl RecordHeader {
    fn parse(h: &[u8]) -> RecordHeader {
        let word = |r: std::ops::Range<usize>| u32::from_le_bytes(h[r].try_into().unwrap());
        RecordHeader {
            len: word(0..4),
            sum: word(4..8),
            seq: u64::from_le_bytes(h[8..16].try_into().unwrap()),
            count: word(16..20),
        }
    }
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Reads the header of the record at the position, checking its length and sequence number:
/// `Ok(None)` at a clean end of file, `Err` with `InvalidData` for a torn or wrong header.
fn read_header(r: &mut impl Read, expect_seq: u64) -> io::Result<Option<RecordHeader>> {
    let mut h = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut h[got..])? {
            0 if got == 0 => return Ok(None),
            0 => return Err(invalid("torn record header")),
            n => got += n,
        }
    }
    let h = RecordHeader::parse(&h);
    if h.len > MAX_RECORD || h.seq != expect_seq {
        return Err(invalid(format!(
            "bad record header (length {}, sequence {}, expected {expect_seq})",
            h.len, h.seq
        )));
    }
    Ok(Some(h))
}

/// Reads the record at the position: `Ok(None)` at a clean end of file, `Err` with
/// `InvalidData` for a torn or corrupt record.
fn read_record(r: &mut impl Read, seq: u64) -> io::Result<Option<(u32, Vec<u8>)>> {
    let Some(h) = read_header(r, seq)? else {
        return Ok(None);
    };
    let mut payload = vec![0u8; h.len as usize];
    r.read_exact(&mut payload).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            invalid("torn record payload")
        } else {
            e
        }
    })?;
    if crc(seq, h.count, &payload) != h.sum {
        return Err(invalid("record checksum mismatch"));
    }
    Ok(Some((h.count, payload)))
}

/// Finds the first intact record at or after byte `from` of `file` whose sequence number is in
/// `min_seq..max_seq`: its offset and sequence number, or `None` if there is none before `len`.
fn resync(
    file: &File,
    from: u64,
    len: u64,
    min_seq: u64,
    max_seq: u64,
) -> io::Result<Option<(u64, u64)>> {
    const WINDOW: usize = 1 << 16;
    let mut buf = vec![0u8; WINDOW + HEADER];
    let mut at = from;
    while at + HEADER as u64 <= len {
        let want = buf.len().min((len - at) as usize);
        file.read_exact_at(&mut buf[..want], at)?;
        for i in 0..=want - HEADER {
            let h = RecordHeader::parse(&buf[i..i + HEADER]);
            let off = at + i as u64;
            let end = off + (HEADER as u64) + u64::from(h.len);
            if h.seq < min_seq || h.seq >= max_seq || h.len > MAX_RECORD || end > len {
                continue;
            }
            // Cheap before the payload is read: what follows must be the end of the file, too
            // little for a header (a torn tail), or the header of the next record.
            if len - end >= HEADER as u64 {
                let mut next = [0u8; HEADER];
                file.read_exact_at(&mut next, end)?;
                let next = RecordHeader::parse(&next);
                if next.seq != h.seq + 1 || next.len > MAX_RECORD {
                    continue;
                }
            }
            let mut payload = vec![0u8; h.len as usize];
            file.read_exact_at(&mut payload, off + HEADER as u64)?;
            if crc(h.seq, h.count, &payload) == h.sum {
                return Ok(Some((off, h.seq)));
            }
        }
        at += (want - HEADER + 1) as u64;
    }
    Ok(None)
}

/// Records `from..to` of a segment, lost to damage; reading goes on at byte `resume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hole {
    /// The first record lost.
    pub from: u64,
    /// The first intact record after the damage.
    pub to: u64,
    /// Where record `to` starts.
    pub resume: u64,
    /// Bytes skipped.
    pub bytes: u64,
}

/// What a scan of a segment found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Sequence numbers the segment spans (intact records and holes).
    pub records: u64,
    /// Readings in intact records.
    pub readings: u64,
    /// Readings in intact records below the scan's `acked_below`.
    pub acked_readings: u64,
    /// Damage in the middle, skipped.
    pub holes: Vec<Hole>,
    /// The end of the last intact record: anything after it is a torn tail.
    pub valid_end: u64,
    /// Why the tail (if any) is bad.
    pub tail_problem: Option<String>,
    /// The file's length when it was scanned.
    pub len: u64,
    /// The 8 bytes of magic are wrong, but the records after them read back intact.
    pub magic_damaged: bool,
}

/// Reads every record of the segment at `path` whose first record is `first`. `Ok(None)` if the
/// file is not a segment: bad magic, and no intact first record after it.
pub fn scan(path: &Path, first: u64, acked_below: u64) -> io::Result<Option<Scan>> {
    let file = crate::own_files::open(path)?;
    let len = file.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 16, &file);
    let mut magic = [0u8; 8];
    if len < MAGIC.len() as u64 {
        // Made, but its magic not (wholly) written: a crash, or a full disk, as the segment
        // was started. Empty, not damage.
        let mut head = Vec::new();
        r.read_to_end(&mut head)?;
        if MAGIC.starts_with(&head) {
            return Ok(Some(Scan::default()));
        }
    }
    // What cannot be read (EIO, say: often passing, on an ageing SD card) is an error, never
    // "not a segment": that moves the file and its records out of the buffer for good.
    let damage = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
        )
    };
    match r.read_exact(&mut magic) {
        Ok(()) => {}
        Err(e) if damage(&e) => return Ok(None),
        Err(e) => return Err(e),
    }
    let magic_damaged = &magic != MAGIC;
    if magic_damaged {
        // One flipped bit there cost every record of the segment. A file whose first record
        // reads back intact (its checksum covers its sequence number) is a segment; so is one
        // with an intact record of its own further on: a lost page of an SD card, or a first
        // page rewritten at a power cut, takes the magic and the first records with it, and
        // only those are lost (a hole, below).
        match read_record(&mut r, first) {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(None),
            Err(e) if damage(&e) => {
                let max_seq = first + len / HEADER as u64 + 1;
                if resync(&file, MAGIC.len() as u64, len, first, max_seq)?.is_none() {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
        r.seek(SeekFrom::Start(MAGIC.len() as u64))?;
    }
    let mut s = Scan {
        valid_end: MAGIC.len() as u64,
        len,
        magic_damaged,
        ..Scan::default()
    };
    let mut expected = first;
    loop {
        match read_record(&mut r, expected) {
            Ok(None) => break,
            Ok(Some((count, payload))) => {
                if expected < acked_below {
                    s.acked_readings += u64::from(count);
                }
                s.readings += u64::from(count);
                s.valid_end += (HEADER + payload.len()) as u64;
                expected += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let max_seq = expected + len / HEADER as u64 + 1;
                match resync(&file, s.valid_end + 1, len, expected + 1, max_seq)? {
                    Some((at, seq)) => {
                        s.holes.push(Hole {
                            from: expected,
                            to: seq,
                            resume: at,
                            bytes: at - s.valid_end,
                        });
                        r.seek(SeekFrom::Start(at))?;
                        s.valid_end = at;
                        expected = seq;
                    }
                    None => {
                        s.tail_problem = Some(e.to_string());
                        break;
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    s.records = expected - first;
    Ok(Some(s))
}

/// Why [`OpenSegment::read`] returned no readings.
#[derive(Debug)]
pub enum Unreadable {
    /// The record is in a hole: reading goes on at record `to`. `new` says whether the damage
    /// was found just now (the scan at open counted the others).
    Hole {
        /// The first intact record after it.
        to: u64,
        /// Found just now (not at open): the hole, for the reader to note.
        new: Option<Hole>,
        /// Why.
        why: String,
    },
    /// Nothing intact is left in the segment.
    Rest(String),
    /// The file could not be read (not damage: nothing is skipped).
    Io(io::Error),
}

/// A segment open for reading, at a record boundary.
pub struct OpenSegment {
    /// The segment's first record.
    pub first: u64,
    file: BufReader<File>,
    /// The record at the file's position.
    at: u64,
    /// The file's position.
    pos: u64,
}

impl OpenSegment {
    /// Opens the segment at `path` at its first record.
    pub fn open(path: &Path, first: u64) -> io::Result<OpenSegment> {
        let mut file = BufReader::with_capacity(1 << 16, crate::own_files::open(path)?);
        file.seek(SeekFrom::Start(MAGIC.len() as u64))?;
        Ok(OpenSegment {
            first,
            file,
            at: first,
            pos: MAGIC.len() as u64,
        })
    }

    fn jump(&mut self, pos: u64, at: u64) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(pos))?;
        self.pos = pos;
        self.at = at;
        Ok(())
    }

    /// After damage at the position: goes on at the next intact record. A read error that is
    /// not damage (EIO, say: a flaky SD card) skips nothing: it is [`Unreadable::Io`], and the
    /// record is read again later.
    fn recover(&mut self, why: io::Error) -> Unreadable {
        if !matches!(
            why.kind(),
            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
        ) {
            return Unreadable::Io(why);
        }
        let (damaged, damaged_at) = (self.at, self.pos);
        let file = self.file.get_ref();
        let found = file.metadata().and_then(|m| {
            let len = m.len();
            resync(
                file,
                self.pos + 1,
                len,
                self.at + 1,
                self.at + len / HEADER as u64 + 1,
            )
        });
        match found {
            Ok(Some((pos, to))) => match self.jump(pos, to) {
                Ok(()) => Unreadable::Hole {
                    to,
                    new: Some(Hole {
                        from: damaged,
                        to,
                        resume: pos,
                        bytes: pos - damaged_at,
                    }),
                    why: why.to_string(),
                },
                Err(e) => Unreadable::Io(e),
            },
            Ok(None) => Unreadable::Rest(why.to_string()),
            Err(e) => Unreadable::Io(e),
        }
    }

    /// Reads and decodes record `seq` (at or after the position; the records before it are
    /// skipped by their headers), leaving the file after it. `holes` are those the scan found.
    pub fn read(&mut self, seq: u64, holes: &[Hole]) -> Result<Vec<Reading>, Unreadable> {
        loop {
            if let Some(h) = holes.iter().find(|h| h.from <= self.at && self.at < h.to) {
                self.jump(h.resume, h.to).map_err(Unreadable::Io)?;
            }
            if self.at > seq {
                // `seq` itself was lost: the scan found and counted it.
                return Err(Unreadable::Hole {
                    to: self.at,
                    new: None,
                    why: String::new(),
                });
            }
            if self.at == seq {
                break;
            }
            match read_header(&mut self.file, self.at) {
                Ok(Some(h)) => {
                    self.file
                        .seek_relative(i64::from(h.len))
                        .map_err(Unreadable::Io)?;
                    self.pos += (HEADER as u64) + u64::from(h.len);
                    self.at += 1;
                }
                Ok(None) => return Err(Unreadable::Rest("segment ends early".into())),
                // Damage, or a read error there: that record is lost, not the rest.
                Err(e) => match self.recover(e) {
                    // Damage before `seq` (met before, on a walk from an earlier start): walk
                    // on from the intact record after it.
                    Unreadable::Hole { to, .. } if to <= seq => {}
                    other => return Err(other),
                },
            }
        }
        let (count, payload) = match read_record(&mut self.file, seq) {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(Unreadable::Rest(
                    "segment ends before its last record".into(),
                ))
            }
            Err(e) => return Err(self.recover(e)),
        };
        self.pos += (HEADER + payload.len()) as u64;
        self.at += 1;
        codec::decode(&payload, count as usize).map_err(|e| Unreadable::Hole {
            to: self.at,
            new: Some(Hole {
                from: seq,
                to: self.at,
                resume: self.pos,
                bytes: (HEADER + payload.len()) as u64,
            }),
            why: format!("record {seq} does not decode: {e}"),
        })
    }
}
