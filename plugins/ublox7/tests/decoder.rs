//! The decoder on real captures, clean and damaged.

use gateway_sdk::Value;
use ublox7::{decoder::Decoder, epoch::Epoch, readings::values};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// The log without its `#` comment lines, as a receiver would send it.
fn stream(name: &str) -> Vec<u8> {
    fixture(name)
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| !l.starts_with(b"#"))
        .flatten()
        .copied()
        .collect()
}

fn decode_all(bytes: &[u8], chunk: usize) -> (Vec<Epoch>, Decoder) {
    let mut d = Decoder::default();
    let mut out = Vec::new();
    for c in bytes.chunks(chunk) {
        out.extend(d.push(c));
    }
    out.extend(d.flush());
    (out, d)
}

fn times(epochs: &[Epoch]) -> Vec<String> {
    epochs
        .iter()
        .map(|e| {
            e.time
                .map(|t| t.format("%H%M%S").to_string())
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn a_full_log_gives_one_fix_per_epoch() {
    let (epochs, d) = decode_all(&stream("gpsd-gr601-w.log"), 7);
    assert_eq!(
        times(&epochs),
        [
            "143251", "143252", "143253", "143254", "143255", "143256", "143257", "143258",
            "143259", "143300"
        ]
    );
    assert_eq!(d.stats().sentences, 75);
    assert_eq!(d.stats().dropped(), 0);
    assert_eq!(d.stats().garbage_bytes, 0);

    // $GPRMC,143252.00,A,4002.10513,N,07531.20562,W,0.016,,241013,,,A*60
    // $GPGGA,143252.00,4002.10513,N,07531.20562,W,1,07,1.72,183.8,M,-34.4,M,,*61
    // $GPGSA,A,3,28,17,01,08,09,11,32,,,,,,2.94,1.72,2.39*0C   $GPGSV,3,1,11,...
    let e = &epochs[1];
    let v = values(e);
    let get = |name: &str| {
        v.iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, u, v)| (*u, v.clone()))
    };
    assert_eq!(get("fix_type"), Some(("", Value::Text("3D".into()))));
    assert_eq!(get("fix_quality"), Some(("", Value::Int(1))));
    assert_eq!(get("satellites_used"), Some(("", Value::Int(7))));
    assert_eq!(get("satellites_in_view"), Some(("", Value::Int(11))));
    let f = |name: &str| match get(name) {
        Some((_, Value::Float(x))) => x,
        other => panic!("{name}: {other:?}"),
    };
    assert!((f("latitude") - (40.0 + 2.10513 / 60.0)).abs() < 1e-9);
    assert!((f("longitude") + (75.0 + 31.20562 / 60.0)).abs() < 1e-9);
    assert_eq!(f("altitude"), 183.8, "the decimal text, not f32 noise");
    assert!((f("speed") - 0.016 * 1852.0 / 3600.0).abs() < 1e-6);
    assert!(
        (f("hdop") - 1.72).abs() < 1e-6
            && (f("pdop") - 2.94).abs() < 1e-6
            && (f("vdop") - 2.39).abs() < 1e-6
    );
    // 2013-10-24T14:32:52Z
    assert_eq!(f("gps_time"), 1382625172.0);
    assert_eq!(get("latitude").unwrap().0, "lat");
    assert_eq!(get("speed").unwrap().0, "m/s");
    assert!(
        get("course").is_none(),
        "the receiver gave no course at this speed"
    );
}

#[test]
fn chunking_does_not_change_the_result() {
    let bytes = stream("gpsd-gr601-w.log");
    let (a, _) = decode_all(&bytes, 1);
    let (b, _) = decode_all(&bytes, 4096);
    assert_eq!(a, b);
}

#[test]
fn without_a_fix_it_reports_the_fix_state_and_no_position() {
    // bt451.log: three epochs indoors without a fix (no sentence carries a time), one in which
    // RMC already says "valid" while GGA and GSA still say no fix, then 3D fixes at 2 Hz; a
    // second session is spliced on, and the log ends after an RMC and a VTG.
    let (epochs, d) = decode_all(&stream("gpsd-bt451.log"), 64);
    assert_eq!(epochs.len(), 18, "17 RMC-led epochs and the spliced one");
    for e in &epochs[..4] {
        let v = values(e);
        let names: Vec<_> = v.iter().map(|(n, _, _)| *n).collect();
        assert_eq!(
            names,
            ["fix_type", "fix_quality", "satellites_in_view"],
            "no stale position: {e:?}"
        );
        assert_eq!(v[0].2, Value::Text("none".into()));
        assert_eq!(v[1].2, Value::Int(0));
    }
    assert_eq!(
        values(&epochs[0])[2].2,
        Value::Int(0),
        "$GPGSV,1,1,00: no satellite in view"
    );
    for e in &epochs[4..17] {
        let v = values(e);
        assert_eq!(v[0], ("fix_type", "", Value::Text("3D".into())));
        let lat = v
            .iter()
            .find(|(n, _, _)| *n == "latitude")
            .expect("a fix has a position");
        assert!(
            matches!(lat.2, Value::Float(l) if (55.7..55.8).contains(&l)),
            "{lat:?}"
        );
    }
    // Only RMC and VTG: a position, but no GSA to say 2D or 3D, so no fix_type and no altitude.
    let last = values(&epochs[17]);
    assert!(
        last.iter()
            .all(|(n, _, _)| *n != "fix_type" && *n != "altitude"),
        "{last:?}"
    );
    assert!(last.iter().any(|(n, _, _)| *n == "latitude"));
    assert_eq!(
        d.stats().ignored,
        6 + 17,
        "the TXT banner and ZDA are skipped, not errors"
    );
    assert_eq!(d.stats().dropped(), 0);
}

#[test]
fn checksum_errors_and_binary_garbage_are_dropped_and_counted() {
    let clean = stream("gpsd-gr601-w.log");
    let lines: Vec<&[u8]> = clean.split_inclusive(|&b| b == b'\n').collect();
    let mut damaged = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        // A UBX NAV-PVT frame header and payload before every tenth line.
        if i % 10 == 0 {
            damaged.extend_from_slice(&[0xB5, 0x62, 0x01, 0x07, 0x5C, 0x00]);
            damaged.extend((0..92u8).map(|b| b.wrapping_mul(37)));
        }
        let mut l = l.to_vec();
        // Line 13 (from 0) is the 143253 GGA: corrupt one digit, so its checksum fails.
        if i == 13 {
            assert!(l.starts_with(b"$GPGGA,143253"));
            l[20] = b'9';
        }
        // Line 20 is cut by a burst of noise at the wrong baud rate.
        if i == 20 {
            l.truncate(15);
            damaged.extend_from_slice(&l);
            damaged.extend_from_slice(&[0xE0, 0x00, 0xF8, 0x80, 0x7F]);
            continue;
        }
        damaged.extend_from_slice(&l);
    }
    let (epochs, d) = decode_all(&damaged, 13);
    assert_eq!(times(&epochs).len(), 10, "every epoch still comes through");
    assert_eq!(d.stats().bad_checksum, 1);
    // The noise burst ends one line; a '$' inside a binary frame starts a "line" that the next
    // binary byte ends, so there are more.
    assert!(d.stats().bad_bytes >= 1, "{:?}", d.stats());
    assert!(
        d.stats().garbage_bytes >= 8 * 90,
        "UBX frames counted: {:?}",
        d.stats()
    );
    assert_eq!(d.stats().sentences, 75 - 2);
    // The epoch whose GGA was lost still has its RMC position, but no altitude.
    let e = &epochs[2];
    assert!(e.latitude.is_some() && e.altitude.is_none() && e.quality.is_none());
}

#[test]
fn over_long_lines_and_missing_checksums_are_dropped() {
    let mut bytes = b"$GPRMC,143252.00,A,4002.10513,N,07531.20562,W,0.016,,241013,,,A\r\n".to_vec();
    bytes.extend_from_slice(b"$GPGGA,");
    bytes.extend(std::iter::repeat_n(b'1', 300));
    bytes.extend_from_slice(b"\r\n");
    let (epochs, d) = decode_all(&bytes, 50);
    assert!(epochs.is_empty());
    assert_eq!((d.stats().no_checksum, d.stats().too_long), (1, 1));
    // A line the reader takes (at most 120 bytes) but the `nmea` crate does not (above 102)
    // is too long too, not malformed.
    let long = sentence(&format!("GPTXT,01,01,02,{}", "x".repeat(90)));
    assert!(
        (103..=120).contains(&long.trim_end().len()),
        "{}",
        long.len()
    );
    let (_, d) = decode_all(long.as_bytes(), 50);
    assert_eq!((d.stats().too_long, d.stats().malformed), (1, 0));
}

/// `body` (between `$` and `*`) as a sentence with its checksum.
fn sentence(body: &str) -> String {
    let sum = body.bytes().fold(0u8, |a, b| a ^ b);
    format!("${body}*{sum:02X}\r\n")
}

#[test]
fn numbers_no_receiver_sends_are_counted_and_never_emitted() {
    let good_rmc = "GPRMC,143252.00,A,4002.10513,N,07531.20562,W,0.016,,241013,,,A";
    let good_gga = "GPGGA,143252.00,4002.10513,N,07531.20562,W,1,07,1.72,183.8,M,-34.4,M,,";
    for bad in [
        // NaN and infinite altitudes, a NaN speed, an infinite hdop and course.
        "GPGGA,143252.00,4002.10513,N,07531.20562,W,1,07,1.72,nan,M,-34.4,M,,",
        "GPGGA,143252.00,4002.10513,N,07531.20562,W,1,07,1.72,1e39,M,-34.4,M,,",
        "GPGGA,143252.00,4002.10513,N,07531.20562,W,1,07,inf,183.8,M,-34.4,M,,",
        "GPRMC,143252.00,A,4002.10513,N,07531.20562,W,nan,,241013,,,A",
        "GPVTG,inf,T,,M,0.016,N,0.030,K,A",
        // Past the pole, and 99 minutes in a degree.
        "GPRMC,143252.00,A,9902.10513,N,07531.20562,W,0.016,,241013,,,A",
        "GPGGA,143252.00,4099.99000,N,07531.20562,W,1,07,1.72,183.8,M,-34.4,M,,",
        "GPGLL,4002.10513,N,07571.20562,W,143252.00,A,A",
        // A sign inside the minutes (the crate's numbers take one: 48 degrees minus 7
        // minutes), and counts of satellites no two-digit field holds.
        "GPGGA,143252.00,40-2.10513,N,07531.20562,W,1,07,1.72,183.8,M,-34.4,M,,",
        "GPRMC,143252.00,A,4002.10513,N,075-31.20562,W,0.016,,241013,,,A",
        "GPGGA,143252.00,4002.10513,N,07531.20562,W,1,100,1.72,183.8,M,-34.4,M,,",
        "GPGSV,1,1,65535",
    ] {
        let bytes = format!(
            "{}{}{}",
            sentence(good_rmc),
            sentence(bad),
            sentence(good_gga)
        );
        let (epochs, d) = decode_all(bytes.as_bytes(), 64);
        assert_eq!(d.stats().malformed, 1, "{bad}");
        for e in &epochs {
            for (name, _, v) in values(e) {
                if let Value::Float(x) = v {
                    assert!(x.is_finite(), "{bad}: {name} = {x}");
                }
            }
            let lat = e.latitude.unwrap();
            assert!((lat - (40.0 + 2.10513 / 60.0)).abs() < 1e-9, "{bad}: {lat}");
        }
    }
    // The good ones alone pass.
    let bytes = format!("{}{}", sentence(good_rmc), sentence(good_gga));
    let (epochs, d) = decode_all(bytes.as_bytes(), 64);
    assert_eq!((epochs.len(), d.stats().malformed), (1, 0));
}

#[test]
fn never_panics_on_arbitrary_bytes() {
    // A cheap stand-in for the fuzz target, run on every test.
    let base = stream("gpsd-gr601-w.log");
    let mut seed = 0x9E37_79B9u32;
    let mut d = Decoder::default();
    for round in 0..300 {
        let mut b = base.clone();
        for _ in 0..(round % 40) {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let i = seed as usize % b.len();
            b[i] = (seed >> 11) as u8;
        }
        let _ = d.push(&b);
    }
}

#[test]
fn gps_time_is_sent_with_a_fix_only() {
    // Before a fix a receiver's date may be its own clock's guess: a u-blox 7 without a backup
    // battery says 1980 (here, RMC status V, 1980-01-06), and it was stored as gps_time.
    let no_fix = format!(
        "{}{}",
        sentence("GPRMC,000012.00,V,,,,,,,060180,,,N"),
        sentence("GPGGA,000012.00,,,,,0,00,99.99,,,,,,")
    );
    let (epochs, _) = decode_all(no_fix.as_bytes(), 64);
    assert_eq!(epochs.len(), 1);
    let names: Vec<_> = values(&epochs[0]).iter().map(|(n, _, _)| *n).collect();
    assert!(!names.contains(&"gps_time"), "{names:?}");
    // With a fix it is there, from RMC's date and time.
    let fix = format!(
        "{}{}",
        sentence("GPRMC,143252.00,A,4002.10513,N,07531.20562,W,0.016,,241013,,,A"),
        sentence("GPGGA,143252.00,4002.10513,N,07531.20562,W,1,07,1.72,183.8,M,-34.4,M,,")
    );
    let (epochs, _) = decode_all(fix.as_bytes(), 64);
    let v = values(&epochs[0]);
    let t = v
        .iter()
        .find(|(n, _, _)| *n == "gps_time")
        .expect("gps_time");
    assert_eq!(t.2, Value::Float(1382625172.0));
}
