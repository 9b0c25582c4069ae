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

use gateway_test_support::coaps as common;

use coap_lite::RequestType;
use coaps::Ingress;
use gateway_coap::{request, Config as CoapConfig, ContentFormat};
use gateway_coaps_tokio::{Client, ClientConfig, ClientOptions};
use gateway_dtls::{ClientSettings, Psk, DEFAULT_MTU};
use gateway_pki::{issue_to, read_pair, Kind};
use gateway_sdk::{
    testing::{run_source, sample_readings},
    Label,
};
use gateway_senml as senml;
use std::{
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

const PSK_HEX: &str = "73656372657450534b2d666f722d62656e6368";

/// The options of device `name` (its certificate `NAME.pem`, or the PSK under its name).
fn options(dir: &Path, port: u16, psk: bool, name: &str) -> ClientOptions {
    let tls = if psk {
        ClientSettings {
            ca_file: Some(dir.join("ca.pem")),
            psk: Some(Psk {
                identity: name.into(),
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
            cert: Some((
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.key")),
            )),
            mtu: DEFAULT_MTU,
            ..ClientSettings::default()
        }
    };
    ClientOptions {
        server: format!("127.0.0.1:{port}").parse().unwrap(),
        bind: "127.0.0.1:0".parse().unwrap(),
        client: ClientConfig {
            host: "127.0.0.1".into(),
            verify_host: true,
            tls,
            coap: CoapConfig::default(),
            handshake_timeout: Duration::from_secs(10),
        },
    }
}

/// A device of the benchmark: its client and name.
struct Device {
    client: Client,
    name: Label,
}

/// One CON POST of one reading of `device`; panics on anything but 2.04.
fn post(device: &Device) {
    let mut reading = sample_readings(1);
    reading[0].device = device.name.clone();
    let payload = senml::encode_cbor(&reading);
    let client = &device.client;
    let req = request(
        RequestType::Post,
        "gpsflowtemp",
        Some(ContentFormat::SENML_CBOR),
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
    setup: impl Fn(usize) -> S + Sync,
    work: impl Fn(&S) + Sync,
) -> f64 {
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let ready = std::sync::Barrier::new(threads + 1);
    let mut started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, done, ready, setup, work) = (&stop, &done, &ready, &setup, &work);
            s.spawn(move || {
                let state = setup(t);
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
    // Each device has an identity of its own, as in a fleet (one identity holds few sessions).
    let devices_max = 100;
    let (ca, ca_key) = read_pair(&dir.path().join("ca.pem"), &dir.path().join("ca.key")).unwrap();
    for n in 0..devices_max.max(threads) {
        let name = format!("dev-{n}");
        let d = |ext: &str| dir.path().join(format!("{name}.{ext}"));
        issue_to(
            &d("pem"),
            &d("key"),
            &name,
            Kind::Device,
            Some((&ca, &ca_key)),
            -1,
            30,
        )
        .unwrap();
    }
    let psks: String = (0..threads)
        .map(|n| format!("[[psk]]\nidentity = \"dev-{n}\"\nkey = \"{PSK_HEX}\"\n"))
        .collect();
    let port = common::free_port();
    let ciphers = std::env::var("PSK_CIPHERS")
        .map(|c| format!("ciphers = \"{c}:ECDHE-ECDSA-AES128-GCM-SHA256\"\n"))
        .unwrap_or_default();
    let icfg = format!(
        "{}max_sessions = 1000\nmax_handshakes = 200\n{ciphers}{psks}",
        common::ingress_config(dir.path(), port, "")
    );
    std::thread::spawn(move || run_source::<Ingress>(&icfg, usize::MAX, Duration::from_secs(3600)));
    std::thread::sleep(Duration::from_millis(300));
    println!("coaps-ingress on loopback, each measurement {secs} s; readings taken at once");

    for (what, psk) in [("device certificates", false), ("PSK", true)] {
        let per_s = rate(
            threads,
            secs,
            |t| {
                (
                    options(dir.path(), port, psk, &format!("dev-{t}")),
                    Label::from(format!("dev-{t}")),
                )
            },
            |(opts, name)| {
                let client = Client::start(opts.clone()).expect("client");
                post(&Device {
                    client,
                    name: name.clone(),
                });
            },
        );
        println!("   full handshakes/s ({what}, {threads} clients looping, + 1 request each): {per_s:.0}");
    }
    for devices in [1, 10, devices_max] {
        let per_s = rate(
            devices,
            secs,
            |t| {
                let name = format!("dev-{t}");
                let client =
                    Client::start(options(dir.path(), port, false, &name)).expect("client");
                let device = Device {
                    client,
                    name: Label::from(name),
                };
                post(&device);
                device
            },
            post,
        );
        println!("   requests/s ({devices} devices, 1 reading per CON request, one in flight each): {per_s:.0}");
    }
    std::process::exit(0);
}
