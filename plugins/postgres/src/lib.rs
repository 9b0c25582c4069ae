//! `postgres`: a sink that stores readings in PostgreSQL: each batch by binary COPY into the
//! readings table in one transaction, acknowledged only after COMMIT; a batch that holds a
//! reading stored before goes again through a staging table and `INSERT ... ON CONFLICT DO
//! NOTHING`. The reading's id, device and time are the primary key, so a re-delivered reading
//! is not stored twice. I/O: the database, on the
//! plugin's own tokio runtime.
#![forbid(unsafe_code)]

pub mod config;
pub mod store;

use config::Config;
use gateway_sdk::{tracing, InitContext, PluginError, Reading, Sink};

/// The sink.
pub struct Postgres {
    store: store::Store,
    table: String,
}

impl Sink for Postgres {
    const ID: &'static str = "postgres";
    const DESCRIPTION: &'static str =
        "stores readings in PostgreSQL (COPY, ON CONFLICT DO NOTHING), one transaction per batch";

    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        let mut cfg: Config = ctx.parse_config()?;
        cfg.tls_ca_file = cfg
            .tls_ca_file
            .map(|p| ctx.trusted_file("tls_ca_file", p))
            .transpose()?;
        let password = ctx.secret(
            "password",
            None,
            cfg.password_env.as_deref(),
            cfg.password_file.as_deref(),
        )?;
        let table = ctx.info().table.to_string();
        let store = store::Store::new(&cfg, password)
            .map_err(|e| PluginError::new(e.kind, format!("[{table}] {}", e.message())))?;
        Ok(Postgres { store, table })
    }

    fn open(&mut self) -> Result<(), PluginError> {
        self.store.open()?;
        tracing::info!(table = %self.table, "PostgreSQL connected, table ready");
        Ok(())
    }

    fn write(&mut self, batch: &[Reading]) -> Result<(), PluginError> {
        let new = self.store.write(batch)?;
        if (new as usize) < batch.len() {
            tracing::debug!(
                duplicates = batch.len() - new as usize,
                "readings already stored were skipped"
            );
        }
        Ok(())
    }
}

gateway_sdk::export!(sinks: [Postgres]);
