//! Disk buffers in the real `gateway`: readings kept across kill -9 while the sink is down, a torn
//! tail cut off and counted, `drop_oldest` counting what it drops, and config errors.

mod support;
use std::time::{Duration, Instant};
use support::*;

fn wait_file(s: &Setup, name: &str, want: &str, gw: &Running) {
    let end = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(s.path(name))
        .unwrap_or_default()
        .trim()
        != want
    {
        assert!(
            Instant::now() < end,
            "{name} never reached {want}: {}",
            gw.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A sequence of `count` readings in batches of `batch`, into a recorder sink with `buffer`.
fn buffered(
    s: &Setup,
    (count, batch): (u64, u64),
    extra_rec: &str,
    buffer: &str,
) -> std::path::PathBuf {
    s.config(
        &format!("data_dir = {:?}", s.path("data").display().to_string()),
        &format!(
            r#"[sources.seq]
plugin = "testkit-sequence"
count = {count}
batch_size = {batch}
emitted_path = {emitted:?}
resume = true

[sinks.rec]
plugin = "testkit-recorder"
path = {out:?}
batch_timeout = "5ms"
retry_backoff = "20ms"
retry_backoff_max = "50ms"
buffer = {buffer}
{extra_rec}
"#,
            emitted = s.path("emitted").display().to_string(),
            out = s.path("out.txt").display().to_string(),
        ),
    )
}

/// [`buffered`] run as a job until the source has finished: the gateway's log, once it has
/// exited successfully.
fn buffered_job(s: &Setup, count_batch: (u64, u64), extra_rec: &str, buffer: &str) -> String {
    job(s, &buffered(s, count_batch, extra_rec, buffer))
}

/// `cfg` run as a job until its sources have finished: the gateway's log, once it has exited
/// successfully.
fn job(s: &Setup, cfg: &std::path::Path) -> String {
    let mut gw = Running::start(s, cfg, &["--until-sources-finish"]);
    let status = gw.wait(Duration::from_secs(30)).expect("exits");
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    err
}

/// `cfg` with `shutdown_timeout = timeout` in its `[gateway]` table, rewritten in place.
fn with_shutdown_timeout(cfg: &std::path::Path, timeout: &str) {
    let text = std::fs::read_to_string(cfg).unwrap().replacen(
        "[gateway]",
        &format!("[gateway]\nshutdown_timeout = {timeout:?}"),
        1,
    );
    std::fs::write(cfg, text).unwrap();
}

#[test]
fn readings_survive_kill_9_while_the_sink_is_down_and_a_torn_tail_is_cut_off() {
    let s = Setup::new();
    // First run: the sink fails every write, so everything stays in the buffer.
    let cfg = buffered(
        &s,
        (300, 10),
        "fail_first = 1000000",
        r#"{ type = "disk" }"#,
    );
    let mut gw = Running::start(&s, &cfg, &[]);
    wait_file(&s, "emitted", "300", &gw);
    gw.signal(libc::SIGKILL);
    gw.wait(Duration::from_secs(10)).expect("killed");
    assert!(s.recorded("out.txt", "seq").is_empty());
    // A crash in the middle of an append: garbage after the last whole record.
    let dir = s.path("data/rec/buffer");
    let mut segs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    let last = segs.last().expect("a segment");
    let mut bytes = std::fs::read(last).unwrap();
    bytes.extend_from_slice(&[0x55; 37]);
    std::fs::write(last, bytes).unwrap();

    // Second run: the sink works; the source has nothing left to make.
    let cfg = buffered(&s, (300, 10), "", r#"{ type = "disk" }"#);
    let mut gw = Running::start(&s, &cfg, &["--until-sources-finish"]);
    let status = gw.wait(Duration::from_secs(30)).expect("exits");
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    assert!(
        err.contains("disk buffer recovered readings not yet delivered")
            && err.contains("readings=300"),
        "{err}"
    );
    assert!(err.contains("torn or corrupt tail"), "{err}");
    assert!(err.contains("corrupt_records=1"), "{err}");
    let values = s.recorded("out.txt", "seq");
    assert_contiguous(&values, "after kill -9");
    assert_eq!(values.len(), 300, "{err}");
}

#[test]
fn a_config_error_at_write_time_holds_the_buffered_readings_until_the_sink_works() {
    // The sink's first writes fail with a config error (a table of a newer schema, say): the
    // host rebuilds it with backoff and holds the records, it does not settle them away.
    let s = Setup::new();
    let err = buffered_job(
        &s,
        (100, 10),
        "config_error_first = 3\nrestart_backoff = \"10ms\"\nrestart_backoff_max = \"20ms\"",
        r#"{ type = "disk" }"#,
    );
    assert_eq!(
        err.matches("simulated config error").count(),
        3,
        "each failed write is logged: {err}"
    );
    assert!(err.contains("sink failed; rebuilding it"), "{err}");
    // (A backlog and the live lane may go out side by side: compare as a set.)
    let mut values = s.recorded("out.txt", "seq");
    values.sort_unstable();
    assert_contiguous(&values, "after the config errors");
    assert_eq!(values.len(), 100, "nothing settled away: {err}");
    assert!(err.contains("everything in flight was delivered"), "{err}");
}

#[test]
fn a_buffered_sink_that_says_it_stopped_while_the_gateway_runs_keeps_going() {
    // Taken as final, STOPPED ended the buffered sink's thread for good: the buffer then
    // filled behind a sink nobody wrote to.
    let s = Setup::new();
    let err = buffered_job(
        &s,
        (100, 10),
        "stopped_first = 3\nrestart_backoff = \"10ms\"\nrestart_backoff_max = \"20ms\"",
        r#"{ type = "disk" }"#,
    );
    assert_eq!(
        err.matches("the sink said it stopped, but the gateway runs")
            .count(),
        3,
        "{err}"
    );
    let mut values = s.recorded("out.txt", "seq");
    values.sort_unstable();
    assert_contiguous(&values, "after the sink said it stopped");
    assert_eq!(values.len(), 100, "{err}");
    assert!(err.contains("everything in flight was delivered"), "{err}");
}

#[test]
fn drop_oldest_keeps_the_limit_and_counts_every_reading_it_drops() {
    let s = Setup::new();
    let cfg = buffered(
        &s,
        (20000, 100),
        "fail_first = 1000000",
        r#"{ type = "disk", max_size = "256KiB", when_full = "drop_oldest" }"#,
    );
    // With a metrics page, for `gateway status`.
    let addr = format!("127.0.0.1:{}", free_tcp_port());
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "data_dir = ",
        &format!("metrics = {addr:?}\ndata_dir = "),
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let mut gw = Running::start(&s, &cfg, &[]);
    wait_file(&s, "emitted", "20000", &gw);
    let (_, shown, _) = gateway(&["status", "--config", cfg.to_str().unwrap()]);
    let rec = shown
        .lines()
        .find(|l| l.trim_start().starts_with("rec "))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(rec.contains("dropped when full"), "{shown}");
    let status = gw.stop(Duration::from_secs(20));
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    assert!(err.contains("dropped its oldest readings"), "{err}");
    let stats = err
        .lines()
        .rev()
        .find(|l| l.contains("disk buffer stats"))
        .expect("buffer stats at shutdown");
    let field = |k: &str| log_u64(stats, &format!(" {k}=")).unwrap();
    assert!(field("bytes") <= 256 * 1024, "{stats}");
    assert!(field("dropped") > 0, "{stats}");
    assert_eq!(field("held") + field("dropped"), 20_000, "{stats}");
    // What it dropped is no longer pending: the sink's pending figure (as the metrics page,
    // the internal source and `gateway status` give it) is what the buffer still holds.
    let sink = err
        .lines()
        .rev()
        .find(|l| l.contains("sink stats"))
        .expect("sink stats at shutdown");
    assert_eq!(
        log_u64(sink, " pending=").unwrap(),
        field("held"),
        "{sink}\n{stats}"
    );
}

#[test]
fn buffer_settings_are_checked_with_file_line_and_key() {
    let s = Setup::new();
    for (buffer, want) in [
        (
            r#"{ type = "disk", max_size = "lots" }"#,
            "buffer.max_size: invalid size \"lots\"",
        ),
        (
            r#"{ type = "disk", when_full = "drop" }"#,
            "buffer.when_full: expected \"block\" or \"drop_oldest\"",
        ),
        (
            r#"{ type = "tape" }"#,
            "buffer.type: unknown buffer type \"tape\"",
        ),
        (r#"{ max_size = "1GB" }"#, "buffer.type: missing"),
        (
            r#"{ type = "disk", fsync = "sometimes" }"#,
            "buffer.fsync: expected \"always\"",
        ),
        (
            r#"{ type = "disk", size = "1GB" }"#,
            "buffer.size: unknown key",
        ),
        (r#""disk""#, "buffer: expected a table"),
    ] {
        let cfg = s.config(
            "",
            &format!("[sources.c]\nplugin = \"example\"\n[sinks.o]\nplugin = \"console\"\nbuffer = {buffer}\n"),
        );
        let (status, _, err) = gateway(&["check", "--config", cfg.to_str().unwrap()]);
        assert!(!status.success(), "{buffer} was accepted");
        assert!(
            err.contains(&format!("gateway.toml:10: [sinks.o] {want}")),
            "{buffer}: {err}"
        );
    }
}

#[test]
fn check_leaves_a_running_buffer_alone_and_a_second_gateway_on_it_is_refused() {
    let s = Setup::new();
    let cfg = buffered(
        &s,
        (300, 10),
        "fail_first = 1000000",
        r#"{ type = "disk", max_size = "8MiB" }"#,
    );
    let mut gw = Running::start(&s, &cfg, &[]);
    wait_file(&s, "emitted", "300", &gw);
    let (status, out, err) = gateway(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains("disk buffer in") && out.contains("of 8388608 bytes used"),
        "{out}"
    );
    let (status, _, err) = gateway(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(!status.success());
    assert!(
        err.contains("[sinks.rec] buffer: cannot open the disk buffer in")
            && err.contains("in use by another gateway process"),
        "{err}"
    );
    assert!(
        gw.stop(Duration::from_secs(20)).success(),
        "{}",
        gw.stderr()
    );
}

/// A sink that takes several batches at once (its `window`), whose writes end out of order:
/// several are in flight, every reading is stored, and the buffer lets a record go only once
/// it and every record before it are stored, so that a kill -9 with writes in flight loses
/// nothing (what was in flight is sent again).
#[test]
fn a_sink_with_a_window_keeps_writes_in_flight_and_kill_9_loses_nothing() {
    let s = Setup::new();
    let sink = "window = 4\nmark_writes = true\nbatch_size = 10\ndelay = \"40ms\"\nfail_first = 3";
    let cfg = buffered(&s, (300, 10), sink, r#"{ type = "disk" }"#);
    let mut gw = Running::start(&s, &cfg, &[]);
    // Kill it while writes are in flight, some of them done, out of order, before others.
    wait_file(&s, "emitted", "300", &gw);
    // The first three writes fail and are retried: the buffer may let records go only once
    // they are stored, so wait for them (readings 0..30), then for two more batches, time for
    // the host to settle them, with later writes still in flight.
    let end = Instant::now() + Duration::from_secs(20);
    let recorded = |s: &Setup| s.recorded("out.txt", "seq");
    while {
        let r = recorded(&s);
        r.len() < 60 || (0..30).any(|v| !r.contains(&v))
    } {
        assert!(Instant::now() < end, "{}", gw.stderr());
        std::thread::sleep(Duration::from_millis(5));
    }
    let settled = (recorded(&s).len() + 20).min(300);
    while recorded(&s).len() < settled {
        assert!(Instant::now() < end, "{}", gw.stderr());
        std::thread::sleep(Duration::from_millis(5));
    }
    gw.signal(libc::SIGKILL);
    gw.wait(Duration::from_secs(10)).expect("killed");
    let first = s.recorded("out.txt", "seq");

    // The next start sends what is left (its writes do not fail: a write that fails while
    // the host drains leaves its readings on disk).
    let sink = "window = 4\nmark_writes = true\nbatch_size = 10\ndelay = \"40ms\"";
    let cfg = buffered(&s, (300, 10), sink, r#"{ type = "disk" }"#);
    let mut gw = Running::start(&s, &cfg, &["--until-sources-finish"]);
    let status = gw.wait(Duration::from_secs(30)).expect("exits");
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    assert!(
        err.contains("the sink takes several batches at once window=4"),
        "{err}"
    );
    let mut all = s.recorded("out.txt", "seq");
    let again = all.len() - first.len();
    all.sort_unstable();
    all.dedup();
    assert_contiguous(&all, "writes in flight at kill -9");
    assert_eq!(all.len(), 300, "{err}");
    assert!(
        again < 300,
        "only what was not stored before went again: {again}"
    );
    let inflight: Vec<usize> = s
        .lines("out.txt")
        .iter()
        .filter_map(|l| l.split(" inflight ").nth(1)?.parse().ok())
        .collect();
    assert!(
        inflight.iter().any(|&k| k > 1),
        "several writes were in flight at once: {inflight:?}"
    );
    let out_of_order = first.windows(2).any(|w| w[1] < w[0]);
    assert!(out_of_order, "writes ended out of order: {first:?}");

    // A third start finds nothing left in the buffer.
    let before = s.recorded("out.txt", "seq").len();
    let mut gw = Running::start(&s, &cfg, &["--until-sources-finish"]);
    assert!(gw.wait(Duration::from_secs(30)).expect("exits").success());
    assert_eq!(
        s.recorded("out.txt", "seq").len(),
        before,
        "{}",
        gw.stderr()
    );
}

#[test]
fn a_buffer_the_config_no_longer_has_is_still_sent_and_an_orphaned_one_is_named() {
    // The readings in a disk buffer were acknowledged to their source as stored. Before, a
    // start whose config had dropped the sink's `buffer` never opened it again: they were
    // never sent, and nothing said so.
    let fill = |s: &Setup| {
        let cfg = buffered(s, (300, 10), "fail_first = 1000000", r#"{ type = "disk" }"#);
        let mut gw = Running::start(s, &cfg, &[]);
        wait_file(s, "emitted", "300", &gw);
        gw.signal(libc::SIGKILL);
        gw.wait(Duration::from_secs(10)).expect("killed");
        assert!(s.recorded("out.txt", "seq").is_empty());
        cfg
    };
    let without_buffer = |cfg: &std::path::Path, sink: &str| {
        let text = std::fs::read_to_string(cfg).unwrap();
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with("buffer = ") && !l.starts_with("fail_first"))
            .map(|l| {
                if l == "[sinks.rec]" {
                    format!("[sinks.{sink}]\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(cfg, text).unwrap();
    };
    let s = Setup::new();
    let cfg = fill(&s);
    without_buffer(&cfg, "rec");
    let err = job(&s, &cfg);
    assert!(
        err.contains(
            "the config gives this sink no disk buffer, but an earlier run left readings in one"
        ) && err.contains("readings=300"),
        "{err}"
    );
    let values = s.recorded("out.txt", "seq");
    assert_contiguous(&values, "from the buffer the config dropped");
    assert_eq!(values.len(), 300, "{err}");
    // Emptied: the next start runs the sink without it, and says nothing of it.
    let err = job(&s, &cfg);
    assert!(!err.contains("earlier run left"), "{err}");

    // A sink renamed: only a sink of the old name sends them; the start names them.
    let s = Setup::new();
    let cfg = fill(&s);
    without_buffer(&cfg, "renamed");
    let err = job(&s, &cfg);
    assert!(
        err.contains("a disk buffer holds unsent readings of a sink this config does not have")
            && err.contains("sink=rec "),
        "{err}"
    );
    // Nothing is said of one that holds nothing unsent (the first part's, emptied).
    let s2 = Setup::new();
    let cfg = fill(&s2);
    without_buffer(&cfg, "rec");
    job(&s2, &cfg);
    without_buffer(&cfg, "renamed");
    let err = job(&s2, &cfg);
    assert!(!err.contains("unsent readings"), "{err}");
}

#[test]
fn a_job_drains_its_buffer_before_it_exits_and_says_what_a_down_sink_left_behind() {
    // The sink fails its first writes: the job waits for the retries and delivers everything.
    let s = Setup::new();
    let cfg = buffered(&s, (200, 10), "fail_first = 3", r#"{ type = "disk" }"#);
    let mut gw = Running::start(&s, &cfg, &["--until-sources-finish"]);
    let status = gw.wait(Duration::from_secs(30)).expect("exits");
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    assert_eq!(s.recorded("out.txt", "seq").len(), 200, "{err}");
    assert!(err.contains("everything in flight was delivered"), "{err}");

    // The sink is down for good: the job gives up at shutdown_timeout, exits 1, and its last
    // line says how many readings wait in which buffer, not that everything was delivered.
    let s = Setup::new();
    let mut cfg = buffered(
        &s,
        (200, 10),
        "fail_first = 1000000",
        r#"{ type = "disk" }"#,
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replacen("[gateway]", "[gateway]\nshutdown_timeout = \"1s\"", 1);
    cfg = s.path("down.toml");
    std::fs::write(&cfg, text).unwrap();
    let started = Instant::now();
    let mut gw = Running::start(&s, &cfg, &["--until-sources-finish"]);
    let status = gw.wait(Duration::from_secs(30)).expect("exits");
    let err = gw.stderr();
    assert!(!status.success(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15), "{err}");
    let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        !last.contains("everything in flight was delivered"),
        "{last}"
    );
    let dir = s.path("data/rec/buffer").display().to_string();
    assert!(
        last.contains("200 readings remain in disk buffers")
            && last.contains(&format!("rec: 200 in {dir}")),
        "{last}"
    );
    assert!(s.recorded("out.txt", "seq").is_empty());
}

#[test]
fn a_signal_while_a_buffered_sink_cannot_deliver_exits_0_with_its_readings_on_disk() {
    // The README: `run` exits 0 after a signal when what is left waits in a disk buffer. A
    // sink whose write was still going at the deadline made the run unclean (exit 1,
    // "readings undelivered"), though nothing was in memory: a Ctrl-C of a gateway whose
    // uplink waited for an answer (its own ingress had stopped first) exited 1.
    for (sink, waiting_for) in [
        ("fail_first = 1000000", "write failed; retrying"),
        ("delay = \"30s\"", "sink running"),
    ] {
        let s = Setup::new();
        let cfg = buffered(&s, (200, 10), sink, r#"{ type = "disk" }"#);
        with_shutdown_timeout(&cfg, "1s");
        let mut gw = Running::start(&s, &cfg, &[]);
        assert!(gw.wait_for_log(waiting_for, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(300));
        let status = gw.stop(Duration::from_secs(15));
        let err = gw.stderr();
        assert!(status.success(), "{sink}: {err}");
        let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
        let dir = s.path("data/rec/buffer").display().to_string();
        assert!(
            last.contains("readings remain in disk buffers")
                && last.contains("none is lost")
                && last.contains(&format!("rec: 200 in {dir}")),
            "{sink}: {last}"
        );
        assert!(s.recorded("out.txt", "seq").is_empty(), "{sink}");
    }
    // Without a disk buffer, the readings of that write are in memory only: they are
    // undelivered, and the run is not clean.
    let s = Setup::new();
    let cfg = buffered(&s, (200, 10), "delay = \"30s\"", r#"{ type = "memory" }"#);
    with_shutdown_timeout(&cfg, "1s");
    let mut gw = Running::start(&s, &cfg, &[]);
    assert!(gw.wait_for_log("sink running", Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(300));
    let status = gw.stop(Duration::from_secs(15));
    let err = gw.stderr();
    assert!(!status.success(), "{err}");
    assert!(err.contains("readings not delivered at shutdown"), "{err}");
}

#[test]
fn a_signal_while_a_full_buffer_holds_the_sources_back_loses_nothing_queued() {
    // A sink that is down behind a full buffer (`when_full = "block"`): the batches its writer
    // holds and those queued for it are in memory only. At a signal no room is ever freed,
    // and they were dropped at the deadline (exit 1, "readings not delivered at shutdown");
    // they are written past max_size instead, and the run ends clean.
    let s = Setup::new();
    let cfg = buffered(
        &s,
        (1_000_000, 100),
        "fail_first = 1000000",
        r#"{ type = "disk", max_size = "256KiB", when_full = "block" }"#,
    );
    with_shutdown_timeout(&cfg, "2s");
    let mut gw = Running::start(&s, &cfg, &[]);
    assert!(gw.wait_for_log("disk buffer is full: holding", Duration::from_secs(30)));
    std::thread::sleep(Duration::from_millis(300));
    let status = gw.stop(Duration::from_secs(15));
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    assert!(
        err.contains("writing what is queued past max_size"),
        "{err}"
    );
    let emitted: u64 = std::fs::read_to_string(s.path("emitted"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    let dir = s.path("data/rec/buffer").display().to_string();
    assert!(
        last.contains("none is lost") && last.contains(&format!("rec: {emitted} in {dir}")),
        "{emitted} emitted: {last}"
    );
}

#[test]
fn a_buffered_sink_waiting_to_be_rebuilt_lets_a_shutdown_end_at_once() {
    // The sink fails to build again and again (a wrong password, say), so it waits 30 s
    // between tries. A shutdown did not end that wait until the deadline (shutdown_timeout,
    // 30 s here), and then counted the sink as not drained (exit 1), though its readings are
    // on disk.
    let s = Setup::new();
    let cfg = s.config(
        &format!(
            "data_dir = {:?}\nshutdown_timeout = \"30s\"",
            s.path("data").display().to_string()
        ),
        &format!(
            r#"[sources.seq]
plugin = "testkit-sequence"
count = 20
batch_size = 10

[sinks.rec]
plugin = "testkit-recorder"
path = {:?}
config_error_first = 1000
restart_backoff = "30s"
restart_backoff_max = "30s"
buffer = {{ type = "disk" }}
"#,
            s.path("out.txt").display().to_string()
        ),
    );
    let mut gw = Running::start(&s, &cfg, &[]);
    assert!(
        gw.wait_for_log("simulated config error", Duration::from_secs(20)),
        "{}",
        gw.stderr()
    );
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    let status = gw.stop(Duration::from_secs(20));
    let took = asked.elapsed();
    let err = gw.stderr();
    assert!(status.success(), "{status:?}: {err}");
    assert!(took < Duration::from_secs(15), "{took:?}: {err}");
    assert!(s.recorded("out.txt", "seq").is_empty());
}
