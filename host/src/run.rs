//! Runs a [`Plan`]: wires its instances to threads and queues, runs until a signal (or until
//! every source finished), and shuts down in phases (see [`Phase`]): stop the sources, drain
//! the sinks, give up at the deadline. Every thread reports its end on a channel; nothing here
//! polls.

use crate::{
    config::Config,
    metrics::Registry,
    notify::Notifier,
    pipeline::{
        buffer_writer::BufferWriter,
        sink::{BufferedInput, SinkInput, SinkRunner},
        source::{SinkPort, SourceRunner},
        Phase, Shutdown,
    },
    plan::{dead_letters, Plan},
    stats::{SinkStats, SinkView, SourceStats},
};
use crossbeam_channel::{Receiver, Sender};
use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

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

/// Runs the plan until `signal` receives (or, with `until_sources_finish`, until every source
/// finished), then shuts down.
pub fn run(plan: Plan, opts: &RunOptions, signal: Receiver<()>) -> RunSummary {
    let started = Instant::now();
    let shutdown = Shutdown::new();
    let mut graph = Graph::start(plan, &shutdown);
    graph.log_stats_every(&shutdown);
    graph.serve_metrics(&shutdown);
    tracing::info!(
        device = %graph.config.gateway.device,
        sources = graph.n_sources,
        sinks = graph.sinks.len(),
        "gateway running"
    );
    let notifier = Notifier::from_env();
    notifier.send(&format!(
        "READY=1\nSTATUS=running: {} sources, {} sinks",
        graph.n_sources,
        graph.sinks.len()
    ));
    if graph.wait_for_stop(&signal, opts, &notifier) {
        graph.wait_for_delivery(&signal);
    }
    notifier.send("STOPPING=1\nSTATUS=shutting down: draining the sinks");
    let clean = graph.shut_down(&shutdown);
    graph.summarize(started.elapsed(), clean, opts)
}

/// Sends the thread's name on `tx` when dropped: at the end of the thread, however it ends.
struct Exit(Sender<String>, String);

impl Drop for Exit {
    fn drop(&mut self) {
        let _ = self.0.send(std::mem::take(&mut self.1));
    }
}

/// Spawns `f` on a thread named `name` that reports its end on `exits`.
fn spawn(
    name: String,
    exits: &Sender<String>,
    f: impl FnOnce() + Send + 'static,
) -> JoinHandle<()> {
    let exit = Exit(exits.clone(), name.clone());
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let _exit = exit;
            f()
        })
        .expect("spawn a thread")
}

/// Readings a sink accepted and has neither delivered, refused, nor dropped by its buffer's
/// `when_full` policy.
fn undelivered(s: &SinkView) -> u64 {
    let dropped = s
        .buffer
        .as_ref()
        .map_or(0, |b| b.stats.dropped.load(Ordering::Relaxed));
    s.stats.pending().saturating_sub(dropped)
}

/// A running graph: its threads and what they report.
struct Graph {
    config: Config,
    n_sources: usize,
    /// Sources that returned so far.
    sources_done: usize,
    /// Source threads report their end here.
    source_exits: Receiver<String>,
    /// Sink and buffer threads report their end here.
    sink_exits: Receiver<String>,
    sink_threads: Vec<JoinHandle<()>>,
    sources: Vec<(String, Arc<SourceStats>)>,
    sinks: Vec<SinkView>,
}

impl Graph {
    /// Spawns every sink (and buffer writer) thread, then every source thread.
    fn start(plan: Plan, shutdown: &Shutdown) -> Graph {
        let Plan {
            config,
            sources,
            sinks,
        } = plan;
        let (sink_tx, sink_exits) = crossbeam_channel::unbounded();
        let mut ports = HashMap::new();
        let mut sink_threads = Vec::new();
        let mut views = Vec::new();
        for k in sinks {
            let (tx, rx) = crossbeam_channel::bounded(k.settings.queue_capacity);
            let stats = Arc::new(SinkStats::default());
            ports.insert(k.decl.name.clone(), (tx, stats.clone()));
            views.push(SinkView {
                name: k.decl.name.clone(),
                stats: stats.clone(),
                buffer: k.buffer.clone(),
            });
            let name = k.decl.name.clone();
            let input = match k.buffer {
                None => SinkInput::Queue(rx),
                Some(buffer) => {
                    let recovered = buffer.stats.recovered.load(Ordering::Relaxed);
                    stats.accepted.fetch_add(recovered, Ordering::Relaxed);
                    let (done, writer_done) = crossbeam_channel::bounded(0);
                    let writer = BufferWriter {
                        rx,
                        buffer: buffer.clone(),
                        record_readings: k.settings.batch_size,
                        shutdown: shutdown.clone(),
                        done,
                    };
                    let n = name.clone();
                    sink_threads.push(spawn(format!("buffer:{name}"), &sink_tx, move || {
                        writer.run(&n)
                    }));
                    SinkInput::Buffer(BufferedInput {
                        buffer,
                        writer_done,
                        drain_budget: config.gateway.shutdown_timeout * 3 / 4,
                    })
                }
            };
            let (new, info) = (k.new, k.info.clone());
            let runner = SinkRunner {
                name: name.clone(),
                instance: k.instance,
                factory: Box::new(move || new(&info).into_result()),
                settings: k.settings.clone(),
                restart_backoff: k.decl.restart_backoff,
                restart_backoff_max: k.decl.restart_backoff_max,
                input,
                shutdown: shutdown.clone(),
                stats,
                dead_letters: dead_letters(&config, &k.decl),
            };
            sink_threads.push(spawn(format!("sink:{name}"), &sink_tx, move || {
                runner.run()
            }));
        }

        let (source_tx, source_exits) = crossbeam_channel::unbounded();
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
                shutdown: shutdown.clone(),
                stats,
                restart_backoff: s.decl.restart_backoff,
                restart_backoff_max: s.decl.restart_backoff_max,
            };
            // Detached: a source stuck in its plugin is left behind at the deadline.
            drop(spawn(
                format!("source:{}", s.decl.name),
                &source_tx,
                move || runner.run(),
            ));
        }
        // The sinks' queues stay open only through the sources' ports.
        drop(ports);
        Graph {
            config,
            n_sources,
            sources_done: 0,
            source_exits,
            sink_exits,
            sink_threads,
            sources: source_stats,
            sinks: views,
        }
    }

    /// Logs the counters every `stats_interval` until the run stops.
    fn log_stats_every(&self, shutdown: &Shutdown) {
        let interval = self.config.gateway.stats_interval;
        if interval.is_zero() {
            return;
        }
        let (sources, sinks) = (self.sources.clone(), self.sinks.clone());
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name("stats".into())
            .spawn(move || {
                while !shutdown.wait_for(Phase::Stopping, interval) {
                    log_stats(&sources, &sinks);
                }
            })
            .expect("spawn the stats thread");
    }

    /// Serves `[gateway] metrics`, if set (a port that cannot be bound is logged; the
    /// readings flow on without it).
    fn serve_metrics(&self, shutdown: &Shutdown) {
        let Some(addr) = self.config.gateway.metrics else {
            return;
        };
        let phase = shutdown.clone();
        let registry = Registry {
            sources: self.sources.clone(),
            sinks: self.sinks.clone(),
            ready: Arc::new(move || !phase.reached(Phase::Stopping)),
        };
        match crate::metrics::serve(addr, registry) {
            Ok(bound) => {
                tracing::info!("metrics at http://{bound}/metrics (and /healthz, /readyz)")
            }
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot serve [gateway] metrics; running without them")
            }
        }
    }

    /// Waits for a signal, or, with `until_sources_finish`, for every source to finish; `true`
    /// in the second case. Tells systemd's watchdog that this loop is alive.
    fn wait_for_stop(
        &mut self,
        signal: &Receiver<()>,
        opts: &RunOptions,
        notifier: &Notifier,
    ) -> bool {
        let watchdog = notifier
            .watchdog_interval()
            .map_or_else(crossbeam_channel::never, crossbeam_channel::tick);
        let timeout = self.config.gateway.shutdown_timeout;
        let mut exits = self.source_exits.clone();
        loop {
            crossbeam_channel::select! {
                recv(watchdog) -> _ => notifier.send("WATCHDOG=1"),
                recv(signal) -> _ => {
                    tracing::info!("shutdown requested: stopping the sources, then draining the sinks (at most {timeout:?}; a second signal exits at once)");
                    return false;
                }
                recv(exits) -> name => {
                    if name.is_err() {
                        // Every source thread is gone: only a signal is left to wait for (a
                        // select on the closed channel would return at once, forever).
                        exits = crossbeam_channel::never();
                        continue;
                    }
                    self.sources_done += 1;
                    if self.sources_done == self.n_sources {
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

    /// Once every source of a job (`--until-sources-finish`) has finished: waits, at most
    /// `shutdown_timeout`, until every sink has delivered what it accepted, its disk buffer
    /// included, with the sinks still running (so a failed write is retried as usual rather
    /// than left for the next start). A signal cuts the wait short. Progress is logged every
    /// few seconds.
    fn wait_for_delivery(&self, signal: &Receiver<()>) {
        let timeout = self.config.gateway.shutdown_timeout;
        let deadline = Instant::now() + timeout;
        let mut next_log = Instant::now() + Duration::from_secs(5);
        loop {
            let left: u64 = self.sinks.iter().map(undelivered).sum();
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
    /// after a short grace). `true` if everything ended in time.
    fn shut_down(&mut self, shutdown: &Shutdown) -> bool {
        let deadline = Instant::now() + self.config.gateway.shutdown_timeout;
        shutdown.advance(Phase::Stopping);
        while self.sources_done < self.n_sources {
            match self.source_exits.recv_deadline(deadline) {
                Ok(_) => self.sources_done += 1,
                Err(_) => break,
            }
        }
        let mut clean = self.sources_done == self.n_sources;
        if !clean {
            tracing::error!(
                not_stopped = self.n_sources - self.sources_done,
                "some sources did not return within the shutdown timeout; their last batches may not be taken"
            );
        }
        shutdown.advance(Phase::Draining);
        let mut running = self.sink_threads.len();
        while running > 0 && self.sink_exits.recv_deadline(deadline).is_ok() {
            running -= 1;
        }
        if running > 0 {
            clean = false;
            shutdown.advance(Phase::Aborting);
            let grace = deadline + Duration::from_millis(500);
            while running > 0 && self.sink_exits.recv_deadline(grace).is_ok() {
                running -= 1;
            }
        }
        for h in std::mem::take(&mut self.sink_threads) {
            if h.is_finished() {
                let _ = h.join();
            }
        }
        clean
    }

    /// Logs what each sink wrote, and whether anything was left undelivered. The last line
    /// says "everything in flight was delivered" only when nothing is left anywhere: readings
    /// kept in a disk buffer are named with their count and the buffer's directory. With
    /// `until_sources_finish` (a job that ends), readings left in a buffer make the run
    /// unclean; after a signal they are what the buffer is for, and the run stays clean.
    fn summarize(self, elapsed: Duration, mut clean: bool, opts: &RunOptions) -> RunSummary {
        log_stats(&self.sources, &self.sinks);
        let mut written = Vec::new();
        let mut held = Vec::new();
        let mut held_total = 0;
        for s in &self.sinks {
            let n = s.stats.written.load(Ordering::Relaxed);
            // Held on disk (sent after the next start) or dropped by `when_full` (counted and
            // logged when it happened): neither is lost here.
            let on_disk = s.buffer.as_ref().map_or(0, |b| b.pending());
            let pending = undelivered(s).saturating_sub(on_disk);
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
fn log_stats(sources: &[(String, Arc<SourceStats>)], sinks: &[SinkView]) {
    sources.iter().for_each(|(n, s)| s.log(n));
    for s in sinks {
        s.stats.log(&s.name);
        if let Some(b) = &s.buffer {
            crate::stats::log_buffer(&s.name, b);
        }
    }
}
