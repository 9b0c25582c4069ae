//! The Grafana dashboard, `grafana/gateway.json`: it declares the data sources it is imported
//! with and every panel uses one of them; its SQL is the text of `grafana/queries.sql`; its
//! Prometheus queries name metrics the gateway exports; and each SQL query, with Grafana's macros
//! replaced by literals, returns what the readings written through the sink imply, through an
//! index, on the real server (see `support`).

mod support;

use gateway_sdk::{testing::SinkHarness, Label, Reading, ReadingId, Timestamp, Value};
use mysql::Mysql;
use mysql_async::{from_value, Row};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use support::TestDb;

const DASHBOARD: &str = include_str!("../grafana/gateway.json");
const QUERIES: &str = include_str!("../grafana/queries.sql");

fn dashboard() -> Json {
    serde_json::from_str(DASHBOARD).expect("gateway.json is JSON")
}

/// Every panel but rows, including those inside collapsed rows.
fn panels(d: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().into_iter().flatten());
        } else {
            out.push(p);
        }
    }
    out
}

/// The dashboard's SQL: `panel: TITLE` or `variable: NAME`, to the query text.
fn dashboard_sql(d: &Json) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for p in panels(d)
        .into_iter()
        .filter(|p| p["datasource"]["type"] == "mysql")
    {
        let targets = p["targets"].as_array().expect("targets");
        assert_eq!(
            targets.len(),
            1,
            "{}: one query per MySQL panel",
            p["title"]
        );
        let sql = targets[0]["rawSql"].as_str().expect("rawSql");
        let key = format!("panel: {}", p["title"].as_str().unwrap());
        assert!(
            out.insert(key.clone(), sql.to_owned()).is_none(),
            "{key} twice"
        );
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        if v["datasource"]["type"] == "mysql" {
            let key = format!("variable: {}", v["name"].as_str().unwrap());
            let sql = v["query"]
                .as_str()
                .expect("a SQL variable's query is a string");
            assert_eq!(v["definition"], v["query"], "{key}");
            assert!(
                out.insert(key.clone(), sql.to_owned()).is_none(),
                "{key} twice"
            );
        }
    }
    out
}

/// `queries.sql`: each query follows a `-- panel: TITLE` or `-- variable: NAME` line and runs
/// to the next one; the comment lines at the top belong to none.
fn queries_sql() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, Vec<&str>)> = None;
    let mut finish = |c: Option<(String, Vec<&str>)>| {
        if let Some((key, lines)) = c {
            let sql = lines.join("\n").trim().to_owned();
            assert!(out.insert(key.clone(), sql).is_none(), "{key} twice");
        }
    };
    for line in QUERIES.lines() {
        let header = line
            .strip_prefix("-- ")
            .filter(|h| h.starts_with("panel: ") || h.starts_with("variable: "));
        match (header, &mut current) {
            (Some(h), _) => finish(current.replace((h.to_owned(), Vec::new()))),
            (None, Some((_, lines))) => lines.push(line),
            (None, None) => {}
        }
    }
    finish(current);
    out
}

#[test]
fn the_dashboard_declares_its_data_sources_and_every_panel_uses_one() {
    let d = dashboard();
    assert_eq!(d["schemaVersion"], 39);
    // What the import form asks for: `${NAME}` stands for the data source picked.
    let inputs: BTreeMap<String, &Json> = d["__inputs"]
        .as_array()
        .expect("__inputs")
        .iter()
        .map(|i| (format!("${{{}}}", i["name"].as_str().unwrap()), i))
        .collect();
    assert_eq!(inputs["${DS_MYSQL}"]["type"], "datasource");
    assert_eq!(inputs["${DS_MYSQL}"]["pluginId"], "mysql");
    assert_eq!(inputs["${DS_PROMETHEUS}"]["type"], "datasource");
    assert_eq!(inputs["${DS_PROMETHEUS}"]["pluginId"], "prometheus");
    assert_eq!(inputs["${VAR_VIEW}"]["type"], "constant");
    assert_eq!(
        inputs["${VAR_VIEW}"]["value"],
        mysql::store::view_name("readings"),
        "the default is the view of the default table"
    );
    let declared = |ds: &Json, what: &str| {
        let uid = ds["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no data source"));
        let input = inputs
            .get(uid)
            .unwrap_or_else(|| panic!("{what}: data source {uid} is not in __inputs"));
        assert_eq!(input["type"], "datasource", "{what}");
        assert_eq!(ds["type"], input["pluginId"], "{what}: type of {uid}");
    };
    let requires: Vec<(&str, &str)> = d["__requires"]
        .as_array()
        .expect("__requires")
        .iter()
        .map(|r| (r["type"].as_str().unwrap(), r["id"].as_str().unwrap()))
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    let all = panels(&d);
    assert!(all.len() >= 10, "{} panels", all.len());
    for p in all {
        let title = p["title"].as_str().expect("a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("an id")),
            "{title}: id taken"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{title}: gridPos");
        declared(&p["datasource"], title);
        let kind = p["type"].as_str().unwrap();
        assert!(
            requires.contains(&("panel", kind)),
            "{kind} not in __requires"
        );
        let ds_kind = p["datasource"]["type"].as_str().unwrap();
        assert!(requires.contains(&("datasource", ds_kind)), "{ds_kind}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(
                t["datasource"], p["datasource"],
                "{title}: target's data source"
            );
            if ds_kind == "mysql" {
                assert_eq!(t["rawQuery"], true, "{title}");
                assert_eq!(t["editorMode"], "code", "{title}");
                let format = if kind == "timeseries" {
                    "time_series"
                } else {
                    "table"
                };
                assert_eq!(t["format"], format, "{title}");
            } else {
                assert!(t["expr"].as_str().is_some(), "{title}: a PromQL expr");
            }
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        let name = v["name"].as_str().unwrap();
        match v["type"].as_str().unwrap() {
            "query" => declared(&v["datasource"], name),
            "constant" => assert_eq!(v["query"], "${VAR_VIEW}", "{name}"),
            other => panic!("{name}: variable of type {other}"),
        }
    }
}

#[test]
fn queries_sql_holds_the_dashboards_sql_word_for_word() {
    let in_json = dashboard_sql(&dashboard());
    let in_file = queries_sql();
    assert_eq!(
        in_json.keys().collect::<Vec<_>>(),
        in_file.keys().collect::<Vec<_>>(),
        "the same panels and variables"
    );
    for (key, sql) in &in_json {
        assert_eq!(
            sql, &in_file[key],
            "{key}: gateway.json and queries.sql differ"
        );
        // The time range is a range of time_us, never of the computed `time` column.
        assert!(!sql.contains("$__timeFilter"), "{key}");
        if sql.contains("$__unixEpochFrom()") {
            assert!(sql.contains("WHERE time_us BETWEEN $__unixEpochFrom() * 1000000 AND $__unixEpochTo() * 1000000 + 999999"), "{key}");
        }
    }
}

#[test]
fn prometheus_panels_ask_for_metrics_the_gateway_exports() {
    let metrics_rs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../host/src/metrics.rs"),
    )
    .expect("host/src/metrics.rs");
    let d = dashboard();
    let mut used = std::collections::BTreeSet::new();
    for p in panels(&d)
        .into_iter()
        .filter(|p| p["datasource"]["type"] == "prometheus")
    {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            assert!(
                expr.contains("instance=~\"$gateway\""),
                "{expr}: the gateway filter"
            );
            for (i, _) in expr.match_indices("gateway_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                assert!(
                    metrics_rs.contains(&format!("\"{name}\"")),
                    "{name} is not a metric of host/src/metrics.rs"
                );
                used.insert(name);
            }
        }
    }
    for name in [
        "gateway_sink_written_total",
        "gateway_sink_pending_readings",
        "gateway_buffer_readings",
        "gateway_buffer_oldest_age_seconds",
        "gateway_sink_retries_total",
        "gateway_ready",
    ] {
        assert!(used.contains(name), "no panel shows {name}");
    }
}

/// 2026-11-25 16:00:00 UTC, in seconds: the start of the ten minutes the panels look at.
const W: i64 = 1_795_622_400;
/// History before W: one reading of each series every five minutes, for two weeks.
const HISTORY: i64 = 4032;
/// In the window: one reading of each series every ten seconds, for ten minutes.
const WINDOW: i64 = 60;

/// Microseconds each series' readings come after the whole second: the sensors' clocks do
/// not agree, and buckets must still line up.
const SERIES: [(&str, &str, &str, &str, i64); 7] = [
    ("pi-01", "28-0316a2791eff", "temperature", "Cel", 123_456),
    ("pi-01", "28-0416b3a21cff", "temperature", "Cel", 234_567),
    ("pi-02", "28-5a1d00000001", "temperature", "Cel", 345_678),
    ("pi-01", "gps", "latitude", "lat", 683_050),
    ("pi-01", "gps", "longitude", "lon", 683_050),
    ("pi-02", "gps", "latitude", "lat", 912_000),
    ("pi-02", "gps", "longitude", "lon", 912_000),
];

/// Series `s`'s value at step `i` (negative: history).
fn value(s: usize, i: i64) -> f64 {
    let i = i as f64;
    match s {
        0 => 20.0 + 0.0625 * i,
        1 => 4.0 - 0.0625 * i,
        2 => 30.0 + 0.125 * (i.rem_euclid(8.0)),
        3 => 40.035 + 0.0001 * i,
        4 => -75.52 - 0.0002 * i,
        5 => 48.137 + 0.0001 * i,
        _ => 11.575 + 0.0001 * i,
    }
}

/// The time of series `s`'s reading at window step `i` (history: `i` negative, five minutes
/// apart), in microseconds.
fn time_us(s: usize, i: i64) -> i64 {
    let secs = if i >= 0 { W + 10 * i } else { W + 300 * i };
    secs * 1_000_000 + SERIES[s].4
}

/// Fills a database through the sink: the history and the window of every series, and in the
/// window pi-01's GPS also sends altitude, fix type and satellites, as ublox7 does.
fn fill(tag: &str) -> TestDb {
    let db = TestDb::new(tag);
    let mut n = 0u64;
    let mut reading = |device: &str, sensor: &str, name: &str, unit: &str, t: i64, v: Value| {
        n += 1;
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&n.to_be_bytes());
        Reading {
            id: ReadingId(id),
            time: Timestamp(t),
            device: Label::from(device),
            sensor: Label::from(sensor),
            name: Label::from(name),
            unit: Label::from(unit),
            value: v,
        }
    };
    let mut batch = Vec::new();
    for i in (-HISTORY..0).chain(0..WINDOW) {
        for (s, (device, sensor, name, unit, _)) in SERIES.iter().enumerate() {
            let v = Value::Float(value(s, i));
            batch.push(reading(device, sensor, name, unit, time_us(s, i), v));
        }
        if i >= 0 {
            let t = time_us(3, i);
            batch.push(reading(
                "pi-01",
                "gps",
                "altitude",
                "m",
                t,
                Value::Float(183.8),
            ));
            batch.push(reading(
                "pi-01",
                "gps",
                "fix_type",
                "",
                t,
                Value::Text("3D".into()),
            ));
            batch.push(reading(
                "pi-01",
                "gps",
                "satellites_used",
                "",
                t,
                Value::Int(8),
            ));
        }
    }
    let mut sink = SinkHarness::new::<Mysql>(&db.config("")).unwrap();
    sink.write(batch).unwrap();
    let _: Vec<Row> = db.query("ANALYZE TABLE readings");
    db
}

/// What Grafana puts in place of the macros and variables.
struct Macros<'a> {
    from: i64,
    to: i64,
    interval_ms: u64,
    device: &'a [&'a str],
    probe: &'a [&'a str],
    gps_device: &'a str,
}

/// The ten minutes, every device and probe, buckets of a minute.
const WINDOW_ALL: Macros<'static> = Macros {
    from: W,
    to: W + 600 - 1,
    interval_ms: 60_000,
    device: &["pi-01", "pi-02"],
    probe: &["28-0316a2791eff", "28-0416b3a21cff", "28-5a1d00000001"],
    gps_device: "pi-01",
};

/// `${x:sqlstring}`: each value quoted, `'` doubled, joined by commas.
fn sqlstring(values: &[&str]) -> String {
    let quoted: Vec<String> = values
        .iter()
        .map(|v| format!("'{}'", v.replace('\'', "''")))
        .collect();
    quoted.join(",")
}

impl Macros<'_> {
    fn apply(&self, sql: &str) -> String {
        let sql = sql
            .replace("$__unixEpochFrom()", &self.from.to_string())
            .replace("$__unixEpochTo()", &self.to.to_string())
            .replace("$__interval_ms", &self.interval_ms.to_string())
            .replace("${device:sqlstring}", &sqlstring(self.device))
            .replace("${probe:sqlstring}", &sqlstring(self.probe))
            .replace("${gps_device:sqlstring}", &sqlstring(&[self.gps_device]))
            .replace("${view}", &mysql::store::view_name("readings"));
        assert!(!sql.contains('$'), "a macro left in:\n{sql}");
        sql
    }
}

/// A DATETIME as the text protocol sends it (`2026-11-25 16:00:00.123456`), in microseconds
/// since the Unix epoch (UTC, as the view's times are).
fn datetime_us(v: &mysql_async::Value) -> i64 {
    let s: String = from_value(v.clone());
    let num = |r: std::ops::Range<usize>| -> i64 { s[r].parse().unwrap() };
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    // Days from 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + num(11..13) * 3600 + num(14..16) * 60 + num(17..19);
    let micros = if s.len() > 20 { num(20..26) } else { 0 };
    secs * 1_000_000 + micros
}

fn run(db: &TestDb, sql: &str, m: &Macros<'_>) -> Vec<Row> {
    db.query(&m.apply(sql))
}

fn col<T: mysql_async::prelude::FromValue>(r: &Row, i: usize) -> T {
    from_value(r[i].clone())
}

#[test]
fn the_dashboards_queries_return_what_the_readings_imply() {
    let db = fill("grafana");
    let sql = dashboard_sql(&dashboard());
    for (key, sql) in &sql {
        match key.as_str() {
            "variable: device" | "variable: gps_device" => {
                let rows = run(&db, sql, &WINDOW_ALL);
                let v: Vec<String> = rows.iter().map(|r| col(r, 0)).collect();
                assert_eq!(v, ["pi-01", "pi-02"], "{key}");
            }
            "variable: probe" => {
                let rows = run(&db, sql, &WINDOW_ALL);
                let v: Vec<String> = rows.iter().map(|r| col(r, 0)).collect();
                assert_eq!(v, WINDOW_ALL.probe, "{key}");
                let pi02 = Macros {
                    device: &["pi-02"],
                    ..WINDOW_ALL
                };
                let v: Vec<String> = run(&db, sql, &pi02).iter().map(|r| col(r, 0)).collect();
                assert_eq!(v, ["28-5a1d00000001"], "{key}: pi-02's only");
            }
            "panel: Temperature per probe" => {
                // Buckets of a minute: the mean of six readings; of ten seconds: each reading.
                for (interval_ms, per_bucket) in [(60_000u64, 6i64), (10_000, 1)] {
                    let m = Macros {
                        interval_ms,
                        ..WINDOW_ALL
                    };
                    let rows = run(&db, sql, &m);
                    let buckets = WINDOW / per_bucket;
                    assert_eq!(rows.len() as i64, 3 * buckets, "{key}: 3 probes");
                    for (n, r) in rows.iter().enumerate() {
                        let (b, s) = (n as i64 / 3, n % 3);
                        let (device, sensor, ..) = SERIES[s];
                        assert_eq!(datetime_us(&r[0]), (W + b * per_bucket * 10) * 1_000_000);
                        assert_eq!(col::<String>(r, 1), format!("{device} {sensor}"));
                        let steps = b * per_bucket..(b + 1) * per_bucket;
                        let mean = steps.map(|i| value(s, i)).sum::<f64>() / per_bucket as f64;
                        let got: f64 = col(r, 2);
                        assert!((got - mean).abs() < 1e-9, "{key} {n}: {got} != {mean}");
                    }
                }
                let pi02 = Macros {
                    device: &["pi-02"],
                    ..WINDOW_ALL
                };
                let rows = run(&db, sql, &pi02);
                assert_eq!(rows.len(), 10, "{key}: pi-02's one probe");
                assert!(rows
                    .iter()
                    .all(|r| col::<String>(r, 1) == "pi-02 28-5a1d00000001"));
            }
            "panel: GPS track" => {
                for (device, lat, lon) in [("pi-01", 3, 4), ("pi-02", 5, 6)] {
                    let m = Macros {
                        gps_device: device,
                        ..WINDOW_ALL
                    };
                    let rows = run(&db, sql, &m);
                    assert_eq!(
                        rows.len() as i64,
                        WINDOW,
                        "{key} {device}: one point per fix"
                    );
                    for (i, r) in rows.iter().enumerate() {
                        let i = i as i64;
                        assert_eq!(datetime_us(&r[0]), time_us(lat, i), "{key} {device} {i}");
                        assert_eq!(col::<f64>(r, 1), value(lat, i), "{key} {device} {i}");
                        assert_eq!(col::<f64>(r, 2), value(lon, i), "{key} {device} {i}");
                    }
                }
                // Over all the history: the last 2,000 fixes, oldest first.
                let all = Macros {
                    from: W - HISTORY * 300,
                    ..WINDOW_ALL
                };
                let rows = run(&db, sql, &all);
                assert_eq!(rows.len(), 2000, "{key}: LIMIT");
                let first = WINDOW - 2000;
                assert_eq!(datetime_us(&rows[0][0]), time_us(3, first));
                assert_eq!(col::<f64>(&rows[0], 1), value(3, first));
                assert_eq!(datetime_us(&rows[1999][0]), time_us(3, WINDOW - 1));
            }
            "panel: Readings per minute, per device" => {
                // Every ten seconds pi-01 sends 2 temperatures and 5 GPS values, pi-02 1 and 2:
                // 42 and 18 a minute, whatever the bucket width.
                for (interval_ms, buckets) in [(60_000u64, 10i64), (120_000, 5)] {
                    let m = Macros {
                        interval_ms,
                        ..WINDOW_ALL
                    };
                    let rows = run(&db, sql, &m);
                    assert_eq!(rows.len() as i64, 2 * buckets, "{key}");
                    for (n, r) in rows.iter().enumerate() {
                        let (b, pi01) = (n as i64 / 2, n % 2 == 0);
                        let bucket_us = (W + b * interval_ms as i64 / 1000) * 1_000_000;
                        assert_eq!(datetime_us(&r[0]), bucket_us, "{key} {n}");
                        let device = if pi01 { "pi-01" } else { "pi-02" };
                        assert_eq!(col::<String>(r, 1), device, "{key} {n}");
                        assert_eq!(col::<f64>(r, 2), if pi01 { 42.0 } else { 18.0 }, "{key}");
                    }
                }
            }
            "panel: Last seen" => {
                let rows = run(&db, sql, &WINDOW_ALL);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64;
                let last = [time_us(3, WINDOW - 1), time_us(5, WINDOW - 1)];
                assert_eq!(rows.len(), 2, "{key}");
                for (r, (device, last, series)) in rows
                    .iter()
                    .zip([("pi-01", last[0], 7u64), ("pi-02", last[1], 3)])
                {
                    assert_eq!(col::<String>(r, 0), device, "{key}");
                    assert_eq!(datetime_us(&r[1]), last, "{key} {device}");
                    let silent: i64 = col(r, 2);
                    assert!(
                        (silent - (now - last / 1_000_000)).abs() <= 5,
                        "{key}: {silent}"
                    );
                    assert_eq!(
                        col::<u64>(r, 3),
                        series,
                        "{key} {device}: sensor and name pairs"
                    );
                }
            }
            other => panic!("{other}: the test does not know what it should return"),
        }
    }
}

#[test]
fn the_dashboards_queries_use_an_index() {
    let db = fill("grafana_explain");
    let total: Vec<u64> = db.query("SELECT COUNT(*) FROM readings");
    eprintln!("{} rows; the window holds {}", total[0], WINDOW * 10);
    for (key, sql) in dashboard_sql(&dashboard()) {
        let rows: Vec<Row> = db.query(&format!("EXPLAIN {}", WINDOW_ALL.apply(&sql)));
        eprintln!("{key}");
        let mut tables = 0;
        for r in &rows {
            let get = |c: &str| -> Option<String> {
                r.get_opt::<Option<String>, _>(c)
                    .and_then(Result::ok)
                    .flatten()
            };
            let (table, kind, key_used) = (get("table"), get("type"), get("key"));
            eprintln!(
                "  table={} type={} key={} rows={} extra={}",
                table.as_deref().unwrap_or("NULL"),
                kind.as_deref().unwrap_or("NULL"),
                key_used.as_deref().unwrap_or("NULL"),
                get("rows").as_deref().unwrap_or("NULL"),
                get("Extra").as_deref().unwrap_or(""),
            );
            // Derived tables (`<derived2>`) are the query's own small results: only the
            // readings table must be read through an index, and a range of it, not all of it.
            let table = table.unwrap_or_default();
            if table.starts_with('<') {
                continue;
            }
            tables += 1;
            assert_eq!(table, "readings", "{key}");
            assert!(key_used.is_some(), "{key}: no index used");
            let kind = kind.unwrap_or_default();
            assert!(
                ["range", "ref", "eq_ref", "const"].contains(&kind.as_str()),
                "{key}: access type {kind} reads the whole table or index"
            );
        }
        assert!(tables > 0, "{key}: reads no table?");
    }
}

/// Grafana's `sqlstring` doubles quotes but leaves backslashes, which MySQL reads as escapes:
/// a sensor name a device chose, `x\' ) OR (1=1 -- `, would end the quoted string and run its
/// own SQL in every panel that lists the probes (and a device name could do the same). The
/// variables leave out every name with a backslash, so none reaches a panel's SQL, and the
/// panels, fed what the variables list, show the other readings as before.
#[test]
fn a_name_with_a_backslash_never_reaches_the_dashboards_sql() {
    let db = fill("grafana_backslash");
    let evil = "x\\' ) OR (1=1 -- ";
    let t = time_us(0, 0);
    let reading = |n: u8, device: &str, sensor: &str, name: &str| Reading {
        id: ReadingId([n; 16]),
        time: Timestamp(t),
        device: Label::from(device),
        sensor: Label::from(sensor),
        name: Label::from(name),
        unit: Label::from("Cel"),
        value: Value::Float(99.0),
    };
    let mut sink = SinkHarness::new::<Mysql>(&db.config("")).unwrap();
    sink.write(vec![
        reading(0xe1, "pi-01", evil, "temperature"),
        reading(0xe2, "pi\\03", "28-0316a2791eff", "temperature"),
        reading(0xe3, "pi\\03", "gps", "latitude"),
    ])
    .unwrap();
    // Nor may a viewer type a value of their own, or give one in the URL (Grafana 11.5 and
    // later honour this; before, any value could be given).
    let d = dashboard();
    for v in d["templating"]["list"].as_array().unwrap() {
        if ["device", "probe", "gps_device"].contains(&v["name"].as_str().unwrap()) {
            assert_eq!(v["allowCustomValue"], Json::Bool(false), "{}", v["name"]);
        }
    }
    let sql = dashboard_sql(&d);
    let listed = |key: &str, m: &Macros<'_>| -> Vec<String> {
        run(&db, &sql[key], m).iter().map(|r| col(r, 0)).collect()
    };
    assert_eq!(listed("variable: device", &WINDOW_ALL), ["pi-01", "pi-02"]);
    assert_eq!(
        listed("variable: gps_device", &WINDOW_ALL),
        ["pi-01", "pi-02"]
    );
    assert_eq!(listed("variable: probe", &WINDOW_ALL), WINDOW_ALL.probe);
    // The panel, fed what the variables list (as "All" does): the three probes' ten
    // one-minute buckets, as without the new rows.
    let (devices, probes) = (
        listed("variable: device", &WINDOW_ALL),
        listed("variable: probe", &WINDOW_ALL),
    );
    let devices: Vec<&str> = devices.iter().map(String::as_str).collect();
    let probes: Vec<&str> = probes.iter().map(String::as_str).collect();
    let all = Macros {
        device: &devices,
        probe: &probes,
        ..WINDOW_ALL
    };
    let rows = run(&db, &sql["panel: Temperature per probe"], &all);
    assert_eq!(rows.len(), 30);
    assert!(rows.iter().all(|r| !col::<String>(r, 1).contains('\\')));
}
