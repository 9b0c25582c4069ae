//! The sink and the source against a NATS server with JetStream of their own (Debian's
//! `nats-server`, started here on a free port with a store in a temporary directory, so that a
//! test may kill and restart it): a re-delivered batch is stored once (by its ids), what the
//! sinks did not store is delivered again, what is not a reading is dropped from the consumer,
//! and both ends carry on across a restart of NATS.

use gateway_sdk::{
    testing::{readme_sample_tables, sample_readings, SinkHarness, SourceHarness},
    ErrorKind, Reading,
};
use gateway_test_support::nats::NatsServer;
use nats::{NatsSink, NatsSource};
use std::time::{Duration, Instant};

/// A nats-server of the test's own, and what the tests ask of its streams.
struct Nats {
    server: NatsServer,
    _dir: tempfile::TempDir,
}

impl Nats {
    fn start() -> Nats {
        let dir = tempfile::tempdir().unwrap();
        Nats {
            server: NatsServer::start(dir.path().to_owned()),
            _dir: dir,
        }
    }

    fn up(&mut self) {
        self.server.up();
    }

    fn kill(&mut self) {
        self.server.kill();
    }

    fn url(&self) -> String {
        self.server.url()
    }

    /// The messages the stream holds now.
    fn messages(&self, stream: &str) -> u64 {
        with_js(self.url(), |js| async move {
            let mut s = js.get_stream(stream).await.unwrap();
            s.info().await.unwrap().state.messages
        })
    }

    /// Publishes `payload` on `subject` as it is (not through the sink).
    fn publish_raw(&self, subject: &str, payload: &'static [u8]) {
        with_js(self.url(), |js| async move {
            js.publish(subject.to_owned(), payload.into())
                .await
                .unwrap()
                .await
                .unwrap();
        });
    }
}

/// Runs `f` with a JetStream context on the server at `url`, on a runtime of its own.
fn with_js<T, F: std::future::Future<Output = T>>(
    url: String,
    f: impl FnOnce(async_nats::jetstream::Context) -> F,
) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let c = async_nats::connect(url).await.unwrap();
        f(async_nats::jetstream::new(c)).await
    })
}

fn sink(n: &Nats) -> SinkHarness {
    SinkHarness::new::<NatsSink>(&format!("url = {:?}\nack_timeout = \"3s\"\n", n.url())).unwrap()
}

/// The source, with JetStream delivering an unacknowledged message again after 5 s (should a
/// hand-back at a stop be lost, the test still sees the redelivery in time).
fn source(n: &Nats) -> SourceHarness {
    SourceHarness::new(&format!(
        "url = {:?}\nbatch = 100\nack_wait = \"5s\"\n",
        n.url()
    ))
}

fn ids(rs: &[Reading]) -> Vec<[u8; 16]> {
    let mut v: Vec<[u8; 16]> = rs.iter().map(|r| r.id.0).collect();
    v.sort_unstable();
    v
}

#[test]
fn a_batch_sent_again_is_stored_once_and_read_back_as_it_was() {
    let n = Nats::start();
    let mut s = sink(&n);
    let batch = sample_readings(300);
    s.write(batch.clone()).unwrap();
    s.write(batch[..100].to_vec()).unwrap();
    assert_eq!(
        n.messages("READINGS"),
        300,
        "JetStream dropped the repeats by their ids"
    );
    let run = source(&n).readings(300).run::<NatsSource>().unwrap();
    assert_eq!(run.readings.len(), 300);
    let mut got = run.readings.clone();
    got.sort_by_key(|r| r.id.0);
    let mut want = batch.clone();
    want.sort_by_key(|r| r.id.0);
    assert_eq!(got, want, "each reading as the sink had it");
}

#[test]
fn what_the_sinks_did_not_store_is_delivered_again_and_what_they_did_is_not() {
    let n = Nats::start();
    sink(&n).write(sample_readings(50)).unwrap();
    // The sinks take long: the source is stopped with the batch unanswered, and hands it back.
    let first = source(&n)
        .ack_delay(Duration::from_secs(30))
        .stop_at(Duration::from_millis(1500))
        .run::<NatsSource>()
        .unwrap();
    assert_eq!(first.readings.len(), 50);
    // The next run gets the same readings, and the sinks store them at once. Delivery is at
    // least once: a hand-back lost at the stop comes again after ack_wait (5 s), and a
    // message may come twice (the sinks drop ids they stored): run past ack_wait, compare
    // the ids each once.
    let second = source(&n)
        .timeout(Duration::from_secs(8))
        .run::<NatsSource>()
        .unwrap();
    let mut got = ids(&second.readings);
    got.dedup();
    assert_eq!(got, ids(&first.readings));
    // Stored and acknowledged: nothing comes again.
    let third = source(&n)
        .timeout(Duration::from_secs(3))
        .run::<NatsSource>()
        .unwrap();
    assert!(third.readings.is_empty(), "{} again", third.readings.len());
}

/// JetStream drops a message whose id it holds: the id carries the device, so one device
/// cannot have another's reading dropped by sending its id first. What the server cannot take
/// (over `max_payload`: it closes the connection) or JSON cannot carry is refused for good,
/// naming the reading, and the sink goes on.
#[test]
fn ids_are_per_device_and_what_cannot_be_sent_is_refused_without_breaking_the_sink() {
    let n = Nats::start();
    let mut s = sink(&n);
    let a = sample_readings(1);
    let mut b = a.clone();
    b[0].device = "other-device".into();
    s.write(a.clone()).unwrap();
    s.write(b).unwrap();
    s.write(a).unwrap();
    assert_eq!(
        n.messages("READINGS"),
        2,
        "one per device; the repeat dropped"
    );
    let mut big = sample_readings(3);
    big[2].value = gateway_sdk::Value::Bytes(vec![7; 800_000].into());
    let e = s.write(big).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert!(
        e.message().starts_with("reading 3 of 3 (")
            && e.message().contains("max_msg_size (1048576)"),
        "{e}"
    );
    let mut nan = sample_readings(2);
    nan[0].value = gateway_sdk::Value::Float(f64::INFINITY);
    let e = s.write(nan).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    s.write(sample_readings(5)).expect("the sink goes on");
}

/// async-nats times the TCP connect only: a server that takes the connection and says nothing
/// (no INFO) held the sink's write, and the sink, for ever.
#[test]
fn a_server_that_takes_the_connection_and_says_nothing_is_timed_out() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let conns: Vec<_> = silent.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(5));
        drop(conns);
    });
    let mut s = SinkHarness::new::<NatsSink>(&format!(
        "url = \"nats://127.0.0.1:{port}\"\nconnect_timeout = \"1s\"\n"
    ))
    .unwrap();
    let started = Instant::now();
    let e = s.write(sample_readings(1)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    assert!(
        e.message().contains("no answer within 2s (connect_timeout"),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    held.join().unwrap();
}

/// JetStream drops a message whose id it saw in its duplicate window from anyone who may
/// publish to the stream, on any subject. Before, the id was the reading's id and device: a
/// publisher limited to a subject of its own who learnt a device's next id (ids are a time, a
/// seed and a counter) could send it first, and the device's reading was answered stored and
/// was in no store. Now the id carries an HMAC under the sink's own key.
#[test]
fn a_publisher_cannot_have_another_devices_reading_dropped_as_a_duplicate() {
    let n = Nats::start();
    let mut s = sink(&n);
    s.write(sample_readings(1)).unwrap();
    let mut victim = sample_readings(1).remove(0);
    victim.device = "pi-01".into();
    // The best a publisher without the key can send: the id as it was, and with a tag.
    for forged in [
        format!("{:032x}@pi-01", victim.id.as_u128()),
        format!("{:032x}@pi-01#{}", victim.id.as_u128(), "0".repeat(32)),
    ] {
        with_js(n.url(), |js| async move {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", forged.as_str());
            js.publish_with_headers("readings.mallory.t.t", h, "x".into())
                .await
                .unwrap()
                .await
                .unwrap();
        });
    }
    assert_eq!(n.messages("READINGS"), 3);
    s.write(vec![victim.clone()]).unwrap();
    assert_eq!(
        n.messages("READINGS"),
        4,
        "the device's reading is in the stream"
    );
    // Sent again by the same sink, it is still a duplicate; and by the sink built again on
    // the same data directory (a restart), too.
    s.write(vec![victim.clone()]).unwrap();
    assert_eq!(n.messages("READINGS"), 4);
    drop(s);
    sink(&n).write(vec![victim]).unwrap();
    assert_eq!(n.messages("READINGS"), 4);
}

/// A stream made beforehand with a max_msg_size below the server's max_payload: JetStream
/// refuses a larger message at every try. Before, that was a retry for good, and the sink
/// stalled for every device; now it is the reading's refusal.
#[test]
fn a_reading_larger_than_the_streams_max_msg_size_is_refused_not_retried() {
    let n = Nats::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = async_nats::connect(n.url()).await.unwrap();
        async_nats::jetstream::new(c)
            .create_stream(async_nats::jetstream::stream::Config {
                name: "READINGS".into(),
                subjects: vec!["readings.>".into()],
                max_message_size: 1024,
                ..Default::default()
            })
            .await
            .unwrap();
    });
    let mut s = sink(&n);
    let mut big = sample_readings(2);
    big[1].value = gateway_sdk::Value::Text("x".repeat(2000).into());
    let e = s.write(big).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert!(
        e.message().starts_with("reading 2 of 2 (") && e.message().contains("(1024)"),
        "{e}"
    );
    s.write(sample_readings(3)).expect("the sink goes on");
    assert_eq!(n.messages("READINGS"), 3);
}

/// A reading whose subject none of an existing stream's takes is refused for good (the host
/// keeps it in the dead-letter file and the others flow), not retried for ever behind a
/// "no responders"; once the operator adds a subject, it is taken, and a reading of a subject
/// the stream still does not take is refused as before.
#[test]
fn a_reading_whose_subject_the_stream_does_not_take_is_refused_not_retried() {
    let n = Nats::start();
    let config = |subjects: &[&str]| async_nats::jetstream::stream::Config {
        name: "READINGS".into(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    with_js(n.url(), |js| async move {
        js.create_stream(config(&["readings.pi-01.>"]))
            .await
            .unwrap();
    });
    // An ack timeout far longer than the refusal may take.
    let mut s =
        SinkHarness::new::<NatsSink>(&format!("url = {:?}\nack_timeout = \"30s\"\n", n.url()))
            .unwrap();
    let started = Instant::now();
    let e = s.write(sample_readings(2)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert!(
        e.message().starts_with("reading 1 of 2 (test-device/")
            && e.message().contains("readings.test-device.")
            && e.message().contains("(readings.pi-01.>)"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(15), "not a timeout");
    let mut ours = sample_readings(1);
    ours[0].device = "pi-01".into();
    s.write(ours).expect("a reading the stream takes");
    with_js(n.url(), |js| async move {
        js.update_stream(config(&["readings.pi-01.>", "readings.test-device.>"]))
            .await
            .unwrap();
    });
    s.write(sample_readings(2))
        .expect("taken once the stream has the subject");
    assert_eq!(n.messages("READINGS"), 3);
    // That reading was stored under a subject the filters the sink had (read before the
    // operator's change) do not take. Before, the sink took it for a sign that the account
    // maps subjects, and from then on refused none for its subject: pi-03's was retried for
    // ever, and every reading behind it waited.
    let mut theirs = sample_readings(1);
    theirs[0].device = "pi-03".into();
    let e = s.write(theirs).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert!(
        e.message().contains("goes to subject readings.pi-03."),
        "{e}"
    );
}

#[test]
fn an_acknowledgement_may_take_all_of_ack_timeout() {
    // async-nats gave up on each acknowledgement after its own 5 s, whatever ack_timeout said:
    // a JetStream slower than that (a lagging replica, a slow disk) failed every batch.
    let n = Nats::start();
    let mut s =
        SinkHarness::new::<NatsSink>(&format!("url = {:?}\nack_timeout = \"20s\"\n", n.url()))
            .unwrap();
    s.write(sample_readings(1)).expect("connected, stream made");
    n.server.signal(libc::SIGSTOP);
    let started = Instant::now();
    let writing = std::thread::scope(|scope| {
        let w = scope.spawn(|| s.write(sample_readings(3)));
        std::thread::sleep(Duration::from_secs(6));
        n.server.signal(libc::SIGCONT);
        w.join().unwrap()
    });
    writing.expect("stored once NATS went on, within ack_timeout");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(n.messages("READINGS"), 4);
}

#[test]
fn a_stream_that_acknowledges_nothing_is_refused_at_once_not_timed_out() {
    // A stream set no_ack answers no publish: every batch waited out ack_timeout and was sent
    // again, for ever, with "did not acknowledge" as the only word of why.
    let n = Nats::start();
    with_js(n.url(), |js| async move {
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "READINGS".into(),
            subjects: vec!["readings.>".into()],
            no_ack: true,
            ..Default::default()
        })
        .await
        .unwrap();
    });
    let mut s = sink(&n);
    let started = Instant::now();
    let e = s.write(sample_readings(2)).unwrap_err();
    assert!(e.message().contains("no_ack"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2), "{e}");
}

/// Another stream taking a subject the configured one does not (`OTHER` with pi-02's beside
/// `READINGS` with pi-01's): its acknowledgement of a pi-02 reading was taken for a sign that
/// the account maps subjects to the configured stream, and from then on none was refused for
/// its subject: pi-03's "no responders" was retried for ever. Only the configured stream's
/// acknowledgements count now.
#[test]
fn a_reading_another_stream_stores_is_no_sign_of_a_mapping() {
    let n = Nats::start();
    let config = |name: &str, subject: &str| async_nats::jetstream::stream::Config {
        name: name.into(),
        subjects: vec![subject.into()],
        ..Default::default()
    };
    with_js(n.url(), |js| async move {
        js.create_stream(config("READINGS", "readings.pi-01.>"))
            .await
            .unwrap();
        js.create_stream(config("OTHER", "readings.pi-02.>"))
            .await
            .unwrap();
    });
    let mut s =
        SinkHarness::new::<NatsSink>(&format!("url = {:?}\nack_timeout = \"30s\"\n", n.url()))
            .unwrap();
    let mut theirs = sample_readings(1);
    theirs[0].device = "pi-02".into();
    s.write(theirs).expect("stored by the other stream");
    assert_eq!(n.messages("OTHER"), 1);
    let mut nobodys = sample_readings(1);
    nobodys[0].device = "pi-03".into();
    let e = s.write(nobodys).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert!(
        e.message().contains("goes to subject readings.pi-03."),
        "{e}"
    );
}

/// Where the account maps subjects on their way to the stream (the sink publishes on `gw.`,
/// the server maps pi-01's to `readings.pi-01.`), the stream's filters say nothing of what is
/// published: once a reading was stored under a subject none of them takes, a "no responders"
/// is taken for a passing state and retried, not refused.
#[test]
fn where_the_account_maps_subjects_none_is_refused_for_its_subject() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        "mappings = { \"gw.pi-01.>\": \"readings.pi-01.>\" }\n",
    )
    .unwrap();
    let server = NatsServer::start_with(
        dir.path().join("store"),
        &["-c".into(), conf.display().to_string()],
    );
    let mut s = SinkHarness::new::<NatsSink>(&format!(
        "url = {:?}\nsubject = \"gw.{{device}}.{{sensor}}.{{name}}\"\nack_timeout = \"3s\"\n",
        server.url()
    ))
    .unwrap();
    let mut ours = sample_readings(1);
    ours[0].device = "pi-01".into();
    s.write(ours).expect("stored through the mapping");
    let e = s.write(sample_readings(1)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    assert!(e.message().contains("no stream found"), "{e}");
}

/// What the sinks refused for good the host kept in their dead-letter files: delivered again,
/// it would be refused again, for ever. It is acknowledged; what they did not store (a retry)
/// comes again.
#[test]
fn a_batch_refused_for_good_is_not_delivered_again_and_one_not_stored_is() {
    let n = Nats::start();
    sink(&n).write(sample_readings(5)).unwrap();
    let retried = source(&n)
        .answer_with(ErrorKind::RETRY)
        .readings(5)
        .run::<NatsSource>()
        .unwrap();
    assert_eq!(retried.readings.len(), 5);
    let refused = source(&n)
        .answer_with(ErrorKind::REJECTED)
        .readings(5)
        .run::<NatsSource>()
        .unwrap();
    assert_eq!(refused.readings.len(), 5, "delivered again after a retry");
    // Watched past ack_wait (5 s): a message left unacknowledged would be delivered again.
    let after = source(&n)
        .timeout(Duration::from_secs(7))
        .run::<NatsSource>()
        .unwrap();
    assert!(
        after.readings.is_empty(),
        "refused for good, yet delivered again: {}",
        after.readings.len()
    );
}

#[test]
fn a_message_that_is_not_a_reading_is_dropped_from_the_consumer() {
    let n = Nats::start();
    let mut s = sink(&n);
    s.write(sample_readings(1)).unwrap();
    n.publish_raw("readings.x.y.z", b"not senml");
    s.write(sample_readings(2)).unwrap();
    let run = source(&n).readings(3).run::<NatsSource>().unwrap();
    assert_eq!(run.readings.len(), 3);
    // Watched past ack_wait (5 s): a message left unacknowledged would be delivered again.
    let again = source(&n)
        .timeout(Duration::from_secs(7))
        .run::<NatsSource>()
        .unwrap();
    assert!(
        again.readings.is_empty(),
        "the bad message is not delivered again"
    );
}

/// Anyone the stream takes messages from could post as any device: the device is the pack's
/// `bn`. A message is now taken only with the subject its readings make (the sink's template),
/// so NATS's publish permissions on subjects decide who posts as whom. Before, both of these
/// came out as readings of `victim` (and of `nats`).
#[test]
fn a_message_whose_readings_are_not_its_subjects_is_refused() {
    let n = Nats::start();
    let mut s = sink(&n);
    s.write(sample_readings(1)).unwrap();
    n.publish_raw(
        "readings.mallory.t1.temperature",
        br#"[{"bn":"victim:","n":"t1/temperature","u":"Cel","v":21.5}]"#,
    );
    n.publish_raw(
        "readings.nats.t1.temperature",
        br#"[{"n":"t1/temperature","u":"Cel","v":99}]"#,
    );
    n.publish_raw(
        "readings.victim.t1.temperature",
        br#"[{"bn":"victim:","n":"t1/temperature","u":"Cel","v":1},{"bn":"other:","n":"t1/temperature","u":"Cel","v":2}]"#,
    );
    // What the sink publishes, and a pack of its own subject, are taken.
    n.publish_raw(
        "readings.victim.t1.temperature",
        br#"[{"bn":"victim:","n":"t1/temperature","u":"Cel","v":22}]"#,
    );
    let run = source(&n)
        .timeout(Duration::from_secs(4))
        .run::<NatsSource>()
        .unwrap();
    let devices: Vec<&str> = run.readings.iter().map(|r| r.device.as_str()).collect();
    assert_eq!(run.readings.len(), 2, "{devices:?}");
    assert!(devices.contains(&"victim"), "{devices:?}");
    assert!(
        run.readings
            .iter()
            .all(|r| r.device.as_str() != "victim" || r.value == gateway_sdk::Value::Int(22)),
        "{:?}",
        run.readings
    );
}

/// The durable consumer deleted under a running source (an operator's mistake, a stream made
/// again): each fetch ends at once with an error status. Before, that was a debug line and an
/// empty fetch, again and again, a silent busy loop while the readings piled up; now the
/// source ends with an error the host logs, and is built again (which makes the consumer).
#[test]
fn a_consumer_deleted_under_the_source_is_an_error_not_a_silent_spin() {
    let n = Nats::start();
    let mut s = sink(&n);
    s.write(sample_readings(1)).unwrap();
    let url = n.url();
    let deleter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2000));
        with_js(url, |js| async move {
            let stream = js.get_stream("READINGS").await.unwrap();
            stream.delete_consumer("gateway-store").await.unwrap();
        });
    });
    let started = std::time::Instant::now();
    let run = source(&n)
        .timeout(Duration::from_secs(20))
        .run::<NatsSource>()
        .unwrap();
    deleter.join().unwrap();
    let e = run.outcome.expect_err("the source ends with an error");
    assert_eq!(e.kind, gateway_sdk::ErrorKind::RETRY, "{e}");
    assert!(e.message().contains("fetching from JetStream"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// A durable consumer someone made with another acknowledgement policy: with "none", a
/// message counts as acknowledged when it is delivered, before any sink stored it, and the
/// source's NAKs do nothing. Before, the source used it as it found it.
#[test]
fn a_durable_consumer_with_other_settings_is_refused_not_used() {
    let n = Nats::start();
    let mut s = sink(&n);
    s.write(sample_readings(1)).unwrap();
    with_js(n.url(), |js| async move {
        let stream = js.get_stream("READINGS").await.unwrap();
        stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("gateway-store".into()),
                filter_subject: "readings.>".into(),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .unwrap();
    });
    let e = source(&n)
        .timeout(Duration::from_secs(5))
        .run::<NatsSource>()
        .unwrap()
        .outcome
        .expect_err("refused");
    assert_eq!(e.kind, gateway_sdk::ErrorKind::CONFIG, "{e}");
    assert!(
        e.message()
            .contains("nats consumer rm READINGS gateway-store"),
        "{e}"
    );
}

#[test]
fn both_ends_carry_on_across_a_restart_of_nats() {
    let mut n = Nats::start();
    let mut s = sink(&n);
    let batch = sample_readings(200);
    s.write(batch[..100].to_vec()).unwrap();
    n.kill();
    let e = s.write(batch[100..].to_vec()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    n.up();
    // The host sends the batch again; the sink connects again.
    let end = Instant::now() + Duration::from_secs(20);
    while let Err(e) = s.write(batch[100..].to_vec()) {
        assert!(Instant::now() < end, "{e}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(n.messages("READINGS"), 200, "kept on disk, nothing doubled");
    let run = source(&n).readings(200).run::<NatsSource>().unwrap();
    assert_eq!(ids(&run.readings), ids(&batch));
}

#[test]
fn settings_errors_name_their_key() {
    for (toml, want) in [
        (
            "url = \"nats://h\"\nstreem = \"x\"",
            "unknown field `streem`",
        ),
        ("url = \"http://h\"", "url: give nats://"),
        ("url = \"nats://u:p@h\"", "url: put the user in username"),
        ("url = \"nats://h\"\nsubject = \"a.>\"", "subject: "),
        (
            "url = \"nats://h\"\nsubject = \"a.{dev}\"",
            "{dev} is not one of",
        ),
        (
            "url = \"nats://h\"\nstream = \"a.b\"",
            "stream: a stream name",
        ),
        (
            "url = \"nats://h\"\nusername = \"u\"",
            "give username and a password together",
        ),
        // A timeout of 0 failed every try, retried for ever.
        ("url = \"nats://h\"\nack_timeout = \"0s\"", "above 0"),
        ("url = \"nats://h\"\nconnect_timeout = \"0ms\"", "above 0"),
    ] {
        let e = SinkHarness::new::<NatsSink>(toml).unwrap_err();
        assert_eq!(e.kind, ErrorKind::CONFIG, "{toml}");
        assert!(e.message().contains(want), "{toml}: {e}");
    }
    // A .creds file holds a secret: one every local user can read is refused.
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("gateway.creds");
    std::fs::write(&creds, "-----BEGIN NATS USER JWT-----\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let toml = format!(
        "url = \"nats://h\"\ncredentials_file = {:?}",
        creds.display().to_string()
    );
    let e = SinkHarness::new::<NatsSink>(&toml).unwrap_err();
    assert!(
        e.message().contains("credentials_file:")
            && e.message()
                .contains("every local user may read it (mode 0644)"),
        "{e}"
    );
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    SinkHarness::new::<NatsSink>(&toml).unwrap();
    let e = SourceHarness::new("url = \"nats://h\"\nbatch = 0")
        .run::<NatsSource>()
        .unwrap_err();
    assert!(e.message().contains("batch: at least 1"), "{e}");
    // The source takes a reading only on the subject it makes, and NATS permissions give
    // whole tokens: two values in one would let a publisher allowed one post as another
    // device (pi with sensor 01-x, pi-01 with sensor x).
    let e = SourceHarness::new("url = \"nats://h\"\nsubject = \"r.{device}-{sensor}.{name}\"")
        .run::<NatsSource>()
        .unwrap_err();
    assert!(
        e.message().contains(
            "subject: \"r.{device}-{sensor}.{name}\" puts {device} and {sensor} in one token"
        ),
        "{e}"
    );
}

#[test]
fn readme_samples_match_sample_toml_and_parse() {
    let tables = readme_sample_tables(include_str!("../README.md"), include_str!("../sample.toml"));
    // The sample's every table, twice (as written, and with its commented defaults), so that
    // an empty block and file cannot pass.
    assert_eq!(tables.len(), 4);
    for (name, keys) in tables {
        if name.starts_with("sinks.") {
            let _: nats::config::SinkConfig =
                keys.try_into().unwrap_or_else(|e| panic!("{name}: {e}"));
        } else {
            let _: nats::config::SourceConfig =
                keys.try_into().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

/// A CA and a server certificate it issued for `localhost`, in `dir`: the CA's file.
fn pki(dir: &std::path::Path) -> std::path::PathBuf {
    gateway_test_support::coaps::ca_and_server(dir, "localhost", &["localhost".to_owned()]);
    dir.join("ca.pem")
}

#[test]
fn tls_stores_through_a_server_its_ca_file_vouches_for_and_refuses_others() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let file = |f: &str| dir.path().join(f).display().to_string();
    let server = NatsServer::start_with(
        dir.path().join("store"),
        &[
            "--tls".into(),
            "--tlscert".into(),
            file("server.pem"),
            "--tlskey".into(),
            file("server.key"),
        ],
    );
    let tls = |host: &str, ca: &std::path::Path| {
        SinkHarness::new::<NatsSink>(&format!(
            "url = \"tls://{host}:{}\"\ntls_ca_file = {:?}\nack_timeout = \"3s\"\nconnect_timeout = \"3s\"\n",
            server.port,
            ca.display().to_string()
        ))
        .unwrap()
    };
    // Vouched for, under its name: JetStream acknowledges (stores) the readings.
    tls("localhost", &ca).write(sample_readings(5)).unwrap();
    // A name the certificate is not for, and another CA of the same name: refused.
    let other = tempfile::tempdir().unwrap();
    for (host, ca) in [("127.0.0.1", ca.clone()), ("localhost", pki(other.path()))] {
        let e = tls(host, &ca).write(sample_readings(1)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::RETRY, "{host}: {e}");
        assert!(
            e.message().contains("cannot connect to NATS"),
            "{host}: {e}"
        );
        assert!(
            e.message().to_lowercase().contains("certificate"),
            "{host}: {e}"
        );
    }
}

/// A user whose publish permissions do not take a device's subject: the server drops each
/// such publish with an `-ERR` on the side, and its acknowledgement only times out. Before,
/// that was a retry at every try, and the sink stalled for every device behind the one; now
/// the reading is refused for good as soon as the server says so (not after ack_timeout,
/// here 30 s), and the others flow.
#[test]
fn a_subject_the_users_permissions_refuse_is_refused_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        r#"authorization { users = [ { user: "pi", password: "pw", permissions: {
            publish: { allow: ["readings.pi-01.>", "$JS.API.>"] },
            subscribe: { allow: ["_INBOX.>"] } } } ] }
"#,
    )
    .unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "pw").unwrap();
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let server = NatsServer::start_with(
        dir.path().join("store"),
        &["-c".into(), conf.display().to_string()],
    );
    let mut s = SinkHarness::new::<NatsSink>(&format!(
        "url = {:?}\nusername = \"pi\"\npassword_file = {:?}\nack_timeout = \"30s\"\n",
        server.url(),
        pw.display().to_string()
    ))
    .unwrap();
    let mut ours = sample_readings(2);
    ours[0].device = "pi-01".into();
    ours[1].device = "pi-01".into();
    s.write(ours[..1].to_vec())
        .expect("a subject the user may publish to");
    // Theirs goes with ours: the batch is refused for theirs once the server says so.
    let theirs = sample_readings(1).remove(0);
    let started = Instant::now();
    let e = s.write(vec![ours[1].clone(), theirs.clone()]).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited {:?}, as for ack_timeout",
        started.elapsed()
    );
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert!(
        e.message().starts_with("reading 2 of 2 (test-device/")
            && e.message()
                .contains("goes to subject readings.test-device.")
            && e.message().contains("publish permissions"),
        "{e}"
    );
    // Narrowed by halves (as the host does): the refused reading alone is refused at once,
    // without another wait for an acknowledgement, and ours is stored.
    let started = Instant::now();
    let e = s.write(vec![theirs]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert!(started.elapsed() < Duration::from_secs(1), "not a timeout");
    s.write(vec![ours[1].clone()]).expect("ours is stored");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stored = rt.block_on(async {
        let c = async_nats::ConnectOptions::with_user_and_password("pi".into(), "pw".into())
            .connect(server.url())
            .await
            .unwrap();
        let js = async_nats::jetstream::new(c);
        let mut s = js.get_stream("READINGS").await.unwrap();
        s.info().await.unwrap().state.messages
    });
    assert_eq!(stored, 2);
}
