//! The `sqlite` sink's keys.

use gateway_sdk::config::duration;
use serde::Deserialize;
use std::{path::PathBuf, time::Duration};

/// How hard SQLite syncs a commit to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sync {
    /// Every commit is on disk before the write returns: safe against power loss.
    #[default]
    Full,
    /// Commits may be lost on power loss (not on a crash of the gateway); faster on SD cards.
    Normal,
}

/// The plugin's keys of a `[sinks.NAME]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The database file (created if missing), relative to the config file.
    pub path: PathBuf,
    /// `full` (default) or `normal`.
    #[serde(default)]
    pub synchronous: Sync,
    /// How long a write waits for a lock held by another process before it fails (retryably).
    #[serde(default = "busy", with = "duration")]
    pub busy_timeout: Duration,
}

fn busy() -> Duration {
    Duration::from_secs(5)
}
