//! The schema and the writes. I/O: the database file.

use crate::config::{Config, Sync};
use gateway_sdk::{tracing, PluginError, Reading, Value};
use rusqlite::{params, Connection, ErrorCode};

/// The schema version this plugin writes. Version 2 keys readings by device and id (version
/// 1 by id alone, which let one device's ids shadow another's).
pub const SCHEMA_VERSION: i64 = 2;

/// The readings table, named `table`.
fn readings_table(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (
    id          BLOB    NOT NULL,              -- the reading's 16-byte id, unique within its device:
    time_us     INTEGER NOT NULL,              -- UTC, microseconds since the Unix epoch
    device      TEXT    NOT NULL,              -- a re-delivered reading is not stored twice
    sensor      TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    unit        TEXT    NOT NULL,
    value_type  TEXT    NOT NULL CHECK (value_type IN ('float', 'int', 'bool', 'text', 'bytes')),
    value_float REAL,
    value_int   INTEGER,                       -- int, and bool as 0/1
    value_text  TEXT,
    value_bytes BLOB,
    PRIMARY KEY (id, device)
) WITHOUT ROWID;"
    )
}

const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS readings_latest ON readings (device, sensor, name, time_us);
CREATE INDEX IF NOT EXISTS readings_time ON readings (time_us);
";

/// Version 1 to 2: the rows (the [`V1_COLUMNS`]) move to a table keyed by (id, device), in
/// one transaction.
fn migrate_v1() -> String {
    let columns = V1_COLUMNS.join(", ");
    format!(
        "INSERT INTO readings_v2 SELECT {columns} FROM readings;
DROP TABLE readings;
ALTER TABLE readings_v2 RENAME TO readings;"
    )
}

/// The columns of a version 1 table, which the migration copies ([`migrate_v1`]).
const V1_COLUMNS: [&str; 11] = [
    "id",
    "time_us",
    "device",
    "sensor",
    "name",
    "unit",
    "value_type",
    "value_float",
    "value_int",
    "value_text",
    "value_bytes",
];

/// What on the `readings` table of `conn` the migration from version 1 would lose (it copies
/// [`V1_COLUMNS`] into a new table and drops the old one, with whatever else was on it): the
/// columns, triggers, indexes and views the plugin did not make. `None`: nothing.
fn not_version_1(conn: &Connection) -> rusqlite::Result<Option<String>> {
    let columns: Vec<String> = conn
        .prepare("SELECT lower(name) FROM pragma_table_info('readings')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut found = Vec::new();
    let extra: Vec<&String> = columns
        .iter()
        .filter(|c| !V1_COLUMNS.contains(&c.as_str()))
        .collect();
    if !extra.is_empty() {
        found.push(format!("columns {extra:?}"));
    }
    if let Some(missing) = V1_COLUMNS.iter().find(|c| !columns.iter().any(|k| k == *c)) {
        found.push(format!("no column {missing}"));
    }
    // Indexes of the operator's own on the table; triggers and views that name it, wherever
    // they are (a trigger on another table that writes into it: the migration's rename fails
    // on them).
    let others: Vec<(String, String, String)> = conn
        .prepare(
            "SELECT type, name, coalesce(sql, '') FROM sqlite_master WHERE (type = 'index' \
             AND tbl_name = 'readings' AND name NOT IN ('readings_latest', 'readings_time') \
             AND name NOT LIKE 'sqlite_autoindex_readings_%') OR type IN ('trigger', 'view')",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    found.extend(
        others
            .into_iter()
            .filter(|(kind, _, sql)| kind == "index" || names_readings(sql))
            .map(|(kind, name, _)| format!("{kind} {name}")),
    );
    Ok((!found.is_empty()).then(|| found.join(", ")))
}

/// Whether `sql` names the `readings` table: the word itself, in any case or quotes (not
/// `readings_archive`, not `readings_count`).
fn names_readings(sql: &str) -> bool {
    sql.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|w| w.eq_ignore_ascii_case("readings"))
}

fn sql_error(what: &str, e: rusqlite::Error) -> PluginError {
    let transient = matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::OutOfMemory
        )
    );
    if transient {
        PluginError::retry(format!("{what}: {e}"))
    } else if matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    ) {
        PluginError::fatal(format!("{what}: {e}"))
    } else {
        PluginError::retry(format!("{what}: {e}"))
    }
}

/// Whether `e` says the readings table is gone (renamed or dropped by another process): every
/// write on this connection would fail so, and opening the file again makes it.
fn table_gone(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(_, Some(m)) if m.starts_with("no such table"))
}

/// The device and inode of the file at `path`.
fn file_id(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| (m.dev(), m.ino()))
}

/// [`file_id`] where a file must be: any error is retryable.
fn file_id_now(path: &std::path::Path) -> Result<(u64, u64), PluginError> {
    file_id(path).map_err(|e| PluginError::retry(format!("cannot stat {}: {e}", path.display())))
}

/// An open database.
pub struct Store {
    conn: Connection,
    /// The configured path, and the file it named when opened ([`file_id`]).
    path: std::path::PathBuf,
    file: (u64, u64),
    /// Whether the WAL was moved into the file since the last write ([`Store::checkpoint`]):
    /// dropping the store then does not do it again.
    checkpointed: bool,
    /// Whether a write found the readings table gone ([`table_gone`]).
    table_gone: bool,
    /// Readings that were already stored (duplicates), over the store's life.
    pub duplicates: u64,
}

impl Store {
    /// Opens (creating and migrating) the database. `make_dirs`: make its directory when
    /// missing (the first open); otherwise a missing directory is retryable ("directory
    /// gone"), as a card or stick unmounted under the path, which must not get a new database
    /// on the filesystem under its mount point.
    pub fn open(cfg: &Config, make_dirs: bool) -> Result<Store, PluginError> {
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if make_dirs {
                std::fs::create_dir_all(dir).map_err(|e| {
                    PluginError::config(format!("cannot create {}: {e}", dir.display()))
                })?;
            } else {
                match std::fs::metadata(dir) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(PluginError::retry(format!(
                            "{} is not a directory (any more)",
                            dir.display()
                        )))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(PluginError::retry(format!(
                            "directory gone: {} (unmounted?); it is made only at the first open",
                            dir.display()
                        )))
                    }
                    Err(e) => {
                        return Err(PluginError::retry(format!(
                            "cannot stat {}: {e}",
                            dir.display()
                        )))
                    }
                }
            }
        }
        let conn = Connection::open(&cfg.path)
            .map_err(|e| PluginError::config(format!("cannot open {}: {e}", cfg.path.display())))?;
        // The file SQLite opened (it opens, or makes, it in `Connection::open`): noted now,
        // and checked again once the schema is in place, so that a file moved meanwhile is
        // not taken for the one at the path.
        let file = file_id_now(&cfg.path)?;
        conn.busy_timeout(cfg.busy_timeout)
            .map_err(|e| sql_error("busy_timeout", e))?;
        let journal: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(|e| sql_error("journal_mode", e))?;
        if !journal.eq_ignore_ascii_case("wal") {
            // A file system without the shared memory WAL needs (some network ones): SQLite
            // keeps the journal it had. Commits stay durable; a reader holds writes back.
            tracing::warn!(
                path = %cfg.path.display(),
                journal = %journal,
                "SQLite could not put this file in WAL mode (its file system may not support it): it keeps its {journal} journal; commits are still durable, but a reader of the file holds the sink's writes back"
            );
        }
        let sync = match cfg.synchronous {
            Sync::Full => "FULL",
            Sync::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)
            .map_err(|e| sql_error("synchronous", e))?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| sql_error("user_version", e))?;
        if version > SCHEMA_VERSION {
            return Err(PluginError::config(format!(
                "{} has schema version {version}, newer than this plugin's {SCHEMA_VERSION}: upgrade the plugin (it will not downgrade a schema)",
                cfg.path.display()
            )));
        }
        // A file whose schema version was never recorded (a crash between creating the table
        // and recording its version, as an earlier plugin did it in two steps) has version 1.
        let has_table: bool = conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'readings'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| sql_error("sqlite_master", e))?;
        // A file without the table (renamed or dropped by another process, and the store
        // opened again for it: see [`Store::reopen_needed`]) gets it again.
        let recorded_version = version;
        let version = match (version, has_table) {
            (_, false) => 0,
            (0, true) => 1,
            (v, true) => v,
        };
        if version == 1 {
            if let Some(what) = not_version_1(&conn).map_err(|e| sql_error("sqlite_master", e))? {
                return Err(PluginError::config(format!(
                    "{}: the readings table is taken for schema version 1 (its user_version is {recorded}), but has what the plugin did not make ({what}); moving it to version 2 (keyed by id and device) would drop or break that. Make the table version 2 by hand (`PRIMARY KEY (id, device)`, then `PRAGMA user_version = 2`), or point path at a new file",
                    cfg.path.display(),
                    recorded = recorded_version
                )));
            }
        }
        if version < SCHEMA_VERSION {
            let sql = match version {
                0 => format!("{}\n{INDEXES}", readings_table("readings")),
                _ => format!(
                    "{}\n{}\n{INDEXES}",
                    readings_table("readings_v2"),
                    migrate_v1()
                ),
            };
            let tx = conn
                .unchecked_transaction()
                .map_err(|e| sql_error("BEGIN", e))?;
            tx.execute_batch(&sql).map_err(|e| {
                sql_error(&format!("migrating the schema from version {version}"), e)
            })?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(|e| sql_error("user_version", e))?;
            tx.commit().map_err(|e| sql_error("COMMIT", e))?;
            if version > 0 {
                tracing::info!(
                    path = %cfg.path.display(),
                    "migrated the schema from version {version} to {SCHEMA_VERSION}: readings are keyed by device and id"
                );
            }
        }
        // A write skips a reading stored before by this key (ON CONFLICT (id, device)); a
        // table remade by hand without it would fail every write.
        let keyed: bool = conn
            .query_row(
                "SELECT count(*) > 0 FROM pragma_index_list('readings') l WHERE l.\"unique\" = 1 AND l.partial = 0 \
                 AND (SELECT count(*) FROM pragma_index_info(l.name)) = 2 \
                 AND (SELECT count(DISTINCT lower(name)) FROM pragma_index_info(l.name) WHERE lower(name) IN ('id', 'device')) = 2",
                [],
                |r| r.get(0),
            )
            .map_err(|e| sql_error("pragma_index_list", e))?;
        if !keyed {
            return Err(PluginError::config(format!(
                "{}: the readings table has no unique key on (id, device), which tells a reading stored before from a new one: give it one (`CREATE UNIQUE INDEX readings_key ON readings (id, device)`), or let the plugin make the table (it does so when there is none)",
                cfg.path.display()
            )));
        }
        let store = Store {
            conn,
            path: cfg.path.clone(),
            file,
            checkpointed: false,
            table_gone: false,
            duplicates: 0,
        };
        if file_id_now(&cfg.path)? != file {
            return Err(PluginError::retry(format!(
                "{} was moved, replaced or deleted while it was opened",
                cfg.path.display()
            )));
        }
        Ok(store)
    }

    /// Whether the store must be checkpointed ([`Store::checkpoint`]), dropped and opened
    /// again: the file at its path is not the one it has open (moved, replaced or deleted by
    /// another process, which SQLite does not notice in WAL mode: its writes would go on to
    /// the old file), or a write found the readings table gone. One `stat` per write; a stat
    /// that fails otherwise than "not found" is retryable, and says nothing about the file.
    pub fn reopen_needed(&self) -> Result<bool, PluginError> {
        match file_id(&self.path) {
            _ if self.table_gone => Ok(true),
            Ok(id) => Ok(id != self.file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(PluginError::retry(format!(
                "cannot stat {}: {e}",
                self.path.display()
            ))),
        }
    }

    /// Moves all the WAL holds into the file and empties it (`PRAGMA wal_checkpoint(TRUNCATE)`).
    /// SQLite does not do so at close when the file was moved, which would leave the commits
    /// in a WAL file beside the old name, in no database, and beside the path a new file is
    /// made at (which deletes it, or takes it as its own). Retryable when it did not finish:
    /// another process reading the file holds it up (SQLite says so in the result row, not as
    /// an error); then no new file may be opened at the path.
    pub fn checkpoint(&mut self) -> Result<(), PluginError> {
        let (busy, log, done): (i64, i64, i64) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(|e| sql_error("checkpoint", e))?;
        if busy != 0 || log != done {
            return Err(PluginError::retry(format!(
                "checkpoint of {} not finished ({done} of {log} WAL frames moved; another process reading it holds it up): the file stays open until it can finish",
                self.path.display()
            )));
        }
        self.checkpointed = true;
        Ok(())
    }

    /// Stores a batch in one transaction; returns once it is committed. A batch with a NaN is
    /// refused for good: SQLite would store it as NULL, a reading without its value.
    pub fn write(&mut self, batch: &[Reading]) -> Result<(), PluginError> {
        if let Some(i) = batch
            .iter()
            .position(|r| matches!(r.value, Value::Float(v) if v.is_nan()))
        {
            let r = &batch[i];
            return Err(PluginError::rejected(format!(
                "reading {} of {} ({}/{}/{}) cannot be stored: its value is NaN, which SQLite would store as NULL",
                i + 1,
                batch.len(),
                r.device,
                r.sensor,
                r.name
            )));
        }
        let tx = self.conn.transaction().map_err(|e| sql_error("BEGIN", e))?;
        let mut inserted = 0usize;
        {
            let mut stmt = tx
                .prepare_cached(
                    // Only a reading stored before is skipped (the key is checked at open): OR
                    // IGNORE would also skip, in silence, a row a CHECK, a NOT NULL or another
                    // unique index added to the table refuses.
                    "INSERT INTO readings (id, time_us, device, sensor, name, unit, value_type, value_float, value_int, value_text, value_bytes)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT (id, device) DO NOTHING",
                )
                .map_err(|e| {
                    self.table_gone |= table_gone(&e);
                    sql_error("INSERT", e)
                })?;
            for (n, r) in batch.iter().enumerate() {
                let (kind, f, i, t, b): (
                    &str,
                    Option<f64>,
                    Option<i64>,
                    Option<&str>,
                    Option<&[u8]>,
                ) = match &r.value {
                    Value::Float(v) => ("float", Some(*v), None, None, None),
                    Value::Int(v) => ("int", None, Some(*v), None, None),
                    Value::Bool(v) => ("bool", None, Some(i64::from(*v)), None, None),
                    Value::Text(v) => ("text", None, None, Some(v.as_str()), None),
                    Value::Bytes(v) => ("bytes", None, None, None, Some(v.as_slice())),
                };
                inserted += stmt
                    .execute(params![
                        &r.id.0[..],
                        r.time.0,
                        r.device.as_str(),
                        r.sensor.as_str(),
                        r.name.as_str(),
                        r.unit.as_str(),
                        kind,
                        f,
                        i,
                        t,
                        b
                    ])
                    .map_err(|e| match e.sqlite_error_code() {
                        // A rule of the table, a value longer than SQLite takes, or one of a
                        // type a column declared STRICT refuses: the same at every try.
                        Some(
                            ErrorCode::ConstraintViolation
                            | ErrorCode::TooBig
                            | ErrorCode::TypeMismatch,
                        ) => PluginError::rejected(format!(
                            "reading {} of {} ({}/{}/{}) is refused by a rule of the table: {e}",
                            n + 1,
                            batch.len(),
                            r.device,
                            r.sensor,
                            r.name
                        )),
                        _ => {
                            self.table_gone |= table_gone(&e);
                            sql_error("INSERT", e)
                        }
                    })?;
            }
        }
        self.checkpointed = false;
        tx.commit().map_err(|e| match e.sqlite_error_code() {
            // A rule checked at commit (a deferred foreign key of the operator's own): the
            // same at every try, so the host finds and refuses the readings that break it.
            Some(ErrorCode::ConstraintViolation) => PluginError::rejected(format!(
                "the batch breaks a rule of the table checked at commit (a deferred foreign key?): {e}"
            )),
            _ => sql_error("COMMIT", e),
        })?;
        self.duplicates += (batch.len() - inserted) as u64;
        // The file moved, replaced or deleted while the batch was written: it went to a file
        // nobody reads at the path. Retried, it goes to the file at the path (and is dropped
        // there as a duplicate should the path still name this one).
        match file_id(&self.path) {
            Ok(id) if id == self.file => Ok(()),
            Ok(_) => Err(PluginError::retry(format!(
                "{} was moved or replaced during the write: it is written again to the file at the path",
                self.path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(PluginError::retry(format!(
                "{} was moved or deleted during the write: it is written again to the file at the path",
                self.path.display()
            ))),
            Err(e) => Err(PluginError::retry(format!(
                "cannot stat {} after the write: {e}",
                self.path.display()
            ))),
        }
    }
}

impl Drop for Store {
    /// Checkpoints, unless done since the last write ([`Store::checkpoint`]): the gateway
    /// shutting down, reloading or rebuilding the sink after the file was moved would
    /// otherwise leave its commits in a WAL beside the old name.
    fn drop(&mut self) {
        if !self.checkpointed {
            if let Err(e) = self.checkpoint() {
                tracing::warn!(path = %self.path.display(), error = %e.message(), "checkpoint at close failed");
            }
        }
    }
}
