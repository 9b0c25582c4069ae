//! The source over real files: regular files, FIFOs that block like the kernel, probes that come
//! and go, aliases, retries and a hung probe.

use common::{Behaviour, FifoTree};
use ds18b20::{
    bus::Bus,
    config::Config,
    w1::{format_scratchpad, format_w1_slave, Reject},
    Ds18b20,
};
use gateway_sdk::{testing::run_source, tracing, Value};
use gateway_test_support::w1 as common;
use std::time::{Duration, Instant};

fn config(toml: &str) -> Config {
    toml::from_str(toml).unwrap()
}

fn write_probe(root: &std::path::Path, id: &str, text: &str) {
    std::fs::create_dir_all(root.join(id)).unwrap();
    std::fs::write(root.join(id).join("w1_slave"), text).unwrap();
}

#[test]
fn reads_every_probe_of_a_tree_and_emits_celsius() {
    let dir = tempfile::tempdir().unwrap();
    write_probe(dir.path(), "28-000000000001", &format_w1_slave(21.5));
    write_probe(dir.path(), "28-000000000002", &format_w1_slave(-3.25));
    std::fs::create_dir_all(dir.path().join("w1_bus_master1")).unwrap();
    std::fs::create_dir_all(dir.path().join("10-000000000003")).unwrap(); // a DS18S20: not ours
    let cfg = format!(
        "root = {:?}\ninterval = \"20ms\"\n",
        dir.path().display().to_string()
    );
    let run = run_source::<Ds18b20>(&cfg, 4, Duration::from_secs(10)).unwrap();
    run.outcome.unwrap();
    assert!(run.reached);
    let first: Vec<_> = run
        .readings
        .iter()
        .take(2)
        .map(|r| (r.sensor.to_string(), r.value.clone()))
        .collect();
    assert_eq!(
        first,
        [
            ("28-000000000001".to_owned(), Value::Float(21.5)),
            ("28-000000000002".to_owned(), Value::Float(-3.25))
        ]
    );
    assert!(run
        .readings
        .iter()
        .all(|r| r.name == "temperature" && r.unit == "Cel"));
    assert_eq!(run.batches, run.readings.len() / 2, "one batch per round");
}

#[test]
fn explicit_probes_use_their_aliases_and_missing_ones_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    write_probe(dir.path(), "28-000000000001", &format_w1_slave(30.0));
    write_probe(dir.path(), "28-000000000002", &format_w1_slave(31.0));
    let cfg = format!(
        "root = {:?}\ninterval = \"20ms\"\nsensors = [{{ id = \"28-000000000001\", alias = \"tank\" }}, {{ id = \"28-0000000000ff\" }}]\n",
        dir.path().display().to_string()
    );
    let run = run_source::<Ds18b20>(&cfg, 2, Duration::from_secs(10)).unwrap();
    // Readings came (an empty run would pass the check below), all of the one probe there.
    assert!(run.reached, "{:?}", run.readings);
    assert!(
        run.readings
            .iter()
            .all(|r| r.sensor == "tank" && r.value == Value::Float(30.0)),
        "{:?}",
        run.readings
    );
}

#[test]
fn refuses_ids_that_are_not_ds18b20_and_duplicate_names() {
    let e = run_source::<Ds18b20>(
        "sensors = [{ id = \"10-0001\" }]",
        1,
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(e.message().contains("is not a DS18B20 id"), "{e}");
    let e = run_source::<Ds18b20>(
        "sensors = [{ id = \"28-1\", alias = \"a\" }, { id = \"28-2\", alias = \"a\" }]",
        1,
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(e.message().contains("used twice"), "{e}");
    let e = run_source::<Ds18b20>("intervall = \"1s\"", 1, Duration::from_secs(1)).unwrap_err();
    assert!(e.message().contains("unknown field `intervall`"), "{e}");
    // Names the server would refuse, and settings that would spin.
    for (toml, says) in [
        (
            "sensors = [{ id = \"28-1\", alias = \"\" }]",
            "sensors.0.alias",
        ),
        (
            "sensors = [{ id = \"28-1\", alias = \"a\\u0007\" }]",
            "control character",
        ),
        (
            "retries = 4294967295",
            "retries: 4294967295 is more than 10",
        ),
        (
            "read_timeout = \"0s\"",
            "read_timeout: must be more than 0s",
        ),
        // Demo mode never writes into the kernel's tree (the default root), nor makes a
        // directory and a thread per round for each of thousands of probes.
        (
            "simulate = 3",
            "simulate: writes simulated probes under root",
        ),
        (
            "root = \"/tmp/w1\"\nsimulate = 100000",
            "simulate: 100000 is more than 64",
        ),
    ] {
        let e = run_source::<Ds18b20>(toml, 1, Duration::from_secs(1)).unwrap_err();
        assert!(e.message().contains(says), "{toml}: {e}");
    }
}

#[test]
fn a_w1_slave_that_never_ends_is_read_no_further_than_4_kib() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("28-00000000000a")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("28-00000000000a/w1_slave")).unwrap();
    let cfg = config(&format!(
        "root = {:?}\nretries = 1\nretry_delay = \"1ms\"\nread_timeout = \"2s\"",
        dir.path().display().to_string()
    ));
    let mut bus = Bus::new(&cfg);
    let started = Instant::now();
    assert!(bus.round().is_empty());
    // Before, the read went on until the gateway ran out of memory.
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        bus.reject_counts()["28-00000000000a"][&Reject::Malformed],
        2
    );
    // On the metrics page too, and kept once the probe is gone (a counter only grows).
    std::fs::remove_dir_all(dir.path().join("28-00000000000a")).unwrap();
    assert!(bus.round().is_empty());
    let m = bus.metrics(3);
    let value = |name: &str, labels: &[(&str, &str)]| {
        let f = m.families().iter().find(|f| f.name.as_str() == name)?;
        f.samples
            .iter()
            .find(|s| {
                s.labels.len() == labels.len()
                    && s.labels
                        .iter()
                        .zip(labels)
                        .all(|(l, (k, v))| l.0.as_str() == *k && l.1.as_str() == *v)
            })
            .map(|s| s.value)
    };
    assert_eq!(
        value(
            "gateway_ds18b20_rejected_reads_total",
            &[("probe", "28-00000000000a"), ("reason", "malformed")]
        ),
        Some(2.0)
    );
    assert_eq!(value("gateway_ds18b20_probes", &[]), Some(0.0));
    assert_eq!(value("gateway_ds18b20_missed_rounds_total", &[]), Some(3.0));
}

#[test]
fn a_hung_probe_that_comes_and_goes_keeps_one_read_thread() {
    let dir = tempfile::tempdir().unwrap();
    let tree = FifoTree::new(dir.path());
    let id = "28-hhhhhhhhhhhh";
    tree.probe(id, Behaviour::Hung);
    let cfg = config(&format!(
        "root = {:?}\nread_timeout = \"50ms\"",
        dir.path().display().to_string()
    ));
    let mut bus = Bus::new(&cfg);
    // Thread names are cut at 15 bytes in /proc: "w1:28-hhhhhhhhh".
    let threads = || {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|c| c.trim_end() == "w1:28-hhhhhhhhh")
            .count()
    };
    let (here, away) = (dir.path().join(id), dir.path().join("away"));
    for _ in 0..5 {
        bus.round();
        std::fs::rename(&here, &away).unwrap();
        bus.round();
        std::fs::rename(&away, &here).unwrap();
    }
    bus.round();
    // Before, each return of the probe started another thread on its hung file.
    assert_eq!(threads(), 1);
}

#[test]
fn picks_up_probes_that_appear_and_drops_those_that_disappear() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&format!("root = {:?}", dir.path().display().to_string()));
    let mut bus = Bus::new(&cfg);
    assert!(bus.round().is_empty());
    write_probe(dir.path(), "28-000000000001", &format_w1_slave(10.0));
    assert_eq!(bus.round().len(), 1);
    write_probe(dir.path(), "28-000000000002", &format_w1_slave(11.0));
    let r = bus.round();
    assert_eq!(
        r.iter().map(|m| m.celsius).collect::<Vec<_>>(),
        [10.0, 11.0]
    );
    std::fs::remove_dir_all(dir.path().join("28-000000000001")).unwrap();
    let r = bus.round();
    assert_eq!(
        r.iter().map(|m| m.sensor.to_string()).collect::<Vec<_>>(),
        ["28-000000000002"]
    );
}

#[test]
fn retries_a_bad_read_and_counts_each_rejection() {
    let dir = tempfile::tempdir().unwrap();
    let tree = FifoTree::new(dir.path());
    // Every probe answers: a CRC error, then the 85 C power-on value, then a good read.
    let bad_crc = format_scratchpad([0xff; 9], false);
    let por = format_scratchpad([0x50, 0x05, 0x4b, 0x46, 0x7f, 0xff, 0x0c, 0x10, 0], true);
    tree.probe(
        "28-000000000001",
        Behaviour::Answers {
            delay: Duration::ZERO,
            texts: vec![bad_crc.clone(), por.clone(), format_w1_slave(22.0)],
        },
    );
    tree.probe(
        "28-000000000002",
        Behaviour::Answers {
            delay: Duration::ZERO,
            texts: vec![bad_crc, por, String::new()],
        },
    );
    let cfg = config(&format!(
        "root = {:?}\nretries = 2\nretry_delay = \"1ms\"",
        dir.path().display().to_string()
    ));
    let mut bus = Bus::new(&cfg);
    let r = bus.round();
    assert_eq!(
        r.len(),
        1,
        "the probe that never reads well is reported, not emitted"
    );
    assert_eq!(r[0].celsius, 22.0);
    let counts = bus.reject_counts();
    let one = &counts["28-000000000001"];
    assert_eq!((one[&Reject::CrcNo], one[&Reject::PowerOnReset]), (1, 1));
    let two = &counts["28-000000000002"];
    assert_eq!(
        (
            two[&Reject::CrcNo],
            two[&Reject::PowerOnReset],
            two[&Reject::Empty]
        ),
        (1, 1, 1)
    );
}

#[test]
fn many_probes_are_read_concurrently_and_a_hung_one_delays_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let tree = FifoTree::new(dir.path());
    for i in 0..30 {
        // 750 ms: a 12-bit conversion.
        tree.probe(
            &format!("28-0000000001{i:02}"),
            Behaviour::Answers {
                delay: Duration::from_millis(750),
                texts: vec![format_w1_slave(20.0 + i as f64 / 16.0)],
            },
        );
    }
    tree.probe("28-0000000009ff", Behaviour::Hung);
    let cfg = config(&format!(
        "root = {:?}\nread_timeout = \"1500ms\"",
        dir.path().display().to_string()
    ));
    let mut bus = Bus::new(&cfg);
    for round in 0..2 {
        let started = Instant::now();
        let r = bus.round();
        let took = started.elapsed();
        assert_eq!(r.len(), 30, "round {round}");
        assert!(
            took < Duration::from_millis(1800),
            "round {round} took {took:?}: reads were not concurrent"
        );
        // The second round does not wait for the hung probe again: it is skipped while busy.
        if round == 1 {
            assert!(
                took < Duration::from_millis(1300),
                "round 1 waited for the hung probe: {took:?}"
            );
        }
    }
}

#[test]
fn a_probe_slower_than_read_timeout_still_gives_its_readings_a_round_late() {
    // Parasite-powered probes may take longer than read_timeout each. Before, a read that
    // ended after its round's timeout was dropped with no log and no count, and the probe,
    // busy no more by the next round, was neither hung nor failing: it never gave a reading.
    let dir = tempfile::tempdir().unwrap();
    let tree = FifoTree::new(dir.path());
    tree.probe(
        "28-000000000001",
        Behaviour::Answers {
            delay: Duration::from_millis(120),
            texts: vec![format_w1_slave(21.5)],
        },
    );
    let cfg = config(&format!(
        "root = {:?}\nread_timeout = \"50ms\"",
        dir.path().display().to_string()
    ));
    let mut bus = Bus::new(&cfg);
    let mut got = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        got.extend(bus.round());
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "a round waits read_timeout at most"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(got.len() >= 3, "{got:?}");
    assert!(got.iter().all(|m| m.celsius == 21.5));
    // Each timed when it was read, in order.
    assert!(got.windows(2).all(|w| w[0].time < w[1].time), "{got:?}");
}

/// Counts WARN events of the thread it is the default of.
struct CountWarnings(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl tracing::Subscriber for CountWarnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn a_bus_without_any_probe_is_said_once_not_silently_nor_every_round() {
    // The overlay is loaded but no probe answers (a loose wire, no pull-up): before, the
    // source said nothing after "reading DS18B20 probes", for ever.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("w1_bus_master1")).unwrap();
    let cfg = config(&format!("root = {:?}", dir.path().display().to_string()));
    let mut bus = Bus::new(&cfg);
    let warnings = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let per_round: Vec<usize> =
        tracing::subscriber::with_default(CountWarnings(warnings.clone()), || {
            let mut per_round = Vec::new();
            for round in 0..4 {
                if round == 2 {
                    write_probe(dir.path(), "28-000000000001", &format_w1_slave(21.5));
                }
                let before = warnings.load(std::sync::atomic::Ordering::SeqCst);
                bus.round();
                per_round.push(warnings.load(std::sync::atomic::Ordering::SeqCst) - before);
            }
            per_round
        });
    assert_eq!(per_round, [1, 0, 0, 0]);
}

/// Found in an audit: a read that ended after its probe disappeared (unplugged while a slow
/// read lasted) was dropped without a word: its reading lost, its rejection not counted.
#[test]
fn a_read_that_ends_after_its_probe_disappeared_is_kept_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let tree = FifoTree::new(dir.path());
    let (good, bad) = ("28-000000000001", "28-000000000002");
    tree.probe(
        good,
        Behaviour::Answers {
            delay: Duration::from_millis(300),
            texts: vec![format_w1_slave(21.5)],
        },
    );
    tree.probe(
        bad,
        Behaviour::Answers {
            delay: Duration::from_millis(300),
            texts: vec![format_scratchpad([0xff; 9], false)],
        },
    );
    let cfg = config(&format!(
        "root = {:?}\nread_timeout = \"50ms\"\nretries = 0",
        dir.path().display().to_string()
    ));
    let mut bus = Bus::new(&cfg);
    assert!(bus.round().is_empty(), "the reads outlast read_timeout");
    for id in [good, bad] {
        std::fs::rename(dir.path().join(id), dir.path().join(format!("away-{id}"))).unwrap();
    }
    let mut got = bus.round();
    std::thread::sleep(Duration::from_millis(500));
    got.extend(bus.round());
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].sensor.as_str(), good);
    assert_eq!(got[0].celsius, 21.5);
    assert_eq!(bus.reject_counts()[bad][&Reject::CrcNo], 1);
}

/// A round waits up to `read_timeout` for a slow probe; a stop during that wait was heard
/// only once it ran out (the README advises raising `read_timeout` for parasite power, which
/// made a stop slower still). Now the wait ends within 50 ms of a stop.
#[test]
fn a_stop_is_heard_while_a_round_waits_for_a_hung_probe() {
    let dir = tempfile::tempdir().unwrap();
    let tree = FifoTree::new(dir.path());
    tree.probe("28-000000000001", Behaviour::Hung);
    let cfg = format!(
        "root = {:?}\nread_timeout = \"5s\"\ninterval = \"10s\"",
        dir.path().display().to_string()
    );
    let run = gateway_sdk::testing::SourceHarness::new(&cfg)
        .stop_at(Duration::from_millis(300))
        .run::<Ds18b20>()
        .unwrap();
    run.outcome.unwrap();
    assert!(
        run.stop_latency < Duration::from_millis(500),
        "{:?}",
        run.stop_latency
    );
}

/// A `w1_slave` that cannot be read (here a directory: EISDIR; on a Pi a bus error, EIO) was
/// neither retried nor counted: the metrics page showed 0 rejected reads for a probe that
/// had failed for months. It is now retried and counted as `io`.
#[test]
fn a_read_error_is_retried_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("28-000000000001/w1_slave")).unwrap();
    write_probe(dir.path(), "28-000000000002", &format_w1_slave(21.5));
    let cfg = config(&format!(
        "root = {:?}\nretries = 2\nretry_delay = \"1ms\"",
        dir.path().display().to_string()
    ));
    let mut bus = Bus::new(&cfg);
    let got = bus.round();
    assert_eq!(got.len(), 1);
    let counts = bus.reject_counts();
    assert_eq!(counts["28-000000000001"][&Reject::Io], 3, "{counts:?}");
    let page = format!("{:?}", bus.metrics(0).families());
    assert!(page.contains("\"io\""), "{page}");
}

/// Found in a review: each id a noisy bus listed kept its rejection counters (and a series
/// of them on the metrics page) for good, however many phantom ids came and went.
#[test]
fn rejections_of_phantom_ids_past_64_probes_are_counted_together() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&format!(
        "root = {:?}\nretries = 0\nread_timeout = \"2s\"",
        dir.path().display().to_string()
    ));
    let mut bus = Bus::new(&cfg);
    // Ten phantoms a round, each gone by the next.
    for wave in 0..8u64 {
        for i in 0..10u64 {
            let id = format!("28-{:012x}", wave * 10 + i);
            std::fs::create_dir_all(dir.path().join(&id)).unwrap();
            std::fs::write(dir.path().join(&id).join("w1_slave"), "noise\n").unwrap();
        }
        assert!(bus.round().is_empty());
        for i in 0..10u64 {
            std::fs::remove_dir_all(dir.path().join(format!("28-{:012x}", wave * 10 + i))).unwrap();
        }
    }
    let counts = bus.reject_counts();
    assert_eq!(counts.len(), 65, "{:?}", counts.keys());
    let all: u64 = counts.values().flat_map(|r| r.values()).sum();
    assert_eq!(all, 80, "every rejection counted: {counts:?}");
    assert_eq!(counts["other"].values().sum::<u64>(), 16);
}
