//! `console`: a sink that prints each reading on one line to standard output, as text or JSON.
//! It does I/O (stdout) and nothing else.
#![forbid(unsafe_code)]

pub mod config;
mod format;

pub use format::{json_line, text_line};

use config::{Config, Format};
use gateway_sdk::{InitContext, PluginError, Reading, Sink};
use std::io::Write;

/// The sink.
pub struct Console {
    format: Format,
    line: String,
}

impl Sink for Console {
    const ID: &'static str = "console";
    const DESCRIPTION: &'static str = "prints each reading on one line to stdout (text or JSON)";

    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        let cfg: Config = ctx.parse_config()?;
        Ok(Console {
            format: cfg.format,
            line: String::new(),
        })
    }

    fn write(&mut self, batch: &[Reading]) -> Result<(), PluginError> {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for r in batch {
            self.line.clear();
            match self.format {
                Format::Text => text_line(r, &mut self.line),
                Format::Json => json_line(r, &mut self.line),
            }
            self.line.push('\n');
            out.write_all(self.line.as_bytes())
                .map_err(|e| PluginError::retry(format!("cannot write to stdout: {e}")))?;
        }
        // The batch counts as taken once it left the process.
        out.flush()
            .map_err(|e| PluginError::retry(format!("cannot flush stdout: {e}")))
    }
}

gateway_sdk::export!(sinks: [Console]);
