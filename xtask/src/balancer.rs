//! `cargo xtask bench-balancer [SECONDS]`: two ingress instances behind nginx's UDP balancer
//! (the README's recipe, an nginx of the bench's own) beside one instance without it, in the
//! same run: full handshakes/s (20 devices looping over a handshake and one POST) and
//! requests/s (100 devices, one reading per request), each instance into the null sink.

use crate::{
    root, terminate,
    tiers::{load, start},
};
use anyhow::{Context, Result};
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

const NGINX: u16 = 5710;
const PORTS: [u16; 3] = [5711, 5712, 5713];

fn ingress(gateway: &Path, port: u16) -> Result<Child> {
    start(
        gateway,
        "bench-balancer",
        &format!("ingress-{port}"),
        &format!(
            r#"[sources.ingress]
plugin = "coaps-ingress"
listen = "127.0.0.1:{port}"
cert_file = "CERTS/server.pem"
key_file = "CERTS/server.key"
client_ca_file = "CERTS/ca.pem"
require_client_cert = true
# Behind nginx every handshake comes from nginx's address.
max_handshakes_per_address = 10000

[sinks.null]
plugin = "testkit-null-sink"
"#
        ),
    )
}

fn nginx(dir: &Path) -> Result<Child> {
    let servers: String = PORTS[..2]
        .iter()
        .map(|p| format!("        server 127.0.0.1:{p} max_fails=1 fail_timeout=30s;\n"))
        .collect();
    std::fs::create_dir_all(dir.join("logs"))?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\ndaemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log warn;\nevents {{ worker_connections 65536; }}\nstream {{\n    upstream coaps_ingress {{\n        hash $remote_addr$remote_port consistent;\n{servers}    }}\n    server {{\n        listen 127.0.0.1:{NGINX} udp;\n        proxy_pass coaps_ingress;\n        proxy_timeout 60s;\n    }}\n}}\n",
            d = dir.display()
        ),
    )?;
    Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start nginx (apt-get install nginx libnginx-mod-stream)")
}

pub fn bench(dir: &Path, secs: u64) -> Result<()> {
    let gateway = dir.join("gateway");
    let load_bin = dir.join("gateway-load");
    let work = root().join("target/bench-balancer");
    std::fs::create_dir_all(&work)?;
    let mut children = vec![nginx(&work)?];
    for p in PORTS {
        children.push(ingress(&gateway, p)?);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let duration = format!("{secs}s");
    println!("   two instances behind nginx (port {NGINX}) beside one without it (port {}), {secs} s each:", PORTS[2]);
    let run = || -> Result<()> {
        for (name, port) in [
            ("nginx, 2 instances", NGINX),
            ("1 instance, direct", PORTS[2]),
        ] {
            let hs = [
                "--mode",
                "handshakes",
                "--devices",
                "20",
                "--duration",
                &duration,
            ];
            let (h, _) = load(&load_bin, port, &hs)?;
            let rq = ["--devices", "100", "--duration", &duration];
            let (r, _) = load(&load_bin, port, &rq)?;
            let failures = |m: &std::collections::HashMap<String, f64>| {
                [
                    "timeouts",
                    "handshake_failures",
                    "refused",
                    "failed",
                    "connect_failures",
                ]
                .iter()
                .map(|k| m.get(*k).copied().unwrap_or(0.0))
                .sum::<f64>()
            };
            println!(
                "   {name:<20} {:>6.0} handshakes/s ({} failures) | {:>7.0} req/s, p50 {:.2} ms, p99 {:.2} ms ({} failures)",
                h["per_s"],
                failures(&h),
                r["per_s"],
                r["p50_ms"],
                r["p99_ms"],
                failures(&r)
            );
        }
        Ok(())
    };
    let outcome = run();
    for mut c in children {
        let _ = terminate(&mut c);
    }
    outcome
}
