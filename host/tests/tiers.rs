//! A server split in two tiers with NATS JetStream between them: the ingress tier
//! (`coaps-ingress` -> `nats`) answers the device once JetStream holds its readings, the store
//! tier (`nats` -> `sqlite`) writes at its own pace. A client (a sequence source into a
//! disk-buffered uplink) feeds it while each tier is killed with SIGKILL and restarted, and the
//! NATS server too (its own, in a temporary directory). Afterwards the store must hold exactly
//! the readings the source produced: none missing, none twice.

mod support;
use gateway_test_support::nats::NatsServer;
use std::time::{Duration, Instant};
use support::*;

#[test]
fn every_reading_is_stored_once_through_kills_of_each_tier_and_of_nats() {
    let n: u64 = 3000;
    let s = Setup::new();
    let certs = s.path("certs");
    make_certs(&certs, "pi-t");
    let c = |f: &str| certs.join(f).display().to_string();
    let mut nats = NatsServer::start(s.path("nats"));
    let url = nats.url();
    let ingress_port = free_udp_port();
    let db = s.path("store.sqlite");
    let gw = |dir: &str| {
        format!(
            "data_dir = {:?}\nshutdown_timeout = \"10s\"\nstats_interval = \"0s\"",
            s.path(dir).display().to_string()
        )
    };
    let ingress_cfg = s.config_named(
        "ingress",
        "server",
        &gw("ingress-data"),
        &format!(
            r#"[sources.ingress]
plugin = "coaps-ingress"
listen = "127.0.0.1:{ingress_port}"
cert_file = {sc:?}
key_file = {sk:?}
client_ca_file = {ca:?}

[sinks.to_nats]
plugin = "nats"
url = "{url}"
ack_timeout = "3s"
batch_timeout = "5ms"
retry_backoff = "200ms"
retry_backoff_max = "1s"
"#,
            sc = c("server.pem"),
            sk = c("server.key"),
            ca = c("ca.pem"),
        ),
    );
    let store_cfg = s.config_named(
        "store",
        "server",
        &gw("store-data"),
        &format!(
            r#"[sources.from_nats]
plugin = "nats"
url = "{url}"
batch = 200

[sinks.db]
plugin = "sqlite"
path = {db:?}
retry_backoff = "200ms"
retry_backoff_max = "1s"
"#,
            db = db.display().to_string(),
        ),
    );
    let emitted = s.path("emitted");
    let client_cfg = s.config_named(
        "client",
        "pi-t",
        &gw("client-data"),
        &format!(
            r#"[sources.seq]
plugin = "testkit-sequence"
count = {n}
batch_size = 10
interval = "10ms"
emitted_path = {emitted:?}
resume = true
stable_ids = true

[sinks.uplink]
plugin = "coaps-uplink"
uri = "coaps://localhost:{ingress_port}/gpsflowtemp"
ca_file = {ca:?}
cert_file = {dc:?}
key_file = {dk:?}
request_timeout = "5s"
batch_timeout = "50ms"
retry_backoff = "100ms"
retry_backoff_max = "1s"
buffer = {{ type = "disk", max_size = "16MiB" }}
"#,
            emitted = emitted.display().to_string(),
            ca = c("ca.pem"),
            dc = c("device-pi-t.pem"),
            dk = c("device-pi-t.key"),
        ),
    );
    let stored = || -> (u64, u64, i64, i64) {
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| {
                c.query_row(
                    "SELECT COUNT(*), COUNT(DISTINCT value_int), COALESCE(MIN(value_int), -1), COALESCE(MAX(value_int), -1) FROM readings",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
            })
            .unwrap_or((0, 0, -1, -1))
    };
    let produced = || -> u64 {
        std::fs::read_to_string(&emitted)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let logs = |s: &Setup| {
        s.tails(
            &[
                "client.stderr.log",
                "ingress.stderr.log",
                "store.stderr.log",
            ],
            25,
        )
    };
    let until = |what: &str, limit: u64, done: &dyn Fn() -> bool| {
        let end = Instant::now() + Duration::from_secs(limit);
        while !done() {
            assert!(
                Instant::now() < end,
                "{what}: not in time (produced {}, stored {:?})\n{}",
                produced(),
                stored(),
                logs(&s)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let mut store = Running::start_named(&s, "store", &store_cfg);
    let mut ingress = Running::start_named(&s, "ingress", &ingress_cfg);
    let mut client = Running::start_named(&s, "client", &client_cfg);
    until("the first readings", 60, &|| stored().0 >= 300);

    // The store tier dies: JetStream keeps what it has not acknowledged.
    store.signal(libc::SIGKILL);
    store.wait(Duration::from_secs(10)).expect("killed");
    let at = stored().0;
    until("readings waiting in JetStream", 30, &|| {
        produced() >= at + 300
    });
    store = Running::start_named(&s, "store", &store_cfg);
    until("the store catching up", 60, &|| stored().0 >= at + 300);

    // The ingress tier dies: the devices' disk buffers keep what it did not answer.
    ingress.signal(libc::SIGKILL);
    ingress.wait(Duration::from_secs(10)).expect("killed");
    std::thread::sleep(Duration::from_secs(1));
    ingress = Running::start_named(&s, "ingress", &ingress_cfg);
    let at = stored().0;
    until("readings after the ingress came back", 60, &|| {
        stored().0 >= at + 300
    });

    // NATS dies: both tiers wait, and carry on when it is back with its stream on disk.
    nats.kill();
    std::thread::sleep(Duration::from_secs(2));
    nats.up();
    until("everything stored", 180, &|| {
        produced() == n && stored().0 >= n
    });
    for r in [&mut client, &mut ingress, &mut store] {
        assert!(r.stop(Duration::from_secs(30)).success(), "{}", logs(&s));
    }
    let (count, distinct, min, max) = stored();
    eprintln!("tiers: produced {n}, stored {count} ({distinct} distinct values, {min}..={max})");
    assert_eq!(
        (count, distinct, min, max),
        (n, n, 0, n as i64 - 1),
        "count, distinct values, min, max\n{}",
        logs(&s)
    );
}
