//! `ublox7`: a source that reads a u-blox 7 GPS receiver's NMEA 0183 output from a serial port
//! and emits one batch per receiver epoch (position, altitude, speed, course, fix, satellites,
//! DOPs, GPS time). It verifies every checksum and resynchronises after anything that is not a
//! sentence. I/O: the serial port, or a recorded log in replay mode.
#![forbid(unsafe_code)]

pub mod config;
pub mod decoder;
pub mod epoch;
pub mod reader;
pub mod readings;
mod source;

use config::Config;
use gateway_sdk::{InitContext, Label, PluginError, Source, SourceContext};

/// The rates a receiver's UART runs at (u-blox 7: 4800 to 115200; the others for other
/// receivers): the only ones `baud` takes.
pub const STANDARD_BAUDS: [u32; 12] = [
    1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200, 230400, 460800, 921600,
];

/// The source.
pub struct Ublox7 {
    config: Config,
}

impl Source for Ublox7 {
    const ID: &'static str = "ublox7";
    const DESCRIPTION: &'static str =
        "u-blox 7 GPS: NMEA 0183 over a serial port, one batch per epoch";

    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        let mut config: Config = ctx.parse_config()?;
        config.replay = config.replay.map(|p| ctx.resolve_path(p));
        let table = &ctx.info().table;
        let bad = |key: &str, why: String| PluginError::config(format!("[{table}] {key}: {why}"));
        if !(0.001..=1000.0).contains(&config.replay_speed) {
            return Err(bad(
                "replay_speed",
                format!("{} is not from 0.001 to 1000", config.replay_speed),
            ));
        }
        // Zero would reopen a missing port in a tight loop, or end an epoch at every read.
        for (key, d) in [
            ("epoch_gap", config.epoch_gap),
            ("reopen_backoff", config.reopen_backoff),
        ] {
            if d.is_zero() {
                return Err(bad(key, "must be more than 0s".into()));
            }
        }
        if config.reopen_backoff_max < config.reopen_backoff {
            return Err(bad(
                "reopen_backoff_max",
                "must be at least reopen_backoff".into(),
            ));
        }
        Label::check_name(&config.sensor).map_err(|why| bad("sensor", why))?;
        // A receiver's UART runs at one of the standard rates; another (96000 for 9600) would
        // be read as noise, counted as bad bytes, and never say why.
        if !STANDARD_BAUDS.contains(&config.baud) {
            return Err(PluginError::config(format!(
                "[{table}] baud: {} is not a rate a GPS receiver's UART runs at; give one of {}",
                config.baud,
                STANDARD_BAUDS.map(|b| b.to_string()).join(", ")
            )));
        }
        if let Some(p) = &config.replay {
            if !p.is_file() {
                return Err(PluginError::config(format!(
                    "[{table}] replay: {} is not a readable file",
                    p.display()
                )));
            }
        }
        Ok(Ublox7 { config })
    }

    fn run(&mut self, ctx: &SourceContext) -> Result<(), PluginError> {
        match self.config.replay {
            Some(_) => source::run_replay(&self.config, ctx),
            None => source::run_serial(&self.config, ctx),
        }
    }
}

gateway_sdk::export!(sources: [Ublox7]);
