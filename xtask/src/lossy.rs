//! `cargo xtask bench-lossy [SECONDS]`: the link through a lossy relay (the repo's test relay,
//! `tests/support`), the Pi side as the quick start has it (a source into the disk-buffered
//! uplink, the defaults otherwise) offering 500 readings/s, the server side the ingress into
//! the null sink (`bench/ingress.toml`). For 5 %, 10 % and 25 % loss each way (and 20 ms of
//! jitter), prints the share of the offered readings stored by the server during SECONDS
//! (default 60); then the share of handshakes (each followed by one POST) that complete at
//! 25 % loss, from eight devices looping through relays of their own.

use crate::{root, stop};
use anyhow::{bail, Context, Result};
use gateway_test_support::lossy_relay::{lossy_relay, RelayCounts};
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::{atomic::AtomicBool, atomic::Ordering, Arc},
    time::Duration,
};

/// The server, with its log in a file (its last line says what the sink wrote).
fn server(gateway: &Path, log: &Path) -> Result<Child> {
    let child = Command::new(gateway)
        .current_dir(root())
        .args([
            "run",
            "--config",
            "bench/ingress.toml",
            "--log-level",
            "info",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    std::thread::sleep(Duration::from_millis(800));
    Ok(child)
}

/// The readings the server's sink wrote, from its shutdown line.
fn written(log: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(log)?;
    let line = text
        .lines()
        .rfind(|l| l.contains("sink wrote"))
        .with_context(|| format!("no \"sink wrote\" line in {}", log.display()))?;
    let n = line
        .split("sink wrote ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .context("the sink's count")?;
    Ok(n)
}

/// The client's config: 50 readings every 100 ms into the disk-buffered uplink to `port`.
fn client_config(dir: &Path, port: u16) -> String {
    let root = root();
    let c = |f: &str| root.join("certs").join(f).display().to_string();
    format!(
        r#"[gateway]
device = "quickstart"
stats_interval = "0s"
log_level = "warn"
data_dir = {data:?}

[sources.seq]
plugin = "testkit-sequence"
batch_size = 50
interval = "100ms"
emitted_path = {emitted:?}

[sinks.uplink]
plugin = "coaps-uplink"
uri = "coaps://127.0.0.1:{port}/gpsflowtemp"
ca_file = {ca:?}
cert_file = {cert:?}
key_file = {key:?}
buffer = {{ type = "disk", max_size = "256MiB" }}
{extra}
"#,
        data = dir.join("data").display().to_string(),
        emitted = dir.join("emitted").display().to_string(),
        ca = c("ca.pem"),
        cert = c("device-quickstart.pem"),
        key = c("device-quickstart.key"),
        // LOSSY_UPLINK="nstart = 8" adds settings to the uplink's table.
        extra = std::env::var("LOSSY_UPLINK").unwrap_or_default(),
    )
}

/// A relay to the server dropping `loss` each way and delaying each datagram up to `jitter`.
fn relay(
    loss: f64,
    jitter: Duration,
    seed: u64,
    stop: &Arc<AtomicBool>,
) -> (u16, Arc<RelayCounts>) {
    let counts = Arc::new(RelayCounts::default());
    let port = lossy_relay(5695, loss, 0.0, jitter, seed, stop.clone(), counts.clone());
    (port, counts)
}

/// The benchmark; `secs` per loss rate.
pub fn bench(dir: &Path, secs: u64) -> Result<()> {
    let gateway = dir.join("gateway");
    let scratch = tempfile::tempdir()?;
    println!("   offered 500 readings/s for {secs} s through the relay; stored by the server:");
    // LOSSY_JITTER_MS=0 sets the relay's largest delay per datagram (20 ms).
    let jitter = match std::env::var("LOSSY_JITTER_MS") {
        Ok(ms) => {
            Duration::from_millis(ms.trim().parse().context("LOSSY_JITTER_MS: milliseconds")?)
        }
        Err(_) => Duration::from_millis(20),
    };
    // LOSSY_RATES="10,25" runs only those loss rates (per cent).
    let rates: Vec<f64> = match std::env::var("LOSSY_RATES") {
        Ok(list) => list
            .split(',')
            .map(|r| r.trim().parse::<f64>().map(|p| p / 100.0))
            .collect::<Result<_, _>>()
            .context("LOSSY_RATES: per cents separated by commas")?,
        Err(_) => vec![0.05, 0.10, 0.25],
    };
    for (i, loss) in rates.into_iter().enumerate() {
        let log = scratch.path().join(format!("server-{i}.log"));
        let srv = server(&gateway, &log)?;
        let stop_relay = Arc::new(AtomicBool::new(false));
        let (port, counts) = relay(loss, jitter, 0x5eed + i as u64, &stop_relay);
        let run = scratch.path().join(format!("client-{i}"));
        std::fs::create_dir_all(&run)?;
        let cfg = run.join("client.toml");
        std::fs::write(&cfg, client_config(&run, port))?;
        // LOSSY_LOG=DIR keeps each client's log there (at LOSSY_LEVEL, default info).
        let client_log = match std::env::var_os("LOSSY_LOG") {
            Some(d) => Stdio::from(std::fs::File::create(
                Path::new(&d).join(format!("client-{i}.log")),
            )?),
            None => Stdio::null(),
        };
        let level = std::env::var("LOSSY_LEVEL").unwrap_or_else(|_| "info".into());
        let client = Command::new(&gateway)
            .current_dir(root())
            .args(["run", "--log-level", &level, "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(client_log)
            .spawn()?;
        std::thread::sleep(Duration::from_secs(secs));
        // What was offered in the window; the client stops (and is cut off) right after.
        let offered: u64 = std::fs::read_to_string(run.join("emitted"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .context("the source's count (emitted_path)")?;
        stop_relay.store(true, Ordering::SeqCst);
        stop(client)?;
        stop(srv)?;
        let stored = written(&log)?;
        let dropped = counts.dropped.load(Ordering::Relaxed);
        let passed = counts.passed.load(Ordering::Relaxed);
        println!(
            "     {:>4.0} % loss each way: {stored} of {offered} readings = {:.1} % ({} datagrams dropped of {})",
            loss * 100.0,
            100.0 * stored as f64 / offered.max(1) as f64,
            dropped,
            dropped + passed
        );
    }

    println!("   handshakes through 25 % loss each way (8 devices, each through a relay of its own, looping: handshake, one POST, close):");
    let log = scratch.path().join("server-hs.log");
    let srv = server(&gateway, &log)?;
    let stop_relays = Arc::new(AtomicBool::new(false));
    let devices: Vec<Child> = (0..8u64)
        .map(|d| {
            let (port, _) = relay(0.25, jitter, 0xbeef + d, &stop_relays);
            crate::fleet::load_command(&dir.join("gateway-load"), port)
                .args(["--devices", "1", "--mode", "handshakes", "--prefix"])
                .arg(format!("lossy{d}"))
                .args(["--duration", &format!("{secs}s"), "--threads", "1"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("gateway-load")
        })
        .collect::<Result<_>>()?;
    let (mut ok, mut failed) = (0u64, 0u64);
    for d in devices {
        let out = d.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(result) = text.lines().find_map(|l| l.strip_prefix("result ")) else {
            bail!("gateway-load printed no result:\n{text}");
        };
        for kv in result.split_whitespace() {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let n: u64 = v.parse::<f64>().map_or(0, |v| v as u64);
            match k {
                "ok" => ok += n,
                "timeouts" | "handshake_failures" | "failed" | "refused" => failed += n,
                _ => {}
            }
        }
    }
    stop_relays.store(true, Ordering::SeqCst);
    stop(srv)?;
    println!(
        "     {ok} of {} completed = {:.1} %",
        ok + failed,
        100.0 * ok as f64 / (ok + failed).max(1) as f64
    );
    Ok(())
}
