//! `coaps-ingress`: a CoAP/DTLS server that takes SenML POSTs, emits them into the host, and
//! answers 2.04 only after every sink it is routed to stored the batch.

use crate::config::IngressConfig;
use crate::request::{self, Admitted, Key, Refused, Route, Seen, ANONYMOUS};
use gateway_coap::{retry_later, Code, Config as CoapConfig, RequestId};
use gateway_coaps_tokio::{Incoming, Responder, Server, ServerConfig, ServerOptions};
use gateway_dtls::ServerSettings;
use gateway_sdk::{
    tracing, ErrorKind, InitContext, PluginError, Reading, Source, SourceContext, Timestamp,
};
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// The source.
pub struct Ingress {
    cfg: IngressConfig,
    tls: ServerSettings,
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
        let seen = Arc::new(Mutex::new(Seen::new(self.cfg.dedup_ids)));
        let counters = Arc::new(Counters::default());
        let mut last_log = Instant::now();
        loop {
            if ctx.is_stopping() {
                // The sinks keep writing while sources stop: wait (a little) for the batches in
                // flight, so their devices get the 2.04 and do not send them again.
                let deadline = Instant::now() + Duration::from_secs(5);
                while seen.lock().expect("seen").busy() && Instant::now() < deadline {
                    if let Ok(inc) = server.requests.recv_timeout(Duration::from_millis(20)) {
                        let r = retry_later("shutting down", self.cfg.retry_after);
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
    /// One request, step by step (see [`crate::request`]); answered now, or once the sinks
    /// are done with its readings.
    fn handle(
        &self,
        ctx: &SourceContext,
        responder: &Responder,
        inc: Incoming,
        seen: &Arc<Mutex<Seen>>,
        counters: &Arc<Counters>,
    ) {
        let (id, peer) = (inc.id, inc.peer);
        let refused = |r: Refused| {
            let counter = if r.bad {
                &counters.bad_requests
            } else {
                &counters.unavailable
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, code = %Code::of(&r.reply).unwrap_or(Code::new(0, 0)), why = %r.why, "request refused");
            responder.respond(id, r.reply);
        };
        match request::route(&inc.packet, self.cfg.path.trim_matches('/')) {
            Ok(Route::Readings) => {}
            Ok(Route::Discovery(r)) => return responder.respond(id, r),
            Err(r) => return refused(r),
        }
        // The driver admits a session without an identity only with `allow_anonymous`.
        let identity = inc.identity.as_deref();
        let device = identity.unwrap_or(ANONYMOUS);
        let (max_records, max_body) = (self.cfg.max_records, self.cfg.max_body);
        let decoded = request::decode(&inc.packet, device, max_records, max_body, Timestamp::now());
        let mut pack = match decoded {
            Ok(p) => p,
            Err(r) => return refused(r),
        };
        if let Err(r) = request::authorize(identity, &mut pack.readings) {
            return refused(r);
        }
        let admitted = seen.lock().expect("seen").admit(pack.readings);
        let Admitted {
            fresh,
            keys,
            duplicates,
        } = match admitted {
            Ok(a) => a,
            Err(r) => return refused(r),
        };
        counters
            .duplicates
            .fetch_add(duplicates as u64, Ordering::Relaxed);
        if fresh.is_empty() {
            return responder.respond(id, request::stored());
        }
        self.emit(ctx, responder, id, peer, fresh, keys, seen, counters);
    }

    /// Emits admitted readings; the device is answered once every sink stored them (2.04), or
    /// one failed (4.22 or 5.03), or the emit itself failed (5.03).
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &self,
        ctx: &SourceContext,
        responder: &Responder,
        id: RequestId,
        peer: SocketAddr,
        fresh: Vec<Reading>,
        keys: Vec<Key>,
        seen: &Arc<Mutex<Seen>>,
        counters: &Arc<Counters>,
    ) {
        let n = fresh.len() as u64;
        let retry_after = self.cfg.retry_after;
        // The request is answered once: by the acknowledgement, or by a failed emit, whichever
        // comes first (an emit that fails half-way also fails its acknowledgement later).
        let answered = Arc::new(AtomicBool::new(false));
        let (responder2, seen2, counters2, answered2, keys2) = (
            responder.clone(),
            seen.clone(),
            counters.clone(),
            answered.clone(),
            keys.clone(),
        );
        let sent = ctx.emit_with(fresh, move |outcome| {
            if answered2.swap(true, Ordering::SeqCst) {
                return;
            }
            match outcome {
                Ok(()) => {
                    seen2.lock().expect("seen").stored(&keys2);
                    counters2.readings.fetch_add(n, Ordering::Relaxed);
                    responder2.respond(id, request::stored());
                }
                Err(e) => {
                    seen2.lock().expect("seen").failed(&keys2);
                    if e.kind == ErrorKind::REJECTED {
                        counters2.bad_requests.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%peer, readings = n, error = %e.message(), "a sink refused readings for good; the device is told 4.22");
                    } else {
                        counters2.unavailable.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, readings = n, error = %e.message(), "readings not stored; the device is told to retry");
                    }
                    responder2.respond(id, request::not_stored(&e, retry_after));
                }
            }
        });
        if let Err(e) = sent {
            if answered.swap(true, Ordering::SeqCst) {
                return;
            }
            seen.lock().expect("seen").failed(&keys);
            let why = if e.kind == ErrorKind::STOPPED {
                "shutting down"
            } else {
                "cannot take readings now"
            };
            responder.respond(id, retry_later(why, retry_after));
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
