//! Loading real plugin libraries: good ones, an incompatible one, missing files, files that are
//! not plugins, and the `check` and `plugins` commands.

mod support;
use support::*;

const CONSOLE_SINK: &str = "[sinks.out]\nplugin = \"console\"\n";

#[test]
fn check_loads_real_plugins_and_prints_the_graph() {
    let s = Setup::new();
    let cfg = s.config(
        "",
        &format!("[sources.count]\nplugin = \"example\"\ninterval = \"1s\"\n{CONSOLE_SINK}"),
    );
    let (status, out, err) = gateway(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    assert!(out.contains(": OK"), "{out}");
    assert!(
        out.contains("count")
            && out.contains("example (gateway-plugin-example 0.1.0, libexample.so)  -> out"),
        "{out}"
    );
    assert!(out.contains("out") && out.contains("<- count"), "{out}");
}

#[test]
fn plugin_built_against_an_incompatible_sdk_is_refused_naming_both_versions() {
    let s = Setup::new();
    let cfg = s.config(
        "",
        "[sources.c]\nplugin = \"example\"\n[sinks.out]\nplugin = \"incompatible\"\n",
    );
    let (status, _, err) = gateway(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(!status.success());
    assert!(err.contains("[sinks.out] plugin \"incompatible\""), "{err}");
    assert!(err.contains("libincompatible.so"), "names the file: {err}");
    assert!(
        err.contains("built against gateway-sdk 0.2.0, but this gateway uses gateway-sdk 0.1.0"),
        "{err}"
    );
    assert!(err.contains("nothing was started"), "{err}");
    assert!(err.lines().count() < 10, "the message stays short: {err}");
}

#[test]
fn missing_plugin_names_the_directory_and_the_file_looked_for() {
    let s = Setup::new();
    let cfg = s.config(
        "",
        &format!("[sources.t]\nplugin = \"ds18b20x\"\n{CONSOLE_SINK}"),
    );
    let (status, _, err) = gateway(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(!status.success());
    assert!(
        err.contains("gateway.toml:6: [sources.t] plugin \"ds18b20x\": no library in"),
        "{err}"
    );
    assert!(err.contains("looked for libds18b20x.so;"), "{err}");
}

#[test]
fn files_that_are_not_plugins_are_refused_with_the_reason() {
    let s = Setup::new();
    let dir = s.path("plugins");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("libbogus.so"), "this is not a shared library").unwrap();
    // A real shared library that is not a gateway plugin.
    let libm = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("libm");
    std::fs::copy(libm, dir.join("libnotaplugin.so")).unwrap();
    let cfg = s.path("g.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nplugin_dir = {:?}\n[sources.a]\nplugin = \"bogus\"\n[sinks.b]\nplugin = \"notaplugin\"\n",
            dir.display().to_string()
        ),
    )
    .unwrap();
    let (status, _, err) = gateway(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(!status.success());
    assert!(
        err.contains("[sources.a] plugin \"bogus\"")
            && err.contains("libbogus.so: cannot be loaded"),
        "{err}"
    );
    assert!(
        err.contains("[sinks.b] plugin \"notaplugin\"")
            && err.contains("libnotaplugin.so: is not a gateway plugin"),
        "{err}"
    );
    assert!(
        err.contains("2 problems found"),
        "every problem is listed: {err}"
    );

    let (status, out, _) = gateway(&["plugins", "--plugin-dir", dir.to_str().unwrap()]);
    assert!(status.success());
    assert!(
        out.contains("libbogus.so: refused: it cannot be loaded"),
        "{out}"
    );
    assert!(
        out.contains("libnotaplugin.so: refused: it is not a gateway plugin"),
        "{out}"
    );
}

#[test]
fn plugins_lists_each_library_with_versions_and_kinds() {
    let (status, out, err) = gateway(&["plugins", "--plugin-dir", plugin_dir().to_str().unwrap()]);
    assert!(status.success(), "{err}");
    assert!(
        out.contains("libconsole.so: gateway-plugin-console 0.1.0 (gateway-sdk 0.1.0)"),
        "{out}"
    );
    assert!(out.contains("sink     console"), "{out}");
    assert!(out.contains("source   example"), "{out}");
    // One library exporting several plugins of both kinds.
    for line in [
        "source   testkit-sequence",
        "source   testkit-null-source",
        "sink     testkit-recorder",
        "sink     testkit-null-sink",
    ] {
        assert!(out.contains(line), "{line} missing from {out}");
    }
    assert!(
        out.contains("libincompatible.so: refused: it was built against gateway-sdk 0.2.0"),
        "{out}"
    );
}

#[test]
fn a_source_configured_as_a_sink_is_refused() {
    let s = Setup::new();
    let cfg = s.config(
        "",
        "[sources.a]\nplugin = \"example\"\n[sinks.b]\nplugin = \"example\"\n",
    );
    let (status, _, err) = gateway(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(!status.success());
    assert!(
        err.contains(
            "plugin \"example\" in libexample.so is a source, but it is configured as a sink"
        ),
        "{err}"
    );
}

/// A private copy of the plugin directory holding `libexample.so` and `libconsole.so`, with modes
/// a careful administrator would set.
fn private_plugins(s: &Setup) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = s.path("plugins");
    std::fs::create_dir(&dir).unwrap();
    for f in ["libexample.so", "libconsole.so"] {
        std::fs::copy(plugin_dir().join(f), dir.join(f)).unwrap();
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn check_with(s: &Setup, dir: &std::path::Path) -> (bool, String) {
    let cfg = s.path("g.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nplugin_dir = {:?}\n[sources.a]\nplugin = \"example\"\n[sinks.b]\nplugin = \"console\"\n",
            dir.display().to_string()
        ),
    )
    .unwrap();
    let (status, _, err) = gateway(&["check", "--config", cfg.to_str().unwrap()]);
    (status.success(), err)
}

#[test]
fn a_plugin_directory_others_can_write_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    let dir = private_plugins(&s);
    assert!(check_with(&s, &dir).0, "the private copy loads");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (ok, err) = check_with(&s, &dir);
    assert!(!ok);
    assert!(
        err.contains("is not trusted")
            && err.contains("is writable by group and others (mode 0777)")
            && err.contains(&format!("`chmod go-w {}`", dir.display())),
        "{err}"
    );
}

#[test]
fn a_library_its_group_can_write_or_another_user_owns_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    let dir = private_plugins(&s);
    let lib = dir.join("libconsole.so");
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o775)).unwrap();
    let (ok, err) = check_with(&s, &dir);
    assert!(!ok);
    assert!(
        err.contains("[sinks.b] plugin \"console\"")
            && err.contains("libconsole.so is writable by its group (mode 0775)"),
        "{err}"
    );
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&lib, Some(4321), None).unwrap();
        let (ok, err) = check_with(&s, &dir);
        assert!(!ok);
        assert!(
            err.contains("is owned by uid 4321, neither root nor the user the gateway runs as"),
            "{err}"
        );
    }
}

#[test]
fn a_symlink_is_judged_by_where_it_leads() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    let dir = private_plugins(&s);
    // The link itself sits in a trusted directory; the library it leads to does not.
    let elsewhere = s.path("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::rename(dir.join("libconsole.so"), elsewhere.join("libconsole.so")).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("libconsole.so"), dir.join("libconsole.so")).unwrap();
    let (ok, err) = check_with(&s, &dir);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "{} is writable by group and others",
            elsewhere.display()
        )),
        "{err}"
    );
}

#[test]
fn a_library_not_named_after_the_plugin_is_never_opened() {
    let s = Setup::new();
    let dir = private_plugins(&s);
    // The console plugin under another name, and a file that is not a library at all: neither
    // may be opened to look for "console".
    std::fs::rename(dir.join("libconsole.so"), dir.join("libother.so")).unwrap();
    std::fs::write(dir.join("libzzz.so"), "not a library").unwrap();
    let (ok, err) = check_with(&s, &dir);
    assert!(!ok);
    assert!(
        err.contains("[sinks.b] plugin \"console\": no library in")
            && err.contains("looked for libconsole.so;"),
        "{err}"
    );
    assert!(
        !err.contains("libzzz.so") && !err.contains("libother.so"),
        "{err}"
    );
}

#[test]
fn plugin_dir_may_list_a_third_partys_directory_after_the_bundled_one() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    // "Bundled": console only. "Third party": example only.
    let bundled = s.path("bundled");
    let third = s.path("third");
    for (dir, lib) in [(&bundled, "libconsole.so"), (&third, "libexample.so")] {
        std::fs::create_dir(dir).unwrap();
        std::fs::copy(plugin_dir().join(lib), dir.join(lib)).unwrap();
        std::fs::set_permissions(dir.join(lib), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let cfg = s.path("g.toml");
    let write = |dirs: &[&std::path::Path], source: &str| {
        let dirs: Vec<String> = dirs
            .iter()
            .map(|d| format!("{:?}", d.display().to_string()))
            .collect();
        std::fs::write(
            &cfg,
            format!(
                "[gateway]\nplugin_dir = [{}]\n[sources.a]\nplugin = {source:?}\n[sinks.b]\nplugin = \"console\"\n",
                dirs.join(", ")
            ),
        )
        .unwrap();
    };
    write(&[&bundled, &third], "example");
    let (status, out, err) = gateway(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    assert!(
        out.contains(&format!(
            "plugins from {}, {}",
            bundled.display(),
            third.display()
        )),
        "{out}"
    );
    let (status, out, _) = gateway(&["plugins", "--config", cfg.to_str().unwrap()]);
    assert!(status.success());
    assert!(
        out.contains("libconsole.so") && out.contains("libexample.so"),
        "{out}"
    );
    // A plugin in neither: the message names both directories.
    write(&[&bundled, &third], "ds18b20");
    let (status, _, err) = gateway(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(!status.success());
    assert!(
        err.contains(&format!(
            "no library in {}, {} exports it",
            bundled.display(),
            third.display()
        )),
        "{err}"
    );
}
