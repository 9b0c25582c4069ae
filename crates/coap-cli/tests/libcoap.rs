//! `gateway coap` against libcoap's example server (`coap-server-openssl`, Debian's
//! libcoap3-bin) over real DTLS on loopback: discovery, GET, PUT, a block-wise answer, and the
//! exit codes of a 4.xx, a refused certificate and a server that is not there.

use gateway_test_support::{
    coaps,
    libcoap::{self, have_libcoap},
    lossy_relay,
};
use std::{
    path::Path,
    process::{Command, Output},
};

/// libcoap's server with the test PKI's server certificate, and the port it takes DTLS on.
fn libcoap(dir: &Path) -> (libcoap::Server, u16) {
    let port = coaps::free_port();
    let server = libcoap::server_with_cert(port, &dir.join("server.pem"), &dir.join("server.key"));
    (server, port + 1)
}

fn coap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gateway-coap"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn talks_to_libcoaps_server() {
    if !have_libcoap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    coaps::certs(dir.path(), "pi-01");
    let ca = dir.path().join("ca.pem");
    let ca = ca.to_str().unwrap();
    let server = libcoap(dir.path());
    let base = format!("coaps://localhost:{}", server.1);

    // Discovery lists libcoap's resources, one link per line; -v shows the session.
    let out = coap(&["discover", &base, "--ca", ca, "-v"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let links = text(&out.stdout);
    assert!(links.lines().any(|l| l.starts_with("</time>")), "{links}");
    let verbose = text(&out.stderr);
    assert!(verbose.contains("* DTLSv1.2 ECDHE-ECDSA-AES"), "{verbose}");
    assert!(
        verbose.contains("server certificate: CN=server"),
        "{verbose}"
    );
    assert!(
        verbose.contains("< ACK 2.05 MID ")
            && verbose.contains("Content-Format application/link-format"),
        "{verbose}"
    );

    // PUT 3,000 bytes, then GET them back in 256-byte blocks: the same bytes. -b is the
    // block size up too: through a relay, the PUT's datagrams stay small (the largest is the
    // handshake's ClientHello) with -b 64, and carry 1,024-byte blocks with -b 1024.
    let body: String = (0..3000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    for (block, smaller, larger) in [("64", 0, 400), ("1024", 1000, 1500)] {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let counts = std::sync::Arc::new(lossy_relay::RelayCounts::default());
        let relay = lossy_relay::lossy_relay(
            server.1,
            0.0,
            0.0,
            std::time::Duration::ZERO,
            1,
            stop.clone(),
            counts.clone(),
        );
        let put = coap(&[
            "put",
            &format!("coaps://localhost:{relay}/example_data"),
            "--ca",
            ca,
            "-t",
            "text",
            "-p",
            &body,
            "-b",
            block,
        ]);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(put.status.success(), "{}", text(&put.stderr));
        let largest = counts
            .largest_to_server
            .load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            (smaller..larger).contains(&largest),
            "-b {block}: the largest datagram was {largest} bytes"
        );
    }
    let get = coap(&[
        "get",
        &format!("{base}/example_data"),
        "--ca",
        ca,
        "-b",
        "256",
        "--raw",
        "-v",
    ]);
    assert!(get.status.success(), "{}", text(&get.stderr));
    assert_eq!(text(&get.stdout), body);
    assert!(
        text(&get.stderr).contains("Block2 1/0/256"),
        "{}",
        text(&get.stderr)
    );

    // A resource that is not there: 4.04 on stderr, exit code 4.
    let missing = coap(&["get", &format!("{base}/nope"), "--ca", ca]);
    assert_eq!(missing.status.code(), Some(4));
    assert!(
        text(&missing.stderr).starts_with("4.04"),
        "{}",
        text(&missing.stderr)
    );
}

#[test]
fn a_refused_certificate_and_a_silent_server_have_their_own_exit_codes() {
    if !have_libcoap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    coaps::certs(dir.path(), "pi-01");
    let other = tempfile::tempdir().unwrap();
    coaps::certs(other.path(), "pi-01");
    let server = libcoap(dir.path());
    // A CA that did not sign the server's certificate.
    let out = coap(&[
        "get",
        &format!("coaps://localhost:{}/time", server.1),
        "--ca",
        other.path().join("ca.pem").to_str().unwrap(),
        "--timeout",
        "3s",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("certificate"),
        "{}",
        text(&out.stderr)
    );
    // Nobody on the port.
    let port = coaps::free_port();
    let out = coap(&[
        "get",
        &format!("coaps://127.0.0.1:{port}/time"),
        "--ca",
        dir.path().join("ca.pem").to_str().unwrap(),
        "--timeout",
        "1s",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
}

#[test]
fn bad_arguments_say_what_is_wrong() {
    let out = coap(&["get", "coap://localhost/x", "--ca", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("only coaps://"),
        "{}",
        text(&out.stderr)
    );
    let out = coap(&["get", "coaps://localhost/x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("give --ca"),
        "{}",
        text(&out.stderr)
    );
    let out = coap(&["get", "coaps://localhost/x", "--ca", "/x", "-t", "yaml"]);
    assert!(
        text(&out.stderr).contains("not a content-format"),
        "{}",
        text(&out.stderr)
    );
    // Exit 2 says the handshake failed: neither a usage error nor a file that cannot be read
    // (no handshake is tried) gives it.
    let out = coap(&["get", "coaps://localhost/x", "--no-such-option"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = coap(&["get"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = coap(&["get", "coaps://localhost/x", "--ca", "/nonexistent/ca.pem"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("/nonexistent/ca.pem"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(coap(&["--help"]).status.code(), Some(0));
    // Options that would do nothing are refused rather than ignored.
    for (args, said) in [
        (
            &["get", "coaps://localhost/x", "--ca", "/x", "--count", "3"][..],
            "for observe",
        ),
        (
            &["put", "coaps://localhost/x", "--ca", "/x", "--for", "1s"][..],
            "for observe",
        ),
        (
            &[
                "get",
                "coaps://localhost/x",
                "--ca",
                "/x",
                "--timeout",
                "0s",
            ][..],
            "--timeout 0s",
        ),
    ] {
        let out = coap(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).contains(said),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn observes_libcoaps_time_resource() {
    if !have_libcoap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    coaps::certs(dir.path(), "pi-01");
    let ca = dir.path().join("ca.pem");
    let server = libcoap(dir.path());
    // libcoap's /time is observable and changes every second.
    let uri = format!("coaps://localhost:{}/time", server.1);
    let out = coap(&[
        "observe",
        &uri,
        "--ca",
        ca.to_str().unwrap(),
        "--count",
        "2",
        "-v",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout.lines().count(),
        3,
        "the answer and two notifications: {stdout}"
    );
    let observes = stderr
        .lines()
        .filter(|l| l.starts_with("< ") && l.contains("Observe"))
        .count();
    assert_eq!(observes, 3, "{stderr}");
    // Without Observe support on a resource, the answer alone, and exit code 6.
    let links = format!("coaps://localhost:{}/.well-known/core", server.1);
    let out = coap(&["observe", &links, "--ca", ca.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
}
