//! A lossy UDP relay for the tests that check delivery over a bad link: used by
//! `host/tests/zero_loss.rs` and `plugins/coaps/tests/link.rs`.

use std::{
    net::UdpSocket,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// What the relay did.
#[derive(Default)]
pub struct RelayCounts {
    /// Datagrams passed on (once or twice).
    pub passed: AtomicU64,
    /// Datagrams dropped.
    pub dropped: AtomicU64,
    /// Datagrams passed on twice.
    pub duplicated: AtomicU64,
    /// The size of the largest datagram passed on toward the server, in bytes.
    pub largest_to_server: AtomicU64,
}

/// A UDP relay in front of `server_port` that drops (`loss`), duplicates (`dup`) and delays by
/// up to `max_delay` (so reorders) datagrams both ways, choosing with a xorshift generator seeded
/// with `seed` (a run's pattern of losses is repeatable); returns the port it listens on.
/// It talks to the server from one socket whatever the client's port, so a restarted client
/// looks to the server like a rebooted Pi on its old address.
pub fn lossy_relay(
    server_port: u16,
    loss: f64,
    dup: f64,
    max_delay: Duration,
    seed: u64,
    stop: Arc<AtomicBool>,
    counts: Arc<RelayCounts>,
) -> u16 {
    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = front.local_addr().unwrap().port();
    let back = UdpSocket::bind("127.0.0.1:0").unwrap();
    back.connect(("127.0.0.1", server_port)).unwrap();
    front
        .set_read_timeout(Some(Duration::from_millis(2)))
        .unwrap();
    back.set_read_timeout(Some(Duration::from_millis(2)))
        .unwrap();
    std::thread::spawn(move || {
        let mut rng = seed;
        let mut chance = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % 10_000) as f64 / 10_000.0
        };
        let mut client = None;
        let mut later: Vec<(Instant, bool, Vec<u8>)> = Vec::new();
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::SeqCst) {
            let mut got: Vec<(bool, Vec<u8>)> = Vec::new();
            while let Ok((n, from)) = front.recv_from(&mut buf) {
                client = Some(from);
                got.push((true, buf[..n].to_vec()));
                if got.len() > 64 {
                    break;
                }
            }
            while let Ok(n) = back.recv(&mut buf) {
                got.push((false, buf[..n].to_vec()));
                if got.len() > 128 {
                    break;
                }
            }
            for (to_server, d) in got {
                if chance() < loss {
                    counts.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                counts.passed.fetch_add(1, Ordering::Relaxed);
                if to_server {
                    counts
                        .largest_to_server
                        .fetch_max(d.len() as u64, Ordering::Relaxed);
                }
                let copies = if chance() < dup {
                    counts.duplicated.fetch_add(1, Ordering::Relaxed);
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let delay = max_delay.mul_f64(chance());
                    later.push((Instant::now() + delay, to_server, d.clone()));
                }
            }
            let now = Instant::now();
            later.sort_by_key(|l| l.0);
            let due = later.iter().take_while(|l| l.0 <= now).count();
            for (_, to_server, d) in later.drain(..due) {
                if to_server {
                    let _ = back.send(&d);
                } else if let Some(c) = client {
                    let _ = front.send_to(&d, c);
                }
            }
        }
    });
    port
}
