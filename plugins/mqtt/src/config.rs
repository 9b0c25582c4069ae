//! The `mqtt` sink's keys.

use gateway_sdk::config::duration;
use serde::Deserialize;
use std::{path::PathBuf, time::Duration};

/// The plugin's keys of a `[sinks.NAME]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The broker: `mqtt://HOST[:PORT]` (1883) or `mqtts://HOST[:PORT]` (TLS, 8883).
    pub url: String,
    /// The MQTT client id (default `gateway-DEVICE-SINK`). Two clients with one id push each
    /// other off the broker.
    pub client_id: Option<String>,
    /// The user name, if the broker asks for one.
    pub username: Option<String>,
    /// The password from this environment variable.
    pub password_env: Option<String>,
    /// Or from this file (its first line), relative to the config file.
    pub password_file: Option<PathBuf>,
    /// Where each reading goes: `{device}`, `{sensor}`, `{name}` and `{unit}` are replaced by
    /// the reading's (with `/`, `+`, `#` and `%` in them percent-encoded).
    #[serde(default = "topic")]
    pub topic: String,
    /// Publish retained: a new subscriber gets the last reading of each topic at once.
    #[serde(default)]
    pub retain: bool,
    /// PUBLISH packets sent and not acknowledged at most.
    #[serde(default = "inflight")]
    pub max_inflight: u16,
    /// The largest PUBLISH (topic and payload) the broker takes, in bytes. MQTT 3.1.1 does
    /// not say it, and a broker answers a larger one by closing the connection; a reading
    /// that would make one is refused for good (a dead letter), not retried.
    #[serde(default = "max_message")]
    pub max_message_size: usize,
    /// The keep-alive told to the broker; an idle connection is checked (PINGREQ) after half
    /// of it.
    #[serde(default = "keep_alive", with = "duration")]
    pub keep_alive: Duration,
    /// How long connecting (TCP, TLS, CONNECT) may take.
    #[serde(default = "connect", with = "duration::positive")]
    pub connect_timeout: Duration,
    /// How long the broker may go without acknowledging anything while a batch is out.
    #[serde(default = "ack", with = "duration::positive")]
    pub ack_timeout: Duration,
    /// `mqtts`: a CA file (PEM) for the broker's certificate, when it is not in the system
    /// store. The broker's name is always checked against its certificate.
    pub tls_ca_file: Option<PathBuf>,
    /// `mqtts`: a client certificate (PEM), for brokers that authenticate clients by one.
    pub tls_cert_file: Option<PathBuf>,
    /// Its key (PEM; not readable by others).
    pub tls_key_file: Option<PathBuf>,
}

fn topic() -> String {
    "gateway/{device}/{sensor}/{name}".to_owned()
}
fn inflight() -> u16 {
    64
}
fn max_message() -> usize {
    256 * 1024
}
fn keep_alive() -> Duration {
    Duration::from_secs(60)
}
fn connect() -> Duration {
    Duration::from_secs(10)
}
fn ack() -> Duration {
    Duration::from_secs(30)
}
