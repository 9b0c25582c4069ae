//! Makes the types of this crate say they come from the host's SDK, as those of a patched copy
//! of it would: `abi_stable` compares a type's package and its version before its layout, and
//! its derive reads both from `CARGO_PKG_NAME` and `CARGO_PKG_VERSION`. The version is the one
//! in `sdk/Cargo.toml`, so that this library follows the SDK when its version changes.

pub fn main() {
    let manifest = "../../../sdk/Cargo.toml";
    println!("cargo:rerun-if-changed={manifest}");
    let text = std::fs::read_to_string(manifest).expect("read sdk/Cargo.toml");
    let version = text
        .lines()
        .skip_while(|l| l.trim() != "[package]")
        .find_map(|l| {
            let (key, value) = l.split_once('=')?;
            (key.trim() == "version").then(|| value.trim().trim_matches('"').to_owned())
        })
        .expect("sdk/Cargo.toml has a [package] version");
    println!("cargo:rustc-env=CARGO_PKG_NAME=gateway-sdk");
    println!("cargo:rustc-env=CARGO_PKG_VERSION={version}");
}
