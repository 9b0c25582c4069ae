//! The disk buffer's record payload: a batch of readings in a compact binary form. No I/O.
//!
//! Per reading: the 16-byte id, the time (i64 LE µs), device, sensor, name and unit, then a
//! tagged value. A label equal to the previous reading's is written as one marker byte, so a
//! batch from one sensor costs little more than its ids, times and values; decoding shares those
//! labels instead of allocating them again.

use gateway_sdk::{Label, Reading, ReadingId, Timestamp, Value};

const SAME: u8 = 0xFF;
const TAG_FLOAT: u8 = 1;
const TAG_INT: u8 = 2;
const TAG_BOOL: u8 = 3;
const TAG_TEXT: u8 = 4;
const TAG_BYTES: u8 = 5;

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload ends in the middle of a reading.
    #[error("the record ends in the middle of reading {0}")]
    Truncated(usize),
    /// A value tag this version does not know.
    #[error("reading {0} has an unknown value tag {1}")]
    UnknownTag(usize, u8),
    /// A label or text value is not UTF-8.
    #[error("reading {0} has a label or text that is not UTF-8")]
    NotUtf8(usize),
    /// A label says "same as before" on the first reading.
    #[error("reading {0} repeats a label that no reading before it has")]
    NoPrevious(usize),
    /// Bytes are left after the last reading.
    #[error("{0} bytes are left after the last reading")]
    Trailing(usize),
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    // LEB128; lengths here are far below 2^32.
    let mut n = n as u64;
    loop {
        let b = (n & 0x7F) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn put_label(out: &mut Vec<u8>, label: &Label, prev: Option<&Label>) {
    if prev.is_some_and(|p| p == label) {
        out.push(SAME);
        return;
    }
    let s = label.as_str().as_bytes();
    // The length is written shifted left by one, so its first LEB128 byte is even in its low 7
    // bits and can never be the 0xFF marker.
    put_len(out, s.len() << 1);
    out.extend_from_slice(s);
}

/// At least the bytes [`encode`] writes for `r` (a label it writes as a marker counted
/// whole), without encoding it: what a record is cut by.
pub fn bound(r: &Reading) -> usize {
    // A length's LEB128 takes at most 10 bytes.
    let label = |l: &Label| 10 + l.as_str().len();
    let value = match &r.value {
        Value::Text(s) => 10 + s.len(),
        Value::Bytes(b) => 10 + b.len(),
        _ => 8,
    };
    16 + 8 + label(&r.device) + label(&r.sensor) + label(&r.name) + label(&r.unit) + 1 + value
}

/// Appends `readings` to `out`.
pub fn encode(readings: &[Reading], out: &mut Vec<u8>) {
    let mut prev: Option<&Reading> = None;
    for r in readings {
        out.extend_from_slice(&r.id.0);
        out.extend_from_slice(&r.time.0.to_le_bytes());
        put_label(out, &r.device, prev.map(|p| &p.device));
        put_label(out, &r.sensor, prev.map(|p| &p.sensor));
        put_label(out, &r.name, prev.map(|p| &p.name));
        put_label(out, &r.unit, prev.map(|p| &p.unit));
        match &r.value {
            Value::Float(v) => {
                out.push(TAG_FLOAT);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Value::Int(v) => {
                out.push(TAG_INT);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Value::Bool(v) => {
                out.push(TAG_BOOL);
                out.push(u8::from(*v));
            }
            Value::Text(s) => {
                out.push(TAG_TEXT);
                put_len(out, s.len());
                out.extend_from_slice(s.as_bytes());
            }
            Value::Bytes(b) => {
                out.push(TAG_BYTES);
                put_len(out, b.len());
                out.extend_from_slice(b);
            }
        }
        prev = Some(r);
    }
}

struct Input<'a> {
    buf: &'a [u8],
    at: usize,
    reading: usize,
}

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError::Truncated(self.reading))?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }
    fn len(&mut self) -> Result<usize, DecodeError> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            n |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return usize::try_from(n).map_err(|_| DecodeError::Truncated(self.reading));
            }
        }
        Err(DecodeError::Truncated(self.reading))
    }
    fn str(&mut self, n: usize) -> Result<&'a str, DecodeError> {
        let r = self.reading;
        std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError::NotUtf8(r))
    }
    fn label(&mut self, prev: Option<&Label>) -> Result<Label, DecodeError> {
        if self.buf.get(self.at) == Some(&SAME) {
            self.at += 1;
            return prev.cloned().ok_or(DecodeError::NoPrevious(self.reading));
        }
        let n = self.len()? >> 1;
        Ok(Label::new(self.str(n)?))
    }
}

/// Decodes `count` readings from `buf`, which must hold exactly those.
pub fn decode(buf: &[u8], count: usize) -> Result<Vec<Reading>, DecodeError> {
    let mut input = Input {
        buf,
        at: 0,
        reading: 0,
    };
    // Never trust `count` for the allocation: a reading takes at least 30 bytes.
    let mut out: Vec<Reading> = Vec::with_capacity(count.min(buf.len() / 30 + 1));
    for i in 0..count {
        input.reading = i;
        let id = ReadingId(input.array()?);
        let time = Timestamp(i64::from_le_bytes(input.array()?));
        let prev = out.last();
        let device = input.label(prev.map(|p| &p.device))?;
        let sensor = input.label(prev.map(|p| &p.sensor))?;
        let name = input.label(prev.map(|p| &p.name))?;
        let unit = input.label(prev.map(|p| &p.unit))?;
        let value = match input.take(1)?[0] {
            TAG_FLOAT => Value::Float(f64::from_le_bytes(input.array()?)),
            TAG_INT => Value::Int(i64::from_le_bytes(input.array()?)),
            TAG_BOOL => Value::Bool(input.take(1)?[0] != 0),
            TAG_TEXT => {
                let n = input.len()?;
                Value::Text(input.str(n)?.into())
            }
            TAG_BYTES => {
                let n = input.len()?;
                Value::Bytes(input.take(n)?.to_vec().into())
            }
            t => return Err(DecodeError::UnknownTag(i, t)),
        };
        out.push(Reading {
            id,
            time,
            device,
            sensor,
            name,
            unit,
            value,
        });
    }
    if input.at != buf.len() {
        return Err(DecodeError::Trailing(buf.len() - input.at));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Reading> {
        let ids = gateway_sdk::IdGenerator::new();
        let mk = |sensor: &str, name: &str, unit: &str, value: Value| {
            let time = Timestamp(1_700_000_000_000_000);
            Reading {
                id: ids.next(time),
                time,
                device: Label::new("pi-7"),
                sensor: Label::new(sensor),
                name: Label::new(name),
                unit: Label::new(unit),
                value,
            }
        };
        vec![
            mk("28-0316", "temperature", "Cel", Value::Float(21.5)),
            mk("28-0316", "temperature", "Cel", Value::Float(-0.0625)),
            mk("gps", "satellites", "", Value::Int(-7)),
            mk("gps", "fix", "", Value::Bool(true)),
            mk("gps", "mode", "", Value::Text("3D ünïcode".into())),
            mk(
                &"s".repeat(300),
                "raw",
                "",
                Value::Bytes(vec![0, 255, 7].into()),
            ),
        ]
    }

    #[test]
    fn round_trips_every_value_type_and_shares_repeated_labels() {
        let readings = sample();
        let mut buf = Vec::new();
        encode(&readings, &mut buf);
        let back = decode(&buf, readings.len()).unwrap();
        assert_eq!(back, readings);
    }

    #[test]
    fn a_cut_payload_is_an_error_at_every_length() {
        let readings = sample();
        let mut buf = Vec::new();
        encode(&readings, &mut buf);
        for cut in 0..buf.len() {
            assert!(
                decode(&buf[..cut], readings.len()).is_err(),
                "cut at {cut} decoded"
            );
        }
        assert_eq!(
            decode(&buf, readings.len() - 1),
            Err(DecodeError::Trailing(
                buf.len() - {
                    let mut b = Vec::new();
                    encode(&readings[..readings.len() - 1], &mut b);
                    b.len()
                }
            ))
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..400 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode(&buf, 1_000_000);
        }
    }
}
