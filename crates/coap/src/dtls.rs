//! DTLS 1.2 sessions (OpenSSL) over in-memory datagrams: the caller pushes each received
//! datagram in and sends what comes out; no socket here. One [`Session`] per peer.
//!
//! Not deterministic: OpenSSL's handshake retransmission timers read the real clock. Ask
//! [`Session::timeout`] when to call [`Session::handle_timeout`].
//!
//! Servers answer a ClientHello without a valid cookie statelessly ([`hello_verify_request`]),
//! so a spoofed source address gets one small datagram back and no state; only a ClientHello
//! carrying a cookie that [`CookieJar`] made for that address gets a [`Session`].

use foreign_types::ForeignTypeRef;
use openssl::{
    hash::MessageDigest,
    nid::Nid,
    pkey::PKey,
    sign::Signer,
    ssl::{
        ErrorCode, Ssl, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslMode, SslOptions,
        SslRef, SslStream, SslVerifyMode,
    },
    x509::{verify::X509CheckFlags, X509VerifyResult},
};
use std::{
    collections::{HashMap, VecDeque},
    io::{self, Read, Write},
    net::SocketAddr,
    path::PathBuf,
    sync::OnceLock,
    time::{Duration, Instant},
};

/// What went wrong with a DTLS session, worded for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DtlsError {
    /// The TLS configuration could not be built (files, keys, ciphers).
    #[error("DTLS configuration: {0}")]
    Config(String),
    /// The peer's certificate was not accepted.
    #[error("the server's certificate was refused: {0}")]
    Certificate(String),
    /// The peer refused us (an alert), e.g. for a missing or unknown client certificate.
    #[error("the handshake failed: {0}")]
    Handshake(String),
    /// The handshake did not finish in time (a wrong PSK is silent: this is how it shows).
    #[error(
        "the DTLS handshake did not complete within {0:?} (server unreachable, or a wrong PSK)"
    )]
    HandshakeTimeout(Duration),
    /// The peer closed the session.
    #[error("the peer closed the DTLS session")]
    Closed,
    /// Anything else from OpenSSL.
    #[error("DTLS: {0}")]
    Other(String),
}

/// A pre-shared key.
#[derive(Debug, Clone)]
pub struct Psk {
    /// The identity sent to the server.
    pub identity: String,
    /// The key bytes.
    pub key: Vec<u8>,
}

/// Client side settings.
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    /// CA file (PEM) the server's chain must lead to.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for mutual authentication.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// PSK instead of certificates.
    pub psk: Option<Psk>,
    /// OpenSSL cipher list; empty for the default.
    pub ciphers: String,
    /// Path MTU for DTLS records.
    pub mtu: u32,
}

/// Server side settings.
#[derive(Debug, Clone, Default)]
pub struct ServerSettings {
    /// Certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM).
    pub key_file: Option<PathBuf>,
    /// CA file (PEM) that client certificates must lead to.
    pub client_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate from `client_ca_file`.
    pub require_client_cert: bool,
    /// PSK identities and keys accepted.
    pub psk: HashMap<String, Vec<u8>>,
    /// OpenSSL cipher list; empty for the default.
    pub ciphers: String,
    /// Path MTU for DTLS records.
    pub mtu: u32,
}

/// The default: ECDHE with AES-GCM (what the original deployment used) and ChaCha20-Poly1305
/// (fast on a Pi 3, which has no AES instructions).
pub const DEFAULT_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384";
/// The default with a PSK.
pub const DEFAULT_PSK_CIPHERS: &str = "PSK-AES128-GCM-SHA256:PSK-CHACHA20-POLY1305:PSK-AES128-CCM8";

/// The default path MTU: IPv6's minimum of 1280 less the IP and UDP headers.
pub const DEFAULT_MTU: u32 = 1232;

/// In-memory datagrams: `read` hands OpenSSL one received datagram, `write` queues one.
#[derive(Debug, Default)]
struct Datagrams {
    inbox: VecDeque<Vec<u8>>,
    outbox: VecDeque<Vec<u8>>,
}

impl Read for Datagrams {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inbox.pop_front() {
            Some(d) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Datagrams {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbox.push_back(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const DTLS_CTRL_GET_TIMEOUT: libc::c_int = 73;
const DTLS_CTRL_HANDLE_TIMEOUT: libc::c_int = 74;

extern "C" {
    // Not exported by openssl-sys; part of libssl's public API.
    fn DTLSv1_listen(s: *mut openssl_sys::SSL, client: *mut libc::c_void) -> libc::c_int;
    fn BIO_ADDR_new() -> *mut libc::c_void;
    fn BIO_ADDR_free(a: *mut libc::c_void);
}

fn get_timeout(ssl: &SslRef) -> Option<Duration> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: DTLSv1_get_timeout: SSL_ctrl writes a timeval into the pointer we own.
    let r = unsafe {
        openssl_sys::SSL_ctrl(
            ssl.as_ptr(),
            DTLS_CTRL_GET_TIMEOUT,
            0,
            &mut tv as *mut _ as *mut libc::c_void,
        )
    };
    (r == 1).then(|| Duration::new(tv.tv_sec.max(0) as u64, (tv.tv_usec.max(0) as u32) * 1000))
}

fn handle_timeout(ssl: &SslRef) -> libc::c_long {
    // SAFETY: DTLSv1_handle_timeout takes no argument.
    unsafe {
        openssl_sys::SSL_ctrl(
            ssl.as_ptr(),
            DTLS_CTRL_HANDLE_TIMEOUT,
            0,
            std::ptr::null_mut(),
        )
    }
}

fn cookie_index() -> openssl::ex_data::Index<Ssl, Vec<u8>> {
    static IDX: OnceLock<openssl::ex_data::Index<Ssl, Vec<u8>>> = OnceLock::new();
    *IDX.get_or_init(|| Ssl::new_ex_index().expect("ex index"))
}

fn identity_index() -> openssl::ex_data::Index<Ssl, String> {
    static IDX: OnceLock<openssl::ex_data::Index<Ssl, String>> = OnceLock::new();
    *IDX.get_or_init(|| Ssl::new_ex_index().expect("ex index"))
}

fn cfg_err(what: &str, e: impl std::fmt::Display) -> DtlsError {
    DtlsError::Config(format!("{what}: {e}"))
}

/// Loads a certificate chain and its private key (PEM), and checks that they belong together.
fn load_identity(
    b: &mut SslContextBuilder,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(), DtlsError> {
    b.set_certificate_chain_file(cert)
        .map_err(|e| cfg_err(&format!("certificate {}", cert.display()), e))?;
    b.set_private_key_file(key, SslFiletype::PEM)
        .map_err(|e| cfg_err(&format!("key {}", key.display()), e))?;
    b.check_private_key()
        .map_err(|e| cfg_err("the key does not match the certificate", e))
}

/// Builds the client context. With `ca_file`, the server's chain is checked against that CA
/// alone: the system's trust store is not loaded (a publicly trusted certificate for the server's
/// name must not pass for the private CA's server, and the store would cost about 0.9 MB of heap
/// on the Pi). Without `ca_file` and without PSK, the system's default trust store is used.
pub fn client_context(s: &ClientSettings) -> Result<SslContext, DtlsError> {
    let mut b = SslContextBuilder::new(SslMethod::dtls())
        .map_err(|e| cfg_err("cannot create a DTLS context", e))?;
    b.set_options(SslOptions::NO_QUERY_MTU | SslOptions::NO_COMPRESSION);
    // Idle sessions give their record buffers back.
    b.set_mode(SslMode::RELEASE_BUFFERS);
    b.set_verify(SslVerifyMode::PEER);
    let ciphers = match (&s.psk, s.ciphers.is_empty()) {
        (_, false) => s.ciphers.clone(),
        (Some(_), true) => DEFAULT_PSK_CIPHERS.to_owned(),
        (None, true) => DEFAULT_CIPHERS.to_owned(),
    };
    b.set_cipher_list(&ciphers)
        .map_err(|e| cfg_err(&format!("cipher list {ciphers:?}"), e))?;
    if let Some(ca) = &s.ca_file {
        b.set_ca_file(ca)
            .map_err(|e| cfg_err(&format!("CA file {}", ca.display()), e))?;
    } else if s.psk.is_none() {
        b.set_default_verify_paths()
            .map_err(|e| cfg_err("the system's trust store", e))?;
    }
    if let Some((cert, key)) = &s.cert {
        load_identity(&mut b, cert, key)?;
    }
    if let Some(psk) = s.psk.clone() {
        b.set_psk_client_callback(move |_ssl, _hint, identity, key| {
            let id = psk.identity.as_bytes();
            if id.len() + 1 > identity.len() || psk.key.len() > key.len() {
                return Err(openssl::error::ErrorStack::get());
            }
            identity[..id.len()].copy_from_slice(id);
            identity[id.len()] = 0;
            key[..psk.key.len()].copy_from_slice(&psk.key);
            Ok(psk.key.len())
        });
        if s.ca_file.is_none() {
            b.set_verify(SslVerifyMode::NONE);
        }
    }
    Ok(b.build())
}

/// Builds the server context.
pub fn server_context(s: &ServerSettings) -> Result<SslContext, DtlsError> {
    let mut b = SslContextBuilder::new(SslMethod::dtls())
        .map_err(|e| cfg_err("cannot create a DTLS context", e))?;
    b.set_options(SslOptions::NO_QUERY_MTU | SslOptions::COOKIE_EXCHANGE);
    let mut ciphers = if s.ciphers.is_empty() {
        DEFAULT_CIPHERS.to_owned()
    } else {
        s.ciphers.clone()
    };
    if s.ciphers.is_empty() && !s.psk.is_empty() {
        ciphers = format!("{DEFAULT_PSK_CIPHERS}:{ciphers}");
    }
    b.set_cipher_list(&ciphers)
        .map_err(|e| cfg_err(&format!("cipher list {ciphers:?}"), e))?;
    match (&s.cert_file, &s.key_file) {
        (Some(cert), Some(key)) => load_identity(&mut b, cert, key)?,
        (None, None) if !s.psk.is_empty() => {}
        _ => {
            return Err(DtlsError::Config(
                "a server needs cert_file and key_file (or PSK keys)".into(),
            ))
        }
    }
    if let Some(ca) = &s.client_ca_file {
        b.set_ca_file(ca)
            .map_err(|e| cfg_err(&format!("client CA file {}", ca.display()), e))?;
        let mut mode = SslVerifyMode::PEER;
        if s.require_client_cert {
            mode |= SslVerifyMode::FAIL_IF_NO_PEER_CERT;
        }
        b.set_verify(mode);
    } else if s.require_client_cert {
        return Err(DtlsError::Config(
            "require_client_cert needs client_ca_file".into(),
        ));
    }
    if !s.psk.is_empty() {
        let keys = s.psk.clone();
        b.set_psk_server_callback(move |ssl, identity, key| {
            let id = identity
                .map(|i| String::from_utf8_lossy(i).into_owned())
                .unwrap_or_default();
            let Some(k) = keys.get(&id) else { return Ok(0) };
            if k.len() > key.len() {
                return Ok(0);
            }
            key[..k.len()].copy_from_slice(k);
            ssl.set_ex_data(identity_index(), id);
            Ok(k.len())
        });
    }
    // The cookie was checked before the session existed (see `CookieJar`); OpenSSL checks it
    // again against what we stored.
    b.set_cookie_generate_cb(|_, _| Ok(0));
    b.set_cookie_verify_cb(|ssl, cookie| {
        ssl.ex_data(cookie_index())
            .is_some_and(|c| c.as_slice() == cookie)
    });
    Ok(b.build())
}

/// Where a session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// The handshake is going on.
    Handshaking,
    /// Application data may flow.
    Established,
    /// Ended; the reason.
    Closed(DtlsError),
}

/// One DTLS association with one peer.
pub struct Session {
    stream: SslStream<Datagrams>,
    state: State,
    is_client: bool,
    started: Instant,
    last_activity: Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("state", &self.state)
            .field("client", &self.is_client)
            .finish()
    }
}

fn other(e: impl std::fmt::Display) -> DtlsError {
    DtlsError::Other(e.to_string())
}

impl Session {
    /// A client session to `host` (name or IP, checked against the server's certificate
    /// unless `verify_host` is off; a name is also sent as SNI).
    pub fn client(
        ctx: &SslContext,
        host: &str,
        mtu: u32,
        verify_host: bool,
    ) -> Result<Session, DtlsError> {
        let mut ssl = Ssl::new(ctx).map_err(other)?;
        let ip = host.parse::<std::net::IpAddr>().ok();
        if verify_host {
            if ip.is_none() {
                ssl.set_hostname(host).map_err(other)?;
            }
            let param = ssl.param_mut();
            param.set_hostflags(X509CheckFlags::NO_PARTIAL_WILDCARDS);
            match ip {
                Some(ip) => param.set_ip(ip),
                None => param.set_host(host),
            }
            .map_err(other)?;
        }
        ssl.set_connect_state();
        ssl.set_mtu(mtu.max(256)).map_err(other)?;
        let stream = SslStream::new(ssl, Datagrams::default()).map_err(other)?;
        let now = Instant::now();
        let mut s = Session {
            stream,
            state: State::Handshaking,
            is_client: true,
            started: now,
            last_activity: now,
        };
        s.advance();
        Ok(s)
    }

    /// A server session for a peer whose `client_hello` carried `cookie`, already checked.
    pub fn server(
        ctx: &SslContext,
        client_hello: &[u8],
        cookie: &[u8],
        mtu: u32,
    ) -> Result<Session, DtlsError> {
        let mut ssl = Ssl::new(ctx).map_err(other)?;
        ssl.set_ex_data(cookie_index(), cookie.to_vec());
        ssl.set_accept_state();
        let mut stream = SslStream::new(ssl, Datagrams::default()).map_err(other)?;
        stream.get_mut().inbox.push_back(client_hello.to_vec());
        // DTLSv1_listen takes the ClientHello with its cookie as the start of a handshake whose
        // first flight was answered statelessly (message and record sequence numbers at 1).
        // SAFETY: the SSL and the BIO_ADDR are valid for the call; the address is freed after.
        let r = unsafe {
            let addr = BIO_ADDR_new();
            let r = DTLSv1_listen(stream.ssl().as_ptr(), addr);
            BIO_ADDR_free(addr);
            r
        };
        if r != 1 {
            return Err(DtlsError::Handshake(
                "the ClientHello's cookie was not accepted".into(),
            ));
        }
        // DTLSv1_listen clears the SSL: set the MTU now.
        // SAFETY: SSL_CTRL_SET_MTU on a valid SSL.
        unsafe {
            openssl_sys::SSL_ctrl(
                stream.ssl().as_ptr(),
                openssl_sys::SSL_CTRL_SET_MTU,
                mtu.max(256) as libc::c_long,
                std::ptr::null_mut(),
            )
        };
        let now = Instant::now();
        let mut s = Session {
            stream,
            state: State::Handshaking,
            is_client: false,
            started: now,
            last_activity: now,
        };
        s.advance();
        Ok(s)
    }

    /// Where the session is.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Whether application data may flow.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// When the handshake started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// When a datagram last came in.
    pub fn last_activity(&self) -> Instant {
        self.last_activity
    }

    fn fail(&mut self, e: DtlsError) {
        if !matches!(self.state, State::Closed(_)) {
            self.state = State::Closed(e);
        }
    }

    fn handshake_error(&self, e: &openssl::ssl::Error) -> DtlsError {
        let v = self.stream.ssl().verify_result();
        if self.is_client && v != X509VerifyResult::OK {
            return DtlsError::Certificate(v.error_string().to_owned());
        }
        let text = e
            .ssl_error()
            .map(|s| s.to_string())
            .unwrap_or_else(|| e.to_string());
        let reason = text
            .split(':')
            .find(|p| p.contains("alert") || p.contains("certificate") || p.contains("peer"))
            .map(str::to_owned)
            .unwrap_or(text);
        DtlsError::Handshake(reason)
    }

    fn advance(&mut self) -> Vec<Vec<u8>> {
        let mut received = Vec::new();
        if self.state == State::Handshaking {
            match self.stream.do_handshake() {
                Ok(()) => self.state = State::Established,
                Err(e) if e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE => {
                    return received
                }
                Err(e) => {
                    let err = self.handshake_error(&e);
                    self.fail(err);
                    return received;
                }
            }
        }
        if self.state == State::Established {
            let mut buf = vec![0u8; 16 * 1024 + 512];
            loop {
                match self.stream.ssl_read(&mut buf) {
                    Ok(0) => {
                        self.fail(DtlsError::Closed);
                        break;
                    }
                    Ok(n) => received.push(buf[..n].to_vec()),
                    Err(e) if e.code() == ErrorCode::WANT_READ => break,
                    Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                        self.fail(DtlsError::Closed);
                        break;
                    }
                    Err(e) => {
                        self.fail(other(e));
                        break;
                    }
                }
            }
        }
        received
    }

    /// Takes a datagram from the peer; returns the application data it carried.
    pub fn handle_datagram(&mut self, datagram: &[u8]) -> Vec<Vec<u8>> {
        if matches!(self.state, State::Closed(_)) {
            return Vec::new();
        }
        self.last_activity = Instant::now();
        self.stream.get_mut().inbox.push_back(datagram.to_vec());
        self.advance()
    }

    /// Sends one application datagram (one CoAP message).
    pub fn send(&mut self, data: &[u8]) -> Result<(), DtlsError> {
        if self.state != State::Established {
            return Err(DtlsError::Other("the session is not established".into()));
        }
        self.stream.ssl_write(data).map(|_| ()).map_err(|e| {
            let err = other(e);
            self.fail(err.clone());
            err
        })
    }

    /// The next datagram to put on the wire.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.stream.get_mut().outbox.pop_front()
    }

    /// How long until OpenSSL's handshake timer expires (`None`: no timer running).
    pub fn timeout(&self) -> Option<Duration> {
        if self.state != State::Handshaking {
            return None;
        }
        get_timeout(self.stream.ssl())
    }

    /// Retransmits the last flight if its timer expired; fails the session after too many.
    pub fn handle_timeout(&mut self) {
        if self.state != State::Handshaking {
            return;
        }
        if handle_timeout(self.stream.ssl()) < 0 {
            self.fail(DtlsError::HandshakeTimeout(self.started.elapsed()));
        }
    }

    /// Fails a handshake that has taken longer than `limit`.
    pub fn check_deadline(&mut self, limit: Duration) {
        if self.state == State::Handshaking && self.started.elapsed() >= limit {
            self.fail(DtlsError::HandshakeTimeout(limit));
        }
    }

    /// The peer's identity: the client certificate's common name, or the PSK identity.
    pub fn peer_identity(&self) -> Option<String> {
        let ssl = self.stream.ssl();
        if let Some(id) = ssl.ex_data(identity_index()) {
            return Some(id.clone());
        }
        let cert = ssl.peer_certificate()?;
        let cn = cert.subject_name().entries_by_nid(Nid::COMMONNAME).next()?;
        Some(String::from_utf8_lossy(cn.data().as_slice()).into_owned())
    }

    /// The negotiated cipher suite.
    pub fn cipher(&self) -> Option<&str> {
        self.stream.ssl().current_cipher().map(|c| c.name())
    }

    /// Sends close_notify and ends the session.
    pub fn close(&mut self) {
        if self.state == State::Established {
            let _ = self.stream.shutdown();
        }
        self.fail(DtlsError::Closed);
    }
}

/// What a server needs to know about a datagram that may be a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The record sequence number (echoed in the HelloVerifyRequest).
    pub record_seq: u64,
    /// The client's random.
    pub random: [u8; 32],
    /// The cookie it carries (empty on the first try).
    pub cookie: Vec<u8>,
}

fn be(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x))
}

/// Reads a datagram as an epoch-0 DTLS ClientHello (the first record, unfragmented enough to
/// hold the cookie); `None` if it is anything else.
pub fn parse_client_hello(d: &[u8]) -> Option<ClientHello> {
    if d.len() < 13 + 12 || d[0] != 22 || d[1] != 0xfe || be(&d[3..5]) != 0 {
        return None;
    }
    let record_seq = be(&d[5..11]);
    let rlen = be(&d[11..13]) as usize;
    let rec = d.get(13..13 + rlen)?;
    // The handshake header: type, length, message_seq, fragment offset and length.
    let header = rec.get(..12)?;
    if header[0] != 1 || be(&header[6..9]) != 0 {
        return None;
    }
    let frag_len = be(&header[9..12]) as usize;
    let b = rec.get(12..12 + frag_len)?;
    let random: [u8; 32] = b.get(2..34)?.try_into().ok()?;
    let sl = *b.get(34)? as usize;
    let cl = *b.get(35 + sl)? as usize;
    let cookie = b.get(36 + sl..36 + sl + cl)?.to_vec();
    Some(ClientHello {
        record_seq,
        random,
        cookie,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_or_lying_client_hellos_are_not_client_hellos() {
        // A record length shorter than a handshake header (found in review: it panicked).
        let mut d = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        d.extend_from_slice(&[1; 12]);
        assert_eq!(parse_client_hello(&d), None);
        for n in 0..200 {
            let mut d = vec![22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, n as u8];
            d.extend((0..n).map(|i| (i * 7) as u8));
            let _ = parse_client_hello(&d);
        }
    }
}

/// A HelloVerifyRequest carrying `cookie`, in answer to `ch`.
pub fn hello_verify_request(ch: &ClientHello, cookie: &[u8]) -> Vec<u8> {
    let body_len = 3 + cookie.len();
    let mut v = vec![22, 0xfe, 0xff, 0, 0];
    v.extend_from_slice(&ch.record_seq.to_be_bytes()[2..]);
    v.extend_from_slice(&((12 + body_len) as u16).to_be_bytes());
    v.push(3);
    v.extend_from_slice(&(body_len as u32).to_be_bytes()[1..]);
    v.extend_from_slice(&[0, 0]); // message_seq 0
    v.extend_from_slice(&[0, 0, 0]);
    v.extend_from_slice(&(body_len as u32).to_be_bytes()[1..]);
    v.extend_from_slice(&[0xfe, 0xff]);
    v.push(cookie.len() as u8);
    v.extend_from_slice(cookie);
    v
}

/// Makes and checks stateless cookies: HMAC-SHA256 of the peer's address and the client random
/// under a secret that rotates; a cookie from the previous secret is still accepted.
pub struct CookieJar {
    secret: [u8; 32],
    previous: [u8; 32],
    rotated: Instant,
    lifetime: Duration,
}

impl CookieJar {
    /// A jar whose secret rotates every `lifetime`.
    pub fn new(lifetime: Duration) -> Self {
        let mut s = [0u8; 32];
        openssl::rand::rand_bytes(&mut s).expect("random bytes");
        CookieJar {
            secret: s,
            previous: s,
            rotated: Instant::now(),
            lifetime,
        }
    }

    fn mac(secret: &[u8], peer: SocketAddr, random: &[u8]) -> Vec<u8> {
        let key = PKey::hmac(secret).expect("hmac key");
        let mut s = Signer::new(MessageDigest::sha256(), &key).expect("signer");
        s.update(peer.to_string().as_bytes()).expect("hmac");
        s.update(random).expect("hmac");
        s.sign_to_vec().expect("hmac")[..16].to_vec()
    }

    fn rotate(&mut self) {
        if self.rotated.elapsed() >= self.lifetime {
            self.previous = self.secret;
            openssl::rand::rand_bytes(&mut self.secret).expect("random bytes");
            self.rotated = Instant::now();
        }
    }

    /// The cookie for `peer` and `ch`.
    pub fn make(&mut self, peer: SocketAddr, ch: &ClientHello) -> Vec<u8> {
        self.rotate();
        Self::mac(&self.secret, peer, &ch.random)
    }

    /// Whether `ch` carries a cookie this jar made for `peer`.
    pub fn check(&mut self, peer: SocketAddr, ch: &ClientHello) -> bool {
        self.rotate();
        !ch.cookie.is_empty()
            && (ch.cookie == Self::mac(&self.secret, peer, &ch.random)
                || ch.cookie == Self::mac(&self.previous, peer, &ch.random))
    }
}
