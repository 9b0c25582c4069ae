//! `tls = true` with `tls_ca_file` against a real MariaDB serving TLS: a server of the test's
//! own (`gateway_test_support::mariadb`) started with a certificate from a CA made here, and
//! a user that may log in over TLS only. The sink stores through a server its CA file vouches
//! for, under the name it is for, and refuses any other.

use gateway_sdk::testing::{sample_readings, SinkHarness};
use gateway_test_support::mariadb::MariaDb;
use mysql::Mysql;
use std::{os::unix::fs::PermissionsExt, path::Path};

/// A CA and a server certificate it issued for `localhost`, in `dir`: the CA's file.
fn pki(dir: &Path) -> std::path::PathBuf {
    gateway_test_support::coaps::ca_and_server(dir, "localhost", &["localhost".to_owned()]);
    dir.join("ca.pem")
}

/// The sink as user `gw` (who may log in over TLS only) at `host`, trusting `ca` alone.
fn sink(db: &MariaDb, host: &str, ca: &Path, password: &Path) -> SinkHarness {
    SinkHarness::new::<Mysql>(&format!(
        "url = \"mysql://gw@{host}:{}/gw\"\npassword_file = {:?}\ntls = true\n\
         tls_ca_file = {:?}\nconnect_timeout = \"5s\"\n",
        db.port(),
        password.display().to_string(),
        ca.display().to_string()
    ))
    .unwrap()
}

#[test]
fn tls_stores_through_a_server_its_ca_file_vouches_for_and_refuses_others() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let file = |f: &str| dir.path().join(f).display().to_string();
    let mut db = MariaDb::init(&dir.path().join("db")).with_options(&[
        format!("--ssl-ca={}", file("ca.pem")),
        format!("--ssl-cert={}", file("server.pem")),
        format!("--ssl-key={}", file("server.key")),
    ]);
    db.start();
    assert_eq!(
        db.query("SELECT @@have_ssl"),
        "YES",
        "the test's MariaDB serves TLS"
    );
    db.query("CREATE DATABASE gw");
    db.query("CREATE USER gw@'%' IDENTIFIED BY 'gw-tls-test' REQUIRE SSL");
    db.query("GRANT ALL ON gw.* TO gw@'%'");
    let password = dir.path().join("pw");
    std::fs::write(&password, "gw-tls-test\n").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Vouched for, under its name: stored (over TLS: gw may not log in otherwise).
    let mut s = sink(&db, "localhost", &ca, &password);
    s.write(sample_readings(5)).unwrap();
    assert_eq!(db.query("SELECT COUNT(*) FROM gw.readings"), "5");
    drop(s);

    // The same server under a name its certificate is not for: refused.
    let mut s = sink(&db, "127.0.0.1", &ca, &password);
    let e = s.write(sample_readings(1)).unwrap_err();
    assert!(e.message().contains("certificate verify failed"), "{e}");

    // Another CA, with the same name: the CA file is the only one trusted, so refused.
    let other = tempfile::tempdir().unwrap();
    let other_ca = pki(other.path());
    let mut s = sink(&db, "localhost", &other_ca, &password);
    let e = s.write(sample_readings(1)).unwrap_err();
    assert!(e.message().contains("certificate verify failed"), "{e}");
    assert_eq!(
        db.query("SELECT COUNT(*) FROM gw.readings"),
        "5",
        "nothing more was stored"
    );
}
