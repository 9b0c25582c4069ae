//! The `console` sink's keys.

use serde::Deserialize;

/// How a reading is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `2026-11-25T15:42:31.123456Z pi-01/28-0316 temperature=21.5 Cel id=0193...`
    #[default]
    Text,
    /// One JSON object per line, with the same fields as the reading model.
    Json,
}

/// The plugin's keys of a `[sinks.NAME]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `"text"` (default) or `"json"`.
    #[serde(default)]
    pub format: Format,
}
