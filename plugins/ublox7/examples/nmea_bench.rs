//! Benchmark: NMEA decoding throughput (line reader, checksum, `nmea` parser, epoch assembly)
//! over the recorded u-blox log, repeated. Prints sentences per second and how that compares
//! with the fastest real receiver rate (10 Hz with the full sentence set).
//!
//! `cargo run --release -p gateway-plugin-ublox7 --example nmea_bench`

use std::time::Instant;
use ublox7::decoder::Decoder;

fn main() {
    let raw = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gpsd-gr601-w.log"
    ))
    .unwrap();
    let stream: Vec<u8> = raw
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| !l.starts_with(b"#"))
        .flatten()
        .copied()
        .collect();
    let repeats = 4000;
    let mut d = Decoder::default();
    let started = Instant::now();
    let mut epochs = 0usize;
    for _ in 0..repeats {
        for chunk in stream.chunks(64) {
            epochs += d.push(chunk).len();
        }
    }
    let took = started.elapsed().as_secs_f64();
    let sentences = d.stats().sentences as f64;
    let rate = sentences / took;
    // A u-blox 7 at 10 Hz with RMC, VTG, GGA, GSA, 3 x GSV and GLL sends 80 sentences a second.
    let fastest_receiver = 80.0;
    println!(
        "ublox7: decoded {} sentences ({} bytes, {epochs} epochs) in {took:.3} s",
        sentences,
        stream.len() * repeats
    );
    println!("   {rate:.0} sentences/s = {:.0} x the fastest receiver rate (10 Hz, full sentence set: 80 sentences/s)", rate / fastest_receiver);
}
