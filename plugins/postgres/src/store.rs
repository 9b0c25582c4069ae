//! Schema and batched writes: each batch goes by binary COPY straight into the readings table
//! in one transaction; a batch that holds a reading stored before (a re-delivery) is written
//! again through a session-local staging table and `INSERT ... SELECT ... ON CONFLICT DO
//! NOTHING`. On the plugin's own tokio runtime. I/O: the database.

use crate::config::Config;
use futures_util::pin_mut;
use gateway_sdk::{tracing, PluginError, Reading, Value};
use postgres_openssl::MakeTlsConnector;
use std::time::Duration;
use tokio_postgres::{
    binary_copy::BinaryCopyInWriter,
    error::SqlState,
    types::{ToSql, Type},
    Client, NoTls,
};

/// The columns of a readings table, in the order [`row`] gives their values.
const COLUMNS: &str =
    "id, time_us, device, sensor, name, unit, value_type, value_float, value_int, value_text, value_bytes";
const TYPES: [Type; 11] = [
    Type::BYTEA,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::FLOAT8,
    Type::INT8,
    Type::TEXT,
    Type::BYTEA,
];

/// The staging table each connection makes for itself (temporary: seen by that session only,
/// emptied at each commit), named in its schema: a table of the same name elsewhere is not it.
const STAGING: &str = "pg_temp.gateway_readings_in";

/// `table` as SQL names it: quoted, so that a name that is a keyword (`user`, `order`) is a
/// name. ([`valid_table`] lets through no character that quoting would change.)
fn sql_name(table: &str) -> String {
    format!("\"{table}\"")
}

/// `CREATE TABLE IF NOT EXISTS` for a readings table and its indexes. The primary key holds the
/// time so that TimescaleDB can make the table a hypertable partitioned on `time_us`; a
/// re-delivered reading has the same id, device and time, so it is still found.
pub fn create_table(table: &str) -> String {
    let (t, latest, by_time) = (
        sql_name(table),
        sql_name(&format!("{table}_latest")),
        sql_name(&format!("{table}_by_time")),
    );
    format!(
        "CREATE TABLE IF NOT EXISTS {t} (
            id          bytea            NOT NULL,
            time_us     bigint           NOT NULL,
            device      text             NOT NULL,
            sensor      text             NOT NULL,
            name        text             NOT NULL,
            unit        text             NOT NULL,
            value_type  text             NOT NULL CHECK (value_type IN ('float', 'int', 'bool', 'text', 'bytes')),
            value_float double precision NULL,
            value_int   bigint           NULL,
            value_text  text             NULL,
            value_bytes bytea            NULL,
            PRIMARY KEY (id, device, time_us)
        );
        CREATE INDEX IF NOT EXISTS {latest} ON {t} (device, sensor, name, time_us);
        CREATE INDEX IF NOT EXISTS {by_time} ON {t} (time_us);"
    )
}

/// Whether the table (`$1`) has a unique index that a re-delivered reading cannot get past: its
/// columns among those a reading always has the same when delivered again (id, device, sensor,
/// name, unit, time_us: a TimescaleDB space dimension or a partition key on sensor must be in
/// every unique index; a new reading such an index folds into a stored one is caught by the
/// merge's check of rows missing), checked at once (not deferred: COPY would not fail on it, and ON CONFLICT cannot
/// use it), on every row (not partial), on the columns themselves (no expression), valid. A
/// table made by hand may have none; then COPY stores a re-delivered batch again.
/// The index must hold `device`: one on `id` (or the time) alone lets a device claim another's
/// keys (reading ids are predictable), so that the other's readings meet a stored row and are
/// refused. [`UNSCOPED`], checked first, refuses every unique index without it.
/// (INCLUDE columns, past `indnkeyatts`, do not make rows unique and are not looked at.)
const KEYED: &str = "SELECT EXISTS (SELECT 1 FROM pg_index i \
     WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indimmediate AND i.indisvalid \
     AND i.indpred IS NULL AND i.indexprs IS NULL \
     AND NOT EXISTS (SELECT 1 FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
         WHERE k.n <= i.indnkeyatts \
         AND a.attname NOT IN ('id', 'device', 'sensor', 'name', 'unit', 'time_us')))";

/// The unique indexes of the table (`$1`) whose key holds no `device`. The merge's
/// `ON CONFLICT DO NOTHING` skips a reading that meets any unique index: with one on `id` (or
/// the time) alone, one device could post another's next reading ids first (they are
/// predictable), and the other's readings would be skipped, found missing and refused.
const UNSCOPED: &str =
    "SELECT c.relname::text FROM pg_index j JOIN pg_class c ON c.oid = j.indexrelid \
     WHERE j.indrelid = to_regclass($1) AND j.indisunique \
     AND NOT EXISTS (SELECT 1 FROM unnest(j.indkey) WITH ORDINALITY AS k(attnum, n) \
         JOIN pg_attribute a ON a.attrelid = j.indrelid AND a.attnum = k.attnum \
         WHERE k.n <= j.indnkeyatts AND a.attname = 'device') \
     ORDER BY 1";

/// Each column of the table: its name, its type's oid and that type's name.
const COLUMN_TYPES: &str = "SELECT a.attname::text, a.atttypid::oid, format_type(a.atttypid, a.atttypmod) \
     FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped";

/// What of the readings' columns is missing from `columns` (name, type oid, type name) or of
/// another type than the binary COPY sends ([`TYPES`]; `varchar` for `text` too, whose binary
/// form is the same).
fn wrong_columns(columns: &[(String, u32, String)]) -> Vec<String> {
    COLUMNS
        .split(", ")
        .zip(TYPES.iter())
        .filter_map(|(name, want)| match columns.iter().find(|c| c.0 == name) {
            None => Some(format!("no column {name}")),
            Some((_, oid, _))
                if *oid == want.oid() || (*want == Type::TEXT && *oid == Type::VARCHAR.oid()) =>
            {
                None
            }
            Some((_, _, got)) => {
                let want = match *want {
                    Type::INT8 => "bigint",
                    Type::FLOAT8 => "double precision",
                    ref t => t.name(),
                };
                Some(format!("{name} is {got}, not {want}"))
            }
        })
        .collect()
}

/// How a database error should be handled: data the table cannot hold (a NUL byte in a text,
/// say) or that its rules refuse (a CHECK, a foreign key, an exclusion constraint of a table
/// made by hand, a trigger's `RAISE`) is refused for good, so that the host narrows the batch
/// down to the reading at fault and keeps it as a dead letter; everything else (a connection
/// lost, a database starting, a serialization failure, a deadlock, a missing grant) may work
/// later. (Before, only class 22 was: one reading a CHECK refused held its batch, and every
/// device's readings behind it, for ever.)
pub fn classify(what: &str, e: &tokio_postgres::Error) -> PluginError {
    match e.code() {
        // 22: data exceptions; 23: integrity constraints but a unique key (a duplicate, which
        // the merge leaves out; one that still comes is a race worth another try); P0001: a
        // trigger's RAISE EXCEPTION; 54000: a program limit (a key too long for its index).
        Some(c)
            if c.code().starts_with("22")
                || (c.code().starts_with("23") && *c != SqlState::UNIQUE_VIOLATION)
                || *c == SqlState::RAISE_EXCEPTION
                || *c == SqlState::PROGRAM_LIMIT_EXCEEDED =>
        {
            PluginError::rejected(format!("{what}: {}", with_causes(e)))
        }
        _ => PluginError::retry(format!("{what}: {}", with_causes(e))),
    }
}

/// Whether the connection is given up after `e`, and made again before the next batch: the
/// table or its schema gone (dropped, renamed: connecting again makes the table again); the
/// server read-only now (25006: a primary demoted, or fenced with
/// `default_transaction_read_only`), where connecting again, with several hosts and
/// `target_session_attrs=read-write`, finds the one that takes writes; the server ending the
/// session (class 08, 57P01 and 57P02); or an error of the client's own (no SQLSTATE: the
/// connection lost, a protocol error). (tokio-postgres 0.7 happens to break the connection
/// when a COPY is refused before it starts, rust-postgres issue 789, but the batch after still
/// fails on it, and a tokio-postgres without that bug would keep it.)
fn reconnects(e: &tokio_postgres::Error) -> bool {
    let ends = [
        SqlState::UNDEFINED_TABLE,
        SqlState::INVALID_SCHEMA_NAME,
        SqlState::READ_ONLY_SQL_TRANSACTION,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
    ];
    e.code()
        .is_none_or(|c| ends.contains(c) || c.code().starts_with("08"))
}

/// `e` with its causes: tokio-postgres leaves them out of its message, so a TLS failure said
/// only "error performing TLS handshake", not that the certificate was refused and why.
fn with_causes(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

fn valid_table(t: &str) -> bool {
    // The staging table's name: a session's temporary table comes first wherever a name is
    // looked up, so every write would go into it, and be gone at its commit.
    t != STAGING.trim_start_matches("pg_temp.")
        && !t.is_empty()
        && t.len() <= 50
        && t.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && t.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A connection (made lazily, again after it broke) and what it writes to.
pub struct Store {
    rt: tokio::runtime::Runtime,
    pg: tokio_postgres::Config,
    tls: Option<MakeTlsConnector>,
    client: Option<Client>,
    table: String,
    write_timeout: Duration,
}

impl Store {
    /// Checks the settings; connects nothing.
    pub fn new(cfg: &Config, password: Option<String>) -> Result<Store, PluginError> {
        if !valid_table(&cfg.table) {
            return Err(PluginError::config(format!(
                "table: {:?} is not a plain lowercase table name (letters, digits, _; at most 50; not gateway_readings_in, the name of the plugin's staging table)",
                cfg.table
            )));
        }
        let mut pg: tokio_postgres::Config = cfg
            .url
            .parse()
            .map_err(|e| PluginError::config(format!("url: {e}")))?;
        if pg.get_password().is_some() {
            return Err(PluginError::config(
                "url: put the password in password_env or password_file, not in the URL",
            ));
        }
        // The places connected to: host names (TCP) and addresses given as hostaddr.
        let remote: Vec<String> = pg
            .get_hosts()
            .iter()
            .filter_map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => Some(h.clone()),
                _ => None,
            })
            .chain(pg.get_hostaddrs().iter().map(|a| a.to_string()))
            .filter(|h| !gateway_sdk::config::is_loopback(h))
            .collect();
        if cfg.tls == "disable" && password.is_some() {
            for h in &remote {
                tracing::warn!("the password and the readings go to {h} without TLS: a server in the middle may ask for the password in clear text; set tls = \"verify-full\" and tls_ca_file");
            }
        }
        // With hostaddr alone, tokio-postgres hands TLS an empty name, and only the chain
        // would be checked: any certificate the CA (or, without tls_ca_file, any public CA)
        // issued, for any name, would pass.
        let names_tcp = pg
            .get_hosts()
            .iter()
            .any(|h| matches!(h, tokio_postgres::config::Host::Tcp(_)));
        if cfg.tls == "verify-full" && !pg.get_hostaddrs().is_empty() && !names_tcp {
            return Err(PluginError::config(
                "url: tls = \"verify-full\" checks the server's certificate against its name: give host=NAME beside hostaddr (the name the certificate is for)",
            ));
        }
        if let Some(p) = password {
            pg.password(p);
        }
        pg.connect_timeout(cfg.connect_timeout);
        pg.application_name("gateway");
        let tls = match cfg.tls.as_str() {
            // A CA file the connection would not use: in clear, but looking verified.
            "disable" if cfg.tls_ca_file.is_some() => {
                return Err(PluginError::config(
                    "tls_ca_file is set but tls = \"disable\": the connection would be in clear; set tls = \"verify-full\"",
                ))
            }
            "disable" => None,
            "verify-full" => {
                let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls())
                    .map_err(|e| PluginError::config(format!("tls: {e}")))?;
                match &cfg.tls_ca_file {
                    Some(ca) => {
                        // The builder trusts the system's store; the CA file replaces it, or
                        // a certificate any public CA issued for the server's name would pass.
                        let empty = openssl::x509::store::X509StoreBuilder::new()
                            .map_err(|e| PluginError::config(format!("tls: {e}")))?;
                        b.set_cert_store(empty.build());
                        b.set_ca_file(ca).map_err(|e| {
                            PluginError::config(format!("tls_ca_file: {}: {e}", ca.display()))
                        })?
                    }
                    None => b
                        .set_default_verify_paths()
                        .map_err(|e| PluginError::config(format!("tls: {e}")))?,
                }
                pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                Some(MakeTlsConnector::new(b.build()))
            }
            other => {
                return Err(PluginError::config(format!(
                    "tls: {other:?}: give \"disable\" or \"verify-full\""
                )))
            }
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PluginError::fatal(e.to_string()))?;
        Ok(Store {
            rt,
            pg,
            tls,
            client: None,
            table: cfg.table.clone(),
            write_timeout: cfg.write_timeout,
        })
    }

    /// Connects, makes the table if it is not there, and the session's staging table.
    pub fn open(&mut self) -> Result<(), PluginError> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        self.client = None;
        let (pg, tls, table) = (self.pg.clone(), self.tls.clone(), self.table.clone());
        let limit = self.write_timeout;
        let client = self.rt.block_on(async move {
            tokio::time::timeout(limit, async move {
                let client = match tls {
                    None => {
                        let (client, conn) = pg.connect(NoTls).await?;
                        tokio::spawn(conn);
                        client
                    }
                    Some(tls) => {
                        let (client, conn) = pg.connect(tls).await?;
                        tokio::spawn(conn);
                        client
                    }
                };
                // Only when the table is missing: CREATE ... IF NOT EXISTS needs rights on the
                // schema (and an index, the table's ownership) even when there is nothing to make,
                // and takes locks; a user granted INSERT and SELECT on a table made by hand has
                // neither.
                let exists: bool = client
                    .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                    .await?
                    .get(0);
                if !exists {
                    client.batch_execute(&create_table(&table)).await?;
                }
                let keyed: bool = client.query_one(KEYED, &[&table]).await?.get(0);
                let unscoped: Vec<String> = client
                    .query(UNSCOPED, &[&table])
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let keyed = (keyed, unscoped);
                let columns: Vec<(String, u32, String)> = client
                    .query(COLUMN_TYPES, &[&table])
                    .await?
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect();
                let wrong = wrong_columns(&columns);
                if !wrong.is_empty() {
                    return Ok((client, keyed, wrong));
                }
                // The readings' columns alone, without the table's constraints: a column of the
                // operator's own (NOT NULL, with a default the staging table would not copy)
                // failed every merge of a batch sent again, as a refusal.
                client
                    .batch_execute(&format!(
                        "CREATE TEMP TABLE IF NOT EXISTS {STAGING} ON COMMIT DELETE ROWS AS SELECT {COLUMNS} FROM {} WITH NO DATA",
                        sql_name(&table)
                    ))
                    .await?;
                Ok::<_, tokio_postgres::Error>((client, keyed, wrong))
            })
            .await
        });
        let (client, keyed, wrong) = match client {
            Ok(c) => c.map_err(|e| classify_open(&e))?,
            Err(_) => {
                return Err(PluginError::retry(format!(
                    "connecting and checking the table took longer than write_timeout ({limit:?})"
                )))
            }
        };
        // Not kept: the next open checks again, and goes on once the table is fixed.
        if !wrong.is_empty() {
            return Err(PluginError::config(format!(
                "table {}: {}; the sink writes the readings' columns with these types (see the plugin's README for the table it makes), and another type would read them as its own (a timestamptz time_us 30 years off) or refuse every reading",
                self.table,
                wrong.join(", ")
            )));
        }
        let (keyed, unscoped) = keyed;
        if !unscoped.is_empty() {
            return Err(PluginError::config(format!(
                "table {}: the unique index(es) {} hold no device: a reading that meets one is skipped as stored, so one device could post another's next reading ids first and the other's readings would be refused; add device to them or drop them",
                self.table,
                unscoped.join(", ")
            )));
        }
        if !keyed {
            let t = &self.table;
            return Err(PluginError::config(format!(
                "table {t} has no unique index on the readings' key (its columns among id, device, sensor, name, unit and time_us, device among them), which tells a reading stored before from a new one: without it every re-delivered reading would be stored again. Give it one: `CREATE UNIQUE INDEX \"{t}_key\" ON \"{t}\" (id, device, time_us)` (readings stored twice already must go first), or let the plugin make the table (it does so when there is none)"
            )));
        }
        self.client = Some(client);
        Ok(())
    }

    /// Stores `batch` in one transaction; returns how many rows were new (the others were
    /// stored before).
    pub fn write(&mut self, batch: &[Reading]) -> Result<u64, PluginError> {
        self.open()?;
        let client = self.client.as_mut().expect("opened");
        let table = sql_name(&self.table);
        let timeout = self.write_timeout;
        let outcome = self.rt.block_on(async {
            tokio::time::timeout(timeout, async {
                // Re-deliveries are rare: COPY straight into the table, and only when a row
                // is there already go through the staging table and ON CONFLICT DO NOTHING.
                match copy(client, &table, batch).await {
                    Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                        tracing::debug!("the batch holds readings stored before; merging it");
                        merge(client, &table, batch).await
                    }
                    done => done.map(Ok),
                }
            })
            .await
        });
        match outcome {
            Ok(Ok(Ok(new))) => Ok(new),
            Ok(Ok(Err(refused))) => Err(PluginError::rejected(format!(
                "{refused} of the batch's {} readings are refused by a unique index or an exclusion constraint of {table} other than the readings' own key (id, device, time_us); nothing of the batch is stored",
                batch.len()
            ))),
            Ok(Err(e)) => {
                if reconnects(&e) || self.client.as_ref().is_some_and(|c| c.is_closed()) {
                    self.client = None;
                }
                Err(classify("writing a batch", &e))
            }
            Err(_) => {
                // The transaction may still be open on the server: start again on a new
                // connection rather than reuse this one mid-statement.
                self.client = None;
                Err(PluginError::retry(format!(
                    "writing a batch took longer than write_timeout ({timeout:?})"
                )))
            }
        }
    }
}

/// Writes `rows` into `into` with a binary COPY, in the transaction `tx`.
async fn copy_rows(
    tx: &tokio_postgres::Transaction<'_>,
    into: &str,
    batch: &[Reading],
) -> Result<(), tokio_postgres::Error> {
    let sink = tx
        .copy_in(&format!("COPY {into} ({COLUMNS}) FROM STDIN BINARY"))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &TYPES);
    pin_mut!(writer);
    for r in batch {
        let v = Row::of(r);
        writer.as_mut().write(&v.values()).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// The batch COPYed straight into the table, in one transaction: every row new.
async fn copy(
    client: &mut Client,
    table: &str,
    batch: &[Reading],
) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    copy_rows(&tx, table, batch).await?;
    tx.commit().await?;
    Ok(batch.len() as u64)
}

/// The batch through the staging table, rows stored before skipped, in one transaction: how
/// many were new, or (`Err`, nothing stored) how many rows a constraint other than the
/// readings' key left out.
async fn merge(
    client: &mut Client,
    table: &str,
    batch: &[Reading],
) -> Result<Result<u64, u64>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    copy_rows(&tx, STAGING, batch).await?;
    let new = tx
        .execute(
            &format!(
                "INSERT INTO {table} ({COLUMNS}) SELECT {COLUMNS} FROM {STAGING} ON CONFLICT DO NOTHING"
            ),
            &[],
        )
        .await?;
    if new < batch.len() as u64 {
        // ON CONFLICT DO NOTHING leaves out a row any unique index or exclusion constraint
        // refuses, not only one stored before under the readings' key: each row left out must
        // be there now (stored before, or by another writer meanwhile), or it is stored
        // nowhere. (A conflict target would make a table without that key fail every merge.)
        let missing: i64 = tx
            .query_one(
                &format!(
                    "SELECT count(*) FROM (SELECT DISTINCT id, device, time_us FROM {STAGING}) s \
                     WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE t.id = s.id AND t.device = s.device AND t.time_us = s.time_us)"
                ),
                &[],
            )
            .await?
            .get(0);
        if missing > 0 {
            tx.rollback().await?;
            return Ok(Err(missing as u64));
        }
    }
    tx.commit().await?;
    Ok(Ok(new))
}

/// A failure to connect or make the tables: a wrong password or a missing database may be
/// fixed while the gateway runs, so it is retried too, but says what it was.
fn classify_open(e: &tokio_postgres::Error) -> PluginError {
    match e.code() {
        Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => PluginError::retry(format!(
            "the user may not create or use the table: {}",
            with_causes(e)
        )),
        _ => PluginError::retry(format!("connecting to PostgreSQL: {}", with_causes(e))),
    }
}

/// One reading as the columns' values.
struct Row<'a> {
    id: &'a [u8],
    time: i64,
    device: &'a str,
    sensor: &'a str,
    name: &'a str,
    unit: &'a str,
    kind: &'static str,
    float: Option<f64>,
    int: Option<i64>,
    text: Option<&'a str>,
    bytes: Option<&'a [u8]>,
}

impl<'a> Row<'a> {
    fn of(r: &'a Reading) -> Row<'a> {
        let mut row = Row {
            id: r.id.0.as_slice(),
            time: r.time.0,
            device: r.device.as_str(),
            sensor: r.sensor.as_str(),
            name: r.name.as_str(),
            unit: r.unit.as_str(),
            kind: "float",
            float: None,
            int: None,
            text: None,
            bytes: None,
        };
        match &r.value {
            Value::Float(v) => row.float = Some(*v),
            Value::Int(v) => (row.kind, row.int) = ("int", Some(*v)),
            Value::Bool(v) => (row.kind, row.int) = ("bool", Some(i64::from(*v))),
            Value::Text(v) => (row.kind, row.text) = ("text", Some(v.as_str())),
            Value::Bytes(v) => (row.kind, row.bytes) = ("bytes", Some(v.as_slice())),
        }
        row
    }

    fn values(&self) -> [&(dyn ToSql + Sync); 11] {
        [
            &self.id,
            &self.time,
            &self.device,
            &self.sensor,
            &self.name,
            &self.unit,
            &self.kind,
            &self.float,
            &self.int,
            &self.text,
            &self.bytes,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain() {
        assert!(valid_table("readings") && valid_table("site_2"));
        for bad in [
            "",
            "Readings",
            "a-b",
            "2x",
            "x;drop table y",
            &"a".repeat(51),
        ] {
            assert!(!valid_table(bad), "{bad}");
        }
    }
}
