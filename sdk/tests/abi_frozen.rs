//! The types that cross the library boundary are frozen within a major version of the SDK.
//!
//! `abi_stable` accepts a plugin whose types are the host's or longer (a prefix type with more
//! fields), never shorter: a field or vtable method added to a type that crosses would make
//! every host built after it refuse every plugin built before it. This test describes every
//! type reachable from the library's root module (names, sizes, alignments, fields, function
//! signatures, enum variants) and compares the description with `abi-0.1.txt`, written from
//! SDK 0.1.0. A difference is a major release: bump the SDK's version to the next major (0.2.0)
//! and write the file again with `GATEWAY_ABI_FIXTURE=write cargo test -p gateway-sdk --test
//! abi_frozen`.

use abi_stable::{
    type_layout::{TLData, TypeLayout},
    StableAbi,
};

/// One line per type reachable from `root`, sorted (types of the same name, such as the
/// vtables of several traits, each get their own line).
fn describe(root: &'static TypeLayout) -> String {
    let mut visited = std::collections::HashSet::new();
    let mut lines = Vec::new();
    let mut stack = vec![root];
    while let Some(l) = stack.pop() {
        if !visited.insert(l as *const TypeLayout as usize) {
            continue;
        }
        let mut line = format!(
            "{}::{}: size {} align {}",
            l.mod_path(),
            l.full_type(),
            l.size(),
            l.alignment()
        );
        match l.data() {
            TLData::Primitive(p) => line += &format!(" primitive {p:?}"),
            TLData::Opaque => line += " opaque",
            TLData::Struct { .. } => line += " struct",
            TLData::Union { .. } => line += " union",
            TLData::PrefixType(p) => {
                line += &format!(" prefix of {} fields", p.fields.len());
            }
            TLData::Enum(e) => {
                let variants: Vec<_> = e.variant_names_iter().collect();
                line += &format!(" enum [{}]", variants.join(", "));
            }
        }
        for f in l.get_fields().into_iter().flatten() {
            line += &format!("; {}: {}", f.name(), f.full_type());
            for func in f.function_range().iter() {
                line += &format!(" fn {}", func.to_string().replace('\n', " "));
            }
            stack.push(f.layout());
            for func in f.function_range().iter() {
                stack.extend(func.param_type_layouts.iter().map(|get| get()));
                if let Some(r) = func.return_type_layout() {
                    stack.push(r());
                }
            }
        }
        for f in l.phantom_fields().iter() {
            stack.push(f.layout());
        }
        lines.push(line);
    }
    lines.sort();
    lines.dedup();
    lines.into_iter().map(|l| l + "\n").collect()
}

#[test]
fn the_types_that_cross_are_those_of_sdk_0_1() {
    let now = describe(<gateway_sdk::abi::PluginLibraryRef as StableAbi>::LAYOUT);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/abi-0.1.txt");
    if std::env::var("GATEWAY_ABI_FIXTURE").as_deref() == Ok("write") {
        std::fs::write(path, &now).unwrap();
        return;
    }
    let frozen = std::fs::read_to_string(path).unwrap();
    let changed: Vec<String> = diff(&frozen, &now);
    assert!(
        changed.is_empty(),
        "a type that crosses the plugin boundary changed, which would make this host refuse \
         every plugin built against SDK 0.1 (abi_stable accepts longer types from a plugin, never \
         shorter): keep the change inside the SDK, or make it a major release (see this file's \
         header).\n{}",
        changed.join("\n")
    );
}

/// The lines only one side has, marked `-` (frozen) and `+` (now).
fn diff(frozen: &str, now: &str) -> Vec<String> {
    let a: std::collections::BTreeSet<&str> = frozen.lines().collect();
    let b: std::collections::BTreeSet<&str> = now.lines().collect();
    a.difference(&b)
        .map(|l| format!("- {l}"))
        .chain(b.difference(&a).map(|l| format!("+ {l}")))
        .collect()
}
