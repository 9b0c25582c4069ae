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
    for (name, keys) in
        gateway_sdk::testing::readme_sample_tables(readme, include_str!("../sample.toml"))
    {
        let c: Config = keys.try_into().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.interval, Duration::from_secs(1));
    }
}
