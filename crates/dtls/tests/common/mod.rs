//! What the tests of sessions share: a throwaway PKI, and a client and a server session over
//! in-memory datagrams.
#![allow(dead_code)]

use gateway_dtls::{
    client_context, hello_verify_request, parse_client_hello, server_context, ClientSettings,
    CookieJar, ServerSettings, Session,
};
use openssl::ssl::{SslContext, SslSession};
use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    /// A PKI with one device, `dev-1`.
    pub fn new() -> Pki {
        Pki::with(&[("dev-1", "dev-1")])
    }

    /// A PKI with these devices (file stem, common name).
    pub fn with(devices: &[(&str, &str)]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        gateway_test_support::coaps::pki(dir.path(), devices);
        Pki { dir }
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    /// The server's settings: its certificate, client certificates of this CA required.
    pub fn server_settings(&self) -> ServerSettings {
        ServerSettings {
            cert_file: Some(self.path("server.pem")),
            key_file: Some(self.path("server.key")),
            client_ca_file: Some(self.path("ca.pem")),
            require_client_cert: true,
            mtu: 1232,
            ..Default::default()
        }
    }

    pub fn server(&self) -> SslContext {
        server_context(&self.server_settings()).unwrap()
    }

    pub fn client(&self, ciphers: &str) -> SslContext {
        self.client_as(self, "dev-1", ciphers)
    }

    /// A client that trusts this PKI's server, with the certificate of `device` in `of`.
    pub fn client_as(&self, of: &Pki, device: &str, ciphers: &str) -> SslContext {
        client_context(&ClientSettings {
            ca_file: Some(self.path("ca.pem")),
            cert: Some((
                of.path(&format!("{device}.pem")),
                of.path(&format!("{device}.key")),
            )),
            ciphers: ciphers.into(),
            mtu: 1232,
            ..Default::default()
        })
        .unwrap()
    }
}

pub const PEER: &str = "127.0.0.1:40000";

/// A client and a server session over in-memory datagrams.
pub struct Link {
    pub client: Session,
    pub server: Option<Session>,
    pub sctx: SslContext,
    pub jar: CookieJar,
    pub now: Instant,
}

impl Link {
    pub fn new(cctx: &SslContext, sctx: SslContext, resume: Option<&SslSession>) -> Link {
        Link::to("localhost", cctx, sctx, resume)
    }

    /// A link whose client checks the server's certificate against `host`.
    pub fn to(
        host: &str,
        cctx: &SslContext,
        sctx: SslContext,
        resume: Option<&SslSession>,
    ) -> Link {
        let now = Instant::now();
        Link {
            client: Session::client(cctx, host, 1232, true, resume, now).unwrap(),
            server: None,
            sctx,
            jar: CookieJar::new(now, Duration::from_secs(60)),
            now,
        }
    }

    pub fn server(&mut self) -> &mut Session {
        self.server.as_mut().expect("a server session")
    }

    /// Client datagrams to the server; returns the application data the server got.
    pub fn deliver_up(&mut self) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        while let Some(d) = self.client.poll_transmit() {
            got.extend(self.client_datagram(&d));
        }
        got
    }

    /// One datagram of the client's to the server (a ClientHello without a server session
    /// gets its cookie); returns the application data the server got.
    pub fn client_datagram(&mut self, d: &[u8]) -> Vec<Vec<u8>> {
        let peer: SocketAddr = PEER.parse().unwrap();
        match (&mut self.server, parse_client_hello(d)) {
            (None, Some(ch)) if self.jar.check(self.now, peer, &ch, &[]) => {
                self.server =
                    Some(Session::server(&self.sctx, d, &ch.cookie, 1232, self.now).unwrap());
                Vec::new()
            }
            (None, Some(ch)) => {
                let cookie = self.jar.make(self.now, peer, &ch, &[]);
                let hvr = hello_verify_request(&ch, &cookie);
                self.client.handle_datagram(self.now, &hvr)
            }
            (None, None) => Vec::new(),
            (Some(s), _) => s.handle_datagram(self.now, d),
        }
    }

    /// The server's datagrams, taken off its queue.
    pub fn server_out(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if let Some(s) = &mut self.server {
            while let Some(d) = s.poll_transmit() {
                out.push(d);
            }
        }
        out
    }

    pub fn deliver_down(&mut self, datagrams: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        for d in datagrams {
            got.extend(self.client.handle_datagram(self.now, d));
        }
        got
    }

    /// Runs the handshake to its end.
    pub fn handshake(&mut self) {
        if !self.try_handshake() {
            panic!(
                "no handshake: client {:?}, server {:?}",
                self.client.state(),
                self.server.as_ref().map(Session::state)
            );
        }
    }

    /// Runs the handshake until both ends are established (true) or it goes no further.
    pub fn try_handshake(&mut self) -> bool {
        for _ in 0..20 {
            self.deliver_up();
            let back = self.server_out();
            self.deliver_down(&back);
            if self.client.is_established()
                && self.server.as_ref().is_some_and(Session::is_established)
            {
                return true;
            }
        }
        false
    }

    /// Asserts that one message each way gets through.
    pub fn carries_data_both_ways(&mut self) {
        let (at_server, at_client) = self.exchange(b"up", b"down");
        assert_eq!(
            (at_server, at_client),
            (vec![b"up".to_vec()], vec![b"down".to_vec()])
        );
    }

    /// One message each way; returns what each side got.
    pub fn exchange(&mut self, up: &[u8], down: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        self.client.send(up).unwrap();
        let at_server = self.deliver_up();
        self.server().send(down).unwrap();
        let back = self.server_out();
        let at_client = self.deliver_down(&back);
        (at_server, at_client)
    }
}
