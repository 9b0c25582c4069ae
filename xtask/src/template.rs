//! `cargo xtask new-plugin NAME --source|--sink [--dir DIR] [--what TEXT]`: a plugin folder
//! outside this repository that builds and tests on its own, from the templates in
//! `xtask/templates/`: `Cargo.toml` (depending on this checkout's SDK by path), `src/lib.rs`
//! (the export glue), `src/config.rs`, `src/source.rs` or `src/sink.rs`, `README.md`,
//! `sample.toml` and `tests/plugin.rs`.
//!
//! And `cargo xtask sdk-package`: the SDK as a crate file (`cargo package`), for authors who
//! take it from a registry of their own.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Which kind of plugin to make.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Source,
    Sink,
}

/// Makes the folder `dir/NAME`; returns its path.
pub fn new_plugin(name: &str, kind: Kind, dir: &Path, what: Option<&str>) -> Result<PathBuf> {
    let valid = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!("{name:?}: a plugin id is lowercase letters, digits and '-', starting with a letter (it is the folder, the package and the `plugin = ` name)");
    }
    let folder = dir.join(name);
    if folder.exists() {
        bail!(
            "{} exists already; choose another name or --dir",
            folder.display()
        );
    }
    let lib = name.replace('-', "_");
    let ty: String = name
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let (kind_name, default_what) = match kind {
        Kind::Source => ("source", "A source that counts up once per interval"),
        Kind::Sink => ("sink", "A sink that appends readings to a file"),
    };
    let sdk = super::root().join("sdk");
    let sdk = format!("path = {:?}", sdk.display().to_string());
    let what = what.unwrap_or(default_what);
    let fill = |text: &str, sample: &str| {
        text.replace("{{name}}", name)
            .replace("{{lib}}", &lib)
            .replace("{{Type}}", &ty)
            .replace("{{kind}}", kind_name)
            .replace("{{what}}", what)
            .replace("{{sdk}}", &sdk)
            .replace("{{sample}}", sample)
    };
    let t = |f: &str| -> Result<String> {
        let p = super::root().join("xtask/templates").join(f);
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
    };
    let sample = fill(&t(&format!("sample_{kind_name}.toml.tmpl"))?, "");
    let files = [
        ("Cargo.toml", fill(&t("Cargo.toml.tmpl")?, "")),
        (".gitignore", t("gitignore.tmpl")?),
        ("src/lib.rs", fill(&t("lib.rs.tmpl")?, "")),
        (
            "src/config.rs",
            fill(&t(&format!("config_{kind_name}.rs.tmpl"))?, ""),
        ),
        (
            &format!("src/{kind_name}.rs"),
            fill(&t(&format!("{kind_name}.rs.tmpl"))?, ""),
        ),
        (
            "README.md",
            fill(&t(&format!("README_{kind_name}.md.tmpl"))?, &sample),
        ),
        ("sample.toml", sample.clone()),
        (
            "tests/plugin.rs",
            fill(&t(&format!("test_{kind_name}.rs.tmpl"))?, ""),
        ),
    ];
    for (path, text) in files {
        let p = folder.join(path);
        std::fs::create_dir_all(p.parent().expect("a file in the folder"))?;
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(folder)
}

/// Parses `new-plugin`'s arguments and makes the folder.
pub fn command(args: &[String]) -> Result<()> {
    const USAGE: &str =
        "usage: cargo xtask new-plugin NAME --source|--sink [--dir DIR] [--what \"ONE LINE\"]";
    let mut name = None;
    let mut kind = None;
    let mut dir = std::env::current_dir()?;
    let mut what = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--source" => kind = Some(Kind::Source),
            "--sink" => kind = Some(Kind::Sink),
            "--dir" => dir = PathBuf::from(it.next().context(USAGE)?),
            "--what" => what = Some(it.next().context(USAGE)?.clone()),
            s if !s.starts_with('-') && name.is_none() => name = Some(s.to_owned()),
            _ => bail!(USAGE),
        }
    }
    let (Some(name), Some(kind)) = (name, kind) else {
        bail!(USAGE)
    };
    let folder = new_plugin(&name, kind, &dir, what.as_deref())?;
    println!("made {}", folder.display());
    println!(
        "next: cd {} && cargo test && cargo build --release && gateway test-plugin --config sample.toml --plugin-dir target/release",
        folder.display()
    );
    Ok(())
}
