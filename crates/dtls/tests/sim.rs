//! The session rules of the link, tested with the sans-IO client and server against each other
//! over a simulated network with a simulated clock: real DTLS handshakes (OpenSSL, in memory),
//! no sockets, no sleeps. A minute of link time passes in microseconds.
//!
//! OpenSSL's own handshake retransmission timer runs on the real clock; nothing here loses a
//! handshake datagram by accident, so it never fires.

use gateway_coap::{
    coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType},
    encode_uint, request, response, Config as CoapConfig,
};
use gateway_dtls::{
    client::{self, Client, Event, RequestError, Transmit},
    hello::parse_client_hello,
    server::{self, Server},
    ClientSettings, Session,
};
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

mod common;
use common::Pki;

impl Pki {
    /// A PKI whose devices' file stems are their names.
    fn devices(devices: &[&str]) -> Pki {
        let stems: Vec<(&str, &str)> = devices.iter().map(|d| (*d, *d)).collect();
        Pki::with(&stems)
    }

    fn server_config(&self) -> server::Config {
        server::Config {
            tls: self.server_settings(),
            coap: CoapConfig::default(),
            max_sessions: 100,
            max_sessions_per_identity: 4,
            max_handshakes: 10,
            max_handshakes_per_address: 10,
            session_idle: Duration::from_secs(600),
            handshake_timeout: Duration::from_secs(10),
            require_identity: true,
            deny: HashSet::new(),
        }
    }

    /// [`Pki::server_config`] with room for one handshake in progress.
    fn one_handshake_at_a_time(&self) -> server::Config {
        server::Config {
            max_handshakes: 1,
            max_handshakes_per_address: 1,
            ..self.server_config()
        }
    }

    fn device(&self, device: &str) -> Client {
        self.client_with(device, CoapConfig::default())
    }

    fn client_with(&self, device: &str, coap: CoapConfig) -> Client {
        let cfg = client::Config {
            host: "localhost".into(),
            verify_host: true,
            tls: ClientSettings {
                ca_file: Some(self.path("ca.pem")),
                cert: Some((
                    self.path(&format!("{device}.pem")),
                    self.path(&format!("{device}.key")),
                )),
                mtu: 1232,
                ..Default::default()
            },
            coap,
            handshake_timeout: Duration::from_secs(10),
        };
        Client::new(cfg, seeded(device.len() as u64 + 7)).unwrap()
    }
}

fn seeded(seed: u64) -> Box<dyn FnMut() -> u64 + Send> {
    gateway_coap::xorshift(seed)
}

/// A device on the simulated network: its client, and the address its current socket has.
struct Device {
    client: Client,
    addr: Option<SocketAddr>,
    /// How many more datagrams reach the server (`None`: all); past it, the device is silent.
    budget: Option<usize>,
    /// Past its budget, the device's datagrams wait here instead of being lost (a device that
    /// answers late), until [`Net::release`].
    held: Option<Vec<Vec<u8>>>,
    /// The last datagram it sent.
    last: Option<Vec<u8>>,
    /// Every datagram it sent, as someone on its path could record them.
    sent: Vec<Vec<u8>>,
    /// Its next socket keeps the address of the last (a device that rebooted).
    keep_port: bool,
    done: HashMap<u64, Result<Packet, RequestError>>,
}

/// The simulated network: one server, devices, a clock. Datagrams arrive in the order they
/// were sent, `latency` after.
struct Net {
    now: Instant,
    server: Server,
    devices: Vec<Device>,
    next_port: u16,
    /// Answer requests at once (else the test answers them), with the code this gives for
    /// the body.
    auto_answer: bool,
    answer: fn(&[u8]) -> ResponseType,
    /// Auto answers to a GET register its client (they carry Observe).
    observe: bool,
    received: Vec<(Option<String>, Vec<u8>)>,
    /// The share of datagrams lost, each way.
    loss: f64,
    /// How long a datagram takes, each way (0: it arrives at once).
    latency: Duration,
    /// Datagrams on their way: when they arrive, whether to the server, the address, the bytes.
    wire: Vec<(Instant, bool, SocketAddr, Vec<u8>)>,
    dice: Box<dyn FnMut() -> u64 + Send>,
}

impl Net {
    fn new(cfg: server::Config) -> Net {
        let now = Instant::now();
        Net {
            now,
            server: Server::new(cfg, now, seeded(99)).unwrap(),
            devices: Vec::new(),
            next_port: 40_000,
            auto_answer: true,
            answer: |_| ResponseType::Changed,
            observe: false,
            received: Vec::new(),
            loss: 0.0,
            latency: Duration::ZERO,
            wire: Vec::new(),
            dice: seeded(1234),
        }
    }

    /// Whether the next datagram is lost.
    fn lost(&mut self) -> bool {
        self.loss > 0.0 && ((self.dice)() % 1_000_000) as f64 / 1e6 < self.loss
    }

    fn add(&mut self, client: Client) -> usize {
        self.devices.push(Device {
            client,
            addr: None,
            budget: None,
            held: None,
            last: None,
            sent: Vec::new(),
            keep_port: false,
            done: HashMap::new(),
        });
        self.devices.len() - 1
    }

    /// Sends device `i`'s last datagram again, as a DTLS retransmission would.
    fn resend(&mut self, i: usize) {
        let d = &self.devices[i];
        let (from, last) = (d.addr.unwrap(), d.last.clone().unwrap());
        self.server.handle(self.now, from, &last);
        self.settle();
    }

    /// Device `i`'s held datagrams reach the server now, and it is heard from again.
    fn release(&mut self, i: usize) {
        let d = &mut self.devices[i];
        let held = d.held.take().unwrap_or_default();
        d.budget = None;
        let from = d.addr.unwrap();
        for b in held {
            self.server.handle(self.now, from, &b);
        }
        self.settle();
    }

    /// Device `i` is replaced by a new client (it rebooted) that keeps its address.
    fn reboot(&mut self, i: usize, client: Client) {
        let d = &mut self.devices[i];
        d.client = client;
        d.keep_port = true;
        d.done.clear();
    }

    fn post(&mut self, i: usize, body: &[u8], timeout: Duration) -> u64 {
        let p = request(RequestType::Post, "r", None, body.to_vec());
        let tag = self.devices[i].client.request(self.now, p, timeout);
        self.settle();
        tag
    }

    /// Moves everything that can move now, until nothing does.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            let now = self.now;
            let due: Vec<_> = self.wire.iter().filter(|w| w.0 <= now).cloned().collect();
            self.wire.retain(|w| w.0 > now);
            for (_, to_server, addr, b) in due {
                moved = true;
                if to_server {
                    self.server.handle(self.now, addr, &b);
                } else if let Some(d) = self.devices.iter_mut().find(|d| d.addr == Some(addr)) {
                    d.client.handle(self.now, &b);
                }
            }
            for d in self.devices.iter_mut() {
                while let Some(Event::Done { tag, result }) = d.client.poll_event() {
                    d.done.insert(tag, result);
                }
            }
            let mut to_server = Vec::new();
            for d in self.devices.iter_mut() {
                while let Some(t) = d.client.poll_transmit() {
                    moved = true;
                    match t {
                        Transmit::Connect => {
                            // A new socket, a new port, unless the device kept its address.
                            if !std::mem::take(&mut d.keep_port) {
                                self.next_port += 1;
                                d.addr = Some(SocketAddr::from(([10, 0, 0, 1], self.next_port)));
                            }
                        }
                        Transmit::Datagram(b) => {
                            if d.budget.is_some_and(|n| n == 0) {
                                if let Some(held) = &mut d.held {
                                    held.push(b);
                                }
                                continue;
                            }
                            d.budget = d.budget.map(|n| n - 1);
                            d.last = Some(b.clone());
                            d.sent.push(b.clone());
                            to_server.push((d.addr.unwrap(), b));
                        }
                    }
                }
            }
            for (from, b) in to_server {
                if self.lost() {
                } else if self.latency.is_zero() {
                    self.server.handle(self.now, from, &b);
                } else {
                    self.wire.push((self.now + self.latency, true, from, b));
                }
            }
            while let Some(inc) = self.server.poll_event() {
                moved = true;
                let code = (self.answer)(&inc.packet.payload);
                self.received.push((
                    inc.identity.as_deref().map(str::to_owned),
                    inc.packet.payload,
                ));
                if self.auto_answer {
                    let mut r = response(code, "");
                    if self.observe
                        && inc.packet.header.code == MessageClass::Request(RequestType::Get)
                    {
                        r.add_option(CoapOption::Observe, encode_uint(0));
                    }
                    self.server.respond(self.now, inc.id, r);
                }
            }
            while let Some((to, b)) = self.server.poll_transmit() {
                moved = true;
                if self.lost() {
                    continue;
                }
                if !self.latency.is_zero() {
                    self.wire.push((self.now + self.latency, false, to, b));
                    continue;
                }
                if let Some(d) = self.devices.iter_mut().find(|d| d.addr == Some(to)) {
                    d.client.handle(self.now, &b);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Lets `d` of simulated time pass, firing every timer on the way.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let mut next = self.server.poll_timeout(self.now);
            if let Some(w) = self.wire.iter().map(|w| w.0).min() {
                next = Some(next.map_or(w, |n: Instant| n.min(w)));
            }
            for dev in &self.devices {
                if let Some(t) = dev.client.poll_timeout(self.now) {
                    next = Some(next.map_or(t, |n: Instant| n.min(t)));
                }
            }
            let Some(t) = next.filter(|t| *t <= end) else {
                break;
            };
            self.now = t.max(self.now);
            self.server.handle_timeout(self.now);
            for dev in self.devices.iter_mut() {
                dev.client.handle_timeout(self.now);
            }
            self.settle();
        }
        self.now = end;
        self.server.handle_timeout(self.now);
        for dev in self.devices.iter_mut() {
            dev.client.handle_timeout(self.now);
        }
        self.settle();
    }

    /// Device `i` registers to observe `r` (the answer carries Observe when `observe` is
    /// set); its token.
    fn observe_from(&mut self, i: usize) -> Vec<u8> {
        let mut get = request(RequestType::Get, "r", None, vec![]);
        get.add_option(CoapOption::Observe, encode_uint(0));
        let tag = self.devices[i].client.request(self.now, get, T);
        self.settle();
        assert!(self.changed(i, tag));
        let Some(Ok(answer)) = self.result(i, tag) else {
            unreachable!()
        };
        answer.get_token().to_vec()
    }

    /// POSTs `body` from device `i`; whether it was stored (2.04).
    fn stored(&mut self, i: usize, body: &[u8]) -> bool {
        let t = self.post(i, body, T);
        self.changed(i, t)
    }

    /// The server restarts: it knows no session, and drops what it cannot decrypt.
    fn restart_server(&mut self, cfg: server::Config) {
        self.server = Server::new(cfg, self.now, seeded(5)).unwrap();
    }

    fn result(&self, i: usize, tag: u64) -> Option<&Result<Packet, RequestError>> {
        self.devices[i].done.get(&tag)
    }

    fn changed(&self, i: usize, tag: u64) -> bool {
        matches!(self.result(i, tag), Some(Ok(p)) if p.header.code == MessageClass::Response(ResponseType::Changed))
    }

    fn stat(&self, f: impl Fn(&server::Stats) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(self.server.stats()).load(Ordering::Relaxed)
    }
}

const T: Duration = Duration::from_secs(30);

/// The ClientHello a client sends first (no cookie), outside the simulated network.
fn first_hello(net: &Net, c: &mut Client) -> Vec<u8> {
    c.request(net.now, request(RequestType::Post, "r", None, vec![]), T);
    assert_eq!(c.poll_transmit(), Some(Transmit::Connect));
    let Some(Transmit::Datagram(hello)) = c.poll_transmit() else {
        panic!("a ClientHello")
    };
    hello
}

/// `hello` sent from `from`: the server's cookie for that address, and the ClientHello `c`
/// sends again with it.
fn with_cookie(net: &mut Net, c: &mut Client, from: SocketAddr, hello: &[u8]) -> Vec<u8> {
    net.server.handle(net.now, from, hello);
    let (_, hvr) = net.server.poll_transmit().unwrap();
    c.handle(net.now, &hvr);
    let Some(Transmit::Datagram(with_cookie)) = c.poll_transmit() else {
        panic!("the ClientHello again, with the cookie")
    };
    with_cookie
}

#[test]
fn a_device_gets_in_under_its_certificate_name() {
    let pki = Pki::devices(&["pi-01"]);
    let mut net = Net::new(pki.server_config());
    let a = net.add(pki.device("pi-01"));
    let tag = net.post(a, b"21.5", T);
    assert!(net.changed(a, tag), "{:?}", net.result(a, tag));
    assert_eq!(
        net.received,
        vec![(Some("pi-01".to_owned()), b"21.5".to_vec())]
    );
    assert_eq!(net.server.sessions(), (1, 0));
    assert_eq!(
        net.stat(|s| &s.cookies_sent),
        1,
        "one stateless round first"
    );
    assert_eq!(
        net.stat(|s| &s.chains_reused),
        0,
        "a first chain is verified"
    );
}

#[test]
fn a_device_that_reboots_keeps_its_port_and_replaces_its_session() {
    let pki = Pki::devices(&["pi-01"]);
    let mut net = Net::new(pki.server_config());
    let a = net.add(pki.device("pi-01"));
    let tag = net.post(a, b"1", T);
    assert!(net.changed(a, tag));
    let port = net.devices[a].addr;
    // Power loss: no close_notify; the new client starts from the same address.
    net.advance(Duration::from_secs(3));
    net.reboot(a, pki.device("pi-01"));
    let tag = net.post(a, b"2", T);
    assert_eq!(net.devices[a].addr, port, "the same port");
    assert!(net.changed(a, tag), "{:?}", net.result(a, tag));
    assert_eq!(net.stat(|s| &s.replaced), 1);
    assert_eq!(net.server.sessions(), (1, 0), "the old session is gone");
    assert_eq!(net.received.len(), 2);
    // The rebooted device made a full handshake with the chain verified the first time.
    assert_eq!(net.stat(|s| &s.sessions), 2);
    assert_eq!(net.stat(|s| &s.resumed), 0);
    assert_eq!(net.stat(|s| &s.chains_reused), 1);
}

#[test]
fn a_cookie_made_while_an_old_session_lived_is_taken_once_it_has_ended() {
    // A device that keeps its port (a reboot, a NAT) says hello while its old session still
    // lives: the cookie is bound to that session. The old session ended (idle, or evicted)
    // before the ClientHello came back with the cookie, which the server then refused with a
    // second HelloVerifyRequest; an OpenSSL client ignores that one (its message_seq is 0
    // again) and sent the same ClientHello until its handshake timeout (the load generator
    // saw devices stall for its 30 s).
    let pki = Pki::devices(&["pi-01"]);
    let mut cfg = pki.server_config();
    cfg.session_idle = Duration::from_secs(60);
    let mut net = Net::new(cfg);
    let a = net.add(pki.device("pi-01"));
    assert!(net.stored(a, b"1"));
    let from = net.devices[a].addr.unwrap();
    let mut c = pki.device("pi-01");
    let hello = first_hello(&net, &mut c);
    let with_cookie = with_cookie(&mut net, &mut c, from, &hello);
    assert_eq!(net.stat(|s| &s.cookies_sent), 2);
    net.advance(Duration::from_secs(61));
    assert_eq!(net.server.sessions(), (0, 0), "the old session ended");
    // The new client takes the device's place (and address) in the network.
    net.reboot(a, c);
    net.server.handle(net.now, from, &with_cookie);
    assert_eq!(net.stat(|s| &s.cookies_sent), 2, "no second cookie");
    assert_eq!(net.server.sessions(), (0, 1), "its handshake starts");
    // It completes: the client is answered with the server's flight, not a second cookie.
    net.settle();
    assert!(
        net.devices[a].client.is_connected(),
        "the handshake completed"
    );
    assert_eq!(net.server.sessions(), (1, 0));
}

/// Whether `d` is a ClientHello that carries a cookie (at epoch 0, one record).
fn hello_with_cookie(d: &[u8]) -> bool {
    // Record header 13 bytes, handshake header 12, then version (2) and random (32).
    let sid = 13 + 12 + 2 + 32;
    d.len() > sid + 1
        && d[0] == 22
        && d[13] == 1
        && d.get(sid + 1 + usize::from(d[sid])).is_some_and(|&n| n > 0)
}

#[test]
fn a_recorded_client_hello_sent_again_cannot_end_a_live_session() {
    // RFC 6347 §4.2.8: an association stays until the client has shown it is reachable. A
    // ClientHello with a cookie, recorded by someone on the device's path and sent again
    // from its address while the cookie was within its lifetime (up to 10 min), ended the
    // device's live session; sent again after each reconnection, it kept it out.
    let pki = Pki::devices(&["pi-01"]);
    let mut net = Net::new(pki.server_config());
    let a = net.add(pki.device("pi-01"));
    assert!(net.stored(a, b"1"));
    let recorded = net.devices[a]
        .sent
        .iter()
        .find(|d| hello_with_cookie(d))
        .cloned()
        .expect("the ClientHello that carried the cookie");
    // The device reboots and keeps its port: its new handshake replaces the first session,
    // its cookie being one the server made since.
    net.advance(Duration::from_secs(3));
    net.reboot(a, pki.device("pi-01"));
    assert!(net.stored(a, b"2"));
    assert_eq!(net.stat(|s| &s.replaced), 1);
    // The recorded ClientHello, from the device's address, a minute later.
    net.advance(Duration::from_secs(60));
    let from = net.devices[a].addr.unwrap();
    net.server.handle(net.now, from, &recorded);
    net.settle();
    assert_eq!(net.stat(|s| &s.replaced), 1, "the live session stays");
    assert_eq!(net.server.sessions(), (1, 0));
    let tag = net.post(a, b"3", Duration::from_secs(5));
    net.advance(Duration::from_secs(1));
    assert!(net.changed(a, tag), "{:?}", net.result(a, tag));
    assert_eq!(net.stat(|s| &s.sessions), 2, "no handshake since");
}

#[test]
fn a_client_whose_server_restarted_reconnects_on_its_next_request() {
    let pki = Pki::devices(&["pi-01"]);
    let mut net = Net::new(pki.server_config());
    let a = net.add(pki.device("pi-01"));
    assert!(net.stored(a, b"1"));
    let first_port = net.devices[a].addr;
    net.advance(Duration::from_secs(1));
    net.restart_server(pki.server_config());
    let started = net.now;
    // A deadline shorter than CoAP's own five transmissions (6.2 s at least, from the 200 ms
    // floor of the timeout the handshake measured).
    let lost = net.post(a, b"2", Duration::from_secs(5));
    assert!(net.result(a, lost).is_none(), "no answer yet");
    net.advance(Duration::from_secs(5));
    assert_eq!(
        net.result(a, lost),
        Some(&Err(RequestError::Timeout(Duration::from_secs(5))))
    );
    assert!(net.stat(|s| &s.no_session) >= 1);
    assert!(
        !net.devices[a].client.is_connected(),
        "the stale session was dropped"
    );
    // The next request sets a new session up, from a new socket.
    let tag = net.post(a, b"3", T);
    assert!(net.changed(a, tag), "{:?}", net.result(a, tag));
    assert_ne!(net.devices[a].addr, first_port);
    assert_eq!(net.server.sessions(), (1, 0));
    assert!(
        net.now - started < Duration::from_secs(12),
        "simulated time only"
    );
}

#[test]
fn a_slow_answer_on_a_path_that_still_talks_keeps_the_session() {
    let pki = Pki::devices(&["pi-01"]);
    let mut net = Net::new(pki.server_config());
    let a = net.add(pki.device("pi-01"));
    assert!(net.stored(a, b"1"));
    let port = net.devices[a].addr;
    // The application holds the answer past the caller's deadline; CoAP's empty ACK (a
    // separate response) proves the server still has the session.
    net.auto_answer = false;
    let slow = net.post(a, b"2", Duration::from_secs(3));
    net.advance(Duration::from_secs(4));
    assert_eq!(
        net.result(a, slow),
        Some(&Err(RequestError::Timeout(Duration::from_secs(3))))
    );
    assert!(net.devices[a].client.is_connected(), "the session is kept");
    net.auto_answer = true;
    let tag = net.post(a, b"3", T);
    assert!(net.changed(a, tag));
    assert_eq!(net.devices[a].addr, port, "no reconnect");
}

#[test]
fn a_client_hello_without_a_cookie_leaves_no_state() {
    let pki = Pki::devices(&["pi-01"]);
    let mut net = Net::new(pki.server_config());
    let mut c = pki.device("pi-01");
    let hello = first_hello(&net, &mut c);
    assert!(parse_client_hello(&hello).unwrap().cookie.is_empty());
    // From a thousand (spoofed) addresses: a thousand small answers, and nothing kept.
    for port in 0..1000u16 {
        let from = SocketAddr::from(([192, 0, 2, 7], port));
        net.server.handle(net.now, from, &hello);
        let (to, answer) = net.server.poll_transmit().expect("a HelloVerifyRequest");
        assert_eq!(to, from);
        assert!(answer.len() < 64, "{} bytes back", answer.len());
    }
    assert_eq!(net.server.sessions(), (0, 0));
    assert_eq!(net.stat(|s| &s.cookies_sent), 1000);
    // The cookie made for one address does not open a session for another.
    let from = SocketAddr::from(([192, 0, 2, 7], 1));
    let with_cookie = with_cookie(&mut net, &mut c, from, &hello);
    assert!(!parse_client_hello(&with_cookie).unwrap().cookie.is_empty());
    net.server
        .handle(net.now, SocketAddr::from(([192, 0, 2, 8], 1)), &with_cookie);
    assert_eq!(net.server.sessions(), (0, 0), "a cookie of another address");
    net.server.handle(net.now, from, &with_cookie);
    assert_eq!(
        net.server.sessions(),
        (0, 1),
        "its own address: a handshake starts"
    );
}

#[test]
fn the_session_cap_drops_the_least_recently_active() {
    let pki = Pki::devices(&["a", "b", "c"]);
    let mut cfg = pki.server_config();
    cfg.max_sessions = 2;
    let mut net = Net::new(cfg);
    let ids: Vec<usize> = ["a", "b", "c"]
        .iter()
        .map(|n| net.add(pki.device(n)))
        .collect();
    for &i in &ids[..2] {
        assert!(net.stored(i, b"x"));
        net.advance(Duration::from_secs(1));
    }
    // `a` is the least recently active when `c` comes.
    assert!(net.stored(ids[2], b"x"));
    assert_eq!(net.server.sessions(), (2, 0));
    assert_eq!(net.stat(|s| &s.evicted_sessions), 1);
    let live: Vec<Option<&str>> = ids
        .iter()
        .map(|&i| net.server.identity(net.devices[i].addr.unwrap()))
        .collect();
    assert_eq!(live, vec![None, Some("b"), Some("c")]);
    // `b` came before `c`, but was active since: `c` is the least recently active when `a`
    // comes back.
    net.advance(Duration::from_secs(1));
    assert!(net.stored(ids[1], b"y"));
    net.advance(Duration::from_secs(1));
    assert!(net.stored(ids[0], b"z"));
    assert_eq!(net.stat(|s| &s.evicted_sessions), 2);
    let live: Vec<Option<&str>> = ids
        .iter()
        .map(|&i| net.server.identity(net.devices[i].addr.unwrap()))
        .collect();
    assert_eq!(live, vec![Some("a"), Some("b"), None]);
}

/// A peer without an identity that finds the session cap reached, held by peers with one,
/// is refused after its handshake, and counted as such.
#[test]
fn a_peer_without_an_identity_at_the_session_cap_is_refused_and_counted() {
    let pki = Pki::devices(&["pi-01"]);
    let mut settings = pki.server_settings();
    settings.require_client_cert = false;
    let mut net = Net::new(server::Config {
        tls: settings,
        max_sessions: 1,
        require_identity: false,
        ..pki.server_config()
    });
    let a = net.add(pki.device("pi-01"));
    assert!(net.stored(a, b"1"));
    // A client with no certificate of its own.
    let anonymous = client::Config {
        host: "localhost".into(),
        verify_host: true,
        tls: ClientSettings {
            ca_file: Some(pki.path("ca.pem")),
            mtu: 1232,
            ..Default::default()
        },
        coap: CoapConfig::default(),
        handshake_timeout: Duration::from_secs(10),
    };
    let b = net.add(Client::new(anonymous, seeded(99)).unwrap());
    assert!(!net.stored(b, b"2"));
    assert_eq!(net.stat(|s| &s.refused_at_capacity), 1);
    assert_eq!(net.server.sessions().0, 1, "pi-01 keeps its session");
    assert!(net.stored(a, b"3"));
}

/// A client certificate named after one of the server's PSK identities is refused: the two
/// are one namespace, and only that PSK's key may act as its device. The PSK device, and
/// certificates with other names, get in.
#[test]
fn a_certificate_named_after_a_psk_identity_is_refused() {
    let pki = Pki::devices(&["pi-01", "pi-02"]);
    let key = b"0123456789abcdef".to_vec();
    let mut cfg = pki.server_config();
    cfg.tls.psk = [("pi-01".to_owned(), key.clone())].into();
    let mut net = Net::new(cfg);
    let impostor = net.add(pki.device("pi-01"));
    assert!(
        !net.stored(impostor, b"1"),
        "a certificate acted as a PSK device"
    );
    assert_eq!(net.stat(|s| &s.denied), 1);
    let other = net.add(pki.device("pi-02"));
    assert!(net.stored(other, b"2"));
    let psk = client::Config {
        host: "localhost".into(),
        verify_host: false,
        tls: ClientSettings {
            psk: Some(gateway_dtls::Psk {
                identity: "pi-01".into(),
                key,
            }),
            mtu: 1232,
            ..Default::default()
        },
        coap: CoapConfig::default(),
        handshake_timeout: Duration::from_secs(10),
    };
    let device = net.add(Client::new(psk, seeded(5)).unwrap());
    assert!(net.stored(device, b"3"));
    let got: Vec<(Option<&str>, &[u8])> = net
        .received
        .iter()
        .map(|(id, body)| (id.as_deref(), body.as_slice()))
        .collect();
    assert_eq!(
        got,
        vec![(Some("pi-02"), &b"2"[..]), (Some("pi-01"), &b"3"[..])]
    );
}

/// One identity's sessions beyond its share replace its own least recently active ones,
/// never another identity's.
#[test]
fn one_identity_holds_at_most_its_share_of_sessions() {
    let pki = Pki::devices(&["leaked", "pi-01"]);
    let mut cfg = pki.server_config();
    cfg.max_sessions_per_identity = 2;
    let mut net = Net::new(cfg);
    let other = net.add(pki.device("pi-01"));
    assert!(net.stored(other, b"x"));
    let mut leaked = Vec::new();
    for _ in 0..5 {
        let i = net.add(pki.device("leaked"));
        assert!(net.stored(i, b"x"));
        leaked.push(i);
        net.advance(Duration::from_millis(100));
    }
    assert_eq!(net.server.sessions(), (3, 0));
    assert_eq!(net.stat(|s| &s.evicted_sessions), 3);
    let connected: Vec<bool> = leaked
        .iter()
        .map(|&i| net.devices[i].client.is_connected())
        .collect();
    assert_eq!(
        connected,
        [false, false, false, true, true],
        "the newest two stay"
    );
    assert!(
        net.devices[other].client.is_connected(),
        "another identity's stays"
    );
}

#[test]
fn a_stalled_handshake_makes_room_after_750_ms() {
    let pki = Pki::devices(&["pi-01", "stall"]);
    let mut net = Net::new(pki.one_handshake_at_a_time());
    // `stall` passes the cookie exchange (two ClientHellos), then goes silent mid-handshake.
    let s = net.add(pki.device("stall"));
    net.devices[s].budget = Some(2);
    net.post(s, b"x", T);
    assert_eq!(
        net.server.sessions(),
        (0, 1),
        "the stalled handshake holds the only slot"
    );
    // A device that comes now waits: its ClientHello is dropped...
    let a = net.add(pki.device("pi-01"));
    let tag = net.post(a, b"y", T);
    assert!(net.result(a, tag).is_none());
    assert_eq!(net.stat(|s| &s.over_capacity), 1);
    net.advance(Duration::from_millis(500));
    net.resend(a);
    assert_eq!(
        net.stat(|s| &s.over_capacity),
        2,
        "500 ms of silence is not a stall"
    );
    // ...and its retransmission takes the slot once the other has said nothing for 750 ms.
    net.advance(Duration::from_millis(300));
    net.resend(a);
    assert!(net.changed(a, tag), "{:?}", net.result(a, tag));
    assert_eq!(net.stat(|s| &s.parked_handshakes), 1);
    // The stalled one is parked, not forgotten, until its deadline.
    assert_eq!(net.server.sessions(), (1, 1));
    net.advance(Duration::from_secs(10));
    assert_eq!(net.server.sessions(), (1, 0));
    assert_eq!(net.stat(|s| &s.failures[2]), 1, "it timed out");
}

/// A handshake of another host that stalled frees no slot for the device first in line, whose
/// own host is at its limit: the server waits for what can change that (here the stall of its
/// host's own handshake), instead of waking again at once, for ever (a worker's core spent).
#[test]
fn a_stall_that_frees_no_slot_for_the_first_in_line_does_not_wake_the_server_again_and_again() {
    let pki = Pki::devices(&["pi-01", "pi-02", "stall"]);
    let mut cfg = pki.server_config();
    cfg.max_handshakes = 3;
    cfg.max_handshakes_per_address = 1;
    let mut net = Net::new(cfg);
    // From 192.0.2.8: a handshake passes the cookie exchange, and its peer goes silent.
    let mut c = pki.device("stall");
    let hello = first_hello(&net, &mut c);
    let from = SocketAddr::from(([192, 0, 2, 8], 1));
    let with_cookie = with_cookie(&mut net, &mut c, from, &hello);
    net.server.handle(net.now, from, &with_cookie);
    while net.server.poll_transmit().is_some() {}
    assert_eq!(net.server.sessions(), (0, 1));
    net.advance(Duration::from_millis(800));
    // Then pi-01 (10.0.0.1) starts a handshake and goes silent; pi-02, from the same host,
    // waits in the lobby.
    let a = net.add(pki.device("pi-01"));
    net.devices[a].budget = Some(2);
    net.post(a, b"x", T);
    let b = net.add(pki.device("pi-02"));
    let tag = net.post(b, b"y", T);
    assert_eq!(net.server.waiting(), 1);
    assert_eq!(net.server.sessions(), (0, 2));
    net.server.handle_timeout(net.now);
    let next = net.server.poll_timeout(net.now).expect("a timer");
    assert!(
        next > net.now,
        "the stall at 192.0.2.8 was weighed already: nothing to do now"
    );
    // pi-01's own stall, 750 ms on, gives its slot to pi-02.
    net.advance(Duration::from_millis(800));
    assert!(net.changed(b, tag), "{:?}", net.result(b, tag));
    assert_eq!(net.server.waiting(), 0);
}

#[test]
fn a_slow_device_that_gave_up_its_slot_still_gets_in_when_it_answers() {
    let pki = Pki::devices(&["pi-01", "slow"]);
    let mut net = Net::new(pki.one_handshake_at_a_time());
    // `slow` passes the cookie exchange and gets the server's flight; its answer is late (a
    // loaded CPU or link, as in a reconnect storm).
    let s = net.add(pki.device("slow"));
    net.devices[s].budget = Some(2);
    net.devices[s].held = Some(Vec::new());
    let late = net.post(s, b"late", T);
    net.advance(Duration::from_millis(800));
    // A newcomer takes its slot.
    let a = net.add(pki.device("pi-01"));
    let tag = net.post(a, b"y", T);
    net.advance(Duration::from_millis(1100));
    assert!(net.changed(a, tag), "{:?}", net.result(a, tag));
    assert_eq!(net.stat(|s| &s.parked_handshakes), 1);
    // The slow device's answer arrives: its handshake completes, nothing is redone.
    let (cookies, hellos) = (net.stat(|s| &s.cookies_sent), net.stat(|s| &s.no_session));
    net.release(s);
    net.advance(Duration::from_millis(100));
    assert!(net.changed(s, late), "{:?}", net.result(s, late));
    assert_eq!(net.server.sessions(), (2, 0));
    assert_eq!(net.stat(|s| &s.cookies_sent), cookies);
    assert_eq!(net.stat(|s| &s.no_session), hellos);
    assert_eq!(net.stat(|s| &s.evicted_handshakes), 0);
    assert_eq!(net.stat(|s| &s.handshake_failures), 0);
}

#[test]
fn parked_handshakes_are_bounded() {
    let names: Vec<String> = (0..6).map(|i| format!("pi-{i:02}")).collect();
    let stems: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = Pki::devices(&stems);
    let mut net = Net::new(pki.one_handshake_at_a_time());
    // Six devices, each silent after the server's flight: each gives its slot to the next
    // once stalled, and four (per slot) may stay parked.
    for (k, n) in stems.iter().enumerate() {
        let i = net.add(pki.device(n));
        net.devices[i].budget = Some(2);
        net.post(i, b"x", T);
        if k + 1 < stems.len() {
            net.advance(Duration::from_millis(800));
        }
    }
    assert_eq!(net.stat(|s| &s.parked_handshakes), 5);
    assert_eq!(net.stat(|s| &s.evicted_handshakes), 1);
    // One holding the slot, four parked.
    assert_eq!(net.server.sessions(), (0, 5));
}

#[test]
fn idle_sessions_and_slow_handshakes_are_dropped_on_time() {
    let pki = Pki::devices(&["pi-01", "slow"]);
    let mut cfg = pki.server_config();
    cfg.session_idle = Duration::from_secs(60);
    let mut net = Net::new(cfg);
    let a = net.add(pki.device("pi-01"));
    assert!(net.stored(a, b"x"));
    net.advance(Duration::from_secs(59));
    assert_eq!(net.server.sessions(), (1, 0));
    net.advance(Duration::from_secs(2));
    assert_eq!(net.server.sessions(), (0, 0));
    assert_eq!(net.stat(|s| &s.idle_evictions), 1);
    // A handshake that stops moving is dropped at handshake_timeout (10 s).
    let slow = net.add(pki.device("slow"));
    net.devices[slow].budget = Some(2);
    net.post(slow, b"x", T);
    assert_eq!(net.server.sessions(), (0, 1));
    net.advance(Duration::from_millis(9_900));
    assert_eq!(net.server.sessions(), (0, 1));
    net.advance(Duration::from_millis(200));
    assert_eq!(net.server.sessions(), (0, 0));
}

/// RFC 7641 §4.5: an observer of a resource that stays silent gets no notification, so
/// nothing would show it gone, and its session was exempt from the idle timeout: departed
/// observers held their sessions and slots for ever. After a day without a datagram from its
/// client, an observing session is pinged; a client that is there answers and stays.
#[test]
fn a_silent_observer_is_pinged_after_a_day_and_dropped_only_if_gone() {
    let pki = Pki::devices(&["pi-01", "pi-02"]);
    let mut cfg = pki.server_config();
    cfg.session_idle = Duration::from_secs(60);
    let mut net = Net::new(cfg);
    net.observe = true;
    let (here, gone) = (net.add(pki.device("pi-01")), net.add(pki.device("pi-02")));
    let tokens = [net.observe_from(here), net.observe_from(gone)];
    assert_eq!(net.server.observers(), 2);
    // From now on nothing pi-02 sends arrives.
    net.devices[gone].budget = Some(0);
    let day = server::OBSERVE_PROBE_AFTER;
    net.advance(day - Duration::from_secs(1));
    assert_eq!(
        net.server.sessions(),
        (2, 0),
        "observing sessions stay a day"
    );
    let sent = net.devices[here].sent.len();
    // The ping goes at the next idle check (every session_idle, 60 s here).
    net.advance(Duration::from_secs(61));
    assert_eq!(
        net.devices[here].sent.len(),
        sent + 1,
        "pi-01 answered the ping"
    );
    // pi-02's ping goes unanswered: its session goes once the ping's retransmissions had
    // their time (its exchange lifetime, 247 s, longer than session_idle here), with its
    // observation; pi-01's stays.
    let lifetime = CoapConfig::default().exchange_lifetime();
    net.advance(lifetime - Duration::from_secs(62));
    assert_eq!(
        net.server.sessions(),
        (2, 0),
        "a ping has its retransmissions' time"
    );
    net.advance(Duration::from_secs(62 + 61));
    assert_eq!(net.server.sessions(), (1, 0));
    assert_eq!(net.server.observers(), 1);
    let gone_at = net.devices[gone].addr.unwrap();
    assert!(std::iter::from_fn(|| net.server.poll_deregistered()).any(|(p, _)| p == gone_at));
    assert_eq!(net.stat(|s| &s.idle_evictions), 1);
    // A day after pi-01 answered, it is pinged again, and stays.
    net.advance(day);
    assert_eq!(net.server.sessions(), (1, 0));
    assert_eq!(net.server.observers(), 1);
    // With session_idle longer than a day, a silent observer is still pinged daily.
    let mut cfg = pki.server_config();
    cfg.session_idle = Duration::from_secs(7 * 24 * 3600);
    let mut week = Net::new(cfg);
    week.observe = true;
    let w = week.add(pki.device("pi-01"));
    week.observe_from(w);
    let sent = week.devices[w].sent.len();
    week.advance(2 * day);
    assert!(
        week.devices[w].sent.len() > sent,
        "pinged within two days, not a week"
    );
    // An observation that ends (a last 4.04, as when a device's readings are forgotten)
    // leaves a session that is idle as any: it goes session_idle on, not a day on.
    let here_at = net.devices[here].addr.unwrap();
    let last = response(ResponseType::NotFound, "");
    assert!(net.server.notify(net.now, here_at, &tokens[0], last));
    net.settle();
    assert_eq!(net.server.observers(), 0);
    net.advance(Duration::from_secs(121));
    assert_eq!(net.server.sessions(), (0, 0));
}

#[test]
fn datagrams_forged_with_a_devices_address_do_not_keep_its_session_alive() {
    let pki = Pki::devices(&["pi-01"]);
    let mut cfg = pki.server_config();
    cfg.session_idle = Duration::from_secs(60);
    let mut net = Net::new(cfg);
    let a = net.add(pki.device("pi-01"));
    assert!(net.stored(a, b"x"));
    // Someone who sees the device's traffic replays its last record from its address, and
    // sends noise from there, every 20 s: neither authenticates.
    for _ in 0..3 {
        net.advance(Duration::from_secs(20));
        net.resend(a);
        let from = net.devices[a].addr.unwrap();
        net.server.handle(
            net.now,
            from,
            &[23, 254, 253, 0, 1, 0, 0, 0, 0, 0, 9, 0, 3, 1, 2, 3],
        );
        net.settle();
    }
    assert_eq!(net.received.len(), 1, "the replay was not taken");
    // 60 s after the device's own last record, its session is idle.
    net.advance(Duration::from_secs(1));
    assert_eq!(net.server.sessions(), (0, 0));
    assert_eq!(net.stat(|s| &s.idle_evictions), 1);
}

#[test]
fn a_request_keeps_its_sessions_identity_when_an_alert_follows_it_in_one_datagram() {
    let pki = Pki::devices(&["pi-01"]);
    let mut net = Net::new(pki.server_config());
    let a = net.add(pki.device("pi-01"));
    assert!(net.stored(a, b"1"));
    // The device's next records (a POST, then its close_notify) go in one datagram: the
    // session ends on the alert before the application takes the request. (The client
    // closes once its request has given up, before CoAP sent it again.)
    net.devices[a].budget = Some(0);
    net.devices[a].held = Some(Vec::new());
    net.post(a, b"2", Duration::from_millis(500));
    net.advance(Duration::from_secs(1));
    net.devices[a].client.close(net.now);
    net.settle();
    let held = net.devices[a].held.take().unwrap();
    let (post, alert) = (&held[0], held.last().unwrap());
    assert!(held.len() >= 2, "the POST, then the alert");
    let from = net.devices[a].addr.unwrap();
    net.server
        .handle(net.now, from, &[post.as_slice(), alert].concat());
    net.settle();
    assert_eq!(net.server.sessions(), (0, 0), "the alert ended the session");
    assert_eq!(
        net.received,
        vec![
            (Some("pi-01".to_owned()), b"1".to_vec()),
            (Some("pi-01".to_owned()), b"2".to_vec())
        ],
        "the request is the device's, never a peer's without an identity"
    );
}

#[test]
fn a_group_goes_out_nstart_at_a_time_and_stops_at_its_first_refusal() {
    let pki = Pki::devices(&["pi-01"]);
    let mut net = Net::new(pki.server_config());
    net.answer = |body| match body {
        b"bad" => ResponseType::Forbidden,
        _ => ResponseType::Changed,
    };
    let coap = CoapConfig {
        nstart: 2,
        ..CoapConfig::default()
    };
    let a = net.add(pki.client_with("pi-01", coap));
    let bodies: [&[u8]; 5] = [b"1", b"bad", b"3", b"4", b"5"];
    let packets = bodies
        .iter()
        .map(|b| request(RequestType::Post, "r", None, b.to_vec()))
        .collect();
    let tags = net.devices[a].client.request_group(net.now, packets, T);
    net.settle();
    let codes: Vec<String> = tags
        .iter()
        .map(|t| match net.result(a, *t) {
            Some(Ok(p)) => format!("{}", gateway_coap::Code::of(p).unwrap()),
            Some(Err(e)) => format!("{e:?}"),
            None => "pending".into(),
        })
        .collect();
    // Two in flight: 1 and bad; 1's answer lets 3 go; bad's refusal cancels 4 and 5.
    assert_eq!(
        codes,
        ["2.04", "4.03", "2.04", "Cancelled", "Cancelled"],
        "{codes:?}"
    );
    let sent: Vec<&[u8]> = net.received.iter().map(|(_, b)| &b[..]).collect();
    assert_eq!(sent, [b"1" as &[u8], b"bad", b"3"]);
}

/// The client's figures tell the requests sent and not answered from those held back for an
/// NSTART slot: the uplink's `requests_in_flight` and `requests_waiting` gauges.
#[test]
fn requests_held_for_an_nstart_slot_count_as_waiting_not_in_flight() {
    let pki = Pki::devices(&["pi-01"]);
    let mut net = Net::new(pki.server_config());
    let coap = CoapConfig {
        nstart: 2,
        ..CoapConfig::default()
    };
    let a = net.add(pki.client_with("pi-01", coap));
    assert!(net.stored(a, b"0"));
    assert_eq!(net.devices[a].client.figures().in_flight, (0, 0));
    // A server that answers nothing (restarted: it cannot read the session's records).
    net.restart_server(pki.server_config());
    for b in [b"1", b"2", b"3", b"4", b"5"] {
        net.post(a, b, Duration::from_secs(30));
    }
    assert_eq!(net.devices[a].client.figures().in_flight, (2, 3));
}

#[test]
fn a_request_waiting_for_its_slot_goes_on_the_next_session_not_the_stale_one() {
    let pki = Pki::devices(&["pi-01"]);
    let mut net = Net::new(pki.server_config());
    let a = net.add(pki.device("pi-01"));
    assert!(net.stored(a, b"1"));
    net.advance(Duration::from_secs(1));
    net.restart_server(pki.server_config());
    // NSTART 1: the second waits for the first, which the restarted server cannot answer.
    let first = net.post(a, b"2", Duration::from_secs(5));
    let second = net.post(a, b"3", Duration::from_secs(30));
    net.advance(Duration::from_secs(6));
    assert_eq!(
        net.result(a, first),
        Some(&Err(RequestError::Timeout(Duration::from_secs(5))))
    );
    assert!(net.changed(a, second), "{:?}", net.result(a, second));
    assert_eq!(net.received.last().map(|r| &r.1[..]), Some(&b"3"[..]));
}

#[test]
fn a_reconnect_storm_waits_in_the_lobby_instead_of_for_retransmissions() {
    let names: Vec<String> = (0..12).map(|i| format!("pi-{i:02}")).collect();
    let stems: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = Pki::devices(&stems);
    let mut cfg = pki.server_config();
    cfg.max_handshakes = 3;
    cfg.max_handshakes_per_address = 2;
    let mut net = Net::new(cfg);
    // Every device at once, all from one address (a NAT): two handshakes at a time from it.
    let devices: Vec<usize> = stems.iter().map(|n| net.add(pki.device(n))).collect();
    let tags: Vec<u64> = devices
        .iter()
        .map(|&i| {
            let p = request(RequestType::Post, "r", None, b"boot".to_vec());
            net.devices[i].client.request(net.now, p, T)
        })
        .collect();
    let t0 = net.now;
    net.settle();
    assert_eq!(
        net.now, t0,
        "no time passed: nobody waited for a retransmission"
    );
    for (&i, &tag) in devices.iter().zip(&tags) {
        assert!(net.changed(i, tag), "device {i}: {:?}", net.result(i, tag));
    }
    assert_eq!(net.server.sessions(), (12, 0));
    assert_eq!(net.server.waiting(), 0);
    assert_eq!(
        net.stat(|s| &s.from_lobby),
        10,
        "all but the first two waited"
    );
    assert_eq!(net.stat(|s| &s.handshake_failures), 0);
}

/// 25 % of datagrams lost each way on a 60 ms round trip, NSTART 8 as the uplink has it: the
/// retransmission timeout stays near the round trip (a lost first transmission does not
/// inflate it) and doubles on each retry, so the slots keep moving: about 17 requests/s here,
/// against 9.7 with CoCoA's backoff factor of 3 for short timeouts.
#[test]
fn requests_keep_flowing_through_a_lossy_path() {
    let pki = Pki::devices(&["pi-01"]);
    let mut net = Net::new(pki.server_config());
    let coap = CoapConfig {
        nstart: 8,
        ..CoapConfig::default()
    };
    let a = net.add(pki.client_with("pi-01", coap));
    net.latency = Duration::from_millis(30);
    let hello = net.post(a, b"hello", T);
    net.advance(Duration::from_secs(1));
    assert!(net.changed(a, hello));
    net.loss = 0.25;
    let t0 = net.now;
    let mut pending: Vec<u64> = Vec::new();
    let (mut ok, mut failed) = (0u32, 0u32);
    while net.now - t0 < Duration::from_secs(120) {
        while pending.len() < 16 {
            let p = request(RequestType::Post, "r", None, b"x".to_vec());
            pending.push(net.devices[a].client.request(net.now, p, T));
        }
        net.settle();
        net.advance(Duration::from_millis(10));
        pending.retain(|t| match net.result(a, *t) {
            Some(Ok(_)) => {
                ok += 1;
                false
            }
            Some(Err(_)) => {
                failed += 1;
                false
            }
            None => true,
        });
    }
    let rate = f64::from(ok) / 120.0;
    assert!(
        rate > 13.0,
        "{ok} stored, {failed} failed in 120 s: {rate:.2}/s"
    );
    assert!(failed * 50 < ok, "{ok} stored, {failed} failed");
}

#[test]
fn a_forged_datagram_before_the_servers_answer_does_not_set_the_round_trip() {
    let pki = Pki::devices(&["pi-01"]);
    let mut net = Net::new(pki.server_config());
    net.latency = Duration::from_millis(250);
    let a = net.add(pki.device("pi-01"));
    let t = net.post(a, b"x", T);
    // Junk from the server's address 1 ms after the ClientHello, before the real answer
    // (500 ms away): before, its arrival was taken as the round trip, and the timeouts of a
    // slow link's requests started from the 200 ms floor.
    net.now += Duration::from_millis(1);
    let now = net.now;
    net.devices[a].client.handle(now, &[0x45; 20]);
    net.advance(Duration::from_secs(5));
    assert!(net.changed(a, t));
    let rto = net.devices[a].client.figures().rto.expect("an estimate");
    assert!(rto >= Duration::from_millis(500), "{rto:?}");
}

#[test]
fn a_body_that_goes_block_wise_has_its_timeout_per_block() {
    let pki = Pki::devices(&["pi-01"]);
    let mut net = Net::new(pki.server_config());
    net.latency = Duration::from_millis(250);
    let a = net.add(pki.device("pi-01"));
    // 64 blocks of 1 KiB at a 500 ms round trip: 32 s, more than the 10 s given for the
    // request. Before, it failed at 10 s every time and started again from its first block.
    let t = net.post(a, &[7u8; 64 * 1024], Duration::from_secs(10));
    net.advance(Duration::from_secs(60));
    assert!(net.changed(a, t), "{:?}", net.result(a, t));
    assert_eq!(net.received.len(), 1);
    assert_eq!(net.received[0].1.len(), 64 * 1024);
}

/// A datagram that completes a handshake may carry requests and a close_notify after the
/// Finished (a peer may put several records in one datagram): the session is admitted all
/// the same (identity, deny list, caps), its requests carry its identity, and it ends.
/// Before, the session was closed by the time the handshake was looked at, so it was never
/// admitted and its requests came without an identity, past the deny list.
#[test]
fn a_session_that_closes_in_the_datagram_completing_it_is_admitted_first() {
    let pki = Pki::devices(&["pi-01"]);
    let mut net = Net::new(pki.server_config());
    let cctx = pki.client_as(&pki, "pi-01", "");
    // A full handshake, and a close: the session stays resumable.
    let first = SocketAddr::from(([10, 0, 0, 9], 4000));
    let resume = connect_and_close(&mut net, &cctx, first, None);
    assert_eq!(net.server.sessions(), (0, 0));
    // It is resumed; the client's last flight, a request and its close_notify go in one
    // datagram.
    let from = SocketAddr::from(([10, 0, 0, 9], 4001));
    let mut c = Session::client(&cctx, "localhost", 1232, true, Some(&resume), net.now).unwrap();
    assert!(connect_by_hand(&mut net, &mut c, from));
    let mut post = request(RequestType::Post, "r", None, b"second".to_vec());
    post.header.message_id = 7;
    c.send(&post.to_bytes().unwrap()).unwrap();
    c.close();
    let all: Vec<u8> = std::iter::from_fn(|| c.poll_transmit()).flatten().collect();
    net.server.handle(net.now, from, &all);
    net.settle();
    assert_eq!(net.stat(|s| &s.resumed), 1, "a resumed session, admitted");
    assert_eq!(net.stat(|s| &s.sessions), 2);
    assert_eq!(
        net.received
            .iter()
            .map(|(id, body)| (id.as_deref(), body.as_slice()))
            .collect::<Vec<_>>(),
        [(Some("pi-01"), &b"second"[..])]
    );
    assert_eq!(net.server.sessions(), (0, 0), "and it ended");
}

/// Serves one session of `c` by hand with a raw server session on `sctx` until its handshake
/// completes; `late` passes on the clock just before the server's last flight reaches the
/// client, and with `close` the server closes the session as it completes (its close_notify
/// in the datagram of its Finished: a peer may put several records in one datagram).
/// Drives a raw client session `c` from `from` against the server until it is established
/// (true) or goes no further; the datagrams it has then are left in it.
fn connect_by_hand(net: &mut Net, c: &mut Session, from: SocketAddr) -> bool {
    for _ in 0..20 {
        if c.is_established() {
            return true;
        }
        while let Some(d) = c.poll_transmit() {
            net.server.handle(net.now, from, &d);
        }
        while let Some((to, d)) = net.server.poll_transmit() {
            if to == from {
                c.handle_datagram(net.now, &d);
            }
        }
    }
    false
}

/// A raw client session of `cctx` from `from`, resuming `resume` if given: set up, then
/// closed with a close_notify. The session, to resume.
fn connect_and_close(
    net: &mut Net,
    cctx: &openssl::ssl::SslContext,
    from: SocketAddr,
    resume: Option<&openssl::ssl::SslSession>,
) -> openssl::ssl::SslSession {
    let mut c = Session::client(cctx, "localhost", 1232, true, resume, net.now).unwrap();
    assert!(connect_by_hand(net, &mut c, from), "{:?}", c.state());
    let session = c.ssl_session().expect("a session to resume");
    c.close();
    while let Some(d) = c.poll_transmit() {
        net.server.handle(net.now, from, &d);
    }
    net.settle();
    session
}

/// The server's session cache keeps as many sessions as the server may hold established (64
/// at least), not OpenSSL's 20,480 whatever the caps: a device making full handshake after
/// full handshake adds one each time, with its certificates, kept two hours after the
/// session ended.
#[test]
fn the_session_cache_keeps_as_many_sessions_as_the_server_holds() {
    let pki = Pki::devices(&["pi-01"]);
    let mut cfg = pki.server_config();
    cfg.max_sessions = 2;
    let mut net = Net::new(cfg);
    let cctx = pki.client_as(&pki, "pi-01", "");
    let from = |n: u16| SocketAddr::from(([10, 0, 0, 9], 4000 + n));
    let sessions: Vec<_> = (0..65)
        .map(|n| connect_and_close(&mut net, &cctx, from(n), None))
        .collect();
    assert_eq!(net.stat(|s| &s.sessions), 65);
    // The latest is resumed; the first was pushed out by the 64 after it.
    connect_and_close(&mut net, &cctx, from(100), Some(&sessions[64]));
    assert_eq!(net.stat(|s| &s.resumed), 1);
    connect_and_close(&mut net, &cctx, from(101), Some(&sessions[0]));
    assert_eq!(
        net.stat(|s| &s.resumed),
        1,
        "a session pushed out was resumed"
    );
    assert_eq!(net.stat(|s| &s.sessions), 67);
}

/// A session refused at its resumption because the client certificate it was made with has
/// expired leaves the server's session cache: offered again, it gets a full handshake, which
/// the expired certificate fails, not another resumption refused. (The certificate's end is
/// on the real clock, two whole seconds on: the session is made more than a second before
/// it, and the test waits for it, two seconds at most.)
#[test]
fn a_session_refused_for_its_expired_certificate_is_not_resumed_again() {
    let pki = Pki::devices(&["pi-01"]);
    let (ca, ca_key) = gateway_pki::read_pair(&pki.path("ca.pem"), &pki.path("ca.key")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let key = gateway_pki::new_key().unwrap();
    let kind = gateway_pki::Kind::Device;
    let cert =
        gateway_pki::issue_between("pi-01", &key, kind, Some((&ca, &ca_key)), now - 60, now + 2)
            .unwrap();
    gateway_pki::write_cert(&pki.path("pi-01.pem"), &cert).unwrap();
    gateway_pki::write_key(&pki.path("pi-01.key"), &key).unwrap();
    let mut net = Net::new(pki.server_config());
    let cctx = pki.client_as(&pki, "pi-01", "");
    let from = |n: u16| SocketAddr::from(([10, 0, 0, 9], 4000 + n));
    let session = connect_and_close(&mut net, &cctx, from(0), None);
    let expiry = std::time::UNIX_EPOCH + Duration::from_secs(now as u64 + 2);
    if let Ok(left) = expiry.duration_since(std::time::SystemTime::now()) {
        std::thread::sleep(left + Duration::from_millis(50));
    }
    for n in 1..=2 {
        let mut c =
            Session::client(&cctx, "localhost", 1232, true, Some(&session), net.now).unwrap();
        connect_by_hand(&mut net, &mut c, from(n));
        // Its last flight, which completes a resumption at the server.
        while let Some(d) = c.poll_transmit() {
            net.server.handle(net.now, from(n), &d);
        }
        net.settle();
    }
    assert_eq!(net.server.sessions(), (0, 0));
    assert_eq!(
        net.stat(|s| &s.expired_resumptions),
        1,
        "the session was resumed again"
    );
    assert_eq!(net.stat(|s| &s.handshake_failures), 1, "the full handshake");
    assert_eq!(net.stat(|s| &s.sessions), 1);
}

fn serve_by_hand(
    c: &mut Client,
    sctx: &openssl::ssl::SslContext,
    now: &mut Instant,
    late: Duration,
    close: bool,
) -> Session {
    let mut jar = gateway_dtls::CookieJar::new(*now, Duration::from_secs(60));
    let peer = SocketAddr::from(([10, 0, 0, 1], 40_001));
    let mut s: Option<Session> = None;
    for _ in 0..20 {
        let mut up = Vec::new();
        while let Some(t) = c.poll_transmit() {
            if let Transmit::Datagram(d) = t {
                up.push(d);
            }
        }
        for d in up {
            match (&mut s, parse_client_hello(&d)) {
                (None, Some(ch)) if jar.check(*now, peer, &ch, &[]) => {
                    s = Some(Session::server(sctx, &d, &ch.cookie, 1232, *now).unwrap());
                }
                (None, Some(ch)) => {
                    let cookie = jar.make(*now, peer, &ch, &[]);
                    c.handle(*now, &gateway_dtls::hello_verify_request(&ch, &cookie));
                }
                (None, None) => {}
                (Some(s), _) => {
                    s.handle_datagram(*now, &d);
                }
            }
        }
        let Some(s) = s.as_mut() else { continue };
        let completes = s.is_established();
        if completes && close {
            s.close();
        }
        let down: Vec<u8> = std::iter::from_fn(|| s.poll_transmit()).flatten().collect();
        if !down.is_empty() {
            if completes {
                *now += late;
            }
            c.handle(*now, &down);
        }
        if completes {
            break;
        }
    }
    s.expect("a server session")
}

/// Queues on `c` a POST of "a" whose clock runs out after 1 s and one of "b" with the usual
/// timeout; their tags.
fn late_and_next(c: &mut Client, now: Instant) -> (u64, u64) {
    let post = |body: &[u8]| request(RequestType::Post, "r", None, body.to_vec());
    let a = c.request(now, post(b"a"), Duration::from_secs(1));
    (a, c.request(now, post(b"b"), T))
}

/// The results of the requests `c` finished since last asked, by tag.
fn finished(c: &mut Client) -> HashMap<u64, Result<Packet, RequestError>> {
    let mut done = HashMap::new();
    while let Some(Event::Done { tag, result }) = c.poll_event() {
        done.insert(tag, result);
    }
    done
}

/// A server that puts its close_notify in the datagram of its Finished (a peer may put
/// several records in one datagram): the client's handshake is counted, and the session, which
/// ended cleanly, is offered again at the next connect. Before, the client asked whether the
/// session had just become *established*, which it no longer was: the handshake went
/// uncounted and the session was thrown away, as after a failed one.
#[test]
fn a_session_the_server_closes_as_it_completes_is_counted_and_resumed() {
    let pki = Pki::devices(&["pi-01"]);
    let sctx = pki.server();
    let mut c = pki.device("pi-01");
    let mut now = Instant::now();
    c.request(now, request(RequestType::Post, "r", None, vec![]), T);
    let s = serve_by_hand(&mut c, &sctx, &mut now, Duration::ZERO, true);
    assert!(s.handshake_completed() && !s.resumed());
    let f = c.figures();
    assert!(!f.connected, "the session ended");
    assert_eq!(
        (f.handshakes, f.resumed),
        (1, 0),
        "the handshake is counted"
    );
    assert!(f.session.is_some_and(|s| !s.resumed));
    while c.poll_event().is_some() {}
    // The request waiting for that session failed with it; the next one offers the session.
    c.request(now, request(RequestType::Post, "r", None, vec![]), T);
    let s = serve_by_hand(&mut c, &sctx, &mut now, Duration::ZERO, true);
    assert!(
        s.resumed(),
        "the session that ended cleanly is offered again"
    );
    assert_eq!(c.figures().resumed, 1);
}

/// A request whose clock ran out while the handshake went on, as the server's Finished came in
/// (before the client's timer ran): it times out unsent, the next request goes, and the
/// session that just came up is not taken for a stale one. Before, the late request was handed
/// to CoAP and sent after its caller was told it had failed, and nothing had been "heard" on
/// the new session, so the late request looked unanswered and the session was dropped at once.
#[test]
fn a_session_that_comes_up_after_a_requests_deadline_is_kept() {
    let pki = Pki::devices(&["pi-01"]);
    let sctx = pki.server();
    let mut c = pki.device("pi-01");
    let mut now = Instant::now();
    let (a, _) = late_and_next(&mut c, now);
    let mut s = serve_by_hand(&mut c, &sctx, &mut now, Duration::from_secs(2), false);
    let f = c.figures();
    assert_eq!(f.stale, 0, "not dropped as stale");
    assert!(f.connected);
    // What reaches the server: `b` only.
    let mut bodies = Vec::new();
    while let Some(t) = c.poll_transmit() {
        if let Transmit::Datagram(d) = t {
            for m in s.handle_datagram(now, &d) {
                bodies.push(Packet::from_bytes(&m).unwrap().payload);
            }
        }
    }
    assert_eq!(bodies, [b"b".to_vec()]);
    assert_eq!(c.figures().in_flight, (1, 0), "`b` in flight");
    let done = finished(&mut c);
    assert!(
        matches!(done.get(&a), Some(Err(RequestError::Timeout(_)))),
        "{done:?}"
    );
}

/// A session that ends (here a close_notify) in the input in which a request is found late
/// and unanswered ends as any ended session does: not counted as stale, its requests failing
/// with the session's end. Before, the stale rule dropped it first, so the end was never
/// handled: a session a fatal alert broke would have been offered again.
#[test]
fn a_session_that_ends_as_a_request_is_found_late_ends_as_ended() {
    let pki = Pki::devices(&["pi-01"]);
    let sctx = pki.server();
    let mut c = pki.device("pi-01");
    let mut now = Instant::now();
    let (a, b) = late_and_next(&mut c, now);
    let mut s = serve_by_hand(&mut c, &sctx, &mut now, Duration::ZERO, false);
    assert!(c.figures().connected);
    // `a` reaches the server, which does not answer; `b` waits for its NSTART slot.
    while let Some(t) = c.poll_transmit() {
        if let Transmit::Datagram(d) = t {
            s.handle_datagram(now, &d);
        }
    }
    now += Duration::from_secs(2);
    s.close();
    let bye: Vec<u8> = std::iter::from_fn(|| s.poll_transmit()).flatten().collect();
    c.handle(now, &bye);
    let f = c.figures();
    assert!(!f.connected);
    assert_eq!(f.stale, 0, "it ended, it was not dropped");
    let done = finished(&mut c);
    assert!(done.get(&a).is_some_and(|r| r.is_err()), "{done:?}");
    assert!(
        matches!(done.get(&b), Some(Err(RequestError::Dtls(_)))),
        "{done:?}"
    );
}
