//! The writing half of a sink thread: one write at a time into the plugin, retried with
//! exponential backoff while the error says so, the instance rebuilt when it fails, refusals
//! for good kept in the dead-letter directory. Where the batches come from is
//! [`super::sink`]'s business.

use super::{
    direct::{Lender, QUICK},
    Envelope, Phase, Shutdown,
};
use crate::{
    config::SinkSettings,
    deadletter::DeadLetters,
    stats::{Call, SinkStats},
};
use abi_stable::std_types::RSlice;
use crossbeam_channel::Receiver;
use gateway_sdk::{
    abi::{AckBox, SinkBox},
    ErrorKind, PluginError, Reading,
};
use std::{
    ops::Range,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// At most this many writes of the halves of one refused batch, to find what the sink refuses
/// in it ([`Worker::narrow`]): each bad reading takes about two writes per halving, so this
/// singles out a few in a batch of thousands, while a sink that refuses everything costs a
/// bounded number of writes before the rest is dead-lettered as it is.
const NARROW_WRITES: usize = 64;

/// Most batches a sink takes at once, whatever its `window` says.
pub(super) const MAX_WINDOW: usize = 4096;

/// Builds a new instance of the sink's plugin.
pub type SinkFactory = Box<dyn Fn() -> Result<SinkBox, PluginError> + Send>;

/// How a write of several parts ended.
#[derive(Debug)]
pub enum Settled {
    /// Every part shares this outcome.
    Whole(Result<(), PluginError>),
    /// The whole was refused, and the parts were written one by one: their outcomes, in
    /// order, up to the first stopped by the shutdown (those after it were not written).
    Parts(Vec<Result<(), PluginError>>),
}

impl Settled {
    /// Whether the shutdown stopped (part of) the write: what was not written stays where it
    /// came from.
    pub fn stopped(&self, parts: usize) -> bool {
        match self {
            Settled::Whole(o) => is_stopped(o),
            Settled::Parts(each) => each.len() < parts || each.iter().any(is_stopped),
        }
    }
}

pub(super) fn is_stopped(o: &Result<(), PluginError>) -> bool {
    matches!(o, Err(e) if e.kind == ErrorKind::STOPPED)
}

/// What a failed write calls for ([`Worker::failed`]).
pub(super) enum Failed {
    /// Try the same write again after a backoff.
    Retry(PluginError),
    /// Drop the instance and build a new one, then try again.
    Restart(PluginError),
    /// The outcome: refused for good (the caller dead-letters it), or stopped.
    Final(PluginError),
}

/// A sink instance and what writing to it takes.
pub(super) struct Worker {
    name: String,
    instance: Option<SinkBox>,
    factory: SinkFactory,
    pub(super) settings: SinkSettings,
    restart_backoff: Duration,
    restart_backoff_max: Duration,
    restart_delay: Duration,
    shutdown: Shutdown,
    /// A buffered sink gives up a failing write once draining: its readings stay on disk.
    buffered: bool,
    /// Set when a reload replaces the instance: a failing write is given up once draining,
    /// and goes to the successor.
    handover: Arc<AtomicBool>,
    pub(super) stats: Arc<SinkStats>,
    dead_letters: Arc<DeadLetters>,
    /// The instance may be lent to the sources while the sink waits ([`super::direct`]): it
    /// takes one batch at a time from its queue.
    pub(super) lends: bool,
    /// The last write took at most [`QUICK`].
    quick: bool,
    /// When a failed write was last said at warn, and the failures since (said at debug).
    retries_said: Option<(Instant, u64)>,
    /// The readings not kept in the dead-letter directory, since they were last said.
    not_kept_said: super::not_kept::NotKeptSaid,
}

/// How often failing writes of one sink are said at warn while they go on: an outage of a
/// week with 16 writes in flight, each retried every 30 s, made 46,000 warnings a day.
const RETRIES_SAID_EVERY: Duration = Duration::from_secs(60);

impl Worker {
    /// A worker for `instance`.
    pub(super) fn new(
        name: String,
        instance: SinkBox,
        factory: SinkFactory,
        settings: SinkSettings,
        (restart_backoff, restart_backoff_max): (Duration, Duration),
        shutdown: Shutdown,
        (buffered, handover): (bool, Arc<AtomicBool>),
        stats: Arc<SinkStats>,
        dead_letters: Arc<DeadLetters>,
    ) -> Worker {
        Worker {
            name,
            instance: Some(instance),
            factory,
            settings,
            restart_backoff,
            restart_backoff_max,
            restart_delay: restart_backoff,
            shutdown,
            buffered,
            handover,
            stats,
            dead_letters,
            lends: false,
            quick: false,
            retries_said: None,
            not_kept_said: Default::default(),
        }
    }

    /// Lends the instance to `lender` while waiting at most `wait` for `queue`, if it may and
    /// its last write was quick; `false` if it was not lent (nor waited for).
    pub(super) fn lend_while_waiting(
        &mut self,
        lender: &Lender,
        queue: &Receiver<Envelope>,
        wait: Duration,
    ) -> bool {
        if !(self.lends && self.quick) || self.handover.load(Ordering::Relaxed) {
            return false;
        }
        let Some(instance) = self.instance.take() else {
            return false;
        };
        let back = lender.lend_while_waiting(instance, queue, wait);
        self.instance = Some(back.instance);
        self.quick = back.quick;
        if let Some(e) = back.failed {
            if e.kind.needs_restart() {
                // A write that panics on another thread may work on this one (a plugin that
                // keeps state per thread, or starts a runtime and finds the source's): lending
                // again would fail again, and rebuild the instance each time.
                self.lends = false;
                tracing::warn!(kind = %e.kind, error = %e.message(), "a write on a source's thread failed; from now on the sink is written on its own thread only");
                self.restart(&e);
            } else {
                tracing::debug!(kind = %e.kind, error = %e.message(), "a write on a source's thread failed; the sink's thread writes the batch again");
            }
        }
        true
    }

    pub(super) fn close(&mut self) {
        if let Some(mut inst) = self.instance.take() {
            let closed = {
                let _in_call = self.stats.in_call(Call::Close);
                let closed = inst.close().into_result();
                // The plugin's destructor, too, may wait on what hangs.
                drop(inst);
                closed
            };
            if let Err(e) = closed {
                tracing::warn!(error = %e, "closing the sink failed");
            }
        }
        tracing::info!("sink stopped");
    }

    /// Writes `all`, made of `parts` (source batches, or buffer records). What is refused for
    /// good is settled by [`Worker::refused`].
    pub(super) fn write_parts(&mut self, all: &[Reading], parts: &[Range<usize>]) -> Settled {
        match self.write(all) {
            Err(e) if e.kind == ErrorKind::REJECTED => self.refused(all, parts, e),
            outcome => Settled::Whole(outcome),
        }
    }

    /// Settles `all`, made of `parts`, that the sink refused for good (`e`): each part is
    /// written on its own, so that one source's bad batch does not take the others with it,
    /// until one is stopped by the shutdown; what is refused again is narrowed down
    /// ([`Worker::narrow`]) and dead-lettered.
    pub(super) fn refused(
        &mut self,
        all: &[Reading],
        parts: &[Range<usize>],
        e: PluginError,
    ) -> Settled {
        if parts.len() <= 1 {
            return Settled::Whole(self.narrow(all, e));
        }
        tracing::info!(
            parts = parts.len(),
            error = %e.message(),
            "the sink refused a merged batch; writing its parts one by one"
        );
        let mut each = Vec::with_capacity(parts.len());
        for part in parts {
            let outcome = self.write_settled(&all[part.clone()]);
            let stopped = is_stopped(&outcome);
            each.push(outcome);
            if stopped {
                break;
            }
        }
        Settled::Parts(each)
    }

    /// How many batches the instance takes at once ([`gateway_sdk::Sink::window`]), at most
    /// [`MAX_WINDOW`]: the batches in a window are held in memory, and a source is held back
    /// only once they are all taken.
    pub(super) fn window(&self) -> usize {
        let asked = self
            .instance
            .as_ref()
            .map_or(1, |i| i.window().max(1) as usize);
        if asked > MAX_WINDOW {
            tracing::warn!(
                asked,
                "the sink asks to take more batches at once than the host allows; it takes {MAX_WINDOW}"
            );
        }
        asked.min(MAX_WINDOW)
    }

    /// Starts writing `batch` without waiting for it: `done` hears how it ended. Builds the
    /// instance first if it failed; an error is the outcome (and `done` counts for nothing).
    pub(super) fn submit(&mut self, batch: &[Reading], done: AckBox) -> Result<(), PluginError> {
        while self.instance.is_none() {
            if self.shutdown.reached(Phase::Aborting) || self.giving_up() {
                return Err(PluginError::new(ErrorKind::STOPPED, "shutting down"));
            }
            self.rebuild();
        }
        let inst = self.instance.as_mut().expect("built");
        let _in_call = self.stats.in_call(Call::Write);
        inst.submit(RSlice::from_slice(batch), done).into_result()
    }

    /// Counts a batch of `n` readings written, at its `attempts`th try.
    pub(super) fn wrote(&mut self, n: usize, attempts: u32) {
        self.stats.wrote(n);
        self.restart_delay = self.restart_backoff;
        // A streak ended: the next failure is said at once.
        self.retries_said = None;
        if attempts > 1 {
            tracing::info!(readings = n, attempts, "write succeeded after retrying");
        }
    }

    /// Drops an instance that failed with `e`: the next write builds a new one.
    pub(super) fn restart(&mut self, e: &PluginError) {
        self.stats.restarts.fetch_add(1, Ordering::Relaxed);
        tracing::error!(kind = %e.kind, error = %e.message(), "sink failed; rebuilding it in {:?}", self.restart_delay);
        // Dropping the broken instance runs the plugin's destructor (guarded by the SDK).
        if let Some(broken) = self.instance.take() {
            let _in_call = self.stats.in_call(Call::Close);
            drop(broken);
        }
    }

    /// Counts and logs a retryable failure of a write of `n` readings at its `attempt`th try.
    /// The first failure of a streak is said at warn, then at most one a minute, with how
    /// many failed since; the others at debug (the `retries` counter has them all).
    pub(super) fn retrying(&mut self, n: usize, attempt: u32, e: &PluginError, backoff: Duration) {
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        match &mut self.retries_said {
            Some((at, since)) if at.elapsed() < RETRIES_SAID_EVERY => {
                *since += 1;
                tracing::debug!(readings = n, attempt, error = %e.message(), "write failed; retrying in {backoff:?}");
            }
            said => {
                let since = said.map_or(0, |(_, since)| since);
                if since == 0 {
                    tracing::warn!(readings = n, attempt, error = %e.message(), "write failed; retrying in {backoff:?} (while writes keep failing, this is said once a minute)");
                } else {
                    tracing::warn!(readings = n, attempt, error = %e.message(), failed_since = since, "writes still failing; retrying in {backoff:?}");
                }
                *said = Some((Instant::now(), 0));
            }
        }
    }

    /// [`Worker::write`], with what the sink refuses dead-lettered ([`Worker::narrow`]).
    pub(super) fn write_settled(&mut self, batch: &[Reading]) -> Result<(), PluginError> {
        match self.write(batch) {
            Err(e) if e.kind == ErrorKind::REJECTED => self.narrow(batch, e),
            outcome => outcome,
        }
    }

    /// Settles `batch`, which the sink refused for good (`e`): it is written again in halves,
    /// and a half refused again in halves, so that what goes to the dead-letter file is what
    /// the sink refuses, not the readings that came with it (a disk buffer's record holds a
    /// whole source batch, a request of an uplink a thousand readings). After
    /// [`NARROW_WRITES`] writes, what is still refused is dead-lettered as it is.
    ///
    /// Returns the refusal once what was refused is in a dead-letter file, `Ok` if every half
    /// was taken after all, or how a write was stopped by the shutdown: then nothing is
    /// dead-lettered and the batch stays where it came from (the halves already written go
    /// again, and the sink drops their ids).
    fn narrow(&mut self, batch: &[Reading], e: PluginError) -> Result<(), PluginError> {
        if batch.len() <= 1 {
            return self.dead_letter(batch, e);
        }
        tracing::info!(
            readings = batch.len(),
            error = %e.message(),
            "the sink refused a batch; writing it again in halves, to keep only what it refuses"
        );
        let n = crate::narrow::narrow(
            batch,
            crate::narrow::halves(0..batch.len()),
            NARROW_WRITES,
            |part| self.write(part),
        );
        if let Some(stopped) = n.stopped {
            return Err(stopped);
        }
        if n.kept.is_empty() {
            return Ok(());
        }
        let kept: Vec<Reading> = n
            .kept
            .into_iter()
            .flat_map(|r| batch[r].iter().cloned())
            .collect();
        self.dead_letter(&kept, n.refusal.unwrap_or(e))
    }

    /// Says what the dead-letter directory did with readings the sink refused (`e`). Readings
    /// it did not keep (their device past its share, or the directory full) are counted, and
    /// said at most once a minute, naming each device since: a device may send them as fast
    /// as it can.
    fn said_kept(&mut self, kept: &crate::deadletter::Kept, e: &PluginError) {
        for (path, n) in &kept.files {
            tracing::error!(
                readings = n,
                error = %e.message(),
                kept_in = %path.display(),
                "sink refused the batch for good; its readings are kept in a dead-letter file (`gateway dead-letters` lists and resends them)"
            );
        }
        if kept.files.is_empty() && kept.not_kept.is_empty() && kept.again > 0 {
            tracing::info!(
                readings = kept.again,
                error = %e.message(),
                "sink refused readings again that a dead-letter file already keeps (or that were counted as not kept)"
            );
        }
        let not_kept = kept.not_kept() as u64;
        if not_kept == 0 {
            return;
        }
        self.stats.not_kept.fetch_add(not_kept, Ordering::Relaxed);
        if let Some(say) = self.not_kept_said.add(Instant::now(), &kept.not_kept) {
            tracing::warn!(
                readings = say.readings,
                devices = %say.devices,
                error = %e.message(),
                "sink refused readings for good that its dead-letter directory does not keep: they are counted (gateway_sink_rejected_not_kept_total), and their source is told they were refused (a device of a coaps-ingress keeps them); said once a minute, and at once for each of the first 8 devices in it"
            );
        }
    }

    /// Keeps a batch the sink refused for good (`e`) in its dead-letter directory, and returns
    /// `e`. Until the file is on disk the batch is held (it is not lost because a disk is
    /// full): the write is retried with backoff, until shutdown. Readings of a device whose
    /// files take its share of the directory are neither kept nor held ([`Worker::said_kept`]).
    pub(super) fn dead_letter(
        &mut self,
        batch: &[Reading],
        e: PluginError,
    ) -> Result<(), PluginError> {
        let n = batch.len() as u64;
        let mut backoff = self.settings.retry_backoff;
        let stats = self.stats.clone();
        let held = &stats.dead_letter_held;
        let _held = Unheld(held);
        // After a hold, only what is held is offered again: the rest is settled.
        let mut pending = std::borrow::Cow::Borrowed(batch);
        loop {
            let kept = self.dead_letters.put_new(e.message(), &pending);
            self.said_kept(&kept, &e);
            let Some(io) = kept.error else {
                // Every reading of the batch is settled, each time it is refused: one refused
                // again came again (accepted again), and a dead-letter file keeps it already.
                self.stats.rejected.fetch_add(n, Ordering::Relaxed);
                return Err(e);
            };
            if self.shutdown.reached(Phase::Aborting) || self.giving_up() {
                return Err(PluginError::new(
                    ErrorKind::STOPPED,
                    "shutting down before the refused batch could be dead-lettered",
                ));
            }
            held.store(kept.held.len() as u64, Ordering::Relaxed);
            tracing::error!(
                readings = kept.held.len(),
                error = %e.message(),
                dir = %self.dead_letters.dir().display(),
                io_error = %io,
                "sink refused the batch for good, and its dead-letter file cannot be written; holding the batch, retrying in {backoff:?}"
            );
            self.pause(backoff);
            backoff = (backoff * 2).min(self.settings.retry_backoff_max);
            pending = kept.held.into();
        }
    }

    /// Set once draining for a buffered sink, or for one a reload replaces: failed writes
    /// are not retried, their readings stay on disk or go to the successor.
    fn giving_up(&self) -> bool {
        (self.buffered || self.handover.load(Ordering::Relaxed))
            && self.shutdown.reached(Phase::Draining)
    }

    /// What a write of `n` readings that failed with `e` calls for. A failure that would be
    /// retried or rebuilt, of a buffered sink that is draining, ends the write: its readings
    /// stay in the disk buffer (or go to the instance a reload puts in its place).
    pub(super) fn failed(&self, n: usize, e: PluginError) -> Failed {
        // A config error at write time (a table of a newer schema, say) is about the sink,
        // not these readings: they are held while the instance is rebuilt with backoff, until
        // the operator fixes what the error names. Settled, a buffered sink's records would
        // leave its disk buffer stored nowhere.
        let rebuild = e.kind.needs_restart() || e.kind == ErrorKind::CONFIG;
        // STOPPED leaves a batch to the host's shutdown. Said while the gateway runs, the
        // instance is broken (a client of its own closed, say): taken as final, it would hand
        // the batch back to its source as if the host were stopping (or end a buffered
        // sink's thread for good). The instance is rebuilt with backoff, the batch held.
        if e.kind == ErrorKind::STOPPED && !self.shutdown.reached(Phase::Draining) {
            return Failed::Restart(PluginError::new(
                ErrorKind::FATAL,
                format!(
                    "the sink said it stopped, but the gateway runs: {}",
                    e.message()
                ),
            ));
        }
        if (e.kind.is_retryable() || rebuild) && self.giving_up() {
            if self.handover.load(Ordering::Relaxed) {
                tracing::info!(readings = n, error = %e.message(), "write failed while a reload replaces the sink; the instance that replaces it writes them");
            } else {
                tracing::info!(readings = n, error = %e.message(), "write failed while shutting down; its readings stay in the disk buffer");
            }
            Failed::Final(PluginError::new(ErrorKind::STOPPED, "shutting down"))
        } else if e.kind.is_retryable() {
            Failed::Retry(e)
        } else if rebuild {
            Failed::Restart(e)
        } else {
            Failed::Final(e)
        }
    }

    /// Writes one batch, retrying and rebuilding as its errors say, until it is written, refused
    /// for good (returned as is: the caller dead-letters it), or the shutdown deadline passes.
    fn write(&mut self, batch: &[Reading]) -> Result<(), PluginError> {
        let mut backoff = self.settings.retry_backoff;
        let mut attempts = 0u32;
        loop {
            if self.shutdown.reached(Phase::Aborting) {
                return Err(PluginError::new(
                    ErrorKind::STOPPED,
                    "the shutdown deadline passed before the write succeeded",
                ));
            }
            let Some(inst) = self.instance.as_mut() else {
                // No instance to write with while draining a buffered sink (or one a reload
                // replaces): the readings stay on disk, or go to the successor.
                if self.giving_up() {
                    return Err(PluginError::new(ErrorKind::STOPPED, "shutting down"));
                }
                self.rebuild();
                continue;
            };
            let started = Instant::now();
            let outcome = {
                let _in_call = self.stats.in_call(Call::Write);
                inst.write(RSlice::from_slice(batch)).into_result()
            };
            self.quick = outcome.is_ok() && started.elapsed() <= QUICK;
            match outcome {
                Ok(()) => {
                    self.wrote(batch.len(), attempts + 1);
                    return Ok(());
                }
                Err(e) => match self.failed(batch.len(), e) {
                    Failed::Retry(e) => {
                        attempts += 1;
                        self.retrying(batch.len(), attempts, &e, backoff);
                        self.pause(backoff);
                        backoff = (backoff * 2).min(self.settings.retry_backoff_max);
                    }
                    Failed::Restart(e) => self.restart(&e),
                    Failed::Final(e) => return Err(e),
                },
            }
        }
    }

    /// Waits `d` before a retry; a shutdown ends it early: an abort, or a drain when the
    /// write is to be given up then ([`Worker::giving_up`]).
    fn pause(&self, d: Duration) {
        let end = std::time::Instant::now() + d;
        if self.shutdown.wait_for(Phase::Draining, d) && !self.giving_up() {
            let left = end.saturating_duration_since(std::time::Instant::now());
            self.shutdown.wait_for(Phase::Aborting, left);
        }
    }

    /// Builds the instance again after `restart_delay`. A shutdown ends the wait as it ends
    /// a retry's ([`Worker::pause`]): a buffered sink that is draining builds nothing.
    fn rebuild(&mut self) {
        self.pause(self.restart_delay);
        if self.shutdown.reached(Phase::Aborting) || self.giving_up() {
            return;
        }
        self.restart_delay = (self.restart_delay * 2).min(self.restart_backoff_max);
        let built = {
            let _in_call = self.stats.in_call(Call::Start);
            (self.factory)()
        };
        match built {
            Ok(inst) => {
                tracing::info!(sink = %self.name, "sink rebuilt");
                self.instance = Some(inst);
            }
            Err(e) => {
                tracing::error!(error = %e, "rebuilding the sink failed; next try in {:?}", self.restart_delay)
            }
        }
    }
}

/// Clears [`SinkStats::dead_letter_held`] when the batch it counts is kept, or given up.
struct Unheld<'a>(&'a AtomicU64);

impl Drop for Unheld<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Relaxed);
    }
}
