//! A batch larger than the server's `max_allowed_packet`, against a MariaDB of the test's own
//! (`gateway_test_support::mariadb`) started with a small one.

use gateway_sdk::testing::{sample_readings, SinkHarness};
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
