//! The sink against the machine's Mosquitto (127.0.0.1:1883; `cargo xtask test` installs and
//! starts it where it is missing), watched with `mosquitto_sub`; and against a broker made
//! here on a TCP socket that acknowledges what a test says, to show that a batch is
//! acknowledged only after every PUBACK and that a lost connection is set up again.

use gateway_sdk::{
    testing::{readme_sample_tables, sample_readings, SinkHarness},
    ErrorKind, Reading,
};
use mqtt::{config::Config, Mqtt};
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

fn sink(extra: &str) -> SinkHarness {
    SinkHarness::new::<Mqtt>(extra).unwrap()
}

/// `mosquitto_sub` on `root/#`, printing topic and payload of the first `count` messages (30 s
/// at most), once it has subscribed.
fn subscribe(root: &str, count: usize) -> std::process::Child {
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-q", "1", "-v", "-W", "30"])
        .args(["-C", &count.to_string(), "-t", &format!("{root}/#")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (mosquitto-clients) runs");
    std::thread::sleep(Duration::from_millis(500));
    sub
}

#[test]
fn every_reading_is_published_at_qos_1_on_its_topic_as_senml() {
    let root = format!("gwtest/{}", std::process::id());
    let mut sub = subscribe(&root, 500);
    let mut s = sink(&format!(
        "url = \"mqtt://127.0.0.1\"\nclient_id = \"gw-1-{root}\"\ntopic = \"{root}/{{device}}/{{sensor}}/{{name}}\"\nmax_inflight = 16\n"
    ));
    let batch = sample_readings(500);
    s.write(batch[..200].to_vec()).unwrap();
    s.write(batch[200..].to_vec()).unwrap();
    let mut out = String::new();
    sub.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(
        sub.wait().unwrap().success(),
        "mosquitto_sub got 500 in time"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 500);
    for (line, r) in lines.iter().zip(&batch) {
        let (topic, payload) = line.split_once(' ').unwrap();
        assert_eq!(topic, format!("{root}/test-device/s1/temperature"));
        let pack = gateway_senml::decode_json(
            payload.as_bytes(),
            10,
            gateway_sdk::Timestamp::now(),
            "nobody",
        )
        .unwrap();
        assert_eq!(pack.readings, vec![r.clone()], "{payload}");
    }
}

/// What the broker made here does with each connection, in order.
#[derive(Clone, Copy)]
enum Broker {
    /// Acknowledges every PUBLISH, answers PINGREQ.
    Acks,
    /// Acknowledges every PUBLISH but the one with this packet id.
    AllBut(u16),
    /// Acknowledges every PUBLISH of one batch of this many, then closes the connection.
    AcksThenCloses(usize),
    /// Refuses the connection with this CONNACK code.
    Refuses(u8),
    /// Acknowledges no PUBLISH, and sends a PINGRESP every 400 ms after the first, for 10 s.
    Pings,
}

/// A broker on 127.0.0.1 that treats its connections as `plan` says; it counts the PUBLISH
/// packets it acknowledged. Gives its port.
fn broker(plan: Vec<Broker>, acked: Arc<Mutex<usize>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for b in plan {
            let Ok((conn, _)) = l.accept() else { return };
            serve(conn, b, &acked);
        }
    });
    port
}

/// One packet: its first byte and body.
fn packet(c: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut first = [0u8; 1];
    c.read_exact(&mut first).ok()?;
    let (mut len, mut mult) = (0usize, 1usize);
    loop {
        let mut b = [0u8; 1];
        c.read_exact(&mut b).ok()?;
        len += usize::from(b[0] & 0x7F) * mult;
        mult *= 128;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    c.read_exact(&mut body).ok()?;
    Some((first[0], body))
}

fn serve(mut c: TcpStream, plan: Broker, acked: &Mutex<usize>) {
    let mut published = 0;
    while let Some((first, body)) = packet(&mut c) {
        match first >> 4 {
            1 => {
                let code = if let Broker::Refuses(code) = plan {
                    code
                } else {
                    0
                };
                c.write_all(&[0x20, 2, 0, code]).unwrap();
                if code != 0 {
                    return;
                }
            }
            3 => {
                let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let id = [body[2 + topic_len], body[3 + topic_len]];
                published += 1;
                if matches!(plan, Broker::Pings) {
                    for _ in 0..25 {
                        std::thread::sleep(Duration::from_millis(400));
                        if c.write_all(&[0xD0, 0]).is_err() {
                            return;
                        }
                    }
                    return;
                }
                if matches!(plan, Broker::AllBut(skip) if skip == u16::from_be_bytes(id)) {
                    continue;
                }
                // Counted before it is sent: the sink may return (and the test look) as soon
                // as the last PUBACK reaches it.
                *acked.lock().unwrap() += 1;
                c.write_all(&[0x40, 2, id[0], id[1]]).unwrap();
                if matches!(plan, Broker::AcksThenCloses(n) if n == published) {
                    return;
                }
            }
            12 => c.write_all(&[0xD0, 0]).unwrap(),
            _ => {}
        }
    }
}

fn to(port: u16, extra: &str) -> SinkHarness {
    sink(&format!(
        "url = \"mqtt://127.0.0.1:{port}\"\nack_timeout = \"1s\"\nconnect_timeout = \"1s\"\n{extra}"
    ))
}

#[test]
fn a_batch_is_acknowledged_only_after_every_puback() {
    let acked = Arc::new(Mutex::new(0));
    let port = broker(vec![Broker::AllBut(37), Broker::Acks], acked.clone());
    let mut s = to(port, "max_inflight = 8");
    let batch: Vec<Reading> = sample_readings(100);
    // One PUBACK of 100 never comes: the batch is not done, and says so in time.
    let e = s.write(batch.clone()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    assert!(e.message().contains("acknowledged nothing in time"), "{e}");
    assert_eq!(
        *acked.lock().unwrap(),
        99,
        "the others went on around the missing one"
    );
    // Sent again whole on a new connection, it is done once all 100 are acknowledged.
    s.write(batch).unwrap();
    assert_eq!(*acked.lock().unwrap(), 199);
}

#[test]
fn a_broker_that_sends_anything_but_a_puback_is_timed_out() {
    // Each packet that was no PUBACK of a message in flight started ack_timeout again: a
    // broker (or someone on its unencrypted path) sending a PINGRESP now and then held the
    // batch, and the sink, for as long as it kept on.
    let port = broker(vec![Broker::Pings], Arc::default());
    let mut s = to(port, "");
    let started = std::time::Instant::now();
    let e = s.write(sample_readings(3)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    assert!(e.message().contains("acknowledged nothing in time"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_connection_the_broker_dropped_while_idle_is_set_up_again() {
    let acked = Arc::new(Mutex::new(0));
    let port = broker(vec![Broker::AcksThenCloses(5), Broker::Acks], acked.clone());
    let mut s = to(port, "keep_alive = \"1s\"");
    s.write(sample_readings(5)).unwrap();
    // Past half the keep-alive the sink checks the connection first, finds it gone, and
    // publishes on a new one: the write succeeds.
    std::thread::sleep(Duration::from_millis(700));
    s.write(sample_readings(3)).unwrap();
    assert_eq!(*acked.lock().unwrap(), 8);
}

#[test]
fn refusals_and_absent_brokers_are_retried_with_the_reason() {
    let port = broker(vec![Broker::Refuses(5)], Arc::default());
    let e = to(port, "").write(sample_readings(1)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    assert!(e.message().contains("not authorized (CONNACK 5)"), "{e}");
    let e = to(1, "").write(sample_readings(1)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    assert!(
        e.message()
            .contains("cannot connect to the broker at 127.0.0.1:1"),
        "{e}"
    );
}

#[test]
fn settings_errors_name_their_key() {
    for (toml, want) in [
        ("url = \"mqtt://h\"\ntopik = \"x\"", "unknown field `topik`"),
        ("url = \"mqtt://u:p@h\"", "url: put the user in username"),
        (
            "url = \"http://u:secret@h\"",
            "url: put the user in username",
        ),
        ("url = \"http://h\"", "url: \"http://h\": give mqtt://"),
        ("url = \"mqtt://h\"\ntopic = \"a/+/b\"", "topic: "),
        (
            "url = \"mqtt://h\"\ntopic = \"{dev}\"",
            "{dev} is not one of",
        ),
        (
            "url = \"mqtt://h\"\nmax_inflight = 0",
            "max_inflight: at least 1",
        ),
        (
            "url = \"mqtt://h\"\ntopic = \"home/{sensor}/{name}\"\nretain = true",
            "names no {device}, and retain = true",
        ),
        (
            "url = \"mqtt://h\"\ntopic = \"home/{device}-{sensor}/{name}\"\nretain = true",
            "puts {device} and {sensor} in one topic level, and retain = true",
        ),
        (
            "url = \"mqtt://h\"\nmax_message_size = 0",
            "max_message_size: 0 is not from 1024 to 268435455",
        ),
        (
            "url = \"mqtt://h\"\npassword_env = \"HOME\"",
            "a password is given without a username",
        ),
        (
            "url = \"mqtt://h\"\ntls_ca_file = \"ca.pem\"",
            "need an mqtts:// url",
        ),
    ] {
        let e = SinkHarness::new::<Mqtt>(toml).unwrap_err();
        assert_eq!(e.kind, ErrorKind::CONFIG, "{toml}");
        assert!(e.message().contains(want), "{toml}: {e}");
    }
    // Two values of one device in a level: its own readings only can share a topic, so
    // retain is taken (with a warning).
    SinkHarness::new::<Mqtt>(
        "url = \"mqtt://h\"\ntopic = \"home/{device}/{sensor}-{name}\"\nretain = true",
    )
    .unwrap();
}

#[test]
fn readme_sample_matches_sample_toml_and_parses() {
    let tables = readme_sample_tables(include_str!("../README.md"), include_str!("../sample.toml"));
    // The sample's every table, twice (as written, and with its commented defaults), so that
    // an empty block and file cannot pass.
    assert_eq!(tables.len(), 2);
    for (name, keys) in tables {
        let c: Config = keys.try_into().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.topic, "gateway/{device}/{sensor}/{name}");
    }
}

/// What a broker refuses in a topic is made `_`: Mosquitto drops the connection of a client
/// that publishes a topic with a control character, which the sink would retry for good. A
/// value JSON cannot carry is refused for good, naming the reading, not published as `null`.
#[test]
fn readings_a_broker_or_json_cannot_take_are_published_safely_or_refused() {
    let root = format!("gwtest/{}-odd", std::process::id());
    let mut sub = subscribe(&root, 2);
    let mut s = sink(&format!(
        "url = \"mqtt://127.0.0.1\"\nclient_id = \"gw-2-{root}\"\ntopic = \"{root}/{{sensor}}/{{name}}\"\n"
    ));
    let mut batch = sample_readings(2);
    batch[0].sensor = "a\tb\u{7f}".into();
    batch[1].name = "line\nbreak\u{fffe}".into();
    s.write(batch.clone())
        .expect("published, not a dropped connection");
    let mut out = String::new();
    sub.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(sub.wait().unwrap().success(), "mosquitto_sub got 2 in time");
    let topics: Vec<&str> = out.lines().map(|l| l.split_once(' ').unwrap().0).collect();
    assert_eq!(
        topics,
        [
            format!("{root}/a%09b%7F/temperature"),
            format!("{root}/s1/line%0Abreak%EF%BF%BE")
        ]
    );
    let mut bad = sample_readings(3);
    bad[1].value = gateway_sdk::Value::Float(f64::NAN);
    let e = s.write(bad).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert!(
        e.message().starts_with("reading 2 of 3 (") && e.message().contains("NaN"),
        "{e}"
    );
}

#[test]
fn a_reading_larger_than_the_broker_takes_is_refused_not_retried() {
    let root = format!("gwtest/{}-big", std::process::id());
    let mut sub = subscribe(&root, 1);
    let mut s = sink(&format!(
        "url = \"mqtt://127.0.0.1\"\nclient_id = \"gw-3-{root}\"\ntopic = \"{root}/{{sensor}}/{{name}}\"\nmax_message_size = 1024\n"
    ));
    // A text reading of 2,000 control characters: 12,000 bytes once escaped as JSON. A broker
    // with a limit closes the connection at it, and a retried batch stalled the sink for good.
    let mut big = sample_readings(3);
    big[1].value = gateway_sdk::Value::Text("\u{1}".repeat(2000).into());
    let e = s.write(big).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert!(
        e.message().starts_with("reading 2 of 3 (")
            && e.message().contains("more than max_message_size (1024)"),
        "{e}"
    );
    // The others go (the host writes them without the refused one).
    s.write(sample_readings(1)).unwrap();
    let mut out = String::new();
    sub.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(sub.wait().unwrap().success(), "mosquitto_sub got 1 in time");
    assert_eq!(out.lines().count(), 1, "{out}");
}
