//! Benchmark: one coaps-uplink to one coaps-ingress over DTLS on loopback, CON requests of
//! 100-reading SenML CBOR batches, one request at a time (as the host's sink does). Prints
//! readings per second.
//!
//! `cargo run --release -p gateway-plugin-coaps --example link_bench [BATCHES] [MTU]`
//! With the default MTU (1232) a 100-reading batch goes block-wise; on loopback a larger MTU
//! (e.g. 16384) carries it in one datagram.

use gateway_test_support::coaps as common;

use coaps::{Ingress, Uplink};
use gateway_sdk::testing::{run_source, sample_readings, SinkHarness};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let batches: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let mtu: u32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1232);
    let per_batch: usize = std::env::var("PER_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    common::certs(dir.path(), "test-device");
    let port = common::free_port();
    let icfg = common::ingress_config(dir.path(), port, &format!("mtu = {mtu}\n"));
    // Each write from the host carries `group` requests' worth of readings.
    let group: usize = std::env::var("GROUP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let batches = batches / group * group;
    let total = batches * per_batch;
    let ingress = std::thread::spawn(move || {
        run_source::<Ingress>(&icfg, total, Duration::from_secs(600)).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let nstart: usize = std::env::var("NSTART")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut uplink = SinkHarness::new::<Uplink>(&common::uplink_config(
        dir.path(),
        port,
        &format!("mtu = {mtu}\nnstart = {nstart}\n"),
    ))
    .unwrap();
    let work: Vec<_> = (0..batches / group)
        .map(|_| sample_readings(per_batch * group))
        .collect();
    let bytes = gateway_senml::encode_cbor(&work[0][..per_batch]).len();
    // The first write sets up the session; time the rest.
    uplink.write(work[0].clone()).unwrap();
    let started = Instant::now();
    for b in &work[1..] {
        uplink.write(b.clone()).unwrap();
    }
    let took = started.elapsed().as_secs_f64();
    let run = ingress.join().unwrap();
    assert_eq!(run.readings.len(), total, "every reading arrived");
    let requests = batches - group;
    let n = (requests * per_batch) as f64;
    println!("coaps link: {requests} CON requests of {per_batch} readings ({bytes} bytes of SenML CBOR each), DTLS MTU {mtu}, {group} requests per write, NSTART {nstart}");
    println!(
        "   {:.0} readings/s ({:.0} requests/s)",
        n / took,
        requests as f64 / took
    );
}
