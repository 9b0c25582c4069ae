//! Config errors as the user sees them: file, line, table, key, and what was expected.

mod support;
use support::*;

fn check(s: &Setup, body: &str) -> String {
    let cfg = s.config("", body);
    let (status, _, err) = gateway(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(!status.success(), "expected failure for:\n{body}");
    err
}

// `Setup::config` writes four [gateway] lines and an empty one: the body starts on line 6.

#[test]
fn unknown_plugin_key_names_file_line_table_and_key() {
    let s = Setup::new();
    let err = check(
        &s,
        "[sources.c]\nplugin = \"example\"\nintervall = \"1s\"\n[sinks.o]\nplugin = \"console\"\n",
    );
    let file = s.path("gateway.toml").display().to_string();
    assert!(
        err.contains(&format!(
            "{file}:8: [sources.c] unknown field `intervall`, expected `interval` or `sensor`"
        )),
        "{err}"
    );
}

#[test]
fn bad_plugin_value_names_the_line_and_the_expected_form() {
    let s = Setup::new();
    let err = check(&s, "[sources.c]\nplugin = \"example\"\n\ninterval = \"often\"\n[sinks.o]\nplugin = \"console\"\n");
    assert!(
        err.contains("gateway.toml:9: [sources.c] invalid duration \"often\""),
        "{err}"
    );
}

#[test]
fn unknown_host_key_in_gateway_table() {
    let s = Setup::new();
    let cfg = s.path("g.toml");
    std::fs::write(&cfg, "[gateway]\ndevice = \"d\"\nlog_levle = \"debug\"\n").unwrap();
    let (status, _, err) = gateway(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(!status.success());
    assert!(err.contains("g.toml:3: unknown field `log_levle`"), "{err}");
}

#[test]
fn wrong_type_for_a_host_key_of_a_sink() {
    let s = Setup::new();
    let err = check(
        &s,
        "[sources.c]\nplugin = \"example\"\n[sinks.o]\nplugin = \"console\"\ninputs = \"c\"\n",
    );
    assert!(
        err.contains("gateway.toml:10: [sinks.o] inputs: expected an array of source names"),
        "{err}"
    );
}

#[test]
fn two_instances_with_the_same_name_are_refused() {
    let s = Setup::new();
    let err = check(
        &s,
        "[sources.x]\nplugin = \"example\"\n[sinks.x]\nplugin = \"console\"\n",
    );
    assert!(
        err.contains(
            "gateway.toml:8: [sinks.x] the name \"x\" is already used by the source on line 6"
        ),
        "{err}"
    );
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let (status, _, err) = gateway(&["run", "--config", "/nonexistent/gateway.toml"]);
    assert!(!status.success());
    assert!(
        err.contains("/nonexistent/gateway.toml: cannot read the config file"),
        "{err}"
    );
}

/// A password that leaves the machine without TLS is named in a warning, for each store and
/// broker; one that stays on loopback is not.
#[test]
fn check_warns_of_passwords_sent_elsewhere_without_tls() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    let pw = s.path("pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pw = pw.display().to_string();
    let body = format!(
        r#"[sources.a]
plugin = "example"
[sinks.my]
plugin = "mysql"
url = "mysql://gw@db.example:3306/x"
password_file = {pw:?}
[sinks.pg]
plugin = "postgres"
url = "postgresql://gw@10.1.2.3/x"
password_file = {pw:?}
[sinks.bus]
plugin = "nats"
url = "nats://nats.example:4222"
username = "gw"
password_file = {pw:?}
[sinks.here]
plugin = "mysql"
url = "mysql://gw@127.0.0.1:3306/x"
password_file = {pw:?}
"#
    );
    let cfg = s.config("", &body);
    let (status, _, err) = gateway(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    for want in [
        "the password and the readings go to db.example:3306 without TLS",
        "the password and the readings go to 10.1.2.3 without TLS",
        "the credentials go to nats.example in clear text over nats://",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    assert!(!err.contains("go to 127.0.0.1"), "{err}");
}

/// A NATS sink's subject under which two devices' readings can share a subject (no device in
/// it, or the device and the sensor in one token) is warned about: a consumer that takes the
/// device from the subject would take one's readings for the other's.
#[test]
fn check_warns_of_a_nats_subject_two_devices_can_share() {
    let s = Setup::new();
    let body = r#"[sources.a]
plugin = "example"
[sinks.flat]
plugin = "nats"
url = "nats://127.0.0.1:4222"
subject = "readings.{sensor}.{name}"
[sinks.joined]
plugin = "nats"
url = "nats://127.0.0.1:4222"
subject = "readings.{device}-{sensor}.{name}"
[sinks.apart]
plugin = "nats"
url = "nats://127.0.0.1:4222"
"#;
    let cfg = s.config("", body);
    let (status, _, err) = gateway(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    for want in [
        "[sinks.flat] subject \"readings.{sensor}.{name}\" names no {device}",
        "[sinks.joined] subject \"readings.{device}-{sensor}.{name}\" puts {device} and {sensor} in one token",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    assert!(!err.contains("[sinks.apart] subject"), "{err}");
}
