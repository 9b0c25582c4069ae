//! `cargo xtask test`: the README's test command. On a fresh Debian 12 machine with the Rust
//! toolchain it installs what the suite needs and starts what it talks to, then runs it:
//!
//! - Debian packages: `pkg-config` and `libssl-dev` (the openssl crate), `libcoap3-bin` (the
//!   interop tests' peer), `perl`, `make` and `binutils` (the distribution build's OpenSSL and
//!   its test), `gcc-aarch64-linux-gnu`, `libc6-dev-arm64-cross` and `qemu-user-static` (the
//!   arm64 package, built and run under emulation), `mariadb-server` (the mysql plugin's
//!   tests, which also start a second server of their own) where `mariadbd` is not installed;
//! - the Rust standard library for `aarch64-unknown-linux-gnu` (`rustup target add`);
//! - MariaDB on 127.0.0.1:3306 (root, no password), started if it does not answer;
//! - PostgreSQL (`postgresql` where it is not installed) on its Unix socket, started if it does
//!   not answer, with a role `root` and a database `test` (the postgres plugin's tests connect
//!   through the socket as root, by peer authentication), serving TLS on TCP (Debian's
//!   default; turned on with Debian's snakeoil certificate where it is off: the plugin's TLS
//!   tests connect to 127.0.0.1 with `verify-full`);
//! - `nats-server` (the nats plugin's tests start servers of their own with it), `nginx` and
//!   `libnginx-mod-stream` (the load-balancer test starts an nginx of its own);
//! - Mosquitto (`mosquitto` where it is not installed) on 127.0.0.1:1883, started if it does
//!   not answer, and `mosquitto-clients` (the mqtt plugin's tests publish to it and watch);
//! - with `CI` set (as CI sets it): rustfmt, clippy and cargo-fuzz, for the checks CI adds
//!   around the suite (see [`crate::ci`]).
//!
//! As root it installs and starts them itself; otherwise through `sudo -n` where that works
//! without a password, and where it does not, it stops and prints the command to run.

use anyhow::{bail, Context, Result};
use std::{
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// What the suite needs from Debian.
const PACKAGES: &[&str] = &[
    "pkg-config",
    "libssl-dev",
    "libcoap3-bin",
    "perl",
    "make",
    "binutils",
    // The arm64 package, built and run under emulation (host/tests/deb.rs).
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "qemu-user-static",
    // mosquitto_sub, which watches what the mqtt plugin's tests publish.
    "mosquitto-clients",
    // The nats plugin's tests and host/tests/tiers.rs start NATS servers of their own.
    "nats-server",
    // host/tests/balancer.rs puts nginx's UDP balancer in front of two ingress instances.
    "nginx",
    "libnginx-mod-stream",
];

/// Rust targets the suite builds for besides this machine's.
const TARGETS: &[&str] = &["aarch64-unknown-linux-gnu"];

const MARIADB: &str = "/usr/sbin/mariadbd";
const MOSQUITTO: &str = "/usr/sbin/mosquitto";

fn quiet(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// How this process can run a command as root: directly, through `sudo -n`, or not at all.
fn as_root() -> Option<Vec<&'static str>> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() == "0" {
        return Some(vec![]);
    }
    quiet("sudo", &["-n", "true"]).then(|| vec!["sudo", "-n"])
}

fn root_command(prefix: &[&str], args: &[&str]) -> Command {
    let all: Vec<&str> = prefix.iter().chain(args).copied().collect();
    let mut c = Command::new(all[0]);
    c.args(&all[1..]).env("DEBIAN_FRONTEND", "noninteractive");
    c
}

/// Whether the PostgreSQL of the postgres plugin's tests takes `root` on database `test`.
fn postgres_ready() -> bool {
    quiet(
        "psql",
        &[
            "-h",
            "/var/run/postgresql",
            "-U",
            "root",
            "-d",
            "test",
            "-c",
            "SELECT 1",
        ],
    )
}

/// Installs, starts and sets up PostgreSQL for the postgres plugin's tests where needed.
fn postgres(root: &Option<Vec<&'static str>>) -> Result<()> {
    if postgres_ready() {
        return Ok(());
    }
    let Some(prefix) = root else {
        bail!("the postgres plugin's tests need PostgreSQL on /var/run/postgresql with a role root and a database test\n  sudo apt-get install -y postgresql && sudo -u postgres createuser -s root && sudo -u postgres createdb -O root test");
    };
    if !std::path::Path::new("/usr/lib/postgresql").exists() {
        eprintln!("== installing postgresql");
        crate::run(root_command(
            prefix,
            &["apt-get", "install", "-y", "-qq", "postgresql"],
        ))?;
    }
    let answers = || quiet("pg_isready", &["-q", "-h", "/var/run/postgresql"]);
    if !answers() {
        eprintln!("== starting PostgreSQL");
        let clusters = Command::new("pg_lsclusters")
            .arg("-h")
            .output()
            .context("pg_lsclusters")?;
        for line in String::from_utf8_lossy(&clusters.stdout).lines() {
            let mut f = line.split_whitespace();
            if let (Some(version), Some(name)) = (f.next(), f.next()) {
                let _ = crate::run(root_command(
                    prefix,
                    &[
                        "pg_ctlcluster",
                        "--skip-systemctl-redirect",
                        version,
                        name,
                        "start",
                    ],
                ));
            }
        }
        let end = Instant::now() + Duration::from_secs(60);
        while !answers() {
            if Instant::now() > end {
                bail!(
                    "PostgreSQL was started but does not answer on /var/run/postgresql after 60 s"
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let role = "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'root') THEN CREATE ROLE root SUPERUSER LOGIN; END IF; END $$";
    crate::run(root_command(
        prefix,
        &["runuser", "-u", "postgres", "--", "psql", "-q", "-c", role],
    ))?;
    if !postgres_ready() {
        crate::run(root_command(
            prefix,
            &[
                "runuser", "-u", "postgres", "--", "createdb", "-O", "root", "test",
            ],
        ))?;
    }
    if !postgres_ready() {
        bail!(
            "PostgreSQL runs, but root cannot connect to database test through /var/run/postgresql"
        );
    }
    Ok(())
}

/// Debian's self-signed certificate, which its PostgreSQL serves by default.
const SNAKEOIL: (&str, &str) = (
    "/etc/ssl/certs/ssl-cert-snakeoil.pem",
    "/etc/ssl/private/ssl-cert-snakeoil.key",
);

/// Turns on PostgreSQL's TLS where it is off (Debian's default is on, with its snakeoil
/// certificate): the postgres plugin's TLS tests connect over TCP with `verify-full`.
fn postgres_tls(root: &Option<Vec<&'static str>>) -> Result<()> {
    if crate::pg::psql("SHOW ssl")? == "on" {
        return Ok(());
    }
    eprintln!("== turning on PostgreSQL's TLS with Debian's snakeoil certificate");
    if !std::path::Path::new(SNAKEOIL.0).exists() {
        let Some(prefix) = root else {
            bail!(
                "the postgres plugin's TLS tests need PostgreSQL to serve TLS
  sudo make-ssl-cert generate-default-snakeoil, then run `cargo xtask test` again"
            );
        };
        crate::run(root_command(
            prefix,
            &["make-ssl-cert", "generate-default-snakeoil"],
        ))?;
    }
    crate::pg::psql(&format!(
        "ALTER SYSTEM SET ssl_cert_file = '{}'",
        SNAKEOIL.0
    ))?;
    crate::pg::psql(&format!("ALTER SYSTEM SET ssl_key_file = '{}'", SNAKEOIL.1))?;
    crate::pg::psql("ALTER SYSTEM SET ssl = on")?;
    crate::pg::psql("SELECT pg_reload_conf()")?;
    std::thread::sleep(Duration::from_millis(500));
    if crate::pg::psql("SHOW ssl")? != "on" {
        bail!("PostgreSQL's TLS stays off after `ALTER SYSTEM SET ssl = on` and a reload: its log says why (is {} readable by the postgres user?)", SNAKEOIL.1);
    }
    Ok(())
}

fn answers(addr: &str) -> bool {
    TcpStream::connect_timeout(&addr.parse().expect("an address"), Duration::from_secs(1)).is_ok()
}

fn mariadb_answers() -> bool {
    answers("127.0.0.1:3306")
}

/// Starts Mosquitto on 127.0.0.1:1883 (the mqtt plugin's tests publish to it) where nothing
/// answers there; Debian's configuration without a listener takes local clients only.
fn mosquitto(root: &Option<Vec<&'static str>>) -> Result<()> {
    if answers("127.0.0.1:1883") {
        return Ok(());
    }
    let Some(prefix) = root else {
        bail!("the mqtt plugin's tests need an MQTT broker on 127.0.0.1:1883\n  sudo apt-get install -y mosquitto && sudo mosquitto -d -c /etc/mosquitto/mosquitto.conf");
    };
    if !std::path::Path::new(MOSQUITTO).exists() {
        eprintln!("== installing mosquitto");
        crate::run(root_command(
            prefix,
            &["apt-get", "install", "-y", "-qq", "mosquitto"],
        ))?;
    }
    if answers("127.0.0.1:1883") {
        return Ok(()); // the package's service started it
    }
    eprintln!("== starting Mosquitto");
    // Its pid file's directory lives in /run, which a container may not have kept.
    let _ = root_command(
        prefix,
        &[
            "install",
            "-d",
            "-o",
            "mosquitto",
            "-g",
            "mosquitto",
            "/run/mosquitto",
        ],
    )
    .status();
    crate::run(root_command(
        prefix,
        &[MOSQUITTO, "-d", "-c", "/etc/mosquitto/mosquitto.conf"],
    ))?;
    let end = Instant::now() + Duration::from_secs(20);
    while !answers("127.0.0.1:1883") {
        if Instant::now() > end {
            bail!("Mosquitto was started but does not answer on 127.0.0.1:1883 after 20 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// The free space the suite wants, in GiB, on the disk of the build and on the disk of the
/// temporary directory: its builds (debug, release, the distribution build with its own
/// OpenSSL, arm64, the fuzz targets) and the tests' data (MariaDB data directories, disk
/// buffers) took 12.5 GiB at their peak in a CI run from an empty target directory.
const ROOM_GIB: f64 = 16.0;

/// The free space, in GiB, of the file system holding `path` (statvfs(3) through rustix, as
/// the `system` plugin reads it, without unsafe code).
fn free_gib(path: &std::path::Path) -> Option<f64> {
    let s = rustix::fs::statvfs(path).ok()?;
    // The unit of f_bavail; a file system that leaves f_frsize at 0 means f_bsize.
    let unit = if s.f_frsize == 0 {
        s.f_bsize
    } else {
        s.f_frsize
    };
    Some(s.f_bavail as f64 * unit as f64 / (1u64 << 30) as f64)
}

/// Says so when the build's disk or the temporary directory's has less room than the suite
/// takes: a full disk fails a test far from its cause (InnoDB's "error 28", say).
fn check_room() {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::root().join("target"));
    let target = if target.exists() {
        target
    } else {
        crate::root()
    };
    for (what, dir) in [
        ("the build", target),
        ("temporary files", std::env::temp_dir()),
    ] {
        match free_gib(&dir) {
            Some(gib) if gib < ROOM_GIB => eprintln!(
                "== warning: {gib:.1} GiB free for {what} ({}); the suite takes up to about 13 GiB: a test may fail for want of room",
                dir.display()
            ),
            Some(gib) => eprintln!("== {gib:.0} GiB free for {what} ({})", dir.display()),
            None => {}
        }
    }
}

/// Installs the missing packages and starts MariaDB (see the module's doc); `ci`: the CI
/// tools too.
pub fn prepare(ci: bool) -> Result<()> {
    check_room();
    let mut missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !quiet("dpkg", &["-s", p]))
        .collect();
    if !std::path::Path::new(MARIADB).exists() {
        missing.push("mariadb-server");
    }
    let root = as_root();
    if !missing.is_empty() {
        let list = missing.join(" ");
        let Some(prefix) = &root else {
            bail!("the tests need these Debian packages: {list}\n  install them: sudo apt-get install -y {list}\n  then run `cargo xtask test` again");
        };
        eprintln!("== installing {list}");
        crate::run(root_command(prefix, &["apt-get", "update", "-qq"]))?;
        let mut install = root_command(prefix, &["apt-get", "install", "-y", "-qq"]);
        install.args(&missing);
        crate::run(install).context("apt-get install")?;
    }
    if !mariadb_answers() {
        let Some(prefix) = &root else {
            bail!("MariaDB does not answer on 127.0.0.1:3306 (the mysql plugin's tests use it)\n  start it: sudo start-stop-daemon --start --oknodo --background --exec {MARIADB}");
        };
        eprintln!("== starting MariaDB");
        crate::run(root_command(
            prefix,
            &[
                "start-stop-daemon",
                "--start",
                "--oknodo",
                "--background",
                "--exec",
                MARIADB,
            ],
        ))?;
        let end = Instant::now() + Duration::from_secs(60);
        while !mariadb_answers() {
            if Instant::now() > end {
                bail!("MariaDB was started but does not answer on 127.0.0.1:3306 after 60 s");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    postgres(&root)?;
    postgres_tls(&root)?;
    mosquitto(&root)?;
    if quiet("rustup", &["--version"]) {
        let installed = Command::new("rustup")
            .args(["target", "list", "--installed"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for t in TARGETS
            .iter()
            .filter(|t| !installed.lines().any(|l| l == **t))
        {
            eprintln!("== adding the Rust target {t}");
            let mut c = Command::new("rustup");
            c.args(["target", "add", t]);
            crate::run(c).with_context(|| format!("rustup target add {t}"))?;
        }
    }
    if ci {
        if quiet("rustup", &["--version"]) {
            let _ = quiet("rustup", &["component", "add", "rustfmt", "clippy"]);
        }
        if !quiet("cargo", &["fuzz", "--version"]) {
            let mut c = Command::new("cargo");
            c.args(["install", "cargo-fuzz", "--locked"]);
            crate::run(c).context("cargo install cargo-fuzz")?;
        }
    }
    Ok(())
}
