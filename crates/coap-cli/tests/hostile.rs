//! `gateway coap` against servers that answer block-wise in ways it must not take: for ever,
//! in the smallest blocks (16 bytes), where a GET stops after a bounded number of blocks and
//! `observe --for` ends on time while such a notification is being fetched; and with blocks
//! that do not make one answer (a later one without Block2, a short one, a POST's answer
//! whose ETag changes), where it stops with an error rather than print a body that is not
//! the resource's or send the POST again.

use gateway_coap::{
    coap_lite::{CoapOption, ResponseType},
    encode_uint, response, Block, Config as CoapConfig,
};
use gateway_coaps_tokio::{Bound, Handler, Incoming, Responder, ServerConfig, ServerOptions};
use gateway_dtls::ServerSettings;
use gateway_test_support::coaps;
use std::{
    collections::HashSet,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Answers every GET with the block asked for (block 0 if none), 16 bytes, "more follow".
struct Endless {
    responder: Responder,
    stop: Arc<AtomicBool>,
}

impl Handler for Endless {
    fn request(&mut self, inc: Incoming) {
        let num = inc
            .packet
            .get_first_option(CoapOption::Block2)
            .and_then(|v| Block::decode(v))
            .map_or(0, |b| b.num);
        let observing = inc.packet.get_first_option(CoapOption::Observe).is_some();
        let mut p = response(ResponseType::Content, "0123456789abcdef");
        p.add_option(
            CoapOption::Block2,
            Block {
                num,
                more: true,
                szx: 0,
            }
            .encode(),
        );
        if observing {
            p.add_option(CoapOption::Observe, encode_uint(1));
            register(&self.responder, inc, p);
        } else {
            self.responder.respond(inc.id, p);
        }
    }
    fn tick(&mut self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }
}

/// Answers `inc` with `p` (which carries an Observe option), registering its client.
fn register(responder: &Responder, inc: Incoming, p: gateway_coap::coap_lite::Packet) {
    let token = inc.packet.get_token().to_vec();
    responder.register(inc.id, inc.peer, token, p);
}

fn endless_server(dir: &Path) -> (u16, Arc<AtomicBool>) {
    serve(dir, |responder, stop| Endless { responder, stop })
}

/// A server on a port of its own, answering with the handler `make` makes, until the flag
/// it gives is set.
fn serve<H: Handler + Send + 'static>(
    dir: &Path,
    make: impl FnOnce(Responder, Arc<AtomicBool>) -> H,
) -> (u16, Arc<AtomicBool>) {
    coaps::certs(dir, "pi-01");
    let b = Bound::new(ServerOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        max_pending: 64,
        busy_poll: Duration::ZERO,
        server: ServerConfig {
            tls: ServerSettings {
                cert_file: Some(dir.join("server.pem")),
                key_file: Some(dir.join("server.key")),
                mtu: 1232,
                ..Default::default()
            },
            coap: CoapConfig::default(),
            max_sessions: 10,
            max_sessions_per_identity: 4,
            max_handshakes: 10,
            max_handshakes_per_address: 10,
            session_idle: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(5),
            require_identity: false,
            deny: HashSet::new(),
        },
    })
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let port = b.local_addr.port();
    let handler = make(b.responder.clone(), stop.clone());
    std::thread::spawn(move || b.run(Duration::from_millis(20), handler));
    (port, stop)
}

#[test]
fn a_server_that_sends_blocks_for_ever_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (port, stop) = endless_server(dir.path());
    let ca = dir.path().join("ca.pem");
    let uri = format!("coaps://localhost:{port}/big");
    let ca = ca.to_str().unwrap();

    // A GET: before, it went on until 64 MiB, four million 16-byte exchanges.
    let out = Command::new(env!("CARGO_BIN_EXE_gateway-coap"))
        .args(["get", &uri, "--ca", ca])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("over 65536 blocks"), "{err}");

    // observe --for 1s while the first notification is fetched block by block: before, --for
    // was looked at only between notifications.
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway-coap"))
        .args(["observe", &uri, "--ca", ca, "--for", "1s"])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success() && took < Duration::from_secs(5),
        "took {took:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop.store(true, Ordering::Relaxed);
}

/// How [`Tricky`] answers the request for a block past the first.
#[derive(Clone, Copy)]
enum Trick {
    /// The whole of some other answer, without Block2.
    NoBlock2,
    /// Block 0 of 10 bytes, saying more follow.
    Short,
    /// Each block with another ETag (the answer to a POST, which must not be sent again).
    NewEtag,
    /// No ETag, and the blocks after the first in another Content-Format.
    NewFormat,
}

/// Answers block 0 (16 bytes, more follow) and then as its [`Trick`] says; counts the
/// requests that carry a payload (POSTs sent whole).
struct Tricky {
    responder: Responder,
    stop: Arc<AtomicBool>,
    trick: Trick,
    whole: Arc<std::sync::atomic::AtomicUsize>,
}

impl Handler for Tricky {
    fn request(&mut self, inc: Incoming) {
        if !inc.packet.payload.is_empty() {
            self.whole.fetch_add(1, Ordering::Relaxed);
        }
        let num = inc
            .packet
            .get_first_option(CoapOption::Block2)
            .and_then(|v| Block::decode(v))
            .map_or(0, |b| b.num);
        let code = if inc.packet.payload.is_empty() && num == 0 {
            ResponseType::Content
        } else {
            ResponseType::Changed
        };
        let block = |p: &mut gateway_coap::coap_lite::Packet, more| {
            p.add_option(CoapOption::Block2, Block { num, more, szx: 0 }.encode());
        };
        let p = match (num, self.trick) {
            (0, Trick::Short) => {
                let mut p = response(code, "0123456789");
                block(&mut p, true);
                p
            }
            (_, Trick::NewFormat) => {
                let mut p = response(code, "0123456789abcdef");
                block(&mut p, num == 0);
                let format = if num == 0 { vec![] } else { vec![50] };
                p.add_option(CoapOption::ContentFormat, format);
                p
            }
            (0, _) | (_, Trick::NewEtag) => {
                let mut p = response(code, "0123456789abcdef");
                block(&mut p, num == 0);
                p.add_option(CoapOption::ETag, vec![num as u8]);
                p
            }
            (_, _) => response(ResponseType::Content, "some other answer"),
        };
        self.responder.respond(inc.id, p);
    }
    fn tick(&mut self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }
}

#[test]
fn blocks_that_do_not_make_one_answer_are_an_error_and_a_post_is_not_sent_again() {
    for (trick, method, said) in [
        (Trick::NoBlock2, "get", "without a Block2 option"),
        (Trick::Short, "get", "block 0 of 10 bytes"),
        (Trick::NewEtag, "post", "the request is not sent again"),
        // Found in a review: without an ETag, blocks of two representations made one body.
        (Trick::NewFormat, "get", "kept changing"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let whole = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = whole.clone();
        let (port, stop) = serve(dir.path(), move |responder, stop| Tricky {
            responder,
            stop,
            trick,
            whole: counted,
        });
        let uri = format!("coaps://localhost:{port}/r");
        let ca = dir.path().join("ca.pem");
        let out = Command::new(env!("CARGO_BIN_EXE_gateway-coap"))
            .args([method, &uri, "--ca", ca.to_str().unwrap()])
            .args(if method == "get" {
                &[][..]
            } else {
                &["-t", "text", "-p", "reading"][..]
            })
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(said), "{said}: {err}");
        assert!(
            out.stdout.is_empty(),
            "{said}: nothing printed as the answer"
        );
        if method == "post" {
            assert_eq!(whole.load(Ordering::Relaxed), 1, "the POST went once");
        }
        stop.store(true, Ordering::Relaxed);
    }
}

/// Before, `observe` waited for ever on an observation the server had lost: no notification,
/// no alert, nothing to end it. Past the last state's Max-Age (and a margin) it now asks the
/// server with a GET, and ends with exit 3 when no answer comes.
#[test]
fn an_observation_the_server_lost_without_a_word_ends_with_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let (port, stop) = gone_server(dir.path(), None);
    let (code, out, err) = observe(dir.path(), port, &["--timeout", "2s"]);
    stop.store(true, Ordering::Relaxed);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("the observation is lost"), "{err}");
    assert_eq!(out.trim(), "21.5");
}

/// Registers the first observer with a Max-Age of 1 s, then answers every later request with
/// `later` (4.04: the resource is gone, and no notification says so), or never again (`None`:
/// a server that lost the observation without a word, restarted or behind a NAT mapping gone).
struct Gone {
    responder: Responder,
    stop: Arc<AtomicBool>,
    answered: bool,
    later: Option<ResponseType>,
}

/// A [`Gone`] server on a port of its own.
fn gone_server(dir: &Path, later: Option<ResponseType>) -> (u16, Arc<AtomicBool>) {
    serve(dir, |responder, stop| Gone {
        responder,
        stop,
        answered: false,
        later,
    })
}

impl Handler for Gone {
    fn request(&mut self, inc: Incoming) {
        if std::mem::replace(&mut self.answered, true) {
            if let Some(code) = self.later {
                self.responder
                    .respond(inc.id, response(code, "no such sensor"));
            }
            return;
        }
        let mut p = response(ResponseType::Content, "21.5");
        p.add_option(CoapOption::Observe, encode_uint(1));
        p.add_option(CoapOption::MaxAge, encode_uint(1));
        register(&self.responder, inc, p);
    }
    fn tick(&mut self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }
}

/// Runs `gateway coap observe` on `port` with `args`, for 30 s at most: its exit code, stdout
/// and stderr.
fn observe(dir: &Path, port: u16, args: &[&str]) -> (Option<i32>, String, String) {
    let ca = dir.join("ca.pem");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway-coap"))
        .args(["observe", &format!("coaps://localhost:{port}/t")])
        .args(["--ca", ca.to_str().unwrap()])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// Found in a review: any answer to the check past Max-Age renewed the wait, a 4.04 too, so
/// an observation of a resource that had gone waited for ever.
#[test]
fn an_observation_whose_resource_is_gone_ends_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let (port, stop) = gone_server(dir.path(), Some(ResponseType::NotFound));
    let (code, out, err) = observe(dir.path(), port, &["--timeout", "2s"]);
    stop.store(true, Ordering::Relaxed);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("4.04 no such sensor"), "{err}");
    assert!(err.contains("answered a GET with an error"), "{err}");
    assert_eq!(out.trim(), "21.5", "{err}");
}

/// Registers with the first block of a state (16 bytes, more to come), and answers every
/// other request with 5.03: a state that can never be fetched whole.
struct BrokenBlocks {
    responder: Responder,
    stop: Arc<AtomicBool>,
}

impl Handler for BrokenBlocks {
    fn request(&mut self, inc: Incoming) {
        if inc.packet.get_first_option(CoapOption::Observe).is_none() {
            self.responder.respond(
                inc.id,
                response(ResponseType::ServiceUnavailable, "overloaded"),
            );
            return;
        }
        let mut p = response(ResponseType::Content, "0123456789abcdef");
        let first = Block {
            num: 0,
            more: true,
            szx: 0,
        };
        p.add_option(CoapOption::Block2, first.encode());
        p.add_option(CoapOption::Observe, encode_uint(1));
        register(&self.responder, inc, p);
    }
    fn tick(&mut self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }
}

/// Found in a review: a state whose blocks were answered with an error was said on stderr,
/// and the observation then ended by --for exited 0.
#[test]
fn a_state_whose_blocks_fail_gives_its_code_when_the_observation_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (port, stop) = serve(dir.path(), |responder, stop| BrokenBlocks {
        responder,
        stop,
    });
    let (code, out, err) = observe(dir.path(), port, &["--for", "2s"]);
    stop.store(true, Ordering::Relaxed);
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("5.03 overloaded"), "{err}");
    assert!(out.is_empty(), "{out}");
}

/// Found in a review: the tool set up no log output, so what the DTLS library warns of (a CA
/// file whose certificates all expired) was dropped, and a failed handshake (exit 2) was all
/// the operator saw.
#[test]
fn a_ca_that_expired_is_said_before_the_handshake_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (port, stop) = gone_server(dir.path(), Some(ResponseType::NotFound));
    let old = dir.path().join("old-ca.pem");
    let key = dir.path().join("old-ca.key");
    let kind = gateway_pki::Kind::Ca;
    gateway_pki::issue_to(&old, &key, "Old CA", kind, None, -20, -10).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway-coap"))
        .args(["get", &format!("coaps://localhost:{port}/t")])
        .args(["--ca", old.to_str().unwrap(), "--timeout", "2s"])
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("WARN") && err.contains("expired"), "{err}");
    // The tool says what the ended session meant; the library's own warning would repeat it.
    assert!(!err.contains("DTLS session ended"), "{err}");
}
