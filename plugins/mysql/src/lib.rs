//! `mysql`: a sink that stores readings in MySQL or MariaDB: batched multi-row inserts in one
//! transaction per batch, acknowledged only after COMMIT; the reading id is the primary key, so a
//! re-delivered reading is not stored twice. I/O: the database, on the plugin's own tokio
//! runtime.
#![forbid(unsafe_code)]

pub mod config;
pub mod keys;
pub mod servers;
pub mod store;

use config::Config;
use gateway_sdk::{tracing, InitContext, PluginError, Reading, Sink};

/// The sink.
pub struct Mysql {
    store: store::Store,
}

fn password(cfg: &Config, ctx: &InitContext) -> Result<Option<String>, PluginError> {
    ctx.secret(
        "password",
        None,
        cfg.password_env.as_deref(),
        cfg.password_file.as_deref(),
    )
}

impl Sink for Mysql {
    const ID: &'static str = "mysql";
    const DESCRIPTION: &'static str = "stores readings in MySQL/MariaDB, one transaction per batch";

    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        let mut cfg: Config = ctx.parse_config()?;
        cfg.tls_ca_file = cfg
            .tls_ca_file
            .map(|p| ctx.trusted_file("tls_ca_file", p))
            .transpose()?;
        let pw = password(&cfg, ctx)?;
        let store = store::Store::new(&cfg, pw).map_err(|e| {
            PluginError::new(e.kind, format!("[{}] {}", ctx.info().table, e.message()))
        })?;
        Ok(Mysql { store })
    }

    fn write(&mut self, batch: &[Reading]) -> Result<(), PluginError> {
        self.store.ensure_schema()?;
        store::check(batch)?;
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

gateway_sdk::export!(sinks: [Mysql]);
