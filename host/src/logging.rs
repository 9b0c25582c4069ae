//! The host's log: `tracing` to stderr, human-readable or JSON, with a level per instance; and
//! the logger handed to each plugin library, through which the plugins' own `tracing` events
//! arrive (a plugin has its own copy of `tracing`'s statics, so they cannot reach the host's
//! subscriber directly).

use crate::config::LogFormat;
use gateway_sdk::abi::{HostLog, LogRecord};
use std::{
    borrow::Cow,
    collections::HashMap,
    io::{self, IsTerminal, Write},
    sync::{Arc, RwLock},
};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::{filter::Targets, layer::SubscriberExt, util::SubscriberInitExt};

/// The target under which plugin events appear in the host's log.
pub const PLUGIN_TARGET: &str = "plugin";

/// Installs the host's subscriber. `GATEWAY_LOG` (`RUST_LOG`'s `level,target=level` directives,
/// e.g. `debug,plugin=trace`) overrides the levels.
///
/// (Level-by-target filtering, not `EnvFilter`: that one needs `regex`, and the `regex` that
/// other crates of the workspace unify into the build brings some 400 KB of Unicode tables into
/// the binary.)
pub fn init(format: LogFormat, level: LevelFilter, plugin_level: LevelFilter) {
    let configured = Targets::new()
        .with_default(level)
        .with_target(PLUGIN_TARGET, plugin_level);
    let filter = match std::env::var("GATEWAY_LOG") {
        Ok(s) if !s.trim().is_empty() => s.parse::<Targets>().unwrap_or_else(|e| {
            eprintln!("GATEWAY_LOG={s:?} is not understood ({e}); using the configured levels");
            configured
        }),
        _ => configured,
    };
    // Everything passes the builder's own level filter; `filter` decides.
    let builder = tracing_subscriber::fmt()
        .with_max_level(LevelFilter::TRACE)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder
            .fmt_fields(text_fields())
            .with_writer(|| Stderr(one_line))
            .finish()
            .with(filter)
            .try_init(),
        LogFormat::Json => builder
            .with_writer(|| {
                Stderr(|event| match json_redacted(event) {
                    Cow::Borrowed(event) => json_escaped(event),
                    Cow::Owned(event) => Cow::Owned(json_escaped(&event).into_owned()),
                })
            })
            .json()
            .flatten_event(true)
            .finish()
            .with(filter)
            .try_init(),
    };
}

/// How the text format writes fields: as tracing-subscriber's default does (the message as it
/// is, the others `name=value`), each value passed through [`gateway_sdk::text::one_line`].
/// The default escapes ESC only in the message, so a `%` field holding a peer's text (an
/// error quoting a certificate's name or a reading's unit) could move the cursor, clear the
/// screen or plant a link on the terminal of whoever reads the log, and no field escaped the
/// bidirectional controls or the line separators.
fn text_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static {
    use std::fmt::Write as _;
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(
        |w: &mut tracing_subscriber::fmt::format::Writer<'_>,
         field: &tracing::field::Field,
         value: &dyn std::fmt::Debug| {
            let mut text = String::new();
            write!(text, "{value:?}")?;
            // Values `${...}` put into the config, kept out (before escaping: a secret after
            // a line break is still one word of its own).
            let text = crate::config::redact_known(&text);
            let text = gateway_sdk::text::one_line(&text);
            match field.name() {
                "message" => w.write_str(&text),
                name if w.has_ansi_escapes() => {
                    write!(w, "\x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m{text}")
                }
                name => write!(w, "{name}={text}"),
            }
        },
    )
    .delimited(" ")
}

/// stderr, each event passed through an escaping function first ([`one_line`] for the text
/// format, [`json_escaped`] for JSON). tracing-subscriber writes each event with one
/// `write_all`.
///
/// The values `${...}` put into the config are shown as their references
/// ([`crate::config::redact_known`]) in every field's value, whoever wrote the line (the host
/// or a plugin) and whatever it quotes (a plugin's error naming a URL with its password in
/// it); never in the time, level, target or field names: the text format's fields do it as
/// they are written ([`text_fields`]), the JSON format's here ([`json_redacted`]).
struct Stderr(fn(&[u8]) -> Cow<'_, [u8]>);

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stderr().lock().write_all(&(self.0)(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// `event` with the line breaks before its last byte escaped: the text format writes a field
/// as it is, so a line break in one (a peer's name in a refusal, a server's message) would
/// start what reads as a log line of its own, forged. Inside an event, `\n` and `\r` are
/// written as those two characters (JSON escapes them itself).
fn one_line(event: &[u8]) -> Cow<'_, [u8]> {
    let body = event.strip_suffix(b"\n").unwrap_or(event);
    if !body.iter().any(|&b| b == b'\n' || b == b'\r') {
        return Cow::Borrowed(event);
    }
    let mut out = Vec::with_capacity(event.len() + 16);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b => out.push(b),
        }
    }
    if body.len() < event.len() {
        out.push(b'\n');
    }
    Cow::Owned(out)
}

/// `event` (one JSON object and a line break) with the values `${...}` put into the config
/// shown as their references in every string but the time, level and target: decoded first, so
/// that a value quoted with escapes (a `"` in a password, a line break before it) is found as
/// it is, and encoded again by serde_json.
fn json_redacted(event: &[u8]) -> Cow<'_, [u8]> {
    let Ok(text) = std::str::from_utf8(event) else {
        return Cow::Borrowed(event);
    };
    // Most lines quote none: those are written as they are, unparsed.
    if !crate::config::may_quote_known(text) {
        return Cow::Borrowed(event);
    }
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_str(text) else {
        // Not one JSON object (it should always be): redacted as text rather than not at all.
        return match crate::config::redact_known(text) {
            Cow::Owned(r) => Cow::Owned(r.into_bytes()),
            Cow::Borrowed(_) => Cow::Borrowed(event),
        };
    };
    fn redact(v: &mut serde_json::Value, changed: &mut bool) {
        match v {
            serde_json::Value::String(s) => {
                if let Cow::Owned(r) = crate::config::redact_known(s) {
                    *s = r;
                    *changed = true;
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|v| redact(v, changed)),
            serde_json::Value::Object(o) => o.values_mut().for_each(|v| redact(v, changed)),
            _ => {}
        }
    }
    let mut changed = false;
    for (key, v) in fields.iter_mut() {
        if !matches!(key.as_str(), "timestamp" | "level" | "target") {
            redact(v, &mut changed);
        }
    }
    if !changed {
        return Cow::Borrowed(event);
    }
    let mut out = serde_json::Value::Object(fields).to_string().into_bytes();
    out.push(b'\n');
    Cow::Owned(out)
}

/// `event` (serde_json's output) with the characters [`gateway_sdk::text::shown_escaped`] names,
/// but those below U+0020 (serde_json has escaped all but the event's last line break), as
/// `\uXXXX`: serde_json escapes the C0 controls only, so DEL, the C1 controls (U+009B acts
/// as ESC `[` on some terminals) and the bidirectional controls and line separators of a
/// peer's text reached whoever reads the log with `journalctl` or `tail` raw. A JSON parser
/// reads each escape back as the same character.
fn json_escaped(event: &[u8]) -> Cow<'_, [u8]> {
    let bad = |c: char| c >= '\u{7f}' && gateway_sdk::text::shown_escaped(c);
    let Ok(text) = std::str::from_utf8(event) else {
        return Cow::Borrowed(event);
    };
    if !text.contains(bad) {
        return Cow::Borrowed(event);
    }
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if bad(c) {
            // A character past U+FFFF (the tags) is written as its UTF-16 pair, as JSON has it.
            for unit in c.encode_utf16(&mut [0; 2]) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out.into_bytes())
}

/// The level `GATEWAY_LOG` gives plugin events (its directive for the target `plugin`, or its
/// default level), when it is set and understood.
fn plugin_level_in(spec: &str) -> Option<LevelFilter> {
    use tracing::Level;
    if spec.trim().is_empty() {
        return None;
    }
    let targets = spec.parse::<Targets>().ok()?;
    let level = [
        Level::TRACE,
        Level::DEBUG,
        Level::INFO,
        Level::WARN,
        Level::ERROR,
    ]
    .into_iter()
    .find(|l| targets.would_enable(PLUGIN_TARGET, l));
    Some(level.map_or(LevelFilter::OFF, LevelFilter::from_level))
}

/// Per-instance levels for plugin events, and what plugin instances show on the metrics page.
#[derive(Debug)]
pub struct HostLogger {
    default: LevelFilter,
    levels: RwLock<HashMap<String, LevelFilter>>,
    /// The level `GATEWAY_LOG` sets for every instance: it overrides the configured ones, as it
    /// overrides the host's.
    forced: Option<LevelFilter>,
    /// The plugins' metric families ([`gateway_sdk::metrics`]).
    pub metrics: Arc<crate::plugin_metrics::PluginMetrics>,
}

impl HostLogger {
    /// Plugin events at `default` and above are logged unless an instance has its own level,
    /// or `GATEWAY_LOG` sets one for them all.
    pub fn new(default: LevelFilter) -> Arc<Self> {
        let forced = std::env::var("GATEWAY_LOG")
            .ok()
            .and_then(|spec| plugin_level_in(&spec));
        Self::with_forced(default, forced)
    }

    fn with_forced(default: LevelFilter, forced: Option<LevelFilter>) -> Arc<Self> {
        Arc::new(HostLogger {
            default,
            levels: RwLock::new(HashMap::new()),
            forced,
            metrics: Arc::default(),
        })
    }

    /// The instances' own levels.
    pub fn levels(&self) -> HashMap<String, LevelFilter> {
        self.levels.read().unwrap().clone()
    }

    /// Sets every instance's own level: those in `levels`, and no other.
    pub fn set_levels(&self, levels: HashMap<String, LevelFilter>) {
        *self.levels.write().unwrap() = levels;
    }

    /// Sets the level of one instance's plugin events.
    pub fn set_level(&self, instance: &str, level: LevelFilter) {
        self.levels
            .write()
            .unwrap()
            .insert(instance.to_owned(), level);
    }

    /// The most verbose level any instance uses: what plugins need to produce at all.
    pub fn max_level(&self) -> LevelFilter {
        if let Some(forced) = self.forced {
            return forced;
        }
        self.levels
            .read()
            .unwrap()
            .values()
            .copied()
            .fold(self.default, LevelFilter::max)
    }

    fn level_of(&self, instance: &str) -> LevelFilter {
        if let Some(forced) = self.forced {
            return forced;
        }
        self.levels
            .read()
            .unwrap()
            .get(instance)
            .copied()
            .unwrap_or(self.default)
    }

    /// The logger object handed to library `library`, loaded from `file`.
    pub fn for_library(
        this: &Arc<Self>,
        library: &str,
        file: crate::plugin_metrics::LibraryFile,
    ) -> LibraryLog {
        LibraryLog {
            host: this.clone(),
            library: library.to_owned(),
            file,
        }
    }
}

/// The logger one library writes to.
pub struct LibraryLog {
    host: Arc<HostLogger>,
    library: String,
    /// Its file: it speaks only for the instances built from it
    /// ([`crate::plugin_metrics::PluginMetrics::speaks_for`]).
    file: crate::plugin_metrics::LibraryFile,
}

fn level_number(l: LevelFilter) -> u8 {
    match l.into_level() {
        None => 0,
        Some(tracing::Level::ERROR) => 1,
        Some(tracing::Level::WARN) => 2,
        Some(tracing::Level::INFO) => 3,
        Some(tracing::Level::DEBUG) => 4,
        Some(tracing::Level::TRACE) => 5,
    }
}

impl HostLog for LibraryLog {
    fn max_level(&self) -> u8 {
        level_number(self.host.max_level())
    }

    fn log(&self, record: LogRecord<'_>) {
        use crate::plugin_metrics::Speaks;
        let instance = record.instance.as_str();
        // What a library says for an instance not built from it is its own.
        let speaks = match instance {
            "" => Speaks::Unknown,
            _ => self.host.metrics.speaks_for(instance, &self.file),
        };
        let own = speaks == Speaks::Own;
        if record.target.as_str() == gateway_sdk::abi::METRICS_TARGET {
            match speaks {
                Speaks::Own => {
                    let families = gateway_sdk::metrics::decode(record.message.as_str());
                    self.host.metrics.publish(instance, families);
                }
                Speaks::Foreign => self.host.metrics.refuse_foreign(&self.library, instance),
                // No instance of that name: not shown, as one a reload removed is not.
                Speaks::Unknown => {}
            }
            return;
        }
        let who = if own { instance } else { self.library.as_str() };
        if record.level > level_number(self.host.level_of(who)) {
            return;
        }
        let (msg, module) = (record.message.as_str(), record.target.as_str());
        match record.level {
            0 | 1 => tracing::error!(target: PLUGIN_TARGET, plugin = who, module, "{msg}"),
            2 => tracing::warn!(target: PLUGIN_TARGET, plugin = who, module, "{msg}"),
            3 => tracing::info!(target: PLUGIN_TARGET, plugin = who, module, "{msg}"),
            4 => tracing::debug!(target: PLUGIN_TARGET, plugin = who, module, "{msg}"),
            _ => tracing::trace!(target: PLUGIN_TARGET, plugin = who, module, "{msg}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{json_escaped, json_redacted, one_line, plugin_level_in, text_fields, HostLogger};
    use std::borrow::Cow;
    use tracing::level_filters::LevelFilter;

    #[test]
    fn gateway_log_sets_the_level_of_every_plugin_instance() {
        assert_eq!(
            plugin_level_in("debug,plugin=trace"),
            Some(LevelFilter::TRACE)
        );
        assert_eq!(plugin_level_in("debug"), Some(LevelFilter::DEBUG));
        assert_eq!(plugin_level_in("info,plugin=off"), Some(LevelFilter::OFF));
        assert_eq!(
            plugin_level_in("gateway_host=trace"),
            Some(LevelFilter::OFF)
        );
        assert_eq!(plugin_level_in(" "), None);
        assert_eq!(plugin_level_in("plugin=loud"), None);

        let logger = HostLogger::with_forced(LevelFilter::INFO, Some(LevelFilter::TRACE));
        logger.set_level("quiet", LevelFilter::ERROR);
        assert_eq!(logger.level_of("quiet"), LevelFilter::TRACE);
        assert_eq!(logger.level_of("other"), LevelFilter::TRACE);
        assert_eq!(logger.max_level(), LevelFilter::TRACE);
        let logger = HostLogger::with_forced(LevelFilter::INFO, None);
        logger.set_level("quiet", LevelFilter::ERROR);
        assert_eq!(logger.level_of("quiet"), LevelFilter::ERROR);
        assert_eq!(logger.level_of("other"), LevelFilter::INFO);
    }
    use std::sync::{Arc, Mutex};

    #[test]
    fn no_field_can_act_on_a_terminal() {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(text_fields())
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let hostile = "a\x1b[2J\u{202e}b\x0e\u{2028}c";
            tracing::warn!(error = %hostile, peer = ?hostile, n = 3, "refused {hostile}");
        });
        let line = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(
            !line.contains(['\x1b', '\u{202e}', '\x0e', '\u{2028}']),
            "{line:?}"
        );
        assert!(
            line.trim_end().ends_with(
                r#"refused a\u{1b}[2J\u{202e}b\u{e}\u{2028}c error=a\u{1b}[2J\u{202e}b\u{e}\u{2028}c peer="a\u{1b}[2J\u{202e}b\u{e}\u{2028}c" n=3"#
            ),
            "{line}"
        );
    }

    #[test]
    fn the_json_format_escapes_what_serde_json_leaves_raw() {
        // A character past U+FFFF (a tag) as its UTF-16 pair, as JSON writes it.
        let event = serde_json::json!({ "error": "a\u{202e}b\u{9b}2J\u{7f}\u{2028}c\u{e9}\u{200b}\u{e0041}" });
        let line = format!("{event}\n");
        let escaped = json_escaped(line.as_bytes());
        let escaped = std::str::from_utf8(&escaped).unwrap();
        assert_eq!(
            escaped,
            "{\"error\":\"a\\u202eb\\u009b2J\\u007f\\u2028c\u{e9}\\u200b\\udb40\\udc41\"}\n"
        );
        let back: serde_json::Value = serde_json::from_str(escaped).unwrap();
        assert_eq!(back, event);
        assert!(matches!(
            json_escaped(b"{\"plain\":1}\n"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn an_event_is_one_line_whatever_its_fields_hold() {
        assert_eq!(&*one_line(b"plain\n"), b"plain\n");
        assert_eq!(&*one_line(b"no end"), b"no end");
        assert_eq!(
            &*one_line(b"a\nINFO forged\r\n"),
            &b"a\\nINFO forged\\r\n"[..]
        );
        assert_eq!(&*one_line(b"a\n\n"), &b"a\\n\n"[..]);
    }

    #[test]
    fn json_lines_keep_substituted_values_out_of_every_field_but_time_level_and_target() {
        std::env::set_var("GW_LOG_JSON_PW", "pa\"ss9-secret");
        std::env::set_var("GW_LOG_JSON_TOKEN", "Tk7secret");
        let mut secrets = Vec::new();
        let base = std::path::Path::new("/nonexistent");
        crate::config::substitute("${GW_LOG_JSON_PW}", base, &mut secrets).unwrap();
        crate::config::substitute("${GW_LOG_JSON_TOKEN}", base, &mut secrets).unwrap();
        let line = serde_json::json!({
            "timestamp": "2026-12-05T00:00:00Z",
            "level": "WARN",
            "target": "plugin",
            // Quoted with `{:?}` (the `"` escaped), and after a line break.
            "message": format!("refused {:?}", "pa\"ss9-secret"),
            "error": "bad token:\nTk7secret",
            "nested": ["Tk7secret"],
        })
        .to_string()
            + "\n";
        let out = json_redacted(line.as_bytes());
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["message"], "refused \"${GW_LOG_JSON_PW}\"");
        assert_eq!(v["error"], "bad token:\n${GW_LOG_JSON_TOKEN}");
        assert_eq!(v["nested"][0], "${GW_LOG_JSON_TOKEN}");
        assert_eq!(v["level"], "WARN");
        // A line quoting none is written as it is.
        let plain = b"{\"message\":\"nothing\"}\n";
        assert!(matches!(json_redacted(plain), Cow::Borrowed(_)));
        // A line that is not one JSON object is redacted as text, not written as it is.
        let broken = "{\"message\":\"Tk7secret\"".as_bytes();
        assert_eq!(
            std::str::from_utf8(&json_redacted(broken)).unwrap(),
            "{\"message\":\"${GW_LOG_JSON_TOKEN}\""
        );
    }

    /// Found in a review: a library could publish metrics under any instance's name (and
    /// erase the real ones), its log lines said to be that instance's.
    #[test]
    fn a_library_publishes_only_for_instances_of_its_own_plugins() {
        use abi_stable::std_types::RStr;
        use gateway_sdk::abi::{HostLog, LogRecord};
        let host = HostLogger::with_forced(LevelFilter::INFO, None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libthief.so");
        let ingress = dir.path().join("libcoaps_ingress.so");
        std::fs::write(&path, "thief").unwrap();
        std::fs::write(&ingress, "ingress").unwrap();
        use crate::plugin_metrics::LibraryFile;
        let log = HostLogger::for_library(&host, "thief", LibraryFile::of(&path));
        host.metrics.allow("coaps-in", &LibraryFile::of(&ingress));
        host.metrics.allow("mine", &LibraryFile::of(&path));
        let mut m = gateway_sdk::metrics::Metrics::new();
        m.counter(
            "gateway_dtls_handshakes_total",
            "H.",
            &[("result", "refused")],
            0,
        );
        let text = gateway_sdk::metrics::encode(m.families());
        for instance in ["coaps-in", "mine"] {
            log.log(LogRecord {
                level: 5,
                instance: RStr::from_str(instance),
                target: RStr::from_str(gateway_sdk::abi::METRICS_TARGET),
                message: RStr::from_str(&text),
            });
        }
        let shown: Vec<String> = host
            .metrics
            .snapshot()
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(shown, ["mine"]);
    }
}
