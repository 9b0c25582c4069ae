//! `gateway coap` against the gateway's own ingress over real DTLS: a device POSTs SenML with
//! its certificate and the reading is stored under its identity; a GET is answered 4.05 (the
//! ingress takes POSTs only); without a device certificate the handshake is refused.

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

    // The ingress takes POSTs only.
    let mut args = vec!["coap", "get", &uri];
    args.extend(device);
    let (status, _, err) = gateway(&args);
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(err.starts_with("4.05"), "{err}");

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
