//! The `ds18b20` source's keys.

use gateway_sdk::config::duration;
use serde::Deserialize;
use std::{path::PathBuf, time::Duration};

/// One explicitly listed probe.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// The w1 device id, e.g. `28-0316a2791eff`.
    pub id: String,
    /// The sensor name its readings carry instead of the id.
    pub alias: Option<String>,
}

/// The plugin's keys of a `[sources.NAME]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The w1 sysfs directory holding one folder per device.
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// How often every probe is read.
    #[serde(default = "default_interval", with = "duration")]
    pub interval: Duration,
    /// The probes to read; when empty, every DS18B20 (`28-*`) under `root`, as they come and go.
    #[serde(default)]
    pub sensors: Vec<Probe>,
    /// How many times a bad read is retried before the probe is reported as failing this round.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Pause between a bad read and its retry.
    #[serde(default = "default_retry_delay", with = "duration")]
    pub retry_delay: Duration,
    /// A read slower than this is abandoned for the round; the probe is skipped until it returns.
    #[serde(default = "default_read_timeout", with = "duration")]
    pub read_timeout: Duration,
    /// Demo mode: simulate this many probes by writing their `w1_slave` files under `root`
    /// (values that drift, with occasional faults). 0 = off.
    #[serde(default)]
    pub simulate: u32,
}

fn default_root() -> PathBuf {
    PathBuf::from("/sys/bus/w1/devices")
}
fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_retries() -> u32 {
    2
}
fn default_retry_delay() -> Duration {
    Duration::from_millis(100)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(2)
}
