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
use gateway_sdk::{
    tracing, ErrorKind, InitContext, PluginError, Reading, Source, SourceContext, Timestamp,
};
use std::{path::PathBuf, time::Instant};

/// The source.
pub struct System {
    config: Config,
    disks: Vec<PathBuf>,
}

/// A config error naming the file, the key's line (when the key is written), the table and the
/// key.
fn invalid(ctx: &InitContext, key: &str, message: impl std::fmt::Display) -> PluginError {
    let info = ctx.info();
    let line = ctx.config_toml().lines().position(|l| {
        l.trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    });
    match line {
        Some(i) => PluginError::config(format!(
            "{}:{}: [{}] {key}: {message}",
            info.config_file,
            i + 1,
            info.table
        )),
        None => PluginError::config(format!(
            "{}: [{}] {key}: {message}",
            info.config_file, info.table
        )),
    }
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
        if config.interval.is_zero() {
            return Err(invalid(ctx, "interval", "must be more than 0s"));
        }
        if config.include.is_empty() {
            return Err(invalid(
                ctx,
                "include",
                "is empty, so nothing would be reported; leave the key out to report everything",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for g in &config.include {
            if !seen.insert(*g) {
                return Err(invalid(
                    ctx,
                    "include",
                    format!("{:?} is listed twice", g.name()),
                ));
            }
        }
        if !config.disk_paths.is_empty() && !config.includes(Group::Disk) {
            return Err(invalid(
                ctx,
                "disk_paths",
                "is set, but \"disk\" is not in `include`",
            ));
        }
        let mut disks: Vec<PathBuf> = config
            .disk_paths
            .iter()
            .map(|p| ctx.resolve_path(p))
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for d in &disks {
            if !seen.insert(d) {
                return Err(invalid(
                    ctx,
                    "disk_paths",
                    format!("{} is listed twice", d.display()),
                ));
            }
        }
        if disks.is_empty() && config.includes(Group::Disk) {
            disks.extend(default_disk(ctx));
        }
        Ok(System { config, disks })
    }

    fn run(&mut self, ctx: &SourceContext) -> Result<(), PluginError> {
        let mut collector = collect::Collector::new(&self.config, self.disks.clone());
        let groups: Vec<&str> = self.config.include.iter().map(|g| g.name()).collect();
        tracing::info!(root = %collector.root().display(), interval = ?self.config.interval, include = ?groups, disks = ?self.disks, "reporting this machine's health");
        loop {
            let started = Instant::now();
            let time = Timestamp::now();
            let batch: Vec<Reading> = collector
                .round()
                .into_iter()
                .map(|m| ctx.reading_at(time, &m.sensor, &m.name, &m.unit, m.value))
                .collect();
            tracing::trace!(readings = batch.len(), rejected = collector.rejected(), took = ?started.elapsed(), "round done");
            if !batch.is_empty() {
                let n = batch.len();
                let span = tracing::Span::current();
                let sent = ctx.emit_with(batch, move |outcome| {
                    if let Err(e) = outcome {
                        let _e = span.enter();
                        tracing::warn!(readings = n, error = %e, "a sink did not take the health readings");
                    }
                });
                match sent {
                    Ok(()) => {}
                    Err(e) if e.kind == ErrorKind::STOPPED => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            if ctx.wait_stop(self.config.interval.saturating_sub(started.elapsed())) {
                return Ok(());
            }
        }
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
