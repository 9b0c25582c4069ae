//! Observe registrations answered through a worker's [`Responder::register`]: the handler hears
//! of every registration that ends, including one whose request was gone (its session ended)
//! by the time the answer came, so that an application's own registry never keeps a client
//! the server does not know.

mod common;
use common::*;
use gateway_coap::{
    coap_lite::{CoapOption, RequestType, ResponseType},
    encode_uint, request, response, Token,
};
use gateway_coaps_tokio::{Bound, Client, Handler, Incoming, ServerStats};
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// What the handler saw, in order: requests (their token and whether they register) and
/// observations that ended.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Request(Vec<u8>, bool),
    Ended(Vec<u8>),
}

/// Hands each request to the test, and keeps what the worker says was deregistered, and both
/// in the order the handler saw them.
struct Registry {
    requests: mpsc::Sender<Incoming>,
    gone: Arc<Mutex<Vec<(SocketAddr, Token)>>>,
    log: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Registry {
    /// A registry handing requests to `requests`, nothing seen yet.
    fn new(requests: mpsc::Sender<Incoming>) -> Registry {
        Registry {
            requests,
            gone: Arc::default(),
            log: Arc::default(),
            stop: Arc::default(),
        }
    }
}

impl Handler for Registry {
    fn request(&mut self, inc: Incoming) {
        let registers = gateway_coap::observe_of(&inc.packet) == Some(0);
        self.log
            .lock()
            .unwrap()
            .push(Seen::Request(inc.packet.get_token().to_vec(), registers));
        let _ = self.requests.send(inc);
    }
    fn tick(&mut self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }
    fn deregistered(&mut self, peer: SocketAddr, token: Token) {
        self.log.lock().unwrap().push(Seen::Ended(token.clone()));
        self.gone.lock().unwrap().push((peer, token));
    }
}

fn observe_get() -> gateway_coap::coap_lite::Packet {
    let mut p = request(RequestType::Get, "gpsflowtemp/pi-01", None, Vec::new());
    p.add_option(CoapOption::Observe, encode_uint(0));
    p
}

fn registering_answer() -> gateway_coap::coap_lite::Packet {
    let mut p = response(ResponseType::Content, "21.5");
    p.add_option(CoapOption::Observe, encode_uint(0));
    p
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn no_session(stats: &ServerStats) -> bool {
    stats.established_now.load(Ordering::Relaxed) == 0
}

#[test]
fn a_registration_whose_session_ended_before_its_answer_is_handed_back() {
    let pki = Pki::new();
    let b = Bound::new(server_opts(&pki, "server")).unwrap();
    let (addr, stats, responder) = (b.local_addr, b.stats.clone(), b.responder.clone());
    let (tx, requests) = mpsc::channel();
    let registry = Registry::new(tx);
    let (gone, stop) = (registry.gone.clone(), registry.stop.clone());
    let worker = std::thread::spawn(move || b.run(Duration::from_millis(20), registry));
    let is_gone = |peer: SocketAddr| gone.lock().unwrap().iter().any(|(p, _)| *p == peer);

    // Registered while its session lives: answered with Observe, and deregistered only when
    // the session ends.
    let client = Client::start(client_opts(addr, &pki.path("ca.pem"), "localhost")).unwrap();
    let asked = client.send(observe_get(), Duration::from_secs(5));
    let inc = requests.recv_timeout(Duration::from_secs(5)).unwrap();
    let token = inc.packet.get_token().to_vec();
    responder.register(inc.id, inc.peer, token, registering_answer());
    let answer = asked.wait().expect("the answer");
    assert!(answer.get_first_option(CoapOption::Observe).is_some());
    std::thread::sleep(Duration::from_millis(200));
    assert!(!is_gone(inc.peer), "a live registration was handed back");
    drop(client);
    wait_for("the session's end did not deregister", || is_gone(inc.peer));

    // Its session ended (close_notify) while the answer was being made: nothing registers,
    // and the handler hears of it. Before, the application kept the registration for good.
    let client = Client::start(client_opts(addr, &pki.path("ca.pem"), "localhost")).unwrap();
    let asked = client.send(observe_get(), Duration::from_millis(300));
    let inc = requests.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(asked.wait().is_err(), "nothing answered it yet");
    drop(client);
    wait_for("the session did not end", || no_session(&stats));
    assert!(!is_gone(inc.peer));
    let token = inc.packet.get_token().to_vec();
    responder.register(inc.id, inc.peer, token.clone(), registering_answer());
    wait_for("a registration without its request was kept", || {
        gone.lock().unwrap().contains(&(inc.peer, token.clone()))
    });

    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
}

/// A server that notifies faster than the observer takes the notices (one busy fetching a
/// block-wise notification, say) cannot fill the observer's memory: the latest
/// MAX_WAITING_NOTICES wait, the oldest go (only the latest state counts, RFC 7641 §1.1).
/// Before, every notification was queued without bound.
#[test]
fn an_observer_that_falls_behind_keeps_only_the_latest_notices() {
    use gateway_coaps_tokio::{Notice, MAX_WAITING_NOTICES};
    let pki = Pki::new();
    let b = Bound::new(server_opts(&pki, "server")).unwrap();
    let (addr, responder) = (b.local_addr, b.responder.clone());
    let (tx, requests) = mpsc::channel();
    let registry = Registry::new(tx);
    let stop = registry.stop.clone();
    let worker = std::thread::spawn(move || b.run(Duration::from_millis(20), registry));
    let client = Client::start(client_opts(addr, &pki.path("ca.pem"), "localhost")).unwrap();
    let registering = std::thread::spawn({
        let responder = responder.clone();
        move || {
            let inc = requests.recv_timeout(Duration::from_secs(5)).unwrap();
            let token = inc.packet.get_token().to_vec();
            responder.register(inc.id, inc.peer, token.clone(), registering_answer());
            (inc.peer, token)
        }
    });
    let (answer, observation) = client
        .observe(observe_get(), Duration::from_secs(5))
        .unwrap();
    assert!(answer.get_first_option(CoapOption::Observe).is_some());
    let observation = observation.expect("registered");
    let (peer, token) = registering.join().unwrap();
    const SENT: usize = 1000;
    for i in 1..=SENT {
        let mut p = response(ResponseType::Content, &i.to_string());
        p.add_option(CoapOption::Observe, encode_uint(i as u32));
        responder.notify(peer, token.clone(), p);
    }
    // The client's thread takes all of them while nobody reads.
    std::thread::sleep(Duration::from_secs(3));
    let mut taken = Vec::new();
    while let Some(Notice::Notification(p)) = observation.next(Duration::from_millis(300)) {
        taken.push(String::from_utf8(p.payload).unwrap());
    }
    assert!(
        !taken.is_empty() && taken.len() <= MAX_WAITING_NOTICES,
        "{} notices waited",
        taken.len()
    );
    assert_eq!(taken.last().map(String::as_str), Some("1000"), "{taken:?}");
    drop(observation);
    drop(client);
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
}

/// A client that ends its observation and registers again on the same token in one datagram
/// (a GET without Observe, then a GET with `Observe: 0`, as RFC 7641 lets it) is told of the
/// end before it is asked to register again, so an application's registry keeps the new
/// registration. Before, the requests went first and the old registration's end after: the
/// application dropped the client the endpoint still had registered, and it never got a
/// notification again.
#[test]
fn an_observation_ended_and_made_again_in_one_datagram_stays_made() {
    let pki = Pki::new();
    let b = Bound::new(server_opts(&pki, "server")).unwrap();
    let (addr, responder) = (b.local_addr, b.responder.clone());
    let (tx, requests) = mpsc::channel();
    let registry = Registry::new(tx);
    let (log, stop) = (registry.log.clone(), registry.stop.clone());
    let worker = std::thread::spawn(move || b.run(Duration::from_millis(20), registry));
    // The test answers what comes: registrations with Observe, the rest with 2.05.
    let answering = std::thread::spawn(move || {
        while let Ok(inc) = requests.recv_timeout(Duration::from_secs(5)) {
            if gateway_coap::observe_of(&inc.packet) == Some(0) {
                let token = inc.packet.get_token().to_vec();
                responder.register(inc.id, inc.peer, token, registering_answer());
            } else {
                responder.respond(inc.id, response(ResponseType::Content, "21.5"));
            }
        }
    });

    // A raw DTLS client on a UDP socket of its own, so that it can put two records in one
    // datagram.
    let ctx = gateway_dtls::client_context(&gateway_dtls::ClientSettings {
        ca_file: Some(pki.path("ca.pem")),
        mtu: 1232,
        ..Default::default()
    })
    .unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.connect(addr).unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut s =
        gateway_dtls::Session::client(&ctx, "localhost", 1232, true, None, Instant::now()).unwrap();
    let mut buf = vec![0u8; 4096];
    // Sends what the session queued (in one datagram with `together`) and returns the CoAP
    // messages that came back within `wait`.
    let mut exchange = |s: &mut gateway_dtls::Session, together: bool, wait: Duration| {
        let out: Vec<Vec<u8>> = std::iter::from_fn(|| s.poll_transmit()).collect();
        if together {
            udp.send(&out.concat()).unwrap();
        } else {
            for d in out {
                udp.send(&d).unwrap();
            }
        }
        let mut got = Vec::new();
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if let Ok(n) = udp.recv(&mut buf) {
                got.extend(s.handle_datagram(Instant::now(), &buf[..n]));
                let back: Vec<Vec<u8>> = std::iter::from_fn(|| s.poll_transmit()).collect();
                for d in back {
                    udp.send(&d).unwrap();
                }
            }
        }
        got
    };
    for _ in 0..20 {
        if s.is_established() {
            break;
        }
        exchange(&mut s, false, Duration::from_millis(100));
    }
    assert!(s.is_established(), "{:?}", s.state());
    let token = vec![7u8, 7, 7, 7];
    let get = |mid: u16, observe: Option<u32>| {
        let mut p = request(RequestType::Get, "gpsflowtemp/pi-01", None, Vec::new());
        p.header.message_id = mid;
        p.set_token(token.clone());
        if let Some(o) = observe {
            p.add_option(CoapOption::Observe, encode_uint(o));
        }
        p.to_bytes().unwrap()
    };
    s.send(&get(1, Some(0))).unwrap();
    let got = exchange(&mut s, false, Duration::from_millis(500));
    assert_eq!(got.len(), 1, "the registration's answer");
    // The end and the new registration, in one datagram.
    s.send(&get(2, None)).unwrap();
    s.send(&get(3, Some(0))).unwrap();
    let got = exchange(&mut s, true, Duration::from_millis(500));
    assert_eq!(got.len(), 2, "both answered");
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log,
        [
            Seen::Request(token.clone(), true),
            Seen::Ended(token.clone()),
            Seen::Request(token.clone(), false),
            Seen::Request(token.clone(), true),
        ]
    );
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    answering.join().unwrap();
}
