//! How messages and payloads are shown to a person: one line per message for `-v`, SenML as a
//! table, link-format one link per line. No I/O.

use gateway_coap::{
    coap_lite::{CoapOption, MessageType, Packet},
    ContentFormat,
};
use gateway_sdk::{
    text::{one_line, printable},
    Timestamp,
};

/// Content-formats by the names people write (`--content-format`, `--accept`).
const NAMED: &[(&str, u16)] = &[
    ("text", 0),
    ("text/plain", 0),
    ("link-format", 40),
    ("application/link-format", 40),
    ("xml", 41),
    ("octet-stream", 42),
    ("application/octet-stream", 42),
    ("json", 50),
    ("application/json", 50),
    ("cbor", 60),
    ("application/cbor", 60),
    ("senml+json", 110),
    ("application/senml+json", 110),
    ("senml+cbor", 112),
    ("application/senml+cbor", 112),
];

/// A content-format given by name or number.
pub fn content_format(s: &str) -> Result<ContentFormat, String> {
    if let Ok(n) = s.parse::<u16>() {
        return Ok(ContentFormat(n));
    }
    NAMED
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(s))
        .map(|(_, n)| ContentFormat(*n))
        .ok_or_else(|| {
            let names: Vec<&str> = NAMED
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| !n.contains('/'))
                .collect();
            format!(
                "{s:?} is not a content-format: give a number or one of {}",
                names.join(", ")
            )
        })
}

fn option_name(n: u16) -> String {
    match n {
        1 => "If-Match".into(),
        3 => "Uri-Host".into(),
        4 => "ETag".into(),
        5 => "If-None-Match".into(),
        6 => "Observe".into(),
        7 => "Uri-Port".into(),
        8 => "Location-Path".into(),
        11 => "Uri-Path".into(),
        12 => "Content-Format".into(),
        14 => "Max-Age".into(),
        15 => "Uri-Query".into(),
        17 => "Accept".into(),
        20 => "Location-Query".into(),
        23 => "Block2".into(),
        27 => "Block1".into(),
        28 => "Size2".into(),
        60 => "Size1".into(),
        n => format!("option {n}"),
    }
}

fn option_value(n: u16, v: &[u8]) -> String {
    let uint = || v.iter().fold(0u64, |a, &b| (a << 8) | u64::from(b));
    match n {
        // Debug escapes controls and quotes; one_line what it leaves (U+3164, a selector).
        3 | 8 | 11 | 15 | 20 => one_line(&format!("{:?}", String::from_utf8_lossy(v))).into_owned(),
        // At most 2 bytes (RFC 7252 5.10): a longer one is shown as it came, not cut to
        // one of the formats it is not.
        12 | 17 if v.len() <= 2 => format!("{}", ContentFormat(uint() as u16)),
        12 | 17 => format!("(bad: {} bytes, {})", v.len(), hex(v)),
        23 | 27 => match gateway_coap::Block::decode(v) {
            Some(b) => format!("{}/{}/{}", b.num, if b.more { 1 } else { 0 }, b.size()),
            None => "(bad)".into(),
        },
        6 | 7 | 14 | 28 | 60 => uint().to_string(),
        _ => hex(v),
    }
}

fn hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

/// A request before it is sent: its code, options and payload size (the MID and the token
/// are chosen when it goes out).
pub fn request(p: &Packet) -> String {
    let mut line = format!("CON {}", p.header.code);
    line += &options(p);
    line
}

/// The options and the payload's size, each after `, `.
fn options(p: &Packet) -> String {
    let mut line = String::new();
    for (opt, values) in p.options() {
        let n: u16 = *opt;
        for v in values {
            line += &format!(", {} {}", option_name(n), option_value(n, v));
        }
    }
    line += &format!(", {} bytes of payload", p.payload.len());
    line
}

/// One line: type, code, MID, token, options, payload size.
pub fn message(p: &Packet) -> String {
    let t = match p.header.get_type() {
        MessageType::Confirmable => "CON",
        MessageType::NonConfirmable => "NON",
        MessageType::Acknowledgement => "ACK",
        MessageType::Reset => "RST",
    };
    let mut line = format!(
        "{t} {} MID {} token {}",
        p.header.code,
        p.header.message_id,
        if p.get_token().is_empty() {
            "(none)".to_owned()
        } else {
            hex(p.get_token())
        }
    );
    line += &options(p);
    line
}

/// The payload as a person reads it: SenML as a table, link-format one link per line, text as
/// it is, anything else in hex.
pub fn payload(p: &[u8], format: Option<ContentFormat>) -> String {
    let decoded = match format {
        Some(ContentFormat::SENML_CBOR) => Some(gateway_senml::decode_cbor(
            p,
            100_000,
            Timestamp::now(),
            "(server)",
        )),
        Some(ContentFormat::SENML_JSON) => Some(gateway_senml::decode_json(
            p,
            100_000,
            Timestamp::now(),
            "(server)",
        )),
        _ => None,
    };
    match decoded {
        Some(Ok(pack)) => {
            let mut out = String::new();
            for r in &pack.readings {
                out += &format!(
                    "{}  {}/{}  {} = {}{}{}\n",
                    r.time,
                    one_line(&r.device),
                    one_line(&r.sensor),
                    one_line(&r.name),
                    r.value,
                    if r.unit.as_str().is_empty() { "" } else { " " },
                    one_line(&r.unit)
                );
            }
            out
        }
        // What the server sent, as text where it is (SenML JSON that the ingress's rules
        // refuse is still JSON to read), with why it is no table.
        Some(Err(e)) => format!("(not valid SenML: {e})\n{}", text_or_hex(p)),
        None if format == Some(ContentFormat::LINK_FORMAT) => links(&String::from_utf8_lossy(p))
            .map(|l| format!("{}\n", one_line(l)))
            .collect(),
        None => text_or_hex(p),
    }
}

/// The links of a link-format body (RFC 6690): split at the commas between them, not at
/// those in a quoted value or a `<...>` target (`title="a,</admin>"` is one link's title).
fn links(text: &str) -> impl Iterator<Item = &str> {
    let (mut quoted, mut target, mut escaped) = (false, false, false);
    text.split(move |c: char| {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' if !target => quoted = !quoted,
            '<' if !quoted => target = true,
            '>' if !quoted => target = false,
            ',' => return !quoted && !target,
            _ => {}
        }
        false
    })
}

/// `p` as text ending in a line break, made printable; in hex if it is not UTF-8.
fn text_or_hex(p: &[u8]) -> String {
    match std::str::from_utf8(p) {
        Ok(text) if !text.is_empty() && !text.ends_with('\n') => {
            format!("{}\n", printable(text))
        }
        Ok(text) => printable(text).into_owned(),
        Err(_) => format!("{}\n", hex(p)),
    }
}

/// The Block2 option of `p`, if it has one.
pub fn block2(p: &Packet) -> Option<gateway_coap::Block> {
    p.get_first_option(CoapOption::Block2)
        .and_then(|v| gateway_coap::Block::decode(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_coap::coap_lite::{MessageClass, ResponseType};

    #[test]
    fn content_formats_by_name_or_number() {
        assert_eq!(content_format("senml+cbor"), Ok(ContentFormat(112)));
        assert_eq!(content_format("application/JSON"), Ok(ContentFormat(50)));
        assert_eq!(content_format("42"), Ok(ContentFormat(42)));
        assert!(content_format("yaml").unwrap_err().contains("senml+cbor"));
    }

    #[test]
    fn a_message_line_shows_type_code_mid_token_and_options() {
        let mut p = Packet::new();
        p.header.set_type(MessageType::Acknowledgement);
        p.header.code = MessageClass::Response(ResponseType::Content);
        p.header.message_id = 4711;
        p.set_token(vec![0xab, 0x01]);
        ContentFormat::LINK_FORMAT.set(&mut p);
        p.add_option(
            CoapOption::Block2,
            gateway_coap::Block {
                num: 2,
                more: true,
                szx: 6,
            }
            .encode(),
        );
        p.payload = b"</a>".to_vec();
        assert_eq!(
            message(&p),
            "ACK 2.05 MID 4711 token ab01, Content-Format application/link-format, Block2 2/1/1024, 4 bytes of payload"
        );
    }

    #[test]
    fn senml_is_shown_as_a_table_and_links_one_per_line() {
        let pack = br#"[{"bn":"pi-01:","n":"t1/temperature","u":"Cel","v":21.5,"t":1700000000}]"#;
        let shown = payload(pack, Some(ContentFormat::SENML_JSON));
        assert!(
            shown.contains("pi-01/t1  temperature = 21.5 Cel"),
            "{shown}"
        );
        assert_eq!(
            payload(b"</a>;rt=x,</b>", Some(ContentFormat::LINK_FORMAT)),
            "</a>;rt=x\n</b>\n"
        );
        // Found in a review: a comma in a quoted value showed a link that is not there.
        assert_eq!(
            payload(
                br#"</a>;title="x,</admin>",</b,c>;rt="q\",</z>",</d>"#,
                Some(ContentFormat::LINK_FORMAT)
            ),
            "</a>;title=\"x,</admin>\"\n</b,c>;rt=\"q\\\",</z>\"\n</d>\n"
        );
        assert_eq!(payload(&[0xff, 0x00], None), "ff00\n");
        // A pack the ingress's rules refuse (a record with a sum only) is still JSON to read:
        // shown as text after why it is no table, not as hex.
        let sum_only = br#"[{"n":"energy","s":12.5}]"#;
        assert_eq!(
            payload(sum_only, Some(ContentFormat::SENML_JSON))
                .split_once(")\n")
                .map(|(_, body)| body),
            Some("[{\"n\":\"energy\",\"s\":12.5}]\n")
        );
    }

    /// Found in a review: a Content-Format of 3 bytes was cut to its last two, and 0x01006E
    /// showed as application/senml+json.
    #[test]
    fn a_content_format_longer_than_two_bytes_is_shown_as_it_came() {
        assert_eq!(option_value(12, &[0x6e]), "application/senml+json");
        assert_eq!(option_value(12, &[1, 0, 0x6e]), "(bad: 3 bytes, 01006e)");
        // A Location-Path that shows as another: Debug leaves a Hangul filler as it is.
        assert_eq!(
            option_value(8, "pi\u{3164}-01".as_bytes()),
            "\"pi\\u{3164}-01\""
        );
    }

    #[test]
    fn a_server_cannot_write_escape_sequences_to_the_terminal() {
        // OSC 52 sets the clipboard, CSI 2J clears the screen, U+202E reverses the text.
        let text = b"x\x1b]52;c;ZXZpbA==\x07 y\x1b[2J\r\nok\t\xe2\x80\xae";
        for format in [
            None,
            Some(ContentFormat::LINK_FORMAT),
            Some(ContentFormat(0)),
        ] {
            let shown = payload(text, format);
            assert!(
                !shown.contains(['\x1b', '\x07', '\r', '\u{202e}']),
                "{shown:?}"
            );
        }
        assert_eq!(
            payload(text, None),
            "x\\u{1b}]52;c;ZXZpbA==\\u{7} y\\u{1b}[2J\\r\nok\t\\u{202e}\n"
        );
        // Names that reorder text are not SenML the decoder takes: shown as bytes, in hex.
        let pack = "[{\"bn\":\"pi\u{202e}:\",\"n\":\"t1/temp\u{2028}\",\"u\":\"Cel\",\"v\":1}]";
        let shown = payload(pack.as_bytes(), Some(ContentFormat::SENML_JSON));
        assert!(
            shown.starts_with("(not valid SenML: record 0: field bn"),
            "{shown}"
        );
        assert!(!shown.contains(['\u{202e}', '\u{2028}']), "{shown}");
    }
}
