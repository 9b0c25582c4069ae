//! `coaps-uplink`: POSTs each batch as SenML over CoAP/DTLS and returns only after a 2.xx.

use crate::config::{parse_uri, UplinkConfig};
use gateway_coap::{coap_lite::Packet, Code, Config as CoapConfig};
use gateway_coaps_tokio::{Client, ClientConfig, ClientOptions, RequestError};
use gateway_dtls::{self as dtls, ClientSettings};
use gateway_sdk::{tracing, InitContext, PluginError, Reading, Sink};
use std::{net::ToSocketAddrs, time::Duration};

/// The sink.
pub struct Uplink {
    cfg: UplinkConfig,
    host: String,
    port: u16,
    path: String,
    tls: ClientSettings,
    client: Option<Client>,
    /// Ids of readings the server acknowledged during the last, failed, write.
    delivered: std::collections::HashSet<gateway_sdk::ReadingId>,
    /// Set when the server refused the uplink as a whole: no request goes out before then.
    held: Option<(std::time::Instant, String)>,
}

/// What the server's answer means for the readings of a request.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Stored (2.01, 2.04 ...).
    Stored,
    /// Not now; the same request may succeed later (5.xx, 4.08, 4.29, lost answers).
    Retry,
    /// These readings will never be accepted (4.00 Bad Request, 4.22 Unprocessable Entity):
    /// the host keeps them in the dead-letter file.
    RefusedBatch,
    /// The server refuses this device whatever it sends (4.01, 4.03, 4.04, 4.05, 4.15 ...):
    /// its configuration or ours is wrong. The readings are held, and tried again after
    /// `refusal_backoff`.
    Misconfigured,
    /// 4.13: too large for the server. For a request of one reading, that reading will never
    /// fit (a refusal of it); for more, the server's limits are below ours (misconfigured).
    TooLarge,
}

/// Judges a response code.
fn verdict(code: Code) -> Verdict {
    match code {
        c if c.is_success() => Verdict::Stored,
        Code::BAD_REQUEST | Code::UNPROCESSABLE_ENTITY => Verdict::RefusedBatch,
        Code::REQUEST_ENTITY_TOO_LARGE => Verdict::TooLarge,
        // 5.xx, 4.08, 4.29, and 2.31 Continue as a final answer (not taken).
        c if c.is_retryable() => Verdict::Retry,
        Code { class: 4, .. } => Verdict::Misconfigured,
        _ => Verdict::Retry,
    }
}

fn szx(block: usize) -> Option<u8> {
    (0..=6u8).find(|s| 1usize << (s + 4) == block)
}

impl Sink for Uplink {
    const ID: &'static str = "coaps-uplink";
    const DESCRIPTION: &'static str =
        "POSTs readings as SenML over CoAP/DTLS 1.2; acknowledged on 2.xx";

    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        let mut cfg: UplinkConfig = ctx.parse_config()?;
        let table = ctx.info().table.to_string();
        let bad = |key: &str, msg: String| PluginError::config(format!("[{table}] {key}: {msg}"));
        let (host, port, path) = parse_uri(&cfg.uri).map_err(|e| bad("uri", e))?;
        if szx(cfg.block_size).is_none() {
            return Err(bad(
                "block_size",
                format!("{} is not a power of two from 16 to 1024", cfg.block_size),
            ));
        }
        for p in [&mut cfg.ca_file, &mut cfg.cert_file].into_iter().flatten() {
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
        if cfg.ca_file.is_none() && psk.is_none() {
            return Err(bad(
                "ca_file",
                "required: the server's certificate must be verified against a CA (or use a PSK)"
                    .into(),
            ));
        }
        let tls = ClientSettings {
            ca_file: cfg.ca_file.clone(),
            cert,
            psk,
            ciphers: cfg.ciphers.clone().unwrap_or_default(),
            mtu: cfg.mtu,
        };
        // Surface bad files and cipher lists, and any combination that would not authenticate
        // the server, now, not at the first write.
        dtls::client_context(&tls).map_err(|e| PluginError::config(format!("[{table}] {e}")))?;
        Ok(Uplink {
            cfg,
            host,
            port,
            path,
            tls,
            client: None,
            delivered: Default::default(),
            held: None,
        })
    }

    fn write(&mut self, batch: &[Reading]) -> Result<(), PluginError> {
        if let Some((until, why)) = &self.held {
            let now = std::time::Instant::now();
            if now < *until {
                return Err(PluginError::retry(format!(
                    "holding the readings: {why}; next try in {}s",
                    (*until - now).as_secs()
                )));
            }
            self.held = None;
        }
        if self.client.is_none() {
            let server = (self.host.as_str(), self.port)
                .to_socket_addrs()
                .map_err(|e| PluginError::retry(format!("cannot resolve {}: {e}", self.host)))?
                .next()
                .ok_or_else(|| PluginError::retry(format!("{} has no address", self.host)))?;
            let opts = ClientOptions {
                server,
                bind: self.cfg.bind,
                client: ClientConfig {
                    host: self.host.clone(),
                    verify_host: self.tls.ca_file.is_some(),
                    tls: self.tls.clone(),
                    coap: CoapConfig {
                        ack_timeout: self.cfg.ack_timeout,
                        max_retransmit: self.cfg.max_retransmit,
                        adaptive_rto: self.cfg.adaptive_rto,
                        block_szx: szx(self.cfg.block_size).unwrap_or(6),
                        max_payload: max_payload(self.cfg.mtu),
                        nstart: self.cfg.nstart.max(1),
                        ..CoapConfig::default()
                    },
                    handshake_timeout: self.cfg.handshake_timeout,
                },
            };
            tracing::info!(%server, uri = %self.cfg.uri, "uplink ready");
            self.client = Some(Client::start(opts).map_err(|e| PluginError::fatal(e.to_string()))?);
        }
        // Several requests for a large batch, `nstart` of them in flight at a time. The batch is
        // taken only when every request got a 2.xx. When some did not, the host retries the
        // batch: the parts the server already acknowledged are not sent again (and if they
        // were, the server would drop them by their ids).
        let pending: Vec<Reading>;
        let batch = if self.delivered.is_empty() {
            batch
        } else {
            pending = batch
                .iter()
                .filter(|r| !self.delivered.contains(&r.id))
                .cloned()
                .collect();
            &pending[..]
        };
        let client = self.client.as_ref().expect("started");
        // `nstart` requests in flight, the next going out as soon as any one finishes, so one
        // slow exchange (a lost datagram waits for its retransmission) does not hold the others
        // up. At the first failure nothing new goes out; what is in flight finishes.
        let mut chunks = self.requests(batch);
        // Each payload goes out once; the chunk's readings stay for the bookkeeping.
        let payloads = chunks
            .iter_mut()
            .map(|c| std::mem::take(&mut c.1))
            .collect();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let format = self.cfg.encoding.content_format();
        let timeout = self.cfg.request_timeout;
        if !client.post_all(&self.path, format, payloads, timeout, &done_tx) {
            return Err(PluginError::retry("the CoAP client stopped"));
        }
        let mut outcome = Ok(());
        let mut acked: Vec<&[Reading]> = Vec::new();
        for _ in 0..chunks.len() {
            // Every request ends by its deadline, counted from when it got its slot, and one of
            // those in flight always has a slot: the margin covers a client thread that died.
            let (tag, result) = done_rx
                .recv_timeout(timeout + Duration::from_secs(5))
                .unwrap_or((u64::MAX, Err(RequestError::Stopped)));
            if result == Err(RequestError::Cancelled) {
                continue;
            }
            let readings = chunks.get(tag as usize).map_or(0, |c| c.0.len());
            match self.outcome(result, readings) {
                Ok(()) => acked.extend(chunks.get(tag as usize).map(|c| c.0)),
                Err((e, Verdict::Misconfigured)) if outcome.is_ok() => {
                    tracing::error!(
                        uri = %self.cfg.uri,
                        error = %e.message(),
                        "the server refuses this device: check the server's configuration and this one (certificate or PSK identity, uri); the readings are held and sent again in {:?}",
                        self.cfg.refusal_backoff
                    );
                    self.held = Some((
                        std::time::Instant::now() + self.cfg.refusal_backoff,
                        e.message().to_owned(),
                    ));
                    outcome = Err(e);
                }
                Err((e, _)) if outcome.is_ok() => outcome = Err(e),
                // The first failure decides.
                Err(_) => {}
            }
            if tag == u64::MAX {
                break;
            }
        }
        if outcome.is_ok() {
            self.delivered.clear();
        } else if outcome.as_ref().is_err_and(|e| e.kind.is_retryable()) {
            // Remember what got through for the retry (bounded: a different batch clears it).
            if self.delivered.len() > 1_000_000 {
                self.delivered.clear();
            }
            self.delivered
                .extend(acked.iter().flat_map(|c| c.iter().map(|r| r.id)));
        }
        outcome
    }
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

/// Largest CoAP payload that still fits one datagram of `mtu` bytes: DTLS (13 + 8 + 16 bytes
/// with AES-GCM) and CoAP headers and options take the rest; a record carries at most 16 KiB.
fn max_payload(mtu: u32) -> usize {
    (mtu as usize).saturating_sub(100).min(16_000)
}

impl Uplink {
    fn requests<'a>(&self, batch: &'a [Reading]) -> Vec<(&'a [Reading], Vec<u8>)> {
        split_requests(
            batch,
            self.cfg.max_request_readings,
            max_payload(self.cfg.mtu),
            |r| self.cfg.encoding.encode(r),
        )
    }
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
                    PluginError::retry(format!("no answer from {}: {e}", self.cfg.uri)),
                    Verdict::Retry,
                ))
            }
        };
        let code = Code::of(&resp).unwrap_or(Code::new(0, 0));
        let v = match verdict(code) {
            Verdict::TooLarge if readings == 1 => Verdict::RefusedBatch,
            Verdict::TooLarge => Verdict::Misconfigured,
            v => v,
        };
        let text = String::from_utf8_lossy(&resp.payload);
        let what = format!("{code} {text}");
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
            Verdict::Misconfigured | Verdict::TooLarge => Err((
                PluginError::retry(format!("the server refuses this device: {what}")),
                v,
            )),
        }
    }
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
        for (c, d) in [(4, 8), (4, 29), (5, 0), (5, 3), (5, 4), (0, 0)] {
            assert_eq!(verdict(c, d), Verdict::Retry, "{c}.{d:02}");
        }
    }

    #[test]
    fn every_request_fits_one_datagram_and_keeps_the_batch_in_order() {
        let batch = sample_readings(1000);
        let limit = max_payload(1232);
        let reqs = split_requests(&batch, 100, limit, senml::encode_cbor);
        assert!(reqs.len() > 10, "100 readings do not fit 1132 bytes");
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
        let reqs = split_requests(&batch, 100, max_payload(1232), senml::encode_cbor);
        assert_eq!(
            reqs.iter().map(|(c, _)| c.len()).collect::<Vec<_>>(),
            vec![1, 1, 1]
        );
    }
}
