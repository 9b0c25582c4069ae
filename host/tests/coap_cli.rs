//! `gateway coap` against the gateway's own ingress over real DTLS: a device POSTs SenML with
//! its certificate and the reading is stored under its identity; it reads its last readings
//! back (GET), block by block when large, with our client and libcoap's; another device may
//! not, a reader may; DELETE forgets them; observers are told of each new reading (ours and
//! libcoap's client); without a device certificate the handshake is refused.

mod support;
use std::time::Duration;
use support::*;

#[test]
fn a_device_posts_senml_with_gateway_coap_and_it_is_stored_under_its_name() {
    let s = Setup::new();
    let certs = s.path("certs");
    let port = free_udp_port();
    let c = |f: &str| certs.join(f).display().to_string();
    let c2 = |f: &str| certs.join(format!("device-{f}")).display().to_string();
    let _running = ingress(&s, port, "");
    let uri = format!("coaps://localhost:{port}/gpsflowtemp");
    let (ca, cert, key) = (c("ca.pem"), c("device-pi-07.pem"), c("device-pi-07.key"));
    let device = ["--ca", &ca, "--cert", &cert, "--key", &key];
    let pack = r#"[{"bn":"pi-07:","n":"probe/temperature","u":"Cel","v":21.5}]"#;

    let mut args = vec!["coap", "post", &uri, "-t", "senml+json", "-p", pack, "-v"];
    args.extend(device);
    let (status, _, err) = gateway(&args);
    assert!(status.success(), "{err}");
    assert!(err.contains("< ACK 2.04 MID "), "{err}");
    assert!(err.contains("server certificate: CN="), "{err}");
    let stored = s.lines("out.txt");
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].starts_with("probe 21.5"), "{stored:?}");

    // The device reads its last readings back, as a table.
    let get = format!("{uri}/pi-07");
    let mut args = vec!["coap", "get", &get];
    args.extend(device);
    let (status, out, err) = gateway(&args);
    assert!(status.success(), "{err}");
    assert!(out.contains("pi-07/probe  temperature = 21.5 Cel"), "{out}");
    // PUT stores one reading of the sensor the URI names; sent twice, it is stored once.
    let put = format!("{uri}/pi-07/probe");
    let one = r#"[{"bn":"pi-07:","n":"probe/temperature","u":"Cel","v":22.25,"t":1800000000,"rid":"019a3338498d7721b21a5b1cbaa32c34"}]"#;
    for _ in 0..2 {
        let mut args = vec!["coap", "put", &put, "-t", "senml+json", "-p", one];
        args.extend(device);
        let (status, _, err) = gateway(&args);
        assert!(status.success(), "{err}");
    }
    assert_eq!(
        s.lines("out.txt")
            .iter()
            .filter(|l| l.starts_with("probe 22.25"))
            .count(),
        1
    );
    let mut args = vec!["coap", "get", &get];
    args.extend(device);
    let (_, out, _) = gateway(&args);
    assert!(
        out.contains("pi-07/probe  temperature = 22.25 Cel"),
        "{out}"
    );
    // A PUT carries one reading of that sensor.
    let two = r#"[{"bn":"pi-07:","n":"probe/temperature","v":1},{"n":"probe/humidity","v":2}]"#;
    let mut args = vec!["coap", "put", &put, "-t", "senml+json", "-p", two];
    args.extend(device);
    let (status, _, err) = gateway(&args);
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(
        err.starts_with("4.00 a PUT carries one reading, not 2"),
        "{err}"
    );
    // The collection itself takes POSTs only.
    let mut args = vec!["coap", "get", &uri];
    args.extend(device);
    let (status, _, err) = gateway(&args);
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(err.starts_with("4.05"), "{err}");

    // 40 sensors make an answer of several blocks: our client (256-byte blocks) and libcoap's
    // (64-byte blocks) put them together.
    post_forty_sensors(&uri, &device);
    let mut args = vec!["coap", "get", &get, "-b", "256", "-v"];
    args.extend(device);
    let (status, out, err) = gateway(&args);
    assert!(status.success(), "{err}");
    assert_eq!(out.lines().count(), 41, "{out}");
    assert!(err.contains("Block2 1/1/256"), "{err}");
    if gateway_test_support::libcoap::have_libcoap() {
        let printed = gateway_test_support::libcoap::coap_client(&[
            "-m", "get", "-b", "64", "-A", "110", "-R", &ca, "-c", &cert, "-j", &key, &get,
        ]);
        // libcoap prints the whole answer once it has every block.
        assert!(printed.contains("s00/temperature"), "{printed}");
        assert!(printed.contains("s39/temperature"), "{printed}");
    }

    // Another device may not read pi-07's; the reader may.
    make_device(&certs, "pi-08");
    make_device(&certs, "dashboard");
    let other = [
        "--ca",
        &ca,
        "--cert",
        &c2("pi-08.pem"),
        "--key",
        &c2("pi-08.key"),
    ];
    let reader = [
        "--ca",
        &ca,
        "--cert",
        &c2("dashboard.pem"),
        "--key",
        &c2("dashboard.key"),
    ];
    let mut args = vec!["coap", "get", &get];
    args.extend(other);
    let (status, _, err) = gateway(&args);
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(err.starts_with("4.03 pi-08 may read only its own"), "{err}");
    let mut args = vec!["coap", "get", &get];
    args.extend(reader);
    let (status, out, err) = gateway(&args);
    assert!(status.success(), "{err}");
    assert!(out.contains("pi-07/s39  temperature = 39 Cel"), "{out}");
    // Discovery lists what the reader may read.
    let mut args = vec!["coap", "discover", &uri];
    args.extend(reader);
    let (_, out, _) = gateway(&args);
    assert!(
        out.contains("</gpsflowtemp/pi-07>;rt=\"senml.latest\""),
        "{out}"
    );

    // DELETE forgets the device's entry.
    let mut args = vec!["coap", "delete", &get];
    args.extend(reader);
    assert!(gateway(&args).0.success());
    let mut args = vec!["coap", "get", &get];
    args.extend(device);
    let (status, _, err) = gateway(&args);
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(err.starts_with("4.04"), "{err}");

    // Without a device certificate the ingress refuses the handshake.
    let (status, _, err) = gateway(&[
        "coap",
        "post",
        &uri,
        "--ca",
        &ca,
        "-p",
        "x",
        "--timeout",
        "3s",
    ]);
    assert_eq!(status.code(), Some(2), "{err}");
}

/// The test PKI in `certs` (a CA, the server, device pi-07) and a running ingress on `port`
/// that takes pi-07's readings into a recorder (`out.txt`) and lets "dashboard" read all;
/// `gateway` adds settings to the `[gateway]` table.
fn ingress(s: &Setup, port: u16, gateway: &str) -> Running {
    let certs = s.path("certs");
    make_certs(&certs, "pi-07");
    let server = s.config_named(
        "server",
        "server",
        &format!("stats_interval = \"0s\"\ndata_dir = \"server-data\"\n{gateway}"),
        &format!(
            r#"{ingress}readers = ["dashboard"]

[sinks.store]
plugin = "testkit-recorder"
path = {out:?}
batch_timeout = "5ms"
"#,
            ingress = ingress_source(&certs, port),
            out = s.path("out.txt").display().to_string(),
        ),
    );
    let running = Running::start_named(s, "server", &server);
    assert!(running.wait_for_log("CoAP/DTLS ingress listening", Duration::from_secs(10)));
    running
}

/// pi-07 POSTs a reading of 40 sensors to `uri`: its last readings then take several blocks.
fn post_forty_sensors(uri: &str, device: &[&str]) {
    let many: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"bn":"pi-07:","n":"s{i:02}/temperature","u":"Cel","v":{i}}}"#))
        .collect();
    let many = format!("[{}]", many.join(","));
    let mut args = vec!["coap", "post", uri, "-t", "senml+json", "-p", &many];
    args.extend(device);
    assert!(gateway(&args).0.success());
}

/// A device certificate for `name` beside the others.
fn make_device(dir: &std::path::Path, name: &str) {
    let (status, _, err) = gateway(&["certs", "device", name, "--dir", dir.to_str().unwrap()]);
    assert!(status.success(), "{err}");
}

/// A `gateway coap` (or other) process running in the background, its output in files.
struct Background {
    child: std::process::Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl Background {
    fn start(s: &Setup, name: &str, program: &str, args: &[&str]) -> Background {
        let (out, err) = (
            s.path(&format!("{name}.out")),
            s.path(&format!("{name}.err")),
        );
        let child = std::process::Command::new(program)
            .args(args)
            .env_remove("GATEWAY_LOG")
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Background { child, out, err }
    }

    fn output(&self) -> (String, String) {
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
        (read(&self.out), read(&self.err))
    }

    /// Waits until its stdout holds `needle`.
    fn wait_for(&self, needle: &str) {
        let end = std::time::Instant::now() + Duration::from_secs(15);
        while !self.output().0.contains(needle) {
            assert!(
                std::time::Instant::now() < end,
                "no {needle:?} in time: {:?}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for its exit (at most 15 s) and gives its code.
    fn exit_code(&mut self) -> Option<i32> {
        let end = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < end,
                "still running: {:?}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `gateway_coap_observers` gauge on the metrics page at `addr`, once it equals `want`
/// (it is published every second).
fn observers_become(addr: std::net::SocketAddr, want: u64) {
    let end = std::time::Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    while std::time::Instant::now() < end {
        if let Ok((200, text)) = gateway_host::metrics::get(addr, "/metrics") {
            let line = text
                .lines()
                .find(|l| l.starts_with("gateway_coap_observers"))
                .unwrap_or("")
                .to_owned();
            if line.ends_with(&format!(" {want}")) {
                return;
            }
            last = line;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("observers did not become {want}: {last:?}");
}

#[test]
fn observers_get_each_new_reading_and_are_told_when_the_device_is_forgotten() {
    let s = Setup::new();
    let certs = s.path("certs");
    let (port, mport) = (free_udp_port(), free_tcp_port());
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{mport}").parse().unwrap();
    let _running = ingress(&s, port, &format!("metrics = \"{metrics}\""));
    make_device(&certs, "dashboard");
    let c = |f: &str| certs.join(f).display().to_string();
    let (ca, cert, key) = (c("ca.pem"), c("device-pi-07.pem"), c("device-pi-07.key"));
    let (dcert, dkey) = (c("device-dashboard.pem"), c("device-dashboard.key"));
    let device = ["--ca", &ca, "--cert", &cert, "--key", &key];
    let reader = ["--ca", &ca, "--cert", &dcert, "--key", &dkey];
    let uri = format!("coaps://localhost:{port}/gpsflowtemp");
    let post = |v: &str| {
        let pack = format!(r#"[{{"bn":"pi-07:","n":"probe/temperature","u":"Cel","v":{v}}}]"#);
        let mut args = vec!["coap", "post", &uri, "-t", "senml+json", "-p", &pack];
        args.extend(device);
        let (status, _, err) = gateway(&args);
        assert!(status.success(), "{err}");
    };
    post("21.5");

    // The reader observes the sensor with our client, for two notifications.
    let probe = format!("{uri}/pi-07/probe");
    let gw = env!("CARGO_BIN_EXE_gateway");
    let mut args = vec!["coap", "observe", &probe, "--count", "2"];
    args.extend(reader);
    let mut ours = Background::start(&s, "ours", gw, &args);
    ours.wait_for("temperature = 21.5 Cel");
    // The device observes its own readings with libcoap's client.
    let whole = format!("{uri}/pi-07");
    let libcoap = gateway_test_support::libcoap::have_libcoap().then(|| {
        Background::start(
            &s,
            "libcoap",
            "coap-client-openssl",
            &[
                "-m", "get", "-s", "60", "-A", "110", "-R", &ca, "-c", &cert, "-j", &key, &whole,
            ],
        )
    });
    if let Some(l) = &libcoap {
        l.wait_for("21.5");
    }
    observers_become(metrics, if libcoap.is_some() { 2 } else { 1 });

    post("22");
    post("22.5");
    assert_eq!(ours.exit_code(), Some(0), "{:?}", ours.output());
    let (out, _) = ours.output();
    let temps: Vec<&str> = out.lines().filter(|l| l.contains("temperature")).collect();
    assert_eq!(temps.len(), 3, "the answer and two notifications: {out}");
    assert!(
        temps[1].contains("= 22 Cel") && temps[2].contains("= 22.5 Cel"),
        "{out}"
    );
    if let Some(l) = &libcoap {
        l.wait_for("22.5");
    }
    // Our client left: its registration went with its session.
    observers_become(metrics, if libcoap.is_some() { 1 } else { 0 });

    // A second observer of the whole device, until the server ends it: the reader forgets the
    // device, and each observer gets a last 4.04.
    let mut args = vec!["coap", "observe", &whole];
    args.extend(reader);
    let mut second = Background::start(&s, "second", gw, &args);
    second.wait_for("temperature = 22.5 Cel");
    // A state larger than a block comes as its first block; the client fetches the rest.
    post_forty_sensors(&uri, &device);
    second.wait_for("pi-07/s39  temperature = 39 Cel");
    let mut args = vec!["coap", "delete", &whole];
    args.extend(reader);
    assert!(gateway(&args).0.success());
    assert_eq!(second.exit_code(), Some(4), "{:?}", second.output());
    let (_, err) = second.output();
    assert!(err.contains("4.04 pi-07 was forgotten"), "{err}");
    observers_become(metrics, 0);

    // A device may not observe another's readings.
    make_device(&certs, "pi-08");
    let mut args = vec!["coap", "observe", &whole, "--ca", &ca, "--cert"];
    let (c8, k8) = (c("device-pi-08.pem"), c("device-pi-08.key"));
    args.extend([c8.as_str(), "--key", &k8]);
    let (status, _, err) = gateway(&args);
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(err.starts_with("4.03"), "{err}");

    // Ctrl-C to `gateway coap observe` ends the observation and the command, with the tool's
    // exit code. Before, the wrapper died of the signal (no exit code) and left the tool
    // running, its observation held, behind the shell's prompt.
    post("23");
    let mut args = vec!["coap", "observe", &probe];
    args.extend(reader);
    let mut third = Background::start(&s, "third", gw, &args);
    third.wait_for("temperature = 23 Cel");
    // SAFETY: kill with the id of a child of this process that has not been reaped.
    assert_eq!(
        unsafe { libc::kill(third.child.id() as i32, libc::SIGINT) },
        0
    );
    assert_eq!(third.exit_code(), Some(0), "{:?}", third.output());
    observers_become(metrics, 0);
}

#[test]
fn a_duration_past_a_century_is_refused_in_words_not_left_to_overflow() {
    let (status, _, err) = gateway(&[
        "coap",
        "get",
        "coaps://127.0.0.1:9/r",
        "--timeout",
        "500000000000y",
    ]);
    // A usage error: 1, as anything but a failed handshake (2).
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("longer than 100 years"), "{err}");
}
