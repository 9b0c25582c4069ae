//! Runs a [`Plan`]: wires its instances to threads and queues, runs until a signal (or until
//! every source finished), and shuts down in phases (see [`Phase`]): stop the sources, drain
//! the sinks, give up at the deadline. Every thread reports its end on a channel; nothing here
//! polls.

mod reload;
mod slots;
mod stalls;

pub(crate) use reload::{file_stamps, Files, Stamps};

use crate::{
    config::Config,
    logging::HostLogger,
    metrics::Registry,
    notify::Notifier,
    pipeline::{
        source::{Routes, SinkPort},
        Phase, Shutdown,
    },
    plan::Plan,
    stats::{SinkView, Snapshot, Views},
};
use crossbeam_channel::{Receiver, Sender};
use indexmap::IndexMap;
use slots::{Line, SinkSlot, SourceSlot, Starter};
use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

/// What the run listens to: a stop (SIGINT, SIGTERM) and a reload (SIGHUP).
pub struct Signals {
    /// Stop: drain and exit.
    pub stop: Receiver<()>,
    /// Re-read the config and apply what changed.
    pub reload: Receiver<()>,
}

/// How `run` should behave.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Drain and exit once every source has finished on its own (finite sources, benchmarks).
    pub until_sources_finish: bool,
    /// The metrics page's socket, bound to `[gateway] metrics` before the run (see
    /// [`crate::metrics::serve_on`]); the run serves it.
    pub metrics: Option<std::net::TcpListener>,
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

/// Runs the plan until `signals.stop` receives (or, with `until_sources_finish`, until every
/// source finished), then shuts down; `signals.reload` re-reads the config and applies what
/// changed (see `run/reload.rs`).
pub fn run(
    plan: Plan,
    mut opts: RunOptions,
    signals: Signals,
    logger: Arc<HostLogger>,
) -> RunSummary {
    let started = Instant::now();
    let mut graph = Graph::start(plan, logger);
    graph.log_stats_every();
    if let Some(listener) = opts.metrics.take() {
        graph.serve_metrics(listener);
    }
    tracing::info!(
        device = %graph.config.gateway.device,
        sources = graph.sources.len(),
        sinks = graph.sinks.len(),
        "gateway running"
    );
    let notifier = Notifier::from_env();
    notifier.send(&format!("READY=1\nSTATUS={}", graph.status()));
    if graph.wait_for_stop(&signals, &opts, &notifier) {
        graph.wait_for_delivery(&signals.stop);
    }
    notifier.send("STOPPING=1\nSTATUS=shutting down: draining the sinks");
    let clean = graph.shut_down();
    graph.summarize(started.elapsed(), clean, &opts)
}

/// A running graph: a slot per instance, and what their threads report.
struct Graph {
    config: Config,
    logger: Arc<HostLogger>,
    /// The run's own phase, for the threads that are not instances (stats, metrics).
    run: Shutdown,
    /// Source threads report their end here (by thread id).
    exits_tx: Sender<u64>,
    source_exits: Receiver<u64>,
    next_id: u64,
    sources: IndexMap<String, SourceSlot>,
    sinks: IndexMap<String, SinkSlot>,
    /// Queues of sinks a reload could not start, kept for the next reload with the sink's
    /// declaration: still routed, so that their sources wait for them.
    parked: HashMap<String, (Line, crate::config::Instance)>,
    /// Sinks a reload could not replace (their thread was still in a plugin call), with
    /// their replacements: started once their thread has ended ([`Graph::replace_stuck`]).
    stuck: HashMap<String, reload::Stuck>,
    /// The threads dropping what reloads left over ([`reload`]'s `drop_elsewhere`): waited
    /// for at shutdown, so that the process does not exit under a plugin's `Drop`.
    dropping: Vec<std::thread::JoinHandle<()>>,
    views: Views,
    /// Sinks whose plugin call does not return, as logged.
    stalls: stalls::Stalls,
}

impl Graph {
    /// Starts every sink (and buffer writer) thread, then every source thread.
    fn start(plan: Plan, logger: Arc<HostLogger>) -> Graph {
        let Plan {
            config,
            sources,
            sinks,
        } = plan;
        let (exits_tx, source_exits) = crossbeam_channel::unbounded();
        let mut g = Graph {
            config,
            logger,
            run: Shutdown::new(),
            exits_tx,
            source_exits,
            next_id: 0,
            sources: IndexMap::new(),
            sinks: IndexMap::new(),
            parked: HashMap::new(),
            stuck: HashMap::new(),
            dropping: Vec::new(),
            views: Views::default(),
            stalls: stalls::Stalls::default(),
        };
        for k in sinks {
            let line = Line::new(k.settings.queue_capacity);
            let slot = g.starter().sink(k, line);
            g.sinks.insert(slot.decl.name.clone(), slot);
        }
        for s in sources {
            let routes = Routes::new(g.ports_for(&s.decl.name));
            let slot = g.starter().source(s, routes);
            g.sources.insert(slot.decl.name.clone(), slot);
        }
        g.publish();
        g.keep_metrics_of(&g.config);
        crate::internal::install(g.views.clone(), g.logger.metrics.clone());
        g
    }

    /// Plugin metrics are kept only for the instances of `c`, the config that runs (a
    /// removed instance's threads may publish on their way out).
    fn keep_metrics_of(&self, c: &Config) {
        let names = c.sources.iter().chain(&c.sinks).map(|d| d.name.as_str());
        self.logger.metrics.keep_only(names);
    }

    fn starter(&mut self) -> Starter<'_> {
        Starter {
            config: &self.config,
            exits: &self.exits_tx,
            next_id: &mut self.next_id,
        }
    }

    /// The queues of the sinks that source `name` feeds, as the config says now.
    fn ports_for(&self, name: &str) -> Vec<SinkPort> {
        let parked = self
            .parked
            .values()
            .filter(|(_, decl)| decl.takes_from(name))
            .map(|(line, _)| line.port.clone());
        // A stuck sink runs under its old settings; the sources its replacement takes are
        // routed to it already, so that none is passed over meanwhile.
        let stuck = self
            .stuck
            .iter()
            .filter(|(n, s)| {
                s.built.decl.takes_from(name) && !self.config.sinks_of(name).any(|d| &&d.name == n)
            })
            .filter_map(|(n, _)| self.sinks.get(n))
            .map(|k| k.line.port.clone());
        self.config
            .sinks_of(name)
            .filter_map(|k| self.sinks.get(&k.name))
            .map(|k| k.line.port.clone())
            .chain(parked)
            .chain(stuck)
            .collect()
    }

    /// Shows the instances as they are now to the metrics page and the periodic log.
    fn publish(&self) {
        self.views.set(Snapshot {
            sources: self
                .sources
                .values()
                .map(|s| (s.decl.name.clone(), s.stats.clone()))
                .collect(),
            sinks: self.sink_views(),
        });
    }

    /// The sinks, and the queues of those a reload could not start (what waits there is
    /// not delivered: the shutdown and the metrics count it).
    fn sink_views(&self) -> Vec<SinkView> {
        let parked = self.parked.iter().map(|(name, (line, _))| SinkView {
            name: name.clone(),
            stats: line.port.stats.clone(),
            buffer: None,
        });
        self.sinks
            .values()
            .map(|k| SinkView {
                name: k.decl.name.clone(),
                stats: k.line.port.stats.clone(),
                buffer: k.line.writer.as_ref().map(|w| w.buffer.clone()),
            })
            .chain(parked)
            .collect()
    }

    fn sources_done(&self) -> bool {
        self.sources.values().all(|s| s.finished)
    }

    /// Logs the counters every `stats_interval` until the run stops.
    fn log_stats_every(&self) {
        let interval = self.config.gateway.stats_interval;
        if interval.is_zero() {
            return;
        }
        let (views, run) = (self.views.clone(), self.run.clone());
        std::thread::Builder::new()
            .name("stats".into())
            .spawn(move || {
                while !run.wait_for(Phase::Stopping, interval) {
                    log_stats(&views.get());
                }
            })
            .expect("spawn the stats thread");
    }

    /// Serves `[gateway] metrics`, if set (a port that cannot be bound is logged; the
    /// readings flow on without it).
    fn serve_metrics(&self, listener: std::net::TcpListener) {
        let phase = self.run.clone();
        let registry = Registry {
            views: self.views.clone(),
            plugins: self.logger.metrics.clone(),
            ready: Arc::new(move || !phase.reached(Phase::Stopping)),
            stall_warning: self.config.gateway.stall_warning,
        };
        match crate::metrics::serve_on(listener, registry) {
            Ok(bound) => {
                tracing::info!("metrics at http://{bound}/metrics (and /healthz, /readyz)")
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot serve [gateway] metrics; running without them")
            }
        }
    }

    /// Waits for a signal, or, with `until_sources_finish`, for every source to finish; `true`
    /// in the second case. Reloads the config on `reload` (SIGHUP). Tells systemd's watchdog
    /// that this loop is alive.
    fn wait_for_stop(&mut self, signals: &Signals, opts: &RunOptions, notifier: &Notifier) -> bool {
        let watchdog = notifier
            .watchdog_interval()
            .map_or_else(crossbeam_channel::never, crossbeam_channel::tick);
        let timeout = self.config.gateway.shutdown_timeout;
        let exits = self.source_exits.clone();
        let each_second = crossbeam_channel::tick(Duration::from_secs(1));
        let mut clock = crate::clock::Watch::default();
        clock.check();
        // A stop asked for by a signal, whether the loop or a reload's check heard it.
        let stop = || {
            tracing::info!("shutdown requested: stopping the sources, then draining the sinks (at most {timeout:?}; a second signal exits at once)");
            false
        };
        loop {
            crossbeam_channel::select! {
                recv(watchdog) -> _ => notifier.send("WATCHDOG=1"),
                recv(each_second) -> _ => {
                    clock.check();
                    let after = self.config.gateway.stall_warning;
                    if !after.is_zero() {
                        self.stalls.check(after, &self.sink_views());
                    }
                    if !self.stuck.is_empty() {
                        notifier.pinging_while(timeout + Duration::from_secs(10), || self.replace_stuck());
                    }
                }
                recv(signals.stop) -> _ => return stop(),
                recv(signals.reload) -> _ => {
                    notifier.send("RELOADING=1\nSTATUS=reloading the config");
                    // A reload checks the new config (abandoned past `longest`, or when a
                    // shutdown is asked for meanwhile), then waits for instances to stop (up
                    // to shutdown_timeout, twice).
                    let longest = timeout * 2 + Duration::from_secs(10);
                    let go_on = notifier.pinging_while(longest * 2, || {
                        self.reload(&signals.stop, longest)
                    });
                    if !go_on {
                        return stop();
                    }
                    notifier.send(&format!("READY=1\nSTATUS={}", self.status()));
                    // A reload may have removed the last source still running.
                    if opts.until_sources_finish && self.sources_done() {
                        tracing::info!("every source finished: draining the sinks");
                        return true;
                    }
                }
                recv(exits) -> id => {
                    // The graph holds a sender: the channel never closes.
                    let Ok(id) = id else { continue };
                    // A retired instance's end is not a source finishing.
                    let Some(s) = self.sources.values_mut().find(|s| s.thread.id == id) else {
                        continue;
                    };
                    s.finished = true;
                    if self.sources_done() {
                        if opts.until_sources_finish {
                            tracing::info!("every source finished: draining the sinks");
                            return true;
                        }
                        tracing::info!("every source finished; the gateway waits for a signal to exit");
                    }
                }
            }
        }
    }

    /// What systemd's status line says while running.
    fn status(&self) -> String {
        format!(
            "running: {} sources, {} sinks",
            self.sources.len(),
            self.sinks.len()
        )
    }

    /// Once every source of a job (`--until-sources-finish`) has finished: waits, at most
    /// `shutdown_timeout`, until every sink has delivered what it accepted, its disk buffer
    /// included, with the sinks still running (so a failed write is retried as usual rather
    /// than left for the next start). A signal cuts the wait short. Progress is logged every
    /// few seconds.
    fn wait_for_delivery(&self, signal: &Receiver<()>) {
        let timeout = self.config.gateway.shutdown_timeout;
        let deadline = Instant::now() + timeout;
        let mut next_log = Instant::now() + Duration::from_secs(5);
        let views = self.sink_views();
        loop {
            let left: u64 = views.iter().map(SinkView::pending).sum();
            if left == 0 {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(readings = left, "not every reading was delivered within shutdown_timeout ({timeout:?}): shutting down");
                return;
            }
            if now >= next_log {
                tracing::info!(readings = left, "waiting for the sinks to deliver");
                next_log = now + Duration::from_secs(5);
            }
            if signal.recv_timeout(Duration::from_millis(20)).is_ok() {
                tracing::info!("shutdown requested while the sinks were delivering");
                return;
            }
        }
    }

    /// The shutdown, phase by phase, within `shutdown_timeout`: sources stop, sinks drain,
    /// and at the deadline whatever is left gives up (a plugin stuck in a call is left behind
    /// after a short grace). `false` if a source did not stop in time; what the sinks still
    /// hold is judged by [`Graph::summarize`].
    fn shut_down(&mut self) -> bool {
        let timeout = self.config.gateway.shutdown_timeout;
        let deadline = Instant::now() + timeout;
        // Sources have half of it: one that waits for the acknowledgement of a batch a sink
        // holds (behind a full disk buffer, a sink that is down) must not take the time the
        // sinks need to write what they hold, which is what acknowledges it.
        let sources_until = Instant::now() + timeout / 2;
        self.run.advance(Phase::Stopping);
        for s in self.sources.values() {
            s.thread.shutdown.advance(Phase::Stopping);
        }
        for s in self.sources.values_mut() {
            s.thread.wait(sources_until);
        }
        self.run.advance(Phase::Draining);
        for s in self.sources.values() {
            s.thread.shutdown.advance(Phase::Draining);
        }
        let mut threads: Vec<&mut slots::Thread> = self
            .sinks
            .values_mut()
            .flat_map(|k| {
                std::iter::once(&mut k.thread).chain(k.line.writer.as_mut().map(|w| &mut w.thread))
            })
            .collect();
        threads
            .iter()
            .for_each(|t| t.shutdown.advance(Phase::Draining));
        let mut all_ended = true;
        for t in threads.iter_mut() {
            all_ended &= t.wait(deadline);
        }
        if !all_ended {
            // Not unclean by itself: what such a sink still holds is counted when the run is
            // summed up, where readings kept in a disk buffer are not undelivered (a write
            // still going at the deadline leaves its readings there) and readings in memory are.
            tracing::warn!(
                "a sink did not finish within the shutdown timeout: its write in progress is given up"
            );
            self.run.advance(Phase::Aborting);
            threads
                .iter()
                .for_each(|t| t.shutdown.advance(Phase::Aborting));
            let grace = Instant::now().max(deadline) + Duration::from_millis(500);
            for t in threads.iter_mut() {
                t.wait(grace);
            }
        }
        // A source still waiting for an acknowledgement has it now (or learnt that its batch
        // was not taken, when its sink gave up).
        let grace = Instant::now().max(deadline) + Duration::from_millis(500);
        let not_stopped = self
            .sources
            .values_mut()
            .map(|s| s.thread.wait(grace))
            .filter(|stopped| !stopped)
            .count();
        let clean = not_stopped == 0;
        if !clean {
            tracing::error!(
                not_stopped,
                "some sources did not return within the shutdown timeout; their last batches may not be taken"
            );
        }
        // What reloads left over is dropped by then, unless a plugin's `Drop` outlasts the
        // deadline: the process does not exit under it, nor wait for it more than half a
        // second past the deadline (and the sinks' own half second of grace).
        let grace = Instant::now().max(deadline) + Duration::from_millis(500);
        while self.dropping.iter().any(|h| !h.is_finished()) && Instant::now() < grace {
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.dropping.iter().any(|h| !h.is_finished()) {
            tracing::warn!(
                "a plugin instance a reload left over is still being dropped; exiting anyway"
            );
        }
        clean
    }

    /// Logs what each sink wrote, and whether anything was left undelivered. The last line
    /// says "everything in flight was delivered" only when nothing is left anywhere: readings
    /// kept in a disk buffer are named with their count and the buffer's directory. With
    /// `until_sources_finish` (a job that ends), readings left in a buffer make the run
    /// unclean; after a signal they are what the buffer is for, and the run stays clean.
    fn summarize(self, elapsed: Duration, mut clean: bool, opts: &RunOptions) -> RunSummary {
        let now = self.views.get();
        log_stats(&now);
        let mut written = Vec::new();
        let mut held = Vec::new();
        let mut held_total = 0;
        for s in &now.sinks {
            let n = s.stats.written.load(Ordering::Relaxed);
            // Held on disk (sent after the next start) or dropped by `when_full` (counted and
            // logged when it happened): neither is lost here.
            let on_disk = s.buffer.as_ref().map_or(0, |b| b.pending());
            let pending = s.pending().saturating_sub(on_disk);
            if let (Some(b), 1..) = (&s.buffer, on_disk) {
                held.push(format!("{}: {on_disk} in {}", s.name, b.dir().display()));
                held_total += on_disk;
            }
            if pending > 0 {
                clean = false;
                tracing::error!(sink = %s.name, readings = pending, "readings not delivered at shutdown");
            }
            let rate = n as f64 / elapsed.as_secs_f64().max(1e-9);
            tracing::info!(sink = %s.name, readings = n, "sink wrote {n} readings in {:.3} s ({rate:.0} readings/s)", elapsed.as_secs_f64());
            written.push((s.name.clone(), n));
        }
        if opts.until_sources_finish && held_total > 0 {
            clean = false;
        }
        match (clean, held.is_empty()) {
            (true, true) => tracing::info!("gateway stopped: everything in flight was delivered"),
            (true, false) => tracing::warn!(
                "gateway stopped: {held_total} readings remain in disk buffers ({}); none is lost, they are sent after the next start",
                held.join("; ")
            ),
            (false, true) => {
                tracing::error!("gateway stopped before everything in flight was delivered")
            }
            (false, false) => tracing::error!(
                "gateway stopped with readings undelivered: {held_total} readings remain in disk buffers ({}); they are sent after the next start",
                held.join("; ")
            ),
        }
        RunSummary {
            clean,
            elapsed,
            written,
        }
    }
}

/// Logs every instance's counters (and every disk buffer's state).
fn log_stats(now: &Snapshot) {
    now.sources.iter().for_each(|(n, s)| s.log(n));
    for s in &now.sinks {
        s.stats.log(&s.name, s.pending());
        if let Some(b) = &s.buffer {
            crate::stats::log_buffer(&s.name, b);
        }
    }
}
