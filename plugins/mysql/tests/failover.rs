//! A `url` that lists several servers: the sink writes to the one in use and moves on when it
//! is gone or stops taking writes. The second server is a MariaDB of the test's own
//! (`support::OwnServer`) beside the machine's.

mod support;

use gateway_sdk::{
    testing::{sample_readings, SinkHarness},
    ErrorKind,
};
use mysql::Mysql;
use support::{admin_url, OwnServer, TestDb, TestUser};

#[test]
fn a_server_that_is_down_is_passed_over_for_the_next_in_url() {
    let db = TestDb::new("failover");
    // The first server in the list refuses connections (nothing listens on port 1).
    let cfg = db
        .config("")
        .replacen("mysql://root@", "mysql://root@127.0.0.1:1,", 1);
    assert!(cfg.contains("@127.0.0.1:1,"), "{cfg}");
    let mut sink = SinkHarness::new::<Mysql>(&cfg).unwrap();
    sink.write(sample_readings(20)).unwrap();
    sink.write(sample_readings(5)).unwrap();
    let n: Vec<u64> = db.query("SELECT COUNT(*) FROM readings");
    assert_eq!(n, [25]);
    // With every server down, the error is retryable and names the last one tried.
    let mut down = SinkHarness::new::<Mysql>(
        "url = \"mysql://root@127.0.0.1:1,127.0.0.1:2/x\"\nconnect_timeout = \"1s\"\n",
    )
    .unwrap();
    let e = down.write(sample_readings(1)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    assert!(e.message().contains("127.0.0.1:2"), "{e}");
}

/// A server that takes the TCP connection and then says nothing (hung, or behind a firewall
/// that black-holes it) is passed over after `connect_timeout`, as a refusing one is; alone,
/// it is a retryable error in time, not a sink that hangs.
#[test]
fn a_server_that_never_answers_is_passed_over_in_time() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    // Accepts and holds each connection, sending nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming() {
            held.push(c);
        }
    });
    let db = TestDb::new("silent");
    let cfg = db
        .config("connect_timeout = \"1s\"\nwrite_timeout = \"3s\"\n")
        .replacen(
            "mysql://root@",
            &format!("mysql://root@127.0.0.1:{port},"),
            1,
        );
    let mut sink = SinkHarness::new::<Mysql>(&cfg).unwrap();
    let started = std::time::Instant::now();
    sink.write(sample_readings(20)).unwrap();
    assert_eq!(rows_here(&db), 20);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let mut alone = SinkHarness::new::<Mysql>(&format!(
        "url = \"mysql://root@127.0.0.1:{port}/x\"\nconnect_timeout = \"1s\"\n"
    ))
    .unwrap();
    let e = alone.write(sample_readings(1)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    assert!(e.message().contains("connect_timeout"), "{e}");
}

/// Rows of `db.readings` on the machine's server.
fn rows_here(db: &TestDb) -> u64 {
    db.query::<u64>("SELECT COUNT(*) FROM readings")[0]
}

/// Rows of `db.readings` on the test's own server.
fn rows_there(other: &OwnServer, db: &TestDb) -> u64 {
    other.query::<u64>(&format!("SELECT COUNT(*) FROM `{}`.readings", db.name))[0]
}

#[test]
fn a_read_only_server_hands_schema_and_writes_to_the_next_in_url() {
    let db = TestDb::new("switch");
    let user = TestUser::new(&format!("gw_test_switch_{}", std::process::id()));
    // The user may do anything in the database, but is no READ ONLY ADMIN: a read-only server
    // refuses its writes (1290), as a replica or a demoted primary does.
    let grant = format!("GRANT ALL ON `{}`.* TO '{}'@'%'", db.name, user.name);
    user.admin(&grant);
    let other = OwnServer::start();
    other.admin(&format!("CREATE DATABASE `{}`", db.name));
    other.admin(&format!(
        "CREATE USER '{}'@'%' IDENTIFIED BY '{}'",
        user.name, user.password
    ));
    other.admin(&grant);
    let cfg = db
        .config_as(
            &user.name,
            Some(("GATEWAY_TEST_SWITCH_PASSWORD", user.password.clone())),
            "",
        )
        .replacen(
            &format!("mysql://{}@", user.name),
            &format!("mysql://{}@127.0.0.1:{},", user.name, other.port),
            1,
        );
    assert!(cfg.contains(&format!(":{},", other.port)), "{cfg}");

    // A gateway started while the first server of its url is a replica: the schema and the
    // readings go to the next one.
    other.admin("SET GLOBAL read_only = 1");
    let mut sink = SinkHarness::new::<Mysql>(&cfg).unwrap();
    sink.write(sample_readings(10)).unwrap();
    assert_eq!(rows_here(&db), 10);
    let tables: Vec<u64> = other.query(&format!(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{}'",
        db.name
    ));
    assert_eq!(tables, [0], "nothing was made on the read-only server");
    drop(sink);

    // A primary switch while running: the first server takes the writes (and has the schema,
    // as a replica would), then is made read-only; the next batch goes to the other one, and
    // so do later ones.
    other.admin("SET GLOBAL read_only = 0");
    let mut sink = SinkHarness::new::<Mysql>(&cfg).unwrap();
    sink.write(sample_readings(7)).unwrap();
    assert_eq!((rows_there(&other, &db), rows_here(&db)), (7, 10));
    other.admin("SET GLOBAL read_only = 1");
    sink.write(sample_readings(5)).unwrap();
    assert_eq!((rows_there(&other, &db), rows_here(&db)), (7, 15));
    // Writable again, it is not taken back: the server in use stays until it fails.
    other.admin("SET GLOBAL read_only = 0");
    sink.write(sample_readings(3)).unwrap();
    assert_eq!((rows_there(&other, &db), rows_here(&db)), (7, 18));

    // A url whose one server is read-only: the batch is refused for now, and says why.
    other.admin("SET GLOBAL read_only = 1");
    drop(sink);
    let only_other = format!(
        "url = \"mysql://{}@127.0.0.1:{}/{}\"\npassword_env = \"GATEWAY_TEST_SWITCH_PASSWORD\"\n",
        user.name, other.port, db.name
    );
    let mut sink = SinkHarness::new::<Mysql>(&only_other).unwrap();
    let e = sink.write(sample_readings(1)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    assert!(e.message().contains("read-only"), "{e}");
    assert_eq!(rows_there(&other, &db), 7);
}

/// A server of `url` that is not a replica has no table when the sink fails over to it: here
/// the table and its schema record go from under the sink. The write after the failure makes it again; before,
/// the schema was checked once per instance and every write failed with 1146 for ever.
#[test]
fn a_server_without_the_table_gets_it_after_a_failed_write() {
    let db = TestDb::new("notable");
    let mut sink = SinkHarness::new::<Mysql>(&db.config("")).unwrap();
    sink.write(sample_readings(3)).unwrap();
    let _: Vec<u8> = db.query("DROP TABLE readings, gateway_schema");
    let e = sink.write(sample_readings(4)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    assert!(e.message().contains("1146"), "{e}");
    sink.write(sample_readings(4)).unwrap();
    let n: Vec<u64> = db.query("SELECT COUNT(*) FROM readings");
    assert_eq!(n, [4]);
}

/// The table renamed away (kept aside, say) while its schema record stays: the record alone
/// said the schema was there, the view was made over a table that was not (1146), and every
/// write failed for ever. The write after the failure makes the table and its view again.
#[test]
fn a_table_renamed_away_is_made_again_after_a_failed_write() {
    let db = TestDb::new("renamed");
    let mut sink = SinkHarness::new::<Mysql>(&db.config("")).unwrap();
    sink.write(sample_readings(3)).unwrap();
    let _: Vec<u8> = db.query("RENAME TABLE readings TO readings_2026");
    let e = sink.write(sample_readings(4)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    assert!(e.message().contains("1146"), "{e}");
    sink.write(sample_readings(4)).unwrap();
    let n: Vec<(u64, u64, u64)> = db.query(
        "SELECT (SELECT COUNT(*) FROM readings), (SELECT COUNT(*) FROM readings_v),
                (SELECT COUNT(*) FROM readings_2026)",
    );
    assert_eq!(n, [(4, 4, 3)]);
}

/// A TCP relay from a port of its own to `to` that stops passing bytes on (holding both
/// connections open) once `frozen` is set: a server that stopped answering mid-transaction.
fn freezing_relay(to: &str, frozen: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u16 {
    use std::{io::Read, io::Write, sync::atomic::Ordering};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let to = to.to_owned();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(a) = c else { return };
            let Ok(b) = std::net::TcpStream::connect(&to) else {
                return;
            };
            for (mut from, mut into) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
                let frozen = frozen.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        while frozen.load(Ordering::Relaxed) {
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                        if into.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    port
}

/// A write that timed out left its connection to be rolled back, and dropping the sink (at a
/// stop, or a reload that replaces it) waited for that for as long as the server said
/// nothing: the sink's thread never returned.
#[test]
fn a_sink_whose_server_stopped_answering_mid_write_is_dropped_in_time() {
    use std::sync::{atomic::Ordering, Arc};
    let db = TestDb::new("frozen");
    let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opts = mysql_async::Opts::from_url(&admin_url()).unwrap();
    let upstream = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
    let port = freezing_relay(&upstream, frozen.clone());
    let cfg = db
        .config("connect_timeout = \"1s\"\nwrite_timeout = \"1s\"\n")
        .replacen(&format!("@{upstream}"), &format!("@127.0.0.1:{port}"), 1);
    assert!(cfg.contains(&format!("127.0.0.1:{port}")), "{cfg}");
    let mut sink = SinkHarness::new::<Mysql>(&cfg).unwrap();
    sink.write(sample_readings(5)).unwrap();
    frozen.store(true, Ordering::Relaxed);
    let e = sink.write(sample_readings(5)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(sink);
        let _ = tx.send(());
    });
    let dropped = rx.recv_timeout(std::time::Duration::from_secs(6));
    frozen.store(false, Ordering::Relaxed);
    assert!(
        dropped.is_ok(),
        "the sink was still being dropped after 6 s"
    );
}
