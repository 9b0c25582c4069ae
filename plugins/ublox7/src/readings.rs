//! One epoch as readings. Without a fix, only the fix state and the satellites in view: never
//! a stale position.

use crate::epoch::{Epoch, FixKind};
use gateway_sdk::{Label, Reading, SourceContext, Timestamp, Value};

/// The labels, built once.
pub struct Labels {
    sensor: Label,
    units: Units,
}

struct Units {
    none: Label,
    lat: Label,
    lon: Label,
    m: Label,
    mps: Label,
    deg: Label,
    s: Label,
}

impl Labels {
    /// Labels for readings of sensor `sensor`.
    pub fn new(sensor: &str) -> Self {
        Labels {
            sensor: Label::from(sensor),
            units: Units {
                none: "".into(),
                lat: "lat".into(),
                lon: "lon".into(),
                m: "m".into(),
                mps: "m/s".into(),
                deg: "deg".into(),
                s: "s".into(),
            },
        }
    }
}

/// The `(name, unit, value)` triples of an epoch, in a fixed order.
pub fn values(e: &Epoch) -> Vec<(&'static str, &'static str, Value)> {
    let mut v: Vec<(&'static str, &'static str, Value)> = Vec::new();
    if let Some(fix) = e.fix_kind() {
        v.push(("fix_type", "", Value::Text(fix.name().into())));
    }
    v.push((
        "fix_quality",
        "",
        Value::Int(i64::from(e.quality.unwrap_or(0))),
    ));
    if let Some(n) = e.satellites_in_view() {
        v.push(("satellites_in_view", "", Value::Int(i64::from(n))));
    }
    if !e.has_fix() {
        return v;
    }
    // Only with a fix: before one, a receiver's date and time may be its clock's guess (a
    // u-blox 7 without a backup battery starts at 1980, and a week-number rollover puts it
    // 19.6 years back), which nothing in the sentences tells from the satellites' time.
    if let Some(t) = e.gps_time() {
        v.push(("gps_time", "s", Value::Float(t)));
    }
    if let Some(n) = e.satellites_used {
        v.push(("satellites_used", "", Value::Int(i64::from(n))));
    }
    if let (Some(lat), Some(lon)) = (e.latitude, e.longitude) {
        v.push(("latitude", "lat", Value::Float(lat)));
        v.push(("longitude", "lon", Value::Float(lon)));
    }
    if e.fix_kind() != Some(FixKind::TwoD) {
        if let Some(a) = e.altitude {
            v.push(("altitude", "m", Value::Float(a)));
        }
    }
    if let Some(s) = e.speed {
        v.push(("speed", "m/s", Value::Float(s)));
    }
    if let Some(c) = e.course {
        v.push(("course", "deg", Value::Float(c)));
    }
    for (name, dop) in [("hdop", e.hdop), ("vdop", e.vdop), ("pdop", e.pdop)] {
        if let Some(d) = dop {
            v.push((name, "", Value::Float(d)));
        }
    }
    v
}

/// The readings of an epoch, stamped `time`.
pub fn readings(ctx: &SourceContext, labels: &Labels, e: &Epoch, time: Timestamp) -> Vec<Reading> {
    let u = &labels.units;
    values(e)
        .into_iter()
        .map(|(name, unit, value)| {
            let unit = match unit {
                "lat" => &u.lat,
                "lon" => &u.lon,
                "m" => &u.m,
                "m/s" => &u.mps,
                "deg" => &u.deg,
                "s" => &u.s,
                _ => &u.none,
            };
            ctx.reading_at(time, &labels.sensor, &Label::from(name), unit, value)
        })
        .collect()
}
