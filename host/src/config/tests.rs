//! The config parser's unit tests.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/gw/gateway.toml"), text)
}

const GOOD: &str = r#"
[gateway]
device = "pi-01"
plugin_dir = "plugins"

[sources.temp]
plugin = "ds18b20"
interval = "5s"
sensors = [{ id = "28-1", alias = "tank" }]

[sinks.out]
plugin = "console"
inputs = ["temp"]
batch_size = 50
"#;

#[test]
fn parses_the_documented_shape() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.gateway.device, "pi-01");
    assert_eq!(c.gateway.plugin_dirs, [PathBuf::from("/etc/gw/plugins")]);
    assert_eq!(c.gateway.data_dir, PathBuf::from("/etc/gw/data"));
    assert_eq!(c.sources[0].plugin, "ds18b20");
    assert_eq!(c.sinks[0].sink_settings().unwrap().batch_size, 50);
    assert_eq!(
        c.sinks[0].sink_settings().unwrap().inputs.as_deref(),
        Some(&["temp".to_owned()][..])
    );
    assert_eq!(c.sinks_of("temp").count(), 1);
}

#[test]
fn plugin_keys_keep_their_lines() {
    let c = parse(GOOD).unwrap();
    let lines: Vec<&str> = c.sources[0].plugin_toml.lines().collect();
    assert_eq!(lines[7], "interval = \"5s\"", "{lines:?}");
    assert!(lines[8].starts_with("sensors = ["), "{lines:?}");
    assert!(
        !c.sources[0].plugin_toml.contains("plugin ="),
        "host keys are not passed on"
    );
    let v: toml::Table = toml::from_str(&c.sources[0].plugin_toml).unwrap();
    assert_eq!(v["sensors"][0]["alias"].as_str(), Some("tank"));
}

/// A value holding a line break (`"a\nb"`, or what a `${file:...}` of two lines put in) was
/// written as a multi-line string, and every later key of the table moved down: a plugin's
/// error named the wrong line.
#[test]
fn a_value_with_line_breaks_moves_no_later_key() {
    let c = parse(
        "[sources.a]\nplugin = \"x\"\npem = \"one\\ntwo\\r\\n\\u0007\"\nlist = [\"a\\nb\", { \"k\\nk\" = \"v\\nv\" }]\nbad = 1\n[sinks.o]\nplugin = \"y\"\n",
    )
    .unwrap();
    let lines: Vec<&str> = c.sources[0].plugin_toml.lines().collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert_eq!(lines[4], "bad = 1", "{lines:?}");
    let v: toml::Table = toml::from_str(&c.sources[0].plugin_toml).unwrap();
    assert_eq!(v["pem"].as_str(), Some("one\ntwo\r\n\u{7}"));
    assert_eq!(v["list"][0].as_str(), Some("a\nb"));
    assert_eq!(v["list"][1]["k\nk"].as_str(), Some("v\nv"));
}

/// `stats_interval = "1ns"` logged every instance's counters without pause, and
/// `stall_warning = "1ns"` said every sink call stalled.
#[test]
fn intervals_that_would_flood_the_log_are_refused() {
    for (key, v, says) in [
        (
            "stats_interval",
            "1ns",
            "1ns is less than a second (\"0s\" turns it off)",
        ),
        (
            "stall_warning",
            "999ms",
            "999ms is less than a second (\"0s\" turns it off)",
        ),
    ] {
        let e = parse(&format!("[gateway]\ndevice = \"x\"\n{key} = \"{v}\"\n"))
            .unwrap_err()
            .0;
        assert!(e.contains(&format!(":3: [gateway] {key}: {says}")), "{e}");
    }
    for ok in [
        "stats_interval = \"0s\"",
        "stats_interval = \"1s\"",
        "stall_warning = \"1s\"",
        "stall_warning = \"0s\"",
    ] {
        let text = format!("[gateway]\ndevice = \"x\"\n{ok}\n[sources.a]\nplugin = \"x\"\n[sinks.b]\nplugin = \"y\"\n");
        parse(&text).unwrap();
    }
}

#[test]
fn unknown_gateway_key_names_file_line_and_key() {
    let e = parse("[gateway]\ndevice = \"x\"\nplugins = \"p\"\n")
        .unwrap_err()
        .0;
    assert!(
        e.starts_with("/etc/gw/gateway.toml:3: unknown field `plugins`, expected one of"),
        "{e}"
    );
}

#[test]
fn a_plugin_id_is_a_name_not_a_path() {
    for id in ["../../tmp/evil", "a/b", "", "co nsole"] {
        let e = parse(&format!("[sources.a]\nplugin = {id:?}\n"))
            .unwrap_err()
            .0;
        assert!(
            e.contains("[sources.a] plugin: ") && e.contains("is not a plugin id"),
            "{e}"
        );
    }
    let ok = parse(
        "[sources.a]\nplugin = \"coaps-ingress\"\n[sinks.b]\nplugin = \"testkit_recorder\"\n",
    );
    assert!(ok.is_ok(), "{:?}", ok.err().map(|e| e.0));
}

#[test]
fn a_device_name_no_server_would_take_is_refused() {
    for (device, says) in [
        ("", "must not be empty"),
        ("pi\\u0007", "holds a control character"),
        ("pi\\u202e10-ip", "one that reorders text"),
        ("pi\\u2028", "one that reorders text"),
        ("pi-01 ", "has white space at an end"),
        (&"x".repeat(129), "129 bytes; at most 128"),
        ("pi\\u200b01", "one shown as nothing"),
        // A sensor's name may hold a joiner; a device's, its certificate's identity, not.
        ("pi\\u200d01", "holds U+200D"),
    ] {
        let e = parse(&format!("[gateway]\ndevice = \"{device}\"\n"))
            .unwrap_err()
            .0;
        assert!(e.contains("[gateway] device: ") && e.contains(says), "{e}");
    }
    assert!(parse("[gateway]\ndevice = \"pi-01 (barn)\"\n").is_ok());
}

#[test]
fn wrong_type_names_table_key_and_expectation() {
    let e = parse("[sources.a]\nplugin = \"x\"\n[sinks.b]\nplugin = \"y\"\nbatch_size = \"big\"\n")
        .unwrap_err()
        .0;
    assert_eq!(
        e,
        "/etc/gw/gateway.toml:5: [sinks.b] batch_size: expected a positive integer, found the string \"big\""
    );
    let e =
        parse("[sources.a]\nplugin = \"x\"\n[sinks.b]\nplugin = \"y\"\nbatch_timeout = \"soon\"\n")
            .unwrap_err()
            .0;
    assert!(
        e.starts_with("/etc/gw/gateway.toml:5: [sinks.b] batch_timeout: invalid duration \"soon\""),
        "{e}"
    );
    let e = parse("[sources.a]\nplugin = \"x\"\n[sinks.b]\nplugin = \"y\"\nqueue_capacity = 0\n")
        .unwrap_err()
        .0;
    assert!(
        e.ends_with("queue_capacity: expected a positive integer of at most 65536, found 0"),
        "{e}"
    );
}

#[test]
fn settings_that_would_take_the_memory_or_spin_are_refused_with_their_key() {
    // A queue's slots are allocated when it is made: a billion of them took 24 GB at start,
    // while `gateway check` passed. A backoff of zero retried in a tight loop.
    let sink = |kv: &str| {
        parse(&format!(
            "[sources.a]\nplugin = \"x\"\n[sinks.b]\nplugin = \"y\"\n{kv}\n"
        ))
        .map(|_| ())
        .map_err(|e| e.0)
    };
    let e = sink("queue_capacity = 1000000000").unwrap_err();
    assert!(
        e.ends_with("[sinks.b] queue_capacity: expected a positive integer of at most 65536, found 1000000000"),
        "{e}"
    );
    sink("queue_capacity = 65536").unwrap();
    let e = sink("batch_size = 1000001").unwrap_err();
    assert!(
        e.contains("[sinks.b] batch_size: expected a positive integer of at most 1000000"),
        "{e}"
    );
    for key in [
        "retry_backoff",
        "retry_backoff_max",
        "restart_backoff",
        "restart_backoff_max",
    ] {
        let e = sink(&format!("{key} = \"0s\"")).unwrap_err();
        assert!(
            e.ends_with(&format!("[sinks.b] {key}: a backoff of zero would retry in a tight loop; give at least \"1ms\"")),
            "{e}"
        );
        sink(&format!("{key} = \"1ms\"")).unwrap();
    }
    let e = parse(
        "[sources.a]\nplugin = \"x\"\nrestart_backoff = \"0ms\"\n[sinks.b]\nplugin = \"y\"\n",
    )
    .unwrap_err()
    .0;
    assert!(
        e.contains("[sources.a] restart_backoff: a backoff of zero"),
        "{e}"
    );
}

#[test]
fn dead_letter_max_size_takes_sizes_and_names_its_key() {
    let sink = |v: &str| {
        parse(&format!(
            "[sources.a]\nplugin = \"x\"\n[sinks.b]\nplugin = \"y\"\ndead_letter_max_size = {v}\n"
        ))
        .map(|c| c.sinks[0].sink_settings().unwrap().dead_letter_max_size)
        .map_err(|e| e.0)
    };
    assert_eq!(sink("\"64MiB\""), Ok(64 << 20));
    assert_eq!(sink("4096"), Ok(4096));
    assert_eq!(
        parse(GOOD).unwrap().sinks[0]
            .sink_settings()
            .unwrap()
            .dead_letter_max_size,
        default::DEAD_LETTER_MAX_SIZE
    );
    for bad in ["0", "\"lots\"", "true"] {
        let e = sink(bad).unwrap_err();
        assert_eq!(
            e,
            "/etc/gw/gateway.toml:5: [sinks.b] dead_letter_max_size: expected a size such as \"256MiB\", \"1GB\" or a number of bytes",
            "{bad}"
        );
    }
}

#[test]
fn dead_letter_device_share_takes_sizes_and_defaults_to_none() {
    let share = |v: &str| {
        parse(&format!(
            "[sources.a]\nplugin = \"x\"\n[sinks.b]\nplugin = \"y\"\ndead_letter_device_share = {v}\n"
        ))
        .map(|c| c.sinks[0].sink_settings().unwrap().dead_letter_device_share)
        .map_err(|e| e.0)
    };
    assert_eq!(share("\"8MiB\""), Ok(Some(8 << 20)));
    let unset = parse(GOOD).unwrap().sinks[0]
        .sink_settings()
        .unwrap()
        .dead_letter_device_share;
    assert_eq!(unset, None);
    assert_eq!(
        share("0").unwrap_err(),
        "/etc/gw/gateway.toml:5: [sinks.b] dead_letter_device_share: expected a size such as \"256MiB\", \"1GB\" or a number of bytes"
    );
}

#[test]
fn buffer_values_are_read_by_serde_and_their_errors_name_the_key() {
    let sink = |buffer: &str| {
        parse(&format!(
            "[sources.a]\nplugin = \"x\"\n[sinks.b]\nplugin = \"y\"\nbuffer = {buffer}\n"
        ))
    };
    let c = sink(
        r#"{ type = "disk", max_size = "64MiB", when_full = "drop_oldest", fsync = "never" }"#,
    )
    .unwrap();
    let b = c.sinks[0].sink_settings().unwrap().buffer.clone().unwrap();
    assert_eq!(
        b,
        BufferSettings {
            max_size: 64 << 20,
            when_full: WhenFull::DropOldest,
            fsync: false
        }
    );
    let c = sink(r#"{ type = "disk", max_size = 4096 }"#).unwrap();
    let b = c.sinks[0].sink_settings().unwrap().buffer.clone().unwrap();
    assert_eq!(
        (b.max_size, b.when_full, b.fsync),
        (4096, WhenFull::Block, true)
    );
    // A memory buffer takes no other key: one written beside it is refused, not ignored.
    let e = sink(r#"{ type = "memory", max_size = "1GiB" }"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("buffer.max_size") && e.contains("a memory buffer takes no max_size"),
        "{e}"
    );
    let e = sink(r#"{ type = "memory", size = 100 }"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("buffer.size") && e.contains("a memory buffer takes `type` alone"),
        "{e}"
    );
    assert!(sink(r#"{ type = "memory" }"#).unwrap().sinks[0]
        .sink_settings()
        .unwrap()
        .buffer
        .is_none());
    for (buffer, want) in [
        (
            r#"{ type = "disk", max_size = "lots" }"#,
            "buffer.max_size: invalid size \"lots\"",
        ),
        (
            r#"{ type = "disk", max_size = -1 }"#,
            "buffer.max_size: expected a size such as",
        ),
        (
            r#"{ type = "disk", when_full = "panic" }"#,
            "buffer.when_full: expected \"block\" or \"drop_oldest\", found \"panic\"",
        ),
        (
            r#"{ type = 7 }"#,
            "buffer.type: invalid type: integer `7`, expected a string",
        ),
    ] {
        let e = sink(buffer).unwrap_err().0;
        assert!(
            e.contains(&format!(":5: [sinks.b] {want}")),
            "{buffer}: {e}"
        );
    }
}

#[test]
fn missing_plugin_key_is_explained() {
    let e = parse("[sources.a]\ninterval = \"1s\"\n").unwrap_err().0;
    assert!(
        e.starts_with("/etc/gw/gateway.toml:1: [sources.a] plugin: missing"),
        "{e}"
    );
}

#[test]
fn duplicate_instance_name_is_refused() {
    let e = parse("[sources.a]\nplugin = \"x\"\n[sinks.a]\nplugin = \"y\"\n")
        .unwrap_err()
        .0;
    assert!(
        e.contains(":3: [sinks.a] the name \"a\" is already used by the source on line 1"),
        "{e}"
    );
    // Within one group TOML itself refuses the second table.
    let e = parse("[sources.a]\nplugin = \"x\"\n[sources.a]\nplugin = \"y\"\n")
        .unwrap_err()
        .0;
    assert!(e.starts_with("/etc/gw/gateway.toml:3:"), "{e}");
}

#[test]
fn unknown_input_and_orphan_source_are_refused() {
    let e = parse("[sources.a]\nplugin = \"x\"\n[sinks.b]\nplugin = \"y\"\ninputs = [\"nope\"]\n")
        .unwrap_err()
        .0;
    assert!(
        e.contains("[sinks.b] inputs: no source is named \"nope\" (sources: a)"),
        "{e}"
    );
    let e = parse("[sources.a]\nplugin = \"x\"\n[sources.c]\nplugin = \"x\"\n[sinks.b]\nplugin = \"y\"\ninputs = [\"a\"]\n")
        .unwrap_err()
        .0;
    assert!(
        e.contains(":3: [sources.c] no sink takes this source's readings"),
        "{e}"
    );
}

#[test]
fn syntax_error_has_a_line() {
    let e = parse("[gateway]\ndevice = \n").unwrap_err().0;
    assert!(e.starts_with("/etc/gw/gateway.toml:2: "), "{e}");
}

#[test]
fn gateway_levels_formats_and_durations_take_substitutions_and_name_the_key() {
    std::env::set_var("GW_TEST_TIMEOUT", "3s");
    std::env::set_var("GW_TEST_LEVEL", "debug");
    let text = GOOD.replace(
        "plugin_dir = \"plugins\"",
        "plugin_dir = \"plugins\"\nshutdown_timeout = \"${GW_TEST_TIMEOUT}\"\nlog_level = \"${GW_TEST_LEVEL}\"\nlog_format = \"${GW_TEST_FORMAT:-json}\"\nstats_interval = \"${GW_TEST_UNSET:-0s}\"",
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.gateway.shutdown_timeout, Duration::from_secs(3));
    assert_eq!(c.gateway.log_level, LevelFilter::DEBUG);
    assert_eq!(c.gateway.log_format, LogFormat::Json);
    assert_eq!(c.gateway.stats_interval, Duration::ZERO);
    // What the variable held is checked as if written there.
    std::env::set_var("GW_TEST_LEVEL", "loud");
    let e = parse(&text).unwrap_err().0;
    assert!(
        e.starts_with("/etc/gw/gateway.toml:6: [gateway] log_level: expected off, error"),
        "{e}"
    );
    let e = parse(&GOOD.replace(
        "plugin_dir = \"plugins\"",
        "plugin_dir = \"plugins\"\nshutdown_timeout = \"soon\"",
    ))
    .unwrap_err()
    .0;
    assert!(
        e.starts_with(
            "/etc/gw/gateway.toml:5: [gateway] shutdown_timeout: invalid duration \"soon\""
        ),
        "{e}"
    );
}

#[test]
fn the_host_name_is_the_first_line_of_etc_hostname_that_is_not_a_comment() {
    // hostname(5) allows comments: the whole file (a newline in it) was taken as the device
    // name, which the name check refuses.
    assert_eq!(
        super::host_name_in("# set by cloud-init\n\npi-01\n").as_deref(),
        Some("pi-01")
    );
    assert_eq!(super::host_name_in("  pi-02  \n").as_deref(), Some("pi-02"));
    assert_eq!(super::host_name_in("# only a comment\n"), None);
    assert_eq!(super::host_name_in(""), None);
}
