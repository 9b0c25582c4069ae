//! A device's POST payload, encoded once and then rewritten in place: the readings of one
//! device's POSTs differ from one POST to the next only in their ids and their (common) time,
//! so the next payload is the last one with those bytes replaced. Encoding 20 readings anew for
//! every request was an eighth of the load generator's CPU, which it shares with the server it
//! measures on a small machine. What comes out is always byte for byte what
//! `gateway_senml::encode_cbor` makes of the readings (a test checks it).

use gateway_sdk::{Reading, Value};

/// The last payload and where to rewrite it.
#[derive(Default)]
pub struct Payload {
    bytes: Vec<u8>,
    /// The values it holds, in order: another set of values is encoded anew.
    values: Vec<Value>,
    /// Where each reading's 16-byte id is, and where the base time's 8 bytes are; `None`
    /// when the last payload cannot be rewritten (its time was not encoded as a double).
    spots: Option<(Vec<usize>, usize)>,
}

/// CBOR's head of a 16-byte byte string, as a reading id is encoded.
const RID_HEAD: u8 = 0x40 | 16;
/// CBOR's head of a double.
const DOUBLE: u8 = 0xfb;

impl Payload {
    /// The SenML CBOR of `batch`. Its readings keep their names from one call to the next
    /// (they are one device's); their ids, time and values may change.
    pub fn encode(&mut self, batch: &[Reading]) -> Vec<u8> {
        let Some(first) = batch.first() else {
            return gateway_senml::encode_cbor(batch);
        };
        // As the encoder writes the base time: seconds, the shortest float that holds them.
        let bt = first.time.0 as f64 / 1e6;
        let same_time = batch.iter().all(|r| r.time == first.time);
        let same_values = self.values.len() == batch.len()
            && self.values.iter().zip(batch).all(|(v, r)| *v == r.value);
        match &self.spots {
            Some((rids, at)) if same_time && same_values && is_double(bt) => {
                self.bytes[at + 1..at + 9].copy_from_slice(&bt.to_be_bytes());
                for (r, at) in batch.iter().zip(rids) {
                    self.bytes[at + 1..at + 17].copy_from_slice(&r.id.0);
                }
            }
            _ => {
                self.bytes = gateway_senml::encode_cbor(batch);
                self.values = batch.iter().map(|r| r.value.clone()).collect();
                self.spots = same_time.then(|| locate(&self.bytes, batch, bt)).flatten();
            }
        }
        self.bytes.clone()
    }
}

/// Whether the encoder writes `x` as a double (no shorter float holds it exactly).
fn is_double(x: f64) -> bool {
    f64::from(x as f32).to_bits() != x.to_bits()
}

/// Where, in `bytes`, each reading's id and the base time `bt` are: each found once, ids in
/// the order of the readings.
fn locate(bytes: &[u8], batch: &[Reading], bt: f64) -> Option<(Vec<usize>, usize)> {
    let find_once = |needle: &[u8], from: usize| {
        let hits = |from: usize| {
            bytes[from..]
                .windows(needle.len())
                .position(|w| w == needle)
                .map(|p| from + p)
        };
        let at = hits(from)?;
        hits(at + 1).is_none().then_some(at)
    };
    if !is_double(bt) {
        return None;
    }
    let mut time = vec![DOUBLE];
    time.extend_from_slice(&bt.to_be_bytes());
    let bt_at = find_once(&time, 0)?;
    let mut rids = Vec::with_capacity(batch.len());
    for r in batch {
        let mut id = vec![RID_HEAD];
        id.extend_from_slice(&r.id.0);
        rids.push(find_once(&id, 0)?);
    }
    // Neither may overlap the other (a time's bytes inside an id, say).
    let overlaps = rids.iter().any(|&r| r < bt_at + 9 && bt_at < r + 17);
    (!overlaps).then_some((rids, bt_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_sdk::{IdGenerator, Label, ReadingId, Timestamp};

    fn batch(n: usize) -> Vec<Reading> {
        (0..n)
            .map(|i| Reading {
                id: ReadingId([0; 16]),
                time: Timestamp(0),
                device: Label::from("pi-01"),
                sensor: Label::from("load"),
                name: Label::from("temperature"),
                unit: Label::from("Cel"),
                value: Value::Float(20.0 + i as f64 / 10.0),
            })
            .collect()
    }

    /// Each POST's payload, whether rewritten or encoded anew, is the encoder's.
    #[test]
    fn every_payload_is_the_encoders() {
        let ids = IdGenerator::new();
        for n in [1, 2, 20] {
            let mut b = batch(n);
            let mut p = Payload::default();
            let mut rewritten = 0;
            // Times of every kind: a double, whole seconds (a shorter float), 0, negative.
            let times = (0..200).map(|k| 1_764_979_200_123_457 + k * 1_013).chain([
                1_764_979_200_000_000,
                0,
                1_000_000,
                -5_000_001,
                1_764_979_200_000_001,
            ]);
            for (k, t) in times.enumerate() {
                let was = p.spots.is_some();
                for (i, r) in b.iter_mut().enumerate() {
                    r.id = ids.next(Timestamp(t));
                    r.time = Timestamp(t);
                    if k == 100 {
                        r.value = Value::Float(i as f64);
                    }
                }
                let got = p.encode(&b);
                assert_eq!(got, gateway_senml::encode_cbor(&b), "{n} readings at {t}");
                rewritten += usize::from(was && p.spots.is_some());
            }
            assert!(rewritten > 150, "{n} readings: only {rewritten} rewritten");
        }
    }

    /// Readings of different times are encoded anew, every time.
    #[test]
    fn readings_of_different_times_are_encoded_anew() {
        let mut b = batch(3);
        let mut p = Payload::default();
        for k in 0..5 {
            for (i, r) in b.iter_mut().enumerate() {
                r.time = Timestamp(1_764_979_200_123_457 + k * 7 + i as i64);
                r.id = ReadingId([(k * 10 + i as i64) as u8; 16]);
            }
            assert_eq!(p.encode(&b), gateway_senml::encode_cbor(&b));
            assert!(p.spots.is_none());
        }
    }
}
