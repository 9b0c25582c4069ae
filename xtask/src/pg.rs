//! `cargo xtask bench-pg`: the `postgres` sink beside PostgreSQL's own bulk path, in one run on
//! the machine's PostgreSQL (Unix socket, as root, database `test`):
//!
//! - COPY: `psql`'s `\copy` of 500,000 rows of the sink's shape from a CSV file into an empty
//!   table of the sink's schema (primary key and indexes included);
//! - the sink: `bench/postgres.toml`, the null source into the sink, batches of 1000, into an
//!   empty table, as `gateway run --until-sources-finish` reports it.
//!
//! Prints rows/s for each and the ratio, three times.

use crate::root;
use anyhow::{bail, Context, Result};
use std::{io::Write as _, path::Path, process::Command, time::Instant};

const ROWS: usize = 500_000;

/// What `sql` prints, run as root on database `test` through the Unix socket.
pub(crate) fn psql(sql: &str) -> Result<String> {
    let out = Command::new("psql")
        .args([
            "-h",
            "/var/run/postgresql",
            "-U",
            "root",
            "-d",
            "test",
            "-At",
            "-c",
            sql,
        ])
        .output()
        .context("cannot run psql")?;
    if !out.status.success() {
        bail!("psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The sink's table, made here for the COPY (the sink makes its own the same way).
fn create(table: &str) -> Result<()> {
    psql(&format!("DROP TABLE IF EXISTS {table}"))?;
    psql(&format!(
        "CREATE TABLE {table} (id bytea NOT NULL, time_us bigint NOT NULL, device text NOT NULL,
         sensor text NOT NULL, name text NOT NULL, unit text NOT NULL,
         value_type text NOT NULL CHECK (value_type IN ('float', 'int', 'bool', 'text', 'bytes')),
         value_float double precision NULL, value_int bigint NULL, value_text text NULL,
         value_bytes bytea NULL, PRIMARY KEY (id, device, time_us));
         CREATE INDEX {table}_latest ON {table} (device, sensor, name, time_us);
         CREATE INDEX {table}_by_time ON {table} (time_us);"
    ))?;
    Ok(())
}

/// Rows/s of `\copy` of [`ROWS`] rows from a CSV file.
fn copy(csv: &Path) -> Result<f64> {
    create("gw_bench_copy")?;
    let started = Instant::now();
    psql(&format!(
        "\\copy gw_bench_copy (id, time_us, device, sensor, name, unit, value_type, value_float) FROM '{}' CSV",
        csv.display()
    ))?;
    let secs = started.elapsed().as_secs_f64();
    let n: usize = psql("SELECT count(*) FROM gw_bench_copy")?.parse()?;
    if n != ROWS {
        bail!("COPY stored {n} rows, not {ROWS}");
    }
    Ok(ROWS as f64 / secs)
}

/// Rows/s of the sink, from the host's own figure.
fn sink(gateway: &Path) -> Result<f64> {
    psql("DROP TABLE IF EXISTS gw_bench_sink")?;
    let out = Command::new(gateway)
        .current_dir(root())
        .args([
            "run",
            "--config",
            "bench/postgres.toml",
            "--until-sources-finish",
            "--log-level",
            "info",
        ])
        .env_remove("GATEWAY_LOG")
        .output()?;
    let (_, rate) = crate::sink_wrote(&out)?;
    let n: usize = psql("SELECT count(*) FROM gw_bench_sink")?.parse()?;
    if n != ROWS {
        bail!("the sink stored {n} rows, not {ROWS}");
    }
    Ok(rate)
}

pub fn bench(dir: &Path) -> Result<()> {
    let gateway = dir.join("gateway");
    let csv = std::env::temp_dir().join(format!("gw-bench-{}.csv", std::process::id()));
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&csv)?);
        let t0: i64 = 1_764_000_000_000_000;
        for i in 0..ROWS {
            writeln!(
                f,
                "\\x{:032x},{},bench,null,value,1,float,{}",
                i as u128 * 7919 + 1,
                t0 + i as i64,
                i as f64
            )?;
        }
    }
    println!(
        "   {ROWS} rows each, into an empty table with the sink's schema (key and two indexes):"
    );
    for round in 1..=3 {
        let theirs = copy(&csv)?;
        let ours = sink(&gateway)?;
        println!(
            "   run {round}: COPY {theirs:>9.0} rows/s | postgres sink {ours:>9.0} readings/s = {:.0} %",
            ours / theirs * 100.0
        );
    }
    let _ = std::fs::remove_file(&csv);
    psql("DROP TABLE IF EXISTS gw_bench_copy")?;
    psql("DROP TABLE IF EXISTS gw_bench_sink")?;
    Ok(())
}
