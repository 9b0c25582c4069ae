//! A server context remembers the client chains it verified, and a client context the
//! server's chain for the name it checked (see the crate's `verified` module): a peer that
//! comes back with the same chain is not verified again, and nothing else gets in on the
//! strength of what was remembered. Real OpenSSL handshakes over
//! in-memory datagrams.

mod common;
use common::{Link, Pki};
use gateway_dtls::chains_reused;
use gateway_pki::Kind;

#[test]
fn a_device_reconnecting_with_the_same_chain_is_not_verified_again() {
    let pki = Pki::with(&[("dev-1", "dev-1"), ("dev-2", "dev-2")]);
    let server = pki.server();
    assert_eq!(chains_reused(&server), Some(0));
    let dev1 = pki.client_as(&pki, "dev-1", "");
    for n in 0..3 {
        let mut link = Link::new(&dev1, server.clone(), None);
        link.handshake();
        assert!(!link.server().resumed(), "a full handshake");
        assert_eq!(link.server().peer_identity().as_deref(), Some("dev-1"));
        assert_eq!(chains_reused(&server), Some(n), "handshake {n}");
    }
    // Another device's chain is verified, then known too; each keeps its own identity.
    for n in 0..2 {
        let mut link = Link::new(&pki.client_as(&pki, "dev-2", ""), server.clone(), None);
        link.handshake();
        assert_eq!(link.server().peer_identity().as_deref(), Some("dev-2"));
        assert_eq!(chains_reused(&server), Some(2 + n));
    }
    // Each full handshake of the device verified the server's chain: once, then remembered.
    assert_eq!(chains_reused(&dev1), Some(2));
}

#[test]
fn a_client_remembers_the_servers_chain_only_for_the_name_it_checked() {
    let pki = Pki::new();
    let (client, server) = (pki.client(""), pki.server());
    Link::to("localhost", &client, server.clone(), None).handshake();
    Link::to("localhost", &client, server.clone(), None).handshake();
    assert_eq!(chains_reused(&client), Some(1));
    // The same chain, checked against a name it was not issued for: refused, not remembered.
    let mut other = Link::to("other.example", &client, server.clone(), None);
    assert!(
        !other.try_handshake(),
        "a certificate for another name was taken"
    );
    assert_eq!(chains_reused(&client), Some(1));
    // The address it was issued for is its own verdict.
    Link::to("127.0.0.1", &client, server.clone(), None).handshake();
    assert_eq!(chains_reused(&client), Some(1));
    Link::to("127.0.0.1", &client, server, None).handshake();
    assert_eq!(chains_reused(&client), Some(2));
}

#[test]
fn a_remembered_chain_lets_in_no_other_certificate() {
    let pki = Pki::new();
    // The same device name under another CA: another certificate, another key.
    let other = Pki::new();
    let server = pki.server();
    Link::new(&pki.client(""), server.clone(), None).handshake();
    let mut impostor = Link::new(&pki.client_as(&other, "dev-1", ""), server.clone(), None);
    assert!(
        !impostor.try_handshake(),
        "a certificate of another CA was taken"
    );
    assert!(impostor.server.as_ref().is_none_or(|s| !s.is_established()));
    assert_eq!(chains_reused(&server), Some(0));
    // The device itself still gets in, on the remembered verdict.
    Link::new(&pki.client(""), server.clone(), None).handshake();
    assert_eq!(chains_reused(&server), Some(1));
}

#[test]
fn a_new_context_verifies_again() {
    let pki = Pki::new();
    let first = pki.server();
    Link::new(&pki.client(""), first.clone(), None).handshake();
    Link::new(&pki.client(""), first.clone(), None).handshake();
    assert_eq!(chains_reused(&first), Some(1));
    // A reload builds a new context (new CA file, new CRLs): nothing carries over.
    let second = pki.server();
    Link::new(&pki.client(""), second.clone(), None).handshake();
    assert_eq!(chains_reused(&second), Some(0));
}

/// A device that sends certificates besides its own chain is refused: OpenSSL keeps every
/// certificate sent, parsed, in the session and in the server's session cache for hours, and
/// a device padding its list up to the 16 KiB limit at every handshake would fill the
/// server's memory. One that sends its chain's root as well, as RFC 5246 allows, gets in.
#[test]
fn a_certificate_list_with_certificates_off_the_chain_is_refused() {
    let pki = Pki::new();
    let other = Pki::new();
    let server = pki.server();
    let pem = |p: &Pki, f: &str| std::fs::read(p.path(f)).unwrap();
    let (leaf, root, foreign) = (
        pem(&pki, "dev-1.pem"),
        pem(&pki, "ca.pem"),
        pem(&other, "ca.pem"),
    );
    let sends = |name: &str, certs: &[&[u8]]| {
        std::fs::write(pki.path(&format!("{name}.pem")), certs.concat()).unwrap();
        std::fs::copy(pki.path("dev-1.key"), pki.path(&format!("{name}.key"))).unwrap();
        let mut link = Link::new(&pki.client_as(&pki, name, ""), server.clone(), None);
        let ok = link.try_handshake();
        assert_eq!(
            ok,
            link.server().peer_identity().as_deref() == Some("dev-1")
        );
        ok
    };
    // The root cross-signed by an older one (a CA's move, the server trusting the new root
    // itself): the same CA, another certificate of it.
    let (ca, ca_key) = gateway_pki::read_pair(&pki.path("ca.pem"), &pki.path("ca.key")).unwrap();
    let old_key = gateway_pki::new_key().unwrap();
    let old = gateway_pki::issue("Old Root", &old_key, Kind::Ca, None, -1, 30).unwrap();
    let name = ca
        .subject_name()
        .entries()
        .next()
        .unwrap()
        .data()
        .to_string()
        .unwrap();
    let cross = gateway_pki::issue(&name, &ca_key, Kind::Ca, Some((&old, &old_key)), -1, 30)
        .unwrap()
        .to_pem()
        .unwrap();
    assert!(sends("alone", &[&leaf]));
    assert!(sends("with-root", &[&leaf, &root]));
    assert!(sends("cross-signed", &[&leaf, &cross]));
    // The other PKI's CA has the same name ("Test CA"), not the same key.
    assert!(
        !sends("padded", &[&leaf, &foreign]),
        "a certificate off the chain was taken"
    );
    assert!(
        !sends("repeated", &[&leaf, &leaf, &leaf]),
        "the device's own certificate, sent again and again, was taken"
    );
    assert!(
        !sends("root-twice", &[&leaf, &root, &root]),
        "the root, sent twice, was taken"
    );
    // The refusals were not remembered as verdicts: only the three that got in, each once.
    assert!(sends("alone", &[&leaf]));
    assert_eq!(chains_reused(&server), Some(1));
}
