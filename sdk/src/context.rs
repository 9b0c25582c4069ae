//! What a plugin instance sees of the host: its config when it is built, and the emit channel
//! and stop signal while a source runs.

use crate::{
    abi::{AckBox, AckFfi, AckFfi_TO, HostSourceCtxBox, InstanceInfo},
    config,
    error::PluginError,
    reading::{IdGenerator, Label, Reading, Timestamp, Value},
    ticker::Ticker,
};
use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RBox, RErr, ROk, RResult, RSome, RVec},
};
use serde::de::DeserializeOwned;
use std::{
    path::PathBuf,
    sync::{mpsc, Arc},
    time::{Duration, Instant},
};

/// What a plugin is told when the host builds an instance.
#[derive(Debug, Clone)]
pub struct InitContext {
    info: InstanceInfo,
}

impl InitContext {
    #[doc(hidden)]
    pub fn new(info: InstanceInfo) -> Self {
        InitContext { info }
    }
    /// The instance name (`temp` in `[sources.temp]`).
    pub fn instance(&self) -> &str {
        &self.info.instance
    }
    /// The gateway's device name.
    pub fn device(&self) -> &str {
        &self.info.device
    }
    /// A directory this instance may keep state in. The host creates it before it starts the
    /// instance ([`crate::Source::run`], [`crate::Sink::open`]), not for `gateway check`: do
    /// not write into it from `new`.
    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(self.info.data_dir.as_str())
    }
    /// `path` as written in the config file, made absolute: a relative path is taken relative
    /// to the directory of the config file, as the host does for its own paths, and a relative
    /// config file path relative to the current directory.
    pub fn resolve_path(&self, path: impl AsRef<std::path::Path>) -> PathBuf {
        let path = path.as_ref();
        if path.is_absolute() {
            return path.to_path_buf();
        }
        let base = std::path::Path::new(self.info.config_file.as_str())
            .parent()
            .unwrap_or(std::path::Path::new(""));
        let joined = base.join(path);
        if joined.is_absolute() {
            return joined;
        }
        match std::env::current_dir() {
            Ok(cwd) => cwd.join(joined),
            Err(_) => joined,
        }
    }

    /// A config error about `key` (a dotted path such as `interval` or `tls.ca`; a number
    /// picks an array element: `probes.2.id`) for a check the plugin makes after parsing,
    /// reading like the errors of [`InitContext::parse_config`]:
    /// `gateway.toml:14: [sources.temp] interval: must be at least 750ms`. When the key is not
    /// in the table (a default was wrong), the line is left out.
    ///
    /// ```ignore
    /// if cfg.interval < Duration::from_millis(750) {
    ///     return Err(ctx.config_error("interval", "must be at least 750ms (a conversion takes that long)"));
    /// }
    /// ```
    pub fn config_error(&self, key: &str, message: impl std::fmt::Display) -> PluginError {
        config::key_error(&self.info, key, message)
    }

    /// Reads a secret that the config gives in exactly one of three ways: `inline` (the value
    /// in the TOML itself), `env` (the name of an environment variable holding it) or `file` (a
    /// file holding it, relative to the config file; its first line, trimmed, is the secret).
    /// `key` is the name of the inline key, used in errors as `KEY`, `KEY_env` and `KEY_file`.
    /// A file must pass [`InitContext::private_file`]. `Ok(None)` when none of the three is given.
    /// The value is kept out of every log message of the library from then on, whoever logs it
    /// (a dependency tracing its connect options, say): it is shown as `<redacted>`.
    pub fn secret(
        &self,
        key: &str,
        inline: Option<&str>,
        env: Option<&str>,
        file: Option<&std::path::Path>,
    ) -> Result<Option<String>, PluginError> {
        let value = self.read_secret(key, inline, env, file)?;
        if let Some(v) = &value {
            crate::log::keep_secret(v);
        }
        Ok(value)
    }

    /// [`InitContext::secret`] without keeping the value out of the log: for values that
    /// come by the thousand and that no dependency logs (the pre-shared keys of a fleet's
    /// devices), which would make every log message searched for each of them.
    pub fn read_secret(
        &self,
        key: &str,
        inline: Option<&str>,
        env: Option<&str>,
        file: Option<&std::path::Path>,
    ) -> Result<Option<String>, PluginError> {
        let table = &self.info.table;
        let given = [inline.is_some(), env.is_some(), file.is_some()];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(PluginError::config(format!(
                "[{table}] {key}, {key}_env and {key}_file: give one of them"
            )));
        }
        if let Some(v) = inline {
            return Ok(Some(v.to_owned()));
        }
        if let Some(var) = env {
            return std::env::var(var).map(Some).map_err(|_| {
                PluginError::config(format!(
                    "[{table}] {key}_env: the environment variable {var} is not set (or not UTF-8)"
                ))
            });
        }
        let Some(file) = file else { return Ok(None) };
        let (_, text) = self.read_private_file(&format!("{key}_file"), file)?;
        Ok(Some(text.lines().next().unwrap_or("").trim().to_owned()))
    }

    /// The text of a private file (a secret, a list of keys), checked as
    /// [`InitContext::private_file`] checks one, and read from the file it checked: it is
    /// opened once, and the open file is what is checked and read, so that nobody can put
    /// another in its place between the check and the read. A FIFO or a device is refused
    /// rather than waited on, and a file above 16 MiB rather than read. Returns the resolved
    /// path (for messages) and the text. `key` names the config key in errors.
    pub fn read_private_file(
        &self,
        key: &str,
        path: impl AsRef<std::path::Path>,
    ) -> Result<(PathBuf, String), PluginError> {
        let path = self.resolve_path(path);
        let text = crate::trust::read_private(&path, crate::trust::Owners::Gateway)
            .map_err(|e| self.private_error(key, e))?;
        Ok((path, text))
    }

    /// A private file's problem as a config error: `[TABLE] KEY: PROBLEM`, and how to check
    /// the file as the service's user.
    fn private_error(&self, key: &str, problem: String) -> PluginError {
        PluginError::config(format!(
            "[{}] {key}: {problem} (check as the user the service runs as: `sudo -u USER gateway check`)",
            self.info.table
        ))
    }

    /// `path` resolved as [`InitContext::resolve_path`] does, after checking that it is a file
    /// others can neither read nor change: a secret (a private key, a password, a list of keys)
    /// readable by every local user, writable by its group or others, or owned by a user other
    /// than root or the gateway's is an error, as ssh and PostgreSQL make it (mode 0600, or
    /// 0640 for a group the service shares, is fine). So is one that is not a regular file (a
    /// FIFO would hang whoever opens it), and one in a directory others can change, checked
    /// as [`InitContext::trusted_file`] checks a CA file's (whoever can write the directory
    /// can put a file of their own in its place). To read the file, use
    /// [`InitContext::read_private_file`], which checks the file it reads. `key` names the
    /// config key in the error.
    pub fn private_file(
        &self,
        key: &str,
        path: impl AsRef<std::path::Path>,
    ) -> Result<PathBuf, PluginError> {
        let path = self.resolve_path(path);
        let meta = std::fs::metadata(&path)
            .map_err(|e| self.private_error(key, format!("{}: {e}", path.display())))?;
        crate::trust::private(&path, &meta, None, crate::trust::Owners::Gateway)
            .map_err(|e| self.private_error(key, e))?;
        Ok(path)
    }

    /// `path` resolved as [`InitContext::resolve_path`] does, after checking that others
    /// cannot change it: for a file that decides whom the instance trusts (a CA or CRL file),
    /// since whoever can add a certificate to it is trusted too. Writable by every user, or
    /// owned by a user other than root or the gateway's, is an error naming the fix; every
    /// user may read it, and its group may write it (with a umask of 002, as Debian gives a
    /// user of a private group, files are made so). The directories that decide what the file
    /// is are checked as the host checks its config's ([`crate::trust::directories`]): the
    /// one that holds it and every one above, and, for every link on the way to it, those of
    /// the link (whoever can write the directory can put another file, or a link to the
    /// system's CA bundle, in its place). A file that does not exist passes: the plugin says so when it
    /// loads it. `key` names the config key in the error.
    pub fn trusted_file(
        &self,
        key: &str,
        path: impl AsRef<std::path::Path>,
    ) -> Result<PathBuf, PluginError> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let path = self.resolve_path(path);
        let Ok(meta) = std::fs::metadata(&path) else {
            return Ok(path);
        };
        if crate::trust::others_may_change(&meta) {
            return Err(PluginError::config(format!(
                "[{}] {key}: {} decides whom the gateway trusts but can be changed by others (mode {:04o}, owner uid {}; the gateway runs as uid {}): `chmod o-w {}` and give it to root or the gateway's user (check as the user the service runs as: `sudo -u USER gateway check`)",
                self.info.table,
                path.display(),
                meta.permissions().mode() & 0o7777,
                meta.uid(),
                crate::trust::gateway_uid(),
                path.display()
            )));
        }
        let shown = path.display().to_string();
        crate::trust::no_acl_writers(&path, &shown, crate::trust::Stake::Config)
            .map_err(|e| PluginError::config(format!("[{}] {key}: {e}", self.info.table)))?;
        crate::trust::directories(&path, crate::trust::Stake::Config).map_err(|e| {
            PluginError::config(format!(
                "[{}] {key}: {} decides whom the gateway trusts, but is in a directory others can change: {e}",
                self.info.table,
                path.display()
            ))
        })?;
        Ok(path)
    }

    /// The raw TOML of the plugin's keys.
    pub fn config_toml(&self) -> &str {
        &self.info.config_toml
    }
    /// Parses the plugin's keys into `T`. Use `#[serde(deny_unknown_fields)]` on `T`: the error
    /// then names the unknown key, the file, its line and the instance's table.
    pub fn parse_config<T: DeserializeOwned>(&self) -> Result<T, PluginError> {
        config::parse(&self.info)
    }
    /// The host-side description of this instance.
    pub fn info(&self) -> &InstanceInfo {
        &self.info
    }
}

/// What a running source uses to hand readings to the host. Cheap to clone; clones may be used
/// from other threads.
#[derive(Clone)]
pub struct SourceContext {
    host: Arc<HostSourceCtxBox>,
    device: Label,
    instance: Arc<str>,
    ids: Arc<IdGenerator>,
    /// The start of [`SourceContext::monotonic`] in real time.
    epoch: Instant,
    /// The simulated clock of the test harness that runs the source, if one does: ns since
    /// the Unix epoch.
    clock: Option<SimulatedClock>,
}

/// A test harness's clock: ns since the Unix epoch.
pub(crate) type SimulatedClock = Arc<dyn Fn() -> u64 + Send + Sync>;

thread_local! {
    /// Set by [`crate::testing`] on the thread that runs a source on a simulated clock. A
    /// thread-local of the SDK rather than a method of the host's context: the harness and
    /// the source share one copy of the SDK, and the ABI stays as it is.
    static SIMULATED: std::cell::RefCell<Option<SimulatedClock>> = const { std::cell::RefCell::new(None) };
}

/// Makes the contexts created on this thread use `clock` (or real time again, with `None`).
pub(crate) fn simulate_clock(clock: Option<SimulatedClock>) {
    SIMULATED.with(|c| *c.borrow_mut() = clock);
}

impl std::fmt::Debug for SourceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceContext")
            .field("instance", &self.instance)
            .field("simulated", &self.clock.is_some())
            .finish_non_exhaustive()
    }
}

impl SourceContext {
    #[doc(hidden)]
    pub fn new(host: HostSourceCtxBox, info: &InstanceInfo) -> Self {
        SourceContext {
            host: Arc::new(host),
            device: Label::new(&info.device),
            instance: Arc::from(info.instance.as_str()),
            ids: Arc::new(IdGenerator::new()),
            epoch: Instant::now(),
            clock: SIMULATED.with(|c| c.borrow().clone()),
        }
    }

    /// The current time: the system clock, or the harness's simulated clock in a test that
    /// uses one. [`SourceContext::reading`] stamps readings with it.
    pub fn now(&self) -> Timestamp {
        match self.simulated_ns() {
            Some(ns) => Timestamp((ns / 1_000) as i64),
            None => Timestamp::now(),
        }
    }

    /// A clock that only goes forward, for pacing: the time since the context was made, or the
    /// simulated clock's reading.
    pub fn monotonic(&self) -> Duration {
        match self.simulated_ns() {
            Some(ns) => Duration::from_nanos(ns),
            None => self.epoch.elapsed(),
        }
    }

    fn simulated_ns(&self) -> Option<u64> {
        self.clock.as_ref().map(|now| now())
    }

    /// A [`Ticker`] that ticks every `interval`, the first time at once, without drift: the
    /// loop of a source that samples on a schedule.
    pub fn every(&self, interval: Duration) -> Ticker<'_> {
        Ticker::new(self, interval)
    }

    /// The gateway's device name, as a label to put into readings.
    pub fn device(&self) -> &Label {
        &self.device
    }
    /// The instance name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// A reading of this device, taken now ([`SourceContext::now`]), with a fresh id.
    pub fn reading(
        &self,
        sensor: &Label,
        name: &Label,
        unit: &Label,
        value: impl Into<Value>,
    ) -> Reading {
        self.reading_at(self.now(), sensor, name, unit, value)
    }

    /// A reading of this device taken at `time`, with a fresh id.
    pub fn reading_at(
        &self,
        time: Timestamp,
        sensor: &Label,
        name: &Label,
        unit: &Label,
        value: impl Into<Value>,
    ) -> Reading {
        Reading {
            id: self.ids.next(time),
            time,
            device: self.device.clone(),
            sensor: sensor.clone(),
            name: name.clone(),
            unit: unit.clone(),
            value: value.into(),
        }
    }

    /// The id generator behind [`SourceContext::reading`].
    pub fn ids(&self) -> &IdGenerator {
        &self.ids
    }

    /// Hands a batch to the host and returns a handle that tells when every routed sink took
    /// it. Blocks while the sinks' queues are full. Fails when the host is stopping.
    pub fn emit(&self, batch: Vec<Reading>) -> Result<Ack, PluginError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.emit_with(batch, move |outcome| {
            let _ = tx.send(outcome);
        })?;
        Ok(Ack { rx })
    }

    /// Hands a batch to the host; `on_ack` is called once, from a host thread, when every
    /// routed sink took it (or with the error that made a sink give it up). Keep it short.
    /// That thread may be the calling one, before this returns: a quick idle sink is written
    /// right here. So hold no lock across this call that `on_ack` takes.
    pub fn emit_with<F>(&self, batch: Vec<Reading>, on_ack: F) -> Result<(), PluginError>
    where
        F: FnOnce(Result<(), PluginError>) + Send + 'static,
    {
        let ack: AckBox = AckFfi_TO::from_value(AckCallback(Some(on_ack), host_dropped), TD_Opaque);
        self.host.emit(RVec::from(batch), RSome(ack)).into_result()
    }

    /// [`SourceContext::emit_with`] that never waits: when a routed sink's queue is full it
    /// gives the batch back at once, with a retryable error, and `on_ack` is never called.
    /// Otherwise, as `emit_with`: `on_ack` is called exactly once, also when this returns an
    /// error without the batch (the host took it and could not deliver it). A queue that
    /// another source fills in the meantime does not hold the call either: that sink's share
    /// fails, and `on_ack` gets a retryable error once the other sinks are done.
    /// For a source that must not stall, such as a server that holds its clients' requests
    /// and tries again after the sinks' next write.
    pub fn try_emit_with<F>(&self, batch: Vec<Reading>, on_ack: F) -> Result<(), TryEmitError>
    where
        F: FnOnce(Result<(), PluginError>) + Send + 'static,
    {
        let mut ack: abi_stable::std_types::ROption<AckBox> = RSome(AckFfi_TO::from_value(
            AckCallback(Some(on_ack), host_dropped),
            TD_Opaque,
        ));
        let mut batch = RVec::from(batch);
        match (self.host.try_emit(&mut batch, &mut ack), ack) {
            (ROk(()), _) => Ok(()),
            // Given back (the host left the acknowledgement too): the callback must not run,
            // it would answer for a batch that is still the caller's.
            (RErr(error), RSome(mut a)) => {
                a.disarm();
                Err(TryEmitError {
                    error,
                    batch: Some(batch.into_vec()),
                })
            }
            (RErr(error), _) => Err(TryEmitError { error, batch: None }),
        }
    }

    /// Hands a batch to the host without waiting for the sinks to take it, and logs a warning
    /// in this instance's name if one of them gives it up: the emit of a source that samples
    /// on a schedule and must not wait for a slow sink. Blocks while the sinks' queues are full;
    /// fails (with [`crate::ErrorKind::STOPPED`]) when the host is stopping.
    pub fn emit_logged(&self, batch: Vec<Reading>) -> Result<(), PluginError> {
        let n = batch.len();
        let span = tracing::Span::current();
        self.emit_with(batch, move |outcome| {
            if let Err(e) = outcome {
                let _entered = span.enter();
                tracing::warn!(readings = n, error = %e, "a sink did not take the readings");
            }
        })
    }

    /// Hands a batch to the host without asking to be told when it was taken.
    pub fn emit_nowait(&self, batch: Vec<Reading>) -> Result<(), PluginError> {
        self.host
            .emit(RVec::from(batch), abi_stable::std_types::RNone)
            .into_result()
    }

    /// Whether the host asked the source to stop.
    pub fn is_stopping(&self) -> bool {
        self.host.is_stopping()
    }

    /// Sleeps for `d`, or less if the host asks to stop; returns `true` when stopping.
    pub fn wait_stop(&self, d: Duration) -> bool {
        self.host
            .wait_stop(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Why [`SourceContext::try_emit_with`] did not take a batch.
#[derive(Debug)]
pub struct TryEmitError {
    /// Why: retryable when a sink's queue was full, otherwise as for `emit`.
    pub error: PluginError,
    /// The batch, given back when a queue was full (`None`: the host took it and failed).
    pub batch: Option<Vec<Reading>>,
}

/// Tells when an emitted batch was taken by every sink it was routed to.
#[derive(Debug)]
pub struct Ack {
    rx: mpsc::Receiver<Result<(), PluginError>>,
}

impl Ack {
    /// Waits for the outcome.
    pub fn wait(self) -> Result<(), PluginError> {
        self.rx.recv().unwrap_or_else(|_| {
            Err(PluginError::new(
                crate::ErrorKind::STOPPED,
                "the host dropped the batch",
            ))
        })
    }
    /// Waits at most `d`; `None` if the outcome is not known yet.
    pub fn wait_timeout(&self, d: Duration) -> Option<Result<(), PluginError>> {
        match self.rx.recv_timeout(d) {
            Ok(r) => Some(r),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => Some(Err(PluginError::new(
                crate::ErrorKind::STOPPED,
                "the host dropped the batch",
            ))),
        }
    }
}

/// How a batch given to [`crate::Sink::submit`] ended: call [`Written::finish`] once, from any
/// thread. Dropping it unanswered tells the host the write failed and may be retried.
pub struct Written(AckBox);

impl Written {
    /// Tells the host how the write ended. An error's message leaves without the secrets the
    /// library read through [`InitContext::secret`].
    pub fn finish(mut self, outcome: Result<(), PluginError>) {
        self.0
            .done(outcome.map_err(crate::log::redacted_error).into());
    }

    /// The host's side, as it crosses the ABI.
    pub(crate) fn from_ffi(done: AckBox) -> Written {
        Written(done)
    }

    /// A `Written` that runs `f` instead of answering the host: for a sink that implements
    /// [`crate::Sink::write`] on top of its `submit`, and for tests. Dropped unanswered, it
    /// gives `f` a retryable error.
    pub fn from_fn<F>(f: F) -> Written
    where
        F: FnOnce(Result<(), PluginError>) + Send + 'static,
    {
        fn dropped() -> PluginError {
            PluginError::retry("the write was dropped before it ended")
        }
        Written(AckFfi_TO::from_value(
            AckCallback(Some(f), dropped),
            TD_Opaque,
        ))
    }
}

impl std::fmt::Debug for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Written")
    }
}

/// The plugin-side half of an acknowledgement: runs the plugin's closure once, and never lets
/// a panic in it reach the host.
pub(crate) struct AckCallback<F: FnOnce(Result<(), PluginError>) + Send>(
    pub(crate) Option<F>,
    /// The outcome given when the callback is dropped without being called.
    pub(crate) fn() -> PluginError,
);

/// What a host's dropped acknowledgement means: the batch did not reach a sink.
pub(crate) fn host_dropped() -> PluginError {
    PluginError::new(
        crate::ErrorKind::STOPPED,
        "the host dropped the batch without taking it",
    )
}

impl<F: FnOnce(Result<(), PluginError>) + Send> AckFfi for AckCallback<F> {
    fn done(&mut self, outcome: RResult<(), PluginError>) {
        if let Some(f) = self.0.take() {
            let outcome = match outcome {
                ROk(()) => Ok(()),
                RErr(e) => Err(e),
            };
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(outcome)));
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl<F: FnOnce(Result<(), PluginError>) + Send> Drop for AckCallback<F> {
    fn drop(&mut self) {
        if self.0.is_some() {
            self.done(RErr((self.1)()));
        }
    }
}

#[allow(dead_code)]
fn _assert_types() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<SourceContext>();
    let _ = RBox::new(());
}
