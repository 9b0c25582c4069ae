//! What a full handshake costs the server below its session cap and at it, where each newcomer
//! makes room by dropping the least recently active session: `cargo run --release -p
//! gateway-dtls --example cap_bench [SESSIONS] [AT_CAP]`.
//!
//! SESSIONS devices (default 20,000, the ingress's default `max_sessions`) each make a real
//! DTLS handshake (OpenSSL, in memory, no sockets) and one POST, then go quiet, their sessions
//! kept; AT_CAP devices more (default 500) then come, each to a full server. Prints the
//! server's CPU per handshake (wall time of the server's calls only; the clients' is not
//! counted) for the last 500 below the cap and for those at the cap.
use gateway_coap::{
    coap_lite::{RequestType, ResponseType},
    request, response, xorshift, Config as CoapConfig,
};
use gateway_dtls::{
    client::{self, Client, Event, Transmit},
    server::{self, Server},
    ClientSettings,
};
use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

/// Devices per identity (certificate): a few identities, so that each holds many sessions.
const IDENTITIES: usize = 4;

/// One device's handshake and POST; the server's time spent on it.
fn connect(server: &mut Server, client: &mut Client, addr: SocketAddr) -> Duration {
    let mut spent = Duration::ZERO;
    let mut timed = |server: &mut Server, f: &mut dyn FnMut(&mut Server)| {
        let t = Instant::now();
        f(server);
        spent += t.elapsed();
    };
    let post = request(RequestType::Post, "r", None, b"x".to_vec());
    client.request(Instant::now(), post, Duration::from_secs(30));
    loop {
        let mut moved = false;
        while let Some(t) = client.poll_transmit() {
            moved = true;
            if let Transmit::Datagram(b) = t {
                timed(server, &mut |s| s.handle(Instant::now(), addr, &b));
            }
        }
        let mut answers = Vec::new();
        timed(server, &mut |s| {
            while let Some(inc) = s.poll_event() {
                s.respond(Instant::now(), inc.id, response(ResponseType::Changed, ""));
            }
            while let Some(t) = s.poll_transmit() {
                answers.push(t);
            }
        });
        for (to, b) in answers {
            moved = true;
            // Close-notifies to the sessions dropped go nowhere: their devices are gone.
            if to == addr {
                client.handle(Instant::now(), &b);
            }
        }
        while let Some(e) = client.poll_event() {
            if let Event::Done { result, .. } = e {
                assert!(result.is_ok(), "{result:?}");
                return spent;
            }
        }
        assert!(moved, "the handshake stopped");
    }
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().ok());
    let sessions = args.next().flatten().unwrap_or(20_000);
    let at_cap = args.next().flatten().unwrap_or(500);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let stems: Vec<String> = (0..IDENTITIES).map(|i| format!("dev-{i}")).collect();
    let devices: Vec<(&str, &str)> = stems.iter().map(|s| (s.as_str(), s.as_str())).collect();
    gateway_test_support::coaps::pki(dir.path(), &devices);
    let path = |f: &str| dir.path().join(f);
    let cfg = server::Config {
        tls: gateway_dtls::ServerSettings {
            cert_file: Some(path("server.pem")),
            key_file: Some(path("server.key")),
            client_ca_file: Some(path("ca.pem")),
            require_client_cert: true,
            mtu: 1232,
            ..Default::default()
        },
        coap: CoapConfig::default(),
        max_sessions: sessions,
        max_sessions_per_identity: sessions,
        max_handshakes: 100,
        max_handshakes_per_address: 100,
        session_idle: Duration::from_secs(3600),
        handshake_timeout: Duration::from_secs(10),
        require_identity: true,
        deny: HashSet::new(),
    };
    let mut server = Server::new(cfg, Instant::now(), xorshift(99)).expect("the server");
    let contexts: Vec<client::Config> = stems
        .iter()
        .map(|s| client::Config {
            host: "localhost".into(),
            verify_host: true,
            tls: ClientSettings {
                ca_file: Some(path("ca.pem")),
                cert: Some((path(&format!("{s}.pem")), path(&format!("{s}.key")))),
                mtu: 1232,
                ..Default::default()
            },
            coap: CoapConfig::default(),
            handshake_timeout: Duration::from_secs(10),
        })
        .collect();
    let (mut below, mut at) = (Duration::ZERO, Duration::ZERO);
    let started = Instant::now();
    for i in 0..sessions + at_cap {
        let mut client =
            Client::new(contexts[i % IDENTITIES].clone(), xorshift(i as u64)).expect("a client");
        let addr = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 5683));
        let spent = connect(&mut server, &mut client, addr);
        if i >= sessions {
            at += spent;
        } else if i + 500 >= sessions {
            below += spent;
        }
        if (i + 1) % 5000 == 0 {
            eprintln!("{} sessions, {:.0?}", i + 1, started.elapsed());
        }
    }
    let evicted = server.stats().evicted_sessions.load(Ordering::Relaxed);
    assert_eq!(server.sessions().0, sessions);
    assert_eq!(evicted, at_cap as u64);
    let per = |d: Duration, n: usize| d.as_secs_f64() * 1e6 / n.max(1) as f64;
    println!(
        "{sessions} sessions: server CPU per handshake and POST {:.0} µs below the cap (the last {}), {:.0} µs at the cap ({at_cap}, each dropping the least recently active)",
        per(below, sessions.min(500)),
        sessions.min(500),
        per(at, at_cap),
    );
}
