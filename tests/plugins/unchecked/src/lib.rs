//! A plugin library exported without a layout constant (`#[unsafe_no_layout_constant]`, or a
//! hand-made header saying `CheckTypeLayout::No`): `abi_stable` then checks nothing of its
//! types, so the patched `PluginKind` of `mislaid` (a `u16` where the SDK has a `u8`) would be
//! used as if it matched. The host must refuse a library that gives it no layout to check.
//!
//! Its types are `mislaid`'s (the same file), and claim the `gateway-sdk` package at the SDK's
//! version (see `build.rs`).

#[path = "../../mislaid/src/patched.rs"]
pub mod patched;

use abi_stable::{export_root_module, prefix_type::PrefixTypeTrait, std_types::RStr};
use patched::{init, plugins, PluginLibrary, PluginLibraryRef};

/// The root module, exported under the name `abi_stable` gives the library header, with no
/// layout for the loader to check.
#[export_root_module]
#[unsafe_no_layout_constant]
fn root() -> PluginLibraryRef {
    PluginLibrary {
        sdk_version: RStr::from_str(gateway_sdk::SDK_VERSION),
        // Literals: `build.rs` gives `CARGO_PKG_NAME` and `CARGO_PKG_VERSION` the SDK's values.
        name: RStr::from_str("gateway-unchecked-plugin"),
        version: RStr::from_str("0.1.0"),
        init,
        plugins,
    }
    .leak_into_prefix()
}
