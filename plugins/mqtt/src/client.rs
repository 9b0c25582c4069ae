//! One connection to the broker and the publishing of a batch over it: PUBLISH packets at QoS 1
//! go out in a window of `max_inflight`, each batch returns only once every one of them is
//! acknowledged (PUBACK). Blocking I/O on the sink's own thread, TCP or TLS (OpenSSL).

use crate::packet::{self, Incoming};
use gateway_sdk::PluginError;
use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslStream, SslVerifyMode};
use std::{
    collections::HashSet,
    io::{Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    path::PathBuf,
    time::{Duration, Instant},
};

/// Where the broker is, and how to talk to it.
#[derive(Clone)]
pub struct Settings {
    /// Host name (checked against the certificate with TLS).
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS, if `mqtts`.
    pub tls: Option<SslConnector>,
    /// Client id.
    pub client_id: String,
    /// User name and password.
    pub user: Option<String>,
    /// The password.
    pub password: Option<String>,
    /// Keep-alive told to the broker.
    pub keep_alive: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for the broker while a batch is out.
    pub ack_timeout: Duration,
    /// Most PUBLISH packets unacknowledged.
    pub max_inflight: u16,
    /// Publish retained.
    pub retain: bool,
}

/// TLS settings of `mqtts`.
pub struct Tls {
    /// CA file, or the system's store.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key.
    pub cert: Option<(PathBuf, PathBuf)>,
}

/// Parses `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`: (tls, host, port).
pub fn parse_url(url: &str) -> Result<(bool, String, u16), String> {
    // Credentials in the URL are refused before anything else is, by messages that quote it.
    if url.contains('@') {
        return Err(
            "put the user in username and the password in password_env or password_file, not in the URL"
                .into(),
        );
    }
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(format!(
            "{url:?}: give mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
        ));
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') {
        return Err(format!("{url:?}: no path after the host"));
    }
    let default = if tls { 8883 } else { 1883 };
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: a [ without its ]"))?;
            match after.strip_prefix(':') {
                Some(p) => (h, p.parse().map_err(|_| format!("{url:?}: bad port"))?),
                None if after.is_empty() => (h, default),
                None => return Err(format!("{url:?}: bad port")),
            }
        }
        None => match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| format!("{url:?}: bad port"))?),
            None => (rest, default),
        },
    };
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    Ok((tls, host.to_owned(), port))
}

/// The TLS connector of `mqtts`: the broker's certificate checked against `ca_file` alone (or
/// the system's store) and its name against the host.
pub fn connector(t: &Tls) -> Result<SslConnector, String> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    b.set_verify(SslVerifyMode::PEER);
    if let Some(ca) = &t.ca_file {
        // The builder trusts the system's store; a CA file replaces it, or a certificate
        // any public CA issued for the broker's name would pass as well.
        let empty = openssl::x509::store::X509StoreBuilder::new().map_err(|e| e.to_string())?;
        b.set_cert_store(empty.build());
        b.set_ca_file(ca)
            .map_err(|e| format!("tls_ca_file {}: {e}", ca.display()))?;
    }
    if let Some((cert, key)) = &t.cert {
        b.set_certificate_chain_file(cert)
            .map_err(|e| format!("tls_cert_file {}: {e}", cert.display()))?;
        b.set_private_key_file(key, SslFiletype::PEM)
            .map_err(|e| format!("tls_key_file {}: {e}", key.display()))?;
        b.check_private_key()
            .map_err(|e| format!("tls_key_file does not match tls_cert_file: {e}"))?;
    }
    Ok(b.build())
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A connection, CONNACKed.
pub struct Connection {
    stream: Stream,
    /// Bytes read, parsed up to `pos`.
    buf: Vec<u8>,
    pos: usize,
    next_id: u16,
    /// When the last packet went out or came in.
    last_io: Instant,
}

fn retry(what: &str, e: impl std::fmt::Display) -> PluginError {
    PluginError::retry(format!("{what}: {e}"))
}

impl Connection {
    /// Connects, and waits for the broker's CONNACK.
    pub fn open(s: &Settings) -> Result<Connection, PluginError> {
        let addrs: Vec<SocketAddr> = (s.host.as_str(), s.port)
            .to_socket_addrs()
            .map_err(|e| retry(&format!("resolving {}", s.host), e))?
            .collect();
        let mut last = None;
        let mut tcp = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, s.connect_timeout) {
                Ok(t) => {
                    tcp = Some(t);
                    break;
                }
                Err(e) => last = Some(format!("{a}: {e}")),
            }
        }
        let tcp = tcp.ok_or_else(|| {
            PluginError::retry(format!(
                "cannot connect to the broker at {}:{}: {}",
                s.host,
                s.port,
                last.unwrap_or_else(|| "no address".into())
            ))
        })?;
        tcp.set_nodelay(true).map_err(|e| retry("TCP_NODELAY", e))?;
        // A read waits at most this long before the deadline of what it waits for is looked
        // at again.
        tcp.set_read_timeout(Some(s.connect_timeout))
            .map_err(|e| retry("socket", e))?;
        tcp.set_write_timeout(Some(s.ack_timeout))
            .map_err(|e| retry("socket", e))?;
        let stream = match &s.tls {
            None => Stream::Plain(tcp),
            Some(c) => Stream::Tls(Box::new(c.connect(&s.host, tcp).map_err(|e| {
                retry(&format!("TLS with the broker at {}:{}", s.host, s.port), e)
            })?)),
        };
        let mut c = Connection {
            stream,
            buf: Vec::with_capacity(4096),
            pos: 0,
            next_id: 0,
            last_io: Instant::now(),
        };
        let keep_alive = s.keep_alive.as_secs().min(u64::from(u16::MAX)) as u16;
        let hello = packet::connect(
            &s.client_id,
            keep_alive,
            s.user.as_deref(),
            s.password.as_deref(),
        );
        c.stream
            .write_all(&hello)
            .map_err(|e| retry("sending CONNECT", e))?;
        match c.next(Instant::now() + s.connect_timeout, true)? {
            Incoming::ConnAck(0) => {
                // From now on a read waits for acknowledgements.
                c.stream
                    .tcp()
                    .set_read_timeout(Some(s.ack_timeout.min(s.connect_timeout)))
                    .map_err(|e| retry("socket", e))?;
                Ok(c)
            }
            Incoming::ConnAck(code) => Err(PluginError::retry(format!(
                "{} (CONNACK {code})",
                packet::refusal(code)
            ))),
            other => Err(PluginError::retry(format!(
                "the broker answered CONNECT with {other:?}"
            ))),
        }
    }

    /// Reads the next packet, waiting until `deadline` at most (to within the socket's read
    /// timeout); `quick`: acknowledge at once what arrives.
    fn next(&mut self, deadline: Instant, quick: bool) -> Result<Incoming, PluginError> {
        let mut chunk = [0u8; 4096];
        loop {
            match packet::read(&self.buf[self.pos..]) {
                Ok(Some((p, n))) => {
                    self.pos += n;
                    if self.pos == self.buf.len() {
                        self.buf.clear();
                        self.pos = 0;
                    }
                    self.last_io = Instant::now();
                    return Ok(p);
                }
                Ok(None) => {}
                Err(e) => return Err(PluginError::retry(format!("the broker sent {e}"))),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PluginError::retry(
                    "the broker acknowledged nothing in time",
                ));
            }
            if quick {
                // Acknowledge what comes at once. A broker with Nagle's algorithm on
                // (Mosquitto's default) holds its next PUBACKs until its previous segment is
                // acknowledged, and at the end of a batch the sink sends nothing that would carry
                // that ACK: a delayed ACK (40 ms) would stall every batch. The kernel clears the
                // flag as it goes, so it is set before each such read.
                let _ = socket2::SockRef::from(self.stream.tcp()).set_tcp_quickack(true);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(PluginError::retry("the broker closed the connection")),
                Ok(n) => {
                    self.buf.drain(..self.pos);
                    self.pos = 0;
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(retry("reading from the broker", e)),
            }
        }
    }

    /// Whether the connection still answers: after half the keep-alive without traffic, a
    /// PINGREQ must get its PINGRESP.
    pub fn alive(&mut self, s: &Settings) -> bool {
        if self.last_io.elapsed() < s.keep_alive / 2 {
            return true;
        }
        if self.stream.write_all(&packet::PINGREQ).is_err() {
            return false;
        }
        let deadline = Instant::now() + s.connect_timeout;
        loop {
            match self.next(deadline, true) {
                Ok(Incoming::PingResp) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    fn id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    /// Publishes every (topic, payload) at QoS 1 and returns once the broker acknowledged
    /// each; at most `max_inflight` are out at once. Any error leaves the connection unusable.
    pub fn publish_all(
        &mut self,
        s: &Settings,
        messages: &[(String, Vec<u8>)],
    ) -> Result<(), PluginError> {
        let window = usize::from(s.max_inflight.max(1));
        let mut inflight: HashSet<u16> = HashSet::with_capacity(window);
        let mut out = Vec::with_capacity(64 * 1024);
        let mut next = messages.iter();
        let mut more = true;
        // How long the broker may go without acknowledging anything: counted from the end of
        // each write (on a slow link a window of large messages takes long to send), which
        // comes only at the start and after a PUBACK freed a place, and renewed by a PUBACK of
        // a message in flight; other packets (PINGRESP, a PUBACK of nothing sent) cannot hold
        // a batch for ever.
        let mut deadline = Instant::now() + s.ack_timeout;
        loop {
            out.clear();
            while more && inflight.len() < window {
                let Some((topic, payload)) = next.next() else {
                    more = false;
                    break;
                };
                // Past 65,535 messages ids come round again: never one still in flight, whose
                // PUBACK would settle both.
                let mut id = self.id();
                while inflight.contains(&id) {
                    id = self.id();
                }
                packet::publish(&mut out, topic, id, payload, s.retain);
                inflight.insert(id);
            }
            if !out.is_empty() {
                self.stream
                    .write_all(&out)
                    .map_err(|e| retry("publishing", e))?;
                self.last_io = Instant::now();
                deadline = self.last_io + s.ack_timeout;
            }
            if inflight.is_empty() {
                return Ok(());
            }
            // Take every acknowledgement that is here (at least one), and refill the window at
            // once: the broker is never left without work.
            loop {
                if let Incoming::PubAck(id) = self.next(deadline, !more)? {
                    if inflight.remove(&id) {
                        deadline = Instant::now() + s.ack_timeout;
                    }
                }
                let buffered = matches!(packet::read(&self.buf[self.pos..]), Ok(Some(_)));
                if !buffered || inflight.is_empty() {
                    break;
                }
            }
        }
    }

    /// Says goodbye (DISCONNECT), so that the broker does not publish a will or wait.
    pub fn close(mut self) {
        let _ = self.stream.write_all(&packet::DISCONNECT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1"),
            Ok((false, "127.0.0.1".into(), 1883))
        );
        assert_eq!(
            parse_url("mqtts://broker.example:8884/"),
            Ok((true, "broker.example".into(), 8884))
        );
        assert_eq!(
            parse_url("mqtt://[::1]:1884"),
            Ok((false, "::1".into(), 1884))
        );
        assert_eq!(parse_url("mqtts://[::1]"), Ok((true, "::1".into(), 8883)));
        for bad in [
            "tcp://x",
            "mqtt://",
            "mqtt://u:p@host",
            "mqtt://host:x",
            "mqtt://host/topic",
            "mqtt://[::1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
