//! Whether the system clock can be trusted to stamp readings. A Raspberry Pi has no real-time
//! clock: after a power cut it starts from the time `fake-hwclock` saved (or from 1970) and
//! keeps counting from there until NTP sets it, and every reading stamped meanwhile carries
//! that time. The host watches two things each second and says what it sees in its log and
//! its figures (`gateway_clock_synchronized`, the `internal` source's `host` /
//! `clock_synchronized`):
//!
//! - the kernel's synchronisation state (`adjtimex`: its return is not `TIME_ERROR` and
//!   `STA_UNSYNC` is clear; what `timedatectl` shows as "System clock synchronized");
//! - steps of the wall clock against the time since boot (`CLOCK_BOOTTIME`, which counts a
//!   suspend too, so a resumed machine is no step): when NTP (or a person) sets the time, the
//!   log says by how much, so whoever reads the readings taken before knows how far off their
//!   times are.
//!
//! Changes are said once a minute at most: a clock stepped again and again (two programs that
//! both set it, chrony's `makestep` at boot) or a flapping state is said once, and what
//! followed within the minute is said at its end (how many changes, the steps added up, the
//! state then). Where the kernel's state cannot
//! be read (a seccomp filter such as systemd's `ProtectClock`), that is said once at start.
//!
//! [`Watch::observe`] is the logic, without I/O or a clock of its own; [`Watch::check`] feeds
//! it the system's values (one system call, two clock reads).

use std::{
    sync::atomic::{AtomicU8, Ordering},
    time::{Duration, SystemTime},
};

/// A step of the wall clock at least this large is said.
const STEP: Duration = Duration::from_secs(1);

/// The kernel's last answer, for the figures: 0 not synchronised, 1 synchronised, 2 unknown.
static SYNCED: AtomicU8 = AtomicU8::new(2);

/// Whether the system clock was synchronised at the last check; `None` before the first, or
/// where the kernel does not say.
pub fn synchronized() -> Option<bool> {
    match SYNCED.load(Ordering::Relaxed) {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

/// What `adjtimex` (asking only) says: synchronised, unless it returns `TIME_ERROR` or sets
/// `STA_UNSYNC`.
pub fn synced_from(ret: i32, status: i32) -> bool {
    ret != libc::TIME_ERROR && status & libc::STA_UNSYNC == 0
}

/// The kernel's synchronisation state now, or why it cannot be asked.
fn kernel_synced() -> Result<bool, std::io::Error> {
    // SAFETY: `timex` is plain data, for which all zeroes is a valid value.
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    // The system call itself: glibc's `adjtimex` makes `clock_adjtime` (since 2.32), which a
    // service's seccomp filter allowing `adjtimex` (the packages' units) refuses.
    // SAFETY: a valid `timex` of the kernel's layout for this target; with `modes` 0 the call
    // only reads the kernel's state into it (no privilege needed).
    let ret = unsafe { libc::syscall(libc::SYS_adjtimex, &mut t as *mut libc::timex) } as i32;
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(synced_from(ret, t.status))
}

/// The time since boot, suspends included.
fn since_boot() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid `timespec` to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Warnings of the clock come this often at most.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What changed since the last observation.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// At the first observation: the clock is not synchronised.
    NotSyncedAtStart,
    /// The kernel says the clock is synchronised now.
    Synced,
    /// The kernel says it is not any more.
    Lost,
    /// The wall clock moved by this many seconds more (or less) than the time since boot.
    Stepped(f64),
}

/// The watcher: what it saw last.
#[derive(Debug, Default)]
pub struct Watch {
    synced: Option<bool>,
    /// Both clocks at the last observation: the wall clock, and the time since boot.
    offset: Option<(SystemTime, Duration)>,
    started: bool,
    /// When a change was last said (time since boot).
    said: Option<Duration>,
    /// The changes not said since (within [`WARN_EVERY`] of it), and the steps among them in
    /// seconds, added up.
    unsaid: u32,
    unsaid_step: f64,
}

impl Watch {
    /// What changed, given the kernel's state, the wall clock and the time since boot now.
    pub fn observe(
        &mut self,
        synced: Option<bool>,
        wall: SystemTime,
        boot: Duration,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        if let Some((then_wall, then_boot)) = self.offset {
            let elapsed = boot.saturating_sub(then_boot).as_secs_f64();
            let moved = match wall.duration_since(then_wall) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            };
            let step = moved - elapsed;
            if step.abs() >= STEP.as_secs_f64() {
                events.push(Event::Stepped(step));
            }
        }
        self.offset = Some((wall, boot));
        match (self.started, self.synced, synced) {
            (false, _, Some(false)) => events.push(Event::NotSyncedAtStart),
            (true, Some(false), Some(true)) => events.push(Event::Synced),
            (true, Some(true), Some(false)) => events.push(Event::Lost),
            _ => {}
        }
        self.started = true;
        if synced.is_some() {
            self.synced = synced;
        }
        events
    }

    /// Observes the system now: logs what changed and keeps the state for the figures.
    pub fn check(&mut self) {
        let kernel = kernel_synced();
        let synced = kernel.as_ref().ok().copied();
        SYNCED.store(synced.map_or(2, u8::from), Ordering::Relaxed);
        if let (false, Err(e)) = (self.started, &kernel) {
            tracing::info!(error = %e, "whether the system clock is synchronised cannot be read (adjtimex); gateway_clock_synchronized is left out, and only steps of the clock are said");
        }
        let boot = since_boot();
        for e in self.observe(synced, SystemTime::now(), boot) {
            self.log(&e, synced, boot);
        }
        self.say_unsaid(synced, boot);
    }

    /// Whether a change now would come within [`WARN_EVERY`] of the last one said.
    fn quiet(&self, boot: Duration) -> bool {
        self.said
            .is_some_and(|t| boot.saturating_sub(t) < WARN_EVERY)
    }

    /// Once [`WARN_EVERY`] has passed, says the changes kept back, if any: how many, the steps
    /// added up, and whether the clock is synchronised now.
    fn say_unsaid(&mut self, synced: Option<bool>, boot: Duration) {
        if self.unsaid == 0 || self.quiet(boot) {
            return;
        }
        let (n, step) = (
            std::mem::take(&mut self.unsaid),
            std::mem::take(&mut self.unsaid_step),
        );
        let way = if step >= 0.0 { "forward" } else { "back" };
        let now = match synced {
            Some(true) => "it is synchronised now",
            Some(false) => "it is not synchronised now",
            None => "whether it is synchronised cannot be read",
        };
        tracing::warn!(
            changes = n,
            step_seconds = format_args!("{step:.1}"),
            "the system clock changed {n} more time(s) in the last minute, set {way} by {} in all ({now}): readings taken meanwhile may carry times off by that much",
            span(step.abs().round() as u64)
        );
        self.said = Some(boot);
    }

    fn log(&mut self, e: &Event, synced: Option<bool>, boot: Duration) {
        let change = !matches!(e, Event::NotSyncedAtStart);
        if change && self.quiet(boot) {
            self.unsaid += 1;
            if let Event::Stepped(s) = e {
                self.unsaid_step += s;
            }
            tracing::debug!(event = ?e, "the system clock changed again (said within a minute)");
            return;
        }
        match e {
            Event::NotSyncedAtStart => tracing::info!(
                "the system clock is not synchronised (no NTP yet, or none runs here): readings are stamped with it as it is; a step when it is set will be logged"
            ),
            Event::Synced => tracing::info!("the system clock is synchronised now"),
            Event::Lost => tracing::warn!(
                "the system clock is no longer synchronised: readings are stamped with it as it is"
            ),
            Event::Stepped(s) => {
                let by = span(s.abs().round() as u64);
                let way = if *s > 0.0 { "forward" } else { "back" };
                let who = if synced == Some(true) {
                    "it is synchronised"
                } else {
                    "it is not synchronised"
                };
                tracing::warn!(
                    step_seconds = format_args!("{s:.1}"),
                    "the system clock was set {way} by {by} ({who}): readings taken before carry times off by that much"
                );
            }
        }
        if change {
            self.said = Some(boot);
        }
    }
}

/// `secs` as a person writes it: `3h 12m`, `59s`, `2d 4h`.
fn span(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_state_is_read_as_timedatectl_reads_it() {
        assert!(synced_from(libc::TIME_OK, 0));
        assert!(!synced_from(libc::TIME_OK, libc::STA_UNSYNC));
        assert!(!synced_from(libc::TIME_ERROR, 0));
        assert!(synced_from(libc::TIME_INS, libc::STA_PLL));
    }

    #[test]
    fn a_pi_booting_from_fake_hwclock_is_told_then_its_step_is_said() {
        let (wall, mono) = (
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            Duration::from_secs(100),
        );
        let mut w = Watch::default();
        assert_eq!(
            w.observe(Some(false), wall, mono),
            [Event::NotSyncedAtStart]
        );
        // A second later: nothing new.
        let s = Duration::from_secs(1);
        assert_eq!(w.observe(Some(false), wall + s, mono + s), []);
        // NTP sets the clock 3 hours forward, and the kernel says so.
        let later = wall + 2 * s + Duration::from_secs(3 * 3600);
        let events = w.observe(Some(true), later, mono + 2 * s);
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(matches!(events[0], Event::Stepped(x) if (x - 10_800.0).abs() < 0.01));
        assert_eq!(events[1], Event::Synced);
        // Set back by hand by a minute.
        let events = w.observe(Some(true), later - Duration::from_secs(59), mono + 3 * s);
        assert!(
            matches!(events[..], [Event::Stepped(x)] if (x + 60.0).abs() < 0.01),
            "{events:?}"
        );
        // The kernel loses it.
        let events = w.observe(Some(false), later - Duration::from_secs(58), mono + 4 * s);
        assert_eq!(events, [Event::Lost]);
    }

    #[test]
    fn steps_are_said_in_days_hours_minutes_or_seconds() {
        assert_eq!(span(59), "59s");
        assert_eq!(span(61), "1m 1s");
        assert_eq!(span(3 * 3600 + 12 * 60 + 5), "3h 12m");
        assert_eq!(span(2 * 86_400 + 4 * 3600), "2d 4h");
    }

    #[test]
    fn a_synchronised_clock_and_small_slews_say_nothing() {
        let (wall, mono) = (SystemTime::now(), Duration::from_secs(100));
        let mut w = Watch::default();
        assert_eq!(w.observe(Some(true), wall, mono), []);
        let ms = Duration::from_millis(1);
        assert_eq!(
            w.observe(Some(true), wall + 1000 * ms + 300 * ms, mono + 1000 * ms),
            []
        );
        // Where the kernel does not say, nothing is said either.
        let mut w = Watch::default();
        assert_eq!(w.observe(None, wall, mono), []);
    }

    #[test]
    fn clock_changes_are_said_once_a_minute_and_none_is_lost() {
        let mut w = Watch::default();
        let s = Duration::from_secs(1);
        let boot = 100 * s;
        w.log(&Event::Stepped(5.0), Some(true), boot);
        assert_eq!(w.said, Some(boot));
        // Three more within the minute (chrony's `makestep 1 3` steps twice at boot): kept.
        w.log(&Event::Stepped(-2.0), Some(true), boot + 10 * s);
        w.log(&Event::Lost, Some(false), boot + 20 * s);
        w.log(&Event::Synced, Some(true), boot + 21 * s);
        w.say_unsaid(Some(true), boot + 30 * s);
        assert_eq!((w.unsaid, w.said), (3, Some(boot)));
        assert_eq!(w.unsaid_step, -2.0);
        // A minute on, said even though nothing else changed.
        w.say_unsaid(Some(true), boot + 61 * s);
        assert_eq!((w.unsaid, w.said), (0, Some(boot + 61 * s)));
        assert_eq!(w.unsaid_step, 0.0);
    }

    #[test]
    fn the_time_since_boot_counts_on() {
        let a = since_boot();
        std::thread::sleep(Duration::from_millis(20));
        assert!(since_boot() >= a + Duration::from_millis(20));
    }
}
