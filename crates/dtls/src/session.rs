//! One DTLS 1.2 association over in-memory datagrams: the caller pushes each received datagram
//! in ([`Session::handle_datagram`]) and puts on the wire what [`Session::poll_transmit`] gives.
//! No socket here, and no clock but `now`, except OpenSSL's handshake retransmission timer,
//! which reads the real clock: ask [`Session::timeout`] when to call
//! [`Session::handle_timeout`].

use crate::{
    context::cookie_index,
    other,
    record::{self, Established},
    valid_identity, DtlsError,
};
use foreign_types::{ForeignType, ForeignTypeRef};
use openssl::{
    nid::Nid,
    ssl::{
        ErrorCode, ShutdownState, Ssl, SslContext, SslRef, SslSession, SslStream, SslVerifyMode,
    },
    x509::{verify::X509CheckFlags, X509VerifyResult},
};
use std::{
    collections::VecDeque,
    io::{self, Read, Write},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

/// In-memory datagrams: `read` hands OpenSSL one received datagram, `write` queues one.
#[derive(Debug, Default)]
struct Datagrams {
    inbox: VecDeque<Vec<u8>>,
    outbox: VecDeque<Vec<u8>>,
    /// The highest epoch OpenSSL wrote records in, and the next sequence number in it.
    written: (u16, u64),
    /// The protected records (epoch 1 and later) OpenSSL was given during the handshake, at
    /// most [`MAX_SEALED_READ`] of them and [`MAX_SEALED_BYTES`] with their bookkeeping: at
    /// the take-over, those that open go into the replay window.
    sealed_read: Vec<(record::Header, Vec<u8>)>,
    sealed_bytes: usize,
    /// A protected record OpenSSL was given could not be kept: the replay window cannot know
    /// it, so the session stays with OpenSSL (whose own window does).
    sealed_overflow: bool,
    /// The handshake is over: no more records are kept.
    sealed_done: bool,
}

/// The most protected records kept for the take-over's replay window. A handshake gives
/// OpenSSL one such record, the peer's Finished, or a few when the peer repeats its flight or
/// sends data with it.
const MAX_SEALED_READ: usize = 16;
/// The most bytes they may take, each counted with its bookkeeping and allocation.
const MAX_SEALED_BYTES: usize = 4096;

impl Datagrams {
    /// Keeps a copy of the protected records of `d` (what OpenSSL is given of a datagram).
    fn keep_sealed(&mut self, d: &[u8]) {
        for (h, fragment) in record::records(d) {
            if h.epoch == 0 {
                continue;
            }
            let cost = std::mem::size_of::<(record::Header, Vec<u8>)>() + fragment.len() + 16;
            if self.sealed_read.len() < MAX_SEALED_READ
                && self.sealed_bytes + cost <= MAX_SEALED_BYTES
            {
                self.sealed_bytes += cost;
                self.sealed_read.push((h, fragment.to_vec()));
            } else {
                self.sealed_overflow = true;
            }
        }
    }
}

impl Read for Datagrams {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inbox.pop_front() {
            Some(d) => {
                let n = d.len().min(buf.len());
                if !self.sealed_done {
                    self.keep_sealed(&d[..n]);
                }
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Datagrams {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        record::note_written(buf, &mut self.written);
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
    fn SSL_free_buffers(s: *mut openssl_sys::SSL) -> libc::c_int;
    fn SSL_SESSION_dup(s: *const openssl_sys::SSL_SESSION) -> *mut openssl_sys::SSL_SESSION;
    fn DTLS_set_timer_cb(
        s: *mut openssl_sys::SSL,
        cb: Option<extern "C" fn(*mut openssl_sys::SSL, libc::c_uint) -> libc::c_uint>,
    );
}

/// How long a handshake flight waits for its answer before it is sent again, the first time.
pub const FIRST_FLIGHT_TIMEOUT: Duration = Duration::from_secs(1);

/// The handshake's retransmission schedule, in µs: the timer of a flight's first transmission
/// (`previous` 0) is 1 s, as RFC 6347 §4.2.4.1 says; each retransmission waits 1.5 times the
/// last, up to 2 s. RFC 6347 asks for doubling up to 60 s, which suits congestion but not a
/// lossy radio link: at 25 % loss each way a flight of three datagrams gets through less than
/// half the time, and doubling left about 6 tries in a minute for all four flights together.
/// A model of the three exchanges at 25 % loss each way has 95.6 % of handshakes done within
/// 30 s with a cap of 4 s, 99.4 % with 2 s. Handshake datagrams are few and small;
/// retransmitting them every 2 s at most adds little, and a server's cookie exchange and
/// lobby keep a reconnect storm's retransmissions cheap.
pub fn next_handshake_timer_us(previous: u32) -> u32 {
    if previous == 0 {
        FIRST_FLIGHT_TIMEOUT.as_micros() as u32
    } else {
        (u64::from(previous) * 3 / 2).min(2_000_000) as u32
    }
}

extern "C" fn handshake_timer(_ssl: *mut openssl_sys::SSL, previous: libc::c_uint) -> libc::c_uint {
    next_handshake_timer_us(previous)
}

/// Puts [`next_handshake_timer_us`] on `ssl`.
fn set_handshake_timer(ssl: &SslRef) {
    // SAFETY: a valid SSL; the callback is a plain function that touches nothing else.
    unsafe { DTLS_set_timer_cb(ssl.as_ptr(), Some(handshake_timer)) }
}

thread_local! {
    /// Where records are decrypted into: one per thread, not one per session, and not a new
    /// zeroed 16 KiB per datagram.
    static PLAINTEXT: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 16 * 1024 + 512]);
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

/// Who carries the records.
enum Link {
    /// OpenSSL: every handshake, and a session whose suite [`record`] does not protect.
    Tls(SslStream<Datagrams>),
    /// An established session with an AEAD suite: its records are protected by [`record`],
    /// and OpenSSL's object is gone.
    Records(Box<TakenOver>),
}

/// An established session after [`Session::take_over`], with what it kept of OpenSSL's.
struct TakenOver {
    records: Established,
    /// OpenSSL's session: a server's, in the context's cache (for
    /// [`Session::forget_resumption`]); a client's, to offer again ([`Session::ssl_session`]).
    cached: Option<openssl::ssl::SslSession>,
    identity: Option<String>,
    not_after: Option<SystemTime>,
    resumed: bool,
    cipher: &'static str,
    /// A client's view of the server's certificate (see [`Session::peer_certificate`]).
    peer: Option<String>,
}

/// One DTLS association with one peer.
pub struct Session {
    link: Link,
    state: State,
    /// The handshake completed (the session may have ended since: a close_notify in the very
    /// datagram that completed it).
    completed: bool,
    is_client: bool,
    started: Instant,
    last_activity: Instant,
    /// When a datagram last moved the handshake on (or the session was made).
    last_progress: Instant,
    /// A server session gives OpenSSL's record buffers back between datagrams (see
    /// [`Session::release_buffers`]); set while they are given back.
    buffers_released: bool,
    /// Application data read while taking the buffers back before a write, for the next
    /// [`Session::handle_datagram`].
    early: Vec<Vec<u8>>,
    /// A client's first refused certificate, named with its dates, for the error (`None` for
    /// a server session).
    refused: Option<Arc<Mutex<Option<String>>>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("state", &self.state)
            .field("client", &self.is_client)
            .finish()
    }
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
        now: Instant,
    ) -> Result<Session, DtlsError> {
        let mut ssl = Ssl::new(ctx).map_err(other)?;
        if let Some(session) = resume {
            // SAFETY: the session comes from a connection made with this same context.
            unsafe { ssl.set_session(session) }.map_err(other)?;
        }
        let ip = host.parse::<std::net::IpAddr>().ok();
        // The name the server's certificate is checked against, for a remembered verdict.
        let checked = if verify_host { host } else { "" };
        ssl.set_ex_data(crate::verified::expected_name(), checked.to_owned());
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
        // Verification as the context sets it; the first certificate refused is remembered so
        // that the error can name it and give its dates.
        let refused = Arc::new(Mutex::new(None));
        let seen = refused.clone();
        ssl.set_verify_callback(SslVerifyMode::PEER, move |ok, ctx| {
            if !ok {
                if let (Some(cert), Ok(mut first)) = (ctx.current_cert(), seen.lock()) {
                    first.get_or_insert_with(|| crate::certs::describe(cert));
                }
            }
            ok
        });
        ssl.set_connect_state();
        ssl.set_mtu(mtu.max(256)).map_err(other)?;
        set_handshake_timer(&ssl);
        let stream = SslStream::new(ssl, Datagrams::default()).map_err(other)?;
        let mut s = Session {
            link: Link::Tls(stream),
            state: State::Handshaking,
            completed: false,
            is_client: true,
            started: now,
            last_activity: now,
            last_progress: now,
            buffers_released: false,
            early: Vec::new(),
            refused: Some(refused),
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
        now: Instant,
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
        // DTLSv1_listen clears the SSL: set the MTU (and the timer, kept by the clear) now.
        set_handshake_timer(stream.ssl());
        // SAFETY: SSL_CTRL_SET_MTU on a valid SSL.
        unsafe {
            openssl_sys::SSL_ctrl(
                stream.ssl().as_ptr(),
                openssl_sys::SSL_CTRL_SET_MTU,
                mtu.max(256) as libc::c_long,
                std::ptr::null_mut(),
            )
        };
        let mut s = Session {
            link: Link::Tls(stream),
            state: State::Handshaking,
            completed: false,
            is_client: false,
            started: now,
            last_activity: now,
            last_progress: now,
            buffers_released: false,
            early: Vec::new(),
            refused: None,
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

    /// Whether the handshake completed, whether or not the session has ended since (it may
    /// end in the datagram that completed it, after data: a server must still admit it, and
    /// give that data the session's identity).
    pub fn handshake_completed(&self) -> bool {
        self.completed
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
            self.state = State::Closed(self.unknown_psk(e));
        }
    }

    /// `e`, or on a server whose peer named a PSK identity it does not know, that: the peer
    /// was let on as if its key were wrong (see [`crate::context::server_context`]), but the
    /// server's own log says why.
    fn unknown_psk(&self, e: DtlsError) -> DtlsError {
        let unknown = self
            .tls()
            .and_then(|s| s.ssl().ex_data(crate::context::unknown_psk_index()));
        match (e, unknown) {
            (DtlsError::HandshakeTimeout(_) | DtlsError::Handshake(_), Some(id)) => {
                DtlsError::Handshake(format!(
                    "the PSK identity {id:?} is not known here (the peer is not told: it sees a wrong key)"
                ))
            }
            (e, _) => e,
        }
    }

    fn handshake_error(
        ssl: &SslRef,
        is_client: bool,
        refused: Option<String>,
        e: &openssl::ssl::Error,
    ) -> DtlsError {
        let v = ssl.verify_result();
        if is_client && v != X509VerifyResult::OK {
            let reason = v.error_string();
            return DtlsError::Certificate(match refused {
                Some(cert) => format!("{reason} ({cert})"),
                None => reason.to_owned(),
            });
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

    /// OpenSSL's stream while it carries the records.
    fn tls(&self) -> Option<&SslStream<Datagrams>> {
        match &self.link {
            Link::Tls(s) => Some(s),
            Link::Records(_) => None,
        }
    }

    fn advance(&mut self) -> Vec<Vec<u8>> {
        let mut received = Vec::new();
        let Link::Tls(stream) = &mut self.link else {
            return received;
        };
        if self.state == State::Handshaking {
            match stream.do_handshake() {
                Ok(()) => {
                    self.state = State::Established;
                    self.completed = true;
                }
                Err(e) if e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE => {
                    return received
                }
                Err(e) => {
                    let refused = self.refused.as_ref().and_then(|r| r.lock().ok()?.take());
                    let err = Self::handshake_error(stream.ssl(), self.is_client, refused, &e);
                    self.fail(err);
                    return received;
                }
            }
            PLAINTEXT.with_borrow_mut(|buf| self.read_all(buf, &mut received));
            if self.state == State::Established {
                self.take_over();
            }
        } else if self.state == State::Established {
            PLAINTEXT.with_borrow_mut(|buf| self.read_all(buf, &mut received));
        }
        self.release_buffers();
        received
    }

    /// A session whose handshake has just completed hands its records to [`record`] and frees
    /// OpenSSL's object (about 30 KB), if the suite is an AEAD one. What OpenSSL queued at
    /// completion is our last flight, kept for a peer that did not get it. The records of
    /// the new epoch that OpenSSL read (the peer's Finished, and any application data that
    /// came with it) start the replay window; if more came than are kept, OpenSSL keeps the
    /// session.
    fn take_over(&mut self) {
        let Link::Tls(stream) = &mut self.link else {
            return;
        };
        let link = stream.get_mut();
        let sealed_read = std::mem::take(&mut link.sealed_read);
        link.sealed_done = true;
        if link.sealed_overflow {
            // More protected records came during the handshake than are kept (junk sent in
            // the peer's name, or a large first request with the Finished): a record the
            // window would not know could be taken twice. OpenSSL carries the session.
            return;
        }
        let (epoch, next_seq) = link.written;
        let mut outbox = std::mem::take(&mut link.outbox);
        let ssl = stream.ssl();
        let Some(records) = Established::take_over(
            ssl,
            self.is_client,
            epoch,
            next_seq,
            &mut outbox,
            &sealed_read,
        ) else {
            stream.get_mut().outbox = outbox;
            return;
        };
        let cipher = ssl.current_cipher().map_or("", |c| c.name());
        let (identity, resumed) = (identity_of(ssl), ssl.session_reused());
        let not_after = not_after_of(ssl);
        // Described once, for the client's figures; a server has no use for it.
        let peer = match self.is_client {
            true => ssl.peer_certificate().map(|c| crate::certs::describe(&c)),
            false => None,
        };
        // Freed without a close_notify, OpenSSL would take the session out of the cache, and
        // the device could not resume it.
        let both = ShutdownState::SENT | ShutdownState::RECEIVED;
        // SAFETY: a valid SSL; this only sets its shutdown flags.
        unsafe { openssl_sys::SSL_set_shutdown(ssl.as_ptr(), both.bits()) };
        let cached = ssl.session().map(openssl::ssl::SslSessionRef::to_owned);
        self.link = Link::Records(Box::new(TakenOver {
            records,
            cached,
            identity,
            not_after,
            resumed,
            cipher,
            peer,
        }));
    }

    /// An established server session gives its two record buffers (about 17 KiB each) back
    /// to the allocator between datagrams: most sessions of a fleet are idle most of the time,
    /// and SSL_MODE_RELEASE_BUFFERS does not release them for DTLS. OpenSSL sets them up again
    /// when it reads; a write needs them in place, so [`Session::send`] reads first
    /// ([`Session::restore_buffers`]). (Only for suites that [`record`] does not protect.)
    fn release_buffers(&mut self) {
        if self.is_client || self.state != State::Established || self.buffers_released {
            return;
        }
        let Link::Tls(stream) = &self.link else {
            return;
        };
        // SAFETY: a valid SSL. OpenSSL frees nothing while a record is partly read or written
        // (it returns 0 then, and the buffers stay).
        self.buffers_released = unsafe { SSL_free_buffers(stream.ssl().as_ptr()) } == 1;
    }

    /// Sets the record buffers up again after [`Session::release_buffers`]: a read sets up
    /// both. Nothing is waiting to be read at this point (every datagram was read to the end);
    /// should anything come, it is kept for the next [`Session::handle_datagram`].
    fn restore_buffers(&mut self) {
        if !std::mem::take(&mut self.buffers_released) {
            return;
        }
        let mut early = std::mem::take(&mut self.early);
        PLAINTEXT.with_borrow_mut(|buf| self.read_all(buf, &mut early));
        self.early = early;
    }

    /// Reads every record OpenSSL has for the application.
    fn read_all(&mut self, buf: &mut [u8], received: &mut Vec<Vec<u8>>) {
        let Link::Tls(stream) = &mut self.link else {
            return;
        };
        loop {
            match stream.ssl_read(buf) {
                Ok(n) if n > 0 => received.push(buf[..n].to_vec()),
                Err(e) if e.code() == ErrorCode::WANT_READ => return,
                // The peer's close_notify: answered with ours (RFC 5246 §7.2.1). Freed without
                // having sent one, OpenSSL would also take the session out of its cache, and
                // a device that closed cleanly could not resume it.
                Ok(_) => {
                    let _ = stream.shutdown();
                    return self.fail(DtlsError::Closed);
                }
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                    let _ = stream.shutdown();
                    return self.fail(DtlsError::Closed);
                }
                Err(e) => return self.fail(other(e)),
            }
        }
    }

    /// Takes a datagram from the peer; returns the application data it carried.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) -> Vec<Vec<u8>> {
        if matches!(self.state, State::Closed(_)) {
            return Vec::new();
        }
        let stream = match &mut self.link {
            Link::Tls(stream) => stream,
            Link::Records(t) => {
                let opened = PLAINTEXT.with_borrow_mut(|buf| t.records.open(now, datagram, buf));
                // Only the peer's own records keep the session alive: a datagram forged with
                // its address must not hold off the idle timeout.
                if opened.authentic {
                    self.last_activity = now;
                }
                if opened.close_notify {
                    // Answered with ours (RFC 5246 §7.2.1), as OpenSSL answers it.
                    self.close();
                } else if let Some(d) = opened.fatal.filter(|_| self.is_client) {
                    // Worded as OpenSSL worded it: the client does not offer a session the
                    // server ended so again, and its log says why (certificate expired).
                    let name = record::alert_name(d);
                    self.fail(DtlsError::Other(format!(
                        "the server sent the alert {name}"
                    )));
                } else if opened.alert {
                    self.fail(DtlsError::Closed);
                }
                return opened.data;
            }
        };
        let before = (self.state == State::Handshaking).then(|| stream.ssl().state_string_long());
        stream.get_mut().inbox.push_back(datagram.to_vec());
        self.buffers_released = false;
        let mut received = std::mem::take(&mut self.early);
        received.extend(self.advance());
        // A handshake's datagrams, or records OpenSSL opened.
        if before.is_some() || !received.is_empty() {
            self.last_activity = now;
        }
        if before.is_some_and(|b| {
            self.state != State::Handshaking
                || self.tls().is_some_and(|s| s.ssl().state_string_long() != b)
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
        if let Link::Records(t) = &mut self.link {
            return t
                .records
                .seal(record::APPLICATION_DATA, data)
                .map_err(DtlsError::Other);
        }
        self.restore_buffers();
        if self.state != State::Established {
            return Err(DtlsError::Other("the session ended".into()));
        }
        let Link::Tls(stream) = &mut self.link else {
            unreachable!("taken over above");
        };
        let r = stream.ssl_write(data).map(|_| ()).map_err(|e| {
            let err = other(e);
            self.fail(err.clone());
            err
        });
        self.release_buffers();
        r
    }

    /// The next datagram to put on the wire.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        match &mut self.link {
            Link::Tls(stream) => stream.get_mut().outbox.pop_front(),
            Link::Records(t) => t.records.outbox.pop_front(),
        }
    }

    /// How long until OpenSSL's handshake timer expires (`None`: no timer running). OpenSSL
    /// measures it on the real clock: this is the one timer of the link that is not driven by
    /// `now`.
    pub fn timeout(&self) -> Option<Duration> {
        if self.state != State::Handshaking {
            return None;
        }
        get_timeout(self.tls()?.ssl())
    }

    /// Retransmits the last flight if its timer expired; fails the session after too many.
    /// `true` if it retransmitted.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        if self.state != State::Handshaking {
            return false;
        }
        let r = self.tls().map_or(0, |s| handle_timeout(s.ssl()));
        if r < 0 {
            self.fail(DtlsError::HandshakeTimeout(
                now.saturating_duration_since(self.started),
            ));
        }
        r > 0
    }

    /// Fails a handshake that has taken longer than `limit`.
    pub fn check_deadline(&mut self, now: Instant, limit: Duration) {
        if self.state == State::Handshaking && now.saturating_duration_since(self.started) >= limit
        {
            self.fail(DtlsError::HandshakeTimeout(limit));
        }
    }

    /// The peer's authenticated identity, read from the session (so a resumed session has the
    /// one it was established with): the PSK identity, or the common name of a client
    /// certificate that passed verification. `None` for a peer that authenticated neither way,
    /// or whose name is empty or not UTF-8 (no lossy conversion: two names must never map to
    /// one identity), and before the handshake completed.
    pub fn peer_identity(&self) -> Option<String> {
        if !self.completed {
            return None;
        }
        match &self.link {
            Link::Tls(stream) => identity_of(stream.ssl()),
            Link::Records(t) => t.identity.clone(),
        }
    }

    /// When the certificate the peer's identity comes from, or one of its issuers, stops being
    /// valid (the earliest notAfter of the chain), read from the session as
    /// [`Session::peer_identity`] is: a resumed session has its first handshake's chain, which
    /// may have expired since. `None` without a verified certificate (a PSK, or no identity).
    pub fn peer_not_after(&self) -> Option<SystemTime> {
        if !self.completed {
            return None;
        }
        match &self.link {
            Link::Tls(stream) => not_after_of(stream.ssl()),
            Link::Records(t) => t.not_after,
        }
    }

    /// Whether the handshake was an abbreviated one, resuming an earlier session.
    pub fn resumed(&self) -> bool {
        match &self.link {
            Link::Tls(stream) => stream.ssl().session_reused(),
            Link::Records(t) => t.resumed,
        }
    }

    /// A copy of the session, to offer again with [`Session::client`]'s `resume`. A copy: when
    /// a connection ends without a close_notify of its own (the server went silent, the device
    /// gave up on it), OpenSSL marks its session not resumable, and that must not stop the next
    /// connection from offering it (the server decides). `None` for a server session.
    ///
    /// `SSL_SESSION_dup`, not a round trip through DER: decoding the DER parses the server's
    /// certificate again, which with OpenSSL 3.0 (its key decoders) was about a fifth of a
    /// client's CPU per full handshake.
    pub fn ssl_session(&self) -> Option<SslSession> {
        if !self.is_client {
            return None;
        }
        let session = match &self.link {
            Link::Tls(stream) => stream.ssl().session()?,
            Link::Records(t) => t.cached.as_deref()?,
        };
        // SAFETY: a valid session; the copy is a new one of our own, or NULL.
        let copy = unsafe { SSL_SESSION_dup(session.as_ptr()) };
        // SAFETY: a non-null session we own.
        (!copy.is_null()).then(|| unsafe { SslSession::from_ptr(copy) })
    }

    /// The protocol version (`DTLSv1.2`).
    pub fn version(&self) -> Option<&'static str> {
        match &self.link {
            Link::Tls(stream) => Some(stream.ssl().version_str()),
            // `record` carries DTLS 1.2 only.
            Link::Records(_) => Some("DTLSv1.2"),
        }
    }

    /// The peer's certificate, described as [`crate::certs::describe`] does (`None` with a
    /// PSK, or for a server session once OpenSSL no longer carries the records).
    pub fn peer_certificate(&self) -> Option<String> {
        match &self.link {
            Link::Tls(stream) => {
                let cert = stream.ssl().peer_certificate()?;
                Some(crate::certs::describe(&cert))
            }
            Link::Records(t) => t.peer.clone(),
        }
    }

    /// The negotiated cipher suite.
    pub fn cipher(&self) -> Option<&str> {
        match &self.link {
            Link::Tls(stream) => stream.ssl().current_cipher().map(|c| c.name()),
            Link::Records(t) => Some(t.cipher),
        }
    }

    /// Whether an established session's records are protected by `record.rs` rather than by
    /// OpenSSL (a session with an AEAD suite).
    pub fn taken_over(&self) -> bool {
        matches!(self.link, Link::Records(_))
    }

    /// Sends a fatal alert (`description`, RFC 5246 §7.2) and ends the session: the peer
    /// learns why, and a client does not offer the session again. A session OpenSSL still
    /// carries sends close_notify instead (OpenSSL sends no alert of its caller's choosing).
    pub fn close_fatal(&mut self, description: u8) {
        if let (State::Established, Link::Records(t)) = (&self.state, &mut self.link) {
            let _ = t.records.seal(record::ALERT, &[2, description]);
            return self.fail(DtlsError::Closed);
        }
        self.close();
    }

    /// Takes a server session out of `ctx`'s session cache, so that it cannot be resumed: for
    /// one refused after its handshake (no identity, a denied one), which would otherwise push
    /// the sessions of the fleet's devices out of the cache. `ctx` must be the context the
    /// session was made with.
    pub fn forget_resumption(&self, ctx: &openssl::ssl::SslContextRef) {
        let session = match &self.link {
            Link::Tls(stream) => stream.ssl().session(),
            Link::Records(t) => t.cached.as_deref(),
        };
        if let Some(session) = session {
            // SAFETY: the session was made with `ctx` (the caller's promise), the only context
            // whose cache may hold it.
            unsafe { ctx.remove_session(session) };
        }
    }

    /// Sends close_notify and ends the session.
    pub fn close(&mut self) {
        if self.state == State::Established {
            match &mut self.link {
                Link::Records(t) => {
                    // A warning-level close_notify (RFC 5246 §7.2.1).
                    let _ = t.records.seal(record::ALERT, &[1, 0]);
                }
                Link::Tls(_) => {
                    self.restore_buffers();
                    if let Link::Tls(stream) = &mut self.link {
                        let _ = stream.shutdown();
                    }
                }
            }
        }
        self.fail(DtlsError::Closed);
    }
}

/// The peer's authenticated identity (see [`Session::peer_identity`]).
fn identity_of(ssl: &SslRef) -> Option<String> {
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
    certificate_identity(&cert)
}

/// The identity a certificate gives its holder: its one common name, if that is a valid
/// identity ([`valid_identity`]). What a server takes as the device of a peer that shows it.
pub fn certificate_identity(cert: &openssl::x509::X509Ref) -> Option<String> {
    let mut cns = cert.subject_name().entries_by_nid(Nid::COMMONNAME);
    let cn = cns.next()?;
    if cns.next().is_some() {
        return None; // two common names: which one would be the device?
    }
    let cn = cn.data().to_string().ok()?;
    valid_identity(&cn).then_some(cn)
}

/// The notAfter of the verified client certificate (see [`Session::peer_not_after`]).
fn not_after_of(ssl: &SslRef) -> Option<SystemTime> {
    use crate::verified::unix;
    if ssl.psk_identity().is_some() || ssl.verify_result() != X509VerifyResult::OK {
        return None;
    }
    // A time that cannot be read is taken as past: such a certificate is refused as expired.
    // `None` would say "no certificate", and the server would take the session for a PSK
    // one, whose identity no certificate may claim.
    let leaf = unix(ssl.peer_certificate()?.not_after()).unwrap_or(0);
    // The certificate's issuers end the session too (an intermediate CA may expire first): a
    // full handshake has the verified chain, trust anchor included; a resumed session, the
    // chain the peer sent when it was established (OpenSSL keeps it in the session).
    let chain = ssl
        .verified_chain()
        .filter(|c| !c.is_empty())
        .or_else(|| ssl.peer_cert_chain());
    let end = chain
        .into_iter()
        .flatten()
        .map(|c| unix(c.not_after()).unwrap_or(0))
        .fold(leaf, i64::min);
    // Before 1970: as expired as can be.
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(end.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::next_handshake_timer_us;

    #[test]
    fn the_handshake_timer_starts_at_1_s_and_grows_by_half_up_to_2_s() {
        let mut t = 0;
        let steps: Vec<u32> = (0..7)
            .map(|_| {
                t = next_handshake_timer_us(t);
                t / 1000
            })
            .collect();
        assert_eq!(steps, [1000, 1500, 2000, 2000, 2000, 2000, 2000]);
    }
}
