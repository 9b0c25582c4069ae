//! The `system` source's keys.

use gateway_sdk::config::duration;
use serde::Deserialize;
use std::{fmt, path::PathBuf, time::Duration};

/// One group of readings that can be turned off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// Every thermal zone's temperature (`sys/class/thermal/thermal_zone*`).
    Thermal,
    /// The Raspberry Pi firmware's under-voltage and throttling flags.
    Throttle,
    /// The 1, 5 and 15 minute load averages (`proc/loadavg`).
    Load,
    /// Total and available memory (`proc/meminfo`).
    Memory,
    /// Free and total bytes of the filesystems in `disk_paths`.
    Disk,
    /// Seconds since boot (`proc/uptime`).
    Uptime,
    /// Link quality and signal level of each wireless interface (`proc/net/wireless`).
    Wifi,
}

impl Group {
    /// Every group, in the order they are read.
    pub const ALL: [Group; 7] = [
        Group::Thermal,
        Group::Throttle,
        Group::Load,
        Group::Memory,
        Group::Disk,
        Group::Uptime,
        Group::Wifi,
    ];

    /// The name used in `include`.
    pub fn name(self) -> &'static str {
        match self {
            Group::Thermal => "thermal",
            Group::Throttle => "throttle",
            Group::Load => "load",
            Group::Memory => "memory",
            Group::Disk => "disk",
            Group::Uptime => "uptime",
            Group::Wifi => "wifi",
        }
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The plugin's keys of a `[sources.NAME]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How often everything is read.
    #[serde(default = "default_interval", with = "duration")]
    pub interval: Duration,
    /// The directory under which `sys/...` and `proc/...` are read: `/` on a real machine, a
    /// fixture tree in tests.
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// The groups of readings to report.
    #[serde(default = "default_include")]
    pub include: Vec<Group>,
    /// A path on each filesystem whose free and total bytes are reported (not under `root`);
    /// when empty, the gateway's data directory.
    #[serde(default)]
    pub disk_paths: Vec<PathBuf>,
}

impl Config {
    /// Whether `group` is to be read.
    pub fn includes(&self, group: Group) -> bool {
        self.include.contains(&group)
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_root() -> PathBuf {
    PathBuf::from("/")
}
fn default_include() -> Vec<Group> {
    Group::ALL.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_read_everything_every_minute_under_slash() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c.interval, Duration::from_secs(60));
        assert_eq!(c.root, PathBuf::from("/"));
        assert_eq!(c.include, Group::ALL);
        assert!(c.disk_paths.is_empty());
    }

    #[test]
    fn an_unknown_group_names_the_ones_there_are() {
        let e = toml::from_str::<Config>("include = [\"cpu\"]").unwrap_err();
        assert!(e.to_string().contains("unknown variant `cpu`"), "{e}");
        assert!(e.to_string().contains("`thermal`"), "{e}");
    }
}
