//! For the coaps tests and benchmarks: certificates, ports, configs.

use gateway_pki::{issue_to, Kind};
use std::{net::UdpSocket, path::Path};

/// A throwaway PKI in `dir`: a CA (`ca.pem`), a server certificate for `localhost` and
/// `127.0.0.1` (`server.pem`), and one device certificate per `(file stem, common name)`
/// (`STEM.pem`, `STEM.key`). Valid from yesterday for 30 days.
pub fn pki(dir: &Path, devices: &[(&str, &str)]) {
    let d = |f: &str| dir.join(f);
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
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
    let server = Kind::Server(&names);
    issue_to(
        &d("server.pem"),
        &d("server.key"),
        "server",
        server,
        issuer,
        -1,
        30,
    )
    .unwrap();
    for (stem, cn) in devices {
        let (cert, key) = (d(&format!("{stem}.pem")), d(&format!("{stem}.key")));
        issue_to(&cert, &key, cn, Kind::Device, issuer, -1, 30).unwrap();
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
