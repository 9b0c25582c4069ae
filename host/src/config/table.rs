//! One `[sources.NAME]` or `[sinks.NAME]` table: `${...}` substituted, the host's keys taken
//! and checked (each error with file, line, table and key), the rest handed to the plugin as
//! TOML in which every key keeps its line.

use super::buffer::buffer_error;
use super::*;

/// Most readings per write (`batch_size`).
pub const MAX_BATCH_SIZE: usize = 1_000_000;
/// Most batches a sink's queue holds (`queue_capacity`): the queue's slots are allocated when
/// it is made.
pub const MAX_QUEUE_CAPACITY: usize = 65_536;

pub(super) fn valid_name(name: &str) -> bool {
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
        // A memory buffer is the queue itself: the disk buffer's keys mean nothing to it, and
        // one written beside it (a size the user believes bounds it) is refused, not ignored.
        if table.get("type").and_then(toml::Value::as_str) == Some("memory") {
            let Some(key) = table.keys().find(|k| *k != "type") else {
                return Ok(None);
            };
            let msg = match key.as_str() {
                "max_size" | "when_full" | "fsync" => format!(
                    "a memory buffer takes no {key}: it is the sink's queue (queue_capacity bounds it); {key} is a disk buffer's"
                ),
                _ => "unknown key; a memory buffer takes `type` alone".into(),
            };
            return Err(self.err(line, &format!("buffer.{key}"), msg));
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

    /// A size: a positive number of bytes, or a string such as `"256MiB"`.
    fn take_size(&mut self, key: &str) -> Result<Option<u64>, ConfigError> {
        let line = self
            .entries
            .get_key_value(key)
            .map(|(k, _)| line_of(self.text, k.span().start));
        let expected = "a size such as \"256MiB\", \"1GB\" or a number of bytes";
        let size = match self.take::<toml::Value>(key, expected)? {
            None => return Ok(None),
            Some(toml::Value::Integer(n)) if n > 0 => Some(n as u64),
            Some(toml::Value::String(s)) => super::buffer::parse_size(&s).filter(|n| *n > 0),
            Some(_) => None,
        };
        size.map(Some).ok_or_else(|| {
            self.err(
                line.unwrap_or(self.line),
                key,
                format!("expected {expected}"),
            )
        })
    }

    /// A positive integer of at most `max` (a bound that keeps a typo from costing the
    /// machine's memory at start).
    fn take_positive(&mut self, key: &str, max: usize) -> Result<Option<usize>, ConfigError> {
        let line = self
            .entries
            .get_key_value(key)
            .map(|(k, _)| line_of(self.text, k.span().start));
        match self.take::<i64>(key, "a positive integer")? {
            Some(n) if n >= 1 && n as u64 <= max as u64 => Ok(Some(n as usize)),
            Some(n) => Err(self.err(
                line.unwrap_or(self.line),
                key,
                format!("expected a positive integer of at most {max}, found {n}"),
            )),
            None => Ok(None),
        }
    }

    /// A duration above zero: a backoff of zero would retry in a tight loop (doubling zero
    /// stays zero).
    fn take_backoff(&mut self, key: &str) -> Result<Option<Duration>, ConfigError> {
        let line = self
            .entries
            .get_key_value(key)
            .map(|(k, _)| line_of(self.text, k.span().start));
        match self.take_duration(key)? {
            Some(d) if d.is_zero() => Err(self.err(
                line.unwrap_or(self.line),
                key,
                "a backoff of zero would retry in a tight loop; give at least \"1ms\"",
            )),
            d => Ok(d),
        }
    }
}

pub(super) fn describe(v: &toml::Value) -> String {
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

pub(super) fn instance(
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
    match instance_keys(file, text, (is_sink, name, table, line), entries) {
        Ok(i) => Ok(Instance {
            file: path.to_path_buf(),
            secrets,
            ..i
        }),
        Err(e) => Err(ConfigError(subst::redact(&e.0, &secrets))),
    }
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
    // The id becomes part of a file name (libID.so in plugin_dir): no '/', no "..".
    if !valid_name(&plugin) {
        return Err(ConfigError(format!(
            "{file}:{line}: [{}] plugin: {plugin:?} is not a plugin id: letters, digits, '-' and '_' only, e.g. plugin = \"console\"",
            r.table
        )));
    }
    let log_level = r
        .take::<Level>(
            "log_level",
            "one of \"off\", \"error\", \"warn\", \"info\", \"debug\", \"trace\"",
        )?
        .map(Into::into);
    let restart_backoff = r
        .take_backoff("restart_backoff")?
        .unwrap_or(default::RESTART_BACKOFF);
    let restart_backoff_max = r
        .take_backoff("restart_backoff_max")?
        .unwrap_or(default::RESTART_BACKOFF_MAX);
    let role = if is_sink {
        let mut sink = SinkSettings {
            inputs: r.take("inputs", "an array of source names, e.g. [\"temp\"]")?,
            ..SinkSettings::default()
        };
        if let Some(v) = r.take_positive("batch_size", MAX_BATCH_SIZE)? {
            sink.batch_size = v;
        }
        if let Some(v) = r.take_duration("batch_timeout")? {
            sink.batch_timeout = v;
        }
        if let Some(v) = r.take_positive("queue_capacity", MAX_QUEUE_CAPACITY)? {
            sink.queue_capacity = v;
        }
        if let Some(v) = r.take_backoff("retry_backoff")? {
            sink.retry_backoff = v;
        }
        if let Some(v) = r.take_backoff("retry_backoff_max")? {
            sink.retry_backoff_max = v;
        }
        sink.buffer = r.take_buffer()?;
        if let Some(v) = r.take_size("dead_letter_max_size")? {
            sink.dead_letter_max_size = v;
        }
        sink.dead_letter_device_share = r.take_size("dead_letter_device_share")?;
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
            one_line(&toml::Value::String(k.get_ref().clone()))
        };
        lines[at] = format!("{key} = {}", one_line(v.get_ref()));
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// `v` as TOML on one line. `toml`'s own rendering writes a string holding a line break as a
/// multi-line string, which moved every later key down, and the lines plugins name in their
/// errors with them.
fn one_line(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => {
            let mut out = String::with_capacity(s.len() + 2);
            out.push('"');
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        toml::Value::Array(a) => {
            let items: Vec<String> = a.iter().map(one_line).collect();
            format!("[{}]", items.join(", "))
        }
        toml::Value::Table(t) => {
            let items: Vec<String> = t
                .iter()
                .map(|(k, v)| {
                    let key = if valid_name(k) {
                        k.clone()
                    } else {
                        one_line(&toml::Value::String(k.clone()))
                    };
                    format!("{key} = {}", one_line(v))
                })
                .collect();
            if items.is_empty() {
                "{}".to_owned()
            } else {
                format!("{{ {} }}", items.join(", "))
            }
        }
        other => other.to_string(),
    }
}
