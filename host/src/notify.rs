//! systemd's readiness protocol (`Type=notify`, sd_notify(3)) without libsystemd: datagrams
//! to the socket in `NOTIFY_SOCKET`. `READY=1` once every instance runs, `STOPPING=1` when the
//! shutdown starts, `WATCHDOG=1` every half of `WATCHDOG_USEC` from the thread that waits for
//! signals (so a wedged run loop stops the pings and systemd restarts the service; while that
//! thread reloads the config, a helper pings for it, for as long as a reload may take),
//! `EXTEND_TIMEOUT_USEC=` while the start reads disk buffers back, `STATUS=` lines a person
//! sees in `systemctl status`. Outside systemd nothing is sent.

use std::{
    os::unix::net::UnixDatagram,
    sync::mpsc::RecvTimeoutError,
    time::{Duration, Instant},
};

/// Where notifications go, if anywhere.
pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment systemd gives a `Type=notify` service.
    pub fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET").ok().and_then(|path| {
            let s = UnixDatagram::unbound().ok()?;
            Some((s, path))
        });
        // WATCHDOG_PID, when set, must be ours.
        let ours = std::env::var("WATCHDOG_PID")
            .ok()
            .is_none_or(|p| p == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && ours)
            .map(|u| Duration::from_micros(u) / 2);
        Notifier { socket, watchdog }
    }

    /// Sends `state` (e.g. `READY=1`); errors are logged at debug and otherwise ignored.
    pub fn send(&self, state: &str) {
        let Some((socket, path)) = &self.socket else {
            return;
        };
        // A path starting with '@' is in the abstract namespace.
        let sent = if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|a| socket.send_to_addr(state.as_bytes(), &a))
        } else {
            socket.send_to(state.as_bytes(), path)
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    /// How often to send `WATCHDOG=1`, if systemd watches.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.socket.as_ref().and(self.watchdog)
    }

    /// Runs `work` on this thread while a helper sends `WATCHDOG=1` for it, at once and then
    /// every interval, for at most `longest` (so that work which really hangs still stops the
    /// pings and systemd restarts the service).
    pub fn pinging_while<T>(&self, longest: Duration, work: impl FnOnce() -> T) -> T {
        match self.watchdog_interval() {
            Some(every) => self.sending_while("WATCHDOG=1", every, longest, work),
            None => work(),
        }
    }

    /// Runs the start (`work`: disk buffers read back, instances built) while a helper tells
    /// systemd, at once and then every 10 s, that it goes on (`EXTEND_TIMEOUT_USEC`, 30 s
    /// each time), for at most `longest`. A full buffer read back after a power cut on a slow
    /// SD card can take longer than systemd's start timeout (90 s): the start was killed and
    /// begun again, for ever, with the sensors unread.
    pub fn extending_start_while<T>(&self, longest: Duration, work: impl FnOnce() -> T) -> T {
        if self.socket.is_none() {
            return work();
        }
        self.sending_while(
            "EXTEND_TIMEOUT_USEC=30000000\nSTATUS=starting: reading the disk buffers back and building the instances",
            Duration::from_secs(10),
            longest,
            work,
        )
    }

    /// Runs `work` while a helper sends `state`, at once and then every `every`, for at most
    /// `longest`.
    fn sending_while<T>(
        &self,
        state: &str,
        every: Duration,
        longest: Duration,
        work: impl FnOnce() -> T,
    ) -> T {
        std::thread::scope(|scope| {
            let (done, finished) = std::sync::mpsc::channel::<()>();
            scope.spawn(move || {
                let end = Instant::now() + longest;
                // At once: the caller's last one may be almost an interval old.
                self.send(state);
                while Instant::now() < end {
                    match finished.recv_timeout(every) {
                        Err(RecvTimeoutError::Timeout) => self.send(state),
                        _ => return,
                    }
                }
            });
            let out = work();
            drop(done);
            out
        })
    }
}
