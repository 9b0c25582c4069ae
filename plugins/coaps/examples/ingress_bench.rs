//! Benchmark: the `coaps-ingress` under load from DTLS clients on loopback, the readings taken
//! at once (the SDK's harness acknowledges each batch as it arrives, so that what is measured is
//! the ingress and not a sink). Prints:
//!
//! - full handshakes per second, with device certificates and with a PSK: client threads that
//!   each loop over connect, one CON POST of one reading, close;
//! - requests per second with 1, 10 and 100 devices, each with its own session and one CON POST
//!   of one reading in flight.
//!
//! `cargo run --release -p gateway-plugin-coaps --example ingress_bench [SECONDS]`
//! (`SECONDS` per measurement, default 5; `THREADS` client threads for handshakes, default 4).

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

/// Runs `threads` loops of `work` for `secs`; returns how many times it ran per second.
fn rate(threads: usize, secs: f64, work: impl Fn(usize, &AtomicBool) -> u64 + Sync) -> f64 {
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, done, work) = (&stop, &done, &work);
            s.spawn(move || done.fetch_add(work(t, stop), Ordering::Relaxed));
        }
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
    let icfg = format!(
        "{}max_sessions = 1000\nmax_handshakes = 200\n[[psk]]\nidentity = \"test-device\"\nkey = \"{PSK_HEX}\"\n",
        common::ingress_config(dir.path(), port, "")
    );
    std::thread::spawn(move || run_source::<Ingress>(&icfg, usize::MAX, Duration::from_secs(3600)));
    std::thread::sleep(Duration::from_millis(300));
    println!("coaps-ingress on loopback, each measurement {secs} s; readings taken at once");

    for (what, psk) in [("device certificates", false), ("PSK", true)] {
        let opts = options(dir.path(), port, psk);
        let per_s = rate(threads, secs, |_, stop| {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let client = Client::start(opts.clone()).expect("client");
                post(&client);
                drop(client);
                n += 1;
            }
            n
        });
        println!("   full handshakes/s ({what}, {threads} clients looping, + 1 request each): {per_s:.0}");
    }
    for devices in [1, 10, 100] {
        let opts = options(dir.path(), port, false);
        let per_s = rate(devices, secs, |_, stop| {
            let client = Client::start(opts.clone()).expect("client");
            post(&client);
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                post(&client);
                n += 1;
            }
            n
        });
        println!("   requests/s ({devices} devices, 1 reading per CON request, one in flight each): {per_s:.0}");
    }
    std::process::exit(0);
}
