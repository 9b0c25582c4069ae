//! A worker that busy-polls its socket (`busy_poll`) over real sockets: while it polls, it
//! still takes requests, sends answers given from other threads, and keeps its timers.

mod common;
use common::*;
use gateway_coap::{coap_lite::ResponseType, response};
use gateway_coaps_tokio::{Bound, Client, Handler, Incoming, Responder, ServerStats};
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// A poll window far longer than anything the tests wait for: whatever they see happened
/// while the worker polled, not after the window ran out.
const LONG: Duration = Duration::from_secs(5);

/// Answers "now" at once, and "later" from another thread 50 ms later.
struct Answer {
    responder: Responder,
    stop: Arc<AtomicBool>,
}

impl Handler for Answer {
    fn request(&mut self, inc: Incoming) {
        let ok = response(ResponseType::Changed, "");
        if inc.packet.payload == b"later" {
            let responder = self.responder.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                responder.respond(inc.id, ok);
            });
        } else {
            self.responder.respond(inc.id, ok);
        }
    }
    fn tick(&mut self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }
}

/// A server whose one worker polls for [`LONG`] and looks at its `stop` every `tick`.
fn polling_server(
    pki: &Pki,
    tick: Duration,
) -> (
    std::net::SocketAddr,
    Arc<ServerStats>,
    Arc<AtomicBool>,
    std::thread::JoinHandle<()>,
) {
    let mut opts = server_opts(pki, "server");
    opts.busy_poll = LONG;
    let b = Bound::new(opts).unwrap();
    let (addr, stats) = (b.local_addr, b.stats.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let answer = Answer {
        responder: b.responder.clone(),
        stop: stop.clone(),
    };
    let t = std::thread::spawn(move || b.run(tick, answer));
    (addr, stats, stop, t)
}

#[test]
fn a_polling_worker_takes_requests_and_sends_answers_given_meanwhile() {
    let pki = Pki::new();
    // Ticks far apart, so that nothing but the answer ends the worker's poll.
    let (addr, stats, stop, worker) = polling_server(&pki, Duration::from_secs(3));
    // Nor a retransmission: the device waits ACK_TIMEOUT (2 s and more), not a measured one.
    let mut opts = client_opts(addr, &pki.path("ca.pem"), "localhost");
    opts.client.coap.adaptive_rto = false;
    let client = Client::start(opts).unwrap();
    for _ in 0..50 {
        let r = client
            .request(post(b"now".to_vec()), Duration::from_secs(5))
            .expect("an answer");
        assert!(changed(&r));
    }
    // Each request after the first came while the worker polled (the window is 5 s).
    let polled = stats.polled.load(Ordering::Relaxed);
    assert!(polled >= 45, "{polled} of 50 requests found by polling");
    // Given by another thread while the worker polls: sent at once, not when the window ends.
    for _ in 0..5 {
        let t = Instant::now();
        let r = client
            .request(post(b"later".to_vec()), Duration::from_secs(10))
            .expect("an answer");
        assert!(changed(&r));
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "the answer waited {:?} for the poll window to end",
            t.elapsed()
        );
    }
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
}

#[test]
fn a_polling_worker_keeps_its_timers() {
    let pki = Pki::new();
    let (addr, _, stop, worker) = polling_server(&pki, Duration::from_millis(20));
    let client = Client::start(client_opts(addr, &pki.path("ca.pem"), "localhost")).unwrap();
    let r = client
        .request(post(b"now".to_vec()), Duration::from_secs(5))
        .expect("an answer");
    assert!(changed(&r));
    // The stop is seen at the next tick (20 ms), even though the worker is polling.
    let t = Instant::now();
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the worker stopped after {:?}",
        t.elapsed()
    );
}
