//! For the coaps tests and benchmarks: certificates, ports, configs.

use gateway_pki::{issue_to, Key, Kind};
use openssl::x509::X509;
use std::{net::UdpSocket, path::Path};

/// A throwaway CA in `dir` (`ca.pem`, `ca.key`) and a server certificate it issued for
/// `names` under the common name `cn` (`server.pem`, `server.key`), valid from yesterday for
/// 30 days: for a TLS server of a test's own. Returns the CA's certificate and key.
pub fn ca_and_server(dir: &Path, cn: &str, names: &[String]) -> (X509, Key) {
    let d = |f: &str| dir.join(f);
    let ca = issue_to(
        &d("ca.pem"),
        &d("ca.key"),
        "Test CA",
        Kind::Ca,
        None,
        -1,
        30,
    )
    .unwrap();
    let issuer = Some((&ca.0, &ca.1));
    issue_to(
        &d("server.pem"),
        &d("server.key"),
        cn,
        Kind::Server(names),
        issuer,
        -1,
        30,
    )
    .unwrap();
    ca
}

/// A throwaway PKI in `dir`: [`ca_and_server`] for `localhost`, `127.0.0.1` and `::1`, and
/// one device certificate per `(file stem, common name)` (`STEM.pem`, `STEM.key`).
pub fn pki(dir: &Path, devices: &[(&str, &str)]) {
    let names = ["localhost", "127.0.0.1", "::1"].map(str::to_owned);
    let ca = ca_and_server(dir, "server", &names);
    for (stem, cn) in devices {
        let (cert, key) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        issue_to(&cert, &key, cn, Kind::Device, Some((&ca.0, &ca.1)), -1, 30).unwrap();
    }
}

/// [`pki`] with one device, `device.pem`, whose common name is `device`.
pub fn certs(dir: &Path, device: &str) {
    pki(dir, &[("device", device)]);
}

pub fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn ingress_config(dir: &Path, port: u16, extra: &str) -> String {
    format!(
        "listen = \"127.0.0.1:{port}\"\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\nrequire_client_cert = true\n{extra}",
        dir.join("server.pem").display().to_string(),
        dir.join("server.key").display().to_string(),
        dir.join("ca.pem").display().to_string(),
    )
}

pub fn uplink_config(dir: &Path, port: u16, extra: &str) -> String {
    format!(
        "uri = \"coaps://127.0.0.1:{port}/gpsflowtemp\"\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n{extra}",
        dir.join("ca.pem").display().to_string(),
        dir.join("device.pem").display().to_string(),
        dir.join("device.key").display().to_string(),
    )
}
