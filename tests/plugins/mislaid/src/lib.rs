//! A plugin library as a patched or unreleased SDK of the host's own version might build it: the
//! same version, the same root module, but `PluginKind` is a `u16` where the SDK has a `u8`. The
//! host's tests check that `abi_stable`'s layout check refuses it, and that the message names the
//! type, where it sits, both SDK versions and the fix, before anything in it is called.
//!
//! Its own types claim the `gateway-sdk` package at the SDK's version (see `build.rs`), as a
//! patched SDK's would; the types the patch left alone are the SDK's own, so that this is the only
//! difference whatever else the SDK gains.

use abi_stable::{
    declare_root_module_statics, export_root_module,
    library::RootModule,
    prefix_type::PrefixTypeTrait,
    sabi_types::VersionStrings,
    std_types::{RResult, RStr, RVec},
    StableAbi,
};
use gateway_sdk::{
    abi::{HostLogBox, InstanceInfo, SinkBox, SourceBox},
    PluginError,
};

/// The patch: a `u16` where the SDK has a `u8`.
#[repr(u16)]
#[derive(StableAbi, Clone, Copy)]
pub enum PluginKind {
    /// Produces readings.
    Source,
    /// Takes readings.
    Sink,
}

/// The SDK's `PluginDescriptor`, holding the patched `PluginKind`.
#[repr(C)]
#[derive(StableAbi)]
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

/// The SDK's root module, holding the patched `PluginDescriptor`.
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
    /// Installs the host's logger in the library.
    pub init: extern "C" fn(host: HostLogBox),
    /// The plugins the library exports.
    #[sabi(last_prefix_field)]
    pub plugins: extern "C" fn() -> RVec<PluginDescriptor>,
}

impl RootModule for PluginLibraryRef {
    declare_root_module_statics! {PluginLibraryRef}
    const BASE_NAME: &'static str = "gateway_plugin";
    const NAME: &'static str = "gateway plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new(gateway_sdk::SDK_VERSION);
}

extern "C" fn init(_host: HostLogBox) {}

extern "C" fn plugins() -> RVec<PluginDescriptor> {
    RVec::new()
}

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
