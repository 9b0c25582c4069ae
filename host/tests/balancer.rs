//! Two ingress instances behind nginx's stream module (UDP, hashed on the client's address and
//! port, so that a DTLS session stays on one instance), both storing into one MySQL table: 50
//! devices (sequence sources, each into an uplink with its own certificate) send through it,
//! one instance is killed with SIGKILL mid-run, its devices handshake again onto the other, and
//! the table holds every reading exactly once. The nginx configuration is the one the README
//! shows.

mod support;
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use support::*;

const DEVICES: usize = 50;
const PER_DEVICE: u64 = 120;

/// nginx in the foreground with a configuration of the test's own.
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The stream block of the README's recipe, for upstreams on `ports`, listening on `listen`.
fn stream_block(listen: u16, ports: &[u16]) -> String {
    let servers: String = ports
        .iter()
        .map(|p| format!("        server 127.0.0.1:{p} max_fails=1 fail_timeout=30s;\n"))
        .collect();
    format!(
        "stream {{
    upstream coaps_ingress {{
        hash $remote_addr$remote_port consistent;
{servers}    }}
    server {{
        listen 127.0.0.1:{listen} udp;
        proxy_pass coaps_ingress;
        proxy_timeout 60s;
    }}
}}
"
    )
}

fn mysql(query: &str) -> String {
    let out = Command::new("mysql")
        .args([
            "-h",
            "127.0.0.1",
            "-P",
            "3306",
            "-u",
            "root",
            "-N",
            "-B",
            "-e",
            query,
        ])
        .output()
        .expect("the mysql client (mariadb-client)");
    assert!(
        out.status.success(),
        "{query}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn fifty_devices_through_nginx_ride_out_the_loss_of_an_ingress_instance() {
    let s = Setup::new();
    let certs = s.path("certs");
    make_certs(&certs, "dev-0");
    let dir = certs.to_str().unwrap();
    for i in 1..DEVICES {
        let name = format!("dev-{i}");
        let (ok, _, err) = gateway(&["certs", "device", &name, "--dir", dir]);
        assert!(ok.success(), "{err}");
    }
    let c = |f: &str| certs.join(f).display().to_string();
    let table = format!("lb_{}", std::process::id());
    mysql(&format!("DROP TABLE IF EXISTS test.{table}"));
    let stored = || -> u64 {
        Command::new("mysql")
            .args(["-h", "127.0.0.1", "-u", "root", "-N", "-B", "-e"])
            .arg(format!("SELECT COUNT(*) FROM test.{table}"))
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(0)
    };

    let ports = [free_udp_port(), free_udp_port()];
    let ingress_cfg = |i: usize| {
        s.config_named(
            &format!("ingress{i}"),
            "server",
            &format!(
                "data_dir = {:?}\nstats_interval = \"0s\"",
                s.path(&format!("ingress{i}-data")).display().to_string()
            ),
            &format!(
                r#"[sources.ingress]
plugin = "coaps-ingress"
listen = "127.0.0.1:{port}"
cert_file = {sc:?}
key_file = {sk:?}
client_ca_file = {ca:?}

[sinks.db]
plugin = "mysql"
url = "mysql://root@127.0.0.1:3306/test"
table = "{table}"
batch_timeout = "5ms"
retry_backoff = "200ms"
retry_backoff_max = "1s"
"#,
                port = ports[i],
                sc = c("server.pem"),
                sk = c("server.key"),
                ca = c("ca.pem"),
            ),
        )
    };
    let mut ingress: Vec<Running> = (0..2)
        .map(|i| Running::start_named(&s, &format!("ingress{i}"), &ingress_cfg(i)))
        .collect();
    for r in &ingress {
        assert!(r.wait_for_log("CoAP/DTLS ingress listening", Duration::from_secs(20)));
    }

    let listen = free_udp_port();
    let ngx = s.path("nginx");
    std::fs::create_dir_all(ngx.join("logs")).unwrap();
    let conf = ngx.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
             daemon off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log info;\n\
             events {{ worker_connections 1024; }}\n{}",
            stream_block(listen, &ports),
            p = ngx.display()
        ),
    )
    .unwrap();
    let _nginx = Nginx(
        Command::new("nginx")
            .arg("-p")
            .arg(&ngx)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "nginx (Debian's nginx and libnginx-mod-stream; `cargo xtask test` installs them)",
            ),
    );
    std::thread::sleep(Duration::from_millis(500));

    let mut body = String::new();
    for i in 0..DEVICES {
        body += &format!(
            r#"[sources.seq{i}]
plugin = "testkit-sequence"
device = "dev-{i}"
count = {PER_DEVICE}
batch_size = 2
interval = "100ms"
stable_ids = true

[sinks.up{i}]
plugin = "coaps-uplink"
inputs = ["seq{i}"]
uri = "coaps://localhost:{listen}/gpsflowtemp"
ca_file = {ca:?}
cert_file = {dc:?}
key_file = {dk:?}
request_timeout = "3s"
batch_timeout = "20ms"
retry_backoff = "200ms"
retry_backoff_max = "1s"

"#,
            ca = c("ca.pem"),
            dc = c(&format!("device-dev-{i}.pem")),
            dk = c(&format!("device-dev-{i}.key")),
        );
    }
    let client_cfg = s.config_named(
        "client",
        "devices",
        &format!(
            "data_dir = {:?}\nstats_interval = \"0s\"",
            s.path("client-data").display().to_string()
        ),
        &body,
    );
    let mut client = Running::start_named(&s, "client", &client_cfg);
    let total = DEVICES as u64 * PER_DEVICE;
    let logs = |s: &Setup| {
        s.tails(
            &[
                "client.stderr.log",
                "ingress0.stderr.log",
                "ingress1.stderr.log",
                "nginx/logs/error.log",
            ],
            20,
        )
    };
    let until = |what: &str, limit: u64, done: &dyn Fn(u64) -> bool| {
        let end = Instant::now() + Duration::from_secs(limit);
        loop {
            let n = stored();
            if done(n) {
                return n;
            }
            assert!(
                Instant::now() < end,
                "{what}: not in time ({n} of {total} stored)\n{}",
                logs(&s)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    until("the first readings", 60, &|n| n >= total / 4);

    // Instance 0 dies; nginx finds it gone, and its devices' next handshakes land on 1.
    let killed = Instant::now();
    ingress[0].signal(libc::SIGKILL);
    ingress[0].wait(Duration::from_secs(10)).expect("killed");
    let at = stored();
    until("readings after the loss", 60, &|n| n >= at + total / 4);
    let recovered = killed.elapsed();
    until("every reading", 180, &|n| n >= total);
    assert!(
        client.stop(Duration::from_secs(30)).success(),
        "{}",
        logs(&s)
    );
    assert!(
        ingress[1].stop(Duration::from_secs(30)).success(),
        "{}",
        logs(&s)
    );
    let row = mysql(&format!(
        "SELECT COUNT(*), COUNT(DISTINCT device), COUNT(DISTINCT device, value_int), MIN(value_int), MAX(value_int) FROM test.{table}"
    ));
    let f: Vec<u64> = row.split_whitespace().map(|v| v.parse().unwrap()).collect();
    // Sessions each instance set up: the killed one had devices, and every device finished
    // on the other.
    let sessions = |i: usize| {
        std::fs::read_to_string(s.path(&format!("ingress{i}.stderr.log")))
            .unwrap_or_default()
            .matches("DTLS session established")
            .count()
    };
    let (on_killed, on_survivor) = (sessions(0), sessions(1));
    eprintln!(
        "balancer: {total} readings from {DEVICES} devices stored as {f:?}; sessions on the killed instance {on_killed}, on the other {on_survivor}; after the kill, {} more readings in {:.1} s",
        total / 4,
        recovered.as_secs_f64()
    );
    mysql(&format!("DROP TABLE IF EXISTS test.{table}"));
    assert_eq!(
        f,
        vec![total, DEVICES as u64, total, 0, PER_DEVICE - 1],
        "count, devices, distinct (device, value), min, max"
    );
    assert!(
        on_killed > 0,
        "nginx sent no device to instance 0?\n{}",
        logs(&s)
    );
    assert!(
        on_survivor >= DEVICES,
        "every device ends on instance 1: {on_survivor} sessions there\n{}",
        logs(&s)
    );
}
