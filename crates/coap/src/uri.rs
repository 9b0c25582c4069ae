//! `coaps://host[:port]/path?query`: where a request goes, parsed once for the uplink and for
//! `gateway coap`. No I/O (the host name is resolved by the caller).

/// A parsed CoAP URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    /// The host as written (a name or an IP; an IPv6 address without its brackets).
    pub host: String,
    /// The port (5684 when not given).
    pub port: u16,
    /// The path segments, percent-decoded.
    pub path: Vec<String>,
    /// The query parameters, percent-decoded.
    pub query: Vec<String>,
}

impl Uri {
    /// Parses a `coaps://` URI; `coap://` is refused (only CoAP over DTLS is spoken here).
    pub fn parse(text: &str) -> Result<Uri, String> {
        let rest = match text.split_once("://") {
            Some(("coaps", rest)) => rest,
            Some(("coap", _)) => {
                return Err(format!(
                    "{text:?} does not start with coaps://: plain coap:// is not supported, only coaps:// (CoAP over DTLS)"
                ))
            }
            Some((scheme, _)) => {
                return Err(format!(
                    "{text:?} does not start with coaps://: unknown scheme {scheme:?}"
                ))
            }
            None => {
                return Err(format!(
                    "{text:?} does not start with coaps://: write the URI as coaps://HOST[:PORT]/PATH"
                ))
            }
        };
        // RFC 7252 §6.1: a fragment is no part of a CoAP request, and a host has no user.
        if rest.contains('#') {
            return Err(format!(
                "{text:?}: a CoAP URI has no #fragment (write # in a path or query as %23)"
            ));
        }
        let (authority, tail) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(format!(
                "{text:?}: a coaps:// URI has no user@ in its host; the device is known by its certificate or PSK identity"
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{text:?}: unclosed [ in the host"))?;
            let port = match after {
                "" => None,
                a => Some(a.strip_prefix(':').ok_or_else(|| {
                    format!("{text:?}: {a:?} after the ] of the host: write [ADDRESS]:PORT")
                })?),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                // `::1` would be host `:` and port 1: an IPv6 address goes in brackets.
                Some((h, _)) if h.contains(':') => {
                    return Err(format!(
                        "{text:?}: write an IPv6 address in brackets, coaps://[{authority}]/PATH"
                    ))
                }
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };

        if host.is_empty() {
            return Err(format!("{text:?}: no host"));
        }
        let port = match port {
            None | Some("") => 5684,
            Some(p) => p
                .parse()
                .map_err(|_| format!("{text:?}: {p:?} is not a port number"))?,
        };
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, q),
            None => (tail, ""),
        };
        let decode_all = |s: &str, sep: char| -> Result<Vec<String>, String> {
            s.split(sep)
                .filter(|x| !x.is_empty())
                .map(|x| {
                    decode(x).ok_or_else(|| format!("{text:?}: bad percent-encoding in {x:?}"))
                })
                .collect()
        };
        Ok(Uri {
            host: host.to_owned(),
            port,
            path: decode_all(path, '/')?,
            query: decode_all(query, '&')?,
        })
    }
}

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            // Two hex digits; from_str_radix alone would take `+1` too.
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_path_and_query() {
        let u = Uri::parse("coaps://gw.example:5700/gpsflowtemp/pi%2D01?x=1&y").unwrap();
        assert_eq!(u.host, "gw.example");
        assert_eq!(u.port, 5700);
        assert_eq!(u.path, ["gpsflowtemp", "pi-01"]);
        assert_eq!(u.query, ["x=1", "y"]);
        let u = Uri::parse("coaps://[::1]/").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.len()), ("::1", 5684, 0));
    }

    #[test]
    fn refuses_what_it_cannot_send() {
        for (bad, why) in [
            ("coap://h/x", "only coaps://"),
            ("http://h/x", "unknown scheme"),
            ("h/x", "write the URI as"),
            ("coaps://:5684/x", "no host"),
            ("coaps://h:99999/x", "not a port number"),
            ("coaps://h/%zz", "bad percent-encoding"),
            ("coaps://h/%+1", "bad percent-encoding"),
            ("coaps://h/%-1", "bad percent-encoding"),
            ("coaps://h/x#top", "no #fragment"),
            ("coaps://::1/x", "in brackets"),
            ("coaps://fe80::1:5684/x", "in brackets"),
            ("coaps://[::1]junk/x", "after the ]"),
            ("coaps://pi@h/x", "no user@"),
            ("coaps://pi@[::1]/x", "no user@"),
        ] {
            let e = Uri::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
