//! `cargo xtask bench-tiers [SECONDS]`: a server split in two tiers with NATS JetStream between
//! them (`coaps-ingress` -> `nats`, and `nats` -> `mysql` in a second process) beside one
//! process (`coaps-ingress` -> `mysql`), in the same run, on the machine's MariaDB and NATS
//! (127.0.0.1:4222 with JetStream). `gateway-load` (100 devices, 10 readings per request, each
//! device its own DTLS session) drives the ingress for SECONDS; printed for each: requests/s
//! and the 2.04's latency p50/p99 as the devices saw it, and readings/s into MySQL from the first
//! request to the last row.

use crate::{fleet::load_command, root, sql, terminate};
use anyhow::{bail, Context, Result};
use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const DEVICES: &str = "100";
const READINGS: &str = "10";

fn rows() -> u64 {
    sql("SELECT COUNT(*) FROM gw_tiers.readings")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Writes `NAME.toml` under `target/BENCH/` (a `[gateway]` table for a server, then `body`
/// with `CERTS` standing for the development certificates' directory) and starts `gateway run`
/// on it.
pub(crate) fn start(gateway: &Path, bench: &str, name: &str, body: &str) -> Result<Child> {
    let dir = root().join("target").join(bench);
    std::fs::create_dir_all(&dir)?;
    let certs = root().join("certs");
    let text = format!(
        "[gateway]\ndevice = \"server\"\nstats_interval = \"0s\"\nlog_level = \"warn\"\ndata_dir = {:?}\nshutdown_timeout = \"30s\"\n\n{}",
        dir.join(format!("{name}-data")).display().to_string(),
        body.replace("CERTS", &certs.display().to_string())
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text)?;
    Ok(Command::new(gateway)
        .current_dir(root())
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

const INGRESS: &str = r#"[sources.ingress]
plugin = "coaps-ingress"
listen = "127.0.0.1:5696"
cert_file = "CERTS/server.pem"
key_file = "CERTS/server.key"
client_ca_file = "CERTS/ca.pem"
require_client_cert = true
"#;

const MYSQL: &str = r#"plugin = "mysql"
url = "mysql://root@127.0.0.1:3306/gw_tiers"
"#;

/// Runs `gateway-load` against 127.0.0.1:`port` with `args`; its `result` line, and when it
/// started.
pub(crate) fn load(
    load_bin: &Path,
    port: u16,
    args: &[&str],
) -> Result<(HashMap<String, f64>, Instant)> {
    let mut c = load_command(load_bin, port);
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let started = Instant::now();
    let mut child = c.spawn().context("cannot start gateway-load")?;
    let mut result = HashMap::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        if let Some(r) = line.strip_prefix("result ") {
            result = r
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
                .collect();
        }
    }
    child.wait()?;
    if result.is_empty() {
        bail!("gateway-load printed no result");
    }
    Ok((result, started))
}

/// One setup: its servers up, the load, every reading stored; prints the figures.
fn measure(name: &str, load_bin: &Path, duration: &str, servers: Vec<Child>) -> Result<()> {
    std::thread::sleep(Duration::from_millis(1500));
    let args = [
        "--devices",
        DEVICES,
        "--readings",
        READINGS,
        "--duration",
        duration,
    ];
    let outcome = load(load_bin, 5696, &args);
    let result = outcome.and_then(|(r, started)| {
        let want = (r["ok"] * r["readings"]) as u64;
        let end = Instant::now() + Duration::from_secs(300);
        while rows() < want {
            if Instant::now() > end {
                bail!(
                    "{name}: only {} of {want} readings stored after 300 s",
                    rows()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok((r, want, started.elapsed()))
    });
    for mut s in servers {
        let _ = terminate(&mut s);
    }
    let (r, stored, took) = result?;
    let failures = [
        "timeouts",
        "handshake_failures",
        "refused",
        "failed",
        "connect_failures",
    ]
    .iter()
    .map(|k| r.get(*k).copied().unwrap_or(0.0))
    .sum::<f64>();
    println!(
        "   {name:<38} {:>7.0} req/s, 2.04 p50 {:.2} ms p99 {:.2} ms, {failures} failures; {stored} readings in MySQL at {:.0} readings/s (first request to last row)",
        r["per_s"],
        r["p50_ms"],
        r["p99_ms"],
        stored as f64 / took.as_secs_f64()
    );
    Ok(())
}

pub fn bench(dir: &Path, secs: u64) -> Result<()> {
    if std::net::TcpStream::connect("127.0.0.1:4222").is_err() {
        bail!("no NATS on 127.0.0.1:4222: start one with JetStream (nats-server -js)");
    }
    let gateway = dir.join("gateway");
    let load_bin = dir.join("gateway-load");
    let duration = format!("{secs}s");
    println!("   {DEVICES} devices, {READINGS} readings per request, {secs} s of load; the ingress at its defaults:");
    for round in 1..=2 {
        sql("DROP DATABASE IF EXISTS gw_tiers; CREATE DATABASE gw_tiers")?;
        let direct = start(
            &gateway,
            "bench-tiers",
            "direct",
            &format!("{INGRESS}\n[sinks.db]\n{MYSQL}"),
        )?;
        measure("coaps-ingress -> mysql", &load_bin, &duration, vec![direct])?;

        sql("DROP DATABASE IF EXISTS gw_tiers; CREATE DATABASE gw_tiers")?;
        // A stream and a consumer of this run's own.
        let tag = format!("{}_{round}", std::process::id());
        let nats = format!(
            "plugin = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nstream = \"GWBENCH_{tag}\"\n"
        );
        let ingress = start(
            &gateway,
            "bench-tiers",
            "ingress-tier",
            &format!(
                "{INGRESS}\n[sinks.js]\n{nats}subject = \"gwbench{tag}.{{device}}.{{sensor}}.{{name}}\"\nstream_subjects = [\"gwbench{tag}.>\"]\n"
            ),
        )?;
        std::thread::sleep(Duration::from_millis(500));
        let store = start(
            &gateway,
            "bench-tiers",
            "store-tier",
            &format!(
                "[sources.js]\n{nats}filter_subject = \"gwbench{tag}.>\"\ndurable = \"bench\"\n\n[sinks.db]\n{MYSQL}"
            ),
        )?;
        measure(
            "coaps-ingress -> nats | nats -> mysql",
            &load_bin,
            &duration,
            vec![ingress, store],
        )?;
    }
    Ok(())
}
