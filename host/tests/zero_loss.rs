//! The zero-loss proof. A client host (a sequence source standing in for the sensors, into a
//! disk-buffered coaps-uplink) and a server host (coaps-ingress into the mysql sink) run as
//! separate `gateway` processes, with a relay between them that drops 20 % and duplicates 5 % of
//! the datagrams each way (and delays, so reorders, them). During the run the client is killed
//! with SIGKILL three times, the server is restarted three times, and the database is stopped for
//! 30 s. Afterwards the database must hold exactly the readings the source produced: none missing,
//! none twice.
//!
//! "Produced" is what the host acknowledged to the source (the disk buffer had it on disk): the
//! sequence source writes its next value after each acknowledged batch and, restarted, goes on
//! from there. A batch emitted but not yet acknowledged when the client was killed is emitted
//! again, with the same reading ids, so the later hops must drop it as a duplicate.
//!
//! The database is a private MariaDB server started by the test from the machine's `mariadbd`
//! (so stopping it disturbs nothing else). `GATEWAY_SOAK_SCALE=N` makes the run N times longer;
//! `cargo xtask soak` runs it that way.

mod support;
use gateway_test_support::{
    lossy_relay::{lossy_relay, RelayCounts},
    mariadb::MariaDb,
};
use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};
use support::*;

fn scale() -> u64 {
    std::env::var("GATEWAY_SOAK_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1)
}

/// Sum of `key=N` over the log lines that contain `marker`.
fn sum_field(log: &str, marker: &str, key: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains(marker))
        .filter_map(|l| log_u64(l, &format!("{key}=")))
        .sum()
}

#[test]
fn every_reading_reaches_mysql_exactly_once_through_kills_restarts_a_db_outage_and_a_lossy_link() {
    let scale = scale();
    let n: u64 = 20_000 * scale;
    let s = Setup::new();
    let certs = s.path("certs");
    make_certs(&certs, "pi-zl");
    let c = |f: &str| certs.join(f).display().to_string();
    let mut db = MariaDb::init(&s.path("mariadb"));
    db.start();
    db.query("CREATE DATABASE zl");

    let server_port = free_udp_port();
    let stop_relay = Arc::new(AtomicBool::new(false));
    let relay = Arc::new(RelayCounts::default());
    // GATEWAY_ZL_LOSS=LOSS,DUP changes the relay's rates (to compare with a clean link).
    let (loss, dup) = std::env::var("GATEWAY_ZL_LOSS")
        .ok()
        .and_then(|v| {
            let (l, d) = v.split_once(',')?;
            Some((l.parse().ok()?, d.parse().ok()?))
        })
        .unwrap_or((0.20, 0.05));
    let relay_port = lossy_relay(
        server_port,
        loss,
        dup,
        Duration::from_millis(20),
        0x2545_f491_4f6c_dd1d,
        stop_relay.clone(),
        relay.clone(),
    );

    let server_cfg = s.config_named(
        "server",
        "server",
        &format!(
            "data_dir = {:?}\nshutdown_timeout = \"10s\"\nstats_interval = \"0s\"",
            s.path("server-data").display().to_string()
        ),
        &format!(
            r#"[sources.ingress]
plugin = "coaps-ingress"
listen = "127.0.0.1:{server_port}"
cert_file = {sc:?}
key_file = {sk:?}
client_ca_file = {ca:?}
require_client_cert = true

[sinks.db]
plugin = "mysql"
log_level = "debug"
url = "mysql://root@127.0.0.1:{db_port}/zl"
batch_size = 2000
batch_timeout = "20ms"
retry_backoff = "200ms"
retry_backoff_max = "2s"
"#,
            sc = c("server.pem"),
            sk = c("server.key"),
            ca = c("ca.pem"),
            db_port = db.port(),
        ),
    );
    let emitted = s.path("emitted");
    let client_cfg = s.config_named(
        "client",
        "pi-zl",
        &format!(
            "data_dir = {:?}\nshutdown_timeout = \"10s\"\nstats_interval = \"0s\"",
            s.path("client-data").display().to_string()
        ),
        &format!(
            r#"[sources.seq]
plugin = "testkit-sequence"
count = {n}
batch_size = 10
interval = "20ms"
emitted_path = {emitted:?}
resume = true
stable_ids = true

[sinks.uplink]
plugin = "coaps-uplink"
uri = "coaps://localhost:{relay_port}/gpsflowtemp"
ca_file = {ca:?}
cert_file = {dc:?}
key_file = {dk:?}
ack_timeout = "200ms"
request_timeout = "10s"
handshake_timeout = "10s"
nstart = 32
max_request_readings = 25
batch_size = 5000
batch_timeout = "200ms"
retry_backoff = "100ms"
retry_backoff_max = "1s"
buffer = {{ type = "disk", max_size = "64MiB" }}
"#,
            emitted = emitted.display().to_string(),
            ca = c("ca.pem"),
            dc = c("device-pi-zl.pem"),
            dk = c("device-pi-zl.key"),
        ),
    );

    let stored = |db: &MariaDb| -> u64 {
        db.try_query("SELECT COUNT(*) FROM zl.readings")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let produced = || -> u64 {
        std::fs::read_to_string(&emitted)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let logs = |s: &Setup| {
        if let Ok(keep) = std::env::var("GATEWAY_TEST_KEEP") {
            // For a look afterwards: copy the logs out of the temporary directory.
            for f in [
                "client.stderr.log",
                "server.stderr.log",
                "mariadb/mariadbd.log",
            ] {
                let _ = std::fs::copy(s.path(f), Path::new(&keep).join(f.replace('/', "-")));
            }
        }
        let tail = |name: &str| {
            let t = std::fs::read_to_string(s.path(name)).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "--- client (last lines) ---\n{}\n--- server (last lines) ---\n{}",
            tail("client.stderr.log"),
            tail("server.stderr.log")
        )
    };

    let started = Instant::now();
    let mut server = Running::start_named(&s, "server", &server_cfg);
    let mut client = Running::start_named(&s, "client", &client_cfg);
    let end = Instant::now() + Duration::from_secs(60);
    while stored(&db) < 500 {
        assert!(
            Instant::now() < end,
            "no readings stored within 60 s\n{}",
            logs(&s)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for round in 1..=3 {
        std::thread::sleep(Duration::from_secs(2 * scale));
        client.signal(libc::SIGKILL);
        client
            .wait(Duration::from_secs(10))
            .expect("killed client exits");
        eprintln!(
            "round {round}: killed the client at {} produced, {} stored",
            produced(),
            stored(&db)
        );
        client = Running::start_named(&s, "client", &client_cfg);
        std::thread::sleep(Duration::from_secs(2 * scale));
        let status = server.stop(Duration::from_secs(30));
        assert!(status.code().is_some(), "server exited by a signal");
        eprintln!(
            "round {round}: restarting the server at {} produced, {} stored",
            produced(),
            stored(&db)
        );
        server = Running::start_named(&s, "server", &server_cfg);
    }
    std::thread::sleep(Duration::from_secs(2));
    db.stop();
    eprintln!(
        "database stopped for 30 s at {} produced, {} stored",
        produced(),
        stored(&db)
    );
    std::thread::sleep(Duration::from_secs(30));
    db.start();
    let back = Instant::now();
    let at_restart = (produced(), stored(&db));
    eprintln!(
        "database back at {} produced, {} stored",
        at_restart.0, at_restart.1
    );
    let end = Instant::now() + Duration::from_secs(240 * scale);
    while !(produced() == n && stored(&db) >= n) {
        assert!(
            Instant::now() < end,
            "not everything stored in time: produced {}, stored {}\n{}",
            produced(),
            stored(&db),
            logs(&s)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let drained = back.elapsed();
    let total = started.elapsed();
    assert!(
        client.stop(Duration::from_secs(30)).success(),
        "{}",
        logs(&s)
    );
    assert!(
        server.stop(Duration::from_secs(30)).success(),
        "{}",
        logs(&s)
    );
    stop_relay.store(true, Ordering::SeqCst);

    let row = db.query(
        "SELECT COUNT(*), COUNT(DISTINCT value_int), MIN(value_int), MAX(value_int), COUNT(DISTINCT id) \
         FROM zl.readings WHERE sensor = 'seq' AND device = 'pi-zl'",
    );
    let f: Vec<u64> = row.split_whitespace().map(|v| v.parse().unwrap()).collect();
    let client_log = std::fs::read_to_string(s.path("client.stderr.log")).unwrap();
    let server_log = std::fs::read_to_string(s.path("server.stderr.log")).unwrap();
    let ingress_dups = sum_field(&server_log, "ingress stats", "duplicates");
    let db_dups = sum_field(
        &server_log,
        "readings already stored were skipped",
        "duplicates",
    );
    eprintln!(
        "zero-loss: produced {n}, stored {} (distinct values {}, min {}, max {}), duplicates dropped: {ingress_dups} by the ingress + {db_dups} by the database; \
         relay passed {} datagrams, dropped {}, duplicated {}; drained {:.1} s after the database came back ({} produced / {} stored then); whole run {:.0} s",
        f[0], f[1], f[2], f[3],
        relay.passed.load(Ordering::Relaxed),
        relay.dropped.load(Ordering::Relaxed),
        relay.duplicated.load(Ordering::Relaxed),
        drained.as_secs_f64(),
        at_restart.0,
        at_restart.1,
        total.as_secs_f64()
    );
    assert_eq!(
        f,
        vec![n, n, 0, n - 1, n],
        "count, distinct values, min, max, distinct ids"
    );
    // Each outage really happened and was ridden out.
    assert!(
        client_log.contains("disk buffer recovered readings not yet delivered"),
        "a killed client left nothing in its buffer to recover?\n{}",
        logs(&s)
    );
    assert!(
        client_log.contains("5.03"),
        "the ingress never answered 5.03 while the database was down\n{}",
        logs(&s)
    );
    assert!(
        ingress_dups + db_dups > 0,
        "re-sent batches should have been dropped as duplicates somewhere"
    );
    db.stop();
}
