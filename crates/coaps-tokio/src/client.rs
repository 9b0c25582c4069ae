//! The client driver: blocking calls from any thread, a tokio loop on the client's own thread.

use crate::{grow_buffers, runtime};
use gateway_coap::{
    coap_lite::{Packet, RequestType},
    request, ContentFormat,
};
use gateway_dtls::{
    client::{Client as Machine, Config, Event, Figures, RequestError, RequestTag, Transmit},
    DtlsError,
};
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{mpsc as std_mpsc, Arc},
    time::{Duration, Instant},
};
use tokio::{net::UdpSocket, sync::mpsc, time::sleep_until};

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The server's address.
    pub server: SocketAddr,
    /// The server's name and port, looked up again before each new session after the first:
    /// a server that moved to a new address is followed, and after a session that was never
    /// established the next of the name's addresses is tried. `server` is the first lookup's
    /// answer ([`pick`]), and stays while a lookup fails. `None`: always `server`.
    pub resolve: Option<(String, u16)>,
    /// Local address to bind (port 0: any); the unspecified address of either family binds
    /// that of the server's ([`bind_for`]).
    pub bind: SocketAddr,
    /// Everything else: DTLS, CoAP, the handshake timeout.
    pub client: Config,
}

enum Cmd {
    Job(Job),
    Group(Group),
    /// End at once without a close_notify.
    Abort,
    /// Tell what the client counted so far, and its state.
    Figures(std_mpsc::Sender<Figures>),
    /// A registration (a GET with `Observe: 0`): its notifications go to the sender.
    Observe(Job, Mailbox),
    /// Stop taking the notifications of the registration with this tag.
    Unobserve(u64),
}

/// What an [`Observation`] receives.
#[derive(Debug)]
pub enum Notice {
    /// A notification. One without an Observe option, or not 2.xx, is the last.
    Notification(Packet),
    /// The observation ended without a last notification: the session was lost (the
    /// server forgot it too), or it was stopped.
    Ended,
}

/// Whether `answer` (to a GET with `Observe: 0`) says the server registered the client.
fn registered(answer: &Packet) -> bool {
    gateway_coap::observe_of(answer).is_some()
        && gateway_coap::Code::of(answer).is_some_and(gateway_coap::Code::is_success)
}

/// Notifications waiting for the observer at most: past it, the oldest goes. A state the
/// server replaced is of no use (RFC 7641 §1.1: only the latest counts), and a server that
/// notifies faster than the observer takes them (one busy fetching a block-wise notification,
/// say) would otherwise fill the observer's memory without bound.
pub const MAX_WAITING_NOTICES: usize = 64;

/// Where the client's thread leaves an observation's notices; the observer takes them.
/// Dropping it (the client's side) ends the observation for the observer once it has taken
/// what was left.
struct Mailbox(Arc<Notices>);

#[derive(Default)]
struct Notices {
    /// Waiting notices, and whether the client's side is gone.
    queue: std::sync::Mutex<(std::collections::VecDeque<Notice>, bool)>,
    arrived: std::sync::Condvar,
}

impl Mailbox {
    /// Leaves `n`, dropping the oldest notification past [`MAX_WAITING_NOTICES`]; `false` if
    /// the observer is gone.
    fn put(&self, n: Notice) -> bool {
        let Ok(mut q) = self.0.queue.lock() else {
            return false;
        };
        if q.0.len() >= MAX_WAITING_NOTICES {
            q.0.pop_front();
        }
        q.0.push_back(n);
        self.0.arrived.notify_one();
        Arc::strong_count(&self.0) > 1
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        if let Ok(mut q) = self.0.queue.lock() {
            q.1 = true;
        }
        self.0.arrived.notify_one();
    }
}

/// An observation held ([`Client::observe`]): its notifications, in order (at most
/// [`MAX_WAITING_NOTICES`] of the latest wait to be taken).
pub struct Observation {
    tag: u64,
    notices: Arc<Notices>,
    tx: mpsc::UnboundedSender<Cmd>,
}

impl Observation {
    /// The next notice, waiting at most `timeout`; `None` if none came in time (or the client
    /// stopped).
    pub fn next(&self, timeout: Duration) -> Option<Notice> {
        let q = self.notices.queue.lock().ok()?;
        let (mut q, _) = self
            .notices
            .arrived
            .wait_timeout_while(q, timeout, |q| q.0.is_empty() && !q.1)
            .ok()?;
        match q.0.pop_front() {
            Some(n) => Some(n),
            None if q.1 => Some(Notice::Ended),
            None => None,
        }
    }

    /// Stops taking notifications: the server's next one gets RST and ends the registration
    /// there (RFC 7641 §3.6). Dropping the observation does the same.
    pub fn stop(self) {
        // Dropping it tells the client's thread.
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Unobserve(self.tag));
    }
}

struct Job {
    packet: Packet,
    timeout: Duration,
    reply: Reply,
    tag: u64,
}

struct Group {
    packets: Vec<Packet>,
    timeout: Duration,
    reply: Reply,
    /// Not sent before then (the server asked for a pause).
    not_before: Option<Instant>,
}

/// The outcome of a request sent with [`Client::send_tagged`], with its tag.
pub type Tagged = (u64, Result<Packet, RequestError>);

/// Where outcomes go: called on the client's thread, once per request, so it must not block.
/// Dropped without a call for requests the client never finished (it stopped).
pub type Reply = Arc<dyn Fn(Tagged) + Send + Sync>;

fn to_channel(done: &std_mpsc::Sender<Tagged>) -> Reply {
    let tx = done.clone();
    Arc::new(move |t| {
        let _ = tx.send(t);
    })
}

/// Called on the client's thread with what it counted ([`Figures`]), every so often
/// ([`Client::start_observed`]). It must not block.
pub type Observer = Arc<dyn Fn(&Figures) + Send + Sync>;

/// A CoAP-over-DTLS client to one server. Requests are blocking calls from any thread.
pub struct Client {
    tx: mpsc::UnboundedSender<Cmd>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Tags of observations, so that their notices find them.
    next_tag: std::sync::atomic::AtomicU64,
}

impl Client {
    /// Checks the settings (files, ciphers) and starts the client's thread. Connects lazily,
    /// on the first request, and again after a session is lost.
    pub fn start(opts: ClientOptions) -> Result<Client, DtlsError> {
        Client::start_observed(opts, None)
    }

    /// [`Client::start`], with `observer` (if given) told the client's [`Figures`] every
    /// `every`, and once more at its end.
    pub fn start_observed(
        opts: ClientOptions,
        observer: Option<(Duration, Observer)>,
    ) -> Result<Client, DtlsError> {
        let machine = Machine::new(opts.client.clone(), gateway_dtls::rng())?;
        let (tx, rx) = mpsc::unbounded_channel();
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name("coaps-client".into())
            .spawn(move || {
                let _e = span.enter();
                runtime().block_on(client_loop(opts, machine, rx, observer))
            })
            .map_err(|e| DtlsError::Other(e.to_string()))?;
        Ok(Client {
            tx,
            thread: Some(thread),
            next_tag: std::sync::atomic::AtomicU64::new(1),
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
            reply: to_channel(done),
            tag,
        };
        self.tx.send(Cmd::Job(job)).is_ok()
    }

    /// POSTs each payload to `path` as `format`, in order, at most NSTART in flight at once
    /// (`coap.nstart` of the options), each within `timeout`. At the first that does not
    /// succeed (an error, or an answer that is not 2.xx), those not sent yet are dropped: they
    /// finish with [`RequestError::Cancelled`]. Every outcome arrives on `done`, tagged with
    /// its payload's index. `false` if the client has stopped (nothing will arrive).
    pub fn post_all(
        &self,
        path: &str,
        format: ContentFormat,
        payloads: Vec<Vec<u8>>,
        timeout: Duration,
        done: &std_mpsc::Sender<Tagged>,
    ) -> bool {
        self.post_all_with(path, format, payloads, timeout, None, to_channel(done))
    }

    /// [`Client::post_all`], each outcome given to `reply` on the client's thread, and none
    /// sent before `not_before` (when the server asked for a pause: a 5.03's Max-Age). Each
    /// request's `timeout` counts from when it is sent.
    pub fn post_all_with(
        &self,
        path: &str,
        format: ContentFormat,
        payloads: Vec<Vec<u8>>,
        timeout: Duration,
        not_before: Option<Instant>,
        reply: Reply,
    ) -> bool {
        let packets = payloads
            .into_iter()
            .map(|p| request(RequestType::Post, path, Some(format), p))
            .collect();
        let group = Group {
            packets,
            timeout,
            reply,
            not_before,
        };
        self.tx.send(Cmd::Group(group)).is_ok()
    }

    /// Sends `packet` (a GET) with `Observe: 0` and waits for the answer, at most `timeout`.
    /// If the server registered the client (its answer carries an Observe option), the
    /// [`Observation`] receives the notifications that follow.
    pub fn observe(
        &self,
        mut packet: Packet,
        timeout: Duration,
    ) -> Result<(Packet, Option<Observation>), RequestError> {
        packet.clear_option(gateway_coap::coap_lite::CoapOption::Observe);
        packet.add_option(gateway_coap::coap_lite::CoapOption::Observe, Vec::new());
        let (reply, rx) = std_mpsc::channel();
        let notices = Arc::new(Notices::default());
        let notes = Mailbox(notices.clone());
        let tag = self
            .next_tag
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let job = Job {
            packet,
            timeout,
            reply: to_channel(&reply),
            tag,
        };
        if self.tx.send(Cmd::Observe(job, notes)).is_err() {
            return Err(RequestError::Stopped);
        }
        let answer = rx.recv().map_or(Err(RequestError::Stopped), |(_, r)| r)?;
        let observation = registered(&answer).then(|| Observation {
            tag,
            notices,
            tx: self.tx.clone(),
        });
        Ok((answer, observation))
    }

    /// What the client counted so far and its state now: the session it negotiated, say.
    /// `None` once it has stopped.
    pub fn figures(&self) -> Option<Figures> {
        let (tx, rx) = std_mpsc::channel();
        self.tx.send(Cmd::Figures(tx)).ok()?;
        rx.recv().ok()
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

/// The local address to bind to reach `server`: `bind`, or, when `bind` is the unspecified
/// address of the other family (the default `0.0.0.0:0` for an IPv6 server), the unspecified
/// address of the server's family with `bind`'s port.
pub fn bind_for(bind: SocketAddr, server: SocketAddr) -> SocketAddr {
    if bind.ip().is_unspecified() && bind.is_ipv4() != server.is_ipv4() {
        let any: IpAddr = if server.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        SocketAddr::new(any, bind.port())
    } else {
        bind
    }
}

/// The address to reach a server at, of those its name gave: the first of `bind`'s family when
/// `bind` names an address (only those can be reached from it), else the first.
pub fn pick(addrs: impl IntoIterator<Item = SocketAddr>, bind: SocketAddr) -> Option<SocketAddr> {
    reachable(addrs, bind).first().copied()
}

/// The addresses of `addrs` that `bind` can reach: all when it is unspecified, else those of
/// its family; in the order given.
fn reachable(addrs: impl IntoIterator<Item = SocketAddr>, bind: SocketAddr) -> Vec<SocketAddr> {
    addrs
        .into_iter()
        .filter(|a| bind.ip().is_unspecified() || a.is_ipv4() == bind.is_ipv4())
        .collect()
}

/// The address for the next session, of `choices` (the name's reachable addresses): `last`
/// while it is one of them and its last session was established; after a session that never
/// was, the one after `last` (a name with an address that does not answer, an AAAA record on
/// a network without IPv6, is then left for the next); the first when `last` is gone.
fn next_address(choices: &[SocketAddr], last: SocketAddr, established: bool) -> Option<SocketAddr> {
    let at = choices.iter().position(|a| *a == last);
    match at {
        Some(_) if established => Some(last),
        Some(i) => Some(choices[(i + 1) % choices.len()]),
        None => choices.first().copied(),
    }
}

/// How long a lookup of the server's name may hold the client before the last address is
/// tried again (the loop waits for it: no timers run meanwhile).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// A new socket from `bind` (as [`bind_for`] makes it) to `server`, for a new session.
async fn open(bind: SocketAddr, server: SocketAddr) -> Result<UdpSocket, RequestError> {
    let bind = bind_for(bind, server);
    let socket = UdpSocket::bind(bind)
        .await
        .inspect(|s| grow_buffers(&socket2::SockRef::from(s)))
        .map_err(|e| RequestError::Io(format!("bind {bind}: {e}")))?;
    socket
        .connect(server)
        .await
        .map_err(|e| RequestError::Io(format!("connect {server}: {e}")))?;
    tracing::debug!(%server, "socket open for a new DTLS session");
    Ok(socket)
}

/// Does what the client machine asked for on the socket: opens a new one from `bind` to
/// `server` (telling the machine if that fails), or sends a datagram on the current one. For
/// drivers of their own (a load generator pumping many machines on one runtime).
pub async fn carry_out(
    t: Transmit,
    socket: &mut Option<UdpSocket>,
    machine: &mut Machine,
    bind: SocketAddr,
    server: SocketAddr,
) {
    match t {
        Transmit::Connect => match open(bind, server).await {
            Ok(s) => *socket = Some(s),
            Err(e) => {
                *socket = None;
                machine.connect_failed(Instant::now(), e);
            }
        },
        Transmit::Datagram(d) => {
            tracing::trace!(bytes = d.len(), "datagram out");
            if let Some(s) = socket.as_ref() {
                if let Err(e) = s.send(&d).await {
                    tracing::debug!(error = %e, "send failed");
                }
            }
        }
    }
}

/// The server's address for a new session ([`next_address`] of what `name` gives now), or
/// `last` while the lookup fails or takes longer than [`LOOKUP_TIMEOUT`].
async fn lookup(
    (name, port): (&str, u16),
    bind: SocketAddr,
    last: SocketAddr,
    established: bool,
) -> SocketAddr {
    let found = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((name, port))).await;
    let addrs = match found {
        Ok(Ok(addrs)) => reachable(addrs, bind),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot look {name} up again; trying {last}");
            return last;
        }
        Err(_) => {
            tracing::warn!("looking {name} up took over {LOOKUP_TIMEOUT:?}; trying {last}");
            return last;
        }
    };
    match next_address(&addrs, last, established) {
        Some(a) => {
            if a != last {
                tracing::info!(server = %a, was = %last, established, "the next session with {name} goes to another of its addresses");
            }
            a
        }
        None => {
            tracing::warn!(%bind, "{name} has no address that {bind} can reach; trying {last}");
            last
        }
    }
}

async fn client_loop(
    opts: ClientOptions,
    mut machine: Machine,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    observer: Option<(Duration, Observer)>,
) {
    let mut look = Look {
        observer,
        next: Instant::now(),
    };
    let mut socket: Option<UdpSocket> = None;
    let mut server = opts.server;
    let mut connects = 0u64;
    let mut sessions_then = 0u64;
    let mut replies: HashMap<RequestTag, (Reply, u64)> = HashMap::new();
    // Observations: the machine's tag, the caller's tag, where the notices go.
    let mut observers: HashMap<RequestTag, Mailbox> = HashMap::new();
    let mut observer_tags: HashMap<u64, RequestTag> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    let mut open_cmds = true;
    // Groups that wait for the end of a pause, in the order they came.
    let mut deferred: Vec<Group> = Vec::new();
    let start =
        |machine: &mut Machine, replies: &mut HashMap<RequestTag, (Reply, u64)>, g: Group| {
            let tags = machine.request_group(Instant::now(), g.packets, g.timeout);
            for (i, tag) in tags.into_iter().enumerate() {
                replies.insert(tag, (g.reply.clone(), i as u64));
            }
        };
    loop {
        // The waiting groups whose pause is over, in order (a later one never has an
        // earlier end: the pause only grows).
        let now = Instant::now();
        let due = deferred
            .iter()
            .take_while(|g| g.not_before.is_none_or(|t| t <= now))
            .count();
        for g in deferred.drain(..due) {
            start(&mut machine, &mut replies, g);
        }
        // Drain in order: events, then transmits (which may fail a connect, and so make events).
        loop {
            while let Some(ev) = machine.poll_event() {
                match ev {
                    Event::Done { tag, result } => {
                        if observers.contains_key(&tag) && !result.as_ref().is_ok_and(registered) {
                            observers.remove(&tag);
                            observer_tags.retain(|_, t| *t != tag);
                        }
                        if let Some((reply, user_tag)) = replies.remove(&tag) {
                            reply((user_tag, result));
                        }
                    }
                    Event::Notification { tag, packet } => {
                        // The last one (the server ended the observation) closes it here too.
                        let last = !registered(&packet);
                        let delivered = observers
                            .get(&tag)
                            .is_some_and(|to| to.put(Notice::Notification(packet)));
                        if last || !delivered {
                            observers.remove(&tag);
                            observer_tags.retain(|_, t| *t != tag);
                            if !last {
                                // Nobody takes them any more: the next one gets RST.
                                machine.stop_observing(tag);
                            }
                        }
                    }
                    Event::Unobserved { tag } => {
                        if let Some(to) = observers.remove(&tag) {
                            to.put(Notice::Ended);
                        }
                        observer_tags.retain(|_, t| *t != tag);
                    }
                }
            }
            let Some(t) = machine.poll_transmit() else {
                break;
            };
            if matches!(t, Transmit::Connect) {
                connects += 1;
                if let (Some((name, port)), true) = (&opts.resolve, connects > 1) {
                    // Whether a session was established since the last connect.
                    let f = machine.figures();
                    let sessions = f.handshakes + f.resumed;
                    let established = sessions > sessions_then;
                    sessions_then = sessions;
                    server = lookup((name, *port), opts.bind, server, established).await;
                }
            }
            carry_out(t, &mut socket, &mut machine, opts.bind, server).await;
        }
        if machine.is_closed() {
            look.at(&machine, true);
            return;
        }
        look.at(&machine, false);
        let now = Instant::now();
        let mut next = machine
            .poll_timeout(now)
            .unwrap_or(now + Duration::from_secs(3600));
        if look.observer.is_some() {
            next = next.min(look.next);
        }
        if let Some(t) = deferred.first().and_then(|g| g.not_before) {
            next = next.min(t);
        }
        tokio::select! {
            cmd = rx.recv(), if open_cmds => match cmd {
                Some(Cmd::Job(j)) => {
                    let tag = machine.request(Instant::now(), j.packet, j.timeout);
                    replies.insert(tag, (j.reply, j.tag));
                }
                Some(Cmd::Group(g)) => {
                    if g.not_before.is_some_and(|t| t > Instant::now()) || !deferred.is_empty() {
                        // Behind the groups that wait, so that batches go out in order.
                        deferred.push(g);
                    } else {
                        start(&mut machine, &mut replies, g);
                    }
                }
                Some(Cmd::Abort) => {
                    look.at(&machine, true);
                    return;
                }
                Some(Cmd::Figures(tx)) => {
                    let _ = tx.send(machine.figures());
                }
                Some(Cmd::Observe(j, notes)) => {
                    let tag = machine.request(Instant::now(), j.packet, j.timeout);
                    replies.insert(tag, (j.reply, j.tag));
                    observers.insert(tag, notes);
                    observer_tags.insert(j.tag, tag);
                }
                Some(Cmd::Unobserve(user_tag)) => {
                    if let Some(tag) = observer_tags.remove(&user_tag) {
                        machine.stop_observing(tag);
                        observers.remove(&tag);
                    }
                }
                None => {
                    open_cmds = false;
                    machine.close(Instant::now());
                }
            },
            r = async { socket.as_ref().expect("guarded").recv(&mut buf).await }, if socket.is_some() => {
                if let Ok(n) = r {
                    tracing::trace!(bytes = n, "datagram in");
                    machine.handle(Instant::now(), &buf[..n]);
                }
            }
            _ = sleep_until(next.into()) => machine.handle_timeout(Instant::now()),
        }
    }
}

/// Tells the observer, if any, the client's figures every so often.
struct Look {
    observer: Option<(Duration, Observer)>,
    next: Instant,
}

impl Look {
    /// Tells the observer if it is time (or `last`).
    fn at(&mut self, machine: &Machine, last: bool) {
        if let Some((every, f)) = &self.observer {
            let now = Instant::now();
            if last || now >= self.next {
                f(&machine.figures());
                self.next = now + *every;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_default_bind_takes_the_servers_family_and_a_named_one_stays() {
        assert_eq!(bind_for(a("0.0.0.0:0"), a("[::1]:5684")), a("[::]:0"));
        assert_eq!(bind_for(a("0.0.0.0:7000"), a("[::1]:5684")), a("[::]:7000"));
        assert_eq!(bind_for(a("[::]:0"), a("10.0.0.1:5684")), a("0.0.0.0:0"));
        assert_eq!(bind_for(a("0.0.0.0:0"), a("10.0.0.1:5684")), a("0.0.0.0:0"));
        // An address the operator named is theirs: connecting from it says what is wrong.
        assert_eq!(
            bind_for(a("192.168.1.5:0"), a("[::1]:5684")),
            a("192.168.1.5:0")
        );
    }

    #[test]
    fn the_next_session_stays_on_an_address_that_worked_and_moves_on_from_one_that_did_not() {
        let both = [a("[2001:db8::1]:5684"), a("192.0.2.1:5684")];
        assert_eq!(next_address(&both, both[0], true), Some(both[0]));
        assert_eq!(next_address(&both, both[0], false), Some(both[1]));
        assert_eq!(next_address(&both, both[1], false), Some(both[0]));
        // The server moved: its new address, whatever happened before.
        assert_eq!(
            next_address(&both, a("198.51.100.7:5684"), true),
            Some(both[0])
        );
        assert_eq!(next_address(&[], both[0], false), None);
    }

    #[test]
    fn a_named_bind_picks_a_server_address_of_its_family() {
        let both = [a("[2001:db8::1]:5684"), a("192.0.2.1:5684")];
        assert_eq!(pick(both, a("0.0.0.0:0")), Some(both[0]));
        assert_eq!(pick(both, a("192.168.1.5:0")), Some(both[1]));
        assert_eq!(pick(both, a("[fe80::1]:0")), Some(both[0]));
        assert_eq!(pick([both[0]], a("192.168.1.5:0")), None);
        assert_eq!(pick([], a("0.0.0.0:0")), None);
    }
}
