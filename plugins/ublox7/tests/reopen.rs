//! What the decoder dropped is counted across a port that vanishes and comes back: its own
//! process (a global log subscriber sees the source's thread).

mod common;
use common::{open_pty, write_paced, Said};
use gateway_sdk::{testing::run_source, tracing};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use ublox7::Ublox7;

/// Found in an audit: each open starts a new decoder whose counts start from zero, and the
/// totals logged were compared with the last port's, so what a second, shorter session
/// dropped was never said (ublox7 counts its drops nowhere else).
#[test]
fn what_a_port_opened_again_drops_is_said_with_the_totals() {
    let said = Arc::new(Mutex::new(Vec::new()));
    tracing::subscriber::set_global_default(Said(said.clone())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("gps");
    let pty = open_pty();
    std::os::unix::fs::symlink(&pty.slave_path, &link).unwrap();
    let cfg = format!(
        "port = {:?}\nepoch_gap = \"200ms\"\nreopen_backoff = \"100ms\"\nreopen_backoff_max = \"200ms\"\n",
        link.display().to_string()
    );
    let writer = std::thread::spawn(move || {
        let mut pty = pty;
        std::thread::sleep(Duration::from_millis(300));
        // 300 bytes of a binary protocol, then unplugged.
        write_paced(&mut pty.master, &[0xB5; 300], 38400);
        std::thread::sleep(Duration::from_millis(400));
        drop(pty);
        std::fs::remove_file(&link).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        // Plugged back: three sentences whose checksums are wrong, then unplugged again.
        let mut again = open_pty();
        std::os::unix::fs::symlink(&again.slave_path, &link).unwrap();
        std::thread::sleep(Duration::from_millis(600));
        let bad = b"$GPGGA,143255.00,5140.8367,N,00008.3426,W,1,08,1.0,45.3,M,46.9,M,,*00\r\n";
        write_paced(&mut again.master, &bad.repeat(3), 38400);
        std::thread::sleep(Duration::from_millis(400));
        drop(again);
        std::fs::remove_file(&link).unwrap();
    });
    let run = run_source::<Ublox7>(&cfg, 1_000, Duration::from_secs(5)).unwrap();
    run.outcome.unwrap();
    writer.join().unwrap();
    let said = said.lock().unwrap().clone();
    let dropped: Vec<&String> = said
        .iter()
        .filter(|m| m.starts_with("WARN NMEA input dropped"))
        .collect();
    assert_eq!(dropped.len(), 2, "{said:#?}");
    assert!(dropped[0].contains("garbage_bytes=300"), "{said:#?}");
    assert!(
        dropped[1].contains("garbage_bytes=300") && dropped[1].contains("bad_checksum=3"),
        "{said:#?}"
    );
}
