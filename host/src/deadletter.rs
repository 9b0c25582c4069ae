//! Dead letters: the batches a sink refused for good, kept in files under the sink's data
//! directory (`data_dir/INSTANCE/dead-letter/`) instead of being dropped, to be read and sent
//! again with `gateway dead-letters`. Blocking file I/O.
//!
//! One file per refused batch, `SECONDS-MICROS-N.jsonl`, written whole and synced before it is
//! renamed into place, so a reader never sees half of one. JSON Lines, readable with `jq`:
//!
//! ```text
//! {"gateway_dead_letter":1,"sink":"db","plugin":"mysql","refused_at":"2026-12-01T10:00:00.000000Z","error":"...","readings":2}
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
//! sources) until an operator resends or removes files with `gateway dead-letters`.

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
}

/// The dead-letter directory of one sink.
#[derive(Debug)]
pub struct DeadLetters {
    dir: PathBuf,
    sink: String,
    plugin: String,
    seq: AtomicU64,
    recent: Mutex<Recent>,
    /// Most bytes the directory may hold (a reload sets it anew: [`DeadLetters::set_max_size`]).
    max_size: AtomicU64,
    /// Bytes it holds, as last counted and added to since (`None`: not counted yet). Files
    /// removed by `gateway dead-letters` are seen at the next count, made when a batch would
    /// not fit by this one.
    used: Mutex<Option<u64>>,
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

/// How old an unfinished `.NAME.tmp` file must be to be taken for one a crash left.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(3600);

impl DeadLetters {
    /// The dead letters of sink instance `sink` (plugin `plugin`), kept in `dir`.
    pub fn new(dir: PathBuf, sink: &str, plugin: &str) -> Self {
        DeadLetters {
            dir,
            sink: sink.to_owned(),
            plugin: plugin.to_owned(),
            seq: AtomicU64::new(0),
            recent: Mutex::new(Recent::default()),
            max_size: AtomicU64::new(crate::config::default::DEAD_LETTER_MAX_SIZE),
            used: Mutex::new(None),
        }
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

    /// Bytes of the finished files in the directory (a file removed meanwhile, by `gateway
    /// dead-letters resend` say, counts nothing). Not the `.NAME.tmp` files: one being written
    /// now has its room reserved already, and one a crash left behind between its creation and
    /// its rename, which `list` does not show, would take room for good; those older than
    /// [`STALE_TMP`] are removed.
    fn count_bytes(&self) -> io::Result<u64> {
        let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
        let unfinished = |e: &std::fs::DirEntry| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with('.') && name.ends_with(".tmp")
        };
        let mut total = 0;
        match std::fs::read_dir(&self.dir) {
            Ok(d) => {
                for e in d {
                    if let Some(e) = e.as_ref().ok().filter(|e| unfinished(e)) {
                        // Left by a crash: no write takes an hour. (Not sooner: `resend` runs
                        // beside the service, whose write may be in progress.)
                        let stale = e
                            .metadata()
                            .and_then(|m| m.modified())
                            .is_ok_and(|t| t.elapsed().is_ok_and(|a| a > STALE_TMP));
                        if stale {
                            let _ = std::fs::remove_file(e.path());
                        }
                        continue;
                    }
                    match e.and_then(|e| e.metadata()) {
                        Ok(m) => total += m.len(),
                        Err(e) if gone(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(total)
            }
            Err(e) if gone(&e) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Takes `len` bytes of the directory's room, or says why there is none. An empty
    /// directory takes a batch of any size: one larger than the limit could never be kept
    /// otherwise, and would hold the sink for good.
    fn reserve(&self, len: u64) -> io::Result<()> {
        let mut used = self.used.lock().expect("dead-letter bytes");
        let max_size = self.max_size();
        let fits = |u: u64| u == 0 || u.saturating_add(len) <= max_size;
        if !used.is_some_and(fits) {
            *used = Some(self.count_bytes()?);
        }
        let now = used.expect("counted");
        if !fits(now) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "the dead-letter directory holds {now} bytes and this batch needs {len} more, past its dead_letter_max_size of {}: resend or remove its files (`gateway dead-letters list`, `resend`)",
                    max_size
                ),
            ));
        }
        *used = Some(now + len);
        Ok(())
    }

    /// Gives back room taken for a file that was not written.
    fn unreserve(&self, len: u64) {
        if let Some(u) = self.used.lock().expect("dead-letter bytes").as_mut() {
            *u = u.saturating_sub(len);
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps the readings of a refused batch that this directory did not keep lately (among
    /// its last 4,096 readings): the file and how many it holds, once it is durably on disk;
    /// `None` when every one was kept already. A reading is refused again when the batch that
    /// held it is narrowed down (`coaps-ingress`'s sink refuses it in each half a device sends
    /// again that holds it): it is kept once.
    pub fn put_new(
        &self,
        error: &str,
        readings: &[Reading],
    ) -> io::Result<Option<(PathBuf, usize)>> {
        let new: Vec<Reading> = {
            let recent = self.recent.lock().expect("recent ids");
            readings
                .iter()
                .filter(|r| !recent.ids.contains(&key(r)))
                .cloned()
                .collect()
        };
        if new.is_empty() {
            return Ok(None);
        }
        let path = self.put(error, &new)?;
        let mut recent = self.recent.lock().expect("recent ids");
        for r in &new {
            recent.add(key(r));
        }
        Ok(Some((path, new.len())))
    }

    /// Keeps a refused batch: returns once its file is durably on disk. Fails, keeping
    /// nothing, when the directory has no room for it (`dead_letter_max_size`).
    pub fn put(&self, error: &str, readings: &[Reading]) -> io::Result<PathBuf> {
        let now = Timestamp::now();
        let name = format!(
            "{:010}-{:06}-{}.jsonl",
            now.as_micros() / 1_000_000,
            now.as_micros() % 1_000_000,
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        let text = self.encode(now, error, readings)?;
        let len = text.len() as u64;
        self.reserve(len)?;
        let path = self.dir.join(&name);
        if let Err(e) = self.write_durably(&path, &text) {
            self.unreserve(len);
            return Err(e);
        }
        Ok(path)
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
        let text = self.encode(Timestamp::now(), error, readings)?;
        self.write_durably(path, &text)?;
        if let Some(u) = self.used.lock().expect("dead-letter bytes").as_mut() {
            *u = (*u + text.len() as u64).saturating_sub(old.len());
        }
        Ok(())
    }

    /// A dead-letter file's text: its header (refused at `now` with `error`), then a line per
    /// reading.
    fn encode(&self, now: Timestamp, error: &str, readings: &[Reading]) -> io::Result<Vec<u8>> {
        let header = json!({
            "gateway_dead_letter": 1,
            "sink": self.sink,
            "plugin": self.plugin,
            "refused_at": now.to_string(),
            "error": crate::config::redact_known(error),
            "readings": readings.len(),
        });
        let mut text = Vec::new();
        writeln!(text, "{header}")?;
        for r in readings {
            writeln!(text, "{}", reading_json(r))?;
        }
        Ok(text)
    }

    /// Writes `text` as `path` in the directory: whole to `.NAME.tmp`, synced, renamed over
    /// `path`, the directory synced. On an error no half file is left behind.
    fn write_durably(&self, path: &Path, text: &[u8]) -> io::Result<()> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::other("a dead-letter file has a name"))?
            .to_string_lossy();
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let written = (|| {
            crate::own_files::create_dir_durably(&self.dir)?;
            let mut file = crate::own_files::options()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            file.write_all(text)?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() {
            // A disk that is full leaves no half file behind per retry.
            let _ = std::fs::remove_file(&tmp);
        }
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
        files.sort();
        Ok(files)
    }
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
    let len = f.metadata().map_err(cannot)?.len();
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

/// Reads only the header of a dead-letter file (what `gateway dead-letters list` shows).
pub fn header(path: &Path) -> Result<Header, String> {
    read_header(path, &mut lines(path)?)
}

/// Reads a dead-letter file: its header and readings. The error names the line.
pub fn read(path: &Path) -> Result<(Header, Vec<Reading>), String> {
    let mut lines = lines(path)?;
    let header = read_header(path, &mut lines)?;
    let mut readings = Vec::with_capacity(header.readings.min(1 << 20));
    for (i, line) in lines.enumerate() {
        let line = line.map_err(|e| bad(path, i + 2, &e.to_string()))?;
        let j: J = serde_json::from_str(&line).map_err(|e| bad(path, i + 2, &e.to_string()))?;
        readings.push(parse_reading(&j).ok_or_else(|| bad(path, i + 2, "not a reading"))?);
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
mod tests {
    use super::*;

    #[test]
    fn every_value_type_survives_the_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let d = DeadLetters::new(dir.path().join("dl"), "db", "mysql");
        let values = [
            Value::Float(21.5),
            Value::Float(f64::NAN),
            Value::Float(f64::NEG_INFINITY),
            Value::Float(-0.1),
            Value::Int(i64::MIN),
            Value::Bool(true),
            Value::Text("a \"quoted\"\nline".into()),
            Value::Bytes(vec![0, 255, 16].into()),
        ];
        let ids = gateway_sdk::IdGenerator::new();
        let readings: Vec<Reading> = values
            .iter()
            .map(|v| Reading {
                id: ids.next(Timestamp(1)),
                time: Timestamp(1_764_583_200_123_456),
                device: "pi-01".into(),
                sensor: "s".into(),
                name: "n".into(),
                unit: "".into(),
                value: v.clone(),
            })
            .collect();
        let path = d.put("value out of range", &readings).unwrap();
        assert_eq!(d.files().unwrap(), vec![path.clone()]);
        let (h, back) = read(&path).unwrap();
        assert_eq!((h.sink.as_str(), h.plugin.as_str()), ("db", "mysql"));
        assert_eq!(h.error, "value out of range");
        assert_eq!(back.len(), readings.len());
        for (a, b) in back.iter().zip(&readings) {
            match (&a.value, &b.value) {
                (Value::Float(x), Value::Float(y)) if y.is_nan() => assert!(x.is_nan()),
                _ => assert_eq!(a, b),
            }
        }
    }

    #[test]
    fn a_reading_refused_again_is_kept_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = DeadLetters::new(dir.path().to_path_buf(), "db", "mysql");
        let rs = gateway_sdk::testing::sample_readings(3);
        let (first, n) = d.put_new("x", &rs[..2]).unwrap().expect("new");
        assert_eq!(n, 2);
        assert!(d.put_new("x", &rs[1..2]).unwrap().is_none(), "kept already");
        let (second, n) = d.put_new("x", &rs).unwrap().expect("one new");
        assert_eq!(n, 1);
        let (_, back) = read(&second).unwrap();
        assert_eq!(back, rs[2..]);
        // Another device's reading with the same id is its own.
        let mut other = rs[0].clone();
        other.device = "another-device".into();
        let (third, n) = d.put_new("x", &[other]).unwrap().expect("another device's");
        assert_eq!(n, 1);
        assert_eq!(d.files().unwrap(), vec![first, second, third]);
    }

    #[test]
    fn the_directory_is_bounded_and_a_batch_past_its_room_is_an_error_not_a_loss() {
        let dir = tempfile::tempdir().unwrap();
        let rs = gateway_sdk::testing::sample_readings(10);
        let d = DeadLetters::new(dir.path().join("dl"), "db", "mysql").with_max_size(4096);
        let mut kept = Vec::new();
        let e = loop {
            match d.put("refused", &rs) {
                Ok(path) => kept.push(path),
                Err(e) => break e,
            }
        };
        assert!(!kept.is_empty());
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        let msg = e.to_string();
        assert!(
            msg.contains("dead_letter_max_size of 4096") && msg.contains("gateway dead-letters"),
            "{msg}"
        );
        let bytes: u64 = d
            .files()
            .unwrap()
            .iter()
            .map(|p| p.metadata().unwrap().len())
            .sum();
        assert!(bytes <= 4096, "{bytes}");
        assert_eq!(d.files().unwrap(), kept, "nothing half-written");
        // Room made by another process (`gateway dead-letters resend`) is seen.
        std::fs::remove_file(&kept[0]).unwrap();
        d.put("refused", &rs).expect("room again");
        // A batch larger than the limit is kept in an empty directory, not held for good.
        let big = gateway_sdk::testing::sample_readings(100);
        let small = DeadLetters::new(dir.path().join("small"), "db", "mysql").with_max_size(100);
        small
            .put("refused", &big)
            .expect("alone, whatever its size");
        assert!(small.put("refused", &rs).is_err(), "but nothing beside it");
        // A reload that raised dead_letter_max_size makes room in the record it shares.
        small.set_max_size(1 << 20);
        small.put("refused", &rs).expect("room after the reload");
    }

    #[test]
    fn a_file_a_crash_left_unfinished_takes_no_room() {
        // Created, then a crash before its rename: `list` does not show it, so its room was
        // never freed, and every later refusal held the sink.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".x.jsonl.tmp"), vec![b'x'; 4096]).unwrap();
        let d = DeadLetters::new(dir.path().to_path_buf(), "db", "mysql").with_max_size(4096);
        d.put("refused", &gateway_sdk::testing::sample_readings(3))
            .expect("room");
        // One an hour old is taken for a crash's, and removed.
        let old = dir.path().join(".x.jsonl.tmp");
        let hour_ago = std::time::SystemTime::now() - STALE_TMP - std::time::Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        let big = DeadLetters::new(dir.path().to_path_buf(), "db", "mysql").with_max_size(1 << 20);
        big.put("refused", &gateway_sdk::testing::sample_readings(1))
            .unwrap();
        assert!(!old.exists());
    }

    #[test]
    fn a_damaged_file_is_an_error_that_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = DeadLetters::new(dir.path().to_path_buf(), "db", "mysql");
        let path = d
            .put("x", &gateway_sdk::testing::sample_readings(2))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"time_us\"", "\"tim\"", 1)).unwrap();
        let e = read(&path).unwrap_err();
        assert!(e.ends_with(":2: not a reading"), "{e}");
    }

    #[test]
    fn a_reader_opens_no_link_and_no_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let d = DeadLetters::new(dir.path().join("dl"), "db", "mysql");
        let path = d
            .put("x", &gateway_sdk::testing::sample_readings(2))
            .unwrap();
        assert_eq!(header(&path).unwrap().readings, 2);
        // The service's user swaps a listed file for a link (to /dev/zero, say): an operator's
        // `sudo gateway dead-letters show` must not follow it.
        let elsewhere = dir.path().join("elsewhere.jsonl");
        std::fs::copy(&path, &elsewhere).unwrap();
        let link = dir.path().join("dl/link.jsonl");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        for e in [header(&link).unwrap_err(), read(&link).unwrap_err()] {
            assert!(e.contains("symbolic links"), "{e}");
        }
        // A FIFO is refused at once, not waited on for a writer.
        let fifo = dir.path().join("dl/fifo.jsonl");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string; mkfifo has no other precondition.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = header(&fifo).unwrap_err();
        assert!(e.ends_with("not a regular file"), "{e}");
        // A sparse file of a terabyte without a newline is a regular file: its first line is
        // read no further than MAX_HEADER.
        let sparse = dir.path().join("dl/sparse.jsonl");
        std::fs::File::create(&sparse)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        let e = header(&sparse).unwrap_err();
        assert!(e.contains("a line longer than 1048576 bytes"), "{e}");
        // A line of a dead letter may be longer than MAX_HEADER (a large value).
        let big = d
            .put(
                "x",
                &[gateway_sdk::Reading {
                    value: Value::Bytes(vec![7u8; 3 << 20].into()),
                    ..gateway_sdk::testing::sample_readings(1).remove(0)
                }],
            )
            .unwrap();
        assert_eq!(read(&big).unwrap().1.len(), 1);
    }
}
