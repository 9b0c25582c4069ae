//! `ds18b20`: a source that reads DS18B20 1-Wire thermometers through the Linux w1 sysfs
//! (`/sys/bus/w1/devices/28-*/w1_slave`), every probe concurrently, trusting only reads whose
//! CRC checks and whose value is a real temperature. I/O: reads sysfs files (and, in demo mode,
//! writes simulated ones).
#![forbid(unsafe_code)]

pub mod bus;
pub mod config;
pub mod sim;
pub mod w1;

use config::Config;
use gateway_sdk::{tracing, InitContext, Label, PluginError, Reading, Source, SourceContext};
use std::time::{Duration, Instant};

/// The most retries of a bad read a round may make.
const MAX_RETRIES: u32 = 10;

/// The most probes demo mode simulates.
const MAX_SIMULATED: u32 = 64;

/// The source.
pub struct Ds18b20 {
    config: Config,
}

impl Source for Ds18b20 {
    const ID: &'static str = "ds18b20";
    const DESCRIPTION: &'static str = "DS18B20 1-Wire thermometers through the Linux w1 sysfs";

    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        let mut config: Config = ctx.parse_config()?;
        config.root = ctx.resolve_path(&config.root);
        if config.interval.is_zero() {
            return Err(ctx.config_error("interval", "must be more than 0s"));
        }
        if config.read_timeout.is_zero() {
            return Err(ctx.config_error("read_timeout", "must be more than 0s"));
        }
        if config.retries > MAX_RETRIES {
            return Err(ctx.config_error(
                "retries",
                format!(
                    "{} is more than {MAX_RETRIES}: a probe that reads badly that often is failing",
                    config.retries
                ),
            ));
        }
        if config.simulate > MAX_SIMULATED {
            return Err(ctx.config_error(
                "simulate",
                format!(
                    "{} is more than {MAX_SIMULATED}: each simulated probe is a directory and a \
                     read thread per round",
                    config.simulate
                ),
            ));
        }
        // The simulator writes directories and files under root: never into the kernel's.
        if config.simulate > 0 && config.root.starts_with("/sys") {
            return Err(ctx.config_error(
                "simulate",
                format!(
                    "writes simulated probes under root, which is {}: set root to a directory of \
                     its own (the quick start uses \"data/w1\"), or drop simulate on a Pi",
                    config.root.display()
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in config.sensors.iter().enumerate() {
            if !p.id.starts_with("28-") {
                return Err(ctx.config_error(
                    &format!("sensors.{i}.id"),
                    format!("{:?} is not a DS18B20 id (they start with \"28-\")", p.id),
                ));
            }
            if let Some(alias) = &p.alias {
                if let Err(why) = Label::check_name(alias) {
                    return Err(ctx.config_error(&format!("sensors.{i}.alias"), why));
                }
            }
            let name = p.alias.as_deref().unwrap_or(&p.id);
            if !seen.insert(name) {
                let key = if p.alias.is_some() { "alias" } else { "id" };
                return Err(ctx.config_error(
                    &format!("sensors.{i}.{key}"),
                    format!("the name {name:?} is used twice"),
                ));
            }
        }
        Ok(Ds18b20 { config })
    }

    fn run(&mut self, ctx: &SourceContext) -> Result<(), PluginError> {
        let _sim = match self.config.simulate {
            0 => None,
            n => Some(sim::start(&self.config.root, n, self.config.interval / 2)?),
        };
        let stop = ctx.clone();
        let mut bus = bus::Bus::new(&self.config).stop_when(move || stop.is_stopping());
        let (name, unit) = (Label::from("temperature"), Label::from("Cel"));
        tracing::info!(root = %bus.root().display(), interval = ?self.config.interval, "reading DS18B20 probes");
        let mut tick = ctx.every(self.config.interval);
        let mut published: Option<Instant> = None;
        while tick.next() {
            let started = Instant::now();
            let batch: Vec<Reading> = bus
                .round()
                .into_iter()
                .map(|m| ctx.reading_at(m.time, &m.sensor, &name, &unit, m.celsius))
                .collect();
            tracing::trace!(readings = batch.len(), took = ?started.elapsed(), "round done");
            if published.is_none_or(|t| t.elapsed() >= PUBLISH_EVERY) {
                bus.metrics(tick.missed()).publish(ctx.instance());
                published = Some(Instant::now());
            }
            // A stop heard during the round (it cut the wait for a slow probe short) ends
            // the run.
            if !batch.is_empty() && !ctx.is_stopping() {
                ctx.emit_logged(batch)?;
            }
        }
        Ok(())
    }
}

/// How often the bus's figures go to the metrics page, at most.
const PUBLISH_EVERY: Duration = Duration::from_secs(5);

gateway_sdk::export!(sources: [Ds18b20]);
