//! A GPS that opens but sends nothing is said, not left silent: its own process (a global log
//! subscriber sees the source's thread).

mod common;
use common::{open_pty, write_paced};
use gateway_sdk::{
    testing::run_source,
    tracing::{self, span, Event, Metadata, Subscriber},
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use ublox7::Ublox7;

/// Keeps the messages of WARN and INFO events.
struct Said(Arc<Mutex<Vec<String>>>);

struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Said {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &Event<'_>) {
        let level = *event.metadata().level();
        if level == tracing::Level::WARN || level == tracing::Level::INFO {
            let mut m = Message(String::new());
            event.record(&mut m);
            self.0.lock().unwrap().push(format!("{level} {}", m.0));
        }
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

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
