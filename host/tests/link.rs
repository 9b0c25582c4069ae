//! The secure link through the real host and the real `libcoaps_uplink.so` and `libcoaps_ingress.so`: a sequence source into
//! coaps-uplink, over DTLS on loopback, into coaps-ingress, into a recorder sink that fails for
//! several seconds. The uplink's request times out and it sends the batch again; the ingress
//! answers 5.03 while the first copy is still being stored, then 2.04. Every reading arrives,
//! exactly once, in one process.

mod support;
use std::time::Duration;
use support::*;

/// One process with both ends of the link: a sequence source (`seq`'s keys) into the uplink
/// (`uplink`'s), over DTLS on loopback, into the ingress, into a recorder writing `out.txt`
/// (`store`'s keys).
fn link_config(s: &Setup, seq: &str, uplink: &str, store: &str) -> std::path::PathBuf {
    let certs = s.path("certs");
    make_certs(&certs, "test");
    let port = free_udp_port();
    let c = |f: &str| certs.join(f).display().to_string();
    s.config(
        "",
        &format!(
            r#"[sources.seq]
plugin = "testkit-sequence"
{seq}

[sinks.uplink]
plugin = "coaps-uplink"
inputs = ["seq"]
uri = "coaps://localhost:{port}/gpsflowtemp"
ca_file = {ca:?}
cert_file = {dc:?}
key_file = {dk:?}
{uplink}

[sources.ingress]
plugin = "coaps-ingress"
listen = "127.0.0.1:{port}"
cert_file = {sc:?}
key_file = {sk:?}
client_ca_file = {ca:?}
require_client_cert = true

[sinks.store]
plugin = "testkit-recorder"
inputs = ["ingress"]
path = {out:?}
{store}
"#,
            ca = c("ca.pem"),
            dc = c("device-test.pem"),
            dk = c("device-test.key"),
            sc = c("server.pem"),
            sk = c("server.key"),
            out = s.path("out.txt").display().to_string(),
        ),
    )
}

#[test]
fn while_the_server_side_sink_fails_the_ingress_answers_5_03_and_nothing_is_lost_or_stored_twice() {
    let s = Setup::new();
    let cfg = link_config(
        &s,
        "count = 200\nbatch_size = 10",
        "ack_timeout = \"500ms\"\nrequest_timeout = \"2s\"\nretry_backoff = \"50ms\"\nretry_backoff_max = \"200ms\"",
        "fail_first = 3\nretry_backoff = \"1s\"\nbatch_timeout = \"5ms\"",
    );
    let mut gw = Running::start(&s, &cfg, &["--log-level", "debug"]);
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while s.recorded("out.txt", "seq").len() < 200 && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = gw.stop(Duration::from_secs(15));
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    let values = s.recorded("out.txt", "seq");
    assert_eq!(values.len(), 200, "{err}");
    assert_contiguous(&values, "through the link");
    assert!(err.contains("DTLS session established"), "{err}");
    // The store failed for about 7 s (three tries, said at warn once: a streak of failures is
    // said once a minute, the others at debug); the uplink gave up waiting after 2 s and sent
    // the batch again, and the ingress answered 5.03 while the first copy was still being
    // stored.
    let store_retries: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("sink{instance=store}") && l.contains("write failed; retrying in"))
        .collect();
    assert_eq!(store_retries.len(), 3, "{err}");
    assert_eq!(
        store_retries
            .iter()
            .filter(|l| l.contains(" WARN "))
            .count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("the server could not take the batch now: 5.03"),
        "{err}"
    );
}

/// The server end: coaps-ingress into a recorder that refuses `extra`'s value, if any.
fn server_config(s: &Setup, certs: &std::path::Path, port: u16, extra: &str) -> std::path::PathBuf {
    s.server_config(&format!(
        r#"{ingress}
[sinks.store]
plugin = "testkit-recorder"
path = {out:?}
batch_timeout = "5ms"
{extra}
"#,
        ingress = ingress_source(certs, port),
        out = s.path("out.txt").display().to_string(),
    ))
}

#[test]
fn a_refused_reading_is_dead_lettered_at_both_ends_and_can_be_sent_again() {
    let s = Setup::new();
    let certs = s.path("certs");
    make_certs(&certs, "test");
    let port = free_udp_port();
    let c = |f: &str| certs.join(f).display().to_string();
    let client = s.config_named(
        "client",
        "test",
        "stats_interval = \"0s\"\ndata_dir = \"client-data\"",
        &format!(
            r#"[sources.seq]
plugin = "testkit-sequence"
count = 30
batch_size = 1
interval = "10ms"
# The refusal of 13 is told to the source; it goes on rather than failing.
wait_ack = false

[sinks.uplink]
plugin = "coaps-uplink"
uri = "coaps://localhost:{port}/gpsflowtemp"
ca_file = {ca:?}
cert_file = {dc:?}
key_file = {dk:?}
retry_backoff = "50ms"
"#,
            ca = c("ca.pem"),
            dc = c("device-test.pem"),
            dk = c("device-test.key"),
        ),
    );
    let mut server = Running::start_named(
        &s,
        "server",
        &server_config(&s, &certs, port, "reject_value = 13"),
    );
    assert!(server.wait_for_log("CoAP/DTLS ingress listening", Duration::from_secs(10)));
    let (status, _, err) = gateway(&[
        "run",
        "--config",
        client.to_str().unwrap(),
        "--until-sources-finish",
    ]);
    assert!(status.success(), "{err}");
    let mut stored = s.recorded("out.txt", "seq");
    stored.sort();
    assert_eq!(stored, (0..30).filter(|v| *v != 13).collect::<Vec<_>>());
    // The device was told 4.22 without the store's own words, and kept reading 13.
    assert!(
        err.contains("4.22 the server's store refused these readings"),
        "{err}"
    );
    assert!(
        !err.contains("simulated refusal"),
        "the sink's error text stays on the server: {err}"
    );
    assert!(err.contains("kept in a dead-letter file"), "{err}");
    let (status, listed, _) =
        gateway(&["dead-letters", "list", "--config", client.to_str().unwrap()]);
    assert!(status.success());
    assert!(
        listed.contains("uplink") && listed.contains("1 readings of test refused at"),
        "{listed}"
    );
    let (_, shown, _) = gateway(&[
        "dead-letters",
        "show",
        "--config",
        client.to_str().unwrap(),
        "uplink",
    ]);
    assert_eq!(
        shown.lines().filter(|l| !l.starts_with('#')).count(),
        1,
        "{shown}"
    );
    assert!(
        shown.contains("test/seq ") && shown.contains("=13 "),
        "{shown}"
    );
    // The server kept what its store refused, too.
    let (_, server_listed, _) = gateway(&[
        "dead-letters",
        "list",
        "--config",
        s.path("server.toml").to_str().unwrap(),
    ]);
    assert!(
        server_listed.contains("store") && server_listed.contains("simulated refusal of value 13"),
        "{server_listed}"
    );

    // The store is fixed: the reading goes through on a resend, and its file goes.
    server.stop(Duration::from_secs(10));
    let mut server = Running::start_named(&s, "server", &server_config(&s, &certs, port, ""));
    assert!(server.wait_for_log("CoAP/DTLS ingress listening", Duration::from_secs(10)));
    let (status, out, err) = gateway(&[
        "dead-letters",
        "resend",
        "--config",
        client.to_str().unwrap(),
        "uplink",
    ]);
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("1 readings taken; file removed"), "{out}");
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !s.recorded("out.txt", "seq").contains(&13) && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(s.recorded("out.txt", "seq").contains(&13));
    let (_, listed, _) = gateway(&["dead-letters", "list", "--config", client.to_str().unwrap()]);
    assert!(listed.contains("no dead letters"), "{listed}");
    server.stop(Duration::from_secs(10));
}

#[test]
fn check_warns_about_each_ingress_setting_that_weakens_it() {
    let s = Setup::new();
    let certs = s.path("certs");
    make_certs(&certs, "test");
    let c = |f: &str| certs.join(f).display().to_string();
    // A "CA file" that is a bundle of many CAs, as a system trust store is.
    let bundle = s.path("bundle.pem");
    std::fs::write(
        &bundle,
        std::fs::read_to_string(certs.join("ca.pem"))
            .unwrap()
            .repeat(5),
    )
    .unwrap();
    let body = |extra: &str, ca: &str| {
        format!(
            "[sources.ingress]\nplugin = \"coaps-ingress\"\nlisten = \"127.0.0.1:0\"\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {ca:?}\n{extra}\n[sinks.out]\nplugin = \"console\"\n",
            c("server.pem"),
            c("server.key")
        )
    };
    let open = s.config(
        "",
        &body(
            // A passphrase in hex: "correct horse battery staple".
            "allow_anonymous = true\nciphers = \"ECDHE-ECDSA-AES128-GCM-SHA256:AES128-SHA\"\npsk = [{ identity = \"pi-09\", key = \"636f727265637420686f727365206261747465727920737461706c65\" }]",
            bundle.to_str().unwrap(),
        ),
    );
    let (status, _, err) = gateway(&["check", "--config", open.to_str().unwrap()]);
    assert!(status.success(), "warnings, not errors: {err}");
    assert!(
        err.contains(
            "allow_anonymous = true: a peer without a PSK or a client certificate gets readings in"
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "holds 5 CA certificates: every certificate any of them issued gets readings in"
        ),
        "{err}"
    );
    assert!(
        err.contains("ciphers: AES128-SHA without forward secrecy"),
        "{err}"
    );
    assert!(
        err.contains("psk[0] (\"pi-09\"): the key's bytes are all printable text"),
        "{err}"
    );
    let closed = s.config("", &body("", &c("ca.pem")));
    let (status, _, err) = gateway(&["check", "--config", closed.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    assert!(!err.contains("WARN"), "{err}");
}

#[test]
fn certs_revoke_writes_a_crl_that_lists_the_device() {
    let s = Setup::new();
    let certs = s.path("certs");
    make_certs(&certs, "pi-07");
    let dir = certs.to_str().unwrap();
    let (status, out, err) = gateway(&["certs", "revoke", "pi-07", "--dir", dir]);
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains("device pi-07 revoked")
            && out.contains("lists 1 certificate(s), valid 30 days"),
        "{out}"
    );
    let crl = std::fs::read_to_string(certs.join("crl.pem")).unwrap();
    assert!(crl.starts_with("-----BEGIN X509 CRL-----"), "{crl}");
    // Again: still one entry. An unknown device is an error that names the file.
    let (_, out, _) = gateway(&["certs", "revoke", "pi-07", "--dir", dir]);
    assert!(out.contains("lists 1 certificate(s)"), "{out}");
    let (status, _, err) = gateway(&["certs", "revoke", "pi-99", "--dir", dir]);
    assert!(!status.success());
    assert!(err.contains("device-pi-99.pem"), "{err}");
}

#[test]
fn certs_keep_what_is_in_force_and_a_failed_write_changes_nothing() {
    let s = Setup::new();
    let certs = s.path("certs");
    make_certs(&certs, "pi-07");
    let dir = certs.to_str().unwrap();
    let read = |f: &str| std::fs::read(certs.join(f)).unwrap();
    // A server certificate still in force is replaced only with --force.
    let server = read("server.pem");
    let (status, _, err) = gateway(&["certs", "server", "--dir", dir]);
    assert!(
        !status.success() && err.contains("server.pem exists"),
        "{err}"
    );
    assert_eq!(read("server.pem"), server);
    let (status, _, err) = gateway(&["certs", "server", "--dir", dir, "--force"]);
    assert!(status.success(), "{err}");
    assert_ne!(read("server.pem"), server);
    // A key that cannot be written (a directory in its place): the certificate in force is
    // left as it was. Before, the new certificate was written first, without its key.
    let device = read("device-pi-07.pem");
    std::fs::remove_file(certs.join("device-pi-07.key")).unwrap();
    std::fs::create_dir_all(certs.join("device-pi-07.key/sub")).unwrap();
    let (status, _, err) = gateway(&["certs", "device", "pi-07", "--dir", dir, "--force"]);
    assert!(!status.success(), "{err}");
    assert_eq!(read("device-pi-07.pem"), device);
    let left: Vec<_> = std::fs::read_dir(&certs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".new"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The same with a directory in the certificate's place: the key is left as it was too
    // (before, the key was moved in and the certificate's rename then failed).
    std::fs::remove_dir_all(certs.join("device-pi-07.key")).unwrap();
    std::fs::write(certs.join("device-pi-07.key"), "old key").unwrap();
    std::fs::rename(certs.join("device-pi-07.pem"), s.path("kept.pem")).unwrap();
    std::fs::create_dir_all(certs.join("device-pi-07.pem/sub")).unwrap();
    let (status, _, err) = gateway(&["certs", "device", "pi-07", "--dir", dir, "--force"]);
    assert!(
        !status.success() && err.contains("a directory is in its place"),
        "{err}"
    );
    assert_eq!(read("device-pi-07.key"), b"old key");
    // A link in a certificate's place is replaced, not written through.
    let outside = s.path("outside.txt");
    std::fs::write(&outside, "mine").unwrap();
    std::os::unix::fs::symlink(&outside, certs.join("device-pi-08.pem")).unwrap();
    let (status, _, err) = gateway(&["certs", "device", "pi-08", "--dir", dir]);
    assert!(status.success(), "{err}");
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "mine");
    // A name no ingress would take as an identity would lock the device out.
    for name in [" pi-09", "pi-09 ", "pi\u{7}09", "a/b", ".hidden"] {
        let (status, _, err) = gateway(&["certs", "device", name, "--dir", dir]);
        assert!(
            !status.success() && err.contains("cannot be a device identity"),
            "{name:?}: {err}"
        );
    }
}

/// The ingress never makes its server wait for a sink: with the sink's queue holding one batch
/// and each write taking 20 ms, eight requests in flight find the queue full. They wait in the
/// ingress and go out after the sink's next write; none is refused, none is lost.
#[test]
fn requests_that_find_the_sinks_queue_full_wait_in_the_ingress_and_none_is_refused() {
    let s = Setup::new();
    let cfg = link_config(
        &s,
        "count = 400\nbatch_size = 50",
        "max_request_readings = 2\nnstart = 8",
        "delay = \"20ms\"\nqueue_capacity = 1",
    );
    let mut gw = Running::start(&s, &cfg, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while s.recorded("out.txt", "seq").len() < 400 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = gw.stop(Duration::from_secs(20));
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    let values = s.recorded("out.txt", "seq");
    assert_eq!(values.len(), 400, "every reading stored once\n{err}");
    assert_contiguous(&values, "through a full queue");
    let stats = err
        .lines()
        .rfind(|l| l.contains("ingress stats"))
        .unwrap_or_else(|| panic!("the ingress logs its counters when it stops\n{err}"));
    assert!(
        log_u64(stats, "held=").is_some_and(|n| n > 0),
        "requests waited for the queue: {stats}"
    );
    assert_eq!(log_u64(stats, "unavailable="), Some(0), "{stats}");
    assert_eq!(log_u64(stats, "requests="), Some(200), "{stats}");
}
