//! The source over real pseudo-terminals: a whole log at 9600 baud, and a device that vanishes
//! and comes back.

mod common;
use common::{open_pty, stream, write_paced, PTYS};
use gateway_sdk::{testing::run_source, Value};
use std::time::Duration;
use ublox7::{decoder::Decoder, readings::values, Ublox7};

/// How many readings the decoder makes of `bytes` (the decoder itself is tested on its own).
fn expected_readings(bytes: &[u8]) -> usize {
    let mut d = Decoder::default();
    let mut epochs = d.push(bytes);
    epochs.extend(d.flush());
    epochs.iter().map(|e| values(e).len()).sum()
}

#[test]
fn a_full_log_through_a_pty_at_9600_baud_gives_every_fix() {
    let _one = PTYS.lock().unwrap_or_else(|e| e.into_inner());
    let log = stream("gpsd-gr601-w.log");
    let want = expected_readings(&log);
    let mut pty = open_pty();
    let cfg = format!(
        "port = {:?}\nbaud = 9600\nepoch_gap = \"200ms\"\n",
        pty.slave_path.display().to_string()
    );
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        write_paced(&mut pty.master, &log, 9600);
        std::thread::sleep(Duration::from_secs(3));
        drop(pty);
    });
    let run = run_source::<Ublox7>(&cfg, want, Duration::from_secs(20)).unwrap();
    run.outcome.unwrap();
    assert!(run.reached, "got {} of {want} readings", run.readings.len());
    assert_eq!(run.readings.len(), want);
    assert_eq!(run.batches, 10, "one batch per epoch");
    let lat: Vec<f64> = run
        .readings
        .iter()
        .filter(|r| r.name == "latitude")
        .map(|r| match r.value {
            Value::Float(v) => v,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(lat.len(), 10);
    assert!(lat.iter().all(|l| (l - 40.035).abs() < 0.001));
    assert!(run.readings.iter().all(|r| r.sensor == "gps"));
    writer.join().unwrap();
}

#[test]
fn the_device_vanishing_and_coming_back_is_survived() {
    let _one = PTYS.lock().unwrap_or_else(|e| e.into_inner());
    let log = stream("gpsd-gr601-w.log");
    let lines: Vec<&[u8]> = log.split_inclusive(|&b| b == b'\n').collect();
    // First half: up to the end of the 143255 epoch; second half: the rest.
    let cut = lines
        .iter()
        .position(|l| l.starts_with(b"$GPRMC,143256"))
        .unwrap();
    let (first, second): (Vec<u8>, Vec<u8>) = (lines[..cut].concat(), lines[cut..].concat());
    let want = expected_readings(&first) + expected_readings(&second);

    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("gps");
    let pty = open_pty();
    std::os::unix::fs::symlink(&pty.slave_path, &link).unwrap();
    let cfg = format!(
        "port = {:?}\nepoch_gap = \"200ms\"\nreopen_backoff = \"100ms\"\nreopen_backoff_max = \"200ms\"\n",
        link.display().to_string()
    );
    let writer = std::thread::spawn(move || {
        let mut pty = pty;
        std::thread::sleep(Duration::from_millis(300));
        write_paced(&mut pty.master, &first, 38400);
        std::thread::sleep(Duration::from_millis(600));
        // Unplugged: the pty goes away and so does the device node the link points to.
        drop(pty);
        std::fs::remove_file(&link).unwrap();
        std::thread::sleep(Duration::from_millis(800));
        // Plugged back: a new device node behind the same stable name.
        let mut again = open_pty();
        std::os::unix::fs::symlink(&again.slave_path, &link).unwrap();
        std::thread::sleep(Duration::from_millis(800));
        write_paced(&mut again.master, &second, 38400);
        std::thread::sleep(Duration::from_secs(3));
        drop(again);
    });
    let run = run_source::<Ublox7>(&cfg, want, Duration::from_secs(20)).unwrap();
    run.outcome.unwrap();
    assert_eq!(
        run.readings.len(),
        want,
        "every epoch before and after the device came back"
    );
    assert_eq!(run.batches, 10);
    writer.join().unwrap();
}

#[test]
fn a_missing_device_does_not_fail_the_source() {
    let cfg = "port = \"/nonexistent/ttyACM9\"\nreopen_backoff = \"20ms\"\n";
    let run = run_source::<Ublox7>(cfg, 1, Duration::from_millis(300)).unwrap();
    run.outcome.unwrap();
    assert!(run.readings.is_empty());
}

#[test]
fn replay_feeds_the_same_parser_at_the_recorded_pace() {
    let path = format!(
        "{}/tests/fixtures/gpsd-gr601-w.log",
        env!("CARGO_MANIFEST_DIR")
    );
    let want = expected_readings(&stream("gpsd-gr601-w.log"));
    let started = std::time::Instant::now();
    let run = run_source::<Ublox7>(
        &format!("replay = {path:?}\nreplay_speed = 10.0\n"),
        want,
        Duration::from_secs(20),
    )
    .unwrap();
    run.outcome.unwrap();
    assert_eq!(run.readings.len(), want);
    // Ten epochs at ten per second: about a second, not instantly.
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn config_errors_name_the_key() {
    let e = run_source::<Ublox7>("bauds = 9600", 1, Duration::from_secs(1)).unwrap_err();
    assert!(e.message().contains("unknown field `bauds`"), "{e}");
    // A typo for 9600 would have read noise and said only "bad bytes".
    for baud in [0, 96000, 9601] {
        let e =
            run_source::<Ublox7>(&format!("baud = {baud}"), 1, Duration::from_secs(1)).unwrap_err();
        assert!(
            e.message().contains(&format!(
                "baud: {baud} is not a rate a GPS receiver's UART runs at; give one of 1200, 2400, 4800, 9600,"
            )),
            "{e}"
        );
    }
    let e = run_source::<Ublox7>("replay = \"/nonexistent.log\"", 1, Duration::from_secs(1))
        .unwrap_err();
    assert!(
        e.message()
            .contains("replay: /nonexistent.log is not a readable file"),
        "{e}"
    );
    // Settings that would spin a core, panic the thread or refuse every reading at the server.
    for (toml, says) in [
        (
            "reopen_backoff = \"0s\"",
            "reopen_backoff: must be more than 0s",
        ),
        ("epoch_gap = \"0s\"", "epoch_gap: must be more than 0s"),
        ("replay_speed = 1e-30", "is not from 0.001 to 1000"),
        (
            "reopen_backoff = \"1m\"",
            "reopen_backoff_max: must be at least reopen_backoff",
        ),
        ("sensor = \"\"", "sensor: an empty name"),
        (
            "sensor = \"gps\\n\"",
            "sensor: \"gps\\n\" holds a control character",
        ),
    ] {
        let e = run_source::<Ublox7>(toml, 1, Duration::from_secs(1)).unwrap_err();
        assert!(e.message().contains(says), "{toml}: {e}");
    }
}

/// Whether this process holds `path` open (a pty whose master is closed shows as
/// "PATH (deleted)").
fn holds_open(path: &std::path::Path) -> bool {
    let path = path.to_string_lossy().into_owned();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|target| {
            let target = target.to_string_lossy();
            target == path || target == format!("{path} (deleted)")
        })
}

#[test]
fn a_vanished_device_is_closed_before_the_backoff_so_it_can_come_back_under_its_name() {
    // A USB receiver that resets comes back at once; while the old device is held open, the
    // kernel gives it another name (ttyACM1), which the source never opens.
    let _one = PTYS.lock().unwrap_or_else(|e| e.into_inner());
    let pty = open_pty();
    let slave = pty.slave_path.clone();
    let cfg = format!(
        "port = {:?}\nepoch_gap = \"200ms\"\nreopen_backoff = \"5s\"\n",
        slave.display().to_string()
    );
    let watcher = std::thread::spawn(move || {
        let mut pty = pty;
        std::thread::sleep(Duration::from_millis(300));
        write_paced(&mut pty.master, b"$GPTXT,01,01,02,hello*00\r\n", 38400);
        std::thread::sleep(Duration::from_millis(300));
        let open_before = holds_open(&slave);
        drop(pty);
        // The source sees the hang-up at its next read (within 50 ms), then waits 5 s.
        std::thread::sleep(Duration::from_millis(1000));
        (open_before, holds_open(&slave))
    });
    let run = run_source::<Ublox7>(&cfg, 1_000, Duration::from_secs(2)).unwrap();
    run.outcome.unwrap();
    let (open_before, open_in_backoff) = watcher.join().unwrap();
    assert!(open_before, "the source had the device open");
    assert!(
        !open_in_backoff,
        "the vanished device is still held during the backoff"
    );
}

/// An epoch's readings are stamped when its first sentence came, not when the epoch was seen
/// to end: that is the next epoch's first sentence or `epoch_gap` of quiet, up to a whole
/// second later at 9600 baud, and 10-30 m of error at 30 m/s for whoever joins the position
/// to other sensors by time.
#[test]
fn an_epoch_is_stamped_when_its_first_sentence_came() {
    let _one = PTYS.lock().unwrap_or_else(|e| e.into_inner());
    let mut pty = open_pty();
    let cfg = format!(
        "port = {:?}\nepoch_gap = \"1500ms\"\n",
        pty.slave_path.display().to_string()
    );
    let sentence = |body: &str| {
        let sum = body.bytes().fold(0u8, |a, b| a ^ b);
        format!("${body}*{sum:02X}\r\n")
    };
    let first = format!(
        "{}{}",
        sentence("GPRMC,143252.00,A,4002.10513,N,07531.20562,W,0.016,,241013,,,A"),
        sentence("GPGGA,143252.00,4002.10513,N,07531.20562,W,1,07,1.72,183.8,M,-34.4,M,,")
    );
    let second = sentence("GPRMC,143253.00,A,4002.10513,N,07531.20562,W,0.016,,241013,,,A");
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        std::thread::sleep(Duration::from_millis(300));
        tx.send(gateway_sdk::Timestamp::now()).unwrap();
        pty.master.write_all(first.as_bytes()).unwrap();
        // Less than epoch_gap: the first epoch ends only with the next one's RMC.
        std::thread::sleep(Duration::from_millis(900));
        pty.master.write_all(second.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_secs(2));
        drop(pty);
    });
    let run = run_source::<Ublox7>(&cfg, 1, Duration::from_secs(10)).unwrap();
    let written = rx.recv().unwrap();
    let stamped = run.readings[0].time;
    let late = stamped.as_micros() - written.as_micros();
    assert!(
        // The old stamp came 900 ms late; a busy machine may take a few hundred to read.
        (0..450_000).contains(&late),
        "stamped {late} µs after it was written"
    );
    writer.join().unwrap();
}
