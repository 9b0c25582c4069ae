//! Project tasks, run as `cargo xtask TASK`:
//!
//! - `run [ARGS]`: build the gateway and its plugins, then run the quick start (`gateway.toml`);
//!   extra arguments go to `gateway run`.
//! - `test [ARGS]`: the README's test command: installs the Debian packages the suite needs and
//!   starts MariaDB where they are missing (`setup.rs`), then `cargo test --locked ARGS`. With
//!   `CI` set (CI sets it; `.ci/run` calls exactly this) it runs `ci` instead.
//! - `ci`: what CI checks: the set-up of `test` plus rustfmt, clippy and cargo-fuzz, then
//!   formatting, clippy and rustdoc with warnings denied, the test suite, and a short run of
//!   every fuzz target (`FUZZ_SECONDS` each, 30 by default).
//! - `bench`: build in release mode and print every benchmark figure of the README.
//! - `bench-pi`: the Pi side's resident memory without and with the metrics page.
//! - `bench-pg`: the `postgres` sink beside PostgreSQL's own COPY of the same rows (`pg.rs`).
//! - `bench-tiers [SECONDS]`: `coaps-ingress -> nats | nats -> mysql` beside `coaps-ingress ->
//!   mysql`, same load (`tiers.rs`).
//! - `bench-balancer [SECONDS]`: two ingress instances behind nginx's UDP balancer beside one
//!   without it (`balancer.rs`).
//! - `bench-mqtt`: the `mqtt` sink beside `mosquitto_pub` publishing as many messages at QoS 1
//!   (`mqtt.rs`).
//! - `bench-e2e`: only the MySQL figures (plain INSERTs, end to end, drain after an outage), with
//!   the client host's resident memory through each.
//! - `bench-ingress [SECONDS]`: the ingress under a fleet's load beside libcoap's server
//!   (`fleet.rs`).
//! - `bench-lossy [SECONDS]`: the link through a relay that drops 5, 10 and 25 % of datagrams
//!   (`lossy.rs`).
//! - `bench-reload [SECONDS]`: a SIGHUP reload of the ingress while 1,000 devices hold
//!   sessions (`reload.rs`).
//! - `soak [N]`: the zero-loss test, N times longer.
//! - `dist [--target TRIPLE]`: the build for the Pi (static, trimmed OpenSSL; see `dist.rs`)
//!   in `target/dist/gateway-TRIPLE/`, and its sizes.
//! - `new-plugin NAME --source|--sink [--dir DIR] [--what TEXT]`: a plugin folder that builds and tests on
//!   its own, outside this repository (`template.rs`).
//! - `sdk-package`: the SDK as a crate file, `target/package/gateway-sdk-VERSION.crate`.
//! - `deb [--target TRIPLE]...`: Debian packages of that build, with systemd units for the Pi
//!   and the server roles (`deb.rs`), in `target/deb/`.

mod balancer;
mod deb;
mod dist;
mod fleet;
mod lossy;
mod mqtt;
mod pg;
mod reload;
mod setup;
mod template;
mod tiers;

use anyhow::{bail, Context, Result};
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(mut c: Command) -> Result<()> {
    let status = c.status().with_context(|| format!("cannot run {c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed with {status}");
    }
    Ok(())
}

/// Builds the host and every plugin of the default workspace members.
fn build(release: bool) -> Result<PathBuf> {
    let mut c = cargo();
    c.arg("build");
    if release {
        c.arg("--release");
    }
    run(c)?;
    Ok(root()
        .join("target")
        .join(if release { "release" } else { "debug" }))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a.starts_with("bench")) {
        // The benchmarks read the gateways' /proc/PID/smaps_rollup (PSS), which a process
        // that is not dumpable (as the gateway makes itself) keeps from other processes of
        // its user; run as root, it makes no difference.
        std::env::set_var("GATEWAY_DUMPABLE", "1");
    }
    match args.first().map(String::as_str) {
        Some("run") => {
            let dir = build(false)?;
            ensure_certs(&dir)?;
            let mut c = Command::new(dir.join("gateway"));
            c.current_dir(root()).arg("run");
            // gateway.toml unless the user names another config (`-c client.toml`).
            let named = args[1..]
                .iter()
                .any(|a| a == "-c" || a == "--config" || a.starts_with("--config="));
            if !named {
                c.args(["--config", "gateway.toml"]);
            }
            c.args(&args[1..]);
            // The gateway takes this process's place: Ctrl-C reaches it alone (it drains
            // before it exits), and its exit status is the command's. Waiting for it as a
            // child, this process died of the same Ctrl-C at once, and the shell came back
            // (status 130) while the gateway was still draining.
            use std::os::unix::process::CommandExt;
            let e = c.exec();
            bail!("cannot start {}: {e}", dir.join("gateway").display());
        }
        Some("bench") => bench(),
        Some("test") => {
            // CI sets CI=true: then the checks CI adds around the suite run too.
            let under_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
            if under_ci && args.len() > 1 {
                bail!(
                    "with CI set, `cargo xtask test` runs every check CI makes and takes no arguments ({}): unset CI to run part of the suite",
                    args[1..].join(" ")
                );
            }
            setup::prepare(under_ci)?;
            if under_ci {
                return ci();
            }
            let mut c = cargo();
            c.args(["test", "--locked"]).args(&args[1..]);
            run(c)
        }
        Some("ci") => {
            setup::prepare(true)?;
            ci()
        }
        Some("soak") => {
            // The zero-loss proof, N times longer (more readings, longer pauses between the
            // kills and restarts).
            let scale = args.get(1).map(String::as_str).unwrap_or("10");
            let mut c = cargo();
            c.args([
                "test",
                "--release",
                "-p",
                "gateway",
                "--test",
                "zero_loss",
                "--",
                "--nocapture",
            ])
            .env("GATEWAY_SOAK_SCALE", scale);
            run(c)
        }
        Some("bench-ingress") => link_bench(&args, 5, fleet::bench),
        Some("bench-tiers") => link_bench(&args, 10, tiers::bench),
        Some("bench-balancer") => link_bench(&args, 5, balancer::bench),
        Some("bench-lossy") => link_bench(&args, 60, lossy::bench),
        Some("bench-reload") => link_bench(&args, 10, reload::bench),
        Some("bench-pi") => {
            let dir = build(true)?;
            ensure_certs(&dir)?;
            pi_memory(&dir)
        }
        Some("bench-pg") => {
            let dir = build(true)?;
            pg::bench(&dir)
        }
        Some("bench-mqtt") => {
            let dir = build(true)?;
            mqtt::bench(&dir)
        }
        Some("bench-e2e") => {
            let dir = build(true)?;
            ensure_certs(&dir)?;
            end_to_end(&dir.join("gateway"))
        }
        Some("deb") => {
            let targets: Vec<Option<&str>> = match &args[1..] {
                [] => vec![None],
                rest if rest.len() % 2 == 0 && rest.chunks(2).all(|c| c[0] == "--target") => {
                    rest.chunks(2).map(|c| Some(c[1].as_str())).collect()
                }
                _ => bail!("usage: cargo xtask deb [--target TRIPLE]..."),
            };
            for t in targets {
                let deb = deb::deb(t)?;
                let size = std::fs::metadata(&deb)?.len();
                println!("{} ({:.1} MB)", deb.display(), size as f64 / 1048576.0);
            }
            Ok(())
        }
        Some("new-plugin") => template::command(&args[1..]),
        Some("sdk-package") => {
            // `cargo package` builds the packed crate on its own, outside the workspace: what
            // an author who takes the SDK from a registry gets.
            let mut c = cargo();
            c.args(["package", "-p", "gateway-sdk", "--allow-dirty"]);
            run(c)?;
            let v = gateway_sdk_version()?;
            println!(
                "{}",
                root()
                    .join(format!("target/package/gateway-sdk-{v}.crate"))
                    .display()
            );
            Ok(())
        }
        Some("dist") => {
            let target = match &args[1..] {
                [] => None,
                [flag, t] if flag == "--target" => Some(t.as_str()),
                _ => bail!("usage: cargo xtask dist [--target TRIPLE]"),
            };
            let dir = dist::dist(target)?;
            sizes(&dir)?;
            println!("copy {} to the Pi (say to /opt/gateway/)", dir.display());
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: cargo xtask run [GATEWAY-RUN-ARGS] | test [CARGO-TEST-ARGS] | ci | bench | bench-ingress [SECONDS] | bench-lossy [SECONDS] | bench-reload [SECONDS] | bench-pi | bench-e2e | bench-pg | bench-mqtt | bench-tiers [SECONDS] | bench-balancer [SECONDS] | soak [N] | dist [--target TRIPLE] | deb [--target TRIPLE]... | new-plugin NAME --source|--sink [--dir DIR] [--what TEXT] | sdk-package"
            );
            std::process::exit(2);
        }
    }
}

/// Every check CI makes, in the order that fails fastest. Stops at the first that fails.
fn ci() -> Result<()> {
    let step = |name: &str, c: Command| -> Result<()> {
        eprintln!("== {name}");
        let t = Instant::now();
        run(c).with_context(|| format!("{name} failed"))?;
        eprintln!("== {name}: ok in {:.0?}", t.elapsed());
        Ok(())
    };
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    step("rustfmt", fmt)?;
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]);
    step("clippy", clippy)?;
    let mut doc = cargo();
    doc.args(["doc", "--workspace", "--no-deps", "--locked"])
        .env("RUSTDOCFLAGS", "-D warnings");
    step("rustdoc", doc)?;
    // The README's test command.
    let mut test = cargo();
    test.args(["test", "--locked"]);
    step("tests", test)?;
    fuzz_smoke()
}

/// Runs every fuzz target from its corpus for `FUZZ_SECONDS` (30) each. New inputs go to a
/// scratch directory, so the corpus in the repository does not change. Without cargo-fuzz it
/// says so and skips, except under CI, where that is a failure.
fn fuzz_smoke() -> Result<()> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        if std::env::var_os("CI").is_some() {
            bail!("cargo-fuzz is missing (cargo install cargo-fuzz)");
        }
        eprintln!("== fuzz: skipped, cargo-fuzz is not installed (cargo install cargo-fuzz)");
        return Ok(());
    }
    let seconds: u64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let fuzz = root().join("fuzz");
    // cargo-fuzz needs a nightly compiler; RUSTC_BOOTSTRAP lets a stable one build it.
    let fuzz_cmd = || {
        let mut c = Command::new("cargo");
        c.current_dir(&fuzz).arg("fuzz").env("RUSTC_BOOTSTRAP", "1");
        c
    };
    let listed = fuzz_cmd().arg("list").output()?;
    if !listed.status.success() {
        bail!("cargo fuzz list failed");
    }
    let listed = String::from_utf8_lossy(&listed.stdout);
    let targets: Vec<&str> = listed.split_whitespace().collect();
    let mut build = fuzz_cmd();
    build.arg("build");
    eprintln!("== fuzz: building {} targets", targets.len());
    run(build)?;
    let scratch = std::env::temp_dir().join(format!("gateway-fuzz-{}", std::process::id()));
    for t in &targets {
        let new = scratch.join(t);
        std::fs::create_dir_all(&new)?;
        let mut c = fuzz_cmd();
        c.args(["run", t])
            .arg(&new)
            .arg(fuzz.join("corpus").join(t))
            .args(["--", &format!("-max_total_time={seconds}")]);
        // libFuzzer reports on stderr, a line a second: kept in a log, shown if it fails.
        let log = scratch.join(format!("{t}.log"));
        c.stderr(std::fs::File::create(&log)?);
        let t0 = Instant::now();
        if let Err(e) = run(c) {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
            return Err(e).with_context(|| {
                format!("fuzz target {t} failed: the input is under fuzz/artifacts/{t}/")
            });
        }
        eprintln!("== fuzz {t}: ok, {:.0?}", t0.elapsed());
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// Creates the development certificates the quick start uses where they are missing or
/// unusable: the CA only where there is none (one made with `gateway certs init` is kept,
/// never replaced); the server's and the quickstart device's where the certificate or its key
/// is missing, or the certificate does not verify against `ca.pem` (another CA's, expired).
fn ensure_certs(dir: &Path) -> Result<()> {
    let certs = root().join("certs");
    let missing = |f: &str| !certs.join(f).exists();
    let new_ca = missing("ca.pem");
    // `openssl verify` checks the chain and the dates; without the tool, a certificate that is
    // there counts as good.
    let verifies = |pem: &str| {
        Command::new("openssl")
            .current_dir(&certs)
            .args(["verify", "-CAfile", "ca.pem", pem])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_or(true, |s| s.success())
    };
    let mut todo: Vec<Vec<&str>> = Vec::new();
    let mut issued = Vec::new();
    if new_ca {
        todo.push(vec!["init"]);
    }
    for (stem, args) in [
        ("server", &["server"][..]),
        ("device-quickstart", &["device", "quickstart"]),
    ] {
        let (pem, key) = (format!("{stem}.pem"), format!("{stem}.key"));
        if new_ca || missing(&pem) || missing(&key) || !verifies(&pem) {
            let mut a = args.to_vec();
            if !missing(&pem) {
                // Unusable as it is (another CA's, expired, without its key): replaced.
                a.push("--force");
            }
            todo.push(a);
            issued.push(pem);
        }
    }
    if todo.is_empty() {
        return Ok(());
    }
    if !new_ca && missing("ca.key") {
        bail!(
            "certs/ca.pem is there without its key certs/ca.key, and {} must be issued (missing, without its key, or not valid under that CA): put the CA's key there, or move ca.pem away so that a development CA is made",
            issued.join(" and ")
        );
    }
    eprintln!("creating the development certificates missing or unusable under certs/");
    for args in todo {
        let mut c = Command::new(dir.join("gateway"));
        c.current_dir(root()).arg("certs").args(&args);
        run(c)?;
    }
    Ok(())
}

/// Runs a package's benchmark example in release mode.
fn example(package: &str, name: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let mut c = example_cmd(package, name);
    c.args(args).envs(env.iter().copied());
    run(c)
}

/// `cargo run --release` of a package's example.
fn example_cmd(package: &str, name: &str) -> Command {
    let mut c = cargo();
    c.args([
        "run",
        "--release",
        "--quiet",
        "-p",
        package,
        "--example",
        name,
    ]);
    c
}

fn has(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A `kB` figure of a process from a /proc file: `VmRSS:` of `status`, `Pss:` of `smaps_rollup`.
fn proc_kb(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The resident memory of a process, read every 100 ms on a thread of its own until the
/// process is gone or the sampler is dropped: the bench-e2e figure that the Pi side's RSS does
/// not grow while readings pass through it.
struct RssSampler {
    samples: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, halt) = (samples.clone(), stop.clone());
        std::thread::spawn(move || {
            while !halt.load(std::sync::atomic::Ordering::Relaxed) {
                match proc_kb(pid, "status", "VmRSS:") {
                    Some(kb) => s.lock().unwrap().push(kb),
                    None => return,
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        RssSampler { samples, stop }
    }

    /// The readings from `from` (an index from [`RssSampler::mark`]) on: first, last and
    /// highest, in kB.
    fn span(&self, from: usize) -> Option<(u64, u64, u64)> {
        let s = self.samples.lock().unwrap();
        let s = s.get(from..)?;
        Some((*s.first()?, *s.last()?, *s.iter().max()?))
    }

    /// Where the next reading will go.
    fn mark(&self) -> usize {
        self.samples.lock().unwrap().len()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn bench() -> Result<()> {
    let dir = build(true)?;
    let gateway = dir.join("gateway");
    println!("== pipeline throughput: null-source -> null-sink through the ABI, batches of 100");
    let pinned = has("taskset");
    let mut c = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(&gateway);
        c
    } else {
        Command::new(&gateway)
    };
    c.current_dir(root())
        .args([
            "run",
            "--config",
            "bench/pipeline.toml",
            "--until-sources-finish",
            "--log-level",
            "info",
        ])
        .env_remove("GATEWAY_LOG");
    let started = Instant::now();
    let out = c.output()?;
    let wall = started.elapsed();
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("benchmark run failed:\n{log}");
    }
    let line = log
        .lines()
        .find(|l| l.contains("sink wrote"))
        .context("no throughput line in the log")?;
    let figure = line
        .split("sink wrote ")
        .nth(1)
        .unwrap_or(line)
        .split(" sink=")
        .next()
        .unwrap_or(line);
    println!("   {figure}");
    println!(
        "   pinned to one core: {}; wall time of the whole run {:.2} s",
        if pinned {
            "yes (taskset -c 0)"
        } else {
            "no (taskset missing)"
        },
        wall.as_secs_f64()
    );

    println!(
        "== resident memory: `gateway run` with four plugins loaded and idle (bench/idle.toml)"
    );
    resident(&gateway, "bench/idle.toml", 2)?;
    println!("== resident memory: both sensor plugins into console (bench/sensors.toml)");
    resident(&gateway, "bench/sensors.toml", 5)?;

    ensure_certs(&dir)?;
    let pi = dist::dist(None)?;
    println!("== resident memory: the Pi side (bench/pi-client.toml: both sensors and coaps-uplink, sending)");
    let server = start(&gateway, "bench/pi-server.toml", &[])?;
    std::thread::sleep(Duration::from_millis(500));
    println!("   the distribution build (`cargo xtask dist`: static, trimmed OpenSSL):");
    let r = resident(&pi.join("gateway"), "bench/pi-client.toml", 6);
    println!("   the development build (the system's shared OpenSSL):");
    let r = r.and_then(|_| resident(&gateway, "bench/pi-client.toml", 6));
    let _ = stop(server);
    r?;

    println!(
        "== coaps link: one uplink to one ingress on loopback, CON requests of 100-reading batches"
    );
    for (group, nstart, mtu) in [
        ("10", "4", "16384"),
        ("10", "4", "1232"),
        ("1", "1", "1232"),
    ] {
        example(
            "gateway-plugin-coaps",
            "link_bench",
            &["4000", mtu],
            &[("GROUP", group), ("NSTART", nstart)],
        )?;
    }

    println!("== coaps ingress under a fleet's load, beside libcoap (bench-ingress, gateway-load)");
    fleet::bench(&dir, 5)?;
    println!("== coaps link through a lossy relay (bench-lossy)");
    lossy::bench(&dir, 60)?;

    println!("== disk buffer: fsync always (host/examples/buffer_bench.rs)");
    example("gateway", "buffer_bench", &[], &[])?;
    example("gateway", "buffer_bench", &[], &[("GROUP", "1")])?;
    end_to_end(&gateway)?;

    println!("== ds18b20: 100 simulated probes per round");
    example("gateway-plugin-ds18b20", "probes_bench", &[], &[])?;
    println!("== ublox7: NMEA decoding");
    example("gateway-plugin-ublox7", "nmea_bench", &[], &[])?;
    sizes(&dir)?;
    sizes(&pi)
}

/// Runs a query with the `mysql` client against the machine's MariaDB; the trimmed output.
fn sql(query: &str) -> Result<String> {
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
        .context("running the mysql client")?;
    if !out.status.success() {
        bail!("{query}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn rows() -> u64 {
    sql("SELECT COUNT(*) FROM gw_bench.readings")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Waits until `gw_bench.readings` holds `n` rows; the time it took.
fn wait_rows(n: u64, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    while rows() < n {
        if started.elapsed() > limit {
            bail!("only {} of {n} rows after {limit:?}", rows());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(started.elapsed())
}

fn start(gateway: &Path, config: &str, extra: &[&str]) -> Result<std::process::Child> {
    Ok(Command::new(gateway)
        .current_dir(root())
        .args(["run", "--config", config])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

/// `bench-ingress` / `bench-lossy`: a release build, the development certificates, then
/// `bench` for SECONDS (the task's argument, or `default`).
fn link_bench(args: &[String], default: u64, bench: fn(&Path, u64) -> Result<()>) -> Result<()> {
    let secs = args
        .get(1)
        .map_or(Ok(default), |s| s.parse())
        .context("SECONDS")?;
    let dir = build(true)?;
    ensure_certs(&dir)?;
    bench(&dir, secs)
}

/// `bench-pi`: the Pi side's resident memory (the distribution build, bench/pi-client.toml,
/// sending to bench/pi-server.toml) without and with the metrics page, three times each.
fn pi_memory(dir: &Path) -> Result<()> {
    let pi = dist::dist(None)?;
    let server = start(&dir.join("gateway"), "bench/pi-server.toml", &[])?;
    std::thread::sleep(Duration::from_millis(500));
    println!("== resident memory of the Pi side (distribution build): without / with `metrics` (scraped)");
    let mut r = Ok(());
    for _ in 0..3 {
        for (what, config, scrape) in [
            ("without metrics", "bench/pi-client.toml", None),
            (
                "with metrics   ",
                "bench/pi-client-metrics.toml",
                Some("127.0.0.1:9465"),
            ),
        ] {
            print!("   {what}:");
            r = r.and_then(|_| resident_scraped(&pi.join("gateway"), config, 6, scrape));
        }
    }
    let _ = stop(server);
    r
}

/// SIGTERM, then wait for the exit.
fn stop(mut child: std::process::Child) -> Result<std::process::ExitStatus> {
    Ok(terminate(&mut child)?)
}

/// SIGTERM, then wait for the exit, for a child still owned elsewhere.
pub(crate) fn terminate(
    child: &mut std::process::Child,
) -> std::io::Result<std::process::ExitStatus> {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait()
}

/// The machine's MariaDB (127.0.0.1:3306, root, empty password): plain multi-row INSERTs, then
/// the whole chain client host -> DTLS -> server host -> MySQL rows, then the drain after an
/// hour's outage.
fn end_to_end(gateway: &Path) -> Result<()> {
    sql("DROP DATABASE IF EXISTS gw_bench; CREATE DATABASE gw_bench")?;
    println!("== MySQL baseline: plain multi-row INSERTs into the same MariaDB");
    let out = example_cmd("gateway-plugin-mysql", "insert_baseline")
        .args(["--", "mysql://root@127.0.0.1:3306/gw_bench", "1000000"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("   {text}");
    let baseline: f64 = text
        .split(" = ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .context("no baseline figure")?;

    println!("== end to end: bench/e2e-client.toml (sequence -> disk buffer -> coaps-uplink) -> DTLS -> bench/e2e-server.toml (coaps-ingress -> mysql)");
    for d in [
        "data/bench-e2e-server",
        "data/bench-e2e-client",
        "data/bench-outage-client",
    ] {
        let _ = std::fs::remove_dir_all(root().join(d));
    }
    let server = start(gateway, "bench/e2e-server.toml", &[])?;
    std::thread::sleep(Duration::from_millis(500));
    let mut client = start(
        gateway,
        "bench/e2e-client.toml",
        &["--until-sources-finish"],
    )?;
    // Sustained: from the first 100,000 rows to the last, so that start-up (processes, the
    // DTLS handshake, creating the table) does not count.
    let n = 1_000_000;
    let rss = RssSampler::start(client.id());
    let measured = wait_rows(100_000, Duration::from_secs(300)).and_then(|first| {
        let from = rss.mark();
        Ok((first, from, wait_rows(n, Duration::from_secs(600))?))
    });
    let _ = client.wait();
    let (first, from, took) = measured?;
    let rate = (n - 100_000) as f64 / took.as_secs_f64();
    println!(
        "   {n} readings from the client's source into MySQL rows; the first 100,000 after {:.2} s, the other 900,000 in {:.2} s = {rate:.0} readings/s sustained, {:.0} % of the baseline",
        first.as_secs_f64(),
        took.as_secs_f64(),
        100.0 * rate / baseline
    );
    if let Some((at, last, peak)) = rss.span(from) {
        println!(
            "   the client host's (the Pi side's) RSS over those 900,000: {at} kB at the first, {last} kB at the last, {peak} kB at most (read every 100 ms)"
        );
    }
    let _ = stop(server);

    println!("== drain after a one-hour outage at 10 readings/s: 36,000 readings buffered on the Pi side (bench/outage-client.toml), then the server comes up");
    sql("DROP DATABASE IF EXISTS gw_bench; CREATE DATABASE gw_bench")?;
    // What a run before left (its `emitted` says 36000 at once) would start the server while
    // the client is still starting: a race, not an outage.
    let data = root().join("data/bench-outage-client");
    if data.exists() {
        std::fs::remove_dir_all(&data)?;
    }
    let client = start(gateway, "bench/outage-client.toml", &[])?;
    let emitted = data.join("emitted");
    let t0 = Instant::now();
    while std::fs::read_to_string(&emitted)
        .ok()
        .as_deref()
        .map(str::trim)
        != Some("36000")
    {
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = stop(client);
            bail!("the outage client did not buffer 36,000 readings within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its first reading comes at once, long before the server is up: the 36,000 on disk.
    let rss = RssSampler::start(client.id());
    let server = start(gateway, "bench/e2e-server.toml", &[])?;
    let up = Instant::now();
    let first = wait_rows(1, Duration::from_secs(120));
    let all = first.and_then(|f| {
        wait_rows(36_000, Duration::from_secs(600))?;
        Ok((f, up.elapsed()))
    });
    let drained = rss.span(0);
    let _ = stop(client);
    let _ = stop(server);
    let (first, all) = all?;
    println!(
        "   first rows {:.1} s after the server came up (the uplink's retry backoff, at most 30 s as in client.toml); all 36,000 after {:.1} s",
        first.as_secs_f64(),
        all.as_secs_f64()
    );
    if let Some((buffered, last, peak)) = drained {
        println!(
            "   the client host's RSS: {buffered} kB with the 36,000 buffered, {last} kB once they were stored, {peak} kB at most during the drain"
        );
    }
    Ok(())
}

/// Runs `gateway run --config CONFIG` for `secs` seconds and prints its resident memory: RSS,
/// and PSS (shared library pages divided among the processes that map them).
fn resident(gateway: &Path, config: &str, secs: u64) -> Result<()> {
    resident_scraped(gateway, config, secs, None)
}

/// [`resident`], with the metrics page at `scrape` read twice meanwhile (a page served is
/// part of what it costs).
fn resident_scraped(gateway: &Path, config: &str, secs: u64, scrape: Option<&str>) -> Result<()> {
    let child = start(gateway, config, &[])?;
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(secs / 2));
        if let Some(addr) = scrape {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect(addr)?;
            c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
            let mut page = String::new();
            c.read_to_string(&mut page)?;
            if !page.starts_with("HTTP/1.0 200") {
                bail!("the metrics page at {addr} answered {page:?}");
            }
        }
    }
    let (rss, pss) = (
        proc_kb(child.id(), "status", "VmRSS:"),
        proc_kb(child.id(), "smaps_rollup", "Pss:"),
    );
    let status = stop(child)?;
    match (rss, pss) {
        (Some(r), Some(p)) => {
            println!(
                "   VmRSS {r} kB ({:.1} MB), PSS {p} kB ({:.1} MB) after {secs} s; exit {status}",
                r as f64 / 1024.0,
                p as f64 / 1024.0
            )
        }
        (Some(r), None) => println!(
            "   VmRSS {r} kB ({:.1} MB) after {secs} s (PSS: cannot read /proc/PID/smaps_rollup); exit {status}",
            r as f64 / 1024.0
        ),
        _ => println!("   could not read /proc/PID/status"),
    }
    Ok(())
}

fn sizes(dir: &Path) -> Result<()> {
    println!("== stripped release sizes ({})", dir.display());
    let mut total = 0;
    for (_, name) in dist::FILES {
        let len = std::fs::metadata(dir.join(name))
            .with_context(|| format!("{name} missing"))?
            .len();
        total += len;
        println!(
            "   {name:<16} {:>9} bytes ({:.2} MB)",
            len,
            len as f64 / 1048576.0
        );
    }
    println!(
        "   {:<16} {:>9} bytes ({:.2} MB)",
        "total",
        total,
        total as f64 / 1048576.0
    );
    Ok(())
}

/// The SDK's version, from its manifest.
fn gateway_sdk_version() -> Result<String> {
    let text = std::fs::read_to_string(root().join("sdk/Cargo.toml"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .map(str::to_owned)
        .context("sdk/Cargo.toml has no version line")
}

/// What `gateway run --until-sources-finish --log-level info` said its sink wrote: readings,
/// and readings per second (the run failing is an error with its log).
fn sink_wrote(out: &std::process::Output) -> Result<(usize, f64)> {
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("the sink's run failed:\n{log}");
    }
    let line = log
        .lines()
        .find(|l| l.contains("sink wrote"))
        .context("no throughput line in the log")?;
    line.split("sink wrote ")
        .nth(1)
        .and_then(|r| {
            let n: usize = r.split(' ').next()?.parse().ok()?;
            let rate: f64 = r.split(" s (").nth(1)?.split(' ').next()?.parse().ok()?;
            Some((n, rate))
        })
        .with_context(|| format!("cannot read the figures in {line}"))
}
