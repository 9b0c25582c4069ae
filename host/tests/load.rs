//! `gateway-load` against the real ingress: a load generator that a user points at a server
//! must treat it as a real device would.

mod support;
use std::{process::Command, time::Duration};
use support::*;

/// `gateway-load` run against the ingress on 127.0.0.1:`port` with the CA of `certs`, and
/// `args`, to its end.
fn gateway_load(certs: &std::path::Path, port: u16, args: &[&str]) -> std::process::Output {
    let c = |f: &str| certs.join(f).display().to_string();
    Command::new(plugin_dir().join("gateway-load"))
        .args([
            "--server",
            &format!("127.0.0.1:{port}"),
            "--host",
            "localhost",
        ])
        .args(["--ca", &c("ca.pem"), "--ca-key", &c("ca.key")])
        .args(args)
        .output()
        .unwrap()
}

/// The ingress answers 5.03 with `Max-Age: 60` to every request but the first (its sink fails
/// and takes one batch at a time; the others wait 2 s for room, then are refused). Each device
/// must then pause for the minute asked, not come back at once: in a 6 s run, at most one
/// refusal per device.
#[test]
fn gateway_load_pauses_for_a_503s_max_age() {
    let s = Setup::new();
    let certs = s.path("certs");
    make_certs(&certs, "test");
    let port = free_udp_port();
    let server = s.server_config(&format!(
        r#"{ingress}retry_after = 60

[sinks.store]
plugin = "testkit-recorder"
path = {out:?}
fail_first = 1000000000
queue_capacity = 1
"#,
        ingress = ingress_source(&certs, port),
        out = s.path("out.txt").display().to_string(),
    ));
    let mut gw = Running::start_named(&s, "server", &server);
    assert!(gw.wait_for_log("CoAP/DTLS ingress listening", Duration::from_secs(10)));
    let out = gateway_load(
        &certs,
        port,
        &["--devices", "2", "--duration", "6s", "--timeout", "3s"],
    );
    gw.stop(Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout);
    let result = text
        .lines()
        .find_map(|l| l.strip_prefix("result "))
        .unwrap_or_else(|| panic!("no result line\n{text}"));
    let field = |k: &str| -> u64 {
        result
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {result}"))
    };
    assert!(field("waits") >= 1, "no device paused\n{text}");
    // Without the pause each device is refused every 2 s (the ingress's hold) in the window.
    assert!(
        field("refused") <= 2,
        "a device came back before the Max-Age\n{text}"
    );
    assert_eq!(field("ok"), 0, "the sink stores nothing\n{text}");
    assert!(
        text.contains("paused") && text.contains("as the server asked (Max-Age)"),
        "{text}"
    );
}

/// Each session the load generator opens, it closes with a close_notify, as a device that is
/// done would: it never sent one (its close saw the machine closed before the alert went
/// out), so the server under its handshake benchmark filled up with the sessions of devices
/// long gone and evicted them to make room.
#[test]
fn gateway_load_closes_each_session_it_opens() {
    let s = Setup::new();
    let certs = s.path("certs");
    make_certs(&certs, "test");
    let port = free_udp_port();
    let server = s.config_named(
        "server",
        "server",
        "stats_interval = \"0s\"\ndata_dir = \"server-data\"\nlog_level = \"debug\"",
        &format!(
            "{ingress}\n[sinks.null]\nplugin = \"testkit-null-sink\"\n",
            ingress = ingress_source(&certs, port),
        ),
    );
    let mut gw = Running::start_named(&s, "server", &server);
    assert!(gw.wait_for_log("CoAP/DTLS ingress listening", Duration::from_secs(10)));
    let out = gateway_load(
        &certs,
        port,
        &["--devices", "2", "--mode", "handshakes", "--duration", "2s"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // The sessions the server's log says were opened, and closed by the peer; the last
    // close_notify is on its way when the load generator exits.
    let tally = |l: &str| {
        (
            l.matches("DTLS session established").count(),
            l.matches("DTLS session closed by the peer").count(),
        )
    };
    let end = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (opened, closed) = tally(&gw.stderr());
        if closed >= opened || std::time::Instant::now() >= end {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    gw.stop(Duration::from_secs(30));
    let (opened, closed) = tally(&gw.stderr());
    assert!(opened >= 4, "{opened} sessions\n{text}");
    assert_eq!(
        closed, opened,
        "sessions the load generator left open\n{text}"
    );
}

/// The load generator takes a PSK from a file or the environment, never from its command line
/// (where `ps` shows it to every user): each device handshakes under its own name with its own
/// key, read from the server's own `psk_file`.
#[test]
fn gateway_load_takes_its_psk_from_a_file_or_the_environment() {
    let s = Setup::new();
    let port = free_udp_port();
    let keys = "load-0:5ec2e7a1b3c4d5e6f708192a3b4c5d6e\nload-1:e1d2c3b4a5968778695a4b3c2d1e0f7a\n";
    let devices = s.path("psk.txt");
    std::fs::write(&devices, keys).unwrap();
    std::fs::set_permissions(
        &devices,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let server = s.server_config(&format!(
        "[sources.ingress]\nplugin = \"coaps-ingress\"\nlisten = \"127.0.0.1:{port}\"\npsk_file = {:?}\n\n[sinks.null]\nplugin = \"testkit-null-sink\"\n",
        devices.display().to_string()
    ));
    let mut gw = Running::start_named(&s, "server", &server);
    assert!(gw.wait_for_log("CoAP/DTLS ingress listening", Duration::from_secs(10)));
    let file = devices.to_str().unwrap();
    let run = |args: &[&str]| {
        Command::new(plugin_dir().join("gateway-load"))
            .args(["--server", &format!("127.0.0.1:{port}")])
            .args(["--duration", "1s", "--timeout", "3s"])
            .args(args)
            .env("GW_LOAD_PSK", keys)
            .output()
            .unwrap()
    };
    // The server's own file: each device has its key there, under its name.
    for args in [
        &["--devices", "2", "--psk-file", file][..],
        &["--devices", "2", "--psk-env", "GW_LOAD_PSK"][..],
    ] {
        let out = run(args);
        let text = String::from_utf8_lossy(&out.stdout);
        let ok = text
            .lines()
            .find_map(|l| l.strip_prefix("result "))
            .and_then(|r| r.split_whitespace().find_map(|kv| kv.strip_prefix("ok=")))
            .and_then(|v| v.parse::<u64>().ok());
        assert!(
            out.status.success() && ok.is_some_and(|n| n > 0),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    gw.stop(Duration::from_secs(30));
    let refused = |args: &[&str], why: &str| {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(why),
            "{args:?}: {err}"
        );
    };
    // A third device has no key; one key for every device is no longer a format.
    refused(
        &["--devices", "3", "--psk-file", file],
        "no PSK for load-2 (device N is load-N): give each device a line load-2:HEXKEY",
    );
    let one = s.path("one.psk");
    std::fs::write(&one, "5ec2e7a1b3c4d5e6f708192a3b4c5d6e\n").unwrap();
    refused(
        &["--psk-file", one.to_str().unwrap()],
        "line 1: expected IDENTITY:HEXKEY, one line per device",
    );
    let out = run(&["--psk", "5ec2e7a1b3c4d5e6f708192a3b4c5d6e"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("unexpected argument '--psk'"),
        "a key on the command line is refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
