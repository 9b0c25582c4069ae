//! `cargo xtask bench-ingress [SECONDS]`: the ingress against a fleet, side by side with
//! libcoap's `coap-server-openssl` (Debian's libcoap3-bin) in the same run, both driven by
//! `gateway-load` with mutual certificate authentication, each device its own session and one
//! CON POST in flight. Prints, for each server: requests/s, p50 and p99 latency at 1, 10, 100
//! and 500 devices with 1 and 20 readings per request, timeouts and failures; full
//! handshakes/s, with the CPU the server and the load generator spend on each and how idle the
//! machine was; server CPU per request and per reading; memory per idle session.
//!
//! Each device has one request in flight, so the mean latency is the devices over the
//! requests/s (Little's law), whatever the server does: at the same throughput, a lower p50 can
//! only come with a longer tail, some devices served at once and others kept waiting. The p99
//! shows which.
//!
//! The ingress runs `bench/ingress.toml` (its defaults, into the null sink) in the build a
//! server runs, the one the Debian package ships: release, with OpenSSL 3.5 linked in
//! ([`crate::dist::server`], under `target/dist`). `GATEWAY` picks another build of the
//! gateway (e.g. `target/release/gateway`, the development build, which links Debian 12's
//! OpenSSL 3.0 and spends about twice the CPU per handshake; its plugins are found beside
//! it), `GATEWAY_LOAD` another
//! build of the load generator (by default it is built as the distribution is, with OpenSSL
//! 3.5 linked in: it shares the machine with the server, and with Debian's OpenSSL 3.0 it
//! spends a quarter more CPU per handshake, taken from whichever server it measures),
//! `IDLE_DEVICES` the sessions of the memory figure (default 2000),
//! `ROUNDS` how many times each requests and handshakes point runs, the servers taking turns
//! (default 3; the median is printed, with each round's ratio), and `INGRESS_PARTS` which
//! parts run (a comma-separated list of `requests`, `handshakes`,
//! `storm`, `idle`, `reads` and `observe`; all by default). `storm` starts each server afresh
//! and has `STORM_DEVICES` devices (default 2,000) connect at once, as a fleet does after a
//! server restart: how long until all are in, and how many never got in. `reads` is the ingress alone: each device reading back
//! its last readings (`GET /gpsflowtemp/DEVICE`) beside the same devices POSTing; `observe`
//! is the ingress alone too: one device POSTs while 100, then 1,000 others observe its sensor
//! (notifications/s, latency from POST to notification).

use crate::{has, proc_kb, root};
use anyhow::{bail, Context, Result};
use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A server under test.
struct Server {
    name: &'static str,
    /// Where the devices send.
    port: u16,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = crate::terminate(&mut self.child);
    }
}

impl Server {
    fn ingress(gateway: &Path) -> Result<Server> {
        Server::ingress_with(gateway, Path::new("bench/ingress.toml"))
    }

    fn ingress_with(gateway: &Path, config: &Path) -> Result<Server> {
        let child = Command::new(gateway)
            .current_dir(root())
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", gateway.display()))?;
        Server::up("coaps-ingress", 5695, child)
    }

    fn libcoap() -> Result<Server> {
        // DTLS on port + 1; -d: a POST to an unknown resource creates it (2.01).
        let child = Command::new("coap-server-openssl")
            .current_dir(root())
            .args(["-A", "127.0.0.1", "-p", "5700", "-v", "0", "-d", "10"])
            .args([
                "-c",
                "certs/server.pem",
                "-j",
                "certs/server.key",
                "-C",
                "certs/ca.pem",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start coap-server-openssl")?;
        Server::up("libcoap", 5701, child)
    }

    fn up(name: &'static str, port: u16, child: Child) -> Result<Server> {
        std::thread::sleep(Duration::from_millis(800));
        let mut s = Server { name, port, child };
        if let Some(status) = s.child.try_wait()? {
            bail!("{name} exited at start with {status} (is port {port} taken?)");
        }
        Ok(s)
    }

    /// User + system CPU seconds so far.
    fn cpu(&self) -> f64 {
        cpu_of(self.child.id()).0
    }

    fn rss_kb(&self) -> u64 {
        proc_kb(self.child.id(), "status", "VmRSS:").unwrap_or(0)
    }
}

/// The CPU seconds process `pid` has used (user and system), and whether it has exited (a
/// process that exited and was not waited for yet still has its figures).
fn cpu_of(pid: u32) -> (f64, bool) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ((ticks(11) + ticks(12)) / 100.0, f.first() == Some(&"Z"))
}

/// The CPU seconds all cores of this machine have spent idle so far.
fn machine_idle() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu = stat.lines().next().unwrap_or("");
    let f: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // idle and iowait
    (f.get(3).unwrap_or(&0.0) + f.get(4).unwrap_or(&0.0)) / 100.0
}

/// `gateway-load` aimed at 127.0.0.1:`port`, its devices with certificates issued for the run
/// by the development CA of `certs/`.
pub fn load_command(bin: &Path, port: u16) -> Command {
    let mut c = Command::new(bin);
    c.current_dir(root())
        .args(["--server", &format!("127.0.0.1:{port}")])
        .args(["--host", "127.0.0.1", "--ca", "certs/ca.pem"])
        .args(["--ca-key", "certs/ca.key"]);
    c
}

/// What one `gateway-load` run printed last, as key=value pairs, and the server's CPU seconds
/// during its measurement window.
struct Outcome {
    result: HashMap<String, String>,
    /// The server's CPU seconds while the devices worked (after they connected).
    cpu: f64,
    /// The load generator's, over the same time.
    load_cpu: f64,
    /// The seconds all cores of the machine were idle, over the same time.
    idle: f64,
    /// How long that time was.
    seconds: f64,
}

impl Outcome {
    fn num(&self, key: &str) -> f64 {
        self.result
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Requests that did not get a 2.xx, and devices that did not connect.
    fn failures(&self) -> u64 {
        [
            "timeouts",
            "handshake_failures",
            "refused",
            "failed",
            "connect_failures",
        ]
        .iter()
        .map(|k| self.num(k) as u64)
        .sum()
    }
}

/// Runs `gateway-load` against `server`; the server's CPU is read from the end of the connect
/// phase (or the start, in handshakes mode) to the end of the run. `on_line` sees each line.
fn load(
    bin: &Path,
    server: &Server,
    args: &[&str],
    mut on_line: impl FnMut(&str),
) -> Result<Outcome> {
    let mut c = load_command(bin, server.port);
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = c.spawn().context("cannot start gateway-load")?;
    let handshakes = args.contains(&"handshakes");
    // What the server, the load generator and the machine's idle cores had spent when the
    // devices started working.
    let pid = child.id();
    let mark = || (server.cpu(), cpu_of(pid).0, machine_idle(), Instant::now());
    let mut start = handshakes.then(mark);
    let mut result = HashMap::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        if line.starts_with("connect:") || line.starts_with("idle:") {
            start = Some(mark());
        }
        if let Some(r) = line.strip_prefix("result ") {
            result = r
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        }
        on_line(&line);
    }
    // Its output ended: its figures stay readable until it is waited for.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !cpu_of(pid).1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (cpu, load_cpu, idle, at) = mark();
    let (cpu0, load_cpu0, idle0, at0) = start.unwrap_or((0.0, 0.0, idle, at));
    child.wait()?;
    if result.is_empty() {
        bail!("gateway-load printed no result against {}", server.name);
    }
    Ok(Outcome {
        result,
        cpu: cpu - cpu0,
        load_cpu: load_cpu - load_cpu0,
        idle: idle - idle0,
        seconds: (at - at0).as_secs_f64(),
    })
}

/// The benchmark; `secs` per measurement. (`_dev`, the development build, made the
/// certificates the configs name; the servers run the shipped build.)
pub fn bench(_dev: &Path, secs: u64) -> Result<()> {
    let load_bin = match std::env::var_os("GATEWAY_LOAD") {
        Some(bin) => PathBuf::from(bin),
        None => crate::dist::load_generator()?,
    };
    let gateway = match std::env::var_os("GATEWAY") {
        Some(bin) => PathBuf::from(bin),
        None => crate::dist::server()?,
    };
    let with_libcoap = has("coap-server-openssl");
    if !with_libcoap {
        println!("   (coap-server-openssl is not installed: apt-get install libcoap3-bin; the ingress alone)");
    }
    let duration = format!("{secs}s");
    let rounds_of_each: usize = match std::env::var("ROUNDS") {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("ROUNDS={v}: a number of rounds, at least 1"))?,
        Err(_) => 3,
    };
    let parts = std::env::var("INGRESS_PARTS")
        .unwrap_or_else(|_| "requests,handshakes,storm,idle,reads,observe".into());
    let part = |p: &str| parts.split(',').any(|x| x.trim() == p);
    let servers = |f: &mut dyn FnMut(&Server) -> Result<()>| -> Result<()> {
        f(&Server::ingress(&gateway)?)?;
        if with_libcoap {
            f(&Server::libcoap()?)?;
        }
        Ok(())
    };
    println!("   gateway: {}", gateway.display());
    println!("   load generator: {}", load_bin.display());
    if part("requests") {
        requests(&load_bin, &duration, rounds_of_each, &servers)?;
    }
    if part("handshakes") {
        handshakes(&load_bin, &duration, rounds_of_each, &servers)?;
    }
    if part("storm") {
        storm(&load_bin, &servers)?;
    }
    if part("idle") {
        idle(&load_bin, &servers)?;
    }
    if part("reads") {
        reads(&load_bin, &duration, &Server::ingress(&gateway)?)?;
    }
    if part("observe") {
        observe(&load_bin, &duration, &gateway)?;
    }
    Ok(())
}

/// Observe fan-out: one device POSTs while 100 and then 1,000 others observe its sensor; the
/// ingress of `bench/ingress.toml` with every load device a reader.
fn observe(load_bin: &Path, duration: &str, gateway: &Path) -> Result<()> {
    println!("   Observe fan-out (one device POSTs one reading at a time; the others observe that sensor):");
    for observers in [100usize, 1000] {
        let dir = root().join("target/bench-observe");
        std::fs::create_dir_all(&dir)?;
        let base = std::fs::read_to_string(root().join("bench/ingress.toml"))?;
        let readers: Vec<String> = (1..=observers).map(|n| format!("\"load-{n}\"")).collect();
        let at_root = format!("\"{}/", root().display());
        let config = base.replace("\"../", &at_root).replacen(
            "require_client_cert = true",
            &format!(
                "require_client_cert = true\nreaders = [{}]",
                readers.join(", ")
            ),
            1,
        );
        let path = dir.join("ingress.toml");
        std::fs::write(&path, config)?;
        let s = Server::ingress_with(gateway, &path)?;
        let devices = (observers + 1).to_string();
        let o = load(
            load_bin,
            &s,
            // The observers connect at a steady pace: the figure is the fan-out, not a storm.
            &[
                "--mode",
                "observe",
                "--devices",
                &devices,
                "--duration",
                duration,
                "--connect-rate",
                "250",
            ],
            |l| {
                let trouble = l.starts_with("  e.g.")
                    || l.contains("got no notification")
                    || l.contains("never told")
                    || (l.starts_with("connect:")
                        && !l.contains(&format!("{observers} of {observers}")));
                if trouble {
                    println!("      {l}");
                }
            },
        )?;
        let got = o.num("notifications");
        println!(
            "   {observers:>5} observers: {:>6.0} notifications/s, {:.0} POSTs, {got:.0} notifications of {:.0} states, {:.0} observers behind at the end, POST to notification p50 {:.2} ms p99 {:.2} ms, {:.1} us of ingress CPU per notification",
            o.num("per_s"),
            o.num("posts"),
            o.num("expected"),
            o.num("behind"),
            o.num("p50_ms"),
            o.num("p99_ms"),
            o.cpu / got.max(1.0) * 1e6,
        );
    }
    Ok(())
}

/// The ingress's GET of a device's last readings beside its POST path, same devices.
fn reads(load_bin: &Path, duration: &str, s: &Server) -> Result<()> {
    println!("   the ingress reading back (GET /gpsflowtemp/DEVICE, 1 reading held) beside POST (1 reading):");
    for devices in ["1", "10", "100"] {
        let mut cells = Vec::new();
        for (what, extra) in [("POST", None), ("GET", Some("--get"))] {
            let mut args = vec!["--devices", devices, "--duration", duration];
            args.extend(extra);
            let o = load(load_bin, s, &args, |_| {})?;
            let cpu_us = o.cpu / (o.num("ok").max(1.0)) * 1e6;
            cells.push(format!(
                "{what} {:>7.0} req/s (p50 {:.2} ms, {cpu_us:.1} us CPU/req, {} failures)",
                o.num("per_s"),
                o.num("p50_ms"),
                o.failures()
            ));
        }
        println!("   {devices:>3} devices: {}", cells.join(" | "));
    }
    Ok(())
}

type Servers<'a> = dyn Fn(&mut dyn FnMut(&Server) -> Result<()>) -> Result<()> + 'a;

/// The median of `values` (0 for none).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The median of `figure` over `outcomes`.
fn mid(outcomes: &[Outcome], figure: impl Fn(&Outcome) -> f64) -> f64 {
    median(outcomes.iter().map(figure).collect())
}

/// Each server's outcomes at one load point, `rounds` times, the servers taking turns (so that
/// a machine whose speed drifts slows both alike), in the order they first ran.
fn rounds(
    rounds: usize,
    servers: &Servers<'_>,
    mut measure: impl FnMut(&Server) -> Result<Outcome>,
) -> Result<Vec<(&'static str, Vec<Outcome>)>> {
    let mut by_server: Vec<(&'static str, Vec<Outcome>)> = Vec::new();
    for _ in 0..rounds.max(1) {
        servers(&mut |s| {
            let o = measure(s)?;
            match by_server.iter_mut().find(|(n, _)| *n == s.name) {
                Some((_, v)) => v.push(o),
                None => by_server.push((s.name, vec![o])),
            }
            Ok(())
        })?;
    }
    Ok(by_server)
}

/// The first server's figure over the second's, as the ratio of the medians and, with more
/// than one round, the ratio in each round.
fn ratio(by_server: &[(&'static str, Vec<Outcome>)], figure: impl Fn(&Outcome) -> f64) -> String {
    let [(_, ours), (_, theirs)] = by_server else {
        return String::new();
    };
    let (a, b) = (mid(ours, &figure), mid(theirs, &figure));
    if b <= 0.0 {
        return String::new();
    }
    let mut text = format!("  = {:.2}x", a / b);
    if ours.len() > 1 {
        let each: Vec<String> = ours
            .iter()
            .zip(theirs)
            .map(|(a, b)| format!("{:.2}", figure(a) / figure(b).max(1e-9)))
            .collect();
        text += &format!(" (rounds {})", each.join(", "));
    }
    text
}

/// The load generator's threads for the requests and handshakes figures: half the cores (one
/// at least), the server the other half. With every core (gateway-load's own default), its
/// threads took the cores the server needed, and handing devices between them cost more
/// CPU per request than one thread spends: on 2 cores, the ingress measured 62,000-68,000
/// requests/s at 500 devices x 20 readings with two threads and 73,000-86,000 with one, the
/// handshakes 1,466/s and 1,620/s, libcoap (one thread) 51,600-53,000 and 51,500-54,400.
fn load_threads() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).max(1).to_string()
}

/// Requests/s, latency and CPU at each load point, the median of `n` rounds.
fn requests(load_bin: &Path, duration: &str, n: usize, servers: &Servers<'_>) -> Result<()> {
    let threads = load_threads();
    println!("   requests/s (p50 and p99 latency) per server, each device its own session, one CON POST in flight, the load generator on {threads} thread(s), the median of {n} round(s):");
    for readings in ["1", "20"] {
        for devices in ["1", "10", "100", "500"] {
            let args = [
                "--devices",
                devices,
                "--readings",
                readings,
                "--duration",
                duration,
                "--threads",
                &threads,
            ];
            let by_server = rounds(n, servers, |s| load(load_bin, s, &args, |_| {}))?;
            let cells: Vec<String> = by_server
                .iter()
                .map(|(name, os)| {
                    let r = mid(os, |o| o.num("per_s"));
                    let (p50, p99) = (mid(os, |o| o.num("p50_ms")), mid(os, |o| o.num("p99_ms")));
                    let cpu = mid(os, |o| o.cpu / o.num("ok").max(1.0) * 1e6);
                    let f: u64 = os.iter().map(Outcome::failures).sum();
                    let per_reading = match readings {
                        "1" => String::new(),
                        _ => format!(" = {:.2} us/reading", cpu / 20.0),
                    };
                    format!("{name} {r:>7.0} req/s (p50 {p50:.2} ms, p99 {p99:.2} ms, {cpu:.1} us CPU/req{per_reading}, {f} failures)")
                })
                .collect();
            println!(
                "   {readings:>2} reading(s), {devices:>3} devices: {}{}",
                cells.join(" | "),
                ratio(&by_server, |o| o.num("per_s"))
            );
        }
    }
    Ok(())
}

/// Full handshakes/s, the median of `n` rounds.
fn handshakes(load_bin: &Path, duration: &str, n: usize, servers: &Servers<'_>) -> Result<()> {
    let threads = load_threads();
    println!("   full handshakes/s (20 devices looping: handshake, one POST, close; the load generator on {threads} thread(s)), the median of {n} round(s):");
    let args = [
        "--devices",
        "20",
        "--mode",
        "handshakes",
        "--duration",
        duration,
        "--threads",
        &threads,
    ];
    let by_server = rounds(n, servers, |s| load(load_bin, s, &args, |_| {}))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    for (name, os) in &by_server {
        let per_s = mid(os, |o| o.num("per_s"));
        let each = |cpu: f64, o: &Outcome| cpu / o.num("ok").max(1.0) * 1e3;
        let cpu_ms = mid(os, |o| each(o.cpu, o));
        let load_ms = mid(os, |o| each(o.load_cpu, o));
        // How much of the machine was left unused: with none, the rate is bounded by the
        // cores over the CPU both sides spend per handshake.
        let idle = mid(os, |o| 100.0 * o.idle / (cores * o.seconds).max(1e-9));
        let all: Vec<String> = os
            .iter()
            .map(|o| format!("{:.0}", o.num("per_s")))
            .collect();
        let f: u64 = os.iter().map(Outcome::failures).sum();
        println!(
            "     {name:<13} {per_s:>6.0}/s  ({cpu_ms:.2} ms server CPU each, {load_ms:.2} ms load generator CPU each, machine {idle:.0}% idle, {f} failures; rounds {})",
            all.join(", ")
        );
    }
    Ok(())
}

/// A reconnect storm: every device at once against a server just started.
fn storm(load_bin: &Path, servers: &Servers<'_>) -> Result<()> {
    let devices = std::env::var("STORM_DEVICES").unwrap_or_else(|_| "2000".into());
    println!("   reconnect storm ({devices} devices at once, each a full handshake and one POST):");
    servers(&mut |s| {
        let args = [
            "--devices",
            &devices,
            "--duration",
            "1s",
            "--prefix",
            "storm",
        ];
        let mut connect = String::new();
        let o = load(load_bin, s, &args, |l| {
            if let Some(c) = l.strip_prefix("connect: ") {
                connect = c.to_owned();
            }
        })?;
        println!(
            "     {:<13} {connect}; {:.0} devices never got in",
            s.name,
            o.num("connect_failures")
        );
        Ok(())
    })
}

/// Server memory per idle session.
fn idle(load_bin: &Path, servers: &Servers<'_>) -> Result<()> {
    let idle: usize = std::env::var("IDLE_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    // One socket per device, and a process may have 20,000 descriptors here: larger fleets
    // are split over several load generators, each with its own device names.
    let procs = idle.div_ceil(IDLE_PER_PROCESS);
    println!("   memory per idle session ({idle} sessions held by {procs} load generator(s); server RSS growth / sessions):");
    servers(&mut |s| {
        let before = s.rss_kb();
        let mut children = Vec::new();
        let (tx, rx) = std::sync::mpsc::channel();
        for k in 0..procs {
            let n = (idle - k * IDLE_PER_PROCESS)
                .min(IDLE_PER_PROCESS)
                .to_string();
            let prefix = format!("idle{k}");
            // Paced: what the server and the generators can handshake together on a small
            // machine; this measures memory, not the storm.
            let rate = (IDLE_CONNECT_RATE / procs).to_string();
            let mut c = load_command(load_bin, s.port);
            c.args(["--devices", &n, "--prefix", &prefix, "--mode", "idle"])
                .args(["--duration", "600s", "--connect-rate", &rate])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            let mut child = c.spawn().context("cannot start gateway-load")?;
            let out = child.stdout.take().expect("piped");
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                    // "idle: holding N sessions for ..."
                    if let Some(rest) = line.strip_prefix("idle: holding ") {
                        let held = rest.split_whitespace().next().and_then(|n| n.parse().ok());
                        let _ = tx.send(Some(held.unwrap_or(0usize)));
                    }
                }
                let _ = tx.send(None); // the generator ended
            });
            children.push(child);
        }
        drop(tx);
        let mut held = 0;
        let mut reported = 0;
        while reported < procs {
            match rx.recv() {
                Ok(None) | Err(_) => break,
                Ok(Some(n)) => {
                    held += n;
                    reported += 1;
                }
            }
        }
        // Let the last handshakes' transient state go.
        std::thread::sleep(Duration::from_secs(1));
        let rss = s.rss_kb();
        for mut c in children {
            let _ = crate::terminate(&mut c);
        }
        if reported < procs {
            println!("     {:<13} the sessions were not held", s.name);
        } else {
            println!(
                "     {:<13} {:.1} KB per session ({held} connected; RSS {before} -> {rss} kB)",
                s.name,
                (rss.saturating_sub(before)) as f64 / held.max(1) as f64,
            );
        }
        Ok(())
    })
}

/// Devices per load generator in the memory figure.
const IDLE_PER_PROCESS: usize = 10_000;
/// New sessions per second in the memory figure, all load generators together.
const IDLE_CONNECT_RATE: usize = 400;
