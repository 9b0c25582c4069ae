//! `example`: a source that counts up once per interval. It is the template for a new source:
//! copy this folder, rename the crate and the `ID`, and replace `run`'s body. No I/O.

use gateway_sdk::{InitContext, Label, PluginError, Source, SourceContext};
use serde::Deserialize;
use std::time::Duration;

/// The plugin's keys of its `[sources.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How often to emit a reading.
    #[serde(default = "default_interval", with = "gateway_sdk::config::duration")]
    pub interval: Duration,
    /// The sensor name the readings carry.
    #[serde(default = "default_sensor")]
    pub sensor: String,
}

fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_sensor() -> String {
    "counter".to_owned()
}

/// The source.
pub struct Example {
    config: Config,
    count: i64,
}

impl Source for Example {
    const ID: &'static str = "example";
    const DESCRIPTION: &'static str = "counts up once per interval (the template for new sources)";

    // Parse and check the config, nothing else: `gateway check` calls this too.
    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        let config: Config = ctx.parse_config()?;
        if config.interval < Duration::from_millis(1) {
            // Names the file and the key's line, like the errors of `parse_config`.
            return Err(ctx.config_error("interval", "must be at least 1ms"));
        }
        Ok(Example { config, count: 0 })
    }

    // Open what the source reads here, then loop until the host asks to stop.
    fn run(&mut self, ctx: &SourceContext) -> Result<(), PluginError> {
        let sensor = Label::from(self.config.sensor.as_str());
        let (name, unit) = (Label::from("count"), Label::from(""));
        gateway_sdk::tracing::info!(interval = ?self.config.interval, "counting");
        // Ticks every interval from the start, the first at once, however long a round takes;
        // `next` says `false` once the host asks to stop.
        let mut tick = ctx.every(self.config.interval);
        while tick.next() {
            self.count += 1;
            let reading = ctx.reading(&sensor, &name, &unit, self.count);
            // `emit` blocks while the sinks are busy; `wait` returns once they all stored it.
            // Both fail with a STOPPED error when the host stops: `?` ends `run` normally.
            if let Err(e) = ctx.emit(vec![reading])?.wait() {
                if e.kind == gateway_sdk::ErrorKind::STOPPED {
                    return Err(e);
                }
                gateway_sdk::tracing::warn!(error = %e, "a sink did not take reading {}", self.count);
            }
        }
        Ok(())
    }
}

gateway_sdk::export!(sources: [Example]);
