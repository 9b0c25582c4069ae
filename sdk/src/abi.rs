//! What crosses the boundary between the host and a plugin library. Plugin authors do not use
//! this module; it is public so that the host can.
//!
//! # The promise
//! - The library's root module ([`PluginLibrary`]) is an `abi_stable` prefix type: later SDK
//!   releases may add fields after the last one, and a host reads them only when the library has
//!   them. The trait objects ([`SourceFfi`], [`SinkFfi`], the host's [`HostSourceCtx`]) have
//!   prefix vtables with the same property.
//! - The host refuses a library whose SDK version differs from its own in the major version
//!   (for `0.y.z`, in `y`), naming both versions, and `abi_stable` then checks every type's layout.
//! - Nothing here is a Rust trait object, `String` or `Vec`: only `abi_stable` types.
//! - No call unwinds across the boundary: the SDK's shims catch panics and return
//!   [`ErrorKind::PANIC`](crate::ErrorKind::PANIC).

#![allow(non_local_definitions)] // emitted by `#[sabi_trait]`

use crate::{error::PluginError, reading::Reading};
use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

/// The SDK version plugins are built against and the host compares.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Whether a library built against SDK `plugin` may be loaded by a host built against SDK
/// `host`: same major version, where for `0.y.z` the `y` counts as the major.
pub fn versions_compatible(host: &str, plugin: &str) -> bool {
    fn major(v: &str) -> Option<(u64, u64)> {
        let mut parts = v.split('.');
        let a = parts.next()?.parse().ok()?;
        let b = parts.next()?.parse().ok()?;
        Some(if a == 0 { (0, b) } else { (a, 0) })
    }
    matches!((major(host), major(plugin)), (Some(h), Some(p)) if h == p)
}

/// The symbol by which a library built against this SDK says how it handles a panic: a `u8`,
/// 1 where panics unwind (Cargo's default, `panic = "unwind"`: the SDK turns each into an
/// error at the boundary), 0 where they abort (`panic = "abort"`: one panic would end the
/// whole gateway, so the host refuses the library). [`export!`](crate::export) defines it from
/// the plugin crate's own setting. A symbol of its own, outside the root module, so that
/// libraries built before it (gateway-sdk 0.1.1 and older) still load, and libraries built
/// after it load in older hosts: `abi_stable` refuses a root module shorter than the host's.
pub const UNWINDS_SYMBOL: &[u8] = b"gateway_plugin_unwinds\0";

/// Whether a plugin produces or takes readings.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PluginKind {
    /// Produces readings.
    Source,
    /// Takes readings.
    Sink,
}

impl PluginKind {
    /// `source` or `sink`.
    pub fn name(self) -> &'static str {
        match self {
            PluginKind::Source => "source",
            PluginKind::Sink => "sink",
        }
    }
}

/// The root module every plugin library exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginLibraryRef)))]
#[sabi(missing_field(panic))]
pub struct PluginLibrary {
    /// The SDK version the library was built against.
    pub sdk_version: RStr<'static>,
    /// The library's package name.
    pub name: RStr<'static>,
    /// The library's package version.
    pub version: RStr<'static>,
    /// Installs the host's logger in the library. Called once, before anything else.
    pub init: extern "C" fn(host: HostLogBox),
    /// The plugins the library exports.
    #[sabi(last_prefix_field)]
    pub plugins: extern "C" fn() -> RVec<PluginDescriptor>,
}

impl RootModule for PluginLibraryRef {
    declare_root_module_statics! {PluginLibraryRef}
    const BASE_NAME: &'static str = "gateway_plugin";
    const NAME: &'static str = "gateway plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new(SDK_VERSION);
}

/// Builds a source instance.
pub type NewSourceFn = extern "C" fn(&InstanceInfo) -> RResult<SourceBox, PluginError>;
/// Builds a sink instance.
pub type NewSinkFn = extern "C" fn(&InstanceInfo) -> RResult<SinkBox, PluginError>;

/// One plugin of a library.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct PluginDescriptor {
    /// The id used in `plugin = "..."`.
    pub id: RStr<'static>,
    /// Source or sink.
    pub kind: PluginKind,
    /// One line for `gateway plugins`.
    pub description: RStr<'static>,
    /// Set for sources.
    pub new_source: Option<extern "C" fn(&InstanceInfo) -> RResult<SourceBox, PluginError>>,
    /// Set for sinks.
    pub new_sink: Option<extern "C" fn(&InstanceInfo) -> RResult<SinkBox, PluginError>>,
}

/// What the host tells a plugin about the instance it builds.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct InstanceInfo {
    /// The instance name (the key of its table: `temp` in `[sources.temp]`).
    pub instance: RString,
    /// The gateway's device name (`[gateway] device`).
    pub device: RString,
    /// The plugin's own keys of the instance table, as TOML. Each key sits on the same line
    /// number as in the host's file, so parse errors point at the right line.
    pub config_toml: RString,
    /// The path of the host's config file, for error messages.
    pub config_file: RString,
    /// The table path of the instance (`sources.temp`), for error messages.
    pub table: RString,
    /// A directory the instance may keep state in (created by the host).
    pub data_dir: RString,
}

/// A log record from a plugin.
#[repr(C)]
#[derive(StableAbi)]
pub struct LogRecord<'a> {
    /// 1 = error, 2 = warn, 3 = info, 4 = debug, 5 = trace.
    pub level: u8,
    /// The instance the event belongs to, or empty when the SDK cannot tell.
    pub instance: RStr<'a>,
    /// The `tracing` target (module path) inside the plugin.
    pub target: RStr<'a>,
    /// The formatted message with its fields.
    pub message: RStr<'a>,
}

/// What kind of figure a [`MetricFamily`] holds (Prometheus's types).
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (restarts from 0 with the instance).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Cumulative buckets (`_bucket` samples with an `le` label), `_sum` and `_count`.
    Histogram,
}

/// One sample of a [`MetricFamily`].
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct MetricSample {
    /// Appended to the family's name: empty, or `_bucket`, `_sum`, `_count` for a histogram.
    pub suffix: RString,
    /// Label names and values (the host adds `instance`).
    pub labels: RVec<abi_stable::std_types::Tuple2<RString, RString>>,
    /// The value.
    pub value: f64,
}

/// A metric family a plugin instance shows on the host's metrics page (it crosses encoded, see
/// [`METRICS_TARGET`]).
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct MetricFamily {
    /// The name (`[a-zA-Z_:][a-zA-Z0-9_:]*`); the host shows nothing with another name.
    pub name: RString,
    /// One line of help.
    pub help: RString,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// The samples.
    pub samples: RVec<MetricSample>,
}

/// The host's logger, handed to each library once. Plugin metrics travel through it too, as
/// records of the target [`METRICS_TARGET`] (see [`crate::metrics`]): no method was added, so
/// libraries built before metrics existed load in a host that has them, and the other way round.
#[sabi_trait]
pub trait HostLog: Send + Sync {
    /// The most verbose level any instance of this library logs at (1 = error .. 5 = trace,
    /// 0 = off).
    fn max_level(&self) -> u8;
    /// Logs one record.
    #[sabi(last_prefix_field)]
    fn log(&self, record: LogRecord<'_>);
}

/// The `target` of a [`LogRecord`] that carries an instance's metric families, encoded by
/// [`crate::metrics::encode`], instead of a message. At level 5 (trace), so that a host that
/// does not know it logs it only when told to trace.
pub const METRICS_TARGET: &str = "gateway_sdk::metrics";
/// The host's logger as a boxed trait object.
pub type HostLogBox = HostLog_TO<'static, RBox<()>>;

/// Told once whether every sink a batch was routed to took it.
#[sabi_trait]
pub trait AckFfi: Send {
    /// Called at most once: `ROk` when every routed sink durably took the batch.
    #[sabi(last_prefix_field)]
    fn done(&mut self, outcome: RResult<(), PluginError>);
    /// Forgets the callback without calling it: the plugin's own use, for a batch that
    /// `try_emit` gave back. The host never calls it.
    fn disarm(&mut self) {}
}
/// An acknowledgement callback as a boxed trait object.
pub type AckBox = AckFfi_TO<'static, RBox<()>>;

/// What the host offers a running source.
#[sabi_trait]
pub trait HostSourceCtx: Send + Sync {
    /// Hands a batch to the host. Blocks while the queues of the routed sinks are full
    /// (backpressure). `ack`, when given, is called once every routed sink took the batch, or
    /// with the first error that made a sink give it up. Fails when the host is stopping.
    fn emit(&self, batch: RVec<Reading>, ack: ROption<AckBox>) -> RResult<(), PluginError>;
    /// Whether the host asked the source to stop.
    fn is_stopping(&self) -> bool;
    /// Sleeps up to `timeout_ms`, returning early with `true` when the host asks to stop.
    #[sabi(last_prefix_field)]
    fn wait_stop(&self, timeout_ms: u64) -> bool;
    /// Like `emit`, but never waits for room: when a routed sink's queue is full it fails at
    /// once with a retryable error and leaves `batch` and `ack` where they are; otherwise it
    /// takes both, as `emit` does. A host older than this method blocks, as `emit` does.
    fn try_emit(
        &self,
        batch: &mut RVec<Reading>,
        ack: &mut ROption<AckBox>,
    ) -> RResult<(), PluginError> {
        self.emit(
            std::mem::take(batch),
            std::mem::replace(ack, abi_stable::std_types::RNone),
        )
    }
}
/// The host's source context as a shared trait object.
pub type HostSourceCtxBox = HostSourceCtx_TO<'static, RBox<()>>;

/// A source instance, as the host sees it.
#[sabi_trait]
pub trait SourceFfi: Send {
    /// Runs until the host asks to stop (or the source has nothing more to produce).
    #[sabi(last_prefix_field)]
    fn run(&mut self, ctx: HostSourceCtxBox) -> RResult<(), PluginError>;
}
/// A source instance as a boxed trait object.
pub type SourceBox = SourceFfi_TO<'static, RBox<()>>;

/// A sink instance, as the host sees it.
#[sabi_trait]
pub trait SinkFfi: Send {
    /// Takes a batch; returns once it is durably stored.
    fn write(&mut self, batch: RSlice<'_, Reading>) -> RResult<(), PluginError>;
    /// Called once after the last write.
    #[sabi(last_prefix_field)]
    fn close(&mut self) -> RResult<(), PluginError>;
    /// How many batches the sink takes through `submit` before the first of them is done.
    /// 1 (the default, and what a plugin older than this method gives): the host only calls
    /// `write`.
    fn window(&self) -> u32 {
        1
    }
    /// Starts writing a batch and returns without waiting for it: `done` is called once, from
    /// any thread, when the batch is durably stored or has failed (dropping it unanswered
    /// says the write failed and may be retried). The host calls it only when `window` is
    /// above 1, with at most that many batches not done. An error means the instance cannot
    /// take it (it panicked); `done` then counts for nothing.
    fn submit(&mut self, batch: RSlice<'_, Reading>, done: AckBox) -> RResult<(), PluginError> {
        let mut done = done;
        let outcome = self.write(batch);
        done.done(outcome);
        RResult::ROk(())
    }
}
/// A sink instance as a boxed trait object.
pub type SinkBox = SinkFfi_TO<'static, RBox<()>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_macro_uses_abi_stables_symbol_name() {
        // `export!` spells the symbol out; it must be the one `abi_stable` looks up.
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }

    #[test]
    fn versions_compatible_by_major() {
        assert!(versions_compatible("0.1.0", "0.1.7"));
        assert!(versions_compatible("0.1.9", "0.1.0"));
        assert!(!versions_compatible("0.1.0", "0.2.0"));
        assert!(!versions_compatible("0.1.0", "1.1.0"));
        assert!(versions_compatible("1.0.0", "1.4.2"));
        assert!(!versions_compatible("1.0.0", "2.0.0"));
        assert!(!versions_compatible("0.1.0", "garbage"));
    }
}
