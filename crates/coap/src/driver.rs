//! Thin tokio drivers that connect a UDP socket, the DTLS sessions and the CoAP endpoint. Each
//! runs on a thread of its own with a single-threaded runtime (a plugin owns its runtime: the
//! host's does not exist inside a plugin). The loop is always the same: wait for a datagram, a
//! command or the next timer; feed it in; send what is queued.

use crate::{
    admission::{Admit, Established, Handshake, Limits},
    core::{ClientError, Config as CoapConfig, Endpoint, Event, RequestId},
    dtls::{self, ClientSettings, DtlsError, ServerSettings, Session, State},
};
use coap_lite::Packet;
use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc as std_mpsc, Arc,
    },
    time::{Duration, Instant},
};
use tokio::{net::UdpSocket, sync::mpsc, time::sleep_until};

fn rng() -> Box<dyn FnMut() -> u64 + Send> {
    let mut s = [0u8; 8];
    openssl::rand::rand_bytes(&mut s).expect("random bytes");
    let mut x = u64::from_le_bytes(s) | 1;
    Box::new(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Why a client request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The DTLS session could not be set up, or broke.
    #[error("{0}")]
    Dtls(#[from] DtlsError),
    /// CoAP gave up (no ACK, no response, or RST).
    #[error("CoAP: {0:?}")]
    Coap(ClientError),
    /// No answer within the caller's timeout; the session is dropped and set up again.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The client is shutting down.
    #[error("the client stopped")]
    Stopped,
    /// Socket trouble.
    #[error("socket: {0}")]
    Io(String),
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The server's address.
    pub server: SocketAddr,
    /// The server's host name or IP as in the URI, checked against its certificate.
    pub host: String,
    /// Check `host` against the certificate (off only for PSK).
    pub verify_host: bool,
    /// Local address to bind (port 0: any).
    pub bind: SocketAddr,
    /// DTLS settings.
    pub tls: ClientSettings,
    /// CoAP transmission parameters.
    pub coap: CoapConfig,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
}

enum Cmd {
    Job(Job),
    /// End at once without a close_notify.
    Abort,
}

struct Job {
    packet: Packet,
    timeout: Duration,
    deadline: Instant,
    reply: std_mpsc::Sender<Tagged>,
    tag: u64,
}

impl Job {
    fn finish(&self, result: Result<Packet, RequestError>) {
        let _ = self.reply.send((self.tag, result));
    }
    /// When the request was handed to the client.
    fn sent(&self) -> Instant {
        self.deadline - self.timeout
    }
}

/// The outcome of a request sent with [`Client::send_tagged`], with its tag.
pub type Tagged = (u64, Result<Packet, RequestError>);

/// A CoAP-over-DTLS client to one server. Requests are blocking calls from any thread.
pub struct Client {
    tx: mpsc::UnboundedSender<Cmd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    /// Checks the settings (files, ciphers) and starts the client's thread. Connects lazily,
    /// on the first request, and again after a session is lost.
    pub fn start(opts: ClientOptions) -> Result<Client, DtlsError> {
        let connector = dtls::client_context(&opts.tls)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name("coaps-client".into())
            .spawn(move || {
                let _e = span.enter();
                runtime().block_on(client_loop(opts, connector, rx))
            })
            .map_err(|e| DtlsError::Other(e.to_string()))?;
        Ok(Client {
            tx,
            thread: Some(thread),
        })
    }

    /// Sends a confirmable request and waits for the final response, at most `timeout`.
    pub fn request(&self, packet: Packet, timeout: Duration) -> Result<Packet, RequestError> {
        self.send(packet, timeout).wait()
    }

    /// Sends a confirmable request without waiting; several may be in flight at once.
    pub fn send(&self, packet: Packet, timeout: Duration) -> Pending {
        let (reply, rx) = std_mpsc::channel();
        let sent = self.send_tagged(packet, timeout, 0, &reply);
        Pending {
            rx: sent.then_some(rx),
        }
    }

    /// Sends a confirmable request; its final response arrives on `done` with `tag`, so that
    /// one receiver can collect many requests in the order they finish. `false` if the client
    /// has stopped (nothing will arrive).
    pub fn send_tagged(
        &self,
        packet: Packet,
        timeout: Duration,
        tag: u64,
        done: &std_mpsc::Sender<Tagged>,
    ) -> bool {
        let job = Job {
            packet,
            timeout,
            deadline: Instant::now() + timeout,
            reply: done.clone(),
            tag,
        };
        self.tx.send(Cmd::Job(job)).is_ok()
    }

    /// Ends the client without telling the server, as a power loss would: the server keeps a
    /// session that no longer exists on this side.
    pub fn abort(mut self) {
        let _ = self.tx.send(Cmd::Abort);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let (tx, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A request in flight.
pub struct Pending {
    rx: Option<std_mpsc::Receiver<Tagged>>,
}

impl Pending {
    /// Waits for the final response.
    pub fn wait(self) -> Result<Packet, RequestError> {
        match self.rx {
            Some(rx) => rx.recv().map_or(Err(RequestError::Stopped), |(_, r)| r),
            None => Err(RequestError::Stopped),
        }
    }
}

struct Link {
    socket: UdpSocket,
    session: Session,
    /// When the server last sent something this session could decrypt: proof it still knows
    /// the session.
    heard: Option<Instant>,
}

impl Link {
    /// Nothing came from the server since `since`: the session is probably stale (the server
    /// restarted and drops what it cannot decrypt). On a merely lossy path other answers keep
    /// arriving, and the session is kept.
    fn silent_since(&self, since: Instant) -> bool {
        self.heard.is_none_or(|h| h < since)
    }
}

async fn connect(
    opts: &ClientOptions,
    connector: &openssl::ssl::SslContext,
    resume: Option<&openssl::ssl::SslSession>,
) -> Result<Link, RequestError> {
    let socket = UdpSocket::bind(opts.bind)
        .await
        .inspect(|s| grow_buffers(&socket2::SockRef::from(s)))
        .map_err(|e| RequestError::Io(format!("bind {}: {e}", opts.bind)))?;
    socket
        .connect(opts.server)
        .await
        .map_err(|e| RequestError::Io(format!("connect {}: {e}", opts.server)))?;
    let session = Session::client(
        connector,
        &opts.host,
        opts.tls.mtu,
        opts.verify_host,
        resume,
    )?;
    tracing::debug!(server = %opts.server, resuming = resume.is_some(), "DTLS handshake started");
    Ok(Link {
        socket,
        session,
        heard: None,
    })
}

async fn client_loop(
    opts: ClientOptions,
    connector: openssl::ssl::SslContext,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
) {
    let mut endpoint: Endpoint<()> = Endpoint::new(opts.coap.clone(), rng());
    let mut link: Option<Link> = None;
    // The last session established, offered again at the next connect: an abbreviated
    // handshake is two small flights instead of certificate chains.
    let mut resume: Option<openssl::ssl::SslSession> = None;
    let mut established = false;
    let mut queued: VecDeque<Job> = VecDeque::new();
    let mut waiting: HashMap<Vec<u8>, Job> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    let mut open = true;
    loop {
        if link.is_none() && !queued.is_empty() {
            match connect(&opts, &connector, resume.as_ref()).await {
                Ok(l) => {
                    link = Some(l);
                    established = false;
                }
                Err(e) => {
                    for j in queued.drain(..) {
                        j.finish(Err(e.clone()));
                    }
                }
            }
        }
        // Work that can go out now.
        let now = Instant::now();
        if let Some(l) = link.as_mut() {
            if l.session.is_established() && !established {
                established = true;
                tracing::debug!(resumed = l.session.resumed(), cipher = ?l.session.cipher(), "DTLS session established");
                resume = l.session.ssl_session();
            }
            if l.session.is_established() {
                while let Some(mut job) = queued.pop_front() {
                    // The endpoint keeps the request for its retransmissions; nothing else
                    // needs it.
                    let packet = std::mem::replace(&mut job.packet, Packet::new());
                    let token = endpoint.request(now, (), packet, true);
                    waiting.insert(token, job);
                }
            }
        }
        let mut stale = false;
        while let Some(ev) = endpoint.poll_event() {
            match ev {
                Event::Response { token, result, .. } => {
                    if let Some(job) = waiting.remove(&token) {
                        // No answer at all, and nothing else from the server either since the
                        // request went out: set the session up again.
                        if matches!(result, Err(ClientError::Timeout))
                            && link.as_ref().is_none_or(|l| l.silent_since(job.sent()))
                        {
                            stale = true;
                        }
                        job.finish(result.map_err(RequestError::Coap));
                    }
                }
                // This client serves nothing: refuse what the server asks.
                Event::Request { id, .. } => endpoint.respond(
                    now,
                    id,
                    crate::core::response(coap_lite::ResponseType::MethodNotAllowed, ""),
                ),
            }
        }
        if stale && waiting.is_empty() {
            drop_session(&mut link, &mut endpoint, &mut waiting, "CoAP got no answer").await;
        }
        // Requests past their caller's deadline: fail them. If the server has said nothing
        // since they went out, drop the session too: it is probably stale (the server
        // restarted).
        let late: Vec<Vec<u8>> = waiting
            .iter()
            .filter(|(_, j)| j.deadline <= now)
            .map(|(t, _)| t.clone())
            .collect();
        if !late.is_empty() {
            let mut silent = false;
            for t in late {
                if let Some(j) = waiting.remove(&t) {
                    silent |= link.as_ref().is_some_and(|l| l.silent_since(j.sent()));
                    j.finish(Err(RequestError::Timeout(j.timeout)));
                }
            }
            // A late request on a lossy path that still answers others keeps the session.
            if silent {
                drop_session(
                    &mut link,
                    &mut endpoint,
                    &mut waiting,
                    "a request timed out with no word from the server",
                )
                .await;
            }
        }
        for j in queued.iter().filter(|j| j.deadline <= now) {
            j.finish(Err(RequestError::Timeout(j.timeout)));
        }
        queued.retain(|j| j.deadline > now);
        if let Some(l) = link.as_mut() {
            while let Some((_, bytes)) = endpoint.poll_transmit() {
                if l.session.send(&bytes).is_err() {
                    break;
                }
            }
            flush(l).await;
            if let State::Closed(e) = l.session.state().clone() {
                tracing::warn!(error = %e, "DTLS session ended");
                if !established || e != DtlsError::Closed {
                    // Neither a handshake that failed nor a session that broke is offered again.
                    resume = None;
                }
                for (_, j) in waiting.drain() {
                    j.finish(Err(RequestError::Dtls(e.clone())));
                }
                for j in queued.drain(..) {
                    j.finish(Err(RequestError::Dtls(e.clone())));
                }
                endpoint.forget_peer(());
                while endpoint.poll_event().is_some() {}
                link = None;
            } else if l.session.is_established() && !queued.is_empty() {
                continue;
            }
        } else {
            while endpoint.poll_transmit().is_some() {}
        }
        if !open && waiting.is_empty() && queued.is_empty() {
            if let Some(mut l) = link.take() {
                l.session.close();
                flush(&mut l).await;
            }
            return;
        }

        let mut next = [
            endpoint.poll_timeout(),
            link.as_ref()
                .and_then(|l| l.session.timeout())
                .map(|d| Instant::now() + d),
            link.as_ref()
                .filter(|l| !l.session.is_established())
                .map(|l| l.session.started() + opts.handshake_timeout),
            waiting
                .values()
                .chain(queued.iter())
                .map(|j| j.deadline)
                .min(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        if next < Instant::now() {
            next = Instant::now();
        }
        tokio::select! {
            cmd = rx.recv(), if open => match cmd {
                Some(Cmd::Job(j)) => queued.push_back(j),
                Some(Cmd::Abort) => return,
                None => open = false,
            },
            r = async { link.as_ref().expect("guarded").socket.recv(&mut buf).await }, if link.is_some() => {
                if let (Ok(n), Some(l)) = (r, link.as_mut()) {
                    let now = Instant::now();
                    for data in l.session.handle_datagram(&buf[..n]) {
                        l.heard = Some(now);
                        endpoint.handle_datagram(now, (), &data);
                    }
                }
            }
            _ = sleep_until(next.into()) => {
                let now = Instant::now();
                if let Some(l) = link.as_mut() {
                    l.session.handle_timeout();
                    l.session.check_deadline(opts.handshake_timeout);
                }
                endpoint.handle_timeout(now);
            }
        }
    }
}

/// Socket buffers: the kernel's default receive buffer (208 KiB on Linux) overflows when many
/// peers, or one peer with several large requests in flight, send at once, and every datagram
/// dropped there costs a whole ACK_TIMEOUT. Ask for 4 MiB each way; the kernel caps it at
/// `net.core.rmem_max` / `wmem_max`.
fn grow_buffers(s: &socket2::SockRef<'_>) {
    for (what, r) in [
        ("receive", s.set_recv_buffer_size(4 << 20)),
        ("send", s.set_send_buffer_size(4 << 20)),
    ] {
        if let Err(e) = r {
            tracing::debug!(error = %e, "could not enlarge the UDP {what} buffer");
        }
    }
}

/// Closes the DTLS session (the next request reconnects) and forgets the CoAP exchanges with
/// the server; the requests still waiting fail now, not at their deadlines.
async fn drop_session(
    link: &mut Option<Link>,
    endpoint: &mut Endpoint<()>,
    waiting: &mut HashMap<Vec<u8>, Job>,
    why: &str,
) {
    if let Some(mut l) = link.take() {
        tracing::info!("dropping the DTLS session after {why}; the next request reconnects");
        l.session.close();
        flush(&mut l).await;
    }
    endpoint.forget_peer(());
    while let Some(ev) = endpoint.poll_event() {
        if let Event::Response { token, result, .. } = ev {
            if let Some(job) = waiting.remove(&token) {
                job.finish(result.map_err(RequestError::Coap));
            }
        }
    }
}

async fn flush(l: &mut Link) {
    while let Some(d) = l.session.poll_transmit() {
        if let Err(e) = l.socket.send(&d).await {
            tracing::debug!(error = %e, "send failed");
        }
    }
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Where to listen.
    pub bind: SocketAddr,
    /// DTLS settings.
    pub tls: ServerSettings,
    /// CoAP parameters and limits.
    pub coap: CoapConfig,
    /// Most established sessions at once; a newcomer past it replaces the least recently
    /// active session (one without an identity first).
    pub max_sessions: usize,
    /// Most established sessions of one identity; a newer one replaces its oldest.
    pub max_sessions_per_identity: usize,
    /// Most handshakes in progress at once (who makes room past it: [`crate::admission`]).
    pub max_handshakes: usize,
    /// Most handshakes in progress from one IP address.
    pub max_handshakes_per_address: usize,
    /// A session without traffic for this long is dropped.
    pub session_idle: Duration,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
    /// Requests waiting for the application at most; more get 5.03 at once.
    pub max_pending: usize,
    /// Close every session whose peer has no authenticated identity (no PSK identity, no
    /// verified client certificate) as soon as it is established.
    pub require_identity: bool,
    /// Identities refused at every handshake, full or resumed.
    pub deny: HashSet<String>,
}

/// A request for the application.
#[derive(Debug)]
pub struct Incoming {
    /// Pass to [`Responder::respond`].
    pub id: RequestId,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The peer's authenticated identity (PSK identity or certificate common name), fixed when
    /// its session was established; `None` only when the server does not require one.
    pub identity: Option<Arc<str>>,
    /// The request, body reassembled.
    pub packet: Packet,
}

/// Counters of a server.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Sessions established (full or resumed handshakes).
    pub sessions: AtomicU64,
    /// Of those, abbreviated handshakes that resumed an earlier session.
    pub resumed: AtomicU64,
    /// HelloVerifyRequests sent (ClientHellos without a valid cookie).
    pub cookies_sent: AtomicU64,
    /// Handshakes that failed (the log says why).
    pub handshake_failures: AtomicU64,
    /// Sessions closed at once because the peer had no authenticated identity.
    pub unauthenticated: AtomicU64,
    /// Sessions closed at once because the peer's identity is on the deny list.
    pub denied: AtomicU64,
    /// Datagrams from addresses without a session, dropped.
    pub no_session: AtomicU64,
    /// ClientHellos dropped because the handshake capacity was full (they are sent again),
    /// and sessions without an identity refused at the session cap.
    pub over_capacity: AtomicU64,
    /// Stalled handshakes dropped to make room for newer ones (see [`crate::admission`]).
    pub evicted_handshakes: AtomicU64,
    /// Sessions dropped to make room for a newcomer (the session cap, or its identity's).
    pub evicted_sessions: AtomicU64,
    /// Sessions replaced by a new handshake from the same address (RFC 6347 §4.2.8).
    pub replaced: AtomicU64,
    /// Sessions dropped for idleness.
    pub idle_evictions: AtomicU64,
}

/// Sends responses back into a running server, from any thread.
#[derive(Clone)]
pub struct Responder(mpsc::UnboundedSender<(RequestId, Packet)>);

impl Responder {
    /// Answers request `id`.
    pub fn respond(&self, id: RequestId, packet: Packet) {
        let _ = self.0.send((id, packet));
    }
}

/// A running CoAP-over-DTLS server.
pub struct Server {
    /// The bound address.
    pub local_addr: SocketAddr,
    /// Requests for the application.
    pub requests: std_mpsc::Receiver<Incoming>,
    /// Where responses go.
    pub responder: Responder,
    /// Counters.
    pub stats: Arc<ServerStats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Binds and starts serving.
    pub fn start(opts: ServerOptions) -> Result<Server, DtlsError> {
        let ctx = dtls::server_context(&opts.tls)?;
        let std_socket = std::net::UdpSocket::bind(opts.bind)
            .map_err(|e| DtlsError::Config(format!("cannot listen on {}: {e}", opts.bind)))?;
        std_socket
            .set_nonblocking(true)
            .map_err(|e| DtlsError::Other(e.to_string()))?;
        grow_buffers(&socket2::SockRef::from(&std_socket));
        let local_addr = std_socket
            .local_addr()
            .map_err(|e| DtlsError::Other(e.to_string()))?;
        let (req_tx, requests) = std_mpsc::sync_channel(opts.max_pending.max(1));
        let (resp_tx, resp_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let stats = Arc::new(ServerStats::default());
        let st = stats.clone();
        let responder = Responder(resp_tx.clone());
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name("coaps-server".into())
            .spawn(move || {
                let _e = span.enter();
                let rt = runtime();
                rt.block_on(async move {
                    let socket = UdpSocket::from_std(std_socket).expect("tokio socket");
                    server_loop(opts, ctx, socket, req_tx, resp_tx, resp_rx, stop_rx, st).await
                })
            })
            .map_err(|e| DtlsError::Other(e.to_string()))?;
        Ok(Server {
            local_addr,
            requests,
            responder,
            stats,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A handshake whose peer has sent nothing for this long may make room for a new one: a DTLS
/// client that keeps up retransmits its flight after 1 s at the latest.
const STALLED_AFTER: Duration = Duration::from_millis(750);

/// One peer of a server.
struct Peer {
    session: Session,
    /// The client random of the ClientHello that began the handshake: a ClientHello with
    /// another random is a new handshake (a device that rebooted mid-handshake), not a
    /// retransmission.
    random: [u8; 32],
    /// Set when the session is established and admitted: the peer's authenticated identity.
    identity: Option<Arc<str>>,
}

struct ServerState {
    opts: ServerOptions,
    ctx: openssl::ssl::SslContext,
    peers: HashMap<SocketAddr, Peer>,
    /// The peers whose handshake is in progress.
    handshakes: HashSet<SocketAddr>,
    cookies: dtls::CookieJar,
    endpoint: Endpoint<SocketAddr>,
    stats: Arc<ServerStats>,
    out: Vec<(SocketAddr, Vec<u8>)>,
}

fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl ServerState {
    /// Forgets a peer: its session, its handshake, its CoAP exchanges. With `close`, a
    /// close_notify goes out first.
    fn drop_peer(&mut self, peer: SocketAddr, close: bool) {
        self.handshakes.remove(&peer);
        if let Some(mut p) = self.peers.remove(&peer) {
            if close {
                p.session.close();
                while let Some(d) = p.session.poll_transmit() {
                    self.out.push((peer, d));
                }
            }
        }
        self.endpoint.forget_peer(peer);
    }

    fn on_datagram(&mut self, peer: SocketAddr, d: &[u8]) {
        let now = Instant::now();
        if let Some(ch) = dtls::parse_client_hello(d) {
            // A retransmission of the ClientHello that began the session goes to its handshake
            // while there is one, and is dropped once it is established (a duplicate, or a
            // replay, must not end it); any other ClientHello starts a new association.
            if self.peers.get(&peer).is_none_or(|p| p.random != ch.random) {
                return self.on_new_hello(now, peer, d, &ch);
            }
            if !self.handshakes.contains(&peer) {
                tracing::trace!(%peer, "the ClientHello of an established session again; dropped");
                return;
            }
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            count(&self.stats.no_session);
            tracing::trace!(%peer, "datagram without a session dropped");
            return;
        };
        let was_established = p.session.is_established();
        let data = p.session.handle_datagram(d);
        if !was_established && p.session.is_established() && !self.admit(peer) {
            return;
        }
        for app in data {
            self.endpoint.handle_datagram(now, peer, &app);
        }
    }

    /// A ClientHello that begins a new association: answered statelessly until it carries a
    /// cookie made for its address, then given a session, making room if needed.
    fn on_new_hello(&mut self, now: Instant, peer: SocketAddr, d: &[u8], ch: &dtls::ClientHello) {
        if !self.cookies.check(peer, ch) {
            // Stateless: one small datagram back, nothing kept.
            let cookie = self.cookies.make(peer, ch);
            self.out
                .push((peer, dtls::hello_verify_request(ch, &cookie)));
            count(&self.stats.cookies_sent);
            return;
        }
        if self.peers.contains_key(&peer) {
            // RFC 6347 §4.2.8: a verified ClientHello at epoch 0 from an address with a session
            // (or a handshake) starts a new association: a device that rebooted keeps its port.
            tracing::info!(%peer, "peer started a new handshake; its old session is replaced");
            count(&self.stats.replaced);
            self.drop_peer(peer, false);
        }
        let in_progress: Vec<Handshake> = self
            .handshakes
            .iter()
            .filter_map(|a| {
                let s = &self.peers.get(a)?.session;
                Some(Handshake {
                    peer: *a,
                    started: s.started(),
                    heard: s.last_progress(),
                })
            })
            .collect();
        let limits = Limits {
            max_total: self.opts.max_handshakes,
            per_address: self.opts.max_handshakes_per_address,
            stalled_after: STALLED_AFTER,
        };
        match crate::admission::handshake(&in_progress, peer.ip(), now, limits) {
            Admit::Wait => {
                count(&self.stats.over_capacity);
                tracing::debug!(%peer, handshakes = in_progress.len(), "handshake capacity full: the ClientHello is dropped (it will be sent again)");
                return;
            }
            Admit::Start(evict) => {
                for old in evict {
                    count(&self.stats.evicted_handshakes);
                    tracing::debug!(peer = %old, "stalled handshake dropped to make room for a newer one");
                    self.drop_peer(old, false);
                }
            }
        }
        match Session::server(&self.ctx, d, &ch.cookie, self.opts.tls.mtu) {
            Ok(session) => {
                self.handshakes.insert(peer);
                self.peers.insert(
                    peer,
                    Peer {
                        session,
                        random: ch.random,
                        identity: None,
                    },
                );
            }
            Err(e) => {
                count(&self.stats.handshake_failures);
                tracing::warn!(%peer, error = %e, "handshake refused");
            }
        }
    }

    /// A session was just established: it stays only if its peer has an identity the server
    /// accepts and there is room for it. `false` if it was closed.
    fn admit(&mut self, peer: SocketAddr) -> bool {
        self.handshakes.remove(&peer);
        let p = self.peers.get(&peer).expect("the peer being admitted");
        let identity = p.session.peer_identity();
        let (resumed, cipher) = (p.session.resumed(), p.session.cipher().map(str::to_owned));
        let refused = self
            .refusal(identity.as_deref())
            .or_else(|| self.make_room(peer, identity.as_deref()));
        if let Some(why) = refused {
            tracing::warn!(%peer, identity = ?identity, "DTLS session refused: {why}");
            self.drop_peer(peer, true);
            return false;
        }
        count(&self.stats.sessions);
        if resumed {
            count(&self.stats.resumed);
        }
        tracing::info!(%peer, identity = ?identity, cipher = ?cipher, resumed, "DTLS session established");
        if let Some(p) = self.peers.get_mut(&peer) {
            p.identity = identity.map(Arc::from);
        }
        true
    }

    /// Why a session with `identity` may not carry data, if it may not.
    fn refusal(&self, identity: Option<&str>) -> Option<String> {
        match identity {
            Some(id) if self.opts.deny.contains(id) => {
                count(&self.stats.denied);
                Some(format!("identity {id:?} is on the deny list"))
            }
            None if self.opts.require_identity => {
                count(&self.stats.unauthenticated);
                Some("the peer has no authenticated identity (no PSK, no verified client certificate)".into())
            }
            _ => None,
        }
    }

    /// Drops the sessions that must make room for `peer`'s (see
    /// [`crate::admission::sessions_to_evict`]); why it may not stay, if there is no room.
    fn make_room(&mut self, peer: SocketAddr, identity: Option<&str>) -> Option<String> {
        let established: Vec<Established<'_>> = self
            .peers
            .iter()
            .filter(|(a, _)| **a != peer && !self.handshakes.contains(a))
            .map(|(a, p)| Established {
                peer: *a,
                last: p.session.last_activity(),
                identity: p.identity.as_deref(),
            })
            .collect();
        let Some(evict) = crate::admission::sessions_to_evict(
            &established,
            peer,
            identity,
            self.opts.max_sessions_per_identity,
            self.opts.max_sessions,
        ) else {
            count(&self.stats.over_capacity);
            return Some(format!(
                "at the session cap ({}), and a peer without an identity makes room only among those without one",
                self.opts.max_sessions
            ));
        };
        for old in evict {
            count(&self.stats.evicted_sessions);
            tracing::info!(peer = %old, newcomer = %peer, "least recently active session dropped to make room");
            self.drop_peer(old, true);
        }
        None
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        for p in self.peers.values_mut() {
            p.session.handle_timeout();
            p.session.check_deadline(self.opts.handshake_timeout);
        }
        let idle: Vec<SocketAddr> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.session.is_established()
                    && now.duration_since(p.session.last_activity()) >= self.opts.session_idle
            })
            .map(|(a, _)| *a)
            .collect();
        for a in idle {
            count(&self.stats.idle_evictions);
            tracing::info!(peer = %a, "idle session dropped");
            self.drop_peer(a, true);
        }
        self.endpoint.handle_timeout(now);
    }

    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let mut next = self
            .endpoint
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(60));
        for p in self.peers.values() {
            let s = &p.session;
            if let Some(d) = s.timeout() {
                next = next.min(now + d);
            }
            if !s.is_established() {
                next = next.min(s.started() + self.opts.handshake_timeout);
            } else {
                next = next.min(s.last_activity() + self.opts.session_idle);
            }
        }
        next.max(now)
    }
}

#[allow(clippy::too_many_arguments)]
async fn server_loop(
    opts: ServerOptions,
    ctx: openssl::ssl::SslContext,
    socket: UdpSocket,
    req_tx: std_mpsc::SyncSender<Incoming>,
    resp_tx: mpsc::UnboundedSender<(RequestId, Packet)>,
    mut resp_rx: mpsc::UnboundedReceiver<(RequestId, Packet)>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    stats: Arc<ServerStats>,
) {
    let mut st = ServerState {
        endpoint: Endpoint::new(opts.coap.clone(), rng()),
        opts,
        ctx,
        peers: HashMap::new(),
        handshakes: HashSet::new(),
        cookies: dtls::CookieJar::new(Duration::from_secs(300)),
        stats,
        out: Vec::new(),
    };
    let mut buf = vec![0u8; 65536];
    loop {
        let next = st.next_deadline();
        tokio::select! {
            _ = &mut stop => {
                // Answers the application gave before it stopped still go out.
                while let Ok((id, packet)) = resp_rx.try_recv() {
                    st.endpoint.respond(Instant::now(), id, packet);
                }
                while let Some((peer, bytes)) = st.endpoint.poll_transmit() {
                    if let Some(p) = st.peers.get_mut(&peer) {
                        let _ = p.session.send(&bytes);
                    }
                }
                for (peer, p) in st.peers.iter_mut() {
                    while let Some(d) = p.session.poll_transmit() {
                        let _ = socket.send_to(&d, *peer).await;
                    }
                }
                break;
            }
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, peer)) = r {
                    st.on_datagram(peer, &buf[..n]);
                }
            }
            Some((id, packet)) = resp_rx.recv() => st.endpoint.respond(Instant::now(), id, packet),
            _ = sleep_until(next.into()) => st.on_timers(),
        }
        while let Some(ev) = st.endpoint.poll_event() {
            if let Event::Request { id, peer, packet } = ev {
                let identity = st.peers.get(&peer).and_then(|p| p.identity.clone());
                if let Err(
                    std_mpsc::TrySendError::Full(inc) | std_mpsc::TrySendError::Disconnected(inc),
                ) = req_tx.try_send(Incoming {
                    id,
                    peer,
                    identity,
                    packet,
                }) {
                    let mut busy =
                        crate::core::response(coap_lite::ResponseType::ServiceUnavailable, "busy");
                    busy.add_option(coap_lite::CoapOption::MaxAge, crate::core::encode_uint(5));
                    let _ = resp_tx.send((inc.id, busy));
                }
            }
        }
        while let Some((peer, bytes)) = st.endpoint.poll_transmit() {
            if let Some(p) = st.peers.get_mut(&peer) {
                let _ = p.session.send(&bytes);
            }
        }
        let mut closed = Vec::new();
        for (peer, p) in st.peers.iter_mut() {
            while let Some(d) = p.session.poll_transmit() {
                st.out.push((*peer, d));
            }
            if let State::Closed(e) = p.session.state() {
                closed.push((*peer, e.clone()));
            }
        }
        for (peer, e) in closed {
            st.drop_peer(peer, false);
            if e != DtlsError::Closed {
                count(&st.stats.handshake_failures);
                tracing::warn!(%peer, error = %e, "DTLS session failed");
            } else {
                tracing::debug!(%peer, "DTLS session closed by the peer");
            }
        }
        for (peer, d) in st.out.drain(..) {
            let _ = socket.send_to(&d, peer).await;
        }
    }
}
