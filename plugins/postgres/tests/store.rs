//! The sink against the machine's PostgreSQL (its Unix socket, as root, database `test`; `cargo
//! xtask test` sets that up where it is missing) and, where a test changes a server-wide
//! setting, against a server of its own beside it (`OwnServer`): every value type round trips,
//! a re-delivered batch is stored once, what a column cannot hold is refused for good, a server
//! that turns read-only is left for the next host, and settings errors name their key.

use gateway_sdk::{
    testing::{readme_sample_tables, sample_readings, SinkHarness},
    ErrorKind, IdGenerator, Label, Reading, Timestamp, Value,
};
use postgres::{config::Config, Postgres};
use std::process::Command;

const URL: &str = "host=/var/run/postgresql user=root dbname=test";

/// A table of its own for each test, dropped first.
fn table(name: &str) -> String {
    let t = format!("gw_test_{name}_{}", std::process::id());
    psql(&format!("DROP TABLE IF EXISTS {t}"));
    t
}

fn psql(sql: &str) -> String {
    psql_at("/var/run/postgresql", sql)
}

/// `sql` as root on database `test` of the server whose Unix socket is in `socket_dir`.
fn psql_at(socket_dir: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h", socket_dir, "-U", "root", "-d", "test", "-At", "-c", sql,
        ])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn sink(table: &str) -> SinkHarness {
    SinkHarness::new::<Postgres>(&format!("url = {URL:?}\ntable = {table:?}\n")).unwrap()
}

fn reading(value: Value) -> Reading {
    let time = Timestamp::now();
    Reading {
        id: IdGenerator::new().next(time),
        time,
        device: Label::from("pi-01"),
        sensor: Label::from("s1"),
        name: Label::from("x"),
        unit: Label::from("u"),
        value,
    }
}

#[test]
fn stores_every_value_type() {
    let t = table("types");
    let mut s = sink(&t);
    let values = [
        Value::Float(21.5),
        Value::Int(-7),
        Value::Bool(true),
        Value::Text("héllo".into()),
        Value::Bytes(vec![0u8, 255, 7].into()),
    ];
    let batch: Vec<Reading> = values.iter().cloned().map(reading).collect();
    s.write(batch).unwrap();
    let rows = psql(&format!(
        "SELECT value_type, coalesce(value_float::text, value_int::text, value_text, encode(value_bytes, 'hex')) FROM {t} ORDER BY value_type"
    ));
    assert_eq!(rows, "bool|1\nbytes|00ff07\nfloat|21.5\nint|-7\ntext|héllo");
    psql(&format!("DROP TABLE {t}"));
}

#[test]
fn a_batch_delivered_twice_is_stored_once() {
    let t = table("twice");
    let mut s = sink(&t);
    let batch = sample_readings(500);
    s.write(batch.clone()).unwrap();
    s.write(batch[100..300].to_vec()).unwrap();
    s.write(batch).unwrap();
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "500");
    // A second sink (another connection, its own staging table) agrees.
    let mut again = sink(&t);
    again.write(sample_readings(10)).unwrap();
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "510");
    psql(&format!("DROP TABLE {t}"));
}

#[test]
fn a_table_named_by_a_keyword_with_a_column_of_its_own_takes_a_batch_sent_again() {
    // A table named `order` (a keyword) failed every statement as a syntax error, retried for
    // ever. A NOT NULL column of the operator's own, with a default, failed the merge of every
    // batch sent again: the staging table (LIKE the table) took its NOT NULL and not its
    // default, and the readings stored before were refused and dead-lettered.
    psql("DROP TABLE IF EXISTS \"order\"");
    psql(
        "CREATE TABLE \"order\" (id bytea NOT NULL, time_us bigint NOT NULL, device text NOT NULL, \
         sensor text NOT NULL, name text NOT NULL, unit text NOT NULL, value_type text NOT NULL, \
         value_float double precision, value_int bigint, value_text text, value_bytes bytea, \
         received_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (id, device, time_us))",
    );
    let mut s = sink("order");
    let batch = sample_readings(50);
    s.write(batch[..20].to_vec()).unwrap();
    s.write(batch.clone())
        .expect("the batch sent again is merged");
    assert_eq!(psql("SELECT count(*) FROM \"order\""), "50");
    psql("DROP TABLE \"order\"");
}

#[test]
fn a_table_made_by_hand_with_columns_of_other_types_is_refused_at_open() {
    // The binary COPY sends each column as the type the plugin makes it: a timestamptz
    // time_us read those bytes as its own (microseconds since 2000, not 1970), and every
    // reading was stored 30 years off, in silence; a real value_float refused every float
    // reading as bad data, dead-lettered.
    let t = table("types_by_hand");
    let ddl = postgres::store::create_table(&t);
    for (from, to) in [
        ("time_us     bigint ", "time_us     timestamptz "),
        ("value_float double precision", "value_float real"),
    ] {
        assert!(ddl.contains(from), "{ddl}");
        psql(&format!("DROP TABLE IF EXISTS {t}"));
        psql(&ddl.replace(from, to));
        let e = sink(&t).write(sample_readings(1)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::FATAL, "{e}");
        let column = from.split_whitespace().next().unwrap();
        assert!(e.message().contains(&format!("{column} is ")), "{e}");
        assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "0");
    }
    // varchar for text is the same on the wire.
    psql(&format!("DROP TABLE IF EXISTS {t}"));
    psql(&ddl.replace("unit        text ", "unit        varchar(16) "));
    sink(&t).write(sample_readings(2)).unwrap();
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "2");
    psql(&format!("DROP TABLE {t}"));
}

#[test]
fn text_the_column_cannot_hold_is_refused_for_good_and_nothing_of_the_batch_is_stored() {
    let t = table("nul");
    let mut s = sink(&t);
    let mut batch = sample_readings(3);
    batch.push(reading(Value::Text("a\0b".into())));
    let e = s.write(batch).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "0");
    // The connection is still good for the next batch.
    s.write(sample_readings(2)).unwrap();
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "2");
    psql(&format!("DROP TABLE {t}"));
}

/// A table made or changed by hand may refuse a reading by its own rules: a CHECK, a
/// trigger's RAISE. That reading is refused for good (the host narrows the batch to it and
/// keeps it as a dead letter); before, it was retried for ever, and every device's readings
/// waited behind it.
#[test]
fn a_reading_the_tables_own_rules_refuse_is_refused_for_good() {
    let t = table("check");
    let mut s = sink(&t);
    s.write(sample_readings(1)).unwrap();
    psql(&format!(
        "ALTER TABLE {t} ADD CONSTRAINT small CHECK (value_float IS NULL OR value_float < 1000)"
    ));
    let e = s
        .write(vec![
            reading(Value::Float(1.0)),
            reading(Value::Float(5000.0)),
        ])
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    assert!(e.message().contains("small"), "{e}");
    psql(&format!(
        "CREATE FUNCTION {t}_no() RETURNS trigger AS $$ BEGIN IF NEW.device = 'blocked' THEN RAISE EXCEPTION 'device blocked'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER {t}_no BEFORE INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION {t}_no()"
    ));
    let mut blocked = reading(Value::Float(2.0));
    blocked.device = Label::from("blocked");
    let e = s.write(vec![blocked]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
    // The good ones still go in.
    s.write(vec![reading(Value::Float(3.0))]).unwrap();
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "2");
    psql(&format!("DROP TABLE {t}; DROP FUNCTION {t}_no()"));
}

/// A unique index or an exclusion constraint of a table made or changed by hand refuses a
/// reading as a CHECK does; before, the merge of a re-delivered batch (ON CONFLICT DO NOTHING)
/// left such a reading out and said the batch was stored.
#[test]
fn a_reading_another_unique_index_refuses_is_refused_even_beside_a_re_delivery() {
    let t = table("unique");
    let mut s = sink(&t);
    let a = reading(Value::Float(1.0));
    s.write(vec![a.clone()]).unwrap();
    psql(&format!(
        "CREATE UNIQUE INDEX {t}_one ON {t} (device, sensor, name, time_us)"
    ));
    // B: another reading of the same series at the same time, which that index refuses.
    let mut b = reading(Value::Float(2.0));
    b.time = a.time;
    for batch in [vec![a.clone(), b.clone()], vec![b.clone()]] {
        let e = s.write(batch).unwrap_err();
        assert_eq!(e.kind, ErrorKind::REJECTED, "{e}");
        assert!(e.message().contains("1 of the batch's"), "{e}");
    }
    // A re-delivery alone is still a duplicate, stored once.
    s.write(vec![a.clone()]).unwrap();
    let c = reading(Value::Float(3.0));
    s.write(vec![a, c]).unwrap();
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "2");
    psql(&format!("DROP TABLE {t}"));
}

/// A table made by hand (as TimescaleDB's hypertables often are) without a unique index on
/// the readings' key stored a re-delivered batch again: its COPY met no key to fail on, so
/// nothing went through the merge that skips readings stored before.
#[test]
fn a_table_made_by_hand_without_the_readings_key_is_refused_not_filled_twice() {
    let t = table("nokey");
    let ddl = postgres::store::create_table(&t);
    let key = ",\n            PRIMARY KEY (id, device, time_us)";
    assert!(ddl.contains(key), "{ddl}");
    psql(&ddl.replace(key, ""));
    let mut s = sink(&t);
    let batch = sample_readings(3);
    let twice = [s.write(batch.clone()), s.write(batch.clone())];
    assert_eq!(
        psql(&format!("SELECT count(*) FROM {t}")),
        "0",
        "nothing stored, let alone twice: {twice:?}"
    );
    let add = format!("CREATE UNIQUE INDEX \"{t}_key\" ON \"{t}\" (id, device, time_us)");
    // Refused at open, as a setting is (CONFIG, which the SDK reports as a sink that cannot
    // open, FATAL): the host builds the sink again after a backoff, holding the batch.
    for e in twice {
        let e = e.unwrap_err();
        assert_eq!(e.kind, ErrorKind::FATAL, "{e}");
        assert!(e.message().contains(&add), "{e}");
    }
    // Unique keys that do not hold every reading back by its key do not count: one on a
    // column a re-delivery need not repeat, a partial one, and a deferrable one (which ON
    // CONFLICT refuses to use: the merge of every re-delivered batch would fail); nor one
    // without the device, by which one device could claim another's reading ids.
    for (make, undo) in [
        (
            format!("CREATE UNIQUE INDEX {t}_ids ON {t} (id, time_us)"),
            format!("DROP INDEX {t}_ids"),
        ),
        (
            format!("CREATE UNIQUE INDEX {t}_kinds ON {t} (id, device, value_type)"),
            format!("DROP INDEX {t}_kinds"),
        ),
        (
            format!(
                "CREATE UNIQUE INDEX {t}_floats ON {t} (id, device) WHERE value_type = 'float'"
            ),
            format!("DROP INDEX {t}_floats"),
        ),
        (
            format!(
                "ALTER TABLE {t} ADD CONSTRAINT {t}_later UNIQUE (id, device, time_us) DEFERRABLE"
            ),
            format!("ALTER TABLE {t} DROP CONSTRAINT {t}_later"),
        ),
    ] {
        psql(&make);
        let e = s.write(batch.clone()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::FATAL, "{make}: {e}");
        psql(&undo);
    }
    // The statement the error names is enough: the same sink goes on, and stores a batch once.
    psql(&add);
    s.write(batch.clone()).unwrap();
    s.write(batch.clone()).unwrap();
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "3");
    // So is one on other columns a reading always has the same when delivered again (a
    // TimescaleDB space dimension on sensor must be in every unique index): a re-delivery is
    // held back. (Not (device, sensor, name, time_us): the sample readings may share a time.)
    psql(&format!("DROP INDEX {t}_key"));
    psql(&format!(
        "CREATE UNIQUE INDEX {t}_series ON {t} (id, device, sensor)"
    ));
    s.write(batch.clone()).unwrap();
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "3");
    // A unique index without the device beside the key: a reading that meets it would be
    // skipped as stored (one device posting another's next ids first), so it is refused,
    // named.
    psql(&format!("CREATE UNIQUE INDEX {t}_ids ON {t} (id, time_us)"));
    // Checked when the sink connects: a new one.
    let e = sink(&t).write(batch).unwrap_err();
    assert_eq!(e.kind, ErrorKind::FATAL, "{e}");
    assert!(
        e.message().contains(&format!("{t}_ids hold no device")),
        "{e}"
    );
    psql(&format!("DROP TABLE {t}"));
}

/// A table partitioned on the time (natively, or as a TimescaleDB hypertable) has the time in
/// every unique index: its key (id, device, time_us) is the plugin's own.
#[test]
fn a_table_partitioned_on_time_is_used_with_its_key() {
    let t = table("parts");
    let ddl = postgres::store::create_table(&t);
    let table_end = ");\n";
    assert!(ddl.contains(table_end), "{ddl}");
    psql(&ddl.replacen(
        table_end,
        &format!(
            ") PARTITION BY RANGE (time_us);\nCREATE TABLE {t}_all PARTITION OF {t} DEFAULT;\n"
        ),
        1,
    ));
    let mut s = sink(&t);
    let batch = sample_readings(3);
    s.write(batch.clone()).unwrap();
    s.write(batch).unwrap();
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "3");
    psql(&format!("DROP TABLE {t}"));
}

#[test]
fn a_database_that_is_not_there_is_retried_and_nothing_is_made_when_built() {
    let t = table("down");
    // Built without connecting (gateway check builds it too) ...
    let mut s = SinkHarness::new::<Postgres>(&format!(
        "url = \"host=127.0.0.1 port=1 user=root dbname=test\"\ntable = {t:?}\nconnect_timeout = \"1s\"\n"
    ))
    .unwrap();
    // ... and the first write says it cannot connect, retryably.
    let e = s.write(sample_readings(1)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    assert!(e.message().contains("connecting to PostgreSQL"), "{e}");
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM pg_tables WHERE tablename = '{t}'"
        )),
        "0"
    );
}

#[test]
fn settings_errors_name_their_key() {
    for (toml, want) in [
        ("url = \"x\"\ntabel = \"r\"", "unknown field `tabel`"),
        (
            "url = \"postgresql://root:secret@localhost/test\"",
            "url: put the password in password_env",
        ),
        ("url = \"host=/tmp\"\ntable = \"Readings; drop\"", "table: "),
        // The staging table's name: every write went into the session's temporary table of
        // that name, and was gone at its commit.
        (
            "url = \"host=/tmp\"\ntable = \"gateway_readings_in\"",
            "not gateway_readings_in",
        ),
        ("url = \"host=/tmp\"\ntls = \"prefer\"", "tls: \"prefer\""),
        // hostaddr alone: TLS would get no name to check the certificate against (before,
        // any certificate of the CA, for any name, passed).
        (
            "url = \"hostaddr=10.0.0.5 user=gw dbname=test\"\ntls = \"verify-full\"",
            "give host=NAME beside hostaddr",
        ),
    ] {
        let e = SinkHarness::new::<Postgres>(toml).unwrap_err();
        assert_eq!(e.kind, ErrorKind::CONFIG, "{toml}");
        assert!(e.message().contains(want), "{toml}: {e}");
    }
    // A CA file with TLS off was accepted and ignored: a connection in clear that looked
    // verified.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "").unwrap();
    let e = SinkHarness::new::<Postgres>(&format!(
        "url = \"host=/tmp\"\ntls_ca_file = {:?}",
        ca.display().to_string()
    ))
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::CONFIG);
    assert!(
        e.message()
            .contains("tls_ca_file is set but tls = \"disable\""),
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
        let c: Config = keys.try_into().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.table, "readings");
    }
}

#[test]
fn a_table_dropped_while_it_runs_is_made_again() {
    let t = table("dropped");
    let mut s = sink(&t);
    s.write(sample_readings(3)).unwrap();
    psql(&format!("DROP TABLE {t}"));
    // The write that finds it gone fails, retryably; the next connects again and makes it.
    let e = s.write(sample_readings(2)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    s.write(sample_readings(2)).unwrap();
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "2");
    psql(&format!("DROP TABLE {t}"));
}

/// A PostgreSQL server of the test's own, from the machine's binaries (Debian's
/// `/usr/lib/postgresql/VERSION/bin`), on a Unix socket in a temporary folder, with root as its
/// superuser (no password) and a database `test`: one whose settings a test may change for the
/// whole server without touching the tests that share the machine's. Stopped when dropped.
struct OwnServer {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
}

impl OwnServer {
    fn start() -> OwnServer {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's binaries in /usr/lib/postgresql (Debian's postgresql)")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .max()
            .map(|v| std::path::PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")))
            .expect("a version folder in /usr/lib/postgresql");
        let own = OwnServer {
            dir: tempfile::tempdir().unwrap(),
            bin,
        };
        if own.as_root() {
            let id = |flag: &str| -> u32 {
                let out = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
            };
            std::os::unix::fs::chown(own.dir.path(), Some(id("-u")), Some(id("-g"))).unwrap();
        }
        let (data, dir) = (own.path("data"), own.socket());
        own.run(
            "initdb",
            &["-D", &data, "-U", "root", "--auth=trust", "--no-sync"],
        );
        let options = format!("-k {dir} -c listen_addresses='' -c fsync=off");
        let log = own.path("log");
        own.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &options, "-w", "start"],
        );
        own.run("createdb", &["-h", &dir, "-U", "root", "test"]);
        own
    }

    /// The folder of its Unix socket: its `host` in a connection string.
    fn socket(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// `sql` as root on its database `test`.
    fn psql(&self, sql: &str) -> String {
        psql_at(&self.socket(), sql)
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// PostgreSQL will not run as root: then its programs run as `postgres`.
    fn as_root(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").unwrap().uid() == 0
    }

    /// Its program `name`, as `postgres` when the test runs as root.
    fn command(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        if !self.as_root() {
            return Command::new(program);
        }
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    }

    /// Its program `name` with `args`, which must succeed.
    fn run(&self, name: &str, args: &[&str]) {
        let out = self
            .command(name)
            .args(args)
            .output()
            .expect("PostgreSQL's programs run");
        assert!(
            out.status.success(),
            "{name} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let data = self.path("data");
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
    }
}

/// A server that turns read-only under a running sink (a primary demoted, or fenced with
/// `default_transaction_read_only`, as managed services do when their disk is full) refuses
/// its writes with 25006, and the sink connects again: with several hosts and
/// `target_session_attrs=read-write`, to the next that takes writes. Before, the connection
/// was kept and the next batch failed too, on what was left of it ("unexpected message from
/// server" or "connection closed": tokio-postgres 0.7 breaks a connection whose COPY was
/// refused before it started; without that bug, every batch would have gone to the read-only
/// server for ever). That server is one of the test's own, so that the server-wide setting
/// touches no other test; the next host is the machine's.
#[test]
fn a_server_that_turns_read_only_is_left_for_the_next_host() {
    let t = table("readonly");
    let own = OwnServer::start();
    let mut s = SinkHarness::new::<Postgres>(&format!(
        "url = \"host={},/var/run/postgresql user=root dbname=test target_session_attrs=read-write\"\n\
         table = {t:?}\n",
        own.socket()
    ))
    .unwrap();
    s.write(sample_readings(3)).unwrap();
    assert_eq!(own.psql(&format!("SELECT count(*) FROM {t}")), "3");
    own.psql("ALTER SYSTEM SET default_transaction_read_only = on");
    own.psql("SELECT pg_reload_conf()");
    // The reload reaches the sink's session by a signal from the postmaster, a moment later
    // (longer on a busy machine): batches may still go in until one is refused.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let e = loop {
        match s.write(sample_readings(1)) {
            Err(e) => break e,
            Ok(()) if std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Ok(()) => panic!("the server took batches 10 s after it was made read-only"),
        }
    };
    assert_eq!(e.kind, ErrorKind::RETRY, "{e}");
    assert!(e.message().contains("read-only"), "{e}");
    s.write(sample_readings(2)).unwrap();
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "2");
    drop(s);
    psql(&format!("DROP TABLE {t}"));
}

/// The certificate the machine's PostgreSQL serves on TCP (Debian's default: a self-signed
/// "snakeoil" one, made for the host name at install time), and the DNS name it is for.
fn served_certificate() -> (std::path::PathBuf, String) {
    assert_eq!(
        psql("SHOW ssl"),
        "on",
        "PostgreSQL serves no TLS (Debian's default is ssl = on): `cargo xtask test` turns it on"
    );
    let file = std::path::PathBuf::from(psql("SHOW ssl_cert_file"));
    let file = if file.is_relative() {
        std::path::PathBuf::from(psql("SHOW data_directory")).join(file)
    } else {
        file
    };
    let pem = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let cert = openssl::x509::X509::from_pem(&pem).unwrap();
    let name = cert
        .subject_alt_names()
        .and_then(|names| names.iter().find_map(|n| n.dnsname().map(str::to_owned)))
        .or_else(|| {
            let cn = cert
                .subject_name()
                .entries_by_nid(openssl::nid::Nid::COMMONNAME)
                .next()?;
            cn.data().to_string().ok()
        })
        .expect("the served certificate names a host");
    (file, name)
}

/// A role that logs in with a password over TCP (where `pg_hba.conf` asks for one, as
/// Debian's does for 127.0.0.1), and a file holding it.
fn tls_role(dir: &tempfile::TempDir) -> std::path::PathBuf {
    static ROLE: std::sync::Once = std::sync::Once::new();
    ROLE.call_once(|| {
        psql(
            "DO $$BEGIN CREATE ROLE gw_tls LOGIN PASSWORD 'gw-tls-test'; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END$$",
        );
        psql("GRANT CREATE ON SCHEMA public TO gw_tls");
    });
    let file = dir.path().join("pw");
    std::fs::write(&file, "gw-tls-test\n").unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    file
}

/// The sink on TCP with `tls = "verify-full"`, to the served certificate's name at
/// 127.0.0.1 (`host` is the name checked, `hostaddr` where it connects).
fn tls_sink(
    table: &str,
    name: &str,
    ca: &std::path::Path,
    password: &std::path::Path,
) -> SinkHarness {
    SinkHarness::new::<Postgres>(&format!(
        "url = \"host={name} hostaddr=127.0.0.1 port=5432 user=gw_tls dbname=test\"\n\
         password_file = {:?}\ntls = \"verify-full\"\ntls_ca_file = {:?}\ntable = {table:?}\n\
         connect_timeout = \"5s\"\n",
        password.display().to_string(),
        ca.display().to_string()
    ))
    .unwrap()
}

#[test]
fn tls_verify_full_stores_through_a_server_its_ca_file_vouches_for() {
    let (cert, name) = served_certificate();
    let dir = tempfile::tempdir().unwrap();
    let password = tls_role(&dir);
    let t = table("tls_ok");
    let mut s = tls_sink(&t, &name, &cert, &password);
    s.write(sample_readings(5)).unwrap();
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "5");
    // The session that wrote them is encrypted.
    assert_ne!(
        psql(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE ssl AND usename = 'gw_tls' AND application_name = 'gateway'"
        ),
        "0"
    );
    drop(s);
    psql(&format!("DROP TABLE {t}"));
}

#[test]
fn tls_verify_full_refuses_a_server_its_ca_file_does_not_vouch_for() {
    use openssl::{
        asn1::Asn1Time, ec::EcGroup, ec::EcKey, hash::MessageDigest, nid::Nid, pkey::PKey,
        x509::X509NameBuilder, x509::X509,
    };
    let (served, name) = served_certificate();
    let dir = tempfile::tempdir().unwrap();
    let password = tls_role(&dir);
    // Another CA with the same name: the CA file is the only one trusted, so a server whose
    // certificate it did not issue is refused, whatever that certificate says.
    let key = PKey::from_ec_key(
        EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
    )
    .unwrap();
    let mut subject = X509NameBuilder::new().unwrap();
    subject.append_entry_by_text("CN", &name).unwrap();
    let subject = subject.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&subject).unwrap();
    b.set_issuer_name(&subject).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, b.build().to_pem().unwrap()).unwrap();

    let t = table("tls_refused");
    let mut s = tls_sink(&t, &name, &other, &password);
    let e = s.write(sample_readings(1)).unwrap_err();
    assert!(e.message().contains("certificate verify failed"), "{e}");
    // The right CA, but a name the certificate is not for: refused too.
    let mut s = SinkHarness::new::<Postgres>(&format!(
        "url = \"host=127.0.0.1 port=5432 user=gw_tls dbname=test\"\npassword_file = {:?}\n\
         tls = \"verify-full\"\ntls_ca_file = {:?}\ntable = {t:?}\nconnect_timeout = \"5s\"\n",
        password.display().to_string(),
        served.display().to_string()
    ))
    .unwrap();
    let e = s.write(sample_readings(1)).unwrap_err();
    assert!(e.message().contains("certificate verify failed"), "{e}");
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM pg_tables WHERE tablename = '{t}'"
        )),
        "0",
        "nothing was made"
    );
}
