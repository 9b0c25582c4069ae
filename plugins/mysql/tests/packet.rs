//! A batch larger than the server's `max_allowed_packet`, against a MariaDB of the test's own
//! (`gateway_test_support::mariadb`) started with a small one.

use gateway_sdk::{
    testing::{sample_readings, SinkHarness},
    ErrorKind,
};
use gateway_test_support::mariadb::MariaDb;
use mysql::Mysql;

/// A batch larger than the server's `max_allowed_packet` goes in several INSERTs: one
/// statement of it would be refused by the client at every try, and retried for ever (every
/// device routed to the sink waiting). A server of the test's own, with 2 MiB.
#[test]
fn a_batch_larger_than_max_allowed_packet_is_stored_in_several_statements() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = MariaDb::init(&dir.path().join("db"))
        .with_options(&["--max-allowed-packet=2097152".to_owned()]);
    db.start();
    db.query("CREATE DATABASE big");
    let mut s = SinkHarness::new::<Mysql>(&format!(
        "url = {:?}\nconnect_timeout = \"5s\"\n",
        db.url("big")
    ))
    .unwrap();
    // 80 readings of 60,000 bytes of text: 4.8 MB in all.
    let mut batch = sample_readings(80);
    for r in &mut batch {
        r.value = gateway_sdk::Value::Text("t".repeat(60_000).into());
    }
    s.write(batch).unwrap();
    assert_eq!(db.query("SELECT COUNT(*) FROM big.readings"), "80");
    assert_eq!(
        db.query("SELECT SUM(LENGTH(value_text)) FROM big.readings"),
        "4800000"
    );
}

/// A MariaDB of the test's own with a `max_allowed_packet` of `bytes`, and a database `big`.
fn server_with_packet(dir: &tempfile::TempDir, bytes: usize) -> MariaDb {
    let mut db = MariaDb::init(&dir.path().join("db"))
        .with_options(&[format!("--max-allowed-packet={bytes}")]);
    db.start();
    db.query("CREATE DATABASE big");
    db
}

/// `n` readings of 10,000 bytes of text each.
fn texts(n: usize) -> Vec<gateway_sdk::Reading> {
    let mut batch = sample_readings(n);
    for r in &mut batch {
        r.value = gateway_sdk::Value::Text("t".repeat(10_000).into());
    }
    batch
}

/// Statements are cut by what they take on the wire. Counted at 32 bytes a row beside the
/// values, where the binary protocol takes about 60 (each value's type, the length prefixes,
/// the kind, the NULL bitmap), a batch of 10 kB texts went in statements of 104 rows, 0.5 kB
/// over a `max_allowed_packet` of 1 MiB (older servers' default): the client refused the
/// statement at every try, and the sink stalled for ever.
#[test]
fn statements_fit_max_allowed_packet_as_the_protocol_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = server_with_packet(&dir, 1 << 20);
    let mut s = SinkHarness::new::<Mysql>(&format!(
        "url = {:?}\nconnect_timeout = \"5s\"\n",
        db.url("big")
    ))
    .unwrap();
    s.write(texts(200)).unwrap();
    assert_eq!(db.query("SELECT COUNT(*) FROM big.readings"), "200");
}

/// The server's `max_allowed_packet` is read, not taken to be at least 1 MiB (the statements
/// were cut at 1 MiB whatever the server took), and read again when a statement was refused
/// as too large: lowered while the sink runs, it applies to the connections made since.
#[test]
fn statements_fit_the_servers_max_allowed_packet_even_once_lowered() {
    let dir = tempfile::tempdir().unwrap();
    let db = server_with_packet(&dir, 256 << 10);
    let mut s = SinkHarness::new::<Mysql>(&format!(
        "url = {:?}\nconnect_timeout = \"5s\"\n",
        db.url("big")
    ))
    .unwrap();
    s.write(texts(60)).unwrap();
    assert_eq!(db.query("SELECT COUNT(*) FROM big.readings"), "60");
    // Lowered, and the sink's connections (made under the old value) gone.
    db.query("SET GLOBAL max_allowed_packet = 65536");
    let ids = db.query("SELECT id FROM information_schema.PROCESSLIST WHERE db = 'big'");
    for id in ids.lines() {
        let _ = db.try_query(&format!("KILL {id}"));
    }
    // One write may fail on the killed connection, one on the statement cut for the old value
    // (which has the value read again); the next goes in.
    let batch = texts(60);
    let tries: Vec<_> = (0..3).map(|_| s.write(batch.clone())).collect();
    assert!(
        tries.iter().any(|t| t.is_ok()),
        "three tries, all refused: {tries:?}"
    );
    assert_eq!(db.query("SELECT COUNT(*) FROM big.readings"), "120");
}

/// A reading that alone takes more than the server's `max_allowed_packet` can never be stored
/// there: it is refused for good (the host then keeps it as a dead letter, and stores the rest
/// of its batch), where before the client refused its statement at every try and the sink
/// stalled for ever.
#[test]
fn a_reading_larger_than_max_allowed_packet_is_refused_not_retried_for_ever() {
    let dir = tempfile::tempdir().unwrap();
    let db = server_with_packet(&dir, 64 << 10);
    let mut s = SinkHarness::new::<Mysql>(&format!(
        "url = {:?}\nconnect_timeout = \"5s\"\n",
        db.url("big")
    ))
    .unwrap();
    let mut batch = texts(3);
    batch[1].value = gateway_sdk::Value::Text("t".repeat(65_000).into());
    let e = s.write(batch.clone()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert!(e.message().contains("max_allowed_packet"), "{e}");
    // As the host's halving ends: the others stored, that one refused again.
    s.write(vec![batch[0].clone()]).unwrap();
    s.write(vec![batch[2].clone()]).unwrap();
    let e = s.write(vec![batch[1].clone()]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert_eq!(db.query("SELECT COUNT(*) FROM big.readings"), "2");
}
