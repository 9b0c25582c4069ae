//! `system`: a source that reports the health of the machine the gateway runs on (a Raspberry Pi
//! in production) as readings, so that a fleet's health arrives where its data does: thermal
//! zone temperatures, the Raspberry Pi firmware's under-voltage and throttling flags, load
//! averages, memory, free disk space, uptime and Wi-Fi signal. I/O: reads files under `/sys` and
//! `/proc` (or a configured root) and calls `statvfs`; a bad value is skipped and counted, never
//! fatal.
#![forbid(unsafe_code)]

pub mod collect;
pub mod config;
pub mod disk;
pub mod procfs;
pub mod reject;
pub mod sysfs;

use config::{Config, Group};
use gateway_sdk::{tracing, InitContext, PluginError, Reading, Source, SourceContext, Timestamp};
use std::{path::PathBuf, time::Instant};

/// The shortest `interval`.
pub const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// The source.
pub struct System {
    config: Config,
    disks: Vec<PathBuf>,
}

/// The filesystem to report when `disk_paths` is not set: the gateway's data directory, which
/// holds each instance's own directory (named after the instance) and the sinks' buffers.
fn default_disk(ctx: &InitContext) -> Option<PathBuf> {
    let own = ctx.data_dir();
    if own.as_os_str().is_empty() {
        return None;
    }
    match (own.file_name(), own.parent()) {
        (Some(name), Some(parent)) if name == ctx.instance() && !parent.as_os_str().is_empty() => {
            Some(parent.to_path_buf())
        }
        _ => Some(own),
    }
}

impl Source for System {
    const ID: &'static str = "system";
    const DESCRIPTION: &'static str =
        "The health of the machine the gateway runs on: temperature, throttling, load, memory, disk, uptime, Wi-Fi";

    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        let mut config: Config = ctx.parse_config()?;
        config.root = ctx.resolve_path(&config.root);
        // Each round reads about ten files, each on a thread of its own: a round every
        // millisecond would be a core's work for nothing a person could use.
        if config.interval < MIN_INTERVAL {
            return Err(ctx.config_error("interval", format!("must be at least {MIN_INTERVAL:?}")));
        }
        if config.include.is_empty() {
            return Err(ctx.config_error(
                "include",
                "is empty, so nothing would be reported; leave the key out to report everything",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for g in &config.include {
            if !seen.insert(*g) {
                return Err(ctx.config_error("include", format!("{:?} is listed twice", g.name())));
            }
        }
        if !config.disk_paths.is_empty() && !config.includes(Group::Disk) {
            return Err(ctx.config_error("disk_paths", "is set, but \"disk\" is not in `include`"));
        }
        let mut disks: Vec<PathBuf> = config
            .disk_paths
            .iter()
            .map(|p| ctx.resolve_path(p))
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for d in &disks {
            if !seen.insert(d) {
                return Err(
                    ctx.config_error("disk_paths", format!("{} is listed twice", d.display()))
                );
            }
        }
        if disks.is_empty() && config.includes(Group::Disk) {
            disks.extend(default_disk(ctx));
        }
        Ok(System { config, disks })
    }

    fn run(&mut self, ctx: &SourceContext) -> Result<(), PluginError> {
        let stop = ctx.clone();
        let mut collector = collect::Collector::new(&self.config, self.disks.clone())
            .stop_when(move || stop.is_stopping());
        let groups: Vec<&str> = self.config.include.iter().map(|g| g.name()).collect();
        tracing::info!(root = %collector.root().display(), interval = ?self.config.interval, include = ?groups, disks = ?self.disks, "reporting this machine's health");
        let mut tick = ctx.every(self.config.interval);
        while tick.next() {
            let started = Instant::now();
            let time = Timestamp::now();
            let batch: Vec<Reading> = collector
                .round()
                .into_iter()
                .map(|m| ctx.reading_at(time, &m.sensor, &m.name, &m.unit, m.value))
                .collect();
            tracing::trace!(readings = batch.len(), rejected = collector.rejected(), took = ?started.elapsed(), "round done");
            // A stop heard during the round (it cut a hung read short) ends the run.
            if !batch.is_empty() && !ctx.is_stopping() {
                ctx.emit_logged(batch)?;
            }
        }
        Ok(())
    }
}

gateway_sdk::export!(sources: [System]);

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_sdk::testing::instance_info;

    fn ctx(instance: &str, data_dir: &str) -> InitContext {
        let mut info = instance_info(instance, "");
        info.data_dir = data_dir.into();
        InitContext::new(info)
    }

    #[test]
    fn the_default_disk_is_the_gateways_data_dir_not_the_instances() {
        let d = default_disk(&ctx("health", "/var/lib/gateway/health"));
        assert_eq!(d, Some(PathBuf::from("/var/lib/gateway")));
        let d = default_disk(&ctx("health", "/srv/state"));
        assert_eq!(d, Some(PathBuf::from("/srv/state")));
        assert_eq!(default_disk(&ctx("health", "")), None);
    }
}
