//! Observe (RFC 7641) between two sans-IO endpoints in memory, on a simulated clock: a
//! registration, notifications in order, the CON every so often, and every way a client stops
//! being registered. Deterministic; nothing sleeps.

use gateway_coap::coap_lite::{CoapOption, MessageType, Packet, RequestType, ResponseType};
use gateway_coap::{
    encode_uint, observe_of, request, response, Config, Endpoint, Event, RequestId, Token,
};
use std::time::{Duration, Instant};

const CLIENT: u8 = 1;
const SERVER: u8 = 2;

fn rng(seed: u64) -> Box<dyn FnMut() -> u64 + Send> {
    let mut s = seed | 1;
    Box::new(move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    })
}

struct Pair {
    client: Endpoint<u8>,
    server: Endpoint<u8>,
    now: Instant,
    /// Datagrams the client sent that the server should not get.
    drop_to_server: bool,
    /// Every datagram the server sent: its type and Observe number (if it parses).
    server_sent: Vec<(MessageType, Option<u32>, Vec<u8>)>,
    /// What the client application got.
    responses: Vec<(Token, Packet)>,
    notifications: Vec<Packet>,
    /// What the server application got.
    requests: Vec<(RequestId, Packet)>,
    deregistered: Vec<(u8, Token)>,
}

impl Pair {
    fn new(config: Config) -> Pair {
        Pair {
            client: Endpoint::new(config.clone(), rng(7)),
            server: Endpoint::new(config, rng(11)),
            now: Instant::now(),
            drop_to_server: false,
            server_sent: Vec::new(),
            responses: Vec::new(),
            notifications: Vec::new(),
            requests: Vec::new(),
            deregistered: Vec::new(),
        }
    }

    /// Moves everything queued until nothing moves.
    fn run(&mut self) {
        loop {
            let mut moved = false;
            while let Some((_, bytes)) = self.client.poll_transmit() {
                moved = true;
                if !self.drop_to_server {
                    self.server.handle_datagram(self.now, CLIENT, &bytes);
                }
            }
            while let Some((_, bytes)) = self.server.poll_transmit() {
                moved = true;
                let p = Packet::from_bytes(&bytes).expect("the server sends CoAP");
                self.server_sent
                    .push((p.header.get_type(), observe_of(&p), p.payload.clone()));
                self.client.handle_datagram(self.now, SERVER, &bytes);
            }
            while let Some(ev) = self.client.poll_event() {
                moved = true;
                match ev {
                    Event::Response { token, result, .. } => {
                        self.responses.push((token, result.expect("a response")))
                    }
                    Event::Notification { packet, .. } => self.notifications.push(packet),
                    other => panic!("client event {other:?}"),
                }
            }
            while let Some(ev) = self.server.poll_event() {
                moved = true;
                match ev {
                    Event::Request { id, packet, .. } => self.requests.push((id, packet)),
                    Event::Deregistered { peer, token } => self.deregistered.push((peer, token)),
                    other => panic!("server event {other:?}"),
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
        self.run();
    }

    /// The client registers; the server application accepts (with an Observe option on its
    /// answer) or not. Returns the registration's token.
    fn register(&mut self, accept: bool) -> Token {
        let mut get = request(RequestType::Get, "gpsflowtemp/pi-1", None, Vec::new());
        get.add_option(CoapOption::Observe, encode_uint(0));
        let token = self.client.request(self.now, SERVER, get, true);
        self.run();
        let (id, _) = self.requests.pop().expect("the GET reached the server");
        let mut answer = response(ResponseType::Content, "21.5");
        if accept {
            answer.add_option(CoapOption::Observe, encode_uint(0));
        }
        self.server.respond(self.now, id, answer);
        self.run();
        token
    }

    fn notify(&mut self, token: &Token, value: &str) -> bool {
        let sent = self.server.notify(
            self.now,
            CLIENT,
            token,
            response(ResponseType::Content, value),
        );
        self.run();
        sent
    }
}

fn payloads(ps: &[Packet]) -> Vec<String> {
    ps.iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}

#[test]
fn a_registered_client_gets_each_notification_in_order() {
    let mut pair = Pair::new(Config::default());
    let token = pair.register(true);
    let (_, first) = pair.responses.pop().expect("the registration's answer");
    assert!(
        observe_of(&first).is_some(),
        "the answer says it is observed"
    );
    assert!(pair.client.is_observing(SERVER, &token));
    assert_eq!(pair.server.observers(), 1);
    for v in ["22.0", "22.5", "23.0"] {
        assert!(pair.notify(&token, v));
    }
    assert_eq!(payloads(&pair.notifications), ["22.0", "22.5", "23.0"]);
    let seqs: Vec<u32> = pair
        .notifications
        .iter()
        .map(|p| observe_of(p).expect("numbered"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "numbers follow each other: {seqs:?}"
    );
    assert!(seqs[0] > observe_of(&first).unwrap());
    assert!(pair.notifications.iter().all(|p| p.get_token() == token));
}

#[test]
fn notifications_go_non_with_a_con_every_so_often() {
    let config = Config {
        observe_con_every: 4,
        ..Config::default()
    };
    let mut pair = Pair::new(config);
    let token = pair.register(true);
    pair.server_sent.clear();
    for i in 0..12 {
        assert!(pair.notify(&token, &i.to_string()));
    }
    let types: Vec<MessageType> = pair
        .server_sent
        .iter()
        .filter(|(_, obs, _)| obs.is_some())
        .map(|(t, _, _)| *t)
        .collect();
    let cons = types
        .iter()
        .filter(|t| **t == MessageType::Confirmable)
        .count();
    assert_eq!(types.len(), 12);
    assert_eq!(cons, 3, "every 4th is CON: {types:?}");
    assert_eq!(pair.notifications.len(), 12);
}

#[test]
fn a_con_goes_out_when_the_last_one_is_old() {
    let config = Config {
        observe_con_every: 1000,
        observe_con_after: Duration::from_secs(30),
        ..Config::default()
    };
    let mut pair = Pair::new(config);
    let token = pair.register(true);
    pair.server_sent.clear();
    pair.notify(&token, "a");
    pair.advance(Duration::from_secs(31));
    pair.notify(&token, "b");
    let types: Vec<MessageType> = pair.server_sent.iter().map(|(t, _, _)| *t).collect();
    assert_eq!(
        types,
        [MessageType::NonConfirmable, MessageType::Confirmable]
    );
}

#[test]
fn a_client_that_stopped_observing_answers_rst_and_is_deregistered() {
    let mut pair = Pair::new(Config::default());
    let token = pair.register(true);
    assert!(pair.notify(&token, "1"));
    assert!(pair.client.stop_observing(SERVER, &token));
    // The NON notification gets a RST, which ends the registration.
    assert!(pair.notify(&token, "2"));
    assert_eq!(pair.deregistered, [(CLIENT, token.clone())]);
    assert_eq!(pair.server.observers(), 0);
    assert!(!pair.notify(&token, "3"), "no longer registered");
    assert_eq!(payloads(&pair.notifications), ["1"]);
}

#[test]
fn a_client_that_stopped_observing_rsts_a_con_notification_too() {
    let config = Config {
        observe_con_every: 1,
        ..Config::default()
    };
    let mut pair = Pair::new(config);
    let token = pair.register(true);
    pair.client.stop_observing(SERVER, &token);
    assert!(pair.notify(&token, "1"));
    assert_eq!(pair.deregistered, [(CLIENT, token)]);
}

#[test]
fn an_unacknowledged_con_notification_is_given_up_and_the_client_deregistered() {
    let config = Config {
        observe_con_every: 1,
        ..Config::default()
    };
    let mut pair = Pair::new(config);
    let token = pair.register(true);
    pair.drop_to_server = true;
    assert!(pair.notify(&token, "1"));
    for _ in 0..200 {
        pair.advance(Duration::from_secs(1));
    }
    assert_eq!(pair.deregistered, [(CLIENT, token.clone())]);
    assert!(!pair.notify(&token, "2"));
}

#[test]
fn a_newer_state_takes_the_place_of_a_con_notification_in_flight() {
    let config = Config {
        observe_con_every: 1,
        adaptive_rto: false,
        ..Config::default()
    };
    let mut pair = Pair::new(config);
    let token = pair.register(true);
    pair.drop_to_server = true; // the ACKs are lost
    pair.notify(&token, "old");
    pair.server_sent.clear();
    pair.notify(&token, "new");
    pair.notify(&token, "newer");
    assert!(
        pair.server_sent.is_empty(),
        "nothing goes before the retransmission"
    );
    pair.advance(Duration::from_secs(4));
    let resent: Vec<String> = pair
        .server_sent
        .iter()
        .map(|(_, _, p)| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert_eq!(resent, ["newer"], "only the newest state is retransmitted");
    // ... and still within the first's retransmission budget: 4 retransmissions in all.
    for _ in 0..120 {
        pair.advance(Duration::from_secs(1));
    }
    let retransmitted = pair
        .server_sent
        .iter()
        .filter(|(t, _, _)| *t == MessageType::Confirmable)
        .count();
    assert_eq!(retransmitted, 4);
    assert_eq!(pair.deregistered.len(), 1);
}

#[test]
fn observe_1_or_a_plain_get_on_the_token_deregisters() {
    for observe in [Some(1), None] {
        let mut pair = Pair::new(Config::default());
        let token = pair.register(true);
        let mut get = request(RequestType::Get, "gpsflowtemp/pi-1", None, Vec::new());
        if let Some(v) = observe {
            get.add_option(CoapOption::Observe, encode_uint(v));
        }
        get.set_token(token.clone());
        get.header.set_type(MessageType::Confirmable);
        get.header.message_id = 4242;
        pair.server
            .handle_datagram(pair.now, CLIENT, &get.to_bytes().unwrap());
        pair.run();
        assert_eq!(pair.deregistered, [(CLIENT, token.clone())], "{observe:?}");
        assert_eq!(
            pair.requests.len(),
            1,
            "the application still answers the GET"
        );
    }
}

#[test]
fn an_answer_without_observe_registers_nobody() {
    let mut pair = Pair::new(Config::default());
    let token = pair.register(false);
    let (_, first) = pair.responses.pop().unwrap();
    assert_eq!(observe_of(&first), None);
    assert_eq!(pair.server.observers(), 0);
    assert!(!pair.client.is_observing(SERVER, &token));
    assert!(!pair.notify(&token, "1"));
}

#[test]
fn an_error_answer_never_carries_observe() {
    let mut pair = Pair::new(Config::default());
    let mut get = request(RequestType::Get, "x", None, Vec::new());
    get.add_option(CoapOption::Observe, encode_uint(0));
    let token = pair.client.request(pair.now, SERVER, get, true);
    pair.run();
    let (id, _) = pair.requests.pop().unwrap();
    let mut answer = response(ResponseType::NotFound, "no");
    answer.add_option(CoapOption::Observe, encode_uint(0));
    pair.server.respond(pair.now, id, answer);
    pair.run();
    assert_eq!(observe_of(&pair.responses[0].1), None);
    assert!(!pair.notify(&token, "1"));
}

#[test]
fn a_stale_notification_is_dropped_and_a_final_one_ends_the_observation() {
    let mut pair = Pair::new(Config::default());
    let token = pair.register(true);
    let seq = observe_of(&pair.responses[0].1).unwrap();
    let send = |pair: &mut Pair, mid: u16, observe: Option<u32>, code, body: &str| {
        let mut p = response(code, body);
        p.header.set_type(MessageType::NonConfirmable);
        p.header.message_id = mid;
        p.set_token(token.clone());
        if let Some(v) = observe {
            p.add_option(CoapOption::Observe, encode_uint(v));
        }
        pair.client
            .handle_datagram(pair.now, SERVER, &p.to_bytes().unwrap());
        pair.run();
    };
    send(
        &mut pair,
        100,
        Some(seq + 5),
        ResponseType::Content,
        "newer",
    );
    send(
        &mut pair,
        101,
        Some(seq + 3),
        ResponseType::Content,
        "older",
    );
    send(&mut pair, 102, None, ResponseType::NotFound, "gone");
    assert_eq!(payloads(&pair.notifications), ["newer", "gone"]);
    assert!(!pair.client.is_observing(SERVER, &token));
    // A notification after the end gets a RST (which the server, that never sent it, counts
    // as unmatched).
    let before = pair.server.stats().unmatched;
    send(&mut pair, 103, Some(seq + 9), ResponseType::Content, "late");
    assert_eq!(pair.server.stats().unmatched, before + 1);
    assert_eq!(payloads(&pair.notifications), ["newer", "gone"]);
}

#[test]
fn forgetting_the_peer_deregisters_its_observations() {
    let mut pair = Pair::new(Config::default());
    let token = pair.register(true);
    pair.server.forget_peer(CLIENT);
    pair.run();
    assert_eq!(pair.deregistered, [(CLIENT, token.clone())]);
    assert!(!pair.notify(&token, "1"));
}

#[test]
fn an_error_notification_is_the_last() {
    let mut pair = Pair::new(Config::default());
    let token = pair.register(true);
    assert!(pair.server.notify(
        pair.now,
        CLIENT,
        &token,
        response(ResponseType::NotFound, "gone")
    ));
    pair.run();
    assert_eq!(payloads(&pair.notifications), ["gone"]);
    assert_eq!(observe_of(&pair.notifications[0]), None);
    assert_eq!(pair.server.observers(), 0);
    assert!(!pair.client.is_observing(SERVER, &token));
    assert!(!pair.notify(&token, "1"));
}

#[test]
fn registering_again_on_the_same_token_keeps_the_numbers_increasing() {
    let mut pair = Pair::new(Config::default());
    let token = pair.register(true);
    pair.notify(&token, "1");
    let before = observe_of(pair.notifications.last().unwrap()).unwrap();
    // The same GET again (a new message id, the same token), as libcoap sends it.
    let mut get = request(RequestType::Get, "gpsflowtemp/pi-1", None, Vec::new());
    get.add_option(CoapOption::Observe, encode_uint(0));
    get.set_token(token.clone());
    get.header.set_type(MessageType::Confirmable);
    get.header.message_id = 777;
    pair.server
        .handle_datagram(pair.now, CLIENT, &get.to_bytes().unwrap());
    pair.run();
    let (id, _) = pair.requests.pop().unwrap();
    let mut answer = response(ResponseType::Content, "again");
    answer.add_option(CoapOption::Observe, encode_uint(0));
    pair.server.respond(pair.now, id, answer);
    pair.run();
    assert_eq!(pair.server.observers(), 1);
    let again = pair.server_sent.last().unwrap().1.unwrap();
    assert_eq!(again, before + 1);
    pair.notify(&token, "2");
    assert_eq!(
        observe_of(pair.notifications.last().unwrap()),
        Some(before + 2)
    );
}

#[test]
fn a_later_block_get_neither_registers_nor_ends_the_observation() {
    let mut pair = Pair::new(Config::default());
    let token = pair.register(true);
    let mut get = request(RequestType::Get, "gpsflowtemp/pi-1", None, Vec::new());
    get.add_option(CoapOption::Observe, encode_uint(0));
    get.add_option(
        CoapOption::Block2,
        gateway_coap::Block {
            num: 1,
            more: false,
            szx: 6,
        }
        .encode(),
    );
    get.set_token(token.clone());
    get.header.set_type(MessageType::Confirmable);
    get.header.message_id = 778;
    pair.server
        .handle_datagram(pair.now, CLIENT, &get.to_bytes().unwrap());
    pair.run();
    let (id, _) = pair.requests.pop().unwrap();
    // The application answers the block (without Observe: it is no registration).
    pair.server
        .respond(pair.now, id, response(ResponseType::Content, "block 1"));
    pair.run();
    assert!(pair.deregistered.is_empty());
    assert!(pair.notify(&token, "still"));
}

#[test]
fn a_newer_state_goes_as_soon_as_the_con_in_flight_is_acknowledged() {
    let config = Config {
        observe_con_every: 1,
        ..Config::default()
    };
    let mut pair = Pair::new(config);
    let token = pair.register(true);
    // Two states before anything moves: the first goes CON, the second waits for its ACK.
    let content = |v: &str| response(ResponseType::Content, v);
    assert!(pair.server.notify(pair.now, CLIENT, &token, content("a")));
    assert!(pair.server.notify(pair.now, CLIENT, &token, content("b")));
    assert!(pair.server.notify(pair.now, CLIENT, &token, content("c")));
    pair.run();
    // No time passed: "c" went when "a" was acknowledged, "b" was never sent.
    assert_eq!(payloads(&pair.notifications), ["a", "c"]);
}
