use console::{config::Config, json_line, text_line, Console};
use gateway_sdk::{
    testing::{sample_readings, SinkHarness},
    ErrorKind,
};

#[test]
fn acknowledges_every_batch() {
    let mut sink = SinkHarness::new::<Console>("").unwrap();
    sink.write(sample_readings(3)).unwrap();
    sink.write(sample_readings(1)).unwrap();
    assert_eq!(sink.acknowledged().len(), 2);
}

#[test]
fn text_line_has_time_device_sensor_value_unit_and_id() {
    let r = &sample_readings(2)[1];
    let mut line = String::new();
    text_line(r, &mut line);
    assert!(
        line.contains(" test-device/s1 temperature=1 Cel id="),
        "{line}"
    );
    assert!(line.starts_with(&r.time.to_string()));
}

#[test]
fn json_line_parses_back_with_every_field() {
    let r = &sample_readings(1)[0];
    let mut line = String::new();
    json_line(r, &mut line);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["id"], r.id.to_string());
    assert_eq!(v["device"], "test-device");
    assert_eq!(v["unit"], "Cel");
    assert_eq!(v["type"], "float");
    assert_eq!(v["value"], 0.0);
}

#[test]
fn unknown_key_is_refused_with_its_name() {
    let e = SinkHarness::new::<Console>("formatt = \"json\"\n")
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::CONFIG);
    assert!(e.message().contains("unknown field `formatt`"), "{e}");
}

#[test]
fn readme_sample_matches_sample_toml_and_parses() {
    let tables = gateway_sdk::testing::readme_sample_tables(
        include_str!("../README.md"),
        include_str!("../sample.toml"),
    );
    for (name, keys) in tables {
        let c: Config = keys.try_into().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.format, console::config::Format::Text);
    }
}
