//! `mqtt`: a sink that publishes each reading to an MQTT broker (Mosquitto, EMQX, HiveMQ, Home
//! Assistant's add-on) at QoS 1, as SenML JSON on a topic made from the reading's device,
//! sensor and name; a batch is acknowledged to the host only once the broker acknowledged
//! every reading of it (PUBACK). I/O: one TCP (or TLS) connection, on the sink's thread.
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod packet;
pub mod topic;

use client::{Connection, Settings};
use config::Config;
use gateway_sdk::{tracing, InitContext, PluginError, Reading, Sink};

/// The largest packet MQTT can carry (its remaining length is at most 268,435,455 bytes).
const MAX_PACKET: usize = 268_435_455;

/// The sink.
pub struct Mqtt {
    settings: Settings,
    topic: topic::Template,
    /// The largest PUBLISH (see [`config::Config::max_message_size`]).
    max_message_size: usize,
    conn: Option<Connection>,
    table: String,
}

impl Sink for Mqtt {
    const ID: &'static str = "mqtt";
    const DESCRIPTION: &'static str =
        "publishes readings to an MQTT broker at QoS 1 (SenML JSON), acknowledged after every PUBACK";

    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        let cfg: Config = ctx.parse_config()?;
        let table = ctx.info().table.to_string();
        let bad = |key: &str, e: String| ctx.config_error(key, e);
        let (tls, host, port) = client::parse_url(&cfg.url).map_err(|e| bad("url", e))?;
        let topic = topic::Template::parse(&cfg.topic).map_err(|e| bad("topic", e))?;
        // Without the device in the topic, every device's reading of a sensor goes to one
        // topic: a device posting under its own identity a sensor name another has would
        // replace that one's retained reading, and a dashboard keyed on the topic would show
        // it as the other's.
        if !cfg.topic.contains("{device}") {
            if cfg.retain {
                return Err(bad(
                    "topic",
                    format!(
                        "{:?} names no {{device}}, and retain = true: each device's retained reading would be replaced by any other device's of the same topic",
                        cfg.topic
                    ),
                ));
            }
            tracing::warn!(
                "[{table}] topic {:?} names no {{device}}: the readings of every device share its topics; a subscriber must take the device from each message's bn",
                cfg.topic
            );
        }
        // Two values in one level: pi/01-x and pi-01/x make one topic. With the device among
        // them, one device's topic can be another's.
        let shared = topic.shared_levels();
        if let Some(level) = shared.iter().find(|l| l.contains("{device}")) {
            if cfg.retain {
                return Err(bad(
                    "topic",
                    format!(
                        "{:?} puts {level} in one topic level, and retain = true: device pi's sensor 01-x and device pi-01's sensor x would make one topic, and one device's reading would replace the other's retained one; put a / between them",
                        cfg.topic
                    ),
                ));
            }
        }
        for level in &shared {
            tracing::warn!(
                "[{table}] topic {:?} puts {level} in one topic level: readings with different values there can make one topic (01-x with x, 01 with x-x); a subscriber must take them from each message's bn and n",
                cfg.topic
            );
        }
        if !(1024..=MAX_PACKET).contains(&cfg.max_message_size) {
            return Err(bad(
                "max_message_size",
                format!(
                    "{} is not from 1024 to {MAX_PACKET} (MQTT's largest packet)",
                    cfg.max_message_size
                ),
            ));
        }
        if cfg.max_inflight == 0 {
            return Err(bad("max_inflight", "at least 1".into()));
        }
        let password = ctx.secret(
            "password",
            None,
            cfg.password_env.as_deref(),
            cfg.password_file.as_deref(),
        )?;
        if password.is_some() && cfg.username.is_none() {
            return Err(bad(
                "username",
                "a password is given without a username".into(),
            ));
        }
        let tls_files = [&cfg.tls_ca_file, &cfg.tls_cert_file, &cfg.tls_key_file];
        if !tls && tls_files.iter().any(|f| f.is_some()) {
            return Err(bad(
                "url",
                "tls_ca_file, tls_cert_file and tls_key_file need an mqtts:// url".into(),
            ));
        }
        let tls = if tls {
            let cert = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
                (Some(c), Some(k)) => {
                    Some((ctx.resolve_path(c), ctx.private_file("tls_key_file", k)?))
                }
                (None, None) => None,
                _ => {
                    return Err(bad(
                        "tls_cert_file",
                        "give tls_cert_file and tls_key_file together".into(),
                    ))
                }
            };
            let t = client::Tls {
                ca_file: cfg
                    .tls_ca_file
                    .as_ref()
                    .map(|p| ctx.trusted_file("tls_ca_file", p))
                    .transpose()?,
                cert,
            };
            Some(client::connector(&t).map_err(|e| PluginError::config(format!("[{table}] {e}")))?)
        } else {
            if !gateway_sdk::config::is_loopback(&host) {
                if password.is_some() {
                    tracing::warn!(
                        "[{table}] the password goes to {host} in clear text over mqtt://; use mqtts://"
                    );
                } else {
                    // Whoever is on the path may also answer in the broker's place: a forged
                    // PUBACK has a reading dropped from the buffer as stored.
                    tracing::warn!(
                        "[{table}] readings go to {host} over mqtt:// without TLS or a password: anyone on the path can read them, or acknowledge them in the broker's place; use mqtts:// with tls_ca_file"
                    );
                }
            }
            None
        };
        let client_id = cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("gateway-{}-{}", ctx.info().device, ctx.info().instance));
        if client_id.is_empty() || client_id.len() > 65535 {
            return Err(bad("client_id", "1 to 65,535 bytes".into()));
        }
        Ok(Mqtt {
            settings: Settings {
                host,
                port,
                tls,
                client_id,
                user: cfg.username.clone(),
                password,
                keep_alive: cfg.keep_alive,
                connect_timeout: cfg.connect_timeout,
                ack_timeout: cfg.ack_timeout,
                max_inflight: cfg.max_inflight,
                retain: cfg.retain,
            },
            topic,
            max_message_size: cfg.max_message_size,
            conn: None,
            table,
        })
    }

    fn open(&mut self) -> Result<(), PluginError> {
        self.connect()
    }

    fn write(&mut self, batch: &[Reading]) -> Result<(), PluginError> {
        if let Some(why) = gateway_senml::json_refusal(batch) {
            return Err(PluginError::rejected(why));
        }
        let messages: Vec<(String, Vec<u8>)> = batch
            .iter()
            .map(|r| {
                (
                    self.topic.render(r),
                    gateway_senml::encode_json(std::slice::from_ref(r)),
                )
            })
            .collect();
        // MQTT 3.1.1 does not say how large a PUBLISH the broker takes, and it answers a
        // larger one by closing the connection: retried, that would stall the sink for good.
        // Fixed header (at most 5 bytes), topic length and topic, packet id, payload.
        let size = |(topic, payload): &(String, Vec<u8>)| 5 + 2 + topic.len() + 2 + payload.len();
        if let Some(i) = messages
            .iter()
            .position(|m| size(m) > self.max_message_size)
        {
            let r = &batch[i];
            return Err(PluginError::rejected(format!(
                "reading {} of {} ({}/{}/{}) is {} bytes as a PUBLISH, more than max_message_size ({})",
                i + 1,
                batch.len(),
                r.device,
                r.sensor,
                r.name,
                size(&messages[i]),
                self.max_message_size
            )));
        }
        // A connection that sat idle may have been dropped by the broker or a NAT on the way:
        // check it first, and set up a new one if it is gone.
        let stale = match self.conn.as_mut() {
            Some(c) => !c.alive(&self.settings),
            None => true,
        };
        if stale {
            self.conn = None;
            self.connect()?;
        }
        let c = self.conn.as_mut().expect("connected");
        match c.publish_all(&self.settings, &messages) {
            Ok(()) => Ok(()),
            Err(e) => {
                // What was not acknowledged goes again whole, on a new connection.
                self.conn = None;
                tracing::warn!(table = %self.table, error = %e.message(), "publishing failed; the batch will be sent again");
                Err(e)
            }
        }
    }

    fn close(&mut self) -> Result<(), PluginError> {
        if let Some(c) = self.conn.take() {
            c.close();
        }
        Ok(())
    }
}

impl Mqtt {
    fn connect(&mut self) -> Result<(), PluginError> {
        if self.conn.is_none() {
            let c = Connection::open(&self.settings)?;
            tracing::info!(table = %self.table, broker = %format!("{}:{}", self.settings.host, self.settings.port), client_id = %self.settings.client_id, tls = self.settings.tls.is_some(), "connected to the MQTT broker");
            self.conn = Some(c);
        }
        Ok(())
    }
}

gateway_sdk::export!(sinks: [Mqtt]);
