//! An established session hands its records over from OpenSSL to the crate's own record layer
//! once the handshake is done (see `Session::taken_over`), at either end. Tested end to end
//! over in-memory datagrams: every AEAD suite, resumption, replays, tampering, reordering, a
//! lost final flight of either end, and closing from either side.

use gateway_dtls::{
    client_context, server_context, ClientSettings, DtlsError, Psk, ServerSettings, Session, State,
};
use openssl::ssl::{SslContext, SslSession};
use std::time::{Duration, Instant};

mod common;
use common::{Link, Pki};

#[test]
fn every_aead_suite_is_taken_over_and_carries_data_both_ways() {
    let pki = Pki::new();
    for suite in [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ] {
        let mut link = Link::new(&pki.client(suite), pki.server(), None);
        link.handshake();
        assert!(
            link.client.taken_over(),
            "{suite}: the client's still OpenSSL's"
        );
        assert_eq!(link.client.cipher(), Some(suite));
        assert_eq!(link.client.version(), Some("DTLSv1.2"));
        let cert = link
            .client
            .peer_certificate()
            .expect("the server's certificate");
        assert!(cert.starts_with("CN=server"), "{cert}");
        let server = link.server();
        assert!(server.taken_over(), "{suite}: still OpenSSL's");
        assert_eq!(server.cipher(), Some(suite));
        assert_eq!(server.peer_identity().as_deref(), Some("dev-1"));
        assert!(!server.resumed());
        for i in 0..100u32 {
            let up = format!("reading {i} of {suite}").into_bytes();
            let down = vec![i as u8; 1 + (i as usize * 7) % 1100];
            let (at_server, at_client) = link.exchange(&up, &down);
            assert_eq!(at_server, [up], "{suite}: message {i} up");
            assert_eq!(at_client, [down], "{suite}: message {i} down");
        }
    }
}

#[test]
fn a_device_limited_to_rfc_7252s_mandatory_suite_is_served_by_default() {
    // RFC 7252 9.1.3.3 (and RFC 7925): TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8, all a tinydtls
    // device may offer. The default server list has it (last); its records stay OpenSSL's.
    let pki = Pki::new();
    let mut link = Link::new(&pki.client("ECDHE-ECDSA-AES128-CCM8"), pki.server(), None);
    link.handshake();
    assert_eq!(link.server().cipher(), Some("ECDHE-ECDSA-AES128-CCM8"));
    assert_eq!(link.server().peer_identity().as_deref(), Some("dev-1"));
    link.carries_data_both_ways();
}

#[test]
fn the_servers_order_of_suites_decides() {
    // A device that lists CCM8 first still gets what the server prefers (and the crate's own
    // record layer with it), not the device's first choice.
    let pki = Pki::new();
    let mut link = Link::new(
        &pki.client("ECDHE-ECDSA-AES128-CCM8:ECDHE-ECDSA-AES128-GCM-SHA256"),
        pki.server(),
        None,
    );
    link.handshake();
    assert_eq!(
        link.server().cipher(),
        Some("ECDHE-ECDSA-AES128-GCM-SHA256")
    );
    assert!(link.server().taken_over());
}

#[test]
fn a_suite_it_does_not_protect_stays_with_openssl() {
    let psk = |id: &str| Psk {
        identity: id.into(),
        key: b"0123456789abcdef".to_vec(),
    };
    let sctx = server_context(&ServerSettings {
        psk: [("dev-1".to_owned(), psk("dev-1").key)].into(),
        ciphers: "ECDHE-PSK-AES128-CBC-SHA256".into(),
        mtu: 1232,
        ..Default::default()
    })
    .unwrap();
    let cctx = client_context(&ClientSettings {
        psk: Some(psk("dev-1")),
        ciphers: "ECDHE-PSK-AES128-CBC-SHA256".into(),
        mtu: 1232,
        ..Default::default()
    })
    .unwrap();
    let mut link = Link::new(&cctx, sctx, None);
    link.handshake();
    assert!(!link.server().taken_over());
    assert_eq!(link.server().peer_identity().as_deref(), Some("dev-1"));
    link.carries_data_both_ways();
}

#[test]
fn replayed_tampered_and_foreign_records_are_dropped_and_reordered_ones_kept() {
    let pki = Pki::new();
    let mut link = Link::new(&pki.client(""), pki.server(), None);
    link.handshake();
    assert!(link.server().taken_over());
    let now = link.now;
    let mut sent = Vec::new();
    for i in 0..5u8 {
        link.client.send(&[i]).unwrap();
        sent.push(link.client.poll_transmit().unwrap());
    }
    let server = link.server();
    // Reordered within the window: each is taken once.
    for i in [4, 0, 2, 1, 3] {
        assert_eq!(server.handle_datagram(now, &sent[i]), [vec![i as u8]]);
    }
    for d in &sent {
        assert!(server.handle_datagram(now, d).is_empty(), "a replay");
    }
    link.client.send(b"fresh").unwrap();
    let fresh = link.client.poll_transmit().unwrap();
    for at in [0, 1, 2, 3, 11, 13, 20, fresh.len() - 1] {
        let mut bad = fresh.clone();
        bad[at] ^= 0x40; // type, version (2), epoch, sequence number, nonce, tag
        assert!(
            link.server().handle_datagram(now, &bad).is_empty(),
            "byte {at} changed"
        );
    }
    assert!(link.server().handle_datagram(now, &fresh[..20]).is_empty());
    assert_eq!(
        link.server().handle_datagram(now, &fresh),
        [b"fresh".to_vec()]
    );
    assert!(link.server().is_established());
}

#[test]
fn a_lost_final_flight_is_sent_again_when_the_client_repeats_its_finished() {
    let pki = Pki::new();
    let mut link = Link::new(&pki.client(""), pki.server(), None);
    for _ in 0..10 {
        link.deliver_up();
        let back = link.server_out();
        if link.server.as_ref().is_some_and(Session::is_established) {
            // The server's ChangeCipherSpec and Finished are lost.
            assert!(!back.is_empty());
            break;
        }
        link.deliver_down(&back);
    }
    assert!(link.server().taken_over());
    assert_eq!(*link.client.state(), State::Handshaking);
    // The client's handshake timer runs on the real clock (1 s for a first flight).
    let wait = link
        .client
        .timeout()
        .expect("the client's flight timer runs");
    std::thread::sleep(wait + Duration::from_millis(20));
    link.client.handle_timeout(Instant::now());
    // The client's flight again, its Finished last.
    let flight: Vec<Vec<u8>> = std::iter::from_fn(|| link.client.poll_transmit()).collect();
    let now = link.now;
    for d in &flight {
        link.server().handle_datagram(now, d);
    }
    let again = link.server_out();
    assert!(!again.is_empty(), "the server sends its last flight again");
    link.deliver_down(&again);
    assert!(link.client.is_established(), "{:?}", link.client.state());
    link.carries_data_both_ways();
    // With the client's first record in, the flight is forgotten: the client's flight
    // replayed later gets nothing back.
    let later = link.now + Duration::from_secs(1);
    for d in &flight {
        link.server().handle_datagram(later, d);
    }
    assert!(link.server_out().is_empty());
    assert!(link.server().is_established());
}

/// The device closes: the server reads its close_notify, and answers with one of its own.
fn device_closes(link: &mut Link) {
    link.client.close();
    link.deliver_up();
    assert_eq!(*link.server().state(), State::Closed(DtlsError::Closed));
    let bye = link.server_out();
    assert_eq!(bye.len(), 1, "one close_notify");
    assert_eq!(bye[0][0], 21, "an alert record");
}

/// A session of a first handshake, which the device then closed: one to resume.
fn closed_session(cctx: &SslContext, sctx: &SslContext) -> SslSession {
    let mut first = Link::new(cctx, sctx.clone(), None);
    first.handshake();
    let ticket = first.client.ssl_session().expect("a session to resume");
    device_closes(&mut first);
    ticket
}

#[test]
fn a_taken_over_session_can_be_resumed_and_closed_from_either_side() {
    let pki = Pki::new();
    let (cctx, sctx) = (pki.client(""), pki.server());
    let ticket = closed_session(&cctx, &sctx);

    let mut second = Link::new(&cctx, sctx, Some(&ticket));
    second.handshake();
    let server = second.server();
    assert!(server.resumed(), "the session was resumed");
    assert!(server.taken_over());
    assert_eq!(server.peer_identity().as_deref(), Some("dev-1"));
    second.carries_data_both_ways();
    // The server closes: the device reads its close_notify.
    second.server().close();
    let bye = second.server_out();
    assert!(second.deliver_down(&bye).is_empty());
    assert_eq!(*second.client.state(), State::Closed(DtlsError::Closed));
}

/// A session OpenSSL carries (CCM8, which the crate's records do not protect): the server
/// answers the device's close_notify, and so keeps the session resumable. Before, it freed
/// the session without one, OpenSSL took it out of the cache, and a constrained device that
/// closed cleanly paid a full handshake (its energy and airtime) the next time.
#[test]
fn a_close_notify_is_answered_and_the_session_stays_resumable_with_ccm8() {
    let pki = Pki::new();
    let (cctx, sctx) = (pki.client("ECDHE-ECDSA-AES128-CCM8"), pki.server());
    let mut first = Link::new(&cctx, sctx.clone(), None);
    first.handshake();
    assert!(!first.server().taken_over());
    let ticket = first.client.ssl_session().expect("a session to resume");
    device_closes(&mut first);
    drop(first);
    let mut second = Link::new(&cctx, sctx, Some(&ticket));
    second.handshake();
    assert!(second.server().resumed(), "the session was resumed");
}

#[test]
fn a_session_copied_before_a_link_ends_without_a_close_is_still_offered_and_resumed() {
    let pki = Pki::new();
    let (cctx, sctx) = (pki.client(""), pki.server());
    let mut first = Link::new(&cctx, sctx.clone(), None);
    first.handshake();
    let copy = first.client.ssl_session().expect("a session to resume");
    // The device gives up on the link without a close_notify: OpenSSL marks the link's own
    // session not resumable as it frees it.
    drop(first);
    let mut second = Link::new(&cctx, sctx, Some(&copy));
    second.handshake();
    assert!(
        second.server().resumed(),
        "the copy was offered and resumed"
    );
    assert_eq!(second.server().peer_identity().as_deref(), Some("dev-1"));
}

#[test]
fn replayed_and_tampered_records_are_dropped_by_the_client_too() {
    let pki = Pki::new();
    let mut link = Link::new(&pki.client(""), pki.server(), None);
    link.handshake();
    assert!(link.client.taken_over());
    let now = link.now;
    let mut sent = Vec::new();
    for i in 0..3u8 {
        link.server().send(&[i]).unwrap();
        sent.extend(link.server_out());
    }
    for i in [2, 0, 1] {
        assert_eq!(link.client.handle_datagram(now, &sent[i]), [vec![i as u8]]);
    }
    for d in &sent {
        assert!(link.client.handle_datagram(now, d).is_empty(), "a replay");
    }
    link.server().send(b"fresh").unwrap();
    let fresh = link.server_out().remove(0);
    for at in [0, 3, 11, 13, 20, fresh.len() - 1] {
        let mut bad = fresh.clone();
        bad[at] ^= 0x40;
        assert!(
            link.client.handle_datagram(now, &bad).is_empty(),
            "byte {at} changed"
        );
    }
    assert_eq!(
        link.client.handle_datagram(now, &fresh),
        [b"fresh".to_vec()]
    );
    assert!(link.client.is_established());
}

/// After an abbreviated handshake the client sends the last flight: lost, the server repeats
/// its own (on OpenSSL's timer), and the client, whose records are its own by then, must send
/// its ChangeCipherSpec and Finished again.
#[test]
fn a_clients_lost_final_flight_is_sent_again_when_the_server_repeats_its_finished() {
    let pki = Pki::new();
    let (cctx, sctx) = (pki.client(""), pki.server());
    let ticket = closed_session(&cctx, &sctx);

    let mut link = Link::new(&cctx, sctx, Some(&ticket));
    let mut lost = Vec::new();
    for _ in 0..10 {
        link.deliver_up();
        let back = link.server_out();
        link.deliver_down(&back);
        if link.client.is_established() {
            // The client's ChangeCipherSpec and Finished are lost.
            lost = std::iter::from_fn(|| link.client.poll_transmit()).collect();
            break;
        }
    }
    assert!(!lost.is_empty(), "the client's last flight");
    assert!(link.client.taken_over());
    assert!(link.client.resumed());
    assert_eq!(*link.server().state(), State::Handshaking);
    let wait = link
        .server()
        .timeout()
        .expect("the server's flight timer runs");
    std::thread::sleep(wait + Duration::from_millis(20));
    link.server().handle_timeout(Instant::now());
    let again = link.server_out();
    assert!(!again.is_empty(), "the server sends its flight again");
    assert!(link.deliver_down(&again).is_empty());
    let resent: Vec<Vec<u8>> = std::iter::from_fn(|| link.client.poll_transmit()).collect();
    assert_eq!(
        resent, lost,
        "the client sends its last flight again, as it was"
    );
    let now = link.now;
    for d in &resent {
        link.server().handle_datagram(now, d);
    }
    assert!(
        link.server().is_established(),
        "{:?}",
        link.server().state()
    );
    assert!(link.server().resumed());
    link.carries_data_both_ways();
    // With the server's first record in, the flight is forgotten: the server's flight
    // replayed later gets nothing back.
    let later = link.now + Duration::from_secs(1);
    for d in &again {
        link.client.handle_datagram(later, d);
    }
    assert!(link.client.poll_transmit().is_none());
    assert!(link.client.is_established());
}

/// The handshake run by hand: every datagram the client sent, in order, and the link at its end.
/// `junk`, if any, goes to the server in the client's name once its session exists.
fn handshake_keeping_the_clients_datagrams(link: &mut Link, junk: Option<&[u8]>) -> Vec<Vec<u8>> {
    let mut up = Vec::new();
    let mut junk = junk;
    for _ in 0..20 {
        let out: Vec<Vec<u8>> = std::iter::from_fn(|| link.client.poll_transmit()).collect();
        for d in &out {
            if link.server.is_some() {
                if let Some(j) = junk.take() {
                    link.client_datagram(j);
                }
            }
            link.client_datagram(d);
        }
        up.extend(out);
        let back = link.server_out();
        link.deliver_down(&back);
        if link.client.is_established() && link.server.as_ref().is_some_and(Session::is_established)
        {
            return up;
        }
    }
    panic!("no handshake");
}

#[test]
fn the_clients_finished_replayed_after_the_take_over_is_not_taken() {
    let pki = Pki::new();
    let mut link = Link::new(&pki.client(""), pki.server(), None);
    let up = handshake_keeping_the_clients_datagrams(&mut link, None);
    assert!(link.server().taken_over());
    // The client's last datagram carries its Finished (epoch 1), which OpenSSL read before
    // the take-over. Taken again, it would count as the client's (holding off the idle
    // timeout) and have the server's last flight sent again.
    let later = link.now + Duration::from_secs(1);
    let finished = up.last().unwrap();
    assert!(link.server().handle_datagram(later, finished).is_empty());
    assert!(
        link.server_out().is_empty(),
        "the replayed Finished had the server's flight sent again"
    );
    let (at_server, _) = link.exchange(b"up", b"down");
    assert_eq!(at_server, [b"up".to_vec()]);
}

/// In a resumed handshake the client's Finished comes last: a client may put its first
/// request in the same datagram.
#[test]
fn data_that_comes_with_the_clients_finished_is_taken_once_and_the_session_taken_over() {
    let pki = Pki::new();
    let (cctx, sctx) = (pki.client(""), pki.server());
    let ticket = closed_session(&cctx, &sctx);
    let mut link = Link::new(&cctx, sctx, Some(&ticket));
    // Until the client has the server's Finished; its own final flight is held back.
    for _ in 0..20 {
        if link.client.is_established() {
            break;
        }
        link.deliver_up();
        let back = link.server_out();
        link.deliver_down(&back);
    }
    assert!(link.client.is_established());
    assert!(!link.server().is_established());
    let mut last: Vec<Vec<u8>> = std::iter::from_fn(|| link.client.poll_transmit()).collect();
    link.client.send(b"early").unwrap();
    let data = link.client.poll_transmit().unwrap();
    // The Finished and the first request in one datagram.
    let mut both = last.pop().expect("the client's final flight");
    both.extend_from_slice(&data);
    for d in &last {
        link.client_datagram(d);
    }
    let now = link.now;
    assert_eq!(
        link.server().handle_datagram(now, &both),
        [b"early".to_vec()]
    );
    assert!(link.server().is_established());
    assert!(link.server().resumed());
    assert!(
        link.server().taken_over(),
        "a session whose first data came with the Finished stayed with OpenSSL (30 KB)"
    );
    assert!(
        link.server().handle_datagram(now, &both).is_empty(),
        "a replay"
    );
    assert!(
        link.server().handle_datagram(now, &data).is_empty(),
        "a replay"
    );
    link.carries_data_both_ways();
}

#[test]
fn records_after_an_alert_in_the_same_datagram_are_not_taken() {
    let pki = Pki::new();
    let mut link = Link::new(&pki.client(""), pki.server(), None);
    link.handshake();
    assert!(link.server().taken_over());
    link.client.send(b"before").unwrap();
    let before = link.client.poll_transmit().unwrap();
    link.client.send(b"after").unwrap();
    let after = link.client.poll_transmit().unwrap();
    link.client.close();
    let close_notify = link.client.poll_transmit().unwrap();
    let mut datagram = before;
    datagram.extend_from_slice(&close_notify);
    datagram.extend_from_slice(&after);
    let now = link.now;
    assert_eq!(
        link.server().handle_datagram(now, &datagram),
        [b"before".to_vec()],
        "what follows the close_notify is not the session's"
    );
    assert!(!link.server().is_established());
}

/// Protected records forged in the client's name during its handshake (here 64 empty ones of
/// epoch 1, which OpenSSL drops) fill what is kept for the replay window before the client's
/// Finished comes: the session stays with OpenSSL, whose window knows the Finished, instead of
/// being taken over with a window that does not.
#[test]
fn records_forged_during_the_handshake_do_not_let_the_finished_be_replayed() {
    let pki = Pki::new();
    let mut link = Link::new(&pki.client(""), pki.server(), None);
    let mut junk = Vec::new();
    for seq in 1000u64..1064 {
        junk.extend_from_slice(&[23, 0xfe, 0xfd, 0, 1]);
        junk.extend_from_slice(&seq.to_be_bytes()[2..]);
        junk.extend_from_slice(&[0, 0]);
    }
    let up = handshake_keeping_the_clients_datagrams(&mut link, Some(&junk));
    let later = link.now + Duration::from_secs(1);
    let finished = up.last().unwrap();
    assert!(link.server().handle_datagram(later, finished).is_empty());
    assert!(
        link.server_out().is_empty(),
        "the replayed Finished had the server's flight sent again"
    );
    link.carries_data_both_ways();
}
