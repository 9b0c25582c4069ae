//! Assembling one fix per receiver epoch from the sentences that share a UTC time. No I/O.
//!
//! A u-blox 7 sends, once per epoch: RMC, VTG, GGA, GSA, GSV (several), GLL. RMC, GGA and GLL
//! carry the epoch's time; VTG, GSA and GSV do not and belong to the epoch in progress. An epoch
//! ends when a sentence carries another time, when a second RMC arrives (no-fix receivers send
//! no time at all), or when the line goes quiet (the caller calls [`Assembler::flush`]).

use chrono::{NaiveDate, NaiveTime, Timelike};
use nmea::{
    sentences::{gsa::GsaMode2, rmc::RmcStatusOfFix, FixType},
    ParseResult,
};
use std::collections::BTreeMap;

/// Fix type, as GSA reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixKind {
    /// No fix.
    None,
    /// Latitude and longitude only.
    TwoD,
    /// With altitude.
    ThreeD,
}

impl FixKind {
    /// `none`, `2D` or `3D`.
    pub fn name(self) -> &'static str {
        match self {
            FixKind::None => "none",
            FixKind::TwoD => "2D",
            FixKind::ThreeD => "3D",
        }
    }
}

/// Everything one epoch said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Epoch {
    /// UTC time of the epoch.
    pub time: Option<NaiveTime>,
    /// UTC date (from RMC).
    pub date: Option<NaiveDate>,
    /// Whether a sentence of the epoch said the position is valid.
    pub valid: bool,
    /// Degrees, north positive.
    pub latitude: Option<f64>,
    /// Degrees, east positive.
    pub longitude: Option<f64>,
    /// Metres above mean sea level (GGA).
    pub altitude: Option<f64>,
    /// Metres per second over ground.
    pub speed: Option<f64>,
    /// Degrees from true north.
    pub course: Option<f64>,
    /// GGA fix quality: 0 invalid, 1 GPS, 2 DGPS, ...
    pub quality: Option<u8>,
    /// GSA fix type.
    pub fix: Option<FixKind>,
    /// Satellites used in the fix.
    pub satellites_used: Option<u32>,
    /// Satellites in view, per talker id (GSV).
    pub in_view: BTreeMap<String, u16>,
    /// Dilutions of precision.
    pub hdop: Option<f64>,
    /// Vertical.
    pub vdop: Option<f64>,
    /// Position.
    pub pdop: Option<f64>,
    /// Sentences that made it up.
    pub sentences: u32,
    /// When its first sentence was read, on the gateway's clock, if the caller said
    /// ([`crate::decoder::Decoder::push_at`]): the epoch's readings are stamped with it.
    pub received: Option<gateway_sdk::Timestamp>,
    has_rmc: bool,
}

impl Epoch {
    /// Satellites in view, over every constellation.
    pub fn satellites_in_view(&self) -> Option<u32> {
        (!self.in_view.is_empty()).then(|| self.in_view.values().map(|&v| u32::from(v)).sum())
    }

    /// The fix type from GSA; without a GSA, `None` when no sentence said the position is
    /// valid, and unknown (`Option::None`) otherwise.
    pub fn fix_kind(&self) -> Option<FixKind> {
        match self.fix {
            Some(f) => Some(f),
            None if !self.valid => Some(FixKind::None),
            None => None,
        }
    }

    /// Whether the epoch has a usable position: a sentence said valid and GSA, if any, did not
    /// say "no fix" (receivers disagree with themselves in the epoch a fix is gained or lost).
    pub fn has_fix(&self) -> bool {
        self.valid && self.fix_kind() != Some(FixKind::None)
    }

    /// UTC date and time as seconds since the Unix epoch, when both are known.
    pub fn gps_time(&self) -> Option<f64> {
        let dt = self.date?.and_time(self.time?);
        let ts = dt.and_utc();
        Some(ts.timestamp() as f64 + f64::from(ts.nanosecond()) / 1e9)
    }
}

const KNOTS_TO_MPS: f64 = 1852.0 / 3600.0;

/// The `nmea` crate parses decimal fields as `f32`; widen them to the `f64` of the same decimal
/// text (`183.8`, not `183.8000030517578`).
fn wide(x: f32) -> f64 {
    format!("{x}").parse().unwrap_or(f64::from(x))
}

fn quality(f: FixType) -> u8 {
    match f {
        FixType::Invalid => 0,
        FixType::Gps => 1,
        FixType::DGps => 2,
        FixType::Pps => 3,
        FixType::Rtk => 4,
        FixType::FloatRtk => 5,
        FixType::Estimated => 6,
        FixType::Manual => 7,
        FixType::Simulation => 8,
    }
}

/// Builds epochs from parsed sentences.
#[derive(Debug, Default)]
pub struct Assembler {
    cur: Epoch,
}

impl Assembler {
    /// Adds a sentence; returns the previous epoch if this sentence starts a new one.
    pub fn push(&mut self, s: &ParseResult) -> Option<Epoch> {
        let (time, is_rmc) = match s {
            ParseResult::RMC(r) => (r.fix_time, true),
            ParseResult::GGA(g) => (g.fix_time, false),
            ParseResult::GLL(g) => (g.fix_time, false),
            _ => (None, false),
        };
        let new_time = matches!((time, self.cur.time), (Some(t), Some(c)) if t != c);
        let second_rmc = is_rmc && self.cur.has_rmc;
        let done = if (new_time || second_rmc) && self.cur.sentences > 0 {
            self.flush()
        } else {
            None
        };
        self.apply(s, time);
        done
    }

    /// Records a GSV's satellites-in-view count for constellation `talker` (`GP`, `GL`, ...).
    /// GSV carries no time, so it belongs to the epoch in progress.
    pub fn in_view(&mut self, talker: &str, n: u16) {
        self.cur.in_view.insert(talker.to_owned(), n);
        self.cur.sentences += 1;
    }

    /// Notes `now` as when the epoch in progress was received, unless it has a time already
    /// or no sentence yet.
    pub fn stamp(&mut self, now: gateway_sdk::Timestamp) {
        if self.cur.sentences > 0 && self.cur.received.is_none() {
            self.cur.received = Some(now);
        }
    }

    /// Ends the epoch in progress (the line went quiet); `None` if it is empty.
    pub fn flush(&mut self) -> Option<Epoch> {
        let e = std::mem::take(&mut self.cur);
        (e.sentences > 0).then_some(e)
    }

    fn apply(&mut self, s: &ParseResult, time: Option<NaiveTime>) {
        let e = &mut self.cur;
        if e.time.is_none() {
            e.time = time;
        }
        match s {
            ParseResult::RMC(r) => {
                e.has_rmc = true;
                e.date = r.fix_date.or(e.date);
                let valid = r.status_of_fix != RmcStatusOfFix::Invalid;
                if valid {
                    e.valid = true;
                    e.latitude = r.lat.or(e.latitude);
                    e.longitude = r.lon.or(e.longitude);
                    e.speed = r
                        .speed_over_ground
                        .map(|k| wide(k) * KNOTS_TO_MPS)
                        .or(e.speed);
                    e.course = r.true_course.map(wide).or(e.course);
                }
            }
            ParseResult::GGA(g) => {
                let q = g.fix_type.map(quality).unwrap_or(0);
                e.quality = Some(q);
                e.satellites_used = g.fix_satellites.or(e.satellites_used);
                e.hdop = g.hdop.map(wide).or(e.hdop);
                if q > 0 {
                    e.valid = true;
                    e.latitude = g.latitude.or(e.latitude);
                    e.longitude = g.longitude.or(e.longitude);
                    e.altitude = g.altitude.map(wide).or(e.altitude);
                }
            }
            ParseResult::GLL(g) if g.valid => {
                e.valid = true;
                e.latitude = e.latitude.or(g.latitude);
                e.longitude = e.longitude.or(g.longitude);
            }
            ParseResult::VTG(v) => {
                if e.speed.is_none() {
                    e.speed = v.speed_over_ground.map(|k| wide(k) * KNOTS_TO_MPS);
                }
                if e.course.is_none() {
                    e.course = v.true_course.map(wide);
                }
            }
            ParseResult::GSA(g) => {
                let kind = match g.mode2 {
                    GsaMode2::NoFix => FixKind::None,
                    GsaMode2::Fix2D => FixKind::TwoD,
                    GsaMode2::Fix3D => FixKind::ThreeD,
                };
                // Several GSA (one per constellation): keep the best.
                let better = matches!(
                    (e.fix, kind),
                    (None | Some(FixKind::None), _) | (Some(FixKind::TwoD), FixKind::ThreeD)
                );
                if better {
                    e.fix = Some(kind);
                }
                e.pdop = g.pdop.map(wide).or(e.pdop);
                e.hdop = e.hdop.or(g.hdop.map(wide));
                e.vdop = g.vdop.map(wide).or(e.vdop);
            }
            // Satellites in view come through `in_view`, which the decoder calls for every GSV.
            _ => {}
        }
        e.sentences += 1;
    }
}
