//! Any datagram into the sans-IO CoAP core, from a few peers, with time passing: it answers or
//! drops, never panics, and what it sends back parses as CoAP.
#![no_main]
use gateway_coap::{response, Config, Endpoint, Event};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let mut e: Endpoint<u8> = Endpoint::new(Config { max_body: 4096, ..Config::default() }, Box::new(|| 4));
    let mut now = Instant::now();
    for (i, chunk) in data.split(|&b| b == 0xA5).enumerate() {
        e.handle_datagram(now, (i % 3) as u8, chunk);
        while let Some(ev) = e.poll_event() {
            if let Event::Request { id, .. } = ev {
                e.respond(now, id, response(coap_lite::ResponseType::Changed, ""));
            }
        }
        while let Some((_, out)) = e.poll_transmit() {
            assert!(coap_lite::Packet::from_bytes(&out).is_ok(), "we sent something that is not CoAP");
        }
        now += Duration::from_millis(700);
        e.handle_timeout(now);
    }
});
