//! Dead letters: the batches a sink refused for good, kept in files under the sink's data
//! directory (`data_dir/INSTANCE/dead-letter/`) instead of being dropped, to be read and sent
//! again with `gateway dead-letters`. Blocking file I/O.
//!
//! Files of one device each per refused batch, `SECONDS-MICROS-N-OWNER.jsonl` (OWNER: which device,
//! see [`room`]), written whole and synced before it is renamed into place, so a reader never
//! sees half of one. JSON Lines, readable with `jq`:
//!
//! ```text
//! {"gateway_dead_letter":1,"sink":"db","plugin":"mysql","refused_at":"2026-12-01T10:00:00.000000Z","error":"...","readings":2,"device":"pi-01"}
//! {"id":"0192...","time_us":1764583200000000,"device":"pi-01","sensor":"28-0001","name":"temperature","unit":"Cel","value":{"float":21.5}}
//! ```
//!
//! Values are tagged by type so that nothing changes on the way back: `{"float": 1.5}` (or
//! `"NaN"`, `"inf"`, `"-inf"`), `{"int": 3}`, `{"bool": true}`, `{"text": "..."}`,
//! `{"bytes": "00ff"}` (hex).
//!
//! The directory is bounded (`dead_letter_max_size`, 256 MiB by default): a peer whose every
//! reading a sink refuses must not fill the disk that the buffers and stores share. A batch
//! that would not fit is not dropped: `put` fails, and the sink holds the batch (and so its
//! sources) until an operator resends or removes files with `gateway dead-letters`. So that
//! one device cannot hold the sink that way for every other, each device but the gateway's
//! own has a share of the directory (`dead_letter_device_share`, an eighth of it by default):
//! what a device refused past its share is not kept here, and not held either ([`room`]).

pub mod room;

use gateway_sdk::{Label, Reading, ReadingId, Timestamp, Value};
use serde_json::{json, Value as J};
use std::{
    collections::{HashSet, VecDeque},
    fs::File,
    io::{self, BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

/// How many of the reading ids it kept last a [`DeadLetters`] remembers.
const RECENT_IDS: usize = 4096;

/// A reading's key: its id and device (ids are unique per device, as the stores key them; no
/// device's refused reading may hide another's).
type Key = ([u8; 16], String);

fn key(r: &Reading) -> Key {
    (r.id.0, r.device.as_str().to_owned())
}

/// The keys of the readings kept last, oldest first.
#[derive(Debug, Default)]
struct Recent {
    ids: HashSet<Key>,
    order: VecDeque<Key>,
}

impl Recent {
    fn add(&mut self, id: Key) {
        if self.ids.insert(id.clone()) {
            self.order.push_back(id);
            if self.order.len() > RECENT_IDS {
                let old = self.order.pop_front().expect("not empty");
                self.ids.remove(&old);
            }
        }
    }
}

/// At least how many bytes the file of `readings` takes (each line holds at least an id, a
/// time and field names), found without making its text.
fn least_len(readings: &[Reading]) -> u64 {
    readings
        .iter()
        .map(|r| {
            let value = match &r.value {
                Value::Text(t) => t.len(),
                Value::Bytes(b) => 2 * b.len(),
                _ => 0,
            };
            let labels = r.device.len() + r.sensor.len() + r.name.len() + r.unit.len();
            (100 + labels + value) as u64
        })
        .sum()
}

/// `readings` in parts of at most `most` bytes by [`least_len`] each, each of one reading at
/// least (`None`: one part).
fn parts(readings: &[Reading], most: Option<u64>) -> Vec<&[Reading]> {
    let Some(most) = most else {
        return vec![readings];
    };
    let (mut out, mut start, mut len) = (Vec::new(), 0, 0);
    for (i, r) in readings.iter().enumerate() {
        let l = least_len(std::slice::from_ref(r));
        if i > start && len + l > most {
            out.push(&readings[start..i]);
            (start, len) = (i, 0);
        }
        len += l;
    }
    if start < readings.len() {
        out.push(&readings[start..]);
    }
    out
}

/// The first line of a dead-letter file.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// The sink instance that refused the batch.
    pub sink: String,
    /// Its plugin.
    pub plugin: String,
    /// When.
    pub refused_at: String,
    /// What the sink said.
    pub error: String,
    /// How many readings follow.
    pub readings: usize,
    /// Whose they are, when they are all of one device (files of earlier versions do not say).
    pub device: Option<String>,
}

/// The dead-letter directory of one sink.
#[derive(Debug)]
pub struct DeadLetters {
    dir: PathBuf,
    sink: String,
    plugin: String,
    seq: AtomicU64,
    recent: Mutex<Recent>,
    /// The keys of the readings it did not keep last ([`Kept::not_kept`]).
    dropped: Mutex<Recent>,
    /// Files' texts made (for the tests: a refusal known from the count makes none).
    #[cfg(test)]
    encoded: AtomicU64,
    /// Most bytes the directory may hold (a reload sets it anew: [`DeadLetters::set_max_size`]).
    max_size: AtomicU64,
    /// Most bytes a device's files may hold; 0: an eighth of `max_size`.
    share: AtomicU64,
    /// The gateway's own device, which has no share.
    own_device: Option<String>,
    /// The bytes it holds ([`room::Room`]). Files removed by `gateway dead-letters` are seen at
    /// the next count, made when a batch would not fit by this one.
    room: Mutex<room::Room>,
}

/// What [`DeadLetters::put_new`] did with a refused batch.
#[derive(Debug, Default)]
pub struct Kept {
    /// The files it wrote (each of one device), each with how many readings it keeps.
    pub files: Vec<(PathBuf, usize)>,
    /// Readings it did not keep because it kept them already, or did not keep them lately.
    pub again: usize,
    /// Readings it did not keep, by device (with why): their device's files take its share of
    /// the directory (`dead_letter_device_share`), or the directory is full.
    pub not_kept: Vec<(String, usize, String)>,
    /// Readings it could not keep now, to be held until it can (the directory full for the
    /// gateway's own device, or not writable): the ones to offer again, alone.
    pub held: Vec<Reading>,
    /// Why (the first error), if any is held.
    pub error: Option<io::Error>,
}

impl Kept {
    /// Readings in the files written.
    pub fn kept(&self) -> usize {
        self.files.iter().map(|(_, n)| n).sum()
    }

    /// Readings not kept.
    pub fn not_kept(&self) -> usize {
        self.not_kept.iter().map(|(_, n, _)| n).sum()
    }
}

fn value(v: &Value) -> J {
    match v {
        Value::Float(f) if f.is_finite() => json!({ "float": f }),
        Value::Float(f) if f.is_nan() => json!({ "float": "NaN" }),
        Value::Float(f) => json!({ "float": if *f > 0.0 { "inf" } else { "-inf" } }),
        Value::Int(i) => json!({ "int": i }),
        Value::Bool(b) => json!({ "bool": b }),
        Value::Text(t) => json!({ "text": t.as_str() }),
        Value::Bytes(b) => {
            json!({ "bytes": b.iter().map(|x| format!("{x:02x}")).collect::<String>() })
        }
    }
}

fn parse_value(j: &J) -> Option<Value> {
    let (kind, v) = j.as_object()?.iter().next()?;
    Some(match (kind.as_str(), v) {
        ("float", J::String(s)) => Value::Float(match s.as_str() {
            "NaN" => f64::NAN,
            "inf" => f64::INFINITY,
            "-inf" => f64::NEG_INFINITY,
            _ => return None,
        }),
        ("float", v) => Value::Float(v.as_f64()?),
        ("int", v) => Value::Int(v.as_i64()?),
        ("bool", v) => Value::Bool(v.as_bool()?),
        ("text", v) => Value::Text(v.as_str()?.into()),
        ("bytes", v) => {
            let s = v.as_str()?.as_bytes();
            if !s.len().is_multiple_of(2) {
                return None;
            }
            let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
            let bytes: Option<Vec<u8>> = s
                .chunks(2)
                .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
                .collect();
            Value::Bytes(bytes?.into())
        }
        _ => return None,
    })
}

fn reading_json(r: &Reading) -> J {
    json!({
        "id": r.id.to_string(),
        "time_us": r.time.as_micros(),
        "device": r.device.as_str(),
        "sensor": r.sensor.as_str(),
        "name": r.name.as_str(),
        "unit": r.unit.as_str(),
        "value": value(&r.value),
    })
}

fn parse_reading(j: &J) -> Option<Reading> {
    let s = |k: &str| j.get(k).and_then(J::as_str).map(Label::from);
    Some(Reading {
        id: ReadingId::parse(j.get("id")?.as_str()?)?,
        time: Timestamp(j.get("time_us")?.as_i64()?),
        device: s("device")?,
        sensor: s("sensor")?,
        name: s("name")?,
        unit: s("unit")?,
        value: parse_value(j.get("value")?)?,
    })
}

impl DeadLetters {
    /// The dead letters of sink instance `sink` (plugin `plugin`), kept in `dir`.
    pub fn new(dir: PathBuf, sink: &str, plugin: &str) -> Self {
        DeadLetters {
            dir,
            sink: sink.to_owned(),
            plugin: plugin.to_owned(),
            seq: AtomicU64::new(0),
            recent: Mutex::new(Recent::default()),
            dropped: Mutex::new(Recent::default()),
            #[cfg(test)]
            encoded: AtomicU64::new(0),
            max_size: AtomicU64::new(crate::config::default::DEAD_LETTER_MAX_SIZE),
            share: AtomicU64::new(0),
            own_device: None,
            room: Mutex::new(room::Room::default()),
        }
    }

    /// The same, for a gateway whose own device is `device` (it has no share of the directory).
    pub fn with_own_device(mut self, device: &str) -> Self {
        self.own_device = Some(device.to_owned());
        self
    }

    /// The same, each device holding at most `share` bytes (`None`: an eighth of the
    /// directory's most).
    pub fn with_device_share(self, share: Option<u64>) -> Self {
        self.set_device_share(share);
        self
    }

    /// Each device holds at most `share` bytes from now on (a reload).
    pub fn set_device_share(&self, share: Option<u64>) {
        self.share.store(share.unwrap_or(0), Ordering::Relaxed);
    }

    /// Most bytes the files of `device` may hold; `None` for the gateway's own device, which
    /// has no share (and whose readings are held when the directory is full).
    fn share_of(&self, device: &str) -> Option<u64> {
        if self.own_device.as_deref() == Some(device) {
            return None;
        }
        Some(match self.share.load(Ordering::Relaxed) {
            0 => self.max_size() / 8,
            s => s,
        })
    }

    /// The same, holding at most `max_size` bytes.
    pub fn with_max_size(self, max_size: u64) -> Self {
        self.set_max_size(max_size);
        self
    }

    /// Holds at most `max_size` bytes from now on (a reload that changed
    /// `dead_letter_max_size` of a sink whose directory is shared on).
    pub fn set_max_size(&self, max_size: u64) {
        self.max_size.store(max_size, Ordering::Relaxed);
    }

    fn max_size(&self) -> u64 {
        self.max_size.load(Ordering::Relaxed)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps the readings of a refused batch that this directory did not keep lately (among
    /// its last 4,096 readings), in files of one device each, returned once durably on disk. A
    /// reading is refused again when the batch that held it is narrowed down
    /// (`coaps-ingress`'s sink refuses it in each half a device sends again that holds it): it
    /// is kept once. Readings of a device whose files take its share, or of any device but the
    /// gateway's own when the directory is full, are not kept ([`Kept::not_kept`]); nor are
    /// they counted again when they come again. Readings of a device whose file cannot be
    /// written, or of the gateway's own device when the directory is full, are held
    /// ([`Kept::held`], [`Kept::error`]): the caller offers those again, and only those (the
    /// memories of readings kept and not kept hold 4,096 each; a batch may be larger). A
    /// device's readings go into files of at most half its share each (by `least_len`), so
    /// that a batch larger than its share is kept in part, not refused whole.
    pub fn put_new(&self, error: &str, readings: &[Reading]) -> Kept {
        let mut kept = Kept::default();
        let mut devices: indexmap::IndexMap<&str, Vec<Reading>> = indexmap::IndexMap::new();
        {
            let recent = self.recent.lock().expect("recent ids");
            let dropped = self.dropped.lock().expect("dropped ids");
            for r in readings {
                let k = key(r);
                if recent.ids.contains(&k) || dropped.ids.contains(&k) {
                    kept.again += 1;
                } else {
                    devices
                        .entry(r.device.as_str())
                        .or_default()
                        .push(r.clone());
                }
            }
        }
        for (device, all) in devices {
            // Parts in order; one refused for its device's share is tried again in halves
            // (its length was a lower bound: escapes and the header make it longer), so that
            // what fits is kept. Once a single reading is refused for the share, the device
            // is full for this batch: the rest costs no text (nor does a device the last count
            // says is past its share: `Room::refuses`).
            let mut todo: Vec<&[Reading]> = parts(&all, self.share_of(device).map(|s| s / 2));
            todo.reverse();
            let mut full: Option<String> = None;
            while let Some(new) = todo.pop() {
                let why = match &full {
                    Some(why) => why.clone(),
                    None => match self.keep(error, Some(device), new) {
                        Ok(path) => {
                            let mut recent = self.recent.lock().expect("recent ids");
                            for r in new {
                                recent.add(key(r));
                            }
                            kept.files.push((path, new.len()));
                            continue;
                        }
                        // Held: the others are settled all the same.
                        Err(room::NoRoom::Full(e) | room::NoRoom::Io(e)) => {
                            kept.held.extend_from_slice(new);
                            kept.error.get_or_insert(e);
                            continue;
                        }
                        Err(room::NoRoom::Share { .. }) if new.len() > 1 => {
                            let (a, b) = new.split_at(new.len() / 2);
                            todo.extend([b, a]);
                            continue;
                        }
                        Err(no) => {
                            let why = no.not_kept().unwrap_or_default();
                            if matches!(no, room::NoRoom::Share { .. }) {
                                full = Some(why.clone());
                            }
                            why
                        }
                    },
                };
                let mut dropped = self.dropped.lock().expect("dropped ids");
                for r in new {
                    dropped.add(key(r));
                }
                match kept.not_kept.last_mut() {
                    Some((d, n, _)) if d == device => *n += new.len(),
                    _ => kept.not_kept.push((device.to_owned(), new.len(), why)),
                }
            }
        }
        kept
    }

    /// Keeps a refused batch in one file: returns once it is durably on disk. Fails, keeping
    /// nothing, when the directory has no room for it (`dead_letter_max_size`), or its device
    /// (when all its readings are of one) no share left.
    pub fn put(&self, error: &str, readings: &[Reading]) -> io::Result<PathBuf> {
        let device = readings.first().map(|r| r.device.as_str());
        let one = device.filter(|d| readings.iter().all(|r| r.device.as_str() == *d));
        self.keep(error, one, readings).map_err(|e| match e {
            room::NoRoom::Full(e) | room::NoRoom::Io(e) => e,
            no => io::Error::new(
                io::ErrorKind::QuotaExceeded,
                no.not_kept().unwrap_or_default(),
            ),
        })
    }

    /// Keeps `readings`, all of `device` if it is given, in one file.
    fn keep(
        &self,
        error: &str,
        device: Option<&str>,
        readings: &[Reading],
    ) -> Result<PathBuf, room::NoRoom> {
        let now = Timestamp::now();
        let owner = device.map(room::owner);
        let share = device.and_then(|d| self.share_of(d));
        let least = least_len(readings);
        if let Some(no) = self.room().refuses(least, owner, share, self.max_size()) {
            return Err(no);
        }
        let name = format!(
            "{:010}-{:06}-{}{}.jsonl",
            now.as_micros() / 1_000_000,
            now.as_micros() % 1_000_000,
            self.seq.fetch_add(1, Ordering::Relaxed),
            owner.map(|o| format!("-{o:016x}")).unwrap_or_default(),
        );
        let text = self
            .encode(now, error, device, readings)
            .map_err(room::NoRoom::Io)?;
        let len = text.len() as u64;
        self.room()
            .reserve(&self.dir, len, owner, self.max_size(), share)?;
        let path = self.dir.join(&name);
        self.write_durably(&path, &text, Some((len, owner)))
            .map_err(room::NoRoom::Io)?;
        Ok(path)
    }

    fn room(&self) -> std::sync::MutexGuard<'_, room::Room> {
        self.room.lock().expect("dead-letter room")
    }

    /// Replaces dead-letter file `path` by one holding `readings` (some of its own: what a
    /// resend did not deliver), refused with `error`, under the same name: the file keeps its
    /// place among the others, and a crash leaves either the old file or the new one, never
    /// both. Takes no room of `dead_letter_max_size`: it holds fewer readings than the file it
    /// replaces, so it is never refused for a directory that is full.
    pub fn replace(&self, path: &Path, error: &str, readings: &[Reading]) -> io::Result<()> {
        let old = std::fs::symlink_metadata(path)?;
        if !old.is_file() {
            return Err(io::Error::other(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let owner = room::owner_of(&name);
        let device = readings.first().map(|r| r.device.as_str());
        let device = device.filter(|d| owner.is_some_and(|o| room::owner(d) == o));
        let text = self.encode(Timestamp::now(), error, device, readings)?;
        self.write_durably(path, &text, None)?;
        self.room().resize(old.len(), text.len() as u64, owner);
        Ok(())
    }

    /// A dead-letter file's text: its header (refused at `now` with `error`, the readings all
    /// of `device` if it is given), then a line per reading.
    fn encode(
        &self,
        now: Timestamp,
        error: &str,
        device: Option<&str>,
        readings: &[Reading],
    ) -> io::Result<Vec<u8>> {
        #[cfg(test)]
        self.encoded.fetch_add(1, Ordering::Relaxed);
        let mut header = json!({
            "gateway_dead_letter": 1,
            "sink": self.sink,
            "plugin": self.plugin,
            "refused_at": now.to_string(),
            "error": bounded(&crate::config::redact_known(error)),
            "readings": readings.len(),
        });
        // Redacted as the error is: a device name may come from `${file:...}` (the readings
        // below keep it: it is their data, not a message).
        if let Some(d) = device {
            header["device"] = J::from(crate::config::redact_known(d).as_ref());
        }
        let mut text = Vec::new();
        writeln!(text, "{header}")?;
        for r in readings {
            writeln!(text, "{}", reading_json(r))?;
        }
        Ok(text)
    }

    /// Writes `text` as `path` in the directory: whole to `.NAME.tmp`, synced, renamed over
    /// `path`, the directory synced. On an error no half file is left behind.
    ///
    /// `reserved`: the room [`room::Room::reserve`] took for it (its length and owner), given
    /// back if the file is not put in place, and marked written when it is, with the room held
    /// (a count meanwhile would see it in place and as being written: twice).
    fn write_durably(
        &self,
        path: &Path,
        text: &[u8],
        reserved: Option<(u64, Option<room::Owner>)>,
    ) -> io::Result<()> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::other("a dead-letter file has a name"))?
            .to_string_lossy();
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut placed = false;
        let written = (|| {
            crate::own_files::create_dir_durably(&self.dir)?;
            let mut file = crate::own_files::options()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            file.write_all(text)?;
            file.sync_all()?;
            match reserved {
                Some((len, owner)) => {
                    let mut room = self.room();
                    std::fs::rename(&tmp, path)?;
                    room.written(len, owner);
                }
                None => std::fs::rename(&tmp, path)?,
            }
            placed = true;
            File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() && !placed {
            // A disk that is full leaves no half file behind per retry.
            let _ = std::fs::remove_file(&tmp);
            if let Some((len, owner)) = reserved {
                self.room().unreserve(len, owner);
            }
        }
        // (In place but its directory not synced, the file is counted, and written again by
        // the retry: kept twice rather than not durably.)
        written
    }

    /// The dead-letter files, oldest first.
    pub fn files(&self) -> io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&self.dir) {
            // Regular files only: a FIFO named like one would hang every reader.
            Ok(d) => d
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "jsonl")
                        && !p
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        // By the time and sequence number in the name, as numbers: the sequence number has
        // no leading zeros (`...-10` sorts before `...-9` as text).
        files.sort_by_cached_key(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            let mut parts = name.trim_end_matches(".jsonl").split('-');
            let mut number = || parts.next().and_then(|n| n.parse::<u64>().ok());
            ((number(), number(), number()), name.into_owned())
        });
        Ok(files)
    }
}

/// The longest sink error a header keeps, in bytes: a third-party sink's error of any length
/// must not make the header longer than a reader takes ([`MAX_HEADER`]).
const MAX_ERROR: usize = 64 << 10;

/// `error`, cut at a character boundary to at most [`MAX_ERROR`] bytes and said to be cut.
fn bounded(error: &str) -> std::borrow::Cow<'_, str> {
    if error.len() <= MAX_ERROR {
        return error.into();
    }
    let mut end = MAX_ERROR;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [{} bytes more]", &error[..end], error.len() - end).into()
}

fn bad(path: &Path, n: usize, what: &str) -> String {
    format!("{}:{n}: {what}", path.display())
}

/// Reads the header line of a dead-letter file, leaving `lines` at its first reading.
fn read_header(
    path: &Path,
    lines: &mut impl Iterator<Item = io::Result<String>>,
) -> Result<Header, String> {
    let first = lines
        .next()
        .ok_or_else(|| bad(path, 1, "empty file"))?
        .map_err(|e| bad(path, 1, &e.to_string()))?;
    let h: J = serde_json::from_str(&first).map_err(|e| bad(path, 1, &e.to_string()))?;
    if h.get("gateway_dead_letter").and_then(J::as_u64) != Some(1) {
        return Err(bad(path, 1, "not a gateway dead-letter file (version 1)"));
    }
    let text = |k: &str| h.get(k).and_then(J::as_str).unwrap_or_default().to_owned();
    Ok(Header {
        sink: text("sink"),
        plugin: text("plugin"),
        refused_at: text("refused_at"),
        error: text("error"),
        readings: h.get("readings").and_then(J::as_u64).unwrap_or(0) as usize,
        device: h.get("device").and_then(J::as_str).map(str::to_owned),
    })
}

/// The longest header line a reader takes: a header is a few fields and the sink's error.
const MAX_HEADER: u64 = 1 << 20;
/// The longest reading line a reader takes: a reading of the largest value a disk buffer
/// holds (256 MiB of bytes, written as hex), and room for its fields.
const MAX_LINE: u64 = 2 * crate::buffer::segment::MAX_RECORD as u64 + (1 << 20);

/// The lines of the dead-letter file at `path`, opened as the files under `data_dir` are
/// (never through a link, which the service's user could point at `/dev/zero` or a FIFO for
/// an operator's `sudo gateway dead-letters show` to read for ever) and only if it is a
/// regular file, read no further than its length when opened; the first line no longer than
/// [`MAX_HEADER`], the others than [`MAX_LINE`] (a sparse file is a regular file of any
/// length without a newline).
fn lines(path: &Path) -> Result<impl Iterator<Item = io::Result<String>>, String> {
    let cannot = |e: io::Error| format!("{}: {e}", path.display());
    let f = crate::own_files::open_regular(path).map_err(cannot)?;
    let meta = f.metadata().map_err(cannot)?;
    trusted(path, &meta)?;
    let len = meta.len();
    let mut r = BufReader::new(f.take(len));
    let mut limit = MAX_HEADER;
    Ok(std::iter::from_fn(move || {
        let most = std::mem::replace(&mut limit, MAX_LINE);
        let mut line = Vec::new();
        match r.by_ref().take(most + 1).read_until(b'\n', &mut line) {
            Ok(0) => None,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                Some(if line.len() as u64 > most {
                    Err(io::Error::other(format!("a line longer than {most} bytes")))
                } else {
                    String::from_utf8(line).map_err(io::Error::other)
                })
            }
            Err(e) => Some(Err(e)),
        }
    }))
}

/// Refuses a dead-letter file that someone other than the gateway's user could have written:
/// the gateway writes them with mode 0600, and `resend` sends what they hold with the sink's
/// credentials. A file is taken if this user, root, or the owner of the `data_dir` it is in
/// owns it (`DATA_DIR/SINK/dead-letter/FILE`: root's `show` of the service's files), and
/// neither its group nor others may write it. Not the owner of its own directory: a member
/// of a group-writable `data_dir`'s group could move `SINK` aside and make one of their own,
/// files and all.
fn trusted(path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let data_dir_owner = path
        .ancestors()
        .nth(3)
        .filter(|d| !d.as_os_str().is_empty())
        .and_then(|d| std::fs::metadata(d).ok())
        .map(|m| m.uid());
    let uid = meta.uid();
    if gateway_sdk::trust::foreign_owner(meta) && Some(uid) != data_dir_owner {
        let (who, sudo) = match crate::own_files::user_name(uid) {
            Some(name) => (name.clone(), name),
            None => (format!("uid {uid}"), format!("'#{uid}'")),
        };
        return Err(format!(
            "{}: belongs to {who}, not to this user, root or the owner of the data_dir: if the gateway runs as {who}, run this as that user (`sudo -u {sudo} gateway ...`, or `systemd-run` as the README shows for a server); if not, the gateway did not write it: look at it before anything else",
            path.display(),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{}: its group or other users may write it (mode {:04o}), and the gateway writes its dead-letter files with mode 0600: whoever could write it could have put readings of any device in it; check it, then `chmod go-w` it",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Reads only the header of a dead-letter file (what `gateway dead-letters list` shows).
pub fn header(path: &Path) -> Result<Header, String> {
    read_header(path, &mut lines(path)?)
}

/// Reads a dead-letter file: its header and readings. The error names the line.
pub fn read(path: &Path) -> Result<(Header, Vec<Reading>), String> {
    let mut lines = lines(path)?;
    let header = read_header(path, &mut lines)?;
    let mut readings = Vec::with_capacity(header.readings.min(1 << 20));
    let owner = path
        .file_name()
        .and_then(|n| room::owner_of(&n.to_string_lossy()));
    // The last device found to be the file's: its readings follow one another.
    let mut checked: Option<gateway_sdk::Label> = None;
    for (i, line) in lines.enumerate() {
        let line = line.map_err(|e| bad(path, i + 2, &e.to_string()))?;
        let j: J = serde_json::from_str(&line).map_err(|e| bad(path, i + 2, &e.to_string()))?;
        let r = parse_reading(&j).ok_or_else(|| bad(path, i + 2, "not a reading"))?;
        // A file of one device's readings (its name says whose) holds no other's.
        if let Some(o) = owner.filter(|_| checked.as_ref() != Some(&r.device)) {
            if room::owner(&r.device) != o {
                return Err(bad(
                    path,
                    i + 2,
                    "a reading of another device than the file's name says",
                ));
            }
            checked = Some(r.device.clone());
        }
        readings.push(r);
    }
    if readings.len() != header.readings {
        return Err(format!(
            "{}: the header says {} readings, the file has {}",
            path.display(),
            header.readings,
            readings.len()
        ));
    }
    Ok((header, readings))
}

#[cfg(test)]
mod tests;
