//! DTLS 1.2 for the CoAP link (OpenSSL), without sockets and without a clock of its own.
//!
//! - [`context`]: the client and server contexts: DTLS 1.2 at least, no renegotiation, no suite
//!   without encryption or authentication, certificates, PSKs and CRLs.
//! - [`session`]: one DTLS association over in-memory datagrams ([`Session`]).
//! - [`hello`]: the stateless part of a server: ClientHello parsing, HelloVerifyRequest and the
//!   cookie jar, so a spoofed address gets one small datagram back and no state.
//! - [`admission`]: who makes room when a server's handshake or session capacity is full.
//! - `verified`: the client certificate chains a server context has verified, so that a device
//!   reconnecting with the same chain is not verified again ([`chains_reused`]).
//! - [`server`] and [`client`]: the DTLS+CoAP peers as sans-IO state machines in the quinn-proto
//!   style: `handle(now, ..)`, `handle_timeout(now)`, `poll_transmit`, `poll_timeout`,
//!   `poll_event`. A thin driver (`gateway-coaps-tokio`) pumps them from a UDP socket.
//!
//! Time always comes in as `now`. The one thing that is not deterministic is OpenSSL's own
//! handshake retransmission timer, which reads the real clock ([`Session::timeout`]).

pub mod admission;
pub mod certs;
pub mod client;
pub mod context;
pub mod hello;
pub mod lobby;
pub mod psk;
mod quiet;
mod recency;
mod record;
pub mod server;
pub mod session;
mod verified;

pub use context::{
    client_context, hex_key, psk_file_entries, record_overhead, server_context,
    without_forward_secrecy, ClientSettings, Psk, ServerSettings, DEFAULT_CIPHERS, DEFAULT_MTU,
    DEFAULT_PSK_CIPHERS,
};
pub use hello::{hello_verify_request, parse_client_hello, ClientHello, CookieJar};
pub use psk::{checked_key, text_key, MAX_KEY, MIN_KEY};
pub use session::{certificate_identity, Session, State};
pub use verified::chains_reused;

use std::time::Duration;

/// What went wrong with a DTLS session, worded for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DtlsError {
    /// The TLS configuration could not be built (files, keys, ciphers).
    #[error("DTLS configuration: {0}")]
    Config(String),
    /// The peer's certificate was not accepted.
    #[error("the server's certificate was refused: {0}")]
    Certificate(String),
    /// The peer refused us (an alert), e.g. for a missing or unknown client certificate.
    #[error("the handshake failed: {0}")]
    Handshake(String),
    /// The handshake did not finish in time (a wrong PSK is silent: this is how it shows).
    #[error(
        "the DTLS handshake did not complete within {0:?} (server unreachable, or a wrong PSK)"
    )]
    HandshakeTimeout(Duration),
    /// The peer closed the session.
    #[error("the peer closed the DTLS session")]
    Closed,
    /// Anything else from OpenSSL.
    #[error("DTLS: {0}")]
    Other(String),
}

/// Whether a name can be a device identity (defined beside the certificates that carry it).
pub use gateway_pki::{valid_identity, MAX_IDENTITY};

fn other(e: impl std::fmt::Display) -> DtlsError {
    DtlsError::Other(e.to_string())
}

/// CoAP message ids, tokens and retransmission jitter: xorshift64, seeded from OpenSSL's
/// random generator (tokens must not be guessable by an off-path attacker).
pub fn rng() -> Box<dyn FnMut() -> u64 + Send> {
    let mut s = [0u8; 8];
    openssl::rand::rand_bytes(&mut s).expect("random bytes");
    gateway_coap::xorshift(u64::from_le_bytes(s))
}

#[cfg(test)]
mod tests {
    use super::valid_identity;

    #[test]
    fn an_identity_is_text_without_controls_or_spaces_at_its_ends() {
        for ok in [
            "pi-01",
            "a",
            "Pi 01",
            "capteur-é",
            "机器-01",
            &"x".repeat(254),
        ] {
            assert!(valid_identity(ok), "{ok:?}");
        }
        for bad in [
            "",
            &"x".repeat(255),
            "pi-01\0x",
            "pi-01\n",
            "pi-\u{FFFD}",
            "pi-01 ",
            " pi-01",
            "pi-01\u{A0}",
            "\u{3000}pi-01",
            "pi-\u{61C}01",
            "pi-01\u{200B}",
            "pi-\u{AD}01",
            "pi-01\u{FEFF}",
            "pi-\u{2060}01",
            "pi-01\u{FE0F}",
            "pi-01\u{E0041}",
            "pi-\u{2029}01",
        ] {
            assert!(!valid_identity(bad), "{bad:?}");
        }
    }
}
