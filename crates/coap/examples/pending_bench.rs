//! What the requests a server's application has not answered yet (a slow sink: thousands of
//! devices' requests waiting for it) cost every other request and every session that ends:
//! `cargo run --release -p gateway-coap --example pending_bench [WAITING]`.
//!
//! WAITING peers (default 20,000) each leave one CON request unanswered; then 20,000 requests
//! of other peers are answered at once, the server asked for its next timeout after each (as
//! its driver does after every input), and 20,000 sessions without a request waiting end
//! (`forget_peer`). Then the application answers the waiting requests, late: each answer goes
//! as a CON separate response, which its device has not acknowledged yet (a sink that caught
//! up with a fleet at once), and 20,000 more requests of others are answered. Prints µs per
//! request and per ended session.
use gateway_coap::coap_lite::{MessageType, RequestType, ResponseType};
use gateway_coap::{request, response, xorshift, Config, Endpoint, Event, RequestId};
use std::time::{Duration, Instant};

const OTHERS: u32 = 20_000;

fn main() {
    let waiting: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let rng = xorshift(0x9E37_79B9_7F4A_7C15);
    let mut server: Endpoint<u32> = Endpoint::new(Config::default(), rng);
    let now = Instant::now();
    // A CON POST from `peer` at `now`, answered at once if `answer`; its id if it was not.
    let post = |server: &mut Endpoint<u32>, now: Instant, peer: u32, answer: bool| {
        let mut p = request(RequestType::Post, "x", None, vec![]);
        p.header.set_type(MessageType::Confirmable);
        p.header.message_id = peer as u16;
        server.handle_datagram(now, peer, &p.to_bytes().expect("encodes"));
        let mut left: Option<RequestId> = None;
        while let Some(e) = server.poll_event() {
            if let Event::Request { id, .. } = e {
                if answer {
                    server.respond(now, id, response(ResponseType::Changed, ""));
                } else {
                    left = Some(id);
                }
            }
        }
        while server.poll_transmit().is_some() {}
        std::hint::black_box(server.poll_timeout());
        left
    };
    let left: Vec<RequestId> = (0..waiting)
        .filter_map(|peer| post(&mut server, now, peer, false))
        .collect();
    assert_eq!(server.in_flight().1, waiting as usize);
    let t = Instant::now();
    for peer in waiting..waiting + OTHERS {
        post(&mut server, now, peer, true);
    }
    let per_request = t.elapsed().as_secs_f64() * 1e6 / f64::from(OTHERS);
    let t = Instant::now();
    for peer in waiting..waiting + OTHERS {
        server.forget_peer(peer);
    }
    let per_forget = t.elapsed().as_secs_f64() * 1e6 / f64::from(OTHERS);
    assert_eq!(server.in_flight().1, waiting as usize);
    println!(
        "{waiting} requests waiting for the application: {per_request:.2} µs per answered request (with the next timeout asked), {per_forget:.2} µs per session that ends"
    );
    // The waiting requests had their empty ACKs; their answers go now, as CON separate
    // responses, none acknowledged yet.
    let later = now + Duration::from_secs(2);
    server.handle_timeout(later);
    for id in left {
        server.respond(later, id, response(ResponseType::Changed, ""));
    }
    while server.poll_transmit().is_some() {}
    let t = Instant::now();
    for peer in waiting + OTHERS..waiting + 2 * OTHERS {
        post(&mut server, later, peer, true);
    }
    let per_request = t.elapsed().as_secs_f64() * 1e6 / f64::from(OTHERS);
    println!(
        "{waiting} separate responses awaiting their ACK: {per_request:.2} µs per answered request (with the next timeout asked)"
    );
}
