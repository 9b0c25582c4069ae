//! The README's main job: `gateway.toml` with the real sensor plugins (simulated probes, a
//! replayed GPS log) into the console, readings visibly flowing.

mod support;
use std::time::Duration;
use support::*;

#[test]
fn the_quick_start_config_checks_and_readings_flow_to_stdout() {
    plugin_dir();
    let config = workspace().join("gateway.toml");
    // What `cargo xtask run` does on a first run.
    if !workspace().join("certs/device-quickstart.pem").exists() {
        make_certs(&workspace().join("certs"), "quickstart");
    }
    let (status, out, err) = gateway(&["check", "--config", config.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    assert!(
        out.contains("temp")
            && out.contains("ds18b20")
            && out.contains("gps")
            && out.contains("ublox7"),
        "{out}"
    );
    assert!(
        out.contains("coaps-uplink") && out.contains("coaps-ingress"),
        "{out}"
    );

    let s = Setup::new();
    let mut gw = Running::start(&s, &config, &[]);
    std::thread::sleep(Duration::from_secs(4));
    let status = gw.stop(Duration::from_secs(10));
    let (out, err) = (gw.stdout(), gw.stderr());
    assert!(status.success(), "{err}");
    // Each of the three probes, not one of them three times.
    let probes: std::collections::HashSet<&str> = out
        .lines()
        .filter(|l| l.contains(" temperature=") && l.contains(" Cel "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|who| who.starts_with("quickstart/28-5a1d"))
        .collect();
    assert_eq!(
        probes.len(),
        3,
        "three simulated probes read at least once: {probes:?}\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("quickstart/gps latitude=40.035")),
        "{out}"
    );
    assert!(err.contains("everything in flight was delivered"), "{err}");
    assert!(
        err.contains("DTLS session established") && err.contains("identity=Some(\"quickstart\")"),
        "the readings came over DTLS: {err}"
    );
    // Nothing but readings on stdout.
    assert!(out.lines().all(|l| l.contains(" id=")), "{out}");
}

#[test]
fn the_pi_and_server_configs_check() {
    let s = Setup::new();
    make_certs(&s.path("certs"), "pi-01");
    // server.toml takes the database password from the environment.
    std::env::set_var("GATEWAY_DB_PASSWORD", "unused-by-check");
    for name in ["client.toml", "server.toml"] {
        // The configs expect the plugins next to the binary; point them at the build instead.
        let text = std::fs::read_to_string(workspace().join(name)).unwrap();
        let text = text.replacen(
            "[gateway]\n",
            &format!(
                "[gateway]\nplugin_dir = {:?}\n",
                plugin_dir().display().to_string()
            ),
            1,
        );
        // And keep their state in the test's directory rather than /var/lib.
        let text = text.replace("data_dir = \"/var/lib/gateway\"", "data_dir = \"data\"");
        let path = s.path(name);
        std::fs::write(&path, text).unwrap();
        let (status, out, err) = gateway(&["check", "--config", path.to_str().unwrap()]);
        assert!(status.success(), "{name}: {err}");
        assert!(out.contains(": OK"), "{out}");
    }
}
