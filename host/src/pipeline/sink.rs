//! A sink instance on its own thread: one write loop, whatever the sink reads from. An
//! `Input` says what the next write is and what to do with its outcome: the sink's queue
//! (source batches gathered by size and by time, each acknowledged to its source) or its disk
//! buffer (records taken oldest first, acknowledged to the buffer). Writing, retrying and
//! rebuilding are [`super::worker`]'s; a sink that takes several batches at once is pumped by
//! [`super::window`].

use super::{
    direct::{Direct, Lender},
    worker::{is_stopped, Settled, SinkFactory, Worker},
    Envelope, Phase, Shutdown,
};
use crate::{
    buffer::{DiskBuffer, Reader, Taken},
    config::SinkSettings,
    deadletter::DeadLetters,
    stats::SinkStats,
};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use gateway_sdk::{abi::SinkBox, Reading};
use std::{
    ops::Range,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Everything a sink thread needs.
pub struct SinkRunner {
    /// Instance name.
    pub name: String,
    /// The first instance, built before anything started.
    pub instance: SinkBox,
    /// Builds replacements.
    pub factory: SinkFactory,
    /// Batching, queue and retry settings.
    pub settings: SinkSettings,
    /// First restart delay.
    pub restart_backoff: Duration,
    /// Longest restart delay.
    pub restart_backoff_max: Duration,
    /// Where the sink's batches come from.
    pub input: SinkInput,
    /// The run's phase: the sink drains at [`Phase::Draining`], gives up at
    /// [`Phase::Aborting`].
    pub shutdown: Shutdown,
    /// Counters.
    pub stats: Arc<SinkStats>,
    /// Where batches the sink refuses for good are kept.
    pub dead_letters: Arc<DeadLetters>,
    /// Set when a reload replaces this instance: it takes nothing more, and what it holds goes
    /// to its successor (see [`Handover`]).
    pub handover: Arc<AtomicBool>,
}

/// Where a sink thread takes its batches from.
pub enum SinkInput {
    /// Straight from its queue.
    Queue(QueueInput),
    /// From its disk buffer (a [`super::buffer_writer::BufferWriter`] fills it from the queue).
    Buffer(BufferedInput),
}

/// A sink's queue, as the sink thread sees it.
pub struct QueueInput {
    /// The queue the sources fill.
    pub rx: Receiver<Envelope>,
    /// Batches a predecessor replaced by a reload did not write: taken before the queue.
    pub handed: Handover,
    /// Where the instance is lent to the sources while the queue is empty.
    pub direct: Arc<Direct>,
}

/// The batches an instance that a reload replaces hands to its successor: those it had taken
/// from the queue and not written. Lives as long as the sink's name, like its queue.
#[derive(Clone)]
pub struct Handover {
    /// Where a retiring instance puts them.
    pub tx: Sender<Envelope>,
    /// Where its successor takes them from, first.
    pub rx: Receiver<Envelope>,
}

impl Default for Handover {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Handover { tx, rx }
    }
}

/// A sink's disk buffer, as the sink thread sees it.
pub struct BufferedInput {
    /// The buffer.
    pub buffer: Arc<DiskBuffer>,
    /// Disconnects once the writer thread has put everything queued on disk and stopped.
    pub writer_done: Receiver<()>,
    /// How long, once draining, the sink goes on sending what is buffered; the rest stays on
    /// disk for the next start.
    pub drain_budget: Duration,
}

/// One write: its readings, and the parts they are made of (source batches, or buffer
/// records), each settled on its own when the sink refuses the whole.
pub(super) trait Batch {
    fn readings(&self) -> &[Reading];
    fn parts(&self) -> &[Range<usize>];
}

/// What an input has for the sink.
pub(super) enum Next<B> {
    /// The next write.
    Batch(B),
    /// Nothing within the wait.
    Idle,
    /// Nothing more: the sink should stop.
    End,
}

/// Where a sink's writes come from, and where their outcomes go.
pub(super) trait Input {
    type Batch: Batch;
    /// The next write, waiting at most `wait` for one to begin.
    fn poll(&mut self, w: &mut Worker, wait: Duration) -> Next<Self::Batch>;
    /// The next write; `None` when the sink should stop.
    fn next(&mut self, w: &mut Worker) -> Option<Self::Batch> {
        loop {
            match self.poll(w, IDLE_CHECK) {
                Next::Batch(b) => return Some(b),
                Next::Idle => {}
                Next::End => return None,
            }
        }
    }
    /// Hands on the outcome of `batch`; `false` to stop.
    fn settle(&mut self, batch: Self::Batch, outcome: Settled) -> bool;
    /// Gives up `batch`, taken and not settled in order (its write ended `outcome`, if it
    /// ended), at an abort or behind a write that stopped: what is queued tells its sources it
    /// was not taken (or goes to a successor), what is buffered stays on disk.
    fn abandon(&mut self, batch: Self::Batch, outcome: Option<Settled>) {
        drop((batch, outcome));
    }
    /// Says what is left, once the loop ended.
    fn finish(self, w: &Worker);
}

/// How often a waiting sink looks at the shutdown phase.
pub(super) const IDLE_CHECK: Duration = Duration::from_millis(50);

/// The write loop, the same for every input: one write at a time, or, for a sink that takes
/// several at once, [`super::window::pump`].
fn pump<I: Input>(mut input: I, w: &mut Worker, shutdown: &Shutdown) {
    let window = w.window();
    if window > 1 {
        tracing::info!(window, "the sink takes several batches at once");
        super::window::pump(&mut input, w, shutdown, window);
        input.finish(w);
        return;
    }
    w.lends = true;
    while !shutdown.reached(Phase::Aborting) {
        let Some(batch) = input.next(w) else { break };
        let outcome = match batch.parts() {
            [_] => Settled::Whole(w.write_settled(batch.readings())),
            parts => w.write_parts(batch.readings(), parts),
        };
        if !input.settle(batch, outcome) {
            break;
        }
    }
    input.finish(w);
}

impl SinkRunner {
    /// Runs until drained (or aborted), then closes the instance.
    pub fn run(self) {
        let span = tracing::info_span!("sink", instance = %self.name);
        let _enter = span.enter();
        let buffered = matches!(self.input, SinkInput::Buffer(_));
        let mut w = Worker::new(
            self.name,
            self.instance,
            self.factory,
            self.settings,
            (self.restart_backoff, self.restart_backoff_max),
            self.shutdown.clone(),
            (buffered, self.handover.clone()),
            self.stats,
            self.dead_letters,
        );
        tracing::info!("sink running");
        match self.input {
            SinkInput::Queue(q) => {
                let queue = Queue {
                    rx: q.rx,
                    handed: q.handed,
                    lender: Lender::new(q.direct),
                    handover: self.handover,
                    shutdown: self.shutdown.clone(),
                    carry: None,
                    scratch: Vec::new(),
                };
                pump(queue, &mut w, &self.shutdown);
            }
            SinkInput::Buffer(b) => {
                let buffered = Buffered {
                    reader: b.buffer.reader(),
                    input: b,
                    handover: self.handover,
                    shutdown: self.shutdown.clone(),
                    stop_at: None,
                };
                pump(buffered, &mut w, &self.shutdown);
            }
        }
        w.close();
    }
}

impl Queue {
    /// Lends the instance to the sources while waiting up to `wait` for the queue, if the
    /// worker may; the wait that is left to the caller.
    fn lend(&self, w: &mut Worker, wait: Duration) -> Duration {
        if self.shutdown.reached(Phase::Draining) {
            return wait;
        }
        match w.lend_while_waiting(&self.lender, &self.rx, wait.min(IDLE_CHECK)) {
            true => Duration::ZERO,
            false => wait,
        }
    }
}

/// What a queue gives: one source batch as it is (no copy), or several copied into one write.
enum Gathered {
    One(Envelope, [Range<usize>; 1]),
    Many {
        all: Vec<Reading>,
        envelopes: Vec<Envelope>,
        parts: Vec<Range<usize>>,
    },
}

impl Batch for Gathered {
    fn readings(&self) -> &[Reading] {
        match self {
            Gathered::One(e, _) => &e.readings,
            Gathered::Many { all, .. } => all,
        }
    }
    fn parts(&self) -> &[Range<usize>] {
        match self {
            Gathered::One(_, whole) => whole,
            Gathered::Many { parts, .. } => parts,
        }
    }
}

/// Records taken from the disk buffer, one part each.
impl Batch for Taken {
    fn readings(&self) -> &[Reading] {
        &self.readings
    }
    fn parts(&self) -> &[Range<usize>] {
        &self.records
    }
}

/// A sink's queue: source batches gathered into writes of up to `batch_size` readings, the
/// first waiting at most `batch_timeout` for more.
struct Queue {
    rx: Receiver<Envelope>,
    handed: Handover,
    /// Lends the instance to the sources while nothing is queued.
    lender: Lender,
    handover: Arc<AtomicBool>,
    shutdown: Shutdown,
    /// A batch that did not fit in the last write; it starts the next.
    carry: Option<Envelope>,
    scratch: Vec<Reading>,
}

impl Input for Queue {
    type Batch = Gathered;

    fn poll(&mut self, w: &mut Worker, wait: Duration) -> Next<Gathered> {
        if self.handover.load(Ordering::Relaxed) {
            return Next::End;
        }
        let first = match self.carry.take().or_else(|| self.handed.rx.try_recv().ok()) {
            Some(e) => e,
            None => match poll_envelope(&self.rx, &self.shutdown, self.lend(w, wait)) {
                Next::Batch(e) => e,
                Next::Idle => return Next::Idle,
                Next::End => return Next::End,
            },
        };
        let (size, timeout) = (w.settings.batch_size, w.settings.batch_timeout);
        let mut envelopes = vec![first];
        let mut n = envelopes[0].readings.len();
        let deadline = Instant::now() + timeout;
        while n < size {
            let got = if self.shutdown.reached(Phase::Draining) {
                self.rx.try_recv().ok()
            } else {
                self.rx.recv_deadline(deadline).ok()
            };
            let Some(e) = got else { break };
            if n + e.readings.len() > size {
                self.carry = Some(e);
                break;
            }
            n += e.readings.len();
            envelopes.push(e);
        }
        if envelopes.len() == 1 {
            let e = envelopes.pop().expect("one");
            let n = e.readings.len();
            return Next::Batch(Gathered::One(e, [Range { start: 0, end: n }]));
        }
        let mut all = std::mem::take(&mut self.scratch);
        all.clear();
        all.reserve(n);
        let mut parts = Vec::with_capacity(envelopes.len());
        for e in &mut envelopes {
            let start = all.len();
            let shared = std::mem::replace(&mut e.readings, Arc::new(Default::default()));
            match Arc::try_unwrap(shared) {
                Ok(owned) => all.extend(owned),
                Err(shared) => all.extend(shared.iter().cloned()),
            }
            parts.push(start..all.len());
        }
        Next::Batch(Gathered::Many {
            all,
            envelopes,
            parts,
        })
    }

    fn settle(&mut self, batch: Gathered, outcome: Settled) -> bool {
        if self.handover.load(Ordering::Relaxed) && outcome.stopped(batch.parts().len()) {
            self.abandon(batch, None);
            return false;
        }
        match batch {
            Gathered::One(e, _) => acknowledge(std::iter::once(e), outcome),
            Gathered::Many { all, envelopes, .. } => {
                self.scratch = all;
                acknowledge(envelopes, outcome);
            }
        }
        true
    }

    /// Handing over, the batch goes to the successor whole (the parts of it that were
    /// written are written again: sinks drop ids they already stored).
    fn abandon(&mut self, batch: Gathered, _: Option<Settled>) {
        if !self.handover.load(Ordering::Relaxed) {
            return;
        }
        let envelopes = match batch {
            Gathered::One(e, _) => vec![e],
            // The readings were moved out of their envelopes into `all`: put them back.
            Gathered::Many {
                all,
                envelopes,
                parts,
            } => envelopes
                .into_iter()
                .zip(parts)
                .map(|(mut e, r)| {
                    e.readings = Arc::new(all[r].iter().cloned().collect());
                    e
                })
                .collect(),
        };
        for e in envelopes {
            let _ = self.handed.tx.send(e);
        }
    }

    fn finish(mut self, w: &Worker) {
        if self.handover.load(Ordering::Relaxed) {
            if let Some(e) = self.carry.take() {
                let _ = self.handed.tx.send(e);
            }
            let n = self.handed.rx.len();
            if n > 0 {
                tracing::info!(
                    batches = n,
                    "handing the batches not written to the instance that replaces this one"
                );
            }
            return;
        }
        let left = self.rx.len() + usize::from(self.carry.is_some());
        if left > 0 {
            tracing::error!(
                batches = left,
                readings = w.stats.pending(),
                "sink stopped with batches it did not write"
            );
        }
    }
}

/// Acknowledges each source batch with its outcome; one not written (the shutdown stopped the
/// write) is dropped, which tells its source the sink did not take it.
fn acknowledge(envelopes: impl IntoIterator<Item = Envelope>, outcome: Settled) {
    match outcome {
        Settled::Whole(o) => envelopes.into_iter().for_each(|e| e.ack.done(o.clone())),
        Settled::Parts(each) => {
            for (e, o) in envelopes.into_iter().zip(each) {
                e.ack.done(o);
            }
        }
    }
}

/// A sink's disk buffer: records taken oldest first (beside a backlog, a live lane), each
/// write acknowledged to the buffer once it is stored or refused for good.
struct Buffered {
    input: BufferedInput,
    handover: Arc<AtomicBool>,
    reader: Reader,
    shutdown: Shutdown,
    /// Once draining: when the drain budget is spent.
    stop_at: Option<Instant>,
}

impl Input for Buffered {
    type Batch = Taken;

    fn poll(&mut self, w: &mut Worker, wait: Duration) -> Next<Taken> {
        let buf = &self.input.buffer;
        if self.shutdown.reached(Phase::Aborting) || self.handover.load(Ordering::Relaxed) {
            return Next::End;
        }
        let draining = self.shutdown.reached(Phase::Draining);
        if draining {
            let budget = self.input.drain_budget;
            if Instant::now() >= *self.stop_at.get_or_insert_with(|| Instant::now() + budget) {
                return Next::End;
            }
        }
        let more = if draining {
            Duration::ZERO
        } else {
            w.settings.batch_timeout
        };
        match buf.take(&mut self.reader, w.settings.batch_size, wait, more) {
            Some(taken) => Next::Batch(taken),
            None if draining && self.writer_stopped() => Next::End,
            None => Next::Idle,
        }
    }

    /// Acknowledges the records to the buffer, unless the shutdown stopped the write: then
    /// they stay on disk for the next start, and the sink stops.
    fn settle(&mut self, taken: Taken, outcome: Settled) -> bool {
        if outcome.stopped(taken.records.len()) {
            self.abandon(taken, Some(outcome));
            return false;
        }
        self.input.buffer.ack(&mut self.reader, taken);
        true
    }

    /// The records stay on disk for the next start; those `drop_oldest` dropped meanwhile
    /// (and their write did not store or refuse) are counted dropped now.
    fn abandon(&mut self, taken: Taken, outcome: Option<Settled>) {
        let settled = |i: usize| match &outcome {
            Some(Settled::Whole(o)) => !is_stopped(o),
            Some(Settled::Parts(each)) => each.get(i).is_some_and(|o| !is_stopped(o)),
            None => false,
        };
        self.input.buffer.untake(&taken, settled);
    }

    fn finish(self, _: &Worker) {
        let buf = &self.input.buffer;
        let left = buf.pending();
        if self.handover.load(Ordering::Relaxed) {
            tracing::info!(
                readings = left,
                "the disk buffer keeps them for the instance that replaces this one (for a sink removed from the config: for a start whose config has a sink of this name again)"
            );
        } else if left > 0 {
            tracing::info!(
                readings = left,
                bytes = buf.bytes(),
                "readings stay in the disk buffer; they are sent after the next start"
            );
        }
    }
}

impl Buffered {
    fn writer_stopped(&self) -> bool {
        matches!(
            self.input.writer_done.try_recv(),
            Err(TryRecvError::Disconnected)
        )
    }
}

/// The next queued batch: waits for one while running (at most `wait`); once draining, what
/// is still queued, then the end; the end at once when aborting or when every sender is gone.
///
/// While the queue is empty it looks at the phase every 50 ms. A `select!` over the queue and
/// the phase's gate would wake at once, but registering with the queue for every batch costs
/// a lock that the sending source contends for: the null pipeline ran 30 % slower with it.
pub(super) fn poll_envelope(
    rx: &Receiver<Envelope>,
    shutdown: &Shutdown,
    wait: Duration,
) -> Next<Envelope> {
    if shutdown.reached(Phase::Aborting) {
        return Next::End;
    }
    if shutdown.reached(Phase::Draining) {
        return rx.try_recv().map_or(Next::End, Next::Batch);
    }
    match rx.recv_timeout(wait.min(IDLE_CHECK)) {
        Ok(e) => Next::Batch(e),
        Err(RecvTimeoutError::Timeout) => Next::Idle,
        Err(RecvTimeoutError::Disconnected) => Next::End,
    }
}
