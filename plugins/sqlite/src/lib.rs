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
    store: store::Store,
}

impl Sink for Sqlite {
    const ID: &'static str = "sqlite";
    const DESCRIPTION: &'static str =
        "stores readings in a SQLite file (WAL), one transaction per batch";

    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        let mut cfg: Config = ctx.parse_config()?;
        cfg.path = ctx.resolve_path(&cfg.path);
        let store = store::Store::open(&cfg).map_err(|e| {
            PluginError::new(e.kind, format!("[{}] {}", ctx.info().table, e.message()))
        })?;
        tracing::info!(path = %cfg.path.display(), "SQLite store open");
        Ok(Sqlite { store })
    }

    fn write(&mut self, batch: &[Reading]) -> Result<(), PluginError> {
        let before = self.store.duplicates;
        self.store.write(batch)?;
        if self.store.duplicates > before {
            tracing::debug!(
                duplicates = self.store.duplicates - before,
                "readings already stored were skipped"
            );
        }
        Ok(())
    }
}

gateway_sdk::export!(sinks: [Sqlite]);
