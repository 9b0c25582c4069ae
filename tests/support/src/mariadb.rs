//! A MariaDB server of a test's own, from the machine's `mariadbd` (Debian's `mariadb-server`;
//! `cargo xtask test` installs it): a data directory made by `mariadb-install-db`, root without
//! a password, on a free port of 127.0.0.1. It can be stopped and started again on the same
//! data (a database outage), and it is killed when dropped. Queries go through the `mysql`
//! command-line client, so that a test needs no database driver of its own.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A private MariaDB server. See the module documentation.
pub struct MariaDb {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    /// Options the server is started with beside the usual ones ([`MariaDb::with_options`]).
    options: Vec<String>,
}

impl MariaDb {
    /// Makes a data directory in `dir` (created if needed); the server is not started.
    pub fn init(dir: &Path) -> MariaDb {
        let data = dir.join("data");
        // Temporary files of its own: bootstraps running at once (tests in parallel) in one
        // /tmp trip over each other's temporary tables ("Unknown table
        // 'mysql.tmp_user_sys'").
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let out = Command::new("mariadb-install-db")
            .env("TMPDIR", &tmp)
            .args(["--no-defaults", "--auth-root-authentication-method=normal"])
            .arg("--skip-test-db")
            .arg(format!("--datadir={}", data.display()))
            .args(user())
            .output()
            .expect("mariadb-install-db (Debian package mariadb-server; .ci/run installs it)");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        MariaDb {
            dir: dir.to_owned(),
            port: free_tcp_port(),
            child: None,
            options: Vec::new(),
        }
    }

    /// Starts (and restarts) the server with `options` too: `--ssl-cert=...`, say.
    pub fn with_options(mut self, options: &[String]) -> MariaDb {
        self.options = options.to_vec();
        self
    }

    /// Starts the server and waits until it answers (60 s at most).
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mariadbd.log"))
            .unwrap();
        let d = |f: &str| self.dir.join(f).display().to_string();
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d("data")))
            .arg(format!("--socket={}", d("sock")))
            .arg(format!("--pid-file={}", d("pid")))
            .arg(format!("--port={}", self.port))
            .arg(format!("--tmpdir={}", d("tmp")))
            .args(["--bind-address=127.0.0.1", "--skip-log-bin"])
            .args([
                "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=64M",
            ])
            .args(&self.options)
            .args(user())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start /usr/sbin/mariadbd");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(60);
        while self.try_query("SELECT 1").is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                let log = self.log();
                // InnoDB says "failed with error 28" (ENOSPC) for a full disk, and no more.
                let hint = if log.contains("error 28") {
                    format!(
                        "\n(error 28 is ENOSPC: the file system of {} is full)",
                        self.dir.display()
                    )
                } else {
                    String::new()
                };
                panic!(
                    "the test's MariaDB on port {} ended ({status}):\n{log}{hint}",
                    self.port
                );
            }
            assert!(
                Instant::now() < end,
                "the test's MariaDB did not come up within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (SIGTERM, as an operator would) and waits for it to end.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(60);
            while c.try_wait().unwrap().is_none() {
                assert!(Instant::now() < end, "MariaDB did not stop within 60 s");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mysql://root@127.0.0.1:PORT/DATABASE`.
    pub fn url(&self, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs `sql` as root; its rows, tab-separated, one per line; or the client's error.
    pub fn try_query(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("mysql")
            .args(["-h", "127.0.0.1", "-u", "root", "-N", "-B"])
            .arg(format!("-P{}", self.port))
            .args(["-e", sql])
            .output()
            .map_err(|e| format!("running the mysql client: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// [`MariaDb::try_query`], which must succeed.
    pub fn query(&self, sql: &str) -> String {
        self.try_query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mariadbd.log")).unwrap_or_default()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// mariadbd refuses to run as root unless told to.
fn user() -> Vec<String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        vec!["--user=root".into()]
    } else {
        Vec::new()
    }
}

/// A TCP port of 127.0.0.1 that nothing listens on now.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
