//! systemd's readiness protocol (`Type=notify`, sd_notify(3)) without libsystemd: datagrams
//! to the socket in `NOTIFY_SOCKET`. `READY=1` once every instance runs, `STOPPING=1` when the
//! shutdown starts, `WATCHDOG=1` every half of `WATCHDOG_USEC` from the thread that waits for
//! signals (so a wedged run loop stops the pings and systemd restarts the service; while that
//! thread reloads the config, a helper pings for it, for as long as a reload may take), `STATUS=`
//! lines a person sees in `systemctl status`. Outside systemd nothing is sent.

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
        let Some(every) = self.watchdog_interval() else {
            return work();
        };
        std::thread::scope(|scope| {
            let (done, finished) = std::sync::mpsc::channel::<()>();
            scope.spawn(move || {
                let end = Instant::now() + longest;
                // At once: the caller's last ping may be almost an interval old.
                self.send("WATCHDOG=1");
                while Instant::now() < end {
                    match finished.recv_timeout(every) {
                        Err(RecvTimeoutError::Timeout) => self.send("WATCHDOG=1"),
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
