//! Disk buffer throughput with the safe fsync policy (every append synced before it returns):
//! readings in (appends of `GROUP` source batches of 100 readings, as the writer thread groups
//! what is queued), readings out (take and acknowledge writes of 1000), then both at once.
//!
//! `cargo run --release -p gateway --example buffer_bench [READINGS] [DIR]`; DIR defaults to a
//! temporary directory under `target/`, on the same disk as the project. `GROUP` (default 10)
//! sets how many source batches share one fsync.

use gateway_host::{
    buffer::DiskBuffer,
    config::{BufferSettings, WhenFull},
};
use gateway_sdk::{Label, Reading, ReadingId, Timestamp, Value};
use std::{sync::Arc, time::Instant};

fn batch(from: u64, n: u64) -> Vec<Reading> {
    let (device, sensor, name, unit) = (
        Label::new("pi-01"),
        Label::new("28-0316a2797d1f"),
        Label::new("temperature"),
        Label::new("Cel"),
    );
    (from..from + n)
        .map(|v| Reading {
            id: ReadingId(
                (u128::from(v) | 0x0190_0000_0000_7000_8000_0000_0000_0000).to_be_bytes(),
            ),
            time: Timestamp(1_760_000_000_000_000 + v as i64 * 1000),
            device: device.clone(),
            sensor: sensor.clone(),
            name: name.clone(),
            unit: unit.clone(),
            value: Value::Float(20.0 + (v % 100) as f64 / 16.0),
        })
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let total: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let group: usize = std::env::var("GROUP")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let base = match args.next() {
        Some(d) => std::path::PathBuf::from(d),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/buffer-bench"),
    };
    let _ = std::fs::remove_dir_all(&base);
    let settings = BufferSettings {
        max_size: 4 << 30,
        when_full: WhenFull::Block,
        fsync: true,
    };
    let batches: Vec<Vec<Reading>> = (0..(total / 100)).map(|i| batch(i * 100, 100)).collect();
    println!(
        "disk buffer, fsync always, {total} readings in source batches of 100, {group} batches per append, in {}",
        base.display()
    );

    // In.
    let buf = DiskBuffer::open(&base.join("a"), &settings).expect("open");
    let started = Instant::now();
    let mut appends = 0;
    for g in batches.chunks(group) {
        let refs: Vec<&[Reading]> = g.iter().map(Vec::as_slice).collect();
        buf.append(&refs, 1000, &|| false, &|| false)
            .expect("append");
        appends += 1;
    }
    let t_in = started.elapsed().as_secs_f64();
    println!(
        "  in:   {:>9.0} readings/s ({appends} appends, {:.2} ms each incl. fdatasync; {:.1} bytes/reading on disk)",
        total as f64 / t_in,
        t_in * 1000.0 / appends as f64,
        buf.bytes() as f64 / total as f64
    );

    // Out.
    let started = Instant::now();
    let mut reader = buf.reader();
    let mut n = 0;
    while let Some(t) = buf.take(
        &mut reader,
        1000,
        std::time::Duration::ZERO,
        std::time::Duration::ZERO,
    ) {
        n += t.readings.len() as u64;
        buf.ack(&mut reader, t);
    }
    let t_out = started.elapsed().as_secs_f64();
    assert_eq!(n, total, "every reading comes out");
    println!(
        "  out:  {:>9.0} readings/s (takes of 1000, each acknowledged)",
        total as f64 / t_out
    );
    drop(buf);

    // Both at once, as a sink catching up while sources go on.
    let buf = Arc::new(DiskBuffer::open(&base.join("b"), &settings).expect("open"));
    let started = Instant::now();
    let writer = {
        let buf = buf.clone();
        std::thread::spawn(move || {
            for g in batches.chunks(group) {
                let refs: Vec<&[Reading]> = g.iter().map(Vec::as_slice).collect();
                buf.append(&refs, 1000, &|| false, &|| false)
                    .expect("append");
            }
        })
    };
    let mut reader = buf.reader();
    let mut n = 0;
    while n < total {
        if let Some(t) = buf.take(
            &mut reader,
            1000,
            std::time::Duration::from_millis(100),
            std::time::Duration::ZERO,
        ) {
            n += t.readings.len() as u64;
            buf.ack(&mut reader, t);
        }
    }
    writer.join().unwrap();
    let t_both = started.elapsed().as_secs_f64();
    println!(
        "  both: {:>9.0} readings/s through (in and out at the same time)",
        total as f64 / t_both
    );
    let _ = std::fs::remove_dir_all(&base);
}
