//! Forwards the plugin's `tracing` events to the host's log.
//!
//! A plugin library has its own copy of `tracing`'s global dispatcher, so events it emits never
//! reach the host's subscriber. When the host loads the library it hands over a logger
//! ([`HostLogBox`]); this module installs a subscriber in the library that formats each event
//! and passes it on, tagged with the instance whose span is current (the SDK enters one around
//! every call from the host). It also installs a panic hook that logs the panic message and
//! location before the SDK turns the panic into an error.
//!
//! Events below the most verbose level the host wants from the library are dropped here,
//! before they are formatted. That level changes when a reload sets an instance's `log_level`,
//! and the host has no way to tell the library: it is read again when an instance is built
//! and, at most once a second, when an event is logged ([`refresh_levels`]).

use crate::abi::{HostLogBox, LogRecord};
use abi_stable::std_types::RStr;
use std::{
    cell::RefCell,
    collections::HashMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Instant,
};
use tracing::{
    field::{Field, Visit},
    level_filters::LevelFilter,
    span,
    subscriber::Interest,
    Event, Level, Metadata, Subscriber,
};

static HOST: OnceLock<HostLogBox> = OnceLock::new();

/// Hands `instance`'s metric families to the host (nothing outside a host).
pub(crate) fn publish_metrics(instance: &str, families: &[crate::abi::MetricFamily]) {
    if let Some(host) = HOST.get() {
        // Label values are the plugin's to choose: one may quote what a secret-bearing
        // setting holds, and the metrics page is read by whoever reaches it. Only they are
        // redacted: a secret that is a number or a word of a metric's name would otherwise
        // break a sample's value or the name.
        let message = crate::metrics::encode_with(families, &|v| redacted(v.to_owned()));
        host.log(LogRecord {
            level: 5,
            instance: RStr::from_str(instance),
            target: RStr::from_str(crate::abi::METRICS_TARGET),
            message: RStr::from_str(&message),
        });
    }
}

/// The level filter of the host's level number (0 = off, 1 = error .. 5 = trace).
fn filter_of(level: u8) -> LevelFilter {
    match level {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// The most verbose level the host wants from this library, as its level number.
static MAX: AtomicU8 = AtomicU8::new(0);
/// When [`MAX`] was last read from the host: milliseconds since [`EPOCH`].
static CHECKED: AtomicU64 = AtomicU64::new(0);
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Reads the host's level again (`force`, or a second after the last time); if it changed,
/// `tracing` asks the subscriber again which events it wants.
pub(crate) fn refresh_levels(force: bool) {
    let Some(host) = HOST.get() else { return };
    let now = EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64;
    let last = CHECKED.load(Ordering::Relaxed);
    if !force && now.saturating_sub(last) < 1000 {
        return;
    }
    if CHECKED
        .compare_exchange(
            last,
            now.max(last + 1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        )
        .is_err()
    {
        return; // another thread is at it
    }
    let level = host.max_level();
    if MAX.swap(level, Ordering::Relaxed) != level {
        tracing::callsite::rebuild_interest_cache();
    }
}

/// Installs the host's logger; later calls are ignored.
pub(crate) fn init(host: HostLogBox) {
    let level = host.max_level();
    if HOST.set(host).is_err() {
        return;
    }
    MAX.store(level, Ordering::Relaxed);
    EPOCH.get_or_init(Instant::now);
    let subscriber = Forward {
        spans: Mutex::new(Spans::default()),
    };
    let _ = tracing::subscriber::set_global_default(subscriber);
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(target: "panic", "{info}");
    }));
}

/// The secrets this library read through [`crate::InitContext::secret`]: no event carries
/// them to the host, whoever logs it (a dependency that traces its connect options with the
/// password in them, say).
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Whether [`SECRETS`] holds any: an event of a library without secrets takes no lock.
static ANY_SECRET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What stands in a message for a secret.
const REDACTED: &str = "<redacted>";

/// Keeps `secret` out of every event this library passes on from now on ([`SECRETS`]), as
/// it is and as `{:?}` writes it (a dependency's Debug of its options). Values of fewer than 4
/// bytes are not kept (no secret is that short); a short one, or a number, is taken out only
/// where it stands as a word of its own ([`crate::text::replace_secret`]).
pub(crate) fn keep_secret(secret: &str) {
    let forms = crate::text::secret_forms(secret);
    if forms.is_empty() {
        return;
    }
    let mut all = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    for form in forms {
        if !all.contains(&form) {
            all.push(form);
        }
    }
    // The longest first, so that one that holds another is taken out whole.
    all.sort_by_key(|s| std::cmp::Reverse(s.len()));
    ANY_SECRET.store(true, Ordering::Relaxed);
}

/// `message` without the secrets kept ([`crate::text::replace_secret`]).
fn redacted(message: String) -> String {
    if !ANY_SECRET.load(Ordering::Relaxed) {
        return message;
    }
    let all = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    all.iter().fold(message, |m, secret| {
        match crate::text::replace_secret(&m, secret, REDACTED) {
            std::borrow::Cow::Borrowed(_) => m,
            std::borrow::Cow::Owned(r) => r,
        }
    })
}

/// `error` without the secrets kept: an error's message crosses to the host, which writes it
/// to its log, to `gateway check`'s output and to dead-letter files (a driver's error that
/// quotes its connection URL, password and all, say).
pub(crate) fn redacted_error(mut error: crate::PluginError) -> crate::PluginError {
    if ANY_SECRET.load(Ordering::Relaxed) {
        let message = std::mem::take(&mut error.message).into_string();
        error.message = redacted(message).into();
    }
    error
}

/// A subscriber that keeps, for each live span, only the instance it belongs to (its own
/// `instance` field or its parent's), and passes each event to the host. Smaller than
/// `tracing-subscriber`'s registry, which every plugin library would otherwise carry (its code
/// and a 32 KB slab each).
struct Forward {
    spans: Mutex<Spans>,
}

#[derive(Default)]
struct Spans {
    last: u64,
    live: HashMap<u64, SpanData>,
}

struct SpanData {
    /// Shared by the span's children (a clone is a reference count).
    instance: Option<Arc<str>>,
    meta: &'static Metadata<'static>,
    refs: usize,
}

thread_local! {
    /// The spans entered on this thread, innermost last.
    static ENTERED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

fn entered() -> Option<u64> {
    ENTERED.with(|e| e.borrow().last().copied())
}

/// The span a new span or an event belongs to: its explicit parent, else (unless it was made a
/// root) the innermost span entered on this thread.
fn parent(explicit: Option<&span::Id>, contextual: bool) -> Option<u64> {
    match explicit {
        Some(p) => Some(p.into_u64()),
        None if contextual => entered(),
        None => None,
    }
}

impl Forward {
    fn spans(&self) -> std::sync::MutexGuard<'_, Spans> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn instance_of(&self, span: Option<u64>) -> Option<Arc<str>> {
        span.and_then(|id| self.spans().live.get(&id)?.instance.clone())
    }
}

/// The instance a span of `meta` names with its field `name`, as the host's log shows it. A
/// dependency's span may have a field of that name too: its value is redacted. The SDK's own
/// span's is the instance's name from the config, which the host looks up (its log_level):
/// kept as it is.
fn instance_shown(meta: &Metadata<'_>, name: String) -> Arc<str> {
    if meta.target().starts_with("gateway_sdk") {
        Arc::from(name)
    } else {
        Arc::from(redacted(name))
    }
}

impl Subscriber for Forward {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.enabled(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        filter_of(MAX.load(Ordering::Relaxed)) >= *meta.level()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(filter_of(MAX.load(Ordering::Relaxed)))
    }

    fn new_span(&self, attrs: &span::Attributes<'_>) -> span::Id {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let parent = parent(attrs.parent(), attrs.is_contextual());
        let named = fields
            .instance
            .map(|name| instance_shown(attrs.metadata(), name));
        let mut spans = self.spans();
        let instance = named.or_else(|| parent.and_then(|p| spans.live.get(&p)?.instance.clone()));
        spans.last += 1;
        let id = spans.last;
        spans.live.insert(
            id,
            SpanData {
                instance,
                meta: attrs.metadata(),
                refs: 1,
            },
        );
        span::Id::from_u64(id)
    }

    fn record(&self, span: &span::Id, values: &span::Record<'_>) {
        let mut fields = Fields::default();
        values.record(&mut fields);
        if let Some(name) = fields.instance {
            if let Some(data) = self.spans().live.get_mut(&span.into_u64()) {
                data.instance = Some(instance_shown(data.meta, name));
            }
        }
    }

    fn record_follows_from(&self, _span: &span::Id, _follows: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let Some(host) = HOST.get() else { return };
        // Only events that pass cost this: a disabled one never gets here.
        refresh_levels(false);
        let mut fields = Fields::default();
        event.record(&mut fields);
        let instance = self.instance_of(parent(event.parent(), event.is_contextual()));
        let mut message = fields.message;
        message.push_str(&fields.rest);
        let message = redacted(message);
        let meta = event.metadata();
        host.log(LogRecord {
            level: level_number(meta.level()),
            instance: RStr::from_str(instance.as_deref().unwrap_or_default()),
            target: RStr::from_str(meta.target()),
            message: RStr::from_str(&message),
        });
    }

    fn enter(&self, span: &span::Id) {
        ENTERED.with(|e| e.borrow_mut().push(span.into_u64()));
    }

    fn exit(&self, span: &span::Id) {
        let id = span.into_u64();
        ENTERED.with(|e| {
            let mut e = e.borrow_mut();
            if let Some(at) = e.iter().rposition(|x| *x == id) {
                e.remove(at);
            }
        });
    }

    fn clone_span(&self, span: &span::Id) -> span::Id {
        if let Some(data) = self.spans().live.get_mut(&span.into_u64()) {
            data.refs += 1;
        }
        span.clone()
    }

    fn try_close(&self, span: span::Id) -> bool {
        let mut spans = self.spans();
        let id = span.into_u64();
        match spans.live.get_mut(&id) {
            Some(data) if data.refs > 1 => {
                data.refs -= 1;
                false
            }
            Some(_) => {
                spans.live.remove(&id);
                true
            }
            None => false,
        }
    }

    fn current_span(&self) -> tracing_core::span::Current {
        match entered() {
            Some(id) => match self.spans().live.get(&id) {
                Some(data) => tracing_core::span::Current::new(span::Id::from_u64(id), data.meta),
                None => tracing_core::span::Current::none(),
            },
            None => tracing_core::span::Current::none(),
        }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
    instance: Option<String>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "instance" => self.instance = Some(format!("{value:?}")),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            "instance" => self.instance = Some(value.to_owned()),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
}

fn level_number(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

#[cfg(test)]
mod tests {
    use crate::text::replace_secret;

    #[test]
    fn a_short_secret_is_replaced_where_it_stands_alone() {
        let r = |t: &str, w: &str| replace_secret(t, w, super::REDACTED).into_owned();
        assert_eq!(
            r("gateway with gate, gate_1 and (gate)", "gate"),
            "gateway with <redacted>, gate_1 and (<redacted>)"
        );
        // A side that is punctuation may touch a word.
        assert_eq!(r("a-k9!b", "-k9!"), "a<redacted>b");
        // An overlapping match after one that does not stand alone is found.
        assert_eq!(r("Xab-ab-ab ", "ab-ab"), "Xab-<redacted> ");
    }
}
