//! Builds the graph a config describes (every plugin loaded and every instance built before
//! anything starts), runs it, and shuts it down: stop the sources, drain the sinks, within the
//! configured time.

use crate::{
    buffer::DiskBuffer,
    config::{Config, Instance, Role},
    loader::{Catalog, Library},
    logging::HostLogger,
    pipeline::{
        sink::{BufferWriter, BufferedInput, SinkInput, SinkRunner},
        source::{SinkPort, SourceRunner},
        stop_signal,
    },
    stats::{SinkStats, SourceStats},
};
use gateway_sdk::{
    abi::{InstanceInfo, PluginKind, SinkBox, SourceBox},
    PluginError,
};
use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

type NewSource =
    extern "C" fn(&InstanceInfo) -> abi_stable::std_types::RResult<SourceBox, PluginError>;
type NewSink = extern "C" fn(&InstanceInfo) -> abi_stable::std_types::RResult<SinkBox, PluginError>;

struct Built<T, F> {
    decl: Instance,
    library: Library,
    info: InstanceInfo,
    new: F,
    instance: T,
    /// The sink's disk buffer, opened (and recovered) at build time.
    buffer: Option<Arc<DiskBuffer>>,
}

/// Every instance of a config, built and ready to run.
pub struct Plan {
    config: Config,
    sources: Vec<Built<SourceBox, NewSource>>,
    sinks: Vec<Built<SinkBox, NewSink>>,
}

fn info_for(config: &Config, decl: &Instance) -> InstanceInfo {
    let group = match decl.role {
        Role::Source => "sources",
        Role::Sink => "sinks",
    };
    let data_dir = data_dir(config, decl);
    InstanceInfo {
        instance: decl.name.as_str().into(),
        device: config.gateway.device.as_str().into(),
        config_toml: decl.plugin_toml.as_str().into(),
        config_file: config.path.display().to_string().into(),
        table: format!("{group}.{}", decl.name).into(),
        data_dir: data_dir.display().to_string().into(),
    }
}

/// Puts the file, line and table in front of a plugin's message unless it already has them.
fn located(config: &Config, decl: &Instance, group: &str, what: &str, e: &PluginError) -> String {
    let file = config.path.display().to_string();
    if e.message().starts_with(&file) {
        e.message().to_owned()
    } else {
        format!(
            "{file}:{}: [{group}.{}] {what}: {} ({})",
            decl.line,
            decl.name,
            e.message(),
            e.kind
        )
    }
}

/// An instance's own directory under `data_dir`.
fn data_dir(config: &Config, decl: &Instance) -> std::path::PathBuf {
    config.gateway.data_dir.join(&decl.name)
}

/// A sink's dead letters: `dead-letter/` in its data directory.
pub fn dead_letters(config: &Config, decl: &Instance) -> crate::deadletter::DeadLetters {
    crate::deadletter::DeadLetters::new(
        data_dir(config, decl).join("dead-letter"),
        &decl.name,
        &decl.plugin,
    )
}

/// Where an instance's disk buffer lives: `buffer/` in its data directory.
fn buffer_dir(config: &Config, decl: &Instance) -> std::path::PathBuf {
    data_dir(config, decl).join("buffer")
}

/// Files what the plugin's constructor `new` made of `info`: into `built`, or, failing, into
/// `errors`.
fn build<T, F>(
    (new, made): (F, abi_stable::std_types::RResult<T, PluginError>),
    info: InstanceInfo,
    library: Library,
    (config, decl, group): (&Config, &Instance, &str),
    buffer: Option<Arc<DiskBuffer>>,
    built: &mut Vec<Built<T, F>>,
    errors: &mut Vec<String>,
) {
    match made.into_result() {
        Ok(instance) => built.push(Built {
            decl: decl.clone(),
            library,
            info,
            new,
            instance,
            buffer,
        }),
        Err(e) => errors.push(located(config, decl, group, "could not be built", &e)),
    }
}

impl Plan {
    /// Loads the plugins, builds every instance and opens (recovers) the sinks' disk buffers,
    /// ready to run. Returns every problem found, not just the first.
    pub fn build(config: Config, logger: &Arc<HostLogger>) -> Result<Plan, Vec<String>> {
        Self::build_inner(config, logger, true)
    }

    /// Like [`Plan::build`], for `gateway check`: disk buffers are left alone (a running gateway
    /// may be writing them), only their size on disk is read.
    pub fn check(config: Config, logger: &Arc<HostLogger>) -> Result<Plan, Vec<String>> {
        Self::build_inner(config, logger, false)
    }

    fn build_inner(
        config: Config,
        logger: &Arc<HostLogger>,
        open_buffers: bool,
    ) -> Result<Plan, Vec<String>> {
        for decl in config.sources.iter().chain(&config.sinks) {
            if let Some(level) = decl.log_level {
                logger.set_level(&decl.name, level);
            }
        }
        let mut catalog = Catalog::new(&config.gateway.plugin_dir, logger.clone());
        let mut errors = Vec::new();
        let file = config.path.display().to_string();
        let mut sources = Vec::new();
        let mut sinks = Vec::new();
        for decl in config.sources.iter().chain(&config.sinks) {
            let (group, kind) = match decl.role {
                Role::Source => ("sources", PluginKind::Source),
                Role::Sink => ("sinks", PluginKind::Sink),
            };
            let found = match catalog.find(&decl.plugin, kind) {
                Ok(f) => f,
                Err(e) => {
                    errors.push(format!("{file}:{}: [{group}.{}] {e}", decl.line, decl.name));
                    continue;
                }
            };
            let info = info_for(&config, decl);
            if let Err(e) = std::fs::create_dir_all(info.data_dir.as_str()) {
                errors.push(format!(
                    "{file}:{}: [{group}.{}] cannot create its data directory {}: {e}",
                    decl.line, decl.name, info.data_dir
                ));
                continue;
            }
            let buffer = match &decl.sink.buffer {
                Some(_) if !open_buffers => None,
                None => None,
                Some(settings) => {
                    let dir = buffer_dir(&config, decl);
                    match DiskBuffer::open(&dir, settings) {
                        Ok(b) => Some(Arc::new(b)),
                        Err(e) => {
                            errors.push(format!(
                                "{file}:{}: [{group}.{}] buffer: cannot open the disk buffer in {}: {e}",
                                decl.line,
                                decl.name,
                                dir.display()
                            ));
                            continue;
                        }
                    }
                }
            };
            let what = (&config, decl, group);
            match decl.role {
                Role::Source => {
                    let new = found
                        .plugin
                        .new_source
                        .expect("source descriptor has new_source");
                    let made = new(&info);
                    build(
                        (new, made),
                        info,
                        found.library,
                        what,
                        None,
                        &mut sources,
                        &mut errors,
                    );
                }
                Role::Sink => {
                    let new = found.plugin.new_sink.expect("sink descriptor has new_sink");
                    let made = new(&info);
                    build(
                        (new, made),
                        info,
                        found.library,
                        what,
                        buffer,
                        &mut sinks,
                        &mut errors,
                    );
                }
            }
        }
        if errors.is_empty() {
            Ok(Plan {
                config,
                sources,
                sinks,
            })
        } else {
            Err(errors)
        }
    }

    /// The graph, for `gateway check`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let c = &self.config.gateway;
        let _ = writeln!(
            out,
            "device {:?}, plugins from {}, data in {}",
            c.device,
            c.plugin_dir.display(),
            c.data_dir.display()
        );
        let _ = writeln!(out, "sources:");
        for s in &self.sources {
            let to: Vec<_> = self
                .config
                .sinks_of(&s.decl.name)
                .map(|k| k.name.as_str())
                .collect();
            let _ = writeln!(
                out,
                "  {:<16} {} ({} {}, {})  -> {}",
                s.decl.name,
                s.decl.plugin,
                s.library.name,
                s.library.version,
                s.library.file_name(),
                to.join(", ")
            );
        }
        let _ = writeln!(out, "sinks:");
        for k in &self.sinks {
            let from: Vec<_> = self
                .config
                .sources_of(&k.decl)
                .map(|s| s.name.as_str())
                .collect();
            let st = &k.decl.sink;
            let buffer = match &st.buffer {
                Some(b) => {
                    let dir = buffer_dir(&self.config, &k.decl);
                    let used: u64 = std::fs::read_dir(&dir)
                        .map(|d| {
                            d.filter_map(|e| e.ok()?.metadata().ok())
                                .map(|m| m.len())
                                .sum()
                        })
                        .unwrap_or(0);
                    format!(
                        ", disk buffer in {}: {used} of {} bytes used, when full {:?}, fsync {}",
                        dir.display(),
                        b.max_size,
                        b.when_full,
                        if b.fsync { "always" } else { "never" }
                    )
                }
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "  {:<16} {} ({} {}, {})  <- {}  [batch {} readings / {:?}, queue {} batches{buffer}]",
                k.decl.name,
                k.decl.plugin,
                k.library.name,
                k.library.version,
                k.library.file_name(),
                from.join(", "),
                st.batch_size,
                st.batch_timeout,
                st.queue_capacity
            );
        }
        out
    }
}

/// Builds sink instance `decl` of `config` alone (its plugin loaded, its `new` called), for
/// commands that write to one sink outside a run (`gateway dead-letters resend`).
pub fn build_sink(
    config: &Config,
    decl: &Instance,
    logger: &Arc<HostLogger>,
) -> Result<SinkBox, String> {
    let mut catalog = Catalog::new(&config.gateway.plugin_dir, logger.clone());
    let found = catalog.find(&decl.plugin, PluginKind::Sink)?;
    let info = info_for(config, decl);
    std::fs::create_dir_all(info.data_dir.as_str())
        .map_err(|e| format!("cannot create {}: {e}", info.data_dir))?;
    let new = found.plugin.new_sink.expect("sink descriptor has new_sink");
    new(&info)
        .into_result()
        .map_err(|e| located(config, decl, "sinks", "could not be built", &e))
}

/// How `run` should behave.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Drain and exit once every source has finished on its own (finite sources, benchmarks).
    pub until_sources_finish: bool,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunSummary {
    /// Everything in flight was delivered within the shutdown timeout.
    pub clean: bool,
    /// How long the graph ran.
    pub elapsed: Duration,
    /// Readings written per sink.
    pub written: Vec<(String, u64)>,
}

/// Runs the plan until `shutdown` receives (or, with `until_sources_finish`, until every source
/// finished), then shuts down.
pub fn run(plan: Plan, opts: &RunOptions, shutdown: crossbeam_channel::Receiver<()>) -> RunSummary {
    let Plan {
        config,
        sources,
        sinks,
    } = plan;
    let started = Instant::now();
    let (trigger, stop) = stop_signal();
    let drain = Arc::new(AtomicBool::new(false));
    let abort = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicBool::new(false));

    let mut ports = std::collections::HashMap::new();
    let mut sink_threads = Vec::new();
    // Each sink's counters, and its disk buffer if it has one.
    let mut sink_stats = Vec::new();
    for k in sinks {
        let (tx, rx) = crossbeam_channel::bounded(k.decl.sink.queue_capacity);
        let stats = Arc::new(SinkStats::default());
        ports.insert(k.decl.name.clone(), (tx, stats.clone()));
        sink_stats.push((k.decl.name.clone(), stats.clone(), k.buffer.clone()));
        let (new, info) = (k.new, k.info.clone());
        let input = match k.buffer {
            None => SinkInput::Queue(rx),
            Some(buffer) => {
                let recovered = buffer.stats.recovered.load(Ordering::Relaxed);
                stats.accepted.fetch_add(recovered, Ordering::Relaxed);
                let writer_done = Arc::new(AtomicBool::new(false));
                let writer = BufferWriter {
                    rx,
                    buffer: buffer.clone(),
                    record_readings: k.decl.sink.batch_size,
                    drain: drain.clone(),
                    abort: abort.clone(),
                    done: writer_done.clone(),
                };
                let name = k.decl.name.clone();
                let h = std::thread::Builder::new()
                    .name(format!("buffer:{name}"))
                    .spawn(move || writer.run(&name));
                sink_threads.push(h.expect("spawn buffer thread"));
                SinkInput::Buffer(BufferedInput {
                    buffer,
                    writer_done,
                    drain_budget: config.gateway.shutdown_timeout * 3 / 4,
                })
            }
        };
        let runner = SinkRunner {
            name: k.decl.name.clone(),
            instance: k.instance,
            factory: Box::new(move || new(&info).into_result()),
            settings: k.decl.sink.clone(),
            restart_backoff: k.decl.restart_backoff,
            restart_backoff_max: k.decl.restart_backoff_max,
            input,
            drain: drain.clone(),
            abort: abort.clone(),
            stats,
            dead_letters: dead_letters(&config, &k.decl),
        };
        let h = std::thread::Builder::new()
            .name(format!("sink:{}", k.decl.name))
            .spawn(move || runner.run());
        sink_threads.push(h.expect("spawn sink thread"));
    }

    let (finished_tx, finished_rx) = crossbeam_channel::unbounded::<String>();
    let mut source_stats = Vec::new();
    let n_sources = sources.len();
    for s in sources {
        let routed: Vec<SinkPort> = config
            .sinks_of(&s.decl.name)
            .map(|k| {
                let (tx, stats) = &ports[&k.name];
                SinkPort {
                    tx: tx.clone(),
                    stats: stats.clone(),
                }
            })
            .collect();
        let stats = Arc::new(SourceStats::default());
        source_stats.push((s.decl.name.clone(), stats.clone()));
        let (new, info) = (s.new, s.info.clone());
        let runner = SourceRunner {
            name: s.decl.name.clone(),
            instance: s.instance,
            factory: Box::new(move || new(&info).into_result()),
            sinks: Arc::new(routed),
            stop: stop.clone(),
            closed: closed.clone(),
            stats,
            restart_backoff: s.decl.restart_backoff,
            restart_backoff_max: s.decl.restart_backoff_max,
        };
        let done = finished_tx.clone();
        let name = s.decl.name.clone();
        std::thread::Builder::new()
            .name(format!("source:{name}"))
            .spawn(move || {
                runner.run();
                let _ = done.send(name);
            })
            .expect("spawn source thread");
    }
    drop(finished_tx);
    // The sinks' queues stay open only through the sources' ports.
    drop(ports);

    let log_stats = {
        let (sources, sinks) = (source_stats.clone(), sink_stats.clone());
        move || {
            sources.iter().for_each(|(n, s)| s.log(n));
            sinks.iter().for_each(|(n, s, _)| s.log(n));
            for (n, _, b) in &sinks {
                if let Some(b) = b {
                    crate::stats::log_buffer(n, b);
                }
            }
        }
    };
    if !config.gateway.stats_interval.is_zero() {
        let (stop, interval, log_stats) = (
            stop.clone(),
            config.gateway.stats_interval,
            log_stats.clone(),
        );
        std::thread::Builder::new()
            .name("stats".into())
            .spawn(move || {
                while !stop.wait(interval) {
                    log_stats();
                }
            })
            .expect("spawn stats thread");
    }

    tracing::info!(
        device = %config.gateway.device,
        sources = n_sources,
        sinks = sink_stats.len(),
        "gateway running"
    );

    let mut finished = 0;
    loop {
        crossbeam_channel::select! {
            recv(shutdown) -> _ => {
                tracing::info!("shutdown requested: stopping the sources, then draining the sinks (at most {:?}; a second signal exits at once)", config.gateway.shutdown_timeout);
                break;
            }
            recv(finished_rx) -> name => {
                if name.is_err() { continue; }
                finished += 1;
                if finished == n_sources {
                    if opts.until_sources_finish {
                        tracing::info!("every source finished: draining the sinks");
                        break;
                    }
                    tracing::info!("every source finished; the gateway waits for a signal to exit");
                }
            }
        }
    }

    let deadline = Instant::now() + config.gateway.shutdown_timeout;
    trigger.trigger();
    while finished < n_sources {
        match finished_rx.recv_deadline(deadline) {
            Ok(_) => finished += 1,
            Err(_) => break,
        }
    }
    if finished < n_sources {
        tracing::error!(
            not_stopped = n_sources - finished,
            "some sources did not return within the shutdown timeout; their last batches may not be taken"
        );
    }
    closed.store(true, Ordering::SeqCst);
    drain.store(true, Ordering::SeqCst);
    let mut clean = finished == n_sources;
    // One grace period, shared by every sink that has not finished by the deadline: a plugin
    // stuck in a write cannot be interrupted, and is left behind.
    let grace = deadline + Duration::from_millis(500);
    for h in sink_threads {
        while !h.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !h.is_finished() {
            abort.store(true, Ordering::SeqCst);
            clean = false;
            while !h.is_finished() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if h.is_finished() {
            let _ = h.join();
        }
    }
    let elapsed = started.elapsed();
    log_stats();
    let mut written = Vec::new();
    for (name, s, buffer) in &sink_stats {
        let n = s.written.load(Ordering::Relaxed);
        let mut pending = s.pending();
        if let Some(b) = buffer {
            // Held on disk (sent after the next start) or dropped by `when_full` (counted and
            // logged when it happened): neither is lost here.
            let kept = b.pending() + b.stats.dropped.load(Ordering::Relaxed);
            pending = pending.saturating_sub(kept);
        }
        if pending > 0 {
            clean = false;
            tracing::error!(sink = %name, readings = pending, "readings not delivered at shutdown");
        }
        let rate = n as f64 / elapsed.as_secs_f64().max(1e-9);
        tracing::info!(sink = %name, readings = n, "sink wrote {n} readings in {:.3} s ({rate:.0} readings/s)", elapsed.as_secs_f64());
        written.push((name.clone(), n));
    }
    if clean {
        tracing::info!("gateway stopped: everything in flight was delivered");
    } else {
        tracing::error!("gateway stopped before everything in flight was delivered");
    }
    RunSummary {
        clean,
        elapsed,
        written,
    }
}
