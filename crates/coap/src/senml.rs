//! Readings as SenML (RFC 8428) packs, in CBOR (content-format 112) and JSON (110). No I/O.
//!
//! The mapping keeps everything the reading model carries:
//! - `bn` = the device followed by `:`; `n` = the sensor, `/`, the measurement name (a `/` or `%`
//!   in the measurement name is escaped as `%2F` / `%25`), so device, sensor and name come back
//!   apart;
//! - `bt` = the first reading's time, `t` = the offset from it, in seconds (µs exact);
//! - `bu` = the first unit, `u` only where a reading's unit differs;
//! - `v` (an integer stays an integer, a float a float), `vb`, `vs`, `vd`;
//! - `rid` = the reading's 16-byte id (a byte string in CBOR, 32 hex digits in JSON). A record
//!   without `rid` (from another SenML producer) gets an id derived from its content, so a
//!   re-sent record still maps to the same id.
//!
//! Base fields are repeated only when they change, so a batch of one device's readings carries
//! its device name and time base once.

use ciborium::value::Value as Cbor;
use gateway_sdk::{Label, Reading, ReadingId, Timestamp, Value};

/// SenML CBOR labels (RFC 8428, table 4).
mod label {
    pub const BN: i64 = -2;
    pub const BT: i64 = -3;
    pub const BU: i64 = -4;
    pub const BV: i64 = -5;
    pub const BVER: i64 = -1;
    pub const N: i64 = 0;
    pub const U: i64 = 1;
    pub const V: i64 = 2;
    pub const VS: i64 = 3;
    pub const VB: i64 = 4;
    pub const S: i64 = 5;
    pub const T: i64 = 6;
    pub const UT: i64 = 7;
    pub const VD: i64 = 8;
}
/// The extension field carrying the reading id.
pub const RID: &str = "rid";

/// CoAP content-format of SenML CBOR.
pub const CONTENT_FORMAT_CBOR: u16 = 112;
/// CoAP content-format of SenML JSON.
pub const CONTENT_FORMAT_JSON: u16 = 110;

/// Why a payload is not a SenML pack we can take.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not well-formed CBOR or JSON.
    #[error("not well-formed {0}")]
    Syntax(&'static str),
    /// The top level is not an array of records.
    #[error("a SenML pack is an array of records")]
    NotAnArray,
    /// A record is not a map.
    #[error("record {0} is not a map")]
    NotAMap(usize),
    /// A field has the wrong type.
    #[error("record {0}: field {1} has the wrong type")]
    FieldType(usize, &'static str),
    /// A record has no value.
    #[error("record {0} has no value (v, vs, vb or vd)")]
    NoValue(usize),
    /// The resolved name leaves the device, sensor or measurement name empty.
    #[error("record {0}: name {1:?} does not give a device, sensor and measurement name")]
    Name(usize, String),
    /// A time outside what a timestamp holds.
    #[error("record {0}: time out of range")]
    Time(usize),
    /// A must-understand field (ending in `_`) or an unknown `bver`.
    #[error("record {0}: field {1} is not understood")]
    MustUnderstand(usize, String),
    /// More records than allowed.
    #[error("more than {0} records")]
    TooMany(usize),
    /// The `rid` is not 16 bytes.
    #[error("record {0}: rid is not a 16-byte id")]
    Rid(usize),
}

fn escape(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains(['%', '/']) {
        name.replace('%', "%25").replace('/', "%2F").into()
    } else {
        name.into()
    }
}
fn unescape(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains('%') {
        name.replace("%2F", "/")
            .replace("%2f", "/")
            .replace("%25", "%")
            .into()
    } else {
        name.into()
    }
}

/// One record, before the base fields are applied.
#[derive(Default)]
struct Record {
    bn: Option<String>,
    bt: Option<f64>,
    bu: Option<String>,
    bv: Option<f64>,
    n: Option<String>,
    u: Option<String>,
    t: Option<f64>,
    value: Option<Value>,
    rid: Option<[u8; 16]>,
}

/// The fields of a record, in the order they are written.
fn records(batch: &[Reading]) -> Vec<Record> {
    let mut out = Vec::with_capacity(batch.len());
    let (mut bn, mut bu): (Option<&str>, Option<&str>) = (None, None);
    let bt = batch.first().map(|r| r.time.0).unwrap_or(0);
    for (i, r) in batch.iter().enumerate() {
        let mut rec = Record::default();
        if bn != Some(r.device.as_str()) {
            rec.bn = Some(format!("{}:", r.device));
            bn = Some(r.device.as_str());
        }
        if i == 0 {
            rec.bt = Some(bt as f64 / 1e6);
            if !r.unit.is_empty() {
                rec.bu = Some(r.unit.to_string());
                bu = Some(r.unit.as_str());
            }
        } else if bu != Some(r.unit.as_str()) && !r.unit.is_empty() {
            rec.u = Some(r.unit.to_string());
        }
        if i == 0 && r.unit.is_empty() {
            bu = None;
        } else if i > 0 && r.unit.is_empty() && bu.is_some() {
            // An empty unit after a base unit: say so explicitly.
            rec.u = Some(String::new());
        }
        rec.n = Some(format!("{}/{}", r.sensor, escape(&r.name)));
        let dt = r.time.0 - bt;
        if dt != 0 {
            rec.t = Some(dt as f64 / 1e6);
        }
        rec.value = Some(r.value.clone());
        rec.rid = Some(r.id.0);
        out.push(rec);
    }
    out
}

/// Encodes a batch as SenML CBOR.
pub fn encode_cbor(batch: &[Reading]) -> Vec<u8> {
    let recs = records(batch);
    let arr: Vec<Cbor> = recs
        .into_iter()
        .map(|r| {
            let mut m: Vec<(Cbor, Cbor)> = Vec::with_capacity(6);
            let k = |l: i64| Cbor::Integer(l.into());
            if let Some(bn) = r.bn {
                m.push((k(label::BN), Cbor::Text(bn)));
            }
            if let Some(bt) = r.bt {
                m.push((k(label::BT), Cbor::Float(bt)));
            }
            if let Some(bu) = r.bu {
                m.push((k(label::BU), Cbor::Text(bu)));
            }
            if let Some(n) = r.n {
                m.push((k(label::N), Cbor::Text(n)));
            }
            if let Some(u) = r.u {
                m.push((k(label::U), Cbor::Text(u)));
            }
            if let Some(t) = r.t {
                m.push((k(label::T), Cbor::Float(t)));
            }
            match r.value.expect("value") {
                Value::Float(v) => m.push((k(label::V), Cbor::Float(v))),
                Value::Int(v) => m.push((k(label::V), Cbor::Integer(v.into()))),
                Value::Bool(v) => m.push((k(label::VB), Cbor::Bool(v))),
                Value::Text(v) => m.push((k(label::VS), Cbor::Text(v.into()))),
                Value::Bytes(v) => m.push((k(label::VD), Cbor::Bytes(v.into()))),
            }
            if let Some(rid) = r.rid {
                m.push((Cbor::Text(RID.into()), Cbor::Bytes(rid.to_vec())));
            }
            Cbor::Map(m)
        })
        .collect();
    let mut out = Vec::with_capacity(batch.len() * 48);
    ciborium::into_writer(&Cbor::Array(arr), &mut out).expect("writing to a Vec cannot fail");
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn base64url(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    s
}

fn unbase64url(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for c in s.chunks(4) {
        if c.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, &b) in c.iter().enumerate() {
            n |= val(b)? << (18 - 6 * i);
        }
        for i in 0..c.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// Encodes a batch as SenML JSON.
pub fn encode_json(batch: &[Reading]) -> Vec<u8> {
    use serde_json::{json, Map, Value as J};
    let arr: Vec<J> = records(batch)
        .into_iter()
        .map(|r| {
            let mut m = Map::new();
            if let Some(bn) = r.bn {
                m.insert("bn".into(), J::String(bn));
            }
            if let Some(bt) = r.bt {
                m.insert("bt".into(), json!(bt));
            }
            if let Some(bu) = r.bu {
                m.insert("bu".into(), J::String(bu));
            }
            if let Some(n) = r.n {
                m.insert("n".into(), J::String(n));
            }
            if let Some(u) = r.u {
                m.insert("u".into(), J::String(u));
            }
            if let Some(t) = r.t {
                m.insert("t".into(), json!(t));
            }
            match r.value.expect("value") {
                Value::Float(v) => m.insert("v".into(), json!(v)),
                Value::Int(v) => m.insert("v".into(), json!(v)),
                Value::Bool(v) => m.insert("vb".into(), J::Bool(v)),
                Value::Text(v) => m.insert("vs".into(), J::String(v.into())),
                Value::Bytes(v) => m.insert("vd".into(), J::String(base64url(&v))),
            };
            if let Some(rid) = r.rid {
                m.insert(RID.into(), J::String(hex(&rid)));
            }
            J::Object(m)
        })
        .collect();
    serde_json::to_vec(&arr).expect("JSON of plain values")
}

/// A decoded pack: the readings, and how many records lacked an id.
#[derive(Debug, Clone, PartialEq)]
pub struct Pack {
    /// The readings, in record order.
    pub readings: Vec<Reading>,
    /// Records that came without `rid` and got an id derived from their content.
    pub derived_ids: usize,
}

/// Decodes SenML CBOR, at most `max_records` records. `now` resolves relative times; records
/// whose base name is not `DEVICE:` belong to `default_device` (the peer's identity).
pub fn decode_cbor(
    bytes: &[u8],
    max_records: usize,
    now: Timestamp,
    default_device: &str,
) -> Result<Pack, DecodeError> {
    let v: Cbor = ciborium::from_reader(bytes).map_err(|_| DecodeError::Syntax("CBOR"))?;
    let Cbor::Array(items) = v else {
        return Err(DecodeError::NotAnArray);
    };
    if items.len() > max_records {
        return Err(DecodeError::TooMany(max_records));
    }
    let mut recs = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let Cbor::Map(fields) = item else {
            return Err(DecodeError::NotAMap(i));
        };
        let mut r = Record::default();
        for (k, v) in fields {
            let key: Result<i64, String> = match k {
                Cbor::Integer(n) => i64::try_from(n).map_err(|_| "?".to_owned()),
                Cbor::Text(s) => Err(s),
                _ => Err("?".to_owned()),
            };
            let text = |v: Cbor, f: &'static str| match v {
                Cbor::Text(s) => Ok(s),
                _ => Err(DecodeError::FieldType(i, f)),
            };
            let num = |v: Cbor, f: &'static str| match v {
                Cbor::Float(x) => Ok(x),
                Cbor::Integer(n) => Ok(i128::from(n) as f64),
                _ => Err(DecodeError::FieldType(i, f)),
            };
            match key {
                Ok(label::BN) => r.bn = Some(text(v, "bn")?),
                Ok(label::BT) => r.bt = Some(num(v, "bt")?),
                Ok(label::BU) => r.bu = Some(text(v, "bu")?),
                Ok(label::BV) => r.bv = Some(num(v, "bv")?),
                Ok(label::BVER) => {
                    let ver = num(v, "bver")?;
                    if ver > 10.0 {
                        return Err(DecodeError::MustUnderstand(i, "bver".into()));
                    }
                }
                Ok(label::N) => r.n = Some(text(v, "n")?),
                Ok(label::U) => r.u = Some(text(v, "u")?),
                Ok(label::T) => r.t = Some(num(v, "t")?),
                Ok(label::V) => {
                    r.value = Some(match v {
                        Cbor::Float(x) => Value::Float(x),
                        Cbor::Integer(n) => match i64::try_from(n) {
                            Ok(n) => Value::Int(n),
                            Err(_) => Value::Float(i128::from(n) as f64),
                        },
                        _ => return Err(DecodeError::FieldType(i, "v")),
                    })
                }
                Ok(label::VS) => r.value = Some(Value::Text(text(v, "vs")?.as_str().into())),
                Ok(label::VB) => {
                    r.value = Some(Value::Bool(match v {
                        Cbor::Bool(b) => b,
                        _ => return Err(DecodeError::FieldType(i, "vb")),
                    }))
                }
                Ok(label::VD) => {
                    r.value = Some(Value::Bytes(match v {
                        Cbor::Bytes(b) => b.into(),
                        _ => return Err(DecodeError::FieldType(i, "vd")),
                    }))
                }
                Ok(label::S) | Ok(label::UT) => {}
                Ok(n) if n < -100 || n > 100 => {
                    return Err(DecodeError::MustUnderstand(i, n.to_string()))
                }
                Ok(_) => {}
                Err(name) if name == RID => match v {
                    Cbor::Bytes(b) => r.rid = Some(b.try_into().map_err(|_| DecodeError::Rid(i))?),
                    _ => return Err(DecodeError::Rid(i)),
                },
                Err(name) if name.ends_with('_') => {
                    return Err(DecodeError::MustUnderstand(i, name))
                }
                Err(_) => {}
            }
        }
        recs.push(r);
    }
    resolve(recs, now, default_device)
}

/// Decodes SenML JSON, at most `max_records` records; see [`decode_cbor`].
pub fn decode_json(
    bytes: &[u8],
    max_records: usize,
    now: Timestamp,
    default_device: &str,
) -> Result<Pack, DecodeError> {
    use serde_json::Value as J;
    let v: J = serde_json::from_slice(bytes).map_err(|_| DecodeError::Syntax("JSON"))?;
    let J::Array(items) = v else {
        return Err(DecodeError::NotAnArray);
    };
    if items.len() > max_records {
        return Err(DecodeError::TooMany(max_records));
    }
    let mut recs = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let J::Object(fields) = item else {
            return Err(DecodeError::NotAMap(i));
        };
        let mut r = Record::default();
        for (k, v) in fields {
            let text = |v: J, f: &'static str| match v {
                J::String(s) => Ok(s),
                _ => Err(DecodeError::FieldType(i, f)),
            };
            let num = |v: &J, f: &'static str| v.as_f64().ok_or(DecodeError::FieldType(i, f));
            match k.as_str() {
                "bn" => r.bn = Some(text(v, "bn")?),
                "bt" => r.bt = Some(num(&v, "bt")?),
                "bu" => r.bu = Some(text(v, "bu")?),
                "bv" => r.bv = Some(num(&v, "bv")?),
                "bver" => {
                    if num(&v, "bver")? > 10.0 {
                        return Err(DecodeError::MustUnderstand(i, "bver".into()));
                    }
                }
                "n" => r.n = Some(text(v, "n")?),
                "u" => r.u = Some(text(v, "u")?),
                "t" => r.t = Some(num(&v, "t")?),
                "v" => {
                    r.value = Some(match &v {
                        J::Number(n) if n.is_i64() => Value::Int(n.as_i64().unwrap_or_default()),
                        J::Number(n) => {
                            Value::Float(n.as_f64().ok_or(DecodeError::FieldType(i, "v"))?)
                        }
                        _ => return Err(DecodeError::FieldType(i, "v")),
                    })
                }
                "vs" => r.value = Some(Value::Text(text(v, "vs")?.as_str().into())),
                "vb" => {
                    r.value = Some(Value::Bool(
                        v.as_bool().ok_or(DecodeError::FieldType(i, "vb"))?,
                    ))
                }
                "vd" => {
                    let s = text(v, "vd")?;
                    r.value = Some(Value::Bytes(
                        unbase64url(&s)
                            .ok_or(DecodeError::FieldType(i, "vd"))?
                            .into(),
                    ))
                }
                RID => {
                    let s = text(v, RID)?;
                    let id = ReadingId::parse(&s).ok_or(DecodeError::Rid(i))?;
                    r.rid = Some(id.0);
                }
                name if name.ends_with('_') => {
                    return Err(DecodeError::MustUnderstand(i, name.to_owned()))
                }
                _ => {}
            }
        }
        recs.push(r);
    }
    resolve(recs, now, default_device)
}

/// An id for a record that came without one: a 128-bit FNV-1a of its content, so that the
/// same record sent twice gets the same id.
fn derived_id(device: &str, sensor: &str, name: &str, time: i64, value: &Value) -> ReadingId {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    let prime: u128 = 0x0000000001000000000000000000013B;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u128::from(b);
            h = h.wrapping_mul(prime);
        }
        h ^= 0xff;
        h = h.wrapping_mul(prime);
    };
    feed(device.as_bytes());
    feed(sensor.as_bytes());
    feed(name.as_bytes());
    feed(&time.to_le_bytes());
    feed(value.to_string().as_bytes());
    let mut b = h.to_be_bytes();
    // Mark it as a UUID version 8 (custom), variant 10.
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    ReadingId(b)
}

/// Applies the base fields and splits names into device, sensor and name.
fn resolve(recs: Vec<Record>, now: Timestamp, default_device: &str) -> Result<Pack, DecodeError> {
    let (mut bn, mut bt, mut bu, mut bv) = (String::new(), 0.0f64, String::new(), 0.0f64);
    // A pack names few distinct strings: a short list beats hashing every field of every record.
    let mut labels: Vec<Label> = Vec::new();
    let mut label = |s: &str| match labels.iter().rev().find(|l| l.as_str() == s) {
        Some(l) => l.clone(),
        None => {
            let l = Label::from(s);
            if labels.len() < 64 {
                labels.push(l.clone());
            }
            l
        }
    };
    let mut readings = Vec::with_capacity(recs.len());
    let mut derived = 0;
    for (i, r) in recs.into_iter().enumerate() {
        if let Some(b) = r.bn {
            bn = b;
        }
        if let Some(b) = r.bt {
            bt = b;
        }
        if let Some(b) = r.bu {
            bu = b;
        }
        if let Some(b) = r.bv {
            bv = b;
        }
        let n = r.n.as_deref().unwrap_or("");
        // Our own packs: bn = "DEVICE:", n = "SENSOR/NAME". Others: the device is the peer's.
        let (device, rest) = match bn.strip_suffix(':') {
            Some(d) if !d.is_empty() => (d.to_owned(), n.to_owned()),
            _ => (default_device.to_owned(), format!("{bn}{n}")),
        };
        let (sensor, name) = match rest.rsplit_once('/') {
            Some((s, n)) => (s.to_owned(), unescape(n).into_owned()),
            None => (rest.clone(), "value".to_owned()),
        };
        if device.is_empty() || sensor.is_empty() || name.is_empty() {
            return Err(DecodeError::Name(i, format!("{bn}{n}")));
        }
        let sensor = sensor.as_str();
        let mut value = r.value.ok_or(DecodeError::NoValue(i))?;
        if bv != 0.0 {
            value = match value {
                Value::Float(v) => Value::Float(v + bv),
                Value::Int(v) => Value::Float(v as f64 + bv),
                other => other,
            };
        }
        let t = r.t.unwrap_or(0.0);
        let secs = bt + t;
        if !secs.is_finite() || secs.abs() > 9.0e12 || t.abs() > 9.0e12 {
            return Err(DecodeError::Time(i));
        }
        // Whole microseconds of each part, added exactly (adding the floats first loses them).
        let micros = (bt * 1e6).round() as i64 + (t * 1e6).round() as i64;
        // RFC 8428: times below 2^28 are relative to now.
        let micros = if secs < (1u64 << 28) as f64 {
            now.0 + micros
        } else {
            micros
        };
        let unit = r.u.unwrap_or_else(|| bu.clone());
        let id = match r.rid {
            Some(b) => ReadingId(b),
            None => {
                derived += 1;
                derived_id(&device, sensor, &name, micros, &value)
            }
        };
        readings.push(Reading {
            id,
            time: Timestamp(micros),
            device: label(&device),
            sensor: label(sensor),
            name: label(&name),
            unit: label(&unit),
            value,
        });
    }
    Ok(Pack {
        readings,
        derived_ids: derived,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trips() {
        for n in 0..20u8 {
            let data: Vec<u8> = (0..n).map(|i| i.wrapping_mul(77)).collect();
            assert_eq!(unbase64url(&base64url(&data)).unwrap(), data);
        }
        assert_eq!(base64url(b"hi?"), "aGk_");
    }

    #[test]
    fn names_with_slashes_and_percent_survive() {
        assert_eq!(unescape(&escape("a/b%2Fc")), "a/b%2Fc");
    }
}
