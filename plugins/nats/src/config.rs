//! The `nats` sink's and source's keys.

use gateway_sdk::config::duration;
use serde::Deserialize;
use std::{path::PathBuf, time::Duration};

/// How to reach the NATS server: the keys the sink and the source share.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    /// The server(s): `nats://HOST[:PORT]` (4222), several separated by commas; `tls://` for
    /// TLS.
    pub url: String,
    /// A user name, with a password from `password_env` or `password_file`.
    pub username: Option<String>,
    /// The password from this environment variable.
    pub password_env: Option<String>,
    /// Or from this file (its first line).
    pub password_file: Option<PathBuf>,
    /// A token from this environment variable.
    pub token_env: Option<String>,
    /// A credentials file (`.creds`: a JWT and an NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// A CA file (PEM) for the server's certificate (TLS).
    pub tls_ca_file: Option<PathBuf>,
    /// How long connecting may take.
    #[serde(default = "ten", with = "duration::positive")]
    pub connect_timeout: Duration,
}

/// The sink's keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Where and how to connect.
    #[serde(flatten)]
    pub connection: Connection,
    /// The subject of each reading: `{device}`, `{sensor}` and `{name}` are replaced (each by
    /// one token: `.`, `*`, `>`, `%`, white space and control characters are percent-encoded).
    #[serde(default = "subject")]
    pub subject: String,
    /// The stream that takes those subjects; made if it is not there.
    #[serde(default = "stream")]
    pub stream: String,
    /// The subjects of the stream, when the sink makes it.
    #[serde(default = "subjects")]
    pub stream_subjects: Vec<String>,
    /// JetStream's window for dropping a message whose id it has seen (a re-delivered batch),
    /// when the sink makes the stream.
    #[serde(default = "two_minutes", with = "duration")]
    pub duplicate_window: Duration,
    /// How long a batch may wait for JetStream's acknowledgements.
    #[serde(default = "thirty", with = "duration::positive")]
    pub ack_timeout: Duration,
}

/// The source's keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Where and how to connect.
    #[serde(flatten)]
    pub connection: Connection,
    /// The stream to read.
    #[serde(default = "stream")]
    pub stream: String,
    /// The durable consumer: its position survives restarts of the gateway and of NATS.
    /// Several gateways with the same name share the work.
    #[serde(default = "durable")]
    pub durable: String,
    /// Only these subjects of the stream.
    #[serde(default = "filter")]
    pub filter_subject: String,
    /// The subject each reading must have come on, as the sink that published it makes it
    /// (its `subject`): a message whose readings would make another subject is refused, so
    /// that NATS's publish permissions on subjects decide who may post as which device.
    #[serde(default = "subject")]
    pub subject: String,
    /// Messages fetched (and emitted) at once at most.
    #[serde(default = "five_hundred")]
    pub batch: usize,
    /// Batches emitted and not yet stored by every sink at most.
    #[serde(default = "four")]
    pub max_batches_in_flight: usize,
    /// How long JetStream waits for the acknowledgement of a message before it delivers it
    /// again (when the consumer is made); 0 leaves it to the server (30 s).
    #[serde(default = "sixty", with = "duration")]
    pub ack_wait: Duration,
}

fn ten() -> Duration {
    Duration::from_secs(10)
}
fn thirty() -> Duration {
    Duration::from_secs(30)
}
fn sixty() -> Duration {
    Duration::from_secs(60)
}
fn two_minutes() -> Duration {
    Duration::from_secs(120)
}
fn subject() -> String {
    "readings.{device}.{sensor}.{name}".to_owned()
}
fn stream() -> String {
    "READINGS".to_owned()
}
fn subjects() -> Vec<String> {
    vec!["readings.>".to_owned()]
}
fn filter() -> String {
    "readings.>".to_owned()
}
fn durable() -> String {
    "gateway-store".to_owned()
}
fn five_hundred() -> usize {
    500
}
fn four() -> usize {
    4
}
