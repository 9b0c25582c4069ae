//! Several workers on one port (SO_REUSEPORT): the kernel spreads the devices over them, each
//! request is answered by the worker that holds its session, and a session established on one
//! worker resumes on another (they share the DTLS context and its session cache).

mod common;
use common::*;
use gateway_coap::{coap_lite::ResponseType, response};
use gateway_coaps_tokio::{Bound, Client, Handler, Incoming, Responder};
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Answers 2.04 with its worker's number.
struct Answer {
    worker: usize,
    responder: Responder,
    stop: Arc<AtomicBool>,
}

impl Handler for Answer {
    fn request(&mut self, inc: Incoming) {
        let body = self.worker.to_string();
        self.responder
            .respond(inc.id, response(ResponseType::Changed, &body));
    }
    fn tick(&mut self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }
}

/// Which worker answered `client`'s POST.
fn worker_of(client: &Client) -> usize {
    let r = client
        .request(post(b"x".to_vec()), Duration::from_secs(5))
        .expect("an answer");
    assert!(changed(&r));
    String::from_utf8(r.payload).unwrap().parse().unwrap()
}

#[test]
fn workers_share_the_port_and_a_session_resumes_on_any_of_them() {
    let pki = Pki::new();
    let mut opts = server_opts(&pki, "server");
    opts.server.session_idle = Duration::from_millis(200);
    let bound = Bound::workers(opts, 4).unwrap();
    let addr = bound[0].local_addr;
    assert!(bound.iter().all(|b| b.local_addr == addr), "one port");
    let stats = bound[0].stats.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = bound
        .into_iter()
        .enumerate()
        .map(|(worker, b)| {
            let answer = Answer {
                worker,
                responder: b.responder.clone(),
                stop: stop.clone(),
            };
            std::thread::spawn(move || b.run(Duration::from_millis(20), answer))
        })
        .collect();
    let opts = client_opts(addr, &pki.path("ca.pem"), "127.0.0.1");

    // Devices from 24 ports: more than one worker serves them.
    let mut used = std::collections::HashSet::new();
    for _ in 0..24 {
        used.insert(worker_of(&Client::start(opts.clone()).unwrap()));
    }
    assert!(used.len() > 1, "the kernel spread the devices: {used:?}");

    // One device: each time the server drops its idle session, it reconnects from a new port
    // and offers the session again, until it lands on a worker other than the one that made
    // the session. Every reconnection is abbreviated, whichever worker it lands on.
    let client = Client::start(opts).unwrap();
    let first = worker_of(&client);
    let mut rounds = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let closed = stats.idle_evictions.load(Ordering::Relaxed);
        while stats.idle_evictions.load(Ordering::Relaxed) == closed {
            assert!(Instant::now() < deadline, "no other worker in 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50));
        let resumed = stats.resumed.load(Ordering::Relaxed);
        let now_on = worker_of(&client);
        rounds += 1;
        assert_eq!(
            stats.resumed.load(Ordering::Relaxed),
            resumed + 1,
            "round {rounds}: resumed on worker {now_on} (made on {first})"
        );
        if now_on != first {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
}
