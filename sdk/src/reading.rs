//! The reading model: what sources produce and sinks take, laid out for the ABI.
//!
//! It follows SenML (RFC 8428) so that a reading maps onto a SenML record and onto a database
//! row without loss: device and sensor (SenML's base name and name), measurement name, unit
//! (SenML units such as `Cel`, `m`, `m/s`), time, a typed value, and a unique id created at the
//! source that later hops use to drop duplicates.

use abi_stable::{
    std_types::{RArc, RString, RVec},
    StableAbi,
};
use std::{
    fmt,
    ops::Deref,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// An immutable shared string (device, sensor, measurement name, unit).
///
/// Cloning is a reference-count increment: a source builds its labels once and clones them into
/// every reading, so producing a reading allocates nothing for them.
#[repr(transparent)]
#[derive(StableAbi, Clone)]
pub struct Label(RArc<RString>);

impl Label {
    /// A label holding `s`.
    pub fn new(s: &str) -> Self {
        Label(RArc::new(RString::from(s)))
    }
    /// Checks a device or sensor name a plugin takes from its settings: one that can travel
    /// to a server (the coaps ingress and the SenML encodings refuse the others, and every
    /// reading would become a dead letter on the device) is not empty, holds no control
    /// character, no character that reorders text or is shown as nothing
    /// ([`crate::text::is_unsafe`]) and no U+FFFD, has no white space at either end (a device name must be its
    /// certificate's identity, which has none), and is at most 128 bytes. `Err` says why, for
    /// a config error.
    pub fn check_name(name: &str) -> Result<(), String> {
        if name.is_empty() {
            return Err("an empty name".into());
        }
        if name
            .chars()
            .any(|c| crate::text::is_unsafe(c) || c == '\u{FFFD}')
        {
            return Err(format!(
                "{name:?} holds a control character, one that reorders text (a bidirectional control, U+2028, U+2029), one shown as nothing (U+200B, U+FEFF, ...) or U+FFFD"
            ));
        }
        if name.trim() != name {
            return Err(format!("{name:?} has white space at an end"));
        }
        if name.len() > 128 {
            return Err(format!("{} bytes; at most 128", name.len()));
        }
        Ok(())
    }
    /// Checks a device name: as [`Label::check_name`], and without any invisible character,
    /// the joiners and variation selectors that name may hold included
    /// ([`crate::text::invisible`]): a device's name is its certificate's identity, which
    /// holds none, so a device named so could never send a reading.
    pub fn check_device(name: &str) -> Result<(), String> {
        Self::check_name(name)?;
        match name.chars().find(|&c| crate::text::invisible(c)) {
            Some(c) => Err(format!(
                "{name:?} holds U+{:04X}, which a screen shows as nothing: a device's name is its certificate's identity, which holds no such character",
                c as u32
            )),
            None => Ok(()),
        }
    }

    /// The text.
    #[inline]
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl Deref for Label {
    type Target = str;
    #[inline]
    fn deref(&self) -> &str {
        self.as_str()
    }
}
impl From<&str> for Label {
    fn from(s: &str) -> Self {
        Label::new(s)
    }
}
impl From<String> for Label {
    fn from(s: String) -> Self {
        Label(RArc::new(RString::from(s)))
    }
}
impl PartialEq for Label {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.as_str(), other.as_str());
        // Clones of one label (the common case: a source clones its labels into every
        // reading) share their text: equal without comparing it.
        (a.as_ptr() == b.as_ptr() && a.len() == b.len()) || a == b
    }
}
impl Eq for Label {}
impl PartialEq<str> for Label {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}
impl PartialEq<&str> for Label {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
impl std::borrow::Borrow<str> for Label {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}
impl std::hash::Hash for Label {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}
impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}
impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A point in time, UTC, in microseconds since the Unix epoch.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current time of the system clock.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }
    /// Converts, saturating outside the range of `i64` microseconds.
    pub fn from_system_time(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            Err(e) => Timestamp(-i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX)),
        }
    }
    /// Microseconds since the Unix epoch.
    pub fn as_micros(self) -> i64 {
        self.0
    }
    /// Seconds since the Unix epoch, as SenML writes time.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }
    /// The same instant as a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_micros(self.0 as u64)
        } else {
            UNIX_EPOCH - Duration::from_micros(self.0.unsigned_abs())
        }
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 with microseconds, e.g. `2026-11-25T15:42:31.123456Z`; a year outside 0 to
    /// 9999 is written with its sign, ISO 8601's expanded form (`-0001-12-31T...`,
    /// `+10000-01-01T...`). Any `i64` is a time: nothing here fails or panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, micros) = (self.0.div_euclid(1_000_000), self.0.rem_euclid(1_000_000));
        let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        if (0..=9999).contains(&y) {
            write!(f, "{y:04}")?;
        } else {
            write!(f, "{y:+05}")?;
        }
        write!(
            f,
            "-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            sod / 3600,
            sod / 60 % 60,
            sod % 60
        )
    }
}

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The value of a reading.
#[repr(u8)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub enum Value {
    /// A number (SenML `v`).
    Float(f64),
    /// An integer, kept exact (SenML `v` as well; databases keep it as an integer).
    Int(i64),
    /// A boolean (SenML `vb`).
    Bool(bool),
    /// A string (SenML `vs`).
    Text(RString),
    /// Raw bytes (SenML `vd`).
    Bytes(RVec<u8>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Float(v) => write!(f, "{v}"),
            Value::Int(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Text(v) => write!(f, "{:?}", v.as_str()),
            Value::Bytes(v) => {
                f.write_str("0x")?;
                v.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.into())
    }
}

/// The unique id of a reading, created where the reading is made.
///
/// 128 bits laid out as a UUID version 7: 48 bits of Unix milliseconds, then a random per-process
/// prefix and a counter, so ids sort roughly by creation time and two processes (or one process
/// restarted) do not collide.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReadingId(pub [u8; 16]);

impl ReadingId {
    /// The id as one 128-bit number (big-endian).
    pub fn as_u128(self) -> u128 {
        u128::from_be_bytes(self.0)
    }
    /// Parses the hyphenated or plain 32-hex-digit form.
    pub fn parse(s: &str) -> Option<Self> {
        // Digit by digit: no string is made (a server parses one per reading it takes).
        let (mut v, mut digits) = (0u128, 0u32);
        for b in s.bytes().filter(|b| *b != b'-') {
            let d = char::from(b).to_digit(16)?;
            digits += 1;
            if digits > 32 {
                return None;
            }
            v = v << 4 | u128::from(d);
        }
        (digits == 32).then(|| ReadingId(v.to_be_bytes()))
    }
}

impl fmt::Display for ReadingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}
impl fmt::Debug for ReadingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Makes [`ReadingId`]s. Cheap to call from any thread.
#[derive(Debug)]
pub struct IdGenerator {
    seed: u64,
    counter: AtomicU64,
}

impl IdGenerator {
    /// A generator with a fresh random prefix.
    pub fn new() -> Self {
        let mut seed = [0u8; 8];
        if getrandom::getrandom(&mut seed).is_err() {
            // No entropy source: fall back on time and address, still distinct per process.
            let t = Timestamp::now().0 as u64;
            seed =
                (t ^ (std::process::id() as u64) << 32 ^ (&seed as *const _ as u64)).to_le_bytes();
        }
        IdGenerator {
            seed: u64::from_le_bytes(seed),
            counter: AtomicU64::new(0),
        }
    }

    /// The next id, stamped with `time`'s millisecond.
    pub fn next(&self, time: Timestamp) -> ReadingId {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let ms = (time.0.max(0) as u64 / 1000) & 0xFFFF_FFFF_FFFF;
        // 48 bits time, version nibble 7, 12 bits of the seed.
        let hi = (ms << 16) | 0x7000 | (self.seed >> 52);
        // variant bits 10, then 62 bits: seed plus counter, unique within this generator.
        let lo = (0b10 << 62) | (self.seed.wrapping_add(n) & ((1 << 62) - 1));
        ReadingId(((hi as u128) << 64 | lo as u128).to_be_bytes())
    }
}

impl Default for IdGenerator {
    fn default() -> Self {
        Self::new()
    }
}

/// One measurement.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct Reading {
    /// Unique id made at the source; later hops drop a reading whose id they already stored.
    pub id: ReadingId,
    /// When the measurement was taken.
    pub time: Timestamp,
    /// The device that took it (the gateway's `device` name, or a remote device's).
    pub device: Label,
    /// The sensor on that device: a probe id, an alias, `gps`.
    pub sensor: Label,
    /// What was measured: `temperature`, `latitude`.
    pub name: Label,
    /// The SenML unit (`Cel`, `lat`, `m/s`), or empty for none.
    pub unit: Label,
    /// The value.
    pub value: Value,
}

impl fmt::Display for Reading {
    /// One line: time, device/sensor, name, value and unit, id.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{} {}={}",
            self.time, self.device, self.sensor, self.name, self.value
        )?;
        if !self.unit.is_empty() {
            write!(f, " {}", self.unit)?;
        }
        write!(f, " id={}", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_timestamp_displays_and_rfc_3339_ones_as_humantime_does() {
        for t in [
            0,
            1,
            1_764_000_000_123_456,
            253_402_300_799_999_999,
            951_782_400_000_000,   // 2000-02-29
            4_107_542_400_000_000, // 2100-03-01
        ] {
            let ours = Timestamp(t).to_string();
            let theirs = humantime::format_rfc3339_micros(Timestamp(t).to_system_time());
            assert_eq!(ours, theirs.to_string(), "{t}");
        }
        // Before 1970 humantime panicked; from the year 10000 it returned an error, which
        // made `println!` panic (`gateway dead-letters show` of such a reading).
        assert_eq!(Timestamp(-1).to_string(), "1969-12-31T23:59:59.999999Z");
        assert_eq!(
            Timestamp(253_402_300_800_000_000).to_string(),
            "+10000-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            Timestamp(-62_167_219_200_000_001).to_string(),
            "-0001-12-31T23:59:59.999999Z"
        );
        for t in [i64::MIN, i64::MAX, -9_000_000_000_000_000_000] {
            assert!(Timestamp(t).to_string().ends_with('Z'));
        }
    }

    #[test]
    fn ids_are_unique_and_version_7() {
        let g = IdGenerator::new();
        let t = Timestamp::now();
        let a = g.next(t);
        let b = g.next(t);
        assert_ne!(a, b);
        assert_eq!(a.0[6] >> 4, 7, "version nibble");
        assert_eq!(a.0[8] >> 6, 0b10, "variant bits");
        assert_eq!(ReadingId::parse(&a.to_string()), Some(a));
        let other = IdGenerator::new();
        assert_ne!(other.next(t), a, "two generators start apart");
    }

    #[test]
    fn ids_parse_plain_or_hyphenated_and_nothing_else() {
        let want = ReadingId(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128.to_be_bytes());
        for ok in [
            "0123456789abcdeffedcba9876543210",
            "0123456789ABCDEFFEDCBA9876543210",
            "01234567-89ab-cdef-fedc-ba9876543210",
            "-0123456789abcdeffedcba9876543210-",
        ] {
            assert_eq!(ReadingId::parse(ok), Some(want), "{ok}");
        }
        for bad in [
            "",
            "0123456789abcdeffedcba987654321",
            "0123456789abcdeffedcba98765432100",
            "0123456789abcdeffedcba987654321g",
            "+123456789abcdeffedcba9876543210",
            "0123456789abcdeffedcba987654321\u{e9}",
            " 0123456789abcdeffedcba9876543210",
        ] {
            assert_eq!(ReadingId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn labels_are_equal_by_their_text() {
        let a = Label::new("t1");
        assert!(a == a.clone());
        assert!(a == Label::new("t1"), "another label of the same text");
        assert!(a != Label::new("t2"));
        assert!(a != Label::new("t"), "a prefix");
        assert!(Label::new("") == Label::from(String::new()));
        assert!(Label::new("") != Label::new("x"));
    }

    #[test]
    fn timestamp_round_trips_and_formats_rfc3339() {
        let t = Timestamp(1_764_085_351_123_456);
        assert_eq!(Timestamp::from_system_time(t.to_system_time()), t);
        assert_eq!(t.to_string(), "2025-11-25T15:42:31.123456Z");
        let before = Timestamp(-1_500_000);
        assert_eq!(Timestamp::from_system_time(before.to_system_time()), before);
    }

    #[test]
    fn reading_displays_on_one_line() {
        let r = Reading {
            id: ReadingId([0; 16]),
            time: Timestamp(0),
            device: "pi-01".into(),
            sensor: "28-0000".into(),
            name: "temperature".into(),
            unit: "Cel".into(),
            value: Value::Float(21.5),
        };
        assert_eq!(
            r.to_string(),
            "1970-01-01T00:00:00.000000Z pi-01/28-0000 temperature=21.5 Cel id=00000000-0000-0000-0000-000000000000"
        );
    }
}
