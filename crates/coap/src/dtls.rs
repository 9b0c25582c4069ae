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
        SslRef, SslSession, SslStream, SslVerifyMode, SslVersion,
    },
    x509::{
        store::X509Lookup,
        verify::{X509CheckFlags, X509VerifyFlags},
        X509VerifyResult,
    },
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
    /// CRLs (PEM) of `client_ca_file`: a client certificate they revoke is refused.
    pub client_crl_file: Option<PathBuf>,
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
/// The default with a PSK: ECDHE-PSK, so that a key that leaks later does not open what was
/// recorded before (forward secrecy). OpenSSL has no ECDHE-PSK suite with AES-GCM; ChaCha20 is
/// the fast one on a Pi without AES instructions. The plain-PSK suites, RFC 7925's
/// `PSK-AES128-CCM8` among them, are there by configuration.
pub const DEFAULT_PSK_CIPHERS: &str = "ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES128-CBC-SHA256";

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

/// What every context of the link has: DTLS 1.2 at least, no renegotiation (a renegotiation
/// could change the peer's identity under a session), no compression.
fn base_context() -> Result<SslContextBuilder, DtlsError> {
    let mut b = SslContextBuilder::new(SslMethod::dtls())
        .map_err(|e| cfg_err("cannot create a DTLS context", e))?;
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))
        .map_err(|e| cfg_err("DTLS 1.2 as the minimum", e))?;
    b.set_options(
        SslOptions::NO_QUERY_MTU | SslOptions::NO_COMPRESSION | SslOptions::NO_RENEGOTIATION,
    );
    Ok(b)
}

extern "C" {
    // Not exported by openssl-sys; part of libssl's public API.
    fn SSL_get_ciphers(s: *const openssl_sys::SSL) -> *mut libc::c_void;
}

/// The DTLS 1.2 suites of `ctx` whose OpenSSL description (`Kx=.. Au=.. Enc=..`) has a field
/// for which `pick` says yes.
fn suites_where(ctx: &SslContext, pick: impl Fn(&str) -> bool) -> Result<Vec<String>, DtlsError> {
    let ssl = Ssl::new(ctx).map_err(other)?;
    // SAFETY: SSL_get_ciphers returns the SSL's own stack (or NULL); it lives as long as `ssl`.
    let stack = unsafe { SSL_get_ciphers(ssl.as_ptr()) };
    if stack.is_null() {
        return Ok(Vec::new());
    }
    // SAFETY: a STACK_OF(SSL_CIPHER) owned by `ssl`, borrowed for this function only.
    let stack: &openssl::stack::StackRef<openssl::ssl::SslCipher> =
        unsafe { openssl::stack::StackRef::from_ptr(stack.cast()) };
    Ok(stack
        .iter()
        .filter(|c| c.version() != "TLSv1.3")
        .filter(|c| c.description().split_whitespace().any(&pick))
        .map(|c| c.name().to_owned())
        .collect())
}

/// Refuses a cipher list with suites that encrypt nothing or authenticate nobody (`eNULL`,
/// `aNULL`): either would hand the link to whoever sits on the path.
fn refuse_null_suites(ctx: &SslContext) -> Result<(), DtlsError> {
    let bad = suites_where(ctx, |f| f == "Enc=None" || f == "Au=None")?;
    if bad.is_empty() {
        Ok(())
    } else {
        Err(DtlsError::Config(format!(
            "the cipher list has suites without encryption or without authentication: {}; remove them from ciphers",
            bad.join(", ")
        )))
    }
}

/// Builds the client context. It always verifies the server: by its certificate chain (against
/// `ca_file`) or by the PSK, never neither. With a PSK and no `ca_file`, every suite of the
/// cipher list must be a PSK suite, or the context is refused. With `ca_file`, the server's
/// chain is checked against that CA alone: the system's trust store is not loaded (a publicly
/// trusted certificate for the server's name must not pass for the private CA's server, and the
/// store would cost about 0.9 MB of heap on the Pi). Without `ca_file` and without PSK, the
/// system's default trust store is used.
pub fn client_context(s: &ClientSettings) -> Result<SslContext, DtlsError> {
    let mut b = base_context()?;
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
    }
    let ctx = b.build();
    refuse_null_suites(&ctx)?;
    if s.psk.is_some() && s.ca_file.is_none() {
        // Any suite but a PSK one would take the server's certificate unverified.
        let unauthenticated = suites_where(&ctx, |f| f.starts_with("Au=") && f != "Au=PSK")?;
        if !unauthenticated.is_empty() {
            return Err(DtlsError::Config(format!(
                "with a PSK and no ca_file, only the PSK can authenticate the server, but the cipher list also has {}, which would take any server's certificate unverified: list only PSK suites in ciphers, or set ca_file",
                unauthenticated.join(", ")
            )));
        }
    }
    Ok(ctx)
}

/// Builds the server context.
///
/// Sessions may be resumed (tickets and the session cache, both per context, so a restart
/// forgets them); a resumed session keeps the identity it was established with, since both
/// the client certificate and the PSK identity are part of the session. A CRL is checked at
/// full handshakes only: the CRL file is read when the context is built.
pub fn server_context(s: &ServerSettings) -> Result<SslContext, DtlsError> {
    let mut b = base_context()?;
    b.set_options(SslOptions::COOKIE_EXCHANGE);
    // Ties the sessions to this server: required for resumption with client certificates.
    b.set_session_id_context(b"gateway-coaps")
        .map_err(|e| cfg_err("session id context", e))?;
    let ciphers = match (
        s.ciphers.is_empty(),
        s.psk.is_empty(),
        s.cert_file.is_some(),
    ) {
        (false, _, _) => s.ciphers.clone(),
        (true, true, _) => DEFAULT_CIPHERS.to_owned(),
        (true, false, false) => DEFAULT_PSK_CIPHERS.to_owned(),
        (true, false, true) => format!("{DEFAULT_PSK_CIPHERS}:{DEFAULT_CIPHERS}"),
    };
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
        if let Some(crl) = &s.client_crl_file {
            let store = b.cert_store_mut();
            let lookup = store
                .add_lookup(X509Lookup::file())
                .map_err(|e| cfg_err("CRL lookup", e))?;
            lookup
                .load_crl_file(crl, SslFiletype::PEM)
                .map_err(|e| cfg_err(&format!("client CRL file {}", crl.display()), e))?;
            store
                .set_flags(X509VerifyFlags::CRL_CHECK)
                .map_err(|e| cfg_err("CRL checking", e))?;
        }
    } else if s.require_client_cert {
        return Err(DtlsError::Config(
            "require_client_cert needs client_ca_file".into(),
        ));
    } else if s.client_crl_file.is_some() {
        return Err(DtlsError::Config(
            "client_crl_file needs client_ca_file".into(),
        ));
    }
    if !s.psk.is_empty() {
        let keys = s.psk.clone();
        // The identity is read from the session afterwards (`Session::peer_identity`), so that
        // a resumed session, which skips this callback, has it too.
        b.set_psk_server_callback(move |_ssl, identity, key| {
            let Some(k) = identity
                .and_then(|i| std::str::from_utf8(i).ok())
                .and_then(|id| keys.get(id))
            else {
                return Ok(0);
            };
            if k.len() > key.len() {
                return Ok(0);
            }
            key[..k.len()].copy_from_slice(k);
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
    let ctx = b.build();
    refuse_null_suites(&ctx)?;
    Ok(ctx)
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
    /// When a datagram last moved the handshake on (or the session was made).
    last_progress: Instant,
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
    /// unless `verify_host` is off; a name is also sent as SNI). With `resume`, a session this
    /// client had with the same server is offered for an abbreviated handshake (the server may
    /// decline it; then the handshake is a full one).
    pub fn client(
        ctx: &SslContext,
        host: &str,
        mtu: u32,
        verify_host: bool,
        resume: Option<&SslSession>,
    ) -> Result<Session, DtlsError> {
        let mut ssl = Ssl::new(ctx).map_err(other)?;
        if let Some(session) = resume {
            // SAFETY: the session comes from a connection made with this same context.
            unsafe { ssl.set_session(session) }.map_err(other)?;
        }
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
            last_progress: now,
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
            last_progress: now,
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

    /// When a datagram last moved the handshake on: junk, or the same flight again, does not.
    pub fn last_progress(&self) -> Instant {
        self.last_progress
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
        let now = Instant::now();
        self.last_activity = now;
        let before =
            (self.state == State::Handshaking).then(|| self.stream.ssl().state_string_long());
        self.stream.get_mut().inbox.push_back(datagram.to_vec());
        let received = self.advance();
        if before.is_some_and(|b| {
            self.state != State::Handshaking || self.stream.ssl().state_string_long() != b
        }) {
            self.last_progress = now;
        }
        received
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

    /// The peer's authenticated identity, read from the session (so a resumed session has the
    /// one it was established with): the PSK identity, or the common name of a client
    /// certificate that passed verification. `None` for a peer that authenticated neither way,
    /// or whose name is empty or not UTF-8 (no lossy conversion: two names must never map to
    /// one identity).
    pub fn peer_identity(&self) -> Option<String> {
        let ssl = self.stream.ssl();
        if !self.is_established() {
            return None;
        }
        if let Some(id) = ssl.psk_identity() {
            return std::str::from_utf8(id)
                .ok()
                .filter(|id| valid_identity(id))
                .map(str::to_owned);
        }
        if ssl.verify_result() != X509VerifyResult::OK {
            return None;
        }
        let cert = ssl.peer_certificate()?;
        let mut cns = cert.subject_name().entries_by_nid(Nid::COMMONNAME);
        let cn = cns.next()?;
        if cns.next().is_some() {
            return None; // two common names: which one would be the device?
        }
        let cn = cn.data().to_string().ok()?;
        valid_identity(&cn).then_some(cn)
    }

    /// Whether the handshake was an abbreviated one, resuming an earlier session.
    pub fn resumed(&self) -> bool {
        self.stream.ssl().session_reused()
    }

    /// A copy of the session, to offer again with [`Session::client`]'s `resume`. A copy: when
    /// a connection ends without a close_notify of its own (the server went silent, the device
    /// gave up on it), OpenSSL marks its session not resumable, and that must not stop the next
    /// connection from offering it (the server decides).
    pub fn ssl_session(&self) -> Option<SslSession> {
        let der = self.stream.ssl().session()?.to_der().ok()?;
        SslSession::from_der(&der).ok()
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

/// Whether `id` can be a device identity: 1 to 255 bytes, no control characters (a NUL would
/// let `victim\0x` pass for `victim` wherever a C string is made of it), and no U+FFFD (what a
/// lossy conversion of bytes that are not text leaves, so two names could become one).
pub fn valid_identity(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && !id.chars().any(|c| c.is_control() || c == '\u{FFFD}')
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
