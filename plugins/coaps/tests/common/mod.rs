//! Shared by the coaps tests: certificates, ports, configs.
#![allow(dead_code)]

use gateway_coap::pki::{self, issue, new_key, Kind};
use std::{net::UdpSocket, path::Path};

pub fn certs(dir: &Path, device: &str) {
    let ca_key = new_key().unwrap();
    let ca = issue("Test CA", &ca_key, Kind::Ca, None, -1, 30).unwrap();
    pki::write_cert(&dir.join("ca.pem"), &ca).unwrap();
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let key = new_key().unwrap();
    pki::write_cert(
        &dir.join("server.pem"),
        &issue(
            "server",
            &key,
            Kind::Server(&names),
            Some((&ca, &ca_key)),
            -1,
            30,
        )
        .unwrap(),
    )
    .unwrap();
    pki::write_key(&dir.join("server.key"), &key).unwrap();
    let key = new_key().unwrap();
    pki::write_cert(
        &dir.join("device.pem"),
        &issue(device, &key, Kind::Device, Some((&ca, &ca_key)), -1, 30).unwrap(),
    )
    .unwrap();
    pki::write_key(&dir.join("device.key"), &key).unwrap();
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
