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
//!   re-sent record still maps to the same id (if its time is absolute: a relative time
//!   resolves against the receiver's clock).
//!
//! Base fields are repeated only when they change, so a batch of one device's readings carries
//! its device name and time base once.

use gateway_sdk::{Reading, Timestamp, Value};
use std::borrow::Cow;

mod cbor;
mod decode;
pub use decode::{decode_cbor, decode_cbor_with, decode_json, decode_json_with, Labels};

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
    pub const T: i64 = 6;
    pub const VD: i64 = 8;
}
/// The extension field carrying the reading id.
pub const RID: &str = "rid";

/// The longest base name, name, unit or base unit a record may carry, in bytes: they become
/// the device, sensor, measurement name and unit of readings, which stores keep in columns of
/// 255 (64 for units), and a base field is applied to every record after it, so its length
/// must not multiply.
pub const MAX_NAME: usize = 255;

/// The longest unit or base unit a record may carry, in bytes: the stores' smallest unit
/// column (MySQL's) holds 64 characters. A longer one would be refused by the store after the
/// request was taken, and put in the dead letters.
pub const MAX_UNIT: usize = 64;

/// The longest text (`vs`, in bytes) or data (`vd`, decoded) value a record may carry: the
/// stores' smallest columns for them (MySQL's TEXT and BLOB) hold 65,535 bytes. A larger value
/// would be refused by the store after the request was taken, and put in the dead letters,
/// whose directory one device could then fill for every device.
pub const MAX_VALUE: usize = 65_535;

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
    /// A time outside what a timestamp holds, or one that resolves before 1978-07-04 (which
    /// SenML would read as relative when it is sent on).
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
    /// A name or unit longer than [`MAX_NAME`] bytes.
    #[error("record {0}: field {1} is longer than 255 bytes")]
    TooLong(usize, &'static str),
    /// A unit or base unit longer than [`MAX_UNIT`] bytes (checked before [`MAX_NAME`]).
    #[error("record {0}: field {1} is longer than 64 bytes")]
    UnitTooLong(usize, &'static str),
    /// A name or unit holding a control character (a line break in a name would forge log
    /// lines, and brokers refuse it in a topic), or a character that reorders or breaks text
    /// or is shown as nothing (a bidirectional control, U+2028, U+2029, U+200B: a dashboard
    /// would show another name or value than the one stored).
    #[error("record {0}: field {1} holds a control character, or one that reorders text or is shown as nothing")]
    Control(usize, &'static str),
    /// A text or data value longer than [`MAX_VALUE`] bytes.
    #[error("record {0}: value is longer than 65,535 bytes")]
    ValueTooLong(usize),
    /// A text value holding U+0000, which PostgreSQL's text cannot store.
    #[error("record {0}: text value holds U+0000")]
    Nul(usize),
    /// A text value holding a control character other than tab, line feed and carriage
    /// return (C0, DEL, C1): an escape sequence would drive the terminal of whoever reads the
    /// store with `mysql` or `psql`, and each such character grows sixfold in JSON (`\u001b`),
    /// past what a broker takes in one message.
    #[error("record {0}: text value holds a control character other than tab, line feed or carriage return")]
    ValueControl(usize),
    /// A value that is not a finite number (NaN or infinity): SenML JSON cannot carry it, and
    /// the stores refuse it.
    #[error("record {0}: value is not a finite number")]
    NotFinite(usize),
    /// A field given twice in one record: which one counts is not said (RFC 8428 2: a
    /// record's fields are unique).
    #[error("record {0}: field {1} appears twice")]
    Duplicate(usize, &'static str),
    /// More than one of `v`, `vs`, `vb`, `vd` (RFC 8428 4.2: exactly one value).
    #[error("record {0} has more than one value (v, vs, vb, vd)")]
    TwoValues(usize),
}

/// Whether text value `s` holds a control character other than tab, line feed and carriage
/// return (see [`DecodeError::ValueControl`]). One pass over the bytes: in valid UTF-8 a C1
/// character (U+0080 to U+009F) is 0xC2 followed by 0x80 to 0x9F.
pub(crate) fn value_has_control(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().any(|(i, &c)| {
        (c < 0x20 && !matches!(c, b'\t' | b'\n' | b'\r'))
            || c == 0x7f
            || (c == 0xc2 && b.get(i + 1).is_some_and(|&n| n < 0xa0))
    })
}

/// Whether `s` holds a control character (C0, DEL or C1), one that breaks a line, or one a
/// screen shows as nothing, the text-reordering ones among them
/// ([`gateway_sdk::text::is_unsafe`]). Bytes first: the others are not ASCII, which names
/// seldom hold.
pub(crate) fn has_control(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().any(|&c| c < 0x20 || c == 0x7f)
        || (!b.is_ascii() && s.chars().any(gateway_sdk::text::is_unsafe))
}

/// Appends `value` to `out` as one token of a topic or subject (the MQTT and NATS sinks), so
/// that two values never make the same token: `%` and the characters `special` picks are
/// percent-encoded (each byte of their UTF-8 as `%XX`); an empty value is `_`, and a value
/// that is `_` is `%5F`.
pub fn push_token(out: &mut String, value: &str, special: impl Fn(char) -> bool) {
    use std::fmt::Write;
    match value {
        "" => out.push('_'),
        "_" => out.push_str("%5F"),
        v => {
            for c in v.chars() {
                if c == '%' || special(c) {
                    for b in c.encode_utf8(&mut [0; 4]).bytes() {
                        let _ = write!(out, "%{b:02X}");
                    }
                } else {
                    out.push(c);
                }
            }
        }
    }
}

fn escape(name: &str) -> std::borrow::Cow<'_, str> {
    if name.bytes().any(|b| b == b'%' || b == b'/') {
        name.replace('%', "%25").replace('/', "%2F").into()
    } else {
        name.into()
    }
}
/// `escape(name).len()`, without making it: each `%` and `/` becomes three bytes.
fn escaped_len(name: &str) -> usize {
    name.len() + 2 * name.bytes().filter(|b| *b == b'%' || *b == b'/').count()
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
/// Its strings are borrowed from the payload where they can be: decoding a record allocates
/// nothing for its names.
#[derive(Default)]
pub(crate) struct Record<'a> {
    bn: Option<Cow<'a, str>>,
    bt: Option<f64>,
    bu: Option<Cow<'a, str>>,
    bv: Option<f64>,
    n: Option<Cow<'a, str>>,
    u: Option<Cow<'a, str>>,
    t: Option<f64>,
    value: Option<Value>,
    rid: Option<[u8; 16]>,
    /// Decoding: the fields met so far, one bit each (RFC 8428: a field appears once).
    seen: u16,
}

/// One record as it is written, borrowed from its reading: writing a pack copies each name
/// once, into the output, and allocates nothing per record.
struct Out<'b> {
    /// `bn`: the device, written with a `:` after it.
    bn: Option<&'b str>,
    bt: Option<f64>,
    bu: Option<&'b str>,
    /// `n`: the sensor and the measurement name, written as `sensor/` and the escaped name.
    n: (&'b str, &'b str),
    u: Option<&'b str>,
    t: Option<f64>,
    value: &'b Value,
    rid: [u8; 16],
}

impl Out<'_> {
    /// `bn` as it is written.
    fn bn(&self) -> Option<String> {
        self.bn.map(|d| format!("{d}:"))
    }
    /// `n` as it is written.
    fn n(&self) -> String {
        format!("{}/{}", self.n.0, escape(self.n.1))
    }
}

/// The records of a batch, fields in the order they are written.
fn records(batch: &[Reading]) -> impl Iterator<Item = Out<'_>> {
    let (mut bn, mut bu): (Option<&str>, Option<&str>) = (None, None);
    let mut bt = batch.first().map(|r| r.time.0).unwrap_or(0);
    batch.iter().enumerate().map(move |(i, r)| {
        let mut rec = Out {
            bn: None,
            bt: None,
            bu: None,
            n: (r.sensor.as_str(), r.name.as_str()),
            u: None,
            t: None,
            value: &r.value,
            rid: r.id.0,
        };
        // Times as far apart as a decoder takes (±9e12 s each) differ by more than an i64 of
        // microseconds holds, and by more than a `t` may be: such a record starts a new base.
        if i > 0 && (i128::from(r.time.0) - i128::from(bt)).abs() > 9_000_000_000_000_000_000 {
            bt = r.time.0;
            rec.bt = Some(bt as f64 / 1e6);
        }
        if bn != Some(r.device.as_str()) {
            rec.bn = Some(r.device.as_str());
            bn = Some(r.device.as_str());
        }
        if i == 0 {
            rec.bt = Some(bt as f64 / 1e6);
            if !r.unit.is_empty() {
                rec.bu = Some(r.unit.as_str());
                bu = Some(r.unit.as_str());
            }
        } else if bu != Some(r.unit.as_str()) && !r.unit.is_empty() {
            rec.u = Some(r.unit.as_str());
        }
        if i == 0 && r.unit.is_empty() {
            bu = None;
        } else if i > 0 && r.unit.is_empty() && bu.is_some() {
            // An empty unit after a base unit: say so explicitly.
            rec.u = Some("");
        }
        let dt = r.time.0 - bt; // within ±9e18 (above)
        if dt != 0 {
            rec.t = Some(dt as f64 / 1e6);
        }
        rec
    })
}

/// Encodes a batch as SenML CBOR, straight into the bytes (no value tree in between).
pub fn encode_cbor(batch: &[Reading]) -> Vec<u8> {
    let mut w = cbor::Writer(Vec::with_capacity(batch.len() * 48 + 32));
    w.head(4, batch.len() as u64);
    for r in records(batch) {
        let optional = [r.bn.is_some(), r.bt.is_some(), r.bu.is_some()];
        let more = [r.u.is_some(), r.t.is_some()];
        // n, the value and rid are always there.
        let pairs = 3 + optional.into_iter().chain(more).filter(|b| *b).count();
        w.head(5, pairs as u64);
        let text = |w: &mut cbor::Writer, l: i64, v: Option<&str>| {
            if let Some(v) = v {
                w.int(l.into());
                w.text(v);
            }
        };
        if let Some(device) = r.bn {
            w.int(label::BN.into());
            w.head(3, device.len() as u64 + 1);
            w.0.extend_from_slice(device.as_bytes());
            w.0.push(b':');
        }
        if let Some(bt) = r.bt {
            w.int(label::BT.into());
            w.float(bt);
        }
        text(&mut w, label::BU, r.bu);
        let (sensor, name) = r.n;
        w.int(label::N.into());
        w.head(3, (sensor.len() + 1 + escaped_len(name)) as u64);
        w.0.extend_from_slice(sensor.as_bytes());
        w.0.push(b'/');
        w.0.extend_from_slice(escape(name).as_bytes());
        text(&mut w, label::U, r.u);
        if let Some(t) = r.t {
            w.int(label::T.into());
            w.float(t);
        }
        match r.value {
            Value::Float(v) => {
                w.int(label::V.into());
                w.float(*v);
            }
            Value::Int(v) => {
                w.int(label::V.into());
                w.int((*v).into());
            }
            Value::Bool(v) => {
                w.int(label::VB.into());
                w.bool(*v);
            }
            Value::Text(v) => {
                w.int(label::VS.into());
                w.text(v);
            }
            Value::Bytes(v) => {
                w.int(label::VD.into());
                w.bytes(v);
            }
        }
        w.text(RID);
        w.bytes(&r.rid);
    }
    w.0
}

/// Appends `b` in lower-case hexadecimal.
fn hex_into(out: &mut Vec<u8>, b: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for x in b {
        out.extend_from_slice(&[DIGITS[usize::from(x >> 4)], DIGITS[usize::from(x & 15)]]);
    }
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

/// The first time SenML can carry as a time: RFC 8428 reads a time below 2^28 s (before
/// 1978-07-04) as relative to the reader's clock.
pub const FIRST_ABSOLUTE_TIME: Timestamp = Timestamp((1i64 << 28) * 1_000_000);

/// Why `batch` cannot be sent as SenML (JSON or CBOR), naming the first reading that cannot:
/// one timed before [`FIRST_ABSOLUTE_TIME`], which a server would store as "its now plus
/// that much" (a clock that was not set when the reading was taken: a Pi without a real-time
/// clock starts at 1970 on a system that keeps no time). A sink returns it as a rejection,
/// and the host narrows the batch down to that reading, into the dead letters, with the time
/// it has.
pub fn time_refusal(batch: &[Reading]) -> Option<String> {
    let i = batch.iter().position(|r| r.time < FIRST_ABSOLUTE_TIME)?;
    let r = &batch[i];
    Some(format!(
        "reading {} of {} ({}/{}/{}) is timed {}, before 1978-07-04: the clock was not set when it was taken, and SenML would read such a time as relative to the receiver's clock",
        i + 1,
        batch.len(),
        r.device,
        r.sensor,
        r.name,
        r.time
    ))
}

/// Why `batch` cannot be sent as SenML JSON, naming the first reading that cannot: as
/// [`time_refusal`], and JSON has no NaN or infinity (`encode_json` would write `null`, a
/// reading without its value). A sink returns it as a rejection, and the host narrows the
/// batch down to that reading.
pub fn json_refusal(batch: &[Reading]) -> Option<String> {
    if let Some(why) = time_refusal(batch) {
        return Some(why);
    }
    let i = batch
        .iter()
        .position(|r| matches!(r.value, Value::Float(v) if !v.is_finite()))?;
    let r = &batch[i];
    Some(format!(
        "reading {} of {} ({}/{}/{}) cannot be sent as SenML JSON: its value is {:?}, which JSON cannot carry",
        i + 1,
        batch.len(),
        r.device,
        r.sensor,
        r.name,
        r.value
    ))
}

/// Encodes a batch as SenML JSON, straight into the bytes (no value tree in between), keys in
/// the order `bn`, `bt`, `bu`, `n`, `u`, `t`, the value, `rid`. A value that is not a finite
/// number becomes `null`: see [`json_refusal`].
pub fn encode_json(batch: &[Reading]) -> Vec<u8> {
    /// One record's fields as they are written: `{"k":v,"k":v` (the caller closes it).
    struct Fields<'a> {
        out: &'a mut Vec<u8>,
        first: bool,
    }
    impl Fields<'_> {
        fn key(&mut self, k: &str) {
            self.out
                .extend_from_slice(if self.first { b"{\"" } else { b",\"" });
            self.first = false;
            self.out.extend_from_slice(k.as_bytes());
            self.out.extend_from_slice(b"\":");
        }
        /// A field whose value serde_json writes (strings escaped, floats shortest round
        /// trip, NaN and infinities `null`).
        fn field<T: serde::Serialize + ?Sized>(&mut self, k: &str, v: &T) {
            self.key(k);
            serde_json::to_writer(&mut *self.out, v).expect("JSON of a plain value");
        }
        /// A field whose value is text that needs no escaping (hex, base64url).
        fn plain(&mut self, k: &str, write: impl FnOnce(&mut Vec<u8>)) {
            self.key(k);
            self.out.push(b'"');
            write(self.out);
            self.out.push(b'"');
        }
    }
    let mut out = Vec::with_capacity(batch.len() * 112 + 2);
    out.push(b'[');
    for (i, r) in records(batch).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mut f = Fields {
            out: &mut out,
            first: true,
        };
        if let Some(bn) = r.bn() {
            f.field("bn", bn.as_str());
        }
        if let Some(bt) = r.bt {
            f.field("bt", &bt);
        }
        if let Some(bu) = r.bu {
            f.field("bu", bu);
        }
        f.field("n", r.n().as_str());
        if let Some(u) = r.u {
            f.field("u", u);
        }
        if let Some(t) = r.t {
            f.field("t", &t);
        }
        match r.value {
            Value::Float(v) => f.field("v", v),
            Value::Int(v) => f.field("v", v),
            Value::Bool(v) => f.field("vb", v),
            Value::Text(v) => f.field("vs", v.as_str()),
            Value::Bytes(v) => f.plain("vd", |out| out.extend_from_slice(base64url(v).as_bytes())),
        }
        f.plain(RID, |out| hex_into(out, &r.rid));
        out.push(b'}');
    }
    out.push(b']');
    out
}

/// A decoded pack: the readings, and how many records lacked an id.
#[derive(Debug, Clone, PartialEq)]
pub struct Pack {
    /// The readings, in record order.
    pub readings: Vec<Reading>,
    /// Records that came without `rid` and got an id derived from their content.
    pub derived_ids: usize,
}

#[cfg(test)]
mod tests {
    use gateway_sdk::{Label, ReadingId, Timestamp};

    /// The encoder before the writer: a ciborium value tree of the same records.
    fn ciborium_encoding(batch: &[Reading]) -> Vec<u8> {
        use ciborium::value::Value as Cbor;
        let arr: Vec<Cbor> = records(batch)
            .map(|r| {
                let mut m: Vec<(Cbor, Cbor)> = Vec::new();
                let k = |l: i64| Cbor::Integer(l.into());
                let text = |v: &str| Cbor::Text(v.to_owned());
                if let Some(bn) = r.bn() {
                    m.push((k(label::BN), text(&bn)));
                }
                if let Some(bt) = r.bt {
                    m.push((k(label::BT), Cbor::Float(bt)));
                }
                if let Some(bu) = r.bu {
                    m.push((k(label::BU), text(bu)));
                }
                {
                    let n = r.n();
                    m.push((k(label::N), text(&n)));
                }
                if let Some(u) = r.u {
                    m.push((k(label::U), text(u)));
                }
                if let Some(t) = r.t {
                    m.push((k(label::T), Cbor::Float(t)));
                }
                m.push(match r.value.clone() {
                    Value::Float(v) => (k(label::V), Cbor::Float(v)),
                    Value::Int(v) => (k(label::V), Cbor::Integer(v.into())),
                    Value::Bool(v) => (k(label::VB), Cbor::Bool(v)),
                    Value::Text(v) => (k(label::VS), Cbor::Text(v.into())),
                    Value::Bytes(v) => (k(label::VD), Cbor::Bytes(v.into())),
                });
                {
                    let rid = r.rid;
                    m.push((Cbor::Text(RID.into()), Cbor::Bytes(rid.to_vec())));
                }
                Cbor::Map(m)
            })
            .collect();
        let mut out = Vec::new();
        ciborium::into_writer(&Cbor::Array(arr), &mut out).unwrap();
        out
    }

    /// 60 readings of two devices, alternating sensors, names that need escaping, units that
    /// change and vanish, and every kind of value (NaN and infinity among the floats).
    fn varied_batch() -> Vec<Reading> {
        let values = [
            Value::Float(21.5),
            Value::Float(0.1),
            Value::Int(-7),
            Value::Int(1 << 40),
            Value::Bool(true),
            Value::Text("fix \"q\"\n\u{e9}".into()),
            Value::Bytes(vec![1, 2, 3].into()),
            Value::Float(f64::NAN),
            Value::Float(f64::NEG_INFINITY),
            Value::Float(-1e-300),
        ];
        (0..60usize)
            .map(|i| Reading {
                id: ReadingId((i as u128 * 0x0123_4567_89ab_cdef).to_be_bytes()),
                time: Timestamp(1_764_085_351_000_000 + (i as i64 % 7) * 250_000),
                device: Label::from(["pi-01", "pi-\"02\""][i / 30]),
                sensor: Label::from(["28-0316a2791eff", "gps"][i % 2]),
                name: Label::from(["temperature", "lat/lon", "100%"][i % 3]),
                unit: Label::from(["Cel", "", "m/s"][(i / 4) % 3]),
                value: values[i % values.len()].clone(),
            })
            .collect()
    }

    #[test]
    fn a_reading_timed_before_1978_is_refused_as_senml_would_read_it_as_relative() {
        let now = Timestamp(1_764_085_351_000_000);
        let mut batch: Vec<Reading> = varied_batch()
            .into_iter()
            .filter(|r| matches!(r.value, Value::Int(_)))
            .take(3)
            .collect();
        assert!(time_refusal(&batch).is_none());
        assert!(json_refusal(&batch).is_none());
        // 30 s after boot on a clock that starts at 1970: the receiver made it its own now
        // plus 30 s, silently.
        batch[1].time = Timestamp(30_000_000);
        let back = crate::decode_cbor(&encode_cbor(&batch), 10, now, "pi-01").unwrap();
        assert_eq!(back.readings[1].time, Timestamp(now.0 + 30_000_000));
        let why = time_refusal(&batch).expect("refused");
        assert!(
            why.starts_with("reading 2 of 3 ") && why.contains("before 1978-07-04"),
            "{why}"
        );
        assert_eq!(json_refusal(&batch), Some(why));
        batch[1].time = Timestamp(-5);
        assert!(time_refusal(&batch).is_some());
        batch[1].time = FIRST_ABSOLUTE_TIME;
        assert!(time_refusal(&batch).is_none());
        let back = crate::decode_cbor(&encode_cbor(&batch), 10, now, "pi-01").unwrap();
        assert_eq!(back.readings[1].time, FIRST_ABSOLUTE_TIME);
    }

    #[test]
    fn encode_cbor_writes_what_a_ciborium_value_tree_of_the_records_writes() {
        let batch = varied_batch();
        for n in [1, 2, 5, 30, 31, 60] {
            assert_eq!(
                encode_cbor(&batch[..n]),
                ciborium_encoding(&batch[..n]),
                "{n}"
            );
        }
    }

    /// The JSON encoder before the writer: a serde_json value tree of the same records.
    fn value_tree_json(batch: &[Reading]) -> Vec<u8> {
        use serde_json::{json, Map, Value as J};
        let arr: Vec<J> = records(batch)
            .map(|r| {
                let mut m = Map::new();
                let text = |v: &str| J::String(v.to_owned());
                if let Some(bn) = r.bn() {
                    m.insert("bn".into(), text(&bn));
                }
                if let Some(bt) = r.bt {
                    m.insert("bt".into(), json!(bt));
                }
                if let Some(bu) = r.bu {
                    m.insert("bu".into(), text(bu));
                }
                {
                    let n = r.n();
                    m.insert("n".into(), text(&n));
                }
                if let Some(u) = r.u {
                    m.insert("u".into(), text(u));
                }
                if let Some(t) = r.t {
                    m.insert("t".into(), json!(t));
                }
                match r.value.clone() {
                    Value::Float(v) => m.insert("v".into(), json!(v)),
                    Value::Int(v) => m.insert("v".into(), json!(v)),
                    Value::Bool(v) => m.insert("vb".into(), J::Bool(v)),
                    Value::Text(v) => m.insert("vs".into(), J::String(v.into())),
                    Value::Bytes(v) => m.insert("vd".into(), J::String(base64url(&v))),
                };
                {
                    let rid = r.rid;
                    let hex: String = rid.iter().map(|x| format!("{x:02x}")).collect();
                    m.insert(RID.into(), J::String(hex));
                }
                J::Object(m)
            })
            .collect();
        serde_json::to_vec(&arr).unwrap()
    }

    #[test]
    fn encode_json_writes_what_a_serde_json_value_tree_of_the_records_writes() {
        let batch = varied_batch();
        for n in [0, 1, 2, 5, 30, 31, 60] {
            let ours = encode_json(&batch[..n]);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                String::from_utf8(value_tree_json(&batch[..n])).unwrap(),
                "{n}"
            );
        }
    }

    use super::*;

    #[test]
    fn escaped_len_is_the_length_of_the_escaped_name_and_unescape_undoes_escape() {
        for name in ["temperature", "a/b", "100%", "%/%", "", "é/ü%"] {
            assert_eq!(escaped_len(name), escape(name).len(), "{name}");
            assert_eq!(unescape(&escape(name)), name);
        }
    }

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
