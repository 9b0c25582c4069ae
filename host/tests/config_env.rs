//! Config for deployment tools: `${VAR}`, `${VAR:-default}` and `${file:PATH}` in string values,
//! for every plugin, with the values kept out of messages; `conf.d/` fragments.

mod support;
use std::time::Duration;
use support::*;

fn check(cfg: &std::path::Path) -> (bool, String, String) {
    let (status, out, err) = gateway(&["check", "--config", cfg.to_str().unwrap()]);
    (status.success(), out, err)
}

#[test]
fn environment_and_file_values_reach_the_plugins() {
    let s = Setup::new();
    std::env::set_var("GW_ENV_TEST_OUT", s.path("from-env").display().to_string());
    std::fs::create_dir_all(s.path("from-env")).unwrap();
    let s2 = Setup::new();
    std::fs::write(s2.path("count"), "7\n").unwrap();
    let cfg = s2.config(
        "",
        r#"[sources.seq]
plugin = "testkit-sequence"
count = 7

[sinks.rec]
plugin = "testkit-recorder"
path = "${GW_ENV_TEST_OUT}/${file:count}.txt"
"#,
    );
    let mut gw = Running::start(&s2, &cfg, &["--until-sources-finish"]);
    let status = gw.wait(Duration::from_secs(30)).expect("exits");
    assert!(status.success(), "{}", gw.stderr());
    let got = std::fs::read_to_string(s.path("from-env/7.txt")).unwrap();
    assert_eq!(got.lines().count(), 7, "{got}");
}

#[test]
fn a_substituted_value_is_never_shown_and_a_missing_one_names_the_key() {
    let s = Setup::new();
    std::fs::write(s.path("secret"), "hunter2-very-secret\n").unwrap();
    let cfg = s.config(
        "",
        "[sources.c]\nplugin = \"example\"\ninterval = \"${file:secret}\"\n[sinks.o]\nplugin = \"console\"\n",
    );
    let (ok, out, err) = check(&cfg);
    assert!(!ok);
    assert!(
        err.contains("gateway.toml:8: [sources.c] invalid duration \"${file:secret}\""),
        "{err}"
    );
    assert!(
        !err.contains("hunter2") && !out.contains("hunter2"),
        "{err}"
    );

    let cfg = s.config(
        "",
        "[sources.c]\nplugin = \"example\"\n\ninterval = \"${GW_ENV_TEST_NEVER_SET}\"\n[sinks.o]\nplugin = \"console\"\n",
    );
    let (ok, _, err) = check(&cfg);
    assert!(!ok);
    assert!(
        err.contains("gateway.toml:9: [sources.c] interval: `${GW_ENV_TEST_NEVER_SET}`: the environment variable GW_ENV_TEST_NEVER_SET is not set"),
        "{err}"
    );
    let cfg = s.config("data_dir = \"${GW_ENV_TEST_NEVER_SET}\"", "");
    let (ok, _, err) = check(&cfg);
    assert!(!ok);
    assert!(
        err.contains("gateway.toml:5: [gateway] data_dir: `${GW_ENV_TEST_NEVER_SET}`"),
        "{err}"
    );
}

#[test]
fn conf_d_fragments_add_instances_in_name_order_and_names_stay_unique() {
    let s = Setup::new();
    let cfg = s.config(
        "",
        "[sources.c]\nplugin = \"example\"\n\n[sinks.o]\nplugin = \"console\"\n",
    );
    let d = s.path("conf.d");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("20-second.toml"),
        "[sources.two]\nplugin = \"example\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("10-first.toml"),
        "\n[sources.one]\nplugin = \"example\"\n",
    )
    .unwrap();
    std::fs::write(d.join("30-ignored.toml.dpkg-old"), "not toml at all [").unwrap();
    let (ok, out, err) = check(&cfg);
    assert!(ok, "{err}");
    for name in ["one", "two"] {
        assert!(out.contains(name), "{name} missing from the graph:\n{out}");
    }
    let one = out.find("\n  one ").unwrap();
    let two = out.find("\n  two ").unwrap();
    assert!(one < two, "10-first before 20-second:\n{out}");

    // The same name in a fragment: refused, naming both places.
    std::fs::write(d.join("40-dup.toml"), "[sources.c]\nplugin = \"example\"\n").unwrap();
    let (ok, _, err) = check(&cfg);
    assert!(!ok);
    let frag = d.join("40-dup.toml").display().to_string();
    let main = s.path("gateway.toml").display().to_string();
    assert!(
        err.contains(&format!(
            "{frag}:1: [sources.c] the name \"c\" is already used by [sources.c] in {main}:6"
        )),
        "{err}"
    );
    // [gateway] belongs in the main file; a fragment's errors name the fragment.
    std::fs::write(d.join("40-dup.toml"), "[gateway]\ndevice = \"x\"\n").unwrap();
    let (ok, _, err) = check(&cfg);
    assert!(
        !ok && err.contains("[gateway] belongs in the main file"),
        "{err}"
    );
    std::fs::write(
        d.join("40-dup.toml"),
        "[sinks.bad]\nplugin = \"console\"\nformat = 3\n",
    )
    .unwrap();
    let (ok, _, err) = check(&cfg);
    assert!(!ok && err.contains(&format!("{frag}:")), "{err}");
}

#[test]
fn config_files_and_file_values_others_can_change_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    let s = Setup::new();
    std::fs::write(s.path("interval"), "1s\n").unwrap();
    let cfg = s.config(
        "",
        "[sources.c]\nplugin = \"example\"\ninterval = \"${file:interval}\"\n[sinks.o]\nplugin = \"console\"\n",
    );
    let (ok, _, err) = check(&cfg);
    assert!(ok, "{err}");
    let main = cfg.display().to_string();

    // Whoever can change the main file decides where readings go.
    mode(&cfg, 0o666);
    let (ok, _, err) = check(&cfg);
    assert!(
        !ok && err.contains(&format!(
            "{main}: the config file can be changed by others (mode 0666"
        )) && err.contains("chmod o-w"),
        "{err}"
    );
    mode(&cfg, 0o644);

    // A fragment: whoever can add one adds an uplink of their own.
    let d = s.path("conf.d");
    std::fs::create_dir_all(&d).unwrap();
    let frag = d.join("10-more.toml");
    std::fs::write(&frag, "[sources.d]\nplugin = \"example\"\n").unwrap();
    mode(&frag, 0o646);
    let (ok, _, err) = check(&cfg);
    assert!(
        !ok && err.contains(&format!(
            "{}: the fragment can be changed by others (mode 0646",
            frag.display()
        )),
        "{err}"
    );
    std::fs::remove_file(&frag).unwrap();

    // A value taken from a file: the same.
    mode(&s.path("interval"), 0o646);
    let (ok, _, err) = check(&cfg);
    assert!(
        !ok && err.contains("`${file:interval}`:")
            && err.contains("can be changed by others (mode 0646"),
        "{err}"
    );
    // Readable by all is fine (a Kubernetes secret's files are, by default), and so is
    // writable by its group (a umask of 002 makes files so).
    mode(&s.path("interval"), 0o664);
    mode(&cfg, 0o664);
    let (ok, _, err) = check(&cfg);
    assert!(ok, "{err}");
}
