//! `cargo xtask bench-reload [SECONDS]`: a reload of the ingress server while a fleet holds
//! its sessions. `gateway-load` connects `RELOAD_DEVICES` devices (default 1000), each its own
//! DTLS session, and keeps one CON POST in flight per device for SECONDS; a few seconds in, the
//! server's config changes the ingress's sink (replaced under load: it hands its queue to its
//! successor) and gains another, and the server gets SIGHUP. Prints how long the reload took to apply (the
//! server's own "reload applied in" line), and what the devices saw across it: requests
//! answered, timeouts and handshake failures (an ingress that was rebuilt would have dropped
//! every session, and every device would time out), and how many times the ingress started
//! listening (once: it was kept).

use crate::{fleet::load_command, root};
use anyhow::{bail, Context, Result};
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

pub fn bench(dir: &Path, secs: u64) -> Result<()> {
    let devices: usize = std::env::var("RELOAD_DEVICES")
        .ok()
        .map_or(Ok(1000), |v| v.parse())
        .context("RELOAD_DEVICES")?;
    let secs = secs.max(6);
    let base = std::fs::read_to_string(root().join("bench/ingress.toml"))?
        .replace("log_level = \"warn\"", "log_level = \"info\"");
    // In data/, so that the config's paths (../certs, ../data) hold.
    std::fs::create_dir_all(root().join("data"))?;
    let config = root().join("data/bench-reload.toml");
    let log = root().join("data/bench-reload.log");
    std::fs::write(&config, &base)?;
    let mut server = Command::new(dir.join("gateway"))
        .current_dir(root())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("cannot start the gateway")?;
    std::thread::sleep(Duration::from_millis(800));
    if let Some(status) = server.try_wait()? {
        bail!(
            "the gateway exited at start with {status}; see {}",
            log.display()
        );
    }
    println!("== a reload of the ingress with {devices} devices holding sessions (bench-reload)");
    let mut load = load_command(&dir.join("gateway-load"), 5695)
        .args(["--devices", &devices.to_string(), "--connect-rate", "400"])
        .args(["--duration", &format!("{secs}s")])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start gateway-load")?;
    let mut result = String::new();
    let mut reloaded_at = None;
    for line in BufReader::new(load.stdout.take().expect("piped")).lines() {
        let line = line?;
        if line.starts_with("connect:") {
            println!("   {line}");
            // Into the measurement, every device connected: change the config, then SIGHUP.
            std::thread::sleep(Duration::from_secs(2));
            // The ingress's own table stays; its sink is replaced, and a sink is added.
            let changed = base.replace(
                "plugin = \"testkit-null-sink\"",
                "plugin = \"testkit-null-sink\"\nbatch_size = 500",
            );
            std::fs::write(
                &config,
                format!("{changed}\n[sinks.extra]\nplugin = \"testkit-null-sink\"\n"),
            )?;
            Command::new("kill")
                .args(["-HUP", &server.id().to_string()])
                .status()?;
            reloaded_at = Some(Instant::now());
        }
        if let Some(r) = line.strip_prefix("result ") {
            result = r.to_owned();
        }
    }
    load.wait()?;
    let _ = crate::terminate(&mut server);
    let text = std::fs::read_to_string(&log)?;
    let applied = text
        .lines()
        .find(|l| l.contains("reload applied in"))
        .map(|l| l[l.find("reload applied in").unwrap_or(0)..].to_owned());
    let listening = text.matches("CoAP/DTLS ingress listening").count();
    if reloaded_at.is_none() {
        bail!("the devices never all connected; see {}", log.display());
    }
    println!(
        "   server: {}",
        applied
            .as_deref()
            .unwrap_or("no \"reload applied\" line: see the log")
    );
    println!(
        "   the ingress started listening {listening} time(s) (1: it was kept through the reload)"
    );
    println!("   devices across the reload: {result}");
    println!("   (server log: {})", log.display());
    Ok(())
}
