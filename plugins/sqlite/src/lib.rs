//! `sqlite`: a sink that stores readings in a single SQLite file (WAL), one transaction per
//! batch, acknowledged only after the commit. A reading's id is the table's key, so a
//! re-delivered reading is not stored twice. I/O: the database file.
#![forbid(unsafe_code)]

pub mod config;
pub mod store;

use config::Config;
use gateway_sdk::{tracing, InitContext, PluginError, Reading, Sink};

/// The sink.
pub struct Sqlite {
    cfg: Config,
    table: String,
    /// Opened by [`Sink::open`]; `new` touches no file, so that `gateway check` does not
    /// create the database.
    store: Option<store::Store>,
    /// Whether a store was opened: only the first open makes the file's directory.
    opened: bool,
}

impl Sink for Sqlite {
    const ID: &'static str = "sqlite";
    const DESCRIPTION: &'static str =
        "stores readings in a SQLite file (WAL), one transaction per batch";

    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        let mut cfg: Config = ctx.parse_config()?;
        cfg.path = ctx.resolve_path(&cfg.path);
        Ok(Sqlite {
            cfg,
            table: ctx.info().table.to_string(),
            store: None,
            opened: false,
        })
    }

    fn open(&mut self) -> Result<(), PluginError> {
        let store = store::Store::open(&self.cfg, !self.opened).map_err(|e| self.named(e))?;
        tracing::info!(path = %self.cfg.path.display(), "SQLite store open");
        self.store = Some(store);
        self.opened = true;
        Ok(())
    }

    fn close(&mut self) -> Result<(), PluginError> {
        match self.store.take() {
            Some(mut store) => store.checkpoint().map_err(|e| self.named(e)),
            None => Ok(()),
        }
    }

    fn write(&mut self, batch: &[Reading]) -> Result<(), PluginError> {
        // A file moved or deleted under the sink, or a table gone from it, is made again by
        // opening the path again: the connection would fail at each write for ever, or write
        // to a file nobody reads. The old one is checkpointed and closed first, so that its
        // WAL is empty when a new file takes its name; while that cannot finish, it stays.
        if let Some(store) = self.store.as_mut() {
            if store
                .reopen_needed()
                .map_err(|e| Self::name(&self.table, e))?
            {
                tracing::warn!(path = %self.cfg.path.display(), "the database file was moved, replaced or deleted, or its readings table is gone: opening the path again");
                store.checkpoint().map_err(|e| Self::name(&self.table, e))?;
                self.store = None;
            }
        }
        if self.store.is_none() {
            self.open()?;
        }
        let store = self.store.as_mut().expect("opened");
        let before = store.duplicates;
        store.write(batch)?;
        if store.duplicates > before {
            tracing::debug!(
                duplicates = store.duplicates - before,
                "readings already stored were skipped"
            );
        }
        Ok(())
    }
}

impl Sqlite {
    /// `e` with the instance's table name in front.
    fn name(table: &str, e: PluginError) -> PluginError {
        PluginError::new(e.kind, format!("[{table}] {}", e.message()))
    }

    fn named(&self, e: PluginError) -> PluginError {
        Self::name(&self.table, e)
    }
}

gateway_sdk::export!(sinks: [Sqlite]);
