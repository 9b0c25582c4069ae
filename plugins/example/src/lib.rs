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

    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        Ok(Example {
            config: ctx.parse_config()?,
            count: 0,
        })
    }

    fn run(&mut self, ctx: &SourceContext) -> Result<(), PluginError> {
        let sensor = Label::from(self.config.sensor.as_str());
        let (name, unit) = (Label::from("count"), Label::from(""));
        gateway_sdk::tracing::info!(interval = ?self.config.interval, "counting");
        // `wait_stop` sleeps for the interval and says whether the host asked us to stop.
        while !ctx.wait_stop(self.config.interval) {
            self.count += 1;
            let reading = ctx.reading(&sensor, &name, &unit, self.count);
            // `emit` blocks while the sinks are busy; `wait` returns once they all stored it.
            if let Err(e) = ctx.emit(vec![reading])?.wait() {
                gateway_sdk::tracing::warn!(error = %e, "a sink did not take reading {}", self.count);
            }
        }
        Ok(())
    }
}

gateway_sdk::export!(sources: [Example]);
