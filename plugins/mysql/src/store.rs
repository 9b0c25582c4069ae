//! Schema, migrations, the view for Grafana and batched inserts, on the plugin's own tokio
//! runtime. I/O: the database.

use crate::config::Config;
use crate::keys::{duplicate_key, missing, unique_keys, UniqueKey};
use crate::servers::{Failure, Servers};
use gateway_sdk::{tracing, PluginError, Reading, Value};
use mysql_async::{prelude::*, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, SslOpts};

/// The schema version this plugin writes. Version 2 keys readings by id and device (version
/// 1 by id alone, which let one device's ids shadow another's).
pub const SCHEMA_VERSION: u32 = 2;

/// Rows per INSERT statement (a statement takes at most 65,535 placeholders).
pub const ROWS_PER_INSERT: usize = 1000;

/// The columns of a readings table, in the order [`row`] gives their values.
const COLUMNS: &str = "id, time_us, device, sensor, name, unit, value_type, value_float, value_int, value_text, value_bytes";
const COLUMN_COUNT: usize = 11;

/// Characters a device, sensor or name column holds.
const LABEL_CHARS: usize = 255;
/// Characters the unit column holds.
const UNIT_CHARS: usize = 64;
/// Bytes a TEXT or BLOB column holds.
const LOB_BYTES: usize = 65_535;

/// `CREATE TABLE IF NOT EXISTS` for a readings table (the current schema); [`check`] holds
/// readings to the sizes of its columns.
pub fn create_table(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS `{table}` (
            id          BINARY(16)   NOT NULL,
            time_us     BIGINT       NOT NULL,
            device      VARCHAR({LABEL_CHARS}) NOT NULL COLLATE utf8mb4_bin,
            sensor      VARCHAR({LABEL_CHARS}) NOT NULL,
            name        VARCHAR({LABEL_CHARS}) NOT NULL,
            unit        VARCHAR({UNIT_CHARS})  NOT NULL,
            value_type  ENUM('float', 'int', 'bool', 'text', 'bytes') NOT NULL,
            value_float DOUBLE       NULL,
            value_int   BIGINT       NULL,
            value_text  TEXT         NULL,
            value_bytes BLOB         NULL,
            PRIMARY KEY (id, device),
            KEY latest (device, sensor, name, time_us),
            KEY by_time (time_us)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    )
}

/// The view the plugin keeps next to a readings table: `{table}_v` (at most 62 characters, as
/// a table name has at most 60).
pub fn view_name(table: &str) -> String {
    format!("{table}_v")
}

/// `CREATE OR REPLACE VIEW {table}_v`: the readings as Grafana's SQL data sources want them.
///
/// `time` is the reading's time as a DATETIME(6) in UTC, computed without the session time zone
/// (FROM_UNIXTIME would use it); `value` is every number in one DOUBLE column (float, int, and
/// bool as 0/1); text values stay in `value_text`, bytes are left out. A MERGE view: a query's
/// conditions go straight to the table, so a condition on `time_us` uses the `by_time` and
/// `latest` indexes. A condition on `time` would not (it is computed, row by row): filter on
/// `time_us`, select `time`. SQL SECURITY INVOKER: reading the view takes SELECT on it and on the
/// table, nothing of its creator's.
pub fn create_view(table: &str) -> String {
    let view = view_name(table);
    format!(
        "CREATE OR REPLACE ALGORITHM=MERGE SQL SECURITY INVOKER VIEW `{view}` AS
         SELECT TIMESTAMPADD(MICROSECOND, time_us, TIMESTAMP'1970-01-01 00:00:00') AS time,
                time_us, id, device, sensor, name, unit, value_type,
                COALESCE(value_float, value_int) AS value, value_text
         FROM `{table}`"
    )
}

/// Server errors that mean the view cannot be made by this user or under this name: privileges
/// missing (1044, 1142, 1143) or a table of that name in the way (1347).
const VIEW_REFUSED: [u16; 4] = [1044, 1142, 1143, 1347];

/// `INSERT INTO table (columns) VALUES (?, ...), ...` for `rows` rows: the plain multi-row
/// INSERT (the baseline the benchmark compares with).
pub fn insert_sql(table: &str, rows: usize) -> String {
    let placeholders = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; rows].join(", ");
    format!("INSERT INTO `{table}` ({COLUMNS}) VALUES {placeholders}")
}

/// What the sink sends: [`insert_sql`] as `INSERT IGNORE`, which skips a row already stored
/// under its key (a reading delivered again) with warning 1062. It skips a row a foreign key,
/// CHECK constraint, NOT NULL or partition refuses with a warning too, and a new reading
/// another unique key of a table made by hand refuses with a 1062 too: `insert_chunks` reads
/// the warnings and refuses the batch when more rows were skipped than 1062s say, a value was
/// altered, or a row skipped on another key than the reading's is not in the table. (`ON
/// DUPLICATE KEY UPDATE` would not need that, but it needs the UPDATE privilege, which would
/// let whoever holds the gateway's password change stored readings.)
pub fn store_sql(table: &str, rows: usize) -> String {
    insert_sql(table, rows).replacen("INSERT", "INSERT IGNORE", 1)
}

/// Server errors that refuse the sink a look at the table's rows: SELECT on the table (1142)
/// or on a column (1143) not granted.
const SELECT_REFUSED: [u16; 2] = [1142, 1143];

/// [`Store`]'s `schema_on` before the schema was checked on any server.
const UNCHECKED: usize = usize::MAX;

/// The warnings a statement keeps for SHOW WARNINGS (the server's default is 64): one per
/// row of a full INSERT, so that every skipped row's is seen.
const WARNINGS_KEPT: usize = ROWS_PER_INSERT;

/// Server errors that refuse a row for good: a value out of range (1264), wrong (1366, 1292)
/// or too long (1406) for its column, or cut to fit it (1265: a string to a narrower column
/// where `sql_mode` is not strict, and under INSERT IGNORE where it is; a value an ENUM does not
/// list); NULL or no value for a column that needs one (1048, 1364, and 1263, NULL made the
/// column's default); a foreign key with no parent row (1452); no partition for the row (1526);
/// a CHECK constraint (MySQL 3819, MariaDB 4025). As warnings (under INSERT IGNORE) they say
/// a row was skipped or stored altered; as a Note (1265 for a decimal rounded) they do not.
const REFUSED: [u16; 12] = [
    1264, 1366, 1406, 1265, 1292, 1048, 1364, 1263, 1452, 1526, 3819, 4025,
];

/// Whether an error's SQLSTATE says the data is wrong, whatever its code: class 22 (a data
/// exception), 23 (an integrity constraint violated) or 45 (a user-defined exception: a
/// trigger of the user's own that refuses a row with `SIGNAL SQLSTATE '45000'`, error 1644,
/// which INSERT IGNORE does not turn into a warning). Retried, such a batch would be refused
/// again and again, and every reading behind it would wait; refused, the host splits it and
/// dead-letters only the rows that are refused. A duplicate key (1022, 1062, 1586), which
/// INSERT IGNORE skips, is not one: as an error it is a race worth another try. For the
/// INSERT of readings only: the same classes from the schema check or a migration are about
/// the table, not the readings, and are retried.
fn refused_class(e: &mysql_async::ServerError) -> bool {
    ["22", "23", "45"].iter().any(|c| e.state.starts_with(c))
        && !matches!(e.code, 1022 | 1062 | 1586)
}

/// How a MySQL error should be handled.
pub fn classify(what: &str, e: mysql_async::Error) -> PluginError {
    match &e {
        // Data the table cannot hold: sending it again cannot help.
        mysql_async::Error::Server(s) if REFUSED.contains(&s.code) => {
            PluginError::rejected(format!("{what}: {e}"))
        }
        // Connection loss, deadlocks (1213), lock waits (1205), a database that is down: later.
        _ => PluginError::retry(format!("{what}: {e}")),
    }
}

/// The servers `url` lists, and what they write to.
pub struct Store {
    rt: tokio::runtime::Runtime,
    servers: Servers,
    table: String,
    /// The INSERT of a full chunk of [`ROWS_PER_INSERT`] rows, made once.
    insert_full: std::sync::Arc<str>,
    connect_timeout: std::time::Duration,
    write_timeout: std::time::Duration,
    /// The server (its index in `url`) the schema was last checked on; [`UNCHECKED`] before
    /// the first write, after an insert found no table (1146), and after a connection broke.
    schema_on: std::sync::atomic::AtomicUsize,
    /// The most bytes one INSERT may take on the wire, from the `max_allowed_packet` the
    /// schema check read ([`statement_limit`]).
    statement_bytes: std::sync::atomic::AtomicUsize,
    /// The most bytes any one INSERT may take: the server's `max_allowed_packet` less
    /// [`PACKET_MARGIN`] (a reading larger than that cannot be stored there).
    packet_bytes: std::sync::atomic::AtomicUsize,
    /// The table's unique keys, as the schema check found them: a warning 1062 on one of them
    /// that is on the reading is a reading stored already.
    unique_keys: std::sync::Mutex<std::sync::Arc<[UniqueKey]>>,
}

/// A connection from `pool` within `limit` (`connect_timeout`): a server that takes the TCP
/// connection but never greets must not hold the sink.
async fn connect(pool: &Pool, limit: std::time::Duration) -> Result<mysql_async::Conn, Failure> {
    match tokio::time::timeout(limit, pool.get_conn()).await {
        Ok(c) => c.map_err(Failure::at("connecting")),
        Err(_) => Err(Failure::Timeout(format!(
            "connecting took longer than connect_timeout ({limit:?})"
        ))),
    }
}

fn valid_table(t: &str) -> bool {
    !t.is_empty() && t.len() <= 60 && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Store {
    /// Checks the settings and builds the pool; connects (and migrates) lazily, on the first
    /// write, so that a database that is down does not stop the gateway from starting.
    pub fn new(cfg: &Config, password: Option<String>) -> Result<Store, PluginError> {
        if cfg.tls_ca_file.is_some() && !cfg.tls {
            return Err(PluginError::config(
                "tls_ca_file is set but tls is not: the connection would be in clear; set tls = true",
            ));
        }
        if !valid_table(&cfg.table) {
            return Err(PluginError::config(format!(
                "table: {:?} is not a plain table name",
                cfg.table
            )));
        }
        let mut pools = Vec::new();
        for url in split_hosts(&cfg.url).map_err(|e| PluginError::config(format!("url: {e}")))? {
            let opts =
                Opts::from_url(&url).map_err(|e| PluginError::config(format!("url: {e}")))?;
            if opts.pass().is_some() {
                return Err(PluginError::config(
                    "url: put the password in password_env or password_file, not in the URL",
                ));
            }
            if !cfg.tls && opts.ssl_opts().is_some() {
                return Err(PluginError::config(
                    "url: TLS is set with tls and tls_ca_file, not in the URL (require_ssl, verify_ca and verify_identity there could turn the verification off)",
                ));
            }
            let host = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
            if !cfg.tls
                && password.is_some()
                && !gateway_sdk::config::is_loopback(opts.ip_or_hostname())
            {
                tracing::warn!("the password and the readings go to {host} without TLS: whoever sits between can take the password (caching_sha2_password fetches the server's RSA key unverified); set tls = true and tls_ca_file");
            }
            // Not prefer_socket (mysql_async's default): after logging in over TCP it asks the
            // server for its `@@socket` and moves to that path on this machine, whatever host
            // `url` names, so the readings could go to a local server instead (or, told a path
            // by whoever answers, to a listener that gets the password in clear).
            let mut b = OptsBuilder::from_opts(opts)
                .prefer_socket(false)
                .setup(vec![format!(
                    "SET SESSION max_error_count = {WARNINGS_KEPT}"
                )])
                .pass(password.clone())
                .pool_opts(PoolOpts::default().with_constraints(
                    PoolConstraints::new(0, cfg.pool_max.max(1)).expect("0 <= max"),
                ));
            if cfg.tls {
                let mut ssl = SslOpts::default();
                if let Some(ca) = &cfg.tls_ca_file {
                    // That CA alone, not the system's store beside it.
                    ssl = ssl
                        .with_root_certs(vec![ca.clone().into()])
                        .with_disable_built_in_roots(true);
                }
                b = b.ssl_opts(ssl);
            }
            pools.push((host, Pool::new(b)));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PluginError::fatal(e.to_string()))?;
        Ok(Store {
            rt,
            servers: Servers::new(pools),
            table: cfg.table.clone(),
            insert_full: store_sql(&cfg.table, ROWS_PER_INSERT).into(),
            connect_timeout: cfg.connect_timeout,
            write_timeout: cfg.write_timeout,
            schema_on: UNCHECKED.into(),
            statement_bytes: MAX_STATEMENT_BYTES.into(),
            packet_bytes: usize::MAX.into(),
            unique_keys: std::sync::Mutex::new(Vec::new().into()),
        })
    }

    /// Creates the tables or checks their version, then (re)creates the view, on the first
    /// server that takes writes, within `write_timeout` on each; reads that server's
    /// `max_allowed_packet` and the table's unique keys.
    pub fn migrate(&self) -> Result<(), PluginError> {
        let limit = self.write_timeout;
        let (packet, keys) = self.servers.run(&self.rt, |pool| {
            let fut = migrate_on(pool, self.table.clone(), self.connect_timeout);
            async move {
                tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
                    Err(Failure::Timeout(format!(
                        "the schema was not checked within write_timeout ({limit:?})"
                    )))
                })
            }
        })?;
        self.statement_bytes.store(
            statement_limit(packet),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.packet_bytes.store(
            packet.saturating_sub(PACKET_MARGIN),
            std::sync::atomic::Ordering::Relaxed,
        );
        *self.unique_keys.lock().unwrap_or_else(|e| e.into_inner()) = keys.into();
        Ok(())
    }

    /// Checks the schema on the server in use ([`Store::migrate`]) if it was not checked there:
    /// at the first write, and again after a failover, or once an insert found no table, to a
    /// server of `url` that is not a replica (where every insert would otherwise fail with
    /// "table doesn't exist" for ever), or once a connection broke (the server may have been
    /// restarted with another `max_allowed_packet`, or lowered it: see [`Store::write`]).
    pub fn ensure_schema(&self) -> Result<(), PluginError> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.schema_on.load(Relaxed) == self.servers.current() {
            return Ok(());
        }
        self.migrate()?;
        self.schema_on.store(self.servers.current(), Relaxed);
        tracing::info!("MySQL schema ready");
        Ok(())
    }

    /// Inserts a batch in one transaction ([`store_sql`]); returns after COMMIT.
    /// Returns how many rows were new.
    pub fn write(&self, batch: &[Reading]) -> Result<u64, PluginError> {
        let bytes = self
            .statement_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        // The rows and parameters of each INSERT, made here so the async part only moves them
        // (again for each try: the statements take them).
        let room = self.packet_bytes.load(std::sync::atomic::Ordering::Relaxed);
        let chunks = || {
            statements(batch, bytes, room).map_err(|(i, len)| {
                let r = &batch[i];
                // Refused for good: halving leaves it alone, and it goes to the dead letters
                // instead of holding every reading behind it, retried for ever.
                Failure::Plugin(PluginError::rejected(format!(
                    "reading {}/{}/{} takes {len} bytes in an INSERT, more than this server's max_allowed_packet lets one carry ({room} bytes, less a margin): it cannot be stored here",
                    r.device, r.sensor, r.name
                )))
            })
        };
        let keys = self
            .unique_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (limit, connect_limit) = (self.write_timeout, self.connect_timeout);
        let schema_on = &self.schema_on;
        self.servers.run(&self.rt, |pool| {
            let to = Target {
                table: &self.table,
                full: &self.insert_full,
                keys: &keys,
                batch,
            };
            let fut = insert(pool, to, chunks, connect_limit);
            async move {
                let r = match tokio::time::timeout(limit, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(Failure::Timeout(format!(
                        "the batch was not committed within write_timeout ({limit:?})"
                    ))),
                };
                // No table (1146): made again at the next check. A connection broken (an I/O
                // error; the client's refusal of a statement larger than the connection's
                // max_allowed_packet is one too, and drops it) or a statement the server found
                // too large (1153): the server's value is read again at the next check, since
                // it may have been lowered (it applies to connections made since) or the
                // server restarted with another.
                let check_again = match &r {
                    Err(Failure::Db(_, mysql_async::Error::Server(e))) => {
                        e.code == 1146 || e.code == 1153
                    }
                    Err(Failure::Db(_, mysql_async::Error::Io(_))) => true,
                    _ => false,
                };
                if check_again {
                    schema_on.store(UNCHECKED, std::sync::atomic::Ordering::Relaxed);
                }
                r
            }
        })
    }
}

/// The migration of [`Store::migrate`] on one server; returns the server's `max_allowed_packet`
/// and the table's unique keys.
async fn migrate_on(
    pool: Pool,
    table: String,
    connect_limit: std::time::Duration,
) -> Result<(usize, Vec<UniqueKey>), Failure> {
    let at = Failure::at;
    let mut c = connect(&pool, connect_limit).await?;
    c.query_drop("CREATE TABLE IF NOT EXISTS gateway_schema (tbl VARCHAR(64) NOT NULL PRIMARY KEY, version INT UNSIGNED NOT NULL) ENGINE=InnoDB")
        .await
        .map_err(at("creating gateway_schema"))?;
    let version: Option<u32> = c
        .exec_first(
            "SELECT version FROM gateway_schema WHERE tbl = ?",
            (table.as_str(),),
        )
        .await
        .map_err(at("reading the schema version"))?;
    // The record may outlive its table (dropped, or renamed to keep it aside): the table is
    // looked for whatever the record says. Looked for, not made with IF NOT EXISTS at every
    // check: that takes the CREATE privilege on the table even when it is there.
    let tables: Option<u64> = c
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
            (table.as_str(),),
        )
        .await
        .map_err(at("looking for the readings table"))?;
    let exists = tables.unwrap_or(0) > 0;
    match version {
        Some(v) if v > SCHEMA_VERSION => return Err(Failure::Plugin(PluginError::config(format!(
            "table {table} has schema version {v}, newer than this plugin's {SCHEMA_VERSION}: upgrade the plugin (it will not downgrade a schema)"
        )))),
        Some(SCHEMA_VERSION) if exists => {}
        Some(v) if exists => {
            // Version 1 to 2: the same rows, keyed by (id, device). One ALTER, which InnoDB
            // applies atomically. Device names compare byte for byte (the default collation
            // would make `Pi-07` and `pi-07` one device in the key).
            c.query_drop(format!("ALTER TABLE `{table}` MODIFY device VARCHAR(255) NOT NULL COLLATE utf8mb4_bin, DROP PRIMARY KEY, ADD PRIMARY KEY (id, device)"))
                .await
                .map_err(at(&format!("migrating {table} from schema version {v}")))?;
            c.exec_drop("UPDATE gateway_schema SET version = ? WHERE tbl = ?", (SCHEMA_VERSION, table.as_str()))
                .await
                .map_err(at("recording the schema version"))?;
            tracing::info!(table = %table, "migrated the schema from version {v} to {SCHEMA_VERSION}: readings are keyed by device and id");
        }
        // No record (a table made by hand is used as it is), or a record without its table.
        _ => {
            c.query_drop(create_table(&table))
                .await
                .map_err(at("creating the readings table"))?;
            let record = match version {
                None => "INSERT IGNORE INTO gateway_schema (version, tbl) VALUES (?, ?)",
                Some(_) => "UPDATE gateway_schema SET version = ? WHERE tbl = ?",
            };
            c.exec_drop(record, (SCHEMA_VERSION, table.as_str()))
                .await
                .map_err(at("recording the schema version"))?;
            if version.is_some() {
                tracing::warn!(table = %table, "the table was gone (dropped or renamed); made again, empty");
            }
        }
    }
    // A table made by hand is used as it is, but not without a unique key on the reading:
    // INSERT IGNORE would have nothing to skip a re-delivered reading on, and store it again.
    // Their names are kept: a duplicate (1062) on one of them is a reading stored already, one
    // on another unique key a new reading that key refuses (see `insert_chunks`).
    let keys = unique_keys(&mut c, &table)
        .await
        .map_err(at("looking for the readings table's key"))?;
    if !keys.iter().any(|k| k.on_reading) {
        return Err(Failure::Plugin(PluginError::config(format!(
            "table {table} has no unique key on the reading (on id and device, and no other column but sensor, name, unit or time_us), which tells a reading stored before from a new one: without it every re-delivered reading would be stored again. Give it one (readings stored twice already must go first): ALTER TABLE `{table}` ADD UNIQUE KEY reading_id (id, device); with time_us too where the table is partitioned on it. Or let the plugin make the table (it does so when there is none)"
        ))));
    }
    // The view is no table data: it is replaced at every start, with no version of its own.
    // Storing readings does not need it, so a user not allowed to make it (CREATE VIEW, and
    // DROP for OR REPLACE) gets a warning, not a sink that stops.
    let view = view_name(&table);
    match c.query_drop(create_view(&table)).await {
        Ok(()) => {}
        Err(mysql_async::Error::Server(e)) if VIEW_REFUSED.contains(&e.code) => {
            tracing::warn!(view = %view, "the view for Grafana was not made ({}); readings are stored all the same: grant CREATE VIEW and DROP on the database, or create it once as the README shows", e.message);
        }
        Err(e) => return Err(Failure::Db(format!("creating the view {view}"), e)),
    }
    // A connection's limit is the global value when it was made (the session's is read-only):
    // the lower of the two holds for this connection and for those made from now on.
    let packet: Option<u64> = c
        .query_first("SELECT LEAST(@@SESSION.max_allowed_packet, @@GLOBAL.max_allowed_packet)")
        .await
        .map_err(at("reading max_allowed_packet"))?;
    let packet = packet.map_or(0, |p| usize::try_from(p).unwrap_or(usize::MAX));
    Ok((packet, keys))
}

/// The most bytes one INSERT takes on the wire, however large the server's
/// `max_allowed_packet` (16 MiB by default in MariaDB, 64 MiB in MySQL 8): statements of large
/// text or bytes gain nothing from being larger, and past 16 MiB the client would send the
/// values apart (COM_STMT_SEND_LONG_DATA).
const MAX_STATEMENT_BYTES: usize = 1 << 20;

/// Bytes of `max_allowed_packet` a statement leaves unused: the server refuses a packet as
/// large as its limit, not only a larger one, and a margin costs nothing.
const PACKET_MARGIN: usize = 1024;

/// The most bytes one INSERT may take on a server whose `max_allowed_packet` is `packet`: a
/// statement larger is refused by the client (mysql_async checks it) at every try.
fn statement_limit(packet: usize) -> usize {
    packet
        .saturating_sub(PACKET_MARGIN)
        .min(MAX_STATEMENT_BYTES)
}

/// Bytes of a COM_STMT_EXECUTE before its rows: command, statement id, flags, iteration
/// count, the "types follow" flag.
const STATEMENT_HEAD: usize = 11;

/// Bytes one row's values take in a COM_STMT_EXECUTE: each value's type (2 bytes), its bit in
/// the NULL bitmap (11 bits a row, counted as 2 bytes), and the value in the binary protocol
/// (a length prefix and the bytes of a string; 8 bytes of a number; nothing of a NULL).
fn row_bytes(values: &[mysql_async::Value]) -> usize {
    let values: u64 = values.iter().map(|v| v.bin_len()).sum();
    2 * COLUMN_COUNT + 2 + usize::try_from(values).unwrap_or(usize::MAX)
}

/// A batch's rows and their values cut into INSERTs of at most [`ROWS_PER_INSERT`] rows and,
/// but for a single row, `limit` bytes on the wire ([`statement_limit`]). The index and size of
/// a reading that alone takes more than `room` bytes (the server's whole limit) instead.
fn statements(
    batch: &[Reading],
    limit: usize,
    room: usize,
) -> Result<Vec<(usize, Vec<mysql_async::Value>)>, (usize, usize)> {
    let capacity = |rows: usize| Vec::with_capacity(rows.min(ROWS_PER_INSERT) * COLUMN_COUNT);
    let mut done = Vec::new();
    let (mut rows, mut values, mut bytes) = (0, capacity(batch.len()), STATEMENT_HEAD);
    for (i, r) in batch.iter().enumerate() {
        let start = values.len();
        row(r, &mut values);
        let len = row_bytes(&values[start..]);
        if STATEMENT_HEAD + len > room {
            return Err((i, STATEMENT_HEAD + len));
        }
        if rows > 0 && (rows == ROWS_PER_INSERT || bytes + len > limit) {
            // This row begins the next statement.
            let mut next = capacity(batch.len() - i);
            next.extend(values.drain(start..));
            done.push((rows, std::mem::replace(&mut values, next)));
            (rows, bytes) = (0, STATEMENT_HEAD);
        }
        rows += 1;
        bytes += len;
    }
    if rows > 0 {
        done.push((rows, values));
    }
    Ok(done)
}

/// What a batch goes to, and the batch.
#[derive(Clone, Copy)]
struct Target<'a> {
    table: &'a str,
    /// The INSERT of a full statement ([`Store`]'s `insert_full`).
    full: &'a str,
    /// The table's unique keys, as the schema check found them.
    keys: &'a [UniqueKey],
    /// The readings, in the order of the statements' rows.
    batch: &'a [Reading],
}

/// One batch in one transaction on `pool`; how many rows were new. Galera refuses a
/// transaction that lost certification at COMMIT with a deadlock (1213, as InnoDB does a real
/// one): it goes once more at once, on the same node.
async fn insert(
    pool: Pool,
    to: Target<'_>,
    chunks: impl Fn() -> Result<Vec<(usize, Vec<mysql_async::Value>)>, Failure>,
    connect_limit: std::time::Duration,
) -> Result<u64, Failure> {
    match insert_once(&pool, to, chunks()?, connect_limit).await {
        Err(Failure::Db(_, mysql_async::Error::Server(e))) if e.code == 1213 => {
            tracing::debug!("deadlock (or a Galera certification conflict); the batch goes again");
        }
        r => return r,
    }
    insert_once(&pool, to, chunks()?, connect_limit).await
}

async fn insert_once(
    pool: &Pool,
    to: Target<'_>,
    chunks: Vec<(usize, Vec<mysql_async::Value>)>,
    connect_limit: std::time::Duration,
) -> Result<u64, Failure> {
    let at = Failure::at;
    let mut c = connect(pool, connect_limit).await?;
    let mut tx = c
        .start_transaction(Default::default())
        .await
        .map_err(at("BEGIN"))?;
    match insert_chunks(&mut tx, to, chunks).await {
        Ok(inserted) => {
            tx.commit().await.map_err(at("COMMIT"))?;
            Ok(inserted)
        }
        Err(e) => {
            // At once: a transaction left for the pool to end holds its locks (a foreign key's
            // on the parent row, say) until the connection is next used.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// The INSERTs of a batch in `tx`; how many rows were new. More rows skipped than warnings
/// 1062 (duplicates) account for, a warning that a value was altered, more warnings than SHOW
/// WARNINGS lists, or a row skipped as a duplicate on another key than the reading's that is
/// not in the table, refuses the batch for good; any other warning is logged.
async fn insert_chunks(
    tx: &mut mysql_async::Transaction<'_>,
    to: Target<'_>,
    chunks: Vec<(usize, Vec<mysql_async::Value>)>,
) -> Result<u64, Failure> {
    let at = Failure::at;
    let mut inserted = 0;
    let mut first = 0;
    for (rows, values) in chunks {
        let readings = &to.batch[first..first + rows];
        first += rows;
        let sql: std::borrow::Cow<'_, str> = if rows == ROWS_PER_INSERT {
            to.full.into()
        } else {
            store_sql(to.table, rows).into()
        };
        tx.exec_drop(sql, mysql_async::Params::Positional(values))
            .await
            .map_err(|e| match &e {
                mysql_async::Error::Server(s) if refused_class(s) => {
                    Failure::Plugin(PluginError::rejected(format!("INSERT: {e}")))
                }
                _ => Failure::Db("INSERT".into(), e),
            })?;
        let stored = tx.affected_rows();
        inserted += stored;
        let warnings = usize::from(tx.get_warnings());
        if warnings == 0 {
            continue;
        }
        let listed: Vec<(String, u32, String)> = tx
            .query("SHOW WARNINGS")
            .await
            .map_err(at("SHOW WARNINGS"))?;
        let skipped = rows.saturating_sub(stored as usize);
        let again = listed.iter().filter(|(_, code, _)| *code == 1062).count();
        // A row skipped for another reason than being there (a constraint), or one stored
        // altered (a value cut or out of range, as a table of the user's own may make it).
        let refused = listed.iter().find(|(level, code, _)| {
            level != "Note"
                && (REFUSED.contains(&(*code as u16)) || skipped > again && *code != 1062)
        });
        if let Some((_, code, message)) = refused {
            return Err(Failure::Plugin(PluginError::rejected(format!(
                "INSERT: the server skipped or altered a row: {message} ({code})"
            ))));
        }
        // SHOW WARNINGS lists max_error_count of them ([`WARNINGS_KEPT`]); a row may have
        // several (a trigger's, a value cut), and one past the list cannot be checked.
        if warnings > listed.len() {
            return Err(Failure::Plugin(PluginError::rejected(format!(
                "INSERT: the server has {warnings} warnings and lists {}: the others cannot be checked (a smaller batch can)",
                listed.len()
            ))));
        }
        if skipped > again {
            return Err(Failure::Plugin(PluginError::rejected(format!(
                "INSERT: the server skipped {skipped} rows and lists {again} of them as duplicates (of {warnings} warnings, it lists {}): which were cannot be told (a smaller batch can)",
                listed.len()
            ))));
        }
        // A duplicate on a key on the reading is that reading, stored already. One on another
        // unique key of a table made by hand (its series and time, say) may be a new reading
        // that key refuses, and is stored nowhere; or a reading stored already all the same,
        // as the server names the first key a row collides on, which need not be the
        // reading's. A key the message does not name plainly is such a key too. Then the
        // statement's rows must all be in the table, or the batch is refused.
        let other = listed.iter().find(|(_, code, message)| {
            *code == 1062
                && !duplicate_key(message, to.table, to.keys).is_some_and(|k| k.on_reading)
        });
        if let Some((_, code, message)) = other {
            // Not allowed to read the table (SELECT, or a column's, refused): the rows cannot
            // be checked, on any try.
            let lost = match missing(tx, to.table, readings).await {
                Ok(n) => n,
                // Held, not refused: a grant stores the batch.
                Err(mysql_async::Error::Server(e)) if SELECT_REFUSED.contains(&e.code) => {
                    return Err(Failure::Plugin(PluginError::config(format!(
                        "INSERT: the server skipped a row as a duplicate on a key not known as the reading's ({message} ({code})), and whether it is a reading stored already cannot be checked: {e} (grant the sink SELECT on {})",
                        to.table
                    ))));
                }
                Err(e) => return Err(Failure::Db("looking for the skipped rows".into(), e)),
            };
            if lost > 0 {
                return Err(Failure::Plugin(PluginError::rejected(format!(
                    "INSERT: {lost} of {rows} rows were skipped as duplicates on a key not known as the reading's and are not in the table (new readings that key refuses, stored nowhere): {message} ({code})"
                ))));
            }
        }
        // Anything else (a trigger's or a setting's warning) changed no row: said, not refused.
        for (level, code, message) in listed.iter().filter(|(_, code, _)| *code != 1062) {
            tracing::warn!(%level, code, "INSERT: the server warns: {message}");
        }
    }
    Ok(inserted)
}

/// Checks that every reading fits its row whole: the device, sensor and name in 255 characters,
/// the unit in 64, text and bytes in 65,535 bytes, a float finite. MySQL would otherwise cut
/// a string to its column's size with a warning only where its `sql_mode` is not strict, and
/// the reading would be reported stored. A batch with one that does not fit is refused
/// for good ([`PluginError::rejected`]: the host sends it to the dead letters, the ingress
/// answers the device 4.xx), naming the reading and the limit.
pub fn check(batch: &[Reading]) -> Result<(), PluginError> {
    fn chars_over(s: &str, max: usize) -> Option<usize> {
        // Fewer bytes than the limit: fewer characters too.
        (s.len() > max)
            .then(|| s.chars().count())
            .filter(|&n| n > max)
    }
    for (i, r) in batch.iter().enumerate() {
        let labels = [
            ("device", r.device.as_str(), LABEL_CHARS),
            ("sensor", r.sensor.as_str(), LABEL_CHARS),
            ("name", r.name.as_str(), LABEL_CHARS),
            ("unit", r.unit.as_str(), UNIT_CHARS),
        ];
        let why = labels
            .iter()
            .find_map(|&(field, v, max)| {
                chars_over(v, max)
                    .map(|n| format!("its {field} has {n} characters; the column holds {max}"))
            })
            .or_else(|| match &r.value {
                Value::Float(v) if !v.is_finite() => Some(format!(
                    "its value {v} is not a finite number, which MySQL cannot store"
                )),
                Value::Text(t) if t.len() > LOB_BYTES => Some(format!(
                    "its text has {} bytes; the column holds {LOB_BYTES}",
                    t.len()
                )),
                Value::Bytes(b) if b.len() > LOB_BYTES => Some(format!(
                    "its bytes are {} long; the column holds {LOB_BYTES}",
                    b.len()
                )),
                _ => None,
            });
        if let Some(why) = why {
            return Err(PluginError::rejected(format!(
                "reading {} of {} ({}/{}/{}) cannot be stored whole: {why}",
                i + 1,
                batch.len(),
                r.device,
                r.sensor,
                r.name
            )));
        }
    }
    Ok(())
}

/// Appends the 11 column values of one reading.
fn row(r: &Reading, out: &mut Vec<mysql_async::Value>) {
    use mysql_async::Value as V;
    let none = V::NULL;
    let (kind, f, i, t, b) = match &r.value {
        Value::Float(v) => ("float", V::Double(*v), none.clone(), none.clone(), none),
        Value::Int(v) => ("int", none.clone(), V::Int(*v), none.clone(), none),
        Value::Bool(v) => (
            "bool",
            none.clone(),
            V::Int(i64::from(*v)),
            none.clone(),
            none,
        ),
        Value::Text(v) => (
            "text",
            none.clone(),
            none.clone(),
            V::Bytes(v.as_bytes().to_vec()),
            none,
        ),
        Value::Bytes(v) => (
            "bytes",
            none.clone(),
            none.clone(),
            none,
            V::Bytes(v.to_vec()),
        ),
    };
    out.extend([
        V::Bytes(r.id.0.to_vec()),
        V::Int(r.time.0),
        V::Bytes(r.device.as_bytes().to_vec()),
        V::Bytes(r.sensor.as_bytes().to_vec()),
        V::Bytes(r.name.as_bytes().to_vec()),
        V::Bytes(r.unit.as_bytes().to_vec()),
        V::Bytes(kind.as_bytes().to_vec()),
        f,
        i,
        t,
        b,
    ]);
}

impl Drop for Store {
    fn drop(&mut self) {
        // Within connect_timeout: a connection a write timed out on goes back to the pool to
        // be rolled back, and disconnect waits for that, which a server that stopped answering
        // never lets happen; the sink's thread, and a reload that replaces it, would wait too.
        // All servers' pools at once, under one limit: one after another, three servers that
        // stopped answering would take three times as long, past the host's shutdown_timeout.
        let limit = self.connect_timeout;
        let pools: Vec<_> = self.servers.pools().cloned().collect();
        self.rt.block_on(async move {
            let all: Vec<_> = pools
                .into_iter()
                .map(|p| tokio::spawn(async move { p.disconnect().await }))
                .collect();
            let _ = tokio::time::timeout(limit, async {
                for d in all {
                    let _ = d.await;
                }
            })
            .await;
        });
    }
}

/// The URL of each server `url` lists: `mysql://USER@HOST1[:PORT],HOST2[:PORT]/DATABASE?...`
/// gives `mysql://USER@HOST1[:PORT]/DATABASE?...` and so on, in order.
pub fn split_hosts(url: &str) -> Result<Vec<String>, String> {
    // A password in the URL is refused before anything else is, by messages that quote it.
    let after_scheme = url.split_once("://").map_or(url, |(_, r)| r);
    if after_scheme
        .rsplit_once('@')
        .is_some_and(|(user, _)| user.contains(':'))
    {
        return Err("put the password in password_env or password_file, not in the URL".into());
    }
    let Some(rest) = url.strip_prefix("mysql://") else {
        return Err(format!(
            "{url:?}: give mysql://USER@HOST[:PORT][,HOST[:PORT]...]/DATABASE"
        ));
    };
    let (user, rest) = match rest.rsplit_once('@') {
        Some((u, r)) => (format!("{u}@"), r),
        None => (String::new(), rest),
    };
    let (hosts, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
    if hosts.iter().any(|h| h.is_empty()) {
        return Err(format!("{url:?}: an empty host in the list"));
    }
    Ok(hosts
        .iter()
        .map(|h| format!("mysql://{user}{h}{tail}"))
        .collect())
}
