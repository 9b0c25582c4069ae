//! `gateway coap` against a server that answers block-wise for ever, in the smallest blocks
//! (16 bytes): a GET stops after a bounded number of blocks, and `observe --for` ends on time
//! while such a notification is being fetched.

use gateway_coap::{
    coap_lite::{CoapOption, ResponseType},
    encode_uint, response, Block, Config as CoapConfig,
};
use gateway_coaps_tokio::{Bound, Handler, Incoming, Responder, ServerConfig, ServerOptions};
use gateway_dtls::ServerSettings;
use gateway_test_support::coaps;
use std::{
    collections::HashSet,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Answers every GET with the block asked for (block 0 if none), 16 bytes, "more follow".
struct Endless {
    responder: Responder,
    stop: Arc<AtomicBool>,
}

impl Handler for Endless {
    fn request(&mut self, inc: Incoming) {
        let num = inc
            .packet
            .get_first_option(CoapOption::Block2)
            .and_then(|v| Block::decode(v))
            .map_or(0, |b| b.num);
        let observing = inc.packet.get_first_option(CoapOption::Observe).is_some();
        let mut p = response(ResponseType::Content, "0123456789abcdef");
        p.add_option(
            CoapOption::Block2,
            Block {
                num,
                more: true,
                szx: 0,
            }
            .encode(),
        );
        if observing {
            p.add_option(CoapOption::Observe, encode_uint(1));
            let token = inc.packet.get_token().to_vec();
            self.responder.register(inc.id, inc.peer, token, p);
        } else {
            self.responder.respond(inc.id, p);
        }
    }
    fn tick(&mut self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }
}

fn endless_server(dir: &Path) -> (u16, Arc<AtomicBool>) {
    coaps::certs(dir, "pi-01");
    let b = Bound::new(ServerOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        max_pending: 64,
        busy_poll: Duration::ZERO,
        server: ServerConfig {
            tls: ServerSettings {
                cert_file: Some(dir.join("server.pem")),
                key_file: Some(dir.join("server.key")),
                mtu: 1232,
                ..Default::default()
            },
            coap: CoapConfig::default(),
            max_sessions: 10,
            max_sessions_per_identity: 4,
            max_handshakes: 10,
            max_handshakes_per_address: 10,
            session_idle: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(5),
            require_identity: false,
            deny: HashSet::new(),
        },
    })
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let port = b.local_addr.port();
    let handler = Endless {
        responder: b.responder.clone(),
        stop: stop.clone(),
    };
    std::thread::spawn(move || b.run(Duration::from_millis(20), handler));
    (port, stop)
}

#[test]
fn a_server_that_sends_blocks_for_ever_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (port, stop) = endless_server(dir.path());
    let ca = dir.path().join("ca.pem");
    let uri = format!("coaps://localhost:{port}/big");
    let ca = ca.to_str().unwrap();

    // A GET: before, it went on until 64 MiB, four million 16-byte exchanges.
    let out = Command::new(env!("CARGO_BIN_EXE_gateway-coap"))
        .args(["get", &uri, "--ca", ca])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("over 65536 blocks"), "{err}");

    // observe --for 1s while the first notification is fetched block by block: before, --for
    // was looked at only between notifications.
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway-coap"))
        .args(["observe", &uri, "--ca", ca, "--for", "1s"])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success() && took < Duration::from_secs(5),
        "took {took:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop.store(true, Ordering::Relaxed);
}
