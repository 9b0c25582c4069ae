//! The server driver: one UDP socket and a tokio loop that pumps the server machine. Either on
//! the caller's thread, each request handed to a callback there ([`Bound::run`]: no thread
//! hand-off on the way in), or on a thread of its own, requests out through a bounded channel
//! ([`Server::start`]). Answers come back through [`Responder`] either way.

use crate::mmsg;
use crate::{busy::BusyPoll, grow_buffers, runtime};
use gateway_coap::{coap_lite::Packet, RequestId, Token};
use gateway_dtls::{
    server::{busy, Config, Incoming, Server as Machine, Shared, Stats},
    DtlsError,
};
use std::{
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, mpsc as std_mpsc, Arc},
    time::{Duration, Instant},
};
use tokio::{io::Interest, net::UdpSocket, sync::mpsc, time::sleep_until};

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Where to listen.
    pub bind: SocketAddr,
    /// Requests waiting for the application at most; more get 5.03 at once.
    pub max_pending: usize,
    /// How long a worker that ran out of datagrams polls its socket before it sleeps (zero:
    /// it sleeps at once); see [`crate::busy`] for when it polls.
    pub busy_poll: Duration,
    /// Everything else: DTLS, CoAP, capacity, identities.
    pub server: Config,
}

/// What goes back into a running server.
enum Out {
    Answer(RequestId, Packet),
    /// An answer that registers its client (peer, token) for notifications.
    Register(RequestId, SocketAddr, Token, Packet),
    Notify(SocketAddr, Token, Packet),
}

/// Sends responses and notifications back into a running server, from any thread.
#[derive(Clone)]
pub struct Responder(mpsc::UnboundedSender<Out>);

impl Responder {
    /// Answers request `id`. An answer with an Observe option to a GET with `Observe: 0`
    /// registers its client for notifications.
    pub fn respond(&self, id: RequestId, packet: Packet) {
        let _ = self.0.send(Out::Answer(id, packet));
    }

    /// Answers request `id`, from `peer` with `token`, with `packet`, which registers its
    /// client for notifications (it has an Observe option, the request `Observe: 0`). If the
    /// request is no longer waiting (its peer's session ended before the answer came), nothing
    /// is registered and the handler's [`Handler::deregistered`] is told, as for any
    /// registration that ended: an application's own registry must not keep it.
    pub fn register(&self, id: RequestId, peer: SocketAddr, token: Token, packet: Packet) {
        let _ = self.0.send(Out::Register(id, peer, token, packet));
    }

    /// A responder that reaches no server (what it is given is dropped): for tests of what
    /// hands answers to one.
    pub fn detached() -> Responder {
        Responder(mpsc::unbounded_channel().0)
    }

    /// Notifies the client registered from `peer` with `token` (RFC 7641). If it is not
    /// registered (any more), the handler's [`Handler::deregistered`] is told.
    pub fn notify(&self, peer: SocketAddr, token: Token, packet: Packet) {
        let _ = self.0.send(Out::Notify(peer, token, packet));
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
    pub stats: Arc<Stats>,
    stop: Option<std_mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Checks the settings, binds and starts serving on a thread of its own; requests arrive
    /// on [`Server::requests`] (past `max_pending` waiting, they get a 5.03 at once).
    pub fn start(opts: ServerOptions) -> Result<Server, DtlsError> {
        let max_pending = opts.max_pending.max(1);
        let bound = Bound::new(opts)?;
        let (local_addr, responder, stats) = (
            bound.local_addr,
            bound.responder.clone(),
            bound.stats.clone(),
        );
        let (req_tx, requests) = std_mpsc::sync_channel(max_pending);
        let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
        let span = tracing::Span::current();
        let busy_to = responder.clone();
        let thread = std::thread::Builder::new()
            .name("coaps-server".into())
            .spawn(move || {
                let _e = span.enter();
                let to_channel = ToChannel {
                    requests: req_tx,
                    busy: busy_to,
                    stop: stop_rx,
                };
                bound.run(Duration::from_millis(50), to_channel)
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

/// What [`Bound::run`] calls, on the caller's thread.
pub trait Handler {
    /// A request: answer it through the [`Responder`], now or later, from any thread.
    fn request(&mut self, inc: Incoming);
    /// Called after each wake-up's requests were handed over (many, under load).
    fn flush(&mut self) {}
    /// Called every tick; `false` ends the run.
    fn tick(&mut self) -> bool {
        true
    }
    /// The client registered from `peer` with `token` is not (any more): it said so, did not
    /// acknowledge a notification, its session ended, or a notification found it gone.
    fn deregistered(&mut self, _peer: SocketAddr, _token: Token) {}
}

/// [`Server::start`]'s handler: requests into a bounded channel, a 5.03 when it is full.
struct ToChannel {
    requests: std_mpsc::SyncSender<Incoming>,
    busy: Responder,
    stop: std_mpsc::Receiver<()>,
}

impl Handler for ToChannel {
    fn request(&mut self, inc: Incoming) {
        if let Err(std_mpsc::TrySendError::Full(inc) | std_mpsc::TrySendError::Disconnected(inc)) =
            self.requests.try_send(inc)
        {
            self.busy.respond(inc.id, busy());
        }
    }

    fn tick(&mut self) -> bool {
        matches!(self.stop.try_recv(), Err(std_mpsc::TryRecvError::Empty))
    }
}

/// A bound server that runs on the caller's thread: [`Bound::run`] hands each request to a
/// handler there, without a thread hand-off (the handler answers through [`Bound::responder`],
/// at once or later from any thread).
pub struct Bound {
    /// The bound address.
    pub local_addr: SocketAddr,
    /// Where answers go.
    pub responder: Responder,
    /// Counters.
    pub stats: Arc<Stats>,
    machine: Machine,
    socket: std::net::UdpSocket,
    answers: mpsc::UnboundedReceiver<Out>,
    busy_poll: Duration,
}

impl Bound {
    /// Checks the settings and binds.
    pub fn new(opts: ServerOptions) -> Result<Bound, DtlsError> {
        Ok(Bound::workers(opts, 1)?.pop().expect("one worker"))
    }

    /// Checks the settings and binds `n` workers to the same address, each with a socket of
    /// its own (SO_REUSEPORT: the kernel hashes each peer's address to one of them, so a
    /// peer's datagrams always reach the same worker) and a server machine of its own; they
    /// share what [`Shared`] says. Run each on a thread of its own.
    pub fn workers(opts: ServerOptions, n: usize) -> Result<Vec<Bound>, DtlsError> {
        let n = n.max(1);
        let shared = Shared::new(&opts.server, n, Instant::now())?;
        let mut addr = opts.bind;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let socket = bind(addr, n > 1)?;
            let local_addr = socket
                .local_addr()
                .map_err(|e| DtlsError::Other(e.to_string()))?;
            // Port 0: the others join the port the first one got.
            addr = local_addr;
            let machine = Machine::with_shared(opts.server.clone(), &shared, gateway_dtls::rng());
            let (tx, answers) = mpsc::unbounded_channel();
            out.push(Bound {
                local_addr,
                responder: Responder(tx),
                stats: shared.stats().clone(),
                machine,
                socket,
                answers,
                busy_poll: opts.busy_poll,
            });
        }
        Ok(out)
    }

    /// Serves until the handler's `tick` (called every `tick_every`) returns `false`; each
    /// request goes to the handler as it is decoded. Answers given before the end still go out.
    pub fn run(self, tick_every: Duration, handler: impl Handler) {
        let Bound {
            machine,
            socket,
            answers,
            busy_poll,
            ..
        } = self;
        // The same socket, read past tokio while polling (tokio reads only once its reactor
        // said the socket is readable, which it learns only when the thread sleeps).
        let polled = match busy_poll.is_zero() {
            true => None,
            false => match socket.try_clone() {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot poll the socket; the worker sleeps when idle");
                    None
                }
            },
        };
        runtime().block_on(async move {
            let sockets = Sockets {
                polled,
                busy: BusyPoll::new(busy_poll),
                tokio: UdpSocket::from_std(socket).expect("tokio socket"),
            };
            serve(machine, sockets, answers, tick_every, handler).await
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

/// A non-blocking UDP socket on `addr`, shared with the other workers when `reuse_port`.
fn bind(addr: SocketAddr, reuse_port: bool) -> Result<std::net::UdpSocket, DtlsError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let cannot = |e: std::io::Error| DtlsError::Config(format!("cannot listen on {addr}: {e}"));
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(cannot)?;
    if reuse_port {
        socket.set_reuse_port(true).map_err(cannot)?;
    }
    socket.bind(&addr.into()).map_err(cannot)?;
    socket
        .set_nonblocking(true)
        .map_err(|e| DtlsError::Other(e.to_string()))?;
    grow_buffers(&socket2::SockRef::from(&socket));
    Ok(socket.into())
}

/// A worker's socket, as tokio's and (when it busy-polls) as a plain non-blocking one.
struct Sockets {
    tokio: UdpSocket,
    polled: Option<std::net::UdpSocket>,
    busy: BusyPoll,
}

/// What a busy poll found.
enum Polled {
    /// Datagrams are in the batch.
    Datagrams,
    Answer(Out),
    /// Nothing until its deadline; `full`: the deadline was the whole budget (not a timer).
    Nothing {
        full: bool,
    },
}

/// Hands the handler what the machine has for it: the observations that ended first, then the
/// requests. An observation ends on an input (an RST, a GET of its token without `Observe: 0`)
/// or on an answer; a registration starts only when its answer is given, after the requests
/// are handed over. So every end handed over here is of a registration made before these
/// requests, and a client that ends an observation and registers again on the same token in
/// one datagram (or one batch) stays registered. Handed over after the requests, the old
/// registration's end removed the new one from the handler's registry while the endpoint kept
/// it: the client waited for notifications that never came.
fn hand_over(machine: &mut Machine, handler: &mut impl Handler) {
    while let Some((peer, token)) = machine.poll_deregistered() {
        handler.deregistered(peer, token);
    }
    while let Some(inc) = machine.poll_event() {
        handler.request(inc);
    }
}

/// Polls `socket` (non-blocking) and `answers` until `until`, for [`BusyPoll`]: whichever has
/// something first.
fn poll_until(
    socket: &std::net::UdpSocket,
    batch: &mut mmsg::RecvBatch,
    answers: &mut mpsc::UnboundedReceiver<Out>,
    until: Instant,
    full: bool,
) -> Polled {
    loop {
        match mmsg::recv(socket, batch) {
            Ok(_) => return Polled::Datagrams,
            // A failed read (an ICMP error of an earlier send, say) is tokio's to meet.
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                return Polled::Nothing { full: false }
            }
            Err(_) => {}
        }
        if let Ok(out) = answers.try_recv() {
            return Polled::Answer(out);
        }
        if Instant::now() >= until {
            return Polled::Nothing { full };
        }
        // Gives the core to whatever else is ready to run on it (on a small machine, the
        // devices' side or the sinks): the poll only uses time nobody else wants.
        std::thread::yield_now();
    }
}

async fn serve(
    mut machine: Machine,
    mut sockets: Sockets,
    mut answers: mpsc::UnboundedReceiver<Out>,
    tick_every: Duration,
    mut handler: impl Handler,
) {
    let mut batch = mmsg::RecvBatch::default();
    let mut sends: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let mut next_tick = Instant::now() + tick_every;
    let mut running = true;
    let mut gauges = Gauges::default();
    while running {
        let now = Instant::now();
        let next = machine
            .poll_timeout(now)
            .map_or(next_tick, |t| t.min(next_tick));
        let polled = match (&sockets.polled, sockets.busy.window()) {
            (Some(s), Some(w)) => {
                let until = now + w;
                poll_until(s, &mut batch, &mut answers, until.min(next), until <= next)
            }
            _ => Polled::Nothing { full: false },
        };
        match polled {
            Polled::Datagrams => {
                sockets.busy.found();
                machine.stats().polled.fetch_add(1, Relaxed);
                handle_batch(&mut machine, &batch);
            }
            Polled::Answer(out) => {
                sockets.busy.found();
                machine.stats().polled.fetch_add(1, Relaxed);
                give(&mut machine, &mut handler, out, Instant::now());
            }
            Polled::Nothing { full } => {
                if full {
                    sockets.busy.missed();
                }
                machine.stats().slept.fetch_add(1, Relaxed);
                let socket = &sockets.tokio;
                tokio::select! {
                    r = socket.readable() => {
                        if r.is_ok() {
                            let got = socket.try_io(Interest::READABLE, || mmsg::recv(socket, &mut batch));
                            if got.is_ok() {
                                handle_batch(&mut machine, &batch);
                            }
                        }
                    }
                    Some(out) = answers.recv() => give(&mut machine, &mut handler, out, Instant::now()),
                    _ = sleep_until(next.into()) => machine.handle_timeout(Instant::now()),
                }
            }
        }
        // Whichever branch woke it: under a steady stream of datagrams the timer branch may
        // seldom win, and the handler's tick must still come.
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + tick_every;
            running = handler.tick();
            gauges.update(&machine, running);
        }
        hand_over(&mut machine, &mut handler);
        handler.flush();
        // Answers and notifications given meanwhile (by the handler at once, or by other
        // threads), all at one time, read when the first is taken (after the handler's work,
        // which an inline sink can make long): reading the clock for each answer was one of
        // the 7.5 clock reads per request.
        let mut at = None;
        while let Ok(out) = answers.try_recv() {
            let now = *at.get_or_insert_with(Instant::now);
            give(&mut machine, &mut handler, out, now);
        }
        // Registrations those answers ended, and requests the machine met meanwhile.
        hand_over(&mut machine, &mut handler);
        sends.extend(std::iter::from_fn(|| machine.poll_transmit()));
        let mut i = 0;
        while i < sends.len() {
            let s = &sockets.tokio;
            match s.try_io(Interest::WRITABLE, || mmsg::send(s, &sends[i..])) {
                Ok(n) => i += n.max(1),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if s.writable().await.is_err() {
                        break;
                    }
                }
                // The first datagram could not go (an ICMP error of an earlier send, say):
                // it is lost as the network would lose it.
                Err(_) => i += 1,
            }
        }
        sends.clear();
    }
}

/// The datagrams just read into the machine, with the time they were read.
fn handle_batch(machine: &mut Machine, batch: &mmsg::RecvBatch) {
    let now = Instant::now();
    for (d, peer) in batch.iter() {
        machine.handle(now, peer, d);
    }
}

/// An answer or a notification into the machine, at `now`.
fn give(machine: &mut Machine, handler: &mut impl Handler, out: Out, now: Instant) {
    match out {
        Out::Answer(id, packet) => {
            machine.respond(now, id, packet);
        }
        Out::Register(id, peer, token, packet) => {
            if !machine.respond(now, id, packet) {
                handler.deregistered(peer, token);
            }
        }
        Out::Notify(peer, token, packet) => {
            if !machine.notify(now, peer, &token, packet) {
                handler.deregistered(peer, token);
            }
        }
    }
}

/// This worker's share of the shared session gauges ([`Stats::established_now`],
/// [`Stats::handshaking_now`]): each tick adds what changed since the last, and the end takes
/// it all back.
#[derive(Default)]
struct Gauges {
    established: i64,
    handshaking: i64,
}

impl Gauges {
    fn update(&mut self, machine: &Machine, running: bool) {
        let (est, hs) = if running {
            let (e, h) = machine.sessions();
            (e as i64, h as i64)
        } else {
            (0, 0)
        };
        let stats = machine.stats();
        stats
            .established_now
            .fetch_add(est - self.established, Relaxed);
        stats
            .handshaking_now
            .fetch_add(hs - self.handshaking, Relaxed);
        (self.established, self.handshaking) = (est, hs);
    }
}
