//! One line per reading.

use gateway_sdk::{Reading, Value};
use std::fmt::Write;

/// Appends the text form of `r` (its `Display`) to `out`.
pub fn text_line(r: &Reading, out: &mut String) {
    let _ = write!(out, "{r}");
}

/// Appends `r` as one JSON object to `out`.
pub fn json_line(r: &Reading, out: &mut String) {
    let value = match &r.value {
        Value::Float(v) => serde_json::json!(v),
        Value::Int(v) => serde_json::json!(v),
        Value::Bool(v) => serde_json::json!(v),
        Value::Text(v) => serde_json::json!(v.as_str()),
        Value::Bytes(v) => {
            serde_json::json!(v.iter().map(|b| format!("{b:02x}")).collect::<String>())
        }
    };
    let kind = match &r.value {
        Value::Float(_) => "float",
        Value::Int(_) => "int",
        Value::Bool(_) => "bool",
        Value::Text(_) => "text",
        Value::Bytes(_) => "bytes",
    };
    let obj = serde_json::json!({
        "id": r.id.to_string(),
        "time": r.time.to_string(),
        "device": r.device.as_str(),
        "sensor": r.sensor.as_str(),
        "name": r.name.as_str(),
        "unit": r.unit.as_str(),
        "type": kind,
        "value": value,
    });
    let _ = write!(out, "{obj}");
}
