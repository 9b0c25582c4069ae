//! The SDK's root module types as a patched SDK would have them (see the crate's doc), shared
//! by this fixture and `unchecked` (which exports them without a layout).

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
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

/// Installs nothing.
pub extern "C" fn init(_host: HostLogBox) {}

/// No plugins.
pub extern "C" fn plugins() -> RVec<PluginDescriptor> {
    RVec::new()
}
