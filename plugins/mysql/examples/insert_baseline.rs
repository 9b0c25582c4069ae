//! The baseline for the end-to-end figure: plain multi-row INSERTs (1000 rows each, one
//! transaction per statement) into a table of the plugin's schema, straight from one client,
//! with nothing of the gateway in between.
//!
//! `cargo run --release -p gateway-plugin-mysql --example insert_baseline -- URL [ROWS]`,
//! e.g. `mysql://root@127.0.0.1:3306/gw_bench 200000`. It drops and recreates table `baseline`.

use mysql::store::{create_table, insert_sql, ROWS_PER_INSERT as PER_INSERT};
use mysql_async::{prelude::*, Params, Value};
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "mysql://root@127.0.0.1:3306/gw_bench".into());
    let rows: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let pool = mysql_async::Pool::new(url.as_str());
        let mut c = pool.get_conn().await.expect("connect");
        c.query_drop("DROP TABLE IF EXISTS baseline").await.unwrap();
        c.query_drop(create_table("baseline")).await.unwrap();
        let sql = insert_sql("baseline", PER_INSERT);
        let started = Instant::now();
        let mut done = 0;
        while done < rows {
            let mut values = Vec::with_capacity(PER_INSERT * 11);
            for i in done..done + PER_INSERT {
                let mut id = [0u8; 16];
                id[8..].copy_from_slice(&(i as u64).to_be_bytes());
                values.extend([
                    Value::Bytes(id.to_vec()),
                    Value::Int(1_760_000_000_000_000 + i as i64),
                    Value::Bytes(b"pi-01".to_vec()),
                    Value::Bytes(b"seq".to_vec()),
                    Value::Bytes(b"seq".to_vec()),
                    Value::Bytes(Vec::new()),
                    Value::Bytes(b"int".to_vec()),
                    Value::NULL,
                    Value::Int(i as i64),
                    Value::NULL,
                    Value::NULL,
                ]);
            }
            let mut tx = c.start_transaction(Default::default()).await.unwrap();
            tx.exec_drop(sql.as_str(), Params::Positional(values))
                .await
                .unwrap();
            tx.commit().await.unwrap();
            done += PER_INSERT;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "baseline: {done} rows in {secs:.2} s = {:.0} rows/s (multi-row INSERTs of {PER_INSERT} rows, one transaction each)",
            done as f64 / secs
        );
        c.query_drop("DROP TABLE baseline").await.unwrap();
        drop(c);
        pool.disconnect().await.unwrap();
    });
}
