//! The `ublox7` source's keys.

use gateway_sdk::config::duration;
use serde::Deserialize;
use std::{path::PathBuf, time::Duration};

/// The plugin's keys of a `[sources.NAME]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The serial device. A stable udev name (`/dev/serial/by-id/...`) survives re-plugging.
    #[serde(default = "default_port")]
    pub port: PathBuf,
    /// Baud rate (8N1).
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// The sensor name the readings carry.
    #[serde(default = "default_sensor")]
    pub sensor: String,
    /// A quiet line for this long ends the epoch in progress.
    #[serde(default = "default_epoch_gap", with = "duration")]
    pub epoch_gap: Duration,
    /// First wait before reopening a device that vanished (doubles up to `reopen_backoff_max`).
    #[serde(default = "default_reopen", with = "duration")]
    pub reopen_backoff: Duration,
    /// Longest wait between reopen attempts.
    #[serde(default = "default_reopen_max", with = "duration")]
    pub reopen_backoff_max: Duration,
    /// Replay a recorded NMEA log instead of opening `port` (no hardware): one epoch per second.
    pub replay: Option<PathBuf>,
    /// Start the replay over at the end of the log.
    #[serde(default)]
    pub replay_loop: bool,
    /// Replay speed: 2.0 replays two epochs per second.
    #[serde(default = "default_speed")]
    pub replay_speed: f64,
}

fn default_port() -> PathBuf {
    PathBuf::from("/dev/ttyACM0")
}
fn default_baud() -> u32 {
    9600
}
fn default_sensor() -> String {
    "gps".to_owned()
}
fn default_epoch_gap() -> Duration {
    Duration::from_millis(300)
}
fn default_reopen() -> Duration {
    Duration::from_secs(1)
}
fn default_reopen_max() -> Duration {
    Duration::from_secs(30)
}
fn default_speed() -> f64 {
    1.0
}
