//! Two sans-IO endpoints against each other in memory, with a simulated clock and a network
//! that loses, duplicates and reorders datagrams. Deterministic; nothing sleeps.

use gateway_coap::coap_lite::{
    CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType,
};
use gateway_coap::{
    request, response, Block, ClientError, Config, ContentFormat, Endpoint, Event, RequestId,
    Token, DEDUP_KEPT_PER_PEER,
};
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

const CLIENT: u8 = 1;
const SERVER: u8 = 2;

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

/// How the server application answers.
#[derive(Clone, Copy)]
enum App {
    /// At once, 2.04 with the request's payload length as text.
    Now,
    /// After this long.
    After(Duration),
}

struct Net {
    client: Endpoint<u8>,
    server: Endpoint<u8>,
    now: Instant,
    /// (deliver at, to, from, bytes)
    wire: Vec<(Instant, u8, u8, Vec<u8>)>,
    rand: Box<dyn FnMut() -> u64>,
    loss: f64,
    dup: f64,
    /// Extra random delay up to this, which reorders.
    jitter: Duration,
    /// Every datagram's delay, each way.
    latency: Duration,
    app: App,
    /// Requests the server application saw: payloads.
    seen: Vec<Vec<u8>>,
    /// Server requests to answer at a time.
    to_answer: Vec<(Instant, gateway_coap::RequestId, usize)>,
    /// Client outcomes by token.
    outcomes: HashMap<Vec<u8>, Result<Packet, ClientError>>,
    /// Every datagram put on the wire: (time, from, bytes).
    log: Vec<(Duration, u8, Vec<u8>)>,
    start: Instant,
    drop_first: usize,
}

impl Net {
    fn new(config: Config, seed: u64) -> Net {
        let now = Instant::now();
        Net {
            client: Endpoint::new(config.clone(), Box::new(rng(seed))),
            server: Endpoint::new(config, Box::new(rng(seed.wrapping_mul(31)))),
            now,
            wire: Vec::new(),
            rand: Box::new(rng(seed ^ 0xabcdef)),
            loss: 0.0,
            dup: 0.0,
            jitter: Duration::from_millis(1),
            latency: Duration::ZERO,
            app: App::Now,
            seen: Vec::new(),
            to_answer: Vec::new(),
            outcomes: HashMap::new(),
            log: Vec::new(),
            start: now,
            drop_first: 0,
        }
    }

    fn chance(&mut self) -> f64 {
        (self.rand)() as f64 / u64::MAX as f64
    }

    fn drain(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.server.poll_event() {
                progressed = true;
                if let Event::Request { id, packet, .. } = ev {
                    self.seen.push(packet.payload.clone());
                    let at = match self.app {
                        App::Now => self.now,
                        App::After(d) => self.now + d,
                    };
                    self.to_answer.push((at, id, packet.payload.len()));
                }
            }
            let due: Vec<_> = self
                .to_answer
                .iter()
                .filter(|(t, _, _)| *t <= self.now)
                .cloned()
                .collect();
            self.to_answer.retain(|(t, _, _)| *t > self.now);
            for (_, id, len) in due {
                progressed = true;
                self.server.respond(
                    self.now,
                    id,
                    response(ResponseType::Changed, &len.to_string()),
                );
            }
            while let Some(ev) = self.client.poll_event() {
                progressed = true;
                if let Event::Response { token, result, .. } = ev {
                    assert!(
                        self.outcomes.insert(token, result).is_none(),
                        "one outcome per exchange"
                    );
                }
            }
            for from in [CLIENT, SERVER] {
                loop {
                    let t = if from == CLIENT {
                        self.client.poll_transmit()
                    } else {
                        self.server.poll_transmit()
                    };
                    let Some((to, bytes)) = t else { break };
                    progressed = true;
                    self.log.push((self.now - self.start, from, bytes.clone()));
                    if self.drop_first > 0 {
                        self.drop_first -= 1;
                        continue;
                    }
                    if self.chance() < self.loss {
                        continue;
                    }
                    let copies = if self.chance() < self.dup { 2 } else { 1 };
                    for _ in 0..copies {
                        let delay = self.latency + self.jitter.mul_f64(self.chance());
                        self.wire.push((self.now + delay, to, from, bytes.clone()));
                    }
                }
            }
            if !progressed {
                break;
            }
        }
    }

    /// Advances the simulated clock to the next thing that happens, and handles it.
    fn step(&mut self) -> bool {
        self.drain();
        let next_wire = self.wire.iter().map(|w| w.0).min();
        let next_answer = self.to_answer.iter().map(|a| a.0).min();
        let next = [
            next_wire,
            next_answer,
            self.client.poll_timeout(),
            self.server.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(t) = next else { return false };
        if t - self.start > Duration::from_secs(3600) {
            return false;
        }
        self.now = self.now.max(t);
        let now = self.now;
        let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.wire)
            .into_iter()
            .partition(|w| w.0 <= now);
        self.wire = rest;
        for (_, to, from, bytes) in ready {
            if to == SERVER {
                self.server.handle_datagram(now, from, &bytes);
            } else {
                self.client.handle_datagram(now, from, &bytes);
            }
        }
        self.client.handle_timeout(now);
        self.server.handle_timeout(now);
        true
    }

    fn run_until(&mut self, done: impl Fn(&Net) -> bool) {
        while !done(self) && self.step() {}
        self.drain();
    }

    fn post(&mut self, payload: Vec<u8>) -> Vec<u8> {
        let req = request(
            RequestType::Post,
            "gpsflowtemp",
            Some(ContentFormat::SENML_CBOR),
            payload,
        );
        let now = self.now;
        self.client.request(now, SERVER, req, true)
    }
}

fn code(p: &Packet) -> ResponseType {
    match p.header.code {
        MessageClass::Response(r) => r,
        other => panic!("not a response: {other:?}"),
    }
}

/// The final codes of the exchanges of `tokens`.
fn codes(net: &Net, tokens: &[Vec<u8>]) -> Vec<ResponseType> {
    tokens
        .iter()
        .map(|t| code(net.outcomes[t].as_ref().unwrap()))
        .collect()
}

fn client_sends(net: &Net) -> Vec<Duration> {
    net.log
        .iter()
        .filter(|(_, from, _)| *from == CLIENT)
        .map(|(t, _, _)| *t)
        .collect()
}

#[test]
fn retransmits_con_until_acked() {
    let mut net = Net::new(Config::default(), 7);
    net.drop_first = 2; // the request and its first retransmission are lost
    let token = net.post(b"hello".to_vec());
    net.run_until(|n| !n.outcomes.is_empty());
    let r = net.outcomes[&token].as_ref().unwrap();
    assert_eq!(code(r), ResponseType::Changed);
    let sends = client_sends(&net);
    assert_eq!(sends.len(), 3, "{sends:?}");
    let first = sends[1] - sends[0];
    assert!(
        first >= Duration::from_secs(2) && first <= Duration::from_secs(3),
        "initial timeout {first:?}"
    );
    let second = sends[2] - sends[1];
    assert_eq!(second, first * 2, "the timeout doubles");
    assert_eq!(net.seen.len(), 1);
    assert_eq!(net.client.stats().retransmissions, 2);
}

#[test]
fn gives_up_after_max_retransmit() {
    let mut net = Net::new(Config::default(), 11);
    net.loss = 1.0;
    let token = net.post(b"x".to_vec());
    net.run_until(|n| !n.outcomes.is_empty());
    assert_eq!(net.outcomes[&token], Err(ClientError::Timeout));
    let sends = client_sends(&net);
    assert_eq!(
        sends.len(),
        5,
        "the request and MAX_RETRANSMIT = 4 retransmissions"
    );
    let span = net.now - net.start;
    // 31 initial timeouts in all: 62 s to 93 s.
    assert!(
        span >= Duration::from_secs(62) && span <= Duration::from_secs(93),
        "{span:?}"
    );
}

#[test]
fn a_duplicated_request_is_processed_once_and_answered_from_the_cache() {
    let mut net = Net::new(Config::default(), 3);
    net.dup = 1.0; // every datagram arrives twice
    let token = net.post(b"once".to_vec());
    net.run_until(|n| !n.outcomes.is_empty() && n.wire.is_empty());
    assert!(net.outcomes[&token].is_ok());
    assert_eq!(net.seen.len(), 1, "the application saw the request once");
    assert_eq!(net.server.stats().duplicates, 1);
    let server_msgs: Vec<_> = net
        .log
        .iter()
        .filter(|(_, f, _)| *f == SERVER)
        .map(|(_, _, b)| b.clone())
        .collect();
    assert_eq!(server_msgs.len(), 2);
    assert_eq!(
        server_msgs[0], server_msgs[1],
        "the duplicate gets the same response"
    );
}

#[test]
fn a_slow_answer_goes_as_a_separate_response() {
    let mut net = Net::new(Config::default(), 5);
    net.app = App::After(Duration::from_secs(5));
    let token = net.post(b"slow".to_vec());
    net.run_until(|n| !n.outcomes.is_empty());
    let r = net.outcomes[&token].as_ref().unwrap();
    assert_eq!(code(r), ResponseType::Changed);
    assert_eq!(
        r.header.get_type(),
        MessageType::Confirmable,
        "a separate response is CON"
    );
    // Server: empty ACK at separate_after (1 s), then the CON response at 5 s.
    let from_server: Vec<_> = net.log.iter().filter(|(_, f, _)| *f == SERVER).collect();
    let first = Packet::from_bytes(&from_server[0].2).unwrap();
    assert_eq!(
        (first.header.get_type(), first.header.code),
        (MessageType::Acknowledgement, MessageClass::Empty)
    );
    let at = from_server[0].0;
    assert!(
        at >= Duration::from_secs(1) && at < Duration::from_millis(1010),
        "{at:?}"
    );
    // The client sent its request once (the empty ACK stopped retransmission) and ACKed the response.
    let from_client: Vec<_> = net.log.iter().filter(|(_, f, _)| *f == CLIENT).collect();
    assert_eq!(
        from_client.len(),
        2,
        "request + ACK of the separate response"
    );
    assert_eq!(net.client.stats().retransmissions, 0);
    net.run_until(|n| {
        n.server.in_flight() == (0, 0)
            && n.server
                .poll_timeout()
                .is_none_or(|t| t > n.now + Duration::from_secs(10))
    });
    assert_eq!(
        net.server.stats().retransmissions,
        0,
        "the ACK stopped the response's retransmission"
    );
}

#[test]
fn the_exchange_lifetime_is_rfc_7252s_and_bounded_whatever_the_settings() {
    assert_eq!(
        Config::default().exchange_lifetime(),
        Duration::from_secs(247)
    );
    // 2^64 retransmission waits overflowed a shift and then a Duration, at the first separate
    // response (a panic in the client's thread).
    for max_retransmit in [20, 63, 64, 200, u32::MAX] {
        let config = Config {
            max_retransmit,
            ..Config::default()
        };
        assert!(config.exchange_lifetime() <= Duration::from_secs(86_400));
        let mut net = Net::new(config, 5);
        net.app = App::After(Duration::from_secs(5));
        let token = net.post(b"slow".to_vec());
        net.run_until(|n| !n.outcomes.is_empty());
        assert!(
            net.outcomes[&token].is_ok(),
            "max_retransmit {max_retransmit}"
        );
    }
}

#[test]
fn a_large_body_goes_block_wise_and_is_reassembled() {
    let mut net = Net::new(Config::default(), 9);
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let token = net.post(body.clone());
    net.run_until(|n| !n.outcomes.is_empty());
    let r = net.outcomes[&token].as_ref().unwrap();
    assert_eq!(code(r), ResponseType::Changed);
    assert_eq!(r.payload, b"5000");
    assert_eq!(net.seen, [body], "the application saw one whole request");
    let blocks = client_sends(&net).len();
    assert_eq!(blocks, 5, "4 blocks of 1024 and one of 904");
    let last = Packet::from_bytes(
        &net.log
            .iter()
            .rev()
            .find(|(_, f, _)| *f == SERVER)
            .unwrap()
            .2,
    )
    .unwrap();
    let b = Block::decode(last.get_first_option(CoapOption::Block1).unwrap()).unwrap();
    assert_eq!(
        (b.num, b.more),
        (4, false),
        "the final response echoes the last block"
    );
}

#[test]
fn a_body_over_the_limit_gets_4_13_with_size1() {
    let config = Config {
        max_body: 3000,
        ..Config::default()
    };
    let mut net = Net::new(config, 13);
    let token = net.post(vec![0u8; 5000]);
    net.run_until(|n| !n.outcomes.is_empty());
    let r = net.outcomes[&token].as_ref().unwrap();
    assert_eq!(code(r), ResponseType::RequestEntityTooLarge);
    assert_eq!(
        r.get_first_option(CoapOption::Size1).map(|v| v.to_vec()),
        Some(vec![0x0b, 0xb8])
    );
    assert!(net.seen.is_empty());
}

#[test]
fn every_request_is_delivered_exactly_once_under_loss_duplication_and_reordering() {
    // All 200 go at once, ten of them block-wise: allow that many transfers from one peer.
    let config = Config {
        max_reassemblies_per_peer: 16,
        ..Config::default()
    };
    let mut net = Net::new(config, 42);
    net.loss = 0.1;
    net.dup = 0.05;
    net.jitter = Duration::from_millis(300);
    let mut tokens = Vec::new();
    for i in 0..200u32 {
        let mut body = i.to_be_bytes().to_vec();
        if i % 20 == 0 {
            body.resize(3000, 7); // some go block-wise
        }
        tokens.push((net.post(body), i));
    }
    net.run_until(|n| n.outcomes.len() == 200);
    for (token, i) in &tokens {
        let r = net.outcomes[token]
            .as_ref()
            .unwrap_or_else(|e| panic!("request {i}: {e:?}"));
        assert_eq!(code(r), ResponseType::Changed);
    }
    let mut seen: Vec<u32> = net
        .seen
        .iter()
        .map(|p| u32::from_be_bytes(p[..4].try_into().unwrap()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        (0..200).collect::<Vec<_>>(),
        "each request reached the application exactly once"
    );
    assert!(net.client.stats().retransmissions > 0 && net.server.stats().duplicates > 0);
}

#[test]
fn ping_malformed_and_unknown_messages_get_rst_or_are_dropped() {
    let mut server: Endpoint<u8> = Endpoint::new(Config::default(), Box::new(rng(1)));
    let now = Instant::now();
    // CoAP ping: empty CON.
    server.handle_datagram(now, CLIENT, &[0x40, 0x00, 0x12, 0x34]);
    let (_, rst) = server.poll_transmit().unwrap();
    assert_eq!(rst, [0x70, 0x00, 0x12, 0x34]);
    // A CON with a token length of 9 (reserved): RST.
    server.handle_datagram(
        now,
        CLIENT,
        &[0x49, 0x02, 0x00, 0x07, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    );
    assert_eq!(server.poll_transmit().unwrap().1, [0x70, 0x00, 0x00, 0x07]);
    // Garbage and a malformed NON: dropped, counted.
    server.handle_datagram(now, CLIENT, b"\x00garbage");
    server.handle_datagram(
        now,
        CLIENT,
        &[0x59, 0x02, 0x00, 0x08, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    );
    assert!(server.poll_transmit().is_none());
    assert_eq!(server.stats().malformed, 3);
    // A CON response for an exchange we do not have: RST.
    let mut p = response(ResponseType::Changed, "");
    p.header.set_type(MessageType::Confirmable);
    p.header.message_id = 99;
    p.set_token(vec![1, 2, 3]);
    server.handle_datagram(now, CLIENT, &p.to_bytes().unwrap());
    let (_, out) = server.poll_transmit().unwrap();
    assert_eq!(out, [0x70, 0x00, 0x00, 99]);
    assert!(server.poll_event().is_none());
}

#[test]
fn a_reset_ends_the_exchange() {
    let mut client: Endpoint<u8> = Endpoint::new(Config::default(), Box::new(rng(2)));
    let now = Instant::now();
    let token = client.request(
        now,
        SERVER,
        request(RequestType::Post, "x", None, vec![1]),
        true,
    );
    let (_, sent) = client.poll_transmit().unwrap();
    let mid = u16::from_be_bytes([sent[2], sent[3]]);
    let mut rst = Packet::new();
    rst.header.code = MessageClass::Empty;
    rst.header.set_type(MessageType::Reset);
    rst.header.message_id = mid;
    client.handle_datagram(now, SERVER, &rst.to_bytes().unwrap());
    match client.poll_event() {
        Some(Event::Response {
            token: t,
            result: Err(ClientError::Reset),
            ..
        }) => assert_eq!(t, token),
        other => panic!("{other:?}"),
    }
}

#[test]
fn dedup_memory_is_bounded() {
    let config = Config {
        dedup_capacity: 100,
        ..Config::default()
    };
    let mut server: Endpoint<u8> = Endpoint::new(config, Box::new(rng(3)));
    let now = Instant::now();
    for i in 0..10_000u16 {
        let mut p = request(RequestType::Post, "x", None, vec![]);
        p.header.set_type(MessageType::NonConfirmable);
        p.header.message_id = i;
        server.handle_datagram(now, (i % 250) as u8, &p.to_bytes().unwrap());
        while let Some(Event::Request { id, .. }) = server.poll_event() {
            server.respond(now, id, response(ResponseType::Changed, ""));
        }
        while server.poll_transmit().is_some() {}
    }
    assert_eq!(server.in_flight(), (0, 0));
    assert_eq!(server.stats().duplicates, 0);
    let again = |server: &mut Endpoint<u8>, i: u16| {
        let mut p = request(RequestType::Post, "x", None, vec![]);
        p.header.set_type(MessageType::NonConfirmable);
        p.header.message_id = i;
        server.handle_datagram(now, (i % 250) as u8, &p.to_bytes().unwrap());
        let fresh = matches!(server.poll_event(), Some(Event::Request { .. }));
        while server.poll_event().is_some() {}
        while server.poll_transmit().is_some() {}
        fresh
    };
    // The last message is still remembered: sent again, it is a duplicate...
    assert!(!again(&mut server, 9_999));
    assert_eq!(server.stats().duplicates, 1);
    // ...and the first, 9,999 messages ago, was forgotten (the cache holds at most its
    // capacity): it is taken as new.
    assert!(again(&mut server, 0));
    assert_eq!(server.stats().duplicates, 1);
}

/// `server` takes a POST from `peer` with message id `mid`, of `kind`, and answers it (2.04)
/// if `answer`: whether it reached the application as a new request, and how many datagrams
/// the server sent.
fn post_to(
    server: &mut Endpoint<u8>,
    now: Instant,
    peer: u8,
    mid: u16,
    kind: MessageType,
    answer: bool,
) -> (bool, usize) {
    let id = post(server, now, peer, mid, kind);
    if let (Some(id), true) = (id, answer) {
        server.respond(now, id, response(ResponseType::Changed, ""));
    }
    (
        id.is_some(),
        std::iter::from_fn(|| server.poll_transmit()).count(),
    )
}

/// `server` takes a POST from `peer` with message id `mid`, of `kind`: its request id, if it
/// reached the application as a new request.
fn post(
    server: &mut Endpoint<u8>,
    now: Instant,
    peer: u8,
    mid: u16,
    kind: MessageType,
) -> Option<RequestId> {
    let mut p = request(RequestType::Post, "x", None, vec![]);
    p.header.set_type(kind);
    p.header.message_id = mid;
    server.handle_datagram(now, peer, &p.to_bytes().unwrap());
    let mut got = None;
    while let Some(e) = server.poll_event() {
        if let Event::Request { id, .. } = e {
            got = Some(id);
        }
    }
    got
}

/// A full de-duplication memory forgets the oldest requests of the peers that send the most,
/// never a peer's last few: a flood from one peer (or a busy fleet) cannot make a device's
/// retransmission pass for a new request, which would store its readings twice.
#[test]
fn a_peers_last_requests_stay_remembered_whatever_others_send() {
    let config = Config {
        dedup_capacity: 100,
        ..Config::default()
    };
    let mut server: Endpoint<u8> = Endpoint::new(config, Box::new(rng(3)));
    let now = Instant::now();
    // Sends a CON request; whether it was taken as new (and answered).
    let send = |server: &mut Endpoint<u8>, peer: u8, mid: u16| {
        let (fresh, answered) = post_to(server, now, peer, mid, MessageType::Confirmable, true);
        assert_eq!(answered, 1, "one answer, new or cached");
        fresh
    };
    for mid in 0..DEDUP_KEPT_PER_PEER as u16 {
        assert!(send(&mut server, 1, mid));
    }
    for mid in 0..10_000 {
        assert!(send(&mut server, 2, mid));
    }
    // Peer 1's retransmissions find their answers; peer 2's oldest were forgotten.
    for mid in 0..DEDUP_KEPT_PER_PEER as u16 {
        assert!(
            !send(&mut server, 1, mid),
            "peer 1's request {mid} taken twice"
        );
    }
    assert_eq!(server.stats().duplicates, DEDUP_KEPT_PER_PEER as u64);
    assert!(send(&mut server, 2, 0));
    assert!(!send(&mut server, 2, 9_999));
    // Kept requests are bounded too: at most four times the capacity in all.
    for round in 0..8u16 {
        for peer in 3..=255u8 {
            assert!(send(&mut server, peer, 20_000 + round));
            assert!(
                server.remembered() <= 4 * 100 + 1,
                "{}",
                server.remembered()
            );
        }
    }
    assert!(server.remembered() > 200, "peers' last requests are kept");
}

/// A peer forgotten (its session ended) leaves nothing in the expiry order: a later session
/// from the same address that uses a message id again keeps its own entry for the whole
/// exchange lifetime.
#[test]
fn a_forgotten_peers_message_ids_do_not_expire_a_later_sessions() {
    let mut server: Endpoint<u8> = Endpoint::new(Config::default(), Box::new(rng(3)));
    let lifetime = server.config().exchange_lifetime();
    let t0 = Instant::now();
    let send = |server: &mut Endpoint<u8>, now: Instant| {
        server.handle_timeout(now);
        post_to(server, now, 1, 5, MessageType::NonConfirmable, true).0
    };
    assert!(send(&mut server, t0));
    server.forget_peer(1);
    // The next session, from the same address, uses message id 5 again: a new request.
    let t1 = t0 + lifetime / 2;
    assert!(send(&mut server, t1));
    // Past the first session's lifetime, inside the second's: still a duplicate.
    assert!(!send(&mut server, t0 + lifetime + Duration::from_secs(1)));
    assert_eq!(server.stats().duplicates, 1);
}

/// What the memory holds of a forgotten peer stays only until it expires, or until a full
/// memory needs the room: a request still in progress when its session ended (never answered
/// now) does not stay for ever, and a full memory drops such entries before anyone's
/// answered requests.
#[test]
fn a_forgotten_peers_requests_leave_the_memory_in_time() {
    let config = Config {
        dedup_capacity: 100,
        ..Config::default()
    };
    let mut server: Endpoint<u8> = Endpoint::new(config, Box::new(rng(5)));
    let lifetime = server.config().exchange_lifetime();
    let t0 = Instant::now();
    // A CON request from `peer`; answered if `answer`. Whether it was new.
    let send = |server: &mut Endpoint<u8>, now: Instant, peer: u8, mid: u16, answer: bool| {
        server.handle_timeout(now);
        post_to(server, now, peer, mid, MessageType::Confirmable, answer).0
    };
    // Peer 1: 10 answered requests and 5 still in progress, then its session ends.
    for mid in 0..15 {
        assert!(send(&mut server, t0, 1, mid, mid < 10));
    }
    assert_eq!(server.in_flight().1, 5);
    server.forget_peer(1);
    assert_eq!(server.in_flight().1, 0);
    // Its next session's requests are new, whatever their message ids.
    for mid in 0..15 {
        assert!(send(&mut server, t0, 1, mid, true), "request {mid}");
    }
    assert!(
        !send(&mut server, t0, 1, 3, true),
        "a repeat of this session's"
    );
    server.forget_peer(1);
    // Past the lifetime nothing is left, the requests that were in progress included.
    let t1 = t0 + lifetime + Duration::from_secs(1);
    server.handle_timeout(t1);
    assert_eq!(server.remembered(), 0);
    // A full memory: a forgotten session's entries go first, then the oldest of the peer
    // that sends the most, and its last ones stay.
    for mid in 0..50 {
        assert!(send(&mut server, t1, 1, mid, mid % 2 == 0));
    }
    server.forget_peer(1);
    for mid in 0..100 {
        assert!(send(&mut server, t1, 2, mid, true));
        assert!(server.remembered() <= 100, "{}", server.remembered());
    }
    assert!(!send(&mut server, t1, 2, 99, true));
    server.handle_timeout(t1 + lifetime + Duration::from_secs(1));
    assert_eq!(server.remembered(), 0);
    assert_eq!(server.stats().duplicates, 2);
}

#[test]
fn one_peer_cannot_hold_more_than_its_share_of_reassembly() {
    let config = Config {
        max_reassemblies_per_peer: 2,
        nstart: 3,
        ..Config::default()
    };
    let mut net = Net::new(config, 77);
    let tokens: Vec<_> = (0..3).map(|_| net.post(vec![1u8; 3000])).collect();
    net.run_until(|n| n.outcomes.len() == 3);
    let got = codes(&net, &tokens);
    assert_eq!(
        got.iter().filter(|c| **c == ResponseType::Changed).count(),
        2,
        "{got:?}"
    );
    assert!(got.contains(&ResponseType::ServiceUnavailable), "{got:?}");
}

#[test]
fn reassembly_is_bounded_in_bytes_per_peer_and_overall() {
    // Per peer: two transfers of 3000 bytes fit a budget of 6000, a third does not.
    let config = Config {
        max_reassembly_bytes_per_peer: 6000,
        block_szx: 2, // 64-byte blocks: the transfers interleave
        nstart: 3,
        ..Config::default()
    };
    let mut net = Net::new(config, 78);
    let tokens: Vec<_> = (0..3).map(|_| net.post(vec![1u8; 3000])).collect();
    net.run_until(|n| n.outcomes.len() == 3);
    let got = codes(&net, &tokens);
    assert!(got.contains(&ResponseType::ServiceUnavailable), "{got:?}");
    assert!(got.contains(&ResponseType::Changed), "{got:?}");
    assert!(net.server.stats().reassembly_refusals >= 1);
    // Overall: the same with a total budget, whoever the peer.
    let config = Config {
        max_reassembly_bytes: 6000,
        block_szx: 2,
        nstart: 3,
        ..Config::default()
    };
    let mut net = Net::new(config, 79);
    let tokens: Vec<_> = (0..3).map(|_| net.post(vec![1u8; 3000])).collect();
    net.run_until(|n| n.outcomes.len() == 3);
    let got = codes(&net, &tokens);
    assert!(got.contains(&ResponseType::ServiceUnavailable), "{got:?}");
}

/// Block `num` (more to follow, 2^(`szx` + 4) bytes) of the transfer with `token` that peer
/// `from` POSTs to "r" at `now`, as message `mid`; the server's answer.
fn post_block(
    server: &mut Endpoint<u8>,
    now: Instant,
    from: u8,
    token: &[u8],
    mid: u16,
    num: u32,
    szx: u8,
) -> ResponseType {
    let mut p = request(RequestType::Post, "r", None, vec![from; 16 << szx]);
    p.header.message_id = mid;
    p.set_token(token.to_vec());
    let b = Block {
        num,
        more: true,
        szx,
    };
    p.add_option(CoapOption::Block1, b.encode());
    server.handle_datagram(now, from, &p.to_bytes().unwrap());
    let (to, answer) = server.poll_transmit().expect("an answer");
    assert_eq!(to, from);
    match Packet::from_bytes(&answer).unwrap().header.code {
        MessageClass::Response(r) => r,
        c => panic!("{c:?}"),
    }
}

#[test]
fn peers_holding_the_most_reassembly_make_room_for_one_holding_less() {
    let config = Config {
        max_reassembly_bytes: 1000,
        ..Config::default()
    };
    let mut server: Endpoint<u8> = Endpoint::new(config, Box::new(rng(81)));
    let now = Instant::now();
    let mut mid = 0u16;
    // Block `num` (64 bytes, more to come) of peer `from`'s transfer; the server's answer.
    let mut block = |server: &mut Endpoint<u8>, from: u8, num: u32| {
        mid += 1;
        post_block(server, now, from, &[from], mid, num, 2)
    };
    // Peers 1 and 2 hold 448 bytes each; peer 1 sends one more block: 960 of 1000.
    for num in 0..7 {
        assert_eq!(block(&mut server, 1, num), ResponseType::Continue);
        assert_eq!(block(&mut server, 2, num), ResponseType::Continue);
    }
    assert_eq!(block(&mut server, 1, 7), ResponseType::Continue);
    // A third peer's first block would pass the budget: the peer holding the most (1) yields.
    assert_eq!(block(&mut server, 3, 0), ResponseType::Continue);
    assert_eq!(server.stats().reassembly_refusals, 1);
    assert_eq!(
        block(&mut server, 1, 8),
        ResponseType::RequestEntityIncomplete,
        "its transfer is gone: it starts again"
    );
    assert_eq!(block(&mut server, 2, 7), ResponseType::Continue);
    // A peer that holds the most itself is refused, as before: peer 2 (512) grows past the
    // budget only at the others' expense if they hold more, and they do not.
    for num in 1..7 {
        assert_eq!(block(&mut server, 3, num), ResponseType::Continue);
    }
    assert_eq!(block(&mut server, 2, 8), ResponseType::ServiceUnavailable);
    assert_eq!(server.stats().reassembly_refusals, 2);
}

#[test]
fn peers_holding_the_most_transfers_make_room_for_one_holding_fewer() {
    // Sixteen peers (four identities of four sessions) with four transfers each held every
    // block-wise slot of a worker, refreshing them with block 0: every other device's
    // block-wise POST got 5.03.
    let config = Config {
        max_reassemblies: 8,
        max_reassemblies_per_peer: 4,
        ..Config::default()
    };
    let mut server: Endpoint<u8> = Endpoint::new(config, Box::new(rng(82)));
    let now = Instant::now();
    let mut mid = 0u16;
    // Block `num` of peer `from`'s transfer `t`; the server's answer.
    let mut block = |server: &mut Endpoint<u8>, from: u8, t: u8, num: u32| {
        mid += 1;
        post_block(server, now, from, &[from, t], mid, num, 0)
    };
    for t in 0..4 {
        assert_eq!(block(&mut server, 1, t, 0), ResponseType::Continue);
        assert_eq!(block(&mut server, 2, t, 0), ResponseType::Continue);
    }
    // All eight slots are held; peer 3's first transfer takes one of the busiest peer's.
    assert_eq!(block(&mut server, 3, 0, 0), ResponseType::Continue);
    assert_eq!(block(&mut server, 3, 1, 0), ResponseType::Continue);
    assert_eq!(server.stats().reassembly_refusals, 2);
    // Now each of peers 1 and 2 holds three, no more than peer 3 would with a third.
    assert_eq!(
        block(&mut server, 3, 2, 0),
        ResponseType::ServiceUnavailable
    );
    // The transfers that gave way start again (4.08), the others go on.
    let gone: Vec<_> = [(1u8, 0u8), (2, 0)]
        .into_iter()
        .chain((1..4).flat_map(|t| [(1, t), (2, t)]))
        .filter(|&(p, t)| block(&mut server, p, t, 1) == ResponseType::RequestEntityIncomplete)
        .collect();
    assert_eq!(gone.len(), 2, "{gone:?}");
    assert_eq!(block(&mut server, 3, 0, 1), ResponseType::Continue);
}

#[test]
fn a_transfer_without_a_block_for_a_retransmission_span_gives_way() {
    // Peers that each hold one transfer and send a block every few minutes (the exchange
    // lifetime, 247 s, is long) kept every other device's block-wise POST out with 5.03.
    let config = Config {
        max_reassemblies: 4,
        ..Config::default()
    };
    let span = config.max_transmit_span();
    let mut server: Endpoint<u8> = Endpoint::new(config, Box::new(rng(83)));
    let t0 = Instant::now();
    let mut mid = 0u16;
    // Block `num` of peer `from`'s transfer at `now`; the server's answer.
    let mut block = |server: &mut Endpoint<u8>, now: Instant, from: u8, num: u32| {
        mid += 1;
        post_block(server, now, from, &[from], mid, num, 0)
    };
    for peer in 1..=4 {
        assert_eq!(block(&mut server, t0, peer, 0), ResponseType::Continue);
    }
    assert_eq!(
        block(&mut server, t0, 9, 0),
        ResponseType::ServiceUnavailable
    );
    // Peers 2 to 4 go on; peer 1 has sent nothing for longer than a client retransmits.
    let later = t0 + span + Duration::from_secs(1);
    for peer in 2..=4 {
        assert_eq!(
            block(&mut server, later - Duration::from_secs(2), peer, 1),
            ResponseType::Continue
        );
    }
    assert_eq!(block(&mut server, later, 9, 0), ResponseType::Continue);
    assert_eq!(
        block(&mut server, later, 1, 1),
        ResponseType::RequestEntityIncomplete
    );
    // Transfers with a recent block stay: the next newcomer waits.
    assert_eq!(
        block(&mut server, later, 10, 0),
        ResponseType::ServiceUnavailable
    );
    assert_eq!(block(&mut server, later, 2, 2), ResponseType::Continue);
}

#[test]
fn an_unknown_critical_option_gets_4_02_and_elective_ones_are_ignored() {
    let mut net = Net::new(Config::default(), 80);
    let mut critical = request(
        RequestType::Post,
        "gpsflowtemp",
        Some(ContentFormat::SENML_CBOR),
        b"x".to_vec(),
    );
    critical.add_option(CoapOption::Unknown(2049), b"?".to_vec()); // odd: critical
    let mut if_match = request(
        RequestType::Post,
        "gpsflowtemp",
        Some(ContentFormat::SENML_CBOR),
        b"x".to_vec(),
    );
    if_match.add_option(CoapOption::IfMatch, b"etag".to_vec()); // 1: critical, not done here
    let mut proxy = request(
        RequestType::Post,
        "gpsflowtemp",
        Some(ContentFormat::SENML_CBOR),
        b"x".to_vec(),
    );
    proxy.add_option(CoapOption::ProxyUri, b"coap://elsewhere/".to_vec());
    let mut elective = request(
        RequestType::Post,
        "gpsflowtemp",
        Some(ContentFormat::SENML_CBOR),
        b"x".to_vec(),
    );
    elective.add_option(CoapOption::Unknown(2050), b"?".to_vec()); // even: elective
    let now = net.now;
    let tokens: Vec<_> = [critical, if_match, proxy, elective]
        .into_iter()
        .map(|p| net.client.request(now, SERVER, p, true))
        .collect();
    net.run_until(|n| n.outcomes.len() == 4);
    assert_eq!(
        codes(&net, &tokens),
        vec![
            ResponseType::BadOption,
            ResponseType::BadOption,
            ResponseType::ProxyingNotSupported,
            ResponseType::Changed
        ]
    );
    assert_eq!(
        net.seen.len(),
        1,
        "only the elective one reached the application"
    );
    assert_eq!(net.server.stats().bad_options, 3);
}

#[test]
fn nstart_holds_requests_back_in_order_and_a_waiting_one_can_be_cancelled() {
    let config = Config {
        nstart: 2,
        ..Config::default()
    };
    let mut client: Endpoint<u8> = Endpoint::new(config, Box::new(rng(5)));
    let now = Instant::now();
    let tokens: Vec<_> = (0..5u8)
        .map(|i| {
            client.request(
                now,
                SERVER,
                request(RequestType::Post, "x", None, vec![i]),
                true,
            )
        })
        .collect();
    let sent = |c: &mut Endpoint<u8>| {
        std::iter::from_fn(|| c.poll_transmit())
            .map(|(_, b)| Packet::from_bytes(&b).unwrap())
            .collect::<Vec<_>>()
    };
    let first = sent(&mut client);
    assert_eq!(
        first.iter().map(|p| p.payload[0]).collect::<Vec<_>>(),
        [0, 1]
    );
    // The fourth has not gone out: it can be cancelled; the first has: it cannot.
    assert_eq!(client.cancel(SERVER, &tokens[3]).unwrap().payload, [3]);
    assert!(client.cancel(SERVER, &tokens[0]).is_none());
    // A block-wise one comes back whole too (its blocks are cut from one copy of the body).
    let body: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    let big = client.request(
        now,
        SERVER,
        request(RequestType::Post, "x", None, body.clone()),
        true,
    );
    assert_eq!(client.cancel(SERVER, &big).unwrap().payload, body);
    // The first answer frees a slot: the third goes, then (the fourth cancelled) the fifth.
    let answer = |p: &Packet| {
        let mut r = response(ResponseType::Changed, "");
        r.header.set_type(MessageType::Acknowledgement);
        r.header.message_id = p.header.message_id;
        r.set_token(p.get_token().to_vec());
        r.to_bytes().unwrap()
    };
    client.handle_datagram(now, SERVER, &answer(&first[0]));
    let next = sent(&mut client);
    assert_eq!(next.iter().map(|p| p.payload[0]).collect::<Vec<_>>(), [2]);
    client.handle_datagram(now, SERVER, &answer(&first[1]));
    let last = sent(&mut client);
    assert_eq!(last.iter().map(|p| p.payload[0]).collect::<Vec<_>>(), [4]);
    let done: Vec<Token> = std::iter::from_fn(|| client.poll_event())
        .map(|e| match e {
            Event::Response { token, result, .. } => {
                assert!(result.is_ok());
                token
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        done,
        vec![tokens[0].clone(), tokens[1].clone()],
        "no event for a cancelled one"
    );
    assert_eq!(client.in_flight(), (2, 0));
}

/// Posts `n` requests one after the other; the client's retransmissions meanwhile.
fn exchanges(net: &mut Net, n: usize) -> u64 {
    let before = net.client.stats().retransmissions;
    for i in 0..n {
        let token = net.post(vec![i as u8]);
        // Not `run_until`: its last step may jump the clock to a far timer after the answer
        // came, and a gap of minutes would age the estimate.
        loop {
            net.drain();
            if net.outcomes.contains_key(&token) || !net.step() {
                break;
            }
        }
        assert_eq!(
            code(net.outcomes[&token].as_ref().unwrap()),
            ResponseType::Changed
        );
    }
    net.client.stats().retransmissions - before
}

#[test]
fn a_slow_path_is_learned_and_stops_the_spurious_retransmissions() {
    // A 3.2 s round trip: RFC 7252's fixed 2-3 s timeout retransmits every request once.
    let mut net = Net::new(Config::default(), 5);
    net.latency = Duration::from_millis(1600);
    assert!(
        exchanges(&mut net, 3) >= 1,
        "the first requests time out too soon"
    );
    let later = exchanges(&mut net, 10);
    assert_eq!(later, 0, "the measured timeout covers the round trip");
    let mut fixed = Net::new(
        Config {
            adaptive_rto: false,
            ..Config::default()
        },
        5,
    );
    fixed.latency = Duration::from_millis(1600);
    exchanges(&mut fixed, 3);
    assert_eq!(
        exchanges(&mut fixed, 10),
        10,
        "without it, every request once"
    );
}

#[test]
fn a_fast_path_retransmits_after_its_measured_timeout_not_after_ack_timeout() {
    let mut net = Net::new(Config::default(), 9);
    net.latency = Duration::from_millis(20);
    exchanges(&mut net, 20);
    net.log.clear();
    net.drop_first = 1; // this request is lost once
    let token = net.post(b"lost".to_vec());
    net.run_until(|n| n.outcomes.contains_key(&token));
    let sends = client_sends(&net);
    assert_eq!(sends.len(), 2, "{sends:?}");
    let waited = sends[1] - sends[0];
    assert!(
        waited >= Duration::from_millis(200) && waited <= Duration::from_millis(300),
        "the 40 ms round trip's timeout, at its 200 ms floor, times the random factor: {waited:?}"
    );
}

/// What a scripted server saw of a block-wise POST of `body`, answering each block with a
/// piggybacked `code` whose Block1 option is what `echo` makes of the block's; and the
/// request's outcome.
struct Scripted {
    blocks: Vec<(Block, Vec<u8>)>,
    outcome: Option<Result<Packet, ClientError>>,
}

fn scripted(
    seed: u64,
    body: Vec<u8>,
    code: ResponseType,
    echo: impl Fn(Block) -> Block,
) -> Scripted {
    let now = Instant::now();
    let mut client = Endpoint::new(Config::default(), Box::new(rng(seed)));
    let req = request(
        RequestType::Post,
        "gpsflowtemp",
        Some(ContentFormat::SENML_CBOR),
        body,
    );
    let token = client.request(now, SERVER, req, true);
    let mut seen = Scripted {
        blocks: Vec::new(),
        outcome: None,
    };
    for _ in 0..40 {
        let Some((to, bytes)) = client.poll_transmit() else {
            break;
        };
        assert_eq!(to, SERVER);
        let sent = Packet::from_bytes(&bytes).unwrap();
        let b = Block::decode(sent.get_first_option(CoapOption::Block1).unwrap()).unwrap();
        seen.blocks.push((b, sent.payload.clone()));
        let mut answer = response(code, "");
        answer.header.set_type(MessageType::Acknowledgement);
        answer.header.message_id = sent.header.message_id;
        answer.set_token(sent.get_token().to_vec());
        answer.add_option(CoapOption::Block1, echo(b).encode());
        client.handle_datagram(now, SERVER, &answer.to_bytes().unwrap());
        while let Some(ev) = client.poll_event() {
            if let Event::Response {
                token: t, result, ..
            } = ev
            {
                assert_eq!(t, token);
                seen.outcome = Some(result);
            }
        }
        if seen.outcome.is_some() {
            break;
        }
    }
    seen
}

#[test]
fn a_server_that_answers_each_block_with_2_04_still_gets_the_whole_body() {
    // RFC 7959 2.5: a server may act on each block as it comes, and answer each with 2.04.
    // Only the answer to the last block is the request's; the blocks before it must all go.
    let body: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let seen = scripted(5, body.clone(), ResponseType::Changed, |b| b);
    let got: Vec<u8> = seen.blocks.iter().flat_map(|(_, p)| p.clone()).collect();
    assert_eq!(got.len(), body.len(), "every block went");
    assert!(got == body, "in order");
    let r = seen
        .outcome
        .expect("an outcome")
        .expect("the last block's answer");
    assert_eq!(code(&r), ResponseType::Changed);
}

#[test]
fn an_answer_about_another_block_ends_the_request_instead_of_skipping_a_block() {
    // The Block1 option of an answer names the block it acknowledges (RFC 7959 2.3). A server
    // whose answer to the second block names the first must not count as having the second,
    // and, when that block is the last, must not pass for the request's success.
    let body: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let seen = scripted(6, body, ResponseType::Continue, |b| Block { num: 0, ..b });
    let nums: Vec<u32> = seen.blocks.iter().map(|(b, _)| b.num).collect();
    assert_eq!(nums, [0, 1], "block 1 went once and nothing after it");
    match seen.outcome.expect("an outcome") {
        Err(ClientError::Protocol(e)) => {
            assert!(e.contains("block 0 but block 1"), "{e}");
        }
        other => panic!("a protocol error, not {other:?}"),
    }
    // A server that asks for smaller blocks numbers its answer in its own size (RFC 7959
    // 2.3): block 1 of 1024 bytes is block 8 of 128, the same place.
    let body: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let seen = scripted(7, body.clone(), ResponseType::Changed, |b| match b.num {
        1 if b.szx == 6 => Block {
            num: 8,
            szx: 3,
            ..b
        },
        _ => b,
    });
    let got: Vec<u8> = seen.blocks.iter().flat_map(|(_, p)| p.clone()).collect();
    assert!(got == body, "every byte once, in order");
    assert_eq!(seen.blocks[2].0.num, 16, "on in 128-byte blocks");
    let r = seen.outcome.expect("an outcome").expect("stored");
    assert_eq!(code(&r), ResponseType::Changed);
}

/// One peer's Block1 blocks, sent straight to a server endpoint: block `num` of 64 bytes of
/// the token's value, with `token` and the Request-Tag `tag` (none when empty); the server's
/// answer (`Changed` for a last block the application got).
struct Blocks {
    server: Endpoint<u8>,
    mid: u16,
}

impl Blocks {
    fn send(&mut self, now: Instant, token: u8, tag: &[u8], num: u32, more: bool) -> ResponseType {
        self.mid += 1;
        let mut p = request(RequestType::Post, "r", None, vec![token; 64]);
        p.header.message_id = self.mid;
        p.set_token(vec![token]);
        p.add_option(CoapOption::Block1, Block { num, more, szx: 2 }.encode());
        if !tag.is_empty() {
            p.add_option(CoapOption::Unknown(292), tag.to_vec());
        }
        self.server.handle_datagram(now, 1, &p.to_bytes().unwrap());
        // The last block goes to the application, which answers (2.04 here).
        let Some((_, answer)) = self.server.poll_transmit() else {
            return ResponseType::Changed;
        };
        match Packet::from_bytes(&answer).unwrap().header.code {
            MessageClass::Response(r) => r,
            c => panic!("{c:?}"),
        }
    }
}

#[test]
fn blocks_of_two_transfers_are_never_spliced_into_one_body() {
    let mut b = Blocks {
        server: Endpoint::new(Config::default(), Box::new(rng(91))),
        mid: 0,
    };
    let t0 = Instant::now();
    // A (token 1, Request-Tag A) sends blocks 0-2; B (token 2, Request-Tag B) too, 200 s later.
    for num in 0..3 {
        assert_eq!(b.send(t0, 1, b"A", num, true), ResponseType::Continue);
    }
    let t1 = t0 + Duration::from_secs(200);
    for num in 0..3 {
        assert_eq!(b.send(t1, 2, b"B", num, true), ResponseType::Continue);
    }
    // A's transfer expires (EXCHANGE_LIFETIME after its last block); its next block is not
    // taken as B's, which also expects block 3: 4.08, and A starts again.
    let t2 = t0 + Duration::from_secs(250);
    b.server.handle_timeout(t2);
    assert_eq!(
        b.send(t2, 1, b"A", 3, true),
        ResponseType::RequestEntityIncomplete
    );
    // B goes on untouched, and its body is its own.
    assert_eq!(b.send(t2, 2, b"B", 3, false), ResponseType::Changed);
    let mut bodies = Vec::new();
    while let Some(ev) = b.server.poll_event() {
        if let Event::Request { packet, .. } = ev {
            bodies.push(packet.payload);
        }
    }
    assert_eq!(bodies, vec![vec![2u8; 256]]);
}

#[test]
fn a_client_that_changes_its_token_between_blocks_is_followed_only_when_one_transfer_fits() {
    let mut b = Blocks {
        server: Endpoint::new(Config::default(), Box::new(rng(92))),
        mid: 0,
    };
    let now = Instant::now();
    // A new token for every block, one Request-Tag (as libcoap does): followed.
    assert_eq!(b.send(now, 10, b"T", 0, true), ResponseType::Continue);
    assert_eq!(b.send(now, 11, b"T", 1, true), ResponseType::Continue);
    assert_eq!(b.send(now, 12, b"T", 2, false), ResponseType::Changed);
    let delivered = std::iter::from_fn(|| b.server.poll_event())
        .filter(|e| matches!(e, Event::Request { .. }))
        .count();
    assert_eq!(delivered, 1);
    // Without a Request-Tag, two transfers that both expect block 1 leave a block of a third
    // token ambiguous: 4.08 rather than a guess.
    assert_eq!(b.send(now, 20, b"", 0, true), ResponseType::Continue);
    assert_eq!(b.send(now, 21, b"", 0, true), ResponseType::Continue);
    assert_eq!(
        b.send(now, 22, b"", 1, true),
        ResponseType::RequestEntityIncomplete
    );
    // A block whose Request-Tag differs from its transfer's belongs to another operation.
    assert_eq!(b.send(now, 30, b"X", 0, true), ResponseType::Continue);
    assert_eq!(
        b.send(now, 30, b"Y", 1, true),
        ResponseType::RequestEntityIncomplete
    );
}

#[test]
fn message_ids_are_counted_per_peer_so_others_traffic_does_not_bring_them_round() {
    // RFC 7252 4.4: an id is not reused with the same endpoint within EXCHANGE_LIFETIME. One
    // counter for every peer came round for each after 65,536 messages to all of them (a
    // server with many observers: seconds), and a peer dropped a new message as a duplicate.
    let mut server: Endpoint<u8> = Endpoint::new(Config::default(), Box::new(rng(93)));
    let now = Instant::now();
    let mut mid = 0u16;
    // A NON request of `peer`, answered NON (with an id of the server's): that id.
    let mut exchange = |server: &mut Endpoint<u8>, peer: u8| -> u16 {
        mid += 1;
        let mut p = request(RequestType::Get, "r", None, Vec::new());
        p.header.set_type(MessageType::NonConfirmable);
        p.header.message_id = mid;
        p.set_token(vec![peer]);
        server.handle_datagram(now, peer, &p.to_bytes().unwrap());
        let Some(Event::Request { id, .. }) = server.poll_event() else {
            panic!("a request")
        };
        assert!(server.respond(now, id, response(ResponseType::Content, "")));
        let (to, answer) = server.poll_transmit().expect("an answer");
        assert_eq!(to, peer);
        Packet::from_bytes(&answer).unwrap().header.message_id
    };
    let first = exchange(&mut server, 1);
    let others: Vec<u16> = (0..50).map(|_| exchange(&mut server, 2)).collect();
    assert_eq!(exchange(&mut server, 1), first.wrapping_add(1));
    assert!(others.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
}

#[test]
fn message_format_errors_are_answered_as_rfc_7252_says() {
    let mut server: Endpoint<u8> = Endpoint::new(Config::default(), Box::new(rng(94)));
    let now = Instant::now();
    let mut answer = |bytes: &[u8]| -> Option<Vec<u8>> {
        server.handle_datagram(now, CLIENT, bytes);
        assert!(server.poll_event().is_none(), "{bytes:02x?} was taken");
        server.poll_transmit().map(|(_, b)| b)
    };
    // A version other than 1: silently ignored (3), even a CON GET.
    assert_eq!(answer(&[0x80, 0x01, 0x12, 0x34]), None);
    assert_eq!(answer(&[0x00, 0x01, 0x12, 0x34]), None);
    // A payload marker with nothing after it is a format error (3): RST to a CON.
    assert_eq!(
        answer(&[0x40, 0x01, 0x12, 0x35, 0xff]),
        Some(vec![0x70, 0x00, 0x12, 0x35])
    );
    // An option nibble of 15 outside the marker (3.1): RST.
    assert_eq!(
        answer(&[0x40, 0x01, 0x12, 0x3a, 0xf1, 0x00]),
        Some(vec![0x70, 0x00, 0x12, 0x3a])
    );
    // An option running past the datagram: RST.
    assert_eq!(
        answer(&[0x40, 0x01, 0x12, 0x3b, 0xb5, b'a']),
        Some(vec![0x70, 0x00, 0x12, 0x3b])
    );
    // An ACK carrying a request, a RST carrying a response, an Empty ACK with a token: never
    // answered (4.2), never taken.
    assert_eq!(answer(&[0x60, 0x01, 0x12, 0x36]), None);
    assert_eq!(answer(&[0x70, 0x44, 0x12, 0x37]), None);
    assert_eq!(answer(&[0x61, 0x00, 0x12, 0x38, 0x07]), None);
    // An Empty CON with a token or bytes after its header is a format error (4.1): RST.
    assert_eq!(
        answer(&[0x41, 0x00, 0x12, 0x39, 0x07]),
        Some(vec![0x70, 0x00, 0x12, 0x39])
    );
    // An unknown method code gets a piggybacked 4.05 (5.8), its token echoed; a NON nothing.
    assert_eq!(
        answer(&[0x41, 0x08, 0x12, 0x3c, 0x09]),
        Some(vec![0x61, 0x85, 0x12, 0x3c, 0x09])
    );
    assert_eq!(answer(&[0x50, 0x1f, 0x12, 0x3d]), None);
    // Classes 1, 3, 6 and 7 are reserved: RST to a CON.
    assert_eq!(
        answer(&[0x40, 0x21, 0x12, 0x3e]),
        Some(vec![0x70, 0x00, 0x12, 0x3e])
    );
    assert_eq!(server.stats().malformed, 12);
    // What is well formed still works: a GET with an option and a payload.
    let mut ok = request(RequestType::Get, "r", None, b"x".to_vec());
    ok.header.message_id = 0x1240;
    server.handle_datagram(now, CLIENT, &ok.to_bytes().unwrap());
    assert!(matches!(server.poll_event(), Some(Event::Request { .. })));
}

#[test]
fn a_critical_option_twice_or_of_a_wrong_length_gets_4_02_and_szx_7_gets_4_00() {
    let mut server: Endpoint<u8> = Endpoint::new(Config::default(), Box::new(rng(95)));
    let now = Instant::now();
    let mut mid = 0x2000u16;
    // The answer, if the endpoint gives one at once (else the application has the request).
    let mut code = |server: &mut Endpoint<u8>, opts: &[(u16, Vec<u8>)]| -> Option<ResponseType> {
        mid += 1;
        let mut p = request(RequestType::Post, "r", None, b"x".to_vec());
        p.header.message_id = mid;
        for (n, v) in opts {
            p.add_option(CoapOption::from(*n), v.clone());
        }
        server.handle_datagram(now, CLIENT, &p.to_bytes().unwrap());
        let (_, answer) = server.poll_transmit()?;
        match Packet::from_bytes(&answer).unwrap().header.code {
            MessageClass::Response(r) => Some(r),
            c => panic!("{c:?}"),
        }
    };
    let bad = Some(ResponseType::BadOption);
    // RFC 7252 5.4.5: a non-repeatable option given again is treated as unrecognized, and a
    // critical one gets 4.02; 5.4.3: so does a value of a length it cannot have.
    let b1 = |num: u32| {
        (
            27u16,
            Block {
                num,
                more: true,
                szx: 2,
            }
            .encode(),
        )
    };
    assert_eq!(code(&mut server, &[b1(0), b1(1)]), bad);
    assert_eq!(
        code(&mut server, &[(3, b"a".to_vec()), (3, b"b".to_vec())]),
        bad
    );
    assert_eq!(code(&mut server, &[(17, vec![0, 0, 50])]), bad);
    assert_eq!(code(&mut server, &[(27, vec![0; 4])]), bad);
    // RFC 7959 2.2: the reserved SZX 7 gets 4.00.
    assert_eq!(
        code(&mut server, &[(27, vec![0x0f])]),
        Some(ResponseType::BadRequest)
    );
    assert!(server.poll_event().is_none());
    // One of each, of lengths they may have: taken.
    assert_eq!(
        code(&mut server, &[(3, b"h".to_vec()), (17, vec![50])]),
        None
    );
    assert!(matches!(server.poll_event(), Some(Event::Request { .. })));
}

#[test]
fn a_response_with_a_critical_option_the_client_does_not_know_is_rejected() {
    // RFC 7252 5.4.1: such a response is rejected. A 2.04 carrying, say, an OSCORE option (9)
    // or option 2049 was taken as "stored".
    let mut client: Endpoint<u8> = Endpoint::new(Config::default(), Box::new(rng(96)));
    let now = Instant::now();
    let token = client.request(
        now,
        SERVER,
        request(RequestType::Post, "x", None, vec![1]),
        true,
    );
    let (_, sent) = client.poll_transmit().unwrap();
    let mid = u16::from_be_bytes([sent[2], sent[3]]);
    let answer = |t: MessageType, m: u16, option: Option<u16>| {
        let mut p = response(ResponseType::Changed, "");
        p.header.set_type(t);
        p.header.message_id = m;
        p.set_token(token.clone());
        if let Some(n) = option {
            p.add_option(CoapOption::from(n), vec![1]);
        }
        p.to_bytes().unwrap()
    };
    // Piggybacked: ignored; the request is still out.
    client.handle_datagram(
        now,
        SERVER,
        &answer(MessageType::Acknowledgement, mid, Some(2049)),
    );
    assert!(client.poll_event().is_none());
    assert!(client.poll_transmit().is_none());
    // A separate CON response: RST, not taken.
    client.handle_datagram(
        now,
        SERVER,
        &answer(MessageType::Confirmable, 0x5000, Some(9)),
    );
    let (_, rst) = client.poll_transmit().expect("a RST");
    assert_eq!(rst, [0x70, 0x00, 0x50, 0x00]);
    assert!(client.poll_event().is_none());
    // An elective option it does not know is fine: the answer is taken.
    client.handle_datagram(
        now,
        SERVER,
        &answer(MessageType::Acknowledgement, mid, Some(2048)),
    );
    match client.poll_event() {
        Some(Event::Response {
            token: t,
            result: Ok(p),
            ..
        }) => {
            assert_eq!(t, token);
            assert_eq!(code(&p), ResponseType::Changed);
        }
        other => panic!("{other:?}"),
    }
}

/// `server` takes a CON POST from `peer` with message id `mid` and does not answer it yet:
/// its request id.
fn waiting_post(server: &mut Endpoint<u8>, now: Instant, peer: u8, mid: u16) -> RequestId {
    post(server, now, peer, mid, MessageType::Confirmable).expect("a new request")
}

/// The next empty ACK is due for the oldest request still waiting, not for one answered
/// meanwhile, and each waiting request gets its own in its turn: the timer is found without a
/// look at every request waiting.
#[test]
fn empty_acks_go_to_the_requests_still_waiting_in_their_turn() {
    let mut server: Endpoint<u8> = Endpoint::new(Config::default(), Box::new(rng(9)));
    let after = server.config().separate_after;
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let ids: Vec<RequestId> = (0..3)
        .map(|i| waiting_post(&mut server, at(100 * i), 1, i as u16))
        .collect();
    assert_eq!(server.poll_timeout(), Some(t0 + after));
    // The first is answered (piggybacked): the second is next.
    assert!(server.respond(at(250), ids[0], response(ResponseType::Changed, "")));
    assert_eq!(server.poll_transmit().map(|(p, _)| p), Some(1));
    assert_eq!(server.poll_timeout(), Some(at(100) + after));
    // Its time: an empty ACK for it alone.
    server.handle_timeout(at(100) + after);
    let sent: Vec<Packet> = std::iter::from_fn(|| server.poll_transmit())
        .map(|(_, b)| Packet::from_bytes(&b).unwrap())
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].header.get_type(), MessageType::Acknowledgement);
    assert_eq!(sent[0].header.message_id, 1);
    assert!(sent[0].payload.is_empty());
    assert_eq!(server.poll_timeout(), Some(at(200) + after));
    // The third is answered before its time: no timer is left for a request.
    assert!(server.respond(at(300), ids[2], response(ResponseType::Changed, "")));
    let dedup_expiry = t0 + server.config().exchange_lifetime();
    assert_eq!(server.poll_timeout(), Some(dedup_expiry));
    assert_eq!(server.in_flight().1, 1, "the second waits, acknowledged");
}

/// A session that ends takes its own requests waiting for the application with it, and no
/// other peer's.
#[test]
fn a_forgotten_peer_takes_only_its_own_waiting_requests() {
    let mut server: Endpoint<u8> = Endpoint::new(Config::default(), Box::new(rng(11)));
    let t0 = Instant::now();
    let mine: Vec<RequestId> = (0..4)
        .map(|m| waiting_post(&mut server, t0, 1, m))
        .collect();
    let others: Vec<RequestId> = (0..2)
        .map(|m| waiting_post(&mut server, t0, 2, m))
        .collect();
    assert!(server.respond(t0, mine[1], response(ResponseType::Changed, "")));
    assert_eq!(server.in_flight().1, 5);
    server.forget_peer(1);
    assert_eq!(server.in_flight().1, 2);
    for id in [mine[0], mine[2], mine[3]] {
        assert!(!server.respond(t0, id, response(ResponseType::Changed, "")));
    }
    for id in others {
        assert!(server.respond(t0, id, response(ResponseType::Changed, "")));
    }
    assert_eq!(server.in_flight(), (0, 0));
    // The peer's next session's requests wait, and are answered, as anyone's.
    let next = waiting_post(&mut server, t0, 1, 0);
    assert_eq!(server.in_flight().1, 1);
    assert!(server.respond(t0, next, response(ResponseType::Changed, "")));
}

/// A request acknowledged with an empty ACK (its entry in the de-duplication memory is then
/// an answer, which expires as any) and still not answered by the application is forgotten
/// with its peer's session, however long it waited.
#[test]
fn a_request_acknowledged_long_ago_goes_with_its_forgotten_peer() {
    let mut server: Endpoint<u8> = Endpoint::new(Config::default(), Box::new(rng(13)));
    let t0 = Instant::now();
    let id = waiting_post(&mut server, t0, 1, 7);
    let acked = t0 + server.config().separate_after;
    server.handle_timeout(acked);
    assert_eq!(
        server.poll_transmit().map(|(p, _)| p),
        Some(1),
        "the empty ACK"
    );
    // Its entry expires; the application has still not answered.
    let later = acked + server.config().exchange_lifetime();
    server.handle_timeout(later);
    assert_eq!(server.remembered(), 0);
    assert_eq!(server.in_flight().1, 1);
    server.forget_peer(1);
    assert_eq!(server.in_flight().1, 0);
    assert!(!server.respond(later, id, response(ResponseType::Changed, "")));
    assert!(server.poll_transmit().is_none());
}

/// What was queued for a peer and not yet taken when it is forgotten is not sent: its session
/// ended, and the next to have its address would get it (a request the application was told
/// had failed, or an answer for someone else).
#[test]
fn a_forgotten_peers_queued_datagrams_are_not_sent() {
    let mut client: Endpoint<u8> = Endpoint::new(Config::default(), Box::new(rng(9)));
    let now = Instant::now();
    for peer in [1, 2, 1] {
        client.request(
            now,
            peer,
            request(RequestType::Post, "r", None, vec![peer]),
            true,
        );
    }
    client.forget_peer(1);
    let out: Vec<u8> = std::iter::from_fn(|| client.poll_transmit())
        .map(|(peer, _)| peer)
        .collect();
    assert_eq!(out, [2]);
}
