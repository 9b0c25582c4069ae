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

/// Nor at run time: not in what a plugin logs, not in the errors it returns (a retried write's,
/// a refusal's), not in a dead-letter file's header, whoever writes the line; in either log
/// format, after a line break too.
#[test]
fn a_substituted_value_is_never_shown_at_run_time_either() {
    run_time_secrets_are_kept_out("text");
}

#[test]
fn a_substituted_value_is_never_shown_in_the_json_log_either() {
    let err = run_time_secrets_are_kept_out("json");
    assert!(err.lines().all(|l| l.starts_with('{')), "{err}");
}

/// The run of both tests above, in log format `format`: its log.
fn run_time_secrets_are_kept_out(format: &str) -> String {
    let s = Setup::new();
    std::env::set_var("GW_ENV_TEST_RUN_PW", "Xq7-run-time-secret");
    std::fs::write(s.path("device"), "pi-secret-name\n").unwrap();
    let cfg = s.config(
        &format!("data_dir = \"data\"\nlog_format = {format:?}"),
        &format!(
            r#"[sources.seq]
plugin = "testkit-sequence"
count = 20
batch_size = 1
wait_ack = false
device = "${{file:device}}"

[sinks.rec]
plugin = "testkit-recorder"
path = {:?}
batch_timeout = "5ms"
fail_first = 2
fail_message = "cannot connect to mysql://gw:${{GW_ENV_TEST_RUN_PW}}@db.example:3306\n${{GW_ENV_TEST_RUN_PW}} refused"
retry_backoff = "10ms"
reject_value = 13
"#,
            s.path("out.txt").display().to_string()
        ),
    );
    let mut gw = Running::start(&s, &cfg, &["--until-sources-finish"]);
    let status = gw.wait(Duration::from_secs(30)).expect("exits");
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    assert_eq!(s.recorded("out.txt", "seq").len(), 19, "{err}");
    let said = |what: &str| err.lines().filter(|l| l.contains(what)).count();
    // The plugin's own warning and the host's line about the retried write.
    assert!(
        said("mysql://gw:${GW_ENV_TEST_RUN_PW}@db.example:3306") >= 2,
        "{err}"
    );
    assert!(
        said("simulated refusal of value 13 from ${file:device}") >= 1,
        "{err}"
    );
    assert!(
        !err.contains("Xq7-run-time-secret") && !err.contains("pi-secret-name"),
        "{err}"
    );
    let dir = s.path("data/rec/dead-letter");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let header = text.lines().next().unwrap();
    assert!(
        header.contains("simulated refusal of value 13 from ${file:device}")
            && !header.contains("pi-secret-name"),
        "{header}"
    );
    // The reading itself is kept as it was: its device is data, not a message.
    assert!(
        text.lines().nth(1).unwrap().contains("pi-secret-name"),
        "{text}"
    );
    // What `gateway dead-letters` prints of it is a message: redacted, as `resend` does.
    for cmd in [
        &["dead-letters", "list"][..],
        &["dead-letters", "show", "rec"],
    ] {
        let args: Vec<&str> = cmd
            .iter()
            .copied()
            .chain(["--config", cfg.to_str().unwrap()])
            .collect();
        let (status, out, cli_err) = gateway(&args);
        assert!(status.success(), "{cmd:?}: {cli_err}");
        assert!(
            out.contains("${file:device}") && !out.contains("pi-secret-name"),
            "{cmd:?}: {out}"
        );
    }
    err
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

    // A fragment's source no sink takes, and a fragment's sink whose input is missing: the
    // errors name the fragment and its line, not the main file.
    let only = s.config(
        "",
        "[sources.c]\nplugin = \"example\"\n\n[sinks.o]\nplugin = \"console\"\ninputs = [\"c\"]\n",
    );
    let frag = d.join("10-first.toml").display().to_string();
    let (ok, _, err) = check(&only);
    assert!(
        !ok && err.contains(&format!("{frag}:2: [sources.one] no sink takes")),
        "{err}"
    );
    std::fs::write(
        d.join("50-sink.toml"),
        "\n\n[sinks.late]\nplugin = \"console\"\ninputs = [\"nope\"]\n",
    )
    .unwrap();
    let (ok, _, err) = check(&cfg);
    let sink_frag = d.join("50-sink.toml").display().to_string();
    assert!(
        !ok && err.contains(&format!(
            "{sink_frag}:3: [sinks.late] inputs: no source is named \"nope\""
        )),
        "{err}"
    );
    std::fs::remove_file(d.join("50-sink.toml")).unwrap();
    let _ = s.config(
        "",
        "[sources.c]\nplugin = \"example\"\n\n[sinks.o]\nplugin = \"console\"\n",
    );

    // A FIFO or a link to nothing named like a fragment is refused by name, not skipped
    // with the instances it was meant to hold.
    let fifo = d.join("60-fifo.toml");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let (ok, _, err) = check(&cfg);
    assert!(
        !ok && err.contains(&format!("{}: cannot read the fragment", fifo.display())),
        "{err}"
    );
    std::fs::remove_file(&fifo).unwrap();
    let dangling = d.join("70-gone.toml");
    std::os::unix::fs::symlink("/nonexistent/x.toml", &dangling).unwrap();
    let (ok, _, err) = check(&cfg);
    assert!(
        !ok && err.contains(&format!("{}: cannot read the fragment", dangling.display())),
        "{err}"
    );
    std::fs::remove_file(&dangling).unwrap();
    // An editor's lock while a fragment is edited (Emacs: a link to nowhere named
    // `.#NAME.toml`) is no fragment, nor a directory named like one.
    std::os::unix::fs::symlink("user@host.1234", d.join(".#10-first.toml")).unwrap();
    std::fs::create_dir(d.join("80-dir.toml")).unwrap();
    let (ok, _, err) = check(&cfg);
    assert!(ok, "{err}");
    std::fs::remove_file(d.join(".#10-first.toml")).unwrap();
    std::fs::remove_dir(d.join("80-dir.toml")).unwrap();

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

    // A directory others can write: they could put a config of their own in the file's place.
    let dir = s.path("");
    let dir = dir.display().to_string();
    let dir = dir.trim_end_matches('/');
    mode(s.path("").as_path(), 0o777);
    let (ok, _, err) = check(&cfg);
    assert!(
        !ok && err.contains(&format!(
            "{main}: the config file is in a directory others can change: {dir} (which holds {main}) is writable by others (mode 0777)"
        )) && err.contains(&format!("`chmod o-w {dir}`")),
        "{err}"
    );
    // With the sticky bit (as /tmp has) nobody can replace another user's file there; a
    // directory its group may write is fine, as for the files.
    for ok_mode in [0o1777, 0o775] {
        mode(s.path("").as_path(), ok_mode);
        let (ok, _, err) = check(&cfg);
        assert!(ok, "{ok_mode:o}: {err}");
    }
    mode(s.path("").as_path(), 0o700);

    // conf.d: every file in it is read, so the sticky bit does not make others' write
    // harmless there.
    let d = s.path("conf.d");
    std::fs::create_dir_all(&d).unwrap();
    mode(&d, 0o1777);
    let (ok, _, err) = check(&cfg);
    assert!(
        !ok && err.contains(&format!(
            "{}: the fragment directory can be written by others (mode 1777",
            d.display()
        )),
        "{err}"
    );
    mode(&d, 0o755);

    // The same for the directory a `${file:...}` is in, and for where a link to it leads.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("interval"), "1s\n").unwrap();
    std::fs::remove_file(s.path("interval")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path().join("interval"), s.path("interval")).unwrap();
    let (ok, _, err) = check(&cfg);
    assert!(ok, "{err}");
    mode(elsewhere.path(), 0o777);
    let (ok, _, err) = check(&cfg);
    assert!(
        !ok && err.contains("`${file:interval}`:")
            && err.contains(&format!(
                "{} (which holds {}) is writable by others (mode 0777)",
                elsewhere.path().display(),
                elsewhere.path().join("interval").display()
            )),
        "{err}"
    );
}

/// `gateway check` with `cfg`, which must end within 10 s.
fn check_in_time(cfg: &std::path::Path) -> (bool, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["check", "--config", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            panic!(
                "`gateway check --config {}` still runs after 10 s",
                cfg.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_fifo_or_a_device_as_config_or_file_value_is_refused_at_once() {
    let s = Setup::new();
    let fifo = s.path("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // Opening a FIFO for reading waits for a writer: `check` hung on it.
    let (ok, err) = check_in_time(&fifo);
    assert!(
        !ok && err.contains(&format!(
            "{}: cannot read the config file: not a regular file",
            fifo.display()
        )),
        "{err}"
    );
    // /dev/zero never ends: `check` read it until the memory ran out.
    let (ok, err) = check_in_time(std::path::Path::new("/dev/zero"));
    assert!(
        !ok && err.contains("/dev/zero: cannot read the config file: not a regular file"),
        "{err}"
    );
    let cfg = s.config(
        "",
        "[sources.c]\nplugin = \"example\"\ninterval = \"${file:fifo}\"\n[sinks.o]\nplugin = \"console\"\n",
    );
    let (ok, err) = check_in_time(&cfg);
    assert!(
        !ok && err.contains("`${file:fifo}`:") && err.contains("not a regular file"),
        "{err}"
    );
}

#[test]
fn a_data_dir_others_can_change_is_refused() {
    // Whoever can write it can take the buffered readings away, or put readings there that
    // are sent under this gateway's identity after a restart.
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    let shared = s.path("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let cfg = s.config(
        "data_dir = \"shared/gw\"",
        "[sources.c]\nplugin = \"example\"\n[sinks.o]\nplugin = \"console\"\n",
    );
    let refused = |err: &str| {
        err.contains("its data directory")
            && err.contains("can be changed by others")
            && err.contains(&format!(
                "{} is writable by others (mode 0777)",
                shared.display()
            ))
    };
    // `check` makes no directory: it checks the nearest one there is.
    let (ok, _, err) = check(&cfg);
    assert!(!ok && err.contains("its data directory"), "{err}");
    assert!(!shared.join("gw").exists());
    let (status, _, err) = gateway(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(!status.success() && refused(&err), "{err}");
    // Checked before it is made: making it would follow links planted on the way.
    assert!(!shared.join("gw").exists());
    // Nor a link there to a directory of the gateway's own: whoever can write `shared` can
    // point the link elsewhere.
    let own = s.path("own");
    std::fs::create_dir_all(own.join("gw")).unwrap();
    std::os::unix::fs::symlink("../own/gw", shared.join("link")).unwrap();
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("data_dir = \"shared/gw\"", "data_dir = \"shared/link\""),
    )
    .unwrap();
    let (ok, _, err) = check(&cfg);
    assert!(!ok && err.contains("which holds the link"), "{err}");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ok, _, err) = check(&cfg);
    assert!(ok, "{err}");
}
