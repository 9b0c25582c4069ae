//! Shared by the DTLS tests: a throwaway PKI, server and client options, a server application
//! that answers everything.
#![allow(dead_code)]

use gateway_coap::coap_lite::{self, MessageClass, RequestType, ResponseType};
use gateway_coap::{request, response, Config as CoapConfig};
use gateway_coaps_tokio::{ClientConfig, ClientOptions, Server, ServerConfig, ServerOptions};
use gateway_dtls::{ClientSettings, ServerSettings};
use gateway_pki::{issue_to, read_pair, Kind};
use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = |f: &str| dir.path().join(f);
        // A CA, server.pem (localhost, 127.0.0.1) and device.pem (pi-01), as every coaps test
        // has them; then the certificates only these tests need.
        gateway_test_support::coaps::pki(dir.path(), &[("device", "pi-01")]);
        let (ca, ca_key) = read_pair(&d("ca.pem"), &d("ca.key")).unwrap();
        let ca = Some((&ca, &ca_key));
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let other = vec!["example.org".to_owned()];
        let server = |f: &str, names, from, to| {
            let (cert, key) = (d(&format!("{f}.pem")), d(&format!("{f}.key")));
            issue_to(&cert, &key, "server", Kind::Server(names), ca, from, to).unwrap();
        };
        server("expired", &names, -30, -1);
        server("other", &other, -1, 365);
        // A second, unrelated CA.
        issue_to(
            &d("rogue-ca.pem"),
            &d("rogue-ca.key"),
            "Rogue CA",
            Kind::Ca,
            None,
            -1,
            3650,
        )
        .unwrap();
        Pki { dir }
    }
    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }
}

pub fn server_opts(pki: &Pki, cert: &str) -> ServerOptions {
    ServerOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        max_pending: 64,
        busy_poll: Duration::ZERO,
        server: ServerConfig {
            tls: ServerSettings {
                cert_file: Some(pki.path(&format!("{cert}.pem"))),
                key_file: Some(pki.path(&format!("{cert}.key"))),
                mtu: 1232,
                ..Default::default()
            },
            coap: CoapConfig::default(),
            max_sessions: 100,
            max_sessions_per_identity: 4,
            max_handshakes: 10,
            max_handshakes_per_address: 10,
            session_idle: Duration::from_secs(600),
            handshake_timeout: Duration::from_secs(5),
            require_identity: false,
            deny: HashSet::new(),
        },
    }
}

pub fn client_opts(server: SocketAddr, ca: &Path, host: &str) -> ClientOptions {
    ClientOptions {
        server,
        resolve: None,
        bind: "127.0.0.1:0".parse().unwrap(),
        client: ClientConfig {
            host: host.to_owned(),
            verify_host: true,
            tls: ClientSettings {
                ca_file: Some(ca.to_path_buf()),
                mtu: 1232,
                ..Default::default()
            },
            coap: CoapConfig::default(),
            handshake_timeout: Duration::from_secs(3),
        },
    }
}

/// Answers every request with 2.04 and the body length and the peer identity.
pub fn serve(server: &mut Server) -> std::thread::JoinHandle<Vec<(Option<String>, usize)>> {
    let responder = server.responder.clone();
    // Take the request queue; the server keeps an empty one.
    let requests = std::mem::replace(&mut server.requests, std::sync::mpsc::sync_channel(0).1);
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        while let Ok(inc) = requests.recv_timeout(Duration::from_secs(8)) {
            seen.push((
                inc.identity.as_deref().map(str::to_owned),
                inc.packet.payload.len(),
            ));
            responder.respond(
                inc.id,
                response(
                    ResponseType::Changed,
                    &format!("{} {:?}", inc.packet.payload.len(), inc.identity),
                ),
            );
        }
        seen
    })
}

pub fn post(body: Vec<u8>) -> coap_lite::Packet {
    request(
        RequestType::Post,
        "gpsflowtemp",
        Some(gateway_coap::ContentFormat::SENML_CBOR),
        body,
    )
}

pub fn changed(r: &coap_lite::Packet) -> bool {
    r.header.code == MessageClass::Response(ResponseType::Changed)
}
