//! Any datagram to an established server session whose records the crate protects itself
//! (`Session::taken_over`, PSK-AES128-GCM-SHA256 here): never a panic, nothing delivered
//! (no input can forge a record's tag), the session stays up, and the device's next genuine
//! record still gets through.
#![no_main]
use gateway_dtls::{
    client_context, hello_verify_request, parse_client_hello, server_context, ClientSettings,
    CookieJar, Psk, ServerSettings, Session,
};
use libfuzzer_sys::fuzz_target;
use std::{
    cell::RefCell,
    time::{Duration, Instant},
};

const SUITE: &str = "PSK-AES128-GCM-SHA256";

/// A client and a server session, handshaken in memory.
fn pair() -> (Session, Session) {
    let key = b"fuzzing-fuzzing!".to_vec();
    let sctx = server_context(&ServerSettings {
        psk: [("dev".to_owned(), key.clone())].into(),
        ciphers: SUITE.into(),
        mtu: 1232,
        ..Default::default()
    })
    .unwrap();
    let cctx = client_context(&ClientSettings {
        psk: Some(Psk { identity: "dev".into(), key }),
        ciphers: SUITE.into(),
        mtu: 1232,
        ..Default::default()
    })
    .unwrap();
    let now = Instant::now();
    let peer = "192.0.2.1:5684".parse().unwrap();
    let mut jar = CookieJar::new(now, Duration::from_secs(300));
    let mut client = Session::client(&cctx, "dev", 1232, false, None, now).unwrap();
    let mut server: Option<Session> = None;
    for _ in 0..20 {
        while let Some(d) = client.poll_transmit() {
            match (&mut server, parse_client_hello(&d)) {
                (None, Some(ch)) if jar.check(now, peer, &ch, &[]) => {
                    server = Some(Session::server(&sctx, &d, &ch.cookie, 1232, now).unwrap());
                }
                (None, Some(ch)) => {
                    let hvr = hello_verify_request(&ch, &jar.make(now, peer, &ch, &[]));
                    client.handle_datagram(now, &hvr);
                }
                (None, None) => {}
                (Some(s), _) => {
                    s.handle_datagram(now, &d);
                }
            }
        }
        if let Some(s) = &mut server {
            while let Some(d) = s.poll_transmit() {
                client.handle_datagram(now, &d);
            }
        }
        if client.is_established() && server.as_ref().is_some_and(Session::is_established) {
            let server = server.unwrap();
            assert!(server.taken_over());
            return (client, server);
        }
    }
    panic!("no handshake");
}

thread_local! {
    static PAIR: RefCell<(Session, Session)> = RefCell::new(pair());
}

fuzz_target!(|data: &[u8]| {
    PAIR.with_borrow_mut(|(client, server)| {
        let now = Instant::now();
        assert!(server.handle_datagram(now, data).is_empty(), "a forged record was delivered");
        assert!(server.is_established(), "a forged record ended the session");
        client.send(b"reading").unwrap();
        let d = client.poll_transmit().unwrap();
        assert_eq!(server.handle_datagram(now, &d), [b"reading".to_vec()]);
        while server.poll_transmit().is_some() {}
    });
});
