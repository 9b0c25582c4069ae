//! Response codes and content formats as types, so that code above this crate says what a code
//! means (`is_success`, `is_retryable`) instead of matching numbers. No I/O.

use coap_lite::{CoapOption, MessageClass, Packet};
use std::fmt;

/// A response code, `class.detail` (RFC 7252 §5.9, and RFC 8516's 4.29).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code {
    /// 2, 4 or 5.
    pub class: u8,
    /// 0..=31.
    pub detail: u8,
}

impl Code {
    /// 2.01 Created.
    pub const CREATED: Code = Code::new(2, 1);
    /// 2.04 Changed.
    pub const CHANGED: Code = Code::new(2, 4);
    /// 2.05 Content.
    pub const CONTENT: Code = Code::new(2, 5);
    /// 4.00 Bad Request.
    pub const BAD_REQUEST: Code = Code::new(4, 0);
    /// 4.08 Request Entity Incomplete.
    pub const REQUEST_ENTITY_INCOMPLETE: Code = Code::new(4, 8);
    /// 4.13 Request Entity Too Large.
    pub const REQUEST_ENTITY_TOO_LARGE: Code = Code::new(4, 13);
    /// 4.22 Unprocessable Entity.
    pub const UNPROCESSABLE_ENTITY: Code = Code::new(4, 22);
    /// 4.29 Too Many Requests.
    pub const TOO_MANY_REQUESTS: Code = Code::new(4, 29);
    /// 5.03 Service Unavailable.
    pub const SERVICE_UNAVAILABLE: Code = Code::new(5, 3);
    /// 2.31 Continue: as a final answer, the server did not take the request.
    pub const CONTINUE: Code = Code::new(2, 31);

    /// `class.detail`.
    pub const fn new(class: u8, detail: u8) -> Code {
        Code { class, detail }
    }

    /// The response code of `p`; `None` for a request or an empty message.
    pub fn of(p: &Packet) -> Option<Code> {
        match p.header.code {
            MessageClass::Response(_) => {
                let c: u8 = p.header.code.into();
                Some(Code::new(c >> 5, c & 0x1f))
            }
            _ => None,
        }
    }

    /// 2.xx: the request did what it asked (2.31 Continue asks for more, and is not).
    pub fn is_success(self) -> bool {
        self.class == 2 && self != Code::CONTINUE
    }

    /// Whether the same request may succeed if sent again later, unchanged: every 5.xx (the
    /// server's trouble), 4.08 (blocks went missing), 4.29 (too many requests, RFC 8516), and
    /// 2.31 as a final answer. Any other 4.xx says the request itself is wrong for this server
    /// (RFC 7252 §5.9.2: "SHOULD NOT repeat the request without modification").
    pub fn is_retryable(self) -> bool {
        self.class == 5
            || self == Code::REQUEST_ENTITY_INCOMPLETE
            || self == Code::TOO_MANY_REQUESTS
            || self == Code::CONTINUE
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.class, self.detail)
    }
}

/// A Content-Format option whose value is not a 16-bit uint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidContentFormat;

/// A Content-Format (RFC 7252 §12.3, the IANA registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentFormat(pub u16);

impl ContentFormat {
    /// `text/plain; charset=utf-8`.
    pub const TEXT: ContentFormat = ContentFormat(0);
    /// `application/link-format` (RFC 6690).
    pub const LINK_FORMAT: ContentFormat = ContentFormat(40);
    /// `application/json`.
    pub const JSON: ContentFormat = ContentFormat(50);
    /// `application/cbor`.
    pub const CBOR: ContentFormat = ContentFormat(60);
    /// `application/senml+json` (RFC 8428).
    pub const SENML_JSON: ContentFormat = ContentFormat(110);
    /// `application/senml+cbor` (RFC 8428).
    pub const SENML_CBOR: ContentFormat = ContentFormat(112);

    /// The Content-Format option of `p`: `Ok(None)` if it has none, `Err` if its value is
    /// longer than the two bytes a content-format takes.
    pub fn of(p: &Packet) -> Result<Option<ContentFormat>, InvalidContentFormat> {
        match p.get_first_option(CoapOption::ContentFormat) {
            None => Ok(None),
            Some(v) if v.len() <= 2 => Ok(Some(ContentFormat(
                v.iter().fold(0u16, |a, &b| (a << 8) | u16::from(b)),
            ))),
            Some(_) => Err(InvalidContentFormat),
        }
    }

    /// Sets the Content-Format option of `p`.
    pub fn set(self, p: &mut Packet) {
        p.clear_option(CoapOption::ContentFormat);
        p.add_option(
            CoapOption::ContentFormat,
            crate::encode_uint(u32::from(self.0)),
        );
    }
}

impl fmt::Display for ContentFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ContentFormat::TEXT => f.write_str("text/plain"),
            ContentFormat::LINK_FORMAT => f.write_str("application/link-format"),
            ContentFormat::JSON => f.write_str("application/json"),
            ContentFormat::CBOR => f.write_str("application/cbor"),
            ContentFormat::SENML_JSON => f.write_str("application/senml+json"),
            ContentFormat::SENML_CBOR => f.write_str("application/senml+cbor"),
            ContentFormat(n) => write!(f, "content-format {n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response;
    use coap_lite::ResponseType;

    #[test]
    fn codes_read_as_class_and_detail() {
        let c = Code::of(&response(ResponseType::UnprocessableEntity, "")).unwrap();
        assert_eq!(
            (c, c.to_string()),
            (Code::UNPROCESSABLE_ENTITY, "4.22".into())
        );
        assert!(Code::of(&crate::request(
            coap_lite::RequestType::Post,
            "x",
            None,
            vec![]
        ))
        .is_none());
    }

    #[test]
    fn only_the_servers_trouble_is_worth_repeating_unchanged() {
        for (c, d) in [(5, 0), (5, 3), (5, 4), (4, 8), (4, 29), (2, 31)] {
            assert!(Code::new(c, d).is_retryable(), "{c}.{d:02}");
        }
        for (c, d) in [
            (4, 0),
            (4, 1),
            (4, 3),
            (4, 4),
            (4, 5),
            (4, 13),
            (4, 15),
            (4, 22),
            (2, 4),
        ] {
            assert!(!Code::new(c, d).is_retryable(), "{c}.{d:02}");
        }
        assert!(Code::CHANGED.is_success() && Code::new(2, 1).is_success());
        assert!(!Code::CONTINUE.is_success() && !Code::new(4, 4).is_success());
    }

    #[test]
    fn content_formats_round_trip_through_the_option() {
        let mut p = crate::request(coap_lite::RequestType::Post, "x", None, vec![]);
        assert_eq!(ContentFormat::of(&p), Ok(None));
        ContentFormat::SENML_CBOR.set(&mut p);
        assert_eq!(ContentFormat::of(&p), Ok(Some(ContentFormat::SENML_CBOR)));
        p.clear_option(CoapOption::ContentFormat);
        p.add_option(CoapOption::ContentFormat, vec![1, 2, 3]);
        assert_eq!(ContentFormat::of(&p), Err(InvalidContentFormat));
    }
}
