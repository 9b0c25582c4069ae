//! A plugin library made by hand, not with `gateway_sdk::export!`: its layout and versions are
//! the host's, but its one plugin says it is a source and has no source constructor. The host's
//! tests check that loading it is refused with a message, not a panic.

use abi_stable::std_types::RStr;
use gateway_sdk::abi::{PluginDescriptor, PluginKind, PluginLibraryRef};

fn descriptors() -> Vec<PluginDescriptor> {
    vec![PluginDescriptor {
        id: RStr::from_str("malformed"),
        kind: PluginKind::Source,
        description: RStr::from_str("a source without its constructor"),
        new_source: None,
        new_sink: None,
    }]
}

fn root() -> PluginLibraryRef {
    gateway_sdk::shim::library("gateway-malformed-plugin", "0.1.0", descriptors)
}

/// The library header, as `gateway_sdk::export!` writes it.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static _1as_0lib_1header_0root_bmodule_bloader: abi_stable::library::LibHeader = {
    extern "C" fn erased() -> abi_stable::library::RootModuleResult {
        abi_stable::library::__call_root_module_loader(root)
    }
    // SAFETY: the constructor returns the root module type the header names.
    unsafe {
        abi_stable::library::LibHeader::from_constructor::<PluginLibraryRef>(
            erased,
            abi_stable::library::CheckTypeLayout::Yes,
        )
    }
};
