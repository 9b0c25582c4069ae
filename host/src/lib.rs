//! The gateway host: reads the TOML file, loads the plugin libraries it names, builds every
//! source and sink instance, moves readings between them through bounded queues, supervises the
//! instances, and shuts down without losing what is in flight.
//!
//! It does I/O: it loads shared libraries, reads the config, spawns a thread per instance, and
//! handles signals. The `gateway` binary (`main.rs`) is a thin CLI over this library.

pub mod buffer;
pub mod clock;
pub mod config;
pub mod conformance;
pub mod deadletter;
pub mod internal;
pub mod loader;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod narrow;
pub mod notify;
pub mod overdue;
pub mod own_files;
pub mod pipeline;
pub mod plan;
pub mod plugin_metrics;
pub mod resend;
pub mod run;
pub mod stats;
pub mod status;
pub mod trust;

/// The README's Rust examples, compiled as doctests so that they stay true (the SDK's own
/// README is the SDK crate's doctest).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
