//! `gateway coap` against the gateway's own ingress over real DTLS: a device POSTs SenML with
//! its certificate and the reading is stored under its identity; it reads its last readings
//! back (GET), block by block when large, with our client and libcoap's; another device may
//! not, a reader may; DELETE forgets them; without a device certificate the handshake is
//! refused.

mod support;
use std::time::Duration;
use support::*;

#[test]
fn a_device_posts_senml_with_gateway_coap_and_it_is_stored_under_its_name() {
    let s = Setup::new();
    let certs = s.path("certs");
    make_certs(&certs, "pi-07");
    let port = free_udp_port();
    let c = |f: &str| certs.join(f).display().to_string();
    let c2 = |f: &str| certs.join(format!("device-{f}")).display().to_string();
    let server = s.config_named(
        "server",
        "server",
        "stats_interval = \"0s\"\ndata_dir = \"server-data\"",
        &format!(
            r#"[sources.ingress]
plugin = "coaps-ingress"
listen = "127.0.0.1:{port}"
cert_file = {sc:?}
key_file = {sk:?}
client_ca_file = {ca:?}
readers = ["dashboard"]

[sinks.store]
plugin = "testkit-recorder"
path = {out:?}
batch_timeout = "5ms"
"#,
            ca = c("ca.pem"),
            sc = c("server.pem"),
            sk = c("server.key"),
            out = s.path("out.txt").display().to_string(),
        ),
    );
    let running = Running::start_named(&s, "server", &server);
    assert!(running.wait_for_log("CoAP/DTLS ingress listening", Duration::from_secs(10)));
    let uri = format!("coaps://localhost:{port}/gpsflowtemp");
    let (ca, cert, key) = (c("ca.pem"), c("device-pi-07.pem"), c("device-pi-07.key"));
    let device = ["--ca", &ca, "--cert", &cert, "--key", &key];
    let pack = r#"[{"bn":"pi-07:","n":"probe/temperature","u":"Cel","v":21.5}]"#;

    let mut args = vec!["coap", "post", &uri, "-t", "senml+json", "-p", pack, "-v"];
    args.extend(device);
    let (status, _, err) = gateway(&args);
    assert!(status.success(), "{err}");
    assert!(err.contains("< ACK 2.04 MID "), "{err}");
    assert!(err.contains("server certificate: CN="), "{err}");
    let stored = s.lines("out.txt");
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].starts_with("probe 21.5"), "{stored:?}");

    // The device reads its last readings back, as a table.
    let get = format!("{uri}/pi-07");
    let mut args = vec!["coap", "get", &get];
    args.extend(device);
    let (status, out, err) = gateway(&args);
    assert!(status.success(), "{err}");
    assert!(out.contains("pi-07/probe  temperature = 21.5 Cel"), "{out}");
    // PUT stores one reading of the sensor the URI names; sent twice, it is stored once.
    let put = format!("{uri}/pi-07/probe");
    let one = r#"[{"bn":"pi-07:","n":"probe/temperature","u":"Cel","v":22.25,"t":1800000000,"rid":"019a3338498d7721b21a5b1cbaa32c34"}]"#;
    for _ in 0..2 {
        let mut args = vec!["coap", "put", &put, "-t", "senml+json", "-p", one];
        args.extend(device);
        let (status, _, err) = gateway(&args);
        assert!(status.success(), "{err}");
    }
    assert_eq!(
        s.lines("out.txt")
            .iter()
            .filter(|l| l.starts_with("probe 22.25"))
            .count(),
        1
    );
    let mut args = vec!["coap", "get", &get];
    args.extend(device);
    let (_, out, _) = gateway(&args);
    assert!(
        out.contains("pi-07/probe  temperature = 22.25 Cel"),
        "{out}"
    );
    // A PUT carries one reading of that sensor.
    let two = r#"[{"bn":"pi-07:","n":"probe/temperature","v":1},{"n":"probe/humidity","v":2}]"#;
    let mut args = vec!["coap", "put", &put, "-t", "senml+json", "-p", two];
    args.extend(device);
    let (status, _, err) = gateway(&args);
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(
        err.starts_with("4.00 a PUT carries one reading, not 2"),
        "{err}"
    );
    // The collection itself takes POSTs only.
    let mut args = vec!["coap", "get", &uri];
    args.extend(device);
    let (status, _, err) = gateway(&args);
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(err.starts_with("4.05"), "{err}");

    // 40 sensors make an answer of several blocks: our client (256-byte blocks) and libcoap's
    // (64-byte blocks) put them together.
    let many: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"bn":"pi-07:","n":"s{i:02}/temperature","u":"Cel","v":{i}}}"#))
        .collect();
    let many = format!("[{}]", many.join(","));
    let mut args = vec!["coap", "post", &uri, "-t", "senml+json", "-p", &many];
    args.extend(device);
    assert!(gateway(&args).0.success());
    let mut args = vec!["coap", "get", &get, "-b", "256", "-v"];
    args.extend(device);
    let (status, out, err) = gateway(&args);
    assert!(status.success(), "{err}");
    assert_eq!(out.lines().count(), 41, "{out}");
    assert!(err.contains("Block2 1/1/256"), "{err}");
    if gateway_test_support::libcoap::have_libcoap() {
        let printed = gateway_test_support::libcoap::coap_client(&[
            "-m", "get", "-b", "64", "-A", "110", "-R", &ca, "-c", &cert, "-j", &key, &get,
        ]);
        // libcoap prints the whole answer once it has every block.
        assert!(printed.contains("s00/temperature"), "{printed}");
        assert!(printed.contains("s39/temperature"), "{printed}");
    }

    // Another device may not read pi-07's; the reader may.
    make_device(&certs, "pi-08");
    make_device(&certs, "dashboard");
    let other = [
        "--ca",
        &ca,
        "--cert",
        &c2("pi-08.pem"),
        "--key",
        &c2("pi-08.key"),
    ];
    let reader = [
        "--ca",
        &ca,
        "--cert",
        &c2("dashboard.pem"),
        "--key",
        &c2("dashboard.key"),
    ];
    let mut args = vec!["coap", "get", &get];
    args.extend(other);
    let (status, _, err) = gateway(&args);
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(err.starts_with("4.03 pi-08 may read only its own"), "{err}");
    let mut args = vec!["coap", "get", &get];
    args.extend(reader);
    let (status, out, err) = gateway(&args);
    assert!(status.success(), "{err}");
    assert!(out.contains("pi-07/s39  temperature = 39 Cel"), "{out}");
    // Discovery lists what the reader may read.
    let mut args = vec!["coap", "discover", &uri];
    args.extend(reader);
    let (_, out, _) = gateway(&args);
    assert!(
        out.contains("</gpsflowtemp/pi-07>;rt=\"senml.latest\""),
        "{out}"
    );

    // DELETE forgets the device's entry.
    let mut args = vec!["coap", "delete", &get];
    args.extend(reader);
    assert!(gateway(&args).0.success());
    let mut args = vec!["coap", "get", &get];
    args.extend(device);
    let (status, _, err) = gateway(&args);
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(err.starts_with("4.04"), "{err}");

    // Without a device certificate the ingress refuses the handshake.
    let (status, _, err) = gateway(&[
        "coap",
        "post",
        &uri,
        "--ca",
        &ca,
        "-p",
        "x",
        "--timeout",
        "3s",
    ]);
    assert_eq!(status.code(), Some(2), "{err}");
}

/// A device certificate for `name` beside the others.
fn make_device(dir: &std::path::Path, name: &str) {
    let (status, _, err) = gateway(&["certs", "device", name, "--dir", dir.to_str().unwrap()]);
    assert!(status.success(), "{err}");
}
