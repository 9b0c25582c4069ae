//! Watching a running gateway: Prometheus metrics, /healthz and /readyz, `gateway status`, and
//! systemd's readiness and watchdog notifications.

mod support;
use gateway_host::metrics;
use std::{
    net::SocketAddr,
    os::unix::net::UnixDatagram,
    process::{Command, Stdio},
    time::{Duration, Instant},
};
use support::*;

/// A sequence of 300 readings into a disk-buffered recorder, with metrics on `port`.
fn chain(s: &Setup, port: u16) -> std::path::PathBuf {
    s.config(
        &format!(
            "metrics = \"127.0.0.1:{port}\"\ndata_dir = {:?}",
            s.path("data").display().to_string()
        ),
        &format!(
            r#"[sources.seq]
plugin = "testkit-sequence"
count = 300
batch_size = 10

[sinks.rec]
plugin = "testkit-recorder"
path = {:?}
buffer = {{ type = "disk" }}
"#,
            s.path("out.txt").display().to_string()
        ),
    )
}

#[test]
fn metrics_health_and_status_describe_a_running_gateway() {
    let s = Setup::new();
    let port = free_tcp_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = chain(&s, port);
    let mut gw = Running::start(&s, &cfg, &[]);
    let end = Instant::now() + Duration::from_secs(30);
    let text = loop {
        if let Ok((200, text)) = metrics::get(addr, "/metrics") {
            if metric(&text, "gateway_sink_written_total{instance=\"rec\"}") == Some(300.0) {
                break text;
            }
        }
        assert!(Instant::now() < end, "no metrics: {}", gw.stderr());
        std::thread::sleep(Duration::from_millis(50));
    };
    for (series, want) in [
        ("gateway_source_readings_total{instance=\"seq\"}", 300.0),
        ("gateway_source_batches_total{instance=\"seq\"}", 30.0),
        ("gateway_sink_accepted_total{instance=\"rec\"}", 300.0),
        ("gateway_sink_pending_readings{instance=\"rec\"}", 0.0),
        ("gateway_buffer_readings{instance=\"rec\"}", 0.0),
        ("gateway_buffer_oldest_age_seconds{instance=\"rec\"}", 0.0),
        ("gateway_ready", 1.0),
    ] {
        assert_eq!(metric(&text, series), Some(want), "{series} in\n{text}");
    }
    assert!(
        text.contains("# TYPE gateway_sink_written_total counter"),
        "{text}"
    );
    // The clock's state, as the log told it at the start (a container or a machine without
    // NTP says 0; one whose seccomp filter refuses adjtimex, nothing).
    let err = gw.stderr();
    match metric(&text, "gateway_clock_synchronized") {
        Some(synced) => assert_eq!(
            synced == 0.0,
            err.contains("the system clock is not synchronised (no NTP yet"),
            "{synced}: {err}"
        ),
        None => assert!(err.contains("cannot be read (adjtimex)"), "{text}\n{err}"),
    }
    assert_eq!(metrics::get(addr, "/healthz").unwrap().0, 200);
    assert_eq!(metrics::get(addr, "/readyz").unwrap().0, 200);
    assert_eq!(metrics::get(addr, "/nothing").unwrap().0, 404);

    let (status, out, err) = gateway(&["status", "--config", cfg.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    assert!(
        out.contains(&format!("gateway at {addr}: running")),
        "{out}"
    );
    let rec = out
        .lines()
        .find(|l| l.trim_start().starts_with("rec "))
        .expect(&out);
    assert!(rec.contains("300") && rec.contains("0 readings"), "{out}");
    // The clock's state as the page gave it.
    match metric(&text, "gateway_clock_synchronized") {
        Some(s) if s > 0.0 => assert!(out.contains("clock: synchronised"), "{out}"),
        Some(_) => assert!(out.contains("clock: not synchronised"), "{out}"),
        None => assert!(!out.contains("clock:"), "{out}"),
    }
    assert!(gw.stop(Duration::from_secs(20)).success());

    // Stopped: status says it cannot reach it, and fails.
    let (status, _, err) = gateway(&["status", "--config", cfg.to_str().unwrap()]);
    assert!(!status.success());
    assert!(
        err.contains(&format!("cannot reach the gateway's metrics at {addr}")),
        "{err}"
    );
}

/// The socket a `Type=notify` service's notifications reach, as systemd's.
struct Systemd {
    sock: UnixDatagram,
    stderr: std::path::PathBuf,
}

impl Systemd {
    /// The next notification.
    fn next(&self) -> String {
        let mut buf = [0u8; 512];
        let n = self.sock.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no notification ({e}): {}",
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            )
        });
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

/// `gateway run --config CFG` as systemd starts a `Type=notify` service with `WatchdogSec`
/// (`watchdog_usec`).
fn under_systemd(s: &Setup, cfg: &std::path::Path, watchdog_usec: &str) -> (Running, Systemd) {
    let sock_path = s.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", watchdog_usec)
        .env_remove("WATCHDOG_PID")
        .env_remove("GATEWAY_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(s.path("stdout.log")).unwrap())
        .stderr(std::fs::File::create(s.path("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let gw = Running {
        child,
        stdout: s.path("stdout.log"),
        stderr: s.path("stderr.log"),
    };
    let stderr = s.path("stderr.log");
    (gw, Systemd { sock, stderr })
}

#[test]
fn systemd_hears_ready_then_watchdog_pings_then_stopping() {
    let s = Setup::new();
    let cfg = chain(&s, free_tcp_port());
    let (mut gw, systemd) = under_systemd(&s, &cfg, "200000");
    let next = || systemd.next();
    // While the start reads the buffers back and builds the instances, its timeout is
    // extended (a full buffer on a slow SD card takes longer than systemd's 90 s); then READY.
    let extend = next();
    assert!(
        extend.starts_with("EXTEND_TIMEOUT_USEC=30000000\nSTATUS=starting"),
        "{extend}"
    );
    let first = loop {
        let m = next();
        if !m.starts_with("EXTEND_TIMEOUT_USEC") {
            break m;
        }
    };
    assert!(
        first.starts_with("READY=1\nSTATUS=running: 1 sources, 1 sinks"),
        "{first}"
    );
    let started = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        assert_eq!(next(), "WATCHDOG=1");
        pings += 1;
    }
    // Every 100 ms (half of WATCHDOG_USEC): three take about 300 ms.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    gw.signal(libc::SIGTERM);
    let stopping = loop {
        let m = next();
        if m != "WATCHDOG=1" {
            break m;
        }
    };
    assert!(stopping.starts_with("STOPPING=1"), "{stopping}");
    assert!(
        gw.wait(Duration::from_secs(20)).expect("exits").success(),
        "{}",
        gw.stderr()
    );
}

#[test]
fn the_ingress_shows_its_sessions_handshakes_and_answers_on_the_metrics_page() {
    if !gateway_test_support::libcoap::have_libcoap() {
        return;
    }
    let s = Setup::new();
    make_certs(&s.path("certs"), "pi-01");
    // A device whose certificate another CA issued: its handshake fails on the certificate.
    make_certs(&s.path("other"), "intruder");
    let port = free_udp_port();
    let mport = free_tcp_port();
    let addr: SocketAddr = format!("127.0.0.1:{mport}").parse().unwrap();
    let config = pi_chain_config(&s, port);
    // With the figures also as readings, through `internal` into the console.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replacen(
            "[gateway]\n",
            &format!("[gateway]\nmetrics = \"127.0.0.1:{mport}\"\n"),
            1,
        )
        .replace(
            "inputs = [\"ingress\"]",
            "inputs = [\"ingress\", \"health\"]",
        )
        + "\n[sources.health]\nplugin = \"internal\"\ninterval = \"300ms\"\n";
    std::fs::write(&config, text).unwrap();
    let mut gw = Running::start(&s, &config, &[]);
    assert!(
        gw.wait_for_log("DTLS session established", Duration::from_secs(20)),
        "{}",
        gw.stderr()
    );
    let other = |f: &str| s.path("other").join(f).display().to_string();
    let printed = gateway_test_support::libcoap::coap_client(&[
        "-m",
        "post",
        "-B",
        "3",
        "-R",
        &s.path("certs/ca.pem").display().to_string(),
        "-c",
        &other("device-intruder.pem"),
        "-j",
        &other("device-intruder.key"),
        &format!("coaps://127.0.0.1:{port}/gpsflowtemp"),
    ]);
    let series = |name: &str| format!("{name}{{instance=\"ingress\"");
    let end = Instant::now() + Duration::from_secs(20);
    let text = loop {
        if let Ok((200, text)) = metrics::get(addr, "/metrics") {
            let failed = metric(
                &text,
                &(series("gateway_dtls_handshakes_total")
                    + ",result=\"failed\",reason=\"certificate\"}"),
            );
            let stored = metric(
                &text,
                &(series("gateway_coap_responses_total") + ",code=\"2.04\"}"),
            );
            let uplink = metric(&text, "gateway_dtls_client_connected{instance=\"uplink\"}");
            if failed >= Some(1.0) && stored >= Some(3.0) && uplink == Some(1.0) {
                break text;
            }
        }
        assert!(
            Instant::now() < end,
            "no DTLS figures (coap-client printed {printed}): {}\n{}",
            gw.stderr(),
            metrics::get(addr, "/metrics")
                .map(|r| r.1)
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for (series, want) in [
        ("gateway_dtls_sessions{instance=\"ingress\"}", 1.0),
        (
            "gateway_dtls_handshakes_total{instance=\"ingress\",result=\"ok\"}",
            1.0,
        ),
        (
            "gateway_dtls_handshakes_total{instance=\"ingress\",result=\"refused\",reason=\"denied\"}",
            0.0,
        ),
    ] {
        assert_eq!(metric(&text, series), Some(want), "{series} in\n{text}");
    }
    // The uplink, in the same process, shows its side of the link.
    for (series, want) in [
        ("gateway_dtls_client_connected{instance=\"uplink\"}", 1.0),
        (
            "gateway_dtls_client_handshakes_total{instance=\"uplink\",result=\"ok\"}",
            1.0,
        ),
        (
            "gateway_dtls_client_handshakes_total{instance=\"uplink\",result=\"failed\",reason=\"certificate\"}",
            0.0,
        ),
    ] {
        assert_eq!(metric(&text, series), Some(want), "{series} in\n{text}");
    }
    let rto = metric(
        &text,
        "gateway_coap_client_rto_seconds{instance=\"uplink\"}",
    );
    assert!(rto > Some(0.0) && rto < Some(3.0), "{text}");
    assert!(
        text.contains("# TYPE gateway_coap_request_duration_seconds histogram"),
        "{text}"
    );
    // The worker slept while the link was quiet; both series are there.
    let slept = "gateway_ingress_wakeups_total{instance=\"ingress\",how=\"slept\"}";
    assert!(metric(&text, slept) >= Some(1.0), "{text}");
    let polled = "gateway_ingress_wakeups_total{instance=\"ingress\",how=\"polled\"}";
    assert!(metric(&text, polled).is_some(), "{text}");
    // One full handshake so far: its chain was verified, not taken from memory.
    let reused = "gateway_dtls_chains_reused_total{instance=\"ingress\"}";
    assert_eq!(metric(&text, reused), Some(0.0), "{text}");
    assert_eq!(
        text.matches("# TYPE gateway_dtls_handshakes_total counter")
            .count(),
        1,
        "{text}"
    );
    let count = metric(
        &text,
        "gateway_coap_request_duration_seconds_count{instance=\"ingress\"}",
    );
    let inf = metric(
        &text,
        "gateway_coap_request_duration_seconds_bucket{instance=\"ingress\",le=\"+Inf\"}",
    );
    assert!(count >= Some(3.0) && count == inf, "{text}");
    let end = Instant::now() + Duration::from_secs(20);
    while !gw
        .stdout()
        .contains("pi-01/ingress dtls_handshakes_total.failed.certificate=1 ")
    {
        assert!(Instant::now() < end, "{}", gw.stdout());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        gw.stdout()
            .contains("pi-01/uplink dtls_client_connected=1 "),
        "{}",
        gw.stdout()
    );
    assert!(
        gw.stdout().contains("pi-01/ingress dtls_sessions=1 "),
        "{}",
        gw.stdout()
    );
    assert!(
        gw.stop(Duration::from_secs(20)).success(),
        "{}",
        gw.stderr()
    );
}

#[test]
fn the_internal_source_emits_the_gateways_own_figures_as_readings() {
    let s = Setup::new();
    let cfg = s.config(
        &format!("data_dir = {:?}", s.path("data").display().to_string()),
        &format!(
            r#"[sources.seq]
plugin = "testkit-sequence"
count = 50
batch_size = 10

[sources.health]
plugin = "internal"
interval = "200ms"

[sinks.rec]
plugin = "testkit-recorder"
inputs = ["seq"]
path = {:?}
buffer = {{ type = "disk" }}

[sinks.console]
plugin = "console"
inputs = ["health"]
"#,
            s.path("out.txt").display().to_string()
        ),
    );
    let (status, out, err) = gateway(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    assert!(
        out.contains("internal (gateway 0.1.0, (built into gateway))"),
        "{out}"
    );
    let mut gw = Running::start(&s, &cfg, &[]);
    let end = Instant::now() + Duration::from_secs(20);
    while !gw.stdout().contains("test/sink:rec written=50 ") {
        assert!(Instant::now() < end, "{}\n{}", gw.stdout(), gw.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = gw.stdout();
    for want in [
        "test/source:seq readings=50 ",
        "test/sink:rec pending=0 ",
        "test/sink:rec retries=0 ",
        "test/buffer:rec readings=0 ",
        "test/buffer:rec bytes=",
        "test/buffer:rec oldest_age=0 s ",
        "test/host clock_synchronized=",
    ] {
        if want.contains("clock") && gw.stderr().contains("cannot be read (adjtimex)") {
            continue;
        }
        assert!(out.contains(want), "{want} in\n{out}");
    }
    assert!(
        gw.stop(Duration::from_secs(20)).success(),
        "{}",
        gw.stderr()
    );
}

/// A reload waits for the instances it replaces to stop (up to shutdown_timeout): systemd's
/// watchdog must keep hearing from the gateway meanwhile, or it kills it mid-reload.
#[test]
fn the_watchdog_hears_from_the_gateway_while_a_reload_waits() {
    let s = Setup::new();
    // A sink whose writes take 3 s: replacing it waits for the one in progress.
    let body = format!(
        "[sources.seq]\nplugin = \"testkit-sequence\"\ninterval = \"10ms\"\n[sinks.rec]\nplugin = \"testkit-recorder\"\npath = {:?}\ndelay = \"3s\"\n",
        s.path("out.txt").display().to_string()
    );
    let cfg = s.config("shutdown_timeout = \"5s\"", &body);
    let (mut gw, systemd) = under_systemd(&s, &cfg, "400000");
    let next = || systemd.next();
    assert!(next().starts_with("EXTEND_TIMEOUT_USEC="));
    assert!(next().starts_with("READY=1"));
    // The first write is under way (it sleeps 3 s) once the sink has readings.
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("delay = \"3s\"", "delay = \"3s\"\nbatch_size = 7"),
    )
    .unwrap();
    // From the last ping before the reload to READY after it: pings every 200 ms (half of
    // WATCHDOG_USEC), never a gap as long as the wait (the bound leaves room for a loaded
    // machine's scheduling).
    while next() != "WATCHDOG=1" {}
    gw.signal(libc::SIGHUP);
    let mut last_ping = Instant::now();
    let mut widest = Duration::ZERO;
    let mut reloading = None;
    loop {
        let m = next();
        let now = Instant::now();
        if m == "WATCHDOG=1" {
            widest = widest.max(now - last_ping);
            last_ping = now;
        } else if m.starts_with("RELOADING=1") {
            reloading = Some(now);
        } else if m.starts_with("READY=1") {
            widest = widest.max(now - last_ping);
            break;
        } else {
            panic!("{m}");
        }
    }
    let reloading = reloading.expect("RELOADING=1 before READY=1");
    assert!(
        reloading.elapsed() > Duration::from_millis(1000),
        "the reload waited for the write in progress: {:?}",
        reloading.elapsed()
    );
    assert!(
        widest < Duration::from_millis(1200),
        "{widest:?} without a ping during the reload"
    );
    gw.signal(libc::SIGTERM);
    assert!(gw.wait(Duration::from_secs(20)).is_some());
}

#[test]
fn a_sink_stuck_in_a_write_is_logged_shown_and_its_end_logged() {
    // A sink hung in a plugin call (a write on a connection that neither answers nor fails)
    // held its readings and sources without a word in the log or on the metrics page.
    let s = Setup::new();
    let port = free_tcp_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let body = format!(
        "[sources.seq]\nplugin = \"testkit-sequence\"\ncount = 1\n[sinks.rec]\nplugin = \"testkit-recorder\"\npath = {:?}\ndelay = \"8s\"\n",
        s.path("out.txt").display().to_string()
    );
    let cfg = s.config(
        &format!("metrics = \"127.0.0.1:{port}\"\nstall_warning = \"1s\""),
        &body,
    );
    let mut gw = Running::start(&s, &cfg, &[]);
    let call_seconds = || {
        let (_, text) = metrics::get(addr, "/metrics").ok()?;
        metric(&text, "gateway_sink_call_seconds{instance=\"rec\"}")
    };
    let end = Instant::now() + Duration::from_secs(20);
    while call_seconds().is_none_or(|s| s < 1.5) {
        assert!(Instant::now() < end, "no call seen: {}", gw.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    // status goes by the running gateway's setting, not by the file's (which a reload
    // would not apply).
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("stall_warning = \"1s\"", "stall_warning = \"1h\""),
    )
    .unwrap();
    let (status, out, err) = gateway(&["status", "--config", cfg.to_str().unwrap()]);
    assert!(
        !status.success(),
        "a stalled sink makes status fail: {out}{err}"
    );
    assert!(
        out.contains("stalled: sink rec has been in one plugin call for"),
        "{out}"
    );
    assert!(
        gw.wait_for_log(
            "the sink's write call has not returned for",
            Duration::from_secs(5)
        ),
        "{}",
        gw.stderr()
    );
    // The write ends after 8 s: said once, the gauge back to 0, status well again.
    assert!(
        gw.wait_for_log(
            "the sink's write call returned after",
            Duration::from_secs(20)
        ),
        "{}",
        gw.stderr()
    );
    assert_eq!(s.recorded("out.txt", "seq"), vec![0]);
    assert_eq!(call_seconds(), Some(0.0));
    let (status, out, _) = gateway(&["status", "--config", cfg.to_str().unwrap()]);
    assert!(status.success() && !out.contains("stalled"), "{out}");
    let err = gw.stderr();
    assert!(err.contains("sink=rec"), "{err}");
    assert_eq!(
        err.matches("the sink's write call returned after").count(),
        1,
        "{err}"
    );
    // Warned past 1 s, then each time it has lasted twice as long (2, 4, 8 s), not every
    // second (the checks run each second: the first may see 0.99 s).
    let warnings = err.matches("has not returned for").count();
    assert!((1..=4).contains(&warnings), "{warnings} warnings: {err}");
    assert!(gw.stop(Duration::from_secs(20)).success());
}

#[test]
fn a_sink_whose_start_hangs_is_named_in_the_log() {
    // A constructor that hangs (a database that neither answers nor refuses) left a gateway
    // that said "starting" and nothing more: the start is watched as a sink's calls are.
    let s = Setup::new();
    let body = format!(
        "[sources.seq]\nplugin = \"testkit-sequence\"\ncount = 1\n[sinks.rec]\nplugin = \"testkit-recorder\"\npath = {:?}\nstart_delay = \"2500ms\"\n",
        s.path("out.txt").display().to_string()
    );
    let cfg = s.config("stall_warning = \"1s\"", &body);
    let mut gw = Running::start(&s, &cfg, &["--until-sources-finish"]);
    let status = gw.wait(Duration::from_secs(30)).expect("exits");
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    let warned = err
        .find("sink rec: its start has not returned for 1 s")
        .expect(&err);
    let returned = err.find("sink rec: its start returned after").expect(&err);
    let running = err.find("gateway running").expect(&err);
    assert!(warned < returned && returned < running, "{err}");
    assert_eq!(s.recorded("out.txt", "seq"), vec![0]);
}

/// Another process on the metrics port would answer health checks and `gateway status` in the
/// gateway's name ("running, 0 pending" while the buffer fills). Before, the gateway logged an
/// error and ran on without its page; now it does not start.
#[test]
fn a_metrics_port_held_by_another_process_stops_the_start() {
    let s = Setup::new();
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let cfg = chain(&s, port);
    let mut gw = Running::start(&s, &cfg, &[]);
    let status = gw
        .wait(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("runs on without its metrics: {}", gw.stderr()));
    let err = gw.stderr();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "[gateway] metrics = \"127.0.0.1:{port}\": cannot listen there"
        )),
        "{err}"
    );
    assert!(!err.contains("gateway running"), "{err}");
}

#[test]
fn a_write_a_sink_keeps_without_answering_is_warned_of() {
    // A sink that takes several batches at once (window) and keeps one without ever saying
    // how it ended: no plugin call is stuck, so nothing was said, while the batches behind it
    // waited (they are settled in order) and the sources were held back.
    let s = Setup::new();
    let body = format!(
        "[sources.seq]\nplugin = \"testkit-sequence\"\ninterval = \"10ms\"\n[sinks.rec]\nplugin = \"testkit-recorder\"\npath = {:?}\nwindow = 2\nkeep_first = 1\n",
        s.path("out.txt").display().to_string()
    );
    let cfg = s.config("stall_warning = \"1s\"", &body);
    let mut gw = Running::start(&s, &cfg, &[]);
    let said = "the sink has not said how a write it was handed ";
    assert!(
        gw.wait_for_log(said, Duration::from_secs(20)),
        "{}",
        gw.stderr()
    );
    // At the first check of the main loop's once-a-second round past 1 s: 1 s, or 2 s when
    // the write was handed just after a round began.
    let err = gw.stderr();
    let first = err.lines().find(|l| l.contains(said)).unwrap();
    assert!(
        first.contains(" 1 s ago ended") || first.contains(" 2 s ago ended"),
        "{first}"
    );
    gw.stop(Duration::from_secs(20));
}

/// The gateway holds database passwords, PSKs and private keys in memory. A crash, or the
/// watchdog's SIGABRT, wrote them to a core file (and systemd-coredump copies the environment,
/// with `server.env`'s password, into the journal); any process of the gateway's user could
/// read `/proc/PID/environ` and `/proc/PID/mem`. The gateway now makes itself not dumpable,
/// which the kernel shows by giving the files of its `/proc/PID/` to root. Run as `nobody`, as a service
/// runs as its own user (a process of root's is root's either way); `sleep`, run the same way,
/// shows that they are its user's otherwise.
#[test]
fn a_running_gateway_is_not_dumpable() {
    use std::os::unix::{fs::MetadataExt, process::CommandExt};
    const NOBODY: u32 = 65534;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: running a process as nobody takes root");
        return;
    }
    let s = Setup::new();
    std::fs::set_permissions(
        s.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let data = s.path("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(NOBODY), Some(NOBODY)).unwrap();
    let cfg = s.config(
        &format!("data_dir = {:?}", data.display().to_string()),
        "[sources.seq]\nplugin = \"testkit-sequence\"\ninterval = \"1s\"\n\n[sinks.null]\nplugin = \"testkit-null-sink\"\n",
    );
    // (`/proc/PID/` itself stays the process's user's, as procps relies on; what is in it
    // goes to root.)
    let owner = |pid: u32| std::fs::metadata(format!("/proc/{pid}/environ")).map(|m| m.uid());
    let spawn = |cmd: &mut Command, env: Option<&str>| {
        if let Some(v) = env {
            cmd.env("GATEWAY_DUMPABLE", v);
        } else {
            cmd.env_remove("GATEWAY_DUMPABLE");
        }
        cmd.uid(NOBODY)
            .gid(NOBODY)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut sleep = spawn(Command::new("sleep").arg("30"), None);
    let gateway = |env| {
        spawn(
            Command::new(env!("CARGO_BIN_EXE_gateway"))
                .args(["run", "--config"])
                .arg(&cfg),
            env,
        )
    };
    let (mut gw, mut debug) = (gateway(None), gateway(Some("1")));
    // Each has started (and made itself not dumpable, first thing) once it loaded a plugin.
    let end = Instant::now() + Duration::from_secs(20);
    let started = |pid: u32| {
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok()
            && std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .is_ok_and(|m| m.contains("testkit"))
    };
    while !(started(gw.id()) && started(debug.id())) {
        assert!(
            Instant::now() < end && gw.try_wait().unwrap().is_none(),
            "the gateway did not start as nobody"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let owners = (
        owner(gw.id()).unwrap(),
        owner(debug.id()).unwrap(),
        owner(sleep.id()).unwrap(),
    );
    for c in [&mut gw, &mut debug, &mut sleep] {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert_eq!(
        owners,
        (0, NOBODY, NOBODY),
        "(gateway, GATEWAY_DUMPABLE=1, sleep)"
    );
}
