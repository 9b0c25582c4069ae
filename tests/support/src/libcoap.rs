//! libcoap's command-line client (Debian's libcoap3-bin, OpenSSL flavour) as a peer in tests.
//! Shared by the coaps plugin's interop tests and the host's test of the distribution build.

use std::process::Command;

/// Whether `coap-client-openssl` is installed. CI installs it (`.ci/run`), and there its absence
/// fails the test; on a developer machine without it, the test says so loudly and passes.
pub fn have_libcoap() -> bool {
    let ok = Command::new("coap-client-openssl")
        .arg("-h")
        .output()
        .is_ok();
    assert!(
        ok || std::env::var("CI").is_err(),
        "coap-client-openssl is missing: apt-get install libcoap3-bin"
    );
    if !ok {
        eprintln!("SKIPPED: libcoap3-bin is not installed");
    }
    ok
}

/// Runs `coap-client-openssl ARGS` and returns what it printed. It exits 0 even when the
/// handshake fails: check what it printed and what arrived, not its exit code.
pub fn coap_client(args: &[&str]) -> String {
    let out = Command::new("coap-client-openssl")
        .args(args)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// libcoap's example server (`coap-server-openssl`), killed when dropped.
pub struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// libcoap's example server on 127.0.0.1 with a certificate: plain CoAP on `port`, DTLS on
/// `port + 1`.
pub fn server_with_cert(port: u16, cert: &std::path::Path, key: &std::path::Path) -> Server {
    let port = port.to_string();
    server(&[
        "-A".as_ref(),
        "127.0.0.1".as_ref(),
        "-p".as_ref(),
        port.as_ref(),
        "-v".as_ref(),
        "0".as_ref(),
        "-c".as_ref(),
        cert.as_os_str(),
        "-j".as_ref(),
        key.as_os_str(),
    ])
}

/// Starts `coap-server-openssl ARGS` quietly and gives it half a second to bind. With `-p P`
/// it takes plain CoAP on P and DTLS on P + 1.
pub fn server(args: &[&std::ffi::OsStr]) -> Server {
    let child = Command::new("coap-server-openssl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("coap-server-openssl starts");
    std::thread::sleep(std::time::Duration::from_millis(500));
    Server(child)
}
