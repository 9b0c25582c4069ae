//! `gateway test-plugin`: the checks a plugin library must pass before it is trusted with
//! readings, run on the built `.so` with the instance tables of a sample config. For a
//! third-party author as much as for this repository's plugins.
//!
//! For every instance of the file: the library loads; a config with an unknown key is refused
//! with a config error naming the file and the key's line; `new` builds the sample and leaves
//! the data directory alone (`gateway check` calls it); then a source runs and stops within
//! the deadline once asked, and a sink takes a batch (opening itself first), takes the same
//! batch again (a re-delivery must not be an error), and closes, each within the deadline. What a sink
//! stores cannot be seen from outside; that it stores a re-delivered reading once is left to
//! the plugin's own tests.
//!
//! It does I/O: it loads libraries and runs the plugins, with their data directories in a
//! temporary directory.

use crate::{
    config::{Config, Instance, Role},
    loader::{Catalog, Found},
    logging::HostLogger,
};
use gateway_sdk::{
    abi::{InstanceInfo, PluginKind},
    testing::{sample_readings, SourceHarness},
    ErrorKind,
};
use std::{
    fmt::Write as _,
    path::Path,
    sync::{mpsc, Arc},
    time::{Duration, Instant},
};

/// The key no plugin has, added to check that unknown keys are refused.
const UNKNOWN_KEY: &str = "conformance_unknown_key";

/// How the checks went.
#[derive(Debug, Default)]
pub struct Report {
    /// What was checked, for a person.
    pub text: String,
    /// Checks passed.
    pub passed: usize,
    /// Checks failed.
    pub failed: usize,
}

impl Report {
    fn check(&mut self, ok: bool, what: impl std::fmt::Display) {
        let _ = writeln!(self.text, "  {}  {what}", if ok { "ok  " } else { "FAIL" });
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
    }
}

/// Runs the checks on every instance of `config`, each with a fresh data directory under
/// `scratch`; `run_for` is how long a source runs, `deadline` how long each step may take.
pub fn run(
    config: &Config,
    logger: &Arc<HostLogger>,
    scratch: &Path,
    run_for: Duration,
    deadline: Duration,
) -> Report {
    let mut report = Report::default();
    let mut catalog = Catalog::new(&config.gateway.plugin_dirs, logger.clone());
    for decl in config.sources.iter().chain(&config.sinks) {
        let kind = match decl.role {
            Role::Source => PluginKind::Source,
            Role::Sink(_) => PluginKind::Sink,
        };
        let _ = writeln!(report.text, "[{}] {}", decl.table(), decl.plugin);
        let found = match catalog.find(&decl.plugin, kind) {
            Ok(f) => f,
            Err(e) => {
                report.check(false, format!("loads: {e}"));
                continue;
            }
        };
        logger.metrics.allow(&decl.name, &found.library.file);
        report.check(
            true,
            format!(
                "loads: {} {} from {}, built against gateway-sdk {}",
                found.library.name,
                found.library.version,
                found.library.file_name(),
                found.library.sdk_version
            ),
        );
        let data_dir = scratch.join(&decl.name);
        // As the host describes the instance, with its data directory in the scratch space.
        let mut info = crate::plan::info_for(config, decl);
        info.data_dir = data_dir.display().to_string().as_str().into();
        refuses_unknown_key(&mut report, &found, &info, decl, deadline);
        match kind {
            PluginKind::Source => source(&mut report, &found, &info, run_for, deadline),
            PluginKind::Sink => sink(&mut report, &found, &info, deadline),
        }
    }
    let _ = writeln!(
        report.text,
        "{} checks passed, {} failed",
        report.passed, report.failed
    );
    report
}

/// A table with an unknown key must be refused as a config error naming file and line.
fn refuses_unknown_key(
    report: &mut Report,
    found: &Found,
    info: &InstanceInfo,
    decl: &Instance,
    deadline: Duration,
) {
    let mut toml = info.config_toml.to_string();
    if !toml.is_empty() && !toml.ends_with('\n') {
        toml.push('\n');
    }
    let line = toml.matches('\n').count() + 1;
    toml.push_str(&format!("{UNKNOWN_KEY} = 1\n"));
    let mut bad = info.clone();
    bad.config_toml = toml.as_str().into();
    bad.data_dir = format!("{}-unknown-key", info.data_dir).as_str().into();
    let (new_source, new_sink) = (found.plugin.new_source, found.plugin.new_sink);
    let made = timed(deadline, move || match (new_source, new_sink) {
        (Some(new), _) => new(&bad).into_result().map(drop),
        (_, Some(new)) => new(&bad).into_result().map(drop),
        _ => Ok(()),
    });
    let Some((made, _)) = made else {
        return report.check(
            false,
            format!("refuses an unknown key: new did not return within {deadline:?} (does it connect or wait? new must only parse and check)"),
        );
    };
    let at = format!("{}:{line}", decl.file.display());
    match made {
        Ok(()) => report.check(
            false,
            format!("refuses an unknown key: it accepted `{UNKNOWN_KEY}`; put #[serde(deny_unknown_fields)] on the config struct"),
        ),
        Err(e) if e.kind == ErrorKind::CONFIG && e.message().contains(&at) => report.check(
            true,
            format!("refuses an unknown key with its file and line: {}", e.message()),
        ),
        Err(e) => report.check(
            false,
            format!(
                "refuses an unknown key with its file and line: wanted a config error naming {at}, got ({}) {}",
                e.kind,
                e.message()
            ),
        ),
    }
}

/// Runs `f` on a thread of its own; `None` when it did not return within `deadline`.
fn timed<T: Send + 'static>(
    deadline: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<(T, Duration)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let started = Instant::now();
        let out = f();
        let _ = tx.send((out, started.elapsed()));
    });
    rx.recv_timeout(deadline).ok()
}

/// `new` builds the sample within the deadline and creates nothing in the data directory.
fn built<T: Send + 'static>(
    report: &mut Report,
    info: &InstanceInfo,
    deadline: Duration,
    new: extern "C" fn(
        &InstanceInfo,
    ) -> abi_stable::std_types::RResult<T, gateway_sdk::PluginError>,
) -> Option<T> {
    let owned = info.clone();
    let Some((made, _)) = timed(deadline, move || new(&owned).into_result()) else {
        report.check(
            false,
            format!("builds from the sample (new): did not return within {deadline:?} (new must only parse and check; connect in open or run)"),
        );
        return None;
    };
    match made {
        Ok(t) => {
            report.check(true, "builds from the sample (new)");
            let dir = Path::new(info.data_dir.as_str());
            report.check(
                !dir.exists(),
                format!(
                    "new has no side effects: {}",
                    if dir.exists() {
                        "it created its data directory; create files in run (sources) or open (sinks)"
                    } else {
                        "its data directory was left alone"
                    }
                ),
            );
            std::fs::create_dir_all(dir).ok();
            Some(t)
        }
        Err(e) => {
            report.check(
                false,
                format!("builds from the sample (new): ({}) {}", e.kind, e.message()),
            );
            None
        }
    }
}

fn source(
    report: &mut Report,
    found: &Found,
    info: &InstanceInfo,
    run_for: Duration,
    deadline: Duration,
) {
    let new = found.plugin.new_source.expect("a source");
    let Some(source) = built(report, info, deadline, new) else {
        return;
    };
    let harness = SourceHarness::new("")
        .stop_at(run_for)
        .timeout(run_for)
        .stop_deadline(deadline);
    match harness.run_built(source) {
        Ok(run) => {
            let mut ids: Vec<_> = run.readings.iter().map(|r| r.id).collect();
            ids.sort();
            ids.dedup();
            report.check(
                true,
                format!(
                    "runs: {} readings in {} batches in {run_for:?}",
                    run.readings.len(),
                    run.batches
                ),
            );
            report.check(
                ids.len() == run.readings.len(),
                format!(
                    "gives every reading its own id: {} ids for {} readings",
                    ids.len(),
                    run.readings.len()
                ),
            );
            let outcome = match &run.outcome {
                Ok(()) => "Ok".to_owned(),
                Err(e) => format!("({}) {}", e.kind, e.message()),
            };
            let clean = match &run.outcome {
                Ok(()) => true,
                Err(e) => e.kind == ErrorKind::STOPPED,
            };
            report.check(
                clean,
                format!(
                    "stops when asked, within {deadline:?}: in {:?}, returning {outcome}",
                    run.stop_latency
                ),
            );
        }
        Err(e) => report.check(false, format!("stops when asked: {}", e.message())),
    }
}

fn sink(report: &mut Report, found: &Found, info: &InstanceInfo, deadline: Duration) {
    let new = found.plugin.new_sink.expect("a sink");
    let Some(mut sink) = built(report, info, deadline, new) else {
        return;
    };
    let _ = writeln!(
        report.text,
        "  note  the sink writes 10 readings of device test-device, twice, where its table says"
    );
    // Some(true): it worked; Some(false): it failed; None: it did not return.
    let mut step = |report: &mut Report, what: &str, f: Step| -> Option<bool> {
        let moved = std::mem::replace(&mut sink, placeholder());
        let done = timed(deadline, move || {
            let mut s = moved;
            let r = f(&mut s);
            (s, r)
        });
        match done {
            Some(((s, Ok(())), took)) => {
                sink = s;
                report.check(true, format!("{what} ({took:.1?})"));
                Some(true)
            }
            Some(((s, Err(e)), _)) => {
                sink = s;
                report.check(false, format!("{what}: ({}) {}", e.kind, e.message()));
                Some(false)
            }
            None => {
                report.check(false, format!("{what}: did not return within {deadline:?}"));
                None
            }
        }
    };
    let batch = Arc::new(sample_readings(10));
    let b = batch.clone();
    let again = batch.clone();
    let steps: [(&str, Step); 3] = [
        (
            "opens and takes a batch of 10 readings",
            Box::new(move |s| s.write(b.as_slice().into()).into_result()),
        ),
        (
            "takes the same batch again (a re-delivery is not an error)",
            Box::new(move |s| s.write(again.as_slice().into()).into_result()),
        ),
        ("closes", Box::new(|s| s.close().into_result())),
    ];
    // Each step needs the one before to have returned; the second and third need the first
    // write to have worked.
    let mut why_not: Option<&str> = None;
    for (i, (what, f)) in steps.into_iter().enumerate() {
        if let Some(why) = why_not {
            report.check(false, format!("{what}: not run, {why}"));
            continue;
        }
        match step(report, what, f) {
            None => why_not = Some("an earlier step did not return"),
            Some(false) if i == 0 => why_not = Some("the first write did not succeed"),
            Some(_) => {}
        }
    }
}

/// One step of the sink check, run on a thread of its own.
type Step =
    Box<dyn FnOnce(&mut gateway_sdk::abi::SinkBox) -> Result<(), gateway_sdk::PluginError> + Send>;

/// A sink that stands in while the real one is on a step's thread.
fn placeholder() -> gateway_sdk::abi::SinkBox {
    struct Gone;
    impl gateway_sdk::abi::SinkFfi for Gone {
        fn write(
            &mut self,
            _: abi_stable::std_types::RSlice<'_, gateway_sdk::Reading>,
        ) -> abi_stable::std_types::RResult<(), gateway_sdk::PluginError> {
            abi_stable::std_types::RErr(gateway_sdk::PluginError::fatal(
                "the sink did not come back from an earlier step",
            ))
        }
        fn close(&mut self) -> abi_stable::std_types::RResult<(), gateway_sdk::PluginError> {
            abi_stable::std_types::RErr(gateway_sdk::PluginError::fatal(
                "the sink did not come back from an earlier step",
            ))
        }
    }
    gateway_sdk::abi::SinkFfi_TO::from_value(Gone, abi_stable::sabi_trait::TD_Opaque)
}
