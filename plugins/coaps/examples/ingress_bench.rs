//! Benchmark: the `coaps-ingress` under load from DTLS clients on loopback, the readings taken
//! at once (the SDK's harness acknowledges each batch as it arrives, so that what is measured is
//! the ingress and not a sink). Prints:
//!
//! - full handshakes per second, with device certificates and with a PSK: client threads that
//!   each loop over connect, one CON POST of one reading, close;
//! - requests per second with 1, 10 and 100 devices, each with its own session and one CON POST
//!   of one reading in flight, timed once every device is connected.
//!
//! `cargo run --release -p gateway-plugin-coaps --example ingress_bench [SECONDS]`
//! (`SECONDS` per measurement, default 5; `THREADS` client threads for handshakes, default 4;
//! `PSK_CIPHERS` an OpenSSL cipher list for both ends of the PSK handshakes, default each end's
//! own default).

#[path = "../tests/common/mod.rs"]
mod common;

use coap_lite::RequestType;
use coaps::Ingress;
use gateway_coap::{
    core::{request, Config as CoapConfig},
    driver::{Client, ClientOptions},
    dtls::{ClientSettings, Psk, DEFAULT_MTU},
    senml,
};
use gateway_sdk::testing::{run_source, sample_readings};
use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

const PSK_HEX: &str = "73656372657450534b2d666f722d62656e6368";

fn options(dir: &Path, port: u16, psk: bool) -> ClientOptions {
    let tls = if psk {
        ClientSettings {
            ca_file: Some(dir.join("ca.pem")),
            psk: Some(Psk {
                identity: "test-device".into(),
                key: (0..PSK_HEX.len() / 2)
                    .map(|i| u8::from_str_radix(&PSK_HEX[2 * i..2 * i + 2], 16).unwrap())
                    .collect(),
            }),
            mtu: DEFAULT_MTU,
            ciphers: std::env::var("PSK_CIPHERS").unwrap_or_default(),
            ..ClientSettings::default()
        }
    } else {
        ClientSettings {
            ca_file: Some(dir.join("ca.pem")),
            cert: Some((dir.join("device.pem"), dir.join("device.key"))),
            mtu: DEFAULT_MTU,
            ..ClientSettings::default()
        }
    };
    ClientOptions {
        server: format!("127.0.0.1:{port}").parse().unwrap(),
        host: "127.0.0.1".into(),
        verify_host: true,
        bind: "127.0.0.1:0".parse().unwrap(),
        tls,
        coap: CoapConfig::default(),
        handshake_timeout: Duration::from_secs(10),
    }
}

/// One CON POST of one reading; panics on anything but 2.04.
fn post(client: &Client) {
    let payload = senml::encode_cbor(&sample_readings(1));
    let req = request(
        RequestType::Post,
        "gpsflowtemp",
        Some(senml::CONTENT_FORMAT_CBOR),
        payload,
    );
    let resp = client
        .request(req, Duration::from_secs(10))
        .expect("an answer");
    let code: u8 = resp.header.code.into();
    assert_eq!(code, 0x44, "2.04 Changed, got {:?}", resp.header.code);
}

/// Runs `threads` threads: each makes its state with `setup`, then, once every thread is set
/// up, runs `work` on it until `secs` have passed. Returns how many times `work` ran per second
/// of that window (setup, e.g. the handshakes of many devices, is not timed).
fn rate<S>(
    threads: usize,
    secs: f64,
    setup: impl Fn() -> S + Sync,
    work: impl Fn(&S) + Sync,
) -> f64 {
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let ready = std::sync::Barrier::new(threads + 1);
    let mut started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (stop, done, ready, setup, work) = (&stop, &done, &ready, &setup, &work);
            s.spawn(move || {
                let state = setup();
                ready.wait();
                while !stop.load(Ordering::Relaxed) {
                    work(&state);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        ready.wait();
        started = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5.0);
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let dir = tempfile::tempdir().unwrap();
    common::certs(dir.path(), "test-device");
    let port = common::free_port();
    let ciphers = std::env::var("PSK_CIPHERS")
        .map(|c| format!("ciphers = \"{c}:ECDHE-ECDSA-AES128-GCM-SHA256\"\n"))
        .unwrap_or_default();
    let icfg = format!(
        "{}max_sessions = 1000\nmax_handshakes = 200\n{ciphers}[[psk]]\nidentity = \"test-device\"\nkey = \"{PSK_HEX}\"\n",
        common::ingress_config(dir.path(), port, "")
    );
    std::thread::spawn(move || run_source::<Ingress>(&icfg, usize::MAX, Duration::from_secs(3600)));
    std::thread::sleep(Duration::from_millis(300));
    println!("coaps-ingress on loopback, each measurement {secs} s; readings taken at once");

    for (what, psk) in [("device certificates", false), ("PSK", true)] {
        let opts = options(dir.path(), port, psk);
        let per_s = rate(
            threads,
            secs,
            || (),
            |()| {
                let client = Client::start(opts.clone()).expect("client");
                post(&client);
            },
        );
        println!("   full handshakes/s ({what}, {threads} clients looping, + 1 request each): {per_s:.0}");
    }
    for devices in [1, 10, 100] {
        let opts = options(dir.path(), port, false);
        let per_s = rate(
            devices,
            secs,
            || {
                let client = Client::start(opts.clone()).expect("client");
                post(&client);
                client
            },
            post,
        );
        println!("   requests/s ({devices} devices, 1 reading per CON request, one in flight each): {per_s:.0}");
    }
    std::process::exit(0);
}
