//! The CoAP-over-DTLS client as a sans-IO state machine: one [`Client`] talks to one server,
//! sets its DTLS session up when there is something to send, and sets it up again when the
//! session is lost or goes stale.
//!
//! Inputs: [`Client::request`], [`Client::handle`] (a datagram from the server),
//! [`Client::handle_timeout`], [`Client::connect_failed`], [`Client::close`]. Outputs:
//! [`Client::poll_event`] (finished requests), [`Client::poll_transmit`] (what to do on the
//! socket, in order), [`Client::poll_timeout`]. After every input, drain the events, then the
//! transmits, then ask for the timeout.
//!
//! The session rules live here, so that they are tested with simulated time:
//! - a session is set up on the first request, and again on the next request after one is
//!   lost, each time from a new socket ([`Transmit::Connect`]); the last session established
//!   is offered for resumption (an abbreviated handshake: two small flights instead of
//!   certificate chains), unless the handshake failed or the session broke;
//! - a request that ends without any answer, while nothing else came from the server since it
//!   went out, means the session is probably stale (the server restarted and drops what it
//!   cannot decrypt): the session is dropped, and the next request reconnects. On a merely
//!   lossy path other answers keep arriving, and the session is kept;
//! - each request has a timeout of its caller's, counted from when it gets one of the NSTART
//!   slots (at once, or when an earlier request finishes); a handshake has
//!   `handshake_timeout`.

use crate::{
    context::{client_context, ClientSettings},
    session::{Session, State},
    DtlsError,
};
use gateway_coap::{
    coap_lite::{Packet, ResponseType},
    response, ClientError, Code, Config as CoapConfig, Endpoint, Event as CoapEvent, Token,
};
use openssl::ssl::{SslContext, SslSession};
use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

/// Client settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The server's host name or IP as in the URI, checked against its certificate.
    pub host: String,
    /// Check `host` against the certificate (off only for PSK).
    pub verify_host: bool,
    /// DTLS settings.
    pub tls: ClientSettings,
    /// CoAP transmission parameters.
    pub coap: CoapConfig,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
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
    /// Not sent: an earlier request of its group did not succeed.
    #[error("not sent: an earlier request of the same group did not succeed")]
    Cancelled,
    /// Socket trouble.
    #[error("socket: {0}")]
    Io(String),
}

/// Identifies a request given to [`Client::request`] in its [`Event`].
pub type RequestTag = u64;

/// What the client tells its driver.
#[derive(Debug)]
pub enum Event {
    /// A request finished: its final response, or why there is none.
    Done {
        /// What [`Client::request`] returned.
        tag: RequestTag,
        /// The outcome.
        result: Result<Packet, RequestError>,
    },
    /// A notification on an observation: the request `tag` was a GET with `Observe: 0` and
    /// its [`Event::Done`] carried an Observe option. One without an Observe option, or not
    /// 2.xx, is the last.
    Notification {
        /// The registering request's tag.
        tag: RequestTag,
        /// The notification.
        packet: Packet,
    },
    /// An observation ended without a last notification: its session was lost (the server
    /// forgot it too), or [`Client::stop_observing`] was called.
    Unobserved {
        /// The registering request's tag.
        tag: RequestTag,
    },
}

/// What to do on the socket, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Transmit {
    /// Open a new socket to the server (a new local port): a new session starts, and what
    /// follows goes on the new socket. If that fails, call [`Client::connect_failed`].
    Connect,
    /// Send this datagram on the current socket.
    Datagram(Vec<u8>),
}

struct Job {
    tag: RequestTag,
    /// Its group, if it has one (see [`Client::request_group`]).
    group: Option<u64>,
    packet: Packet,
    timeout: Duration,
    /// Set when the request gets a slot: its timeout runs from then.
    deadline: Option<Instant>,
    enqueued: Instant,
}

impl Job {
    /// When the request was handed to the client.
    fn sent(&self) -> Instant {
        self.deadline.map_or(self.enqueued, |d| d - self.timeout)
    }
}

struct Link {
    session: Session,
    /// When the handshake's latest flight went out (`None` once OpenSSL sent one again: its
    /// answer would not say which it answers), until the session is established.
    flight_at: Option<Instant>,
    /// When the server last sent something this session could decrypt: proof it still knows
    /// the session.
    heard: Option<Instant>,
}

impl Link {
    /// Nothing came from the server since `since`: the session is probably stale.
    fn silent_since(&self, since: Instant) -> bool {
        // A datagram heard at the instant the request went out answered an earlier one.
        self.heard.is_none_or(|h| h <= since)
    }
}

/// What a client counted, for a metrics page ([`Client::figures`]).
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Whether a session is established now.
    pub connected: bool,
    /// Full handshakes that established a session.
    pub handshakes: u64,
    /// Abbreviated handshakes that resumed the last session.
    pub resumed: u64,
    /// Handshakes that failed and sessions that ended in an error, by reason (indexed as
    /// [`crate::server::FAILURE_REASONS`]).
    pub failures: [u64; 4],
    /// Sessions given up because CoAP heard nothing back on them.
    pub stale: u64,
    /// The CoAP layer's counters (retransmissions, timeouts, ...).
    pub coap: gateway_coap::Stats,
    /// The retransmission timeout measured for the server (`None` before the first request).
    pub rto: Option<Duration>,
    /// Requests sent and not finished, and requests waiting for a slot or a session.
    pub in_flight: (usize, usize),
    /// What the last session that was established negotiated.
    pub session: Option<SessionInfo>,
}

/// What a client's DTLS session negotiated ([`Figures::session`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionInfo {
    /// `DTLSv1.2`.
    pub version: String,
    /// The cipher suite, OpenSSL's name.
    pub cipher: String,
    /// Whether the handshake resumed an earlier session.
    pub resumed: bool,
    /// The server's certificate (`None` with a PSK): `CN=..., valid from .. to ..`.
    pub peer: Option<String>,
}

/// A CoAP-over-DTLS client to one server, without sockets. See the module documentation.
pub struct Client {
    figures: Figures,
    cfg: Config,
    ctx: SslContext,
    endpoint: Endpoint<()>,
    link: Option<Link>,
    /// The last session established, offered again at the next connect.
    resume: Option<SslSession>,
    /// Whether the current link's handshake was seen to complete.
    established: bool,
    queued: VecDeque<Job>,
    waiting: HashMap<Token, Job>,
    /// Observations held: the token of each, and the tag of the request that registered it.
    observed: HashMap<Token, RequestTag>,
    next_tag: RequestTag,
    next_group: u64,
    events: VecDeque<Event>,
    out: VecDeque<Transmit>,
    closing: bool,
    closed: bool,
}

impl Client {
    /// A client with `cfg`'s settings (the DTLS context is built and checked here: the CA,
    /// certificate and key files are read). It connects on the first request. `rng` gives CoAP
    /// message ids and tokens.
    pub fn new(cfg: Config, rng: Box<dyn FnMut() -> u64 + Send>) -> Result<Client, DtlsError> {
        let ctx = client_context(&cfg.tls)?;
        Ok(Client::with_context(cfg, ctx, rng))
    }

    /// [`Client::new`] with a context already built from `cfg.tls` (by
    /// [`crate::client_context`]): many clients with the same settings share one, and reading
    /// the files once saves most of what setting a client up costs.
    pub fn with_context(
        cfg: Config,
        ctx: SslContext,
        rng: Box<dyn FnMut() -> u64 + Send>,
    ) -> Client {
        Client {
            figures: Figures::default(),
            ctx,
            endpoint: Endpoint::new(cfg.coap.clone(), rng),
            cfg,
            link: None,
            resume: None,
            established: false,
            queued: VecDeque::new(),
            waiting: HashMap::new(),
            observed: HashMap::new(),
            next_tag: 0,
            next_group: 0,
            events: VecDeque::new(),
            out: VecDeque::new(),
            closing: false,
            closed: false,
        }
    }

    /// Sends a confirmable request; its final response comes as an [`Event::Done`] with the tag
    /// returned here, at the latest `timeout` from `now` (from when it may start, with NSTART
    /// requests in flight; `timeout` per block for a body that goes block-wise). Several may be
    /// in flight at once.
    pub fn request(&mut self, now: Instant, packet: Packet, timeout: Duration) -> RequestTag {
        let tag = self.enqueue(now, packet, timeout, None);
        self.drive(now);
        tag
    }

    /// Sends requests as a group: they go out in order, at most NSTART at a time (the CoAP
    /// configuration's `nstart`), and at the first that does not succeed (an error, or a
    /// response that is not 2.xx), those that have not gone out yet are dropped and finish with
    /// [`RequestError::Cancelled`]; those on their way finish as they do.
    pub fn request_group(
        &mut self,
        now: Instant,
        packets: Vec<Packet>,
        timeout: Duration,
    ) -> Vec<RequestTag> {
        let group = self.next_group;
        self.next_group += 1;
        let tags = packets
            .into_iter()
            .map(|p| self.enqueue(now, p, timeout, Some(group)))
            .collect();
        self.drive(now);
        tags
    }

    fn enqueue(
        &mut self,
        now: Instant,
        packet: Packet,
        timeout: Duration,
        group: Option<u64>,
    ) -> RequestTag {
        let tag = self.next_tag;
        self.next_tag += 1;
        // The caller's timeout is for one exchange: a block-wise request has one per block
        // (else a large body on a slow link could never arrive, restarting from its first
        // block at every try).
        let exchanges = self.cfg.coap.exchanges_for(packet.payload.len());
        const DAY: Duration = Duration::from_secs(86_400);
        let timeout = timeout
            .saturating_mul(u32::try_from(exchanges).unwrap_or(u32::MAX))
            .min(timeout.max(DAY));
        let job = Job {
            tag,
            group,
            packet,
            timeout,
            deadline: None,
            enqueued: now,
        };
        if self.closing {
            self.finish(job, Err(RequestError::Stopped));
        } else {
            self.queued.push_back(job);
        }
        tag
    }

    /// A datagram from the server, on the current socket.
    pub fn handle(&mut self, now: Instant, datagram: &[u8]) {
        if let Some(l) = self.link.as_mut() {
            let (progress, was_completed) =
                (l.session.last_progress(), l.session.handshake_completed());
            for data in l.session.handle_datagram(now, datagram) {
                l.heard = Some(now);
                self.endpoint.handle_datagram(now, (), &data);
            }
            // Completed, not established: the server's close_notify may follow its Finished in
            // the same datagram.
            if !was_completed && l.session.handshake_completed() {
                // The server's Finished is word from it: a request whose clock ran out while
                // the handshake went on did not go unanswered on this session.
                l.heard = Some(now);
                // The server's Finished, the answer to the client's last flight: a round trip
                // that is authenticated (a datagram anyone can forge, such as junk or a
                // HelloVerifyRequest, completes no handshake) and not ambiguous when that
                // flight went once, before OpenSSL's first timer (1 s). The first requests'
                // retransmission timeout starts from it.
                if let Some(at) = l.flight_at.take() {
                    let rtt = now.saturating_duration_since(at);
                    if rtt < crate::session::FIRST_FLIGHT_TIMEOUT {
                        self.endpoint.round_trip(now, (), rtt);
                    }
                }
            } else if l.session.last_progress() != progress {
                // The handshake moved on: the client's next flight goes out now.
                l.flight_at = Some(now);
            }
        }
        self.drive(now);
    }

    /// Timers: DTLS and CoAP retransmissions, the handshake's and the requests' deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(l) = self.link.as_mut() {
            if l.session.handle_timeout(now) {
                l.flight_at = None;
            }
            l.session.check_deadline(now, self.cfg.handshake_timeout);
        }
        self.endpoint.handle_timeout(now);
        self.drive(now);
    }

    /// The driver could not open the socket that [`Transmit::Connect`] asked for: the requests
    /// waiting for the session fail with `error`.
    pub fn connect_failed(&mut self, now: Instant, error: RequestError) {
        self.link = None;
        self.forget_server();
        self.fail_all(&error);
        self.drive(now);
    }

    /// No more requests: the client finishes those in flight, then closes the session with a
    /// close_notify. [`Client::is_closed`] says when it is done.
    pub fn close(&mut self, now: Instant) {
        self.closing = true;
        self.drive(now);
    }

    /// Closed: nothing more will happen.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// What the client counted so far, and its state now.
    pub fn figures(&self) -> Figures {
        Figures {
            connected: self.is_connected(),
            coap: self.endpoint.stats().clone(),
            rto: self.endpoint.rto_estimate(&()),
            in_flight: self.in_flight(),
            ..self.figures.clone()
        }
    }

    /// Requests sent on the session and not finished; and those waiting for a session or,
    /// on one, for an NSTART slot (the CoAP endpoint holds them back: they have no deadline
    /// yet: see `stamp`).
    fn in_flight(&self) -> (usize, usize) {
        let sent = self
            .waiting
            .values()
            .filter(|j| j.deadline.is_some())
            .count();
        (sent, self.queued.len() + self.waiting.len() - sent)
    }

    /// Whether a session is established now.
    pub fn is_connected(&self) -> bool {
        self.link
            .as_ref()
            .is_some_and(|l| l.session.is_established())
    }

    /// The next finished request.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next thing to do on the socket.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// When to call [`Client::handle_timeout`] next (`None`: nothing to wait for). OpenSSL's
    /// handshake timer is read relative to `now` (it runs on the real clock).
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let link = self.link.as_ref();
        [
            self.endpoint.poll_timeout(),
            link.and_then(|l| l.session.timeout()).map(|d| now + d),
            link.filter(|l| !l.session.is_established())
                .map(|l| l.session.started() + self.cfg.handshake_timeout),
            self.waiting
                .values()
                .chain(self.queued.iter())
                .filter_map(|j| j.deadline)
                .min(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|t| t.max(now))
    }

    /// Stops taking notifications on the observation request `tag` registered: the server
    /// gets RST at its next one (RFC 7641 §3.6), and [`Event::Unobserved`] follows here.
    pub fn stop_observing(&mut self, tag: RequestTag) {
        let token = self
            .observed
            .iter()
            .find(|(_, t)| **t == tag)
            .map(|(k, _)| k.clone());
        if let Some(token) = token {
            self.observed.remove(&token);
            self.endpoint.stop_observing((), &token);
            self.events.push_back(Event::Unobserved { tag });
        }
    }

    fn finish(&mut self, job: Job, result: Result<Packet, RequestError>) {
        let failed = match &result {
            Ok(p) => !Code::of(p).is_some_and(Code::is_success),
            Err(e) => *e != RequestError::Cancelled,
        };
        self.events.push_back(Event::Done {
            tag: job.tag,
            result,
        });
        if let Some(g) = job.group.filter(|_| failed) {
            self.cancel_group(g);
        }
    }

    /// Drops group `g`'s requests that have not gone out.
    fn cancel_group(&mut self, g: u64) {
        let (cancel, keep): (VecDeque<Job>, VecDeque<Job>) =
            self.queued.drain(..).partition(|j| j.group == Some(g));
        self.queued = keep;
        let mut cancelled = Vec::from(cancel);
        let tokens: Vec<Token> = self
            .waiting
            .iter()
            .filter(|(_, j)| j.group == Some(g))
            .map(|(t, _)| t.clone())
            .collect();
        for t in tokens {
            if self.endpoint.cancel((), &t).is_some() {
                cancelled.extend(self.waiting.remove(&t));
            }
        }
        cancelled.sort_by_key(|j| j.tag);
        for j in cancelled {
            self.finish(j, Err(RequestError::Cancelled));
        }
    }

    fn fail_all(&mut self, error: &RequestError) {
        let jobs: Vec<Job> = self
            .waiting
            .drain()
            .map(|(_, j)| j)
            .chain(self.queued.drain(..))
            .collect();
        for j in jobs {
            self.finish(j, Err(error.clone()));
        }
    }

    /// Moves the session's records to the output.
    fn flush(&mut self) {
        if let Some(l) = self.link.as_mut() {
            while let Some(d) = l.session.poll_transmit() {
                self.out.push_back(Transmit::Datagram(d));
            }
        }
    }

    /// Closes the DTLS session (the next request reconnects) and forgets the CoAP exchanges
    /// with the server; the requests still waiting fail now, not at their deadlines.
    fn drop_session(&mut self, why: &str) {
        // A session that ended in this very input (an alert, a close_notify) is not stale: it
        // ended, and that is for `on_link_closed` (its error counted, a broken session not
        // offered again).
        if let Some(State::Closed(e)) = self.link.as_ref().map(|l| l.session.state().clone()) {
            self.on_link_closed(e);
            return;
        }
        self.figures.stale += 1;
        // Requests still waiting for an NSTART slot never went out on this session: they wait
        // for the next one instead of failing with it.
        let unsent: Vec<Token> = self
            .waiting
            .iter()
            .filter(|(_, j)| j.deadline.is_none())
            .map(|(t, _)| t.clone())
            .collect();
        let mut back = Vec::new();
        for t in unsent {
            if let Some(packet) = self.endpoint.cancel((), &t) {
                if let Some(mut job) = self.waiting.remove(&t) {
                    job.packet = packet;
                    back.push(job);
                }
            }
        }
        back.sort_by_key(|j| std::cmp::Reverse(j.tag));
        for job in back {
            self.queued.push_front(job);
        }
        if let Some(l) = self.link.as_mut() {
            tracing::info!("dropping the DTLS session after {why}; the next request reconnects");
            l.session.close();
            self.flush();
            self.link = None;
        }
        self.forget_server();
        while let Some(ev) = self.endpoint.poll_event() {
            if let CoapEvent::Response { token, result, .. } = ev {
                if let Some(job) = self.waiting.remove(&token) {
                    self.finish(job, result.map_err(RequestError::Coap));
                }
            }
        }
    }

    fn connect(&mut self, now: Instant) {
        let session = Session::client(
            &self.ctx,
            &self.cfg.host,
            self.cfg.tls.mtu,
            self.cfg.verify_host,
            self.resume.as_ref(),
            now,
        );
        match session {
            Ok(session) => {
                tracing::debug!(resuming = self.resume.is_some(), "DTLS handshake started");
                self.out.push_back(Transmit::Connect);
                self.link = Some(Link {
                    session,
                    flight_at: Some(now),
                    heard: None,
                });
                self.established = false;
            }
            Err(e) => self.fail_all(&RequestError::Dtls(e)),
        }
    }

    /// Everything that follows from an input: connect, hand queued requests to CoAP, collect
    /// answers, apply the stale-session and deadline rules, and queue what goes out.
    fn drive(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        loop {
            if self.link.is_none() && !self.queued.is_empty() {
                self.connect(now);
            }
            if let Some(l) = self.link.as_mut() {
                // Even if the session ended in the datagram that completed it: it was set up,
                // and it ended cleanly or not as any other (`on_link_closed`).
                if l.session.handshake_completed() && !self.established {
                    self.established = true;
                    if l.session.resumed() {
                        self.figures.resumed += 1;
                    } else {
                        self.figures.handshakes += 1;
                    }
                    tracing::debug!(resumed = l.session.resumed(), cipher = ?l.session.cipher(), "DTLS session established");
                    self.figures.session = Some(SessionInfo {
                        version: l.session.version().unwrap_or("").to_owned(),
                        cipher: l.session.cipher().unwrap_or("").to_owned(),
                        resumed: l.session.resumed(),
                        peer: l.session.peer_certificate(),
                    });
                    self.resume = l.session.ssl_session();
                }
                if l.session.is_established() {
                    // A request whose clock ran out while it waited (for the handshake, say)
                    // stays queued, and times out below unsent: sent now, it would reach the
                    // server after its caller was told it failed.
                    let mut late = VecDeque::new();
                    while let Some(mut job) = self.queued.pop_front() {
                        if job.deadline.is_some_and(|d| d <= now) {
                            late.push_back(job);
                            continue;
                        }
                        // The endpoint keeps the request for its retransmissions; nothing else
                        // needs it.
                        let packet = std::mem::replace(&mut job.packet, Packet::new());
                        let token = self.endpoint.request(now, (), packet, true);
                        tracing::trace!(tag = job.tag, "request handed to CoAP");
                        self.waiting.insert(token, job);
                    }
                    self.queued = late;
                }
            }
            let mut stale = false;
            while let Some(ev) = self.endpoint.poll_event() {
                match ev {
                    CoapEvent::Notification { token, packet, .. } => {
                        if let Some(&tag) = self.observed.get(&token) {
                            if gateway_coap::observe_of(&packet).is_none()
                                || !Code::of(&packet).is_some_and(Code::is_success)
                            {
                                self.observed.remove(&token);
                            }
                            self.events.push_back(Event::Notification { tag, packet });
                        }
                    }
                    CoapEvent::Deregistered { .. } => {}
                    CoapEvent::Response { token, result, .. } => {
                        if let Some(job) = self.waiting.remove(&token) {
                            tracing::trace!(tag = job.tag, ok = result.is_ok(), "request finished");
                            if self.endpoint.is_observing((), &token) {
                                self.observed.insert(token.clone(), job.tag);
                            }
                            // No answer at all, and nothing else from the server either since
                            // the request went out: set the session up again.
                            if matches!(result, Err(ClientError::Timeout))
                                && self
                                    .link
                                    .as_ref()
                                    .is_none_or(|l| l.silent_since(job.sent()))
                            {
                                stale = true;
                            }
                            self.finish(job, result.map_err(RequestError::Coap));
                        }
                    }
                    // This client serves nothing: refuse what the server asks.
                    CoapEvent::Request { id, .. } => {
                        self.endpoint.respond(
                            now,
                            id,
                            response(ResponseType::MethodNotAllowed, ""),
                        );
                    }
                }
            }
            // Once no request that went out is left (those waiting for a slot go on the next
            // session).
            if stale && self.waiting.values().all(|j| j.deadline.is_none()) {
                self.drop_session("CoAP got no answer");
            }
            self.expire(now);
            if self.link.is_some() {
                while let Some((_, bytes)) = self.endpoint.poll_transmit() {
                    let l = self.link.as_mut().expect("checked");
                    if let Err(e) = l.session.send(&bytes) {
                        tracing::debug!(error = %e, "a CoAP message could not be sent");
                        break;
                    }
                }
                self.flush();
                let l = self.link.as_ref().expect("checked");
                if let State::Closed(e) = l.session.state().clone() {
                    self.on_link_closed(e);
                } else if l.session.is_established() && !self.queued.is_empty() {
                    continue;
                }
            } else {
                while self.endpoint.poll_transmit().is_some() {}
            }
            if self.closing && self.waiting.is_empty() && self.queued.is_empty() {
                if let Some(l) = self.link.as_mut() {
                    l.session.close();
                    self.flush();
                    self.link = None;
                }
                self.closed = true;
            }
            // A session dropped with requests left over: set the next one up now.
            if self.link.is_none() && !self.queued.is_empty() && !self.closed {
                continue;
            }
            // A slot freed by the transmits above starts its request's clock now.
            self.stamp(now);
            return;
        }
    }

    /// Requests past their caller's deadline fail. If the server has said nothing since they
    /// went out, the session is dropped too: it is probably stale (the server restarted). A
    /// late request on a lossy path that still answers others keeps the session.
    fn expire(&mut self, now: Instant) {
        let late: Vec<Token> = self
            .waiting
            .iter()
            .filter(|(_, j)| j.deadline.is_some_and(|d| d <= now))
            .map(|(t, _)| t.clone())
            .collect();
        if !late.is_empty() {
            let mut silent = false;
            for t in late {
                // Its CoAP exchange ends too: it must not hold an NSTART slot.
                self.endpoint.abandon(now, (), &t);
                if let Some(j) = self.waiting.remove(&t) {
                    silent |= self.link.as_ref().is_some_and(|l| l.silent_since(j.sent()));
                    let timeout = j.timeout;
                    self.finish(j, Err(RequestError::Timeout(timeout)));
                }
            }
            if silent {
                self.drop_session("a request timed out with no word from the server");
            }
        }
        let (late, keep): (VecDeque<Job>, VecDeque<Job>) = self
            .queued
            .drain(..)
            .partition(|j| j.deadline.is_some_and(|d| d <= now));
        self.queued = keep;
        for j in Vec::from(late) {
            let timeout = j.timeout;
            self.finish(j, Err(RequestError::Timeout(timeout)));
        }
    }

    /// Starts the clocks of the requests that have an NSTART slot now, oldest first: as the
    /// CoAP endpoint starts them.
    fn stamp(&mut self, now: Instant) {
        let jobs = || self.queued.iter().chain(self.waiting.values());
        let active = jobs().filter(|j| j.deadline.is_some()).count();
        let free = self.cfg.coap.nstart.max(1).saturating_sub(active);
        if free == 0 {
            return;
        }
        let mut next: Vec<RequestTag> = jobs()
            .filter(|j| j.deadline.is_none())
            .map(|j| j.tag)
            .collect();
        next.sort_unstable();
        next.truncate(free);
        for j in self.queued.iter_mut().chain(self.waiting.values_mut()) {
            if next.contains(&j.tag) {
                j.deadline = Some(now + j.timeout);
            }
        }
    }

    /// Forgets the CoAP state of the session that ended; its observations end with it.
    fn forget_server(&mut self) {
        self.endpoint.forget_peer(());
        for (_, tag) in self.observed.drain() {
            self.events.push_back(Event::Unobserved { tag });
        }
    }

    fn on_link_closed(&mut self, e: DtlsError) {
        tracing::warn!(error = %e, "DTLS session ended");
        if e != DtlsError::Closed {
            self.figures.failures[crate::server::failure_reason(&e)] += 1;
        }
        if !self.established || e != DtlsError::Closed {
            // Neither a handshake that failed nor a session that broke is offered again.
            self.resume = None;
        }
        self.fail_all(&RequestError::Dtls(e));
        self.forget_server();
        while self.endpoint.poll_event().is_some() {}
        self.link = None;
    }
}
