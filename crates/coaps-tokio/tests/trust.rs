//! Who gets in, under which identity, and who can keep whom out: real DTLS handshakes over real
//! UDP sockets on loopback against the server driver.

mod common;
use common::*;

use gateway_coap::coap_lite;
use gateway_coaps_tokio::{Client, ClientOptions, RequestError, Server, ServerOptions};
use gateway_dtls::{self as dtls, ClientSettings, DtlsError, Psk, Session, State};
use gateway_pki::{
    issue_between, issue_to, new_key, read_pair, revoke, write_cert, write_key, Kind,
};
use openssl::ssl::{SslContextBuilder, SslMethod, SslVersion};
use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

fn mutual(pki: &Pki) -> ServerOptions {
    let mut opts = server_opts(pki, "server");
    opts.server.tls.client_ca_file = Some(pki.path("ca.pem"));
    opts.server.require_identity = true;
    opts
}

fn device(server: SocketAddr, pki: &Pki, name: &str) -> ClientOptions {
    let mut o = client_opts(server, &pki.path("ca.pem"), "localhost");
    o.client.tls.cert = Some((
        pki.path(&format!("{name}.pem")),
        pki.path(&format!("{name}.key")),
    ));
    o
}

fn psk_device(server: SocketAddr, identity: &str, key: &[u8]) -> ClientOptions {
    let mut o = client_opts(server, std::path::Path::new("/unused"), "localhost");
    o.client.tls.ca_file = None;
    o.client.verify_host = false;
    o.client.tls.psk = Some(Psk {
        identity: identity.into(),
        key: key.to_vec(),
    });
    o
}

fn identity_of(c: &Client) -> String {
    let r = c
        .request(post(b"x".to_vec()), Duration::from_secs(5))
        .unwrap();
    assert!(changed(&r), "{r:?}");
    String::from_utf8(r.payload).unwrap()
}

fn issue_device(pki: &Pki, name: &str) {
    let (ca, key) = read_pair(&pki.path("ca.pem"), &pki.path("ca.key")).unwrap();
    issue_to(
        &pki.path(&format!("{name}.pem")),
        &pki.path(&format!("{name}.key")),
        name,
        Kind::Device,
        Some((&ca, &key)),
        -1,
        30,
    )
    .unwrap();
}

/// Lets the server's idle timer close the session, so that the next request reconnects.
fn wait_for_idle_close(server: &Server, closes: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.stats.idle_evictions.load(Ordering::Relaxed) < closes {
        assert!(Instant::now() < deadline, "the idle session was not closed");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
}

#[test]
fn a_resumed_session_keeps_its_certificate_identity() {
    let pki = Pki::new();
    let mut opts = mutual(&pki);
    opts.server.session_idle = Duration::from_millis(300);
    let mut server = Server::start(opts).unwrap();
    let _app = serve(&mut server);
    let client = Client::start(device(server.local_addr, &pki, "device")).unwrap();
    assert_eq!(identity_of(&client), "1 Some(\"pi-01\")");
    for round in 1..=2 {
        wait_for_idle_close(&server, round);
        assert_eq!(identity_of(&client), "1 Some(\"pi-01\")", "round {round}");
    }
    assert_eq!(server.stats.sessions.load(Ordering::Relaxed), 3);
    assert_eq!(
        server.stats.resumed.load(Ordering::Relaxed),
        2,
        "both reconnections were abbreviated handshakes"
    );
}

#[test]
fn no_session_outlives_its_device_certificate_busy_or_resumed() {
    let pki = Pki::new();
    // pi-02's and pi-03's certificates expire 3 s from now.
    let (ca, ca_key) = read_pair(&pki.path("ca.pem"), &pki.path("ca.key")).unwrap();
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
    };
    let now = unix(std::time::SystemTime::now());
    for name in ["pi-02", "pi-03"] {
        let key = new_key().unwrap();
        let cert = issue_between(
            name,
            &key,
            Kind::Device,
            Some((&ca, &ca_key)),
            now - 60,
            now + 3,
        )
        .unwrap();
        write_cert(&pki.path(&format!("{name}.pem")), &cert).unwrap();
        write_key(&pki.path(&format!("{name}.key")), &key).unwrap();
    }
    let expiry = std::time::UNIX_EPOCH + Duration::from_secs((now + 3) as u64);

    let mut opts = mutual(&pki);
    opts.server.session_idle = Duration::from_millis(300);
    let mut server = Server::start(opts).unwrap();
    let app = serve(&mut server);
    // pi-02 is kept busy and never idles; pi-03 goes quiet (its session idles out, resumable)
    // and comes back after the expiry.
    let busy = Client::start(device(server.local_addr, &pki, "pi-02")).unwrap();
    let quiet = Client::start(device(server.local_addr, &pki, "pi-03")).unwrap();
    assert_eq!(identity_of(&quiet), "1 Some(\"pi-03\")");
    let mut stored_after_expiry = 0;
    let mut refused = 0;
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let sent_at = std::time::SystemTime::now();
        match busy.request(post(b"x".to_vec()), Duration::from_millis(500)) {
            Ok(r) if changed(&r) && sent_at > expiry + Duration::from_millis(200) => {
                stored_after_expiry += 1
            }
            Ok(_) => {}
            Err(_) => refused += 1,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        stored_after_expiry, 0,
        "a request got in after the certificate expired"
    );
    assert!(refused > 0);
    let resumptions = busy_session_ended(&server);
    // Told by a certificate_expired alert, pi-02 does not offer its session again: its full
    // handshakes fail on the expired certificate, and say so.
    let e = busy
        .request(post(b"x".to_vec()), Duration::from_secs(2))
        .unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
    assert_eq!(
        server.stats.expired_resumptions.load(Ordering::Relaxed),
        resumptions
    );

    // pi-03 resumes its session after the expiry: refused, once; it then makes full
    // handshakes, which fail.
    for _ in 0..3 {
        assert!(quiet
            .request(post(b"x".to_vec()), Duration::from_secs(2))
            .is_err());
    }
    assert!(
        server.stats.expired_resumptions.load(Ordering::Relaxed) > resumptions,
        "pi-03's resumption after the expiry was refused"
    );
    drop((busy, quiet));
    drop(server);
    let seen = app.join().unwrap();
    assert!(
        seen.len() > 5,
        "requests got in before the expiry: {}",
        seen.len()
    );
    assert!(seen
        .iter()
        .all(|(id, _)| matches!(id.as_deref(), Some("pi-02" | "pi-03"))));
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A sub-CA of the PKI's CA, good until `until` (Unix seconds), and its key; it issues each
/// of `devices` a certificate good for 30 days, written with the sub-CA's after it (as a device
/// sends its chain) to `NAME.pem`, its key to `NAME.key`.
fn sub_ca(
    pki: &Pki,
    name: &str,
    until: i64,
    devices: &[&str],
) -> (openssl::x509::X509, gateway_pki::Key) {
    let (ca, ca_key) = read_pair(&pki.path("ca.pem"), &pki.path("ca.key")).unwrap();
    let now = unix_now();
    let sub_key = new_key().unwrap();
    let sub = issue_between(
        name,
        &sub_key,
        Kind::Ca,
        Some((&ca, &ca_key)),
        now - 60,
        until,
    )
    .unwrap();
    for device in devices {
        let key = new_key().unwrap();
        let cert = issue_between(
            device,
            &key,
            Kind::Device,
            Some((&sub, &sub_key)),
            now - 60,
            now + 30 * 86_400,
        )
        .unwrap();
        let mut pem = cert.to_pem().unwrap();
        pem.extend(sub.to_pem().unwrap());
        std::fs::write(pki.path(&format!("{device}.pem")), pem).unwrap();
        write_key(&pki.path(&format!("{device}.key")), &key).unwrap();
    }
    (sub, sub_key)
}

#[test]
fn no_session_outlives_the_intermediate_ca_of_its_device() {
    let pki = Pki::new();
    // A sub-CA that expires 3 s from now issues pi-04 and pi-05 certificates good for 30 days;
    // each device sends its certificate and the sub-CA's, the server trusts the root.
    let now = unix_now();
    sub_ca(&pki, "Sub CA", now + 3, &["pi-04", "pi-05"]);
    let expiry = std::time::UNIX_EPOCH + Duration::from_secs((now + 3) as u64);

    let mut opts = mutual(&pki);
    opts.server.session_idle = Duration::from_millis(300);
    let mut server = Server::start(opts).unwrap();
    let _app = serve(&mut server);
    // pi-04 stays busy; pi-05 goes quiet (its session idles out, resumable) and comes back
    // after the sub-CA expired.
    let busy = Client::start(device(server.local_addr, &pki, "pi-04")).unwrap();
    let quiet = Client::start(device(server.local_addr, &pki, "pi-05")).unwrap();
    assert_eq!(identity_of(&quiet), "1 Some(\"pi-05\")");
    let (mut before, mut after) = (0, 0);
    while std::time::SystemTime::now() < expiry + Duration::from_secs(2) {
        let sent_at = std::time::SystemTime::now();
        if let Ok(r) = busy.request(post(b"x".to_vec()), Duration::from_millis(500)) {
            if changed(&r) && sent_at > expiry + Duration::from_millis(200) {
                after += 1;
            } else if changed(&r) {
                before += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(before > 5, "requests got in before the expiry: {before}");
    assert_eq!(after, 0, "a request got in after the sub-CA expired");
    let resumptions = busy_session_ended(&server);
    for _ in 0..3 {
        assert!(quiet
            .request(post(b"x".to_vec()), Duration::from_secs(2))
            .is_err());
    }
    // At least once: on loaded machines the device may retransmit its ClientHello, which the
    // server takes as a resumption of its own, refused again.
    assert!(
        server.stats.expired_resumptions.load(Ordering::Relaxed) > resumptions,
        "pi-05's resumption after the expiry was refused"
    );
}

/// Checks that the one busy session was ended at its certificate's expiry, and returns how
/// many resumptions were refused so far. On a loaded machine a request of the busy device
/// may time out just before the expiry with the server silent: its client then sets the
/// session up again, offering the old one, and that resumption, after the expiry, is refused
/// instead (more than once if the device sent its ClientHello again meanwhile).
fn busy_session_ended(server: &Server) -> u64 {
    let ended = server.stats.expired.load(Ordering::Relaxed);
    let resumptions = server.stats.expired_resumptions.load(Ordering::Relaxed);
    assert!(
        ended <= 1 && ended + resumptions >= 1,
        "the busy session ended: {ended} sessions ended, {resumptions} resumptions refused"
    );
    resumptions
}

#[test]
fn a_resumed_session_keeps_its_psk_identity() {
    let pki = Pki::new();
    let mut opts = server_opts(&pki, "server");
    opts.server.tls.psk = HashMap::from([("sensor-42".to_owned(), b"0123456789abcdef".to_vec())]);
    opts.server.require_identity = true;
    opts.server.session_idle = Duration::from_millis(300);
    let mut server = Server::start(opts).unwrap();
    let _app = serve(&mut server);
    let client = Client::start(psk_device(
        server.local_addr,
        "sensor-42",
        b"0123456789abcdef",
    ))
    .unwrap();
    assert_eq!(identity_of(&client), "1 Some(\"sensor-42\")");
    wait_for_idle_close(&server, 1);
    assert_eq!(identity_of(&client), "1 Some(\"sensor-42\")");
    assert_eq!(server.stats.resumed.load(Ordering::Relaxed), 1);
}

/// Sends one request that must fail without any data reaching the application.
fn shut_out(server: &Server, client: ClientOptions) -> RequestError {
    let c = Client::start(client).unwrap();
    let e = c
        .request(post(b"secret".to_vec()), Duration::from_secs(5))
        .unwrap_err();
    assert!(server.requests.try_recv().is_err(), "no data got in");
    e
}

#[test]
fn a_peer_without_an_identity_gets_no_data_in() {
    let pki = Pki::new();
    // A client CA, but certificates not required in the handshake itself.
    let server = Server::start(mutual(&pki)).unwrap();
    shut_out(
        &server,
        client_opts(server.local_addr, &pki.path("ca.pem"), "localhost"),
    );
    assert_eq!(server.stats.unauthenticated.load(Ordering::Relaxed), 1);

    // PSKs and a server certificate, no client CA: a client with neither PSK nor certificate
    // can still negotiate an ECDHE-ECDSA suite, and is then refused.
    let mut opts = server_opts(&pki, "server");
    opts.server.tls.psk = HashMap::from([("sensor-42".to_owned(), b"0123456789abcdef".to_vec())]);
    opts.server.require_identity = true;
    let server = Server::start(opts).unwrap();
    shut_out(
        &server,
        client_opts(server.local_addr, &pki.path("ca.pem"), "localhost"),
    );
    assert_eq!(server.stats.unauthenticated.load(Ordering::Relaxed), 1);
    assert_eq!(server.stats.sessions.load(Ordering::Relaxed), 0);
}

#[test]
fn a_session_refused_for_its_identity_is_not_resumable() {
    // Before, the refused session stayed in OpenSSL's session cache: peers without an identity
    // could push the devices' sessions out of it, and each came back with an abbreviated
    // handshake only to be refused again.
    let pki = Pki::new();
    let server = Server::start(mutual(&pki)).unwrap();
    let c = Client::start(client_opts(
        server.local_addr,
        &pki.path("ca.pem"),
        "localhost",
    ))
    .unwrap();
    for _ in 0..3 {
        assert!(c
            .request(post(b"x".to_vec()), Duration::from_secs(3))
            .is_err());
    }
    assert!(server.requests.try_recv().is_err(), "no data got in");
    assert!(server.stats.unauthenticated.load(Ordering::Relaxed) >= 2);
    let f = c.figures().unwrap();
    assert!(f.handshakes >= 2, "{f:?}");
    assert_eq!(f.resumed, 0, "a refused session was resumed: {f:?}");
}

#[test]
fn a_certificate_message_over_16_kib_is_refused() {
    // OpenSSL takes 100 KiB of certificates by default, and a cached session keeps what the
    // peer sent: any device could pad its chain with unrelated certificates, and a peer with
    // a cookie made OpenSSL buffer up to 100 KiB per out-of-order handshake message.
    let pki = Pki::new();
    let leaf = std::fs::read(pki.path("device.pem")).unwrap();
    let ca = std::fs::read(pki.path("ca.pem")).unwrap();
    let ca_der = openssl::x509::X509::from_pem(&ca)
        .unwrap()
        .to_der()
        .unwrap()
        .len();
    let mut server = Server::start(mutual(&pki)).unwrap();
    let _app = serve(&mut server);
    // Whether a device that sends its certificate and `n` copies of the CA's gets a POST in.
    let stored_with = |n: usize| {
        let mut pem = leaf.clone();
        for _ in 0..n {
            pem.extend(&ca);
        }
        std::fs::write(pki.path("padded.pem"), pem).unwrap();
        std::fs::copy(pki.path("device.key"), pki.path("padded.key")).unwrap();
        let c = Client::start(device(server.local_addr, &pki, "padded")).unwrap();
        c.request(post(b"x".to_vec()), Duration::from_secs(5))
            .is_ok()
    };
    // The chain's root sent along, as RFC 5246 allows: taken.
    assert!(stored_with(1));
    // One more, under the limit but off the chain: refused (see the dtls crate's `verified`).
    assert!(!stored_with(2));
    // Over 16 KiB of them: the handshake fails.
    assert!(!stored_with(16 * 1024 / ca_der + 1));
}

#[test]
fn a_denied_identity_is_refused_and_the_others_are_not() {
    let pki = Pki::new();
    issue_device(&pki, "pi-02");
    let mut opts = mutual(&pki);
    opts.server.deny = ["pi-01".to_owned()].into();
    let mut server = Server::start(opts).unwrap();
    let requests = std::mem::replace(&mut server.requests, std::sync::mpsc::sync_channel(0).1);
    let denied = Client::start(device(server.local_addr, &pki, "device")).unwrap();
    assert!(denied
        .request(post(b"x".to_vec()), Duration::from_secs(3))
        .is_err());
    assert!(requests.try_recv().is_err());
    assert_eq!(server.stats.denied.load(Ordering::Relaxed), 1);
    server.requests = requests;
    let _app = serve(&mut server);
    let other = Client::start(device(server.local_addr, &pki, "pi-02")).unwrap();
    assert_eq!(identity_of(&other), "1 Some(\"pi-02\")");
}

/// PSK identities and certificate names are one namespace: a certificate the CA issued with
/// a PSK device's name (from a request someone made, say) does not act as that device; its key
/// does.
#[test]
fn a_certificate_named_after_a_psk_identity_is_refused_and_the_key_is_taken() {
    let pki = Pki::new();
    issue_device(&pki, "sensor-42");
    let key = b"5f1c9e07a2d84b36".to_vec();
    let mut opts = mutual(&pki);
    opts.server.tls.psk = HashMap::from([("sensor-42".to_owned(), key.clone())]);
    let mut server = Server::start(opts).unwrap();
    let addr = server.local_addr;
    shut_out(&server, device(addr, &pki, "sensor-42"));
    assert_eq!(server.stats.denied.load(Ordering::Relaxed), 1);
    assert_eq!(server.stats.sessions.load(Ordering::Relaxed), 0);
    let _app = serve(&mut server);
    let by_key = Client::start(psk_device(addr, "sensor-42", &key)).unwrap();
    assert_eq!(identity_of(&by_key), "1 Some(\"sensor-42\")");
    // Another name from the same CA is not affected.
    issue_device(&pki, "pi-02");
    let other = Client::start(device(addr, &pki, "pi-02")).unwrap();
    assert_eq!(identity_of(&other), "1 Some(\"pi-02\")");
}

#[test]
fn a_revoked_device_certificate_is_refused() {
    let pki = Pki::new();
    issue_device(&pki, "pi-02");
    let (ca, ca_key) = read_pair(&pki.path("ca.pem"), &pki.path("ca.key")).unwrap();
    let (lost, _) = read_pair(&pki.path("device.pem"), &pki.path("device.key")).unwrap();
    assert_eq!(
        revoke(&pki.path("crl.pem"), &ca, &ca_key, &[&lost], 30).unwrap(),
        1
    );
    // Revoking it again adds nothing.
    assert_eq!(
        revoke(&pki.path("crl.pem"), &ca, &ca_key, &[&lost], 30).unwrap(),
        1
    );
    revoked_and_kept(&pki, "device", "pi-02");
}

/// With `crl.pem` as the server's CRL file: `revoked`'s handshake is refused as revoked and
/// nothing of it reaches the application; `kept` still gets in under its name.
fn revoked_and_kept(pki: &Pki, revoked: &str, kept: &str) {
    let mut opts = mutual(pki);
    opts.server.tls.client_crl_file = Some(pki.path("crl.pem"));
    let mut server = Server::start(opts).unwrap();
    let requests = std::mem::replace(&mut server.requests, std::sync::mpsc::sync_channel(0).1);
    let c = Client::start(device(server.local_addr, pki, revoked)).unwrap();
    match c.request(post(b"x".to_vec()), Duration::from_secs(3)) {
        Err(RequestError::Dtls(DtlsError::Handshake(why))) => {
            assert!(why.contains("revoked"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert!(requests.try_recv().is_err());
    server.requests = requests;
    let _app = serve(&mut server);
    let other = Client::start(device(server.local_addr, pki, kept)).unwrap();
    assert_eq!(identity_of(&other), format!("1 Some({kept:?})"));
}

/// Found in an audit: OpenSSL's CRL check looked at the device's own certificate only, so a
/// sub-CA revoked in the root's CRL (its key stolen: it mints any device name) still let the
/// devices it issued in. A sub-CA that is not revoked still does.
#[test]
fn a_device_of_a_revoked_intermediate_ca_is_refused() {
    let pki = Pki::new();
    let (ca, ca_key) = read_pair(&pki.path("ca.pem"), &pki.path("ca.key")).unwrap();
    let mut crls = Vec::new();
    let mut subs = Vec::new();
    for (n, sub_name) in ["Lost Sub CA", "Kept Sub CA"].into_iter().enumerate() {
        let (sub, sub_key) = sub_ca(
            &pki,
            sub_name,
            unix_now() + 30 * 86_400,
            &[&format!("pi-0{}", n + 4)],
        );
        // Each sub-CA's own CRL revokes nothing.
        let path = pki.path(&format!("sub-{n}.crl"));
        revoke(&path, &sub, &sub_key, &[], 30).unwrap();
        crls.push(std::fs::read(&path).unwrap());
        subs.push(sub);
    }
    // The root's revokes the lost sub-CA.
    revoke(&pki.path("root.crl"), &ca, &ca_key, &[&subs[0]], 30).unwrap();
    crls.push(std::fs::read(pki.path("root.crl")).unwrap());
    std::fs::write(pki.path("crl.pem"), crls.concat()).unwrap();
    revoked_and_kept(&pki, "pi-04", "pi-05");
}

/// Feeds what `sock` receives into `s` and sends what `s` says, until `done(received)` holds.
fn pump(sock: &UdpSocket, s: &mut Session, done: impl Fn(&Session, usize) -> bool) {
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut received = 0;
    let mut buf = [0u8; 4096];
    loop {
        while let Some(d) = s.poll_transmit() {
            sock.send(&d).unwrap();
        }
        if done(s, received) || matches!(s.state(), State::Closed(_)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pump timed out in {:?}",
            s.state()
        );
        match sock.recv(&mut buf) {
            Ok(n) => {
                received += 1;
                s.handle_datagram(Instant::now(), &buf[..n]);
            }
            Err(_) => {
                s.handle_timeout(Instant::now());
            }
        }
    }
}

fn client_ctx(pki: &Pki) -> openssl::ssl::SslContext {
    dtls::client_context(&ClientSettings {
        ca_file: Some(pki.path("ca.pem")),
        mtu: 1232,
        ..Default::default()
    })
    .unwrap()
}

/// A client that passes the cookie exchange, gets the server's first flight, and goes silent:
/// a handshake the server holds until its timeout.
fn silent_handshake(server: SocketAddr, from: &str, ctx: &openssl::ssl::SslContext) -> UdpSocket {
    let sock = UdpSocket::bind(format!("{from}:0")).unwrap();
    sock.connect(server).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut s = Session::client(ctx, "localhost", 1232, true, None, Instant::now()).unwrap();
    let mut buf = [0u8; 4096];
    // ClientHello, HelloVerifyRequest, ClientHello with the cookie, the server's first flight;
    // then nothing more.
    sock.send(&s.poll_transmit().unwrap()).unwrap();
    let n = sock.recv(&mut buf).unwrap();
    s.handle_datagram(Instant::now(), &buf[..n]);
    sock.send(&s.poll_transmit().unwrap()).unwrap();
    // The server answers, or (at its capacity) drops the ClientHello and keeps nothing.
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let _ = sock.recv(&mut buf);
    sock
}

fn connects_within(server: SocketAddr, opts: ClientOptions, limit: Duration) {
    let started = Instant::now();
    let c = Client::start(opts).unwrap();
    let r = c.request(post(b"x".to_vec()), Duration::from_secs(10));
    assert!(r.is_ok_and(|r| changed(&r)), "the device got in ({server})");
    assert!(
        started.elapsed() < limit,
        "the device waited {:?}",
        started.elapsed()
    );
}

/// A server whose handshake capacity (`max_handshakes`, `per_address` from one IP address) a
/// hundred silent clients from 127.0.0.1 have tried to fill; their sockets stay open.
fn besieged(pki: &Pki, max_handshakes: usize, per_address: usize) -> (Server, Vec<UdpSocket>) {
    let mut opts = mutual(pki);
    opts.server.max_handshakes = max_handshakes;
    opts.server.max_handshakes_per_address = per_address;
    opts.server.handshake_timeout = Duration::from_secs(10);
    let mut server = Server::start(opts).unwrap();
    let _app = serve(&mut server);
    let ctx = client_ctx(pki);
    let held = (0..100)
        .map(|_| silent_handshake(server.local_addr, "127.0.0.1", &ctx))
        .collect();
    (server, held)
}

/// The crowd's handshakes that hold no slot: parked (or then forgotten), or made to wait.
fn held_back(server: &Server) -> u64 {
    let st = &server.stats;
    st.parked_handshakes.load(Ordering::Relaxed) + st.over_capacity.load(Ordering::Relaxed)
}

#[test]
fn a_hundred_silent_handshakes_from_one_host_cannot_keep_a_device_out() {
    let pki = Pki::new();
    let (server, _held) = besieged(&pki, 100, 10);
    // The host holds at most its share.
    assert!(held_back(&server) >= 90, "{}", held_back(&server));
    // The device comes from the same address (a NAT, or the attacker's own host).
    connects_within(
        server.local_addr,
        device(server.local_addr, &pki, "device"),
        Duration::from_secs(2),
    );
}

#[test]
fn at_the_handshake_cap_the_host_holding_most_makes_room() {
    let pki = Pki::new();
    let (server, _held) = besieged(&pki, 50, 1000);
    let mut d = device(server.local_addr, &pki, "device");
    d.bind = "127.0.0.2:0".parse().unwrap();
    connects_within(server.local_addr, d, Duration::from_secs(2));
    assert!(held_back(&server) >= 51, "{}", held_back(&server));
}

#[test]
fn a_device_that_reboots_mid_handshake_is_served_at_once() {
    let pki = Pki::new();
    let mut opts = mutual(&pki);
    opts.server.handshake_timeout = Duration::from_secs(10);
    let mut server = Server::start(opts).unwrap();
    let _app = serve(&mut server);
    let ctx = client_ctx(&pki);
    let sock = silent_handshake(server.local_addr, "127.0.0.1", &ctx);
    let port = sock.local_addr().unwrap().port();
    drop(sock); // power lost mid-handshake; it comes back on the same port
    let mut d = device(server.local_addr, &pki, "device");
    d.bind = format!("127.0.0.1:{port}").parse().unwrap();
    connects_within(server.local_addr, d, Duration::from_secs(2));
    assert_eq!(server.stats.replaced.load(Ordering::Relaxed), 1);
}

#[test]
fn at_the_session_cap_an_authenticated_newcomer_replaces_the_least_recently_active() {
    let pki = Pki::new();
    issue_device(&pki, "pi-02");
    issue_device(&pki, "pi-03");
    let mut opts = mutual(&pki);
    opts.server.max_sessions = 2;
    let mut server = Server::start(opts).unwrap();
    let _app = serve(&mut server);
    let one = Client::start(device(server.local_addr, &pki, "device")).unwrap();
    identity_of(&one);
    let two = Client::start(device(server.local_addr, &pki, "pi-02")).unwrap();
    identity_of(&two);
    identity_of(&one); // `two` is now the least recently active
    let three = Client::start(device(server.local_addr, &pki, "pi-03")).unwrap();
    assert_eq!(identity_of(&three), "1 Some(\"pi-03\")");
    assert_eq!(server.stats.evicted_sessions.load(Ordering::Relaxed), 1);
    identity_of(&one); // still there
    assert_eq!(server.stats.sessions.load(Ordering::Relaxed), 3);
}

#[test]
fn at_the_session_cap_a_peer_without_an_identity_makes_no_room() {
    let pki = Pki::new();
    let mut opts = mutual(&pki);
    opts.server.require_identity = false;
    opts.server.max_sessions = 1;
    let mut server = Server::start(opts).unwrap();
    let app = serve(&mut server);
    let one = Client::start(device(server.local_addr, &pki, "device")).unwrap();
    identity_of(&one);
    let anonymous = Client::start(client_opts(
        server.local_addr,
        &pki.path("ca.pem"),
        "localhost",
    ))
    .unwrap();
    assert!(anonymous
        .request(post(b"x".to_vec()), Duration::from_secs(3))
        .is_err());
    assert_eq!(server.stats.over_capacity.load(Ordering::Relaxed), 1);
    identity_of(&one);
    drop((one, anonymous, server));
    assert_eq!(app.join().unwrap().len(), 2, "only the device's requests");
}

#[test]
fn psk_defaults_to_ecdhe_psk_and_the_ccm_8_suite_is_available() {
    let pki = Pki::new();
    let key = b"0123456789abcdef".to_vec();
    for (ciphers, want) in [
        ("", "ECDHE-PSK-CHACHA20-POLY1305"),
        ("PSK-AES128-CCM8", "PSK-AES128-CCM8"),
    ] {
        let mut opts = server_opts(&pki, "server");
        opts.server.tls.cert_file = None;
        opts.server.tls.key_file = None;
        opts.server.tls.psk = HashMap::from([("sensor-42".to_owned(), key.clone())]);
        opts.server.tls.ciphers = ciphers.into();
        let server = Server::start(opts).unwrap();
        let ctx = dtls::client_context(&ClientSettings {
            psk: Some(Psk {
                identity: "sensor-42".into(),
                key: key.clone(),
            }),
            ciphers: ciphers.into(),
            mtu: 1232,
            ..Default::default()
        })
        .unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect(server.local_addr).unwrap();
        let mut s = Session::client(&ctx, "localhost", 1232, false, None, Instant::now()).unwrap();
        pump(&sock, &mut s, |s, _| s.is_established());
        assert_eq!(s.cipher(), Some(want));
    }
}

#[test]
fn dtls_1_0_is_refused() {
    let pki = Pki::new();
    let server = Server::start(server_opts(&pki, "server")).unwrap();
    let mut b = SslContextBuilder::new(SslMethod::dtls()).unwrap();
    b.set_max_proto_version(Some(SslVersion::DTLS1)).unwrap();
    b.set_cipher_list("ALL:@SECLEVEL=0").unwrap();
    b.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let ctx = b.build();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(server.local_addr).unwrap();
    let mut s = Session::client(&ctx, "localhost", 1232, false, None, Instant::now()).unwrap();
    pump(&sock, &mut s, |s, _| s.is_established());
    assert!(
        matches!(s.state(), State::Closed(DtlsError::Handshake(_))),
        "{:?}",
        s.state()
    );
}

#[test]
fn a_client_never_ends_up_without_authenticating_the_server() {
    let pki = Pki::new();
    let psk = Some(Psk {
        identity: "sensor-42".into(),
        key: b"0123456789abcdef".to_vec(),
    });
    // A PSK, no CA, and a certificate suite: that suite would take any certificate.
    let e = dtls::client_context(&ClientSettings {
        psk: psk.clone(),
        ciphers: "ECDHE-PSK-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256".into(),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        e.to_string().contains("ECDHE-ECDSA-AES128-GCM-SHA256")
            && e.to_string().contains("ca_file")
            && e.to_string().contains("ciphers"),
        "{e}"
    );
    // With the CA, the same list is fine: a certificate is verified, a PSK authenticates.
    dtls::client_context(&ClientSettings {
        psk,
        ca_file: Some(pki.path("ca.pem")),
        ciphers: "ECDHE-PSK-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256".into(),
        ..Default::default()
    })
    .unwrap();
    // Suites without encryption or authentication, on either end.
    let e = dtls::client_context(&ClientSettings {
        ca_file: Some(pki.path("ca.pem")),
        ciphers: "ECDHE-ECDSA-AES128-GCM-SHA256:AECDH-AES128-SHA:@SECLEVEL=0".into(),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("AECDH-AES128-SHA"), "{e}");
    let mut opts = server_opts(&pki, "server");
    opts.server.tls.ciphers =
        "ECDHE-ECDSA-NULL-SHA:ECDHE-ECDSA-AES128-GCM-SHA256:@SECLEVEL=0".into();
    assert!(Server::start(opts)
        .err()
        .unwrap()
        .to_string()
        .contains("ECDHE-ECDSA-NULL-SHA"));
}

#[test]
fn one_credential_cannot_hold_more_than_its_share_of_sessions() {
    let pki = Pki::new();
    let mut opts = mutual(&pki);
    opts.server.max_sessions_per_identity = 2;
    let mut server = Server::start(opts).unwrap();
    let _app = serve(&mut server);
    // Three clients with the one key of pi-01 (leaked, or a device reconnecting from new
    // ports): the third replaces the least recently active of the other two.
    let clients: Vec<Client> = (0..3)
        .map(|_| {
            let c = Client::start(device(server.local_addr, &pki, "device")).unwrap();
            identity_of(&c);
            c
        })
        .collect();
    assert_eq!(server.stats.evicted_sessions.load(Ordering::Relaxed), 1);
    drop(clients);
}

#[test]
fn a_replayed_client_hello_does_not_end_an_established_session() {
    let pki = Pki::new();
    let mut server = Server::start(server_opts(&pki, "server")).unwrap();
    let _app = serve(&mut server);
    let ctx = client_ctx(&pki);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(server.local_addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut s = Session::client(&ctx, "localhost", 1232, true, None, Instant::now()).unwrap();
    let mut buf = [0u8; 4096];
    sock.send(&s.poll_transmit().unwrap()).unwrap();
    let n = sock.recv(&mut buf).unwrap();
    s.handle_datagram(Instant::now(), &buf[..n]);
    let with_cookie = s.poll_transmit().unwrap();
    sock.send(&with_cookie).unwrap();
    pump(&sock, &mut s, |s, _| s.is_established());
    assert!(s.is_established());
    // The ClientHello with its cookie again, as a duplicate or a replay from the same address.
    sock.send(&with_cookie).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(server.stats.replaced.load(Ordering::Relaxed), 0);
    // The session still carries requests.
    let req = post(b"still here".to_vec()).to_bytes().unwrap();
    s.send(&req).unwrap();
    let mut answer = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while answer.is_empty() && Instant::now() < deadline {
        while let Some(d) = s.poll_transmit() {
            sock.send(&d).unwrap();
        }
        if let Ok(n) = sock.recv(&mut buf) {
            answer.extend(s.handle_datagram(Instant::now(), &buf[..n]));
        }
    }
    let resp = coap_lite::Packet::from_bytes(&answer[0]).unwrap();
    assert!(changed(&resp), "{resp:?}");
}

#[test]
fn both_ends_refuse_renegotiation_and_anything_below_dtls_1_2() {
    use openssl::ssl::SslOptions;
    let pki = Pki::new();
    let client = client_ctx(&pki);
    let server = dtls::server_context(&server_opts(&pki, "server").server.tls).unwrap();
    for ctx in [&client, &server] {
        use foreign_types::ForeignType;
        // SAFETY: reading two settings of a context we own.
        let (options, min) = unsafe {
            (
                openssl_sys::SSL_CTX_get_options(ctx.as_ptr()),
                openssl_sys::SSL_CTX_get_min_proto_version(ctx.as_ptr()),
            )
        };
        // A renegotiation could change the peer's identity under an established session.
        let options = SslOptions::from_bits_retain(options as _);
        assert!(options.contains(SslOptions::NO_RENEGOTIATION));
        assert_eq!(min, 0xfefd, "DTLS 1.2 at least");
    }
}
