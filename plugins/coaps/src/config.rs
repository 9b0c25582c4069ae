//! The keys of `coaps-uplink` and `coaps-ingress`.

use gateway_coap::ContentFormat;
use gateway_sdk::config::duration;
use serde::Deserialize;
use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// Payload encoding of the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// SenML CBOR, content-format 112.
    #[default]
    Cbor,
    /// SenML JSON, content-format 110.
    Json,
}

impl Encoding {
    /// The CoAP content-format.
    pub fn content_format(self) -> ContentFormat {
        match self {
            Encoding::Cbor => ContentFormat::SENML_CBOR,
            Encoding::Json => ContentFormat::SENML_JSON,
        }
    }

    /// Encodes readings as a SenML pack.
    pub fn encode(self, readings: &[gateway_sdk::Reading]) -> Vec<u8> {
        match self {
            Encoding::Cbor => gateway_senml::encode_cbor(readings),
            Encoding::Json => gateway_senml::encode_json(readings),
        }
    }
}

/// `[sinks.NAME]` keys of `coaps-uplink`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// `coaps://HOST[:PORT]/PATH`; the port defaults to 5684.
    pub uri: String,
    /// CA certificate (PEM) the server's chain must lead to.
    pub ca_file: Option<PathBuf>,
    /// CRLs (PEM) of `ca_file`'s CA: a server certificate they revoke is refused.
    pub crl_file: Option<PathBuf>,
    /// This device's certificate (PEM), for servers that require one.
    pub cert_file: Option<PathBuf>,
    /// This device's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// PSK identity, instead of certificates.
    pub psk_identity: Option<String>,
    /// PSK key, in hex (or `psk_key_env`, `psk_key_file`).
    pub psk_key: Option<String>,
    /// Environment variable holding the PSK key, in hex.
    pub psk_key_env: Option<String>,
    /// File whose first line is the PSK key, in hex; others may not read it.
    pub psk_key_file: Option<PathBuf>,
    /// OpenSSL cipher list; the default offers ECDHE with AES-GCM and ChaCha20-Poly1305.
    pub ciphers: Option<String>,
    /// `cbor` or `json`.
    #[serde(default)]
    pub encoding: Encoding,
    /// CoAP ACK_TIMEOUT.
    #[serde(default = "d2s", with = "duration")]
    pub ack_timeout: Duration,
    /// CoAP MAX_RETRANSMIT (at most 20).
    #[serde(default = "four")]
    pub max_retransmit: u32,
    /// Set each request's first timeout from the measured round trip (CoCoA-style, never
    /// under 200 ms); `false`: `ack_timeout` for every request.
    #[serde(default = "yes")]
    pub adaptive_rto: bool,
    /// How long one request may take (a block-wise one: this long per block) before the
    /// write fails (retryably) and the session is set up again.
    #[serde(default = "d30s", with = "duration")]
    pub request_timeout: Duration,
    /// How long a DTLS handshake may take. Its flights are sent again after 1 s, then 1.5
    /// times longer each time up to 2 s: 30 s carries 99 % of handshakes through 25 % loss.
    #[serde(default = "d30s", with = "duration")]
    pub handshake_timeout: Duration,
    /// Block size for a reading too large for one datagram: 16..=1024, a power of two, that
    /// fits one datagram of `mtu` (by default the largest that does).
    #[serde(default)]
    pub block_size: Option<usize>,
    /// Path MTU for DTLS records. Payloads that fit go in one datagram; larger ones block-wise.
    #[serde(default = "mtu")]
    pub mtu: u32,
    /// Most readings in one request: a larger batch from the host goes as several requests.
    #[serde(default = "hundred")]
    pub max_request_readings: usize,
    /// Requests in flight at once (RFC 7252's NSTART).
    #[serde(default = "eight_requests")]
    pub nstart: usize,
    /// Batches in flight at once: while the last requests of one wait for their answers (or
    /// retransmissions), the requests of the next ones take the free NSTART slots.
    #[serde(default = "sixteen")]
    pub window: usize,
    /// Local address to send from.
    #[serde(default = "any")]
    pub bind: SocketAddr,
    /// After the server refuses the uplink as a whole (4.01, 4.03, 4.04, 4.05, 4.15, a 2.xx
    /// other than 2.01 and 2.04 ...: one end is misconfigured for this device), how long to
    /// hold the readings before trying again;
    /// also the longest pause a 5.03's or 4.29's Max-Age gets.
    #[serde(default = "d5m", with = "duration")]
    pub refusal_backoff: Duration,
}

/// One PSK client the ingress accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PskEntry {
    /// The identity; it is also the device identity of its readings.
    pub identity: String,
    /// The key, in hex (or `key_env`, `key_file`).
    pub key: Option<String>,
    /// Environment variable holding the key, in hex.
    pub key_env: Option<String>,
    /// File whose first line is the key, in hex; others may not read it.
    pub key_file: Option<PathBuf>,
}

/// `[sources.NAME]` keys of `coaps-ingress`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressConfig {
    /// Address and port to listen on.
    #[serde(default = "listen")]
    pub listen: SocketAddr,
    /// Threads serving the port, each with a socket of its own (SO_REUSEPORT; the kernel keeps
    /// each device on one) and its own sessions; 0: one per core but one (left for the sinks).
    #[serde(default)]
    pub workers: usize,
    /// How long a worker that has answered everything polls its socket before it sleeps, so
    /// that the next request of a busy device finds it awake instead of waking it (a device
    /// with one request in flight gets about twice the requests/s). It polls only while
    /// polling finds requests, and gives its core to any other thread that is ready to run;
    /// "0s": never.
    #[serde(default = "d100us", with = "duration")]
    pub busy_poll: Duration,
    /// The resource devices POST to.
    #[serde(default = "path")]
    pub path: String,
    /// Server certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// Server private key (PEM).
    pub key_file: Option<PathBuf>,
    /// CA (PEM) for client certificates.
    pub client_ca_file: Option<PathBuf>,
    /// Refuse devices without a certificate from `client_ca_file` in the handshake itself
    /// (without it, such a device completes the handshake and is then refused, unless
    /// `allow_anonymous`).
    #[serde(default)]
    pub require_client_cert: bool,
    /// CRLs (PEM) issued by `client_ca_file`: revoked device certificates are refused.
    pub client_crl_file: Option<PathBuf>,
    /// Device identities refused at every handshake (a lost or retired device).
    #[serde(default)]
    pub deny: Vec<String>,
    /// Take readings from peers that have no identity (no PSK, no client certificate), all
    /// under the device `anonymous`. Off: such peers are refused.
    #[serde(default)]
    pub allow_anonymous: bool,
    /// PSK identities and keys.
    #[serde(default)]
    pub psk: Vec<PskEntry>,
    /// A file of PSKs, one `IDENTITY:HEXKEY` per line (GnuTLS psktool's format); others may not
    /// read it.
    pub psk_file: Option<PathBuf>,
    /// OpenSSL cipher list.
    pub ciphers: Option<String>,
    /// Most sessions at once, all workers together.
    #[serde(default = "fleet")]
    pub max_sessions: usize,
    /// Most sessions of one device identity at once on each worker (a reconnecting device, or
    /// two uplinks with one key); a newer one replaces the oldest.
    #[serde(default = "four_sessions")]
    pub max_sessions_per_identity: usize,
    /// Most handshakes in progress at once.
    #[serde(default = "hundred")]
    pub max_handshakes: usize,
    /// Most handshakes in progress from one IP address.
    #[serde(default = "thirty_two")]
    pub max_handshakes_per_address: usize,
    /// A session without traffic for this long is dropped.
    #[serde(default = "d10m", with = "duration")]
    pub session_idle: Duration,
    /// How long a handshake may take (as long as a device on a lossy link may need).
    #[serde(default = "d30s", with = "duration")]
    pub handshake_timeout: Duration,
    /// Largest request body in bytes (after block-wise reassembly); larger ones get 4.13.
    #[serde(default = "mib")]
    pub max_body: usize,
    /// Most records in one pack; more get 4.13.
    #[serde(default = "ten_thousand")]
    pub max_records: usize,
    /// Max-Age (seconds) of a 5.03 sent when the sinks cannot store a batch: how long the
    /// device is asked to wait before it sends again.
    #[serde(default = "five")]
    pub retry_after: u32,
    /// Reading ids remembered to drop re-sent readings (at least this many, at most three
    /// times; one device at most an eighth of them, at least 1,024, before it forgets its own).
    #[serde(default = "dedup")]
    pub dedup_ids: usize,
    /// CoAP: answer with an empty ACK if storing takes longer than this.
    #[serde(default = "d1s", with = "duration")]
    pub separate_after: Duration,
    /// Path MTU for DTLS records.
    #[serde(default = "mtu")]
    pub mtu: u32,
    /// Identities (certificate common names or PSK identities) that may read, and forget, the
    /// last readings of every device (`GET /{path}/{device}`); a device reads its own only.
    #[serde(default)]
    pub readers: Vec<String>,
    /// Devices whose last readings are kept for `GET /{path}/{device}` (the one updated
    /// longest ago goes first); 0 keeps none.
    #[serde(default = "twenty_thousand")]
    pub last_values_devices: usize,
    /// (sensor, name) pairs kept per device; readings of further pairs are not kept, nor
    /// readings past 1 KiB per pair for the device, counted as its GET answer could write them.
    #[serde(default = "sixty_four")]
    pub last_values_per_device: usize,
    /// Bytes the table of last readings may take, roughly; past it, the device updated
    /// longest ago goes.
    #[serde(default = "sixty_four_mib")]
    pub last_values_bytes: usize,
    /// Clients registered at once to be notified of new readings (Observe, RFC 7641), all
    /// peers together; each peer may hold 8. Past it, a GET with Observe is answered without
    /// registering. 0: no observers.
    #[serde(default = "twenty_thousand")]
    pub max_observers: usize,
}

fn sixty_four_mib() -> usize {
    64 << 20
}

fn twenty_thousand() -> usize {
    20_000
}
fn sixty_four() -> usize {
    64
}

fn yes() -> bool {
    true
}
fn d1s() -> Duration {
    Duration::from_secs(1)
}
fn d100us() -> Duration {
    Duration::from_micros(100)
}
fn d2s() -> Duration {
    Duration::from_secs(2)
}
fn d30s() -> Duration {
    Duration::from_secs(30)
}
fn d5m() -> Duration {
    Duration::from_secs(300)
}
fn d10m() -> Duration {
    Duration::from_secs(600)
}
fn four() -> u32 {
    4
}
fn sixteen() -> usize {
    16
}
fn eight_requests() -> usize {
    8
}
fn four_sessions() -> usize {
    4
}
fn mtu() -> u32 {
    gateway_dtls::DEFAULT_MTU
}
fn any() -> SocketAddr {
    "0.0.0.0:0".parse().expect("address")
}
fn listen() -> SocketAddr {
    "0.0.0.0:5684".parse().expect("address")
}
fn path() -> String {
    "gpsflowtemp".to_owned()
}
fn fleet() -> usize {
    20_000
}
fn hundred() -> usize {
    100
}
fn thirty_two() -> usize {
    32
}
fn mib() -> usize {
    1 << 20
}
fn ten_thousand() -> usize {
    10_000
}
fn five() -> u32 {
    5
}
fn dedup() -> usize {
    100_000
}

/// Parses a PSK written in hex (shared with `gateway coap`).
pub use gateway_dtls::hex_key;

/// `coaps://host[:port]/path` split into host, port and path (segments joined by `/`), by
/// [`gateway_coap::Uri`]; a query is refused (the uplink sends none).
pub fn parse_uri(uri: &str) -> Result<(String, u16, String), String> {
    let u = gateway_coap::Uri::parse(uri)?;
    if !u.query.is_empty() {
        return Err(format!("{uri:?}: the uplink's URI takes no query"));
    }
    Ok((u.host, u.port, u.path.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        assert_eq!(
            parse_uri("coaps://localhost/gpsflowtemp").unwrap(),
            ("localhost".into(), 5684, "gpsflowtemp".into())
        );
        assert_eq!(
            parse_uri("coaps://10.0.0.1:5700/a/b").unwrap(),
            ("10.0.0.1".into(), 5700, "a/b".into())
        );
        assert_eq!(
            parse_uri("coaps://[::1]:5684/x").unwrap(),
            ("::1".into(), 5684, "x".into())
        );
        assert!(parse_uri("coap://x/y").is_err());
        assert!(parse_uri("coaps://x:port/y").is_err());
    }

    #[test]
    fn keys() {
        assert_eq!(hex_key("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(hex_key(" 00FF "), Some(vec![0, 255]));
        assert_eq!(hex_key("0g"), None);
        assert_eq!(hex_key("abc"), None);
        assert_eq!(hex_key(""), None);
    }

    #[test]
    fn a_non_ascii_key_is_an_error_not_a_panic() {
        // Found in review: slicing "é0" at byte 1 panicked.
        assert_eq!(hex_key("é0"), None);
        assert_eq!(hex_key("0é"), None);
        assert_eq!(hex_key("€€"), None);
        assert_eq!(hex_key("+1"), None);
    }
}
