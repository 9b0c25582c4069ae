//! A NATS server with JetStream of a test's own: Debian's `nats-server` on a free port of
//! 127.0.0.1 with its store in a directory the caller gives, so that a test may kill it (as a
//! crash would) and start it again with its streams.

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The server; killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    store: PathBuf,
    /// Options it is started with beside the usual ones ([`NatsServer::start_with`]).
    options: Vec<String>,
    /// Its client port.
    pub port: u16,
}

impl NatsServer {
    /// Starts one with its store in `store`, on a port it picks itself: a port found free
    /// here and handed to it could be taken meanwhile by another test's server, and this one
    /// would then talk to that one (and fail once that test kills it).
    pub fn start(store: PathBuf) -> NatsServer {
        NatsServer::start_with(store, &[])
    }

    /// [`NatsServer::start`], with `options` too (`--tls`, say), kept for restarts.
    pub fn start_with(store: PathBuf, options: &[String]) -> NatsServer {
        let mut n = NatsServer {
            child: None,
            store,
            options: options.to_vec(),
            port: 0,
        };
        n.spawn("-1");
        let ports = n.store.join("ports");
        let pid = n.child.as_ref().expect("spawned").id();
        let file = ports.join(format!("nats-server_{pid}.ports"));
        let end = Instant::now() + Duration::from_secs(10);
        n.port = loop {
            let port = std::fs::read_to_string(&file).ok().and_then(|t| {
                // A server with TLS lists its client port as tls://.
                let at = t.find("://127.0.0.1:")? + "://127.0.0.1:".len();
                t[at..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            });
            if let Some(p) = port {
                break p;
            }
            assert!(Instant::now() < end, "nats-server did not say its port");
            std::thread::sleep(Duration::from_millis(20));
        };
        n.wait_up();
        n
    }

    /// Starts it again on its port, and waits until it takes connections.
    pub fn up(&mut self) {
        self.spawn(&self.port.to_string());
        self.wait_up();
    }

    fn spawn(&mut self, port: &str) {
        let ports = self.store.join("ports");
        std::fs::create_dir_all(&ports).unwrap();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", port, "-js", "--ports_file_dir"])
            .arg(&ports)
            .arg("-sd")
            .arg(&self.store)
            .args(&self.options)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (Debian's nats-server; `cargo xtask test` installs it)");
        self.child = Some(child);
    }

    /// Waits until the server takes connections; fails if it exited (its port taken).
    fn wait_up(&mut self) {
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "nats-server exited ({status}): is port {} taken?",
                    self.port
                );
            }
            assert!(Instant::now() < end, "nats-server did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills it with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends it `signal` (SIGSTOP to make it stall, SIGCONT to let it go on).
    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("running").id();
        // SAFETY: kill(2) on the pid of our own child, which has not been waited for.
        assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
