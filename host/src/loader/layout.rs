//! Reads `abi_stable`'s layout report, which runs to a thousand lines, down to what a reader
//! needs: the first type that differs, where it sits below the root module, and how it is laid
//! out in the plugin and in this gateway. Does no I/O.
//!
//! The report is read from its fields, not its text: [`difference`] runs the same check
//! `abi_stable` runs when the root module is loaded, and keeps the structured errors.

use abi_stable::{
    abi_stability::abi_checking::{
        check_layout_compatibility, AbiInstability, AbiInstabilityErrors, ExpectedFound,
    },
    type_layout::{ReprAttr, TLDataDiscriminant, TLDiscriminant, TLFieldOrFunction, TypeLayout},
};

/// Compares the root module a library exports (`found`) with the one this gateway expects
/// (`expected`): `None` when `abi_stable` accepts it, otherwise the first difference as a
/// phrase (`type PluginKind (field PluginDescriptor.kind, inside PluginLibrary.plugins) is
/// repr(u16), ... in the plugin but repr(u8), ... in this gateway`).
pub(super) fn difference(
    expected: &'static TypeLayout,
    found: &'static TypeLayout,
) -> Option<String> {
    check_layout_compatibility(expected, found)
        .err()
        .map(|report| describe(&report))
}

/// The first difference of `report`, and how many other types differ.
fn describe(report: &AbiInstabilityErrors) -> String {
    // The types that contain a differing one are listed too, with nothing of their own.
    let differing: Vec<_> = report
        .errors
        .iter()
        .filter(|e| !e.errs.is_empty())
        .collect();
    let Some(first) = differing.first() else {
        return "abi_stable reports a difference without saying which".into();
    };
    let path = field_path(report.interface, &first.stack_trace);
    let subject = match first.stack_trace.last().map(|step| &step.expected) {
        Some(TLFieldOrFunction::Field(f)) => Subject::Type(f.layout()),
        Some(TLFieldOrFunction::Function(f)) => Subject::Function(f.to_string()),
        None => Subject::Type(report.interface),
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut others: Vec<&str> = Vec::new();
    let mut renamed = false;
    for err in first.errs.iter() {
        renamed |= matches!(err, AbiInstability::Name(_));
        match aspect(err) {
            Aspect::Values(pair) if !pairs.contains(&pair) => pairs.push(pair),
            Aspect::Other(what) if !others.contains(&what) => others.push(what),
            _ => {}
        }
    }
    let mut text = subject.describe(&path, renamed);
    if !pairs.is_empty() {
        let (here, there): (Vec<String>, Vec<String>) = pairs.into_iter().unzip();
        text.push_str(&format!(
            " is {} in the plugin but {} in this gateway",
            there.join(", "),
            here.join(", ")
        ));
    }
    if !others.is_empty() {
        let and = if text.ends_with("gateway") {
            ", and"
        } else {
            ""
        };
        text.push_str(&format!("{and} differs in {}", others.join(" and ")));
    }
    match differing.len() - 1 {
        0 => {}
        1 => text.push_str(" (1 more type differs)"),
        n => text.push_str(&format!(" ({n} more types differ)")),
    }
    text
}

/// What differs: a type, or a function pointer's signature.
enum Subject {
    Type(&'static TypeLayout),
    Function(String),
}

impl Subject {
    /// `type PluginKind (field PluginDescriptor.kind, inside PluginLibrary.plugins)`; without
    /// the type's name when the names are what differ.
    fn describe(&self, path: &[String], renamed: bool) -> String {
        let place = match path.split_last() {
            Some((field, outer)) => {
                let inside: String = outer
                    .iter()
                    .rev()
                    .map(|p| format!(", inside {p}"))
                    .collect();
                format!("field {field}{inside}")
            }
            None => "the root module".into(),
        };
        match self {
            Subject::Type(_) if renamed => format!("the type of {place}"),
            Subject::Type(t) if path.is_empty() => format!("type {}", t.full_type()),
            Subject::Type(t) => format!("type {} ({place})", t.full_type()),
            Subject::Function(f) => format!("function pointer {f} ({place})"),
        }
    }
}

/// The named fields from the root module down to the one that differs, outermost first
/// (`PluginLibrary.plugins`, `PluginDescriptor.kind`), named as this gateway names them. The
/// fields inside `abi_stable`'s and the standard library's types (an `RVec`'s buffer, a
/// pointer's target, a function pointer's parameters) and tuple fields (`0`) are left out: they are how one type holds the
/// next, not where the reader has to look.
fn field_path(
    root: &'static TypeLayout,
    trace: &[ExpectedFound<TLFieldOrFunction>],
) -> Vec<String> {
    let mut owner = root;
    let mut path = Vec::new();
    for step in trace {
        // A function pointer's parameters belong to the field holding it (an `abi_stable` type).
        if let TLFieldOrFunction::Field(field) = &step.expected {
            let name = field.name();
            let named = !name.starts_with(|c: char| c.is_ascii_digit() || c == '_');
            let library = matches!(owner.package().as_str(), "abi_stable" | "std" | "core");
            if named && !library {
                path.push(format!("{}.{name}", owner.name()));
            }
            owner = field.layout();
        }
    }
    path
}

/// How one side of a type differs from the other.
enum Aspect {
    /// This gateway's value and the plugin's: `("size 1", "size 2")`.
    Values((String, String)),
    /// Only what differs: `its lifetimes`.
    Other(&'static str),
}

/// One of `abi_stable`'s findings about a type, for a reader.
fn aspect(err: &AbiInstability) -> Aspect {
    use AbiInstability as AI;
    fn each<T>(ef: &ExpectedFound<T>, show: impl Fn(&T) -> String) -> Aspect {
        Aspect::Values((show(&ef.expected), show(&ef.found)))
    }
    match err {
        AI::Name(ef) => each(ef, |t| t.to_string()),
        AI::Package(ef) => each(ef, |p| format!("from package {p}")),
        AI::PackageVersion(ef) => each(ef, |v| format!("from package version {v}")),
        AI::Size(ef) => each(ef, |n| format!("size {n}")),
        AI::Alignment(ef) => each(ef, |n| format!("alignment {n}")),
        AI::ReprAttr(ef) => each(ef, |r| repr(*r)),
        AI::MismatchedPrimitive(ef) => each(ef, |p| format!("{p:?}").to_lowercase()),
        AI::NonZeroness(ef) => each(ef, |&z| if z { "never zero" } else { "nullable" }.into()),
        AI::TLDataDiscriminant(ef) => each(ef, |d| data_kind(*d).into()),
        AI::FieldCountMismatch(ef) => each(ef, |n| format!("{n} fields")),
        AI::UnexpectedField(ef) => each(ef, |f| format!("field {}", f.name())),
        AI::MismatchedPrefixSize(ef) => each(ef, |n| format!("{n} prefix fields")),
        AI::TooManyVariants(ef) => each(ef, |n| format!("{n} variants")),
        AI::UnexpectedVariant(ef) => each(ef, |v| format!("variant {v}")),
        AI::EnumDiscriminant(ef) => each(ef, |d| format!("discriminant {}", discriminant(*d))),
        AI::GenericParamCount(_) => Aspect::Other("its generic parameters"),
        AI::MismatchedConstParam(_) => Aspect::Other("its const parameters"),
        AI::FieldLifetimeMismatch(_) | AI::FnLifetimeMismatch(_) => Aspect::Other("its lifetimes"),
        AI::FnQualifierMismatch(_) => Aspect::Other("its function qualifiers"),
        AI::MismatchedPrefixConditionality(_) => {
            Aspect::Other("which of its prefix fields are conditional")
        }
        AI::MismatchedExhaustiveness(_) => Aspect::Other("whether it is exhaustive"),
        AI::IncompatibleWithNonExhaustive(_) => Aspect::Other("its non-exhaustive storage"),
        AI::PackageVersionParseError(_) => Aspect::Other("a package version that does not parse"),
        AI::NoneExtraChecks | AI::ExtraCheckError(_) => Aspect::Other("its extra checks"),
        AI::TagError { .. } => Aspect::Other("its tags"),
        AI::CyclicTypeChecking { .. } | AI::ReentrantLayoutCheckingCall => {
            Aspect::Other("how it refers to itself")
        }
    }
}

/// `repr(u8)`, `repr(C)`, as written in the source.
fn repr(r: ReprAttr) -> String {
    let int = |d| format!("{d:?}").to_lowercase();
    match r {
        ReprAttr::C => "repr(C)".into(),
        ReprAttr::Int(d) => format!("repr({})", int(d)),
        ReprAttr::CAndInt(d) => format!("repr(C, {})", int(d)),
        ReprAttr::Transparent => "repr(transparent)".into(),
        ReprAttr::Primitive => "a primitive".into(),
        other => format!("{other:?}"),
    }
}

/// What kind of type a layout describes.
fn data_kind(d: TLDataDiscriminant) -> &'static str {
    match d {
        TLDataDiscriminant::Primitive => "a primitive",
        TLDataDiscriminant::Opaque => "an opaque type",
        TLDataDiscriminant::Struct => "a struct",
        TLDataDiscriminant::Union => "a union",
        TLDataDiscriminant::Enum => "an enum",
        TLDataDiscriminant::PrefixType => "a prefix type",
    }
}

/// An enum variant's discriminant value.
fn discriminant(d: TLDiscriminant) -> String {
    match d {
        TLDiscriminant::Isize(n) => n.to_string(),
        TLDiscriminant::Usize(n) => n.to_string(),
        TLDiscriminant::Signed(n) => n.to_string(),
        TLDiscriminant::Unsigned(n) => n.to_string(),
    }
}

/// The first difference in `abi_stable`'s text report, for when only the text is at hand: the
/// type of the last layout printed before the first `Error:` line, that line, and the
/// `Expected:` and `Found:` blocks after it.
pub(super) fn first_difference_in_text(report: &str) -> String {
    let lines: Vec<&str> = report
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let Some(at) = lines.iter().position(|l| l.starts_with("Error:")) else {
        return "abi_stable's report names no difference".into();
    };
    let block = |label: &str| -> String {
        let text = lines[at + 1..]
            .iter()
            .skip_while(|l| **l != label)
            .skip(1)
            .take_while(|l| !matches!(**l, "Expected:" | "Found:") && !l.starts_with("Error:"))
            .copied()
            .collect::<Vec<_>>()
            .join(" ")
            .replace("( ", "(")
            .replace(", )", ")");
        text.chars().take(120).collect()
    };
    let ty = lines[..at]
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("type:"))
        .map(|t| format!("type {}: ", t.trim()))
        .unwrap_or_default();
    format!(
        "{ty}{}: {} in the plugin but {} in this gateway",
        lines[at].trim_start_matches("Error:").trim(),
        block("Found:"),
        block("Expected:")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::StableAbi;

    // Two versions of the same types, as in this gateway and in a plugin built against a
    // patched SDK; only their layouts are used.
    #[allow(dead_code)]
    mod ours {
        #[repr(u8)]
        #[derive(abi_stable::StableAbi)]
        pub enum Kind {
            A,
            B,
        }
        #[repr(C)]
        #[derive(abi_stable::StableAbi)]
        pub struct Descriptor {
            pub id: u32,
            pub kind: Kind,
        }
        #[repr(C)]
        #[derive(abi_stable::StableAbi)]
        pub struct Root {
            pub version: u32,
            pub plugins: abi_stable::std_types::RVec<Descriptor>,
        }
    }
    #[allow(dead_code)]
    mod theirs {
        #[repr(u16)]
        #[derive(abi_stable::StableAbi)]
        pub enum Kind {
            A,
            B,
        }
        #[repr(C)]
        #[derive(abi_stable::StableAbi)]
        pub struct Descriptor {
            pub id: u32,
            pub kind: Kind,
        }
        #[repr(C)]
        #[derive(abi_stable::StableAbi)]
        pub struct Root {
            pub version: i32,
            pub plugins: abi_stable::std_types::RVec<Descriptor>,
        }
    }

    fn report<A: StableAbi, B: StableAbi>() -> AbiInstabilityErrors {
        check_layout_compatibility(A::LAYOUT, B::LAYOUT).unwrap_err()
    }

    #[test]
    fn names_the_type_the_fields_leading_to_it_and_both_layouts() {
        assert_eq!(
            describe(&report::<ours::Descriptor, theirs::Descriptor>()),
            "type Kind (field Descriptor.kind) is repr(u16), size 2, alignment 2 in the plugin \
             but repr(u8), size 1, alignment 1 in this gateway"
        );
    }

    #[test]
    fn names_a_field_whose_type_was_swapped_and_counts_the_other_differences() {
        assert_eq!(
            describe(&report::<ours::Root, theirs::Root>()),
            "the type of field Root.version is i32 in the plugin but u32 in this gateway \
             (1 more type differs)"
        );
    }

    #[test]
    fn leaves_out_the_fields_of_abi_stables_own_types() {
        let trace = &report::<ours::Root, theirs::Root>().errors;
        let deepest = trace.iter().max_by_key(|e| e.stack_trace.len()).unwrap();
        assert_eq!(
            field_path(<ours::Root as StableAbi>::LAYOUT, &deepest.stack_trace),
            ["Root.plugins", "Descriptor.kind"]
        );
    }

    #[test]
    fn agreeing_layouts_have_no_difference() {
        let l = <ours::Root as StableAbi>::LAYOUT;
        assert_eq!(difference(l, l), None);
    }

    #[test]
    fn the_text_report_gives_the_first_error_and_its_type() {
        let text = report::<ours::Descriptor, theirs::Descriptor>().to_string();
        assert!(text.lines().count() > 40, "{text}");
        assert_eq!(
            first_difference_in_text(&text),
            "type Kind: incompatible repr attributes: Int(U16) in the plugin but Int(U8) in this \
             gateway"
        );
    }
}
