//! Plugins that misbehave on purpose, for the host's integration tests and benchmarks: a
//! sequence source that can panic mid-run, a recording sink that can fail, stall or panic, and a
//! null source and sink for throughput. Not for production. I/O: the recorder's file only.
#![forbid(unsafe_code)]

use gateway_sdk::{
    config::duration, tracing, InitContext, Label, PluginError, Reading, Sink, Source,
    SourceContext, Written,
};
use serde::Deserialize;
use std::{
    collections::HashMap,
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Duration,
};

/// State that outlives an instance (so a restarted instance continues where the failed one was).
fn counters() -> &'static Mutex<HashMap<String, u64>> {
    static C: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
    C.get_or_init(Default::default)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SequenceConfig {
    #[serde(default = "one")]
    batch_size: u64,
    #[serde(default, with = "duration")]
    interval: Duration,
    /// Stop (finish) after this many readings in total; 0 = never.
    #[serde(default)]
    count: u64,
    /// Panic once this instance has emitted this many readings.
    panic_after: Option<u64>,
    #[serde(default = "yes")]
    wait_ack: bool,
    /// After each accepted emit, write the next value to this file (atomically).
    emitted_path: Option<String>,
    /// Start from the value in `emitted_path` (a restarted process goes on where the last one's
    /// acknowledged readings end).
    #[serde(default)]
    resume: bool,
    /// Make each reading's id from the instance name and the value, so a value emitted again
    /// after a crash is the same reading, and later hops drop it as a duplicate.
    #[serde(default)]
    stable_ids: bool,
    /// The readings' device instead of the gateway's (one process standing in for many
    /// devices, each source into an uplink with that device's certificate).
    device: Option<String>,
    /// Fail (fatal) when the instance's data directory is not there when it runs, as a
    /// plugin that keeps state there would.
    #[serde(default)]
    require_data_dir: bool,
    /// After each emit, publish `testkit_emitted_total` as this instance's metrics (a library
    /// that speaks for an instance it may not run).
    publish_as: Option<String>,
}

/// The id of value `v` of `instance` when `stable_ids` is set: FNV-1a of the name, then `v`.
fn stable_id(instance: &str, v: u64) -> gateway_sdk::ReadingId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in instance.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&h.to_be_bytes());
    id[8..].copy_from_slice(&v.to_be_bytes());
    gateway_sdk::ReadingId(id)
}

fn one() -> u64 {
    1
}
fn yes() -> bool {
    true
}

/// Emits 0, 1, 2, ... as integer readings of sensor = the instance name.
pub struct Sequence {
    cfg: SequenceConfig,
    instance: String,
    data_dir: std::path::PathBuf,
}

impl Source for Sequence {
    const ID: &'static str = "testkit-sequence";
    const DESCRIPTION: &'static str = "test: emits 0, 1, 2, ...; can panic mid-run";
    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        let mut cfg: SequenceConfig = ctx.parse_config()?;
        cfg.emitted_path = cfg
            .emitted_path
            .map(|p| ctx.resolve_path(&p).display().to_string());
        Ok(Sequence {
            cfg,
            instance: ctx.instance().to_owned(),
            data_dir: ctx.data_dir(),
        })
    }
    fn run(&mut self, ctx: &SourceContext) -> Result<(), PluginError> {
        if self.cfg.require_data_dir && !self.data_dir.is_dir() {
            return Err(PluginError::fatal(format!(
                "the data directory {} is not there",
                self.data_dir.display()
            )));
        }
        let sensor = Label::from(self.instance.as_str());
        let (name, unit) = (Label::from("seq"), Label::from(""));
        let mut next = *counters().lock().unwrap().get(&self.instance).unwrap_or(&0);
        if let (true, Some(p)) = (self.cfg.resume, &self.cfg.emitted_path) {
            match std::fs::read_to_string(p) {
                Ok(s) => {
                    next = next.max(s.trim().parse().map_err(|_| {
                        PluginError::config(format!("{p} does not hold a number: {s:?}"))
                    })?)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut emitted_here = 0;
        tracing::info!(from = next, "sequence starting");
        loop {
            if ctx.is_stopping() || (self.cfg.count > 0 && next >= self.cfg.count) {
                return Ok(());
            }
            if let Some(limit) = self.cfg.panic_after {
                if emitted_here >= limit {
                    panic!("sequence panics after {limit} readings, as configured");
                }
            }
            let n = if self.cfg.count > 0 {
                self.cfg.batch_size.min(self.cfg.count - next)
            } else {
                self.cfg.batch_size
            };
            let batch: Vec<Reading> = (next..next + n)
                .map(|v| {
                    let mut r = ctx.reading(&sensor, &name, &unit, v as i64);
                    if let Some(d) = &self.cfg.device {
                        r.device = gateway_sdk::Label::from(d.as_str());
                    }
                    if self.cfg.stable_ids {
                        r.id = stable_id(&self.instance, v);
                    }
                    r
                })
                .collect();
            if self.cfg.wait_ack {
                match ctx.emit(batch) {
                    Ok(ack) => ack.wait()?,
                    Err(e) if ctx.is_stopping() => {
                        tracing::info!(error = %e, "stopping");
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
            } else if let Err(e) = ctx.emit_nowait(batch) {
                if ctx.is_stopping() {
                    return Ok(());
                }
                return Err(e);
            }
            next += n;
            emitted_here += n;
            if let Some(instance) = &self.cfg.publish_as {
                let mut m = gateway_sdk::metrics::Metrics::new();
                m.counter("testkit_emitted_total", "Readings emitted.", &[], next);
                m.publish(instance);
            }
            counters()
                .lock()
                .unwrap()
                .insert(self.instance.clone(), next);
            if let Some(p) = &self.cfg.emitted_path {
                let tmp = format!("{p}.tmp");
                std::fs::write(&tmp, next.to_string())
                    .and_then(|()| std::fs::rename(&tmp, p))
                    .map_err(|e| PluginError::retry(format!("writing {p}: {e}")))?;
            }
            if !self.cfg.interval.is_zero() && ctx.wait_stop(self.cfg.interval) {
                return Ok(());
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecorderConfig {
    path: String,
    #[serde(default, with = "duration")]
    delay: Duration,
    /// How long building the instance takes (a constructor that connects somewhere slow).
    #[serde(default, with = "duration")]
    start_delay: Duration,
    /// The first this-many writes fail with a retryable error.
    #[serde(default)]
    fail_first: u64,
    /// What those failing writes say, logged at warn and returned, in place of the simulated
    /// outage's message (a sink quoting its settings, as a database client may its URL).
    #[serde(default)]
    fail_message: Option<String>,
    /// The first this-many writes fail with a config error (as a sink that finds its table of
    /// a newer schema does), counted from the first write, as `fail_first`.
    #[serde(default)]
    config_error_first: u64,
    /// The first this-many writes fail with `ErrorKind::STOPPED` although the host runs (as a
    /// faulty sink may), counted as `fail_first`.
    #[serde(default)]
    stopped_first: u64,
    /// The write with this number (1-based, counted across rebuilds) panics.
    panic_on_write: Option<u64>,
    /// The first this-many writes (after `fail_first`) refuse the batch for good.
    #[serde(default)]
    reject_first: u64,
    /// Any batch holding a reading with this integer value is refused for good.
    reject_value: Option<i64>,
    /// Any batch holding a reading of this device is refused for good.
    reject_device: Option<String>,
    /// Before each write's readings, a line `write N` (N its readings), so that a test sees
    /// how the host batched them.
    #[serde(default)]
    mark_writes: bool,
    /// Each `write N` line ends with ` thread NAME`: the thread the host wrote on.
    #[serde(default)]
    mark_threads: bool,
    /// Keep the lines in memory and append them to the file when the instance is dropped: a
    /// write then takes microseconds, even in a debug build on a busy machine.
    #[serde(default)]
    hold_lines: bool,
    /// Batches taken at once (`Sink::window`): above 1, each submitted write runs on a thread
    /// of its own, the odd-numbered ones taking three times `delay`, so that they end out of
    /// order; each write's line `write N` then carries ` inflight K`, the writes running then.
    #[serde(default = "one_batch")]
    window: usize,
    /// With `window` above 1: the first this-many submitted writes are kept and never
    /// answered (a plugin that loses track of a request) until the instance is dropped.
    #[serde(default)]
    keep_first: u64,
    /// How long dropping the instance takes (a client that closes its connection politely).
    #[serde(default, with = "duration")]
    drop_delay: Duration,
    /// A file the constructor reads (as a plugin reads a key or a certificate): its text,
    /// trimmed, starts each reading's line, so that a test sees what the instance read.
    label_file: Option<String>,
    /// What `label_file` held when the instance was built.
    #[serde(skip)]
    label: String,
}

fn one_batch() -> usize {
    1
}

/// Appends `SENSOR VALUE ID` per reading to a file, after an optional delay; can fail or panic.
pub struct Recorder {
    cfg: Arc<RecorderConfig>,
    key: String,
    file: Arc<Mutex<std::fs::File>>,
    /// The lines kept with `hold_lines`.
    held: String,
    inflight: Arc<std::sync::atomic::AtomicUsize>,
    /// The writes `keep_first` keeps unanswered.
    kept: Vec<Written>,
}

impl Recorder {
    /// The number of the next write (1-based, counted across rebuilds); panics on the one
    /// configured to.
    fn call(&self) -> u64 {
        let call = {
            let mut c = counters().lock().unwrap();
            let n = c.entry(self.key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        if self.cfg.panic_on_write == Some(call) {
            panic!("recorder panics on write {call}, as configured");
        }
        call
    }
}

/// One write of the recorder, numbered `call`, with `inflight` writes running.
fn record(
    cfg: &RecorderConfig,
    file: &Mutex<std::fs::File>,
    call: u64,
    inflight: Option<usize>,
    batch: &[Reading],
) -> Result<(), PluginError> {
    let mut out = String::new();
    lines(cfg, call, inflight, batch, &mut out)?;
    let mut f = file.lock().unwrap();
    f.write_all(out.as_bytes())?;
    f.flush()?;
    Ok(())
}

/// The outcome of write `call`, and its lines (added to `out`) if it succeeds.
fn lines(
    cfg: &RecorderConfig,
    call: u64,
    inflight: Option<usize>,
    batch: &[Reading],
    out: &mut String,
) -> Result<(), PluginError> {
    if call <= cfg.config_error_first {
        return Err(PluginError::config(format!(
            "simulated config error (write {call} of {} that fail)",
            cfg.config_error_first
        )));
    }
    if call <= cfg.stopped_first {
        return Err(PluginError::new(
            gateway_sdk::ErrorKind::STOPPED,
            format!(
                "simulated stop (write {call} of {} that fail)",
                cfg.stopped_first
            ),
        ));
    }
    if call <= cfg.fail_first {
        if let Some(msg) = &cfg.fail_message {
            tracing::warn!("{msg}");
            return Err(PluginError::retry(msg.clone()));
        }
        return Err(PluginError::retry(format!(
            "simulated outage (write {call} of {} that fail)",
            cfg.fail_first
        )));
    }
    if call > cfg.fail_first && call <= cfg.fail_first + cfg.reject_first {
        return Err(PluginError::rejected(format!(
            "simulated refusal (write {call})"
        )));
    }
    if let Some(bad) = cfg.reject_value {
        if let Some(r) = batch
            .iter()
            .find(|r| r.value == gateway_sdk::Value::Int(bad))
        {
            // Naming the reading's device, as a database's refusal may.
            return Err(PluginError::rejected(format!(
                "simulated refusal of value {bad} from {}",
                r.device
            )));
        }
    }
    if let Some(bad) = &cfg.reject_device {
        if batch.iter().any(|r| r.device.as_str() == bad) {
            return Err(PluginError::rejected(format!(
                "simulated refusal of device {bad}"
            )));
        }
    }
    if cfg.mark_writes {
        out.push_str(&format!("write {}", batch.len()));
        if let Some(k) = inflight {
            out.push_str(&format!(" inflight {k}"));
        }
        if cfg.mark_threads {
            // The host's name for it: this library's copy of std does not know the thread.
            // Read once per thread, so that a write stays quick.
            thread_local! {
                static NAME: String = std::fs::read_to_string("/proc/thread-self/comm")
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
            }
            NAME.with(|name| out.push_str(&format!(" thread {name}")));
        }
        out.push('\n');
    }
    for r in batch {
        if !cfg.label.is_empty() {
            out.push_str(&cfg.label);
            out.push(' ');
        }
        out.push_str(&format!("{} {} {}\n", r.sensor, r.value, r.id));
    }
    Ok(())
}

impl Drop for Recorder {
    fn drop(&mut self) {
        std::thread::sleep(self.cfg.drop_delay);
        if !self.held.is_empty() {
            let _ = self.file.lock().unwrap().write_all(self.held.as_bytes());
        }
    }
}

impl Sink for Recorder {
    const ID: &'static str = "testkit-recorder";
    const DESCRIPTION: &'static str = "test: appends readings to a file; can stall, fail or panic";
    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        let mut cfg: RecorderConfig = ctx.parse_config()?;
        if let Some(f) = &cfg.label_file {
            let f = ctx.resolve_path(f);
            cfg.label = std::fs::read_to_string(&f)
                .map_err(|e| PluginError::config(format!("cannot read {}: {e}", f.display())))?
                .trim()
                .to_owned();
        }
        std::thread::sleep(cfg.start_delay);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cfg.path)
            .map_err(|e| PluginError::config(format!("cannot open {}: {e}", cfg.path)))?;
        Ok(Recorder {
            cfg: Arc::new(cfg),
            key: format!("recorder:{}", ctx.instance()),
            file: Arc::new(Mutex::new(file)),
            held: Default::default(),
            inflight: Default::default(),
            kept: Vec::new(),
        })
    }

    fn write(&mut self, batch: &[Reading]) -> Result<(), PluginError> {
        let call = self.call();
        if !self.cfg.delay.is_zero() {
            std::thread::sleep(self.cfg.delay);
        }
        if self.cfg.hold_lines {
            return lines(&self.cfg, call, None, batch, &mut self.held);
        }
        record(&self.cfg, &self.file, call, None, batch)
    }

    fn window(&self) -> usize {
        self.cfg.window
    }

    fn submit(&mut self, batch: &[Reading], done: Written) {
        let call = self.call();
        if call <= self.cfg.keep_first {
            self.kept.push(done);
            return;
        }
        let (cfg, file, inflight) = (self.cfg.clone(), self.file.clone(), self.inflight.clone());
        let batch = batch.to_vec();
        let running = inflight.fetch_add(1, Ordering::SeqCst) + 1;
        std::thread::spawn(move || {
            std::thread::sleep(cfg.delay * if call % 2 == 1 { 3 } else { 1 });
            let outcome = record(&cfg, &file, call, Some(running), &batch);
            inflight.fetch_sub(1, Ordering::SeqCst);
            done.finish(outcome);
        });
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NullSourceConfig {
    #[serde(default = "hundred")]
    batch_size: usize,
    /// Readings in total; 0 = unlimited.
    #[serde(default)]
    count: u64,
}
fn hundred() -> usize {
    100
}

/// Emits readings as fast as the host takes them, without waiting for each acknowledgement.
pub struct NullSource {
    cfg: NullSourceConfig,
}

impl Source for NullSource {
    const ID: &'static str = "testkit-null-source";
    const DESCRIPTION: &'static str = "benchmark: emits readings as fast as the host takes them";
    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        Ok(NullSource {
            cfg: ctx.parse_config()?,
        })
    }
    fn run(&mut self, ctx: &SourceContext) -> Result<(), PluginError> {
        let (sensor, name, unit) = (Label::from("null"), Label::from("value"), Label::from("1"));
        let acked = Arc::new(AtomicU64::new(0));
        let mut sent = 0u64;
        let time = gateway_sdk::Timestamp::now();
        while !ctx.is_stopping() && (self.cfg.count == 0 || sent < self.cfg.count) {
            let n = if self.cfg.count > 0 {
                (self.cfg.count - sent).min(self.cfg.batch_size as u64)
            } else {
                self.cfg.batch_size as u64
            };
            let batch: Vec<Reading> = (0..n)
                .map(|i| ctx.reading_at(time, &sensor, &name, &unit, i as f64))
                .collect();
            let a = acked.clone();
            if ctx
                .emit_with(batch, move |r| {
                    if r.is_ok() {
                        a.fetch_add(n, Ordering::Relaxed);
                    }
                })
                .is_err()
            {
                break;
            }
            sent += n;
        }
        // Finish only once everything sent was acknowledged.
        while acked.load(Ordering::Relaxed) < sent && !ctx.wait_stop(Duration::from_millis(1)) {}
        tracing::info!(
            sent,
            acked = acked.load(Ordering::Relaxed),
            "null source done"
        );
        Ok(())
    }
}

/// Takes everything and keeps nothing.
pub struct NullSink {
    readings: u64,
}

impl Sink for NullSink {
    const ID: &'static str = "testkit-null-sink";
    const DESCRIPTION: &'static str = "benchmark: takes readings and drops them";
    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Empty {}
        let _: Empty = ctx.parse_config()?;
        Ok(NullSink { readings: 0 })
    }
    fn write(&mut self, batch: &[Reading]) -> Result<(), PluginError> {
        self.readings += batch.len() as u64;
        Ok(())
    }
    fn close(&mut self) -> Result<(), PluginError> {
        tracing::info!(readings = self.readings, "null sink closed");
        Ok(())
    }
}

gateway_sdk::export!(sources: [Sequence, NullSource], sinks: [Recorder, NullSink]);
