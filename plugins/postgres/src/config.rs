//! The `postgres` sink's keys.

use gateway_sdk::config::duration;
use serde::Deserialize;
use std::{path::PathBuf, time::Duration};

/// The plugin's keys of a `[sinks.NAME]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A libpq connection string without the password: `postgresql://USER@HOST:PORT/DATABASE`
    /// or `host=/var/run/postgresql user=gateway dbname=readings`.
    pub url: String,
    /// Take the password from this environment variable.
    pub password_env: Option<String>,
    /// Or from this file (its first line), relative to the config file.
    pub password_file: Option<PathBuf>,
    /// TLS: `disable` (the default; a Unix socket or a trusted network), or `verify-full`
    /// (TLS, the server's certificate checked against `tls_ca_file` or the system's store,
    /// and its name against the host).
    #[serde(default = "disable")]
    pub tls: String,
    /// A CA file (PEM) for the server's certificate, when it is not in the system store.
    pub tls_ca_file: Option<PathBuf>,
    /// The table readings go to (in the connection's search path).
    #[serde(default = "table")]
    pub table: String,
    /// How long connecting may take.
    #[serde(default = "connect", with = "duration::positive")]
    pub connect_timeout: Duration,
    /// How long one batch may take before the write fails (retryably).
    #[serde(default = "write", with = "duration::positive")]
    pub write_timeout: Duration,
}

fn disable() -> String {
    "disable".to_owned()
}
fn table() -> String {
    "readings".to_owned()
}
fn connect() -> Duration {
    Duration::from_secs(10)
}
fn write() -> Duration {
    Duration::from_secs(30)
}
