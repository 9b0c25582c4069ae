//! The sink against real SQLite files: every field back, duplicates dropped, schema guarded.

use gateway_sdk::{
    testing::{readme_sample_tables, sample_readings, SinkHarness},
    ErrorKind, Label, Reading, ReadingId, Timestamp, Value,
};
use sqlite::{config::Config, Sqlite};

fn cfg(path: &std::path::Path) -> String {
    format!("path = {:?}\n", path.display().to_string())
}

fn rows(path: &std::path::Path) -> Vec<(Vec<u8>, i64, String, String, String, String, String)> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut s = c.prepare("SELECT id, time_us, device, sensor, name, unit, value_type FROM readings ORDER BY time_us, id").unwrap();
    s.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[test]
fn stores_every_field_of_every_value_type() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let mut sink = SinkHarness::new::<Sqlite>(&cfg(&db)).unwrap();
    let mk = |i: u8, value: Value| Reading {
        id: ReadingId([i; 16]),
        time: Timestamp(1_764_085_351_123_456 + i64::from(i)),
        device: Label::from("pi-01"),
        sensor: Label::from("gps"),
        name: Label::from("n"),
        unit: Label::from("m"),
        value,
    };
    let batch = vec![
        mk(1, Value::Float(21.5)),
        mk(2, Value::Int(-7)),
        mk(3, Value::Bool(true)),
        mk(4, Value::Text("3D".into())),
        mk(5, Value::Bytes(vec![0, 255].into())),
    ];
    sink.write(batch).unwrap();
    let r = rows(&db);
    assert_eq!(r.len(), 5);
    assert_eq!(
        r[0],
        (
            vec![1; 16],
            1_764_085_351_123_457,
            "pi-01".into(),
            "gps".into(),
            "n".into(),
            "m".into(),
            "float".into()
        )
    );
    let c = rusqlite::Connection::open(&db).unwrap();
    let f: f64 = c
        .query_row(
            "SELECT value_float FROM readings WHERE value_type='float'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let i: i64 = c
        .query_row(
            "SELECT value_int FROM readings WHERE value_type='int'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let b: i64 = c
        .query_row(
            "SELECT value_int FROM readings WHERE value_type='bool'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let t: String = c
        .query_row(
            "SELECT value_text FROM readings WHERE value_type='text'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let d: Vec<u8> = c
        .query_row(
            "SELECT value_bytes FROM readings WHERE value_type='bytes'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!((f, i, b, t.as_str(), d), (21.5, -7, 1, "3D", vec![0, 255]));
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn a_nan_is_refused_in_words_not_stored_as_null() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let mut sink = SinkHarness::new::<Sqlite>(&cfg(&db)).unwrap();
    let mut batch = sample_readings(3);
    batch[1].value = Value::Float(f64::NAN);
    let e = sink.write(batch.clone()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert!(e.message().contains("reading 2 of 3"), "{e}");
    assert!(rows(&db).is_empty(), "nothing of the batch");
    // Infinities are kept as they are.
    batch[1].value = Value::Float(f64::NEG_INFINITY);
    sink.write(batch).unwrap();
    assert_eq!(rows(&db).len(), 3);
}

#[test]
fn a_reading_delivered_twice_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let batch = sample_readings(50);
    let mut sink = SinkHarness::new::<Sqlite>(&cfg(&db)).unwrap();
    sink.write(batch.clone()).unwrap();
    sink.write(batch[10..30].to_vec()).unwrap();
    drop(sink);
    // Again after a restart.
    let mut sink = SinkHarness::new::<Sqlite>(&cfg(&db)).unwrap();
    sink.write(batch.clone()).unwrap();
    assert_eq!(rows(&db).len(), 50);
}

#[test]
fn a_reading_a_rule_added_to_the_table_refuses_is_refused_not_skipped() {
    // INSERT OR IGNORE skipped such a row in silence, counted as a duplicate: the batch was
    // acknowledged as stored, and that reading was in no store.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let mut s = SinkHarness::new::<Sqlite>(&cfg(&path)).unwrap();
    // Each at a time of its own: made within one microsecond (a fast machine), two readings
    // of the series would break the index below by themselves.
    let mut batch = sample_readings(3);
    for (i, r) in batch.iter_mut().enumerate() {
        r.time = gateway_sdk::Timestamp(r.time.0 + 1000 * i as i64);
    }
    s.write(batch[..1].to_vec()).unwrap();
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch("CREATE UNIQUE INDEX one ON readings (device, sensor, name, time_us); CREATE TRIGGER small BEFORE INSERT ON readings WHEN NEW.value_float > 1000 BEGIN SELECT RAISE(ABORT, 'too large'); END;")
        .unwrap();
    drop(c);
    // Another reading of the first one's series at its time: the index refuses it.
    let mut same = batch[1].clone();
    (same.sensor, same.name, same.time) = (
        batch[0].sensor.clone(),
        batch[0].name.clone(),
        batch[0].time,
    );
    let mut large = batch[2].clone();
    large.value = Value::Float(5000.0);
    for (bad, why) in [(same, "UNIQUE constraint failed"), (large, "too large")] {
        let e = s.write(vec![batch[0].clone(), bad]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
        assert!(
            e.message().starts_with("reading 2 of 2 ") && e.message().contains(why),
            "{e}"
        );
    }
    // A re-delivery is still a duplicate, stored once, beside a new reading.
    s.write(vec![batch[0].clone(), batch[2].clone()]).unwrap();
    assert_eq!(rows(&path).len(), 2);
    drop(s);
    // A table remade by hand without the key that tells a re-delivery from a new reading is
    // named at open, not retried at every write.
    let change = |sql: &str| {
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(sql)
            .unwrap()
    };
    let first_write =
        || SinkHarness::new::<Sqlite>(&cfg(&path)).and_then(|mut s| s.write(batch[..1].to_vec()));
    change("CREATE TABLE r2 AS SELECT * FROM readings; DROP TABLE readings; ALTER TABLE r2 RENAME TO readings;");
    let e = first_write().unwrap_err();
    assert_eq!(e.kind, ErrorKind::FATAL, "{e}");
    assert!(e.message().contains("no unique key on (id, device)"), "{e}");
    // Nor is a key of `id` twice, which ON CONFLICT (id, device) would take: another device's
    // reading of the same id would be skipped.
    change("CREATE UNIQUE INDEX twice ON readings (id, ID)");
    let e = first_write().unwrap_err();
    assert!(e.message().contains("no unique key on (id, device)"), "{e}");
    // A key the table's own spelling names (`Device`, `ID`) is one.
    change("CREATE UNIQUE INDEX spelled ON readings (Device, ID)");
    first_write().unwrap();
}

#[test]
fn a_newer_schema_is_refused_not_downgraded() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let mut first = SinkHarness::new::<Sqlite>(&cfg(&db)).unwrap();
    first.write(sample_readings(1)).unwrap();
    drop(first);
    rusqlite::Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", 3)
        .unwrap();
    // The file is opened before the first write, not when the instance is built (`gateway
    // check` builds it too); a failure to open asks the host to rebuild it later.
    let mut again = SinkHarness::new::<Sqlite>(&cfg(&db)).unwrap();
    let e = again.write(sample_readings(1)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::FATAL);
    assert!(
        e.message()
            .contains("schema version 3, newer than this plugin's 2"),
        "{e}"
    );
}

/// The same readings (ids included) as another device's.
fn as_device(batch: &[gateway_sdk::Reading], device: &str) -> Vec<gateway_sdk::Reading> {
    let mut b = batch.to_vec();
    for r in &mut b {
        r.device = device.into();
    }
    b
}

#[test]
fn an_id_is_unique_within_its_device_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let batch = sample_readings(5);
    let mut sink = SinkHarness::new::<Sqlite>(&cfg(&db)).unwrap();
    // Another device sent the same ids first: they must not shadow this device's readings.
    sink.write(as_device(&batch, "squatter")).unwrap();
    sink.write(batch.clone()).unwrap();
    sink.write(batch.clone()).unwrap();
    let rows = rows(&db);
    assert_eq!(rows.len(), 10);
    assert_eq!(rows.iter().filter(|r| r.2 == "test-device").count(), 5);
}

#[test]
fn a_version_1_database_is_migrated_with_every_row() {
    for recorded in [1, 0] {
        version_1_is_migrated(recorded);
    }
}

#[test]
fn a_table_taken_for_version_1_with_more_on_it_is_left_alone_not_migrated() {
    // A file whose schema version was never recorded is taken for version 1, and the migration
    // copied the eleven columns and dropped the table: a column, trigger or index the
    // operator added went with it, without a word (a view or trigger elsewhere naming the
    // table failed the migration's rename, retried for ever).
    for (extra, refused) in [
        ("ALTER TABLE readings ADD COLUMN received_at INTEGER", true),
        (
            "CREATE TRIGGER audit AFTER INSERT ON readings BEGIN SELECT 1; END",
            true,
        ),
        ("CREATE INDEX by_unit ON readings (unit)", true),
        (
            "CREATE VIEW latest AS SELECT max(time_us) FROM \"Readings\"",
            true,
        ),
        (
            "CREATE TABLE log (x); CREATE TRIGGER copy AFTER INSERT ON log BEGIN \
             INSERT INTO readings (id, time_us, device, sensor, name, unit, value_type) \
             VALUES (x'02', 2, 'd', 's', 'n', '', 'int'); END",
            true,
        ),
        // What only looks like the table's name is not it.
        (
            "CREATE TABLE readings_archive (x); \
             CREATE VIEW summary AS SELECT count(*) AS readings_count FROM readings_archive",
            false,
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("r.db");
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE readings (
                id BLOB NOT NULL PRIMARY KEY, time_us INTEGER NOT NULL, device TEXT NOT NULL,
                sensor TEXT NOT NULL, name TEXT NOT NULL, unit TEXT NOT NULL,
                value_type TEXT NOT NULL, value_float REAL, value_int INTEGER, value_text TEXT,
                value_bytes BLOB
            ) WITHOUT ROWID;
            INSERT INTO readings VALUES (x'01', 1, 'pi-01', 's', 'n', 'Cel', 'float', 1.5, NULL, NULL, NULL);",
        )
        .unwrap();
        c.execute_batch(extra).unwrap();
        let objects = |c: &rusqlite::Connection| -> i64 {
            c.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                .unwrap()
        };
        let before = objects(&c);
        drop(c);
        let opened =
            SinkHarness::new::<Sqlite>(&cfg(&db)).and_then(|mut s| s.write(sample_readings(1)));
        if !refused {
            opened.unwrap_or_else(|e| panic!("{extra}: {e}"));
            assert_eq!(rows(&db).len(), 2, "{extra}");
            continue;
        }
        let e = opened.unwrap_err();
        assert_eq!(e.kind, ErrorKind::FATAL, "{extra}: {e}");
        assert!(
            e.message().contains("would drop or break that"),
            "{extra}: {e}"
        );
        let c = rusqlite::Connection::open(&db).unwrap();
        assert_eq!(objects(&c), before, "{extra}: all of it kept");
        assert_eq!(rows(&db).len(), 1);
    }
}

#[test]
fn a_reading_a_rule_checked_at_commit_refuses_is_refused_not_retried() {
    // A deferred foreign key fails at COMMIT, not at the INSERT: that was taken for a passing
    // error, retried for ever, and every reading behind the batch waited.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let mut s = SinkHarness::new::<Sqlite>(&cfg(&db)).unwrap();
    s.write(sample_readings(1)).unwrap();
    drop(s);
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TABLE devices (name TEXT PRIMARY KEY);
             INSERT INTO devices VALUES ('test-device');
             CREATE TABLE r2 (id BLOB NOT NULL, time_us INTEGER NOT NULL,
                device TEXT NOT NULL REFERENCES devices (name) DEFERRABLE INITIALLY DEFERRED,
                sensor TEXT NOT NULL, name TEXT NOT NULL, unit TEXT NOT NULL, value_type TEXT NOT NULL,
                value_float REAL, value_int INTEGER, value_text TEXT, value_bytes BLOB,
                PRIMARY KEY (id, device)) WITHOUT ROWID;
             INSERT INTO r2 SELECT * FROM readings; DROP TABLE readings; ALTER TABLE r2 RENAME TO readings;",
        )
        .unwrap();
    let mut s = SinkHarness::new::<Sqlite>(&cfg(&db)).unwrap();
    let mut stranger = sample_readings(2);
    stranger[1].device = "pi-99".into();
    let e = s.write(stranger).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert!(e.message().contains("checked at commit"), "{e}");
    s.write(sample_readings(3)[2..].to_vec())
        .expect("a known device's reading is stored");
}

/// A version 1 file whose `user_version` says `recorded` (0: a crash came between creating the
/// table and recording its version, as the first plugin did them) is migrated.
fn version_1_is_migrated(recorded: i64) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE readings (
                id BLOB NOT NULL PRIMARY KEY, time_us INTEGER NOT NULL, device TEXT NOT NULL,
                sensor TEXT NOT NULL, name TEXT NOT NULL, unit TEXT NOT NULL,
                value_type TEXT NOT NULL CHECK (value_type IN ('float', 'int', 'bool', 'text', 'bytes')),
                value_float REAL, value_int INTEGER, value_text TEXT, value_bytes BLOB
            ) WITHOUT ROWID;
            CREATE INDEX readings_latest ON readings (device, sensor, name, time_us);
            CREATE INDEX readings_time ON readings (time_us);
            INSERT INTO readings VALUES (x'00000000000000000000000000000001', 1, 'pi-01', 's', 'n', 'Cel', 'float', 1.5, NULL, NULL, NULL);
            INSERT INTO readings VALUES (x'00000000000000000000000000000002', 2, 'pi-01', 's', 'n', '', 'text', NULL, NULL, 'x', NULL);",
        )
        .unwrap();
        c.pragma_update(None, "user_version", recorded).unwrap();
    }
    let mut sink = SinkHarness::new::<Sqlite>(&cfg(&db)).unwrap();
    let before = rows(&db);
    assert_eq!(before.len(), 2, "every row kept");
    // The same id under another device is a reading of its own now.
    let mut r = sample_readings(1);
    let mut one = [0u8; 16];
    one[15] = 1;
    r[0].id = gateway_sdk::ReadingId(one);
    r[0].device = "pi-02".into();
    sink.write(r).unwrap();
    assert_eq!(rows(&db).len(), 3);
    let c = rusqlite::Connection::open(&db).unwrap();
    let v: i64 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, 2);
    let indexes: i64 = c
        .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'readings' AND name LIKE 'readings_%'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(indexes, 2);
}

/// The readings table renamed (or dropped) by another process: every statement on the
/// connection failed with "no such table", and the sink retried it for ever. Now the failing
/// write drops the connection, and the next one opens the file again and makes the table.
#[test]
fn a_table_renamed_under_the_sink_is_made_again_at_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let batch = sample_readings(3);
    let mut sink = SinkHarness::new::<Sqlite>(&cfg(&db)).unwrap();
    sink.write(batch[..1].to_vec()).unwrap();
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("ALTER TABLE readings RENAME TO readings_old")
        .unwrap();
    let e = sink.write(batch[1..2].to_vec()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    assert!(e.message().contains("no such table"), "{e}");
    sink.write(batch[1..].to_vec())
        .expect("opened again, the table made again");
    assert_eq!(rows(&db).len(), 2);
}

/// The database file moved away, or deleted, under the sink: SQLite gives no error, and the
/// sink wrote on, acknowledged, to the old file, and SQLite (which does not checkpoint a moved
/// file at close) kept those commits in a WAL file beside the old name, in no database. Now
/// the next write checkpoints the old file, closes it, and opens (makes) the file at `path`.
#[test]
fn a_database_file_moved_under_the_sink_is_made_again_at_its_path() {
    for moved in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("r.db");
        let old = dir.path().join("moved.db");
        let batch = sample_readings(3);
        let mut sink = SinkHarness::new::<Sqlite>(&cfg(&db)).unwrap();
        sink.write(batch[..1].to_vec()).unwrap();
        if moved {
            std::fs::rename(&db, &old).unwrap();
        } else {
            std::fs::remove_file(&db).unwrap();
        }
        sink.write(batch[1..].to_vec()).unwrap();
        assert!(db.exists(), "moved {moved}: no file at the configured path");
        assert_eq!(rows(&db).len(), 2, "moved {moved}");
        if moved {
            assert_eq!(
                rows(&old).len(),
                1,
                "the moved file holds what it was given"
            );
        }
    }
}

/// Whether the write-ahead log beside `db`'s name holds no commit (none, or emptied).
fn wal_empty(db: &std::path::Path) -> bool {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).map_or(true, |m| m.len() == 0)
}

/// The database file moved, then the sink closed (shut down, reloaded, rebuilt) before its
/// next write: the connection was dropped without a checkpoint, SQLite skips its own for a
/// moved file, and the commits stayed in a WAL beside the old name, which the next start's
/// new file deletes (or takes). Now closing the store, and dropping it, checkpoints.
#[test]
fn a_file_moved_then_closed_before_the_next_write_keeps_its_readings() {
    for close in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("r.db");
        let old = dir.path().join("moved.db");
        let mut sink = SinkHarness::new::<Sqlite>(&cfg(&db)).unwrap();
        sink.write(sample_readings(1)).unwrap();
        std::fs::rename(&db, &old).unwrap();
        if close {
            sink.close().unwrap();
        }
        drop(sink);
        assert!(wal_empty(&db), "close {close}: commits left in the WAL");
        assert_eq!(rows(&old).len(), 1, "close {close}");
    }
}

/// Another process holding a read snapshot on the moved file: the checkpoint before the
/// sink opens the path again cannot finish (PRAGMA wal_checkpoint says so in its result,
/// not as an error), and the new file would have taken (or deleted) the old WAL with the
/// commits in it. Now that write fails, retried, the old file kept open until it can.
#[test]
fn a_checkpoint_a_reader_holds_up_keeps_the_moved_file_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let old = dir.path().join("moved.db");
    let batch = sample_readings(3);
    let mut sink =
        SinkHarness::new::<Sqlite>(&format!("{}busy_timeout = \"50ms\"\n", cfg(&db))).unwrap();
    sink.write(batch[..1].to_vec()).unwrap();
    let reader = rusqlite::Connection::open(&db).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let n: i64 = reader
        .query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    sink.write(batch[1..2].to_vec()).unwrap();
    std::fs::rename(&db, &old).unwrap();
    let e = sink.write(batch[2..].to_vec()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    assert!(e.message().contains("checkpoint"), "{e}");
    assert!(
        !db.exists(),
        "a new file made while the old WAL holds commits"
    );
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    sink.write(batch[2..].to_vec()).unwrap();
    assert_eq!(rows(&db).len(), 1);
    assert_eq!(rows(&old).len(), 2);
}

/// The database's directory gone (an SD card or USB stick unmounted under it): each reopen
/// made it again, and a fresh database on the filesystem under the mount point. Now only the
/// first open makes directories; later ones fail, retried, until it is back. A stat that
/// fails otherwise than "not found" is retried without closing the file.
#[test]
fn a_directory_gone_is_not_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sd");
    let away = dir.path().join("away");
    let db = sub.join("r.db");
    let batch = sample_readings(2);
    let mut sink = SinkHarness::new::<Sqlite>(&cfg(&db)).unwrap();
    sink.write(batch[..1].to_vec()).unwrap();
    std::fs::rename(&sub, &away).unwrap();
    // A file where the directory was: stat says "not a directory", not "not found".
    std::fs::write(&sub, b"").unwrap();
    let e = sink.write(batch[1..].to_vec()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    std::fs::remove_file(&sub).unwrap();
    let e = sink.write(batch[1..].to_vec()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    assert!(e.message().contains("directory gone"), "{e}");
    assert!(!sub.exists(), "the directory was made again");
    std::fs::rename(&away, &sub).unwrap();
    sink.write(batch[1..].to_vec()).unwrap();
    assert_eq!(rows(&db).len(), 2);
}

/// The file moved while a batch waited for another process's lock: the check before the
/// write had passed, and the batch was committed to the moved file and acknowledged. Now a
/// stat after the commit sees it, the write fails (retried), and the retry lands in the file
/// at `path` (the key drops it should it reach the same file twice).
#[test]
fn a_file_moved_during_a_write_is_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let old = dir.path().join("moved.db");
    let batch = sample_readings(2);
    let mut sink = SinkHarness::new::<Sqlite>(&cfg(&db)).unwrap();
    sink.write(batch[..1].to_vec()).unwrap();
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mover = {
        let (db, old) = (db.clone(), old.clone());
        std::thread::spawn(move || {
            // Long enough for the write to pass its first check and wait for the lock.
            std::thread::sleep(std::time::Duration::from_millis(300));
            std::fs::rename(&db, &old).unwrap();
            locker.execute_batch("COMMIT").unwrap();
        })
    };
    let e = sink.write(batch[1..].to_vec()).unwrap_err();
    mover.join().unwrap();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    assert!(e.message().contains("moved"), "{e}");
    sink.write(batch[1..].to_vec()).unwrap();
    assert_eq!(rows(&db).len(), 1);
    assert_eq!(rows(&old).len(), 2);
}

#[test]
fn config_errors_name_the_key() {
    let e = SinkHarness::new::<Sqlite>("pth = \"x.db\"").err().unwrap();
    assert!(e.message().contains("unknown field `pth`"), "{e}");
    let mut h = SinkHarness::new::<Sqlite>("path = \"/proc/nope/x.db\"").unwrap();
    let e = h.write(sample_readings(1)).unwrap_err();
    assert!(e.message().contains("/proc/nope"), "{e}");
    assert!(
        !std::path::Path::new("/proc/nope").exists(),
        "nothing was made when it was built"
    );
}

#[test]
fn readme_sample_matches_sample_toml_and_parses() {
    for (name, keys) in
        readme_sample_tables(include_str!("../README.md"), include_str!("../sample.toml"))
    {
        let _: Config = keys.try_into().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
