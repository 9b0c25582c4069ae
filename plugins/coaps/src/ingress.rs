//! `coaps-ingress`: a CoAP/DTLS server that takes SenML POSTs, emits them into the host, and
//! answers 2.04 only after every sink it is routed to stored the batch.

use crate::config::IngressConfig;
use coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType};
use gateway_coap::{decode_uint, encode_uint, path_of, response, Config as CoapConfig};
use gateway_coaps_tokio::{Incoming, Responder, Server, ServerConfig, ServerOptions};
use gateway_dtls::ServerSettings;
use gateway_sdk::{
    tracing, ErrorKind, InitContext, Label, PluginError, ReadingId, Source, SourceContext,
    Timestamp,
};
use gateway_senml as senml;
use std::{
    collections::{HashSet, VecDeque},
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

/// A reading's key for de-duplication: its id within its device, so that one device cannot
/// claim ids another will send (and have that one's readings dropped as repeats).
type Key = (Label, ReadingId);

/// Keys come from peers: keep std's keyed hasher, so that no peer can make them collide.
type IdSet = HashSet<Key>;

/// The device name of readings from peers without an identity (`allow_anonymous`).
const ANONYMOUS: &str = "anonymous";

/// Reading keys stored recently, and those in flight.
#[derive(Default)]
struct Seen {
    stored: IdSet,
    order: VecDeque<Key>,
    in_flight: IdSet,
    capacity: usize,
}

impl Seen {
    fn stored(&mut self, ids: &[Key]) {
        for id in ids {
            self.in_flight.remove(id);
            if self.stored.insert(id.clone()) {
                self.order.push_back(id.clone());
            }
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.stored.remove(&old);
            }
        }
    }
    fn failed(&mut self, ids: &[Key]) {
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
            &mut cfg.client_ca_file,
            &mut cfg.client_crl_file,
        ]
        .into_iter()
        .flatten()
        {
            *p = ctx.resolve_path(&*p);
        }
        if let Some(k) = &mut cfg.key_file {
            *k = ctx.private_file("key_file", &*k)?;
        }
        let psk = crate::keys::ingress_psks(ctx, &cfg)?;
        if cfg.client_ca_file.is_none() && psk.is_empty() && !cfg.allow_anonymous {
            return Err(PluginError::config(format!(
                "[{table}] no device can authenticate: give client_ca_file (device certificates) or psk / psk_file; allow_anonymous = true takes readings from anyone, under the device \"{ANONYMOUS}\""
            )));
        }
        warn_about_openings(&table, &cfg);
        let tls = ServerSettings {
            cert_file: cfg.cert_file.clone(),
            key_file: cfg.key_file.clone(),
            client_ca_file: cfg.client_ca_file.clone(),
            require_client_cert: cfg.require_client_cert,
            client_crl_file: cfg.client_crl_file.clone(),
            psk,
            ciphers: cfg.ciphers.clone().unwrap_or_default(),
            mtu: cfg.mtu,
        };
        gateway_dtls::server_context(&tls)
            .map_err(|e| PluginError::config(format!("[{table}] {e}")))?;
        Ok(Ingress { cfg, tls })
    }

    fn run(&mut self, ctx: &SourceContext) -> Result<(), PluginError> {
        let opts = ServerOptions {
            bind: self.cfg.listen,
            max_pending: 1024,
            server: ServerConfig {
                tls: self.tls.clone(),
                coap: CoapConfig {
                    max_body: self.cfg.max_body,
                    separate_after: self.cfg.separate_after,
                    // One peer's block-wise transfers hold at most one largest body; all of
                    // them together at most eight (or one, if that is more).
                    max_reassembly_bytes_per_peer: self.cfg.max_body,
                    max_reassembly_bytes: (8 << 20).max(self.cfg.max_body),
                    ..CoapConfig::default()
                },
                max_sessions: self.cfg.max_sessions,
                max_sessions_per_identity: self.cfg.max_sessions_per_identity,
                max_handshakes: self.cfg.max_handshakes,
                max_handshakes_per_address: self.cfg.max_handshakes_per_address,
                session_idle: self.cfg.session_idle,
                handshake_timeout: self.cfg.handshake_timeout,
                require_identity: !self.cfg.allow_anonymous,
                deny: self.cfg.deny.iter().cloned().collect(),
            },
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
                    resumed = s.resumed.load(Ordering::Relaxed),
                    handshake_failures = s.handshake_failures.load(Ordering::Relaxed),
                    unauthenticated = s.unauthenticated.load(Ordering::Relaxed),
                    denied = s.denied.load(Ordering::Relaxed),
                    evicted_handshakes = s.evicted_handshakes.load(Ordering::Relaxed),
                    evicted_sessions = s.evicted_sessions.load(Ordering::Relaxed),
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
        // The driver admits a session without an identity only with `allow_anonymous`.
        let identity = inc.identity.clone();
        let device: &str = identity.as_deref().unwrap_or(ANONYMOUS);
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
            senml::decode_json(body, self.cfg.max_records, now, device)
        } else {
            senml::decode_cbor(body, self.cfg.max_records, now, device)
        };
        let mut pack = match decoded {
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
        match &identity {
            // The anonymous peers' device name is no device's identity.
            Some(who) if &**who == ANONYMOUS => {
                return bad(
                    ResponseType::Forbidden,
                    "the identity \"anonymous\" is reserved for peers without one",
                )
            }
            // A device speaks for itself only.
            Some(who) => {
                if let Some(r) = pack.readings.iter().find(|r| r.device.as_str() != &**who) {
                    return bad(
                        ResponseType::Forbidden,
                        &format!(
                            "{who} may post readings only for itself, not for {}",
                            r.device
                        ),
                    );
                }
            }
            // A peer without an identity speaks for nobody: whatever base name it sends, its
            // readings are the anonymous device's.
            None => {
                let anonymous = Label::from(ANONYMOUS);
                for r in &mut pack.readings {
                    r.device = anonymous.clone();
                }
            }
        }
        // Drop what was stored already; a batch overlapping one still in flight waits its turn.
        let (fresh, ids) = {
            let mut s = seen.lock().expect("seen");
            let key = |r: &gateway_sdk::Reading| (r.device.clone(), r.id);
            if pack.readings.iter().any(|r| s.in_flight.contains(&key(r))) {
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
                .filter(|r| !s.stored.contains(&key(r)) && in_pack.insert(r.id))
                .collect();
            counters
                .duplicates
                .fetch_add((before - fresh.len()) as u64, Ordering::Relaxed);
            let ids: Vec<Key> = fresh.iter().map(key).collect();
            s.in_flight.extend(ids.iter().cloned());
            (fresh, ids)
        };
        if fresh.is_empty() {
            return reply(code(ResponseType::Changed));
        }
        let n = fresh.len() as u64;
        // The request is answered once: by the acknowledgement, or by a failed emit, whichever
        // comes first (an emit that fails half-way also fails its acknowledgement later).
        let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let peer = inc.peer;
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
                // A sink refused the readings for good (the host kept them in its dead-letter
                // file): so does the server, since resending cannot help. What the sink said
                // stays in the server's log: it may name tables, hosts or paths.
                Err(e) if e.kind == ErrorKind::REJECTED => {
                    seen2.lock().expect("seen").failed(&ids2);
                    counters2.bad_requests.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, readings = n, error = %e.message(), "a sink refused readings for good; the device is told 4.22");
                    responder.respond(
                        id,
                        response(
                            ResponseType::UnprocessableEntity,
                            "the server's store refused these readings",
                        ),
                    );
                }
                Err(e) => {
                    seen2.lock().expect("seen").failed(&ids2);
                    counters2.unavailable.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, readings = n, error = %e.message(), "readings not stored; the device is told to retry");
                    let mut r = response(ResponseType::ServiceUnavailable, "not stored; retry");
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

/// Logs a warning for each setting that lets a peer in without an identity of its own, or
/// under an identity the operator may not have meant to trust. `gateway check` shows them.
fn warn_about_openings(table: &str, cfg: &IngressConfig) {
    if cfg.allow_anonymous {
        tracing::warn!(
            "[{table}] allow_anonymous = true: a peer without a PSK or a client certificate gets readings in, all under the device \"{ANONYMOUS}\"; anyone who can reach {} can add readings there",
            cfg.listen
        );
    }
    if let Some(ca) = &cfg.client_ca_file {
        let certs = std::fs::read_to_string(ca)
            .map(|t| t.matches("-----BEGIN CERTIFICATE-----").count())
            .unwrap_or(0);
        let system = ["/etc/ssl", "/usr/share/ca-certificates", "/etc/pki"]
            .iter()
            .any(|d| ca.starts_with(d));
        if certs > 3 || system {
            tracing::warn!(
                "[{table}] client_ca_file {} holds {certs} CA certificates{}: every certificate any of them issued gets readings in, under its common name; give the CA that issues your devices' certificates only",
                ca.display(),
                if system { " (it looks like the system's trust store)" } else { "" }
            );
        }
    }
    if cfg.client_ca_file.is_some() && cfg.client_crl_file.is_none() && cfg.deny.is_empty() {
        tracing::info!(
            "[{table}] no client_crl_file and no deny list: a lost device's certificate stays valid until it expires (see the README's security model to revoke one)"
        );
    }
}
