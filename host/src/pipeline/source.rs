//! A source instance on its own thread: runs it, restarts it with backoff when it fails, and
//! offers it the host's side of `emit`.

use super::{direct::Direct, AckHandle, AckTracker, Envelope, Phase, Shutdown};
use crate::stats::{SinkStats, SourceStats};
use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RErr, ROk, ROption, RResult, RVec},
};
use crossbeam_channel::{SendTimeoutError, Sender, TrySendError};
use gateway_sdk::{
    abi::{AckBox, HostSourceCtx, HostSourceCtx_TO, SourceBox},
    ErrorKind, PluginError, Reading,
};
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, RwLock,
    },
    time::{Duration, Instant},
};

/// Builds a new instance of the source's plugin.
pub type SourceFactory = Box<dyn Fn() -> Result<SourceBox, PluginError> + Send>;

/// The queue of one sink, as a source sees it.
#[derive(Clone)]
pub struct SinkPort {
    /// The sink's queue.
    pub tx: Sender<Envelope>,
    /// The sink's counters (`accepted` grows as batches are queued).
    pub stats: Arc<SinkStats>,
    /// Where a batch is written at once, on the source's thread, while the sink is idle and
    /// quick.
    pub direct: Arc<Direct>,
}

/// The sinks a source feeds. A reload swaps the list; an `emit` uses the one it read first.
#[derive(Clone, Default)]
pub struct Routes(Arc<RwLock<Arc<Vec<SinkPort>>>>);

impl Routes {
    /// Routes to `sinks`.
    pub fn new(sinks: Vec<SinkPort>) -> Routes {
        Routes(Arc::new(RwLock::new(Arc::new(sinks))))
    }
    /// The sinks now.
    pub fn get(&self) -> Arc<Vec<SinkPort>> {
        self.0.read().unwrap().clone()
    }
    /// Routes to `sinks` from now on.
    pub fn set(&self, sinks: Vec<SinkPort>) {
        *self.0.write().unwrap() = Arc::new(sinks);
    }
}

/// The host's side of a running source.
struct Emitter {
    sinks: Routes,
    shutdown: Shutdown,
    stats: Arc<SourceStats>,
    /// Cleared when the `run` this context was given to has returned and its instance is
    /// dropped: a thread of the plugin that kept a clone of it (the instance's, after a failure and rebuild; a retired
    /// one's, after a reload) emits nothing more, and is told to stop.
    live: Arc<AtomicBool>,
}

fn stopped(msg: &str) -> PluginError {
    PluginError::new(ErrorKind::STOPPED, msg)
}

/// Why a batch emitted after its source's `run` returned is not taken.
const RUN_ENDED: &str = "the run this source context was given to has returned: what is emitted through it is not taken (a source emits from `run`, or from threads that end before it returns)";

/// Why a batch was not taken while a source had no sink.
const NO_ROUTE: &str =
    "no sink takes this source's readings at the moment (a reload is replacing them); try again";

impl Emitter {
    /// Whether the `run` this context was given to is over (see `live`).
    fn run_ended(&self) -> bool {
        !self.live.load(Ordering::Acquire)
    }

    /// The sinks to hand a batch to. A source always has one, except while a reload replaces
    /// its only sink by another (the removed one drains, then the new one starts): then
    /// `wait` waits for it, as for room in a full queue; else `Err(None)` (not taken, try
    /// again). Handed to no sink, a batch would count as given up by every sink at once, and
    /// a source that does not wait for its acknowledgements would lose it. `Err(Some)`: the
    /// gateway is shutting down.
    fn routed(&self, wait: bool) -> Result<Arc<Vec<SinkPort>>, Option<PluginError>> {
        let mut since = None;
        loop {
            let sinks = self.sinks.get();
            if !sinks.is_empty() {
                return Ok(sinks);
            }
            if !wait {
                return Err(None);
            }
            let since = *since.get_or_insert_with(Instant::now);
            if self.shutdown.reached(Phase::Draining)
                || (self.shutdown.reached(Phase::Stopping)
                    && since.elapsed() >= Duration::from_secs(1))
            {
                return Err(Some(stopped(
                    "the gateway is shutting down and takes no more readings",
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Hands `batch` to every routed sink. `wait`: for room in a full queue (`emit`); else
    /// (`try_emit`, whose caller checked for room, which another source may have taken since)
    /// a sink whose queue is full gets the batch's acknowledgement failed with a retryable
    /// error at once, so that the caller is never held by a sink (a write retried through an
    /// outage could hold it for hours).
    fn send(
        &self,
        batch: RVec<Reading>,
        ack: ROption<AckBox>,
        wait: bool,
    ) -> RResult<(), PluginError> {
        if batch.is_empty() {
            if let abi_stable::std_types::RSome(mut a) = ack {
                a.done(ROk(()));
            }
            return ROk(());
        }
        if self.shutdown.reached(Phase::Draining) {
            return RErr(stopped(
                "the gateway is shutting down and takes no more readings",
            ));
        }
        if self.run_ended() {
            return RErr(stopped(RUN_ENDED));
        }
        let n = batch.len() as u64;
        let sinks = match self.routed(wait) {
            Ok(sinks) => sinks,
            Err(Some(e)) => return RErr(e),
            Err(None) => {
                // No sink now (a reload replacing this source's only one): the batch is not
                // taken, and its acknowledgement says to try again.
                if let abi_stable::std_types::RSome(mut a) = ack {
                    a.done(RErr(PluginError::retry(NO_ROUTE)));
                }
                return ROk(());
            }
        };
        let tracker = AckTracker::new(sinks.len(), ack.into_option());
        let readings = Arc::new(batch);
        for port in sinks.iter() {
            let tx = &port.tx;
            if port.direct.write(tx, &readings) {
                AckHandle::new(tracker.clone()).done(Ok(()));
                continue;
            }
            let mut env = Envelope {
                readings: readings.clone(),
                ack: AckHandle::new(tracker.clone()),
            };
            if !wait {
                match tx.try_send(env) {
                    Ok(()) => port.stats.accepted.fetch_add(n, Ordering::Relaxed),
                    Err(TrySendError::Full(e)) => {
                        port.stats.refused_full.fetch_add(1, Ordering::Relaxed);
                        e.ack.done(Err(PluginError::retry(
                            "a sink's queue filled while the batch was handed over; try again",
                        )));
                        0
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        return RErr(stopped("the sink stopped taking readings"));
                    }
                };
                continue;
            }
            let mut blocked_since = None;
            loop {
                match tx.send_timeout(env, Duration::from_millis(100)) {
                    Ok(()) => {
                        port.stats.accepted.fetch_add(n, Ordering::Relaxed);
                        break;
                    }
                    Err(SendTimeoutError::Timeout(e)) => {
                        if self.shutdown.reached(Phase::Draining) {
                            return RErr(stopped(
                                "the gateway is shutting down and takes no more readings",
                            ));
                        }
                        let since = *blocked_since.get_or_insert_with(Instant::now);
                        // Shutting down with the sinks full: stop waiting after a moment, so
                        // the sinks spend the shutdown time draining what they already hold.
                        if self.shutdown.reached(Phase::Stopping)
                            && since.elapsed() >= Duration::from_secs(1)
                        {
                            return RErr(stopped(
                                "the gateway is shutting down and its queues are full",
                            ));
                        }
                        if since.elapsed() >= Duration::from_secs(10) {
                            tracing::debug!(
                                "a sink's queue has been full for 10 s; the source waits"
                            );
                            blocked_since = Some(Instant::now());
                        }
                        env = e;
                    }
                    Err(SendTimeoutError::Disconnected(_)) => {
                        return RErr(stopped("the sink stopped taking readings"));
                    }
                }
            }
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.readings.fetch_add(n, Ordering::Relaxed);
        ROk(())
    }
}

impl HostSourceCtx for Emitter {
    fn emit(&self, batch: RVec<Reading>, ack: ROption<AckBox>) -> RResult<(), PluginError> {
        self.send(batch, ack, true)
    }

    fn try_emit(
        &self,
        batch: &mut RVec<Reading>,
        ack: &mut ROption<AckBox>,
    ) -> RResult<(), PluginError> {
        if self.run_ended() {
            return RErr(stopped(RUN_ENDED));
        }
        let sinks = self.sinks.get();
        if sinks.is_empty() {
            return RErr(PluginError::retry(NO_ROUTE));
        }
        if let Some(full) = sinks.iter().find(|p| p.tx.is_full()) {
            full.stats.refused_full.fetch_add(1, Ordering::Relaxed);
            return RErr(PluginError::retry(
                "a sink's queue is full; try again once it has written",
            ));
        }
        // Sources share the queues, so another one may fill the room seen here: that sink's
        // share then fails the acknowledgement, rather than hold this source.
        self.send(
            std::mem::take(batch),
            std::mem::replace(ack, abi_stable::std_types::RNone),
            false,
        )
    }

    fn is_stopping(&self) -> bool {
        self.shutdown.reached(Phase::Stopping) || self.run_ended()
    }

    fn wait_stop(&self, timeout_ms: u64) -> bool {
        self.run_ended()
            || self
                .shutdown
                .wait_for(Phase::Stopping, Duration::from_millis(timeout_ms))
    }
}

/// Everything a source thread needs.
pub struct SourceRunner {
    /// Instance name.
    pub name: String,
    /// The first instance, built before anything started.
    pub instance: SourceBox,
    /// Builds replacements.
    pub factory: SourceFactory,
    /// The queues of the sinks this source feeds.
    pub sinks: Routes,
    /// The run's phase: the source stops at [`Phase::Stopping`].
    pub shutdown: Shutdown,
    /// Counters.
    pub stats: Arc<SourceStats>,
    /// First restart delay.
    pub restart_backoff: Duration,
    /// Longest restart delay.
    pub restart_backoff_max: Duration,
}

/// A run that lasted this long resets the restart delay.
const STABLE_RUN: Duration = Duration::from_secs(60);

impl SourceRunner {
    /// Runs the source until it finishes or the stop signal is raised.
    pub fn run(self) {
        let span = tracing::info_span!("source", instance = %self.name);
        let _enter = span.enter();
        let mut delay = self.restart_backoff;
        let mut instance = Some(self.instance);
        loop {
            let mut source = match instance.take() {
                Some(s) => s,
                None => match (self.factory)() {
                    Ok(s) => {
                        tracing::info!("source rebuilt");
                        s
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "rebuilding the source failed; next try in {delay:?}");
                        if self.shutdown.wait_for(Phase::Stopping, delay) {
                            return;
                        }
                        delay = (delay * 2).min(self.restart_backoff_max);
                        continue;
                    }
                },
            };
            let live = Arc::new(AtomicBool::new(true));
            let ctx = HostSourceCtx_TO::from_value(
                Emitter {
                    sinks: self.sinks.clone(),
                    shutdown: self.shutdown.clone(),
                    stats: self.stats.clone(),
                    live: live.clone(),
                },
                TD_Opaque,
            );
            tracing::info!("source running");
            let started = Instant::now();
            let outcome = source.run(ctx).into_result();
            // After the instance is dropped: a source may flush what it holds as it goes.
            drop(source);
            live.store(false, Ordering::Release);
            if self.shutdown.reached(Phase::Stopping) {
                match outcome {
                    Err(e) if e.kind != ErrorKind::STOPPED => {
                        tracing::warn!(error = %e, "source stopped with an error")
                    }
                    _ => tracing::info!("source stopped"),
                }
                return;
            }
            match outcome {
                Ok(()) => {
                    tracing::info!("source finished: it has nothing more to produce");
                    return;
                }
                Err(e) => {
                    self.stats.restarts.fetch_add(1, Ordering::Relaxed);
                    if started.elapsed() >= STABLE_RUN {
                        delay = self.restart_backoff;
                    }
                    tracing::error!(kind = %e.kind, error = %e.message(), "source failed; restarting it in {delay:?}");
                    if self.shutdown.wait_for(Phase::Stopping, delay) {
                        return;
                    }
                    delay = (delay * 2).min(self.restart_backoff_max);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::std_types::{RSome, RString};
    use gateway_sdk::{abi::InstanceInfo, testing::sample_readings, SourceContext};
    use std::sync::Mutex;

    /// The port of a sink whose queue holds `capacity` batches, and the queue's end.
    fn port(capacity: usize) -> (SinkPort, crossbeam_channel::Receiver<Envelope>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let stats = Arc::<SinkStats>::default();
        let port = SinkPort {
            tx,
            direct: Direct::new(stats.clone()),
            stats,
        };
        (port, rx)
    }

    /// A source context over an emitter with one sink whose queue holds one batch.
    fn context() -> (SourceContext, crossbeam_channel::Receiver<Envelope>) {
        let (port, rx) = port(1);
        let emitter = Emitter {
            sinks: Routes::new(vec![port]),
            shutdown: Shutdown::new(),
            stats: Arc::default(),
            live: Arc::new(AtomicBool::new(true)),
        };
        let info = InstanceInfo {
            instance: RString::from("test"),
            device: RString::from("dev"),
            config_toml: RString::new(),
            config_file: RString::new(),
            table: RString::from("sources.test"),
            data_dir: RString::new(),
        };
        let host = HostSourceCtx_TO::from_value(emitter, TD_Opaque);
        (SourceContext::new(host, &info), rx)
    }

    /// The context a source's `run` was given, kept by the test after `run` returned.
    static KEPT: Mutex<Option<SourceContext>> = Mutex::new(None);

    /// A source whose `run` keeps a clone of its context, as a thread of its own would, and
    /// returns.
    struct Keeper;

    impl gateway_sdk::Source for Keeper {
        const ID: &'static str = "keeper";
        fn new(_: &gateway_sdk::InitContext) -> Result<Self, PluginError> {
            Ok(Keeper)
        }
        fn run(&mut self, ctx: &SourceContext) -> Result<(), PluginError> {
            assert!(!ctx.is_stopping());
            *KEPT.lock().unwrap() = Some(ctx.clone());
            Ok(())
        }
    }

    /// Before, a plugin's thread that kept its context emitted into the sinks for ever: after
    /// a reload removed the source, and beside its rebuilt instance after a failure.
    #[test]
    fn a_context_kept_past_the_end_of_its_run_emits_nothing_and_is_told_to_stop() {
        let (port, rx) = port(4);
        let info = gateway_sdk::testing::instance_info("keeper", "");
        let runner = SourceRunner {
            name: "keeper".into(),
            instance: gateway_sdk::shim::new_source::<Keeper>(&info)
                .into_result()
                .unwrap(),
            factory: Box::new(|| Err(PluginError::fatal("not rebuilt"))),
            sinks: Routes::new(vec![port]),
            shutdown: Shutdown::new(),
            stats: Arc::default(),
            restart_backoff: Duration::from_millis(10),
            restart_backoff_max: Duration::from_millis(10),
        };
        runner.run();
        let ctx = KEPT.lock().unwrap().take().expect("run kept its context");
        assert!(ctx.is_stopping());
        assert!(ctx.wait_stop(Duration::from_secs(60)));
        let e = ctx.emit(sample_readings(1)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::STOPPED, "{e}");
        assert!(e.message().contains("has returned"), "{e}");
        let e = ctx.try_emit_with(sample_readings(1), |_| {}).unwrap_err();
        assert_eq!(e.error.kind, ErrorKind::STOPPED, "{}", e.error);
        assert!(rx.is_empty(), "nothing reached the sink");
    }

    #[test]
    fn try_emit_gives_the_batch_back_when_a_queue_is_full_and_never_acknowledges_it() {
        let (ctx, rx) = context();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let record = |calls: &Arc<Mutex<Vec<bool>>>| {
            let calls = calls.clone();
            move |o: Result<(), PluginError>| calls.lock().unwrap().push(o.is_ok())
        };
        ctx.try_emit_with(sample_readings(2), record(&calls))
            .expect("room for one batch");
        let refused = ctx
            .try_emit_with(sample_readings(3), record(&calls))
            .expect_err("the queue is full");
        assert_eq!(refused.error.kind, ErrorKind::RETRY);
        assert_eq!(refused.batch.map(|b| b.len()), Some(3), "given back whole");
        assert!(calls.lock().unwrap().is_empty(), "nothing acknowledged yet");
        // The sink takes the first batch: only its callback runs.
        rx.recv().unwrap().ack.done(Ok(()));
        assert_eq!(*calls.lock().unwrap(), vec![true]);
        ctx.try_emit_with(sample_readings(1), record(&calls))
            .expect("room again");
        assert_eq!(rx.len(), 1);
    }

    /// Records the outcome the host reports.
    struct Outcome(Arc<Mutex<Option<Result<(), PluginError>>>>);

    impl gateway_sdk::abi::AckFfi for Outcome {
        fn done(&mut self, outcome: RResult<(), PluginError>) {
            *self.0.lock().unwrap() = Some(outcome.into_result());
        }
    }

    #[test]
    fn try_emit_never_waits_for_a_queue_another_source_filled_after_its_check() {
        // Between try_emit's check for room and its send, another source fills one sink's
        // queue. Before, the send then waited for that sink, for as long as its write took: a
        // write retried through a database outage held the ingress's worker (and every DTLS
        // session on it) for the whole outage.
        let ((roomy, roomy_rx), (full, _full_rx)) = (port(4), port(1));
        let tracker = AckTracker::new(1, None);
        let filler = Envelope {
            readings: Arc::new(RVec::from(sample_readings(1))),
            ack: AckHandle::new(tracker),
        };
        full.tx.try_send(filler).map_err(|_| ()).unwrap();
        let emitter = Emitter {
            sinks: Routes::new(vec![roomy, full.clone()]),
            shutdown: Shutdown::new(),
            stats: Arc::default(),
            live: Arc::new(AtomicBool::new(true)),
        };
        let seen = Arc::new(Mutex::new(None));
        let ack = gateway_sdk::abi::AckFfi_TO::from_value(Outcome(seen.clone()), TD_Opaque);
        let started = Instant::now();
        let sent = emitter.send(RVec::from(sample_readings(2)), RSome(ack), false);
        assert!(sent.is_ok(), "the batch is taken");
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "it did not wait"
        );
        assert_eq!(full.stats.refused_full.load(Ordering::Relaxed), 1);
        assert!(
            seen.lock().unwrap().is_none(),
            "the roomy sink has not written yet"
        );
        roomy_rx.try_recv().unwrap().ack.done(Ok(()));
        let outcome = seen.lock().unwrap().take().expect("acknowledged once");
        let e = outcome.expect_err("a sink did not take it");
        assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    }
}
