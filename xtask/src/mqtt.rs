//! `cargo xtask bench-mqtt`: the `mqtt` sink beside Mosquitto's own client, in one run on the
//! machine's Mosquitto (127.0.0.1:1883):
//!
//! - `mosquitto_pub -q 1 -l`: 200,000 messages at QoS 1, one per line of files of SenML
//!   payloads the size the sink sends, with the same window of unacknowledged messages as the
//!   sink (`-M`);
//! - the sink: `bench/mqtt.toml`, the null source into the sink, batches of 1000, as `gateway run
//!   --until-sources-finish` reports it.
//!
//! `mosquitto_pub -l` (2.0.11, Debian 12) stops at the first PUBACK whose packet id equals the
//! id of its last message: past 65,535 messages the ids wrap, and it disconnects with most of its
//! input unsent (fed 200,000 lines it published 68,930). So it is fed 50,000 lines a process,
//! four processes in a row, and one verifying run with `-d` first checks that each line is
//! acknowledged.
//!
//! Prints messages/s for each and the ratio, three times; then the same with the sink's
//! default window beside `mosquitto_pub`'s (20).

use crate::root;
use anyhow::{bail, Context, Result};
use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

const MESSAGES: usize = 200_000;

/// Lines a `mosquitto_pub` process is fed: under the 16-bit packet id space (see above).
const CHUNK: usize = 50_000;

fn mosquitto_pub_cmd(inflight: u16) -> Command {
    let mut c = Command::new("mosquitto_pub");
    c.args(["-h", "127.0.0.1", "-q", "1", "-l", "-t", "gwbench/pub"])
        .args(["-M", &inflight.to_string()]);
    c
}

/// Checks, untimed, that `mosquitto_pub` gets a PUBACK for every line of a chunk.
fn check_mosquitto_pub(chunk: &Path) -> Result<()> {
    let out = mosquitto_pub_cmd(64)
        .arg("-d")
        .stdin(std::fs::File::open(chunk)?)
        .output()
        .context("cannot run mosquitto_pub (apt-get install mosquitto-clients)")?;
    let acks = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("received PUBACK"))
        .count();
    if !out.status.success() || acks != CHUNK {
        bail!(
            "mosquitto_pub had {acks} of {CHUNK} messages acknowledged ({}): its figure would be wrong",
            out.status
        );
    }
    Ok(())
}

/// Messages/s of `mosquitto_pub` publishing each line of `chunks` at QoS 1, `inflight` at most
/// unacknowledged, a process per chunk.
fn mosquitto_pub(chunks: &[std::path::PathBuf], inflight: u16) -> Result<f64> {
    let started = Instant::now();
    for chunk in chunks {
        let status = mosquitto_pub_cmd(inflight)
            .stdin(std::fs::File::open(chunk)?)
            .stdout(Stdio::null())
            .status()
            .context("cannot run mosquitto_pub (apt-get install mosquitto-clients)")?;
        if !status.success() {
            bail!("mosquitto_pub failed: {status}");
        }
    }
    Ok(MESSAGES as f64 / started.elapsed().as_secs_f64())
}

/// Readings/s of the sink with `max_inflight`, from the host's own figure.
fn sink(gateway: &Path, inflight: u16) -> Result<f64> {
    let config = std::fs::read_to_string(root().join("bench/mqtt.toml"))?
        + &format!("max_inflight = {inflight}\n");
    let path = root().join("target/bench-mqtt.toml");
    std::fs::write(&path, config)?;
    let out = Command::new(gateway)
        .current_dir(root())
        .args([
            "run",
            "--until-sources-finish",
            "--log-level",
            "info",
            "--config",
        ])
        .arg(&path)
        .env_remove("GATEWAY_LOG")
        .output()?;
    let (n, rate) = crate::sink_wrote(&out)?;
    if n != MESSAGES {
        bail!("the sink wrote {n} readings, not {MESSAGES}");
    }
    Ok(rate)
}

pub fn bench(dir: &Path) -> Result<()> {
    let gateway = dir.join("gateway");
    let base = std::env::temp_dir().join(format!("gw-bench-mqtt-{}", std::process::id()));
    let mut chunks = Vec::new();
    {
        // The payload the sink sends for a reading of the null source, with a new id each.
        let mut f = None;
        for i in 0..MESSAGES {
            if i % CHUNK == 0 {
                let path = base.with_extension(format!("{}.txt", i / CHUNK));
                f = Some(std::io::BufWriter::new(std::fs::File::create(&path)?));
                chunks.push(path);
            }
            writeln!(
                f.as_mut().expect("opened at i = 0"),
                r#"[{{"bn":"bench:","bt":1764633543.120457,"bu":"1","n":"null/value","v":{i},"rid":"{:032x}"}}]"#,
                i as u128 * 7919 + 1
            )?;
        }
    }
    check_mosquitto_pub(&chunks[0])?;
    println!("   {MESSAGES} messages each, QoS 1, to 127.0.0.1:1883 with no subscriber:");
    for (round, inflight) in [(1, 64u16), (2, 64), (3, 64), (4, 20)] {
        let theirs = mosquitto_pub(&chunks, inflight)?;
        let ours = sink(&gateway, inflight)?;
        println!(
            "   run {round}, {inflight:>2} in flight: mosquitto_pub {theirs:>8.0} messages/s | mqtt sink {ours:>8.0} readings/s = {:.0} %",
            ours / theirs * 100.0
        );
    }
    for c in &chunks {
        let _ = std::fs::remove_file(c);
    }
    Ok(())
}
