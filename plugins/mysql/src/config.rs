//! The `mysql` sink's keys.

use gateway_sdk::config::duration;
use serde::Deserialize;
use std::{path::PathBuf, time::Duration};

/// The plugin's keys of a `[sinks.NAME]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `mysql://USER@HOST:PORT/DATABASE`, without the password.
    pub url: String,
    /// Take the password from this environment variable.
    pub password_env: Option<String>,
    /// Or from this file (its first line), relative to the config file.
    pub password_file: Option<PathBuf>,
    /// Connect with TLS (verifying the server's certificate).
    #[serde(default)]
    pub tls: bool,
    /// A CA file (PEM) for the server's certificate, when it is not in the system store.
    pub tls_ca_file: Option<PathBuf>,
    /// The table readings go to.
    #[serde(default = "table")]
    pub table: String,
    /// Most connections kept open.
    #[serde(default = "pool")]
    pub pool_max: usize,
    /// How long connecting may take.
    #[serde(default = "connect", with = "duration::positive")]
    pub connect_timeout: Duration,
    /// How long one batch may take before the write fails (retryably).
    #[serde(default = "write", with = "duration::positive")]
    pub write_timeout: Duration,
}

fn table() -> String {
    "readings".to_owned()
}
fn pool() -> usize {
    4
}
fn connect() -> Duration {
    Duration::from_secs(10)
}
fn write() -> Duration {
    Duration::from_secs(30)
}
