//! Forwards the plugin's `tracing` events to the host's log.
//!
//! A plugin library has its own copy of `tracing`'s global dispatcher, so events it emits never
//! reach the host's subscriber. When the host loads the library it hands over a logger
//! ([`HostLogBox`]); this module installs a subscriber in the library that formats each event
//! and passes it on, tagged with the instance whose span is current (the SDK enters one around
//! every call from the host). It also installs a panic hook that logs the panic message and
//! location before the SDK turns the panic into an error.

use crate::abi::{HostLogBox, LogRecord};
use abi_stable::std_types::RStr;
use std::{fmt::Write as _, sync::OnceLock};
use tracing::{
    field::{Field, Visit},
    span, Event, Level, Subscriber,
};
use tracing_subscriber::{
    filter::LevelFilter, layer::Context, prelude::*, registry::LookupSpan, Layer,
};

static HOST: OnceLock<HostLogBox> = OnceLock::new();

/// Installs the host's logger; later calls are ignored.
pub(crate) fn init(host: HostLogBox) {
    let max = match host.max_level() {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    if HOST.set(host).is_err() {
        return;
    }
    let subscriber = tracing_subscriber::registry().with(Forward.with_filter(max));
    let _ = tracing::subscriber::set_global_default(subscriber);
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(target: "panic", "{info}");
    }));
}

/// The name of the instance a span belongs to, kept in the span's extensions.
struct InstanceName(String);

struct Forward;

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

impl<S> Layer<S> for Forward
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(name), Some(span)) = (fields.instance, ctx.span(id)) {
            span.extensions_mut().insert(InstanceName(name));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(host) = HOST.get() else { return };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let instance = ctx
            .event_scope(event)
            .and_then(|scope| {
                scope.from_root().fold(None, |found, span| {
                    span.extensions()
                        .get::<InstanceName>()
                        .map(|n| n.0.clone())
                        .or(found)
                })
            })
            .unwrap_or_default();
        let mut message = fields.message;
        message.push_str(&fields.rest);
        let meta = event.metadata();
        host.log(LogRecord {
            level: level_number(meta.level()),
            instance: RStr::from_str(&instance),
            target: RStr::from_str(meta.target()),
            message: RStr::from_str(&message),
        });
    }
}
