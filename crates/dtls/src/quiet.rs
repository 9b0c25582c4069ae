//! How often the server warns about what a peer did: at most [`PER_MINUTE`] warnings a minute,
//! then one line saying how many more there were. No I/O; the time comes in.
//!
//! Why: a peer needs no key to make a handshake fail (after one cookie round trip from its own
//! address, a ClientHello with no cipher in common fails without any work of the server's
//! keys), and each failure was one warning: a few small datagrams per log line, enough to
//! reach journald's rate limit and hide what else the gateway says. Every failure is still
//! counted on the metrics page.

use std::time::{Duration, Instant};

/// Warnings logged one by one per minute at most.
pub const PER_MINUTE: u32 = 20;
const MINUTE: Duration = Duration::from_secs(60);

/// The warnings of one minute.
#[derive(Debug, Default)]
pub(crate) struct Quiet {
    /// When the current minute began (`None`: nothing logged yet).
    since: Option<Instant>,
    logged: u32,
    held: u64,
}

impl Quiet {
    /// Whether a warning at `now` is logged; when a new minute begins after warnings were
    /// held back, says how many first.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        if self
            .since
            .is_none_or(|s| now.saturating_duration_since(s) >= MINUTE)
        {
            if self.held > 0 {
                tracing::warn!(
                    "{} more peer failures in the last minute were not logged one by one (the metrics page counts them by reason)",
                    self.held
                );
            }
            *self = Quiet {
                since: Some(now),
                ..Quiet::default()
            };
        }
        if self.logged < PER_MINUTE {
            self.logged += 1;
            true
        } else {
            self.held += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_so_many_warnings_a_minute_then_how_many_more() {
        let t0 = Instant::now();
        let mut q = Quiet::default();
        let allowed = (0..1000)
            .filter(|i| q.allow(t0 + Duration::from_millis(*i)))
            .count();
        assert_eq!(allowed, PER_MINUTE as usize);
        assert_eq!(q.held, 1000 - u64::from(PER_MINUTE));
        // A new minute: logging again (and the count of the last one said first).
        assert!(q.allow(t0 + MINUTE + Duration::from_secs(1)));
        assert_eq!(q.held, 0);
    }
}
