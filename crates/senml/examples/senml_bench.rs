//! Micro-benchmark of SenML CBOR and JSON encoding and decoding: `cargo run --release -p gateway-senml
//! --example senml_bench [ROUNDS] [ingress]`. The last figure (alone with `ingress`) decodes
//! as the ingress does: packs of 20 readings of one sensor taken at one time (as `gateway-load`
//! sends them), with the labels a server's worker keeps from one pack to the next. Under `valgrind --tool=callgrind` it gives
//! instructions per reading that do not depend on what else the machine is doing.
use gateway_sdk::{testing::sample_readings, IdGenerator, Label, Reading, Timestamp, Value};
use gateway_senml as senml;
use std::time::Instant;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    if std::env::args().nth(2).as_deref() != Some("ingress") {
        general(n);
    }
    ingress(n);
}

/// A decoder of [`senml`]: payload, most records, now, default device.
type Decode = fn(&[u8], usize, Timestamp, &str) -> Result<senml::Pack, senml::DecodeError>;

/// Packs of 100 readings, each a reading of its own time, decoded without kept labels, in
/// each encoding.
fn general(n: usize) {
    let batch = sample_readings(100);
    let codecs: [(&str, fn(&[Reading]) -> Vec<u8>, Decode); 2] = [
        ("CBOR", senml::encode_cbor, senml::decode_cbor),
        ("JSON", senml::encode_json, senml::decode_json),
    ];
    for (format, encode, decode) in codecs {
        let t = Instant::now();
        let mut bytes = Vec::new();
        for _ in 0..n {
            bytes = encode(&batch);
        }
        let enc = t.elapsed().as_secs_f64() / (n * 100) as f64;
        let t = Instant::now();
        for _ in 0..n {
            let p = decode(&bytes, 10_000, Timestamp::now(), "d").unwrap();
            assert_eq!(p.readings.len(), 100);
        }
        let dec = t.elapsed().as_secs_f64() / (n * 100) as f64;
        println!(
            "SenML {format}: encode {:.2} us/reading, decode {:.2} us/reading ({} bytes per 100 readings)",
            enc * 1e6,
            dec * 1e6,
            bytes.len()
        );
    }
}

/// Packs as the ingress takes them from `gateway-load`.
fn ingress(n: usize) {
    let ids = IdGenerator::new();
    let now = Timestamp::now();
    let (device, sensor, name, unit) = (
        Label::new("load-1"),
        Label::new("t1"),
        Label::new("temperature"),
        Label::new("Cel"),
    );
    let packs: Vec<Vec<u8>> = (0..64)
        .map(|_| {
            let batch: Vec<Reading> = (0..20)
                .map(|i| Reading {
                    id: ids.next(now),
                    time: now,
                    device: device.clone(),
                    sensor: sensor.clone(),
                    name: name.clone(),
                    unit: unit.clone(),
                    value: Value::Float(20.0 + i as f64 / 10.0),
                })
                .collect();
            senml::encode_cbor(&batch)
        })
        .collect();
    let mut labels = senml::Labels::new(4096);
    let t = Instant::now();
    for i in 0..n * 5 {
        let pack = &packs[i % packs.len()];
        let p = senml::decode_cbor_with(pack, 1000, now, "load-1", &mut labels).unwrap();
        assert_eq!(p.readings.len(), 20);
    }
    let per = t.elapsed().as_secs_f64() / (n * 5 * 20) as f64;
    println!(
        "SenML CBOR as the ingress takes it (20 readings a pack, labels kept): decode {:.3} us/reading ({} bytes per pack)",
        per * 1e6,
        packs[0].len()
    );
}
