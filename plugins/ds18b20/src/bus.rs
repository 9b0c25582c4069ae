//! Finding the probes under the w1 sysfs root and reading them concurrently, each on a thread
//! of its own, so that a slow or hung probe delays no other.

use crate::{
    config::{Config, Probe},
    w1::{parse_w1_slave, Reject},
};
use gateway_sdk::{metrics::Metrics, tracing, Label, Timestamp};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

/// One good reading.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// The probe's id or alias.
    pub sensor: Label,
    /// When the read finished.
    pub time: Timestamp,
    /// °C.
    pub celsius: f64,
}

/// How a probe's read for one round ended.
#[derive(Debug)]
enum ReadEnd {
    Good(f64, Timestamp),
    /// Every attempt was rejected; the last reason.
    Bad(Reject),
    /// The file could not be read at all.
    Io(String),
}

struct ProbeState {
    path: PathBuf,
    label: Label,
    /// Set while a read thread works on this probe.
    busy: Arc<AtomicBool>,
    busy_since: Instant,
    rejects: BTreeMap<Reject, u64>,
    hung: bool,
    /// A read of it has come after its round's `read_timeout` (said once).
    late: bool,
    /// While it fails: when that was last said, once when it starts, then hourly (a dead
    /// probe read every 5 s made 17,000 warnings a day). `None` while it reads well.
    failing_said: Option<Instant>,
}

/// How often a probe that keeps failing is said to.
const FAILING_REMINDER: Duration = Duration::from_secs(3600);

/// What a read thread sends back: the round it was started in, the probe, how it ended and
/// what it rejected.
/// A read's end: of which round, which probe (its id and its label when the read started:
/// a probe that disappeared while its read lasted has no state left to name it), how it
/// ended, what it rejected.
type Done = (u64, String, Label, ReadEnd, Vec<Reject>);

impl ProbeState {
    /// Marks the probe failing; whether to say so now (it just started, or an hour went by).
    fn say_failing(&mut self) -> bool {
        let now = Instant::now();
        let say = self
            .failing_said
            .is_none_or(|t| now.duration_since(t) >= FAILING_REMINDER);
        if say {
            self.failing_said = Some(now);
        }
        say
    }
}

/// Counts of rejected reads per probe and reason.
pub type RejectCounts = BTreeMap<String, BTreeMap<Reject, u64>>;

/// The most probes whose rejected reads are counted under their own id (and shown as a series
/// each on the metrics page, for the life of the process); the rejections of the others are
/// counted under [`OTHER`]. A bus of 1-Wire probes holds a few dozen at most.
pub const MAX_COUNTED: usize = 64;

/// The probe under which the rejected reads of probes past [`MAX_COUNTED`] are counted.
pub const OTHER: &str = "other";

/// The probes of one w1 tree and their state.
pub struct Bus {
    root: PathBuf,
    configured: Vec<Probe>,
    probes: BTreeMap<String, ProbeState>,
    /// Probes that disappeared while their read had not returned: the flag that says when it
    /// does, and since when it has been busy. A probe that comes back takes both over, so that its hung read is not joined by
    /// another thread on the same file each time the probe comes and goes.
    lingering: BTreeMap<String, (Arc<AtomicBool>, Instant)>,
    missing_reported: BTreeMap<String, bool>,
    /// Rejected reads since the start, per probe and reason: kept when a probe disappears, so
    /// that the counters on the metrics page only grow.
    rejected: RejectCounts,
    /// When a bus without any probe was last said (`None` while probes answer): said at
    /// once, then hourly, as a bus found empty at start said nothing at all.
    empty_said: Option<Instant>,
    retries: u32,
    retry_delay: Duration,
    read_timeout: Duration,
    /// Where the read threads send their results: one channel for every round, so that a read
    /// that ends after its round's `read_timeout` is taken by the next round, not lost.
    done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
    /// The round being read.
    round: u64,
    /// Whether the source is asked to stop: a round's wait for its reads ends early then.
    stopping: Box<dyn Fn() -> bool + Send>,
}

/// How often a round's wait for its reads looks whether the source is asked to stop.
const STOP_POLL: Duration = Duration::from_millis(50);

fn is_ds18b20(name: &str) -> bool {
    name.len() > 3 && name.starts_with("28-")
}

impl Bus {
    /// A bus for the config's root and probes.
    pub fn new(cfg: &Config) -> Self {
        let (done_tx, done_rx) = mpsc::channel();
        Bus {
            done_tx,
            done_rx,
            round: 0,
            root: cfg.root.clone(),
            configured: cfg.sensors.clone(),
            probes: BTreeMap::new(),
            lingering: BTreeMap::new(),
            missing_reported: BTreeMap::new(),
            empty_said: None,
            rejected: RejectCounts::new(),
            retries: cfg.retries,
            retry_delay: cfg.retry_delay,
            read_timeout: cfg.read_timeout,
            stopping: Box::new(|| false),
        }
    }

    /// Ends each round's wait for its reads early once `stopping` says so (the source is
    /// asked to stop): a stop is heard within 50 ms, not after `read_timeout`. The reads go
    /// on, on their threads; a later round would take what they give.
    pub fn stop_when(mut self, stopping: impl Fn() -> bool + Send + 'static) -> Self {
        self.stopping = Box::new(stopping);
        self
    }

    /// The ids present now (configured ones that exist, or every `28-*` device).
    fn present(&mut self) -> Vec<(String, Label)> {
        if !self.configured.is_empty() {
            let mut out = Vec::new();
            for p in &self.configured {
                let exists = self.root.join(&p.id).join("w1_slave").exists();
                let reported = self.missing_reported.entry(p.id.clone()).or_insert(false);
                if !exists {
                    if !*reported {
                        tracing::warn!(probe = %p.id, root = %self.root.display(), "configured probe is not present");
                        *reported = true;
                    }
                    continue;
                }
                if *reported {
                    tracing::info!(probe = %p.id, "configured probe is present again");
                    *reported = false;
                }
                out.push((
                    p.id.clone(),
                    Label::from(p.alias.clone().unwrap_or_else(|| p.id.clone())),
                ));
            }
            return out;
        }
        match std::fs::read_dir(&self.root) {
            Ok(entries) => {
                let mut ids: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| is_ds18b20(n))
                    .collect();
                ids.sort();
                ids.into_iter()
                    .map(|id| (id.clone(), Label::from(id)))
                    .collect()
            }
            Err(e) => {
                if !self.missing_reported.get("").copied().unwrap_or(false) {
                    tracing::warn!(root = %self.root.display(), error = %e, "cannot list the w1 devices");
                    self.missing_reported.insert(String::new(), true);
                }
                Vec::new()
            }
        }
    }

    /// Reads every present probe once, concurrently, and returns the good readings. Probes that
    /// appeared or disappeared since the last round are logged.
    pub fn round(&mut self) -> Vec<Measurement> {
        let present = self.present();
        if present.is_empty() {
            let listed = !self.missing_reported.get("").copied().unwrap_or(false);
            if !self.probes.is_empty() {
                tracing::warn!("no DS18B20 probe is present any more");
                self.empty_said = Some(Instant::now());
            } else if listed
                && self.configured.is_empty()
                && self
                    .empty_said
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(3600))
            {
                tracing::warn!(root = %self.root.display(), "no DS18B20 probe on the 1-Wire bus: check the wiring, the 4.7 kOhm pull-up and dtoverlay=w1-gpio (said again hourly while none is found)");
                self.empty_said = Some(Instant::now());
            }
        } else {
            self.missing_reported.remove("");
            self.empty_said = None;
        }
        // Appeared / disappeared.
        let gone: Vec<String> = self
            .probes
            .keys()
            .filter(|id| !present.iter().any(|(p, _)| p == *id))
            .cloned()
            .collect();
        self.lingering
            .retain(|_, (busy, _)| busy.load(Ordering::SeqCst));
        for id in gone {
            tracing::warn!(probe = %id, "probe disappeared");
            if let Some(st) = self.probes.remove(&id) {
                if st.busy.load(Ordering::SeqCst) {
                    self.lingering.insert(id, (st.busy, st.busy_since));
                }
            }
        }
        for (id, label) in &present {
            if !self.probes.contains_key(id) {
                tracing::info!(probe = %id, sensor = %label, "probe found");
                let (busy, busy_since) = self
                    .lingering
                    .remove(id)
                    .unwrap_or_else(|| (Arc::new(AtomicBool::new(false)), Instant::now()));
                self.probes.insert(
                    id.clone(),
                    ProbeState {
                        path: self.root.join(id).join("w1_slave"),
                        label: label.clone(),
                        busy,
                        busy_since,
                        rejects: BTreeMap::new(),
                        hung: false,
                        late: false,
                        failing_said: None,
                    },
                );
            }
        }

        self.round += 1;
        let round = self.round;
        let mut started = 0;
        for (id, st) in self.probes.iter_mut() {
            if st.busy.load(Ordering::SeqCst) {
                if !st.hung {
                    tracing::warn!(probe = %id, since = ?st.busy_since.elapsed(), "probe hangs: its read has not returned; it is skipped until it does");
                    st.hung = true;
                }
                continue;
            }
            if st.hung {
                tracing::info!(probe = %id, "hung probe returned");
                st.hung = false;
            }
            st.busy.store(true, Ordering::SeqCst);
            st.busy_since = Instant::now();
            let (path, busy, tx, probe, label) = (
                st.path.clone(),
                st.busy.clone(),
                self.done_tx.clone(),
                id.clone(),
                st.label.clone(),
            );
            let (retries, delay) = (self.retries, self.retry_delay);
            let spawned = std::thread::Builder::new()
                .name(format!("w1:{id}"))
                .stack_size(64 * 1024)
                .spawn(move || {
                    let (end, rejects) = read_probe(&path, retries, delay);
                    busy.store(false, Ordering::SeqCst);
                    let _ = tx.send((round, probe, label, end, rejects));
                });
            match spawned {
                Ok(_) => started += 1,
                Err(e) => {
                    st.busy.store(false, Ordering::SeqCst);
                    tracing::error!(probe = %id, error = %e, "cannot start a read thread");
                }
            }
        }
        let deadline = Instant::now() + self.read_timeout;
        let mut out = Vec::new();
        // This round's reads, and any of an earlier round that ended after its timeout.
        let mut waiting = started;
        loop {
            let next = if waiting > 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.done_rx.recv_timeout(left.min(STOP_POLL)) {
                    Ok(done) => Some(done),
                    Err(mpsc::RecvTimeoutError::Timeout)
                        if !left.is_zero() && !(self.stopping)() =>
                    {
                        continue
                    }
                    Err(_) => None,
                }
            } else {
                self.done_rx.try_recv().ok()
            };
            let Some((of_round, id, label, end, rejects)) = next else {
                break;
            };
            if of_round == round {
                waiting -= 1;
            }
            if !rejects.is_empty() {
                // A noisy or tampered bus lists phantom ids, each kept for good: past the
                // first MAX_COUNTED probes, rejections are counted under "other".
                let key = if self.rejected.len() < MAX_COUNTED || self.rejected.contains_key(&id) {
                    id.clone()
                } else {
                    OTHER.to_owned()
                };
                let counts = self.rejected.entry(key).or_default();
                for r in &rejects {
                    *counts.entry(*r).or_insert(0) += 1;
                }
            }
            let Some(st) = self.probes.get_mut(&id) else {
                // The probe disappeared while this read lasted (unplugged): its rejections are
                // counted above, and a good reading, taken while it was there, is kept.
                match end {
                    ReadEnd::Good(celsius, time) => out.push(Measurement {
                        sensor: label,
                        time,
                        celsius,
                    }),
                    _ => {
                        tracing::debug!(probe = %id, "the read of a probe that disappeared ended without a reading")
                    }
                }
                continue;
            };
            if of_round != round && !st.late {
                st.late = true;
                tracing::warn!(probe = %id, read_timeout = ?self.read_timeout, "probe is slower than read_timeout: its readings come a round late, timed when they were read; raise read_timeout");
            }
            for r in &rejects {
                *st.rejects.entry(*r).or_insert(0) += 1;
            }
            match end {
                ReadEnd::Good(celsius, time) => {
                    if st.failing_said.take().is_some() {
                        tracing::info!(probe = %id, "probe reads again");
                    }
                    if !rejects.is_empty() {
                        tracing::debug!(probe = %id, rejected = ?rejects, "good read after retrying");
                    }
                    out.push(Measurement {
                        sensor: st.label.clone(),
                        time,
                        celsius,
                    });
                }
                ReadEnd::Bad(last) => {
                    if st.say_failing() {
                        tracing::warn!(probe = %id, reason = %last, attempts = rejects.len(), totals = %summary(&st.rejects), "probe failing: every read this round was rejected (said again hourly while it fails)");
                    }
                }
                ReadEnd::Io(e) => {
                    if st.say_failing() {
                        tracing::warn!(probe = %id, error = %e, "probe failing: cannot read w1_slave (said again hourly while it fails)");
                    }
                }
            }
        }
        out.sort_by(|a, b| a.sensor.as_str().cmp(b.sensor.as_str()));
        out
    }

    /// Rejected reads since the start, per probe and reason (a probe that disappeared keeps
    /// its counts).
    pub fn reject_counts(&self) -> RejectCounts {
        self.rejected.clone()
    }

    /// The bus's figures for the metrics page: the probes read, the rejected reads per probe
    /// and reason, and the rounds the interval skipped (`missed`: a round that outlasted it).
    pub fn metrics(&self, missed: u64) -> Metrics {
        let mut m = Metrics::new();
        m.gauge(
            "gateway_ds18b20_probes",
            "Probes on the bus (configured or found).",
            &[],
            self.probes.len() as f64,
        );
        for (probe, reasons) in &self.rejected {
            for (reason, n) in reasons {
                m.counter(
                    "gateway_ds18b20_rejected_reads_total",
                    "Reads of a probe rejected (and retried), by reason: a bus error, a bad CRC, the 85 C power-on value...",
                    &[("probe", probe), ("reason", reason.key())],
                    *n,
                );
            }
        }
        m.counter(
            "gateway_ds18b20_missed_rounds_total",
            "Rounds skipped because the one before outlasted the interval.",
            &[],
            missed,
        );
        m
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

fn summary(counts: &BTreeMap<Reject, u64>) -> String {
    counts
        .iter()
        .map(|(r, n)| format!("{r}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads one probe, retrying rejected reads. Returns how it ended and every rejection seen.
fn read_probe(path: &Path, retries: u32, delay: Duration) -> (ReadEnd, Vec<Reject>) {
    let mut rejects = Vec::new();
    for attempt in 0..=retries {
        if attempt > 0 {
            std::thread::sleep(delay);
        }
        match read_capped(path) {
            Ok(Some(bytes)) => {
                let text = String::from_utf8_lossy(&bytes);
                match parse_w1_slave(&text) {
                    Ok(c) => return (ReadEnd::Good(c, Timestamp::now()), rejects),
                    Err(r) => rejects.push(r),
                }
            }
            Ok(None) => rejects.push(Reject::Malformed),
            // A bus error (EIO), a driver busy with another read (EINTR on older kernels):
            // tried again as a rejected read is, and counted; the last one is said.
            Err(e) => {
                rejects.push(Reject::Io);
                if attempt == retries {
                    return (ReadEnd::Io(e.to_string()), rejects);
                }
            }
        }
    }
    let last = *rejects.last().expect("at least one attempt");
    (ReadEnd::Bad(last), rejects)
}

/// The most a `w1_slave` file is read: the driver writes about 75 bytes.
const MAX_W1_SLAVE: u64 = 4096;

/// The file at `path`, or `None` if it is longer than [`MAX_W1_SLAVE`] (not the driver's: a
/// file of something else, or `/dev/zero` linked in its place), read no further than that.
fn read_capped(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_W1_SLAVE + 1)
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= MAX_W1_SLAVE).then_some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_probe_is_said_once_then_hourly_and_again_after_it_recovers() {
        let mut st = ProbeState {
            path: PathBuf::new(),
            label: Label::from("p"),
            busy: Arc::default(),
            busy_since: Instant::now(),
            rejects: BTreeMap::new(),
            hung: false,
            late: false,
            failing_said: None,
        };
        assert!(st.say_failing(), "it starts failing");
        assert!(!st.say_failing(), "the next round");
        st.failing_said = Some(Instant::now() - FAILING_REMINDER);
        assert!(st.say_failing(), "an hour later");
        assert!(!st.say_failing());
        st.failing_said = None; // it read well
        assert!(st.say_failing(), "fails again");
    }
}
