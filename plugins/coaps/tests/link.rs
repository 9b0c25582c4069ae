//! The two plugins against each other through the SDK harness, over real DTLS on loopback:
//! exactly-once delivery through a lossy relay, refusals that say why, both encodings.

use coaps::{Ingress, Uplink};
use common::{certs, free_port, ingress_config, uplink_config};
use gateway_sdk::{
    testing::{run_source, sample_readings, SinkHarness},
    ErrorKind, Reading, ReadingId,
};
use gateway_test_support::coaps as common;
use gateway_test_support::lossy_relay::lossy_relay;
use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

fn ingress_thread(cfg: String, n: usize) -> std::thread::JoinHandle<Vec<Reading>> {
    std::thread::spawn(move || {
        let run = run_source::<Ingress>(&cfg, n, Duration::from_secs(60)).unwrap();
        run.outcome.unwrap();
        run.readings
    })
}

#[test]
fn every_reading_arrives_exactly_once_through_a_lossy_relay() {
    // LINK_DEBUG=LEVEL (e.g. debug) logs the link's events while the test runs.
    if let Some(level) = std::env::var("LINK_DEBUG")
        .ok()
        .and_then(|l| l.parse::<gateway_sdk::tracing::Level>().ok())
    {
        let _ = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(std::io::stderr)
            .try_init();
    }
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "test-device");
    let port = free_port();
    let stop = Arc::new(AtomicBool::new(false));
    let loss: f64 = std::env::var("RELAY_LOSS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.2);
    let dup: f64 = std::env::var("RELAY_DUP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.05);
    let relay = if std::env::var("RELAY_OFF").is_ok() {
        port
    } else {
        lossy_relay(
            port,
            loss,
            dup,
            Duration::from_millis(30),
            0x1234_5678_9abc_def1,
            stop.clone(),
            Default::default(),
        )
    };
    let (batches, per_batch) = (30, 20);
    let ingress = ingress_thread(ingress_config(dir.path(), port, ""), batches * per_batch);
    std::thread::sleep(Duration::from_millis(200));
    let mut uplink = SinkHarness::new::<Uplink>(&uplink_config(
        dir.path(),
        relay,
        "ack_timeout = \"300ms\"\nrequest_timeout = \"20s\"\n",
    ))
    .unwrap();
    let mut sent = HashSet::new();
    for _ in 0..batches {
        let batch = sample_readings(per_batch);
        sent.extend(batch.iter().map(|r| r.id));
        // The host retries a retryable failure with the same batch; do the same here.
        let mut tries = 0;
        while let Err(e) = uplink.write(batch.clone()) {
            assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
            tries += 1;
            assert!(tries < 5, "too many retries: {e}");
        }
    }
    let received = ingress.join().unwrap();
    stop.store(true, Ordering::SeqCst);
    let ids: Vec<ReadingId> = received.iter().map(|r| r.id).collect();
    let unique: HashSet<ReadingId> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no reading twice");
    assert_eq!(unique, sent, "every reading arrived");
    assert!(received
        .iter()
        .all(|r| r.device == "test-device" && r.unit == "Cel"));
}

#[test]
fn json_encoding_works_too_and_values_survive() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "test-device");
    let port = free_port();
    let ingress = ingress_thread(ingress_config(dir.path(), port, ""), 5);
    std::thread::sleep(Duration::from_millis(200));
    let mut uplink =
        SinkHarness::new::<Uplink>(&uplink_config(dir.path(), port, "encoding = \"json\"\n"))
            .unwrap();
    let batch = sample_readings(5);
    uplink.write(batch.clone()).unwrap();
    assert_eq!(
        ingress.join().unwrap(),
        batch,
        "the same readings, ids, times and values"
    );
}

#[test]
fn the_uplink_reaches_an_ipv6_server_with_the_default_bind() {
    // The default bind is 0.0.0.0:0; a socket of that family cannot send to an IPv6 server.
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        // CI's machine has one: there the test must run, not pass unrun.
        assert!(
            std::env::var("CI").is_err(),
            "no IPv6 loopback ([::1]) on a CI machine"
        );
        eprintln!("skipped: this machine has no IPv6 loopback");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "test-device");
    let port = free_port();
    let cfg = ingress_config(dir.path(), port, "").replace("127.0.0.1", "[::1]");
    let ingress = ingress_thread(cfg, 3);
    std::thread::sleep(Duration::from_millis(200));
    let cfg = uplink_config(dir.path(), port, "").replace("127.0.0.1", "[::1]");
    assert!(!cfg.contains("bind"), "{cfg}");
    let mut uplink = SinkHarness::new::<Uplink>(&cfg).unwrap();
    let batch = sample_readings(3);
    uplink.write(batch.clone()).unwrap();
    assert_eq!(ingress.join().unwrap(), batch);
}

/// A device posts readings of its own only. The ingress answered 4.03 to a reading of another
/// device, which made the uplink hold its readings (a 4.03 says the device itself is
/// refused): a Pi renamed with readings of its old name in its buffer held them all, the new
/// ones behind them, for ever. A 4.00 refuses those readings for good (the host narrows the
/// batch and keeps them as dead letters), and the device's own go up.
#[test]
fn a_reading_of_another_device_is_refused_for_good_and_the_own_go_up() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "pi-01"); // the certificate says pi-01; the sample readings test-device
    let port = free_port();
    let ingress = ingress_thread(ingress_config(dir.path(), port, ""), 2);
    std::thread::sleep(Duration::from_millis(200));
    let mut uplink = SinkHarness::new::<Uplink>(&uplink_config(dir.path(), port, "")).unwrap();
    let theirs = sample_readings(2);
    let mut mine = sample_readings(2);
    for r in &mut mine {
        r.device = gateway_sdk::Label::from("pi-01");
    }
    let e = uplink
        .write(vec![mine[0].clone(), theirs[1].clone()])
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert!(
        e.message().contains("4.00")
            && e.message()
                .contains("pi-01 may post readings only for itself, not for test-device"),
        "{e}"
    );
    // Not held: the device's own readings go up at once.
    uplink.write(mine.clone()).unwrap();
    drop(uplink);
    assert_eq!(ingress.join().unwrap(), mine);
}

/// The uplink's `crl_file`: a server certificate the CA revoked (its key was stolen) is
/// refused, and the readings are held, not sent.
#[test]
fn a_server_certificate_revoked_in_the_uplinks_crl_file_gets_no_readings() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "test-device");
    let d = |f: &str| dir.path().join(f);
    let (ca, ca_key) = gateway_pki::read_pair(&d("ca.pem"), &d("ca.key")).unwrap();
    let (server, _) = gateway_pki::read_pair(&d("server.pem"), &d("server.key")).unwrap();
    gateway_pki::revoke(&d("crl.pem"), &ca, &ca_key, &[&server], 30).unwrap();
    let port = free_port();
    let ingress = ingress_thread(ingress_config(dir.path(), port, ""), 1);
    std::thread::sleep(Duration::from_millis(200));
    let crl = format!("crl_file = {:?}\n", d("crl.pem"));
    let mut uplink = SinkHarness::new::<Uplink>(&uplink_config(dir.path(), port, &crl)).unwrap();
    let e = uplink.write(sample_readings(2)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    assert!(e.message().contains("certificate revoked"), "{e}");
    drop(uplink);
    drop(ingress);
}

/// A device certificate outside its dates (here valid from tomorrow: a Pi whose clock is
/// behind, before network time sets it) does not keep the uplink from being built, which
/// would keep the whole gateway from starting and its sensors unread: the server refuses the
/// handshake and the readings are held, to go up once the certificate or the clock is right.
#[test]
fn a_device_certificate_not_yet_valid_holds_the_readings_and_does_not_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "test-device");
    let d = |f: &str| dir.path().join(f);
    let (ca, ca_key) = gateway_pki::read_pair(&d("ca.pem"), &d("ca.key")).unwrap();
    gateway_pki::issue_to(
        &d("device.pem"),
        &d("device.key"),
        "test-device",
        gateway_pki::Kind::Device,
        Some((&ca, &ca_key)),
        1,
        30,
    )
    .unwrap();
    let port = free_port();
    let _ingress = ingress_thread(ingress_config(dir.path(), port, ""), 1);
    std::thread::sleep(Duration::from_millis(200));
    let mut uplink = SinkHarness::new::<Uplink>(&uplink_config(
        dir.path(),
        port,
        "handshake_timeout = \"3s\"\n",
    ))
    .expect("built: dates are said, not refused");
    let e = uplink.write(sample_readings(2)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    // Retried because the server refused the certificate, not for any other reason (a port
    // that cannot be reached would be retried too).
    assert!(e.message().contains("bad certificate"), "{e}");
    assert!(uplink.acknowledged().is_empty());
}

/// A reading timed before 1978-07-04 (a clock not set yet) is refused for good before
/// anything goes out, so the host puts it in the dead letters: sent, the server would have
/// read its time as relative to its own clock and stored it as "now".
#[test]
fn a_reading_timed_before_1978_is_refused_for_good_and_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "test-device");
    // No server: nothing may be sent (a write would be retried, not refused).
    let mut uplink =
        SinkHarness::new::<Uplink>(&uplink_config(dir.path(), free_port(), "")).unwrap();
    let mut batch = sample_readings(3);
    batch[2].time = gateway_sdk::Timestamp(30_000_000);
    let e = uplink.write(batch).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert!(e.message().contains("before 1978-07-04"), "{e}");
    // Found in an audit: SenML JSON carried a NaN as `null`, a reading without its value.
    let mut json = SinkHarness::new::<Uplink>(&uplink_config(
        dir.path(),
        free_port(),
        "encoding = \"json\"\n",
    ))
    .unwrap();
    let mut batch = sample_readings(3);
    batch[1].value = gateway_sdk::Value::Float(f64::NAN);
    let e = json.write(batch).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert!(e.message().contains("which JSON cannot carry"), "{e}");
}

#[test]
fn an_unknown_resource_is_a_4_04_and_holds_the_readings() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "test-device");
    let port = free_port();
    let _ingress = ingress_thread(ingress_config(dir.path(), port, ""), 1);
    std::thread::sleep(Duration::from_millis(200));
    let cfg = uplink_config(dir.path(), port, "refusal_backoff = \"300ms\"\n")
        .replace("/gpsflowtemp", "/elsewhere");
    let mut uplink = SinkHarness::new::<Uplink>(&cfg).unwrap();
    let e = uplink.write(sample_readings(1)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY);
    assert!(e.message().contains("4.04"), "{e}");
    assert!(uplink
        .write(sample_readings(1))
        .unwrap_err()
        .message()
        .starts_with("holding"));
    // After the backoff it asks the server again (and is refused again).
    std::thread::sleep(Duration::from_millis(400));
    let e = uplink.write(sample_readings(1)).unwrap_err();
    assert!(
        e.message()
            .starts_with("the server refuses this device: 4.04"),
        "{e}"
    );
}

#[test]
fn config_errors_name_the_key() {
    let e = SinkHarness::new::<Uplink>("uri = \"coap://x/y\"\nca_file = \"/x\"")
        .err()
        .unwrap();
    assert!(
        e.message()
            .contains("uri: \"coap://x/y\" does not start with coaps://"),
        "{e}"
    );
    let e = SinkHarness::new::<Uplink>("uri = \"coaps://x/y\"")
        .err()
        .unwrap();
    assert!(e.message().contains("ca_file: required"), "{e}");
    let e = SinkHarness::new::<Uplink>("uri = \"coaps://x/y\"\nca_file = \"/nonexistent.pem\"")
        .err()
        .unwrap();
    assert!(
        e.message()
            .contains("ca_file /nonexistent.pem: No such file")
            && e.message().contains("gateway certs init"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "test-device");
    let e = SinkHarness::new::<Uplink>(&uplink_config(dir.path(), 1, "max_retransmit = 21\n"))
        .err()
        .unwrap();
    assert!(
        e.message().contains("max_retransmit: 21 is more than 20"),
        "{e}"
    );
    assert!(
        SinkHarness::new::<Uplink>(&uplink_config(dir.path(), 1, "max_retransmit = 20\n")).is_ok()
    );
    // Found in an audit: a zero wait held every reading for ever, each write failing with "no
    // response within 0ns".
    for key in ["ack_timeout", "request_timeout", "handshake_timeout"] {
        let e =
            SinkHarness::new::<Uplink>(&uplink_config(dir.path(), 1, &format!("{key} = \"0s\"\n")))
                .err()
                .unwrap();
        assert!(
            e.message()
                .contains(&format!("{key}: must be more than 0s")),
            "{e}"
        );
    }
    // A block larger than a datagram of the path went out in IP fragments. Left out, the
    // block size is the largest that fits.
    let e = SinkHarness::new::<Uplink>(&uplink_config(
        dir.path(),
        1,
        "mtu = 576\nblock_size = 1024\n",
    ))
    .err()
    .unwrap();
    assert!(
        e.message().contains(
            "block_size: 1024 does not fit one datagram of mtu 576 (a block of it carries 490 bytes at most): use block_size = 256 or less"
        ),
        "{e}"
    );
    for fits in ["mtu = 576\nblock_size = 256\n", "mtu = 576\n"] {
        assert!(SinkHarness::new::<Uplink>(&uplink_config(dir.path(), 1, fits)).is_ok());
    }
    let e = SinkHarness::new::<Uplink>(&uplink_config(dir.path(), 1, "mtu = 90\n"))
        .err()
        .unwrap();
    assert!(e.message().contains("mtu: 90 leaves no room"), "{e}");
    // A PSK handshake shows no certificate: the CA file would check nothing.
    let psk = "psk_identity = \"pi-01\"\npsk_key = \"5f1c9e07a2d84b36e0917c5a3bf24d68\"\n";
    let e = SinkHarness::new::<Uplink>(&format!(
        "uri = \"coaps://127.0.0.1:1/x\"\nca_file = {:?}\n{psk}",
        dir.path().join("ca.pem").display().to_string()
    ))
    .err()
    .unwrap();
    assert!(e.message().contains("ca_file: set with a PSK"), "{e}");
    let e =
        run_source::<Ingress>("listen = \"127.0.0.1:0\"", 1, Duration::from_secs(1)).unwrap_err();
    assert!(
        e.message()
            .contains("no device can authenticate: give client_ca_file"),
        "{e}"
    );
    let e = run_source::<Ingress>(
        "listen = \"127.0.0.1:0\"\nallow_anonymous = true",
        1,
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(e.message().contains("cert_file and key_file"), "{e}");
    for key in ["handshake_timeout", "session_idle"] {
        let e = run_source::<Ingress>(
            &format!("listen = \"127.0.0.1:0\"\nallow_anonymous = true\n{key} = \"0s\""),
            1,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            e.message()
                .contains(&format!("{key}: must be more than 0s")),
            "{e}"
        );
    }
    // A deny or readers entry that no handshake can give would match nobody: a device denied
    // as "pi-07 " came in as pi-07.
    for (line, said) in [
        (
            "deny = [\"pi-07 \"]",
            "deny: \"pi-07 \" can never be a device's identity",
        ),
        ("deny = [\"\"]", "deny: \"\" can never be"),
        (
            "readers = [\"a\\u0007\"]",
            "readers: \"a\\u{7}\" can never be",
        ),
        (
            "readers = [\"anonymous\"]",
            "readers: \"anonymous\" is reserved",
        ),
    ] {
        let e = run_source::<Ingress>(
            &format!("listen = \"127.0.0.1:0\"\nallow_anonymous = true\n{line}"),
            1,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.message().contains(said), "{line}: {e}");
    }
    // "anonymous" in deny refuses a certificate of that common name at the handshake, as
    // before: the ingress starts, and runs until it is stopped.
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "pi-01");
    let run = run_source::<Ingress>(
        &ingress_config(dir.path(), free_port(), "deny = [\"anonymous\"]\n"),
        1,
        Duration::from_millis(300),
    )
    .unwrap();
    assert!(run.outcome.is_ok(), "{:?}", run.outcome);
}

#[test]
fn ca_files_others_can_change_are_refused_naming_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "pi-01");
    let ca = dir.path().join("ca.pem");
    let mode = |m: u32| std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(m)).unwrap();
    let uplink = format!(
        "uri = \"coaps://127.0.0.1:5684/x\"\nca_file = {:?}\n",
        ca.display().to_string()
    );
    // Whoever can add a CA to the uplink's file can take its readings and answer 2.04.
    mode(0o666);
    let e = SinkHarness::new::<Uplink>(&uplink).err().unwrap();
    assert!(
        e.message().contains("ca_file:")
            && e.message().contains(
                "decides whom the gateway trusts but can be changed by others (mode 0666"
            )
            && e.message().contains("chmod o-w"),
        "{e}"
    );
    // The ingress's: whoever can add a CA lets their own devices in.
    mode(0o646);
    let e = run_source::<Ingress>(
        &ingress_config(dir.path(), free_port(), ""),
        1,
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(
        e.message().contains("client_ca_file:")
            && e.message().contains("can be changed by others (mode 0646"),
        "{e}"
    );
    // Readable by all is fine: a CA certificate is public. Its group may write it (a umask
    // of 002 makes files so).
    mode(0o644);
    assert!(SinkHarness::new::<Uplink>(&uplink).is_ok());
    mode(0o664);
    assert!(SinkHarness::new::<Uplink>(&uplink).is_ok());
    // Whoever can write the directory can put another CA file in its place.
    let dir_mode = |d: &std::path::Path, m: u32| {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(m)).unwrap()
    };
    dir_mode(dir.path(), 0o777);
    let e = SinkHarness::new::<Uplink>(&uplink).err().unwrap();
    assert!(
        e.message().contains("ca_file:")
            && e.message().contains("is in a directory others can change")
            && e.message().contains("is writable by others (mode 0777)"),
        "{e}"
    );
    dir_mode(dir.path(), 0o700);
    assert!(SinkHarness::new::<Uplink>(&uplink).is_ok());
    // ...or point a link there at another file (the system's CA bundle, say): the link's
    // directory decides too.
    let open = tempfile::tempdir().unwrap();
    dir_mode(open.path(), 0o777);
    let link = open.path().join("ca.pem");
    std::os::unix::fs::symlink(&ca, &link).unwrap();
    let linked = format!(
        "uri = \"coaps://127.0.0.1:5684/x\"\nca_file = {:?}\n",
        link.display().to_string()
    );
    let e = SinkHarness::new::<Uplink>(&linked).err().unwrap();
    assert!(e.message().contains("(which holds the link"), "{e}");
    dir_mode(open.path(), 0o755);
    assert!(SinkHarness::new::<Uplink>(&linked).is_ok());
}

#[test]
fn reading_ids_are_scoped_by_device_so_one_cannot_pre_claim_anothers() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "test-device");
    let port = free_port();
    let key = "5f1c9e07a2d84b36e0917c5a3bf24d68";
    let other = "c3a1f0e2d4b69587a7b8c9d0e1f20314";
    let icfg = format!(
        "{}[[psk]]\nidentity = \"test-device\"\nkey = \"{key}\"\n[[psk]]\nidentity = \"pi-02\"\nkey = \"{other}\"\n",
        ingress_config(dir.path(), port, "")
    );
    let ingress = std::thread::spawn(move || {
        run_source::<Ingress>(&icfg, 6, Duration::from_secs(20)).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let uplink = |who: &str, key: &str| {
        SinkHarness::new::<Uplink>(&format!(
            "uri = \"coaps://127.0.0.1:{port}/gpsflowtemp\"\npsk_identity = \"{who}\"\npsk_key = \"{key}\"\n",
        ))
        .unwrap()
    };
    let theirs = sample_readings(3);
    // pi-02 sends its own readings first, with the ids test-device is going to use.
    let mut mine = theirs.clone();
    for r in &mut mine {
        r.device = gateway_sdk::Label::from("pi-02");
    }
    uplink("pi-02", other).write(mine).unwrap();
    uplink("test-device", key).write(theirs).unwrap();
    let run = ingress.join().unwrap();
    let mut devices: Vec<&str> = run.readings.iter().map(|r| r.device.as_str()).collect();
    devices.sort();
    assert_eq!(
        devices,
        [
            "pi-02",
            "pi-02",
            "pi-02",
            "test-device",
            "test-device",
            "test-device"
        ]
    );
}

#[test]
fn psks_come_from_files_and_the_environment_and_readable_key_files_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "test-device");
    let key = "5f1c9e07a2d84b36e0917c5a3bf24d68";
    let private = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p.display().to_string()
    };
    // Saved by an editor that starts the file with a byte-order mark: not part of pi-01.
    let psk_file = private(
        "psk.txt",
        &format!(
            "\u{FEFF}pi-01:{key}\n# the fleet\n\nsensor-9:88756fb54d62533774a81e9bc51d97cf3b\n"
        ),
    );
    let key_file = private("pi-01.key", &format!("{key}\n"));
    let port = free_port();
    let icfg = format!(
        "{}psk_file = {psk_file:?}\n",
        ingress_config(dir.path(), port, "")
    );
    let ingress = std::thread::spawn({
        let icfg = icfg.clone();
        move || run_source::<Ingress>(&icfg, 2, Duration::from_secs(20)).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let uri = format!("coaps://127.0.0.1:{port}/gpsflowtemp");
    let mut readings = sample_readings(2);
    for r in &mut readings {
        r.device = gateway_sdk::Label::from("pi-01");
    }
    let mut from_file = SinkHarness::new::<Uplink>(&format!(
        "uri = {uri:?}\npsk_identity = \"pi-01\"\npsk_key_file = {key_file:?}\n"
    ))
    .unwrap();
    from_file.write(readings).unwrap();
    let run = ingress.join().unwrap();
    assert_eq!(run.readings.len(), 2);
    assert!(run.readings.iter().all(|r| r.device.as_str() == "pi-01"));

    // From the environment (a variable that is not set: setting one would race with the other
    // threads of this test binary), and from two places at once.
    let env_cfg =
        format!("uri = {uri:?}\npsk_identity = \"pi-01\"\npsk_key_env = \"GATEWAY_NO_SUCH_PSK\"\n");
    let e = SinkHarness::new::<Uplink>(&env_cfg).err().unwrap();
    assert!(
        e.message()
            .contains("psk_key_env: the environment variable GATEWAY_NO_SUCH_PSK is not set"),
        "{e}"
    );
    let e = SinkHarness::new::<Uplink>(&format!("{env_cfg}psk_key = \"{key}\"\n"))
        .err()
        .unwrap();
    assert!(
        e.message()
            .contains("psk_key, psk_key_env and psk_key_file: give one of them"),
        "{e}"
    );

    // The documentation's example key, and any other whose bytes run in a fixed step, is
    // refused on either side: anyone can guess it (before, 16 bytes passed without a word).
    for guessable in [
        "000102030405060708090a0b0c0d0e0f",
        "00112233445566778899aabbccddeeff",
        "0000000000000000000000000000000000",
        "fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0",
    ] {
        let e = SinkHarness::new::<Uplink>(&format!(
            "uri = {uri:?}\npsk_identity = \"pi-01\"\npsk_key = \"{guessable}\"\n"
        ))
        .err()
        .unwrap();
        assert!(e.message().contains("anyone can guess it"), "{e}");
        let icfg = format!(
            "{}[[psk]]\nidentity = \"pi-02\"\nkey = \"{guessable}\"\n",
            ingress_config(dir.path(), free_port(), "")
        );
        let e = run_source::<Ingress>(&icfg, 1, Duration::from_secs(1)).unwrap_err();
        assert!(e.message().contains("anyone can guess it"), "{e}");
    }

    // A key shorter than 16 bytes is refused on either side (before, only warned about): one
    // recorded handshake lets anyone on the path find it offline.
    for short in ["a5", "5f1c9e07a2d84b36e0917c5a3bf24d"] {
        let e = SinkHarness::new::<Uplink>(&format!(
            "uri = {uri:?}\npsk_identity = \"pi-01\"\npsk_key = \"{short}\"\n"
        ))
        .err()
        .unwrap();
        assert!(e.message().contains("a PSK has at least 16"), "{e}");
        let icfg = format!(
            "{}[[psk]]\nidentity = \"pi-02\"\nkey = \"{short}\"\n",
            ingress_config(dir.path(), free_port(), "")
        );
        let e = run_source::<Ingress>(&icfg, 1, Duration::from_secs(1)).unwrap_err();
        assert!(e.message().contains("a PSK has at least 16"), "{e}");
    }

    // Key files every local user can read, or others can change, are refused, naming the file
    // and the fix.
    std::fs::set_permissions(
        dir.path().join("psk.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let e = run_source::<Ingress>(&icfg, 1, Duration::from_secs(1)).unwrap_err();
    assert!(
        e.message().contains("psk_file:")
            && e.message()
                .contains("every local user may read it (mode 0644)"),
        "{e}"
    );
    std::fs::set_permissions(
        dir.path().join("psk.txt"),
        std::fs::Permissions::from_mode(0o620),
    )
    .unwrap();
    let e = run_source::<Ingress>(&icfg, 1, Duration::from_secs(1)).unwrap_err();
    assert!(
        e.message().contains("can be changed by others (mode 0620"),
        "{e}"
    );
    // The device name of peers without an identity is no PSK identity.
    private("psk.txt", &format!("anonymous:{key}\n"));
    let e = run_source::<Ingress>(&icfg, 1, Duration::from_secs(1)).unwrap_err();
    assert!(e.message().contains("\"anonymous\" is reserved"), "{e}");
    // A malformed line names the file and the line.
    private("psk.txt", "pi-01 0011\n");
    let e = run_source::<Ingress>(&icfg, 1, Duration::from_secs(1)).unwrap_err();
    assert!(
        e.message().contains("psk.txt:1: expected IDENTITY:HEXKEY"),
        "{e}"
    );
    // The error of an ingress whose psk_file holds `lines`.
    let refused = |lines: &str| {
        private("psk.txt", lines);
        run_source::<Ingress>(&icfg, 1, Duration::from_secs(1)).unwrap_err()
    };
    // Two identities with one key: whoever holds it could handshake as either, so it is
    // refused wherever the second comes from, naming both places and never the key (nor a
    // line's identity, which may hold key bytes).
    let e = refused(&format!("pi-01:{key}\n# a copy\npi-02:{key}\n"));
    assert!(
        e.message().contains("psk.txt:3: the same key as psk_file")
            && e.message().contains("psk.txt:1;")
            && !e.message().contains(key),
        "{e}"
    );
    // One identity twice, with two keys: which would be its key?
    let e = refused(&format!(
        "pi-01:{key}\npi-01:c3a1f0e2d4b69587a7b8c9d0e1f20314\n"
    ));
    assert!(
        e.message().contains("psk.txt:2: the identity of psk_file")
            && e.message().contains("psk.txt:1 is given twice"),
        "{e}"
    );
    // A key that holds another's (here with a byte added at each end): whoever holds the one
    // is a few guesses from the other.
    let e = refused(&format!("pi-01:{key}\npi-02:ab{key}cd\n"));
    assert!(
        e.message()
            .contains("psk.txt:2: a key that holds 16 bytes in a row of the key of psk_file"),
        "{e}"
    );
    // Lines where what comes before the last colon is key bytes: a colon after the key, and a
    // rotation written inline. No message shows them.
    let e = refused(&format!("pi-01:{key}:\n"));
    assert!(
        e.message()
            .contains("psk.txt:1: must be an even number of hex digits")
            && !e.message().contains(key),
        "{e}"
    );
    let e = refused(&format!("pi-01:{key}:c3a1f0e2d4b69587a7b8c9d0e1f20314\n"));
    assert!(
        e.message().contains("psk.txt:1: the identity holds a key") && !e.message().contains(key),
        "{e}"
    );
    private("psk.txt", &format!("pi-02:{key}\n"));
    let both = format!("{icfg}[[psk]]\nidentity = \"pi-01\"\nkey = \"{key}\"\n");
    let e = run_source::<Ingress>(&both, 1, Duration::from_secs(1)).unwrap_err();
    assert!(
        e.message()
            .contains("psk.txt:1: the same key as psk[0] (\"pi-01\")"),
        "{e}"
    );
    private("psk.txt", "pi-01:zz\n");
    let e = run_source::<Ingress>(&icfg, 1, Duration::from_secs(1)).unwrap_err();
    assert!(
        e.message()
            .contains("psk.txt:1: must be an even number of hex digits"),
        "{e}"
    );
}

#[test]
fn a_reading_too_large_for_the_server_is_refused_alone_and_a_device_named_anonymous_is_not_one() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "test-device");
    let port = free_port();
    let _ingress = ingress_thread(ingress_config(dir.path(), port, "max_body = 2000\n"), 1);
    std::thread::sleep(Duration::from_millis(200));
    let mut uplink = SinkHarness::new::<Uplink>(&uplink_config(dir.path(), port, "")).unwrap();
    let mut big = sample_readings(1);
    big[0].value = gateway_sdk::Value::Text("x".repeat(5000).into());
    // One reading the server will never take (4.13): refused for good, so the host keeps it in
    // its dead-letter file instead of holding the whole backlog behind it.
    let e = uplink.write(big).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert!(e.message().contains("4.13"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "anonymous");
    let port = free_port();
    let _ingress = ingress_thread(ingress_config(dir.path(), port, ""), 1);
    std::thread::sleep(Duration::from_millis(200));
    let mut uplink = SinkHarness::new::<Uplink>(&uplink_config(dir.path(), port, "")).unwrap();
    let mut mine = sample_readings(1);
    mine[0].device = gateway_sdk::Label::from("anonymous");
    let e = uplink.write(mine).unwrap_err();
    assert!(
        e.message().contains("4.03") && e.message().contains("reserved"),
        "{e}"
    );
}

#[test]
fn a_server_taking_fewer_readings_per_request_gets_smaller_requests_not_a_hold() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "test-device");
    let port = free_port();
    // The server takes at most 4 records a pack; the uplink sends up to 100 in a request.
    let ingress = ingress_thread(ingress_config(dir.path(), port, "max_records = 4\n"), 23);
    std::thread::sleep(Duration::from_millis(200));
    let mut uplink = SinkHarness::new::<Uplink>(&uplink_config(dir.path(), port, "")).unwrap();
    let batch = sample_readings(23);
    // Each 4.13 to a request of several readings halves the requests: 23 readings go as one
    // request or as 12 and 11 (what fits a datagram), then as requests of at most 11, 5 and 2,
    // which the server takes. Every try fails retryably, none holds the readings for
    // `refusal_backoff` (5 minutes), and no reading is refused.
    let mut tries = 0;
    while let Err(e) = uplink.write(batch.clone()) {
        tries += 1;
        assert!(e.kind.is_retryable(), "{e}");
        assert!(
            e.message().contains("4.13") && !e.message().contains("holding"),
            "{e}"
        );
        assert!(tries < 4, "still refused after {tries} tries: {e}");
    }
    // 23 readings go as one request or as two (depending on how many share the first's
    // microsecond, which SenML then writes no time for), so 2 or 3 refusals.
    assert!(tries >= 2, "{tries} refusals");
    let got = ingress.join().unwrap();
    let ids: HashSet<ReadingId> = got.iter().map(|r| r.id).collect();
    assert_eq!(got.len(), 23, "each reading once");
    assert_eq!(ids, batch.iter().map(|r| r.id).collect());
}

/// A request's datagram must fit the path's MTU whatever the URI's path and the suite agreed
/// on: one that does not goes out in IP fragments, or not at all where the path drops them,
/// and the same requests then time out on every try. The uplink reserved 100 bytes for DTLS
/// and CoAP whatever the path, which a long path with a CBC suite (64 bytes of IV, MAC and
/// padding, where AES-GCM takes 24) outgrew.
#[test]
fn every_datagram_fits_the_mtu_with_a_long_path_and_a_cbc_suite() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "test-device");
    let port = free_port();
    let key = "5f1c9e07a2d84b36e0917c5a3bf24d68";
    let path = "readings/from-the-field/site-0001/building-0002/gateway-0003";
    let icfg = format!(
        "{}path = {path:?}\n[[psk]]\nidentity = \"test-device\"\nkey = \"{key}\"\n",
        ingress_config(dir.path(), port, "")
    );
    let ingress = ingress_thread(icfg, 400);
    std::thread::sleep(Duration::from_millis(300));
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(gateway_test_support::lossy_relay::RelayCounts::default());
    let relay = lossy_relay(
        port,
        0.0,
        0.0,
        Duration::ZERO,
        1,
        stop.clone(),
        counts.clone(),
    );
    let mut uplink = SinkHarness::new::<Uplink>(&format!(
        "uri = \"coaps://127.0.0.1:{relay}/{path}\"\npsk_identity = \"test-device\"\n\
         psk_key = \"{key}\"\nciphers = \"ECDHE-PSK-AES128-CBC-SHA256\"\n"
    ))
    .unwrap();
    let batch = sample_readings(400);
    uplink.write(batch.clone()).unwrap();
    let got = ingress.join().unwrap();
    stop.store(true, Ordering::SeqCst);
    assert_eq!(got.len(), 400);
    let largest = counts.largest_to_server.load(Ordering::Relaxed);
    assert!(
        largest <= u64::from(gateway_dtls::DEFAULT_MTU),
        "a datagram of {largest} bytes, above the MTU of {}",
        gateway_dtls::DEFAULT_MTU
    );
    // Requests of many readings still (a batch is split in halves until each part fits).
    assert!(
        largest > u64::from(gateway_dtls::DEFAULT_MTU) / 2,
        "the largest datagram was {largest} bytes"
    );
}

/// A server that answers its requests from `script` in turn (then 2.04), each a code and a
/// Max-Age, and tells when each request arrived.
fn scripted_server(
    dir: &std::path::Path,
    script: Vec<(coap_lite::ResponseType, Option<u32>)>,
) -> (u16, std::sync::mpsc::Receiver<std::time::Instant>) {
    use gateway_coaps_tokio::{Server, ServerConfig, ServerOptions};
    let server = Server::start(ServerOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        max_pending: 16,
        busy_poll: Duration::ZERO,
        server: ServerConfig {
            tls: gateway_dtls::ServerSettings {
                cert_file: Some(dir.join("server.pem")),
                key_file: Some(dir.join("server.key")),
                mtu: 1232,
                ..Default::default()
            },
            coap: Default::default(),
            max_sessions: 10,
            max_sessions_per_identity: 4,
            max_handshakes: 10,
            max_handshakes_per_address: 10,
            session_idle: Duration::from_secs(600),
            handshake_timeout: Duration::from_secs(5),
            require_identity: false,
            deny: Default::default(),
        },
    })
    .unwrap();
    let port = server.local_addr.port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut script = script.into_iter();
        while let Ok(inc) = server.requests.recv() {
            let _ = tx.send(std::time::Instant::now());
            let answer = match script.next() {
                Some((code, Some(max_age))) => {
                    let mut p = gateway_coap::response(code, "busy");
                    p.add_option(
                        coap_lite::CoapOption::MaxAge,
                        gateway_coap::encode_uint(max_age),
                    );
                    p
                }
                Some((code, None)) => gateway_coap::response(code, ""),
                None => gateway_coap::response(coap_lite::ResponseType::Changed, ""),
            };
            server.responder.respond(inc.id, answer);
        }
    });
    (port, rx)
}

#[test]
fn a_503s_max_age_pauses_the_uplink_up_to_its_refusal_backoff() {
    use coap_lite::ResponseType::{ServiceUnavailable, TooManyRequests};
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "test-device");
    let (port, arrived) = scripted_server(
        dir.path(),
        vec![
            (ServiceUnavailable, Some(1)),
            // Longer than the uplink's refusal_backoff: that is taken instead.
            (TooManyRequests, Some(3600)),
            // No Max-Age: the host's own retry schedule decides.
            (ServiceUnavailable, None),
        ],
    );
    let cfg = uplink_config(dir.path(), port, "refusal_backoff = \"1500ms\"\n");
    let mut uplink = SinkHarness::new::<Uplink>(&cfg).unwrap();
    let next = || arrived.recv_timeout(Duration::from_secs(10)).unwrap();
    let e = uplink.write(sample_readings(1)).unwrap_err();
    assert!(e.message().contains("5.03 busy"), "{e}");
    let first = next();
    // Written at once, but sent only when the second is over.
    let e = uplink.write(sample_readings(1)).unwrap_err();
    assert!(e.message().contains("4.29 busy"), "{e}");
    let second = next();
    let waited = second - first;
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_millis(1400),
        "Max-Age 1 s, the next request after {waited:?}"
    );
    let e = uplink.write(sample_readings(1)).unwrap_err();
    assert!(e.message().contains("5.03"), "{e}");
    let third = next();
    let waited = third - second;
    assert!(
        waited >= Duration::from_millis(1450) && waited < Duration::from_millis(2500),
        "Max-Age 3600 s with refusal_backoff 1.5 s, the next request after {waited:?}"
    );
    // Without a Max-Age nothing waits.
    let t = std::time::Instant::now();
    uplink.write(sample_readings(1)).unwrap();
    assert!(next() - third < Duration::from_millis(300));
    assert!(t.elapsed() < Duration::from_millis(300));
}

/// The smaller requests a 4.13 led to do not last for ever: after `refusal_backoff` without
/// another, requests may carry twice as many readings again (the server's limits may have
/// grown; a single reading too large for them may have halved the requests down to one).
#[test]
fn requests_halved_by_a_4_13_grow_again_after_refusal_backoff() {
    use coap_lite::ResponseType::RequestEntityTooLarge;
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "test-device");
    let (port, arrived) = scripted_server(dir.path(), vec![(RequestEntityTooLarge, None)]);
    let cfg = uplink_config(dir.path(), port, "refusal_backoff = \"1s\"\n");
    let mut uplink = SinkHarness::new::<Uplink>(&cfg).unwrap();
    let requests = || {
        std::thread::sleep(Duration::from_millis(200));
        arrived.try_iter().count()
    };
    // 8 readings in one request: 4.13. Then two requests of 4, stored.
    let e = uplink.write(sample_readings(8)).unwrap_err();
    assert!(e.message().contains("4.13"), "{e}");
    assert_eq!(requests(), 1);
    uplink.write(sample_readings(8)).unwrap();
    assert_eq!(requests(), 2);
    uplink.write(sample_readings(8)).unwrap();
    assert_eq!(requests(), 2, "still at most 4 a request");
    // A refusal_backoff later, 8 go in one request again.
    std::thread::sleep(Duration::from_millis(1100));
    uplink.write(sample_readings(8)).unwrap();
    assert_eq!(requests(), 1);
}

#[test]
fn a_cache_or_another_resource_answering_a_post_does_not_count_as_stored() {
    use coap_lite::ResponseType::{Content, Valid};
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "test-device");
    // 2.05 is an answer to a GET, 2.03 to a request with an ETag (RFC 7252 §5.9.1): neither
    // says that the POST's readings were stored.
    let (port, arrived) = scripted_server(dir.path(), vec![(Content, None), (Valid, None)]);
    let cfg = uplink_config(dir.path(), port, "refusal_backoff = \"100ms\"\n");
    let mut uplink = SinkHarness::new::<Uplink>(&cfg).unwrap();
    for code in ["2.05", "2.03"] {
        let e = uplink.write(sample_readings(3)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
        assert!(
            e.message().contains(code) && e.message().contains("does not say it stored"),
            "{e}"
        );
        arrived.recv_timeout(Duration::from_secs(10)).unwrap();
        // Held for refusal_backoff, as for a refusal.
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(uplink.acknowledged().is_empty());
    // A 2.04 does.
    uplink.write(sample_readings(3)).unwrap();
    assert_eq!(uplink.acknowledged().len(), 1);
}
