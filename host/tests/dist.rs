//! The distribution build for the Pi (`cargo xtask dist`): OpenSSL linked statically and trimmed
//! to what the gateway uses. The test builds it (the first time, OpenSSL takes a few minutes)
//! and runs the whole chain with it, sensors to uplink over DTLS to ingress to console, in one
//! process, as the quick start does.

mod support;
use gateway_test_support::libcoap::{coap_client, have_libcoap};
use std::{path::PathBuf, process::Command, time::Duration};
use support::*;

/// Runs `cargo xtask dist` (once per test binary) and returns the directory it names.
fn build_dist() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(run_dist).clone()
}

fn run_dist() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace())
        .args(["xtask", "dist"])
        .output()
        .expect("run cargo xtask dist");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo xtask dist failed:\n{stdout}\n{stderr}"
    );
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("copy ")?.split(" to the Pi").next())
        .unwrap_or_else(|| panic!("no directory named:\n{stdout}"));
    PathBuf::from(dir)
}

fn needed_libraries(file: &std::path::Path) -> Vec<String> {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(file)
        .output()
        .expect("run readelf");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split('[').nth(1)?.trim_end_matches(']').to_owned()))
        .collect()
}

#[test]
fn the_distribution_build_links_openssl_statically_and_runs_the_whole_chain_over_dtls() {
    let dist = build_dist();
    for file in [
        "libcoaps_uplink.so",
        "libcoaps_ingress.so",
        "gateway-certs",
        "gateway-coap",
    ] {
        let needed = needed_libraries(&dist.join(file));
        assert!(
            !needed.is_empty(),
            "{file}: readelf found no NEEDED entries"
        );
        assert!(
            needed
                .iter()
                .all(|l| !l.starts_with("libssl") && !l.starts_with("libcrypto")),
            "{file} must not load the system's OpenSSL: {needed:?}"
        );
    }
    // No plugin for the Pi needs libm either.
    for file in [
        "gateway",
        "libds18b20.so",
        "libublox7.so",
        "libcoaps_uplink.so",
    ] {
        let needed = needed_libraries(&dist.join(file));
        assert!(
            !needed.iter().any(|l| l.starts_with("libm.")),
            "{file}: {needed:?}"
        );
    }

    let s = Setup::new();
    make_certs_with(&dist.join("gateway"), &s.path("certs"), "pi-01");
    let port = free_udp_port();
    let config = pi_chain_config(&s, port);
    let mut gw = Running::start_bin(&dist.join("gateway"), &s, &config);
    check_pi_chain(&mut gw, Duration::from_secs(20));
}

/// libcoap's client (Debian's, on the system's OpenSSL 3.0) against the distribution's ingress
/// (on its own trimmed OpenSSL 3.5): with a device certificate and with a PSK.
#[test]
fn libcoap_posts_to_the_distribution_ingress_with_a_certificate_and_with_a_psk() {
    if !have_libcoap() {
        return;
    }
    let dist = build_dist();
    let s = Setup::new();
    make_certs_with(&dist.join("gateway"), &s.path("certs"), "pi-01");
    let port = free_udp_port();
    let config = s.path("ingress.toml");
    std::fs::write(
        &config,
        format!(
            r#"[gateway]
device = "server"
stats_interval = "0s"

[sources.ingress]
plugin = "coaps-ingress"
listen = "127.0.0.1:{port}"
cert_file = "certs/server.pem"
key_file = "certs/server.key"
client_ca_file = "certs/ca.pem"
psk = [{{ identity = "dev7", key = "73656372657450534b2d6c6f6e672d656e6f756768" }}]

[sinks.console]
plugin = "console"
inputs = ["ingress"]
"#
        ),
    )
    .unwrap();
    std::fs::write(
        s.path("cert.json"),
        r#"[{"bn":"urn:dev:ow:10e2073a01080063/","n":"temp","u":"Cel","v":23.5}]"#,
    )
    .unwrap();
    std::fs::write(
        s.path("psk.json"),
        r#"[{"bn":"urn:dev:ow:10e2073a01080064/","n":"temp","u":"Cel","v":19.25}]"#,
    )
    .unwrap();
    let mut gw = Running::start_bin(&dist.join("gateway"), &s, &config);
    assert!(
        gw.wait_for_log("gateway running", Duration::from_secs(20)),
        "{}",
        gw.stderr()
    );
    let uri = format!("coaps://127.0.0.1:{port}/gpsflowtemp");
    let p = |f: &str| s.path(f).display().to_string();
    let (cert_json, psk_json, ca, device_cert, device_key) = (
        p("cert.json"),
        p("psk.json"),
        p("certs/ca.pem"),
        p("certs/device-pi-01.pem"),
        p("certs/device-pi-01.key"),
    );
    let with_cert = [
        "-m",
        "post",
        "-t",
        "110",
        "-f",
        &cert_json,
        "-R",
        &ca,
        "-c",
        &device_cert,
        "-j",
        &device_key,
        &uri,
    ];
    let with_psk = [
        "-m",
        "post",
        "-t",
        "110",
        "-f",
        &psk_json,
        "-k",
        "secretPSK-long-enough",
        "-u",
        "dev7",
        &uri,
    ];
    let printed = coap_client(&with_cert) + &coap_client(&with_psk);
    let status = gw.stop(Duration::from_secs(10));
    let (out, err) = (gw.stdout(), gw.stderr());
    assert!(status.success(), "{err}");
    assert!(
        out.contains("pi-01/urn:dev:ow:10e2073a01080063 temp=23.5"),
        "the POST with a device certificate: coap-client printed {printed}\nconsole: {out}\nlog: {err}"
    );
    assert!(
        out.contains("dev7/urn:dev:ow:10e2073a01080064 temp=19.25"),
        "the POST with a PSK: coap-client printed {printed}\nconsole: {out}\nlog: {err}"
    );
}
