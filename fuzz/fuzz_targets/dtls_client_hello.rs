//! Any datagram as a DTLS ClientHello, as the server's stateless front reads every datagram
//! from an address without a session: a hello or `None`, never a panic; the answer to a hello
//! is not a hello itself; only the cookie the jar made for that peer and random passes.
#![no_main]
use gateway_dtls::{hello_verify_request, parse_client_hello, CookieJar};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let Some(ch) = parse_client_hello(data) else {
        return;
    };
    assert!(ch.cookie.len() <= 255);
    let hvr = hello_verify_request(&ch, &[7u8; 16]);
    assert!(parse_client_hello(&hvr).is_none(), "our HelloVerifyRequest read as a ClientHello");
    let now = Instant::now();
    let mut jar = CookieJar::new(now, Duration::from_secs(300));
    let peer = "192.0.2.1:5684".parse().unwrap();
    let made = jar.make(now, peer, &ch, &[]);
    assert_eq!(jar.check(now, peer, &ch, &[]), ch.cookie == made);
});
