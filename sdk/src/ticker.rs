//! A drift-free pace for a source's sampling loop.

use crate::SourceContext;
use std::time::Duration;

/// Ticks at a fixed interval from when it was made, whatever each round costs: made by
/// [`SourceContext::every`].
///
/// ```ignore
/// let mut tick = ctx.every(Duration::from_secs(5));
/// while tick.next() {
///     ctx.emit(vec![ctx.reading(&sensor, &name, &unit, read_sensor()?)])?.wait()?;
/// }
/// Ok(())
/// ```
///
/// The first tick is at once; tick `k` is `k` intervals after the first, not an interval after
/// the previous round ended, so a slow sink does not stretch the interval. A round that takes
/// longer than an interval skips the ticks it overran (it does not fire them in a burst to
/// catch up); [`Ticker::missed`] counts them. In a test harness with a simulated clock the
/// ticker follows that clock, and waits take no real time.
#[derive(Debug)]
pub struct Ticker<'a> {
    ctx: &'a SourceContext,
    interval: Duration,
    /// When the next tick is due, on the context's monotonic clock; `None` before the first.
    next: Option<Duration>,
    missed: u64,
}

impl<'a> Ticker<'a> {
    pub(crate) fn new(ctx: &'a SourceContext, interval: Duration) -> Self {
        Ticker {
            ctx,
            interval: interval.max(Duration::from_millis(1)),
            next: None,
            missed: 0,
        }
    }

    /// Waits for the next tick; `false` when the host asks the source to stop (at once, not at
    /// the next tick).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> bool {
        let due = match self.next {
            None => {
                self.next = Some(self.ctx.monotonic() + self.interval);
                return !self.ctx.is_stopping();
            }
            Some(due) => due,
        };
        loop {
            let now = self.ctx.monotonic();
            if now >= due {
                let step = self.interval.as_nanos();
                let skipped = (now - due).as_nanos() / step;
                self.missed += skipped as u64;
                let ahead = u64::try_from(step * (skipped + 1)).unwrap_or(u64::MAX);
                self.next = Some(due.saturating_add(Duration::from_nanos(ahead)));
                return !self.ctx.is_stopping();
            }
            // Rounded up: a wait cut short by rounding down would spin until the tick.
            let wait = due - now;
            let ms = wait.as_nanos().div_ceil(1_000_000);
            if self.ctx.wait_stop(Duration::from_millis(ms as u64)) {
                return false;
            }
        }
    }

    /// How many ticks were skipped because a round ran past them.
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// The interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}
