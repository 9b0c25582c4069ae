//! The same as `mislaid`'s: the types claim to come from the host's SDK, at its version.

#[path = "../mislaid/build.rs"]
mod mislaid;

fn main() {
    mislaid::main();
}
