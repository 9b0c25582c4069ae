//! A plugin library as a patched or unreleased SDK of the host's own version might build it: the
//! same version, the same root module, but `PluginKind` is a `u16` where the SDK has a `u8`. The
//! host's tests check that `abi_stable`'s layout check refuses it, and that the message names the
//! type, where it sits, both SDK versions and the fix, before anything in it is called.
//!
//! Its own types claim the `gateway-sdk` package at the SDK's version (see `build.rs`), as a
//! patched SDK's would; the types the patch left alone are the SDK's own, so that this is the only
//! difference whatever else the SDK gains.

pub mod patched;

use abi_stable::{export_root_module, prefix_type::PrefixTypeTrait, std_types::RStr};
use patched::{init, plugins, PluginLibrary, PluginLibraryRef};

/// The root module, exported under the name `abi_stable` gives the library header.
#[export_root_module]
fn root() -> PluginLibraryRef {
    PluginLibrary {
        sdk_version: RStr::from_str(gateway_sdk::SDK_VERSION),
        // Literals: `build.rs` gives `CARGO_PKG_NAME` and `CARGO_PKG_VERSION` the SDK's values.
        name: RStr::from_str("gateway-mislaid-plugin"),
        version: RStr::from_str("0.1.0"),
        init,
        plugins,
    }
    .leak_into_prefix()
}
