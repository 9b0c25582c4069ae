//! The MQTT 3.1.1 packets a publisher needs (OASIS, 2014): CONNECT, PUBLISH at QoS 1,
//! PINGREQ and DISCONNECT written; CONNACK, PUBACK and PINGRESP read. Each layout is written
//! and read here and nowhere else. No I/O.

/// A packet from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// CONNACK: its return code (0: accepted).
    ConnAck(u8),
    /// PUBACK of a packet id.
    PubAck(u16),
    /// PINGRESP.
    PingResp,
    /// Anything else a publisher does not expect (its first byte): ignored.
    Other(u8),
}

/// What the broker's CONNACK return code means (§3.2.2.3).
pub fn refusal(code: u8) -> &'static str {
    match code {
        1 => "the broker does not take MQTT 3.1.1",
        2 => "the broker refused the client id",
        3 => "the broker is unavailable",
        4 => "the broker refused the user name or password",
        5 => "the broker says this client is not authorized",
        _ => "the broker refused the connection",
    }
}

/// The remaining-length field (§2.2.3): 7 bits per byte, at most four bytes.
fn put_length(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// The largest remaining length MQTT can say (268,435,455 bytes).
pub const MAX_REMAINING: usize = 268_435_455;

/// CONNECT with a clean session (a publisher keeps nothing at the broker: a batch that was
/// not acknowledged is sent again whole).
pub fn connect(
    client_id: &str,
    keep_alive_s: u16,
    user: Option<&str>,
    password: Option<&str>,
) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(4); // protocol level 3.1.1
    let mut flags = 0x02; // clean session
    if user.is_some() {
        flags |= 0x80;
        if password.is_some() {
            flags |= 0x40;
        }
    }
    body.push(flags);
    body.extend_from_slice(&keep_alive_s.to_be_bytes());
    put_str(&mut body, client_id.as_bytes());
    if let Some(u) = user {
        put_str(&mut body, u.as_bytes());
        if let Some(p) = password {
            put_str(&mut body, p.as_bytes());
        }
    }
    let mut out = vec![0x10];
    put_length(&mut out, body.len());
    out.extend(body);
    out
}

/// PUBLISH at QoS 1 of `payload` to `topic` (at most 65,535 bytes, checked by the caller) as
/// packet `id` (not 0); `dup` when it is sent again on the same connection.
pub fn publish(out: &mut Vec<u8>, topic: &str, id: u16, payload: &[u8], retain: bool) {
    out.push(0x30 | 0x02 | u8::from(retain));
    put_length(out, 2 + topic.len() + 2 + payload.len());
    put_str(out, topic.as_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
}

/// PINGREQ.
pub const PINGREQ: [u8; 2] = [0xC0, 0x00];
/// DISCONNECT.
pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// The largest packet taken from the broker.
pub const MAX_INCOMING: usize = 64 * 1024;

/// Reads one packet from the front of `buf`: the packet and its length, `Ok(None)` if more
/// bytes are needed, an error if the bytes cannot be MQTT.
pub fn read(buf: &[u8]) -> Result<Option<(Incoming, usize)>, String> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let (mut len, mut mult, mut i) = (0usize, 1usize, 1usize);
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len += usize::from(b & 0x7F) * mult;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        mult *= 128;
        if i > 4 {
            return Err("a remaining length longer than four bytes".into());
        }
    }
    // A publisher expects CONNACK, PUBACK and PINGRESP, a few bytes each: a broker (or
    // whoever sits in the middle of mqtt://) announcing more would have the sink buffer up to
    // 256 MiB of it first.
    if len > MAX_INCOMING {
        return Err(format!(
            "a packet of {len} bytes from the broker (type {}), where a publisher expects a few",
            first >> 4
        ));
    }
    if buf.len() < i + len {
        return Ok(None);
    }
    let body = &buf[i..i + len];
    let packet = match first >> 4 {
        2 if len == 2 => Incoming::ConnAck(body[1]),
        4 if len == 2 => Incoming::PubAck(u16::from_be_bytes([body[0], body[1]])),
        13 if len == 0 => Incoming::PingResp,
        2 | 4 | 13 => return Err(format!("packet type {} of length {len}", first >> 4)),
        _ => Incoming::Other(first),
    };
    Ok(Some((packet, i + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_larger_than_a_publisher_expects_is_refused_before_it_is_read() {
        // A PUBLISH announcing 268,435,455 bytes: refused at its header, nothing buffered.
        let e = read(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]).unwrap_err();
        assert!(e.contains("268435455 bytes"), "{e}");
        // What a publisher gets still reads.
        assert!(matches!(
            read(&[0x40, 2, 0, 7]),
            Ok(Some((Incoming::PubAck(7), 4)))
        ));
    }

    #[test]
    fn lengths_take_one_to_four_bytes() {
        for (n, want) in [
            (0, vec![0]),
            (127, vec![0x7F]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xFF, 0x7F]),
            (2_097_152, vec![0x80, 0x80, 0x80, 0x01]),
            (MAX_REMAINING, vec![0xFF, 0xFF, 0xFF, 0x7F]),
        ] {
            let mut out = Vec::new();
            put_length(&mut out, n);
            assert_eq!(out, want, "{n}");
        }
    }

    #[test]
    fn connect_as_the_spec_lays_it_out() {
        let c = connect("gw", 60, Some("u"), Some("p"));
        assert_eq!(
            c,
            [
                0x10, 20, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60, 0, 2, b'g', b'w', 0, 1,
                b'u', 0, 1, b'p'
            ]
        );
        assert_eq!(
            connect("gw", 0, None, Some("p"))[9],
            0x02,
            "no password without a user"
        );
    }

    #[test]
    fn publish_at_qos_1() {
        let mut out = Vec::new();
        publish(&mut out, "a/b", 7, b"hi", true);
        assert_eq!(out, [0x33, 9, 0, 3, b'a', b'/', b'b', 0, 7, b'h', b'i']);
    }

    #[test]
    fn reads_what_a_broker_sends_and_refuses_nonsense() {
        assert_eq!(read(&[0x20, 2, 0, 0]), Ok(Some((Incoming::ConnAck(0), 4))));
        assert_eq!(read(&[0x20, 2, 0, 5]), Ok(Some((Incoming::ConnAck(5), 4))));
        assert_eq!(
            read(&[0x40, 2, 1, 2, 0xD0]),
            Ok(Some((Incoming::PubAck(258), 4)))
        );
        assert_eq!(read(&[0xD0, 0]), Ok(Some((Incoming::PingResp, 2))));
        assert_eq!(read(&[0x40, 2, 1]), Ok(None), "incomplete");
        assert_eq!(read(&[0x40]), Ok(None));
        assert_eq!(read(&[]), Ok(None));
        assert!(read(&[0x40, 3, 1, 2, 3]).is_err());
        assert!(read(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 1]).is_err());
        assert_eq!(read(&[0x30, 1, 9]), Ok(Some((Incoming::Other(0x30), 3))));
    }
}
