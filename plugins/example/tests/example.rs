use example::{Config, Example};
use gateway_sdk::{testing::run_source, Value};
use std::time::Duration;

#[test]
fn counts_up_from_one() {
    let run = run_source::<Example>(
        "interval = \"5ms\"\nsensor = \"c\"\n",
        3,
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(run.reached);
    run.outcome.unwrap();
    let values: Vec<_> = run.readings.iter().map(|r| r.value.clone()).collect();
    assert_eq!(values, [Value::Int(1), Value::Int(2), Value::Int(3)]);
    assert!(run
        .readings
        .iter()
        .all(|r| r.sensor == "c" && r.name == "count" && r.device == "test-device"));
}

#[test]
fn stops_promptly_when_asked_even_with_a_long_interval() {
    let started = std::time::Instant::now();
    let run = run_source::<Example>("interval = \"1h\"", 1, Duration::from_millis(100)).unwrap();
    assert!(!run.reached);
    run.outcome.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn readme_shows_the_source_file_and_the_sample() {
    let readme = include_str!("../README.md");
    let code = readme
        .split("```rust\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    assert_eq!(
        code,
        include_str!("../src/lib.rs"),
        "the README's template must be src/lib.rs"
    );
    let sample = readme
        .split("```toml\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    assert_eq!(sample, include_str!("../sample.toml"));
    let uncommented: String = sample
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let table: toml::Table = toml::from_str(&uncommented).unwrap();
    let mut keys = table["sources"]["counter"].as_table().unwrap().clone();
    keys.remove("plugin");
    let c: Config = keys.try_into().unwrap();
    assert_eq!(c.interval, Duration::from_secs(1));
}
