//! A GPS that opens but sends nothing is said, not left silent: its own process (a global log
//! subscriber sees the source's thread).

mod common;
use common::{open_pty, write_paced, Said};
use gateway_sdk::{testing::run_source, tracing};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use ublox7::Ublox7;

#[test]
fn a_gps_that_opens_but_sends_nothing_is_said_and_its_return_too() {
    let said = Arc::new(Mutex::new(Vec::new()));
    tracing::subscriber::set_global_default(Said(said.clone())).unwrap();
    let pty = open_pty();
    let cfg = format!(
        "port = {:?}\nepoch_gap = \"200ms\"\n",
        pty.slave_path.display().to_string()
    );
    let writer = std::thread::spawn(move || {
        let mut pty = pty;
        // Silent for longer than the 10 s the source allows (with room for a slow start), then
        // a sentence.
        std::thread::sleep(Duration::from_millis(12_500));
        write_paced(&mut pty.master, b"$GPTXT,01,01,02,hello*00\r\n", 38400);
        std::thread::sleep(Duration::from_millis(1000));
        drop(pty);
    });
    let run = run_source::<Ublox7>(&cfg, 1_000, Duration::from_secs(14)).unwrap();
    run.outcome.unwrap();
    writer.join().unwrap();
    let said = said.lock().unwrap().clone();
    let silent: Vec<&String> = said
        .iter()
        .filter(|m| m.starts_with("WARN the GPS has sent nothing"))
        .collect();
    assert_eq!(silent.len(), 1, "{said:#?}");
    assert!(
        said.iter()
            .any(|m| m.starts_with("INFO the GPS sends again")),
        "{said:#?}"
    );
}
