//! `gateway test-plugin`: the conformance checks run on real plugin libraries, with the samples
//! their folders ship, and on a source that breaks a rule.

mod support;
use support::*;

/// Runs `gateway test-plugin` on a copy of `sample` (so that relative paths land in a
/// temporary directory) with the built plugins.
fn test_plugin(s: &Setup, sample: &str) -> (bool, String) {
    let cfg = s.path("sample.toml");
    std::fs::write(&cfg, sample).unwrap();
    let (status, out, _) = gateway(&[
        "test-plugin",
        "--config",
        cfg.to_str().unwrap(),
        "--plugin-dir",
        plugin_dir().to_str().unwrap(),
        "--run-for",
        "1200ms",
    ]);
    (status.success(), out)
}

#[test]
fn the_repositorys_own_plugins_pass_with_their_samples() {
    for (folder, checks) in [
        ("example", 7),
        ("console", 7),
        ("sqlite", 7),
        ("ds18b20", 7),
    ] {
        let s = Setup::new();
        let sample = std::fs::read_to_string(format!(
            "{}/../plugins/{folder}/sample.toml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let (ok, out) = test_plugin(&s, &sample);
        assert!(ok, "{folder}: {out}");
        assert!(
            out.contains(&format!("{checks} checks passed, 0 failed")),
            "{folder}: {out}"
        );
        assert!(
            out.contains("new has no side effects: its data directory was left alone"),
            "{out}"
        );
    }
}

#[test]
fn an_unknown_key_is_shown_refused_with_file_and_line() {
    let s = Setup::new();
    let (ok, out) = test_plugin(
        &s,
        "\n\n[sinks.out]\nplugin = \"console\"\nformat = \"json\"\n",
    );
    assert!(ok, "{out}");
    let want = format!(
        "ok    refuses an unknown key with its file and line: {}:6: [sinks.out] unknown field `conformance_unknown_key`",
        s.path("sample.toml").display()
    );
    assert!(out.contains(&want), "{out}");
}

#[test]
fn a_sink_is_opened_written_twice_and_closed() {
    let s = Setup::new();
    let (ok, out) = test_plugin(&s, "[sinks.store]\nplugin = \"sqlite\"\npath = \"r.db\"\n");
    assert!(ok, "{out}");
    for step in [
        "ok    opens and takes a batch of 10 readings",
        "ok    takes the same batch again (a re-delivery is not an error)",
        "ok    closes",
    ] {
        assert!(out.contains(step), "{step} missing: {out}");
    }
    assert!(s.path("r.db").exists(), "opened where the sample says");
}

#[test]
fn a_source_that_panics_fails_the_stop_check_and_the_command() {
    let s = Setup::new();
    let (ok, out) = test_plugin(
        &s,
        "[sources.seq]\nplugin = \"testkit-sequence\"\ninterval = \"10ms\"\npanic_after = 3\n",
    );
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL  stops when asked"), "{out}");
    assert!(out.contains("(panic) plugin panicked in run"), "{out}");
    assert!(out.contains("1 failed"), "{out}");
}

#[test]
fn a_plugin_that_is_not_there_fails_to_load() {
    let s = Setup::new();
    let (ok, out) = test_plugin(&s, "[sinks.x]\nplugin = \"nosuchplugin\"\n");
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL  loads: "), "{out}");
}
