//! What a session that ends costs the server's CoAP layer when the de-duplication memory is
//! full, as it is on a busy server (16,384 requests at the default capacity, in a fraction of
//! a second at 100,000 requests/s): `cargo run --release -p gateway-coap --example churn_bench
//! [PEERS]`. PEERS sessions (default 2,000) each send 16 answered requests, and 16 more; then
//! each session ends and another takes its place and sends 16; prints µs per request while the
//! sessions go on, per session that ends (`forget_peer`), and per request of the new ones.
use gateway_coap::coap_lite::{RequestType, ResponseType};
use gateway_coap::{request, response, xorshift, Config, Endpoint, Event};
use std::time::{Duration, Instant};

const REQUESTS_PER_SESSION: u16 = 16;

fn main() {
    let peers: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let rng = xorshift(0x9E37_79B9_7F4A_7C15);
    let mut server: Endpoint<u32> = Endpoint::new(Config::default(), rng);
    let now = Instant::now();
    let session = |server: &mut Endpoint<u32>, peer: u32, first: u16| {
        for mid in first..first + REQUESTS_PER_SESSION {
            let mut p = request(RequestType::Post, "x", None, vec![]);
            p.header.message_id = mid;
            server.handle_datagram(now, peer, &p.to_bytes().expect("encodes"));
            while let Some(e) = server.poll_event() {
                if let Event::Request { id, .. } = e {
                    server.respond(now, id, response(ResponseType::Changed, ""));
                }
            }
            while server.poll_transmit().is_some() {}
        }
    };
    for peer in 0..peers {
        session(&mut server, peer, 0);
    }
    // The same sessions go on.
    let t = Instant::now();
    for peer in 0..peers {
        session(&mut server, peer, REQUESTS_PER_SESSION);
    }
    let steady = t.elapsed();
    // Each ends, and another takes its place.
    let (mut forgetting, mut serving) = (Duration::ZERO, Duration::ZERO);
    for peer in 0..peers {
        let t = Instant::now();
        server.forget_peer(peer);
        forgetting += t.elapsed();
        let t = Instant::now();
        session(&mut server, peers + peer, 0);
        serving += t.elapsed();
    }
    let n = f64::from(peers);
    let per_request = |d: Duration| d.as_secs_f64() * 1e6 / (n * f64::from(REQUESTS_PER_SESSION));
    println!(
        "{peers} sessions, {REQUESTS_PER_SESSION} requests each, memory {} entries: {:.3} µs per request while they go on; {:.2} µs per session that ends, {:.3} µs per request of the sessions that take their places",
        server.remembered(),
        per_request(steady),
        forgetting.as_secs_f64() * 1e6 / n,
        per_request(serving),
    );
}
