//! One round of readings: reads the files of every included group under the root, hands them to
//! the parsers in [`crate::sysfs`] and [`crate::procfs`], asks `statvfs` about the disks, and
//! keeps what is good. Whatever is bad is skipped and counted ([`crate::reject`]); nothing a
//! file holds can stop the source. Each read and `statvfs` runs on a thread of its own and is
//! waited for at most [`IO_TIMEOUT`]: one that hangs (a FIFO with no writer, a network
//! filesystem whose server is gone) skips its subject, not the round, until it comes back.

use crate::{
    config::{Config, Group},
    disk, procfs,
    reject::{Problems, Reject, RejectCounts},
    sysfs,
};
use gateway_sdk::{Label, Value};
use std::{
    collections::{BTreeMap, HashMap},
    io::Read,
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

/// How long a read or a `statvfs` is waited for. The kernel answers `/proc` and `/sys` in
/// microseconds; one that takes a second is stuck.
pub const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// How often a wait looks whether the source is asked to stop.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Where the files are, relative to the root.
pub mod paths {
    /// The thermal zones' directory.
    pub const THERMAL: &str = "sys/class/thermal";
    /// The Raspberry Pi firmware's throttling flags.
    pub const THROTTLED: &str = "sys/devices/platform/soc/soc:firmware/get_throttled";
    /// Load averages.
    pub const LOADAVG: &str = "proc/loadavg";
    /// Memory.
    pub const MEMINFO: &str = "proc/meminfo";
    /// Uptime.
    pub const UPTIME: &str = "proc/uptime";
    /// Wireless interfaces.
    pub const WIRELESS: &str = "proc/net/wireless";
}

/// Files larger than this are not what the kernel prints here (`/proc/meminfo`, the largest, is
/// under 2 KiB); reading stops there.
const MAX_FILE: u64 = 64 * 1024;

/// One good value.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// `cpu-thermal`, `throttle`, `load`, `memory`, `disk:/var/lib/gateway`, `uptime`, `wifi:wlan0`.
    pub sensor: Label,
    /// `temperature`, `load1`, `free`...
    pub name: Label,
    /// A SenML unit, or empty.
    pub unit: Label,
    /// The value.
    pub value: Value,
}

fn measurement(sensor: &str, name: &str, unit: &str, value: impl Into<Value>) -> Measurement {
    Measurement {
        sensor: Label::from(sensor),
        name: Label::from(name),
        unit: Label::from(unit),
        value: value.into(),
    }
}

/// Reads a small text file; invalid UTF-8 is kept as replacement characters for the parser to
/// refuse.
fn read_small(path: &Path) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE)
        .read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Reads the machine's health, round after round.
#[derive(Debug)]
pub struct Collector {
    root: PathBuf,
    include: Vec<Group>,
    disks: Vec<PathBuf>,
    problems: Problems,
    /// The last type each thermal zone read well: a zone whose type does not read this
    /// round keeps its name.
    zone_types: HashMap<String, String>,
    /// Whether the source is asked to stop: a wait ends early then.
    stopping: Stopping,
}

/// Whether a read given up on has ended since.
type Ended = Box<dyn Fn() -> bool + Send>;

/// Reads that had not come back, by what they read (the root and the subject), each with how
/// to tell whether it has ended: no other read of it starts meanwhile, so that one stuck file
/// holds one thread, not one per round. For the whole process: a source rebuilt after a
/// reload or a failure finds the reads its former self left stuck.
static STUCK: std::sync::Mutex<BTreeMap<String, Ended>> = std::sync::Mutex::new(BTreeMap::new());

/// Says whether the source is asked to stop.
struct Stopping(Box<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for Stopping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stopping")
    }
}

impl Collector {
    /// A collector for the config's root and groups, and the filesystems holding `disks`.
    pub fn new(cfg: &Config, disks: Vec<PathBuf>) -> Self {
        Collector {
            root: cfg.root.clone(),
            include: cfg.include.clone(),
            disks,
            problems: Problems::default(),
            zone_types: HashMap::new(),
            stopping: Stopping(Box::new(|| false)),
        }
    }

    /// Ends each wait early once `stopping` says so (the source is asked to stop).
    pub fn stop_when(mut self, stopping: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.stopping = Stopping(Box::new(stopping));
        self
    }

    /// Runs `io` for `subject` on a thread of its own and waits for it at most [`IO_TIMEOUT`]
    /// (less once the source is asked to stop). `None` when it did not come back in time, or
    /// its last run still has not (counted as [`Reject::Hung`], unless a stop cut the wait
    /// short), or no thread could be had.
    fn bounded<T: Send + 'static>(
        &mut self,
        subject: &str,
        io: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Option<std::io::Result<T>> {
        let key = format!("{}\0{subject}", self.root.display());
        {
            let mut stuck = STUCK.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(ended) = stuck.get(&key) {
                if !ended() {
                    drop(stuck);
                    self.problems
                        .reject(subject, Reject::Hung, "the last read has not come back");
                    return None;
                }
                stuck.remove(&key);
            }
        }
        let (tx, rx) = mpsc::sync_channel(1);
        // However the read ends, a panic too, its sender is gone or has sent.
        let spawned = std::thread::Builder::new()
            .name("system-read".into())
            .stack_size(64 << 10)
            .spawn(move || {
                let _ = tx.send(io());
            });
        if let Err(e) = spawned {
            self.problems.reject(subject, Reject::Unreadable, e);
            return None;
        }
        let deadline = Instant::now() + IO_TIMEOUT;
        let stopped = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(STOP_POLL)) {
                Ok(r) => return Some(r),
                Err(mpsc::RecvTimeoutError::Timeout) if left.is_zero() => break false,
                Err(mpsc::RecvTimeoutError::Timeout) if (self.stopping.0)() => break true,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break false,
            }
        };
        // A read a stop cut short may only have been slow: it is not said to hang, but it is
        // remembered, so that no second read of it starts while it lasts.
        if !stopped {
            self.problems.reject(
                subject,
                Reject::Hung,
                format_args!("no answer within {IO_TIMEOUT:?}; skipped until it comes back"),
            );
        }
        let ended = move || !matches!(rx.try_recv(), Err(mpsc::TryRecvError::Empty));
        STUCK
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, Box::new(ended));
        None
    }

    /// Reads every included group once and returns the good values, group by group.
    pub fn round(&mut self) -> Vec<Measurement> {
        let mut out = Vec::new();
        for group in Group::ALL {
            if !self.include.contains(&group) {
                continue;
            }
            match group {
                Group::Thermal => self.thermal(&mut out),
                Group::Throttle => self.throttle(&mut out),
                Group::Load => self.load(&mut out),
                Group::Memory => self.memory(&mut out),
                Group::Disk => self.disk(&mut out),
                Group::Uptime => self.uptime(&mut out),
                Group::Wifi => self.wifi(&mut out),
            }
        }
        out
    }

    /// Skipped values so far, per subject and reason.
    pub fn reject_counts(&self) -> &RejectCounts {
        self.problems.counts()
    }

    /// How many values were skipped so far.
    pub fn rejected(&self) -> u64 {
        self.problems.total()
    }

    /// The directory `sys/` and `proc/` are read under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads `rel` under the root. A file that is not there is `None` when `absent_is_normal`
    /// says so (it is noted once at debug), a problem otherwise.
    fn read(&mut self, rel: &str, absent_is_normal: Option<&str>) -> Option<String> {
        let path = self.root.join(rel);
        match (
            self.bounded(rel, move || read_small(&path))?,
            absent_is_normal,
        ) {
            (Ok(text), _) => Some(text),
            (Err(e), Some(why)) if e.kind() == std::io::ErrorKind::NotFound => {
                self.problems.note_once(rel, why);
                None
            }
            (Err(e), _) => {
                self.problems.reject(rel, Reject::Unreadable, e);
                None
            }
        }
    }

    /// Keeps `value` or counts why not.
    fn keep<T>(&mut self, subject: &str, value: Result<T, Reject>, text: &str) -> Option<T> {
        value
            .map_err(|r| {
                self.problems
                    .reject(subject, r, format_args!("{:?}", excerpt(text)))
            })
            .ok()
    }

    fn thermal(&mut self, out: &mut Vec<Measurement>) {
        let dir = self.root.join(paths::THERMAL);
        let listed = self.bounded(paths::THERMAL, move || {
            std::fs::read_dir(&dir)?
                .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
                .collect::<std::io::Result<Vec<String>>>()
        });
        let entries = match listed {
            None => return,
            Some(Ok(e)) => e,
            Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                self.problems.note_once(
                    paths::THERMAL,
                    "no thermal zones on this machine: no temperatures",
                );
                return;
            }
            Some(Err(e)) => {
                self.problems.reject(paths::THERMAL, Reject::Unreadable, e);
                return;
            }
        };
        let mut zones: Vec<(u32, String)> = entries
            .into_iter()
            .filter_map(|name| sysfs::zone_index(&name).map(|i| (i, name)))
            .collect();
        zones.sort();
        if zones.is_empty() {
            self.problems.note_once(
                paths::THERMAL,
                "no thermal zones on this machine: no temperatures",
            );
        }
        // (zone, type, °C if it read well) of every zone listed.
        let mut read: Vec<(String, String, Option<f64>)> = Vec::new();
        for (_, zone) in zones {
            let type_rel = format!("{}/{zone}/type", paths::THERMAL);
            // A type that does not read this round is the one it read last: a zone's name,
            // and with it the names of the zones sharing its type, stay as they were.
            let kind = match self.read(&type_rel, None) {
                Some(text) => match sysfs::parse_zone_type(&text) {
                    Some(t) => Some(t.to_owned()),
                    None => {
                        self.problems.reject(
                            &type_rel,
                            Reject::Malformed,
                            format_args!("{:?}", excerpt(&text)),
                        );
                        None
                    }
                },
                None => None,
            };
            let kind = match kind {
                Some(k) => {
                    self.zone_types.insert(zone.clone(), k.clone());
                    k
                }
                None => self.zone_types.get(&zone).unwrap_or(&zone).clone(),
            };
            let temp_rel = format!("{}/{zone}/temp", paths::THERMAL);
            let c = self
                .read(&temp_rel, None)
                .and_then(|text| self.keep(&temp_rel, sysfs::parse_temp(&text), &text));
            read.push((zone, kind, c));
        }
        // Two zones of one type (x86 boards often have several `acpitz`) are told apart by
        // zone; counted over every zone listed, not those that read well this round, so that
        // a zone's name does not change while another of its type fails.
        let mut per_type: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, kind, _) in &read {
            *per_type.entry(kind).or_insert(0) += 1;
        }
        for (zone, kind, c) in &read {
            let Some(c) = c else { continue };
            let sensor = match per_type[kind.as_str()] {
                1 => kind.clone(),
                _ => format!("{kind}:{zone}"),
            };
            out.push(measurement(&sensor, "temperature", "Cel", *c));
        }
    }

    fn throttle(&mut self, out: &mut Vec<Measurement>) {
        let Some(text) = self.read(
            paths::THROTTLED,
            Some("no Raspberry Pi firmware throttling flags (not a Raspberry Pi, or its firmware driver is not loaded)"),
        ) else {
            return;
        };
        let Some(t) = self.keep(paths::THROTTLED, sysfs::parse_throttled(&text), &text) else {
            return;
        };
        out.push(measurement("throttle", "throttled", "", i64::from(t.0)));
        for (name, set) in [
            ("under_voltage_now", t.under_voltage_now()),
            ("throttled_now", t.throttled_now()),
            ("under_voltage_occurred", t.under_voltage_occurred()),
            ("throttled_occurred", t.throttled_occurred()),
        ] {
            out.push(measurement("throttle", name, "", set));
        }
    }

    fn load(&mut self, out: &mut Vec<Measurement>) {
        let Some(text) = self.read(paths::LOADAVG, None) else {
            return;
        };
        if let Some(l) = self.keep(paths::LOADAVG, procfs::parse_loadavg(&text), &text) {
            out.push(measurement("load", "load1", "", l.one));
            out.push(measurement("load", "load5", "", l.five));
            out.push(measurement("load", "load15", "", l.fifteen));
        }
    }

    fn memory(&mut self, out: &mut Vec<Measurement>) {
        let Some(text) = self.read(paths::MEMINFO, None) else {
            return;
        };
        let m = procfs::parse_meminfo(&text);
        for (key, name, value) in [
            ("MemTotal", "total", m.total),
            ("MemAvailable", "available", m.available),
        ] {
            let subject = format!("{} {key}", paths::MEMINFO);
            let line = text.lines().find(|l| l.starts_with(key)).unwrap_or("");
            if let Some(bytes) = self.keep(&subject, value, line) {
                // At most MAX_MEMORY_BYTES (2^50): fits an i64.
                out.push(measurement("memory", name, "By", bytes as i64));
            }
        }
    }

    fn disk(&mut self, out: &mut Vec<Measurement>) {
        for path in self.disks.clone() {
            let subject = format!("disk {}", path.display());
            let on = path.clone();
            let blocks = match self.bounded(&subject, move || disk::statvfs(&on)) {
                None => continue,
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    self.problems.reject(&subject, Reject::Unreadable, e);
                    continue;
                }
            };
            match blocks.bytes() {
                Ok(b) => {
                    let sensor = format!("disk:{}", path.display());
                    // `bytes` checked that total (and so free) fits an i64.
                    out.push(measurement(&sensor, "free", "By", b.free as i64));
                    out.push(measurement(&sensor, "total", "By", b.total as i64));
                }
                Err(r) => self
                    .problems
                    .reject(&subject, r, format_args!("{blocks:?}")),
            }
        }
    }

    fn uptime(&mut self, out: &mut Vec<Measurement>) {
        let Some(text) = self.read(paths::UPTIME, None) else {
            return;
        };
        if let Some(s) = self.keep(paths::UPTIME, procfs::parse_uptime(&text), &text) {
            out.push(measurement("uptime", "uptime", "s", s));
        }
    }

    fn wifi(&mut self, out: &mut Vec<Measurement>) {
        let Some(text) = self.read(
            paths::WIRELESS,
            Some("no /proc/net/wireless (no wireless extensions in this kernel): no Wi-Fi signal"),
        ) else {
            return;
        };
        let Some(lines) = self.keep(paths::WIRELESS, procfs::parse_wireless(&text), &text) else {
            return;
        };
        if lines.is_empty() {
            self.problems
                .note_once("proc/net/wireless interfaces", "no wireless interface");
        }
        for line in lines {
            let w = match line {
                Ok(w) => w,
                Err(bad) => {
                    let subject = format!("{} line {}", paths::WIRELESS, bad.line);
                    let text_line = text.lines().nth(bad.line - 1).unwrap_or("");
                    self.problems
                        .reject(&subject, bad.reject, format_args!("{text_line:?}"));
                    continue;
                }
            };
            let sensor = format!("wifi:{}", w.interface);
            let row = text
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{}:", w.interface)))
                .unwrap_or("");
            let subject = format!("{} {} link", paths::WIRELESS, w.interface);
            if let Some(q) = self.keep(&subject, w.link_quality, row) {
                out.push(measurement(&sensor, "link_quality", "", q));
            }
            let subject = format!("{} {} level", paths::WIRELESS, w.interface);
            match self.keep(&subject, w.signal_dbm, row) {
                Some(Some(dbm)) => out.push(measurement(&sensor, "signal_level", "dBm", dbm)),
                Some(None) => self
                    .problems
                    .note_once(&subject, "no signal level measured (not associated?)"),
                None => {}
            }
        }
    }
}

/// The start of a file's text, for a log line.
fn excerpt(text: &str) -> &str {
    let t = text.trim();
    match t.char_indices().nth(80) {
        Some((i, _)) => &t[..i],
        None => t,
    }
}
