//! Moving batches from sources to sinks: bounded queues, batching, retries, acknowledgements.
//!
//! Each source runs on a thread of its own and calls into the plugin there; its `emit` pushes a
//! shared batch onto the bounded queue of every sink it is routed to, blocking while a queue is
//! full (that is the backpressure). Each sink runs on a thread of its own that gathers queued
//! batches into writes, retries what may be retried, rebuilds a failed instance, and acknowledges
//! every source batch once its write returned. A source batch is acknowledged to the source once
//! every sink it went to has acknowledged it.

pub mod buffer_writer;
pub mod direct;
mod not_kept;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod window;
pub mod worker;

pub use shutdown::{Phase, Shutdown};

use abi_stable::std_types::{RErr, ROk, RVec};
use gateway_sdk::{abi::AckBox, ErrorKind, PluginError, Reading};
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc, Mutex,
};

/// Counts the sinks a batch still waits for, and tells the source when none is left.
pub struct AckTracker {
    remaining: AtomicUsize,
    error: Mutex<Option<PluginError>>,
    callback: Mutex<Option<AckBox>>,
}

impl AckTracker {
    /// A tracker waiting for `sinks` acknowledgements.
    pub fn new(sinks: usize, callback: Option<AckBox>) -> Arc<Self> {
        Arc::new(AckTracker {
            remaining: AtomicUsize::new(sinks),
            error: Mutex::new(None),
            callback: Mutex::new(callback),
        })
    }

    /// The source hears the first error, except that a refusal for good (`REJECTED`: the
    /// refused readings are in a dead-letter file) gives way to another sink's failure to
    /// store: a source told "refused" lets the batch go (the ingress answers 4.22, NATS
    /// acknowledges), which must not happen while a sink still lacks it.
    fn done(&self, outcome: Result<(), PluginError>) {
        if let Err(e) = outcome {
            let mut first = self.error.lock().unwrap();
            let refused = |e: &PluginError| e.kind == ErrorKind::REJECTED;
            if first.as_ref().is_none_or(|f| refused(f) && !refused(&e)) {
                *first = Some(e);
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(mut cb) = self.callback.lock().unwrap().take() {
                match self.error.lock().unwrap().take() {
                    None => cb.done(ROk(())),
                    Some(e) => cb.done(RErr(e)),
                }
            }
        }
    }
}

/// One sink's share of the acknowledgement of a batch. Dropping it unacknowledged (at a forced
/// shutdown) tells the source that this sink did not take the batch.
pub struct AckHandle(Option<Arc<AckTracker>>);

impl AckHandle {
    /// A handle on `tracker`.
    pub fn new(tracker: Arc<AckTracker>) -> Self {
        AckHandle(Some(tracker))
    }
    /// Reports this sink's outcome.
    pub fn done(mut self, outcome: Result<(), PluginError>) {
        if let Some(t) = self.0.take() {
            t.done(outcome);
        }
    }
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.done(Err(PluginError::new(
                ErrorKind::STOPPED,
                "the gateway stopped before the sink took the batch",
            )));
        }
    }
}

/// A source batch on its way to one sink.
pub struct Envelope {
    /// The readings, shared between the sinks the batch goes to.
    pub readings: Arc<RVec<Reading>>,
    /// This sink's share of the acknowledgement.
    pub ack: AckHandle,
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::std_types::RResult;
    use gateway_sdk::abi::{AckFfi, AckFfi_TO};

    struct Heard(std::sync::mpsc::Sender<Option<ErrorKind>>);
    impl AckFfi for Heard {
        fn done(&mut self, outcome: RResult<(), PluginError>) {
            let _ = self.0.send(outcome.into_result().err().map(|e| e.kind));
        }
    }

    /// What a source hears of a batch two sinks answered so, in this order.
    fn heard(first: Result<(), PluginError>, second: Result<(), PluginError>) -> Option<ErrorKind> {
        let (tx, rx) = std::sync::mpsc::channel();
        let ack = AckFfi_TO::from_value(Heard(tx), abi_stable::sabi_trait::TD_Opaque);
        let t = AckTracker::new(2, Some(ack));
        AckHandle::new(t.clone()).done(first);
        AckHandle::new(t).done(second);
        rx.recv().unwrap()
    }

    #[test]
    fn a_refusal_for_good_gives_way_to_another_sinks_failure_to_store() {
        let refused = || Err(PluginError::rejected("refused"));
        let down = || Err(PluginError::retry("down"));
        assert_eq!(heard(refused(), down()), Some(ErrorKind::RETRY));
        assert_eq!(heard(down(), refused()), Some(ErrorKind::RETRY));
        assert_eq!(heard(refused(), Ok(())), Some(ErrorKind::REJECTED));
        assert_eq!(heard(Ok(()), Ok(())), None);
        let stopped = || Err(PluginError::new(ErrorKind::STOPPED, "stopping"));
        assert_eq!(
            heard(down(), stopped()),
            Some(ErrorKind::RETRY),
            "the first"
        );
    }
}
