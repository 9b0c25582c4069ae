//! What a person reads when a certificate file is wrong: the setting, the file, the
//! certificate's name and dates, and what to do; never an OpenSSL error stack.

use gateway_dtls::{client_context, server_context, ClientSettings, ServerSettings};
use gateway_pki::{issue_to, Kind};
use std::path::Path;

/// A CA and a server certificate valid from `from` to `to` days from now, in `dir`.
fn pki(dir: &Path, from: i64, to: i64) {
    let d = |f: &str| dir.join(f);
    let ca = issue_to(
        &d("ca.pem"),
        &d("ca.key"),
        "Test CA",
        Kind::Ca,
        None,
        -10,
        30,
    )
    .unwrap();
    let names = vec!["localhost".to_owned()];
    issue_to(
        &d("server.pem"),
        &d("server.key"),
        "gw.example",
        Kind::Server(&names),
        Some((&ca.0, &ca.1)),
        from,
        to,
    )
    .unwrap();
    issue_to(
        &d("other.pem"),
        &d("other.key"),
        "other",
        Kind::Device,
        Some((&ca.0, &ca.1)),
        -1,
        30,
    )
    .unwrap();
}

fn server_settings(dir: &Path, cert: &str, key: &str) -> ServerSettings {
    ServerSettings {
        cert_file: Some(dir.join(cert)),
        key_file: Some(dir.join(key)),
        client_ca_file: Some(dir.join("ca.pem")),
        mtu: 1232,
        ..Default::default()
    }
}

/// What is said of the dates of the certificate in `cert`.
fn dates(dir: &Path, cert: &str) -> String {
    let pem = std::fs::read(dir.join(cert)).unwrap();
    let cert_x = openssl::x509::X509::from_pem(&pem).unwrap();
    gateway_dtls::certs::date_problem("cert_file", &dir.join(cert), &cert_x, "renew it")
        .expect("a date problem")
}

fn server_error(dir: &Path, cert: &str, key: &str) -> String {
    match server_context(&server_settings(dir, cert, key)) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_missing_or_mismatched_certificate_is_refused_and_dates_are_said_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    pki(d, -1, 30);
    let missing = server_error(d, "nope.pem", "server.key");
    assert!(
        missing.contains(&format!(
            "cert_file {}: No such file",
            d.join("nope.pem").display()
        )) && missing.contains("gateway certs server --name HOST"),
        "{missing}"
    );
    let pair = server_error(d, "server.pem", "other.key");
    assert!(
        pair.contains(&format!(
            "key_file {} does not belong to cert_file {} (CN=gw.example)",
            d.join("other.key").display(),
            d.join("server.pem").display()
        )),
        "{pair}"
    );

    // Dates are said, not refused: the context is built (a sink that cannot be built keeps
    // the whole gateway from starting, its sources unread), and handshakes fail meanwhile.
    pki(d, -30, -1);
    assert!(server_context(&server_settings(d, "server.pem", "server.key")).is_ok());
    let expired = dates(d, "server.pem");
    assert!(
        expired.contains("the certificate CN=gw.example expired on") && expired.contains("GMT"),
        "{expired}"
    );

    pki(d, 2, 30);
    assert!(server_context(&server_settings(d, "server.pem", "server.key")).is_ok());
    let future = dates(d, "server.pem");
    assert!(
        future.contains("is not valid before") && future.contains("is the clock right"),
        "{future}"
    );

    for e in [&missing, &pair, &expired, &future] {
        assert!(
            !e.contains("error:0") && !e.contains(".c:"),
            "an OpenSSL stack: {e}"
        );
    }
}

#[test]
fn a_ca_file_that_is_not_a_certificate_is_refused_and_one_only_expired_is_said() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("junk.pem"), "hello").unwrap();
    let c = |ca: &str| match client_context(&ClientSettings {
        ca_file: Some(d.join(ca)),
        mtu: 1232,
        ..Default::default()
    }) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    let junk = c("junk.pem");
    assert!(
        junk.contains("ca_file") && junk.contains("no PEM certificate"),
        "{junk}"
    );
    issue_to(
        &d.join("old.pem"),
        &d.join("old.key"),
        "Old CA",
        Kind::Ca,
        None,
        -30,
        -2,
    )
    .unwrap();
    // Said, not refused (see above).
    let ok = client_context(&ClientSettings {
        ca_file: Some(d.join("old.pem")),
        mtu: 1232,
        ..Default::default()
    });
    assert!(ok.is_ok());
    let pem = std::fs::read(d.join("old.pem")).unwrap();
    let certs = openssl::x509::X509::stack_from_pem(&pem).unwrap();
    let old = gateway_dtls::certs::ca_date_problem("ca_file", &d.join("old.pem"), &certs).unwrap();
    assert!(
        old.contains("every CA certificate in it has expired (CN=Old CA, valid from"),
        "{old}"
    );
    assert!(c("none.pem").contains("gateway certs init"));
}

#[test]
fn a_crl_file_that_is_missing_or_holds_no_crl_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d, -1, 30);
    std::fs::write(d.join("junk.pem"), "hello").unwrap();
    let mut broken = String::from("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n");
    broken.insert_str(0, "# a CRL that was cut short\n");
    std::fs::write(d.join("broken.pem"), broken).unwrap();
    let e = |crl: &str| match server_context(&ServerSettings {
        cert_file: Some(d.join("server.pem")),
        key_file: Some(d.join("server.key")),
        client_ca_file: Some(d.join("ca.pem")),
        client_crl_file: Some(d.join(crl)),
        mtu: 1232,
        ..Default::default()
    }) {
        Ok(_) => panic!("{crl} accepted"),
        Err(e) => e.to_string(),
    };
    let none = e("none.pem");
    assert!(
        none.contains("client_crl_file") && none.contains("none.pem") && none.contains("revoke"),
        "{none}"
    );
    let junk = e("junk.pem");
    assert!(junk.contains("no PEM CRL in it"), "{junk}");
    let broken = e("broken.pem");
    assert!(broken.contains("CRL 1 in it does not parse"), "{broken}");
}

#[test]
fn the_chain_sent_after_a_certificate_not_yet_valid_is_built_all_the_same() {
    // A Pi whose clock is behind at start: its certificate (issued by an intermediate CA) is
    // not yet valid then. The chain to send was worked out once, by a verification that checked
    // dates, and came out empty: the intermediate was never sent, and once the clock was right
    // every handshake still failed ("unable to get local issuer certificate") until a restart.
    use gateway_pki::{issue, new_key, Kind};
    let (root_key, mid_key, leaf_key) =
        (new_key().unwrap(), new_key().unwrap(), new_key().unwrap());
    let root = issue("Root", &root_key, Kind::Ca, None, -10, 30).unwrap();
    let mid = issue(
        "Intermediate",
        &mid_key,
        Kind::Ca,
        Some((&root, &root_key)),
        -10,
        30,
    )
    .unwrap();
    let leaf = issue(
        "pi-01",
        &leaf_key,
        Kind::Device,
        Some((&mid, &mid_key)),
        1,
        30,
    )
    .unwrap();
    let sent = gateway_dtls::certs::chain_to_send(&leaf, &[root, mid.clone()]);
    assert_eq!(sent.len(), 1, "the intermediate, not the root");
    assert_eq!(sent[0].to_der().unwrap(), mid.to_der().unwrap());
}
