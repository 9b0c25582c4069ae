//! A pull reader of CBOR (RFC 8949) over a byte slice, and a writer into a `Vec`: what SenML
//! needs and no more. Text and byte strings come back as slices of the input (chunked ones are
//! joined); nothing is allocated for containers, so reading is bounded by the input's size.
//! The writer writes the preferred (shortest) serialization of RFC 8949 §4.1, item by item,
//! with definite lengths. No I/O.

use std::borrow::Cow;

/// One CBOR data item's head (and, for strings, its content).
#[derive(Debug, Clone, PartialEq)]
pub enum Item<'a> {
    /// An unsigned integer.
    Uint(u64),
    /// A negative integer `-1 - n`.
    Nint(u64),
    /// A byte string.
    Bytes(Cow<'a, [u8]>),
    /// A text string.
    Text(Cow<'a, str>),
    /// An array of this many items (`None`: until a break).
    Array(Option<u64>),
    /// A map of this many pairs (`None`: until a break).
    Map(Option<u64>),
    /// A tag; the tagged item follows.
    Tag(u64),
    /// A float (half, single or double precision).
    Float(f64),
    /// `true` or `false`.
    Bool(bool),
    /// `null`, `undefined` or another simple value.
    Simple(u8),
    /// The end of an indefinite-length array or map.
    Break,
}

/// Nesting deeper than this is refused (a stack guard for [`Reader::skip`]).
const MAX_DEPTH: usize = 64;

/// Reads items off a slice. Every method returns `None` on malformed or truncated input.
#[derive(Clone)]
pub struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

fn half(h: u16) -> f64 {
    let (sign, exp, frac) = (
        (h >> 15) as i32,
        ((h >> 10) & 0x1f) as i32,
        (h & 0x3ff) as f64,
    );
    let v = match exp {
        0 => frac * 2f64.powi(-24),
        31 if frac == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    };
    if sign == 1 {
        -v
    } else {
        v
    }
}

/// The float whose head byte is `head` (half, single or double precision), read from the
/// bytes after the head, and how many of them it took; `None` for another head or too few bytes.
#[inline]
fn float_after(head: u8, rest: &[u8]) -> Option<(f64, usize)> {
    Some(match head {
        0xf9 => (half(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)), 2),
        0xfa => (
            f64::from(f32::from_be_bytes(rest.get(..4)?.try_into().ok()?)),
            4,
        ),
        0xfb => (f64::from_be_bytes(rest.get(..8)?.try_into().ok()?), 8),
        _ => return None,
    })
}

impl<'a> Reader<'a> {
    /// A reader at the start of `b`.
    pub fn new(b: &'a [u8]) -> Self {
        Reader { b, at: 0 }
    }

    /// Whether the next item is encoded as exactly `raw` (consumed if so): a known key is
    /// then recognised without decoding it.
    #[inline]
    pub fn skip_if(&mut self, raw: &[u8]) -> bool {
        let found = self.b[self.at..].starts_with(raw);
        if found {
            self.at += raw.len();
        }
        found
    }

    /// Whether the next item is the definite-length text string `s` (consumed if so): a text
    /// that repeats one already read is then taken without checking its UTF-8 again.
    #[inline]
    pub fn skip_if_text(&mut self, s: &str) -> bool {
        let rest = &self.b[self.at..];
        let head = match s.len() {
            n @ 0..=23 if rest.first() == Some(&(0x60 | n as u8)) => 1,
            n @ 24..=255 if rest.get(..2) == Some(&[0x78, n as u8][..]) => 2,
            _ => return false,
        };
        if rest.get(head..head + s.len()) != Some(s.as_bytes()) {
            return false;
        }
        self.at += head + s.len();
        true
    }

    /// The next item if it is a float (consumed); `None`, with nothing consumed, otherwise.
    #[inline]
    pub fn float(&mut self) -> Option<f64> {
        let head = *self.b.get(self.at)?;
        let (x, len) = float_after(head, &self.b[self.at + 1..])?;
        self.at += 1 + len;
        Some(x)
    }

    /// The next item if it is a byte string of fewer than 24 bytes (consumed); `None`, with
    /// nothing consumed, otherwise.
    #[inline]
    pub fn short_bytes(&mut self) -> Option<&'a [u8]> {
        let rest: &'a [u8] = &self.b[self.at..];
        let head = *rest.first()?;
        if !(0x40..=0x57).contains(&head) {
            return None;
        }
        let len = usize::from(head - 0x40);
        let bytes = rest.get(1..1 + len)?;
        self.at += 1 + len;
        Some(bytes)
    }

    /// A map key that is an integer in its head byte (-24..=23, as every SenML label is),
    /// consumed; `None`, with nothing consumed, for any other item.
    #[inline]
    pub fn small_int(&mut self) -> Option<i64> {
        let head = *self.b.get(self.at)?;
        let v = match head {
            0x00..=0x17 => i64::from(head),
            0x20..=0x37 => -1 - i64::from(head - 0x20),
            _ => return None,
        };
        self.at += 1;
        Some(v)
    }

    /// The next item if it is a map of fewer than 24 pairs (its size in its head byte),
    /// consumed; `None`, with nothing consumed, for any other item.
    #[inline]
    pub fn small_map(&mut self) -> Option<u64> {
        let head = *self.b.get(self.at)?;
        if !(0xa0..=0xb7).contains(&head) {
            return None;
        }
        self.at += 1;
        Some(u64::from(head - 0xa0))
    }

    /// Whether every byte has been read.
    pub fn done(&self) -> bool {
        self.at == self.b.len()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    /// The argument of a head with additional information `ai`: `Some(None)` for an
    /// indefinite length.
    #[inline]
    fn arg(&mut self, ai: u8) -> Option<Option<u64>> {
        let be = |s: &[u8]| s.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x));
        Some(Some(match ai {
            0..=23 => u64::from(ai),
            24 => be(self.take(1)?),
            25 => be(self.take(2)?),
            26 => be(self.take(4)?),
            27 => be(self.take(8)?),
            31 => return Some(None),
            _ => return None,
        }))
    }

    /// A string's content: definite, or chunks of the same major type until a break.
    fn string(&mut self, major: u8, len: Option<u64>) -> Option<Cow<'a, [u8]>> {
        match len {
            Some(n) => Some(Cow::Borrowed(self.take(usize::try_from(n).ok()?)?)),
            None => {
                let mut all = Vec::new();
                loop {
                    let head = *self.take(1)?.first()?;
                    if head == 0xff {
                        return Some(Cow::Owned(all));
                    }
                    if head >> 5 != major {
                        return None;
                    }
                    let n = self.arg(head & 0x1f)??;
                    all.extend_from_slice(self.take(usize::try_from(n).ok()?)?);
                }
            }
        }
    }

    /// The next item.
    #[inline]
    pub fn item(&mut self) -> Option<Item<'a>> {
        let head = *self.take(1)?.first()?;
        let (major, ai) = (head >> 5, head & 0x1f);
        Some(match major {
            0 => Item::Uint(self.arg(ai)??),
            1 => Item::Nint(self.arg(ai)??),
            2 => {
                let len = self.arg(ai)?;
                Item::Bytes(self.string(2, len)?)
            }
            3 => {
                let len = self.arg(ai)?;
                Item::Text(match self.string(3, len)? {
                    Cow::Borrowed(b) => Cow::Borrowed(std::str::from_utf8(b).ok()?),
                    Cow::Owned(b) => Cow::Owned(String::from_utf8(b).ok()?),
                })
            }
            4 => Item::Array(self.arg(ai)?),
            5 => Item::Map(self.arg(ai)?),
            6 => Item::Tag(self.arg(ai)??),
            _ => match ai {
                20 => Item::Bool(false),
                21 => Item::Bool(true),
                0..=19 | 22 | 23 => Item::Simple(ai),
                24 => Item::Simple(*self.take(1)?.first()?),
                25..=27 => {
                    let (x, len) = float_after(head, &self.b[self.at..])?;
                    self.at += len;
                    Item::Float(x)
                }
                31 => Item::Break,
                _ => return None,
            },
        })
    }

    /// Skips what follows `item` (its elements, its tagged item), so that the reader stands
    /// after the whole of it.
    pub fn skip_rest(&mut self, item: &Item<'_>) -> Option<()> {
        self.skip_from(item, 0)
    }

    fn skip_from(&mut self, item: &Item<'_>, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        let (count, per) = match item {
            Item::Array(n) => (*n, 1),
            Item::Map(n) => (*n, 2),
            Item::Tag(_) => (Some(1), 1),
            Item::Break => return None,
            _ => return Some(()),
        };
        match count {
            Some(n) => {
                for _ in 0..n.checked_mul(per)? {
                    let next = self.item()?;
                    if next == Item::Break {
                        return None;
                    }
                    self.skip_from(&next, depth + 1)?;
                }
            }
            None => loop {
                let next = self.item()?;
                if next == Item::Break {
                    break;
                }
                self.skip_from(&next, depth + 1)?;
                if per == 2 {
                    let value = self.item()?;
                    if value == Item::Break {
                        return None;
                    }
                    self.skip_from(&value, depth + 1)?;
                }
            },
        }
        Some(())
    }
}

/// Writes items into a `Vec`, each head in its shortest form.
pub struct Writer(pub Vec<u8>);

impl Writer {
    /// A head of major type `major` with argument `n`.
    pub fn head(&mut self, major: u8, n: u64) {
        let m = major << 5;
        match n {
            0..=23 => self.0.push(m | n as u8),
            24..=0xff => self.0.extend_from_slice(&[m | 24, n as u8]),
            0x100..=0xffff => {
                self.0.push(m | 25);
                self.0.extend_from_slice(&(n as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                self.0.push(m | 26);
                self.0.extend_from_slice(&(n as u32).to_be_bytes());
            }
            _ => {
                self.0.push(m | 27);
                self.0.extend_from_slice(&n.to_be_bytes());
            }
        }
    }

    /// An integer.
    pub fn int(&mut self, v: i128) {
        if v >= 0 {
            self.head(0, v as u64);
        } else {
            self.head(1, (-1 - v) as u64);
        }
    }

    /// A text string.
    pub fn text(&mut self, s: &str) {
        self.head(3, s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }

    /// A byte string.
    pub fn bytes(&mut self, b: &[u8]) {
        self.head(2, b.len() as u64);
        self.0.extend_from_slice(b);
    }

    /// `true` or `false`.
    pub fn bool(&mut self, b: bool) {
        self.0.push(if b { 0xf5 } else { 0xf4 });
    }

    /// A float, in the shortest of half, single and double precision that holds it exactly.
    pub fn float(&mut self, v: f64) {
        if let Some(h) = to_half(v) {
            self.0.push(0xf9);
            self.0.extend_from_slice(&h.to_be_bytes());
        } else if f64::from(v as f32).to_bits() == v.to_bits() {
            self.0.push(0xfa);
            self.0.extend_from_slice(&(v as f32).to_be_bytes());
        } else {
            self.0.push(0xfb);
            self.0.extend_from_slice(&v.to_be_bytes());
        }
    }
}

/// `v` as a half-precision float, if one holds it exactly (a NaN only as the canonical one).
fn to_half(v: f64) -> Option<u16> {
    let bits = v.to_bits();
    let sign = ((bits >> 48) & 0x8000) as u16;
    let frac = bits & 0x000f_ffff_ffff_ffff;
    if v.is_nan() {
        // A quiet NaN whose payload fits a half's 10 bits.
        let quiet = frac & (1 << 51) != 0;
        let half = sign | 0x7c00 | (frac >> 42) as u16;
        return (quiet && frac & ((1 << 42) - 1) == 0).then_some(half);
    }
    if v.is_infinite() {
        return Some(sign | 0x7c00);
    }
    if v == 0.0 {
        return Some(sign);
    }
    let exp = ((bits >> 52) & 0x7ff) as i32 - 1023;
    if (-14..=15).contains(&exp) {
        // Normal: 10 bits of fraction.
        (frac & ((1 << 42) - 1) == 0)
            .then(|| sign | (((exp + 15) as u16) << 10) | (frac >> 42) as u16)
    } else if (-24..-14).contains(&exp) {
        // Subnormal: the value is m * 2^-24 for a whole m below 1024.
        let m = (frac | (1 << 52)) as u128;
        let shift = 52 - (exp + 24);
        (m & ((1u128 << shift) - 1) == 0).then(|| sign | (m >> shift) as u16)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(b: &[u8]) -> Option<Vec<Item<'_>>> {
        let mut r = Reader::new(b);
        let mut out = Vec::new();
        while !r.done() {
            out.push(r.item()?);
        }
        Some(out)
    }

    fn ciborium(v: &ciborium::value::Value) -> Vec<u8> {
        let mut b = Vec::new();
        ciborium::into_writer(v, &mut b).unwrap();
        b
    }

    /// Floats at the edges of each precision, every half, and random bit patterns.
    fn special_floats() -> Vec<f64> {
        let mut specials = vec![
            0.0,
            -0.0,
            1.0,
            -2.5,
            65504.0,
            65505.0,
            6.0e-8,
            5.960_464_477_539_063e-8,
            6.103_515_625e-5,
            6.097_555_160_522_461e-5,
            1e-7,
            0.1,
            21.5,
            1_764_085_351.0,
            1_764_085_351.123_456,
            f64::from(f32::MAX),
            f64::from(f32::MIN_POSITIVE),
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            -f64::NAN,
        ];
        // Every half, and random bit patterns (NaNs with payloads among them).
        for h in 0..=u16::MAX {
            let (sign, exp, frac) = (h >> 15, (h >> 10) & 0x1f, f64::from(h & 0x3ff));
            let v = match exp {
                0 => frac * 2f64.powi(-24),
                31 => continue,
                e => (1.0 + frac / 1024.0) * 2f64.powi(i32::from(e) - 15),
            };
            specials.push(if sign == 1 { -v } else { v });
        }
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            specials.push(f64::from_bits(x));
            specials.push(f64::from(f32::from_bits(x as u32)));
        }
        specials
    }

    #[test]
    fn writes_floats_as_ciborium_does() {
        use ciborium::value::Value as V;
        for v in special_floats() {
            let mut w = Writer(Vec::new());
            w.float(v);
            assert_eq!(w.0, ciborium(&V::Float(v)), "{v:e} ({:#x})", v.to_bits());
        }
    }

    /// `float` (the decoder's shortcut) reads half, single and double precision as `item`
    /// does, and takes nothing from a truncated float or from another item.
    #[test]
    fn reads_floats_as_the_general_reader_does() {
        let mut forms = [0usize; 3];
        for v in special_floats() {
            let mut w = Writer(Vec::new());
            w.float(v);
            let b = &w.0;
            forms[match b.len() {
                3 => 0,
                5 => 1,
                _ => 2,
            }] += 1;
            let fast = Reader::new(b).float().expect("a float");
            let Some(Item::Float(general)) = Reader::new(b).item() else {
                panic!("{b:02x?} is a float");
            };
            assert_eq!(fast.to_bits(), general.to_bits(), "{b:02x?}");
            if !v.is_nan() {
                assert_eq!(fast.to_bits(), v.to_bits(), "{b:02x?}");
            }
            for cut in 0..b.len() {
                let mut r = Reader::new(&b[..cut]);
                assert_eq!(r.float(), None);
                assert_eq!(r.at, 0, "nothing taken");
            }
        }
        assert!(
            forms.iter().all(|n| *n > 1000),
            "every precision: {forms:?}"
        );
        let mut r = Reader::new(&[0x01, 0xf5]);
        assert_eq!((r.float(), r.at), (None, 0));
    }

    /// `short_bytes` reads a byte string of fewer than 24 bytes as `item` does; a longer or
    /// chunked one, a truncated one and other items are left to `item`.
    #[test]
    fn reads_short_byte_strings_as_the_general_reader_does() {
        let mut w = Writer(Vec::new());
        for len in 0..30u8 {
            w.0.clear();
            w.bytes(&(0..len).collect::<Vec<u8>>());
            let b = &w.0;
            let fast = Reader::new(b).short_bytes();
            match Reader::new(b).item() {
                Some(Item::Bytes(general)) if len < 24 => assert_eq!(fast, Some(&*general)),
                Some(Item::Bytes(_)) => assert_eq!(fast, None),
                other => panic!("{other:?}"),
            }
            for cut in 0..b.len() {
                let mut r = Reader::new(&b[..cut]);
                assert_eq!((r.short_bytes(), r.at), (None, 0));
            }
        }
        for other in [&[0x5f, 0x41, 0x00, 0xff][..], &[0x61, b'a'], &[0x00]] {
            let mut r = Reader::new(other);
            assert_eq!((r.short_bytes(), r.at), (None, 0));
        }
    }

    #[test]
    fn writes_heads_and_strings_as_ciborium_does() {
        use ciborium::value::Value as V;
        for n in [
            0u64,
            1,
            23,
            24,
            255,
            256,
            65535,
            65536,
            u32::MAX.into(),
            u64::MAX,
        ] {
            let mut w = Writer(Vec::new());
            w.int(n.into());
            w.int(-1 - i128::from(n));
            let want = [
                V::Integer(n.into()),
                V::Integer((-1 - i128::from(n)).try_into().unwrap()),
            ]
            .iter()
            .flat_map(ciborium)
            .collect::<Vec<u8>>();
            assert_eq!(w.0, want, "{n}");
        }
        for len in [0, 1, 23, 24, 255, 256, 70_000] {
            let text = "é".repeat(len / 2) + &"a".repeat(len % 2);
            let mut w = Writer(Vec::new());
            w.text(&text);
            w.bytes(text.as_bytes());
            w.bool(true);
            w.bool(false);
            let want = [
                V::Text(text.clone()),
                V::Bytes(text.clone().into_bytes()),
                V::Bool(true),
                V::Bool(false),
            ]
            .iter()
            .flat_map(ciborium)
            .collect::<Vec<u8>>();
            assert_eq!(w.0, want, "{len}");
        }
    }

    #[test]
    fn reads_what_ciborium_writes() {
        use ciborium::value::Value as V;
        let v = V::Array(vec![
            V::Integer(0.into()),
            V::Integer((-3).into()),
            V::Integer(u64::MAX.into()),
            V::Text("héllo".into()),
            V::Bytes(vec![1, 2, 3]),
            V::Float(1.5),
            V::Float(1e300),
            V::Bool(true),
            V::Null,
            V::Map(vec![(V::Integer(2.into()), V::Float(-0.25))]),
            V::Tag(1, Box::new(V::Integer(7.into()))),
        ]);
        let mut b = Vec::new();
        ciborium::into_writer(&v, &mut b).unwrap();
        let items = all(&b).unwrap();
        assert_eq!(items[0], Item::Array(Some(11)));
        assert_eq!(items[1], Item::Uint(0));
        assert_eq!(items[2], Item::Nint(2));
        assert_eq!(items[3], Item::Uint(u64::MAX));
        assert_eq!(items[4], Item::Text("héllo".into()));
        assert_eq!(items[5], Item::Bytes(vec![1u8, 2, 3].into()));
        assert_eq!(items[6], Item::Float(1.5));
        assert_eq!(items[7], Item::Float(1e300));
        assert_eq!(items[8], Item::Bool(true));
        assert_eq!(items[9], Item::Simple(22));
        assert_eq!(items[10], Item::Map(Some(1)));
    }

    #[test]
    fn half_floats_chunked_strings_and_indefinite_containers() {
        // 1.5 and -inf as halves; "ab" + "c" chunked; [_ 1, 2].
        let b = [
            0xf9, 0x3e, 0x00, 0xf9, 0xfc, 0x00, 0x7f, 0x62, b'a', b'b', 0x61, b'c', 0xff, 0x9f,
            0x01, 0x02, 0xff,
        ];
        let items = all(&b).unwrap();
        assert_eq!(items[0], Item::Float(1.5));
        assert_eq!(items[1], Item::Float(f64::NEG_INFINITY));
        assert_eq!(items[2], Item::Text("abc".into()));
        assert_eq!(items[3], Item::Array(None));
        let mut r = Reader::new(&b[13..]);
        let a = r.item().unwrap();
        r.skip_rest(&a).unwrap();
        assert!(r.done());
    }

    #[test]
    fn truncation_lies_and_deep_nesting_are_refused_not_panics() {
        // A string claiming 2^64-1 bytes; a cut-off float; a lone break inside an array.
        assert!(all(&[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(all(&[0xfb, 0, 0]).is_none());
        let mut r = Reader::new(&[0x82, 0xff]);
        let a = r.item().unwrap();
        assert!(r.skip_rest(&a).is_none());
        let deep = vec![0x81u8; 10_000];
        let mut r = Reader::new(&deep);
        let a = r.item().unwrap();
        assert!(r.skip_rest(&a).is_none());
        // Invalid UTF-8 text.
        assert!(all(&[0x62, 0xff, 0xfe]).is_none());
        for n in 0..=255u8 {
            let _ = all(&[n, n, n, n, n]);
        }
    }
}
