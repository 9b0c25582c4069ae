//! `coaps-ingress`: a CoAP/DTLS server that takes SenML POSTs, emits them into the host, and
//! answers 2.04 only after every sink it is routed to stored the batch.

use crate::config::IngressConfig;
use crate::request::ANONYMOUS;
use crate::serving::{Serving, Settings, Together};
use gateway_coap::Config as CoapConfig;
use gateway_coaps_tokio::{Bound, ServerConfig, ServerOptions};
use gateway_dtls::ServerSettings;
use gateway_sdk::{tracing, InitContext, PluginError, Source, SourceContext};
use std::{sync::Arc, time::Duration};

/// The source.
pub struct Ingress {
    cfg: IngressConfig,
    tls: ServerSettings,
}

impl Source for Ingress {
    const ID: &'static str = "coaps-ingress";
    const DESCRIPTION: &'static str =
        "CoAP/DTLS 1.2 server taking SenML POSTs; answers 2.04 once stored";

    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        let mut cfg: IngressConfig = ctx.parse_config()?;
        let table = ctx.info().table.to_string();
        if let Some(p) = &mut cfg.cert_file {
            *p = ctx.resolve_path(&*p);
        }
        // Whoever can change these decides which devices get in.
        if let Some(p) = &mut cfg.client_ca_file {
            *p = ctx.trusted_file("client_ca_file", &*p)?;
        }
        if let Some(p) = &mut cfg.client_crl_file {
            *p = ctx.trusted_file("client_crl_file", &*p)?;
        }
        if let Some(k) = &mut cfg.key_file {
            *k = ctx.private_file("key_file", &*k)?;
        }
        identity_lists(&table, &cfg)?;
        // A zero handshake timeout fails every handshake at its first timer, a zero idle
        // limit drops every session: every device would be locked out, with no error now.
        for (key, d) in [
            ("handshake_timeout", cfg.handshake_timeout),
            ("session_idle", cfg.session_idle),
        ] {
            if d.is_zero() {
                return Err(PluginError::config(format!(
                    "[{table}] {key}: must be more than 0s"
                )));
            }
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
        let built = gateway_dtls::server_context(&tls)
            .map_err(|e| PluginError::config(format!("[{table}] {e}")))?;
        crate::warn_without_forward_secrecy(&table, &gateway_dtls::without_forward_secrecy(&built));
        Ok(Ingress { cfg, tls })
    }

    fn run(&mut self, ctx: &SourceContext) -> Result<(), PluginError> {
        // Each worker runs its server on a thread of this source's and hands each request
        // over right there: the way in has no thread hand-off, and the only one on the way out
        // is the sinks' (none for a quick idle sink: the host writes it on this thread).
        // Worker 0 is this thread.
        let workers = match self.cfg.workers {
            // One core is left for the sinks (and the database next to them), which take
            // every request's readings on threads of their own.
            0 => {
                std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
            }
            n => n,
        };
        let opts = ServerOptions {
            bind: self.cfg.listen,
            max_pending: 1024,
            busy_poll: self.cfg.busy_poll,
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
                // Each worker's share of the caps.
                max_sessions: self.cfg.max_sessions.div_ceil(workers),
                max_sessions_per_identity: self.cfg.max_sessions_per_identity,
                max_handshakes: self.cfg.max_handshakes.div_ceil(workers),
                max_handshakes_per_address: self.cfg.max_handshakes_per_address,
                session_idle: self.cfg.session_idle,
                handshake_timeout: self.cfg.handshake_timeout,
                require_identity: !self.cfg.allow_anonymous,
                deny: self.cfg.deny.iter().cloned().collect(),
            },
        };
        let bound = Bound::workers(opts, workers).map_err(|e| PluginError::retry(e.to_string()))?;
        tracing::info!(listen = %bound[0].local_addr, path = %self.cfg.path, workers, "CoAP/DTLS ingress listening");
        let shared = Arc::new(Together::new(
            self.cfg.dedup_ids,
            (
                self.cfg.last_values_devices,
                self.cfg.last_values_per_device,
                self.cfg.last_values_bytes,
            ),
            self.cfg.max_observers,
        ));
        std::thread::scope(|scope| {
            let mut bound = bound.into_iter().enumerate();
            let (_, first) = bound.next().expect("one worker at least");
            for (i, b) in bound {
                let serving = self.serving(ctx, &b, &shared, false);
                let started = std::thread::Builder::new()
                    .name(format!("coaps-worker-{i}"))
                    .spawn_scoped(scope, move || b.run(TICK, serving));
                if let Err(e) = started {
                    // Its socket closed with it: the kernel shares the port among the others.
                    tracing::warn!(worker = i, error = %e, "cannot start a worker thread; the others serve its share");
                }
            }
            let serving = self.serving(ctx, &first, &shared, true);
            first.run(TICK, serving);
        });
        tracing::info!("ingress stopped");
        Ok(())
    }
}

/// How often each worker looks at the held requests and whether the source is stopping.
const TICK: Duration = Duration::from_millis(20);

impl Ingress {
    /// The request handler of one worker; `logs`: this one logs the counters.
    fn serving<'a>(
        &self,
        ctx: &'a SourceContext,
        bound: &Bound,
        shared: &Arc<Together>,
        logs: bool,
    ) -> Serving<'a> {
        let settings = Settings {
            path: self.cfg.path.trim_matches('/').to_owned(),
            max_records: self.cfg.max_records,
            max_body: self.cfg.max_body,
            retry_after: self.cfg.retry_after,
            // Past separate_after the device has its empty ACK and waits for the answer.
            hold: self.cfg.separate_after * 2,
            max_held: (HELD_MAX, HELD_MAX_BYTES),
            logs,
            readers: self.cfg.readers.clone(),
            max_block: 1024,
            allow_anonymous: self.cfg.allow_anonymous,
        };
        Serving::new(
            ctx,
            settings,
            bound.responder.clone(),
            bound.stats.clone(),
            shared.clone(),
        )
    }
}

/// Most readings (in admitted requests) that wait for room in the sinks' queues at once, per
/// worker: about 30 MB. A bound in requests (4,096 of them) refused a fleet of 5,000 devices
/// with one request each in flight, whose requests the sinks took within 160 ms, and the
/// refusals' retries then took the CPU (6,300 requests/s stored instead of 31,000).
const HELD_MAX: usize = 200_000;

/// Most bytes those readings may take, per worker ([`crate::held::Weighed::bytes`]: a usual
/// reading weighs 128 and its labels' text, about 170 in all): the bound for readings of long
/// text values or long names, of which 200,000 could take gigabytes (a text value may be as
/// large as the body, 1 MiB).
const HELD_MAX_BYTES: usize = 64 << 20;

/// `deny` and `readers` name identities as the handshake gives them: an entry that no
/// identity can be (white space at an end, a control character, too long, empty) would match
/// nobody, and an operator who denied `"pi-07 "` would see the thief's `pi-07` still come in.
/// `"anonymous"` is reserved for the device of peers without an identity: a certificate whose
/// common name is that may neither post (4.03) nor read, so it is no reader (in `deny` it
/// refuses that certificate at the handshake, as any entry does; a PSK of that name is refused
/// when the config loads).
fn identity_lists(table: &str, cfg: &IngressConfig) -> Result<(), PluginError> {
    for (key, list) in [("deny", &cfg.deny), ("readers", &cfg.readers)] {
        for id in list {
            if key == "readers" && id == ANONYMOUS {
                return Err(PluginError::config(format!(
                    "[{table}] readers: \"{ANONYMOUS}\" is reserved for the device of peers without an identity, which read nothing; a certificate whose common name is that may neither post nor read"
                )));
            }
            if !gateway_dtls::valid_identity(id) {
                return Err(PluginError::config(format!(
                    "[{table}] {key}: {id:?} can never be a device's identity, so it would match nobody: an identity is 1 to {} bytes, without white space at either end or control, bidirectional and invisible characters",
                    gateway_dtls::MAX_IDENTITY
                )));
            }
        }
    }
    Ok(())
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
