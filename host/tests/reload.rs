//! SIGHUP: the config is read again, checked, and only the instances whose settings changed are
//! rebuilt; what a replaced sink held goes to its successor, and a bad file changes nothing.

mod support;
use std::time::{Duration, Instant};
use support::*;

/// Sources `a` and `b` emit a reading every 10 ms (stable ids); `a` feeds a disk-buffered
/// recorder, `b` a plain one. `sinks_extra` goes into both sink tables.
fn body(s: &Setup, sinks_extra: &str, more: &str) -> String {
    format!(
        r#"[sources.a]
plugin = "testkit-sequence"
interval = "10ms"
stable_ids = true

[sources.b]
plugin = "testkit-sequence"
interval = "10ms"
stable_ids = true

[sinks.buffered]
plugin = "testkit-recorder"
path = {:?}
inputs = ["a"]
buffer = {{ type = "disk" }}
{sinks_extra}

[sinks.queued]
plugin = "testkit-recorder"
path = {:?}
inputs = ["b"]
{sinks_extra}
{more}"#,
        s.path("buffered.txt").display().to_string(),
        s.path("queued.txt").display().to_string(),
    )
}

fn gateway_extra(s: &Setup) -> String {
    format!("data_dir = {:?}", s.path("data").display().to_string())
}

/// The distinct values recorded for `sensor` in `file`, sorted.
fn distinct(s: &Setup, file: &str, sensor: &str) -> Vec<i64> {
    let mut v = s.recorded(file, sensor);
    v.sort_unstable();
    v.dedup();
    v
}

/// Checks that every reading of source `a` the sink writing `quick.txt` stored reached the
/// one writing `other` (`who`) too, contiguous there; returns what `quick.txt` holds.
fn assert_reached(s: &Setup, other: &str, who: &str, log: &str) -> Vec<i64> {
    let (theirs, quick) = (distinct(s, other, "a"), distinct(s, "quick.txt", "a"));
    let missing: Vec<_> = quick
        .iter()
        .filter(|v| theirs.binary_search(v).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} readings the quick sink stored never reached {who}: {missing:?}\n{log}",
        missing.len()
    );
    assert_contiguous(&theirs, &format!("a through {who}"));
    quick
}

fn wait_until(what: &str, gw: &Running, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "{what}; stderr:\n{}", gw.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// 20,000 readings of a `testkit-sequence` source (with `source`) into a `testkit-recorder`
/// sink writing `out.txt` that retries quickly (with `sink`).
fn seq_into_rec(s: &Setup, source: &str, sink: &str) -> String {
    format!(
        r#"[sources.seq]
plugin = "testkit-sequence"
count = 20000
{source}

[sinks.rec]
plugin = "testkit-recorder"
path = {:?}
retry_backoff = "20ms"
retry_backoff_max = "50ms"
{sink}
"#,
        s.path("out.txt").display().to_string(),
    )
}

/// Sends SIGHUP and waits (20 s at most) until the log says "reload applied".
fn hup_until_applied(gw: &Running) {
    gw.signal(libc::SIGHUP);
    assert!(
        gw.wait_for_log("reload applied", Duration::from_secs(20)),
        "{}",
        gw.stderr()
    );
}

#[test]
fn a_reload_rebuilds_only_what_changed_and_the_successor_takes_what_was_held() {
    let s = Setup::new();
    // Both sinks fail every write (an outage, as a wrong password would make): `a`'s readings
    // pile up in the disk buffer, `b`'s first batch waits in the plain sink's retries.
    let cfg = s.config(&gateway_extra(&s), &body(&s, "fail_first = 1000000", ""));
    let mut gw = Running::start(&s, &cfg, &[]);
    wait_until("both sinks retry", &gw, Duration::from_secs(20), || {
        let err = gw.stderr();
        ["buffered", "queued"].iter().all(|k| {
            err.lines().any(|l| {
                l.contains(&format!("sink{{instance={k}}}")) && l.contains("write failed; retrying")
            })
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.lines("buffered.txt").is_empty() && s.lines("queued.txt").is_empty());

    // The fix: both sinks lose `fail_first`; a third sink is added. The sources' tables are
    // the same, so they go on (their sequence is not restarted).
    let added = format!(
        "\n[sinks.added]\nplugin = \"testkit-recorder\"\npath = {:?}\ninputs = [\"a\"]\n",
        s.path("added.txt").display().to_string()
    );
    s.config(&gateway_extra(&s), &body(&s, "", &added));
    hup_until_applied(&gw);
    let log = gw.stderr();
    let line = log.lines().find(|l| l.contains("reload applied")).unwrap();
    assert!(
        line.contains("sinks: rebuilt buffered, queued; added added"),
        "{line}"
    );
    assert!(!line.contains("sources:"), "no source changed: {line}");

    wait_until(
        "readings flow after the reload",
        &gw,
        Duration::from_secs(20),
        || {
            distinct(&s, "buffered.txt", "a").len() > 100
                && distinct(&s, "queued.txt", "b").len() > 50
                && !s.recorded("added.txt", "a").is_empty()
        },
    );
    let status = gw.stop(Duration::from_secs(20));
    assert!(status.success(), "{}", gw.stderr());
    let log = gw.stderr();
    assert_eq!(
        log.matches("sequence starting").count(),
        2,
        "the unchanged sources ran on through the reload:\n{log}"
    );
    assert!(
        log.contains("the disk buffer keeps them for the instance that replaces this one"),
        "{log}"
    );
    // Nothing lost: what the buffer held and the batch the plain sink was retrying reached
    // the successors.
    assert_contiguous(
        &distinct(&s, "buffered.txt", "a"),
        "a through the buffered sink",
    );
    assert_contiguous(&distinct(&s, "queued.txt", "b"), "b through the plain sink");
}

#[test]
fn a_file_that_does_not_check_changes_nothing_and_says_why() {
    let s = Setup::new();
    let extra = gateway_extra(&s);
    let cfg = s.config(&extra, &body(&s, "", ""));
    let mut gw = Running::start(&s, &cfg, &[]);
    wait_until("readings flow", &gw, Duration::from_secs(20), || {
        distinct(&s, "queued.txt", "b").len() > 10
    });

    // A key the plugin does not know: the check builds every instance and refuses it.
    s.config(
        &extra,
        &body(&s, "", "").replace("inputs = [\"b\"]", "inputs = [\"b\"]\nno_such_key = 1"),
    );
    gw.signal(libc::SIGHUP);
    assert!(
        gw.wait_for_log(
            "reload refused, nothing changed: 1 problem",
            Duration::from_secs(20)
        ),
        "{}",
        gw.stderr()
    );
    assert!(gw.stderr().contains("no_such_key"), "{}", gw.stderr());

    // Not TOML at all.
    std::fs::write(&cfg, "[gateway\n").unwrap();
    gw.signal(libc::SIGHUP);
    wait_until("the second refusal", &gw, Duration::from_secs(20), || {
        gw.stderr()
            .matches("reload refused, nothing changed")
            .count()
            == 2
    });

    // The same file as at the start: nothing to do.
    s.config(&extra, &body(&s, "", ""));
    gw.signal(libc::SIGHUP);
    assert!(
        gw.wait_for_log("reload: no instance changed", Duration::from_secs(20)),
        "{}",
        gw.stderr()
    );

    // A [gateway] setting is not applied (and said so); source `b` is removed and `a`
    // changed: `a` is replaced and goes on from where it was (its values are contiguous).
    let before = distinct(&s, "queued.txt", "b").len();
    let text = body(&s, "", "")
        .replace(
            "[sources.b]\nplugin = \"testkit-sequence\"\ninterval = \"10ms\"\nstable_ids = true\n",
            "",
        )
        .replace("inputs = [\"b\"]", "inputs = [\"a\"]")
        .replacen("interval = \"10ms\"", "interval = \"5ms\"", 1);
    s.config(&format!("{extra}\nshutdown_timeout = \"7s\""), &text);
    hup_until_applied(&gw);
    let log = gw.stderr();
    assert!(
        log.contains("[gateway] shutdown_timeout changed; a reload does not apply"),
        "{log}"
    );
    let line = log.lines().find(|l| l.contains("reload applied")).unwrap();
    assert!(
        line.contains("sources: rebuilt a; removed b; sinks: rebuilt queued"),
        "{line}"
    );
    wait_until(
        "a reaches the re-routed sink",
        &gw,
        Duration::from_secs(20),
        || !s.recorded("queued.txt", "a").is_empty(),
    );
    let after = distinct(&s, "queued.txt", "b").len();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(distinct(&s, "queued.txt", "b").len(), after, "b stopped");
    assert!(after >= before);
    assert!(
        gw.stop(Duration::from_secs(20)).success(),
        "{}",
        gw.stderr()
    );
    assert_contiguous(
        &distinct(&s, "buffered.txt", "a"),
        "a across its replacement",
    );
    assert_contiguous(&distinct(&s, "queued.txt", "b"), "b until it was removed");
}

/// `gateway ARGS` for a step of the test's PKI; panics with its output if it fails.
fn certs(args: &[&str]) {
    let (status, out, err) = gateway(args);
    assert!(status.success(), "gateway {args:?}: {out}{err}");
}

#[test]
fn a_new_crl_applied_by_a_reload_ends_the_revoked_devices_session() {
    let s = Setup::new();
    let dir = s.path("certs");
    make_certs(&dir, "pi-07");
    let d = dir.to_str().unwrap();
    // A CRL from the start, listing another device.
    certs(&["certs", "device", "pi-99", "--dir", d]);
    certs(&["certs", "revoke", "pi-99", "--dir", d]);
    let c = |f: &str| dir.join(f).display().to_string();
    let port = free_udp_port();
    let server = s.server_config(&format!(
        r#"{}client_crl_file = {:?}
require_client_cert = true

[sinks.store]
plugin = "testkit-recorder"
path = {:?}
"#,
        ingress_source(&dir, port),
        c("crl.pem"),
        s.path("out.txt").display().to_string(),
    ));
    let client = s.config_named(
        "client",
        "pi-07",
        "stats_interval = \"0s\"\ndata_dir = \"client-data\"",
        &format!(
            r#"[sources.seq]
plugin = "testkit-sequence"
interval = "20ms"
stable_ids = true

[sinks.uplink]
plugin = "coaps-uplink"
uri = "coaps://localhost:{port}/gpsflowtemp"
ca_file = {:?}
cert_file = {:?}
key_file = {:?}
"#,
            c("ca.pem"),
            c("device-pi-07.pem"),
            c("device-pi-07.key"),
        ),
    );
    let mut srv = Running::start_named(&s, "server", &server);
    let cli = Running::start_named(&s, "client", &client);
    let arrived = || s.recorded("out.txt", "seq").len();
    wait_until("readings arrive", &srv, Duration::from_secs(30), || {
        arrived() > 20
    });

    // A reload with nothing changed keeps the session: readings go on, no new handshake.
    srv.signal(libc::SIGHUP);
    assert!(
        srv.wait_for_log("reload: no instance changed", Duration::from_secs(20)),
        "{}",
        srv.stderr()
    );
    let n = arrived();
    wait_until("readings go on", &srv, Duration::from_secs(20), || {
        arrived() > n + 20
    });
    assert_eq!(
        srv.stderr().matches("DTLS session established").count(),
        1,
        "{}",
        srv.stderr()
    );

    // pi-07 is revoked: the CRL file changes, the reload rebuilds the ingress, and the
    // device's session ends with it; its new handshakes are refused.
    certs(&["certs", "revoke", "pi-07", "--dir", d]);
    srv.signal(libc::SIGHUP);
    assert!(
        srv.wait_for_log("reload applied", Duration::from_secs(20)),
        "{}",
        srv.stderr()
    );
    let log = srv.stderr();
    let line = log.lines().find(|l| l.contains("reload applied")).unwrap();
    assert!(
        line.contains("sources: rebuilt ingress"),
        "the CRL is the ingress's file: {line}"
    );
    wait_until(
        "the device is refused",
        &srv,
        Duration::from_secs(30),
        || cli.stderr().contains("revoked") || srv.stderr().contains("revoked"),
    );
    let n = arrived();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(arrived(), n, "nothing arrives from a revoked device");
    assert!(
        srv.stop(Duration::from_secs(20)).success(),
        "{}",
        srv.stderr()
    );
    cli.signal(libc::SIGKILL);
}

#[test]
fn a_sink_whose_buffer_changes_reopens_it_and_a_plain_one_becoming_buffered_keeps_its_batch() {
    let s = Setup::new();
    let extra = gateway_extra(&s);
    // `queued` fails every write, so its first batch waits in its retries.
    let text =
        body(&s, "", "").replace("inputs = [\"b\"]", "inputs = [\"b\"]\nfail_first = 1000000");
    let cfg = s.config(&extra, &text);
    let mut gw = Running::start(&s, &cfg, &[]);
    wait_until(
        "readings flow and b's sink retries",
        &gw,
        Duration::from_secs(20),
        || {
            distinct(&s, "buffered.txt", "a").len() > 10
                && gw.stderr().contains("write failed; retrying")
        },
    );
    // The buffered sink's buffer settings and batch size change (its buffer is reopened);
    // the plain one gets a buffer and no more failures (what it held goes to its disk buffer).
    let text = body(&s, "", "")
        .replace(
            "buffer = { type = \"disk\" }",
            "buffer = { type = \"disk\", max_size = \"32MiB\" }\nbatch_size = 7",
        )
        .replace(
            "inputs = [\"b\"]",
            "inputs = [\"b\"]\nbuffer = { type = \"disk\" }",
        );
    s.config(&extra, &text);
    hup_until_applied(&gw);
    let line = gw
        .stderr()
        .lines()
        .find(|l| l.contains("reload applied"))
        .unwrap()
        .to_owned();
    assert!(line.contains("sinks: rebuilt buffered, queued"), "{line}");
    assert!(!gw.stderr().contains("is not started"), "{}", gw.stderr());
    let n = distinct(&s, "buffered.txt", "a").len();
    wait_until(
        "readings flow after the reload",
        &gw,
        Duration::from_secs(20),
        || {
            distinct(&s, "buffered.txt", "a").len() > n + 20
                && distinct(&s, "queued.txt", "b").len() > 20
        },
    );
    // Back as it was: a second reload of the same sinks works as well.
    s.config(&extra, &body(&s, "", ""));
    gw.signal(libc::SIGHUP);
    wait_until("the second reload", &gw, Duration::from_secs(20), || {
        gw.stderr().matches("reload applied").count() == 2
    });
    let n = distinct(&s, "queued.txt", "b").len();
    wait_until(
        "readings flow after it",
        &gw,
        Duration::from_secs(20),
        || distinct(&s, "queued.txt", "b").len() > n + 10,
    );
    assert!(
        gw.stop(Duration::from_secs(20)).success(),
        "{}",
        gw.stderr()
    );
    let log = gw.stderr();
    assert_eq!(
        log.matches("sequence starting").count(),
        2,
        "no source was restarted:\n{log}"
    );
    assert_contiguous(
        &distinct(&s, "buffered.txt", "a"),
        "a across two reopenings",
    );
    assert_contiguous(
        &distinct(&s, "queued.txt", "b"),
        "b from a plain sink to a buffered one",
    );
}

#[test]
fn a_job_ends_once_a_reload_removed_its_last_running_source() {
    let s = Setup::new();
    let extra = gateway_extra(&s);
    let text = body(&s, "", "").replacen("interval = \"10ms\"", "count = 20", 1);
    let cfg = s.config(&extra, &text);
    let mut gw = Running::start(&s, &cfg, &["--until-sources-finish"]);
    wait_until("a finished", &gw, Duration::from_secs(20), || {
        distinct(&s, "buffered.txt", "a").len() == 20 && gw.stderr().contains("source finished")
    });
    let without_b = text
        .replace(
            "[sources.b]\nplugin = \"testkit-sequence\"\ninterval = \"10ms\"\nstable_ids = true\n",
            "",
        )
        .replace("inputs = [\"b\"]", "inputs = [\"a\"]");
    s.config(&extra, &without_b);
    gw.signal(libc::SIGHUP);
    let status = gw.wait(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "the job ended: {status:?}\n{}",
        gw.stderr()
    );
    assert!(gw
        .stderr()
        .contains("every source finished: draining the sinks"));
}

#[test]
fn a_sink_still_writing_when_a_reload_replaces_it_keeps_its_routes_and_is_replaced_after() {
    // The slow sink's writes take 3 s; a reload that changes it in the middle of one cannot
    // stop it within shutdown_timeout (1 s). Unrouted, as it was then, it was passed over: the
    // source's readings were acknowledged once the quick sink alone took them.
    let s = Setup::new();
    let body = |delay: &str| {
        format!(
            r#"[sources.a]
plugin = "testkit-sequence"
interval = "10ms"
stable_ids = true

[sinks.slow]
plugin = "testkit-recorder"
path = {:?}
delay = "{delay}"

[sinks.quick]
plugin = "testkit-recorder"
path = {:?}
"#,
            s.path("slow.txt").display().to_string(),
            s.path("quick.txt").display().to_string(),
        )
    };
    let extra = "shutdown_timeout = \"1s\"";
    let cfg = s.config(extra, &body("3s"));
    let mut gw = Running::start(&s, &cfg, &[]);
    wait_until(
        "the slow sink wrote once",
        &gw,
        Duration::from_secs(20),
        || !s.lines("slow.txt").is_empty(),
    );
    // Its next write has begun (batches queued during the first one).
    std::thread::sleep(Duration::from_millis(300));
    s.config(extra, &body("0s"));
    gw.signal(libc::SIGHUP);
    assert!(
        gw.wait_for_log("it keeps its queue and its routes", Duration::from_secs(20)),
        "{}",
        gw.stderr()
    );
    // The file is broken meanwhile: the replacement built by the reload starts anyway (the
    // file is not read again).
    std::fs::write(&cfg, "this is not TOML [").unwrap();
    assert!(
        gw.wait_for_log(
            "the replacement of a sink the last reload left stuck started",
            Duration::from_secs(20)
        ),
        "{}",
        gw.stderr()
    );
    std::thread::sleep(Duration::from_millis(500));
    let status = gw.stop(Duration::from_secs(20));
    let log = gw.stderr();
    assert!(status.success(), "{log}");
    assert_eq!(log.matches("reload applied").count(), 1, "{log}");
    assert!(!log.contains("reload refused"), "{log}");
    let quick = assert_reached(&s, "slow.txt", "the slow one", &log);
    assert!(quick.len() > 20, "{log}");
}

#[test]
fn a_sink_whose_new_buffer_does_not_open_keeps_its_routes_until_a_reload_starts_it() {
    // The reload gives the sink a disk buffer that cannot open (a file stands where its
    // directory goes). The sink is not started; unrouted, as it was then, its source's readings
    // were acknowledged by the other sink alone meanwhile, and never reached it.
    let s = Setup::new();
    let body = |buffer: &str| {
        format!(
            r#"[sources.a]
plugin = "testkit-sequence"
interval = "10ms"
stable_ids = true

[sinks.later]
plugin = "testkit-recorder"
path = {:?}
{buffer}

[sinks.quick]
plugin = "testkit-recorder"
path = {:?}
"#,
            s.path("later.txt").display().to_string(),
            s.path("quick.txt").display().to_string(),
        )
    };
    let extra = gateway_extra(&s);
    let cfg = s.config(&extra, &body(""));
    let mut gw = Running::start(&s, &cfg, &[]);
    wait_until("readings flow", &gw, Duration::from_secs(20), || {
        !s.lines("later.txt").is_empty()
    });
    let blocker = s.path("data/later/buffer");
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, "not a directory").unwrap();
    s.config(&extra, &body("buffer = { type = \"disk\" }"));
    gw.signal(libc::SIGHUP);
    assert!(
        gw.wait_for_log("its sources wait for it", Duration::from_secs(20)),
        "{}",
        gw.stderr()
    );
    // Meanwhile the source is held: the quick sink gets at most what the queue took.
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::remove_file(&blocker).unwrap();
    gw.signal(libc::SIGHUP);
    wait_until(
        "the fixed reload starts the sink",
        &gw,
        Duration::from_secs(20),
        || gw.stderr().matches("reload applied").count() >= 2,
    );
    std::thread::sleep(Duration::from_millis(500));
    let status = gw.stop(Duration::from_secs(20));
    let log = gw.stderr();
    assert!(status.success(), "{log}");
    assert_reached(&s, "later.txt", "the sink that started late", &log);
}

#[test]
fn a_sink_parked_when_new_counts_what_its_buffer_recovered_once_started() {
    // A sink a reload added, whose disk buffer could not open (another process held it), is
    // parked; the reload that starts it later opens the buffer, which holds readings an earlier
    // run left. Those were not counted as accepted (the line was not new any more): once
    // written, the sink had written more than it accepted, and its pending count came out
    // short, hiding readings still queued.
    let s = Setup::new();
    let port = free_tcp_port();
    let extra = format!("{}\nmetrics = \"127.0.0.1:{port}\"", gateway_extra(&s));
    let body = |later: bool| {
        let sink = if later {
            format!(
                "[sinks.later]\nplugin = \"testkit-recorder\"\npath = {:?}\nbuffer = {{ type = \"disk\" }}\n",
                s.path("later.txt").display().to_string()
            )
        } else {
            String::new()
        };
        format!(
            r#"[sources.a]
plugin = "testkit-sequence"
interval = "10ms"
stable_ids = true

[sinks.quick]
plugin = "testkit-recorder"
path = {:?}

{sink}"#,
            s.path("quick.txt").display().to_string(),
        )
    };
    // What an earlier run left in the buffer, and a hold on it, as another gateway's.
    let dir = s.path("data/later/buffer");
    std::fs::create_dir_all(&dir).unwrap();
    {
        let settings = gateway_host::config::BufferSettings {
            max_size: 1 << 30,
            when_full: gateway_host::config::WhenFull::Block,
            fsync: true,
        };
        let b = gateway_host::buffer::DiskBuffer::open(&dir, &settings).unwrap();
        let left = gateway_sdk::testing::sample_readings(50);
        b.append(&[&left], 100, &|| false, &|| false).unwrap();
    }
    let hold = std::fs::File::open(dir.join("lock")).unwrap();
    hold.try_lock().unwrap();
    let cfg = s.config(&extra, &body(false));
    let mut gw = Running::start(&s, &cfg, &[]);
    wait_until("readings flow", &gw, Duration::from_secs(20), || {
        !s.lines("quick.txt").is_empty()
    });
    s.config(&extra, &body(true));
    gw.signal(libc::SIGHUP);
    assert!(
        gw.wait_for_log("its sources wait for it", Duration::from_secs(20)),
        "{}",
        gw.stderr()
    );
    drop(hold);
    gw.signal(libc::SIGHUP);
    wait_until(
        "the later sink wrote what its buffer held",
        &gw,
        Duration::from_secs(20),
        || s.lines("later.txt").len() >= 60,
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_, text) = gateway_host::metrics::get(addr, "/metrics").unwrap();
    let series = |name: &str| {
        metric(&text, &format!("{name}{{instance=\"later\"}}"))
            .unwrap_or_else(|| panic!("{name} in\n{text}"))
    };
    let accepted = series("gateway_sink_accepted_total");
    let written = series("gateway_sink_written_total");
    assert!(written >= 50.0, "{text}");
    assert!(
        accepted >= written,
        "accepted {accepted} < written {written}"
    );
    assert!(
        gw.stop(Duration::from_secs(20)).success(),
        "{}",
        gw.stderr()
    );
}

#[test]
fn a_reload_that_gives_a_full_buffer_more_room_loses_none_of_what_its_writer_took() {
    // The buffer is full (`when_full = "block"`, the default) behind a sink that is down, and
    // the writer waits for room with batches it took from the queue. The reload that gives
    // it more room asked the writer to stop, but its wait heeded only an abort: the reload
    // waited out shutdown_timeout, then aborted it, and the batches it held were dropped.
    let s = Setup::new();
    let extra = format!("{}\nshutdown_timeout = \"2s\"", gateway_extra(&s));
    let body = |sink: &str| seq_into_rec(&s, "batch_size = 10", sink);
    let cfg = s.config(
        &extra,
        &body("fail_first = 1000000\nbuffer = { type = \"disk\", max_size = \"256KiB\" }"),
    );
    let mut gw = Running::start(&s, &cfg, &["--until-sources-finish"]);
    assert!(
        gw.wait_for_log("disk buffer is full", Duration::from_secs(20)),
        "{}",
        gw.stderr()
    );
    std::thread::sleep(Duration::from_millis(300));
    s.config(
        &extra,
        &body("buffer = { type = \"disk\", max_size = \"16MiB\" }"),
    );
    let started = Instant::now();
    hup_until_applied(&gw);
    let took = started.elapsed();
    let status = gw.wait(Duration::from_secs(60)).expect("the job ends");
    let log = gw.stderr();
    assert!(status.success(), "{log}");
    assert!(
        log.contains(
            "handing the batches not yet on disk to the instance that replaces this buffer"
        ),
        "{log}"
    );
    assert!(
        took < Duration::from_secs(2),
        "the reload waited {took:?}\n{log}"
    );
    let values = distinct(&s, "out.txt", "seq");
    assert_contiguous(&values, "seq across the reload of a full buffer");
    assert_eq!(values.len(), 20000, "{log}");
}

#[test]
fn a_reload_that_opens_a_buffer_again_keeps_counting_what_the_old_one_dropped() {
    // A sink that is down behind a buffer that drops its oldest readings when full; a reload
    // changes its max_size, which opens the buffer again with its counters at 0. The sink's
    // own counters went on: the readings the old buffer dropped stayed pending for ever, and
    // the stop that followed exited 1, "readings not delivered at shutdown".
    let s = Setup::new();
    let extra = format!("{}\nshutdown_timeout = \"2s\"", gateway_extra(&s));
    let source = format!(
        "batch_size = 100\nemitted_path = {:?}",
        s.path("emitted").display().to_string()
    );
    let body = |max: &str| {
        seq_into_rec(
            &s,
            &source,
            &format!("fail_first = 1000000\nbuffer = {{ type = \"disk\", max_size = \"{max}\", when_full = \"drop_oldest\" }}"),
        )
    };
    let cfg = s.config(&extra, &body("256KiB"));
    let mut gw = Running::start(&s, &cfg, &[]);
    wait_until(
        "every reading emitted",
        &gw,
        Duration::from_secs(30),
        || std::fs::read_to_string(s.path("emitted")).is_ok_and(|t| t.trim() == "20000"),
    );
    assert!(gw.stderr().contains("dropped its oldest readings"));
    s.config(&extra, &body("512KiB"));
    hup_until_applied(&gw);
    let status = gw.stop(Duration::from_secs(20));
    let log = gw.stderr();
    assert!(status.success(), "{log}");
    assert!(!log.contains("readings not delivered at shutdown"), "{log}");
}

/// A reload whose new instance's constructor does not return (a database that neither answers
/// nor refuses): the reload is checked on a thread of its own, so a shutdown asked for
/// meanwhile is answered, and what the sinks held is delivered. Before, the check ran in the
/// main loop, and SIGTERM was never handled (under a watchdog, systemd killed the process and
/// the queues in memory were lost).
#[test]
fn a_shutdown_during_a_reload_whose_constructor_hangs_is_answered() {
    let s = Setup::new();
    let out = s.path("out.txt").display().to_string();
    let body = |extra: &str| {
        format!(
            "[sources.seq]\nplugin = \"testkit-sequence\"\ninterval = \"10ms\"\n[sinks.rec]\nplugin = \"testkit-recorder\"\npath = {out:?}\n{extra}"
        )
    };
    let cfg = s.config("shutdown_timeout = \"3s\"", &body(""));
    let mut gw = Running::start(&s, &cfg, &[]);
    assert!(
        gw.wait_for_log("gateway running", Duration::from_secs(20)),
        "{}",
        gw.stderr()
    );
    s.config(
        "shutdown_timeout = \"3s\"",
        &body(&format!(
            "[sinks.hangs]\nplugin = \"testkit-recorder\"\npath = {:?}\nstart_delay = \"1h\"\n",
            s.path("never.txt").display().to_string()
        )),
    );
    gw.signal(libc::SIGHUP);
    assert!(
        gw.wait_for_log("reload requested", Duration::from_secs(10)),
        "{}",
        gw.stderr()
    );
    std::thread::sleep(Duration::from_millis(500));
    gw.signal(libc::SIGTERM);
    let status = gw
        .wait(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the shutdown was not answered: {}", gw.stderr()));
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    assert!(err.contains("the reload is abandoned"), "{err}");
    assert!(err.contains("everything in flight was delivered"), "{err}");
}

/// What a reload leaves over (here the sink built only to check the new config, the running
/// one being kept) is dropped on a thread of its own: a plugin whose `Drop` takes its time
/// does not hold the main loop, which answers signals. Before, the reload's end waited for it.
#[test]
fn a_slow_drop_of_what_a_reload_leaves_does_not_hold_the_main_loop() {
    let s = Setup::new();
    let out = s.path("out.txt").display().to_string();
    let body = |interval: &str| {
        format!(
            "[sources.seq]\nplugin = \"testkit-sequence\"\ninterval = {interval:?}\n[sinks.rec]\nplugin = \"testkit-recorder\"\npath = {out:?}\ndrop_delay = \"5s\"\n"
        )
    };
    let cfg = s.config("", &body("10ms"));
    let mut gw = Running::start(&s, &cfg, &[]);
    assert!(
        gw.wait_for_log("gateway running", Duration::from_secs(20)),
        "{}",
        gw.stderr()
    );
    s.config("", &body("20ms"));
    let asked = std::time::Instant::now();
    hup_until_applied(&gw);
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}: {}", gw.stderr());
    assert!(gw.stderr().contains("kept=1"), "{}", gw.stderr());
    gw.signal(libc::SIGTERM);
    let status = gw.wait(Duration::from_secs(20)).expect("stops");
    assert!(status.success(), "{}", gw.stderr());
}

/// The same for the sink a reload adds whose disk buffer does not open (here its directory is
/// a file): the sink is parked, and the instance built for it is dropped on a thread of its
/// own. Before, the main thread dropped it, and "reload applied" waited for its `Drop`.
#[test]
fn a_slow_drop_of_a_sink_whose_buffer_does_not_open_does_not_hold_the_main_loop() {
    let s = Setup::new();
    let data = s.path("data").display().to_string();
    let out = s.path("out.txt").display().to_string();
    let seq = "[sources.seq]\nplugin = \"testkit-sequence\"\ninterval = \"10ms\"\n";
    let rec = format!("[sinks.rec]\nplugin = \"testkit-recorder\"\npath = {out:?}\n");
    let gateway = format!("data_dir = {data:?}");
    let cfg = s.config(&gateway, &format!("{seq}{rec}"));
    let mut gw = Running::start(&s, &cfg, &[]);
    assert!(
        gw.wait_for_log("gateway running", Duration::from_secs(20)),
        "{}",
        gw.stderr()
    );
    std::fs::create_dir_all(s.path("data/slow")).unwrap();
    std::fs::write(s.path("data/slow/buffer"), "not a directory").unwrap();
    let slow = format!(
        "[sinks.slow]\nplugin = \"testkit-recorder\"\npath = {:?}\ndrop_delay = \"5s\"\nbuffer = {{ type = \"disk\" }}\n",
        s.path("slow.txt").display().to_string()
    );
    s.config(&gateway, &format!("{seq}{rec}{slow}"));
    let asked = std::time::Instant::now();
    hup_until_applied(&gw);
    let took = asked.elapsed();
    let err = gw.stderr();
    assert!(err.contains("cannot open the disk buffer"), "{err}");
    assert!(err.contains("the sink is not started"), "{err}");
    let applied = err
        .lines()
        .find(|l| l.contains("reload applied"))
        .unwrap_or_default();
    assert!(
        applied.contains("not started") && applied.contains(": slow"),
        "{applied}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}: {err}");
    // It stops (the parked sink's queue is said undelivered, not waited for).
    gw.signal(libc::SIGTERM);
    assert!(
        gw.wait(Duration::from_secs(20)).is_some(),
        "{}",
        gw.stderr()
    );
}

/// A reload that makes an instance more verbose than any was at the start: its debug and trace
/// events reach the log. Before, both the plugin library (its filter fixed when loaded) and the
/// host's subscriber (its plugin level fixed at the start) dropped them.
#[test]
fn a_log_level_raised_by_a_reload_shows_the_instances_trace_events_and_a_refused_one_not() {
    let s = Setup::new();
    let extra = gateway_extra(&s);
    let text = |level: &str| {
        format!(
            "[sources.health]\nplugin = \"system\"\ninterval = \"100ms\"\ninclude = [\"load\"]\n{level}\n[sinks.out]\nplugin = \"testkit-recorder\"\npath = {:?}\n",
            s.path("out.txt").display().to_string()
        )
    };
    let cfg = s.config(&extra, &text(""));
    let gw = Running::start(&s, &cfg, &[]);
    wait_until("readings flow", &gw, Duration::from_secs(20), || {
        std::fs::read_to_string(s.path("out.txt")).is_ok_and(|t| t.lines().count() > 2)
    });
    assert!(!gw.stderr().contains("round done"), "trace at info?");
    // A file that does not check changes nothing, the levels included.
    s.config(
        &extra,
        &(text("log_level = \"trace\"") + "\n[sinks.x]\nplugin = \"no-such-plugin\"\n"),
    );
    gw.signal(libc::SIGHUP);
    assert!(
        gw.wait_for_log("reload refused", Duration::from_secs(20)),
        "{}",
        gw.stderr()
    );
    // While the file is checked, its levels apply (the new instances' libraries must produce
    // what they ask for from the start); once it is refused, the running ones are back.
    std::thread::sleep(Duration::from_millis(300));
    let refused_at = gw.stderr().len();
    std::thread::sleep(Duration::from_millis(1500));
    let after = gw.stderr()[refused_at..].to_owned();
    assert!(
        !after.contains("round done"),
        "a refused reload raised the level: {}",
        gw.stderr()
    );
    s.config(&extra, &text("log_level = \"trace\""));
    gw.signal(libc::SIGHUP);
    wait_until(
        "the source's trace events reach the log",
        &gw,
        Duration::from_secs(20),
        || gw.stderr().contains("round done"),
    );
}

#[test]
fn a_source_whose_only_sink_a_reload_replaces_waits_for_the_new_one_and_loses_nothing() {
    // `old` is removed and `new` added in its place: while `old` writes what it holds (its
    // writes take 300 ms), the source has no sink. Its batches were taken then and given to
    // none, and a source that does not wait for acknowledgements (`emit_nowait`, as the
    // sensor sources' `emit_logged`) lost them: a gap between what `old` and `new` stored.
    let s = Setup::new();
    let body = |sink: &str, delay: &str| {
        format!(
            r#"[sources.a]
plugin = "testkit-sequence"
interval = "1ms"
wait_ack = false
stable_ids = true

[sinks.{sink}]
plugin = "testkit-recorder"
path = {:?}
delay = "{delay}"
queue_capacity = 4
"#,
            s.path(&format!("{sink}.txt")).display().to_string(),
        )
    };
    let extra = "shutdown_timeout = \"10s\"";
    let cfg = s.config(extra, &body("old", "300ms"));
    let mut gw = Running::start(&s, &cfg, &[]);
    wait_until("old wrote", &gw, Duration::from_secs(20), || {
        !s.lines("old.txt").is_empty()
    });
    s.config(extra, &body("new", "0s"));
    gw.signal(libc::SIGHUP);
    assert!(
        gw.wait_for_log("reload applied", Duration::from_secs(30)),
        "{}",
        gw.stderr()
    );
    wait_until("new wrote", &gw, Duration::from_secs(20), || {
        distinct(&s, "new.txt", "a").len() > 100
    });
    let status = gw.stop(Duration::from_secs(20));
    let log = gw.stderr();
    assert!(status.success(), "{log}");
    let (old, new) = (distinct(&s, "old.txt", "a"), distinct(&s, "new.txt", "a"));
    let mut all: Vec<i64> = old.iter().chain(&new).copied().collect();
    all.sort_unstable();
    all.dedup();
    assert!(!old.is_empty() && !new.is_empty(), "{log}");
    assert_contiguous(&all, "a through old, then new");
    assert!(!log.contains("gave up"), "{log}");
}

#[test]
fn an_instance_a_reload_adds_finds_its_data_directory() {
    // A start makes each instance's data directory (the SDK promises it is there when the
    // instance runs); a reload did not, and a plugin keeping state there failed.
    let s = Setup::new();
    let body = |more: &str| {
        format!(
            r#"[sources.a]
plugin = "testkit-sequence"
interval = "10ms"
{more}
[sinks.rec]
plugin = "testkit-recorder"
path = {:?}
"#,
            s.path("rec.txt").display().to_string(),
        )
    };
    let extra = gateway_extra(&s);
    let cfg = s.config(&extra, &body(""));
    let mut gw = Running::start(&s, &cfg, &[]);
    wait_until("a recorded", &gw, Duration::from_secs(20), || {
        !s.recorded("rec.txt", "a").is_empty()
    });
    let added = "\n[sources.c]\nplugin = \"testkit-sequence\"\ninterval = \"10ms\"\nrequire_data_dir = true\n";
    s.config(&extra, &body(added));
    gw.signal(libc::SIGHUP);
    wait_until("c recorded", &gw, Duration::from_secs(20), || {
        s.recorded("rec.txt", "c").len() > 5
    });
    let status = gw.stop(Duration::from_secs(20));
    let log = gw.stderr();
    assert!(status.success(), "{log}");
    assert!(s.path("data").join("c").is_dir(), "{log}");
    assert!(!log.contains("is not there"), "{log}");
}

/// The labels (testkit-recorder's `label_file`) of `file`'s lines, in order, each run of one
/// label once.
fn labels(s: &Setup, file: &str) -> Vec<String> {
    let mut l: Vec<String> = s
        .lines(file)
        .iter()
        .filter_map(|l| l.split(' ').next().map(str::to_owned))
        .collect();
    l.dedup();
    l
}

/// A file an instance names, edited while a reload replaces that instance (after the reload
/// built the successor, which read the file, and before the predecessor stopped): the next
/// reload sees the edit and rebuilds the instance. Before, the successor's files were
/// stamped when it started, after the edit it never read, and every later reload took the
/// edit as applied (a rotated PSK file kept the old keys until a restart).
#[test]
fn a_file_edited_while_a_reload_replaces_its_instance_is_applied_by_the_next() {
    let s = Setup::new();
    let label = s.path("label.txt");
    std::fs::write(&label, "A\n").unwrap();
    let body = |path: &str, delay: &str| {
        format!(
            "[sources.seq]\nplugin = \"testkit-sequence\"\ninterval = \"10ms\"\n[sinks.rec]\nplugin = \"testkit-recorder\"\npath = {:?}\ndelay = {delay:?}\nlabel_file = {:?}\n",
            s.path(path).display().to_string(),
            label.display().to_string()
        )
    };
    let cfg = s.config("", &body("old.txt", "6s"));
    let mut gw = Running::start(&s, &cfg, &[]);
    // The first write ends 6 s after the start, and the next begins: the reload's
    // predecessor is then in a write for about 6 s.
    wait_until("the first write", &gw, Duration::from_secs(20), || {
        !s.lines("old.txt").is_empty()
    });
    s.config("", &body("new.txt", "10ms"));
    gw.signal(libc::SIGHUP);
    // The successor's constructor read the label and made new.txt.
    wait_until("the successor built", &gw, Duration::from_secs(3), || {
        s.path("new.txt").exists()
    });
    std::fs::write(&label, "B\n").unwrap();
    assert!(
        !gw.stderr().contains("reload applied"),
        "the predecessor stopped before the edit: {}",
        gw.stderr()
    );
    let labels = || labels(&s, "new.txt");
    wait_until(
        "the successor's writes",
        &gw,
        Duration::from_secs(20),
        || labels() == ["A"],
    );
    let applied = || gw.stderr().matches("reload applied").count();
    assert_eq!(applied(), 1, "{}", gw.stderr());
    // The config is the same; the file is not what the running instance read.
    gw.signal(libc::SIGHUP);
    wait_until("the second reload", &gw, Duration::from_secs(20), || {
        applied() == 2
    });
    let err = gw.stderr();
    let second = err.lines().filter(|l| l.contains("reload applied")).nth(1);
    assert!(
        second.is_some_and(|l| l.contains("sinks: rebuilt rec")),
        "{err}"
    );
    wait_until("the edit applied", &gw, Duration::from_secs(20), || {
        labels() == ["A", "B"]
    });
    gw.stop(Duration::from_secs(20));
}

/// A file edited before an instance fails and is built again: the rebuilt instance reads the
/// edit, and a reload after the file is put back rebuilds it. Before, the slot kept the stamps
/// of the first build, and that reload said "no instance changed" (an identity removed from a
/// PSK file again kept its way in until a restart).
#[test]
fn a_file_read_again_by_a_rebuild_after_a_failure_is_what_a_reload_compares() {
    let s = Setup::new();
    let label = s.path("label.txt");
    std::fs::write(&label, "A\n").unwrap();
    let cfg = s.config(
        "",
        &format!(
            "[sources.seq]\nplugin = \"testkit-sequence\"\ninterval = \"10ms\"\n[sinks.rec]\nplugin = \"testkit-recorder\"\npath = {:?}\ndelay = \"5s\"\npanic_on_write = 3\nrestart_backoff = \"100ms\"\nlabel_file = {:?}\n",
            s.path("out.txt").display().to_string(),
            label.display().to_string()
        ),
    );
    let mut gw = Running::start(&s, &cfg, &[]);
    let labels = || labels(&s, "out.txt");
    // Write 1 is done and write 2 has 5 s to go; write 3 panics, and the rebuilt instance
    // reads the label again.
    wait_until("the first write", &gw, Duration::from_secs(20), || {
        !labels().is_empty()
    });
    std::fs::write(&label, "B\n").unwrap();
    assert!(
        !gw.stderr().contains("recorder panics on write"),
        "write 2 ended before the edit: {}",
        gw.stderr()
    );
    wait_until(
        "the rebuilt instance's writes",
        &gw,
        Duration::from_secs(30),
        || labels() == ["A", "B"],
    );
    assert!(
        gw.stderr().contains("recorder panics on write 3"),
        "{}",
        gw.stderr()
    );
    // Back as the first build read it: not what the running instance read.
    std::fs::write(&label, "A\n").unwrap();
    hup_until_applied(&gw);
    assert!(
        gw.stderr().contains("sinks: rebuilt rec"),
        "{}",
        gw.stderr()
    );
    wait_until("the file applied", &gw, Duration::from_secs(20), || {
        labels() == ["A", "B", "A"]
    });
    gw.stop(Duration::from_secs(20));
}

/// What the metrics page on `port` shows of `testkit_emitted_total` for instance `x`
/// (`publish_as = "x"`), if it shows it.
fn emitted_by_x(port: u16) -> Option<f64> {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_, text) = gateway_host::metrics::get(addr, "/metrics").ok()?;
    metric(&text, "testkit_emitted_total{instance=\"x\"}")
}

/// Found in a review of session 50's bindings: they were never removed, so a library that ran
/// an instance before a reload gave its name to another plugin went on speaking for it (its
/// metrics shown as that instance's) while it ran any other instance.
#[test]
fn a_name_a_reload_gives_to_another_plugin_is_that_plugins_alone() {
    let s = Setup::new();
    let port = free_tcp_port();
    let extra = format!("{}\nmetrics = \"127.0.0.1:{port}\"", gateway_extra(&s));
    let body = |x: &str| {
        format!(
            r#"[sources.x]
{x}
interval = "10ms"

[sources.thief]
plugin = "testkit-sequence"
interval = "10ms"
publish_as = "x"

[sinks.rec]
plugin = "testkit-recorder"
path = {:?}
"#,
            s.path("out.txt").display().to_string()
        )
    };
    let cfg = s.config(&extra, &body("plugin = \"testkit-sequence\""));
    let gw = Running::start(&s, &cfg, &[]);
    let shown = || emitted_by_x(port).is_some();
    // While the testkit library runs `x`, what it publishes for `x` is shown.
    wait_until(
        "the thief's figures shown as x's",
        &gw,
        Duration::from_secs(20),
        shown,
    );

    s.config(&extra, &body("plugin = \"example\""));
    hup_until_applied(&gw);
    assert!(
        gw.wait_for_log(
            "it published under another instance's name",
            Duration::from_secs(10)
        ),
        "{}",
        gw.stderr()
    );
    // The thief publishes every 10 ms; `x` forgot what it showed when the reload stopped it.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!shown(), "{}", gw.stderr());
    // The thief still runs, and `x` is the example's.
    let thief = s.lines("out.txt").len();
    wait_until(
        "x and the thief go on",
        &gw,
        Duration::from_secs(10),
        || {
            let lines = s.lines("out.txt");
            lines.len() > thief + 10 && lines.iter().any(|l| l.contains("counter"))
        },
    );
}

/// Found in a review of the bindings a reload sets: they were taken from the file the reload
/// read, so a kept instance whose plugin name now led to another library file (a link an
/// upgrade re-pointed) lost its voice: what it published was refused as another library's.
#[test]
fn a_kept_instance_speaks_as_the_library_it_runs_from_after_a_reload() {
    let s = Setup::new();
    let port = free_tcp_port();
    let dir = s.path("plugins");
    std::fs::create_dir(&dir).unwrap();
    let original = plugin_dir().join("libtestkit.so");
    for copy in ["libtestkit-1.so", "libtestkit-2.so"] {
        std::fs::copy(&original, dir.join(copy)).unwrap();
    }
    let link = dir.join("libtestkit.so");
    std::os::unix::fs::symlink("libtestkit-1.so", &link).unwrap();
    let write = |sink_extra: &str| {
        let text = format!(
            r#"[gateway]
device = "test"
plugin_dir = {:?}
stats_interval = "0s"
metrics = "127.0.0.1:{port}"
{}

[sources.x]
plugin = "testkit-sequence"
interval = "10ms"
publish_as = "x"

[sinks.rec]
plugin = "testkit-recorder"
path = {:?}
{sink_extra}
"#,
            dir.display().to_string(),
            gateway_extra(&s),
            s.path("out.txt").display().to_string()
        );
        let p = s.path("gateway.toml");
        std::fs::write(&p, text).unwrap();
        p
    };
    let gw = Running::start(&s, &write(""), &[]);
    let emitted = || emitted_by_x(port);
    wait_until("x's figures shown", &gw, Duration::from_secs(20), || {
        emitted().is_some()
    });

    // An upgrade re-points the link; a reload changes the sink only, so `x` is kept and runs
    // the code it was built from.
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("libtestkit-2.so", &link).unwrap();
    write("retry_backoff = \"20ms\"");
    hup_until_applied(&gw);
    let before = emitted().unwrap();
    wait_until("x's figures go on", &gw, Duration::from_secs(10), || {
        emitted().is_some_and(|now| now > before + 20.0)
    });
    assert!(
        !gw.stderr()
            .contains("published under another instance's name"),
        "{}",
        gw.stderr()
    );
}
