//! The `buffer` table of a sink: `{ type = "disk", max_size = "256MiB", when_full = "block",
//! fsync = "always" }`, read by serde and checked, each error naming its key.

use super::{default, table::describe};
use serde::Deserialize;

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
pub(super) struct RawBuffer {
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
    pub(super) fn settings(self) -> Result<Option<BufferSettings>, (String, String)> {
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
pub(super) fn buffer_error(msg: &str) -> (String, String) {
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
