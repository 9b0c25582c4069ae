//! CoAP messages: building requests and responses, option values (uint, Block1/Block2), and
//! which options a request may carry. No I/O.

use crate::{Code, ContentFormat};
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

/// Options a request may carry. A critical option (an odd number) that is not here gets 4.02
/// Bad Option; elective ones are ignored whatever they are.
const UNDERSTOOD: &[u16] = &[
    3,  // Uri-Host: one host here
    7,  // Uri-Port
    11, // Uri-Path
    15, // Uri-Query: no resource here takes one; ignored
    17, // Accept: the ingress's last-readings resources negotiate with it
    23, // Block2
    27, // Block1
];

/// The critical options a response may carry that this endpoint's client understands:
/// Block1 and Block2 (RFC 7959).
const UNDERSTOOD_IN_RESPONSES: &[u16] = &[23, 27];

/// The first critical option of response `p` this endpoint does not understand: RFC 7252 5.4.1
/// says such a response is rejected (a CON with RST, a piggybacked or NON one ignored), not
/// taken (a 2.04 with an OSCORE option, say, is not a 2.04 this client can believe).
pub(crate) fn unknown_critical_in_response(p: &Packet) -> Option<u16> {
    p.options()
        .map(|(n, _)| *n)
        .find(|n| n % 2 == 1 && !UNDERSTOOD_IN_RESPONSES.contains(n))
}

/// Proxy-Uri and Proxy-Scheme: this endpoint is no proxy (5.05).
const PROXY: &[u16] = &[35, 39];

/// The understood critical options that may appear once, and their values' lengths (RFC 7252
/// 5.10, RFC 7959 2.1): one that appears again, or with a length out of its range, is treated
/// as an unrecognized option (RFC 7252 5.4.5, 5.4.3), and, critical, gets 4.02.
const ONCE: &[(u16, std::ops::RangeInclusive<usize>)] = &[
    (3, 1..=255), // Uri-Host
    (7, 0..=2),   // Uri-Port
    (17, 0..=2),  // Accept
    (23, 0..=3),  // Block2
    (27, 0..=3),  // Block1
];

/// What a request with a critical option this endpoint does not understand gets, if it has one.
pub(crate) fn refuse_options(req: &Packet) -> Option<(ResponseType, String)> {
    for (opt, values) in req.options() {
        let n: u16 = *opt;
        if PROXY.contains(&n) {
            return Some((
                ResponseType::ProxyingNotSupported,
                "no proxying here".into(),
            ));
        }
        if n % 2 == 1 && !UNDERSTOOD.contains(&n) {
            return Some((
                ResponseType::BadOption,
                format!("critical option {n} is not understood"),
            ));
        }
        if let Some((_, lengths)) = ONCE.iter().find(|(o, _)| *o == n) {
            if values.len() > 1 {
                return Some((
                    ResponseType::BadOption,
                    format!("critical option {n} appears more than once"),
                ));
            }
            if values.iter().any(|v| !lengths.contains(&v.len())) {
                return Some((
                    ResponseType::BadOption,
                    format!("critical option {n} has a value of a length it cannot have"),
                ));
            }
        }
    }
    None
}

/// Request-Tag (RFC 9175): tells one block-wise operation from another of the same client.
pub(crate) const REQUEST_TAG: u16 = 292;

/// The values that tell a Block1 transfer's blocks from another transfer's to the same
/// resource beside the token: its Request-Tag options and its Content-Format.
pub(crate) fn matching_options(req: &Packet) -> Matching {
    let of = |o: CoapOption| -> Vec<Vec<u8>> {
        req.get_option(o)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    };
    (
        of(CoapOption::Unknown(REQUEST_TAG)),
        of(CoapOption::ContentFormat),
    )
}

/// Request-Tag values and Content-Format values (see [`matching_options`]).
pub(crate) type Matching = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// Block1/Block2 option value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Block number.
    pub num: u32,
    /// More blocks follow.
    pub more: bool,
    /// Size exponent: size = 2^(szx+4).
    pub szx: u8,
}

impl Block {
    /// Decodes an option value.
    pub fn decode(v: &[u8]) -> Option<Block> {
        if v.len() > 3 {
            return None;
        }
        let n = v.iter().fold(0u32, |a, &b| (a << 8) | u32::from(b));
        let szx = (n & 7) as u8;
        if szx == 7 {
            return None;
        }
        Some(Block {
            num: n >> 4,
            more: n & 8 != 0,
            szx,
        })
    }
    /// Encodes an option value (shortest form).
    pub fn encode(self) -> Vec<u8> {
        encode_uint((self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx))
    }
    /// The block size in bytes.
    pub fn size(self) -> usize {
        1 << (self.szx + 4)
    }
}

/// A CoAP uint option value in its shortest form.
pub fn encode_uint(n: u32) -> Vec<u8> {
    let b = n.to_be_bytes();
    let skip = b.iter().take_while(|&&x| x == 0).count();
    b[skip..].to_vec()
}

/// Decodes a CoAP uint option value.
pub fn decode_uint(v: &[u8]) -> Option<u32> {
    (v.len() <= 4).then(|| v.iter().fold(0u32, |a, &b| (a << 8) | u32::from(b)))
}

pub(crate) fn block1_of(p: &Packet) -> Option<Option<Block>> {
    p.get_first_option(CoapOption::Block1)
        .map(|v| Block::decode(v))
}

/// The request's Uri-Path as one string without the leading `/`: its segments joined with
/// `/`, each as [`path_segment`] writes it, so that two paths are one string only if they are
/// one path (`["a/b"]` is `a%2Fb`, `["a", "b"]` is `a/b`).
pub fn path_of(p: &Packet) -> String {
    p.get_option(CoapOption::UriPath)
        .map(|l| {
            l.iter()
                .map(|s| path_segment(s))
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_default()
}

/// `name` as one segment of a URI path (RFC 3986): every byte but the unreserved characters
/// percent-encoded, so that a `/` stays in its segment, a `>`, `,` or `"` cannot end a link of
/// a discovery answer early, and bytes that are not UTF-8 keep their own form.
pub fn path_segment(name: &[u8]) -> std::borrow::Cow<'_, str> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    if name.iter().all(|&b| plain(b)) {
        // All ASCII.
        return std::str::from_utf8(name).unwrap_or_default().into();
    }
    let mut out = String::with_capacity(name.len() + 8);
    for &b in name {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.into()
}

pub(crate) fn empty(t: MessageType, mid: u16) -> Packet {
    let mut p = Packet::new();
    p.header.set_type(t);
    p.header.code = MessageClass::Empty;
    p.header.message_id = mid;
    p
}

/// What RFC 7252 says to do with a datagram whose format is wrong, read from its bytes before
/// they are parsed (the parser takes some of these as messages).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FormatError {
    /// Dropped without an answer: a version other than 1 (RFC 7252 3: "silently ignored"), too
    /// short for a header, or an Acknowledgement or Reset (never answered, 4.2).
    Ignore,
    /// A format error (3, 4.1, 4.2): answered with RST if it is Confirmable, else dropped.
    Reject,
    /// A request with a method code this endpoint does not know: 4.05 (5.8).
    UnknownMethod,
}

/// Checks the framing of `bytes` (RFC 7252 3): version, token length, an Empty message with
/// nothing after its header, a code its type may carry, options whose nibbles are not the
/// reserved 15, and a payload marker followed by a payload.
pub(crate) fn format_error(bytes: &[u8]) -> Option<FormatError> {
    if bytes.len() < 4 || bytes[0] >> 6 != 1 {
        return Some(FormatError::Ignore);
    }
    let (kind, tkl, code) = ((bytes[0] >> 4) & 3, usize::from(bytes[0] & 0xf), bytes[1]);
    let (ack_or_reset, class, detail) = (kind >= 2, code >> 5, code & 0x1f);
    let wrong = if ack_or_reset {
        FormatError::Ignore
    } else {
        FormatError::Reject
    };
    if tkl > 8 || 4 + tkl > bytes.len() {
        return Some(wrong);
    }
    match (class, detail) {
        // Empty: the 4-byte header alone (4.1), and never a NON (4.3 leaves it unanswered:
        // the caller does).
        (0, 0) if bytes.len() != 4 => return Some(wrong),
        (0, 0) => return None,
        // A request: never in an ACK or RST (4.2). An unknown method gets 4.05 (5.8).
        (0, _) if ack_or_reset => return Some(FormatError::Ignore),
        (0, d) if d > 7 => return Some(FormatError::UnknownMethod),
        // A response: never in a RST (4.2).
        (2, _) | (4, _) | (5, _) if kind == 3 => return Some(FormatError::Ignore),
        (2, _) | (4, _) | (5, _) | (0, _) => {}
        // Classes 1, 3, 6, 7 are reserved.
        _ => return Some(wrong),
    }
    // The options: each nibble 15 is reserved outside the payload marker, and a marker must be
    // followed by at least one byte.
    let mut at = 4 + tkl;
    while at < bytes.len() {
        let b = bytes[at];
        at += 1;
        if b == 0xff {
            return (at == bytes.len()).then_some(wrong);
        }
        let mut ext = |nibble: u8| -> Option<usize> {
            match nibble {
                13 => {
                    let v = *bytes.get(at)?;
                    at += 1;
                    Some(usize::from(v) + 13)
                }
                14 => {
                    let v = bytes.get(at..at + 2)?;
                    at += 2;
                    Some(usize::from(u16::from_be_bytes([v[0], v[1]])) + 269)
                }
                15 => None,
                n => Some(usize::from(n)),
            }
        };
        let Some(_delta) = ext(b >> 4) else {
            return Some(wrong);
        };
        let Some(len) = ext(b & 0xf) else {
            return Some(wrong);
        };
        at += len;
        if at > bytes.len() {
            return Some(wrong);
        }
    }
    None
}

/// Makes a response packet for `code` with a diagnostic payload.
pub fn response(code: ResponseType, diagnostic: &str) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Response(code);
    p.payload = diagnostic.as_bytes().to_vec();
    p
}

/// 5.03 Service Unavailable with a Max-Age of `seconds`: the client may try the same request
/// again after that long (RFC 7252 §5.9.3.4).
pub fn retry_later(why: &str, seconds: u32) -> Packet {
    let mut p = response(ResponseType::ServiceUnavailable, why);
    p.add_option(CoapOption::MaxAge, encode_uint(seconds));
    p
}

/// How long a 5.03 Service Unavailable or 4.29 Too Many Requests asks the client to wait
/// before it sends the request again: its Max-Age (RFC 7252 §5.9.3.4, RFC 8516 §4). `None`
/// for any other answer, or one without a readable Max-Age.
pub fn retry_after(p: &Packet) -> Option<std::time::Duration> {
    let code = Code::of(p)?;
    if code != Code::SERVICE_UNAVAILABLE && code != Code::TOO_MANY_REQUESTS {
        return None;
    }
    let secs = decode_uint(p.get_first_option(CoapOption::MaxAge)?)?;
    Some(std::time::Duration::from_secs(secs.into()))
}

/// Makes a request packet.
pub fn request(
    method: RequestType,
    path: &str,
    content_format: Option<ContentFormat>,
    payload: Vec<u8>,
) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Request(method);
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    if let Some(cf) = content_format {
        cf.set(&mut p);
    }
    p.payload = payload;
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_path_is_one_string_only_if_it_is_one_path() {
        let with = |segments: &[&str]| {
            let mut p = Packet::new();
            for s in segments {
                p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
            }
            path_of(&p)
        };
        assert_eq!(with(&["a", "b"]), "a/b");
        assert_eq!(with(&["a/b"]), "a%2Fb");
        assert_ne!(with(&["a%2Fb"]), with(&["a/b"]));
        assert_eq!(with(&[]), "");
    }

    #[test]
    fn only_a_503_or_429_with_max_age_asks_for_a_wait() {
        assert_eq!(
            retry_after(&retry_later("busy", 7)),
            Some(Duration::from_secs(7))
        );
        let mut many = response(ResponseType::TooManyRequests, "slow down");
        many.add_option(CoapOption::MaxAge, encode_uint(300));
        assert_eq!(retry_after(&many), Some(Duration::from_secs(300)));
        // No Max-Age: the client decides.
        assert_eq!(
            retry_after(&response(ResponseType::ServiceUnavailable, "")),
            None
        );
        // Max-Age on any other answer is about caching, not retrying.
        let mut stored = response(ResponseType::Changed, "");
        stored.add_option(CoapOption::MaxAge, encode_uint(60));
        assert_eq!(retry_after(&stored), None);
        let mut gateway = response(ResponseType::BadGateway, "");
        gateway.add_option(CoapOption::MaxAge, encode_uint(60));
        assert_eq!(retry_after(&gateway), None);
        // A Max-Age longer than a uint option may be is not read.
        let mut bad = response(ResponseType::ServiceUnavailable, "");
        bad.add_option(CoapOption::MaxAge, vec![1, 0, 0, 0, 0]);
        assert_eq!(retry_after(&bad), None);
    }
}
