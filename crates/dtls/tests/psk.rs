//! PSK handshakes: a peer cannot learn which identities a server knows; and the suites
//! without forward secrecy (plain PSK among them) are named. Real OpenSSL handshakes over
//! in-memory datagrams.

mod common;
use common::{Link, Pki};
use gateway_dtls::{
    client_context, server_context, without_forward_secrecy, ClientSettings, DtlsError, Psk,
    ServerSettings,
};
use std::time::Duration;

/// What a server shows a client of `identity` with `key`: the length of each datagram it sent,
/// whether the client's session failed, and the server session's error once its handshake is
/// past its time (`None`: established).
fn attempt(identity: &str, key: &[u8]) -> (Vec<usize>, bool, Option<DtlsError>) {
    let sctx = server_context(&ServerSettings {
        psk: [("dev-1".to_owned(), b"0123456789abcdef".to_vec())].into(),
        mtu: 1232,
        ..Default::default()
    })
    .unwrap();
    let cctx = client_context(&ClientSettings {
        psk: Some(Psk {
            identity: identity.into(),
            key: key.to_vec(),
        }),
        mtu: 1232,
        ..Default::default()
    })
    .unwrap();
    let mut link = Link::new(&cctx, sctx, None);
    let mut sent = Vec::new();
    for _ in 0..10 {
        link.deliver_up();
        let back = link.server_out();
        sent.extend(back.iter().map(Vec::len));
        link.deliver_down(&back);
    }
    let client_failed = matches!(link.client.state(), gateway_dtls::State::Closed(_));
    let now = link.now + Duration::from_secs(10);
    let server = link.server();
    server.check_deadline(now, Duration::from_secs(10));
    let e = match server.state().clone() {
        gateway_dtls::State::Closed(e) => Some(e),
        gateway_dtls::State::Established => None,
        s => panic!("the server's handshake goes on: {s:?}"),
    };
    (sent, client_failed, e)
}

/// An identity the server does not know is answered as a known one with a wrong key is: the
/// same datagrams, then silence (no unknown_psk_identity alert), so that nobody can try
/// names to learn which devices exist. The server's own log says which it was.
#[test]
fn an_unknown_identity_looks_like_a_wrong_key_to_the_peer() {
    let (good, good_failed, good_e) = attempt("dev-1", b"0123456789abcdef");
    assert!(!good_failed && good_e.is_none(), "{good_e:?}");
    let (wrong, wrong_failed, wrong_e) = attempt("dev-1", b"0123456789abcdeX");
    let (unknown, unknown_failed, unknown_e) = attempt("dev-2", b"0123456789abcdef");
    assert_eq!(
        unknown, wrong,
        "the server answered an unknown identity otherwise"
    );
    assert!(!wrong_failed && !unknown_failed, "the client was told");
    assert!(good.len() > wrong.len(), "{good:?} {wrong:?}");
    assert!(
        matches!(wrong_e, Some(DtlsError::HandshakeTimeout(_))),
        "{wrong_e:?}"
    );
    let unknown_e = unknown_e.expect("a failed handshake").to_string();
    assert!(
        unknown_e.contains("the PSK identity \"dev-2\" is not known"),
        "{unknown_e}"
    );
}

/// The suites of a cipher list without forward secrecy are named, for the plugins to warn
/// about; the default lists have none.
#[test]
fn suites_without_forward_secrecy_are_named_and_the_defaults_have_none() {
    let server = |ciphers: &str| {
        server_context(&ServerSettings {
            psk: [("dev-1".to_owned(), b"0123456789abcdef".to_vec())].into(),
            ciphers: ciphers.into(),
            mtu: 1232,
            ..Default::default()
        })
        .unwrap()
    };
    let none: Vec<String> = Vec::new();
    assert_eq!(without_forward_secrecy(&server("")), none);
    assert_eq!(
        without_forward_secrecy(&server("ECDHE-PSK-CHACHA20-POLY1305:PSK-AES128-CCM8")),
        vec!["PSK-AES128-CCM8"]
    );
    let pki = Pki::new();
    assert_eq!(without_forward_secrecy(&pki.server()), none);
    assert_eq!(without_forward_secrecy(&pki.client("")), none);
    assert_eq!(
        without_forward_secrecy(&pki.client("ECDHE-ECDSA-AES128-GCM-SHA256:AES128-SHA")),
        vec!["AES128-SHA"]
    );
}
