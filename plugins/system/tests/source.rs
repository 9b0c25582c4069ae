//! The source over fixture trees copied into a temporary directory: a Raspberry Pi 4, a tree
//! where every kind of value is broken next to good ones (skipped, counted, warned about once),
//! an empty root, and the config errors.

use gateway_sdk::{
    testing::run_source,
    tracing::{self, span, Event, Metadata, Subscriber},
    Value,
};
use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use system::{collect::Collector, config::Config, reject::Reject, System};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// Copies fixture tree `name` into a new temporary directory.
fn tree(name: &str) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&Path::new(FIXTURES).join(name), dir.path());
    dir
}

fn quoted(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

fn config(toml: &str) -> Config {
    toml::from_str(toml).unwrap()
}

/// (sensor, name, unit, value) of each reading.
fn rows<'a>(
    readings: impl IntoIterator<Item = &'a gateway_sdk::Reading>,
) -> Vec<(String, String, String, Value)> {
    readings
        .into_iter()
        .map(|r| {
            (
                r.sensor.to_string(),
                r.name.to_string(),
                r.unit.to_string(),
                r.value.clone(),
            )
        })
        .collect()
}

/// (sensor, name, unit, value) of each measurement.
fn rows_of(m: &[system::collect::Measurement]) -> Vec<(String, String, String, Value)> {
    m.iter()
        .map(|m| {
            (
                m.sensor.to_string(),
                m.name.to_string(),
                m.unit.to_string(),
                m.value.clone(),
            )
        })
        .collect()
}

fn row(
    sensor: &str,
    name: &str,
    unit: &str,
    value: impl Into<Value>,
) -> (String, String, String, Value) {
    (sensor.into(), name.into(), unit.into(), value.into())
}

#[test]
fn reports_every_value_of_a_raspberry_pi_4() {
    let root = tree("pi4");
    let disk = tempfile::tempdir().unwrap();
    let cfg = format!(
        "root = {}\ninterval = \"100ms\"\ndisk_paths = [{}]\n",
        quoted(root.path()),
        quoted(disk.path())
    );
    let run = run_source::<System>(&cfg, 32, Duration::from_secs(10)).unwrap();
    run.outcome.unwrap();
    assert!(run.reached);
    assert_eq!(run.batches, 2, "one batch of 16 per round");
    let first = &run.readings[..16];
    let disk_sensor = format!("disk:{}", disk.path().display());
    let (without_disk, disk_rows): (Vec<_>, Vec<_>) = rows(first)
        .into_iter()
        .partition(|(sensor, ..)| *sensor != disk_sensor);
    assert_eq!(
        without_disk,
        [
            row("cpu-thermal", "temperature", "Cel", 48.686),
            row("throttle", "throttled", "", 0x50005i64),
            row("throttle", "under_voltage_now", "", true),
            row("throttle", "throttled_now", "", true),
            row("throttle", "under_voltage_occurred", "", true),
            row("throttle", "throttled_occurred", "", true),
            row("load", "load1", "", 0.52),
            row("load", "load5", "", 0.58),
            row("load", "load15", "", 0.59),
            row("memory", "total", "By", 3882420i64 * 1024),
            row("memory", "available", "By", 3391856i64 * 1024),
            row("uptime", "uptime", "s", 351735.51),
            row("wifi:wlan0", "link_quality", "", 61i64),
            row("wifi:wlan0", "signal_level", "dBm", -49i64),
        ]
    );
    // The disk is the real filesystem holding the temporary directory.
    let [(_, free_name, free_unit, Value::Int(free)), (_, total_name, total_unit, Value::Int(total))] =
        &disk_rows[..]
    else {
        panic!("two integer disk readings: {disk_rows:?}");
    };
    assert_eq!((free_name.as_str(), free_unit.as_str()), ("free", "By"));
    assert_eq!((total_name.as_str(), total_unit.as_str()), ("total", "By"));
    assert!(
        *total > 0 && (0..=*total).contains(free),
        "{free} of {total}"
    );
    // Every reading is the gateway's, and a round's readings share one time.
    assert!(run.readings.iter().all(|r| r.device == "test-device"));
    assert!(first.iter().all(|r| r.time == first[0].time));
}

#[test]
fn a_broken_tree_is_skipped_value_by_value_and_counted() {
    let root = tree("broken");
    let mut c = Collector::new(
        &config(&format!("root = {}", quoted(root.path()))),
        vec![PathBuf::from("/no/such/disk")],
    );
    for _ in 0..2 {
        assert_eq!(
            rows_of(&c.round()),
            [
                row("soc-thermal", "temperature", "Cel", -5.5),
                row("memory", "total", "By", 3882420i64 * 1024),
                row("wifi:wlan0", "signal_level", "dBm", -49i64),
                row("wifi:wlan1", "link_quality", "", 40i64),
            ]
        );
    }
    let counts: Vec<(&str, Reject, u64)> = c
        .reject_counts()
        .iter()
        .map(|((subject, r), n)| (subject.as_str(), *r, *n))
        .collect();
    assert_eq!(
        counts,
        [
            ("disk /no/such/disk", Reject::Unreadable, 2),
            ("proc/loadavg", Reject::Unreadable, 2),
            ("proc/meminfo MemAvailable", Reject::Missing, 2),
            ("proc/net/wireless wlan0 link", Reject::Malformed, 2),
            ("proc/net/wireless wlan1 level", Reject::NotDbm, 2),
            ("proc/uptime", Reject::Empty, 2),
            ("sys/class/thermal/thermal_zone0/temp", Reject::Malformed, 2),
            ("sys/class/thermal/thermal_zone1/temp", Reject::Empty, 2),
            (
                "sys/class/thermal/thermal_zone1/type",
                Reject::Unreadable,
                2
            ),
            (
                "sys/class/thermal/thermal_zone2/temp",
                Reject::OutOfRange,
                2
            ),
            (
                "sys/devices/platform/soc/soc:firmware/get_throttled",
                Reject::Empty,
                2
            ),
        ]
    );
    assert_eq!(c.rejected(), 22);

    // A file put right is read again at the next round.
    std::fs::write(root.path().join("proc/uptime"), "12.50 40.00\n").unwrap();
    let again = rows_of(&c.round());
    assert!(
        again.contains(&row("uptime", "uptime", "s", 12.5)),
        "{again:?}"
    );
}

#[test]
fn a_broken_tree_does_not_stop_the_source() {
    let root = tree("broken");
    let cfg = format!(
        "root = {}\ninterval = \"100ms\"\ninclude = [\"thermal\", \"throttle\", \"load\", \"memory\", \"uptime\", \"wifi\"]\n",
        quoted(root.path())
    );
    // Four good values per round: ten rounds.
    let run = run_source::<System>(&cfg, 40, Duration::from_secs(10)).unwrap();
    run.outcome.unwrap();
    assert!(run.reached);
    assert_eq!(run.readings.len(), 40);
    assert!(run.readings.iter().all(
        |r| ["soc-thermal", "memory", "wifi:wlan0", "wifi:wlan1"].contains(&r.sensor.as_str())
    ));
}

#[test]
fn an_empty_root_counts_the_missing_proc_files_and_nothing_else() {
    let root = tempfile::tempdir().unwrap();
    let mut c = Collector::new(
        &config(&format!("root = {}", quoted(root.path()))),
        Vec::new(),
    );
    assert!(c.round().is_empty());
    let subjects: Vec<_> = c.reject_counts().keys().cloned().collect();
    assert_eq!(
        subjects,
        [
            ("proc/loadavg".to_owned(), Reject::Unreadable),
            ("proc/meminfo".to_owned(), Reject::Unreadable),
            ("proc/uptime".to_owned(), Reject::Unreadable),
        ],
        "no thermal zones, no Raspberry Pi firmware and no Wi-Fi are not problems"
    );
}

#[test]
fn zones_are_read_in_order_and_shared_types_are_told_apart() {
    let root = tempfile::tempdir().unwrap();
    let thermal = root.path().join("sys/class/thermal");
    for (zone, kind, milli) in [
        ("thermal_zone10", "x86_pkg_temp", "52000"),
        ("thermal_zone2", "acpitz", "27800"),
        ("thermal_zone0", "acpitz", "16800"),
    ] {
        std::fs::create_dir_all(thermal.join(zone)).unwrap();
        std::fs::write(thermal.join(zone).join("type"), format!("{kind}\n")).unwrap();
        std::fs::write(thermal.join(zone).join("temp"), format!("{milli}\n")).unwrap();
    }
    // Cooling devices live beside the zones and are not zones.
    std::fs::create_dir_all(thermal.join("cooling_device0")).unwrap();
    std::fs::write(thermal.join("cooling_device0/type"), "Processor\n").unwrap();
    let mut c = Collector::new(
        &config(&format!(
            "root = {}\ninclude = [\"thermal\"]",
            quoted(root.path())
        )),
        Vec::new(),
    );
    assert_eq!(
        rows_of(&c.round()),
        [
            row("acpitz:thermal_zone0", "temperature", "Cel", 16.8),
            row("acpitz:thermal_zone2", "temperature", "Cel", 27.8),
            row("x86_pkg_temp", "temperature", "Cel", 52.0),
        ]
    );
    assert_eq!(c.rejected(), 0);
    // A zone of the shared type that does not read this round leaves the other's name as it
    // was: it became plain `acpitz` for that round, and its history split in two series.
    std::fs::write(thermal.join("thermal_zone2/temp"), "").unwrap();
    assert_eq!(
        rows_of(&c.round()),
        [
            row("acpitz:thermal_zone0", "temperature", "Cel", 16.8),
            row("x86_pkg_temp", "temperature", "Cel", 52.0),
        ]
    );
    // Nor does one whose type does not read: it keeps the type it read last.
    std::fs::write(thermal.join("thermal_zone2/temp"), "27800\n").unwrap();
    std::fs::write(thermal.join("thermal_zone2/type"), "").unwrap();
    assert_eq!(
        rows_of(&c.round()),
        [
            row("acpitz:thermal_zone0", "temperature", "Cel", 16.8),
            row("acpitz:thermal_zone2", "temperature", "Cel", 27.8),
            row("x86_pkg_temp", "temperature", "Cel", 52.0),
        ]
    );
}

#[test]
fn include_turns_groups_off() {
    let root = tree("pi4");
    let cfg = format!(
        "root = {}\ninterval = \"100ms\"\ninclude = [\"uptime\", \"load\"]\n",
        quoted(root.path())
    );
    let run = run_source::<System>(&cfg, 4, Duration::from_secs(10)).unwrap();
    let sensors: Vec<_> = run.readings[..4]
        .iter()
        .map(|r| r.sensor.to_string())
        .collect();
    assert_eq!(
        sensors,
        ["load", "load", "load", "uptime"],
        "in the fixed group order"
    );
}

#[test]
fn disk_defaults_to_the_gateways_data_directory() {
    // The harness gives every instance this data directory.
    let data_dir = std::env::temp_dir().join("gateway-sdk-test");
    std::fs::create_dir_all(&data_dir).unwrap();
    let run = run_source::<System>(
        "interval = \"100ms\"\ninclude = [\"disk\"]",
        2,
        Duration::from_secs(10),
    )
    .unwrap();
    let sensor = format!("disk:{}", data_dir.display());
    assert!(
        run.readings.iter().all(|r| r.sensor == sensor.as_str()),
        "{:?}",
        run.readings
    );
    assert_eq!(run.readings.len(), 2);
}

#[test]
fn config_errors_name_the_file_line_table_and_key() {
    let err = |toml: &str| {
        run_source::<System>(toml, 1, Duration::from_secs(1))
            .unwrap_err()
            .message()
            .to_owned()
    };
    for short in ["0s", "99ms"] {
        assert_eq!(
            err(&format!("\ninterval = \"{short}\"")),
            "test.toml:2: [test.test] interval: must be at least 100ms"
        );
    }
    assert!(
        err("include = []").starts_with("test.toml:1: [test.test] include: is empty"),
        "{}",
        err("include = []")
    );
    assert_eq!(
        err("include = [\"load\", \"load\"]"),
        "test.toml:1: [test.test] include: \"load\" is listed twice"
    );
    assert_eq!(
        err("include = [\"load\"]\ndisk_paths = [\"/\"]"),
        "test.toml:2: [test.test] disk_paths: is set, but \"disk\" is not in `include`"
    );
    assert_eq!(
        err("disk_paths = [\"/\", \"/\"]"),
        "test.toml:1: [test.test] disk_paths: / is listed twice"
    );
    let e = err("\n\nincludes = [\"load\"]");
    assert!(
        e.starts_with("test.toml:3: [test.test] unknown field `includes`"),
        "{e}"
    );
    let e = err("include = [\"cpu\"]");
    assert!(e.contains("unknown variant `cpu`"), "{e}");
}

/// Counts the events logged at warn.
struct CountWarnings(Arc<AtomicUsize>);

impl Subscriber for CountWarnings {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

#[test]
fn each_problem_is_warned_once_not_every_round() {
    let root = tree("broken");
    let mut c = Collector::new(
        &config(&format!("root = {}", quoted(root.path()))),
        Vec::new(),
    );
    let warnings = Arc::new(AtomicUsize::new(0));
    let per_round: Vec<usize> =
        tracing::subscriber::with_default(CountWarnings(warnings.clone()), || {
            (0..3)
                .map(|_| {
                    let before = warnings.load(Ordering::SeqCst);
                    c.round();
                    warnings.load(Ordering::SeqCst) - before
                })
                .collect()
        });
    assert_eq!(per_round, [10, 0, 0], "one warning per distinct problem");
    assert_eq!(c.rejected(), 30, "but every occurrence is counted");
}

/// The Raspberry Pi 4 tree with a FIFO in place of `proc/uptime`: opening it for reading waits
/// for a writer for ever, as a read on a dead network filesystem does. Returns the tree and the
/// FIFO's path.
fn pi4_with_fifo_uptime() -> (tempfile::TempDir, PathBuf) {
    let root = tree("pi4");
    let uptime = root.path().join("proc/uptime");
    std::fs::remove_file(&uptime).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(&uptime)
        .status()
        .unwrap()
        .success());
    (root, uptime)
}

/// A FIFO with no writer where `/proc/uptime` is expected blocks its open for ever (as a
/// network filesystem whose server is gone blocks `statvfs`). It stopped the whole source:
/// no round ended, no reading of any group came, and a stop was not heard. Now that read is
/// given up after a second and counted, its subject is skipped while it stays stuck (no
/// second thread waits on it), and the other groups are read every round.
#[test]
fn a_read_that_hangs_skips_its_file_not_the_round() {
    let (root, uptime) = pi4_with_fifo_uptime();
    let mut c = Collector::new(
        &config(&format!(
            "root = {}\ninclude = [\"load\", \"uptime\", \"memory\"]",
            quoted(root.path())
        )),
        Vec::new(),
    );
    let t = std::time::Instant::now();
    let first = rows_of(&c.round());
    let took = t.elapsed();
    assert!(
        took >= system::collect::IO_TIMEOUT && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(first.iter().any(|r| r.0 == "load") && first.iter().any(|r| r.0 == "memory"));
    assert!(!first.iter().any(|r| r.0 == "uptime"), "{first:?}");
    // The next round does not wait on it again.
    let t = std::time::Instant::now();
    let second = rows_of(&c.round());
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(first, second);
    assert_eq!(
        c.reject_counts()
            .get(&("proc/uptime".to_owned(), Reject::Hung)),
        Some(&2)
    );
    // A collector built again (the source rebuilt after a reload) does not start another
    // read of it either.
    let mut again = Collector::new(
        &config(&format!(
            "root = {}\ninclude = [\"uptime\"]",
            quoted(root.path())
        )),
        Vec::new(),
    );
    let t = std::time::Instant::now();
    assert!(again.round().is_empty());
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        again
            .reject_counts()
            .get(&("proc/uptime".to_owned(), Reject::Hung)),
        Some(&1)
    );
    // Once a writer comes, the stuck read ends, and the next round tries the file again
    // (a FIFO, it hangs again).
    drop(
        std::fs::OpenOptions::new()
            .write(true)
            .open(&uptime)
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(100));
    let t = std::time::Instant::now();
    c.round();
    assert!(t.elapsed() >= system::collect::IO_TIMEOUT, "tried again");
    assert_eq!(
        c.reject_counts()
            .get(&("proc/uptime".to_owned(), Reject::Hung)),
        Some(&3)
    );
}

/// A read that a stop cuts short is not said to hang: it may only have been slow.
#[test]
fn a_read_cut_short_by_a_stop_is_not_counted_as_hung() {
    let (root, _uptime) = pi4_with_fifo_uptime();
    let mut c = Collector::new(
        &config(&format!(
            "root = {}\ninclude = [\"uptime\"]",
            quoted(root.path())
        )),
        Vec::new(),
    )
    .stop_when(|| true);
    let t = std::time::Instant::now();
    assert!(c.round().is_empty());
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(c.rejected(), 0, "{:?}", c.reject_counts());
}

/// The source hears a stop while a read hangs: it returns within the host's second.
#[test]
fn a_hung_read_does_not_hold_a_stop() {
    let (root, _uptime) = pi4_with_fifo_uptime();
    let cfg = format!(
        "root = {}\ninterval = \"10s\"\ninclude = [\"uptime\", \"load\"]\n",
        quoted(root.path())
    );
    let run = gateway_sdk::testing::SourceHarness::new(&cfg)
        .stop_at(Duration::from_millis(300))
        .run::<System>()
        .unwrap();
    run.outcome.unwrap();
    assert!(
        run.stop_latency < Duration::from_millis(500),
        "{:?}",
        run.stop_latency
    );
}
