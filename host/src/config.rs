//! The gateway's TOML file: the `[gateway]` table, and one table per source and sink instance.
//!
//! Every error names the file, the line, the table and the key. An instance table holds the
//! host's keys (`plugin`, `inputs`, batching, retries) and the plugin's own keys; the latter are
//! handed to the plugin as TOML in which every key sits on its original line, so that the
//! plugin's own errors point at the right line too.

use indexmap::IndexMap;
use serde::{de::DeserializeOwned, Deserialize};
use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};
use toml::Spanned;
use tracing::level_filters::LevelFilter;

mod buffer;
mod fragments;
mod subst;
mod table;
use buffer::RawBuffer;
pub use buffer::{parse_size, BufferSettings, WhenFull};
#[cfg(test)]
pub(crate) use subst::substitute;
pub use subst::{may_quote_known, redact_known, Secret};
use table::{describe, instance};

/// A configuration error, already worded for the person who wrote the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// The `[gateway]` table.
    pub gateway: Gateway,
    /// Source instances, in file order.
    pub sources: Vec<Instance>,
    /// Sink instances, in file order.
    pub sinks: Vec<Instance>,
}

/// The `[gateway]` table.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// Name of this device; sources stamp it into their readings.
    pub device: String,
    /// Where plugin libraries are looked up, in order: `plugin_dir` may list several
    /// directories (the bundled plugins, then a third party's); the first that has a plugin's
    /// library provides it.
    pub plugin_dirs: Vec<PathBuf>,
    /// Where instances may keep state.
    pub data_dir: PathBuf,
    /// Default log level.
    pub log_level: LevelFilter,
    /// Log format.
    pub log_format: LogFormat,
    /// How long a shutdown may take to drain what is in flight.
    pub shutdown_timeout: Duration,
    /// How often each instance's counters are logged (0 = never).
    pub stats_interval: Duration,
    /// Where Prometheus metrics, `/healthz` and `/readyz` are served (`None`: nowhere).
    pub metrics: Option<std::net::SocketAddr>,
    /// How long a sink's plugin call may last before it is logged as stalled (0 = never).
    pub stall_warning: Duration,
}

/// Whether an instance is a source or a sink, with what only sinks have.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// `[sources.NAME]`.
    Source,
    /// `[sinks.NAME]`, with its batching, queue, retry and buffer settings.
    Sink(SinkSettings),
}

impl Role {
    /// The TOML group: `sources` or `sinks`.
    pub fn group(&self) -> &'static str {
        match self {
            Role::Source => "sources",
            Role::Sink(_) => "sinks",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Source => "source",
            Role::Sink(_) => "sink",
        })
    }
}

/// One `[sources.NAME]` or `[sinks.NAME]` table.
#[derive(Debug, Clone)]
pub struct Instance {
    /// The instance name.
    pub name: String,
    /// Source or sink.
    pub role: Role,
    /// The plugin id.
    pub plugin: String,
    /// The file the table is in: the main file or a `conf.d/` fragment.
    pub file: PathBuf,
    /// The line of the table (its first key), for messages.
    pub line: usize,
    /// The plugin's own keys as TOML, line-aligned with the file.
    pub plugin_toml: String,
    /// This instance's log level, if set.
    pub log_level: Option<LevelFilter>,
    /// First wait before rebuilding a failed instance.
    pub restart_backoff: Duration,
    /// Longest wait between rebuilds.
    pub restart_backoff_max: Duration,
    /// What `${...}` put into this instance's values, kept out of messages.
    pub secrets: Vec<Secret>,
}

impl Instance {
    /// `msg` with the values that `${...}` put in shown as their references.
    pub fn redact(&self, msg: &str) -> String {
        subst::redact(msg, &self.secrets)
    }

    /// The sink settings, if this is a sink.
    pub fn sink_settings(&self) -> Option<&SinkSettings> {
        match &self.role {
            Role::Sink(s) => Some(s),
            Role::Source => None,
        }
    }

    /// Whether this is a sink that takes the readings of source `source` (its `inputs` name
    /// it, or it has none: every source).
    pub fn takes_from(&self, source: &str) -> bool {
        self.sink_settings().is_some_and(|k| {
            k.inputs
                .as_ref()
                .is_none_or(|i| i.iter().any(|n| n == source))
        })
    }

    /// `[sources.NAME]` or `[sinks.NAME]`, without the brackets.
    pub fn table(&self) -> String {
        format!("{}.{}", self.role.group(), self.name)
    }
}

/// Keys that only sinks take.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkSettings {
    /// Source instances feeding this sink (`None`: all of them).
    pub inputs: Option<Vec<String>>,
    /// Most readings per write (a single source batch larger than this is written whole).
    pub batch_size: usize,
    /// How long a batch that is not full waits for more readings before its write starts.
    /// Zero (the default) is group commit: an idle sink writes what it has at once, and a batch
    /// forms only from what arrives while a write is in progress.
    pub batch_timeout: Duration,
    /// How many source batches may wait in the sink's queue before sources are held back.
    pub queue_capacity: usize,
    /// First wait before retrying a write that failed with a retryable error.
    pub retry_backoff: Duration,
    /// Longest wait between retries.
    pub retry_backoff_max: Duration,
    /// A durable buffer in front of the sink (`buffer = { type = "disk", ... }`).
    pub buffer: Option<BufferSettings>,
    /// Most bytes the sink's dead-letter directory may hold; a refused batch that would not
    /// fit is held (and its sources with it) until files are resent or removed.
    pub dead_letter_max_size: u64,
    /// Most bytes the dead-letter files of one device may hold (`None`: an eighth of
    /// `dead_letter_max_size`); what a device refused past it is neither kept nor held. The
    /// gateway's own device has no share.
    pub dead_letter_device_share: Option<u64>,
}

/// The default of every host key, named after the key.
pub mod default {
    use std::time::Duration;

    /// `[gateway] data_dir`, relative to the config file.
    pub const DATA_DIR: &str = "data";
    /// `[gateway] shutdown_timeout`.
    pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
    /// `[gateway] stats_interval`.
    pub const STATS_INTERVAL: Duration = Duration::from_secs(60);
    /// `[gateway] stall_warning`.
    pub const STALL_WARNING: Duration = Duration::from_secs(30);
    /// `restart_backoff`.
    pub const RESTART_BACKOFF: Duration = Duration::from_secs(1);
    /// `restart_backoff_max`.
    pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);
    /// `batch_size` (sinks).
    pub const BATCH_SIZE: usize = 1000;
    /// `batch_timeout` (sinks).
    pub const BATCH_TIMEOUT: Duration = Duration::ZERO;
    /// `queue_capacity` (sinks).
    pub const QUEUE_CAPACITY: usize = 16;
    /// `retry_backoff` (sinks).
    pub const RETRY_BACKOFF: Duration = Duration::from_millis(100);
    /// `retry_backoff_max` (sinks).
    pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(30);
    /// `buffer.max_size` (sinks).
    pub const BUFFER_MAX_SIZE: u64 = 256 << 20;
    /// `dead_letter_max_size` (sinks).
    pub const DEAD_LETTER_MAX_SIZE: u64 = 256 << 20;
}

impl Default for SinkSettings {
    fn default() -> Self {
        SinkSettings {
            inputs: None,
            batch_size: default::BATCH_SIZE,
            batch_timeout: default::BATCH_TIMEOUT,
            queue_capacity: default::QUEUE_CAPACITY,
            retry_backoff: default::RETRY_BACKOFF,
            retry_backoff_max: default::RETRY_BACKOFF_MAX,
            buffer: None,
            dead_letter_max_size: default::DEAD_LETTER_MAX_SIZE,
            dead_letter_device_share: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    gateway: Option<RawGateway>,
    #[serde(default)]
    sources: IndexMap<String, Spanned<RawTable>>,
    #[serde(default)]
    sinks: IndexMap<String, Spanned<RawTable>>,
}

type RawTable = IndexMap<Spanned<String>, Spanned<toml::Value>>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    device: Option<Spanned<String>>,
    plugin_dir: Option<Spanned<toml::Value>>,
    data_dir: Option<Spanned<String>>,
    // Read as strings, and parsed after `${...}` substitution.
    log_level: Option<Spanned<String>>,
    log_format: Option<Spanned<String>>,
    shutdown_timeout: Option<Spanned<String>>,
    stats_interval: Option<Spanned<String>>,
    metrics: Option<Spanned<String>>,
    stall_warning: Option<Spanned<String>>,
}

/// A log level as written in the file.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Level {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<Level> for LevelFilter {
    fn from(l: Level) -> Self {
        match l {
            Level::Off => LevelFilter::OFF,
            Level::Error => LevelFilter::ERROR,
            Level::Warn => LevelFilter::WARN,
            Level::Info => LevelFilter::INFO,
            Level::Debug => LevelFilter::DEBUG,
            Level::Trace => LevelFilter::TRACE,
        }
    }
}

/// Reads `what` (the config file, or a fragment) at `path`, if it passes
/// [`crate::trust::open_config`].
pub(crate) fn read_config_file(path: &Path, what: &str) -> Result<String, ConfigError> {
    use std::io::Read;
    let (mut f, _) = crate::trust::open_config(path, what).map_err(ConfigError)?;
    let mut text = String::new();
    f.read_to_string(&mut text)
        .map_err(|e| ConfigError(format!("{}: cannot read {what}: {e}", path.display())))?;
    Ok(text)
}

/// Line number (1-based) of byte offset `at` in `text`.
pub(crate) fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

impl Config {
    /// Reads and checks `path`, with the fragments of the `conf.d/` directory beside it
    /// (`*.toml`, in file-name order, `[sources.*]` and `[sinks.*]` tables only).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_config_file(path, "the config file")?;
        let fragments = fragments::read(path)?;
        Config::assemble(path, &text, &fragments)
    }

    /// The instances of the file at `path` (no fragments), each checked on its own but not
    /// the graph they make (a sample file of one plugin has no sink for its source): for
    /// `gateway test-plugin`.
    pub fn load_instances(path: &Path) -> Result<Config, ConfigError> {
        let cannot =
            |e: std::io::Error| ConfigError(format!("cannot read {}: {e}", path.display()));
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut crate::trust::open_regular(path).map_err(cannot)?.0,
            &mut text,
        )
        .map_err(cannot)?;
        Config::assemble_checked(path, &text, &[], false)
    }

    /// Checks `text`, read from `path` (used for messages and to resolve relative paths),
    /// without fragments.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Config::assemble(path, text, &[])
    }

    /// The main file and its fragments, as one config.
    fn assemble(
        path: &Path,
        text: &str,
        fragments: &[(PathBuf, String)],
    ) -> Result<Config, ConfigError> {
        Config::assemble_checked(path, text, fragments, true)
    }

    fn assemble_checked(
        path: &Path,
        text: &str,
        fragments: &[(PathBuf, String)],
        graph: bool,
    ) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let (g, mut sources, mut sinks) = parse_file(path, text)?;
        let gateway = gateway(&file, text, &base, g.unwrap_or_default())?;
        for (fpath, ftext) in fragments {
            let (fg, fsources, fsinks) = parse_file(fpath, ftext)?;
            if fg.is_some() {
                let line = ftext.find("[gateway]").map_or(1, |at| line_of(ftext, at));
                return Err(ConfigError(format!(
                    "{}:{line}: [gateway] belongs in the main file ({file}); a conf.d fragment holds [sources.*] and [sinks.*] tables only",
                    fpath.display()
                )));
            }
            for i in fsources.into_iter().chain(fsinks) {
                fragments::check_unique(&i, sources.iter().chain(&sinks))?;
                match i.role {
                    Role::Source => sources.push(i),
                    Role::Sink(_) => sinks.push(i),
                }
            }
        }
        let config = Config {
            path: path.to_path_buf(),
            gateway,
            sources,
            sinks,
        };
        if graph {
            config.check_graph(&file)?;
        }
        Ok(config)
    }

    fn check_graph(&self, file: &str) -> Result<(), ConfigError> {
        for s in self.sources.iter().chain(&self.sinks) {
            if let Some(other) = self
                .sources
                .iter()
                .chain(&self.sinks)
                .find(|o| o.name == s.name && o.role.group() != s.role.group())
            {
                if s.sink_settings().is_some() {
                    let there = if other.file == s.file {
                        format!("on line {}", other.line)
                    } else {
                        format!("at {}:{}", other.file.display(), other.line)
                    };
                    return Err(ConfigError(format!(
                        "{}:{}: [sinks.{}] the name {:?} is already used by the source {there}: instance names must be unique",
                        s.file.display(),
                        s.line,
                        s.name,
                        s.name,
                    )));
                }
            }
        }
        if self.sinks.is_empty() && !self.sources.is_empty() {
            return Err(ConfigError(format!(
                "{file}: there are sources but no sink: add a [sinks.NAME] table (e.g. plugin = \"console\")"
            )));
        }
        for sink in &self.sinks {
            let inputs = sink.sink_settings().and_then(|s| s.inputs.as_ref());
            for input in inputs.into_iter().flatten() {
                if !self.sources.iter().any(|s| &s.name == input) {
                    let known: Vec<_> = self.sources.iter().map(|s| s.name.as_str()).collect();
                    return Err(ConfigError(format!(
                        "{}:{}: [sinks.{}] inputs: no source is named {input:?} (sources: {})",
                        sink.file.display(),
                        sink.line,
                        sink.name,
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    )));
                }
            }
        }
        for source in &self.sources {
            if self.sinks_of(&source.name).next().is_none() {
                return Err(ConfigError(format!(
                    "{}:{}: [sources.{}] no sink takes this source's readings: name it in a sink's `inputs`",
                    source.file.display(),
                    source.line,
                    source.name
                )));
            }
        }
        Ok(())
    }

    /// Sink instance `name`; the error names the file and the sinks it has.
    pub fn sink(&self, name: &str) -> Result<&Instance, String> {
        self.sinks.iter().find(|d| d.name == name).ok_or_else(|| {
            let all: Vec<&str> = self.sinks.iter().map(|d| d.name.as_str()).collect();
            format!(
                "{} has no sink {name:?} (its sinks: {})",
                self.path.display(),
                all.join(", ")
            )
        })
    }

    /// The sinks that take readings from source `name`.
    pub fn sinks_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Instance> + 'a {
        self.sinks.iter().filter(move |s| s.takes_from(name))
    }

    /// The sources feeding sink `sink`.
    pub fn sources_of<'a>(&'a self, sink: &'a Instance) -> impl Iterator<Item = &'a Instance> + 'a {
        let inputs = sink.sink_settings().and_then(|k| k.inputs.as_ref());
        self.sources
            .iter()
            .filter(move |s| inputs.is_none_or(|i| i.iter().any(|n| n == &s.name)))
    }
}

/// The host name /etc/hostname gives; `gateway` without one.
fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .as_deref()
        .and_then(host_name_in)
        .unwrap_or_else(|| "gateway".to_owned())
}

/// The host name in the text of /etc/hostname: its first line that is not empty or a comment
/// (hostname(5)).
fn host_name_in(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
}

/// The directory the running binary is in.
pub fn default_plugin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The `[gateway]` table as the run uses it: `${...}` substituted in its strings (errors with
/// the line of the key), paths resolved against `base`, defaults filled in.
fn gateway(file: &str, text: &str, base: &Path, g: RawGateway) -> Result<Gateway, ConfigError> {
    let err = |key: &str, at: usize, e: String| {
        ConfigError(format!(
            "{file}:{}: [gateway] {key}: {e}",
            line_of(text, at)
        ))
    };
    // Secrets have no business in these keys; nothing to redact.
    let sub = |key: &str, at: usize, v: &str| {
        subst::substitute_setting(v, base).map_err(|e| err(key, at, e))
    };
    let string = |key: &str, v: Option<Spanned<String>>| {
        v.map(|v| sub(key, v.span().start, v.get_ref())).transpose()
    };
    let duration = gateway_sdk::config::duration::parse;
    let resolve = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            base.join(p)
        }
    };
    let plugin_dirs = match g.plugin_dir {
        None => vec![default_plugin_dir()],
        Some(v) => {
            let at = v.span().start;
            let dirs = match v.into_inner() {
                toml::Value::String(d) => vec![d],
                toml::Value::Array(a) if !a.is_empty() => a
                    .into_iter()
                    .map(|d| match d {
                        toml::Value::String(d) => Ok(d),
                        other => Err(err(
                            "plugin_dir",
                            at,
                            format!("expected directories, found {}", describe(&other)),
                        )),
                    })
                    .collect::<Result<_, _>>()?,
                other => {
                    return Err(err(
                        "plugin_dir",
                        at,
                        format!(
                            "expected a directory or an array of directories, found {}",
                            describe(&other)
                        ),
                    ))
                }
            };
            dirs.iter()
                .map(|d| sub("plugin_dir", at, d).map(resolve))
                .collect::<Result<_, _>>()?
        }
    };
    let metrics = match g.metrics {
        None => None,
        Some(m) => {
            let at = m.span().start;
            let addr = sub("metrics", at, m.get_ref())?;
            Some(addr.parse().map_err(|_| {
                err(
                    "metrics",
                    at,
                    format!(
                        "expected an address and port such as \"127.0.0.1:9464\", found {addr:?}"
                    ),
                )
            })?)
        }
    };
    Ok(Gateway {
        device: match string("device", g.device)? {
            Some(d) if d.trim().is_empty() => {
                return Err(ConfigError(format!(
                    "{file}: [gateway] device: must not be empty"
                )))
            }
            // A name the server refuses would make every reading a dead letter.
            Some(d) => match gateway_sdk::Label::check_device(&d) {
                Ok(()) => d,
                Err(why) => return Err(ConfigError(format!("{file}: [gateway] device: {why}"))),
            },
            None => {
                let name = hostname();
                if let Err(why) = gateway_sdk::Label::check_device(&name) {
                    return Err(ConfigError(format!(
                        "{file}: [gateway] device: not set, and the host name in /etc/hostname cannot be a device name: {why}; set device"
                    )));
                }
                name
            }
        },
        plugin_dirs,
        data_dir: resolve(
            string("data_dir", g.data_dir)?.unwrap_or_else(|| default::DATA_DIR.to_owned()),
        ),
        log_level: parsed(("log_level", g.log_level), &sub, &err, level)?
            .unwrap_or(LevelFilter::INFO),
        log_format: parsed(("log_format", g.log_format), &sub, &err, |v| match v {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("expected \"text\" or \"json\", found {v:?}")),
        })?
        .unwrap_or(LogFormat::Text),
        shutdown_timeout: parsed(
            ("shutdown_timeout", g.shutdown_timeout),
            &sub,
            &err,
            duration,
        )?
        .unwrap_or(default::SHUTDOWN_TIMEOUT),
        // A line per instance every millisecond, or every sink call said to stall, would
        // bury the log: these take whole seconds.
        stats_interval: parsed(("stats_interval", g.stats_interval), &sub, &err, |v| {
            duration(v).and_then(at_least_a_second)
        })?
        .unwrap_or(default::STATS_INTERVAL),
        metrics,
        stall_warning: parsed(("stall_warning", g.stall_warning), &sub, &err, |v| {
            duration(v).and_then(at_least_a_second)
        })?
        .unwrap_or(default::STALL_WARNING),
    })
}

/// A `[gateway]` key written as a string: substituted (`sub`), then read by `parse`; errors
/// made by `err` (they name the key and line).
fn parsed<T>(
    (key, v): (&str, Option<Spanned<String>>),
    sub: &dyn Fn(&str, usize, &str) -> Result<String, ConfigError>,
    err: &dyn Fn(&str, usize, String) -> ConfigError,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, ConfigError> {
    v.map(|v| {
        let at = v.span().start;
        let s = sub(key, at, v.get_ref())?;
        parse(&s).map_err(|e| err(key, at, e))
    })
    .transpose()
}

/// `d` if it is a second or more, or zero (off), else why not.
fn at_least_a_second(d: Duration) -> Result<Duration, String> {
    if d >= Duration::from_secs(1) || d.is_zero() {
        return Ok(d);
    }
    Err(format!("{d:?} is less than a second (\"0s\" turns it off)"))
}

/// `log_level`'s words.
fn level(v: &str) -> Result<LevelFilter, String> {
    Ok(match v {
        "off" => LevelFilter::OFF,
        "error" => LevelFilter::ERROR,
        "warn" => LevelFilter::WARN,
        "info" => LevelFilter::INFO,
        "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        _ => {
            return Err(format!(
                "expected off, error, warn, info, debug or trace, found {v:?}"
            ))
        }
    })
}

type Parsed = (Option<RawGateway>, Vec<Instance>, Vec<Instance>);

/// One file: its `[gateway]` table (if any) and its instances.
fn parse_file(path: &Path, text: &str) -> Result<Parsed, ConfigError> {
    let file = path.display().to_string();
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| format!(":{}", line_of(text, s.start)))
            .unwrap_or_default();
        ConfigError(format!("{file}{at}: {}", e.message().trim_end()))
    })?;
    let mut sources = Vec::new();
    for (name, table) in raw.sources {
        sources.push(instance((path, &base), text, false, name, table)?);
    }
    let mut sinks = Vec::new();
    for (name, table) in raw.sinks {
        sinks.push(instance((path, &base), text, true, name, table)?);
    }
    Ok((raw.gateway, sources, sinks))
}

#[cfg(test)]
mod tests;
