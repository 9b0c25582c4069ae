//! `[gateway] stall_warning`: a sink whose plugin call does not return is logged, once when
//! the call passes the setting and again each time it has lasted twice as long, so that a
//! sink hung on a dead connection is not silent. A plugin call cannot be interrupted; what
//! the log says is what the operator can do about it. The metrics page shows every call's
//! length (`gateway_sink_call_seconds`); the end of a call logged here is logged too
//! ([`crate::stats::InCall`]).

use crate::stats::SinkView;
use std::{collections::HashMap, time::Duration};

/// What was logged of each sink's current call.
#[derive(Default)]
pub(super) struct Stalls {
    /// By sink: when its stalled call began (which call it is), and how long that call must
    /// last before the next warning.
    next: HashMap<String, (u64, Duration)>,
    /// The same for a write handed over (`submit`) that the sink has not answered.
    unanswered: HashMap<String, (u64, Duration)>,
}

impl Stalls {
    /// Looks at each sink's call: warns of one past `after` (and past its last warning's
    /// double). `after` zero: never.
    pub(super) fn check(&mut self, after: Duration, sinks: &[SinkView]) {
        if after.is_zero() {
            return;
        }
        self.next
            .retain(|name, _| sinks.iter().any(|v| &v.name == name));
        self.unanswered
            .retain(|name, _| sinks.iter().any(|v| &v.name == name));
        for v in sinks {
            // A write handed over that the plugin keeps without saying how it ended: the
            // batches behind it wait (they are settled in order), though no call is stuck.
            match v.stats.awaited().filter(|(lasted, _)| *lasted >= after) {
                None => {
                    self.unanswered.remove(&v.name);
                }
                Some((lasted, began)) => {
                    if due(&mut self.unanswered, &v.name, began, lasted, after) {
                        tracing::warn!(
                            sink = %v.name,
                            pending = v.stats.pending(),
                            "the sink has not said how a write it was handed {} s ago ended (stall_warning {after:?}): its plugin keeps it (a request that neither answers nor fails, say); the batches after it wait, and its sources are held back once its queue is full",
                            lasted.as_secs()
                        );
                    }
                }
            }
            let Some((call, lasted, began)) = v.stats.stalled(after) else {
                self.next.remove(&v.name);
                continue;
            };
            if due(&mut self.next, &v.name, began, lasted, after) {
                tracing::warn!(
                    sink = %v.name,
                    pending = v.stats.pending(),
                    "the sink's {call} call has not returned for {} s (stall_warning {after:?}): its plugin is stuck (a connection that neither answers nor fails, say); its readings wait, and its sources are held back once its queue is full; a plugin call cannot be interrupted: if it does not return, restart the gateway",
                    lasted.as_secs()
                );
            }
        }
    }
}

/// Whether sink `name`'s stall that `began` then and has lasted `lasted` is to be warned of
/// now: past `after`, then past each doubling, as `warned` keeps. Another stall than the one
/// warned of (the check missed the gap between them) starts from the first warning.
fn due(
    warned: &mut HashMap<String, (u64, Duration)>,
    name: &str,
    began: u64,
    lasted: Duration,
    after: Duration,
) -> bool {
    let (of, next) = warned.entry(name.to_owned()).or_insert((began, after));
    if *of != began {
        (*of, *next) = (began, after);
    }
    if lasted < *next {
        return false;
    }
    crate::overdue::next_warning(next, lasted);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Call, SinkStats};
    use std::sync::Arc;

    #[test]
    fn a_call_past_the_setting_is_warned_of_at_doubling_lengths_and_one_shorter_is_not() {
        let stats = Arc::new(SinkStats::default());
        let view = SinkView {
            name: "db".into(),
            stats: stats.clone(),
            buffer: None,
        };
        let views = std::slice::from_ref(&view);
        let mut stalls = Stalls::default();
        let call = stats.in_call(Call::Write);
        stalls.check(Duration::from_secs(60), views);
        assert!(
            stalls.next.is_empty(),
            "a call of less than 60 s is not stalled"
        );
        std::thread::sleep(Duration::from_millis(60));
        let after = Duration::from_millis(50);
        stalls.check(after, views);
        // The next warning is due at the first doubling of `after` past what it had lasted.
        let (began, next) = stalls.next["db"];
        assert!(
            (1..8).any(|k| next == after * (1 << k)),
            "{next:?} is a doubling of {after:?}"
        );
        drop(call);
        assert_eq!(stats.call(), None);
        stalls.check(after, views);
        assert!(stalls.next.is_empty(), "the call ended");
        // The next call starts unmarked (its end is not logged as a stall's) and, stalled,
        // starts from the first warning whatever the last call reached.
        let _next = stats.in_call(Call::Start);
        assert_eq!(stats.stalled(Duration::from_secs(60)), None);
        stalls
            .next
            .insert("db".into(), (began, Duration::from_secs(3600)));
        std::thread::sleep(Duration::from_millis(60));
        stalls.check(after, views);
        assert!(stalls.next["db"].0 != began, "another call");
        assert!(stalls.next["db"].1 < Duration::from_secs(3600));
    }

    #[test]
    fn a_write_handed_over_and_not_answered_is_warned_of_though_no_call_is_stuck() {
        let stats = Arc::new(SinkStats::default());
        let view = SinkView {
            name: "uplink".into(),
            stats: stats.clone(),
            buffer: None,
        };
        let views = std::slice::from_ref(&view);
        let mut stalls = Stalls::default();
        let after = Duration::from_millis(50);
        stats.awaiting(Some(std::time::Instant::now()));
        stalls.check(after, views);
        assert!(stalls.unanswered.is_empty(), "not yet");
        std::thread::sleep(Duration::from_millis(60));
        stalls.check(after, views);
        let (_, next) = stalls.unanswered["uplink"];
        assert!(next > after, "warned, the next at a doubling: {next:?}");
        assert!(stalls.next.is_empty(), "no call is stuck");
        stats.awaiting(None);
        stalls.check(after, views);
        assert!(stalls.unanswered.is_empty(), "answered");
    }
}
