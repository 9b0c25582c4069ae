//! `coaps-uplink`: POSTs each batch as SenML over CoAP/DTLS and returns only after a 2.01 or 2.04.

use crate::config::{parse_uri, UplinkConfig};
use gateway_coap::{coap_lite::Packet, Code, Config as CoapConfig};
use gateway_coaps_tokio::{
    pick, Client, ClientConfig, ClientFigures, ClientOptions, Observer, Reply, RequestError,
};
use gateway_dtls::{self as dtls, ClientSettings};
use gateway_sdk::{tracing, InitContext, PluginError, Reading, ReadingId, Sink, Written};
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// How often the client's figures go to the metrics page.
const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The sink.
pub struct Uplink {
    cfg: UplinkConfig,
    host: String,
    port: u16,
    path: String,
    /// What DTLS adds to a record at most ([`gateway_dtls::record_overhead`]).
    record: usize,
    tls: ClientSettings,
    client: Option<Client>,
    /// The look-up of the server's name before the client starts.
    lookup: crate::lookup::Lookup,
    /// Shared with the batches in flight.
    shared: Arc<Mutex<Shared>>,
    judge: Arc<Judge>,
    /// The instance's name, under which its figures go to the metrics page.
    instance: String,
}

/// What the server's answer means for the readings of a request.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Stored: 2.01 Created or 2.04 Changed, the answers RFC 7252 §5.8.2 gives a POST that
    /// stored what it was sent. Another 2.xx says nothing was: 2.02 Deleted (a POST may delete,
    /// §5.8.2 too), 2.03 Valid and 2.05 Content (answers to a request with an ETag, and to a
    /// GET: a proxy's cache or another resource answered). Those are [`Self::Misconfigured`].
    Stored,
    /// Not now; the same request may succeed later (5.xx, 4.08, 4.29, lost answers).
    Retry,
    /// These readings will never be accepted (4.00 Bad Request, 4.22 Unprocessable Entity):
    /// the host keeps them in the dead-letter file.
    RefusedBatch,
    /// The server refuses this device whatever it sends (4.01, 4.03, 4.04, 4.05, 4.15 ...,
    /// 5.01, 5.05): its configuration or ours is wrong. The readings are held, and tried again after
    /// `refusal_backoff`.
    Misconfigured,
    /// 4.13: too large for the server. For a request of one reading, that reading will never
    /// fit (a refusal of it); for more, the server's limits (`max_records`, `max_body`) are
    /// below ours: requests of half as many readings go from then on, and the batch again.
    TooLarge,
}

/// Judges a response code.
fn verdict(code: Code) -> Verdict {
    match code {
        Code::CREATED | Code::CHANGED => Verdict::Stored,
        Code::BAD_REQUEST | Code::UNPROCESSABLE_ENTITY => Verdict::RefusedBatch,
        Code::REQUEST_ENTITY_TOO_LARGE => Verdict::TooLarge,
        // 5.01 Not Implemented (no POST there) and 5.05 Proxying Not Supported (a Proxy-Uri
        // the server does not forward) say the same of every request until the config
        // changes: sent again at the retry backoff, they only load the server.
        Code {
            class: 5,
            detail: 1 | 5,
        } => Verdict::Misconfigured,
        // 5.xx, 4.08, 4.29, and 2.31 Continue as a final answer (not taken).
        c if c.is_retryable() => Verdict::Retry,
        Code { class: 2 | 4, .. } => Verdict::Misconfigured,
        _ => Verdict::Retry,
    }
}

/// The most retransmissions `max_retransmit` may ask for: the waits double each time, so 20
/// already spans 2^20 times `ack_timeout`.
const MAX_RETRANSMIT: u32 = 20;

/// The identity the server will know this uplink by: its PSK identity, or its certificate's
/// common name (`None` without either: an anonymous uplink, or a file that does not read,
/// which the DTLS context has refused already).
fn identity_of(tls: &ClientSettings) -> Option<String> {
    if let Some(psk) = &tls.psk {
        return Some(psk.identity.clone());
    }
    let (cert, _) = tls.cert.as_ref()?;
    dtls::certs::file_identity(cert)
}

fn szx(block: usize) -> Option<u8> {
    (0..=6u8).find(|s| 1usize << (s + 4) == block)
}

impl Sink for Uplink {
    const ID: &'static str = "coaps-uplink";
    const DESCRIPTION: &'static str =
        "POSTs readings as SenML over CoAP/DTLS 1.2; acknowledged on 2.01 or 2.04";

    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        let mut cfg: UplinkConfig = ctx.parse_config()?;
        let table = ctx.info().table.to_string();
        let bad = |key: &str, msg: String| PluginError::config(format!("[{table}] {key}: {msg}"));
        let (host, port, path) = parse_uri(&cfg.uri).map_err(|e| bad("uri", e))?;
        if let Some(b) = cfg.block_size.filter(|b| szx(*b).is_none()) {
            return Err(bad(
                "block_size",
                format!("{b} is not a power of two from 16 to 1024"),
            ));
        }
        // Whoever can change the CA file decides which server gets the readings.
        if let Some(p) = &mut cfg.ca_file {
            *p = ctx.trusted_file("ca_file", &*p)?;
        }
        // And whoever can change the CRL file, which server certificates stay revoked.
        if let Some(p) = &mut cfg.crl_file {
            *p = ctx.trusted_file("crl_file", &*p)?;
        }
        if let Some(p) = &mut cfg.cert_file {
            *p = ctx.resolve_path(&*p);
        }
        if let Some(k) = &mut cfg.key_file {
            *k = ctx.private_file("key_file", &*k)?;
        }
        let psk = crate::keys::uplink_psk(ctx, &cfg)?;
        let cert = match (&cfg.cert_file, &cfg.key_file) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => {
                return Err(bad(
                    "cert_file",
                    "cert_file and key_file go together".into(),
                ))
            }
        };
        // A zero wait fails every request at once, and the readings would be held for ever
        // with "no response within 0ns" instead of an error now.
        for (key, d) in [
            ("ack_timeout", cfg.ack_timeout),
            ("request_timeout", cfg.request_timeout),
            ("handshake_timeout", cfg.handshake_timeout),
        ] {
            if d.is_zero() {
                return Err(bad(key, "must be more than 0s".into()));
            }
        }
        if cfg.max_retransmit > MAX_RETRANSMIT {
            return Err(bad(
                "max_retransmit",
                format!(
                    "{} is more than {MAX_RETRANSMIT}: the last wait alone would be 2^{} times \
                     ack_timeout (RFC 7252's default is 4)",
                    cfg.max_retransmit, cfg.max_retransmit
                ),
            ));
        }
        if cfg.ca_file.is_some() && psk.is_some() {
            // With a PSK the handshake is a PSK one: the server shows no certificate, and
            // whoever holds the key can answer as the server, whatever the CA file says.
            return Err(bad(
                "ca_file",
                "set with a PSK: a PSK handshake shows no certificate, so the CA file would check \
                 nothing; use either a PSK or ca_file (with cert_file and key_file)"
                    .into(),
            ));
        }
        if cfg.ca_file.is_none() && psk.is_none() {
            return Err(bad(
                "ca_file",
                "required: the server's certificate must be verified against a CA (or use a PSK)"
                    .into(),
            ));
        }
        let tls = ClientSettings {
            ca_file: cfg.ca_file.clone(),
            crl_file: cfg.crl_file.clone(),
            cert,
            psk,
            ciphers: cfg.ciphers.clone().unwrap_or_default(),
            mtu: cfg.mtu,
        };
        // Surface bad files and cipher lists, and any combination that would not authenticate
        // the server, now, not at the first write.
        let built = dtls::client_context(&tls)
            .map_err(|e| PluginError::config(format!("[{table}] {e}")))?;
        crate::warn_without_forward_secrecy(&table, &gateway_dtls::without_forward_secrecy(&built));
        // What DTLS adds to a record under the costliest suite the list allows.
        let record = gateway_dtls::record_overhead(&built);
        // A block that does not fit one datagram goes out in IP fragments, or not at all where
        // the path drops them: every block-wise batch would fail.
        let room = max_payload(cfg.mtu, &path, record);
        let fits = (4..=10).rev().map(|e| 1 << e).find(|b| *b <= room);
        match (cfg.block_size, fits) {
            (Some(b), _) if b > room => {
                return Err(bad(
                    "block_size",
                    format!(
                        "{b} does not fit one datagram of mtu {} (a block of it carries {room} bytes at most): {}",
                        cfg.mtu,
                        match fits {
                            Some(b) => format!("use block_size = {b} or less, or a larger mtu"),
                            None => "the mtu is too small for any block".to_owned(),
                        }
                    ),
                ))
            }
            (Some(_), _) => {}
            (None, Some(b)) => cfg.block_size = Some(b),
            (None, None) => {
                return Err(bad(
                    "mtu",
                    format!(
                        "{} leaves no room for a block of 16 bytes beside what DTLS and CoAP add to it",
                        cfg.mtu
                    ),
                ))
            }
        }
        let device = ctx.info().device.to_string();
        if let Some(who) = identity_of(&tls).filter(|who| *who != device) {
            tracing::warn!(
                identity = %who,
                device = %device,
                "the server will know this uplink as {who:?}, not as the gateway's device {device:?}: a gateway's coaps-ingress takes readings of {who:?} only from it and refuses the others for good (they go to the dead letters); make [gateway] device and the certificate's name (or the PSK identity) the same"
            );
        }
        Ok(Uplink {
            instance: ctx.instance().to_owned(),
            host,
            port,
            path,
            record,
            tls,
            client: None,
            lookup: Default::default(),
            shared: Default::default(),
            judge: Arc::new(Judge {
                uri: cfg.uri.clone(),
                refusal_backoff: cfg.refusal_backoff,
            }),
            cfg,
        })
    }

    fn write(&mut self, batch: &[Reading]) -> Result<(), PluginError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.submit(
            batch,
            Written::from_fn(move |outcome| {
                let _ = tx.send(outcome);
            }),
        );
        // Every request ends by its deadline (counted from when it got its NSTART slot), or
        // the client stops, dropping the batch's state, which answers too.
        rx.recv()
            .unwrap_or_else(|_| Err(PluginError::retry("the CoAP client stopped")))
    }

    fn window(&self) -> usize {
        self.cfg.window.max(1)
    }

    fn submit(&mut self, batch: &[Reading], done: Written) {
        // Refused before anything goes out: the server would store such a time as its own
        // clock's, and SenML JSON would carry a NaN or an infinity as `null` (a reading
        // without its value).
        let refusal = match self.cfg.encoding {
            crate::config::Encoding::Cbor => gateway_senml::time_refusal(batch),
            crate::config::Encoding::Json => gateway_senml::json_refusal(batch),
        };
        if let Some(why) = refusal {
            return done.finish(Err(PluginError::rejected(why)));
        }
        if let Err(e) = self.ready() {
            return done.finish(Err(e));
        }
        // Several requests for a large batch, `nstart` of them in flight at a time (across the
        // batches in flight), the next going out as soon as any one finishes, so one slow
        // exchange (a lost datagram waits for its retransmission) does not hold the others
        // up. At the first failure nothing new of this batch goes out; what is in flight
        // finishes. The batch is taken only when every request got a 2.01 or 2.04. When some did not,
        // the host retries the batch: the parts the server already acknowledged are not sent
        // again (and if they were, the server would drop them by their ids).
        let pending: Vec<Reading>;
        let (todo, not_before, most) = {
            let mut shared = self.shared.lock().expect("uplink state");
            let todo = if shared.delivered.is_empty() {
                batch
            } else {
                pending = batch
                    .iter()
                    .filter(|r| !shared.delivered.contains(&r.id))
                    .cloned()
                    .collect();
                &pending[..]
            };
            let now = Instant::now();
            let most = shared.most_readings(
                now,
                self.judge.refusal_backoff,
                self.cfg.max_request_readings,
            );
            (todo, shared.pause_end(now), most)
        };
        if todo.is_empty() {
            let mut shared = self.shared.lock().expect("uplink state");
            shared.forget(batch.iter().map(|r| &r.id));
            return done.finish(Ok(()));
        }
        let mut chunks = self.requests(todo, most);
        // Each payload goes out once; the chunks' ids stay for the bookkeeping.
        let payloads = chunks
            .iter_mut()
            .map(|c| std::mem::take(&mut c.1))
            .collect();
        let state = Arc::new(Mutex::new(InFlight {
            left: chunks.len(),
            ids: chunks
                .iter()
                .map(|c| c.0.iter().map(|r| r.id).collect())
                .collect(),
            all: if batch.len() > todo.len() {
                batch.iter().map(|r| r.id).collect()
            } else {
                Vec::new()
            },
            acked: Vec::new(),
            outcome: Ok(()),
            done: Some(done),
            judge: self.judge.clone(),
            shared: self.shared.clone(),
        }));
        let reply: Reply =
            Arc::new(move |(tag, result)| state.lock().expect("batch state").finished(tag, result));
        let client = self.client.as_ref().expect("started");
        let format = self.cfg.encoding.content_format();
        if !client.post_all_with(
            &self.path,
            format,
            payloads,
            self.cfg.request_timeout,
            not_before,
            reply,
        ) {
            // The client's thread is gone (the reply, and with it `done`, was dropped with a
            // retryable error): start a new one at the next write.
            self.client = None;
        }
    }
}

/// A batch in flight: what its requests' answers add up to.
struct InFlight {
    /// Requests not finished yet.
    left: usize,
    /// The ids of each request's readings.
    ids: Vec<Vec<ReadingId>>,
    /// The ids of the whole batch, when some were delivered by an earlier attempt (they are
    /// forgotten once it is all stored).
    all: Vec<ReadingId>,
    /// Ids of the readings of the requests stored so far.
    acked: Vec<ReadingId>,
    /// The first failure decides.
    outcome: Result<(), PluginError>,
    done: Option<Written>,
    judge: Arc<Judge>,
    shared: Arc<Mutex<Shared>>,
}

impl InFlight {
    fn finished(&mut self, tag: u64, result: Result<Packet, RequestError>) {
        self.left = self.left.saturating_sub(1);
        if let Some(asked) = result.as_ref().ok().and_then(gateway_coap::retry_after) {
            self.pause(asked);
        }
        if result != Err(RequestError::Cancelled) {
            let ids = self.ids.get(tag as usize).map_or(&[][..], |c| &c[..]);
            match self.judge.outcome(result, ids.len()) {
                Ok(()) => self.acked.extend_from_slice(ids),
                Err((e, Verdict::Misconfigured)) if self.outcome.is_ok() => {
                    tracing::error!(
                        uri = %self.judge.uri,
                        error = %e.message(),
                        "the server does not take this device's readings: check the server's configuration and this one (certificate or PSK identity, uri); the readings are held and sent again in {:?}",
                        self.judge.refusal_backoff
                    );
                    self.shared.lock().expect("uplink state").held = Some((
                        Instant::now() + self.judge.refusal_backoff,
                        e.message().to_owned(),
                    ));
                    self.outcome = Err(e);
                }
                Err((e, Verdict::TooLarge)) => {
                    // Requests of more readings than this one's half would be refused too:
                    // none goes from now on (a batch narrowed by halves ends at a single
                    // reading, which the server either takes or refuses for good).
                    let half = (ids.len() / 2).max(1);
                    let mut shared = self.shared.lock().expect("uplink state");
                    if shared.most_readings.is_none_or(|(m, _)| half < m) {
                        tracing::warn!(
                            uri = %self.judge.uri,
                            "the server refused a request of {} readings as too large (4.13): requests carry at most {half} from now on, twice as many again after refusal_backoff without another (lower `max_request_readings` to match the server's `max_records` and `max_body`)",
                            ids.len()
                        );
                        shared.most_readings = Some((half, Instant::now()));
                    }
                    drop(shared);
                    if self.outcome.is_ok() {
                        self.outcome = Err(e);
                    }
                }
                Err((e, _)) if self.outcome.is_ok() => self.outcome = Err(e),
                Err(_) => {}
            }
        }
        if self.left > 0 {
            return;
        }
        let outcome = std::mem::replace(&mut self.outcome, Ok(()));
        {
            let mut shared = self.shared.lock().expect("uplink state");
            match &outcome {
                Ok(()) => shared.forget(&self.all),
                Err(e) if e.kind.is_retryable() => {
                    // Remember what got through for the retry (bounded: in a long outage
                    // what is forgotten is sent again, and dropped by the server by its id).
                    if shared.delivered.len() > 1_000_000 {
                        shared.delivered.clear();
                    }
                    shared.delivered.extend(self.acked.drain(..));
                }
                Err(_) => {}
            }
        }
        if let Some(done) = self.done.take() {
            done.finish(outcome);
        }
    }

    /// The server asked for a pause of `asked` (at most `refusal_backoff` is taken): nothing
    /// goes out until it ends.
    fn pause(&self, asked: Duration) {
        let pause = asked.min(self.judge.refusal_backoff);
        let now = Instant::now();
        let mut shared = self.shared.lock().expect("uplink state");
        let paused = shared.pause_end(now);
        if paused.is_none() {
            tracing::warn!(
                uri = %self.judge.uri,
                "the server asks for a pause of {asked:?} (Max-Age of a 5.03 or 4.29); nothing is sent for {pause:?}, the readings wait"
            );
        }
        shared.paused = paused.max(Some(now + pause));
    }
}

/// What the uplink's batches in flight share.
#[derive(Default)]
struct Shared {
    /// Ids of readings the server stored in a batch that failed: its retry skips them.
    delivered: HashSet<ReadingId>,
    /// Set when the server refused the uplink as a whole: no request goes out before then.
    held: Option<(Instant, String)>,
    /// Set when the server asked for a pause (a 5.03's or 4.29's Max-Age): batches written
    /// meanwhile wait for its end, then go out.
    paused: Option<Instant>,
    /// The most readings a request may carry, below `max_request_readings`, and since when:
    /// set when the server refused a request of more as too large (4.13), to half of that
    /// request's; doubled after each `refusal_backoff` without another (the server's limits
    /// may have grown, and one reading too large for them may have taken it down alone).
    most_readings: Option<(usize, Instant)>,
}

impl Shared {
    /// The most readings a request may carry now: `max` (`max_request_readings`), or less
    /// while a 4.13 has lowered it; the lowered figure doubles after each `backoff` without
    /// another.
    fn most_readings(&mut self, now: Instant, backoff: Duration, max: usize) -> usize {
        if let Some((most, since)) = self.most_readings {
            if now.saturating_duration_since(since) >= backoff {
                let doubled = most.saturating_mul(2);
                self.most_readings = (doubled < max).then_some((doubled, now));
            }
        }
        self.most_readings.map_or(max, |(most, _)| most.min(max))
    }

    /// The end of the pause the server asked for, if it is still to come.
    fn pause_end(&mut self, now: Instant) -> Option<Instant> {
        self.paused = self.paused.filter(|t| *t > now);
        self.paused
    }

    /// Forgets that an earlier attempt delivered some of a batch: it is all stored now.
    fn forget<'a>(&mut self, ids: impl IntoIterator<Item = &'a ReadingId>) {
        for id in ids {
            self.delivered.remove(id);
        }
    }
}

/// Judges the server's answers.
struct Judge {
    uri: String,
    refusal_backoff: Duration,
}

/// Splits a batch into requests of at most `max_readings` readings whose payload fits in
/// `limit` bytes, so that none needs a block-wise transfer (each of which holds reassembly
/// state on the server, and stalls on every lost block). Only a single reading too large for a
/// datagram goes block-wise.
fn split_requests(
    batch: &[Reading],
    max_readings: usize,
    limit: usize,
    encode: impl Fn(&[Reading]) -> Vec<u8>,
) -> Vec<(&[Reading], Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo: Vec<&[Reading]> = batch.chunks(max_readings.max(1)).rev().collect();
    while let Some(chunk) = todo.pop() {
        let payload = encode(chunk);
        if payload.len() > limit && chunk.len() > 1 {
            let (a, b) = chunk.split_at(chunk.len() / 2);
            todo.push(b);
            todo.push(a);
        } else {
            out.push((chunk, payload));
        }
    }
    out
}

/// Largest CoAP payload that still fits one datagram of `mtu` bytes with the options of a
/// POST to `path`; a record carries at most 16 KiB. The rest of the datagram:
/// - DTLS: `record` bytes ([`gateway_dtls::record_overhead`]: 37 with AES-GCM, 77 with
///   AES-CBC and SHA-256, as the default PSK list allows);
/// - CoAP: the header (4), a token (at most 8), the Uri-Path options (each segment, and a
///   byte or three to say its length), Content-Format (2), the payload marker (1), and for a
///   block-wise request Block1, Size1 and Request-Tag (at most 5 + 5 + 11).
fn max_payload(mtu: u32, path: &str, record: usize) -> usize {
    let segments: usize = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.len()
                + match s.len() {
                    0..=12 => 1,
                    13..=268 => 2,
                    _ => 3,
                }
        })
        .sum();
    let overhead = record + 4 + 8 + segments + 2 + 1 + 22;
    (mtu as usize).saturating_sub(overhead).min(16_000)
}

impl Uplink {
    /// Whether a batch may go now (the server has not refused the uplink as a whole), with
    /// the client started.
    fn ready(&mut self) -> Result<(), PluginError> {
        {
            let mut shared = self.shared.lock().expect("uplink state");
            if let Some((until, why)) = &shared.held {
                let now = Instant::now();
                if now < *until {
                    return Err(PluginError::retry(format!(
                        "holding the readings: {why}; next try in {}s",
                        (*until - now).as_secs()
                    )));
                }
                shared.held = None;
            }
        }
        if self.client.is_none() {
            let addrs = self
                .lookup
                .addrs(&self.host, self.port)
                .map_err(PluginError::retry)?;
            let server = pick(addrs, self.cfg.bind).ok_or_else(|| {
                PluginError::retry(format!(
                    "{} has no address that bind = {} can reach",
                    self.host, self.cfg.bind
                ))
            })?;
            let opts = ClientOptions {
                server,
                // Looked up again before each new session: a server that moves to a new
                // address is found without a restart of the Pi.
                resolve: Some((self.host.clone(), self.port)),
                bind: self.cfg.bind,
                client: ClientConfig {
                    host: self.host.clone(),
                    verify_host: self.tls.ca_file.is_some(),
                    tls: self.tls.clone(),
                    coap: CoapConfig {
                        ack_timeout: self.cfg.ack_timeout,
                        max_retransmit: self.cfg.max_retransmit,
                        adaptive_rto: self.cfg.adaptive_rto,
                        block_szx: self.cfg.block_size.and_then(szx).unwrap_or(6),
                        max_payload: max_payload(self.cfg.mtu, &self.path, self.record),
                        nstart: self.cfg.nstart.max(1),
                        ..CoapConfig::default()
                    },
                    handshake_timeout: self.cfg.handshake_timeout,
                },
            };
            tracing::info!(%server, uri = %self.cfg.uri, "uplink ready");
            let instance = self.instance.clone();
            let observer: Observer =
                Arc::new(move |f: &ClientFigures| crate::metrics::uplink(f).publish(&instance));
            let client = Client::start_observed(opts, Some((PUBLISH_EVERY, observer)))
                .map_err(|e| PluginError::fatal(e.to_string()))?;
            self.client = Some(client);
        }
        Ok(())
    }

    /// `batch` as requests of at most `most` readings that each fit a datagram.
    fn requests<'a>(&self, batch: &'a [Reading], most: usize) -> Vec<(&'a [Reading], Vec<u8>)> {
        split_requests(
            batch,
            most,
            max_payload(self.cfg.mtu, &self.path, self.record),
            |r| self.cfg.encoding.encode(r),
        )
    }
}

impl Judge {
    /// What the answer to a request of `readings` readings means: `Ok` if stored, else the
    /// error for the host (retryable unless the server refused these readings for good) and the
    /// verdict, [`Verdict::TooLarge`] resolved by the number of readings.
    fn outcome(
        &self,
        r: Result<Packet, RequestError>,
        readings: usize,
    ) -> Result<(), (PluginError, Verdict)> {
        let resp = match r {
            Ok(resp) => resp,
            Err(RequestError::Stopped) => {
                return Err((
                    PluginError::fatal("the CoAP client stopped"),
                    Verdict::Retry,
                ))
            }
            Err(e) => {
                return Err((
                    PluginError::retry(format!("no answer from {}: {e}", self.uri)),
                    Verdict::Retry,
                ))
            }
        };
        let code = Code::of(&resp).unwrap_or(Code::new(0, 0));
        let v = match verdict(code) {
            Verdict::TooLarge if readings <= 1 => Verdict::RefusedBatch,
            v => v,
        };
        let what = format!("{code} {}", server_text(&resp.payload));
        match v {
            Verdict::Stored => Ok(()),
            Verdict::Retry => Err((
                PluginError::retry(format!("the server could not take the batch now: {what}")),
                v,
            )),
            Verdict::RefusedBatch => Err((
                PluginError::rejected(format!("the server refused these readings: {what}")),
                v,
            )),
            Verdict::Misconfigured if code.is_success() => Err((
                PluginError::retry(format!(
                    "the server answered the POST with {what}, which does not say it stored \
                     the readings (2.01 or 2.04 does): is `uri` the ingress's resource, with no \
                     caching proxy in between?"
                )),
                v,
            )),
            Verdict::Misconfigured => Err((
                PluginError::retry(format!("the server refuses this device: {what}")),
                v,
            )),
            Verdict::TooLarge => Err((
                PluginError::retry(format!(
                    "the server refused a request of {readings} readings as too large \
                     ({what}); the batch goes again in requests of at most {}",
                    readings / 2
                )),
                v,
            )),
        }
    }
}

/// What the server said in an answer's payload, for a log line: at most
/// [`MAX_WHY`](crate::request::MAX_WHY) bytes of it, as the ingress cuts its own, with
/// line breaks and other control characters escaped, and the characters that move or reorder
/// text (U+2028, U+2029, the bidirectional controls), so that a server cannot write lines of
/// its own into the device's log or make one read as something else.
fn server_text(payload: &[u8]) -> String {
    const MAX: usize = crate::request::MAX_WHY;
    let text = String::from_utf8_lossy(&payload[..payload.len().min(MAX)]);
    let mut out = gateway_sdk::text::one_line(&text).into_owned();
    if payload.len() > MAX {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_sdk::testing::sample_readings;
    use gateway_senml as senml;

    #[test]
    fn only_a_batch_specific_refusal_lets_readings_go() {
        let verdict = |c, d| verdict(Code::new(c, d));
        assert_eq!(verdict(2, 4), Verdict::Stored);
        assert_eq!(verdict(2, 1), Verdict::Stored);
        assert_eq!(verdict(2, 31), Verdict::Retry);
        assert_eq!(verdict(4, 0), Verdict::RefusedBatch);
        assert_eq!(verdict(4, 22), Verdict::RefusedBatch);
        for detail in [1, 2, 3, 4, 5, 6, 12, 15] {
            assert_eq!(verdict(4, detail), Verdict::Misconfigured, "4.{detail:02}");
        }
        assert_eq!(verdict(4, 13), Verdict::TooLarge);
        // Success codes that do not say a POST was stored (RFC 7252 §5.8.2): a cache's 2.03,
        // another resource's 2.05 or 2.02. The readings are held.
        for detail in [2, 3, 5] {
            assert_eq!(verdict(2, detail), Verdict::Misconfigured, "2.{detail:02}");
        }
        for (c, d) in [(4, 8), (4, 29), (5, 0), (5, 2), (5, 3), (5, 4), (0, 0)] {
            assert_eq!(verdict(c, d), Verdict::Retry, "{c}.{d:02}");
        }
        // What the server will answer to every request until a config changes.
        for detail in [1, 5] {
            assert_eq!(verdict(5, detail), Verdict::Misconfigured, "5.{detail:02}");
        }
    }

    #[test]
    fn a_success_that_is_not_a_stored_post_holds_the_readings_and_the_server_writes_no_lines() {
        let judge = Judge {
            uri: "coaps://server/gpsflowtemp".into(),
            refusal_backoff: Duration::from_secs(300),
        };
        let answer = |c: u8, d: u8, text: &[u8]| {
            let mut p = Packet::new();
            p.header.code = gateway_coap::coap_lite::MessageClass::from((c << 5) | d);
            p.payload = text.to_vec();
            judge.outcome(Ok(p), 10)
        };
        assert!(answer(2, 4, b"").is_ok());
        assert!(answer(2, 1, b"").is_ok());
        let (e, v) = answer(2, 5, b"cached").unwrap_err();
        assert_eq!(v, Verdict::Misconfigured);
        assert!(e.kind == gateway_sdk::ErrorKind::RETRY, "{e}");
        assert!(e.message().contains("2.05 cached"), "{e}");
        let (e, _) = answer(
            4,
            3,
            "no\nINFO gateway: forged\r\x1b[31m\u{2028}\u{202e}".as_bytes(),
        )
        .unwrap_err();
        let e = e.message();
        assert!(
            !e.contains(['\n', '\r', '\x1b', '\u{2028}', '\u{202e}']),
            "{e:?}"
        );
        assert!(e.contains("no\\nINFO gateway: forged"), "{e}");
        let (e, _) = answer(4, 3, &[b'x'; 100_000]).unwrap_err();
        assert!(e.message().len() < 400, "{} bytes", e.message().len());
    }

    #[test]
    fn every_request_fits_one_datagram_and_keeps_the_batch_in_order() {
        let batch = sample_readings(1000);
        let limit = max_payload(1232, "gpsflowtemp", 37);
        let reqs = split_requests(&batch, 100, limit, senml::encode_cbor);
        assert!(reqs.len() > 10, "100 readings do not fit {limit} bytes");
        assert!(reqs.iter().all(|(_, p)| p.len() <= limit));
        let ids: Vec<_> = reqs
            .iter()
            .flat_map(|(c, _)| c.iter().map(|r| r.id))
            .collect();
        assert_eq!(ids, batch.iter().map(|r| r.id).collect::<Vec<_>>());
        // With room enough, requests are as large as allowed.
        let big = split_requests(&batch, 100, 16_000, senml::encode_cbor);
        assert_eq!(big.len(), 10);
    }

    #[test]
    fn a_single_reading_too_large_for_a_datagram_goes_alone() {
        let mut batch = sample_readings(3);
        batch[1].value = gateway_sdk::Value::Text("x".repeat(5000).into());
        let reqs = split_requests(
            &batch,
            100,
            max_payload(1232, "gpsflowtemp", 37),
            senml::encode_cbor,
        );
        assert_eq!(
            reqs.iter().map(|(c, _)| c.len()).collect::<Vec<_>>(),
            vec![1, 1, 1]
        );
    }
}
