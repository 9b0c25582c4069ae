//! A sink built against an SDK that claims version 0.2.0 (the sdk's `__test_incompatible_version`
//! feature). The host's tests check that it is refused with both versions named.

use gateway_sdk::{InitContext, PluginError, Reading, Sink};

/// Never built: the host refuses the library first.
pub struct Incompatible;

impl Sink for Incompatible {
    const ID: &'static str = "incompatible";
    fn new(_: &InitContext) -> Result<Self, PluginError> {
        Ok(Incompatible)
    }
    fn write(&mut self, _: &[Reading]) -> Result<(), PluginError> {
        Ok(())
    }
}

gateway_sdk::export!(sinks: [Incompatible]);
