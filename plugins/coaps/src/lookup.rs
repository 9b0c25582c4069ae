//! The uplink's first look-up of the server's name, off the sink's thread: `getaddrinfo` waits
//! as long as the system's resolver says (5 s per server and attempt by default), and a Pi
//! whose DNS server is gone held every write, and the gateway's shutdown, that long. A
//! look-up that has not answered within [`WAIT`] is a retryable error; it goes on, on its own
//! thread, and the next write takes its answer (no second look-up starts meanwhile). I/O: the
//! look-up, on a thread of its own.

use std::{
    net::{SocketAddr, ToSocketAddrs},
    sync::mpsc,
    time::Duration,
};

/// How long a write waits for the look-up: as long as the client's own look-ups before a new
/// session.
pub const WAIT: Duration = Duration::from_secs(3);

/// What a look-up found.
type Found = std::io::Result<Vec<SocketAddr>>;

/// A look-up that may still be running.
#[derive(Debug, Default)]
pub struct Lookup {
    pending: Option<mpsc::Receiver<Found>>,
}

impl Lookup {
    /// The addresses of `host`, waiting at most [`WAIT`].
    pub fn addrs(&mut self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        // An address needs no look-up, nor a thread.
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        self.addrs_with(host, port, WAIT, |h, p| {
            (h.as_str(), p).to_socket_addrs().map(Iterator::collect)
        })
    }

    /// The addresses `resolve` gives for `host`, waiting at most `wait`; a look-up still
    /// running from an earlier call is waited for instead of starting another.
    pub fn addrs_with(
        &mut self,
        host: &str,
        port: u16,
        wait: Duration,
        resolve: impl FnOnce(String, u16) -> Found + Send + 'static,
    ) -> Result<Vec<SocketAddr>, String> {
        let rx = match self.pending.take() {
            Some(rx) => rx,
            None => {
                let (tx, rx) = mpsc::sync_channel(1);
                let name = host.to_owned();
                std::thread::Builder::new()
                    .name("uplink-lookup".into())
                    .stack_size(256 << 10)
                    .spawn(move || {
                        let _ = tx.send(resolve(name, port));
                    })
                    .map_err(|e| format!("cannot look up {host}: no thread ({e})"))?;
                rx
            }
        };
        match rx.recv_timeout(wait) {
            Ok(found) => found.map_err(|e| format!("cannot resolve {host}: {e}")),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.pending = Some(rx);
                Err(format!(
                    "looking up {host} takes longer than {wait:?} (is the DNS server reachable?); the readings wait, and the look-up goes on"
                ))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(format!(
                "cannot resolve {host}: the look-up ended without an answer"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_slow_look_up_is_not_waited_for_and_its_answer_is_taken_later() {
        let mut l = Lookup::default();
        let started = Instant::now();
        let (go, gate) = mpsc::channel::<()>();
        let e = l
            .addrs_with(
                "gps.example",
                5684,
                Duration::from_millis(100),
                move |_, p| {
                    gate.recv().unwrap();
                    Ok(vec![SocketAddr::from(([192, 0, 2, 1], p))])
                },
            )
            .unwrap_err();
        assert!(e.contains("takes longer than 100ms"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(1));
        // The next call starts no second look-up: it waits for the first one's answer.
        go.send(()).unwrap();
        let found = l
            .addrs_with("gps.example", 5684, Duration::from_secs(5), |_, _| {
                unreachable!("a second look-up")
            })
            .unwrap();
        assert_eq!(found, [SocketAddr::from(([192, 0, 2, 1], 5684))]);
        // Then a new one starts.
        let e = l
            .addrs_with("gps.example", 5684, Duration::from_secs(5), |_, _| {
                Err(std::io::Error::other("no such host"))
            })
            .unwrap_err();
        assert!(
            e.contains("cannot resolve gps.example: no such host"),
            "{e}"
        );
        assert_eq!(
            l.addrs("127.0.0.1", 9).unwrap(),
            [SocketAddr::from(([127, 0, 0, 1], 9))]
        );
    }
}
