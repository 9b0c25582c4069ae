//! The plugin author's path, as a new author walks it: `cargo xtask new-plugin` makes a folder
//! outside the repository, its own tests pass, it builds, and the built library passes
//! `gateway test-plugin` in the real host. And the SDK packs into a crate file that builds on
//! its own (`cargo package` verifies it outside the workspace).

mod support;
use std::{
    path::{Path, PathBuf},
    process::Command,
};
use support::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cargo(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO"))
        .args(args)
        .current_dir(dir)
        // Apart from the workspace's own target directory: the folder is its own project, with
        // its own lock file, and must not fight the running build for its lock.
        .env("CARGO_TARGET_DIR", root().join("target/template"))
        .output()
        .expect("run cargo")
}

fn ok(out: &std::process::Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

#[test]
fn a_plugin_from_the_template_tests_builds_and_passes_the_conformance_check() {
    let s = Setup::new();
    let dir = s.path("");
    for (name, kind, lib, checks) in [
        ("bme280", "--source", "libbme280.so", 7),
        ("csv-out", "--sink", "libcsv_out.so", 7),
    ] {
        let made = cargo(
            &root(),
            &[
                "run",
                "-q",
                "-p",
                "xtask",
                "--",
                "new-plugin",
                name,
                kind,
                "--dir",
                dir.to_str().unwrap(),
            ],
        );
        ok(&made, "cargo xtask new-plugin");
        let folder = dir.join(name);
        for f in [
            "Cargo.toml",
            "README.md",
            "sample.toml",
            "src/lib.rs",
            "src/config.rs",
        ] {
            assert!(folder.join(f).is_file(), "{name}: {f} missing");
        }
        let tests = ok(&cargo(&folder, &["test"]), "cargo test in the new folder");
        assert!(tests.contains("3 passed; 0 failed"), "{tests}");
        ok(&cargo(&folder, &["build"]), "cargo build in the new folder");
        let built = root().join("target/template/debug");
        assert!(built.join(lib).is_file(), "{name}: {lib} not built");
        let (status, out, err) = gateway(&[
            "test-plugin",
            "--config",
            folder.join("sample.toml").to_str().unwrap(),
            "--plugin-dir",
            built.to_str().unwrap(),
            "--run-for",
            "300ms",
        ]);
        assert!(status.success(), "{out}{err}");
        assert!(
            out.contains(&format!("{checks} checks passed, 0 failed")),
            "{out}"
        );
    }
}

#[test]
fn the_sdk_packs_into_a_crate_file_that_builds_on_its_own() {
    let out = cargo(&root(), &["package", "-p", "gateway-sdk", "--allow-dirty"]);
    let text = ok(&out, "cargo package -p gateway-sdk");
    assert!(text.contains("Verifying gateway-sdk"), "{text}");
    let version = std::fs::read_to_string(root().join("sdk/Cargo.toml"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("version = \"")?
                .strip_suffix('"')
                .map(str::to_owned)
        })
        .unwrap();
    assert_eq!(version, gateway_sdk::SDK_VERSION);
    assert!(root()
        .join(format!(
            "target/template/package/gateway-sdk-{version}.crate"
        ))
        .is_file());
}
