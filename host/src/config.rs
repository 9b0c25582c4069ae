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

mod fragments;
mod subst;
pub use subst::Secret;

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
}

/// What a full disk buffer does with the next batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum WhenFull {
    /// Hold the sources back until the sink has delivered enough to make room.
    #[default]
    Block,
    /// Drop the oldest readings (counted and logged) to make room.
    DropOldest,
}

/// A sink's disk buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferSettings {
    /// Most bytes on disk.
    pub max_size: u64,
    /// What to do when it is full.
    pub when_full: WhenFull,
    /// Sync every append to disk before taking the batch (safe against power loss); `false`
    /// leaves that to the kernel (survives a crash of the gateway, not of the machine).
    pub fsync: bool,
}

impl Default for BufferSettings {
    fn default() -> Self {
        BufferSettings {
            max_size: default::BUFFER_MAX_SIZE,
            when_full: WhenFull::Block,
            fsync: true,
        }
    }
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
}

impl TryFrom<String> for WhenFull {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "block" => Ok(WhenFull::Block),
            "drop_oldest" => Ok(WhenFull::DropOldest),
            _ => Err(format!(
                "when_full: expected \"block\" or \"drop_oldest\", found {s:?}"
            )),
        }
    }
}

/// `buffer = { ... }` as written: serde reads it, [`RawBuffer::settings`] checks it. Each
/// value's own error starts with its key, so that the message can name it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuffer {
    #[serde(rename = "type")]
    kind: Option<BufferKind>,
    max_size: Option<Size>,
    when_full: Option<WhenFull>,
    fsync: Option<Fsync>,
}

#[derive(Deserialize, PartialEq)]
#[serde(try_from = "String")]
enum BufferKind {
    Disk,
    Memory,
}

impl TryFrom<String> for BufferKind {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "disk" => Ok(BufferKind::Disk),
            "memory" => Ok(BufferKind::Memory),
            _ => Err(format!(
                "type: unknown buffer type {s:?}; expected \"disk\" or \"memory\""
            )),
        }
    }
}

/// `fsync = "always" | "never"`.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Fsync(bool);

impl TryFrom<String> for Fsync {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "always" => Ok(Fsync(true)),
            "never" => Ok(Fsync(false)),
            _ => Err(format!("fsync: expected \"always\" (safe against power loss) or \"never\" (leave it to the kernel), found {s:?}")),
        }
    }
}

/// A size: a number of bytes, or a string such as `"256MiB"`.
#[derive(Deserialize)]
#[serde(try_from = "toml::Value")]
struct Size(u64);

impl TryFrom<toml::Value> for Size {
    type Error = String;
    fn try_from(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Integer(n) if n > 0 => Ok(Size(n as u64)),
            toml::Value::String(s) => parse_size(&s).filter(|n| *n > 0).map(Size).ok_or_else(|| {
                format!("max_size: invalid size {s:?}; write it like \"256MiB\", \"1GB\" or a number of bytes")
            }),
            v => Err(format!(
                "max_size: expected a size such as \"256MiB\", found {}",
                describe(&v)
            )),
        }
    }
}

impl RawBuffer {
    /// The settings; `None` for a memory buffer (the queue is one); the key and what is wrong.
    fn settings(self) -> Result<Option<BufferSettings>, (String, String)> {
        match self.kind {
            None => Err((
                "type".into(),
                "missing; write type = \"disk\" for a durable buffer".into(),
            )),
            Some(BufferKind::Memory) => Ok(None),
            Some(BufferKind::Disk) => Ok(Some(BufferSettings {
                max_size: self.max_size.map_or(default::BUFFER_MAX_SIZE, |s| s.0),
                when_full: self.when_full.unwrap_or_default(),
                fsync: self.fsync.is_none_or(|f| f.0),
            })),
        }
    }
}

/// Splits serde's message for a buffer table into the key and what is wrong with it. The
/// toml crate ends a value's error with "in `KEY`"; the values' own errors start with their key.
fn buffer_error(msg: &str) -> (String, String) {
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let key = rest.split('`').next().unwrap_or_default();
        return (
            key.to_owned(),
            "unknown key; a buffer takes type, max_size, when_full and fsync".into(),
        );
    }
    let (what, key) = match msg.trim_end().rsplit_once("\nin `") {
        Some((what, key)) => (what, key.trim_end_matches('`')),
        None => (msg.trim_end(), ""),
    };
    match what.split_once(": ") {
        Some((k, rest)) if ["type", "max_size", "when_full", "fsync"].contains(&k) => {
            (k.to_owned(), rest.to_owned())
        }
        _ => (key.to_owned(), what.to_owned()),
    }
}

/// Parses a size such as `"256MiB"`, `"1 GB"`, `"64k"` or a plain number of bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
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
    log_level: Option<Level>,
    log_format: Option<LogFormat>,
    #[serde(default, with = "gateway_sdk::config::duration::option")]
    shutdown_timeout: Option<Duration>,
    #[serde(default, with = "gateway_sdk::config::duration::option")]
    stats_interval: Option<Duration>,
    metrics: Option<Spanned<String>>,
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

/// Line number (1-based) of byte offset `at` in `text`.
pub(crate) fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

impl Config {
    /// Reads and checks `path`, with the fragments of the `conf.d/` directory beside it (see
    /// [`fragments`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "{}: cannot read the config file: {e}",
                path.display()
            ))
        })?;
        let fragments = fragments::read(path)?;
        Config::assemble(path, &text, &fragments)
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
        let file = path.display().to_string();
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let (g, mut sources, mut sinks) = parse_file(path, text)?;
        for (fpath, ftext) in fragments {
            let (fg, fsources, fsinks) = parse_file(fpath, ftext)?;
            if let Some(g) = fg {
                let line = g.line;
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
        let resolve = |p: String| {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                base.join(p)
            }
        };
        let g = g.unwrap_or_default();
        let gateway = Gateway {
            device: match g.device {
                Some(d) if d.trim().is_empty() => {
                    return Err(ConfigError(format!(
                        "{file}: [gateway] device: must not be empty"
                    )))
                }
                Some(d) => d,
                None => hostname(),
            },
            plugin_dirs: match g.plugin_dirs {
                Some(dirs) => dirs.into_iter().map(resolve).collect(),
                None => vec![default_plugin_dir()],
            },
            data_dir: resolve(g.data_dir.unwrap_or_else(|| default::DATA_DIR.to_owned())),
            log_level: g.log_level.map(Into::into).unwrap_or(LevelFilter::INFO),
            log_format: g.log_format.unwrap_or(LogFormat::Text),
            shutdown_timeout: g.shutdown_timeout.unwrap_or(default::SHUTDOWN_TIMEOUT),
            stats_interval: g.stats_interval.unwrap_or(default::STATS_INTERVAL),
            metrics: g.metrics,
        };
        let config = Config {
            path: path.to_path_buf(),
            gateway,
            sources,
            sinks,
        };
        config.check_graph(&file)?;
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
                    return Err(ConfigError(format!(
                        "{file}:{}: [sinks.{}] the name {:?} is already used by the source on line {}: instance names must be unique",
                        s.line, s.name, s.name, other.line
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
                        "{file}:{}: [sinks.{}] inputs: no source is named {input:?} (sources: {})",
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
                    "{file}:{}: [sources.{}] no sink takes this source's readings: name it in a sink's `inputs`",
                    source.line, source.name
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
        self.sinks.iter().filter(move |s| {
            s.sink_settings()
                .and_then(|k| k.inputs.as_ref())
                .is_none_or(|i| i.iter().any(|n| n == name))
        })
    }

    /// The sources feeding sink `sink`.
    pub fn sources_of<'a>(&'a self, sink: &'a Instance) -> impl Iterator<Item = &'a Instance> + 'a {
        let inputs = sink.sink_settings().and_then(|k| k.inputs.as_ref());
        self.sources
            .iter()
            .filter(move |s| inputs.is_none_or(|i| i.iter().any(|n| n == &s.name)))
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "gateway".to_owned())
}

/// The directory the running binary is in.
pub fn default_plugin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

struct TableReader<'a> {
    file: &'a str,
    text: &'a str,
    table: String,
    line: usize,
    entries: RawTable,
}

impl TableReader<'_> {
    fn err(&self, line: usize, key: &str, msg: impl fmt::Display) -> ConfigError {
        ConfigError(format!(
            "{}:{line}: [{}] {key}: {msg}",
            self.file, self.table
        ))
    }

    /// Removes host key `key` and parses its value.
    fn take<T: DeserializeOwned>(
        &mut self,
        key: &str,
        expected: &str,
    ) -> Result<Option<T>, ConfigError> {
        let Some((k, v)) = self.entries.shift_remove_entry(key) else {
            return Ok(None);
        };
        let line = line_of(self.text, k.span().start);
        let value = v.into_inner();
        T::deserialize(value.clone()).map(Some).map_err(|_| {
            self.err(
                line,
                key,
                format!("expected {expected}, found {}", describe(&value)),
            )
        })
    }

    fn take_duration(&mut self, key: &str) -> Result<Option<Duration>, ConfigError> {
        let line = self
            .entries
            .get_key_value(key)
            .map(|(k, _)| line_of(self.text, k.span().start));
        match self.take::<String>(key, "a duration such as \"5s\"")? {
            None => Ok(None),
            Some(s) => gateway_sdk::config::duration::parse(&s)
                .map(Some)
                .map_err(|e| self.err(line.unwrap_or(self.line), key, e)),
        }
    }

    /// `buffer = { type = "disk", max_size = "256MiB", when_full = "block", fsync = "always" }`.
    fn take_buffer(&mut self) -> Result<Option<BufferSettings>, ConfigError> {
        let line = self
            .entries
            .get_key_value("buffer")
            .map_or(self.line, |(k, _)| line_of(self.text, k.span().start));
        let Some(table) = self.take::<toml::Table>(
            "buffer",
            "a table such as { type = \"disk\", max_size = \"256MiB\" }",
        )?
        else {
            return Ok(None);
        };
        // A memory buffer is the queue itself: nothing else of the table matters.
        if table.get("type").and_then(toml::Value::as_str) == Some("memory") {
            return Ok(None);
        }
        match RawBuffer::deserialize(toml::Value::Table(table)) {
            Ok(raw) => raw.settings(),
            Err(e) => Err(buffer_error(&e.to_string())),
        }
        .map_err(|(key, msg)| {
            let at = if key.is_empty() {
                "buffer".to_owned()
            } else {
                format!("buffer.{key}")
            };
            self.err(line, &at, msg)
        })
    }

    fn take_positive(&mut self, key: &str) -> Result<Option<usize>, ConfigError> {
        let line = self
            .entries
            .get_key_value(key)
            .map(|(k, _)| line_of(self.text, k.span().start));
        match self.take::<i64>(key, "a positive integer")? {
            Some(n) if n >= 1 => Ok(Some(n as usize)),
            Some(n) => Err(self.err(
                line.unwrap_or(self.line),
                key,
                format!("expected a positive integer, found {n}"),
            )),
            None => Ok(None),
        }
    }
}

fn describe(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("the string {s:?}"),
        toml::Value::Integer(i) => format!("the integer {i}"),
        toml::Value::Float(f) => format!("the float {f}"),
        toml::Value::Boolean(b) => format!("the boolean {b}"),
        toml::Value::Datetime(d) => format!("the datetime {d}"),
        toml::Value::Array(_) => "an array".to_owned(),
        toml::Value::Table(_) => "a table".to_owned(),
    }
}

/// The `[gateway]` table of a file, its strings substituted.
#[derive(Default)]
struct GatewayKeys {
    line: usize,
    device: Option<String>,
    plugin_dirs: Option<Vec<String>>,
    data_dir: Option<String>,
    log_level: Option<Level>,
    log_format: Option<LogFormat>,
    shutdown_timeout: Option<Duration>,
    stats_interval: Option<Duration>,
    metrics: Option<std::net::SocketAddr>,
}

type Parsed = (Option<GatewayKeys>, Vec<Instance>, Vec<Instance>);

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
    let gateway = match raw.gateway {
        None => None,
        Some(g) => {
            // Secrets have no business in these keys; nothing to redact.
            let mut ignored = Vec::new();
            let mut sub = |key: &str, v: Option<Spanned<String>>| {
                v.map(|v| {
                    let line = line_of(text, v.span().start);
                    subst::substitute(v.get_ref(), &base, &mut ignored)
                        .map_err(|e| ConfigError(format!("{file}:{line}: [gateway] {key}: {e}")))
                })
                .transpose()
            };
            let line = text.find("[gateway]").map_or(1, |at| line_of(text, at));
            Some(GatewayKeys {
                line,
                device: sub("device", g.device)?,
                plugin_dirs: g
                    .plugin_dir
                    .map(|v| {
                        let line = line_of(text, v.span().start);
                        let err = |m: String| {
                            ConfigError(format!("{file}:{line}: [gateway] plugin_dir: {m}"))
                        };
                        let dirs = match v.into_inner() {
                            toml::Value::String(d) => vec![d],
                            toml::Value::Array(a) if !a.is_empty() => a
                                .into_iter()
                                .map(|d| match d {
                                    toml::Value::String(d) => Ok(d),
                                    other => Err(err(format!(
                                        "expected directories, found {}",
                                        describe(&other)
                                    ))),
                                })
                                .collect::<Result<_, _>>()?,
                            other => {
                                return Err(err(format!(
                                    "expected a directory or an array of directories, found {}",
                                    describe(&other)
                                )))
                            }
                        };
                        dirs.iter()
                            .map(|d| subst::substitute(d, &base, &mut Vec::new()).map_err(&err))
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .transpose()?,
                data_dir: sub("data_dir", g.data_dir)?,
                log_level: g.log_level,
                log_format: g.log_format,
                shutdown_timeout: g.shutdown_timeout,
                stats_interval: g.stats_interval,
                metrics: g
                    .metrics
                    .map(|m| {
                        let line = line_of(text, m.span().start);
                        let err = |e: String| {
                            ConfigError(format!("{file}:{line}: [gateway] metrics: {e}"))
                        };
                        let addr = subst::substitute(m.get_ref(), &base, &mut Vec::new())
                            .map_err(err)?;
                        addr.parse().map_err(|_| {
                            err(format!("expected an address and port such as \"127.0.0.1:9464\", found {addr:?}"))
                        })
                    })
                    .transpose()?,
            })
        }
    };
    let mut sources = Vec::new();
    for (name, table) in raw.sources {
        sources.push(instance((path, &base), text, false, name, table)?);
    }
    let mut sinks = Vec::new();
    for (name, table) in raw.sinks {
        sinks.push(instance((path, &base), text, true, name, table)?);
    }
    Ok((gateway, sources, sinks))
}

fn instance(
    (path, base): (&Path, &Path),
    text: &str,
    is_sink: bool,
    name: String,
    spanned: Spanned<RawTable>,
) -> Result<Instance, ConfigError> {
    let file = &path.display().to_string();
    let group = if is_sink { "sinks" } else { "sources" };
    let table = format!("{group}.{name}");
    // The table's span starts at its header (`[sources.temp]`), or at the key of an inline table.
    let line = line_of(text, spanned.span().start);
    let mut entries = spanned.into_inner();
    let mut secrets = Vec::new();
    for (k, v) in entries.iter_mut() {
        subst::substitute_value(v.get_mut(), base, &mut secrets).map_err(|e| {
            ConfigError(format!(
                "{file}:{}: [{table}] {}: {e}",
                line_of(text, k.span().start),
                k.get_ref()
            ))
        })?;
    }
    instance_keys(file, text, (is_sink, name, table, line), entries)
        .map(|i| Instance {
            file: path.to_path_buf(),
            secrets: secrets.clone(),
            ..i
        })
        .map_err(|e| ConfigError(subst::redact(&e.0, &secrets)))
}

/// The host's keys of an instance table; the rest is the plugin's.
fn instance_keys(
    file: &str,
    text: &str,
    (is_sink, name, table, line): (bool, String, String, usize),
    entries: RawTable,
) -> Result<Instance, ConfigError> {
    if !valid_name(&name) {
        return Err(ConfigError(format!(
            "{file}:{line}: [{table}] instance names may use letters, digits, '-' and '_' only"
        )));
    }
    let mut r = TableReader {
        file,
        text,
        table,
        line,
        entries,
    };
    let plugin: String = r.take("plugin", "a plugin id such as \"console\"")?.ok_or_else(|| {
        ConfigError(format!("{file}:{line}: [{}] plugin: missing; say which plugin runs this instance, e.g. plugin = \"console\"", r.table))
    })?;
    let log_level = r
        .take::<Level>(
            "log_level",
            "one of \"off\", \"error\", \"warn\", \"info\", \"debug\", \"trace\"",
        )?
        .map(Into::into);
    let restart_backoff = r
        .take_duration("restart_backoff")?
        .unwrap_or(default::RESTART_BACKOFF);
    let restart_backoff_max = r
        .take_duration("restart_backoff_max")?
        .unwrap_or(default::RESTART_BACKOFF_MAX);
    let role = if is_sink {
        let mut sink = SinkSettings {
            inputs: r.take("inputs", "an array of source names, e.g. [\"temp\"]")?,
            ..SinkSettings::default()
        };
        if let Some(v) = r.take_positive("batch_size")? {
            sink.batch_size = v;
        }
        if let Some(v) = r.take_duration("batch_timeout")? {
            sink.batch_timeout = v;
        }
        if let Some(v) = r.take_positive("queue_capacity")? {
            sink.queue_capacity = v;
        }
        if let Some(v) = r.take_duration("retry_backoff")? {
            sink.retry_backoff = v;
        }
        if let Some(v) = r.take_duration("retry_backoff_max")? {
            sink.retry_backoff_max = v;
        }
        sink.buffer = r.take_buffer()?;
        Role::Sink(sink)
    } else if let Some((k, _)) = r.entries.get_key_value("inputs") {
        let l = line_of(text, k.span().start);
        return Err(r.err(
            l,
            "inputs",
            "sources take no inputs; put `inputs` on the sink that reads this source",
        ));
    } else {
        Role::Source
    };
    let plugin_toml = plugin_toml(text, &r.entries);
    Ok(Instance {
        name,
        role,
        plugin,
        file: PathBuf::new(),
        line,
        plugin_toml,
        log_level,
        restart_backoff,
        restart_backoff_max,
        secrets: Vec::new(),
    })
}

/// Renders the plugin's keys with each one on the line it had in the file.
fn plugin_toml(text: &str, entries: &RawTable) -> String {
    let mut lines: Vec<String> = Vec::new();
    for (k, v) in entries {
        let mut at = line_of(text, k.span().start) - 1;
        while lines.get(at).is_some_and(|l| !l.is_empty()) {
            at += 1;
        }
        if lines.len() <= at {
            lines.resize(at + 1, String::new());
        }
        let key = if valid_name(k.get_ref()) {
            k.get_ref().clone()
        } else {
            toml::Value::String(k.get_ref().clone()).to_string()
        };
        lines[at] = format!("{key} = {}", v.get_ref());
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/gw/gateway.toml"), text)
    }

    const GOOD: &str = r#"
[gateway]
device = "pi-01"
plugin_dir = "plugins"

[sources.temp]
plugin = "ds18b20"
interval = "5s"
sensors = [{ id = "28-1", alias = "tank" }]

[sinks.out]
plugin = "console"
inputs = ["temp"]
batch_size = 50
"#;

    #[test]
    fn parses_the_documented_shape() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.gateway.device, "pi-01");
        assert_eq!(c.gateway.plugin_dirs, [PathBuf::from("/etc/gw/plugins")]);
        assert_eq!(c.gateway.data_dir, PathBuf::from("/etc/gw/data"));
        assert_eq!(c.sources[0].plugin, "ds18b20");
        assert_eq!(c.sinks[0].sink_settings().unwrap().batch_size, 50);
        assert_eq!(
            c.sinks[0].sink_settings().unwrap().inputs.as_deref(),
            Some(&["temp".to_owned()][..])
        );
        assert_eq!(c.sinks_of("temp").count(), 1);
    }

    #[test]
    fn plugin_keys_keep_their_lines() {
        let c = parse(GOOD).unwrap();
        let lines: Vec<&str> = c.sources[0].plugin_toml.lines().collect();
        assert_eq!(lines[7], "interval = \"5s\"", "{lines:?}");
        assert!(lines[8].starts_with("sensors = ["), "{lines:?}");
        assert!(
            !c.sources[0].plugin_toml.contains("plugin ="),
            "host keys are not passed on"
        );
        let v: toml::Table = toml::from_str(&c.sources[0].plugin_toml).unwrap();
        assert_eq!(v["sensors"][0]["alias"].as_str(), Some("tank"));
    }

    #[test]
    fn unknown_gateway_key_names_file_line_and_key() {
        let e = parse("[gateway]\ndevice = \"x\"\nplugins = \"p\"\n")
            .unwrap_err()
            .0;
        assert!(
            e.starts_with("/etc/gw/gateway.toml:3: unknown field `plugins`, expected one of"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_table_key_and_expectation() {
        let e =
            parse("[sources.a]\nplugin = \"x\"\n[sinks.b]\nplugin = \"y\"\nbatch_size = \"big\"\n")
                .unwrap_err()
                .0;
        assert_eq!(
            e,
            "/etc/gw/gateway.toml:5: [sinks.b] batch_size: expected a positive integer, found the string \"big\""
        );
        let e = parse(
            "[sources.a]\nplugin = \"x\"\n[sinks.b]\nplugin = \"y\"\nbatch_timeout = \"soon\"\n",
        )
        .unwrap_err()
        .0;
        assert!(
            e.starts_with(
                "/etc/gw/gateway.toml:5: [sinks.b] batch_timeout: invalid duration \"soon\""
            ),
            "{e}"
        );
        let e =
            parse("[sources.a]\nplugin = \"x\"\n[sinks.b]\nplugin = \"y\"\nqueue_capacity = 0\n")
                .unwrap_err()
                .0;
        assert!(
            e.ends_with("queue_capacity: expected a positive integer, found 0"),
            "{e}"
        );
    }

    #[test]
    fn buffer_values_are_read_by_serde_and_their_errors_name_the_key() {
        let sink = |buffer: &str| {
            parse(&format!(
                "[sources.a]\nplugin = \"x\"\n[sinks.b]\nplugin = \"y\"\nbuffer = {buffer}\n"
            ))
        };
        let c = sink(
            r#"{ type = "disk", max_size = "64MiB", when_full = "drop_oldest", fsync = "never" }"#,
        )
        .unwrap();
        let b = c.sinks[0].sink_settings().unwrap().buffer.clone().unwrap();
        assert_eq!(
            b,
            BufferSettings {
                max_size: 64 << 20,
                when_full: WhenFull::DropOldest,
                fsync: false
            }
        );
        let c = sink(r#"{ type = "disk", max_size = 4096 }"#).unwrap();
        let b = c.sinks[0].sink_settings().unwrap().buffer.clone().unwrap();
        assert_eq!(
            (b.max_size, b.when_full, b.fsync),
            (4096, WhenFull::Block, true)
        );
        // As before serde: a memory buffer's other keys were never read.
        assert!(sink(r#"{ type = "memory", size = 100 }"#).unwrap().sinks[0]
            .sink_settings()
            .unwrap()
            .buffer
            .is_none());
        assert!(sink(r#"{ type = "memory" }"#).unwrap().sinks[0]
            .sink_settings()
            .unwrap()
            .buffer
            .is_none());
        for (buffer, want) in [
            (
                r#"{ type = "disk", max_size = "lots" }"#,
                "buffer.max_size: invalid size \"lots\"",
            ),
            (
                r#"{ type = "disk", max_size = -1 }"#,
                "buffer.max_size: expected a size such as",
            ),
            (
                r#"{ type = "disk", when_full = "panic" }"#,
                "buffer.when_full: expected \"block\" or \"drop_oldest\", found \"panic\"",
            ),
            (
                r#"{ type = 7 }"#,
                "buffer.type: invalid type: integer `7`, expected a string",
            ),
        ] {
            let e = sink(buffer).unwrap_err().0;
            assert!(
                e.contains(&format!(":5: [sinks.b] {want}")),
                "{buffer}: {e}"
            );
        }
    }

    #[test]
    fn missing_plugin_key_is_explained() {
        let e = parse("[sources.a]\ninterval = \"1s\"\n").unwrap_err().0;
        assert!(
            e.starts_with("/etc/gw/gateway.toml:1: [sources.a] plugin: missing"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_instance_name_is_refused() {
        let e = parse("[sources.a]\nplugin = \"x\"\n[sinks.a]\nplugin = \"y\"\n")
            .unwrap_err()
            .0;
        assert!(
            e.contains(":3: [sinks.a] the name \"a\" is already used by the source on line 1"),
            "{e}"
        );
        // Within one group TOML itself refuses the second table.
        let e = parse("[sources.a]\nplugin = \"x\"\n[sources.a]\nplugin = \"y\"\n")
            .unwrap_err()
            .0;
        assert!(e.starts_with("/etc/gw/gateway.toml:3:"), "{e}");
    }

    #[test]
    fn unknown_input_and_orphan_source_are_refused() {
        let e =
            parse("[sources.a]\nplugin = \"x\"\n[sinks.b]\nplugin = \"y\"\ninputs = [\"nope\"]\n")
                .unwrap_err()
                .0;
        assert!(
            e.contains("[sinks.b] inputs: no source is named \"nope\" (sources: a)"),
            "{e}"
        );
        let e = parse("[sources.a]\nplugin = \"x\"\n[sources.c]\nplugin = \"x\"\n[sinks.b]\nplugin = \"y\"\ninputs = [\"a\"]\n")
            .unwrap_err()
            .0;
        assert!(
            e.contains(":3: [sources.c] no sink takes this source's readings"),
            "{e}"
        );
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = parse("[gateway]\ndevice = \n").unwrap_err().0;
        assert!(e.starts_with("/etc/gw/gateway.toml:2: "), "{e}");
    }
}
