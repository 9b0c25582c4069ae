//! Decoding SenML packs, record by record, straight into readings. No I/O.
//!
//! Neither format is first turned into a value tree: JSON goes through a serde visitor, CBOR
//! through [`super::cbor`]'s pull reader. In CBOR, a record's map of fewer than 24 fields, a
//! key that is a label in its head byte, the `rid` key, a name that repeats the record
//! before's (as in a pack of one sensor), a float `v` and a 16-byte `rid` are taken without
//! it: byte comparisons instead of items built and text checked again. A base time is turned
//! into microseconds once, and a record without `t` rounds nothing. A record
//! without a value fails as soon as it is read (before its name is resolved: that error comes
//! first), a record is resolved (base fields applied, name split) as soon as it is read, and
//! decoding stops at record `max_records + 1`; a nested value in a field we do not use is
//! skipped, not built.
//! What a payload costs is bounded by its size and `max_records`.

use super::{
    cbor, label, unbase64url, unescape, DecodeError, Pack, Record, MAX_NAME, MAX_UNIT, MAX_VALUE,
    RID,
};
use gateway_sdk::{Label, Reading, ReadingId, Timestamp, Value};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::{borrow::Cow, cell::RefCell, collections::HashSet};

/// Labels kept from one pack to the next, so that a device's names, sent again in every pack,
/// cost a reference count rather than an allocation each time: a decoder that takes many packs
/// (a server's worker) keeps one and passes it to [`decode_cbor_with`] / [`decode_json_with`].
/// Its set holds at most `capacity` labels, and starts over when full, so a peer that sends ever
/// new names costs a bounded amount of memory; beside the set it keeps only the last record name
/// and base unit it resolved (whatever the capacity).
pub struct Labels {
    kept: HashSet<Label>,
    capacity: usize,
    /// The labels of the pack being decoded: a pack names few distinct strings, and a short
    /// list beats hashing every field of every record.
    pack: Vec<Label>,
    /// The empty label (a pack's unit until a record gives one).
    empty: Label,
    /// A pack's base name, kept from one pack to the next so that decoding one allocates no
    /// text for it.
    bn: String,
    /// The last record name after its device (`SENSOR/NAME`) and the sensor and name labels
    /// it gave, and the last base unit and its label, kept from one pack to the next: a
    /// device's packs, and mostly every device's, name the same ones, which then cost no
    /// split, unescaping, checks or lookups.
    names: (String, Option<(Label, Label)>),
    unit: Option<(String, Label)>,
}

impl Labels {
    /// Keeps at most `capacity` labels between packs (0: none).
    pub fn new(capacity: usize) -> Labels {
        Labels {
            kept: HashSet::new(),
            capacity,
            pack: Vec::new(),
            empty: Label::from(""),
            bn: String::new(),
            names: Default::default(),
            unit: None,
        }
    }

    /// The label for `s`: from this pack's, then from those kept, or new.
    fn get(&mut self, s: &str) -> Label {
        if let Some(l) = self.pack.iter().rev().find(|l| l.as_str() == s) {
            return l.clone();
        }
        let l = match self.kept.get(s) {
            Some(l) => l.clone(),
            None => {
                let l = Label::from(s);
                if self.capacity > 0 {
                    if self.kept.len() >= self.capacity {
                        self.kept.clear();
                    }
                    self.kept.insert(l.clone());
                }
                l
            }
        };
        if self.pack.len() < 64 {
            self.pack.push(l.clone());
        }
        l
    }
}

/// The `rid` key as CBOR writes it: a text string of 3 bytes.
const RID_KEY: &[u8] = &[0x63, b'r', b'i', b'd'];

/// Decodes SenML CBOR, at most `max_records` records. `now` resolves relative times; records
/// whose base name is not `DEVICE:` belong to `default_device` (the peer's identity).
pub fn decode_cbor(
    bytes: &[u8],
    max_records: usize,
    now: Timestamp,
    default_device: &str,
) -> Result<Pack, DecodeError> {
    decode_cbor_with(bytes, max_records, now, default_device, &mut Labels::new(0))
}

/// [`decode_cbor`], its labels taken from `labels` where it has them.
pub fn decode_cbor_with(
    bytes: &[u8],
    max_records: usize,
    now: Timestamp,
    default_device: &str,
    labels: &mut Labels,
) -> Result<Pack, DecodeError> {
    const SYNTAX: DecodeError = DecodeError::Syntax("CBOR");
    let mut r = cbor::Reader::new(bytes);
    let count = match r.item().ok_or(SYNTAX)? {
        cbor::Item::Array(n) => n,
        cbor::Item::Break => return Err(SYNTAX),
        _ => return Err(DecodeError::NotAnArray),
    };
    let mut resolver = Resolver::new(now, default_device, labels);
    let hint = count.unwrap_or(0).min(max_records as u64).min(1024) as usize;
    let mut readings = Vec::with_capacity(hint);
    // The last record name read, a slice of `bytes`.
    let mut last_n: Option<&str> = None;
    // Whether the last record named `last_n` and had neither `t` nor `u`: a record of only
    // that name, a value and a `rid` is then the last reading with another id and value.
    let mut last_plain = false;
    loop {
        let i = readings.len();
        if count.is_some_and(|n| i as u64 == n) {
            break;
        }
        if let (true, Some(n), Some(last)) =
            (last_plain && i < max_records, last_n, readings.last())
        {
            if let Some((past, x, rid)) = repeat(&r, n) {
                let value = resolver.value(Value::Float(x), i)?;
                r = past;
                let mut next = Reading::clone(last);
                next.id = ReadingId(rid);
                next.value = value;
                readings.push(next);
                continue;
            }
        }
        // A record of fewer than 24 fields is a map whose head byte holds its size.
        let small = if i < max_records { r.small_map() } else { None };
        let pairs = match small {
            Some(n) => Some(n),
            None => match r.item().ok_or(SYNTAX)? {
                cbor::Item::Break if count.is_none() => break,
                _ if i == max_records => return Err(DecodeError::TooMany(max_records)),
                cbor::Item::Map(n) => n,
                _ => return Err(DecodeError::NotAMap(i)),
            },
        };
        let mut rec = Record::default();
        let mut seen = 0u64;
        while pairs.is_none_or(|n| seen < n) {
            seen += 1;
            // Every SenML label fits in the key's head byte: read without the general reader.
            // (A label in the head byte is within -24..=23: never one that must be understood.)
            let field = match r.small_int() {
                Some(n) => label_field(n),
                None if r.skip_if(RID_KEY) => Some(F::Rid),
                None => match r.item().ok_or(SYNTAX)? {
                    cbor::Item::Break if pairs.is_none() => break,
                    cbor::Item::Uint(n) => {
                        field_of(Key::Label(i64::try_from(n).unwrap_or(i64::MAX)), false, i)?
                    }
                    cbor::Item::Nint(n) => {
                        let n = i64::try_from(n).map_or(i64::MIN, |n| -1 - n);
                        field_of(Key::Label(n), false, i)?
                    }
                    cbor::Item::Text(s) => field_of(Key::Name(s), false, i)?,
                    other => {
                        // A key of no use to SenML: skip it and its value.
                        r.skip_rest(&other).ok_or(SYNTAX)?;
                        None
                    }
                },
            };
            // The fields of every record, taken without the general path when they come as
            // they mostly do; each checked as `set` checks it, in the same order.
            match field {
                // A pack's records mostly repeat the name before: then it is taken as it was
                // checked (UTF-8, length) then.
                Some(F::N) => {
                    if let Some(n) = last_n.filter(|n| r.skip_if_text(n)) {
                        mark(&mut rec, F::N, i)?;
                        rec.n = Some(Cow::Borrowed(n));
                        continue;
                    }
                }
                Some(F::V) => {
                    if let Some(x) = r.float() {
                        mark(&mut rec, F::V, i)?;
                        if rec.value.is_some() {
                            return Err(DecodeError::TwoValues(i));
                        }
                        rec.value = Some(Value::Float(x));
                        continue;
                    }
                }
                Some(F::Rid) => {
                    if let Some(b) = r.short_bytes() {
                        mark(&mut rec, F::Rid, i)?;
                        rec.rid = Some(<[u8; 16]>::try_from(b).map_err(|_| DecodeError::Rid(i))?);
                        continue;
                    }
                }
                _ => {}
            }
            let value = cbor_field(&mut r).ok_or(SYNTAX)?;
            if let Some(field) = field {
                set(&mut rec, field, value, false, i)?;
                if let (F::N, Some(Cow::Borrowed(n))) = (field, &rec.n) {
                    last_n = Some(*n);
                }
            }
        }
        if rec.value.is_none() {
            return Err(DecodeError::NoValue(i));
        }
        last_plain = rec.t.is_none()
            && rec.u.is_none()
            && matches!((&rec.n, last_n), (Some(Cow::Borrowed(n)), Some(l)) if std::ptr::eq(*n, l));
        readings.push(resolver.push(i, rec)?);
    }
    if !r.done() {
        return Err(SYNTAX);
    }
    Ok(Pack {
        readings,
        derived_ids: resolver.derived,
    })
}

/// A record of exactly `n` (as the last one was named), a float value and a 16-byte `rid`, in
/// the order the encoder writes them: the reader past it, its value and its `rid`. `None` for
/// anything else, which the general path then reads from where `r` is.
#[inline]
fn repeat<'a>(r: &cbor::Reader<'a>, n: &str) -> Option<(cbor::Reader<'a>, f64, [u8; 16])> {
    let mut f = r.clone();
    if f.small_map()? != 3 || f.small_int()? != crate::label::N || !f.skip_if_text(n) {
        return None;
    }
    if f.small_int()? != crate::label::V {
        return None;
    }
    let x = f.float()?;
    if !f.skip_if(RID_KEY) {
        return None;
    }
    let rid = <[u8; 16]>::try_from(f.short_bytes()?).ok()?;
    Some((f, x, rid))
}

/// A field's value read off the CBOR reader: containers are skipped, tags looked through.
#[inline]
fn cbor_field<'a>(r: &mut cbor::Reader<'a>) -> Option<Field<'a>> {
    // A value, and a 16-byte rid, without the general reader.
    if let Some(x) = r.float() {
        return Some(Field::Num(x));
    }
    if let Some(b) = r.short_bytes() {
        return Some(Field::Bytes(Cow::Borrowed(b)));
    }
    loop {
        let item = r.item()?;
        return Some(match item {
            cbor::Item::Uint(n) => Field::Int(n.into()),
            cbor::Item::Nint(n) => Field::Int(-1 - i128::from(n)),
            cbor::Item::Float(x) => Field::Num(x),
            cbor::Item::Bool(b) => Field::Bool(b),
            cbor::Item::Text(s) => Field::Text(s),
            cbor::Item::Bytes(b) => Field::Bytes(b),
            cbor::Item::Tag(_) => continue,
            cbor::Item::Break => return None,
            other => {
                r.skip_rest(&other)?;
                Field::Other
            }
        });
    }
}

/// Decodes SenML JSON, at most `max_records` records; see [`decode_cbor`].
pub fn decode_json(
    bytes: &[u8],
    max_records: usize,
    now: Timestamp,
    default_device: &str,
) -> Result<Pack, DecodeError> {
    decode_json_with(bytes, max_records, now, default_device, &mut Labels::new(0))
}

/// [`decode_json`], its labels taken from `labels` where it has them.
pub fn decode_json_with(
    bytes: &[u8],
    max_records: usize,
    now: Timestamp,
    default_device: &str,
    labels: &mut Labels,
) -> Result<Pack, DecodeError> {
    let failure = RefCell::new(None);
    let seed = PackSeed {
        max: max_records,
        // A record of ours takes about 80 bytes of JSON; a guess too low costs a regrowth.
        hint: (bytes.len() / 64).min(max_records).min(1024),
        failure: &failure,
        resolver: Resolver::new(now, default_device, labels),
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let result = seed.deserialize(&mut de).and_then(|p| de.end().map(|()| p));
    result.map_err(|_| match failure.borrow_mut().take() {
        Some(e) => e,
        None if serde_json::from_slice::<IgnoredAny>(bytes).is_ok() => DecodeError::NotAnArray,
        None => DecodeError::Syntax("JSON"),
    })
}

/// Records `e` for [`decode_json`] and stops the deserializer.
fn fail<E: de::Error>(failure: &RefCell<Option<DecodeError>>, e: DecodeError) -> E {
    let text = e.to_string();
    failure.borrow_mut().get_or_insert(e);
    E::custom(text)
}

/// A JSON pack: an array of records, each resolved into a reading as soon as it is read.
struct PackSeed<'a> {
    max: usize,
    /// Readings expected, for the vector's first allocation.
    hint: usize,
    failure: &'a RefCell<Option<DecodeError>>,
    resolver: Resolver<'a>,
}

impl<'de> DeserializeSeed<'de> for PackSeed<'_> {
    type Value = Pack;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Pack, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PackSeed<'_> {
    type Value = Pack;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a SenML pack")
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Pack, A::Error> {
        let mut readings = Vec::with_capacity(self.hint);
        loop {
            let i = readings.len();
            if i == self.max {
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    return Err(fail(self.failure, DecodeError::TooMany(self.max)));
                }
                break;
            }
            let seed = RecordSeed {
                i,
                failure: self.failure,
            };
            let Some(rec) = seq.next_element_seed(seed)? else {
                break;
            };
            let reading = self
                .resolver
                .push(i, rec)
                .map_err(|e| fail(self.failure, e))?;
            readings.push(reading);
        }
        Ok(Pack {
            readings,
            derived_ids: self.resolver.derived,
        })
    }
}

/// One JSON record: an object.
struct RecordSeed<'a> {
    i: usize,
    failure: &'a RefCell<Option<DecodeError>>,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = Record<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Record<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

/// The visit methods of everything but an object: the record is not a map.
macro_rules! not_a_map {
    ($($name:ident($t:ty)),*) => {
        $(fn $name<E: de::Error>(self, _: $t) -> Result<Record<'de>, E> {
            Err(fail(self.failure, DecodeError::NotAMap(self.i)))
        })*
    };
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = Record<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a SenML record")
    }
    not_a_map!(
        visit_bool(bool),
        visit_i64(i64),
        visit_u64(u64),
        visit_f64(f64),
        visit_str(&str)
    );
    fn visit_unit<E: de::Error>(self) -> Result<Record<'de>, E> {
        Err(fail(self.failure, DecodeError::NotAMap(self.i)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Record<'de>, A::Error> {
        Err(fail(self.failure, DecodeError::NotAMap(self.i)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record<'de>, A::Error> {
        let (i, failure) = (self.i, self.failure);
        let mut rec = Record::default();
        while let Some(field) = map.next_key_seed(KeySeed { i, failure })? {
            match field {
                Some(field) => {
                    let v: Field<'de> = map.next_value()?;
                    set(&mut rec, field, v, true, i).map_err(|e| fail(failure, e))?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if rec.value.is_none() {
            return Err(fail(failure, DecodeError::NoValue(i)));
        }
        Ok(rec)
    }
}

/// A JSON record's key, read as the field it names (`None`: one we skip) without making a
/// string of it; a key that must be understood fails the record.
struct KeySeed<'a> {
    i: usize,
    failure: &'a RefCell<Option<DecodeError>>,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<F>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<F>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<F>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a SenML field name")
    }
    fn visit_str<E: de::Error>(self, name: &str) -> Result<Option<F>, E> {
        field_of(Key::Name(Cow::Borrowed(name)), true, self.i).map_err(|e| fail(self.failure, e))
    }
}

/// A record's key: an integer label (CBOR) or a name. A CBOR name is borrowed from the
/// datagram.
enum Key<'a> {
    Label(i64),
    Name(Cow<'a, str>),
}

/// A SenML field this decoder takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum F {
    Bn,
    Bt,
    Bu,
    Bv,
    Bver,
    N,
    U,
    V,
    Vs,
    Vb,
    Vd,
    T,
    Rid,
}

impl F {
    /// The fields JSON names (`rid` is looked for on its own, in both encodings).
    const NAMED: [F; 12] = [
        F::Bn,
        F::Bt,
        F::Bu,
        F::Bv,
        F::Bver,
        F::N,
        F::U,
        F::V,
        F::Vs,
        F::Vb,
        F::Vd,
        F::T,
    ];

    /// Its name in SenML JSON (and in errors).
    fn name(self) -> &'static str {
        match self {
            F::Bn => "bn",
            F::Bt => "bt",
            F::Bu => "bu",
            F::Bv => "bv",
            F::Bver => "bver",
            F::N => "n",
            F::U => "u",
            F::V => "v",
            F::Vs => "vs",
            F::Vb => "vb",
            F::Vd => "vd",
            F::T => "t",
            F::Rid => RID,
        }
    }
}

/// The field a CBOR label names (`None`: one we do not use, such as sum (5) or update time
/// (7)).
#[inline]
fn label_field(n: i64) -> Option<F> {
    Some(match n {
        label::BN => F::Bn,
        label::BT => F::Bt,
        label::BU => F::Bu,
        label::BV => F::Bv,
        label::BVER => F::Bver,
        label::N => F::N,
        label::U => F::U,
        label::V => F::V,
        label::VS => F::Vs,
        label::VB => F::Vb,
        label::VD => F::Vd,
        label::T => F::T,
        _ => return None,
    })
}

/// The field a key names in record `i` (`None`: one we skip), or why the record cannot be
/// taken (a must-understand field).
#[inline]
fn field_of(key: Key<'_>, json: bool, i: usize) -> Result<Option<F>, DecodeError> {
    Ok(match key {
        Key::Label(n) if !json => match label_field(n) {
            Some(f) => Some(f),
            None if !(-100..=100).contains(&n) => {
                return Err(DecodeError::MustUnderstand(i, n.to_string()))
            }
            None => None,
        },
        Key::Name(name) if name == RID => Some(F::Rid),
        Key::Name(name) if name.ends_with('_') => {
            return Err(DecodeError::MustUnderstand(i, quoted(&name)))
        }
        Key::Name(name) if json => F::NAMED.into_iter().find(|f| f.name() == name),
        _ => None,
    })
}

/// A key the peer sent, for an error (which the peer is told and the log shows): quoted and
/// escaped, and cut after 32 characters, so that a key of a megabyte costs a short answer.
fn quoted(key: &str) -> String {
    const SHOWN: usize = 32;
    match key.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}...", &key[..cut]),
        None => format!("{key:?}"),
    }
}

/// A field's value, of whatever type it came as; arrays and maps are skipped, not built. A
/// CBOR string is borrowed from the datagram: a `rid` costs no allocation.
enum Field<'a> {
    Text(Cow<'a, str>),
    Num(f64),
    Int(i128),
    Bool(bool),
    Bytes(Cow<'a, [u8]>),
    Other,
}

/// Notes that record `i` has `field`; a field it had already is an error.
#[inline]
fn mark(r: &mut Record<'_>, field: F, i: usize) -> Result<(), DecodeError> {
    let bit = 1u16 << field as u16;
    if r.seen & bit != 0 {
        return Err(DecodeError::Duplicate(i, field.name()));
    }
    r.seen |= bit;
    Ok(())
}

/// Sets `field` of record `i` from `v`, checking its type.
#[inline]
fn set<'a>(
    r: &mut Record<'a>,
    field: F,
    v: Field<'a>,
    json: bool,
    i: usize,
) -> Result<(), DecodeError> {
    mark(r, field, i)?;
    if matches!(field, F::V | F::Vs | F::Vb | F::Vd) && r.value.is_some() {
        return Err(DecodeError::TwoValues(i));
    }
    let wrong = || DecodeError::FieldType(i, field.name());
    let text = |v: Field<'a>| match v {
        Field::Text(s) if matches!(field, F::Vs | F::Vd) => Ok(s),
        Field::Text(s) if matches!(field, F::U | F::Bu) && s.len() > MAX_UNIT => {
            Err(DecodeError::UnitTooLong(i, field.name()))
        }
        Field::Text(s) if s.len() > MAX_NAME => Err(DecodeError::TooLong(i, field.name())),
        Field::Text(s) if crate::has_control(&s) => Err(DecodeError::Control(i, field.name())),
        Field::Text(s) => Ok(s),
        _ => Err(wrong()),
    };
    let num = |v: Field<'a>| match v {
        Field::Num(x) => Ok(x),
        Field::Int(n) => Ok(n as f64),
        _ => Err(wrong()),
    };
    match field {
        F::Bn => r.bn = Some(text(v)?),
        F::Bt => r.bt = Some(num(v)?),
        F::Bu => r.bu = Some(text(v)?),
        F::Bv => r.bv = Some(num(v)?),
        F::Bver => {
            if num(v)? > 10.0 {
                return Err(DecodeError::MustUnderstand(i, "bver".into()));
            }
        }
        F::N => r.n = Some(text(v)?),
        F::U => r.u = Some(text(v)?),
        F::T => r.t = Some(num(v)?),
        F::V => {
            r.value = Some(match v {
                Field::Num(x) => Value::Float(x),
                Field::Int(n) => match i64::try_from(n) {
                    Ok(n) => Value::Int(n),
                    Err(_) => Value::Float(n as f64),
                },
                _ => return Err(wrong()),
            })
        }
        F::Vs => {
            let s = text(v)?;
            if s.len() > MAX_VALUE {
                return Err(DecodeError::ValueTooLong(i));
            }
            if s.contains('\0') {
                return Err(DecodeError::Nul(i));
            }
            if crate::value_has_control(&s) {
                return Err(DecodeError::ValueControl(i));
            }
            r.value = Some(Value::Text((&*s).into()));
        }
        F::Vb => {
            r.value = Some(Value::Bool(match v {
                Field::Bool(b) => b,
                _ => return Err(wrong()),
            }))
        }
        F::Vd => {
            let bytes = match (v, json) {
                (Field::Bytes(b), false) if b.len() > MAX_VALUE => {
                    return Err(DecodeError::ValueTooLong(i))
                }
                (Field::Bytes(b), false) => b.into_owned(),
                // Base64 of more than MAX_VALUE bytes: not decoded.
                (Field::Text(s), true) if s.len() > MAX_VALUE.div_ceil(3) * 4 => {
                    return Err(DecodeError::ValueTooLong(i))
                }
                (Field::Text(s), true) => unbase64url(&s).ok_or_else(wrong)?,
                _ => return Err(wrong()),
            };
            if bytes.len() > MAX_VALUE {
                return Err(DecodeError::ValueTooLong(i));
            }
            r.value = Some(Value::Bytes(bytes.into()));
        }
        F::Rid => {
            // 16 bytes in CBOR, 32 hex digits in JSON.
            let id = match (v, json) {
                (Field::Bytes(b), false) => <[u8; 16]>::try_from(&*b).ok(),
                (Field::Text(s), true) => ReadingId::parse(&s).map(|id| id.0),
                _ => None,
            };
            r.rid = Some(id.ok_or(DecodeError::Rid(i))?);
        }
    }
    Ok(())
}

/// A JSON field's value; a string without escapes is borrowed from the payload.
impl<'de> de::Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Field<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Field<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a SenML field value")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Field<'de>, E> {
                Ok(Field::Bool(b))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Field<'de>, E> {
                Ok(Field::Int(n.into()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Field<'de>, E> {
                Ok(Field::Int(n.into()))
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<Field<'de>, E> {
                Ok(Field::Num(x))
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Field<'de>, E> {
                Ok(Field::Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Field<'de>, E> {
                Ok(Field::Text(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Field<'de>, E> {
                Ok(Field::Text(Cow::Owned(s)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Field<'de>, E> {
                Ok(Field::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Field::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Field::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// An id for a record that came without one: a 128-bit FNV-1a of its content (device, sensor,
/// name, time, unit, and the value with its type), so that the same record sent twice gets the
/// same id, and records that differ in anything the reading keeps do not.
fn derived_id(
    device: &str,
    sensor: &str,
    name: &str,
    time: i64,
    unit: &str,
    value: &Value,
) -> ReadingId {
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
    feed(unit.as_bytes());
    // The type too: 21 and 21.0 are different readings (an integer stays an integer).
    let kind: u8 = match value {
        Value::Float(_) => 1,
        Value::Int(_) => 2,
        Value::Bool(_) => 3,
        Value::Text(_) => 4,
        Value::Bytes(_) => 5,
    };
    feed(&[kind]);
    feed(value.to_string().as_bytes());
    let mut b = h.to_be_bytes();
    // Mark it as a UUID version 8 (custom), variant 10.
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    ReadingId(b)
}

/// Applies the base fields of the records read so far to the next record, and splits its
/// name into device, sensor and measurement name.
struct Resolver<'a> {
    now: Timestamp,
    default_device: &'a str,
    bn: String,
    /// The device a `DEVICE:` base name names, made once per base name.
    bn_device: Option<Label>,
    bt: f64,
    /// `bt` in whole microseconds, worked out once per base time.
    bt_micros: i64,
    /// The base unit, made once per base unit (applied to every record after it).
    bu: Label,
    bv: f64,
    labels: &'a mut Labels,
    /// Records that came without `rid`.
    derived: usize,
    /// The last record's name after its device (`SENSOR/NAME`), and the sensor and name
    /// labels it gave: a pack's records mostly repeat it, and then skip the split, the
    /// unescaping, the checks and the label lookups.
    last_rest: String,
    last: Option<(Label, Label)>,
}

impl Drop for Resolver<'_> {
    fn drop(&mut self) {
        // The buffers, and the names last resolved, go back for the next pack.
        self.labels.bn = std::mem::take(&mut self.bn);
        self.labels.names = (std::mem::take(&mut self.last_rest), self.last.take());
    }
}

impl<'a> Resolver<'a> {
    fn new(now: Timestamp, default_device: &'a str, labels: &'a mut Labels) -> Self {
        labels.pack.clear();
        let mut bn = std::mem::take(&mut labels.bn);
        bn.clear();
        let (last_rest, last) = std::mem::take(&mut labels.names);
        Resolver {
            now,
            default_device,
            bn,
            bn_device: None,
            bt: 0.0,
            bt_micros: 0,
            bu: labels.empty.clone(),
            bv: 0.0,
            labels,
            derived: 0,
            last_rest,
            last,
        }
    }

    /// Record `i`'s value with the base value added, if it is a number, and finite.
    #[inline]
    fn value(&self, value: Value, i: usize) -> Result<Value, DecodeError> {
        let value = match value {
            Value::Float(v) if self.bv != 0.0 => Value::Float(v + self.bv),
            Value::Int(v) if self.bv != 0.0 => Value::Float(v as f64 + self.bv),
            other => other,
        };
        if matches!(value, Value::Float(v) if !v.is_finite()) {
            return Err(DecodeError::NotFinite(i));
        }
        Ok(value)
    }

    /// Record `i`, resolved.
    fn push(&mut self, i: usize, r: Record<'_>) -> Result<Reading, DecodeError> {
        if let Some(b) = r.bn {
            self.bn_device = b
                .strip_suffix(':')
                .filter(|d| !d.is_empty())
                .map(|d| self.labels.get(d));
            self.bn.clear();
            self.bn.push_str(&b);
        }
        if let Some(b) = r.bt {
            self.bt = b;
            // Checked below, with each record's own time.
            self.bt_micros = (b * 1e6).round() as i64;
        }
        if let Some(b) = r.bu {
            self.bu = match &self.labels.unit {
                Some((text, label)) if *text == b => label.clone(),
                _ => {
                    let label = self.labels.get(&b);
                    self.labels.unit = Some((b.into_owned(), label.clone()));
                    label
                }
            };
        }
        if let Some(b) = r.bv {
            self.bv = b;
        }
        let n = r.n.as_deref().unwrap_or("");
        // Our own packs: bn = "DEVICE:", n = "SENSOR/NAME". Others: the device is the peer's.
        // Borrowed where it can be: a record of our own allocates nothing for its names.
        let joined: String;
        let (device, rest) = match &self.bn_device {
            Some(d) => (d.clone(), n),
            None => {
                joined = format!("{}{n}", self.bn);
                (self.labels.get(self.default_device), joined.as_str())
            }
        };
        if device.is_empty() {
            return Err(DecodeError::Name(i, format!("{}{n}", self.bn)));
        }
        // What is taken must fit when it is sent on: as `bn` = "DEVICE:" and `n` =
        // "SENSOR/NAME" with the name escaped, each within MAX_NAME (a base name without the
        // colon joins the name, and escaping makes a name longer).
        if device.len() + 1 > MAX_NAME {
            return Err(DecodeError::TooLong(i, "bn"));
        }
        let (sensor, name) = match &self.last {
            Some(last) if self.last_rest == rest => last.clone(),
            _ => {
                let (sensor, name) = match rest.rsplit_once('/') {
                    Some((s, n)) => (s, unescape(n)),
                    None => (rest, "value".into()),
                };
                if sensor.is_empty() || name.is_empty() {
                    return Err(DecodeError::Name(i, format!("{}{n}", self.bn)));
                }
                if sensor.len() + 1 + super::escaped_len(&name) > MAX_NAME {
                    return Err(DecodeError::TooLong(i, "n"));
                }
                let labels = (self.labels.get(sensor), self.labels.get(&name));
                self.last_rest.clear();
                self.last_rest.push_str(rest);
                self.last = Some(labels.clone());
                labels
            }
        };
        let value = self.value(r.value.ok_or(DecodeError::NoValue(i))?, i)?;
        let bt = self.bt;
        let t = r.t.unwrap_or(0.0);
        let secs = bt + t;
        // Each part bounded too: their microseconds are added as integers below, and a base
        // time past i64's microseconds would saturate there (bt 1e13 with t -9e12 is in range
        // as a sum, and was stored as 2.2e17 µs instead of 1e18).
        if !secs.is_finite() || secs.abs() > 9.0e12 || t.abs() > 9.0e12 || bt.abs() > 9.0e12 {
            return Err(DecodeError::Time(i));
        }
        // Whole microseconds of each part, added exactly (adding the floats first loses them).
        // (A pack of one time has no `t`: no rounding then.)
        let t_micros = if t == 0.0 {
            0
        } else {
            (t * 1e6).round() as i64
        };
        let micros = self.bt_micros + t_micros;
        // RFC 8428: times below 2^28 are relative to now.
        let micros = if secs < (1u64 << 28) as f64 {
            self.now.0 + micros
        } else {
            micros
        };
        // A relative time that resolves before 1978 could not be sent on as SenML: another
        // reader of it would take it as relative again (the stores keep it, the GET answers
        // and the nats and mqtt sinks send it on).
        if micros < crate::FIRST_ABSOLUTE_TIME.0 {
            return Err(DecodeError::Time(i));
        }
        let unit = match r.u {
            Some(u) => self.labels.get(&u),
            None => self.bu.clone(),
        };
        let id = match r.rid {
            Some(b) => ReadingId(b),
            None => {
                self.derived += 1;
                derived_id(
                    device.as_str(),
                    sensor.as_str(),
                    name.as_str(),
                    micros,
                    unit.as_str(),
                    &value,
                )
            }
        };
        Ok(Reading {
            id,
            time: Timestamp(micros),
            device,
            sensor,
            name,
            unit,
            value,
        })
    }
}
