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
    abi::{AckBox, HostSourceCtx, HostSourceCtx_TO, InstanceInfo, SinkBox, SourceBox},
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

/// The description of an instance `instance` of a plugin with `config_toml` as its keys, read
/// from a file named `test.toml`.
pub fn instance_info(instance: &str, config_toml: &str) -> InstanceInfo {
    instance_info_in("test.toml", instance, config_toml)
}

/// [`instance_info`] for a config file named `config_file` (what errors show).
pub fn instance_info_in(config_file: &str, instance: &str, config_toml: &str) -> InstanceInfo {
    InstanceInfo {
        instance: instance.into(),
        device: "test-device".into(),
        config_toml: config_toml.into(),
        config_file: config_file.into(),
        table: format!("test.{instance}").as_str().into(),
        data_dir: std::env::temp_dir()
            .join("gateway-sdk-test")
            .join(instance)
            .to_string_lossy()
            .as_ref()
            .into(),
    }
}

/// Makes the instance's data directory after it is built, as the host does before it runs
/// it ([`crate::InitContext::data_dir`]).
fn made_data_dir(info: &InstanceInfo) -> Result<(), PluginError> {
    let dir = info.data_dir.as_str();
    std::fs::create_dir_all(dir)
        .map_err(|e| PluginError::fatal(format!("cannot create the data directory {dir}: {e}")))
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

/// What a source produced under [`run_source`] or [`SourceHarness::run`].
#[derive(Debug)]
pub struct SourceRun {
    /// Every reading emitted, in order.
    pub readings: Vec<Reading>,
    /// How many batches they came in.
    pub batches: usize,
    /// What `run` returned.
    pub outcome: Result<(), PluginError>,
    /// Whether the wanted number of readings was reached before the source was stopped.
    pub reached: bool,
    /// How long `run` took to return once the harness asked it to stop (zero when it returned
    /// on its own), in real time.
    pub stop_latency: Duration,
    /// Acknowledgements the harness answered with [`ErrorKind::STOPPED`] because it stopped
    /// before their [`SourceHarness::ack_delay`] ran out.
    pub dropped_acks: usize,
}

/// Runs a source as the host would, with the knobs a test needs: a config file name, a
/// simulated clock, a slow sink, and a stop at a chosen moment.
///
/// ```ignore
/// // A sink that takes 200 ms per batch must not stretch a 1 s interval; an hour of it takes
/// // no real time on the simulated clock.
/// let run = SourceHarness::new("interval = \"1s\"")
///     .simulated_clock(Timestamp(0))
///     .ack_delay(Duration::from_millis(200))
///     .stop_at(Duration::from_secs(3600))
///     .run::<Counter>()?;
/// assert_eq!(run.readings.len(), 3600);
/// ```
#[derive(Debug, Clone)]
pub struct SourceHarness {
    config_toml: String,
    config_file: String,
    instance: String,
    want: usize,
    timeout: Duration,
    stop_at: Option<Duration>,
    stop_deadline: Duration,
    ack_delay: Duration,
    clock: Option<Timestamp>,
    answer: Option<ErrorKind>,
}

impl SourceHarness {
    /// A harness for an instance `test` with `config_toml` as its keys, in `test.toml`; it runs
    /// the source for at most 10 s of real time.
    pub fn new(config_toml: &str) -> Self {
        SourceHarness {
            config_toml: config_toml.to_owned(),
            config_file: "test.toml".to_owned(),
            instance: "test".to_owned(),
            want: usize::MAX,
            timeout: Duration::from_secs(10),
            stop_at: None,
            stop_deadline: Duration::from_secs(5),
            ack_delay: Duration::ZERO,
            clock: None,
            answer: None,
        }
    }
    /// The config file name errors show (default `test.toml`).
    pub fn config_file(mut self, name: &str) -> Self {
        self.config_file = name.to_owned();
        self
    }
    /// The instance name (default `test`).
    pub fn instance(mut self, name: &str) -> Self {
        self.instance = name.to_owned();
        self
    }
    /// Asks the source to stop once it emitted at least `n` readings.
    pub fn readings(mut self, n: usize) -> Self {
        self.want = n;
        self
    }
    /// Asks the source to stop after `d` of real time at the latest (default 10 s).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }
    /// Asks the source to stop when the harness's clock (simulated, or real since the start)
    /// reaches `d`; acknowledgements still waiting then are answered with
    /// [`ErrorKind::STOPPED`], as the host does when it stops.
    pub fn stop_at(mut self, d: Duration) -> Self {
        self.stop_at = Some(d);
        self
    }
    /// How long `run` may take to return once asked to stop before [`SourceHarness::run`]
    /// fails (default 5 s, the host's default `shutdown_timeout`).
    pub fn stop_deadline(mut self, d: Duration) -> Self {
        self.stop_deadline = d;
        self
    }
    /// Acknowledges each batch `d` after it was emitted, as a slow sink would (default: at
    /// once). On a simulated clock the delay moves the clock forward instead of taking time.
    pub fn ack_delay(mut self, d: Duration) -> Self {
        self.ack_delay = d;
        self
    }
    /// Answers each batch with an error of `kind` instead of success, as the host does when
    /// the sinks did not store it (`RETRY`, say) or refused it for good (`REJECTED`: the
    /// readings are kept in a dead-letter file).
    pub fn answer_with(mut self, kind: ErrorKind) -> Self {
        self.answer = Some(kind);
        self
    }
    /// Runs the source on a simulated clock that starts at `start`: `wait_stop` returns at once
    /// and moves the clock forward, and readings are stamped from it.
    pub fn simulated_clock(mut self, start: Timestamp) -> Self {
        self.clock = Some(start);
        self
    }

    /// Builds source `S`, runs it until a stop condition, asks it to stop, and returns what it
    /// produced. Fails if the source cannot be built, or does not return from `run` within the
    /// stop deadline.
    pub fn run<S: Source>(self) -> Result<SourceRun, PluginError> {
        let info = instance_info_in(&self.config_file, &self.instance, &self.config_toml);
        let source = shim::new_source::<S>(&info).into_result()?;
        made_data_dir(&info)?;
        self.run_source(source)
    }

    /// [`SourceHarness::run`] for an instance already built, as the host holds one from a
    /// plugin library (`gateway test-plugin` runs libraries' sources this way). The config
    /// settings of the harness are not used.
    ///
    /// Without [`SourceHarness::simulated_clock`]: a library has its own copy of the SDK, and
    /// the simulated clock reaches only sources that share the harness's (built by
    /// [`SourceHarness::run`]); a library's source would read real time while its waits took
    /// none.
    pub fn run_built(self, source: SourceBox) -> Result<SourceRun, PluginError> {
        if self.clock.is_some() {
            return Err(PluginError::config(
                "a simulated clock works only with SourceHarness::run, not with a library's source",
            ));
        }
        self.run_source(source)
    }

    fn run_source(self, mut source: SourceBox) -> Result<SourceRun, PluginError> {
        let state = Arc::new((
            Mutex::new(Collected {
                clock_ns: self
                    .clock
                    .map_or(0, |t| u64::try_from(t.0).unwrap_or(0).saturating_mul(1_000)),
                ..Collected::default()
            }),
            Condvar::new(),
        ));
        let started = Instant::now();
        let ctx = HostSourceCtx_TO::from_value(
            HarnessCtx {
                state: state.clone(),
                want: self.want,
                ack_delay: self.ack_delay,
                answer: self.answer,
                simulated: self.clock.is_some(),
                stop_at_ns: self
                    .stop_at
                    .filter(|_| self.clock.is_some())
                    .map(|d| state.0.lock().unwrap().clock_ns + d.as_nanos() as u64),
            },
            TD_Opaque,
        );
        let (done_tx, done_rx) = mpsc::channel();
        let clock: Option<crate::context::SimulatedClock> = self.clock.map(|_| {
            let state = state.clone();
            Arc::new(move || state.0.lock().unwrap().clock_ns) as crate::context::SimulatedClock
        });
        std::thread::spawn(move || {
            crate::context::simulate_clock(clock);
            let r = source.run(ctx).into_result();
            crate::context::simulate_clock(None);
            let _ = done_tx.send(r);
        });
        let real_stop = match (self.clock, self.stop_at) {
            (None, Some(at)) => self.timeout.min(at),
            _ => self.timeout,
        };
        let deadline = started + real_stop;
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
        let reached = guard.readings.len() >= self.want;
        guard.stopping = true;
        cv.notify_all();
        drop(guard);
        let asked = Instant::now();
        let (outcome, stop_latency) = match outcome {
            Some(r) => (r, Duration::ZERO),
            None => {
                let r = done_rx.recv_timeout(self.stop_deadline).map_err(|_| {
                    PluginError::fatal(format!(
                        "source did not return from run() within {:?} of being asked to stop",
                        self.stop_deadline
                    ))
                })?;
                (r, asked.elapsed())
            }
        };
        let acks = std::mem::take(&mut lock.lock().unwrap().ack_threads);
        for t in acks {
            let _ = t.join();
        }
        let mut st = lock.lock().unwrap();
        Ok(SourceRun {
            readings: std::mem::take(&mut st.readings),
            batches: st.batches,
            outcome,
            reached,
            stop_latency,
            dropped_acks: st.dropped_acks,
        })
    }
}

#[derive(Default)]
struct Collected {
    readings: Vec<Reading>,
    batches: usize,
    stopping: bool,
    /// The simulated clock, in ns since the Unix epoch.
    clock_ns: u64,
    dropped_acks: usize,
    ack_threads: Vec<std::thread::JoinHandle<()>>,
}

struct HarnessCtx {
    state: Arc<(Mutex<Collected>, Condvar)>,
    want: usize,
    ack_delay: Duration,
    answer: Option<ErrorKind>,
    simulated: bool,
    stop_at_ns: Option<u64>,
}

impl HarnessCtx {
    /// Moves the simulated clock forward by `d`, stopping at the stop time.
    fn advance(&self, st: &mut Collected, d: Duration) {
        st.clock_ns = st.clock_ns.saturating_add(d.as_nanos() as u64);
        if let Some(at) = self.stop_at_ns {
            if st.clock_ns >= at {
                st.clock_ns = at;
                st.stopping = true;
                self.state.1.notify_all();
            }
        }
    }
}

impl HostSourceCtx for HarnessCtx {
    fn emit(&self, batch: RVec<Reading>, ack: ROption<AckBox>) -> RResult<(), PluginError> {
        let (lock, cv) = &*self.state;
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
        let RSome(mut ack) = ack else {
            return ROk(());
        };
        if self.simulated || self.ack_delay.is_zero() {
            // On the simulated clock the sink's time passes at once; a stop it reaches first
            // drops the batch, as the host does.
            self.advance(&mut st, self.ack_delay);
            let stopped = st.stopping && !self.ack_delay.is_zero();
            st.dropped_acks += usize::from(stopped);
            drop(st);
            ack.done(if stopped {
                RErr(stopped_error())
            } else {
                answer(self.answer)
            });
            return ROk(());
        }
        let state = self.state.clone();
        let (delay, kind) = (self.ack_delay, self.answer);
        let t = std::thread::spawn(move || {
            let (lock, cv) = &*state;
            let guard = lock.lock().unwrap();
            let (mut guard, _) = cv
                .wait_timeout_while(guard, delay, |st| !st.stopping)
                .unwrap();
            let stopped = guard.stopping;
            guard.dropped_acks += usize::from(stopped);
            drop(guard);
            ack.done(if stopped {
                RErr(stopped_error())
            } else {
                answer(kind)
            });
        });
        st.ack_threads.push(t);
        ROk(())
    }
    fn is_stopping(&self) -> bool {
        self.state.0.lock().unwrap().stopping
    }
    fn wait_stop(&self, timeout_ms: u64) -> bool {
        let (lock, cv) = &*self.state;
        let mut guard = lock.lock().unwrap();
        if self.simulated {
            if !guard.stopping {
                self.advance(&mut guard, Duration::from_millis(timeout_ms));
            }
            return guard.stopping;
        }
        let (guard, _) = cv
            .wait_timeout_while(guard, Duration::from_millis(timeout_ms), |st| !st.stopping)
            .unwrap();
        guard.stopping
    }
}

fn stopped_error() -> PluginError {
    PluginError::new(
        ErrorKind::STOPPED,
        "the harness stopped before the sink took the batch",
    )
}

/// A batch's answer: success, or an error of `kind` ([`SourceHarness::answer_with`]).
fn answer(kind: Option<ErrorKind>) -> RResult<(), PluginError> {
    match kind {
        None => ROk(()),
        Some(k) => RErr(PluginError::new(k, "the harness answers every batch so")),
    }
}

/// Builds source `S` from `config_toml`, runs it until it emitted at least `n` readings (or
/// `timeout` passed), asks it to stop, and returns what it produced: [`SourceHarness`] with
/// its defaults otherwise.
pub fn run_source<S: Source>(
    config_toml: &str,
    n: usize,
    timeout: Duration,
) -> Result<SourceRun, PluginError> {
    SourceHarness::new(config_toml)
        .readings(n)
        .timeout(timeout)
        .run::<S>()
}

impl std::fmt::Debug for SinkHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkHarness")
            .field("acknowledged", &self.acknowledged.len())
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

/// Feeds batches to a sink built from a config, and remembers what it acknowledged.
pub struct SinkHarness {
    sink: SinkBox,
    acknowledged: Vec<Vec<Reading>>,
    failures: Vec<PluginError>,
}

impl SinkHarness {
    /// Builds sink `S` from `config_toml`, as the host does; the first write opens it
    /// ([`Sink::open`]).
    pub fn new<S: Sink>(config_toml: &str) -> Result<Self, PluginError> {
        Self::new_in::<S>("test.toml", config_toml)
    }
    /// [`SinkHarness::new`] with a config file named `config_file` (what errors show).
    pub fn new_in<S: Sink>(config_file: &str, config_toml: &str) -> Result<Self, PluginError> {
        let info = instance_info_in(config_file, "test", config_toml);
        let sink = shim::new_sink::<S>(&info).into_result()?;
        made_data_dir(&info)?;
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
    /// Hands `batches` to the sink as the host does with a sink whose [`Sink::window`] is
    /// above 1: through [`Sink::submit`], up to `window` of them in flight at once (the next
    /// one handed over as soon as one ends), and returns how each ended, in order. A call
    /// that fails itself (the plugin panicked in `submit`) ends its batch with that error,
    /// whatever its [`crate::Written`] says after; a batch not answered within `timeout` of
    /// the first hand-over ends with a retryable "not answered" error. What ended well is in
    /// [`SinkHarness::acknowledged`], in the batches' order; the errors in
    /// [`SinkHarness::failures`].
    pub fn submit(
        &mut self,
        batches: Vec<Vec<Reading>>,
        timeout: Duration,
    ) -> Vec<Result<(), PluginError>> {
        let window = self.sink.window().max(1) as usize;
        let deadline = Instant::now() + timeout;
        let (tx, rx) = mpsc::channel::<(usize, Result<(), PluginError>)>();
        let mut outcomes: Vec<Option<Result<(), PluginError>>> = vec![None; batches.len()];
        let mut in_flight = 0usize;
        let take = |outcomes: &mut Vec<Option<Result<(), PluginError>>>,
                    (i, outcome): (usize, Result<(), PluginError>)|
         -> bool {
            // Only the first word on a batch counts (a panicking `submit` also drops its
            // `Written`, which then says "dropped").
            let first = outcomes[i].is_none();
            if first {
                outcomes[i] = Some(outcome);
            }
            first
        };
        for (i, batch) in batches.iter().enumerate() {
            while in_flight >= window {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(o) => in_flight -= usize::from(take(&mut outcomes, o)),
                    Err(_) => break,
                }
            }
            if in_flight >= window {
                break;
            }
            let tx = tx.clone();
            let done: AckBox = crate::abi::AckFfi_TO::from_value(
                crate::context::AckCallback(
                    Some(move |outcome| {
                        let _ = tx.send((i, outcome));
                    }),
                    || PluginError::retry("the sink dropped the write without saying how it ended"),
                ),
                TD_Opaque,
            );
            in_flight += 1;
            if let RErr(e) = self.sink.submit(RSlice::from_slice(batch), done) {
                in_flight -= usize::from(take(&mut outcomes, (i, Err(e))));
            }
        }
        drop(tx);
        while outcomes.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(o) => {
                    take(&mut outcomes, o);
                }
                Err(_) => break,
            }
        }
        let mut results = Vec::with_capacity(batches.len());
        for (batch, outcome) in batches.into_iter().zip(outcomes) {
            let outcome = outcome.unwrap_or_else(|| {
                Err(PluginError::retry(format!(
                    "not answered within {timeout:?}"
                )))
            });
            match &outcome {
                Ok(()) => self.acknowledged.push(batch),
                Err(e) => self.failures.push(e.clone()),
            }
            results.push(outcome);
        }
        results
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

    /// A sink of window 3 that answers each batch from a thread of its own, the first of
    /// every three last, refuses a batch whose first value is 13, never answers one whose
    /// first value is 99, and panics on 66. It counts the batches in flight.
    struct Windowed {
        in_flight: Arc<std::sync::atomic::AtomicUsize>,
        most: Arc<std::sync::atomic::AtomicUsize>,
        kept: Vec<crate::Written>,
    }

    /// The most batches each `Windowed` had in flight at once, by its config's `name`.
    fn most_in_flight(name: &str) -> Arc<std::sync::atomic::AtomicUsize> {
        static MOST: Mutex<Vec<(String, Arc<std::sync::atomic::AtomicUsize>)>> =
            Mutex::new(Vec::new());
        let mut all = MOST.lock().unwrap();
        if let Some((_, m)) = all.iter().find(|(n, _)| n == name) {
            return m.clone();
        }
        let m = Arc::default();
        all.push((name.to_owned(), Arc::clone(&m)));
        m
    }

    impl Sink for Windowed {
        const ID: &'static str = "windowed";
        fn new(ctx: &InitContext) -> Result<Self, PluginError> {
            #[derive(serde::Deserialize)]
            struct C {
                name: String,
            }
            let c: C = ctx.parse_config()?;
            Ok(Windowed {
                in_flight: Arc::default(),
                most: most_in_flight(&c.name),
                kept: Vec::new(),
            })
        }
        fn write(&mut self, _: &[Reading]) -> Result<(), PluginError> {
            unreachable!("a windowed sink is handed batches through submit")
        }
        fn window(&self) -> usize {
            3
        }
        fn submit(&mut self, batch: &[Reading], done: crate::Written) {
            use std::sync::atomic::Ordering::SeqCst;
            let first = match batch[0].value {
                Value::Int(v) => v,
                _ => 0,
            };
            if first == 66 {
                panic!("a bug in submit");
            }
            if first == 99 {
                self.kept.push(done);
                return;
            }
            let now = self.in_flight.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
            let in_flight = self.in_flight.clone();
            std::thread::spawn(move || {
                let slow = if first % 3 == 0 { 150 } else { 50 };
                std::thread::sleep(Duration::from_millis(slow));
                in_flight.fetch_sub(1, SeqCst);
                done.finish(if first == 13 {
                    Err(PluginError::rejected("thirteen"))
                } else {
                    Ok(())
                });
            });
        }
    }

    fn batch_of(v: i64) -> Vec<Reading> {
        let mut b = sample_readings(1);
        b[0].value = Value::Int(v);
        b
    }

    #[test]
    fn submit_keeps_the_window_full_and_reports_each_batch_in_order() {
        let mut h = SinkHarness::new::<Windowed>("name = \"order\"").unwrap();
        let values = [0, 1, 2, 3, 13, 5, 6, 7];
        let results = h.submit(
            values.iter().map(|v| batch_of(*v)).collect(),
            Duration::from_secs(10),
        );
        let kinds: Vec<Option<ErrorKind>> = results
            .iter()
            .map(|r| r.as_ref().err().map(|e| e.kind))
            .collect();
        let mut want = vec![None; 8];
        want[4] = Some(ErrorKind::REJECTED);
        assert_eq!(kinds, want);
        assert_eq!(h.acknowledged().len(), 7);
        assert_eq!(
            h.acknowledged()[4][0].value,
            Value::Int(5),
            "in the batches' order"
        );
        assert_eq!(h.failures().len(), 1);
        // The window was kept full, and never overfilled.
        let most = most_in_flight("order").load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(most, 3);
    }

    #[test]
    fn submit_says_a_panic_once_and_a_batch_never_answered() {
        let mut h = SinkHarness::new::<Windowed>("name = \"kept\"").unwrap();
        let results = h.submit(
            vec![batch_of(1), batch_of(99), batch_of(2)],
            Duration::from_millis(500),
        );
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        let kept = results[1].as_ref().unwrap_err();
        assert_eq!(kept.kind, ErrorKind::RETRY);
        assert!(kept.message().contains("not answered within"), "{kept}");
        // A panic is that batch's one outcome (its dropped `Written` says nothing more), and
        // the instance is poisoned: the host rebuilds it.
        let mut h = SinkHarness::new::<Windowed>("name = \"panics\"").unwrap();
        let results = h.submit(
            vec![batch_of(1), batch_of(66), batch_of(2)],
            Duration::from_secs(5),
        );
        assert!(results[0].is_ok(), "{results:?}");
        assert_eq!(results[1].as_ref().unwrap_err().kind, ErrorKind::PANIC);
        assert_eq!(results[2].as_ref().unwrap_err().kind, ErrorKind::FATAL);
        assert_eq!(h.failures().len(), 2);
    }

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
                // A STOPPED error ends `run` normally, as the `Source` docs say.
                ctx.emit(batch)?.wait()?;
            }
            Ok(())
        }
    }

    /// Emits one reading per tick of `ctx.every(interval)` and waits for each to be taken.
    struct Paced {
        interval: Duration,
    }
    impl Source for Paced {
        const ID: &'static str = "paced";
        fn new(ctx: &InitContext) -> Result<Self, PluginError> {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct C {
                #[serde(with = "crate::config::duration")]
                interval: Duration,
            }
            let c: C = ctx.parse_config()?;
            if c.interval < Duration::from_millis(10) {
                return Err(ctx.config_error("interval", "must be at least 10ms"));
            }
            Ok(Paced {
                interval: c.interval,
            })
        }
        fn run(&mut self, ctx: &SourceContext) -> Result<(), PluginError> {
            let (s, n, u) = (Label::new("t"), Label::new("tick"), Label::new(""));
            let mut tick = ctx.every(self.interval);
            while tick.next() {
                let missed = tick.missed() as i64;
                ctx.emit(vec![ctx.reading(&s, &n, &u, missed)])?.wait()?;
            }
            Ok(())
        }
    }

    fn times_ms(run: &SourceRun) -> Vec<i64> {
        run.readings.iter().map(|r| r.time.0 / 1_000).collect()
    }

    #[test]
    fn ticker_keeps_its_interval_behind_a_slow_sink() {
        let run = SourceHarness::new("interval = \"500ms\"")
            .simulated_clock(Timestamp(1_000_000))
            .ack_delay(Duration::from_millis(120))
            .stop_at(Duration::from_secs(10))
            .run::<Paced>()
            .unwrap();
        assert!(run.outcome.is_ok(), "{:?}", run.outcome);
        let want: Vec<i64> = (0..20).map(|k| 1_000 + 500 * k).collect();
        assert_eq!(
            times_ms(&run),
            want,
            "one reading every 500 ms, from the start"
        );
        assert_eq!(run.dropped_acks, 0);
    }

    #[test]
    fn ticker_skips_the_ticks_a_round_ran_past() {
        let run = SourceHarness::new("interval = \"500ms\"")
            .simulated_clock(Timestamp(0))
            .ack_delay(Duration::from_millis(1_200))
            .readings(4)
            .run::<Paced>()
            .unwrap();
        // Each round takes 1.2 s: the late tick fires at once, the ones it overran are
        // skipped, not fired in a burst.
        assert_eq!(times_ms(&run), vec![0, 1_200, 2_400, 3_600]);
        let missed: Vec<_> = run.readings.iter().map(|r| r.value.clone()).collect();
        assert_eq!(
            missed,
            vec![Value::Int(0), Value::Int(1), Value::Int(2), Value::Int(4)],
            "due at 0.5 (late by 0.7: 1 skipped), 1.5 (0.9: 1), 2.5 (1.1: 2)"
        );
    }

    #[test]
    fn a_stop_while_a_batch_waits_for_its_sink_ends_run_promptly() {
        let run = SourceHarness::new("interval = \"10ms\"")
            .ack_delay(Duration::from_secs(30))
            .stop_at(Duration::from_millis(100))
            .run::<Paced>()
            .unwrap();
        assert_eq!(run.readings.len(), 1);
        assert_eq!(run.dropped_acks, 1);
        assert!(run.stop_latency < Duration::from_secs(1), "{run:?}");
        assert_eq!(run.outcome.unwrap_err().kind, ErrorKind::STOPPED);
    }

    #[test]
    fn a_check_after_parsing_names_the_file_and_line() {
        let e = SourceHarness::new("\ninterval = \"1ms\"\n")
            .config_file("gateway.toml")
            .run::<Paced>()
            .unwrap_err();
        assert_eq!(
            e.message(),
            "gateway.toml:2: [test.test] interval: must be at least 10ms"
        );
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
        assert!(
            matches!(
                &run.outcome,
                Ok(())
                    | Err(PluginError {
                        kind: ErrorKind::STOPPED,
                        ..
                    })
            ),
            "{:?}",
            run.outcome
        );
        let values: Vec<_> = run.readings.iter().map(|r| r.value.clone()).collect();
        assert_eq!(values[0], Value::Int(1));
        assert_eq!(values[11], Value::Int(12));
        let ids: std::collections::HashSet<_> = run.readings.iter().map(|r| r.id).collect();
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
