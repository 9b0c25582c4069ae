//! Interop with libcoap (Debian's libcoap3-bin, OpenSSL flavour) in both directions, with
//! certificates and with PSK. coap-client exits 0 even when the handshake fails, so the tests
//! check what arrived and what it printed, not its exit code.

use coaps::{Ingress, Uplink};
use common::{certs, free_port, ingress_config, uplink_config};
use gateway_sdk::testing::{run_source, sample_readings, SinkHarness};
use gateway_senml as senml;
use gateway_test_support::coaps as common;
use gateway_test_support::libcoap::{self, coap_client, have_libcoap};
use std::time::Duration;

fn libcoap_server(args: &[&str]) -> libcoap::Server {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    libcoap::server(&args)
}

/// libcoap's server takes datagrams of at most 1,152 bytes at its defaults (its own mtu).
const LIBCOAP_MTU: &str = "mtu = 1152\n";

/// libcoap's server with PKI certificates (written to the directory it returns, the device's
/// named "test-device"): plain CoAP on the port it returns, DTLS on the next; `-C` requires and
/// verifies the client's certificate; `-d` lets a POST create the resource (2.01).
fn libcoap_server_with_certificates() -> (tempfile::TempDir, u16, libcoap::Server) {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "test-device");
    let p = free_port();
    let d = |f: &str| dir.path().join(f).display().to_string();
    let server = libcoap_server(&[
        "-A",
        "127.0.0.1",
        "-p",
        &p.to_string(),
        "-c",
        &d("server.pem"),
        "-j",
        &d("server.key"),
        "-C",
        &d("ca.pem"),
        "-d",
        "10",
    ]);
    (dir, p, server)
}

#[test]
fn our_uplink_posts_to_libcoap_server_with_certificates() {
    if !have_libcoap() {
        return;
    }
    let (dir, p, _server) = libcoap_server_with_certificates();
    let config = uplink_config(dir.path(), p + 1, LIBCOAP_MTU);
    let mut uplink = SinkHarness::new::<Uplink>(&config).unwrap();
    uplink.write(sample_readings(50)).unwrap();
    uplink.write(sample_readings(3)).unwrap();
    assert_eq!(uplink.acknowledged().len(), 2);
}

/// A batch whose SenML comes to about 1,100 bytes goes, at the uplink's default mtu (1232), as
/// one request whose datagram is over the 1,152 bytes libcoap's server takes at its defaults: it
/// discards it (a Reset of message id 0, which matches no request), and the write times out.
/// With `mtu = 1152`, as the README says for such a server, it goes as two requests.
#[test]
fn our_uplink_posts_a_batch_of_about_a_datagram_to_libcoap_server() {
    if !have_libcoap() {
        return;
    }
    let (dir, p, _server) = libcoap_server_with_certificates();
    let mut batch = sample_readings(10);
    for r in &mut batch {
        r.value = gateway_sdk::Value::Text("x".repeat(60).into());
    }
    let size = senml::encode_cbor(&batch).len();
    // Within what one request takes at the default mtu (1,132 bytes), over what it takes at
    // libcoap's (1,052).
    assert!((1053..=1132).contains(&size), "a payload of {size} bytes");
    let config = uplink_config(dir.path(), p + 1, LIBCOAP_MTU);
    let mut uplink = SinkHarness::new::<Uplink>(&config).unwrap();
    uplink.write(batch).unwrap();
    assert_eq!(uplink.acknowledged().len(), 1);
}

#[test]
fn our_uplink_posts_to_libcoap_server_with_psk() {
    if !have_libcoap() {
        return;
    }
    let p = free_port();
    let _server = libcoap_server(&[
        "-A",
        "127.0.0.1",
        "-p",
        &p.to_string(),
        "-k",
        "secretPSK-long-enough",
        "-d",
        "10",
    ]);
    // "secretPSK-long-enough" in hex.
    let cfg = format!("uri = \"coaps://127.0.0.1:{}/gpsflowtemp\"\npsk_identity = \"pi-01\"\npsk_key = \"73656372657450534b2d6c6f6e672d656e6f756768\"\n{LIBCOAP_MTU}", p + 1);
    let mut uplink = SinkHarness::new::<Uplink>(&cfg).unwrap();
    uplink.write(sample_readings(10)).unwrap();
}

/// `coap-client` POSTs `dir/batch.cbor` to the ingress on `port` with the device certificate
/// of `certs(dir, ...)`; what it printed.
fn post_cbor_with_device_cert(dir: &std::path::Path, port: u16) -> String {
    let d = |f: &str| dir.join(f).display().to_string();
    coap_client(&[
        "-m",
        "post",
        "-t",
        "112",
        "-f",
        &d("batch.cbor"),
        "-R",
        &d("ca.pem"),
        "-c",
        &d("device.pem"),
        "-j",
        &d("device.key"),
        &format!("coaps://127.0.0.1:{port}/gpsflowtemp"),
    ])
}

#[test]
fn libcoap_client_posts_senml_to_our_ingress_with_certificates() {
    if !have_libcoap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "test-device");
    let port = free_port();
    let batch = sample_readings(7);
    let payload = dir.path().join("batch.cbor");
    std::fs::write(&payload, senml::encode_cbor(&batch)).unwrap();
    let cfg = ingress_config(dir.path(), port, "");
    let ingress = std::thread::spawn(move || {
        run_source::<Ingress>(&cfg, 7, Duration::from_secs(20)).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let printed = post_cbor_with_device_cert(dir.path(), port);
    let run = ingress.join().unwrap();
    assert!(
        run.reached,
        "libcoap's POST did not arrive; coap-client printed: {printed}"
    );
    assert_eq!(run.readings, batch, "the same readings, ids included");
    assert!(
        !printed.contains("WARN") && !printed.contains("ERR"),
        "{printed}"
    );
}

/// A device speaks for itself only: readings of another device are refused with 4.00.
#[test]
fn libcoap_client_posting_for_another_device_gets_4_00() {
    if !have_libcoap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "pi-01"); // the certificate says pi-01; the readings test-device
    let port = free_port();
    std::fs::write(
        dir.path().join("batch.cbor"),
        senml::encode_cbor(&sample_readings(2)),
    )
    .unwrap();
    let cfg = ingress_config(dir.path(), port, "");
    let ingress =
        std::thread::spawn(move || run_source::<Ingress>(&cfg, 1, Duration::from_secs(3)).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let printed = post_cbor_with_device_cert(dir.path(), port);
    assert!(
        printed.contains("4.00") && printed.contains("pi-01 may post readings only for itself"),
        "coap-client printed: {printed}"
    );
    assert!(ingress.join().unwrap().readings.is_empty());
}

#[test]
fn libcoap_client_with_psk_and_foreign_senml_json_gets_its_identity_as_device() {
    if !have_libcoap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = format!("listen = \"127.0.0.1:{port}\"\npsk = [{{ identity = \"dev7\", key = \"73656372657450534b2d6c6f6e672d656e6f756768\" }}]\n");
    let ingress = std::thread::spawn(move || {
        run_source::<Ingress>(&cfg, 2, Duration::from_secs(20)).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let json = r#"[{"bn":"urn:dev:ow:10e2073a01080063/","bt":1.764e9,"n":"temp","u":"Cel","v":23.5},{"n":"hum","u":"%RH","v":41}]"#;
    std::fs::write(dir.path().join("p.json"), json).unwrap();
    let printed = coap_client(&[
        "-m",
        "post",
        "-t",
        "110",
        "-f",
        dir.path().join("p.json").to_str().unwrap(),
        "-k",
        "secretPSK-long-enough",
        "-u",
        "dev7",
        &format!("coaps://127.0.0.1:{port}/gpsflowtemp"),
    ]);
    let run = ingress.join().unwrap();
    assert!(run.reached, "coap-client printed: {printed}");
    let r = &run.readings;
    assert_eq!(
        (
            r[0].device.as_str(),
            r[0].sensor.as_str(),
            r[0].name.as_str()
        ),
        ("dev7", "urn:dev:ow:10e2073a01080063", "temp")
    );
    assert_eq!(r[1].name, "hum");
}

#[test]
fn libcoap_client_with_a_wrong_psk_gets_nothing_in() {
    if !have_libcoap() {
        return;
    }
    let port = free_port();
    let cfg = format!("listen = \"127.0.0.1:{port}\"\nhandshake_timeout = \"2s\"\npsk = [{{ identity = \"dev7\", key = \"73656372657450534b2d6c6f6e672d656e6f756768\" }}]\n");
    let ingress =
        std::thread::spawn(move || run_source::<Ingress>(&cfg, 1, Duration::from_secs(6)).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    // -v 6: coap-client prints the messages it gets, so an answer would show.
    let printed = coap_client(&[
        "-v",
        "6",
        "-m",
        "post",
        "-t",
        "110",
        "-e",
        "[]",
        "-B",
        "3",
        "-k",
        "wrongPSK!",
        "-u",
        "dev7",
        &format!("coaps://127.0.0.1:{port}/gpsflowtemp"),
    ]);
    let run = ingress.join().unwrap();
    assert!(!run.reached && run.readings.is_empty());
    assert!(!printed.contains("v:1 t:ACK c:2.04"), "{printed}");
}

/// A reader's discovery lists every device, block by block (RFC 7959, as libcoap asks for
/// it), and a device added since is in the next one: the answer is made once per change of
/// the devices held, not once per block.
#[test]
fn a_readers_discovery_comes_block_by_block_and_follows_the_devices() {
    if !have_libcoap() {
        return;
    }
    let port = free_port();
    // Each identity its own key (one key for two is refused): the text libcoap's `-k` takes,
    // in hex for the ingress.
    let key = |who: &str| format!("{who}.{who}.{who}.{who}");
    let hex = |text: String| text.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let psk: Vec<String> = (0..32)
        .map(|i| format!("dev{i:02}"))
        .chain(["dash".to_owned()])
        .map(|who| format!("{{ identity = \"{who}\", key = \"{}\" }}", hex(key(&who))))
        .collect();
    let cfg = format!(
        "listen = \"127.0.0.1:{port}\"\nreaders = [\"dash\"]\npsk = [{}]\n",
        psk.join(", ")
    );
    // 30 devices, a discovery, a 31st device, a discovery, and a last POST that ends the run.
    let ingress = std::thread::spawn(move || {
        run_source::<Ingress>(&cfg, 32, Duration::from_secs(60)).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let uri = |path: &str| format!("coaps://127.0.0.1:{port}/{path}");
    let as_who = |who: &str, extra: &[&str], path: &str| {
        let k = key(who);
        let mut args = vec!["-k", &k, "-u", who];
        args.extend_from_slice(extra);
        let u = uri(path);
        args.push(&u);
        coap_client(&args)
    };
    let post = |who: &str| {
        let out = as_who(
            who,
            &["-m", "post", "-t", "110", "-e", r#"[{"n":"t","v":1}]"#],
            "gpsflowtemp",
        );
        assert!(!out.contains("4.") && !out.contains("5."), "{who}: {out}");
    };
    let links = || as_who("dash", &["-m", "get", "-b", "16"], ".well-known/core");
    let listed = |text: &str| {
        (0..32)
            .filter(|i| text.contains(&format!("</gpsflowtemp/dev{i:02}>;")))
            .count()
    };
    for i in 0..30 {
        post(&format!("dev{i:02}"));
    }
    let first = links();
    assert_eq!(listed(&first), 30, "{first}");
    assert!(first.contains("</gpsflowtemp>;rt=\"senml\""), "{first}");
    post("dev30");
    let second = links();
    assert_eq!(listed(&second), 31, "{second}");
    post("dev31");
    let run = ingress.join().unwrap();
    assert!(run.reached, "{second}");
}

#[test]
fn bad_requests_get_the_right_code_and_discovery_lists_the_resource() {
    if !have_libcoap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "test-device");
    let port = free_port();
    let cfg = ingress_config(dir.path(), port, "max_records = 2\n");
    let ingress = std::thread::spawn(move || {
        run_source::<Ingress>(&cfg, 1, Duration::from_secs(15)).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let d = |f: &str| dir.path().join(f).display().to_string();
    let (ca, cert, key) = (d("ca.pem"), d("device.pem"), d("device.key"));
    let uri = |path: &str| format!("coaps://127.0.0.1:{port}/{path}");
    let ask = |extra: &[&str], path: &str| {
        let mut args = vec![
            "-v",
            "6",
            "-R",
            ca.as_str(),
            "-c",
            cert.as_str(),
            "-j",
            key.as_str(),
        ];
        args.extend_from_slice(extra);
        let u = uri(path);
        args.push(&u);
        coap_client(&args)
    };
    let disc = ask(&["-m", "get"], ".well-known/core");
    assert!(
        disc.contains("</gpsflowtemp>;rt=\"senml\";ct=\"110 112\""),
        "{disc}"
    );
    // Links come as link-format only (RFC 7252 5.10.4): another Accept gets 4.06.
    assert!(ask(&["-m", "get", "-A", "40"], ".well-known/core").contains("c:2.05"));
    let json = ask(&["-m", "get", "-A", "50"], ".well-known/core");
    assert!(json.contains("c:4.06"), "{json}");
    assert!(ask(&["-m", "get"], "gpsflowtemp").contains("c:4.05"));
    assert!(ask(&["-m", "post", "-t", "110", "-e", "[]"], "other").contains("c:4.04"));
    assert!(ask(&["-m", "post", "-t", "0", "-e", "hello"], "gpsflowtemp").contains("c:4.15"));
    let bad = ask(
        &["-m", "post", "-t", "110", "-e", "[{\"n\":\"x\"}]"],
        "gpsflowtemp",
    );
    assert!(bad.contains("c:4.00") && bad.contains("SenML"), "{bad}");
    let many = ask(
        &[
            "-m",
            "post",
            "-t",
            "110",
            "-e",
            r#"[{"n":"s/a","v":1},{"n":"s/b","v":2},{"n":"s/c","v":3}]"#,
        ],
        "gpsflowtemp",
    );
    assert!(many.contains("c:4.13"), "{many}");
    let run = ingress.join().unwrap();
    assert!(run.readings.is_empty(), "nothing bad got in");
}

/// Runs an ingress with `extra` config for up to 6 s while libcoap's client, with no PSK and no
/// client certificate, posts readings that claim to be `victim`'s; returns what the ingress
/// emitted and what the client printed.
fn anonymous_post(extra: &str) -> (gateway_sdk::testing::SourceRun, String) {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "test-device");
    let port = free_port();
    let d = |f: &str| dir.path().join(f).display().to_string();
    let cfg = format!(
        "listen = \"127.0.0.1:{port}\"\ncert_file = {:?}\nkey_file = {:?}\n{extra}",
        d("server.pem"),
        d("server.key")
    )
    .replace("CA_FILE", &d("ca.pem"));
    let ingress =
        std::thread::spawn(move || run_source::<Ingress>(&cfg, 1, Duration::from_secs(6)).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let printed = coap_client(&[
        "-v",
        "6",
        "-B",
        "4",
        "-m",
        "post",
        "-t",
        "110",
        "-e",
        r#"[{"bn":"victim:","n":"t/v","v":1}]"#,
        "-R",
        &d("ca.pem"),
        &format!("coaps://127.0.0.1:{port}/gpsflowtemp"),
    ]);
    (ingress.join().unwrap(), printed)
}

#[test]
fn a_client_without_a_certificate_gets_nothing_in_where_certificates_are_optional() {
    // client_ca_file, and the default require_client_cert = false.
    if !have_libcoap() {
        return;
    }
    let (run, printed) = anonymous_post("client_ca_file = \"CA_FILE\"\n");
    assert!(run.readings.is_empty(), "stored: {:?}", run.readings);
    assert!(!printed.contains("2.04"), "{printed}");
}

#[test]
fn a_client_with_neither_psk_nor_certificate_gets_nothing_in_where_psks_are_configured() {
    // A server certificate and PSKs, no client CA: the client can negotiate ECDHE-ECDSA.
    if !have_libcoap() {
        return;
    }
    let (run, printed) = anonymous_post(
        "psk = [{ identity = \"sensor-42\", key = \"5f1c9e07a2d84b36e0917c5a3bf24d68\" }]\n",
    );
    assert!(run.readings.is_empty(), "stored: {:?}", run.readings);
    assert!(!printed.contains("2.04"), "{printed}");
}

#[test]
fn with_allow_anonymous_a_base_name_cannot_claim_a_device() {
    if !have_libcoap() {
        return;
    }
    let (run, printed) = anonymous_post("allow_anonymous = true\n");
    assert!(run.reached, "{printed}");
    assert_eq!(run.readings.len(), 1);
    assert_eq!(run.readings[0].device.as_str(), "anonymous");
    assert_eq!(run.readings[0].sensor.as_str(), "t");
}
