//! The running instances of a graph, one slot each, and how one is started and retired
//! (stopped for good, or for a successor after a reload) without touching the others.
//!
//! What outlives a sink instance is its [`Line`]: its queue (the sources' routes point at
//! it), its counters, the batches a retiring instance hands on, and its disk buffer with the
//! thread that fills it. A reload that replaces a sink keeps the line and starts the new
//! instance on it, so nothing queued or buffered changes hands through anything but memory
//! and the buffer's files.

use crate::{
    buffer::DiskBuffer,
    config::{Config, Instance, SinkSettings},
    pipeline::{
        buffer_writer::BufferWriter,
        direct::Direct,
        sink::{BufferedInput, Handover, QueueInput, SinkInput, SinkRunner},
        source::{Routes, SinkPort, SourceRunner},
        Envelope, Phase, Shutdown,
    },
    plan::{dead_letters, Built, NewSink, NewSource},
    stats::{SinkStats, SourceStats},
};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use gateway_sdk::abi::{SinkBox, SourceBox};
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// How long a thread that missed its deadline gets after an abort before it is left behind.
const GRACE: Duration = Duration::from_millis(500);

/// One thread of the graph: its own phase, and a channel that disconnects when it ends.
pub(super) struct Thread {
    /// Reported on the graph's exit channel when a source thread ends.
    pub id: u64,
    pub shutdown: Shutdown,
    done: Receiver<()>,
    handle: Option<JoinHandle<()>>,
}

/// Reports the end of a thread, however it ends.
struct Exit {
    id: u64,
    exits: Option<Sender<u64>>,
    _done: Sender<()>,
}

impl Drop for Exit {
    fn drop(&mut self) {
        if let Some(tx) = &self.exits {
            let _ = tx.send(self.id);
        }
    }
}

impl Thread {
    /// Spawns `f` as thread `name`; a source thread (`exits` given) reports its `id` there
    /// at its end.
    pub fn spawn(
        name: String,
        id: u64,
        exits: Option<&Sender<u64>>,
        shutdown: Shutdown,
        f: impl FnOnce() + Send + 'static,
    ) -> Thread {
        let (done_tx, done) = crossbeam_channel::bounded(0);
        let exit = Exit {
            id,
            exits: exits.cloned(),
            _done: done_tx,
        };
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let _exit = exit;
                f()
            })
            .expect("spawn a thread");
        Thread {
            id,
            shutdown,
            done,
            handle: Some(handle),
        }
    }

    /// Waits until `deadline` for the thread to end; `true` if it did (it is then joined).
    pub fn wait(&mut self, deadline: Instant) -> bool {
        let ended = matches!(
            self.done.recv_deadline(deadline),
            Err(RecvTimeoutError::Disconnected)
        );
        if ended {
            if let Some(h) = self.handle.take() {
                let _ = h.join();
            }
        }
        ended
    }

    /// Waits until `deadline`, then aborts and waits a short grace; `false` if the thread is
    /// still in a plugin call after that (it is left behind).
    pub fn stop_by(&mut self, deadline: Instant) -> bool {
        if self.wait(deadline) {
            return true;
        }
        self.shutdown.advance(Phase::Aborting);
        self.wait(Instant::now().max(deadline) + GRACE)
    }
}

/// A running source.
pub(super) struct SourceSlot {
    pub decl: Instance,
    /// The library file its instance was built from: the one that speaks for it.
    pub library: crate::plugin_metrics::LibraryFile,
    pub files: super::Stamps,
    pub stats: Arc<SourceStats>,
    pub routes: Routes,
    pub thread: Thread,
    /// Its thread ended on its own (a finite source finished).
    pub finished: bool,
}

/// What outlives a sink instance (see the module's doc).
pub(super) struct Line {
    pub port: SinkPort,
    pub rx: Receiver<Envelope>,
    pub handed: Handover,
    /// The queue's capacity, fixed when the line was made.
    pub capacity: usize,
    pub writer: Option<Writer>,
    /// Whether what a disk buffer recovered is counted in the line's accepted readings: once,
    /// for the first buffer the line has (a buffer opened again later holds what the line
    /// accepted already).
    pub recovered_counted: bool,
}

impl Line {
    /// A new line: an empty queue of `capacity` batches, new counters.
    pub fn new(capacity: usize) -> Line {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let stats = Arc::new(SinkStats::default());
        Line {
            port: SinkPort {
                tx,
                direct: Direct::new(stats.clone()),
                stats,
            },
            rx,
            handed: Handover::default(),
            capacity,
            writer: None,
            recovered_counted: false,
        }
    }
}

/// A buffered sink's disk buffer and the thread that moves its queue onto it.
pub(super) struct Writer {
    pub buffer: Arc<DiskBuffer>,
    pub thread: Thread,
    /// Disconnects when the thread has stopped.
    pub done: Receiver<()>,
    pub handover: Arc<AtomicBool>,
    /// Most readings per record (the sink's batch size when the writer started).
    pub record_readings: usize,
    /// The sink's dead-letter directory, shared with the sink's runner.
    pub dead_letters: Arc<crate::deadletter::DeadLetters>,
}

impl Writer {
    /// Asks the thread to stop after the append in progress; what is queued stays queued.
    pub fn begin_stop(&self) {
        self.handover.store(true, Ordering::Relaxed);
    }

    /// Waits for a writer asked to stop; `false` if it did not stop by `deadline` (and a
    /// short grace after an abort).
    pub fn finish_stop(&mut self, deadline: Instant) -> bool {
        self.thread.stop_by(deadline)
    }
}

/// A running sink: its line and the instance's thread.
pub(super) struct SinkSlot {
    pub decl: Instance,
    /// The library file its instance was built from: the one that speaks for it.
    pub library: crate::plugin_metrics::LibraryFile,
    pub files: super::Stamps,
    pub line: Line,
    pub thread: Thread,
    pub handover: Arc<AtomicBool>,
}

/// What starting an instance needs from the graph.
pub(super) struct Starter<'a> {
    pub config: &'a Config,
    pub exits: &'a Sender<u64>,
    pub next_id: &'a mut u64,
}

impl Starter<'_> {
    fn id(&mut self) -> u64 {
        *self.next_id += 1;
        *self.next_id
    }

    /// Starts sink `k` on `line`. A buffered sink gets a writer thread unless the line has
    /// one; its buffer is `k.buffer` (opened by the plan or the reload) or the writer's. What
    /// the line's first buffer recovered counts as accepted here (a line that was new when a
    /// reload parked its sink has its first buffer only when a later reload starts it).
    pub fn sink(&mut self, k: Built<SinkBox, NewSink, SinkSettings>, mut line: Line) -> SinkSlot {
        let name = k.decl.name.clone();
        let stats = line.port.stats.clone();
        // One dead-letter directory, one record of it: its size limit and the readings it
        // keeps are the writer's and the sink's together. A writer kept across a reload keeps
        // its record, and takes the reloaded limit.
        let letters = match &line.writer {
            Some(w) => {
                if let Some(s) = k.decl.sink_settings() {
                    w.dead_letters.set_max_size(s.dead_letter_max_size);
                    w.dead_letters.set_device_share(s.dead_letter_device_share);
                }
                w.dead_letters.clone()
            }
            None => Arc::new(dead_letters(self.config, &k.decl)),
        };
        if line.writer.is_none() {
            if let Some(buffer) = k.buffer.clone() {
                if !line.recovered_counted {
                    let recovered = buffer.stats.recovered.load(Ordering::Relaxed);
                    stats.accepted.fetch_add(recovered, Ordering::Relaxed);
                    line.recovered_counted = true;
                }
                line.writer =
                    Some(self.writer(&name, buffer, &line, letters.clone(), k.settings.batch_size));
            }
        }
        let input = match &line.writer {
            None => SinkInput::Queue(QueueInput {
                rx: line.rx.clone(),
                handed: line.handed.clone(),
                direct: line.port.direct.clone(),
            }),
            Some(w) => SinkInput::Buffer(BufferedInput {
                buffer: w.buffer.clone(),
                writer_done: w.done.clone(),
                drain_budget: self.config.gateway.shutdown_timeout * 3 / 4,
            }),
        };
        let handover = Arc::new(AtomicBool::new(false));
        let shutdown = Shutdown::new();
        let (new, info) = (k.new, k.info.clone());
        let (files, stamped) = super::Stamps::of(k.files, &k.decl);
        let runner = SinkRunner {
            name: name.clone(),
            instance: k.instance,
            factory: Box::new(move || {
                stamped.restamp();
                new(&info).into_result()
            }),
            settings: k.settings.clone(),
            restart_backoff: k.decl.restart_backoff,
            restart_backoff_max: k.decl.restart_backoff_max,
            input,
            shutdown: shutdown.clone(),
            stats,
            dead_letters: letters,
            handover: handover.clone(),
        };
        let id = self.id();
        let thread = Thread::spawn(format!("sink:{name}"), id, None, shutdown, move || {
            runner.run()
        });
        SinkSlot {
            files,
            library: k.library.file.clone(),
            decl: k.decl,
            line,
            thread,
            handover,
        }
    }

    fn writer(
        &mut self,
        name: &str,
        buffer: Arc<DiskBuffer>,
        line: &Line,
        dead_letters: Arc<crate::deadletter::DeadLetters>,
        record_readings: usize,
    ) -> Writer {
        let (done_tx, done) = crossbeam_channel::bounded(0);
        let handover = Arc::new(AtomicBool::new(false));
        let shutdown = Shutdown::new();
        let writer = BufferWriter {
            rx: line.rx.clone(),
            handed: line.handed.clone(),
            buffer: buffer.clone(),
            record_readings,
            shutdown: shutdown.clone(),
            done: done_tx,
            handover: handover.clone(),
            dead_letters: dead_letters.clone(),
            stats: line.port.stats.clone(),
        };
        let n = name.to_owned();
        let id = self.id();
        let thread = Thread::spawn(format!("buffer:{name}"), id, None, shutdown, move || {
            writer.run(&n)
        });
        Writer {
            buffer,
            thread,
            done,
            handover,
            record_readings,
            dead_letters,
        }
    }

    /// Starts source `s`, routed to `routes`.
    pub fn source(&mut self, s: Built<SourceBox, NewSource>, routes: Routes) -> SourceSlot {
        let stats = Arc::new(SourceStats::default());
        let shutdown = Shutdown::new();
        let (new, info) = (s.new, s.info.clone());
        let (files, stamped) = super::Stamps::of(s.files, &s.decl);
        let runner = SourceRunner {
            name: s.decl.name.clone(),
            instance: s.instance,
            factory: Box::new(move || {
                stamped.restamp();
                new(&info).into_result()
            }),
            sinks: routes.clone(),
            shutdown: shutdown.clone(),
            stats: stats.clone(),
            restart_backoff: s.decl.restart_backoff,
            restart_backoff_max: s.decl.restart_backoff_max,
        };
        let id = self.id();
        let thread = Thread::spawn(
            format!("source:{}", s.decl.name),
            id,
            Some(self.exits),
            shutdown,
            move || runner.run(),
        );
        SourceSlot {
            files,
            library: s.library.file.clone(),
            decl: s.decl,
            stats,
            routes,
            thread,
            finished: false,
        }
    }
}

impl SourceSlot {
    /// Asks the source to stop for good (removed, or replaced by a reload).
    pub fn begin_retire(&self) {
        self.thread.shutdown.advance(Phase::Stopping);
    }

    /// Waits until `deadline` for the source asked to stop, then refuses its emits. `false`
    /// if it is still in its plugin then (it is left behind).
    pub fn finish_retire(mut self, deadline: Instant) -> bool {
        if self.thread.wait(deadline) {
            return true;
        }
        self.thread.shutdown.advance(Phase::Draining);
        self.thread.stop_by(Instant::now() + GRACE)
    }
}

impl SinkSlot {
    /// Asks the instance to stop so that a successor can take its line: it takes nothing
    /// more, gives up a write that fails (instead of retrying it), and what it took and did
    /// not write goes back to the line (queued batches to the successor, buffered records
    /// stay in the buffer).
    pub fn begin_handover(&self) {
        self.handover.store(true, Ordering::Relaxed);
        self.thread.shutdown.advance(Phase::Draining);
    }

    /// Waits until `deadline` for the instance asked to hand over. Returns the line, or the
    /// slot itself if the instance is still in a plugin call after the deadline and a short
    /// grace: its thread still holds the line, and ends once that call returns.
    pub fn finish_handover(mut self, deadline: Instant) -> Result<Line, Box<SinkSlot>> {
        if self.thread.stop_by(deadline) {
            Ok(self.line)
        } else {
            Err(Box::new(self))
        }
    }

    /// Asks a sink the config no longer has to stop: a plain one writes what is queued; a
    /// buffered one's writer moves the queue onto disk, where it stays, and the sink stops
    /// at once.
    pub fn begin_remove(&self) {
        if let Some(w) = &self.line.writer {
            w.thread.shutdown.advance(Phase::Draining);
            self.handover.store(true, Ordering::Relaxed);
        }
        self.thread.shutdown.advance(Phase::Draining);
    }

    /// Waits until `deadline` for a sink asked to go; `false` if something was left behind.
    pub fn finish_remove(mut self, deadline: Instant) -> bool {
        let mut ok = true;
        if let Some(w) = &mut self.line.writer {
            ok &= w.thread.stop_by(deadline);
        }
        ok & self.thread.stop_by(deadline)
    }
}
