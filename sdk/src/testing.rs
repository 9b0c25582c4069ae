//! Runs a plugin without a host, through the same ABI shims the host uses (so panics are caught
//! and configs parsed exactly as in production).
//!
//! ```ignore
//! use gateway_sdk::testing;
//! let run = testing::run_source::<Counter>("interval = \"10ms\"", 5, Duration::from_secs(5))?;
//! assert_eq!(run.readings.len(), 5);
//!
//! let mut sink = testing::SinkHarness::new::<Console>("")?;
//! sink.write(testing::sample_readings(3))?;
//! assert_eq!(sink.acknowledged().len(), 1);
//! ```

use crate::{
    abi::{AckBox, HostSourceCtx, HostSourceCtx_TO, InstanceInfo, SinkBox},
    error::{ErrorKind, PluginError},
    reading::{IdGenerator, Label, Reading, Timestamp, Value},
    shim, Sink, Source,
};
use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RErr, ROk, ROption, RResult, RSlice, RSome, RVec},
};
use std::{
    sync::{mpsc, Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

/// The description of an instance named `test` of the plugin, with `config_toml` as its keys.
pub fn instance_info(instance: &str, config_toml: &str) -> InstanceInfo {
    InstanceInfo {
        instance: instance.into(),
        device: "test-device".into(),
        config_toml: config_toml.into(),
        config_file: "test.toml".into(),
        table: format!("test.{instance}").as_str().into(),
        data_dir: std::env::temp_dir()
            .join("gateway-sdk-test")
            .to_string_lossy()
            .as_ref()
            .into(),
    }
}

/// `n` readings of device `test-device`, sensor `s1`, `temperature` in `Cel`, values 0, 1, 2...
pub fn sample_readings(n: usize) -> Vec<Reading> {
    let ids = IdGenerator::new();
    let (dev, sensor, name, unit) = (
        Label::new("test-device"),
        Label::new("s1"),
        Label::new("temperature"),
        Label::new("Cel"),
    );
    (0..n)
        .map(|i| {
            let time = Timestamp::now();
            Reading {
                id: ids.next(time),
                time,
                device: dev.clone(),
                sensor: sensor.clone(),
                name: name.clone(),
                unit: unit.clone(),
                value: Value::Float(i as f64),
            }
        })
        .collect()
}

/// What a source produced under [`run_source`].
#[derive(Debug)]
pub struct SourceRun {
    /// Every reading emitted, in order.
    pub readings: Vec<Reading>,
    /// How many batches they came in.
    pub batches: usize,
    /// What `run` returned.
    pub outcome: Result<(), PluginError>,
    /// Whether the wanted number of readings was reached before the timeout.
    pub reached: bool,
}

#[derive(Default)]
struct Collected {
    readings: Vec<Reading>,
    batches: usize,
    stopping: bool,
}

struct HarnessCtx {
    state: Arc<(Mutex<Collected>, Condvar)>,
    want: usize,
}

impl HostSourceCtx for HarnessCtx {
    fn emit(&self, batch: RVec<Reading>, ack: ROption<AckBox>) -> RResult<(), PluginError> {
        let (lock, cv) = &*self.state;
        {
            let mut st = lock.lock().unwrap();
            if st.stopping {
                return RErr(PluginError::new(
                    ErrorKind::STOPPED,
                    "the harness is stopping",
                ));
            }
            st.readings.extend(batch);
            st.batches += 1;
            if st.readings.len() >= self.want {
                st.stopping = true;
                cv.notify_all();
            }
        }
        if let RSome(mut ack) = ack {
            ack.done(ROk(()));
        }
        ROk(())
    }
    fn is_stopping(&self) -> bool {
        self.state.0.lock().unwrap().stopping
    }
    fn wait_stop(&self, timeout_ms: u64) -> bool {
        let (lock, cv) = &*self.state;
        let guard = lock.lock().unwrap();
        let (guard, _) = cv
            .wait_timeout_while(guard, Duration::from_millis(timeout_ms), |st| !st.stopping)
            .unwrap();
        guard.stopping
    }
}

/// Builds source `S` from `config_toml`, runs it until it emitted at least `n` readings (or
/// `timeout` passed), asks it to stop, and returns what it produced. Fails if the source cannot
/// be built, or does not return from `run` within 5 s of being asked to stop.
pub fn run_source<S: Source>(
    config_toml: &str,
    n: usize,
    timeout: Duration,
) -> Result<SourceRun, PluginError> {
    let info = instance_info("test", config_toml);
    let mut source = shim::new_source::<S>(&info).into_result()?;
    let state = Arc::new((Mutex::new(Collected::default()), Condvar::new()));
    let ctx = HostSourceCtx_TO::from_value(
        HarnessCtx {
            state: state.clone(),
            want: n,
        },
        TD_Opaque,
    );
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = source.run(ctx).into_result();
        let _ = done_tx.send(r);
    });
    let deadline = Instant::now() + timeout;
    let (lock, cv) = &*state;
    let mut outcome = None;
    let mut guard = lock.lock().unwrap();
    while !guard.stopping && Instant::now() < deadline {
        drop(guard);
        if let Ok(r) = done_rx.try_recv() {
            outcome = Some(r);
            guard = lock.lock().unwrap();
            break;
        }
        guard = lock.lock().unwrap();
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(20));
        guard = cv.wait_timeout(guard, wait).unwrap().0;
    }
    let reached = guard.readings.len() >= n;
    guard.stopping = true;
    cv.notify_all();
    drop(guard);
    let outcome = match outcome {
        Some(r) => r,
        None => done_rx.recv_timeout(Duration::from_secs(5)).map_err(|_| {
            PluginError::fatal("source did not return from run() within 5 s of being asked to stop")
        })?,
    };
    let mut st = lock.lock().unwrap();
    Ok(SourceRun {
        readings: std::mem::take(&mut st.readings),
        batches: st.batches,
        outcome,
        reached,
    })
}

/// Feeds batches to a sink built from a config, and remembers what it acknowledged.
pub struct SinkHarness {
    sink: SinkBox,
    acknowledged: Vec<Vec<Reading>>,
    failures: Vec<PluginError>,
}

impl SinkHarness {
    /// Builds sink `S` from `config_toml`.
    pub fn new<S: Sink>(config_toml: &str) -> Result<Self, PluginError> {
        let info = instance_info("test", config_toml);
        let sink = shim::new_sink::<S>(&info).into_result()?;
        Ok(SinkHarness {
            sink,
            acknowledged: Vec::new(),
            failures: Vec::new(),
        })
    }
    /// Writes one batch, as the host would.
    pub fn write(&mut self, batch: Vec<Reading>) -> Result<(), PluginError> {
        match self.sink.write(RSlice::from_slice(&batch)).into_result() {
            Ok(()) => {
                self.acknowledged.push(batch);
                Ok(())
            }
            Err(e) => {
                self.failures.push(e.clone());
                Err(e)
            }
        }
    }
    /// Closes the sink, as the host does at shutdown.
    pub fn close(&mut self) -> Result<(), PluginError> {
        self.sink.close().into_result()
    }
    /// The batches the sink acknowledged, in order.
    pub fn acknowledged(&self) -> &[Vec<Reading>] {
        &self.acknowledged
    }
    /// The errors the sink returned, in order.
    pub fn failures(&self) -> &[PluginError] {
        &self.failures
    }
}

/// Keys every instance table may hold that belong to the host, not to the plugin.
pub const HOST_KEYS: &[&str] = &[
    "plugin",
    "inputs",
    "log_level",
    "restart_backoff",
    "restart_backoff_max",
    "batch_size",
    "batch_timeout",
    "queue_capacity",
    "retry_backoff",
    "retry_backoff_max",
];

/// Checks a plugin folder's documentation against its `sample.toml` and returns the plugin's
/// keys of every instance table in it, for the caller to parse into its config struct.
///
/// The README's first ```` ```toml ```` block must be `sample`, byte for byte. Each table is
/// returned twice: as written, and with every commented-out default (`# key = value`)
/// uncommented, so that the defaults the sample shows are checked too. Host keys are removed.
/// Panics (it is for tests) with a message that says what does not match.
pub fn readme_sample_tables(readme: &str, sample: &str) -> Vec<(String, toml::Table)> {
    let block = readme
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the README has a ```toml block");
    assert_eq!(
        block, sample,
        "the README's sample block must be sample.toml"
    );
    let uncommented: String = sample
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    for text in [sample, uncommented.as_str()] {
        let doc: toml::Table =
            toml::from_str(text).unwrap_or_else(|e| panic!("sample does not parse: {e}"));
        for (group, instances) in &doc {
            for (name, table) in instances.as_table().expect("[group.NAME] tables") {
                let mut keys = table.as_table().expect("an instance table").clone();
                for k in HOST_KEYS {
                    keys.remove(*k);
                }
                out.push((format!("{group}.{name}"), keys));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InitContext, SourceContext};

    struct Ticker {
        batch: usize,
    }
    impl Source for Ticker {
        const ID: &'static str = "ticker";
        fn new(ctx: &InitContext) -> Result<Self, PluginError> {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct C {
                batch: usize,
            }
            let c: C = ctx.parse_config()?;
            Ok(Ticker { batch: c.batch })
        }
        fn run(&mut self, ctx: &SourceContext) -> Result<(), PluginError> {
            let (s, n, u) = (Label::new("t"), Label::new("count"), Label::new(""));
            let mut i = 0i64;
            while !ctx.is_stopping() {
                let batch = (0..self.batch)
                    .map(|_| {
                        i += 1;
                        ctx.reading(&s, &n, &u, i)
                    })
                    .collect();
                match ctx.emit(batch) {
                    Ok(ack) => ack.wait()?,
                    Err(e) if e.kind == ErrorKind::STOPPED => break,
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }

    struct Panicky;
    impl Source for Panicky {
        const ID: &'static str = "panicky";
        fn new(_: &InitContext) -> Result<Self, PluginError> {
            Ok(Panicky)
        }
        fn run(&mut self, _: &SourceContext) -> Result<(), PluginError> {
            panic!("sensor on fire")
        }
    }

    struct Picky;
    impl Sink for Picky {
        const ID: &'static str = "picky";
        fn new(_: &InitContext) -> Result<Self, PluginError> {
            Ok(Picky)
        }
        fn write(&mut self, batch: &[Reading]) -> Result<(), PluginError> {
            if batch.len() > 2 {
                return Err(PluginError::rejected("too many"));
            }
            if batch.is_empty() {
                panic!("empty batch");
            }
            Ok(())
        }
    }

    #[test]
    fn run_source_collects_until_n_and_stops_the_source() {
        let run = run_source::<Ticker>("batch = 3", 10, Duration::from_secs(5)).unwrap();
        assert!(run.reached);
        assert_eq!(run.readings.len(), 12, "whole batches of 3");
        assert_eq!(run.batches, 4);
        assert!(run.outcome.is_ok());
        let values: Vec<_> = run.readings.iter().map(|r| r.value.clone()).collect();
        assert_eq!(values[0], Value::Int(1));
        assert_eq!(values[11], Value::Int(12));
        let mut ids: Vec<_> = run.readings.iter().map(|r| r.id).collect();
        ids.dedup();
        assert_eq!(ids.len(), 12, "ids unique");
    }

    #[test]
    fn config_error_is_returned_before_running() {
        let e = run_source::<Ticker>("batches = 3", 1, Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::CONFIG);
        assert!(e.message().contains("unknown field `batches`"), "{e}");
    }

    #[test]
    fn panic_in_run_becomes_an_error() {
        let run = run_source::<Panicky>("", 1, Duration::from_secs(5)).unwrap();
        let e = run.outcome.unwrap_err();
        assert_eq!(e.kind, ErrorKind::PANIC);
        assert!(e.message().contains("sensor on fire"), "{e}");
        assert!(!run.reached);
    }

    #[test]
    fn sink_harness_records_acks_and_failures() {
        let mut h = SinkHarness::new::<Picky>("").unwrap();
        h.write(sample_readings(2)).unwrap();
        assert_eq!(
            h.write(sample_readings(3)).unwrap_err().kind,
            ErrorKind::REJECTED
        );
        let e = h.write(Vec::new()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::PANIC);
        // A sink that panicked is poisoned: the host rebuilds it.
        assert_eq!(
            h.write(sample_readings(1)).unwrap_err().kind,
            ErrorKind::FATAL
        );
        assert_eq!(h.acknowledged().len(), 1);
        assert_eq!(h.failures().len(), 3);
    }
}
