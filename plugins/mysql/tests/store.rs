//! The sink against the real MariaDB/MySQL server (see `support` for which one and how).

mod support;

use gateway_sdk::{
    testing::{readme_sample_tables, sample_readings, SinkHarness},
    ErrorKind, Label, Reading, ReadingId, Timestamp, Value,
};
use mysql::{config::Config, Mysql};
use support::{TestDb, TestUser};

#[test]
fn stores_every_field_in_one_transaction_and_migrates_once() {
    let db = TestDb::new("fields");
    let mut sink = SinkHarness::new::<Mysql>(&db.config("")).unwrap();
    let mk = |i: u8, value: Value| Reading {
        id: ReadingId([i; 16]),
        time: Timestamp(1_764_085_351_123_456 + i64::from(i)),
        device: Label::from("pi-01"),
        sensor: Label::from("gps"),
        name: Label::from("n"),
        unit: Label::from("m"),
        value,
    };
    sink.write(vec![
        mk(1, Value::Float(21.5)),
        mk(2, Value::Int(-7)),
        mk(3, Value::Bool(true)),
        mk(4, Value::Text("3D".into())),
        mk(5, Value::Bytes(vec![0, 255].into())),
    ])
    .unwrap();
    let rows: Vec<(Vec<u8>, i64, String, Option<f64>, Option<i64>, Option<String>, Option<Vec<u8>>)> =
        db.query("SELECT id, time_us, value_type, value_float, value_int, value_text, value_bytes FROM readings ORDER BY time_us");
    assert_eq!(rows.len(), 5);
    assert_eq!(
        rows[0],
        (
            vec![1; 16],
            1_764_085_351_123_457,
            "float".into(),
            Some(21.5),
            None,
            None,
            None
        )
    );
    assert_eq!(rows[1].4, Some(-7));
    assert_eq!(rows[2].4, Some(1));
    assert_eq!(rows[3].5.as_deref(), Some("3D"));
    assert_eq!(rows[4].6, Some(vec![0, 255]));
    let v: Vec<u32> = db.query("SELECT version FROM gateway_schema WHERE tbl = 'readings'");
    assert_eq!(v, [2]);
}

#[test]
fn what_a_column_cannot_hold_is_refused_in_words_not_cut_or_nulled() {
    let db = TestDb::new("limits");
    let mut sink = SinkHarness::new::<Mysql>(&db.config("")).unwrap();
    let mk = |i: u8, unit: &str, value: Value| Reading {
        id: ReadingId([i; 16]),
        time: Timestamp(1_764_085_351_123_456),
        device: Label::from("pi-01"),
        sensor: Label::from("s"),
        name: Label::from("n"),
        unit: Label::from(unit),
        value,
    };
    let fits = [
        mk(1, &"u".repeat(64), Value::Float(1.0)),
        mk(2, &"é".repeat(64), Value::Text("t".repeat(65_535).into())),
        mk(3, "", Value::Bytes(vec![7; 65_535].into())),
    ];
    sink.write(fits.to_vec()).unwrap();
    let too_long = [
        (mk(4, &"u".repeat(65), Value::Float(1.0)), "unit"),
        (mk(5, "", Value::Text("t".repeat(65_536).into())), "text"),
        (mk(6, "", Value::Bytes(vec![7; 65_536].into())), "bytes"),
        (mk(7, "", Value::Float(f64::NAN)), "NaN"),
        (mk(8, "", Value::Float(f64::INFINITY)), "inf"),
    ];
    for (r, what) in too_long {
        let e = sink.write(vec![fits[0].clone(), r]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::REJECTED, "{what}: {e}");
        assert!(e.message().contains("reading 2 of 2"), "{what}: {e}");
    }
    let rows: Vec<(u8, usize, Option<usize>, Option<usize>)> = db.query(
        "SELECT ASCII(id), CHAR_LENGTH(unit), LENGTH(value_text), LENGTH(value_bytes) FROM readings ORDER BY id",
    );
    assert_eq!(
        rows,
        [
            (1, 64, None, None),
            (2, 64, Some(65_535), None),
            (3, 0, None, Some(65_535))
        ],
        "the rows that fit, whole; nothing of the refused batches"
    );
}

#[test]
fn a_reading_delivered_twice_is_stored_once_and_large_batches_are_chunked() {
    let db = TestDb::new("dups");
    let batch = sample_readings(2500);
    let mut sink = SinkHarness::new::<Mysql>(&db.config("")).unwrap();
    sink.write(batch.clone()).unwrap();
    sink.write(batch[100..300].to_vec()).unwrap();
    drop(sink);
    let mut again = SinkHarness::new::<Mysql>(&db.config("")).unwrap();
    again.write(batch).unwrap();
    let n: Vec<u64> = db.query("SELECT COUNT(*) FROM readings");
    assert_eq!(n, [2500]);
}

#[test]
fn a_newer_schema_is_refused_not_downgraded() {
    let db = TestDb::new("schema");
    let mut sink = SinkHarness::new::<Mysql>(&db.config("")).unwrap();
    sink.write(sample_readings(1)).unwrap();
    let _: Vec<u8> = db.query("UPDATE gateway_schema SET version = 3");
    let mut newer = SinkHarness::new::<Mysql>(&db.config("")).unwrap();
    let e = newer.write(sample_readings(1)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::CONFIG);
    assert!(
        e.message()
            .contains("schema version 3, newer than this plugin's 2"),
        "{e}"
    );
}

#[test]
fn an_id_is_unique_within_its_device_only_and_version_1_is_migrated() {
    let db = TestDb::new("scope");
    // A table as schema version 1 made it: keyed by id alone.
    let _: Vec<u8> = db.query("CREATE TABLE gateway_schema (tbl VARCHAR(64) NOT NULL PRIMARY KEY, version INT UNSIGNED NOT NULL) ENGINE=InnoDB");
    let v1 = gateway_plugin_mysql_v1_ddl();
    let _: Vec<u8> = db.query(&v1);
    let _: Vec<u8> = db.query("INSERT INTO gateway_schema VALUES ('readings', 1)");
    let _: Vec<u8> = db.query("INSERT INTO readings (id, time_us, device, sensor, name, unit, value_type, value_float) VALUES (UNHEX('00000000000000000000000000000001'), 1, 'pi-01', 's', 'n', '', 'float', 1.5)");
    let batch = sample_readings(5);
    let mut squatter = batch.clone();
    for r in &mut squatter {
        r.device = Label::from("squatter");
    }
    let mut sink = SinkHarness::new::<Mysql>(&db.config("")).unwrap();
    sink.write(squatter).unwrap();
    sink.write(batch.clone()).unwrap();
    sink.write(batch).unwrap();
    let n: Vec<u64> = db.query("SELECT COUNT(*) FROM readings");
    assert_eq!(n, [11], "the old row, and five readings of each device");
    let v: Vec<u32> = db.query("SELECT version FROM gateway_schema WHERE tbl = 'readings'");
    assert_eq!(v, [2]);
    // Device names compare byte for byte: Pi-07 is not pi-07.
    let one = sample_readings(1);
    let mut other = one.clone();
    other[0].device = Label::from("Test-Device");
    sink.write(one).unwrap();
    sink.write(other).unwrap();
    let n: Vec<u64> = db.query("SELECT COUNT(*) FROM readings");
    assert_eq!(n, [13]);
    // The migrated table has its view too.
    let n: Vec<u64> = db.query("SELECT COUNT(*) FROM readings_v");
    assert_eq!(n, [13]);
}

#[test]
fn the_view_has_a_utc_time_and_one_number_column_in_any_session_time_zone() {
    let db = TestDb::new("view");
    // A view of an older definition is replaced.
    let _: Vec<u8> = db.query("CREATE VIEW readings_v AS SELECT 1 AS stale");
    let mut sink = SinkHarness::new::<Mysql>(&db.config("")).unwrap();
    let mk = |i: u8, value: Value| Reading {
        id: ReadingId([i; 16]),
        // 2025-11-25 15:42:31.123456 UTC, plus i microseconds.
        time: Timestamp(1_764_085_351_123_456 + i64::from(i)),
        device: Label::from("pi-01"),
        sensor: Label::from("gps"),
        name: Label::from("n"),
        unit: Label::from(""),
        value,
    };
    sink.write(vec![
        mk(1, Value::Float(21.5)),
        mk(2, Value::Int(-7)),
        mk(3, Value::Bool(true)),
        mk(4, Value::Text("3D".into())),
        mk(5, Value::Bytes(vec![0, 255].into())),
    ])
    .unwrap();
    let sql = "SELECT DATE_FORMAT(time, '%Y-%m-%d %H:%i:%s.%f'), value, value_text FROM readings_v ORDER BY time_us";
    let expected: Vec<(String, Option<f64>, Option<String>)> = vec![
        ("2025-11-25 15:42:31.123457".into(), Some(21.5), None),
        ("2025-11-25 15:42:31.123458".into(), Some(-7.0), None),
        ("2025-11-25 15:42:31.123459".into(), Some(1.0), None),
        ("2025-11-25 15:42:31.123460".into(), None, Some("3D".into())),
        ("2025-11-25 15:42:31.123461".into(), None, None),
    ];
    for tz in ["'+00:00'", "'+05:00'", "'-08:00'", "'SYSTEM'"] {
        let rows: Vec<(String, Option<f64>, Option<String>)> =
            db.query_in_session(&[&format!("SET time_zone = {tz}")], sql);
        assert_eq!(rows, expected, "session time zone {tz}");
    }
    let columns: Vec<(String, String, Option<u64>)> = db.query(
        "SELECT COLUMN_NAME, DATA_TYPE, DATETIME_PRECISION FROM information_schema.COLUMNS
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'readings_v' ORDER BY ORDINAL_POSITION",
    );
    let columns: Vec<(&str, &str, Option<u64>)> = columns
        .iter()
        .map(|(c, t, p)| (c.as_str(), t.as_str(), *p))
        .collect();
    assert_eq!(
        columns,
        [
            ("time", "datetime", Some(6)),
            ("time_us", "bigint", None),
            ("id", "binary", None),
            ("device", "varchar", None),
            ("sensor", "varchar", None),
            ("name", "varchar", None),
            ("unit", "varchar", None),
            ("value_type", "enum", None),
            ("value", "double", None),
            ("value_text", "text", None),
        ]
    );
    let security: Vec<String> = db.query(
        "SELECT SECURITY_TYPE FROM information_schema.VIEWS
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'readings_v'",
    );
    assert_eq!(security, ["INVOKER"]);
}

#[test]
fn a_view_that_cannot_be_made_does_not_stop_the_readings() {
    // A table of the view's name is in the way.
    let db = TestDb::new("viewtable");
    let _: Vec<u8> = db.query("CREATE TABLE readings_v (x INT)");
    let mut sink = SinkHarness::new::<Mysql>(&db.config("")).unwrap();
    sink.write(sample_readings(3)).unwrap();
    let n: Vec<u64> = db.query("SELECT COUNT(*) FROM readings");
    assert_eq!(n, [3]);
    let kind: Vec<String> = db.query(
        "SELECT TABLE_TYPE FROM information_schema.TABLES
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'readings_v'",
    );
    assert_eq!(kind, ["BASE TABLE"], "the table in the way is left alone");

    // A user who may create tables and insert, but not create views.
    let db = TestDb::new("viewgrant");
    let user = TestUser::new(&format!("gw_test_noview_{}", std::process::id()));
    let _: Vec<u8> = db.query(&format!(
        "GRANT SELECT, INSERT, CREATE, ALTER ON `{}`.* TO '{}'@'%'",
        db.name, user.name
    ));
    let cfg = db.config_as(
        &user.name,
        Some(("GATEWAY_TEST_MYSQL_NOVIEW_PASSWORD", user.password.clone())),
        "",
    );
    let mut sink = SinkHarness::new::<Mysql>(&cfg).unwrap();
    sink.write(sample_readings(3)).unwrap();
    sink.write(sample_readings(2)).unwrap();
    let n: Vec<u64> = db.query("SELECT COUNT(*) FROM readings");
    assert_eq!(n, [5]);
    let views: Vec<u64> =
        db.query("SELECT COUNT(*) FROM information_schema.VIEWS WHERE TABLE_SCHEMA = DATABASE()");
    assert_eq!(views, [0]);
}

/// The readings table of schema version 1.
fn gateway_plugin_mysql_v1_ddl() -> String {
    "CREATE TABLE readings (
        id BINARY(16) NOT NULL PRIMARY KEY, time_us BIGINT NOT NULL, device VARCHAR(255) NOT NULL,
        sensor VARCHAR(255) NOT NULL, name VARCHAR(255) NOT NULL, unit VARCHAR(64) NOT NULL,
        value_type ENUM('float', 'int', 'bool', 'text', 'bytes') NOT NULL, value_float DOUBLE NULL,
        value_int BIGINT NULL, value_text TEXT NULL, value_bytes BLOB NULL,
        KEY latest (device, sensor, name, time_us), KEY by_time (time_us)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        .into()
}

#[test]
fn a_database_that_is_down_is_a_retryable_error_not_a_start_failure() {
    let mut sink = SinkHarness::new::<Mysql>(
        "url = \"mysql://root@127.0.0.1:1/test\"\nconnect_timeout = \"2s\"\n",
    )
    .unwrap();
    let e = sink.write(sample_readings(1)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    assert!(e.message().contains("connecting"), "{e}");
}

#[test]
fn config_errors_say_what_is_wrong() {
    // Whatever else is wrong, a password in the URL is refused without being quoted.
    for url in [
        "mysql://root:secret@h/db",
        "mariadb://root:secret@h/db",
        "mysql://root:secret@h,/db",
        "mysql://root:sec/ret@h/db",
    ] {
        let e = SinkHarness::new::<Mysql>(&format!("url = {url:?}"))
            .err()
            .unwrap();
        assert!(e.message().contains("not in the URL"), "{url}: {e}");
        assert!(
            !e.message().contains("secret") && !e.message().contains("sec/ret"),
            "{e}"
        );
    }
    let e = SinkHarness::new::<Mysql>(
        "url = \"mysql://root@h/db\"\npassword_env = \"GATEWAY_NO_SUCH_VAR\"",
    )
    .err()
    .unwrap();
    assert!(
        e.message().contains("GATEWAY_NO_SUCH_VAR is not set"),
        "{e}"
    );
    // A password file every local user can read is refused, one only its owner reads is taken.
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "secret\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = format!(
        "url = \"mysql://root@h/db\"\npassword_file = {:?}",
        pw.display().to_string()
    );
    let e = SinkHarness::new::<Mysql>(&cfg).err().unwrap();
    assert!(
        e.message()
            .contains("every local user may read it (mode 0644)")
            && e.message().contains("chmod o-rwx"),
        "{e}"
    );
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(SinkHarness::new::<Mysql>(&cfg).is_ok());
    let e = SinkHarness::new::<Mysql>(&format!("{cfg}\npassword_env = \"X\""))
        .err()
        .unwrap();
    assert!(
        e.message()
            .contains("password, password_env and password_file: give one"),
        "{e}"
    );
    let e = SinkHarness::new::<Mysql>("url = \"mysql://root@h/db\"\ntable = \"x; DROP\"")
        .err()
        .unwrap();
    assert!(e.message().contains("not a plain table name"), "{e}");
    let e = SinkHarness::new::<Mysql>("uri = \"x\"").err().unwrap();
    assert!(e.message().contains("unknown field `uri`"), "{e}");
    // TLS is said with `tls`: the URL's own options could turn the verification off, and a CA
    // file without `tls` would leave the connection in clear while looking verified.
    let e =
        SinkHarness::new::<Mysql>("url = \"mysql://root@h/db?require_ssl=true&verify_ca=false\"")
            .err()
            .unwrap();
    assert_eq!(e.kind, ErrorKind::CONFIG, "{e}");
    assert!(e.message().contains("not in the URL"), "{e}");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "").unwrap();
    let e = SinkHarness::new::<Mysql>(&format!(
        "url = \"mysql://root@h/db\"\ntls_ca_file = {:?}",
        ca.display().to_string()
    ))
    .err()
    .unwrap();
    assert!(
        e.message().contains("tls_ca_file is set but tls is not"),
        "{e}"
    );
}

#[test]
fn readme_sample_matches_sample_toml_and_parses() {
    let tables = readme_sample_tables(include_str!("../README.md"), include_str!("../sample.toml"));
    // The sample's every table, twice (as written, and with its commented defaults), so that
    // an empty block and file cannot pass.
    assert_eq!(tables.len(), 2);
    for (name, keys) in tables {
        let _: Config = keys.try_into().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn readme_shows_the_view_the_plugin_makes() {
    let readme = include_str!("../README.md");
    let start = readme
        .find("CREATE OR REPLACE ALGORITHM")
        .expect("the view's statement");
    let end = start + readme[start..].find(';').unwrap();
    let words = |s: &str| {
        s.replace('`', "")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        words(&readme[start..end]),
        words(&mysql::store::create_view("readings"))
    );
}

#[test]
fn url_lists_servers_in_order() {
    use mysql::store::split_hosts;
    assert_eq!(
        split_hosts("mysql://gw@db1:3306,db2,db3:3307/readings?prefer_socket=false").unwrap(),
        [
            "mysql://gw@db1:3306/readings?prefer_socket=false",
            "mysql://gw@db2/readings?prefer_socket=false",
            "mysql://gw@db3:3307/readings?prefer_socket=false"
        ]
    );
    assert_eq!(split_hosts("mysql://db/x").unwrap(), ["mysql://db/x"]);
    assert!(split_hosts("mysql://gw@db1,,db2/x").is_err());
    assert!(split_hosts("postgres://x").is_err());
}

#[test]
fn a_row_a_constraint_refuses_is_refused_not_skipped() {
    // A table the user made, as the README allows, with a foreign key to the devices they
    // registered: none yet.
    let db = TestDb::new("fk");
    let _: Vec<u8> = db.query("CREATE TABLE devices (name VARCHAR(255) COLLATE utf8mb4_bin PRIMARY KEY) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4");
    let _: Vec<u8> = db.query(&mysql::store::create_table("readings"));
    let _: Vec<u8> =
        db.query("ALTER TABLE readings ADD FOREIGN KEY (device) REFERENCES devices (name)");
    let mut sink = SinkHarness::new::<Mysql>(&db.config("")).unwrap();
    // INSERT IGNORE skipped the rows with a warning and the batch was reported stored.
    let e = sink.write(sample_readings(3)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert!(e.message().contains("(1452)"), "{e}");
    let n: Vec<u64> = db.query("SELECT COUNT(*) FROM readings");
    assert_eq!(n, [0]);
    // Registered, the device's readings go in (the refused write held no lock on `devices`),
    // and a second delivery is still skipped.
    let batch = sample_readings(3);
    let device = batch[0].device.to_string();
    let _: Vec<u8> = db.query(&format!("INSERT INTO devices VALUES ('{device}')"));
    sink.write(batch.clone()).unwrap();
    sink.write(batch).unwrap();
    let n: Vec<u64> = db.query("SELECT COUNT(*) FROM readings");
    assert_eq!(n, [3]);
}

#[test]
fn a_warning_that_changes_no_row_does_not_refuse_the_batch() {
    // A trigger of the user's own that warns at each insert (an audit, say): the rows are
    // stored, so the batch is; only a skipped or altered row refuses it.
    let db = TestDb::new("warns");
    let _: Vec<u8> = db.query(&mysql::store::create_table("readings"));
    let _: Vec<u8> = db.query(
        "CREATE TRIGGER readings_audit BEFORE INSERT ON readings FOR EACH ROW SIGNAL SQLSTATE '01000' SET MESSAGE_TEXT = 'audited'",
    );
    let mut sink = SinkHarness::new::<Mysql>(&db.config("")).unwrap();
    let batch = sample_readings(3);
    sink.write(batch.clone()).unwrap();
    // Delivered again: skipped as stored already, beside the trigger's warnings.
    sink.write(batch).unwrap();
    let n: Vec<u64> = db.query("SELECT COUNT(*) FROM readings");
    assert_eq!(n, [3]);
}

#[test]
fn a_row_a_trigger_refuses_is_refused_not_retried() {
    // A trigger of the user's own that refuses implausible values with SIGNAL SQLSTATE '45000'
    // (error 1644), which INSERT IGNORE does not turn into a warning: retried, the batch
    // would stop every reading behind it, for ever.
    let db = TestDb::new("trigger");
    let _: Vec<u8> = db.query(&mysql::store::create_table("readings"));
    let _: Vec<u8> = db.query(
        "CREATE TRIGGER readings_plausible BEFORE INSERT ON readings FOR EACH ROW BEGIN IF NEW.value_float > 1000 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'implausible'; END IF; END",
    );
    let mut sink = SinkHarness::new::<Mysql>(&db.config("")).unwrap();
    let mut batch = sample_readings(3);
    batch[1].value = Value::Float(5000.0);
    let e = sink.write(batch.clone()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert!(e.message().contains("implausible"), "{e}");
    let n: Vec<u64> = db.query("SELECT COUNT(*) FROM readings");
    assert_eq!(n, [0], "the batch is one transaction");
    // The others, as the host sends them once it has split the batch, go in.
    batch.remove(1);
    sink.write(batch).unwrap();
    let n: Vec<u64> = db.query("SELECT COUNT(*) FROM readings");
    assert_eq!(n, [2]);
}

/// A readings table of the user's own: the plugin's, with each column definition of `changes`
/// replaced.
fn hand_made_table(db: &TestDb, changes: &[(&str, &str)]) {
    let mut ddl = mysql::store::create_table("readings");
    for (from, to) in changes {
        assert!(ddl.contains(from), "{from}: {ddl}");
        ddl = ddl.replace(from, to);
    }
    let _: Vec<u8> = db.query(&ddl);
}

const NARROW_UNIT: (&str, &str) = ("unit        VARCHAR(64)", "unit VARCHAR(4)");

#[test]
fn a_value_cut_to_fit_a_column_is_refused_not_stored_cut() {
    // A unit column of 4 characters: INSERT IGNORE cut the unit to `abcd` with warning 1265
    // (Data truncated), strict `sql_mode` or not, and the batch was reported stored.
    let db = TestDb::new("cut");
    hand_made_table(&db, &[NARROW_UNIT]);
    let mut sink = SinkHarness::new::<Mysql>(&db.config("")).unwrap();
    let mut batch = sample_readings(3);
    batch[1].unit = Label::from("abcdefg");
    let e = sink.write(batch.clone()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert!(e.message().contains("(1265)"), "{e}");
    let n: Vec<u64> = db.query("SELECT COUNT(*) FROM readings");
    assert_eq!(n, [0], "nothing of the refused batch");
    // Narrowed as the host does it: the others go in, the one cut alone is refused.
    sink.write(batch[..1].to_vec()).unwrap();
    let e = sink.write(batch[1..2].to_vec()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    sink.write(batch[2..].to_vec()).unwrap();
    let units: Vec<String> = db.query("SELECT unit FROM readings");
    assert_eq!(units, ["Cel", "Cel"]);
}

#[test]
fn warnings_past_those_the_server_lists_refuse_the_batch() {
    // Two Notes a row, which refuse nothing: a float rounded to a DECIMAL column, a trailing
    // space cut from the sensor. A full INSERT (1,000 rows) makes 2,000 warnings, and SHOW
    // WARNINGS lists the first 1,000 (max_error_count): the last row's unit, cut (1265), was
    // among those unseen, and the batch was reported stored.
    let db = TestDb::new("unlisted");
    hand_made_table(
        &db,
        &[
            NARROW_UNIT,
            ("sensor      VARCHAR(255)", "sensor VARCHAR(2)"),
            ("value_float DOUBLE", "value_float DECIMAL(10, 1)"),
        ],
    );
    let mut sink = SinkHarness::new::<Mysql>(&db.config("")).unwrap();
    let mut batch = sample_readings(1000);
    for (i, r) in batch.iter_mut().enumerate() {
        r.sensor = Label::from("s1 ");
        r.value = Value::Float(i as f64 + 0.25);
    }
    batch[999].unit = Label::from("abcdefg");
    let e = sink.write(batch.clone()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert!(e.message().contains("lists 1000"), "{e}");
    // Half as many warnings, all listed: the host's narrowing gets past it.
    sink.write(batch[..500].to_vec()).unwrap();
    let e = sink.write(batch[500..].to_vec()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    let n: Vec<u64> = db.query("SELECT COUNT(*) FROM readings");
    assert_eq!(n, [500]);
}

#[test]
fn the_sink_stays_on_tcp_to_the_server_url_names() {
    // mysql_async's prefer_socket moved the connection to the `@@socket` the server names, on
    // this machine: the processlist showed it from `localhost`, not from 127.0.0.1.
    let db = TestDb::new("tcp");
    let user = TestUser::new(&format!("gw_test_tcp_{}", std::process::id()));
    let _: Vec<u8> = db.query(&format!(
        "GRANT ALL ON `{}`.* TO '{}'@'%'",
        db.name, user.name
    ));
    let cfg = db.config_as(
        &user.name,
        Some(("GATEWAY_TEST_MYSQL_TCP_PASSWORD", user.password.clone())),
        "",
    );
    let mut sink = SinkHarness::new::<Mysql>(&cfg).unwrap();
    sink.write(sample_readings(2)).unwrap();
    let hosts: Vec<String> = db.query(&format!(
        "SELECT host FROM information_schema.processlist WHERE user = '{}'",
        user.name
    ));
    assert!(!hosts.is_empty(), "the sink's connection is in the pool");
    assert!(
        hosts.iter().all(|h| !h.starts_with("localhost")),
        "{hosts:?}"
    );
    drop(sink);
}

#[test]
fn a_table_made_by_hand_without_a_key_on_the_reading_is_refused_not_filled_twice() {
    // The README lets users make the table themselves (TiDB, partitions); one without a unique
    // key on the reading stored every re-delivered batch again: INSERT IGNORE had nothing to
    // ignore on.
    let db = TestDb::new("nokey");
    hand_made_table(&db, &[("PRIMARY KEY (id, device),", "")]);
    let mut sink = SinkHarness::new::<Mysql>(&db.config("")).unwrap();
    let batch = sample_readings(3);
    let twice = [sink.write(batch.clone()), sink.write(batch.clone())];
    let n: Vec<u64> = db.query("SELECT COUNT(*) FROM readings");
    assert_eq!(n, [0], "nothing stored, let alone twice: {twice:?}");
    let add = "ALTER TABLE `readings` ADD UNIQUE KEY reading_id (id, device)";
    for e in twice {
        let e = e.unwrap_err();
        assert_eq!(e.kind, ErrorKind::CONFIG, "{e}");
        assert!(e.message().contains(add), "{e}");
    }
    // A unique key on columns that do not identify the reading does not count: without the
    // id, or without the device (an id is unique only within its device; before, a key on
    // (device, time_us) counted, and a second sensor's reading at the same time was taken
    // for a re-delivery).
    for key in [
        "(device, sensor, name, time_us)",
        "(device, time_us)",
        "(id, time_us)",
    ] {
        let _: Vec<u8> = db.query(&format!("ALTER TABLE readings ADD UNIQUE KEY series {key}"));
        let e = sink.write(batch.clone()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::CONFIG, "{key}: {e}");
        let _: Vec<u8> = db.query("ALTER TABLE readings DROP KEY series");
    }
    // The statement the error names is enough: the same sink goes on, and stores a batch once.
    let _: Vec<u8> = db.query(add);
    sink.write(batch.clone()).unwrap();
    sink.write(batch).unwrap();
    let n: Vec<u64> = db.query("SELECT COUNT(*) FROM readings");
    assert_eq!(n, [3]);
}

#[test]
fn a_table_partitioned_on_time_keeps_its_key_with_the_time() {
    // MySQL wants the partitioning column in every unique key: (id, device, time_us) still
    // tells a re-delivery (same id, device and time) from a new reading.
    let db = TestDb::new("parts");
    hand_made_table(
        &db,
        &[(
            "PRIMARY KEY (id, device),",
            "PRIMARY KEY (id, device, time_us),",
        )],
    );
    let _: Vec<u8> = db.query(
        "ALTER TABLE readings PARTITION BY RANGE (time_us) (PARTITION p0 VALUES LESS THAN MAXVALUE)",
    );
    let mut sink = SinkHarness::new::<Mysql>(&db.config("")).unwrap();
    let batch = sample_readings(3);
    sink.write(batch.clone()).unwrap();
    sink.write(batch).unwrap();
    let n: Vec<u64> = db.query("SELECT COUNT(*) FROM readings");
    assert_eq!(n, [3]);
}

/// Readings for a table with a unique key besides the reading's, on (device, sensor, name,
/// time_us): `a`; `b`, a new reading (its own id) at a's device, sensor, name and time; `c`,
/// a new reading at another time.
fn colliding_readings() -> (Reading, Reading, Reading) {
    let r = sample_readings(3);
    let a = r[0].clone();
    let b = Reading {
        id: r[1].id,
        value: Value::Float(1.5),
        ..a.clone()
    };
    let c = Reading {
        time: Timestamp(a.time.0 + 1000),
        ..r[2].clone()
    };
    (a, b, c)
}

/// The ids the table holds, in the order given.
fn stored_ids(db: &TestDb, readings: &[&Reading]) -> Vec<bool> {
    let ids: Vec<Vec<u8>> = db.query("SELECT id FROM readings");
    readings
        .iter()
        .map(|r| ids.contains(&r.id.0.to_vec()))
        .collect()
}

#[test]
fn a_new_reading_skipped_on_another_unique_key_is_refused_not_lost() {
    // A table of the user's own with the reading's key and one more: INSERT IGNORE skipped
    // b, new, as a duplicate of a on that other key (1062, for key 'series'), and the batch
    // counted it among the readings stored already: b was lost, the batch reported stored.
    let db = TestDb::new("otherkey");
    hand_made_table(&db, &[("KEY latest", "UNIQUE KEY series")]);
    let mut sink = SinkHarness::new::<Mysql>(&db.config("")).unwrap();
    let (a, b, c) = colliding_readings();
    sink.write(vec![a.clone()]).unwrap();
    let e = sink.write(vec![b.clone(), c.clone()]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert!(
        e.message().contains("(1062)") && e.message().contains("'series'"),
        "{e}"
    );
    assert_eq!(stored_ids(&db, &[&a, &b, &c]), [true, false, false]);
    // One by one, as the host narrows it: c goes in, b alone is refused.
    sink.write(vec![c.clone()]).unwrap();
    let e = sink.write(vec![b.clone()]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    // A re-delivery is still stored already, on the reading's key (PRIMARY).
    sink.write(vec![a.clone(), c.clone()]).unwrap();
    assert_eq!(stored_ids(&db, &[&a, &b, &c]), [true, false, true]);
    let n: Vec<u64> = db.query("SELECT COUNT(*) FROM readings");
    assert_eq!(n, [2]);
}

#[test]
fn a_re_delivery_the_server_reports_on_another_key_still_counts_as_stored() {
    // The reading's key added after another unique key (as the schema check's message says
    // to): the server checks the keys in that order, and reports a re-delivered reading as a
    // duplicate on the other key. The readings are there: the batch counts as stored, not
    // refused (which would put readings stored already in the dead letters).
    let db = TestDb::new("keyorder");
    hand_made_table(
        &db,
        &[(
            "PRIMARY KEY (id, device),",
            "seq BIGINT AUTO_INCREMENT PRIMARY KEY, UNIQUE KEY series (device, sensor, name, time_us), UNIQUE KEY reading_id (id, device),",
        )],
    );
    let mut sink = SinkHarness::new::<Mysql>(&db.config("")).unwrap();
    let (a, b, c) = colliding_readings();
    sink.write(vec![a.clone(), c.clone()]).unwrap();
    sink.write(vec![a.clone(), c.clone()]).unwrap();
    sink.write(vec![c.clone()]).unwrap();
    // A new reading skipped on that key is refused all the same.
    let e = sink.write(vec![c.clone(), b.clone()]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert_eq!(stored_ids(&db, &[&a, &b, &c]), [true, false, true]);
    let n: Vec<u64> = db.query("SELECT COUNT(*) FROM readings");
    assert_eq!(n, [2]);
}

#[test]
fn a_duplicate_is_told_by_the_key_its_message_ends_with() {
    use mysql::keys::{duplicate_key, UniqueKey};
    let key = |name: &str, on_reading| UniqueKey {
        name: name.into(),
        on_reading,
    };
    let keys = [
        key("PRIMARY", true),
        key("series", false),
        key("se'r.ies", false),
    ];
    let told = |message: &str, table: &str| duplicate_key(message, table, &keys).map(|k| &*k.name);
    // MariaDB and MySQL before 8.0.19; MySQL since, with the table.
    let primary = Some("PRIMARY");
    assert_eq!(
        told("Duplicate entry '\u{1}-pi' for key 'PRIMARY'", "readings"),
        primary
    );
    assert_eq!(
        told(
            "Duplicate entry 'x-pi' for key 'readings.PRIMARY'",
            "readings"
        ),
        primary
    );
    assert_eq!(
        told(
            "Duplicate entry 'x-pi' for key 'readings.primary'",
            "Readings"
        ),
        primary
    );
    assert_eq!(
        told("Duplicate entry 'x' for key 'other.PRIMARY'", "readings"),
        None
    );
    // Quotes and dots in the key's name, unescaped.
    let odd = Some("se'r.ies");
    assert_eq!(
        told("Duplicate entry 'pi-1' for key 'se'r.ies'", "readings"),
        odd
    );
    assert_eq!(
        told(
            "Duplicate entry 'pi-1' for key 'readings.se'r.ies'",
            "readings"
        ),
        odd
    );
    // The entry (a device's name among the values) cannot name the key.
    assert_eq!(
        told(
            "Duplicate entry 'pi' for key 'PRIMARY' for key 'series'",
            "readings"
        ),
        Some("series")
    );
    assert_eq!(
        told(
            "Duplicate entry 'pi' for key 'series' for key 'PRIMARY'",
            "readings"
        ),
        primary
    );
    // A key it does not know, a key's number, another language: none.
    assert_eq!(
        told("Duplicate entry 'x' for key 'added_later'", "readings"),
        None
    );
    assert_eq!(told("Duplicate entry 'x' for key 1", "readings"), None);
    assert_eq!(
        told("Doppelter Eintrag 'x' für Schlüssel 'PRIMARY'", "readings"),
        None
    );
    assert_eq!(told("", "readings"), None);
    // A name that reads two ways: none.
    let keys = [key("PRIMARY", true), key("readings.PRIMARY", false)];
    let message = "Duplicate entry 'x' for key 'readings.PRIMARY'";
    assert_eq!(duplicate_key(message, "readings", &keys), None);
}

#[test]
fn a_re_delivery_on_the_readings_key_is_told_from_the_warning_alone() {
    // A user who may insert into the table but not read it: a re-delivery on the plugin's
    // own table (PRIMARY KEY (id, device)) is told stored already by its warning, without a
    // look at the rows.
    let db = TestDb::new("noselect");
    let _: Vec<u8> = db.query(&mysql::store::create_table("readings"));
    let _: Vec<u8> = db.query("CREATE TABLE gateway_schema (tbl VARCHAR(64) NOT NULL PRIMARY KEY, version INT UNSIGNED NOT NULL) ENGINE=InnoDB");
    let user = TestUser::new(&format!("gw_test_noselect_{}", std::process::id()));
    for grant in [
        format!(
            "GRANT INSERT, CREATE ON `{}`.* TO '{}'@'%'",
            db.name, user.name
        ),
        format!(
            "GRANT SELECT, INSERT, UPDATE ON `{}`.gateway_schema TO '{}'@'%'",
            db.name, user.name
        ),
    ] {
        let _: Vec<u8> = db.query(&grant);
    }
    let cfg = db.config_as(
        &user.name,
        Some((
            "GATEWAY_TEST_MYSQL_NOSELECT_PASSWORD",
            user.password.clone(),
        )),
        "",
    );
    let mut sink = SinkHarness::new::<Mysql>(&cfg).unwrap();
    let batch = sample_readings(3);
    sink.write(batch.clone()).unwrap();
    sink.write(batch.clone()).unwrap();
    sink.write(batch[1..].to_vec()).unwrap();
    let n: Vec<u64> = db.query("SELECT COUNT(*) FROM readings");
    assert_eq!(n, [3]);
    // A unique key of the user's own, added since the schema check: a duplicate on it needs
    // a look at the rows, which this user may not take: held (a configuration error, the
    // batch kept, not refused for good: a grant stores it), naming the grant.
    let _: Vec<u8> = db.query("DELETE FROM readings");
    let _: Vec<u8> =
        db.query("ALTER TABLE readings ADD UNIQUE KEY series (device, sensor, name, time_us)");
    let (a, b, _) = colliding_readings();
    sink.write(vec![a]).unwrap();
    let e = sink.write(vec![b]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::CONFIG, "{e}");
    assert!(
        e.message().contains("'series' (1062)")
            && e.message().contains("grant the sink SELECT on readings"),
        "{e}"
    );
}
