//! The real `gateway` running real plugins: supervision, retries, backpressure, shutdown, logs.

mod support;
use std::time::Duration;
use support::*;

fn recorder(name: &str, file: &str, inputs: &[&str], extra: &str) -> String {
    format!(
        "[sinks.{name}]\nplugin = \"testkit-recorder\"\npath = {:?}\ninputs = {inputs:?}\nbatch_timeout = \"5ms\"\n{extra}\n",
        file
    )
}

/// `count` readings in batches of `batch` from a sequence into the recorder `rec` (with
/// `extra` settings), run as a job until the source has finished: the gateway's log, once
/// it has exited successfully.
fn sequence_job(s: &Setup, count_batch: (u64, u64), extra: &str) -> String {
    sequence_job_with(s, count_batch, extra, &["--until-sources-finish"])
}

/// [`sequence_job`] with the gateway's arguments `args`.
fn sequence_job_with(s: &Setup, (count, batch): (u64, u64), extra: &str, args: &[&str]) -> String {
    let out = s.path("out.txt");
    let cfg = s.config(
        "",
        &format!(
            "[sources.seq]\nplugin = \"testkit-sequence\"\ncount = {count}\nbatch_size = {batch}\n{}",
            recorder("rec", out.to_str().unwrap(), &["seq"], extra)
        ),
    );
    let mut gw = Running::start(s, &cfg, args);
    let status = gw
        .wait(Duration::from_secs(20))
        .expect("exits once the source finished");
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    err
}

/// The readings `gateway dead-letters show` lists for `sink` of `cfg` (the header lines left
/// out); the command must succeed.
fn dead_lettered(cfg: &std::path::Path, sink: &str) -> Vec<String> {
    let (status, shown, err) = gateway(&[
        "dead-letters",
        "show",
        "--config",
        cfg.to_str().unwrap(),
        sink,
    ]);
    assert!(status.success(), "{err}");
    shown
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_source_that_panics_is_restarted_and_the_others_keep_flowing() {
    let s = Setup::new();
    let (bad, good) = (s.path("bad.txt"), s.path("good.txt"));
    let cfg = s.config(
        "",
        &format!(
            "[sources.bad]\nplugin = \"testkit-sequence\"\ninterval = \"5ms\"\npanic_after = 5\nrestart_backoff = \"50ms\"\n\
             [sources.good]\nplugin = \"testkit-sequence\"\ninterval = \"5ms\"\n{}{}",
            recorder("bad_out", bad.to_str().unwrap(), &["bad"], ""),
            recorder("good_out", good.to_str().unwrap(), &["good"], ""),
        ),
    );
    let mut gw = Running::start(&s, &cfg, &[]);
    assert!(
        gw.wait_for_log("source failed; restarting it", Duration::from_secs(10)),
        "{}",
        gw.stderr()
    );
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "the host survived the panic"
    );
    let status = gw.stop(Duration::from_secs(10));
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    assert!(
        err.contains("plugin panicked in run: sequence panics after 5 readings"),
        "{err}"
    );
    // The plugin's panic message reaches the host's log, tagged with the instance.
    assert!(err.contains("plugin=\"bad\""), "{err}");
    assert!(
        err.matches("source failed; restarting it").count() >= 2,
        "restarted more than once: {err}"
    );
    let bad_values = s.recorded("bad.txt", "bad");
    assert!(
        bad_values.len() >= 10,
        "the restarted source went on: {bad_values:?}"
    );
    assert_contiguous(&bad_values, "panicking source");
    let good_values = s.recorded("good.txt", "good");
    assert!(
        good_values.len() >= 20,
        "the healthy source kept flowing: {}",
        good_values.len()
    );
    assert_contiguous(&good_values, "healthy source");
}

/// Group commit: with the default `batch_timeout`, an idle sink writes a lone batch at once,
/// and batches form only from what arrives while a write is in progress.
#[test]
fn an_idle_sink_writes_at_once_and_batches_form_during_writes() {
    let s = Setup::new();
    let out = s.path("out.txt");
    let cfg = s.config(
        "",
        &format!(
            "[sources.seq]\nplugin = \"testkit-sequence\"\ncount = 200\ninterval = \"1ms\"\nwait_ack = false\n\
             [sinks.rec]\nplugin = \"testkit-recorder\"\npath = {:?}\ndelay = \"20ms\"\nmark_writes = true\nqueue_capacity = 1000\n",
            out.to_str().unwrap()
        ),
    );
    let mut gw = Running::start(&s, &cfg, &["--until-sources-finish"]);
    let status = gw.wait(Duration::from_secs(20)).expect("exits");
    assert!(status.success(), "{}", gw.stderr());
    assert_eq!(s.recorded("out.txt", "seq").len(), 200);
    let writes: Vec<usize> = s
        .lines("out.txt")
        .iter()
        .filter_map(|l| l.strip_prefix("write ")?.parse().ok())
        .collect();
    assert_eq!(writes.iter().sum::<usize>(), 200);
    // The source emits a reading every millisecond. A sink that waited for a
    // batch timer (100 ms before group commit) would first write about 100;
    // an idle sink writes the first reading at once, but on a loaded machine
    // it may wake a few milliseconds late and find a few more queued.
    assert!(
        writes[0] <= 10,
        "the idle sink waited before its first write: {writes:?}"
    );
    assert!(
        writes.len() < 50 && writes.iter().any(|&n| n > 5),
        "readings that came during a 20 ms write went out together: {writes:?}"
    );
}

#[test]
fn a_sink_that_panics_is_rebuilt_and_nothing_is_lost() {
    let s = Setup::new();
    let err = sequence_job(
        &s,
        (50, 5),
        "panic_on_write = 3\nrestart_backoff = \"20ms\"",
    );
    assert!(
        err.contains("plugin panicked in write: recorder panics on write 3"),
        "{err}"
    );
    assert!(err.contains("sink failed; rebuilding it"), "{err}");
    assert!(err.contains("sink rebuilt"), "{err}");
    assert_contiguous(&s.recorded("out.txt", "seq"), "sink with a panic");
    assert_eq!(s.recorded("out.txt", "seq").len(), 50);
}

#[test]
fn retryable_failures_are_retried_with_backoff_and_nothing_is_lost() {
    let s = Setup::new();
    let err = sequence_job_with(
        &s,
        (40, 4),
        "fail_first = 5\nretry_backoff = \"10ms\"\nretry_backoff_max = \"40ms\"",
        &["--until-sources-finish", "--log-level", "debug"],
    );
    assert_eq!(err.matches("write failed; retrying in").count(), 5, "{err}");
    // A streak of failures is said at warn once a minute at most: here once, the others at
    // debug (an outage of a week made tens of thousands of warnings a day).
    let warned: Vec<&str> = err
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("retrying in"))
        .collect();
    assert_eq!(warned.len(), 1, "{err}");
    assert!(warned[0].contains("said once a minute"), "{err}");
    assert!(
        err.contains("retrying in 10ms")
            && err.contains("retrying in 20ms")
            && err.contains("retrying in 40ms"),
        "backoff doubles up to the max: {err}"
    );
    assert!(err.contains("write succeeded after retrying"), "{err}");
    let values = s.recorded("out.txt", "seq");
    assert_eq!(values.len(), 40);
    assert_contiguous(&values, "flaky sink");
}

#[test]
fn a_sink_that_says_it_stopped_while_the_gateway_runs_is_retried_and_nothing_is_lost() {
    // STOPPED from a sink leaves its batch to the host's shutdown; while the gateway runs it
    // is the sink's mistake: taken as final, it handed the batch back to the source as if the
    // host were stopping, and the source ended with its readings stored nowhere.
    let s = Setup::new();
    let err = sequence_job(
        &s,
        (40, 4),
        "stopped_first = 3\nrestart_backoff = \"10ms\"\nrestart_backoff_max = \"20ms\"",
    );
    assert_eq!(
        err.matches("the sink said it stopped, but the gateway runs")
            .count(),
        3,
        "{err}"
    );
    let values = s.recorded("out.txt", "seq");
    assert_contiguous(&values, "a sink that said it stopped");
    assert_eq!(values.len(), 40, "{err}");
}

#[test]
fn a_sink_asking_for_a_window_past_the_hosts_bound_gets_the_bound() {
    // A window of a million batches held that many in memory before a source was held back.
    let s = Setup::new();
    let err = sequence_job(&s, (40, 4), "window = 1000000");
    assert!(
        err.contains(
            "the sink asks to take more batches at once than the host allows; it takes 4096"
        ) && err.contains("asked=1000000"),
        "{err}"
    );
    assert!(
        err.contains("the sink takes several batches at once window=4096"),
        "{err}"
    );
    let mut values = s.recorded("out.txt", "seq");
    values.sort_unstable();
    assert_contiguous(&values, "through a capped window");
    assert_eq!(values.len(), 40, "{err}");
}

#[test]
fn a_slow_sink_holds_sources_back_and_memory_stays_bounded() {
    let s = Setup::new();
    let out = s.path("out.txt");
    let cfg = s.config(
        "",
        &format!(
            "[sources.fast]\nplugin = \"testkit-sequence\"\nbatch_size = 10\nwait_ack = false\nemitted_path = {:?}\n{}",
            s.path("emitted").to_str().unwrap(),
            recorder("slow", out.to_str().unwrap(), &["fast"], "delay = \"50ms\"\nbatch_size = 10\nqueue_capacity = 2")
        ),
    );
    let mut gw = Running::start(&s, &cfg, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    let rss_kb = gw.rss_kb();
    let emitted: u64 = std::fs::read_to_string(s.path("emitted"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status = gw.stop(Duration::from_secs(10));
    assert!(status.success(), "{}", gw.stderr());
    // 1.5 s at 50 ms per write is about 30 writes of 10: without backpressure an unthrottled
    // source would have emitted millions by now.
    assert!(
        emitted <= 30 * 10 + 200,
        "the source was held back: it emitted {emitted}"
    );
    assert!(rss_kb < 64 * 1024, "resident memory {rss_kb} kB");
    let values = s.recorded("out.txt", "fast");
    assert_contiguous(&values, "slow sink");
    assert!(
        values.len() as u64 >= emitted,
        "everything emitted was drained at shutdown: {} < {emitted}",
        values.len()
    );
}

#[test]
fn shutdown_delivers_the_batch_in_flight() {
    let s = Setup::new();
    let out = s.path("out.txt");
    let cfg = s.config(
        "",
        &format!(
            "[sources.seq]\nplugin = \"testkit-sequence\"\nbatch_size = 5\nemitted_path = {:?}\n{}",
            s.path("emitted").to_str().unwrap(),
            recorder("rec", out.to_str().unwrap(), &["seq"], "delay = \"700ms\"")
        ),
    );
    let mut gw = Running::start(&s, &cfg, &[]);
    assert!(gw.wait_for_log("sink running", Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(300));
    // The first write is sleeping inside the sink right now.
    assert!(s.lines("out.txt").is_empty());
    let status = gw.stop(Duration::from_secs(10));
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    assert!(err.contains("everything in flight was delivered"), "{err}");
    let values = s.recorded("out.txt", "seq");
    assert!(!values.is_empty(), "the batch in flight reached the sink");
    assert_contiguous(&values, "shutdown");
    let emitted: usize = std::fs::read_to_string(s.path("emitted"))
        .map(|t| t.trim().parse().unwrap())
        .unwrap_or(0);
    assert!(
        values.len() >= emitted,
        "every acknowledged batch is in the file"
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    let s = Setup::new();
    let out = s.path("out.txt");
    let cfg = s.config(
        "shutdown_timeout = \"60s\"",
        &format!(
            "[sources.seq]\nplugin = \"testkit-sequence\"\n{}",
            recorder("rec", out.to_str().unwrap(), &["seq"], "delay = \"30s\"")
        ),
    );
    let mut gw = Running::start(&s, &cfg, &[]);
    assert!(gw.wait_for_log("sink running", Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(200));
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_for_log("shutdown requested", Duration::from_secs(5)));
    assert!(
        gw.wait(Duration::from_millis(500)).is_none(),
        "the first signal waits for the drain"
    );
    gw.signal(libc::SIGINT);
    let status = gw
        .wait(Duration::from_secs(2))
        .expect("the second signal exits at once");
    assert_eq!(status.code(), Some(130));
}

#[test]
fn shutdown_is_bounded_when_a_sink_cannot_finish() {
    let s = Setup::new();
    let out = s.path("out.txt");
    let cfg = s.config(
        "shutdown_timeout = \"1s\"",
        &format!(
            "[sources.seq]\nplugin = \"testkit-sequence\"\n{}",
            recorder(
                "rec",
                out.to_str().unwrap(),
                &["seq"],
                "fail_first = 1000000\nretry_backoff = \"10ms\""
            )
        ),
    );
    let mut gw = Running::start(&s, &cfg, &[]);
    assert!(gw.wait_for_log("write failed; retrying", Duration::from_secs(10)));
    let started = std::time::Instant::now();
    let status = gw.stop(Duration::from_secs(5));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        !status.success(),
        "undelivered readings make a non-zero exit"
    );
    let err = gw.stderr();
    assert!(err.contains("readings not delivered at shutdown"), "{err}");
}

#[test]
fn plugin_logs_are_tagged_and_levels_are_per_instance() {
    let s = Setup::new();
    let out = s.path("out.txt");
    let cfg = s.config(
        "",
        &format!(
            "[sources.loud]\nplugin = \"testkit-sequence\"\ncount = 3\n[sources.quiet]\nplugin = \"testkit-sequence\"\ncount = 3\nlog_level = \"warn\"\n{}",
            recorder("rec", out.to_str().unwrap(), &["loud", "quiet"], "")
        ),
    );
    let mut gw = Running::start(&s, &cfg, &["--until-sources-finish"]);
    let status = gw.wait(Duration::from_secs(20)).expect("exits");
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    let starting: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("sequence starting"))
        .collect();
    assert_eq!(starting.len(), 1, "{err}");
    assert!(starting[0].contains("plugin=\"loud\""), "{err}");
    assert_eq!(s.recorded("out.txt", "quiet").len(), 3);
}

#[test]
fn json_logs_are_one_object_per_line_and_readings_go_to_stdout() {
    let s = Setup::new();
    let cfg = s.config(
        "",
        "[sources.seq]\nplugin = \"testkit-sequence\"\ncount = 3\n[sinks.out]\nplugin = \"console\"\nformat = \"json\"\n",
    );
    let mut gw = Running::start(&s, &cfg, &["--until-sources-finish", "--json"]);
    let status = gw.wait(Duration::from_secs(20)).expect("exits");
    assert!(status.success(), "{}", gw.stderr());
    let err = gw.stderr();
    for line in err.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(err.contains("\"plugin\":\"seq\""), "{err}");
    let stdout = gw.stdout();
    let values: Vec<i64> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["value"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(values, [0, 1, 2], "only readings on stdout: {stdout}");
}

#[test]
fn a_sink_fed_by_two_sources_acknowledges_each_once_both_sinks_took_it() {
    let s = Setup::new();
    let cfg = s.config(
        "",
        &format!(
            "[sources.a]\nplugin = \"testkit-sequence\"\ncount = 20\nbatch_size = 3\n[sources.b]\nplugin = \"testkit-sequence\"\ncount = 20\n{}{}",
            recorder("one", s.path("one.txt").to_str().unwrap(), &["a", "b"], ""),
            recorder("two", s.path("two.txt").to_str().unwrap(), &["a"], "delay = \"20ms\""),
        ),
    );
    let mut gw = Running::start(&s, &cfg, &["--until-sources-finish"]);
    let status = gw.wait(Duration::from_secs(20)).expect("exits");
    assert!(status.success(), "{}", gw.stderr());
    assert_contiguous(&s.recorded("one.txt", "a"), "a into one");
    assert_contiguous(&s.recorded("one.txt", "b"), "b into one");
    assert_contiguous(&s.recorded("two.txt", "a"), "a into two");
    // Each whole, not merely without a gap: an empty file has none.
    assert_eq!(s.recorded("one.txt", "a").len(), 20);
    assert_eq!(s.recorded("one.txt", "b").len(), 20);
    assert_eq!(s.recorded("two.txt", "a").len(), 20);
    assert!(
        s.recorded("two.txt", "b").is_empty(),
        "routing honours inputs"
    );
}

#[test]
fn a_refused_reading_does_not_take_the_others_of_a_merged_write_with_it() {
    let s = Setup::new();
    let out = s.path("out.txt");
    let cfg = s.config(
        "",
        &format!(
            "[sources.seq]\nplugin = \"testkit-sequence\"\ncount = 40\nbatch_size = 1\nwait_ack = false\n{}",
            recorder("rec", out.to_str().unwrap(), &["seq"], "reject_value = 13\nbatch_size = 10\ndelay = \"20ms\"")
        ),
    );
    let mut gw = Running::start(&s, &cfg, &["--until-sources-finish"]);
    let status = gw.wait(Duration::from_secs(20)).expect("exits");
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    assert!(
        err.contains("the sink refused a merged batch; writing its parts one by one"),
        "the writes were merged: {err}"
    );
    let values = s.recorded("out.txt", "seq");
    let expected: Vec<i64> = (0..40).filter(|v| *v != 13).collect();
    assert_eq!(values, expected, "only the refused reading is missing");
    assert_eq!(
        err.matches("sink refused the batch for good").count(),
        1,
        "the bad batch alone: {err}"
    );
    // Not dropped: kept in the sink's dead-letter directory, and nothing else with it.
    let lines = dead_lettered(&cfg, "rec");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("=13 "), "{lines:?}");
}

/// Found in a review: a device that sends readings a sink always refuses filled the sink's
/// dead-letter directory, and then held the sink, and every other device with it, for good.
/// Each device but the gateway's own now has a share of the directory: past it, its refused
/// readings are counted and not kept, and the sink goes on.
#[test]
fn a_device_whose_readings_are_refused_cannot_hold_the_sink_for_the_others() {
    let s = Setup::new();
    let out = s.path("out.txt");
    let cfg = s.config(
        "data_dir = \"data\"",
        &format!(
            "[sources.evil]\nplugin = \"testkit-sequence\"\ncount = 300\nbatch_size = 1\nwait_ack = false\ndevice = \"evil\"\n\
             [sources.good]\nplugin = \"testkit-sequence\"\ncount = 300\nbatch_size = 1\nwait_ack = false\ndevice = \"good\"\n{}",
            recorder(
                "rec",
                out.to_str().unwrap(),
                &["evil", "good"],
                // 300 refused readings take about 120 KB of dead-letter files.
                "reject_device = \"evil\"\ndead_letter_max_size = \"32KiB\""
            )
        ),
    );
    let mut gw = Running::start(&s, &cfg, &["--until-sources-finish"]);
    let status = gw
        .wait(Duration::from_secs(60))
        .expect("the sink went on: the gateway finished");
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    assert_eq!(
        s.recorded("out.txt", "good"),
        (0..300).collect::<Vec<i64>>()
    );
    assert!(s.recorded("out.txt", "evil").is_empty());
    // What evil sent was kept up to its share, an eighth of the directory (4 KiB), and the
    // rest counted and said once, naming it and why.
    let dir = s.path("data/rec/dead-letter");
    let bytes: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(bytes > 0 && bytes <= 4096, "{bytes}");
    let kept = dead_lettered(&cfg, "rec");
    assert!(
        !kept.is_empty() && kept.iter().all(|l| l.contains("evil/")),
        "{kept:?}"
    );
    let said: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("that its dead-letter directory does not keep"))
        .collect();
    assert_eq!(said.len(), 1, "{err}");
    assert!(
        said[0].contains("evil")
            && said[0].contains("past its share of 4096 (dead_letter_device_share)"),
        "{}",
        said[0]
    );
    let not_kept: usize = err
        .lines()
        .rev()
        .find_map(|l| l.split("rejected_not_kept=").nth(1))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("the sink's stats say what was not kept: {err}"));
    assert_eq!(not_kept + kept.len(), 300, "{err}");
}

/// Found in an audit: a reading refused again, which a dead-letter file keeps already, was
/// not counted as settled, so the sink's pending count never came back to 0 and the shutdown
/// waited out its whole timeout, said readings were not delivered and exited 1.
#[test]
fn a_reading_refused_again_is_settled_and_the_shutdown_is_clean() {
    let s = Setup::new();
    let out = s.path("out.txt");
    // The source waits for each reading's acknowledgement; refused, it fails, is restarted
    // and sends value 13 again (the same id), until it is stopped.
    let cfg = s.config(
        "data_dir = \"data\"",
        &format!(
            "[sources.seq]\nplugin = \"testkit-sequence\"\ncount = 20\nbatch_size = 1\nwait_ack = true\nstable_ids = true\nrestart_backoff = \"20ms\"\nrestart_backoff_max = \"20ms\"\n{}",
            recorder("rec", out.to_str().unwrap(), &["seq"], "reject_value = 13")
        ),
    );
    let mut gw = Running::start(&s, &cfg, &[]);
    assert!(
        gw.wait_for_log(
            "sink refused readings again that a dead-letter file already keeps",
            Duration::from_secs(20)
        ),
        "{}",
        gw.stderr()
    );
    let status = gw.stop(Duration::from_secs(20));
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    assert!(!err.contains("not delivered"), "{err}");
    assert!(err.contains("everything in flight was delivered"), "{err}");
    assert_eq!(s.recorded("out.txt", "seq"), (0..13).collect::<Vec<i64>>());
    let lines = dead_lettered(&cfg, "rec");
    assert_eq!(lines.len(), 1, "kept once: {lines:?}");
}

/// A line break in what a log line quotes (a device's name in a sink's refusal) is written as
/// `\n`: it cannot start a line of its own that reads as the gateway's.
#[test]
fn a_line_break_in_a_logged_value_cannot_forge_a_log_line() {
    let s = Setup::new();
    let out = s.path("out.txt");
    let cfg = s.config(
        "",
        &format!(
            "[sources.seq]\nplugin = \"testkit-sequence\"\ncount = 20\nwait_ack = false\ndevice = \"pi\\n2026-12-04T00:00:00Z  INFO forged: DTLS session established\"\n{}",
            recorder("rec", out.to_str().unwrap(), &["seq"], "reject_value = 13")
        ),
    );
    let mut gw = Running::start(&s, &cfg, &["--until-sources-finish"]);
    let status = gw.wait(Duration::from_secs(20)).expect("exits");
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    let refusal = err
        .lines()
        .find(|l| l.contains("simulated refusal of value 13"))
        .unwrap_or_else(|| panic!("the refusal is logged: {err}"));
    assert!(
        refusal.contains("from pi\\n2026-12-04T00:00:00Z  INFO forged"),
        "{refusal}"
    );
    assert!(
        !err.lines().any(|l| l.starts_with("2026-12-04T00:00:00Z")),
        "a forged line: {err}"
    );
}

/// A run of 20 readings into sink `rec` under `data/`, which refuses the one of value 13 for
/// good: the config, and the sink's dead-letter directory holding that reading.
fn one_dead_letter(s: &Setup) -> (std::path::PathBuf, std::path::PathBuf) {
    let out = s.path("out.txt");
    let cfg = s.config(
        "data_dir = \"data\"",
        &format!(
            "[sources.seq]\nplugin = \"testkit-sequence\"\ncount = 20\nbatch_size = 1\nwait_ack = false\n{}",
            recorder("rec", out.to_str().unwrap(), &["seq"], "reject_value = 13")
        ),
    );
    let mut gw = Running::start(s, &cfg, &["--until-sources-finish"]);
    let status = gw.wait(Duration::from_secs(20)).expect("exits");
    assert!(status.success(), "{}", gw.stderr());
    (cfg, s.path("data/rec/dead-letter"))
}

/// The file in `dir` (a sink's dead-letter directory) that holds a refused reading.
fn dead_letter_file(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .expect("the refused reading's file")
}

/// A dead letter's refusal is a peer's or a plugin's text, and its readings' labels may come
/// from a device far away: `list` and `show` escape what would act on the terminal or start a
/// line of its own.
#[test]
fn dead_letters_list_and_show_cannot_act_on_the_terminal() {
    let s = Setup::new();
    let (cfg, dir) = one_dead_letter(&s);
    let real = dead_letter_file(&dir);
    let text = std::fs::read_to_string(&real).unwrap();
    let (head, rest) = text.split_once('\n').unwrap();
    let (before, after) = head.split_once("\"error\":\"").unwrap();
    let head = format!("{before}\"error\":\"\\u001b]0;pwned\\u0007\\nINFO forged{after}");
    let rest = rest.replacen("\"device\":\"", "\"device\":\"\\u001b[2J\\r", 1);
    // Under a name that says no device (as files of before the names did): one that says
    // its device holds no reading of another.
    std::fs::remove_file(&real).unwrap();
    std::fs::write(
        dir.join("1764583200-000000-0.jsonl"),
        format!("{head}\n{rest}"),
    )
    .unwrap();
    for verb in ["list", "show"] {
        let mut args = vec!["dead-letters", verb, "--config", cfg.to_str().unwrap()];
        if verb == "show" {
            args.push("rec");
        }
        let (status, out, err) = gateway(&args);
        assert!(status.success(), "{verb}: {out}{err}");
        assert!(
            out.contains("\\u{1b}]0;pwned\\u{7}\\nINFO forged"),
            "{verb}: {out}"
        );
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{7}') && !out.contains('\r'),
            "{verb}: {out:?}"
        );
        assert!(!out.lines().any(|l| l.starts_with("INFO")), "{verb}: {out}");
        if verb == "show" {
            assert!(out.contains("\\u{1b}[2J\\r"), "{out}");
        }
    }
}

#[test]
fn dead_letters_show_and_resend_name_a_bad_file_and_go_on_with_the_others() {
    let s = Setup::new();
    let (cfg, dir) = one_dead_letter(&s);
    let real = dead_letter_file(&dir);
    // The same reading from before 1970 (a device's time is its own), one from the year
    // 10000, a file that is not a dead letter, and a FIFO named like one.
    let text = std::fs::read_to_string(&real).unwrap();
    let at = |t: &str| {
        let (head, rest) = text.split_once("\"time_us\":").unwrap();
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        format!("{head}\"time_us\":{t}{rest}")
    };
    std::fs::write(dir.join("0000000001-old.jsonl"), at("-1")).unwrap();
    std::fs::write(dir.join("0000000002-far.jsonl"), at("253402300800000000")).unwrap();
    std::fs::write(dir.join("0000000003-bad.jsonl"), "not a dead letter\n").unwrap();
    let fifo = dir.join("0000000004-fifo.jsonl");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let run = |verb: &str| {
        let (status, out, err) = gateway(&[
            "dead-letters",
            verb,
            "--config",
            cfg.to_str().unwrap(),
            "rec",
        ]);
        assert!(!err.contains("panicked"), "{verb}: {err}");
        (status, out, err)
    };
    // Before, `show` panicked at the first of these (exit 101) and stopped at an unreadable
    // file, and a FIFO hung it.
    let (status, shown, err) = run("show");
    assert_eq!(status.code(), Some(1), "{shown}{err}");
    assert!(err.contains("0000000003-bad.jsonl:1"), "{err}");
    assert!(shown.contains("1969-12-31T23:59:59.999999Z"), "{shown}");
    assert!(shown.contains("+10000-01-01T00:00:00.000000Z"), "{shown}");
    assert_eq!(
        shown.lines().filter(|l| l.contains("=13 ")).count(),
        3,
        "{shown}"
    );
    // Every readable file is offered to the sink again (which refuses 13 still), the ones
    // after the bad file too; the bad one is kept, named.
    let (status, out, _) = run("resend");
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("0000000003-bad.jsonl: kept: unreadable"),
        "{out}"
    );
    let name = real.file_name().unwrap().to_str().unwrap();
    assert!(out.contains(&format!("{name}: kept: ")), "{out}");
    assert_eq!(
        out.matches("simulated refusal of value 13").count(),
        3,
        "{out}"
    );
}

/// A file the sink refuses whole because of one reading is offered again in halves: the good
/// readings reach the sink, and the file keeps only the bad one. Before, one bad reading kept
/// its whole file, and `resend` could never deliver the good ones.
#[test]
fn resend_delivers_the_good_readings_of_a_file_and_keeps_the_bad_one() {
    let s = Setup::new();
    let (cfg, dir) = one_dead_letter(&s);
    let real = dead_letter_file(&dir);
    let text = std::fs::read_to_string(&real).unwrap();
    let (head, line) = text.split_once('\n').unwrap();
    let mut head: serde_json::Value = serde_json::from_str(head).unwrap();
    head["readings"] = 5.into();
    let one: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    let id = one["id"].as_str().unwrap().to_owned();
    let mut file = format!("{head}\n");
    for v in [11, 12, 13, 14, 15] {
        let mut r = one.clone();
        r["value"] = serde_json::json!({ "int": v });
        r["id"] = format!("{}{:02x}", &id[..id.len() - 2], v).into();
        file.push_str(&format!("{r}\n"));
    }
    std::fs::write(&real, file).unwrap();
    let out_file = s.path("out.txt");
    let before = std::fs::read_to_string(&out_file).unwrap();
    let (status, out, err) = gateway(&[
        "dead-letters",
        "resend",
        "--config",
        cfg.to_str().unwrap(),
        "rec",
    ]);
    assert_eq!(status.code(), Some(1), "one reading is kept: {out}{err}");
    assert!(
        out.contains("4 readings taken, 1 kept in the file")
            && out.contains("simulated refusal of value 13"),
        "{out}"
    );
    let after = std::fs::read_to_string(&out_file).unwrap();
    let taken: Vec<&str> = after[before.len()..]
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    assert_eq!(taken, ["11", "12", "14", "15"], "in the file's order");
    // The same file, holding the refused reading alone.
    assert_eq!(dead_letter_file(&dir), real);
    let (_, kept) = gateway_host::deadletter::read(&real).unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].value, gateway_sdk::Value::Int(13));
}

/// data_dir is writable by the service's user, so a process running as that user can plant
/// links there. An operator's `sudo gateway dead-letters resend` opened `.resend.lock` with
/// create+truncate through such a link (truncating, say, /etc/shadow); root working in a
/// directory of another user is refused in the first place.
#[test]
fn no_command_follows_a_link_planted_in_data_dir_nor_runs_as_root_there() {
    let s = Setup::new();
    let (cfg, dir) = one_dead_letter(&s);
    // Under the test's umask (022 here), nothing of data_dir is open to other users: readings
    // are a device's whereabouts.
    {
        use std::os::unix::fs::MetadataExt;
        let letter = std::fs::read_dir(&dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        for p in [s.path("data"), s.path("data/rec"), dir.clone(), letter] {
            let mode = std::fs::metadata(&p).unwrap().mode();
            assert_eq!(mode & 0o007, 0, "{} is {:o}", p.display(), mode & 0o777);
        }
    }
    let sentinel = s.path("shadow");
    std::fs::write(&sentinel, "root:secret\n").unwrap();
    std::os::unix::fs::symlink(&sentinel, dir.join(".resend.lock")).unwrap();
    let (status, out, err) = gateway(&[
        "dead-letters",
        "resend",
        "--config",
        cfg.to_str().unwrap(),
        "rec",
    ]);
    assert!(!status.success(), "{out}{err}");
    assert_eq!(
        std::fs::read_to_string(&sentinel).unwrap(),
        "root:secret\n",
        "{err}"
    );
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::fs::remove_file(dir.join(".resend.lock")).unwrap();
        std::os::unix::fs::chown(s.path("data"), Some(65534), Some(65534)).unwrap();
        for args in [
            vec![
                "dead-letters",
                "resend",
                "--config",
                cfg.to_str().unwrap(),
                "rec",
            ],
            vec!["run", "--config", cfg.to_str().unwrap()],
        ] {
            let (status, out, err) = gateway(&args);
            assert!(!status.success(), "{args:?}: {out}{err}");
            assert!(
                err.contains("this runs as root: run it as that user"),
                "{args:?}: {err}"
            );
        }
    } else {
        // Only root can run as root in another user's data_dir; CI runs as root, so there
        // this half must run, not pass unrun.
        assert!(std::env::var("CI").is_err(), "CI runs the suite as root");
        eprintln!("skipped: root in another user's data_dir (needs root)");
    }
}

#[test]
fn only_the_refused_reading_of_a_batch_is_dead_lettered_queued_or_buffered() {
    // One source batch of 40 readings, one of which the sink refuses for good: the batch is
    // written again in halves until the bad reading is alone. From a disk buffer too, whose
    // record holds the whole source batch.
    for buffer in ["", "buffer = { type = \"disk\" }"] {
        let s = Setup::new();
        let out = s.path("out.txt");
        let cfg = s.config(
            "",
            &format!(
                "[sources.seq]\nplugin = \"testkit-sequence\"\ncount = 40\nbatch_size = 40\nwait_ack = false\n{}",
                recorder("rec", out.to_str().unwrap(), &["seq"], &format!("reject_value = 13\nbatch_size = 40\n{buffer}"))
            ),
        );
        let mut gw = Running::start(&s, &cfg, &["--until-sources-finish"]);
        let status = gw.wait(Duration::from_secs(20)).expect("exits");
        let err = gw.stderr();
        assert!(status.success(), "{buffer}: {err}");
        assert!(
            err.contains("writing it again in halves"),
            "{buffer}: {err}"
        );
        // In the batch's order: the halves go first half first.
        let values = s.recorded("out.txt", "seq");
        let expected: Vec<i64> = (0..40).filter(|v| *v != 13).collect();
        assert_eq!(
            values, expected,
            "{buffer}: only the refused reading is missing"
        );
        let lines = dead_lettered(&cfg, "rec");
        assert_eq!(lines.len(), 1, "{buffer}: {lines:?}");
        assert!(lines[0].contains("=13 "), "{buffer}: {lines:?}");
    }
}

#[test]
fn a_refused_batch_that_cannot_be_dead_lettered_is_held_not_dropped() {
    let s = Setup::new();
    let out = s.path("out.txt");
    let port = free_tcp_port();
    let cfg = s.config(
        &format!("metrics = \"127.0.0.1:{port}\""),
        &format!(
            "[sources.seq]\nplugin = \"testkit-sequence\"\ncount = 3\nbatch_size = 3\nwait_ack = false\n{}",
            recorder("rec", out.to_str().unwrap(), &["seq"], "reject_value = 1\nretry_backoff = \"50ms\"\nretry_backoff_max = \"100ms\"")
        ),
    );
    // Where the dead-letter directory should be, a file: nothing can be written there.
    std::fs::create_dir_all(s.path("data/rec")).unwrap();
    std::fs::write(s.path("data/rec/dead-letter"), "in the way").unwrap();
    let mut gw = Running::start(&s, &cfg, &["--until-sources-finish"]);
    assert!(gw.wait_for_log(
        "its dead-letter file cannot be written; holding the batch",
        Duration::from_secs(10)
    ));
    assert!(
        gw.wait(Duration::from_millis(500)).is_none(),
        "it holds, it does not finish"
    );
    // The page says so (the refused reading, after the halving), and so does `gateway status`.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_, page) = gateway_host::metrics::get(addr, "/metrics").unwrap();
    assert!(
        page.contains("gateway_sink_dead_letter_held_readings{instance=\"rec\"} 1\n"),
        "{page}"
    );
    let (status, shown, _) = gateway(&["status", "--config", cfg.to_str().unwrap()]);
    assert!(!status.success());
    assert!(
        shown.contains("stalled: sink rec holds 1 refused readings"),
        "{shown}"
    );
    std::fs::remove_file(s.path("data/rec/dead-letter")).unwrap();
    let status = gw
        .wait(Duration::from_secs(10))
        .expect("exits once the file is written");
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    // The batch was written again in halves: only the refused reading is kept.
    let lines = dead_lettered(&cfg, "rec");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("=1 "), "{lines:?}");
    assert_eq!(s.recorded("out.txt", "seq"), vec![0, 2], "{err}");
}

/// Each write of a recorder with `mark_threads`, in order: its thread and the values of
/// sensor `seq` it wrote.
fn writes_by_thread(s: &Setup, file: &str) -> Vec<(String, Vec<i64>)> {
    let mut writes: Vec<(String, Vec<i64>)> = Vec::new();
    for l in s.lines(file) {
        if let Some((_, t)) = l.split_once(" thread ") {
            writes.push((t.to_owned(), Vec::new()));
        } else if let Some(v) = l.strip_prefix("seq ").and_then(|v| v.split(' ').next()) {
            let values = &mut writes.last_mut().expect("marked").1;
            values.push(v.parse().unwrap());
        }
    }
    writes
}

/// The thread of each write of a recorder with `mark_threads`, in order.
fn write_threads(s: &Setup, file: &str) -> Vec<String> {
    writes_by_thread(s, file)
        .into_iter()
        .map(|(t, _)| t)
        .collect()
}

/// An idle sink whose writes are quick is written on the emitting source's thread: no thread
/// hand-off on the way in, none for the acknowledgement. The first write, before the host has
/// seen how quick the sink is, goes through the sink's thread.
#[test]
fn a_quick_idle_sink_is_written_on_the_sources_thread() {
    let s = Setup::new();
    let out = s.path("out.txt");
    let cfg = s.config(
        "",
        &format!(
            "[sources.seq]\nplugin = \"testkit-sequence\"\ncount = 60\ninterval = \"2ms\"\n\
             [sinks.rec]\nplugin = \"testkit-recorder\"\npath = {:?}\nmark_writes = true\nmark_threads = true\nhold_lines = true\n",
            out.to_str().unwrap()
        ),
    );
    let mut gw = Running::start(&s, &cfg, &["--until-sources-finish"]);
    let status = gw.wait(Duration::from_secs(20)).expect("exits");
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    assert_eq!(s.recorded("out.txt", "seq"), (0..60).collect::<Vec<i64>>());
    let threads = write_threads(&s, "out.txt");
    assert_eq!(threads[0], "sink:rec", "{threads:?}");
    let direct = threads.iter().filter(|t| *t == "source:seq").count();
    // A write slower than 50 µs (a busy machine, a debug build) goes back to the sink's
    // thread until one there is quick again: many, not all, are written here.
    assert!(
        direct >= threads.len() / 3,
        "a third of the writes or more on the source's thread: {threads:?}"
    );
    assert!(
        threads.iter().all(|t| t == "source:seq" || t == "sink:rec"),
        "{threads:?}"
    );
    assert!(err.contains(&format!("direct_writes={direct}")), "{err}");
}

/// A sink whose write takes longer than a thread hand-off is always written on its own
/// thread: a source is not held up by it, and batches form while it writes.
#[test]
fn a_slow_sink_is_written_on_its_own_thread_only() {
    let s = Setup::new();
    let out = s.path("out.txt");
    let cfg = s.config(
        "",
        &format!(
            "[sources.seq]\nplugin = \"testkit-sequence\"\ncount = 20\ninterval = \"5ms\"\n\
             [sinks.rec]\nplugin = \"testkit-recorder\"\npath = {:?}\ndelay = \"1ms\"\nmark_writes = true\nmark_threads = true\n",
            out.to_str().unwrap()
        ),
    );
    let mut gw = Running::start(&s, &cfg, &["--until-sources-finish"]);
    let status = gw.wait(Duration::from_secs(20)).expect("exits");
    assert!(status.success(), "{}", gw.stderr());
    assert_eq!(s.recorded("out.txt", "seq"), (0..20).collect::<Vec<i64>>());
    let threads = write_threads(&s, "out.txt");
    assert_eq!(threads.len(), 20);
    assert!(threads.iter().all(|t| t == "sink:rec"), "{threads:?}");
}

/// A write on a source's thread that fails is not the end of its batch: the sink's thread
/// takes it and dead-letters a refusal, or rebuilds a panicked instance and writes it there;
/// after a panic, the sink is no longer written on other threads.
#[test]
fn a_write_that_fails_on_the_sources_thread_is_settled_by_the_sinks_thread() {
    let s = Setup::new();
    let out = s.path("out.txt");
    let cfg = s.config(
        "",
        &format!(
            "[sources.seq]\nplugin = \"testkit-sequence\"\ncount = 60\ninterval = \"2ms\"\nwait_ack = false\n\
             [sinks.rec]\nplugin = \"testkit-recorder\"\npath = {:?}\nmark_writes = true\nmark_threads = true\nhold_lines = true\n\
             reject_value = 10\npanic_on_write = 40\nrestart_backoff = \"10ms\"\n",
            out.to_str().unwrap()
        ),
    );
    let mut gw = Running::start(&s, &cfg, &["--until-sources-finish"]);
    let Some(status) = gw.wait(Duration::from_secs(20)) else {
        panic!("did not exit: {}", gw.stderr());
    };
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    let expected: Vec<i64> = (0..60).filter(|v| *v != 10).collect();
    assert_eq!(s.recorded("out.txt", "seq"), expected, "{err}");
    assert!(
        err.contains("plugin panicked in write: recorder panics on write 40"),
        "{err}"
    );
    assert!(err.contains("sink failed; rebuilding it"), "{err}");
    assert_eq!(
        err.matches("sink refused the batch for good").count(),
        1,
        "{err}"
    );
    let lines = dead_lettered(&cfg, "rec");
    assert!(lines.len() == 1 && lines[0].contains("=10 "), "{lines:?}");
    let writes = writes_by_thread(&s, "out.txt");
    let direct = writes.iter().filter(|(t, _)| t == "source:seq").count();
    assert!(direct >= 10, "{writes:?}");
    if err.contains("from now on the sink is written on its own thread only") {
        // The panic (write 40) was met on the source's thread: nothing from then on was
        // written there. Of the 39 writes before it, the one refused (value 10) recorded
        // nothing, so the first 38 recorded are those before the panic, whichever values the
        // batching put in each (a run batched so that value 39 went on the source's thread
        // and the panic came at value 41).
        assert!(writes.len() > 38, "{writes:?}");
        assert!(
            writes[38..].iter().all(|(t, _)| t == "sink:rec"),
            "{writes:?}"
        );
    }
}

/// A sink that takes several batches at once and comes back after an outage: once one write
/// succeeds, the batches waiting out a backoff that grew during the outage go at once, and the
/// backlog drains in about the time of one backoff, not of the longest.
#[test]
fn a_write_that_succeeds_brings_forward_the_retries_waiting_in_the_window() {
    let s = Setup::new();
    let out = s.path("out.txt");
    let cfg = s.config(
        "",
        &format!(
            "[sources.seq]\nplugin = \"testkit-sequence\"\ncount = 40\nbatch_size = 10\nwait_ack = false\n\
             [sinks.rec]\nplugin = \"testkit-recorder\"\npath = {:?}\nwindow = 4\nbatch_size = 10\n\
             fail_first = 10\nretry_backoff = \"1s\"\nretry_backoff_max = \"20s\"\n",
            out.to_str().unwrap()
        ),
    );
    let started = std::time::Instant::now();
    // At debug: every retry is said (at warn, one a minute).
    let mut gw = Running::start(
        &s,
        &cfg,
        &["--until-sources-finish", "--log-level", "debug"],
    );
    let Some(status) = gw.wait(Duration::from_secs(20)) else {
        panic!("did not exit: {}", gw.stderr());
    };
    let took = started.elapsed();
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    let mut values = s.recorded("out.txt", "seq");
    values.sort();
    assert_eq!(values, (0..40).collect::<Vec<i64>>(), "{err}");
    // Four writes failed, then four again, then two of four (their next retry 4 s away, the
    // backoff of the outage); the other two went through, and the two waiting followed at
    // once (or after the first backoff, 1 s, if their failure was heard after the success):
    // about 3 to 4 s in all, against 7 s when they waited out their backoff.
    assert!(
        err.matches("write failed; retrying in 1s").count() >= 4,
        "{err}"
    );
    assert_eq!(
        err.matches("write failed; retrying in 2s").count(),
        4,
        "{err}"
    );
    assert!(
        took < Duration::from_millis(5500),
        "drained in {took:?}: the retries waited out their backoff"
    );
}

/// Found in a review: the dead letters of a sink renamed or removed from the config were
/// shown by no command (`list` walked the config's sinks only) and said by nothing.
#[test]
fn dead_letters_of_a_sink_the_config_no_longer_has_are_listed() {
    let s = Setup::new();
    let (cfg, _) = one_dead_letter(&s);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("[sinks.rec]", "[sinks.renamed]")).unwrap();
    let (status, out, err) = gateway(&["dead-letters", "list", "--config", cfg.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    assert!(
        out.contains("rec  ")
            && out.contains(
                "1 files of a sink this config does not have: add a sink named rec again"
            ),
        "{out}"
    );
    assert!(!out.contains("no dead letters"), "{out}");
}

/// Found in a review: whoever may write a group-writable `data_dir` could put a link in
/// place of one sink's directory to another's, and `resend` sent the other sink's dead letters
/// with this sink's credentials (and removed them from where they belonged).
#[test]
fn resend_sends_no_dead_letter_of_another_sink() {
    let s = Setup::new();
    let (cfg, dir) = one_dead_letter(&s);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let other = recorder("other", s.path("other.txt").to_str().unwrap(), &["seq"], "");
    std::fs::write(&cfg, format!("{text}\n{other}")).unwrap();
    let theirs = s.path("data/other/dead-letter");
    std::fs::create_dir_all(&theirs).unwrap();
    let file = dead_letter_file(&dir);
    std::fs::copy(&file, theirs.join(file.file_name().unwrap())).unwrap();
    let (status, out, err) = gateway(&[
        "dead-letters",
        "resend",
        "other",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(
        out.contains("kept: a dead letter of sink rec, not of other"),
        "{out}"
    );
    assert!(
        s.recorded("other.txt", "seq").is_empty(),
        "nothing was sent"
    );
    assert_eq!(
        std::fs::read_dir(&theirs).unwrap().count(),
        2,
        "the file and the lock stay"
    );
}
