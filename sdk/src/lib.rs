//! The SDK that gateway plugins are written against, and the stable ABI between them and the host.
//!
//! A plugin library is a Rust `cdylib` that depends on this crate only. It implements [`Source`]
//! (something that produces readings: a sensor, a network ingress) or [`Sink`] (something that
//! takes readings: a console, an uplink, a database), or several of them, and exports them with
//! one line of [`export!`]. The host (`gateway`) loads the library, checks that it was built
//! against a compatible SDK, and creates one instance per table of its TOML file.
//!
//! What crosses the library boundary is defined in [`abi`] and uses only `abi_stable` types;
//! plugin authors work with the safe traits in this crate and never touch it. The SDK catches
//! panics inside the plugin (they reach the host as errors), forwards the plugin's `tracing`
//! events to the host's log, and parses the plugin's config table with one call
//! ([`InitContext::parse_config`]). [`testing`] runs a source or a sink without a host.
//!
//! This crate does no I/O of its own besides what a plugin asks of it.
#![warn(missing_docs)]

pub mod abi;
pub mod config;
mod context;
mod error;
mod log;
pub mod metrics;
mod reading;
#[doc(hidden)]
pub mod shim;
pub mod testing;
pub mod text;
mod ticker;
pub mod trust;

/// The README's Rust examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use context::{Ack, InitContext, SourceContext, TryEmitError, Written};
pub use error::{ErrorKind, PluginError};
pub use reading::{IdGenerator, Label, Reading, ReadingId, Timestamp, Value};
pub use ticker::Ticker;

/// Re-exported so that [`export!`] expands without the plugin depending on it directly.
#[doc(hidden)]
pub use abi_stable;
/// Re-exported so that plugins log through the same `tracing` that the SDK forwards to the host.
pub use tracing;

/// The version of this SDK, which the host compares with its own when it loads a plugin.
pub const SDK_VERSION: &str = abi::SDK_VERSION;

/// A plugin that produces readings.
///
/// The host calls [`Source::new`] once per configured instance (and again after a failure), then
/// [`Source::run`] on a thread of its own. `gateway check` calls only `new`: keep it free of side
/// effects (parse and check the config; open devices, sockets and files in `run`).
///
/// `run` loops until the host asks it to stop, handing readings to the host with
/// [`SourceContext::emit`]; [`SourceContext::every`] paces a sampling loop without drift.
/// Threads of the source may emit through clones of its context while `run` runs (and while
/// the instance is dropped after it); once it is gone, the host takes nothing more through
/// them (their emits fail as stopped, and [`SourceContext::is_stopping`] says so).
/// How `run` ends tells the host what to do:
/// - `Ok(())` after the host asked to stop: a normal stop. `Ok(())` before that: the source has
///   nothing more to produce (a finite replay, say); it is not started again.
/// - `Err` of kind [`ErrorKind::STOPPED`]: the host is stopping and did not take a batch (that
///   is what `emit` and [`Ack::wait`] return then). Returning it with `?` is a normal stop, the
///   same as `Ok(())`; there is no need to match on it.
/// - Any other `Err`: the instance failed; the host logs the error, drops the instance, and
///   builds and runs a new one after a backoff ([`ErrorKind::CONFIG`] included: a config that
///   names a missing device may work later).
pub trait Source: Send + Sized + 'static {
    /// The plugin id used in `plugin = "..."` in the host's TOML file.
    const ID: &'static str;
    /// One line that `gateway plugins` shows.
    const DESCRIPTION: &'static str = "";
    /// Builds an instance from its config table: parse it, check it, and return the errors
    /// with [`InitContext::parse_config`] and [`InitContext::config_error`]. No side effects
    /// (no files created, no sockets, no connections): `gateway check` calls it too.
    fn new(ctx: &InitContext) -> Result<Self, PluginError>;
    /// Produces readings until the host asks to stop; acquires what it needs first.
    fn run(&mut self, ctx: &SourceContext) -> Result<(), PluginError>;
}

/// A plugin that takes readings.
///
/// The host calls [`Sink::new`] (only that, for `gateway check`), then [`Sink::write`], one
/// batch at a time, in order; the SDK calls [`Sink::open`] before the first batch. Writes run
/// on the sink's own thread, except that while the sink is idle and its last write took at
/// most 50 µs, the next one runs on the thread of the source that emitted the batch (which
/// saves two thread wake-ups per batch): calls never overlap, but keep no thread-local state
/// between them.
/// `write` returns only when the batch is durably taken (written, committed, acknowledged by
/// the next hop): only then does the host consider it delivered. An error says whether a retry
/// can help ([`ErrorKind`]): a retryable one is retried with backoff, a refusal for good
/// ([`ErrorKind::REJECTED`]) goes to the sink's dead-letter file (the host writes a refused
/// batch again in halves, so that only the readings refused go there), [`ErrorKind::STOPPED`]
/// leaves the batch to the host's shutdown (said while the host runs, the host rebuilds the
/// instance and holds the batch), and any other ([`ErrorKind::CONFIG`] included)
/// makes the host rebuild the instance with backoff while it holds the batch. A sink whose
/// [`Sink::window`] is above 1 gets its batches through [`Sink::submit`] instead, several at once (`write` is still used to retry the parts of a
/// batch it refused).
///
/// **Duplicates.** Delivery is at least once: after a crash, a timeout or a restart, the host
/// (or a disk buffer) writes again a batch whose write may already have been stored. Every
/// [`Reading`] carries a [`ReadingId`] unique to it; a sink that stores must drop readings whose
/// id it already stored (a primary key with `INSERT IGNORE`, `ON CONFLICT DO NOTHING`, or a
/// lookup) and report success for them, never an error.
pub trait Sink: Send + Sized + 'static {
    /// The plugin id used in `plugin = "..."` in the host's TOML file.
    const ID: &'static str;
    /// One line that `gateway plugins` shows.
    const DESCRIPTION: &'static str = "";
    /// Builds an instance from its config table: parse and check it, no side effects (as
    /// [`Source::new`]); connect and create files in [`Sink::open`].
    fn new(ctx: &InitContext) -> Result<Self, PluginError>;
    /// Acquires what the sink needs (connections, files, tables); the SDK calls it before the
    /// first `write` or `submit` of the instance, and again before the next one while it fails.
    /// A retryable error is retried as a failed write is; any other makes the host rebuild the
    /// instance with backoff (the batch is neither refused nor dropped for it). The default
    /// does nothing.
    fn open(&mut self) -> Result<(), PluginError> {
        Ok(())
    }
    /// Takes one batch; returns once it is durably stored.
    fn write(&mut self, batch: &[Reading]) -> Result<(), PluginError>;
    /// How many batches may be in flight at once. Above 1, the host hands batches to
    /// [`Sink::submit`] without waiting for the ones before to be stored, so that a sink whose
    /// next hop is far away (a radio link, a remote server) keeps it busy across batches. The
    /// host still settles batches in the order it gave them, and retries each as its error
    /// says. Read when the instance is built.
    fn window(&self) -> usize {
        1
    }
    /// Starts writing one batch; `done` says how it ended, once, from any thread. Called only
    /// when [`Sink::window`] is above 1. The default writes the batch at once.
    fn submit(&mut self, batch: &[Reading], done: Written) {
        done.finish(self.write(batch));
    }
    /// Called once when the host shuts down, after the last write.
    fn close(&mut self) -> Result<(), PluginError> {
        Ok(())
    }
}

/// Exports the plugins of this library to the host. Use it once, at the crate root:
///
/// ```ignore
/// gateway_sdk::export!(sources: [Counter], sinks: [Console]);
/// ```
///
/// Either list may be left out. The library's name and version in `gateway plugins` come from
/// its `Cargo.toml`.
#[macro_export]
macro_rules! export {
    (sources: [$($src:ty),* $(,)?], sinks: [$($sink:ty),* $(,)?] $(,)?) => {
        $crate::__export_library!(sources: [$($src),*], sinks: [$($sink),*]);
    };
    (sinks: [$($sink:ty),* $(,)?], sources: [$($src:ty),* $(,)?] $(,)?) => {
        $crate::export!(sources: [$($src),*], sinks: [$($sink),*]);
    };
    (sources: [$($src:ty),* $(,)?] $(,)?) => {
        $crate::export!(sources: [$($src),*], sinks: []);
    };
    (sinks: [$($sink:ty),* $(,)?] $(,)?) => {
        $crate::export!(sources: [], sinks: [$($sink),*]);
    };
}

/// Expands to the library header that the host looks up by symbol name. This is what
/// `abi_stable`'s `#[export_root_module]` generates, written out so that plugins need no direct
/// dependency on `abi_stable`; a unit test checks the symbol name against `abi_stable`'s.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_library {
    (sources: [$($src:ty),*], sinks: [$($sink:ty),*]) => {
        fn __gateway_plugin_descriptors() -> ::std::vec::Vec<$crate::abi::PluginDescriptor> {
            #[allow(unused_mut)]
            let mut all = ::std::vec::Vec::new();
            $(all.push($crate::shim::source_descriptor::<$src>());)*
            $(all.push($crate::shim::sink_descriptor::<$sink>());)*
            all
        }

        fn __gateway_plugin_root() -> $crate::abi::PluginLibraryRef {
            $crate::shim::library(
                env!("CARGO_PKG_NAME"),
                env!("CARGO_PKG_VERSION"),
                __gateway_plugin_descriptors,
            )
        }

        /// How this library handles a panic (`gateway_sdk::abi::UNWINDS_SYMBOL`), from the
        /// plugin crate's own `panic` setting.
        #[no_mangle]
        #[allow(non_upper_case_globals)]
        pub static gateway_plugin_unwinds: u8 = if cfg!(panic = "unwind") { 1 } else { 0 };

        #[no_mangle]
        #[allow(non_upper_case_globals)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::abi_stable::library::LibHeader = {
            extern "C" fn erased() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(__gateway_plugin_root)
            }
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::abi::PluginLibraryRef>(
                    erased,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}
