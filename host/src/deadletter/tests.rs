//! The tests of the dead-letter directory: its files, their room and the shares.

use super::*;

impl Kept {
    /// Asserts nothing is held.
    fn settled(self) -> Kept {
        assert!(self.error.is_none(), "{self:?}");
        self
    }
}

/// A dead-letter directory at `dir` and the file it keeps of two readings refused.
fn two_readings_in(dir: PathBuf) -> (DeadLetters, PathBuf) {
    let d = DeadLetters::new(dir, "db", "mysql");
    let path = d
        .put("x", &gateway_sdk::testing::sample_readings(2))
        .unwrap();
    (d, path)
}

#[test]
fn every_value_type_survives_the_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = DeadLetters::new(dir.path().join("dl"), "db", "mysql");
    let values = [
        Value::Float(21.5),
        Value::Float(f64::NAN),
        Value::Float(f64::NEG_INFINITY),
        Value::Float(-0.1),
        Value::Int(i64::MIN),
        Value::Bool(true),
        Value::Text("a \"quoted\"\nline".into()),
        Value::Bytes(vec![0, 255, 16].into()),
    ];
    let ids = gateway_sdk::IdGenerator::new();
    let readings: Vec<Reading> = values
        .iter()
        .map(|v| Reading {
            id: ids.next(Timestamp(1)),
            time: Timestamp(1_764_583_200_123_456),
            device: "pi-01".into(),
            sensor: "s".into(),
            name: "n".into(),
            unit: "".into(),
            value: v.clone(),
        })
        .collect();
    let path = d.put("value out of range", &readings).unwrap();
    assert_eq!(d.files().unwrap(), vec![path.clone()]);
    let (h, back) = read(&path).unwrap();
    assert_eq!((h.sink.as_str(), h.plugin.as_str()), ("db", "mysql"));
    assert_eq!(h.error, "value out of range");
    assert_eq!(back.len(), readings.len());
    for (a, b) in back.iter().zip(&readings) {
        match (&a.value, &b.value) {
            (Value::Float(x), Value::Float(y)) if y.is_nan() => assert!(x.is_nan()),
            _ => assert_eq!(a, b),
        }
    }
}

#[test]
fn a_reading_refused_again_is_kept_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = DeadLetters::new(dir.path().to_path_buf(), "db", "mysql");
    let rs = gateway_sdk::testing::sample_readings(3);
    let one = |k: Kept| {
        assert_eq!(k.files.len(), 1, "{k:?}");
        k.files.into_iter().next().unwrap()
    };
    let (first, n) = one(d.put_new("x", &rs[..2]).settled());
    assert_eq!(n, 2);
    let again = d.put_new("x", &rs[1..2]).settled();
    assert!(again.files.is_empty() && again.again == 1, "kept already");
    let (second, n) = one(d.put_new("x", &rs).settled());
    assert_eq!(n, 1);
    let (_, back) = read(&second).unwrap();
    assert_eq!(back, rs[2..]);
    // Another device's reading with the same id is its own.
    let mut other = rs[0].clone();
    other.device = "another-device".into();
    let (third, n) = one(d.put_new("x", &[other]).settled());
    assert_eq!(n, 1);
    assert_eq!(d.files().unwrap(), vec![first, second, third]);
}

#[test]
fn a_device_past_its_share_is_not_kept_nor_held_and_the_others_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let of = |device: &str, n: usize| -> Vec<Reading> {
        let mut rs = gateway_sdk::testing::sample_readings(n);
        for r in &mut rs {
            r.device = device.into();
        }
        rs
    };
    let d = DeadLetters::new(dir.path().join("dl"), "db", "mysql")
        .with_own_device("gw")
        .with_max_size(100_000)
        .with_device_share(Some(2_000));
    // A batch of three devices: one file each, named and headed after its device.
    let mixed: Vec<Reading> = [of("pi-01", 2), of("pi-02", 3), of("gw", 1)].concat();
    let k = d.put_new("refused", &mixed).settled();
    assert_eq!((k.kept(), k.files.len(), k.not_kept()), (6, 3, 0));
    for ((path, n), (device, want)) in k.files.iter().zip([("pi-01", 2), ("pi-02", 3), ("gw", 1)]) {
        assert_eq!(*n, want);
        let (h, back) = read(path).unwrap();
        assert_eq!(h.device.as_deref(), Some(device));
        assert!(back.iter().all(|r| r.device.as_str() == device));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(room::owner_of(&name), Some(room::owner(device)), "{name}");
    }
    // pi-01 sends what is refused until its share is taken: then its readings are not
    // kept (and no error holds the sink), while pi-02's still are.
    let mut taken = 0;
    let (k, batch) = loop {
        let batch = of("pi-01", 5);
        let k = d.put_new("refused", &batch).settled();
        if k.not_kept() > 0 {
            break (k, batch);
        }
        taken += 1;
        assert!(taken < 100, "pi-01 was never past its share");
    };
    assert_eq!(k.not_kept.len(), 1);
    let (device, n, why) = &k.not_kept[0];
    // (Refused whole, the batch was tried again in halves: what fit was kept.)
    assert_eq!(device.as_str(), "pi-01");
    assert_eq!(k.kept() + n, 5);
    assert!(why.contains("past its share of 2000"), "{why}");
    // Once known past its share (not one more reading fits), pi-01's readings cost no
    // file text (but for a last part of a reading or two, which the lower bound of its
    // length may let through to be counted exactly).
    while d.put_new("refused", &of("pi-01", 1)).settled().kept() == 1 {}
    let encoded = d.encoded.load(Ordering::Relaxed);
    assert_eq!(
        d.put_new("refused", &of("pi-01", 50)).settled().not_kept(),
        50
    );
    assert!(d.encoded.load(Ordering::Relaxed) <= encoded + 1);
    // Refused again (a device narrowing what it was refused), they are not counted again.
    let again = d.put_new("refused", &batch[1..3]).settled();
    assert_eq!((again.not_kept(), again.again), (0, 2));
    assert_eq!(d.put_new("refused", &of("pi-02", 1)).settled().kept(), 1);
    // The gateway's own device has no share.
    for _ in 0..taken + 5 {
        assert_eq!(d.put_new("refused", &of("gw", 5)).settled().kept(), 5);
    }
    // A reload that raises the share gives pi-01 room again.
    d.set_device_share(Some(50_000));
    assert_eq!(d.put_new("refused", &of("pi-01", 5)).settled().kept(), 5);
    // Unset, it is an eighth of the directory.
    d.set_device_share(None);
    assert_eq!(d.share_of("pi-01"), Some(12_500));
    assert_eq!(d.share_of("gw"), None);
}

#[test]
fn a_batch_larger_than_a_devices_share_is_kept_in_part() {
    let dir = tempfile::tempdir().unwrap();
    let mut rs = gateway_sdk::testing::sample_readings(60);
    for r in &mut rs {
        r.device = "pi-01".into();
    }
    let d = DeadLetters::new(dir.path().join("dl"), "db", "mysql")
        .with_max_size(1 << 20)
        .with_device_share(Some(4096));
    let k = d.put_new("refused", &rs).settled();
    assert!(k.kept() > 0 && k.not_kept() > 0, "{k:?}");
    assert_eq!(k.kept() + k.not_kept(), 60);
    let bytes: u64 = k
        .files
        .iter()
        .map(|(p, _)| p.metadata().unwrap().len())
        .sum();
    assert!(bytes <= 4096, "{bytes}");
}

#[test]
fn a_part_longer_than_its_bound_said_is_kept_in_halves() {
    // Text of control characters is six times as long escaped as least_len counts it:
    // the parts cut by it are past the share, and their halves are kept.
    let dir = tempfile::tempdir().unwrap();
    let mut rs = gateway_sdk::testing::sample_readings(10);
    for r in &mut rs {
        r.device = "pi-01".into();
        r.value = Value::Text("\u{1}".repeat(300).as_str().into());
    }
    let d = DeadLetters::new(dir.path().join("dl"), "db", "mysql")
        .with_max_size(1 << 20)
        .with_device_share(Some(4096));
    let k = d.put_new("refused", &rs).settled();
    assert!(k.kept() >= 1, "{k:?}");
    assert_eq!(k.kept() + k.not_kept(), 10);
    assert_eq!(k.not_kept.len(), 1, "one entry for the device: {k:?}");
}

#[test]
fn least_len_is_never_more_than_the_file() {
    let d = DeadLetters::new(PathBuf::from("/nonexistent"), "", "");
    let values = [
        Value::Int(0),
        Value::Bool(false),
        Value::Float(f64::NAN),
        Value::Float(0.0),
        Value::Text("".into()),
        Value::Text("\"\\\n\u{1}é".into()),
        Value::Bytes(vec![].into()),
        Value::Bytes(vec![0, 255].into()),
    ];
    for value in values {
        for labels in ["", "a", "\"\u{1}é"] {
            let r = Reading {
                id: ReadingId([0; 16]),
                time: Timestamp(0),
                device: labels.into(),
                sensor: labels.into(),
                name: labels.into(),
                unit: labels.into(),
                value: value.clone(),
            };
            let rs = [r];
            let text = d.encode(Timestamp(0), "", None, &rs).unwrap();
            let header = d.encode(Timestamp(0), "", None, &[]).unwrap();
            let line = (text.len() - header.len()) as u64;
            assert!(
                least_len(&rs) <= line,
                "{} > {line}: {:?}",
                least_len(&rs),
                rs[0]
            );
        }
    }
}

#[test]
fn in_a_full_directory_only_the_gateways_own_readings_are_held() {
    let dir = tempfile::tempdir().unwrap();
    let one = |device: &str| -> Vec<Reading> {
        let mut rs = gateway_sdk::testing::sample_readings(1);
        rs[0].device = device.into();
        rs
    };
    let d = DeadLetters::new(dir.path().join("dl"), "db", "mysql")
        .with_own_device("gw")
        .with_max_size(4096)
        .with_device_share(Some(4096));
    let mut devices = 0;
    let k = loop {
        let k = d
            .put_new("refused", &one(&format!("pi-{devices}")))
            .settled();
        if k.kept() == 0 {
            break k;
        }
        devices += 1;
        assert!(devices < 100, "never full");
    };
    // The devices' files take at most seven eighths of the directory: past that another
    // device's reading is refused, not held.
    assert_eq!(k.not_kept(), 1);
    assert!(k.not_kept[0].2.contains("up to 3584"), "{k:?}");
    let bytes = |d: &DeadLetters| -> u64 {
        d.files()
            .unwrap()
            .iter()
            .map(|p| p.metadata().unwrap().len())
            .sum()
    };
    assert!(bytes(&d) <= 3584, "{}", bytes(&d));
    // The gateway's own device has the rest, and past it is held (the error), as a batch
    // of several devices is, until an operator makes room.
    let mut own = 0;
    let e = loop {
        let k = d.put_new("refused", &one("gw"));
        match k.error {
            Some(e) => break e,
            None => assert_eq!(k.kept(), 1),
        }
        own += 1;
    };
    assert!(own > 0, "the own device's eighth");
    assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    let e = d
        .put("refused", &[one("pi-a"), one("pi-b")].concat())
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    // A batch of both: the other device's reading is settled (not kept) at once, the
    // own device's held; when it comes again only the held one is tried, and the other is
    // not counted twice.
    let batch = [one("pi-new"), one("gw")].concat();
    let one_gw = batch[1..].to_vec();
    let k = d.put_new("refused", &batch);
    assert_eq!((k.not_kept(), k.held.len(), k.again), (1, 1, 0), "{k:?}");
    assert_eq!(k.held, one_gw, "the own device's reading, to offer again");
    assert!(k.error.is_some());
    std::fs::remove_file(&d.files().unwrap()[0]).unwrap();
    let k = d.put_new("refused", &batch).settled();
    assert_eq!((k.kept(), k.not_kept(), k.again), (1, 0, 1), "{k:?}");
    assert_eq!(k.files.len(), 1);
    assert_eq!(read(&k.files[0].0).unwrap().0.device.as_deref(), Some("gw"));
}

#[test]
fn the_directory_is_bounded_and_a_batch_past_its_room_is_an_error_not_a_loss() {
    let dir = tempfile::tempdir().unwrap();
    let rs = gateway_sdk::testing::sample_readings(10);
    let d = DeadLetters::new(dir.path().join("dl"), "db", "mysql")
        .with_own_device("test-device")
        .with_max_size(4096);
    let mut kept = Vec::new();
    let e = loop {
        match d.put("refused", &rs) {
            Ok(path) => kept.push(path),
            Err(e) => break e,
        }
    };
    assert!(!kept.is_empty());
    assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    let msg = e.to_string();
    assert!(
        msg.contains("dead_letter_max_size of 4096") && msg.contains("gateway dead-letters"),
        "{msg}"
    );
    let bytes: u64 = d
        .files()
        .unwrap()
        .iter()
        .map(|p| p.metadata().unwrap().len())
        .sum();
    assert!(bytes <= 4096, "{bytes}");
    assert_eq!(d.files().unwrap(), kept, "nothing half-written");
    // Room made by another process (`gateway dead-letters resend`) is seen.
    std::fs::remove_file(&kept[0]).unwrap();
    d.put("refused", &rs).expect("room again");
    // A batch larger than the limit is kept in an empty directory, not held for good.
    let big = gateway_sdk::testing::sample_readings(100);
    let small = DeadLetters::new(dir.path().join("small"), "db", "mysql")
        .with_own_device("test-device")
        .with_max_size(100);
    small
        .put("refused", &big)
        .expect("alone, whatever its size");
    assert!(small.put("refused", &rs).is_err(), "but nothing beside it");
    // A reload that raised dead_letter_max_size makes room in the record it shares.
    small.set_max_size(1 << 20);
    small.put("refused", &rs).expect("room after the reload");
}

#[test]
fn a_file_a_crash_left_unfinished_takes_no_room() {
    // Created, then a crash before its rename: `list` does not show it, so its room was
    // never freed, and every later refusal held the sink.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".x.jsonl.tmp"), vec![b'x'; 4096]).unwrap();
    let d = DeadLetters::new(dir.path().to_path_buf(), "db", "mysql")
        .with_own_device("test-device")
        .with_max_size(4096);
    d.put("refused", &gateway_sdk::testing::sample_readings(3))
        .expect("room");
    // One an hour old is taken for a crash's, and removed.
    let old = dir.path().join(".x.jsonl.tmp");
    let hour_ago =
        std::time::SystemTime::now() - room::STALE_TMP - std::time::Duration::from_secs(1);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    let big = DeadLetters::new(dir.path().to_path_buf(), "db", "mysql").with_max_size(1 << 20);
    big.put("refused", &gateway_sdk::testing::sample_readings(1))
        .unwrap();
    assert!(!old.exists());
}

#[test]
fn a_damaged_file_is_an_error_that_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = two_readings_in(dir.path().to_path_buf());
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("\"time_us\"", "\"tim\"", 1)).unwrap();
    let e = read(&path).unwrap_err();
    assert!(e.ends_with(":2: not a reading"), "{e}");
}

#[test]
fn a_reader_opens_no_link_and_no_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let (d, path) = two_readings_in(dir.path().join("dl"));
    assert_eq!(header(&path).unwrap().readings, 2);
    // The service's user swaps a listed file for a link (to /dev/zero, say): an operator's
    // `sudo gateway dead-letters show` must not follow it.
    let elsewhere = dir.path().join("elsewhere.jsonl");
    std::fs::copy(&path, &elsewhere).unwrap();
    let link = dir.path().join("dl/link.jsonl");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    for e in [header(&link).unwrap_err(), read(&link).unwrap_err()] {
        assert!(e.contains("symbolic links"), "{e}");
    }
    // A FIFO is refused at once, not waited on for a writer.
    let fifo = dir.path().join("dl/fifo.jsonl");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string; mkfifo has no other precondition.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = header(&fifo).unwrap_err();
    assert!(e.ends_with("not a regular file"), "{e}");
    // A sparse file of a terabyte without a newline is a regular file: its first line is
    // read no further than MAX_HEADER.
    let sparse = dir.path().join("dl/sparse.jsonl");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let e = header(&sparse).unwrap_err();
    assert!(e.contains("a line longer than 1048576 bytes"), "{e}");
    // A line of a dead letter may be longer than MAX_HEADER (a large value).
    let big = d
        .put(
            "x",
            &[gateway_sdk::Reading {
                value: Value::Bytes(vec![7u8; 3 << 20].into()),
                ..gateway_sdk::testing::sample_readings(1).remove(0)
            }],
        )
        .unwrap();
    assert_eq!(read(&big).unwrap().1.len(), 1);
}

/// Found in a review: a member of a group-writable `data_dir`'s group could drop or edit a
/// file, and `resend` sent its readings, of any device, with the sink's credentials.
#[test]
fn a_file_that_others_could_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = two_readings_in(dir.path().join("dl"));
    let mode = |m: u32| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m));
    for m in [0o620, 0o602, 0o666] {
        mode(m).unwrap();
        for e in [header(&path).unwrap_err(), read(&path).unwrap_err()] {
            assert!(
                e.contains("its group or other users may write it"),
                "{m:o}: {e}"
            );
        }
    }
    mode(0o640).unwrap();
    assert_eq!(
        read(&path).unwrap().1.len(),
        2,
        "readable by the group is fine"
    );
}

#[test]
fn a_devices_file_with_a_reading_of_another_device_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = DeadLetters::new(dir.path().to_path_buf(), "db", "mysql");
    let rs = gateway_sdk::testing::sample_readings(2);
    let path = d.put("x", &rs).unwrap();
    assert!(room::owner_of(&path.file_name().unwrap().to_string_lossy()).is_some());
    let text = std::fs::read_to_string(&path).unwrap();
    let device = format!("\"device\":{}", J::from(rs[1].device.as_str()));
    assert!(text.matches(&device).count() >= 2, "{text}");
    // The header and the first reading stay; the second reading becomes another device's.
    let at = text.rfind(&device).unwrap();
    let forged = format!(
        "{}\"device\":\"victim\"{}",
        &text[..at],
        &text[at + device.len()..]
    );
    std::fs::write(&path, forged).unwrap();
    let e = read(&path).unwrap_err();
    assert!(
        e.ends_with(":3: a reading of another device than the file's name says"),
        "{e}"
    );
}

#[test]
fn files_are_listed_in_the_order_of_their_sequence_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let d = DeadLetters::new(dir.path().to_path_buf(), "db", "mysql");
    // Within one microsecond the sequence number orders them; as text, 10 came before 9.
    let names = [
        "1764583200-000001-9.jsonl",
        "1764583200-000001-10.jsonl",
        "1764583200-000002-0-00000000000000ff.jsonl",
        "1764583201-000000-1.jsonl",
    ];
    for n in names.iter().rev() {
        std::fs::write(dir.path().join(n), "").unwrap();
    }
    let listed: Vec<String> = d
        .files()
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, names);
}

/// Found in a review: a third-party sink's error of any length went into the header whole,
/// and a header longer than a reader takes made the file unreadable for `show` and `resend`.
#[test]
fn a_sink_error_of_any_length_leaves_a_readable_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = DeadLetters::new(dir.path().to_path_buf(), "db", "mysql");
    let error = "é".repeat(MAX_HEADER as usize);
    let path = d
        .put(&error, &gateway_sdk::testing::sample_readings(1))
        .unwrap();
    let (h, back) = read(&path).unwrap();
    assert_eq!(back.len(), 1);
    assert!(
        h.error.starts_with("éé") && h.error.len() < MAX_ERROR + 64,
        "{}",
        h.error.len()
    );
    assert!(
        h.error
            .ends_with(&format!(" [{} bytes more]", error.len() - MAX_ERROR)),
        "{}",
        &h.error[h.error.len() - 40..]
    );
}

/// Found in a review of the check above: a file was taken when the owner of its own
/// directory owned it, and a member of a group-writable `data_dir`'s group could move a
/// sink's directory aside and make one of their own, files and all. (As root only: making
/// files of another user needs it.)
#[test]
fn a_file_of_another_user_is_refused_unless_the_data_dir_is_theirs() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to give files to another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = DeadLetters::new(data.join("rec/dead-letter"), "rec", "mysql");
    let path = d
        .put("x", &gateway_sdk::testing::sample_readings(1))
        .unwrap();
    let give = |p: &Path, uid: u32| std::os::unix::fs::chown(p, Some(uid), None).unwrap();
    give(&path, 4242);
    give(&data.join("rec"), 4242);
    give(&data.join("rec/dead-letter"), 4242);
    let e = read(&path).unwrap_err();
    assert!(
        e.contains("belongs to uid 4242, not to this user, root or the owner of the data_dir"),
        "{e}"
    );
    // The service's user owns the data_dir: root's `show` of its files.
    give(&data, 4242);
    assert_eq!(read(&path).unwrap().1.len(), 1);
}
