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
        })
    }

    fn open(&mut self) -> Result<(), PluginError> {
        let store = store::Store::open(&self.cfg)
            .map_err(|e| PluginError::new(e.kind, format!("[{}] {}", self.table, e.message())))?;
        tracing::info!(path = %self.cfg.path.display(), "SQLite store open");
        self.store = Some(store);
        Ok(())
    }

    fn write(&mut self, batch: &[Reading]) -> Result<(), PluginError> {
        // A file moved or deleted under the sink, or a table gone from it, is made again by
        // opening the path again: the connection would fail at each write for ever, or write
        // to a file nobody reads. The old one is closed first, so that its WAL is empty when
        // a new file takes its name.
        if let Some(store) = self.store.take_if(|s| s.reopen_needed()) {
            tracing::warn!(path = %self.cfg.path.display(), "the database file was moved, replaced or deleted, or its readings table is gone: opening the path again");
            store.close();
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

gateway_sdk::export!(sinks: [Sqlite]);
