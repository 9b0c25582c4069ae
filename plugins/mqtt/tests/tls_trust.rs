//! With `tls_ca_file`, that CA alone is trusted: a broker whose certificate another CA issued
//! for its name, one the system's store trusts, is refused. One test in its own process,
//! because it points OpenSSL's system store (`SSL_CERT_FILE`) at a CA of its own.

use gateway_pki::{issue, new_key, write_cert, Kind};
use mqtt::client::{connector, Tls};
use openssl::ssl::{SslAcceptor, SslMethod};
use std::net::{TcpListener, TcpStream};

#[test]
fn a_ca_file_replaces_the_system_store_instead_of_adding_to_it() {
    let dir = tempfile::tempdir().unwrap();
    // "public": a CA the system's store holds; "ours": the one tls_ca_file names.
    let public_key = new_key().unwrap();
    let public = issue("public CA", &public_key, Kind::Ca, None, -1, 30).unwrap();
    let ours_key = new_key().unwrap();
    let ours = issue("our CA", &ours_key, Kind::Ca, None, -1, 30).unwrap();
    let (public_pem, ours_pem) = (dir.path().join("public.pem"), dir.path().join("ours.pem"));
    write_cert(&public_pem, &public).unwrap();
    write_cert(&ours_pem, &ours).unwrap();
    // SAFETY: this test is the only thread of its process that reads the environment.
    unsafe { std::env::set_var("SSL_CERT_FILE", &public_pem) };
    // A broker (a TLS server) whose certificate for 127.0.0.1 the public CA issued, or ours.
    let serve = |issuer: (&openssl::x509::X509, &gateway_pki::Key)| {
        let key = new_key().unwrap();
        let names = ["127.0.0.1".to_owned()];
        let cert = issue("broker", &key, Kind::Server(&names), Some(issuer), -1, 30).unwrap();
        let mut a = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
        a.set_certificate(&cert).unwrap();
        a.set_private_key(&key).unwrap();
        a.add_extra_chain_cert(issuer.0.clone()).unwrap();
        let a = a.build();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let _ = a.accept(s);
        });
        port
    };
    let handshake = |ca_file: Option<&std::path::Path>, port: u16| {
        let c = connector(&Tls {
            ca_file: ca_file.map(|p| p.to_owned()),
            cert: None,
        })
        .unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.connect("127.0.0.1", tcp)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    // Without a CA file, the system's store decides: the public CA's certificate passes.
    handshake(None, serve((&public, &public_key))).expect("the system store");
    // With ours, only ours: the public CA's certificate for the same name is refused.
    let e = handshake(Some(&ours_pem), serve((&public, &public_key))).unwrap_err();
    assert!(e.contains("certificate verify failed"), "{e}");
    handshake(Some(&ours_pem), serve((&ours, &ours_key))).expect("our CA's certificate");
}
