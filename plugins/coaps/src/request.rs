//! The ingress's request path, one step a function, each readable and testable alone. No I/O:
//! [`crate::Ingress`] calls them in order and sends what they answer.
//!
//! 1. [`route`]: which resource, which method (4.04, 4.05, or the discovery answer);
//! 2. [`decode`]: content negotiation and SenML decoding (4.15, 4.13, 4.00);
//! 3. [`authorize`]: a device speaks for itself only (4.03); a peer without an identity speaks
//!    for the anonymous device;
//! 4. [`Seen::admit`]: readings stored already are dropped, and a pack that overlaps one still
//!    being stored waits its turn (5.03);
//! 5. [`stored`], [`not_stored`]: the answer once the sinks are done.

use gateway_coap::{
    coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType},
    encode_uint, path_of, response, retry_later, ContentFormat,
};
use gateway_sdk::{ErrorKind, Label, PluginError, Reading, ReadingId, Timestamp};
use gateway_senml as senml;
use std::collections::HashSet;

/// The device name of readings from peers without an identity (`allow_anonymous`).
pub const ANONYMOUS: &str = "anonymous";

/// An answer that ends a request before its readings go anywhere.
#[derive(Debug)]
pub struct Refused {
    /// What the device is told.
    pub reply: Packet,
    /// For the log.
    pub why: String,
    /// Counted as a bad request (else as the server being unavailable).
    pub bad: bool,
}

impl Refused {
    pub(crate) fn bad(code: ResponseType, why: impl Into<String>) -> Refused {
        let why = why.into();
        Refused {
            reply: response(code, &why),
            why,
            bad: true,
        }
    }
}

/// Where a request goes.
#[derive(Debug, PartialEq)]
pub enum Route {
    /// `GET /.well-known/core`: answered at once, with the links the peer may follow.
    Discovery,
    /// `POST` to the readings resource.
    Readings,
    /// `GET /{path}/{device}[/{sensor}]`: the device's last readings.
    Latest {
        /// Whose.
        device: String,
        /// One sensor's only.
        sensor: Option<String>,
    },
    /// `PUT /{path}/{device}/{sensor}`: one reading of that sensor, stored as a POST's are
    /// (and, like them, once per id: sending it again changes nothing).
    Put {
        /// Whose.
        device: String,
        /// Which sensor.
        sensor: String,
    },
    /// `DELETE /{path}/{device}`: forget the device's last readings (decommissioning).
    Forget {
        /// Whose.
        device: String,
    },
}

/// Routes a request by path and method. `path` is the readings resource, without slashes
/// around it.
pub fn route(req: &Packet, path: &str) -> Result<Route, Refused> {
    let MessageClass::Request(method) = req.header.code else {
        return Err(Refused::bad(ResponseType::BadRequest, "not a request"));
    };
    let target = path_of(req);
    if target == ".well-known/core" {
        if method != RequestType::Get {
            return Err(Refused::bad(ResponseType::MethodNotAllowed, "GET only"));
        }
        return Ok(Route::Discovery);
    }
    if target == path {
        if method != RequestType::Post {
            return Err(Refused::bad(
                ResponseType::MethodNotAllowed,
                format!("POST only (GET /{path}/DEVICE reads a device's last readings)"),
            ));
        }
        return Ok(Route::Readings);
    }
    let below: Vec<&str> = match target.strip_prefix(path).and_then(|t| t.strip_prefix('/')) {
        Some(rest) => rest.split('/').collect(),
        None => return Err(Refused::bad(ResponseType::NotFound, "no such resource")),
    };
    match (below.as_slice(), method) {
        ([device], RequestType::Get) => Ok(Route::Latest {
            device: (*device).to_owned(),
            sensor: None,
        }),
        ([device], RequestType::Delete) => Ok(Route::Forget {
            device: (*device).to_owned(),
        }),
        ([_], _) => Err(Refused::bad(
            ResponseType::MethodNotAllowed,
            "GET or DELETE only (POST readings to the collection)",
        )),
        ([device, sensor], RequestType::Get) => Ok(Route::Latest {
            device: (*device).to_owned(),
            sensor: Some((*sensor).to_owned()),
        }),
        ([device, sensor], RequestType::Put) => Ok(Route::Put {
            device: (*device).to_owned(),
            sensor: (*sensor).to_owned(),
        }),
        ([_, _], _) => Err(Refused::bad(
            ResponseType::MethodNotAllowed,
            "GET or PUT only",
        )),
        _ => Err(Refused::bad(ResponseType::NotFound, "no such resource")),
    }
}

/// The answer to `GET /.well-known/core` (RFC 6690): the readings collection, and the last
/// readings of each device in `devices` (those the peer may read).
pub fn discovery(path: &str, devices: &[String]) -> Packet {
    let (j, c) = (ContentFormat::SENML_JSON.0, ContentFormat::SENML_CBOR.0);
    let mut links = format!("</{path}>;rt=\"senml\";ct=\"{j} {c}\";if=\"core.b\"");
    for d in devices {
        links += &format!(",</{path}/{d}>;rt=\"senml.latest\";ct=\"{j} {c}\";if=\"core.rp\";obs");
    }
    let mut r = response(ResponseType::Content, &links);
    ContentFormat::LINK_FORMAT.set(&mut r);
    r
}

/// Decodes the body as SenML (CBOR or JSON, by Content-Format; without one, by its first
/// byte), at most `max_records` records, readings under `device`.
pub fn decode(
    req: &Packet,
    device: &str,
    max_records: usize,
    max_body: usize,
    now: Timestamp,
    labels: &mut senml::Labels,
) -> Result<senml::Pack, Refused> {
    let body = &req.payload;
    let json = match ContentFormat::of(req) {
        Ok(Some(ContentFormat::SENML_JSON)) => true,
        Ok(Some(ContentFormat::SENML_CBOR)) => false,
        Ok(None) => body.first() == Some(&b'['),
        Ok(Some(_)) | Err(_) => {
            return Err(Refused::bad(
                ResponseType::UnsupportedContentFormat,
                "SenML JSON (110) or CBOR (112) only",
            ))
        }
    };
    let decoded = if json {
        senml::decode_json_with(body, max_records, now, device, labels)
    } else {
        senml::decode_cbor_with(body, max_records, now, device, labels)
    };
    decoded.map_err(|e| match e {
        senml::DecodeError::TooMany(n) => {
            let mut r = Refused::bad(
                ResponseType::RequestEntityTooLarge,
                format!("more than {n} records"),
            );
            r.reply
                .add_option(CoapOption::Size1, encode_uint(max_body as u32));
            r
        }
        e => Refused::bad(ResponseType::BadRequest, format!("SenML: {e}")),
    })
}

/// A PUT to `/{path}/{device}/{sensor}` carries exactly one reading, of that device and sensor
/// (4.00 otherwise); who may send it is [`authorize`]'s, as for a POST.
pub fn one_reading_of(readings: &[Reading], device: &str, sensor: &str) -> Result<(), Refused> {
    match readings {
        [r] if r.device.as_str() == device && r.sensor.as_str() == sensor => Ok(()),
        [r] => Err(Refused::bad(
            ResponseType::BadRequest,
            format!(
                "a PUT to {device}/{sensor} carries a reading of {device}/{sensor}, not of {}/{}",
                r.device, r.sensor
            ),
        )),
        _ => Err(Refused::bad(
            ResponseType::BadRequest,
            format!("a PUT carries one reading, not {}", readings.len()),
        )),
    }
}

/// A device speaks for itself only: every reading of an identified peer must carry its
/// identity as the device; a peer without one (only with `allow_anonymous`) has its readings
/// put under [`ANONYMOUS`], whatever base name it sent.
pub fn authorize(identity: Option<&str>, readings: &mut [Reading]) -> Result<(), Refused> {
    match identity {
        // The anonymous peers' device name is no device's identity.
        Some(ANONYMOUS) => Err(Refused::bad(
            ResponseType::Forbidden,
            "the identity \"anonymous\" is reserved for peers without one",
        )),
        Some(who) => match readings.iter().find(|r| r.device.as_str() != who) {
            Some(r) => Err(Refused::bad(
                ResponseType::Forbidden,
                format!(
                    "{who} may post readings only for itself, not for {}",
                    r.device
                ),
            )),
            None => Ok(()),
        },
        None => {
            let anonymous = Label::from(ANONYMOUS);
            for r in readings {
                r.device = anonymous.clone();
            }
            Ok(())
        }
    }
}

/// A reading's key for de-duplication: its id within its device, so that one device cannot
/// claim ids another will send (and have that one's readings dropped as repeats). The device
/// is a 64-bit tag, a keyed hash of its name ([`Seen`]'s own key, drawn at random): a key is
/// copied and compared as 24 bytes, not as a shared string, and no peer can pick a name whose
/// tag matches another device's.
///
/// It carries its own hash, keyed too (std's SipHash with [`Seen`]'s random key, so that no
/// peer can make keys collide), made once when the reading is admitted: the sets look a key up
/// several times on its way (admitted, in flight, stored, evicted) without hashing it again.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    hash: u64,
    device: u64,
    id: ReadingId,
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        // Equal keys have equal hashes: comparing those first is only a shortcut.
        self.hash == other.hash && self.device == other.device && self.id == other.id
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// The hasher of the sets of [`Key`]s: the key's own hash, as it is.
#[derive(Default)]
struct KeyHash(u64);

impl std::hash::Hasher for KeyHash {
    fn write(&mut self, bytes: &[u8]) {
        // Only `Key` is hashed with this, and it writes one u64; anything else still spreads.
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type IdSet = HashSet<Key, std::hash::BuildHasherDefault<KeyHash>>;

/// The keys stored lately, by their hash alone (a 64-bit hash keyed with a secret, its lowest
/// bit given over to the generation: two readings' collide with odds of one in 2^63, and no
/// peer can make them), in two generations of `capacity` each: when the newer is full, the
/// older is dropped whole and the newer becomes the older. So at least `capacity` keys are
/// remembered, and nothing is done per key to forget it (a set with an eviction order took a
/// third of the ingress's time per reading).
///
/// Both generations live in one table, a key's generation in the lowest bit of what is stored,
/// and the table's hasher ignores that bit: a key's two possible entries sit on the same probe
/// sequence, so asking for both costs one trip to memory, not one per generation. (With two
/// tables of 100,000 keys, their lookups missed the cache twice per reading: 10 % of the
/// ingress's time at 20 readings per request.)
#[derive(Default)]
struct Remembered {
    keys: HashSet<u64, std::hash::BuildHasherDefault<SameBucket>>,
    /// The lowest bit of the newer generation's entries (0 or 1).
    newer: u64,
    /// Entries of the newer generation.
    filled: usize,
    capacity: usize,
}

/// The hasher of [`Remembered`]: the entry as it is, without its generation bit.
#[derive(Default)]
struct SameBucket(u64);

impl std::hash::Hasher for SameBucket {
    fn write(&mut self, bytes: &[u8]) {
        // Only a u64 is hashed with this; anything else still spreads.
        let mut h = KeyHash(self.0);
        std::hash::Hasher::write(&mut h, bytes);
        self.0 = h.0 & !1;
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v & !1;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl Remembered {
    fn contains(&self, k: &Key) -> bool {
        let h = k.hash & !1;
        self.keys.contains(&h) || self.keys.contains(&(h | 1))
    }

    /// Remembers `k`, which [`Seen::admit`] found in neither generation (and which stayed in
    /// flight since, so no other pack stored it).
    fn insert(&mut self, k: &Key) {
        if self.filled >= self.capacity.max(1) {
            let older = self.newer ^ 1;
            self.keys.retain(|e| e & 1 != older);
            self.newer = older;
            self.filled = 0;
        }
        if self.keys.insert((k.hash & !1) | self.newer) {
            self.filled += 1;
        }
    }
}

/// Reading keys stored recently, and those in flight.
#[derive(Default)]
pub struct Seen {
    stored: Remembered,
    in_flight: IdSet,
    /// Makes the device tags and the keys' hashes: keyed SipHash, each key fed in one piece.
    tags: gateway_coap::Keyed,
}

/// What [`Seen::admit`] lets through.
#[derive(Debug)]
pub struct Admitted {
    /// The readings not stored yet, in order.
    pub fresh: Vec<Reading>,
    /// Their keys, now in flight.
    pub keys: Vec<Key>,
    /// How many were dropped as stored already, or repeated within the pack.
    pub duplicates: usize,
}

impl Seen {
    /// Remembers at least `capacity` stored keys (at most twice that).
    pub fn new(capacity: usize) -> Seen {
        Seen {
            stored: Remembered {
                capacity,
                ..Remembered::default()
            },
            ..Seen::default()
        }
    }

    /// Whether readings are being stored.
    pub fn busy(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Drops what was stored already, and repeats of an id within the pack; the rest goes in
    /// flight. A pack that overlaps one still in flight waits its turn (5.03, retry in 1 s).
    pub fn admit(&mut self, readings: Vec<Reading>) -> Result<Admitted, Refused> {
        // A pack is one device's (the ingress authorised it): its tag is made once.
        let mut last: Option<(Label, u64)> = None;
        let tags = &self.tags;
        let keys_of: Vec<Key> = readings
            .iter()
            .map(|r| {
                let device = match &last {
                    Some((d, t)) if *d == r.device => *t,
                    _ => {
                        let t = std::hash::BuildHasher::hash_one(tags, r.device.as_str());
                        last = Some((r.device.clone(), t));
                        t
                    }
                };
                let hash = std::hash::BuildHasher::hash_one(tags, (device, r.id));
                Key {
                    hash,
                    device,
                    id: r.id,
                }
            })
            .collect();
        if keys_of.iter().any(|k| self.in_flight.contains(k)) {
            let why = "the same readings are being stored; retry";
            return Err(Refused {
                reply: retry_later(why, 1),
                why: why.into(),
                bad: false,
            });
        }
        let before = readings.len();
        let mut keys = Vec::with_capacity(before);
        // None of the pack's keys was in flight: one that is now repeats an earlier one of the
        // pack.
        let fresh: Vec<Reading> = readings
            .into_iter()
            .zip(keys_of)
            .filter(|(_, k)| !self.stored.contains(k) && self.in_flight.insert(*k))
            .map(|(r, k)| {
                keys.push(k);
                r
            })
            .collect();
        Ok(Admitted {
            duplicates: before - fresh.len(),
            fresh,
            keys,
        })
    }

    /// `keys` are stored: a repeat of them is dropped from now on.
    pub fn stored(&mut self, keys: &[Key]) {
        for k in keys {
            self.in_flight.remove(k);
            self.stored.insert(k);
        }
    }

    /// `keys` were not stored: a repeat of them is taken again.
    pub fn failed(&mut self, keys: &[Key]) {
        for k in keys {
            self.in_flight.remove(k);
        }
    }
}

/// The answer once every sink stored the readings.
pub fn stored() -> Packet {
    response(ResponseType::Changed, "")
}

/// The answer when the readings were not stored: 4.22 if a sink refused them for good (the
/// host kept them in its dead-letter file, and resending cannot help; what the sink said stays
/// in the server's log, since it may name tables, hosts or paths), else 5.03 with a Max-Age of
/// `retry_after` seconds.
pub fn not_stored(e: &PluginError, retry_after: u32) -> Packet {
    if e.kind == ErrorKind::REJECTED {
        return response(
            ResponseType::UnprocessableEntity,
            "the server's store refused these readings",
        );
    }
    retry_later("not stored; retry", retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_coap::{request, Code};
    use gateway_sdk::testing::sample_readings;

    fn code(p: &Packet) -> Code {
        Code::of(p).unwrap()
    }

    #[test]
    fn routes_by_path_then_method() {
        let post = |p: &str| request(RequestType::Post, p, None, vec![]);
        assert_eq!(
            route(&post("gpsflowtemp"), "gpsflowtemp").unwrap(),
            Route::Readings
        );
        let e = route(&post("other"), "gpsflowtemp").unwrap_err();
        assert_eq!(code(&e.reply), Code::new(4, 4));
        let req = |m: RequestType, p: &str| request(m, p, None, vec![]);
        assert_eq!(
            code(
                &route(&req(RequestType::Get, "gpsflowtemp"), "gpsflowtemp")
                    .unwrap_err()
                    .reply
            ),
            Code::new(4, 5)
        );
        assert_eq!(
            route(&req(RequestType::Get, "gpsflowtemp/pi-01"), "gpsflowtemp").unwrap(),
            Route::Latest {
                device: "pi-01".into(),
                sensor: None
            }
        );
        assert_eq!(
            route(
                &req(RequestType::Get, "gpsflowtemp/pi-01/t1"),
                "gpsflowtemp"
            )
            .unwrap(),
            Route::Latest {
                device: "pi-01".into(),
                sensor: Some("t1".into())
            }
        );
        assert_eq!(
            route(
                &req(RequestType::Put, "gpsflowtemp/pi-01/t1"),
                "gpsflowtemp"
            )
            .unwrap(),
            Route::Put {
                device: "pi-01".into(),
                sensor: "t1".into()
            }
        );
        assert_eq!(
            route(
                &req(RequestType::Delete, "gpsflowtemp/pi-01"),
                "gpsflowtemp"
            )
            .unwrap(),
            Route::Forget {
                device: "pi-01".into()
            }
        );
        for (m, p, want) in [
            (RequestType::Put, "gpsflowtemp/pi-01", Code::new(4, 5)),
            (RequestType::Post, "gpsflowtemp/pi-01/t1", Code::new(4, 5)),
            (RequestType::Delete, "gpsflowtemp/pi-01/t1", Code::new(4, 5)),
            (RequestType::Get, "gpsflowtemp/a/b/c", Code::new(4, 4)),
            (RequestType::Get, "gpsflowtempx/a", Code::new(4, 4)),
        ] {
            assert_eq!(
                code(&route(&req(m, p), "gpsflowtemp").unwrap_err().reply),
                want,
                "{p}"
            );
        }
        let core = request(RequestType::Get, ".well-known/core", None, vec![]);
        assert_eq!(route(&core, "gpsflowtemp").unwrap(), Route::Discovery);
        let r = discovery("gpsflowtemp", &["pi-01".into()]);
        assert_eq!(ContentFormat::of(&r), Ok(Some(ContentFormat::LINK_FORMAT)));
        assert_eq!(
            String::from_utf8(r.payload).unwrap(),
            "</gpsflowtemp>;rt=\"senml\";ct=\"110 112\";if=\"core.b\",</gpsflowtemp/pi-01>;rt=\"senml.latest\";ct=\"110 112\";if=\"core.rp\";obs"
        );
        assert!(route(&post(".well-known/core"), "gpsflowtemp").is_err());
    }

    #[test]
    fn decodes_by_content_format_or_first_byte() {
        let readings = sample_readings(3);
        let now = Timestamp::now();
        let cbor = senml::encode_cbor(&readings);
        let json = senml::encode_json(&readings);
        let req = |cf: Option<ContentFormat>, body: &[u8]| {
            request(RequestType::Post, "p", cf, body.to_vec())
        };
        let ok = |r: &Packet| {
            decode(r, "dev", 10, 1000, now, &mut senml::Labels::new(0))
                .unwrap()
                .readings
                .len()
        };
        assert_eq!(ok(&req(Some(ContentFormat::SENML_CBOR), &cbor)), 3);
        assert_eq!(ok(&req(Some(ContentFormat::SENML_JSON), &json)), 3);
        assert_eq!(ok(&req(None, &json)), 3);
        assert_eq!(ok(&req(None, &cbor)), 3);
        let refused = |r: &Packet, max: usize| {
            decode(r, "dev", max, 1000, now, &mut senml::Labels::new(0)).unwrap_err()
        };
        let e = refused(&req(Some(ContentFormat::JSON), &json), 10);
        assert_eq!(code(&e.reply), Code::new(4, 15));
        let e = refused(&req(None, &cbor), 2);
        assert_eq!(code(&e.reply), Code::REQUEST_ENTITY_TOO_LARGE);
        assert_eq!(
            e.reply.get_first_option(CoapOption::Size1),
            Some(&vec![3, 0xe8])
        );
        let e = refused(&req(None, b"[{"), 10);
        assert_eq!(code(&e.reply), Code::BAD_REQUEST);
    }

    #[test]
    fn a_device_speaks_for_itself_and_anonymous_for_nobody() {
        let mut rs = sample_readings(2);
        let own = rs[0].device.to_string();
        assert!(authorize(Some(&own), &mut rs).is_ok());
        let e = authorize(Some("other"), &mut rs).unwrap_err();
        assert_eq!(code(&e.reply), Code::new(4, 3));
        assert!(authorize(Some(ANONYMOUS), &mut rs).is_err());
        authorize(None, &mut rs).unwrap();
        assert!(rs.iter().all(|r| r.device.as_str() == ANONYMOUS));
    }

    #[test]
    fn stored_readings_are_dropped_and_overlaps_wait() {
        let mut seen = Seen::new(10);
        let rs = sample_readings(3);
        let first = seen.admit(rs[..2].to_vec()).unwrap();
        assert_eq!((first.fresh.len(), first.duplicates), (2, 0));
        let busy = seen.admit(rs.clone()).unwrap_err();
        assert_eq!(code(&busy.reply), Code::new(5, 3));
        assert!(!busy.bad);
        seen.stored(&first.keys);
        assert!(!seen.busy());
        let mut again = rs.clone();
        again.push(rs[2].clone());
        let next = seen.admit(again).unwrap();
        assert_eq!((next.fresh.len(), next.duplicates), (1, 3));
        seen.failed(&next.keys);
        assert_eq!(seen.admit(vec![rs[2].clone()]).unwrap().fresh.len(), 1);
    }

    #[test]
    fn an_id_is_a_repeat_within_its_device_only_and_the_oldest_are_forgotten() {
        let mut seen = Seen::new(3);
        let rs = sample_readings(6);
        let first = seen.admit(rs[..1].to_vec()).unwrap();
        seen.stored(&first.keys);
        // The same id from another device is that device's own reading.
        let mut other = rs[0].clone();
        other.device = Label::new("another-device");
        let next = seen.admit(vec![other.clone(), rs[0].clone()]).unwrap();
        assert_eq!((next.fresh.len(), next.duplicates), (1, 1));
        assert_eq!(next.fresh[0].device, other.device);
        seen.stored(&next.keys);
        // At least three remembered: four more keep the first device's rs[0] and the other's.
        for r in &rs[1..5] {
            let a = seen.admit(vec![r.clone()]).unwrap();
            seen.stored(&a.keys);
        }
        let again = seen
            .admit(vec![rs[0].clone(), other.clone(), rs[4].clone()])
            .unwrap();
        assert_eq!((again.fresh.len(), again.duplicates), (0, 3));
        // Past twice three, the oldest go.
        let a = seen.admit(vec![rs[5].clone()]).unwrap();
        seen.stored(&a.keys);
        let again = seen
            .admit(vec![rs[0].clone(), other, rs[2].clone()])
            .unwrap();
        assert_eq!((again.fresh.len(), again.duplicates), (2, 1));
        assert_eq!(again.fresh[0].device, rs[0].device);
    }

    #[test]
    fn remembered_keys_last_one_to_two_generations_in_one_table() {
        let key = |i: u64| Key {
            hash: i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            device: 1,
            id: ReadingId([0; 16]),
        };
        let n = 1000;
        let mut r = Remembered {
            capacity: n,
            ..Remembered::default()
        };
        for i in 0..10 * n as u64 {
            assert!(!r.contains(&key(i)), "{i} is new");
            r.insert(&key(i));
            assert!(r.keys.len() <= 2 * n, "at most two generations");
            let i = i as usize;
            // The last `n` at least, whichever generation holds them.
            for back in [0, 1, n / 2, n - 1] {
                if back <= i {
                    assert!(r.contains(&key((i - back) as u64)), "{} at {i}", i - back);
                }
            }
            // Nothing older than two generations.
            if i >= 2 * n {
                assert!(
                    !r.contains(&key((i - 2 * n) as u64)),
                    "{} at {i}",
                    i - 2 * n
                );
            }
        }
    }

    #[test]
    fn a_refusal_for_good_is_4_22_and_anything_else_5_03() {
        let r = not_stored(&PluginError::rejected("table gone"), 7);
        assert_eq!(code(&r), Code::UNPROCESSABLE_ENTITY);
        assert!(!String::from_utf8_lossy(&r.payload).contains("table"));
        let r = not_stored(&PluginError::retry("busy"), 7);
        assert_eq!(code(&r), Code::new(5, 3));
        assert_eq!(r.get_first_option(CoapOption::MaxAge), Some(&vec![7]));
    }
}
