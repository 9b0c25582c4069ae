//! The ingress's request path, one step a function, each readable and testable alone. No I/O:
//! [`crate::Ingress`] calls them in order and sends what they answer.
//!
//! 1. [`route`]: which resource, which method (4.04, 4.05, or the discovery answer);
//! 2. [`decode`]: content negotiation and SenML decoding (4.15, 4.13, 4.00);
//! 3. [`authorize`]: a device speaks for itself only (4.00 for a reading of another; 4.03 for
//!    the identity "anonymous"); a peer without an identity speaks for the anonymous device;
//! 4. [`crate::seen::Seen::admit`]: readings stored already are dropped, and a pack that overlaps one still
//!    being stored waits its turn (5.03);
//! 5. [`stored`], [`not_stored`]: the answer once the sinks are done.

use gateway_coap::{
    coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType},
    encode_uint, path_segment, response, retry_later, ContentFormat,
};
use gateway_sdk::{ErrorKind, Label, PluginError, Reading, Timestamp};
use gateway_senml as senml;

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
    /// A refusal of the peer's request; `why` (which may quote it: a path, a SenML key) is
    /// cut to [`MAX_WHY`] bytes for the answer and the log. Answers are kept for the exchange
    /// lifetime (about 247 s): a whole echoed request would let a peer hold that much memory
    /// per request it sends.
    pub(crate) fn bad(code: ResponseType, why: impl Into<String>) -> Refused {
        let mut why = why.into();
        if why.len() > MAX_WHY {
            let mut cut = MAX_WHY;
            while !why.is_char_boundary(cut) {
                cut -= 1;
            }
            why.truncate(cut);
            why.push_str("...");
        }
        Refused {
            reply: response(code, &why),
            why,
            bad: true,
        }
    }
}

/// Most bytes of a refusal's reason, as the peer is told it and the log shows it.
pub const MAX_WHY: usize = 256;

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
///
/// The request's Uri-Path options are taken one by one, never joined and split again: a
/// device or sensor name may hold a `/` (a PSK identity, a name from a third party's CA), and
/// `plant-3`'s sensor `pi-07` must not be the device `plant-3/pi-07`.
pub fn route(req: &Packet, path: &str) -> Result<Route, Refused> {
    let MessageClass::Request(method) = req.header.code else {
        return Err(Refused::bad(ResponseType::BadRequest, "not a request"));
    };
    // Compared as bytes, with nothing allocated on the way of every POST (a segment that is
    // not UTF-8 equals no segment of the configured path).
    let target = || {
        req.get_option(CoapOption::UriPath)
            .into_iter()
            .flatten()
            .map(Vec::as_slice)
    };
    let base = || path.split('/').filter(|s| !s.is_empty()).map(str::as_bytes);
    if target().eq([b".well-known".as_slice(), b"core"]) {
        if method != RequestType::Get {
            return Err(Refused::bad(ResponseType::MethodNotAllowed, "GET only"));
        }
        return Ok(Route::Discovery);
    }
    if target().eq(base()) {
        if method != RequestType::Post {
            return Err(Refused::bad(
                ResponseType::MethodNotAllowed,
                format!("POST only (GET /{path}/DEVICE reads a device's last readings)"),
            ));
        }
        return Ok(Route::Readings);
    }
    let depth = base().count();
    if target().count() < depth || !target().zip(base()).all(|(t, b)| t == b) {
        return Err(Refused::bad(ResponseType::NotFound, "no such resource"));
    }
    // The names below the collection (three at most: more is no resource either).
    let below: Vec<String> = target()
        .skip(depth)
        .take(3)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let below = below.as_slice();
    match (below, method) {
        ([device], RequestType::Get) => Ok(Route::Latest {
            device: device.clone(),
            sensor: None,
        }),
        ([device], RequestType::Delete) => Ok(Route::Forget {
            device: device.clone(),
        }),
        ([_], _) => Err(Refused::bad(
            ResponseType::MethodNotAllowed,
            "GET or DELETE only (POST readings to the collection)",
        )),
        ([device, sensor], RequestType::Get) => Ok(Route::Latest {
            device: device.clone(),
            sensor: Some(sensor.clone()),
        }),
        ([device, sensor], RequestType::Put) => Ok(Route::Put {
            device: device.clone(),
            sensor: sensor.clone(),
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
        let d = path_segment(d.as_bytes());
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
/// put under [`ANONYMOUS`], whatever base name it sent. A reading of another device is refused
/// with 4.00, for good (the uplink keeps it as a dead letter and sends the others): a 4.03
/// would say the device itself is refused, and an uplink holds its readings on one, so a Pi
/// renamed with readings of its old name in its buffer held them all, the new ones behind
/// them, for ever. The identity "anonymous" itself is refused with 4.03.
pub fn authorize(identity: Option<&str>, readings: &mut [Reading]) -> Result<(), Refused> {
    match identity {
        // The anonymous peers' device name is no device's identity.
        Some(ANONYMOUS) => Err(Refused::bad(
            ResponseType::Forbidden,
            "the identity \"anonymous\" is reserved for peers without one",
        )),
        Some(who) => match readings.iter().find(|r| r.device.as_str() != who) {
            Some(r) => Err(Refused::bad(
                ResponseType::BadRequest,
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
    fn a_refusal_quoting_the_request_is_cut_short() {
        // A device name of 16 KiB from the path ("no readings of DEVICE"), echoed whole, was
        // kept in the answer cache for the exchange lifetime, as was a SenML key of a
        // megabyte: memory a peer held per request.
        let long = format!("no readings of {}", "x".repeat(16 << 10));
        let e = Refused::bad(ResponseType::NotFound, long);
        assert_eq!(code(&e.reply), Code::new(4, 4));
        assert_eq!(e.reply.payload.len(), MAX_WHY + 3);
        assert!(
            e.why.ends_with("...") && e.why.len() <= MAX_WHY + 3,
            "{}",
            e.why
        );
        assert_eq!(e.reply.payload, e.why.as_bytes());
        // Cut on a character boundary.
        let e = Refused::bad(ResponseType::BadRequest, format!("a{}", "é".repeat(200)));
        assert_eq!(e.why.len(), MAX_WHY - 1 + 3);
        let key = format!("{}_", "k".repeat(1 << 20));
        let body = format!(r#"[{{"n":"s/x","v":1,"{key}":1}}]"#).into_bytes();
        let post = request(RequestType::Post, "gpsflowtemp", None, body);
        let e = decode(
            &post,
            "d",
            10,
            2 << 20,
            Timestamp(0),
            &mut senml::Labels::new(0),
        )
        .unwrap_err();
        assert_eq!(code(&e.reply), Code::new(4, 0));
        assert!(e.reply.payload.len() < 100, "{}", e.why);
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

    /// Found in an audit: the path was joined with `/` and split again, so device `plant-3`'s
    /// sensor `pi-07` and the device `plant-3/pi-07` were one resource, and a reader of the
    /// second was served the first's readings.
    #[test]
    fn a_slash_in_a_name_stays_in_its_segment() {
        let with = |m: RequestType, segments: &[&str]| {
            let mut p = request(m, "", None, vec![]);
            for s in segments {
                p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
            }
            p
        };
        assert_eq!(
            route(
                &with(RequestType::Get, &["gpsflowtemp", "plant-3/pi-07"]),
                "gpsflowtemp"
            )
            .unwrap(),
            Route::Latest {
                device: "plant-3/pi-07".into(),
                sensor: None
            }
        );
        assert_eq!(
            route(
                &with(RequestType::Put, &["gpsflowtemp", "plant-3", "pi-07/t"]),
                "gpsflowtemp"
            )
            .unwrap(),
            Route::Put {
                device: "plant-3".into(),
                sensor: "pi-07/t".into()
            }
        );
        // One segment that reads like the collection's path is not the collection.
        let e = route(&with(RequestType::Post, &["a/b"]), "a/b").unwrap_err();
        assert_eq!(code(&e.reply), Code::new(4, 4));
        assert_eq!(
            route(&with(RequestType::Post, &["a", "b"]), "a/b").unwrap(),
            Route::Readings
        );
        assert_eq!(
            route(&with(RequestType::Get, &[".well-known/core"]), "x")
                .unwrap_err()
                .reply
                .header
                .code,
            MessageClass::Response(ResponseType::NotFound)
        );
        // Discovery names each device by one segment, and nothing in a name ends its link.
        let r = discovery("p", &["plant-3/pi-07".into(), "x>,<y\"\u{e9}".into()]);
        let links = String::from_utf8(r.payload).unwrap();
        assert!(links.contains("</p/plant-3%2Fpi-07>;"), "{links}");
        assert!(links.contains("</p/x%3E%2C%3Cy%22%C3%A9>;"), "{links}");
        assert_eq!(links.matches('<').count(), 3, "{links}");
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
        // The readings are refused for good (4.00), not the device (4.03, which held them).
        let e = authorize(Some("other"), &mut rs).unwrap_err();
        assert_eq!(code(&e.reply), Code::BAD_REQUEST);
        let e = authorize(Some(ANONYMOUS), &mut rs).unwrap_err();
        assert_eq!(code(&e.reply), Code::new(4, 3));
        authorize(None, &mut rs).unwrap();
        assert!(rs.iter().all(|r| r.device.as_str() == ANONYMOUS));
    }

    #[test]
    fn the_longest_identity_can_post_its_own_readings() {
        // A SenML base name (255 bytes at most) is the device and a `:`: a 255-byte identity
        // was valid for a certificate or a PSK, and every reading of it was refused.
        let who = "x".repeat(gateway_dtls::MAX_IDENTITY);
        assert!(gateway_dtls::valid_identity(&who));
        let mut rs = sample_readings(2);
        for r in &mut rs {
            r.device = gateway_sdk::Label::from(who.as_str());
        }
        let now = gateway_sdk::Timestamp(1_764_085_351_000_000);
        let mut back = senml::decode_cbor(&senml::encode_cbor(&rs), 10, now, &who)
            .unwrap()
            .readings;
        authorize(Some(&who), &mut back).unwrap();
        assert_eq!(back, rs);
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
