//! The last readings the ingress took in, by device: what `GET /{path}/{device}` and
//! `GET /{path}/{device}/{sensor}` answer, without asking the stores. Bounded in devices and in
//! readings per device; who may read what is [`may_read`]'s. No I/O.

use crate::request::Refused;
use gateway_coap::{
    coap_lite::{CoapOption, Packet, ResponseType},
    decode_uint, encode_uint, response, Block, ContentFormat,
};
use gateway_sdk::{Label, Reading, Timestamp, Value};
use gateway_senml as senml;
use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

/// Text and byte values longer than this are not kept (a GET answers from memory, and a device
/// must not be able to pin the server's memory with large values).
pub const MAX_VALUE: usize = 1024;

/// The table, shared by the ingress's workers.
pub struct Latest {
    devices: HashMap<Label, Device>,
    /// Devices by their updates, oldest first: an entry per update, `(clock, device)`, of
    /// which only a device's last (its [`Device::touched`]) counts; the first that counts is
    /// the next to go. Appending an entry per update, and skipping the outdated ones when
    /// they come to the front, costs less than moving the device in a sorted map each time;
    /// the queue is compacted when it holds more than twice as many entries as there are
    /// devices, plus 64 (one update in about that many pays for walking it).
    lru: VecDeque<(u64, Label)>,
    max_devices: usize,
    max_per_device: usize,
    max_bytes: usize,
    /// Bytes the kept readings take, roughly (labels, value, a fixed overhead each).
    bytes: usize,
    /// Bumped at every update: orders devices for eviction.
    clock: u64,
    /// The devices held, sorted, as [`Latest::devices`] last made them; `None` since the set
    /// changed.
    sorted: Option<Arc<Vec<String>>>,
    /// Readings not kept: their device was full of other (sensor, name) pairs, or their value
    /// was longer than [`MAX_VALUE`].
    pub dropped: u64,
    /// The server's clock, read only when a reading is older than the one kept (to see
    /// whether the kept one is from the future).
    now: fn() -> Timestamp,
}

/// How far ahead of the server's clock a kept reading may be and still hold off older ones: a
/// reading dated later (a device's clock gone wrong, or a hostile device's year 99999) would
/// otherwise stay its series' last for ever, every correct reading after it being older.
pub const MAX_AHEAD: Duration = Duration::from_secs(3600);

#[derive(Default)]
struct Device {
    /// The newest reading of each (sensor, name), after its [`series`] tag: a few (at most
    /// `max_per_device`) side by side, found by comparing tags before labels. Nested maps
    /// took three hash lookups, and as many pointer chases, per reading.
    readings: Vec<(u64, Reading)>,
    /// [`Latest::clock`] at the device's last update: which of its entries in [`Latest::lru`]
    /// counts.
    touched: u64,
    bytes: usize,
}

/// The bytes of `r`'s value.
fn value_len(r: &Reading) -> usize {
    match &r.value {
        Value::Text(t) => t.len(),
        Value::Bytes(b) => b.len(),
        _ => 8,
    }
}

/// Whether the entry `(touched, device)` of [`Latest::lru`] counts: it is the device's last.
fn counts(devices: &HashMap<Label, Device>, touched: u64, device: &Label) -> bool {
    devices.get(device).is_some_and(|d| d.touched == touched)
}

/// Whether `next`, taken in after `r`, replaces it: the same series, as recent or more, and
/// kept.
fn replaces(next: &Reading, r: &Reading) -> bool {
    next.time >= r.time
        && value_len(next) <= MAX_VALUE
        && next.name == r.name
        && next.sensor == r.sensor
        && next.device == r.device
}

/// A tag of `r`'s (sensor, name), to skip most label comparisons: FNV-1a, since equal tags
/// are compared label by label anyway (a peer that makes tags collide only slows its own
/// device's lookups, among at most `max_per_device` series).
fn series(r: &Reading) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in r.sensor.bytes().chain([0xff]).chain(r.name.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Roughly what keeping `r` costs: in memory, or in a GET answer, whichever is more. A value
/// is counted as SenML JSON may write it, each control character as the six bytes of its
/// `\u00XX` escape and bytes as their base64, and the names twice, so that a device's
/// answer cannot grow much past what its share counts (1 KiB of text of control characters
/// is 6 KiB of JSON).
fn size_of(r: &Reading) -> usize {
    let value = match &r.value {
        Value::Text(t) => t
            .bytes()
            .map(|b| match b {
                0..=0x1f | 0x7f => 6,
                b'"' | b'\\' => 2,
                _ => 1,
            })
            .sum(),
        Value::Bytes(b) => b.len().div_ceil(3) * 4,
        _ => 24,
    };
    96 + 2 * (r.sensor.len() + r.name.len() + r.unit.len()) + value
}

/// What one device's kept readings may take, counted as a GET answer could write them, per
/// series the table keeps of it (8 at least, so that any one reading fits): with the default
/// 64 series, a device's GET answer stays within about 64 KiB however it fills its values,
/// and so does the work of encoding it, which an Observe registration does under the lock
/// every worker's POSTs take.
pub const DEVICE_BYTES_PER_SERIES: usize = 1024;

impl Latest {
    /// At most `max_devices` devices, `max_per_device` (sensor, name) pairs each, and about
    /// `max_bytes` in all; the device updated longest ago goes first.
    pub fn new(max_devices: usize, max_per_device: usize, max_bytes: usize) -> Latest {
        Latest {
            devices: HashMap::new(),
            lru: VecDeque::new(),
            max_devices,
            max_per_device,
            max_bytes,
            bytes: 0,
            clock: 0,
            sorted: None,
            dropped: 0,
            now: Timestamp::now,
        }
    }

    /// Takes in readings (of any devices): for each (device, sensor, name) the one with the
    /// latest time stays, unless its time is more than [`MAX_AHEAD`] ahead of the server's
    /// clock: then the next reading of its series takes its place.
    pub fn record(&mut self, readings: &[Reading]) {
        if self.max_devices == 0 {
            return;
        }
        let cap = self
            .max_per_device
            .max(8)
            .saturating_mul(DEVICE_BYTES_PER_SERIES);
        // The device this call has just moved to the end of `lru`: the readings of a pack are
        // one device's, and it moves once.
        let mut touched: Option<&Label> = None;
        for (i, r) in readings.iter().enumerate() {
            if value_len(r) > MAX_VALUE {
                self.dropped += 1;
                continue;
            }
            // A series' readings usually come together: keep only the one that stays.
            if readings.get(i + 1).is_some_and(|next| replaces(next, r)) {
                continue;
            }
            if touched != Some(&r.device) {
                self.clock += 1;
                let d = match self.devices.get_mut(&r.device) {
                    Some(d) => d,
                    None => {
                        self.sorted = None;
                        self.devices.entry(r.device.clone()).or_default()
                    }
                };
                d.touched = self.clock;
                self.lru.push_back((self.clock, r.device.clone()));
                if self.lru.len() > 2 * self.devices.len() + 64 {
                    let devices = &self.devices;
                    self.lru.retain(|(t, device)| counts(devices, *t, device));
                }
                touched = Some(&r.device);
            }
            let d = self.devices.get_mut(&r.device).expect("touched above");
            let full = d.readings.len() >= self.max_per_device;
            let tag = series(r);
            let held = d
                .readings
                .iter_mut()
                .find(|(t, h)| *t == tag && h.name == r.name && h.sensor == r.sensor)
                .map(|(_, h)| h);
            let new = size_of(r);
            let ahead = |t: Timestamp| {
                let limit = (self.now)().0.saturating_add(MAX_AHEAD.as_micros() as i64);
                t.0 > limit
            };
            match held {
                Some(held) if held.time <= r.time || ahead(held.time) => {
                    let old = size_of(held);
                    if d.bytes + new - old > cap {
                        self.dropped += 1;
                        continue;
                    }
                    d.bytes = d.bytes + new - old;
                    self.bytes = self.bytes + new - old;
                    *held = r.clone();
                }
                Some(_) => {}
                None if !full && d.bytes + new <= cap => {
                    d.bytes += new;
                    self.bytes += new;
                    d.readings.push((tag, r.clone()));
                }
                None => self.dropped += 1,
            }
            // The device just updated is the newest: it stays.
            self.evict();
        }
    }

    /// Drops the devices updated longest ago while there are too many or they take too much.
    fn evict(&mut self) {
        while self.devices.len() > self.max_devices
            || (self.bytes > self.max_bytes && self.devices.len() > 1)
        {
            let Some((t, oldest)) = self.lru.pop_front() else {
                return;
            };
            if counts(&self.devices, t, &oldest) {
                let d = self.devices.remove(&oldest).expect("just found");
                self.sorted = None;
                self.bytes -= d.bytes;
            }
        }
    }

    /// The last readings of `device` (of its `sensor` only, if given), by sensor and name;
    /// `None` when it has none.
    pub fn get(&self, device: &str, sensor: Option<&str>) -> Option<Vec<Reading>> {
        let d = self.devices.get(&Label::from(device))?;
        let mut out: Vec<Reading> = d
            .readings
            .iter()
            .map(|(_, r)| r)
            .filter(|r| sensor.is_none_or(|want| r.sensor.as_str() == want))
            .cloned()
            .collect();
        if out.is_empty() {
            return None;
        }
        out.sort_by(|a, b| {
            (a.sensor.as_str(), a.name.as_str()).cmp(&(b.sensor.as_str(), b.name.as_str()))
        });
        Some(out)
    }

    /// Whether `device` has readings here.
    pub fn has(&self, device: &str) -> bool {
        self.devices.contains_key(&Label::from(device))
    }

    /// Forgets `device` (decommissioned); whether it was there.
    pub fn forget(&mut self, device: &str) -> bool {
        match self.devices.remove(&Label::from(device)) {
            Some(d) => {
                // Its entries in `lru` are outdated now: skipped when they come to the front.
                self.sorted = None;
                self.bytes -= d.bytes;
                true
            }
            None => false,
        }
    }

    /// The devices held, sorted: the same list until the set changes (a reader's discovery of
    /// a large fleet asks for it block by block, under the lock every worker takes).
    pub fn devices(&mut self) -> Arc<Vec<String>> {
        self.sorted
            .get_or_insert_with(|| {
                let mut all: Vec<String> = self.devices.keys().map(|k| k.to_string()).collect();
                all.sort();
                Arc::new(all)
            })
            .clone()
    }

    /// Bytes the kept readings take, roughly.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Whether the peer `identity` may read `device`'s last readings: its own, or any if it is
/// one of `readers`. A peer without an identity reads nothing.
pub fn may_read(identity: Option<&str>, device: &str, readers: &[String]) -> bool {
    match identity {
        Some(who) if readers.iter().any(|r| r == who) => true,
        // The anonymous peers' readings are nobody's own: a certificate named "anonymous"
        // does not make them its.
        Some(crate::request::ANONYMOUS) => false,
        Some(who) => who == device,
        None => false,
    }
}

/// The answer to a GET of last readings: SenML JSON (without Accept, or Accept 110 or 50) or
/// SenML CBOR (Accept 112 or 60), block by block (RFC 7959 Block2) when it is larger than
/// `max_block` bytes or the client asked for blocks. Each block carries the whole
/// representation's size (Size2) and an ETag, so that a client sees a change between blocks.
pub fn answer(req: &Packet, readings: &[Reading], max_block: usize) -> Result<Packet, Refused> {
    let accept = match req.get_first_option(CoapOption::Accept) {
        None => None,
        Some(v) => Some(decode_uint(v).ok_or_else(|| {
            Refused::bad(ResponseType::BadOption, "Accept is not a content-format")
        })?),
    };
    let accept = match accept {
        Some(a) if a > u32::from(u16::MAX) => {
            return Err(Refused::bad(
                ResponseType::NotAcceptable,
                "Accept is not a content-format",
            ))
        }
        a => a.map(|a| ContentFormat(a as u16)),
    };
    let (format, body) = match accept {
        None | Some(ContentFormat::SENML_JSON) => {
            (ContentFormat::SENML_JSON, senml::encode_json(readings))
        }
        Some(ContentFormat::JSON) => (ContentFormat::JSON, senml::encode_json(readings)),
        Some(ContentFormat::SENML_CBOR) => {
            (ContentFormat::SENML_CBOR, senml::encode_cbor(readings))
        }
        Some(ContentFormat::CBOR) => (ContentFormat::CBOR, senml::encode_cbor(readings)),
        Some(other) => {
            return Err(Refused::bad(
                ResponseType::NotAcceptable,
                format!("{other} is not offered: SenML JSON (110) or CBOR (112)"),
            ))
        }
    };
    blockwise(req, format, &body, etag(&body), max_block)
}

/// `body` as an answer to `req`: whole when it fits in `max_block` and no block was asked for,
/// else the block `req` asks for (RFC 7959 Block2, with Size2 and `tag`, the body's
/// [`etag`]; 4.02 past the end).
pub fn blockwise(
    req: &Packet,
    format: ContentFormat,
    body: &[u8],
    tag: [u8; 8],
    max_block: usize,
) -> Result<Packet, Refused> {
    let asked = req
        .get_first_option(CoapOption::Block2)
        .map(|v| {
            // A value too long is refused before (4.02); what is left is the reserved SZX 7,
            // which RFC 7959 2.2 answers with 4.00.
            Block::decode(v).ok_or_else(|| {
                Refused::bad(ResponseType::BadRequest, "Block2 with the reserved SZX 7")
            })
        })
        .transpose()?;
    let mut r = response(ResponseType::Content, "");
    format.set(&mut r);
    if asked.is_none() && body.len() <= max_block {
        r.payload = body.to_vec();
        return Ok(r);
    }
    let (num, size) = match asked {
        Some(b) => (b.num as usize, b.size().min(max_block)),
        None => (0, max_block),
    };
    // The largest power of two from 16 to 1024 within `size`.
    let szx = (0..=6u8).rev().find(|x| 16usize << x <= size).unwrap_or(0);
    let size = 16usize << szx;
    let start = num * size;
    if start >= body.len() && !(num == 0 && body.is_empty()) {
        return Err(Refused::bad(
            ResponseType::BadOption,
            format!(
                "block {num} of {size} bytes is past the end ({} bytes)",
                body.len()
            ),
        ));
    }
    let end = (start + size).min(body.len());
    r.add_option(CoapOption::ETag, tag.to_vec());
    r.add_option(
        CoapOption::Block2,
        Block {
            num: num as u32,
            more: end < body.len(),
            szx,
        }
        .encode(),
    );
    r.add_option(CoapOption::Size2, encode_uint(body.len() as u32));
    r.payload = body[start..end].to_vec();
    Ok(r)
}

/// A representation's entity tag: 8 bytes of FNV-1a.
pub fn etag(body: &[u8]) -> [u8; 8] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_sdk::{ReadingId, Timestamp, Value};

    fn reading(device: &str, sensor: &str, name: &str, t: i64, v: f64) -> Reading {
        Reading {
            id: ReadingId((t as u128 * 1000 + v as u128).to_be_bytes()),
            time: Timestamp(t),
            device: Label::from(device),
            sensor: Label::from(sensor),
            name: Label::from(name),
            unit: Label::from("Cel"),
            value: Value::Float(v),
        }
    }

    #[test]
    fn a_device_cannot_make_its_answer_much_larger_than_its_share() {
        // 64 series of 1 KiB of control characters: their SenML JSON would be about 400 KiB,
        // and every GET (or Observe registration, under the table's lock) encodes it.
        let mut l = Latest::new(10, 64, 1 << 30);
        let text = |i: usize| {
            let mut r = reading("pi-01", "s", &format!("name-{i:02}"), 1, 0.0);
            r.value = Value::Text("\u{1}".repeat(MAX_VALUE).into());
            r
        };
        l.record(&(0..64).map(text).collect::<Vec<_>>());
        let kept = l.get("pi-01", None).unwrap();
        let json = senml::encode_json(&kept);
        assert!(
            json.len() <= 64 * DEVICE_BYTES_PER_SERIES,
            "{} bytes of JSON",
            json.len()
        );
        assert!((9..64).contains(&kept.len()), "{} kept", kept.len());
        assert_eq!(l.dropped as usize, 64 - kept.len());
        // A newer value of a kept series that would not fit is not taken either.
        let mut bigger = text(0);
        bigger.time = Timestamp(2);
        let before = l.get("pi-01", None).unwrap().len();
        l.record(&[reading("pi-01", "s", "name-00", 2, 1.0)]);
        l.record(&[bigger]);
        let now = l.get("pi-01", None).unwrap();
        assert_eq!(now.len(), before);
        // Numbers under long names: a full share of series fits.
        let mut l = Latest::new(10, 64, 1 << 30);
        let long = "x".repeat(100);
        l.record(
            &(0..64)
                .map(|i| reading("pi-01", &long, &format!("{long}-{i:02}"), 1, 1.0))
                .collect::<Vec<_>>(),
        );
        assert_eq!(l.get("pi-01", None).unwrap().len(), 64);
        assert_eq!(l.dropped, 0);
    }

    /// A reading dated far ahead of the server's clock does not stay its series' last for
    /// ever: the next reading takes its place. One within [`MAX_AHEAD`] holds as before.
    #[test]
    fn a_reading_from_the_future_does_not_hold_its_series() {
        const NOW: i64 = 1_800_000_000_000_000;
        let hour = 3_600_000_000;
        let mut l = Latest::new(10, 10, 1 << 20);
        l.now = || Timestamp(NOW);
        let kept = |l: &Latest| match l.get("pi-01", Some("t")).unwrap()[0].value {
            Value::Float(v) => v,
            _ => unreachable!(),
        };
        l.record(&[reading("pi-01", "t", "temperature", NOW + 2 * hour, 99.0)]);
        assert_eq!(kept(&l), 99.0);
        l.record(&[reading("pi-01", "t", "temperature", NOW, 21.0)]);
        assert_eq!(
            kept(&l),
            21.0,
            "the reading of two hours ahead held its place"
        );
        l.record(&[reading("pi-01", "t", "temperature", NOW - 10_000_000, 20.0)]);
        assert_eq!(
            kept(&l),
            21.0,
            "an older reading does not replace a current one"
        );
        l.record(&[reading("pi-01", "t", "temperature", NOW + hour / 2, 22.0)]);
        l.record(&[reading("pi-01", "t", "temperature", NOW, 23.0)]);
        assert_eq!(kept(&l), 22.0, "half an hour ahead is within MAX_AHEAD");
    }

    #[test]
    fn keeps_the_newest_reading_of_each_sensor_and_name() {
        let mut l = Latest::new(10, 10, 1 << 20);
        l.record(&[
            reading("pi-01", "t1", "temperature", 2, 21.0),
            reading("pi-01", "t1", "temperature", 1, 20.0),
            reading("pi-01", "t2", "temperature", 1, 19.0),
            reading("pi-02", "t1", "temperature", 5, 30.0),
        ]);
        let got = l.get("pi-01", None).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0].value,
            Value::Float(21.0),
            "the older one came later and lost"
        );
        assert_eq!(
            l.get("pi-01", Some("t2")).unwrap()[0].value,
            Value::Float(19.0)
        );
        assert!(l.get("pi-01", Some("t9")).is_none());
        assert!(l.get("pi-03", None).is_none());
        assert!(l.forget("pi-02") && !l.forget("pi-02"));
        assert_eq!(*l.devices(), ["pi-01"]);
    }

    #[test]
    fn of_a_series_repeated_within_a_pack_the_newest_stays_and_equal_times_go_to_the_last() {
        let mut l = Latest::new(10, 10, 1 << 20);
        l.record(&[
            reading("pi-01", "t1", "temperature", 1, 20.0),
            reading("pi-01", "t1", "temperature", 3, 23.0),
            reading("pi-01", "t1", "temperature", 2, 22.0),
            reading("pi-01", "t2", "temperature", 4, 10.0),
            reading("pi-01", "t2", "temperature", 4, 11.0),
            reading("pi-02", "t2", "temperature", 4, 40.0),
            reading("pi-01", "t1", "temperature", 3, 24.0),
        ]);
        let got = l.get("pi-01", None).unwrap();
        let values: Vec<&Value> = got.iter().map(|r| &r.value).collect();
        assert_eq!(values, [&Value::Float(24.0), &Value::Float(11.0)]);
        assert_eq!(l.get("pi-02", None).unwrap()[0].value, Value::Float(40.0));
        // A pack that is one series throughout is one update.
        let series: Vec<Reading> = (0..20)
            .map(|i| reading("pi-03", "t1", "temperature", 10, f64::from(i)))
            .collect();
        l.record(&series);
        assert_eq!(l.get("pi-03", None).unwrap()[0].value, Value::Float(19.0));
        assert_eq!(l.dropped, 0);
    }

    #[test]
    fn the_sorted_devices_are_made_again_only_when_the_set_changes() {
        let mut l = Latest::new(2, 4, 1 << 20);
        l.record(&[
            reading("b", "s1", "n", 1, 1.0),
            reading("a", "s1", "n", 1, 1.0),
        ]);
        let first = l.devices();
        assert_eq!(*first, ["a", "b"]);
        // New readings of devices held: the same list.
        l.record(&[reading("a", "s2", "n", 2, 2.0)]);
        assert!(Arc::ptr_eq(&first, &l.devices()));
        // A device added (and the oldest pushed out), one forgotten: made again.
        l.record(&[reading("c", "s1", "n", 3, 1.0)]);
        assert_eq!(*l.devices(), ["a", "c"]);
        let second = l.devices();
        assert!(l.forget("a"));
        assert!(!Arc::ptr_eq(&second, &l.devices()));
        assert_eq!(*l.devices(), ["c"]);
    }

    #[test]
    fn stays_within_its_bounds() {
        let mut l = Latest::new(2, 2, 1 << 20);
        l.record(&[
            reading("a", "s1", "n", 1, 1.0),
            reading("b", "s1", "n", 1, 1.0),
        ]);
        l.record(&[reading("a", "s2", "n", 2, 1.0)]);
        // A third device pushes out the one updated longest ago (b).
        l.record(&[reading("c", "s1", "n", 3, 1.0)]);
        assert_eq!(*l.devices(), ["a", "c"]);
        // A third pair on a full device is dropped and counted.
        l.record(&[reading("a", "s3", "n", 4, 1.0)]);
        assert_eq!(l.get("a", None).unwrap().len(), 2);
        assert_eq!(l.dropped, 1);
        let mut off = Latest::new(0, 10, 1 << 20);
        off.record(&[reading("a", "s1", "n", 1, 1.0)]);
        assert!(off.devices().is_empty());
    }

    /// The device updated longest ago goes first, however often the others were updated in
    /// between and whichever were forgotten, and the order's memory stays within twice the
    /// devices held (plus a little).
    #[test]
    fn the_device_updated_longest_ago_goes_first() {
        let mut l = Latest::new(3, 4, 1 << 20);
        for d in ["a", "b", "c"] {
            l.record(&[reading(d, "s", "n", 1, 1.0)]);
        }
        for t in 2..500 {
            l.record(&[reading("a", "s", "n", t, 1.0)]);
            l.record(&[reading("c", "s", "n", t, 1.0)]);
            assert!(l.lru.len() <= 2 * 3 + 64 + 1, "{}", l.lru.len());
        }
        l.record(&[reading("d", "s", "n", 1, 1.0)]);
        assert_eq!(*l.devices(), ["a", "c", "d"], "b was updated longest ago");
        // Forgotten, a device's place in the order is skipped.
        assert!(l.forget("a"));
        l.record(&[reading("e", "s", "n", 1, 1.0)]);
        assert_eq!(*l.devices(), ["c", "d", "e"]);
        l.record(&[reading("c", "s", "n", 600, 1.0)]);
        l.record(&[reading("f", "s", "n", 1, 1.0)]);
        assert_eq!(*l.devices(), ["c", "e", "f"], "d was updated longest ago");
        // A device forgotten and back is as new.
        assert!(l.forget("e"));
        l.record(&[reading("e", "s", "n", 2, 1.0)]);
        l.record(&[reading("g", "s", "n", 1, 1.0)]);
        assert_eq!(*l.devices(), ["e", "f", "g"]);
    }

    fn get(accept: Option<u16>, block2: Option<Block>) -> Packet {
        let mut p =
            gateway_coap::request(gateway_coap::coap_lite::RequestType::Get, "x", None, vec![]);
        if let Some(a) = accept {
            p.add_option(CoapOption::Accept, encode_uint(u32::from(a)));
        }
        if let Some(b) = block2 {
            p.add_option(CoapOption::Block2, b.encode());
        }
        p
    }

    #[test]
    fn answers_senml_by_accept_and_block_by_block_when_large() {
        let few = [reading("pi-01", "t1", "temperature", 1, 21.5)];
        let r = answer(&get(None, None), &few, 1024).unwrap();
        assert_eq!(ContentFormat::of(&r), Ok(Some(ContentFormat::SENML_JSON)));
        // The reading's time (1 µs after 1970) goes as a relative time: resolved against a
        // now of today (one before 1978 is refused).
        let now = gateway_sdk::Timestamp(1_764_085_351_000_000);
        let back = senml::decode_json(&r.payload, 10, now, "x").unwrap();
        assert_eq!(back.readings[0].value, Value::Float(21.5));
        let r = answer(&get(Some(112), None), &few, 1024).unwrap();
        assert_eq!(ContentFormat::of(&r), Ok(Some(ContentFormat::SENML_CBOR)));
        let e = answer(&get(Some(0), None), &few, 1024).unwrap_err();
        assert_eq!(
            gateway_coap::Code::of(&e.reply),
            Some(gateway_coap::Code::new(4, 6))
        );

        let many: Vec<Reading> = (0..40)
            .map(|i| reading("pi-01", &format!("t{i}"), "temperature", 1, 20.0 + i as f64))
            .collect();
        let whole = senml::encode_json(&many);
        assert!(whole.len() > 1024);
        let mut got = Vec::new();
        let mut num = 0;
        loop {
            let r = answer(
                &get(
                    None,
                    (num > 0).then_some(Block {
                        num,
                        more: false,
                        szx: 4,
                    }),
                ),
                &many,
                1024,
            )
            .unwrap();
            let b = Block::decode(r.get_first_option(CoapOption::Block2).unwrap()).unwrap();
            assert_eq!(b.num, num);
            got.extend_from_slice(&r.payload);
            if !b.more {
                break;
            }
            // The first answer chose 1024-byte blocks; the client asks for 256 from then on.
            num = (got.len() / 256) as u32;
        }
        assert_eq!(got, whole);
        let past = answer(
            &get(
                None,
                Some(Block {
                    num: 99,
                    more: false,
                    szx: 6,
                }),
            ),
            &many,
            1024,
        );
        assert_eq!(
            gateway_coap::Code::of(&past.unwrap_err().reply),
            Some(gateway_coap::Code::new(4, 2))
        );
    }

    #[test]
    fn large_values_are_not_kept_and_the_byte_budget_evicts_the_oldest() {
        let mut l = Latest::new(100, 100, 4_000);
        let mut big = reading("a", "s1", "n", 1, 1.0);
        big.value = Value::Text("x".repeat(MAX_VALUE + 1).as_str().into());
        l.record(&[big]);
        assert!(!l.has("a"));
        assert_eq!(l.dropped, 1);
        for d in 0..40 {
            l.record(&[reading(&format!("d{d:02}"), "s1", "n", d, 1.0)]);
        }
        assert!(l.bytes() <= 4_000, "{}", l.bytes());
        assert!(l.has("d39") && !l.has("d00"));
        let kept = l.devices().len();
        assert!(l.forget("d39"));
        assert_eq!(l.devices().len(), kept - 1);
    }

    #[test]
    fn a_device_reads_its_own_and_a_reader_reads_all() {
        let readers = vec!["dashboard".to_owned()];
        assert!(may_read(Some("pi-01"), "pi-01", &readers));
        assert!(!may_read(Some("pi-01"), "pi-02", &readers));
        assert!(may_read(Some("dashboard"), "pi-02", &readers));
        assert!(!may_read(None, "anonymous", &readers));
        // A certificate named "anonymous" does not own the anonymous peers' readings.
        assert!(!may_read(Some("anonymous"), "anonymous", &readers));
    }
}
