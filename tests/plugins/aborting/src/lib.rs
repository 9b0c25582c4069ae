//! A plain sink plugin that the host's tests build twice: as Cargo builds it (panics unwind),
//! when the host loads it, and with `cargo rustc -- -C panic=abort`, when one panic inside it
//! would end the whole gateway and the host must refuse it. Its sink panics at every write.
#![forbid(unsafe_code)]

use gateway_sdk::{InitContext, PluginError, Reading, Sink};

/// A sink that panics when it is given readings.
pub struct Aborting;

impl Sink for Aborting {
    const ID: &'static str = "aborting";
    const DESCRIPTION: &'static str = "panics at every write (a test fixture)";

    fn new(_ctx: &InitContext) -> Result<Self, PluginError> {
        Ok(Aborting)
    }

    fn write(&mut self, _batch: &[Reading]) -> Result<(), PluginError> {
        panic!("the aborting fixture panics at every write")
    }
}

gateway_sdk::export!(sinks: [Aborting]);
