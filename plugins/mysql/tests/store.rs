//! The sink against the real MariaDB/MySQL server: by default root without a password on
//! 127.0.0.1:3306 (as on this project's machines); GATEWAY_TEST_MYSQL_URL points the tests at
//! another server (`mysql://USER:PASSWORD@HOST:PORT/DATABASE`). Each test works in a database of
//! its own, dropped at the end. The tests fail, not skip, when the server is unreachable.

use gateway_sdk::{
    testing::{readme_sample_tables, sample_readings, SinkHarness},
    ErrorKind, Label, Reading, ReadingId, Timestamp, Value,
};
use mysql::{config::Config, Mysql};
use mysql_async::prelude::*;

fn admin_url() -> String {
    std::env::var("GATEWAY_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A database of the test's own; dropped when this is dropped.
struct TestDb {
    name: String,
}

impl TestDb {
    fn new(tag: &str) -> TestDb {
        let name = format!("gw_test_{tag}_{}", std::process::id());
        rt().block_on(async {
            let pool = mysql_async::Pool::new(admin_url().as_str());
            let mut c = pool
                .get_conn()
                .await
                .unwrap_or_else(|e| panic!("MariaDB at {} is not reachable: {e}", admin_url()));
            c.query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                .await
                .unwrap();
            c.query_drop(format!("CREATE DATABASE `{name}`"))
                .await
                .unwrap();
            drop(c);
            pool.disconnect().await.unwrap();
        });
        TestDb { name }
    }
    /// The sink's URL: the admin URL with this database, and the password (if any) moved to an
    /// environment variable, as the plugin wants it.
    fn config(&self, extra: &str) -> String {
        let opts = mysql_async::Opts::from_url(&admin_url()).unwrap();
        let mut cfg = format!(
            "url = \"mysql://{}@{}:{}/{}\"\n",
            opts.user().unwrap_or("root"),
            opts.ip_or_hostname(),
            opts.tcp_port(),
            self.name
        );
        if let Some(pw) = opts.pass() {
            std::env::set_var("GATEWAY_TEST_MYSQL_PASSWORD", pw);
            cfg.push_str("password_env = \"GATEWAY_TEST_MYSQL_PASSWORD\"\n");
        }
        cfg + extra
    }
    fn query<T: FromRow + Send + 'static>(&self, sql: &str) -> Vec<T> {
        let url = admin_url();
        let name = self.name.clone();
        let sql = sql.to_owned();
        rt().block_on(async move {
            let pool = mysql_async::Pool::new(url.as_str());
            let mut c = pool.get_conn().await.unwrap();
            c.query_drop(format!("USE `{name}`")).await.unwrap();
            let r = c.query(sql).await.unwrap();
            drop(c);
            pool.disconnect().await.unwrap();
            r
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        rt().block_on(async move {
            let pool = mysql_async::Pool::new(admin_url().as_str());
            if let Ok(mut c) = pool.get_conn().await {
                let _ = c
                    .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                    .await;
            }
            let _ = pool.disconnect().await;
        });
    }
}

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
    let e = SinkHarness::new::<Mysql>("url = \"mysql://root:secret@h/db\"")
        .err()
        .unwrap();
    assert!(e.message().contains("not in the URL"), "{e}");
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
}

#[test]
fn readme_sample_matches_sample_toml_and_parses() {
    for (name, keys) in
        readme_sample_tables(include_str!("../README.md"), include_str!("../sample.toml"))
    {
        let _: Config = keys.try_into().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
