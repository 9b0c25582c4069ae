//! A sink instance on its own thread: one write loop, whatever the sink reads from. An
//! `Input` says what the next write is and what to do with its outcome: the sink's queue
//! (source batches gathered by size and by time, each acknowledged to its source) or its disk
//! buffer (records taken oldest first, acknowledged to the buffer). Writing, retrying and
//! rebuilding are [`super::worker`]'s.

use super::{
    worker::{Settled, SinkFactory, Worker},
    Envelope, Phase, Shutdown,
};
use crate::{
    buffer::{DiskBuffer, Reader, Taken},
    config::SinkSettings,
    deadletter::DeadLetters,
    stats::SinkStats,
};
use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use gateway_sdk::{abi::SinkBox, Reading};
use std::{
    ops::Range,
    sync::Arc,
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
    pub dead_letters: DeadLetters,
}

/// Where a sink thread takes its batches from.
pub enum SinkInput {
    /// Straight from its queue.
    Queue(Receiver<Envelope>),
    /// From its disk buffer (a [`super::buffer_writer::BufferWriter`] fills it from the queue).
    Buffer(BufferedInput),
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

/// One write: its readings, the parts they are made of, and where they came from.
pub struct Batch {
    data: Data,
    /// The parts, when there are several.
    parts: Vec<Range<usize>>,
    /// The only part, when there is one (no allocation for the common case).
    whole: Range<usize>,
}

enum Data {
    /// One source batch, written as it is (no copy).
    One(Envelope),
    /// Several source batches, copied into one write.
    Many(Vec<Reading>, Vec<Envelope>),
    /// Records taken from the disk buffer.
    Taken(Taken),
}

impl Batch {
    fn new(data: Data, mut parts: Vec<Range<usize>>) -> Batch {
        let whole = if parts.len() == 1 {
            parts.pop().expect("one")
        } else {
            0..0
        };
        Batch { data, parts, whole }
    }

    fn parts(&self) -> &[Range<usize>] {
        if self.parts.is_empty() {
            std::slice::from_ref(&self.whole)
        } else {
            &self.parts
        }
    }

    fn readings(&self) -> &[Reading] {
        match &self.data {
            Data::One(e) => &e.readings,
            Data::Many(all, _) => all,
            Data::Taken(t) => &t.readings,
        }
    }
}

/// Where a sink's writes come from, and where their outcomes go.
trait Input {
    /// The next write; `None` when the sink should stop.
    fn next(&mut self, w: &Worker) -> Option<Batch>;
    /// Hands on the outcome of `batch`; `false` to stop.
    fn settle(&mut self, batch: Batch, outcome: Settled) -> bool;
    /// Says what is left, once the loop ended.
    fn finish(self: Box<Self>, w: &Worker);
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
            buffered,
            self.stats,
            self.dead_letters,
        );
        let mut input: Box<dyn Input> = match self.input {
            SinkInput::Queue(rx) => Box::new(Queue {
                rx,
                shutdown: self.shutdown.clone(),
                carry: None,
                scratch: Vec::new(),
            }),
            SinkInput::Buffer(b) => Box::new(Buffered {
                reader: b.buffer.reader(),
                input: b,
                shutdown: self.shutdown.clone(),
                stop_at: None,
            }),
        };
        tracing::info!("sink running");
        while !self.shutdown.reached(Phase::Aborting) {
            let Some(batch) = input.next(&w) else { break };
            let outcome = if batch.parts().len() == 1 {
                Settled::Whole(w.write_settled(batch.readings()))
            } else {
                w.write_parts(batch.readings(), batch.parts())
            };
            if !input.settle(batch, outcome) {
                break;
            }
        }
        input.finish(&w);
        w.close();
    }
}

/// A sink's queue: source batches gathered into writes of up to `batch_size` readings, the
/// first waiting at most `batch_timeout` for more.
struct Queue {
    rx: Receiver<Envelope>,
    shutdown: Shutdown,
    /// A batch that did not fit in the last write; it starts the next.
    carry: Option<Envelope>,
    scratch: Vec<Reading>,
}

impl Input for Queue {
    fn next(&mut self, w: &Worker) -> Option<Batch> {
        let first = match self.carry.take() {
            Some(e) => e,
            None => next_envelope(&self.rx, &self.shutdown)?,
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
            return Some(Batch {
                data: Data::One(e),
                parts: Vec::new(),
                whole: 0..n,
            });
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
        Some(Batch::new(Data::Many(all, envelopes), parts))
    }

    /// Acknowledges each source batch with its outcome; one not written (the shutdown stopped
    /// the write) is dropped, which tells its source the sink did not take it.
    fn settle(&mut self, batch: Batch, outcome: Settled) -> bool {
        let envelopes = match batch.data {
            Data::One(e) => {
                let Settled::Whole(o) = outcome else {
                    unreachable!("one part is written whole")
                };
                e.ack.done(o);
                return true;
            }
            Data::Many(all, envelopes) => {
                self.scratch = all;
                envelopes
            }
            Data::Taken(_) => unreachable!("a queue takes nothing from a buffer"),
        };
        match outcome {
            Settled::Whole(o) => envelopes.into_iter().for_each(|e| e.ack.done(o.clone())),
            Settled::Parts(each) => {
                for (e, o) in envelopes.into_iter().zip(each) {
                    e.ack.done(o);
                }
            }
        }
        true
    }

    fn finish(self: Box<Self>, w: &Worker) {
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

/// A sink's disk buffer: records taken oldest first (beside a backlog, a live lane), each
/// write acknowledged to the buffer once it is stored or refused for good.
struct Buffered {
    input: BufferedInput,
    reader: Reader,
    shutdown: Shutdown,
    /// Once draining: when the drain budget is spent.
    stop_at: Option<Instant>,
}

impl Input for Buffered {
    fn next(&mut self, w: &Worker) -> Option<Batch> {
        let buf = &self.input.buffer;
        loop {
            if self.shutdown.reached(Phase::Aborting) {
                return None;
            }
            let draining = self.shutdown.reached(Phase::Draining);
            if draining {
                let budget = self.input.drain_budget;
                if Instant::now() >= *self.stop_at.get_or_insert_with(|| Instant::now() + budget) {
                    return None;
                }
            }
            let more = if draining {
                Duration::ZERO
            } else {
                w.settings.batch_timeout
            };
            let size = w.settings.batch_size;
            match buf.take(&mut self.reader, size, Duration::from_millis(50), more) {
                Some(taken) => {
                    let parts = taken.records.clone();
                    return Some(Batch::new(Data::Taken(taken), parts));
                }
                None if draining && self.writer_stopped() => return None,
                None => {}
            }
        }
    }

    /// Acknowledges the records to the buffer, unless the shutdown stopped the write: then
    /// they stay on disk for the next start, and the sink stops.
    fn settle(&mut self, batch: Batch, outcome: Settled) -> bool {
        if outcome.stopped(batch.parts().len()) {
            return false;
        }
        let Data::Taken(taken) = batch.data else {
            unreachable!("a buffered sink takes from its buffer only")
        };
        self.input.buffer.ack(&mut self.reader, taken);
        true
    }

    fn finish(self: Box<Self>, _: &Worker) {
        let buf = &self.input.buffer;
        let left = buf.pending();
        if left > 0 {
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

/// The next queued batch: waits for one while running; once draining, what is still queued,
/// then `None`; `None` at once when aborting or when every sender is gone.
///
/// While the queue is empty it looks at the phase every 50 ms. A `select!` over the queue and
/// the phase's gate would wake at once, but registering with the queue for every batch costs
/// a lock that the sending source contends for: the null pipeline ran 30 % slower with it.
pub(super) fn next_envelope(rx: &Receiver<Envelope>, shutdown: &Shutdown) -> Option<Envelope> {
    loop {
        if shutdown.reached(Phase::Aborting) {
            return None;
        }
        if shutdown.reached(Phase::Draining) {
            return rx.try_recv().ok();
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(e) => return Some(e),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}
