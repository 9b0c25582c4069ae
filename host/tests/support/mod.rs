//! Shared by the host's integration tests: builds the real plugin libraries once, writes
//! configs, and runs the real `gateway` binary as a child process.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The directory of the `gateway` binary under test (`target/debug` or, under
/// `cargo test --release`, `target/release`).
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_gateway"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `cargo COMMAND ARGS` in the workspace, in the profile of the binary under test, so
/// that what it builds lands next to it.
pub fn cargo(command: &str, args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let release = bin_dir().ends_with("release");
    let status = Command::new(cargo)
        .current_dir(workspace())
        .arg(command)
        .arg("--quiet")
        .args(release.then_some("--release"))
        .args(args)
        .status()
        .expect("run cargo");
    assert!(status.success(), "cargo {command} {args:?} failed");
}

fn cargo_build(args: &[&str]) {
    cargo("build", args)
}

/// The packages the tests load, and the file each builds.
const BUILT: &[(&str, &str)] = &[
    ("gateway-plugin-console", "libconsole.so"),
    ("gateway-plugin-example", "libexample.so"),
    ("gateway-plugin-ds18b20", "libds18b20.so"),
    ("gateway-plugin-ublox7", "libublox7.so"),
    ("gateway-plugin-system", "libsystem.so"),
    ("gateway-plugin-coaps-uplink", "libcoaps_uplink.so"),
    ("gateway-plugin-coaps-ingress", "libcoaps_ingress.so"),
    ("gateway-plugin-sqlite", "libsqlite.so"),
    ("gateway-plugin-mysql", "libmysql.so"),
    ("gateway-plugin-postgres", "libpostgres.so"),
    ("gateway-plugin-mqtt", "libmqtt.so"),
    ("gateway-plugin-nats", "libnats.so"),
    ("gateway-testkit-plugins", "libtestkit.so"),
    ("gateway-incompatible-plugin", "libincompatible.so"),
    ("gateway-mislaid-plugin", "libmislaid.so"),
    ("gateway-unchecked-plugin", "libunchecked.so"),
    ("gateway-malformed-plugin", "libmalformed.so"),
    // The `gateway-certs` tool that `gateway certs` runs.
    ("gateway-pki", "gateway-certs"),
    // The client that `gateway coap` runs.
    ("gateway-coap-cli", "gateway-coap"),
    // The load generator, which `load.rs` points at the real ingress.
    ("gateway-loadgen", "gateway-load"),
];

/// The directory the binary under test is in, where cargo puts the libraries it builds.
pub fn built_dir() -> PathBuf {
    bin_dir()
}

/// The directory holding freshly built plugin libraries (built once per test binary; cargo
/// makes the second build a no-op). The incompatible, mislaid, unchecked and malformed fixtures are not default
/// members: a plain `cargo build` leaves them out, so `gateway plugins` does not list them next to
/// a development build.
pub fn plugin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let args: Vec<&str> = BUILT.iter().flat_map(|(p, _)| ["-p", p]).collect();
        cargo_build(&args);
        let dir = bin_dir();
        for (_, file) in BUILT {
            assert!(
                dir.join(file).exists(),
                "{file} was not built into {}",
                dir.display()
            );
        }
        dir
    })
    .clone()
}

/// A free local UDP port (bound once and let go).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of `series` (its name and labels, as written) on a metrics page `text`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A free local TCP port.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The number after `needle` (say `" readings="`) in `line`, if there is one.
pub fn log_u64(line: &str, needle: &str) -> Option<u64> {
    let rest = &line[line.find(needle)? + needle.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A temporary directory with a config file in it.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub fn new() -> Self {
        Setup {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// Writes `gateway.toml` with `[gateway]` pointing at the plugin dir, then `body`.
    pub fn config(&self, gateway_extra: &str, body: &str) -> PathBuf {
        self.config_named(
            "gateway",
            "test",
            &format!("stats_interval = \"0s\"\n{gateway_extra}"),
            body,
        )
    }
    /// Writes `NAME.toml`: `[gateway]` for device `device` with the plugin dir, then
    /// `gateway_extra` and `body`.
    pub fn config_named(
        &self,
        name: &str,
        device: &str,
        gateway_extra: &str,
        body: &str,
    ) -> PathBuf {
        let text = format!(
            "[gateway]\ndevice = {device:?}\nplugin_dir = {:?}\n{gateway_extra}\n{body}",
            plugin_dir().display().to_string()
        );
        let p = self.path(&format!("{name}.toml"));
        std::fs::write(&p, text).unwrap();
        p
    }
    /// Writes `server.toml`: the `[gateway]` of a server (device `server`, its data under
    /// `server-data`, no periodic stats), then `body`.
    pub fn server_config(&self, body: &str) -> PathBuf {
        self.config_named(
            "server",
            "server",
            "stats_interval = \"0s\"\ndata_dir = \"server-data\"",
            body,
        )
    }
    /// Lines of a file (empty if missing).
    pub fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.path(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
    /// The last `n` lines of each of `files`, under a header each: what a failing test of
    /// several processes shows.
    pub fn tails(&self, files: &[&str], n: usize) -> String {
        files
            .iter()
            .map(|f| {
                let lines = self.lines(f);
                format!(
                    "--- {f} ---\n{}",
                    lines[lines.len().saturating_sub(n)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
    /// Values recorded by the `recorder` sink for `sensor`, in file order.
    pub fn recorded(&self, file: &str, sensor: &str) -> Vec<i64> {
        self.lines(file)
            .iter()
            .filter_map(|l| {
                let mut parts = l.split(' ');
                (parts.next()? == sensor)
                    .then(|| parts.next()?.parse().ok())
                    .flatten()
            })
            .collect()
    }
}

/// Runs `gateway ARGS` to completion, returning status, stdout, stderr.
pub fn gateway(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .env_remove("GATEWAY_LOG")
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `gateway run`.
pub struct Running {
    pub child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Running {
    pub fn start(setup: &Setup, config: &Path, extra: &[&str]) -> Running {
        let stdout = setup.path("stdout.log");
        let stderr = setup.path("stderr.log");
        Self::spawn(
            Path::new(env!("CARGO_BIN_EXE_gateway")),
            config,
            extra,
            stdout,
            stderr,
            false,
        )
    }
    /// Starts another build's `gateway` binary (with the plugins next to it).
    pub fn start_bin(bin: &Path, setup: &Setup, config: &Path) -> Running {
        let stdout = setup.path("stdout.log");
        let stderr = setup.path("stderr.log");
        Self::spawn(bin, config, &[], stdout, stderr, false)
    }
    /// Starts `gateway run` with its output appended to `NAME.stdout.log` and `NAME.stderr.log`
    /// (so a restarted process adds to the same logs).
    pub fn start_named(setup: &Setup, name: &str, config: &Path) -> Running {
        let stdout = setup.path(&format!("{name}.stdout.log"));
        let stderr = setup.path(&format!("{name}.stderr.log"));
        Self::spawn(
            Path::new(env!("CARGO_BIN_EXE_gateway")),
            config,
            &[],
            stdout,
            stderr,
            true,
        )
    }
    fn spawn(
        bin: &Path,
        config: &Path,
        extra: &[&str],
        stdout: PathBuf,
        stderr: PathBuf,
        append: bool,
    ) -> Running {
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(p)
                .unwrap()
        };
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(extra)
            .env_remove("GATEWAY_LOG")
            .stdin(Stdio::null())
            .stdout(open(&stdout))
            .stderr(open(&stderr))
            .spawn()
            .unwrap();
        Running {
            child,
            stdout,
            stderr,
        }
    }
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }
    /// Waits for the process to exit, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }
    /// Waits until stderr contains `needle`.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if self.stderr().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
    /// Resident set size in kB, from /proc.
    pub fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
    /// SIGTERM, then wait; panics with the log if it does not exit in time.
    pub fn stop(&mut self, limit: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match self.wait(limit) {
            Some(s) => s,
            None => {
                let _ = self.child.kill();
                panic!(
                    "gateway did not exit within {limit:?} of SIGTERM; stderr:\n{}",
                    self.stderr()
                );
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts `values` is exactly 0, 1, ..., n-1.
pub fn assert_contiguous(values: &[i64], what: &str) {
    for (i, v) in values.iter().enumerate() {
        assert_eq!(
            *v, i as i64,
            "{what}: value #{i} is {v}: a reading was lost or repeated (all: {values:?})"
        );
    }
}

/// The `[sources.ingress]` table of a `coaps-ingress` on 127.0.0.1:`port` with the server
/// certificate of `certs` (as [`make_certs`] makes them), taking devices whose certificates
/// its CA issued. Settings of the caller's may follow it.
pub fn ingress_source(certs: &Path, port: u16) -> String {
    let c = |f: &str| certs.join(f).display().to_string();
    format!(
        "[sources.ingress]\nplugin = \"coaps-ingress\"\nlisten = \"127.0.0.1:{port}\"\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n",
        c("server.pem"),
        c("server.key"),
        c("ca.pem")
    )
}

/// Development certificates (CA, server for localhost/127.0.0.1, device `name`) in `dir`,
/// made with the real `gateway certs`.
pub fn make_certs(dir: &Path, device: &str) {
    plugin_dir();
    make_certs_with(Path::new(env!("CARGO_BIN_EXE_gateway")), dir, device);
}

/// The same with another build's `gateway` binary.
pub fn make_certs_with(gateway: &Path, dir: &Path, device: &str) {
    let d = dir.to_str().unwrap();
    for args in [
        &["certs", "init", "--force", "--dir", d][..],
        &["certs", "server", "--dir", d],
        &["certs", "device", device, "--dir", d],
    ] {
        let out = Command::new(gateway).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "gateway {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The quick start's chain as it runs on a Pi, in one process: two simulated DS18B20 probes and
/// the GPS replay into a disk-buffered `coaps-uplink`, over DTLS on loopback (`port`) into
/// `coaps-ingress`, into `console`. Certificates for device `pi-01` are expected under `certs/` of `s`.
pub fn pi_chain_config(s: &Setup, port: u16) -> PathBuf {
    let gps_log = workspace().join("plugins/ublox7/tests/fixtures/gpsd-gr601-w.log");
    let config = s.path("dist.toml");
    std::fs::write(
        &config,
        format!(
            r#"[gateway]
device = "pi-01"
stats_interval = "0s"

[sources.temp]
plugin = "ds18b20"
root = "w1"
simulate = 2
interval = "500ms"

[sources.gps]
plugin = "ublox7"
replay = {gps_log:?}
replay_loop = true

[sinks.uplink]
plugin = "coaps-uplink"
inputs = ["temp", "gps"]
uri = "coaps://localhost:{port}/gpsflowtemp"
ca_file = "certs/ca.pem"
cert_file = "certs/device-pi-01.pem"
key_file = "certs/device-pi-01.key"
batch_timeout = "100ms"
# Both ends are in one process, and a shutdown stops the ingress (a source) before the uplink
# (a sink) has drained: what the uplink still holds then waits on disk, as on a Pi.
buffer = {{ type = "disk" }}

[sources.ingress]
plugin = "coaps-ingress"
listen = "127.0.0.1:{port}"
cert_file = "certs/server.pem"
key_file = "certs/server.key"
client_ca_file = "certs/ca.pem"
require_client_cert = true

[sinks.console]
plugin = "console"
inputs = ["ingress"]
"#
        ),
    )
    .unwrap();
    config
}

/// Waits (at most `limit`) for the chain of [`pi_chain_config`] to establish its DTLS session,
/// lets readings flow for 3 s, stops it, and checks that temperatures and positions arrived.
pub fn check_pi_chain(gw: &mut Running, limit: Duration) {
    let arrived = gw.wait_for_log("DTLS session established", limit);
    std::thread::sleep(Duration::from_secs(3));
    let status = gw.stop(Duration::from_secs(30));
    let (out, err) = (gw.stdout(), gw.stderr());
    assert!(arrived && status.success(), "{err}");
    assert!(err.contains("identity=Some(\"pi-01\")"), "{err}");
    assert!(
        out.lines()
            .any(|l| l.contains("pi-01/28-") && l.contains(" temperature=")),
        "temperatures arrived over DTLS:\n{out}"
    );
    assert!(
        out.lines().any(|l| l.contains("pi-01/gps latitude=")),
        "positions arrived over DTLS:\n{out}"
    );
}
