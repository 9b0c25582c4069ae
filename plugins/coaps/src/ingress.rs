//! `coaps-ingress`: a CoAP/DTLS server that takes SenML POSTs, emits them into the host, and
//! answers 2.04 only after every sink it is routed to stored the batch.

use crate::config::{hex_key, IngressConfig};
use coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType};
use gateway_coap::{
    core::{decode_uint, encode_uint, path_of, response, Config as CoapConfig},
    driver::{Incoming, Responder, Server, ServerOptions},
    dtls::ServerSettings,
    senml,
};
use gateway_sdk::{
    tracing, ErrorKind, InitContext, PluginError, ReadingId, Source, SourceContext, Timestamp,
};
use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// The source.
pub struct Ingress {
    cfg: IngressConfig,
    tls: ServerSettings,
}

/// Reading ids come from peers: keep std's keyed hasher, so that no peer can make them collide.
type IdSet = HashSet<ReadingId>;

/// Reading ids stored recently, and those in flight.
#[derive(Default)]
struct Seen {
    stored: IdSet,
    order: VecDeque<ReadingId>,
    in_flight: IdSet,
    capacity: usize,
}

impl Seen {
    fn stored(&mut self, ids: &[ReadingId]) {
        for id in ids {
            self.in_flight.remove(id);
            if self.stored.insert(*id) {
                self.order.push_back(*id);
            }
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.stored.remove(&old);
            }
        }
    }
    fn failed(&mut self, ids: &[ReadingId]) {
        for id in ids {
            self.in_flight.remove(id);
        }
    }
}

/// Request and reading counters, logged periodically.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    readings: AtomicU64,
    duplicates: AtomicU64,
    bad_requests: AtomicU64,
    unavailable: AtomicU64,
}

fn code(c: ResponseType) -> Packet {
    response(c, "")
}

impl Source for Ingress {
    const ID: &'static str = "coaps-ingress";
    const DESCRIPTION: &'static str =
        "CoAP/DTLS 1.2 server taking SenML POSTs; answers 2.04 once stored";

    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        let mut cfg: IngressConfig = ctx.parse_config()?;
        let table = ctx.info().table.to_string();
        for p in [
            &mut cfg.cert_file,
            &mut cfg.key_file,
            &mut cfg.client_ca_file,
        ]
        .into_iter()
        .flatten()
        {
            *p = ctx.resolve_path(&*p);
        }
        let mut psk = HashMap::new();
        for e in &cfg.psk {
            let key = hex_key(&e.key).ok_or_else(|| {
                PluginError::config(format!(
                    "[{table}] psk: the key of {:?} must be hex digits",
                    e.identity
                ))
            })?;
            psk.insert(e.identity.clone(), key);
        }
        let tls = ServerSettings {
            cert_file: cfg.cert_file.clone(),
            key_file: cfg.key_file.clone(),
            client_ca_file: cfg.client_ca_file.clone(),
            require_client_cert: cfg.require_client_cert,
            psk,
            ciphers: cfg.ciphers.clone().unwrap_or_default(),
            mtu: cfg.mtu,
        };
        gateway_coap::dtls::server_context(&tls)
            .map_err(|e| PluginError::config(format!("[{table}] {e}")))?;
        Ok(Ingress { cfg, tls })
    }

    fn run(&mut self, ctx: &SourceContext) -> Result<(), PluginError> {
        let opts = ServerOptions {
            bind: self.cfg.listen,
            tls: self.tls.clone(),
            coap: CoapConfig {
                max_body: self.cfg.max_body,
                separate_after: self.cfg.separate_after,
                ..CoapConfig::default()
            },
            max_sessions: self.cfg.max_sessions,
            max_handshakes: self.cfg.max_handshakes,
            session_idle: self.cfg.session_idle,
            handshake_timeout: self.cfg.handshake_timeout,
            max_pending: 1024,
        };
        let server = Server::start(opts).map_err(|e| PluginError::retry(e.to_string()))?;
        tracing::info!(listen = %server.local_addr, path = %self.cfg.path, "CoAP/DTLS ingress listening");
        let seen = Arc::new(Mutex::new(Seen {
            capacity: self.cfg.dedup_ids,
            ..Seen::default()
        }));
        let counters = Arc::new(Counters::default());
        let mut last_log = Instant::now();
        loop {
            if ctx.is_stopping() {
                // The sinks keep writing while sources stop: wait (a little) for the batches in
                // flight, so their devices get the 2.04 and do not send them again.
                let deadline = Instant::now() + Duration::from_secs(5);
                while !seen.lock().expect("seen").in_flight.is_empty() && Instant::now() < deadline
                {
                    if let Ok(inc) = server.requests.recv_timeout(Duration::from_millis(20)) {
                        let mut r = response(ResponseType::ServiceUnavailable, "shutting down");
                        r.add_option(CoapOption::MaxAge, encode_uint(self.cfg.retry_after));
                        server.responder.respond(inc.id, r);
                    }
                }
                tracing::info!("ingress stopped");
                return Ok(());
            }
            match server.requests.recv_timeout(Duration::from_millis(100)) {
                Ok(inc) => {
                    counters.requests.fetch_add(1, Ordering::Relaxed);
                    self.handle(ctx, &server.responder, inc, &seen, &counters);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(PluginError::fatal("the CoAP server stopped"))
                }
            }
            if last_log.elapsed() >= Duration::from_secs(60) {
                last_log = Instant::now();
                let s = &server.stats;
                tracing::info!(
                    requests = counters.requests.load(Ordering::Relaxed),
                    readings = counters.readings.load(Ordering::Relaxed),
                    duplicates = counters.duplicates.load(Ordering::Relaxed),
                    bad_requests = counters.bad_requests.load(Ordering::Relaxed),
                    unavailable = counters.unavailable.load(Ordering::Relaxed),
                    sessions = s.sessions.load(Ordering::Relaxed),
                    handshake_failures = s.handshake_failures.load(Ordering::Relaxed),
                    cookies_sent = s.cookies_sent.load(Ordering::Relaxed),
                    "ingress stats"
                );
            }
        }
    }
}

impl Ingress {
    fn handle(
        &self,
        ctx: &SourceContext,
        responder: &Responder,
        inc: Incoming,
        seen: &Arc<Mutex<Seen>>,
        counters: &Arc<Counters>,
    ) {
        let id = inc.id;
        let reply = |p: Packet| responder.respond(id, p);
        let bad = |c: ResponseType, why: &str| {
            counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %inc.peer, code = ?c, why, "request refused");
            reply(response(c, why));
        };
        let path = path_of(&inc.packet);
        let method = match inc.packet.header.code {
            MessageClass::Request(m) => m,
            _ => return bad(ResponseType::BadRequest, "not a request"),
        };
        if path == ".well-known/core" {
            if method != RequestType::Get {
                return bad(ResponseType::MethodNotAllowed, "GET only");
            }
            let mut r = response(
                ResponseType::Content,
                &format!(
                    "</{}>;rt=\"senml\";ct=\"110 112\";if=\"core.b\"",
                    self.cfg.path.trim_matches('/')
                ),
            );
            r.add_option(CoapOption::ContentFormat, encode_uint(40));
            return reply(r);
        }
        if path != self.cfg.path.trim_matches('/') {
            return bad(ResponseType::NotFound, "no such resource");
        }
        if method != RequestType::Post {
            return bad(ResponseType::MethodNotAllowed, "POST only");
        }
        let cf = inc
            .packet
            .get_first_option(CoapOption::ContentFormat)
            .and_then(|v| decode_uint(v));
        let body = &inc.packet.payload;
        let identity = inc.identity.clone();
        let device = identity.clone().unwrap_or_else(|| "anonymous".to_owned());
        let now = Timestamp::now();
        let json = match cf {
            Some(110) => true,
            Some(112) => false,
            None => body.first() == Some(&b'['),
            Some(_) => {
                return bad(
                    ResponseType::UnsupportedContentFormat,
                    "SenML JSON (110) or CBOR (112) only",
                )
            }
        };
        let decoded = if json {
            senml::decode_json(body, self.cfg.max_records, now, &device)
        } else {
            senml::decode_cbor(body, self.cfg.max_records, now, &device)
        };
        let pack = match decoded {
            Ok(p) => p,
            Err(senml::DecodeError::TooMany(n)) => {
                let mut r = response(
                    ResponseType::RequestEntityTooLarge,
                    &format!("more than {n} records"),
                );
                r.add_option(CoapOption::Size1, encode_uint(self.cfg.max_body as u32));
                counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                return reply(r);
            }
            Err(e) => return bad(ResponseType::BadRequest, &format!("SenML: {e}")),
        };
        if let Some(who) = &identity {
            if let Some(r) = pack.readings.iter().find(|r| r.device.as_str() != who) {
                return bad(
                    ResponseType::Forbidden,
                    &format!(
                        "{who} may post readings only for itself, not for {}",
                        r.device
                    ),
                );
            }
        }
        // Drop what was stored already; a batch overlapping one still in flight waits its turn.
        let (fresh, ids) = {
            let mut s = seen.lock().expect("seen");
            if pack.readings.iter().any(|r| s.in_flight.contains(&r.id)) {
                drop(s);
                counters.unavailable.fetch_add(1, Ordering::Relaxed);
                let mut r = response(
                    ResponseType::ServiceUnavailable,
                    "the same readings are being stored; retry",
                );
                r.add_option(CoapOption::MaxAge, encode_uint(1));
                return reply(r);
            }
            let before = pack.readings.len();
            // Drop what was stored already, and repeats of an id within this pack.
            let mut in_pack = HashSet::with_capacity(before);
            let fresh: Vec<_> = pack
                .readings
                .into_iter()
                .filter(|r| !s.stored.contains(&r.id) && in_pack.insert(r.id))
                .collect();
            counters
                .duplicates
                .fetch_add((before - fresh.len()) as u64, Ordering::Relaxed);
            let ids: Vec<ReadingId> = fresh.iter().map(|r| r.id).collect();
            s.in_flight.extend(ids.iter().copied());
            (fresh, ids)
        };
        if fresh.is_empty() {
            return reply(code(ResponseType::Changed));
        }
        let n = fresh.len() as u64;
        // The request is answered once: by the acknowledgement, or by a failed emit, whichever
        // comes first (an emit that fails half-way also fails its acknowledgement later).
        let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (responder, seen2, counters2, retry_after, answered2) = (
            responder.clone(),
            seen.clone(),
            counters.clone(),
            self.cfg.retry_after,
            answered.clone(),
        );
        let ids2 = ids.clone();
        let sent = ctx.emit_with(fresh, move |outcome| {
            if answered2.swap(true, Ordering::SeqCst) {
                return;
            }
            match outcome {
                Ok(()) => {
                    seen2.lock().expect("seen").stored(&ids2);
                    counters2.readings.fetch_add(n, Ordering::Relaxed);
                    responder.respond(id, code(ResponseType::Changed));
                }
                // A sink refused the readings for good: so does the server (resending cannot help).
                Err(e) if e.kind == ErrorKind::REJECTED => {
                    seen2.lock().expect("seen").failed(&ids2);
                    counters2.bad_requests.fetch_add(1, Ordering::Relaxed);
                    responder.respond(
                        id,
                        response(
                            ResponseType::BadRequest,
                            &format!("refused: {}", e.message()),
                        ),
                    );
                }
                Err(e) => {
                    seen2.lock().expect("seen").failed(&ids2);
                    counters2.unavailable.fetch_add(1, Ordering::Relaxed);
                    let mut r = response(
                        ResponseType::ServiceUnavailable,
                        &format!("not stored: {}", e.message()),
                    );
                    r.add_option(CoapOption::MaxAge, encode_uint(retry_after));
                    responder.respond(id, r);
                }
            }
        });
        if let Err(e) = sent {
            if answered.swap(true, Ordering::SeqCst) {
                return;
            }
            seen.lock().expect("seen").failed(&ids);
            let why = if e.kind == ErrorKind::STOPPED {
                "shutting down"
            } else {
                "cannot take readings now"
            };
            let mut r = response(ResponseType::ServiceUnavailable, why);
            r.add_option(CoapOption::MaxAge, encode_uint(retry_after));
            reply(r);
        }
    }
}
