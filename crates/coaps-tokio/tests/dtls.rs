//! Real DTLS handshakes over real UDP sockets on 127.0.0.1: success, every failure case, the
//! cookie exchange, PSK, mutual authentication, a client that restarts on the same port, and a
//! block-wise request.

use gateway_coaps_tokio::{Client, RequestError, Server};
use gateway_dtls::{ClientSettings, DtlsError, Psk};
use std::{collections::HashMap, path::Path, time::Duration};

mod common;
use common::*;

#[test]
fn handshake_with_a_cookie_exchange_then_a_request() {
    let pki = Pki::new();
    let mut server = Server::start(server_opts(&pki, "server")).unwrap();
    let app = serve(&mut server);
    let client = Client::start(client_opts(
        server.local_addr,
        &pki.path("ca.pem"),
        "localhost",
    ))
    .unwrap();
    let r = client
        .request(post(b"hello".to_vec()), Duration::from_secs(5))
        .unwrap();
    assert!(changed(&r), "{r:?}");
    let r = client
        .request(post(vec![7; 3000]), Duration::from_secs(5))
        .unwrap();
    assert_eq!(r.payload, b"3000 None", "a block-wise body arrives whole");
    assert_eq!(
        server
            .stats
            .cookies_sent
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one HelloVerifyRequest"
    );
    assert_eq!(
        server
            .stats
            .sessions
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    drop(client);
    drop(server);
    assert_eq!(app.join().unwrap().len(), 2);
}

#[test]
fn the_ip_address_of_the_uri_is_verified_too() {
    let pki = Pki::new();
    let mut server = Server::start(server_opts(&pki, "server")).unwrap();
    let _app = serve(&mut server);
    let client = Client::start(client_opts(
        server.local_addr,
        &pki.path("ca.pem"),
        "127.0.0.1",
    ))
    .unwrap();
    assert!(changed(
        &client
            .request(post(b"x".to_vec()), Duration::from_secs(5))
            .unwrap()
    ));
}

fn refused(pki: &Pki, cert: &str, ca: &str, host: &str) -> RequestError {
    let server = Server::start(server_opts(pki, cert)).unwrap();
    let client = Client::start(client_opts(server.local_addr, &pki.path(ca), host)).unwrap();
    let e = client
        .request(post(b"secret".to_vec()), Duration::from_secs(5))
        .unwrap_err();
    assert!(
        server.requests.try_recv().is_err(),
        "no data reached the server"
    );
    e
}

#[test]
fn an_unknown_ca_is_refused_and_says_so() {
    let pki = Pki::new();
    let e = refused(&pki, "server", "rogue-ca.pem", "localhost");
    assert_refused(&e, "unable to get local issuer certificate (CN=");
}

#[test]
fn a_host_name_mismatch_is_refused_and_says_so() {
    let pki = Pki::new();
    let e = refused(&pki, "other", "ca.pem", "localhost");
    assert_refused(&e, "hostname mismatch (CN=");
}

#[test]
fn an_expired_certificate_is_refused_and_says_so() {
    let pki = Pki::new();
    // Our server starts with one (its dates are a warning: a clock wrong at start may be set a
    // minute later), and the device refuses it.
    let mut server = Server::start(server_opts(&pki, "expired")).unwrap();
    let _app = serve(&mut server);
    let client = Client::start(client_opts(
        server.local_addr,
        &pki.path("ca.pem"),
        "localhost",
    ))
    .unwrap();
    let e = client
        .request(post(b"secret".to_vec()), Duration::from_secs(5))
        .unwrap_err();
    assert_refused(&e, "certificate has expired (CN=");
    // So is libcoap's server presenting one (it does not check its own).
    if !gateway_test_support::libcoap::have_libcoap() {
        return;
    }
    let port = gateway_test_support::coaps::free_port();
    let (cert, key) = (pki.path("expired.pem"), pki.path("expired.key"));
    let _server = gateway_test_support::libcoap::server_with_cert(port, &cert, &key);
    // libcoap takes DTLS on the port after the plain one.
    let addr = format!("127.0.0.1:{}", port + 1).parse().unwrap();
    let client = Client::start(client_opts(addr, &pki.path("ca.pem"), "localhost")).unwrap();
    let e = client
        .request(post(b"secret".to_vec()), Duration::from_secs(5))
        .unwrap_err();
    assert_refused(&e, "certificate has expired (CN=");
    let RequestError::Dtls(DtlsError::Certificate(text)) = &e else {
        unreachable!()
    };
    assert!(
        text.contains("valid from") && text.contains("GMT"),
        "{text}"
    );
}

/// A certificate refusal whose text starts with `start`: OpenSSL's reason, then the refused
/// certificate's name and dates.
fn assert_refused(e: &RequestError, start: &str) {
    match e {
        RequestError::Dtls(DtlsError::Certificate(text)) if text.starts_with(start) => {}
        other => panic!("expected a certificate refusal starting {start:?}, got {other:?}"),
    }
}

#[test]
fn mutual_authentication_gives_the_device_identity_and_refuses_clients_without_a_certificate() {
    let pki = Pki::new();
    let mut opts = server_opts(&pki, "server");
    opts.server.tls.client_ca_file = Some(pki.path("ca.pem"));
    opts.server.tls.require_client_cert = true;
    let mut server = Server::start(opts).unwrap();
    let app = serve(&mut server);
    let mut copts = client_opts(server.local_addr, &pki.path("ca.pem"), "localhost");
    copts.client.tls.cert = Some((pki.path("device.pem"), pki.path("device.key")));
    let client = Client::start(copts).unwrap();
    let r = client
        .request(post(b"abc".to_vec()), Duration::from_secs(5))
        .unwrap();
    assert_eq!(r.payload, b"3 Some(\"pi-01\")");
    // Without a certificate.
    let anonymous = Client::start(client_opts(
        server.local_addr,
        &pki.path("ca.pem"),
        "localhost",
    ))
    .unwrap();
    match anonymous.request(post(b"abc".to_vec()), Duration::from_secs(5)) {
        Err(RequestError::Dtls(DtlsError::Handshake(reason))) => {
            assert!(reason.contains("alert"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    drop((client, anonymous, server));
    assert_eq!(app.join().unwrap().len(), 1);
}

#[test]
fn psk_works_and_a_wrong_key_times_out_without_data() {
    let mut opts = server_opts(&Pki::new(), "server");
    opts.server.tls.psk = HashMap::from([("sensor-42".to_owned(), b"0123456789abcdef".to_vec())]);
    opts.server.tls.cert_file = None;
    opts.server.tls.key_file = None;
    let mut server = Server::start(opts).unwrap();
    let app = serve(&mut server);
    let psk_client = |key: &[u8]| {
        let mut o = client_opts(server.local_addr, Path::new("/unused"), "localhost");
        o.client.tls.ca_file = None;
        o.client.verify_host = false;
        o.client.tls.psk = Some(Psk {
            identity: "sensor-42".into(),
            key: key.to_vec(),
        });
        o.client.handshake_timeout = Duration::from_secs(2);
        Client::start(o).unwrap()
    };
    let good = psk_client(b"0123456789abcdef");
    assert_eq!(
        good.request(post(b"p".to_vec()), Duration::from_secs(5))
            .unwrap()
            .payload,
        b"1 Some(\"sensor-42\")"
    );
    let bad = psk_client(b"0123456789abcdeX");
    match bad.request(post(b"p".to_vec()), Duration::from_secs(5)) {
        Err(RequestError::Dtls(DtlsError::HandshakeTimeout(_))) => {}
        other => panic!("{other:?}"),
    }
    drop((good, bad, server));
    assert_eq!(app.join().unwrap().len(), 1);
}

#[test]
fn a_client_restarting_on_the_same_port_gets_a_new_session_at_once() {
    let pki = Pki::new();
    let mut server = Server::start(server_opts(&pki, "server")).unwrap();
    let _app = serve(&mut server);
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let mut opts = client_opts(server.local_addr, &pki.path("ca.pem"), "localhost");
    opts.bind = format!("127.0.0.1:{port}").parse().unwrap();
    let first = Client::start(opts.clone()).unwrap();
    assert!(changed(
        &first
            .request(post(b"1".to_vec()), Duration::from_secs(5))
            .unwrap()
    ));
    // The "Pi" loses power: its session state is gone without a close_notify.
    first.abort();
    let started = std::time::Instant::now();
    let second = Client::start(opts).unwrap();
    let r = second.request(post(b"2".to_vec()), Duration::from_secs(5));
    assert!(r.is_ok_and(|r| changed(&r)));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        server
            .stats
            .replaced
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn an_idle_session_expires_and_the_next_request_handshakes_again() {
    let pki = Pki::new();
    let mut opts = server_opts(&pki, "server");
    opts.server.session_idle = Duration::from_millis(300);
    let mut server = Server::start(opts).unwrap();
    let _app = serve(&mut server);
    let client = Client::start(client_opts(
        server.local_addr,
        &pki.path("ca.pem"),
        "localhost",
    ))
    .unwrap();
    assert!(changed(
        &client
            .request(post(b"1".to_vec()), Duration::from_secs(5))
            .unwrap()
    ));
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(
        server
            .stats
            .idle_evictions
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(changed(
        &client
            .request(post(b"2".to_vec()), Duration::from_secs(5))
            .unwrap()
    ));
    assert_eq!(
        server
            .stats
            .sessions
            .load(std::sync::atomic::Ordering::Relaxed),
        2,
        "a second handshake"
    );
}

#[test]
fn a_server_limited_to_the_ccm_8_suite_talks_to_a_default_client_and_not_a_gcm_one() {
    let pki = Pki::new();
    let mut opts = server_opts(&pki, "server");
    opts.server.tls.ciphers = "ECDHE-ECDSA-AES128-CCM8".into();
    let mut server = Server::start(opts).unwrap();
    let _app = serve(&mut server);
    let mut copts = client_opts(server.local_addr, &pki.path("ca.pem"), "localhost");
    copts.client.tls.ciphers = "ECDHE-ECDSA-AES128-CCM8".into();
    let client = Client::start(copts).unwrap();
    assert!(changed(
        &client
            .request(post(b"x".to_vec()), Duration::from_secs(5))
            .unwrap()
    ));
    // A client offering only GCM cannot talk to it: the handshake fails and says so.
    let mut gcm = client_opts(server.local_addr, &pki.path("ca.pem"), "localhost");
    gcm.client.tls.ciphers = "ECDHE-ECDSA-AES128-GCM-SHA256".into();
    let gcm_only = Client::start(gcm).unwrap();
    match gcm_only.request(post(b"x".to_vec()), Duration::from_secs(5)) {
        Err(RequestError::Dtls(DtlsError::Handshake(r))) => assert!(
            r.contains("handshake failure") || r.contains("alert"),
            "{r}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn with_a_ca_file_the_client_trusts_that_ca_alone() {
    // Not the system's trust store besides: a publicly trusted certificate for the server's
    // name must not pass for the private CA's server.
    let pki = Pki::new();
    let settings = ClientSettings {
        ca_file: Some(pki.path("ca.pem")),
        ..Default::default()
    };
    let ctx = gateway_dtls::client_context(&settings).unwrap();
    let names: Vec<String> = ctx
        .cert_store()
        .all_certificates()
        .iter()
        .map(|c| format!("{:?}", c.subject_name()))
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].contains("Test CA"), "{names:?}");
}

#[test]
fn a_client_that_looks_the_server_up_again_reaches_it_at_its_new_address() {
    // The client starts with an address where nothing answers (the server "moved"): the first
    // request's session never comes up; the next session looks the name up again and goes to
    // the address it gives now.
    let pki = Pki::new();
    let mut server = Server::start(server_opts(&pki, "server")).unwrap();
    let app = serve(&mut server);
    let gone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut opts = client_opts(gone.local_addr().unwrap(), &pki.path("ca.pem"), "localhost");
    drop(gone);
    opts.resolve = Some(("127.0.0.1".into(), server.local_addr.port()));
    opts.client.handshake_timeout = Duration::from_millis(500);
    let client = Client::start(opts).unwrap();
    assert!(
        client
            .request(post(b"lost".to_vec()), Duration::from_secs(2))
            .is_err(),
        "nothing answers at the old address"
    );
    let r = client
        .request(post(b"found".to_vec()), Duration::from_secs(5))
        .unwrap();
    assert!(changed(&r), "{r:?}");
    drop(client);
    drop(server);
    assert_eq!(app.join().unwrap().len(), 1);
}

/// A server whose key was stolen: its certificate, revoked in a CRL the device holds
/// (`crl_file`), is refused before it expires, whoever presents it. Before, the uplink had no
/// CRL, and such a certificate was taken for up to 825 days. A CRL that does not list it, and
/// no CRL, change nothing; a CRL without a CA file is a config error.
#[test]
fn a_revoked_server_certificate_is_refused_by_a_device_with_the_crl() {
    use gateway_pki::{read_pair, revoke};
    let pki = Pki::new();
    let mut server = Server::start(server_opts(&pki, "server")).unwrap();
    let _app = serve(&mut server);
    let (ca, ca_key) = read_pair(&pki.path("ca.pem"), &pki.path("ca.key")).unwrap();
    let read = |f: &str| openssl::x509::X509::from_pem(&std::fs::read(pki.path(f)).unwrap());
    let (ours, other) = (read("server.pem").unwrap(), read("other.pem").unwrap());
    revoke(&pki.path("other-crl.pem"), &ca, &ca_key, &[&other], 30).unwrap();
    revoke(&pki.path("crl.pem"), &ca, &ca_key, &[&ours], 30).unwrap();
    let with_crl = |crl: Option<&str>| {
        let mut opts = client_opts(server.local_addr, &pki.path("ca.pem"), "localhost");
        opts.client.tls.crl_file = crl.map(|f| pki.path(f));
        Client::start(opts).unwrap()
    };
    for crl in [None, Some("other-crl.pem")] {
        let ok = with_crl(crl).request(post(b"x".to_vec()), Duration::from_secs(5));
        assert!(ok.is_ok_and(|r| changed(&r)), "{crl:?}");
    }
    let e = with_crl(Some("crl.pem"))
        .request(post(b"secret".to_vec()), Duration::from_secs(5))
        .unwrap_err();
    assert_refused(&e, "certificate revoked (CN=server");

    let mut opts = client_opts(server.local_addr, &pki.path("ca.pem"), "localhost");
    opts.client.tls.ca_file = None;
    opts.client.tls.crl_file = Some(pki.path("crl.pem"));
    let e = gateway_dtls::context::client_context(&opts.client.tls).unwrap_err();
    assert!(e.to_string().contains("crl_file needs ca_file"), "{e}");
}
