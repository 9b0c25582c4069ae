//! A plugin library as a future SDK 0.2 might build it: its root module claims SDK version 0.2.0
//! (and has another layout). The host's tests check that it is refused, with both versions
//! named, before anything in it is called.
//!
//! Written against `abi_stable` directly rather than through an SDK feature: a feature of the
//! SDK would be unified into every crate of a workspace-wide build and make the host itself claim
//! the other version.

use abi_stable::{
    declare_root_module_statics, export_root_module, library::RootModule,
    prefix_type::PrefixTypeTrait, sabi_types::VersionStrings, std_types::RStr, StableAbi,
};

/// The root module of the "future" SDK.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = FutureLibraryRef)))]
#[sabi(missing_field(panic))]
pub struct FutureLibrary {
    /// The SDK version the library was built against.
    #[sabi(last_prefix_field)]
    pub sdk_version: RStr<'static>,
}

impl RootModule for FutureLibraryRef {
    declare_root_module_statics! {FutureLibraryRef}
    const BASE_NAME: &'static str = "gateway_plugin";
    const NAME: &'static str = "gateway plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("0.2.0");
}

/// The root module, exported under the name `abi_stable` gives the library header.
#[export_root_module]
fn root() -> FutureLibraryRef {
    FutureLibrary {
        sdk_version: RStr::from_str("0.2.0"),
    }
    .leak_into_prefix()
}
