//! A plugin call on a thread nothing else watches (the constructors that a start, a reload's
//! check and `gateway dead-letters resend` call on the main thread), logged if it lasts past
//! `[gateway] stall_warning` as [`crate::run`]'s check logs a sink's calls: once when it
//! passes the setting, again each time it has lasted twice as long, and when it returns. A
//! constructor that hangs (connecting to a server that neither answers nor refuses) otherwise
//! leaves a gateway that says "starting" and nothing more.

use crossbeam_channel::RecvTimeoutError;
use std::time::{Duration, Instant};

/// Moves `next`, when a stalled call is warned of again, to the first doubling past `lasted`:
/// warnings at the setting, then each time the call has lasted twice as long.
pub(crate) fn next_warning(next: &mut Duration, lasted: Duration) {
    while *next <= lasted {
        *next *= 2;
    }
}

/// Logs the end of a call that was warned of as stalled (`what`: "the sink's write call").
pub(crate) fn log_returned(what: &str, took: Duration) {
    tracing::info!("{what} returned after {} s; it had stalled", took.as_secs());
}

/// Watches one call from another thread until dropped.
pub struct Overdue {
    done: Option<crossbeam_channel::Sender<()>>,
    watcher: Option<std::thread::JoinHandle<()>>,
}

impl Overdue {
    /// Starts watching `what` (`"sink db: its start"`); `after` zero: not at all.
    pub fn watch(after: Duration, what: String) -> Overdue {
        if after.is_zero() {
            return Overdue {
                done: None,
                watcher: None,
            };
        }
        let (done, ended) = crossbeam_channel::bounded::<()>(1);
        let span = tracing::Span::current();
        let watcher = std::thread::Builder::new()
            .name("overdue".into())
            .spawn(move || {
                let _in = span.enter();
                let began = Instant::now();
                let mut next = after;
                let mut warned = false;
                loop {
                    match ended.recv_timeout(next.saturating_sub(began.elapsed())) {
                        Err(RecvTimeoutError::Timeout) => {
                            warned = true;
                            tracing::warn!(
                                "{what} has not returned for {} s (stall_warning {after:?}): its plugin is stuck (a server that neither answers nor refuses, say); nothing else starts meanwhile; a plugin call cannot be interrupted: if it does not return, stop the gateway and fix what it waits for",
                                began.elapsed().as_secs()
                            );
                            next_warning(&mut next, began.elapsed());
                        }
                        _ => {
                            if warned {
                                log_returned(&what, began.elapsed());
                            }
                            return;
                        }
                    }
                }
            })
            .ok();
        Overdue {
            done: Some(done),
            watcher,
        }
    }
}

impl Drop for Overdue {
    fn drop(&mut self) {
        // The watcher hears the channel close, logs the end if it had warned, and ends.
        self.done.take();
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
    }
}
