//! Micro-benchmark of SenML CBOR encoding and decoding: `cargo run --release -p gateway-senml --example senml_bench`.
use gateway_sdk::{testing::sample_readings, Timestamp};
use gateway_senml as senml;
use std::time::Instant;

fn main() {
    let batch = sample_readings(100);
    let n = 2000;
    let t = Instant::now();
    let mut bytes = Vec::new();
    for _ in 0..n {
        bytes = senml::encode_cbor(&batch);
    }
    let enc = t.elapsed().as_secs_f64() / (n * 100) as f64;
    let t = Instant::now();
    for _ in 0..n {
        let p = senml::decode_cbor(&bytes, 10_000, Timestamp::now(), "d").unwrap();
        assert_eq!(p.readings.len(), 100);
    }
    let dec = t.elapsed().as_secs_f64() / (n * 100) as f64;
    println!(
        "SenML CBOR: encode {:.2} us/reading, decode {:.2} us/reading ({} bytes per 100 readings)",
        enc * 1e6,
        dec * 1e6,
        bytes.len()
    );
}
