use example::{Config, Example};
use gateway_sdk::{
    testing::{run_source, SourceHarness},
    Timestamp, Value,
};
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
    let run = run_source::<Example>("interval = \"1h\"", 2, Duration::from_millis(100)).unwrap();
    assert!(!run.reached);
    assert_eq!(run.readings.len(), 1, "the first tick is at once");
    assert!(run.stop_latency < Duration::from_secs(1), "{run:?}");
    run.outcome.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_slow_sink_does_not_stretch_the_interval() {
    // 100 ms of sink time per reading, on the harness's simulated clock: a minute of counting
    // in no real time, one reading every 500 ms exactly.
    let run = SourceHarness::new("interval = \"500ms\"")
        .simulated_clock(Timestamp(0))
        .ack_delay(Duration::from_millis(100))
        .stop_at(Duration::from_secs(60))
        .run::<Example>()
        .unwrap();
    run.outcome.unwrap();
    let times: Vec<i64> = run.readings.iter().map(|r| r.time.0).collect();
    assert_eq!(times.len(), 120);
    assert!(
        times.windows(2).all(|w| w[1] - w[0] == 500_000),
        "{times:?}"
    );
}

#[test]
fn an_interval_too_short_is_refused_with_its_line() {
    let e = SourceHarness::new("sensor = \"c\"\ninterval = \"100us\"\n")
        .config_file("gateway.toml")
        .run::<Example>()
        .unwrap_err();
    assert_eq!(
        e.message(),
        "gateway.toml:2: [test.test] interval: must be at least 1ms"
    );
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
