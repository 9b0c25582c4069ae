//! From serial bytes to epochs: [`LineReader`] + checksum + the `nmea` crate + [`Assembler`].
//! No I/O; the source feeds it what the port (or a replay) delivers.

use crate::{
    epoch::{Assembler, Epoch},
    reader::{checksum_ok, ChecksumError, LineReader, ReaderStats},
};
use nmea::{Error, ParseResult};

/// Decodes a byte stream into epochs.
#[derive(Debug, Default)]
pub struct Decoder {
    reader: LineReader,
    assembler: Assembler,
}

/// What one line turned into.
enum Line {
    Sentence(Box<ParseResult>),
    /// A GSV: talker id and satellites in view. Read from the fields directly, since the `nmea`
    /// crate refuses the valid `$GPGSV,1,1,00*79` that a receiver without satellites sends.
    InView(String, u16),
    Dropped,
}

/// The talker and satellites-in-view field of a `$xxGSV,total,number,in_view,...` sentence.
fn gsv_in_view(line: &str) -> Option<(String, u16)> {
    let body = line.strip_prefix('$')?.split('*').next()?;
    let mut fields = body.split(',');
    let head = fields.next()?;
    if head.len() != 5 || !head.ends_with("GSV") {
        return None;
    }
    let n = fields.nth(2)?.parse().ok()?;
    Some((head[..2].to_owned(), n))
}

/// The most satellites a count may say (its NMEA field has two digits).
const MAX_SATELLITES: u16 = 99;

/// Whether every number of `s` is one a receiver can send. The `nmea` crate takes `nan`,
/// `inf` and out-of-range values as they are written; a sentence with a good checksum can
/// still carry them (a corrupted buffer, a spoofing device on the serial line).
fn plausible(s: &ParseResult) -> bool {
    fn within<T: Into<f64> + Copy>(v: Option<T>, lo: f64, hi: f64) -> bool {
        v.is_none_or(|v| {
            let v = v.into();
            v.is_finite() && (lo..=hi).contains(&v)
        })
    }
    let position =
        |lat: Option<f64>, lon: Option<f64>| within(lat, -90.0, 90.0) && within(lon, -180.0, 180.0);
    // u-blox 7 limits: 515 m/s (about 1,000 knots), 50,000 m of altitude.
    let (knots, course) = (1_001.0, 360.0);
    let dop = |v: Option<f32>| within(v, 0.0, 99.99);
    match s {
        ParseResult::RMC(r) => {
            position(r.lat, r.lon)
                && within(r.speed_over_ground, 0.0, knots)
                && within(r.true_course, 0.0, course)
        }
        ParseResult::GGA(g) => {
            position(g.latitude, g.longitude)
                && within(g.altitude, -1_000.0, 50_000.0)
                && dop(g.hdop)
                && within(g.fix_satellites, 0.0, f64::from(MAX_SATELLITES))
        }
        ParseResult::GLL(g) => position(g.latitude, g.longitude),
        ParseResult::VTG(v) => {
            within(v.speed_over_ground, 0.0, knots) && within(v.true_course, 0.0, course)
        }
        ParseResult::GSA(g) => dop(g.pdop) && dop(g.hdop) && dop(g.vdop),
        _ => true,
    }
}

/// Whether the latitude and longitude fields of an RMC, GGA or GLL sentence have fewer than
/// 60 minutes (`ddmm.mmmm`, `dddmm.mmmm`): the `nmea` crate adds 99 minutes as 1.65 degrees.
fn minutes_below_60(line: &str) -> bool {
    let body = line.split('*').next().unwrap_or("");
    let fields: Vec<&str> = body.split(',').collect();
    let (lat, lon) = match fields.first().map(|h| h.get(3..).unwrap_or("")) {
        Some("RMC") => (3, 5),
        Some("GGA") => (2, 4),
        Some("GLL") => (1, 3),
        _ => return true,
    };
    // Digits and a point only: the crate's number parser takes a sign, and `48-7.038` read
    // as 48 degrees minus 7 minutes.
    let ok = |i: usize, degree_digits: usize| {
        let f = fields.get(i).copied().unwrap_or("");
        f.is_empty()
            || f.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                && f.get(degree_digits..)
                    .and_then(|m| m.parse::<f64>().ok())
                    .is_some_and(|m| m < 60.0)
    };
    ok(lat, 2) && ok(lon, 3)
}

fn decode_line(line: &str, stats: &mut ReaderStats) -> Line {
    match checksum_ok(line) {
        Err(ChecksumError::Missing) => {
            stats.no_checksum += 1;
            return Line::Dropped;
        }
        Err(ChecksumError::Mismatch) => {
            stats.bad_checksum += 1;
            return Line::Dropped;
        }
        Ok(()) => {}
    }
    if let Some((talker, n)) = gsv_in_view(line) {
        if n > MAX_SATELLITES {
            stats.malformed += 1;
            return Line::Dropped;
        }
        stats.sentences += 1;
        return Line::InView(talker, n);
    }
    match nmea::parse_str(line) {
        Ok(ParseResult::TXT(_)) => {
            stats.ignored += 1;
            Line::Dropped
        }
        Ok(s) if !plausible(&s) || !minutes_below_60(line) => {
            stats.malformed += 1;
            Line::Dropped
        }
        Ok(s) => {
            stats.sentences += 1;
            Line::Sentence(Box::new(s))
        }
        Err(Error::Unsupported(_) | Error::Unknown(_) | Error::DisabledSentence) => {
            stats.ignored += 1;
            Line::Dropped
        }
        // Below the reader's MAX_LINE but above what the crate parses.
        Err(Error::SentenceLength(_)) => {
            stats.too_long += 1;
            Line::Dropped
        }
        Err(_) => {
            stats.malformed += 1;
            Line::Dropped
        }
    }
}

impl Decoder {
    /// Feeds bytes; returns the epochs they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Epoch> {
        self.feed(bytes, None)
    }

    /// Feeds bytes read at `now`; returns the epochs they completed, each with
    /// [`Epoch::received`] the `now` of the bytes that completed its first sentence. A
    /// receiver's burst lasts up to its whole second at 9600 baud, and its end is known only
    /// when the line goes quiet or the next epoch starts: the first sentence is the closest
    /// the gateway's clock gets to the fix's own time.
    pub fn push_at(&mut self, bytes: &[u8], now: gateway_sdk::Timestamp) -> Vec<Epoch> {
        self.feed(bytes, Some(now))
    }

    fn feed(&mut self, bytes: &[u8], now: Option<gateway_sdk::Timestamp>) -> Vec<Epoch> {
        let mut out = Vec::new();
        let assembler = &mut self.assembler;
        self.reader.push(bytes, |line, stats| {
            match decode_line(line, stats) {
                Line::Sentence(s) => out.extend(assembler.push(&s)),
                Line::InView(talker, n) => assembler.in_view(&talker, n),
                Line::Dropped => return,
            }
            if let Some(now) = now {
                assembler.stamp(now);
            }
        });
        out
    }

    /// Ends the epoch in progress (the line went quiet).
    pub fn flush(&mut self) -> Option<Epoch> {
        self.assembler.flush()
    }

    /// Counters.
    pub fn stats(&self) -> &ReaderStats {
        &self.reader.stats
    }
}
