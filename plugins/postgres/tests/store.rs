//! The sink against the machine's PostgreSQL (its Unix socket, as root, database `test`; `cargo
//! xtask test` sets that up where it is missing): every value type round trips, a re-delivered
//! batch is stored once, what a column cannot hold is refused for good, and settings errors name
//! their key.

use gateway_sdk::{
    testing::{readme_sample_tables, sample_readings, SinkHarness},
    ErrorKind, IdGenerator, Label, Reading, Timestamp, Value,
};
use postgres::{config::Config, Postgres};
use std::process::Command;

const URL: &str = "host=/var/run/postgresql user=root dbname=test";

/// A table of its own for each test, dropped first.
fn table(name: &str) -> String {
    let t = format!("gw_test_{name}_{}", std::process::id());
    psql(&format!("DROP TABLE IF EXISTS {t}"));
    t
}

fn psql(sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h",
            "/var/run/postgresql",
            "-U",
            "root",
            "-d",
            "test",
            "-At",
            "-c",
            sql,
        ])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn sink(table: &str) -> SinkHarness {
    SinkHarness::new::<Postgres>(&format!("url = {URL:?}\ntable = {table:?}\n")).unwrap()
}

fn reading(value: Value) -> Reading {
    let time = Timestamp::now();
    Reading {
        id: IdGenerator::new().next(time),
        time,
        device: Label::from("pi-01"),
        sensor: Label::from("s1"),
        name: Label::from("x"),
        unit: Label::from("u"),
        value,
    }
}

#[test]
fn stores_every_value_type() {
    let t = table("types");
    let mut s = sink(&t);
    let values = [
        Value::Float(21.5),
        Value::Int(-7),
        Value::Bool(true),
        Value::Text("héllo".into()),
        Value::Bytes(vec![0u8, 255, 7].into()),
    ];
    let batch: Vec<Reading> = values.iter().cloned().map(reading).collect();
    s.write(batch).unwrap();
    let rows = psql(&format!(
        "SELECT value_type, coalesce(value_float::text, value_int::text, value_text, encode(value_bytes, 'hex')) FROM {t} ORDER BY value_type"
    ));
    assert_eq!(rows, "bool|1\nbytes|00ff07\nfloat|21.5\nint|-7\ntext|héllo");
    psql(&format!("DROP TABLE {t}"));
}

#[test]
fn a_batch_delivered_twice_is_stored_once() {
    let t = table("twice");
    let mut s = sink(&t);
    let batch = sample_readings(500);
    s.write(batch.clone()).unwrap();
    s.write(batch[100..300].to_vec()).unwrap();
    s.write(batch).unwrap();
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "500");
    // A second sink (another connection, its own staging table) agrees.
    let mut again = sink(&t);
    again.write(sample_readings(10)).unwrap();
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "510");
    psql(&format!("DROP TABLE {t}"));
}

#[test]
fn text_the_column_cannot_hold_is_refused_for_good_and_nothing_of_the_batch_is_stored() {
    let t = table("nul");
    let mut s = sink(&t);
    let mut batch = sample_readings(3);
    batch.push(reading(Value::Text("a\0b".into())));
    let e = s.write(batch).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "0");
    // The connection is still good for the next batch.
    s.write(sample_readings(2)).unwrap();
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "2");
    psql(&format!("DROP TABLE {t}"));
}

#[test]
fn a_database_that_is_not_there_is_retried_and_nothing_is_made_when_built() {
    let t = table("down");
    // Built without connecting (gateway check builds it too) ...
    let mut s = SinkHarness::new::<Postgres>(&format!(
        "url = \"host=127.0.0.1 port=1 user=root dbname=test\"\ntable = {t:?}\nconnect_timeout = \"1s\"\n"
    ))
    .unwrap();
    // ... and the first write says it cannot connect, retryably.
    let e = s.write(sample_readings(1)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    assert!(e.message().contains("connecting to PostgreSQL"), "{e}");
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM pg_tables WHERE tablename = '{t}'"
        )),
        "0"
    );
}

#[test]
fn settings_errors_name_their_key() {
    for (toml, want) in [
        ("url = \"x\"\ntabel = \"r\"", "unknown field `tabel`"),
        (
            "url = \"postgresql://root:secret@localhost/test\"",
            "url: put the password in password_env",
        ),
        ("url = \"host=/tmp\"\ntable = \"Readings; drop\"", "table: "),
        ("url = \"host=/tmp\"\ntls = \"prefer\"", "tls: \"prefer\""),
    ] {
        let e = SinkHarness::new::<Postgres>(toml).unwrap_err();
        assert_eq!(e.kind, ErrorKind::CONFIG, "{toml}");
        assert!(e.message().contains(want), "{toml}: {e}");
    }
}

#[test]
fn readme_sample_matches_sample_toml_and_parses() {
    for (name, keys) in
        readme_sample_tables(include_str!("../README.md"), include_str!("../sample.toml"))
    {
        let c: Config = keys.try_into().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.table, "readings");
    }
}

#[test]
fn a_table_dropped_while_it_runs_is_made_again() {
    let t = table("dropped");
    let mut s = sink(&t);
    s.write(sample_readings(3)).unwrap();
    psql(&format!("DROP TABLE {t}"));
    // The write that finds it gone fails, retryably; the next connects again and makes it.
    let e = s.write(sample_readings(2)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    s.write(sample_readings(2)).unwrap();
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "2");
    psql(&format!("DROP TABLE {t}"));
}
