//! CoAP over DTLS for the gateway's secure link.
//!
//! - [`senml`]: readings as SenML packs (CBOR and JSON). No I/O.
//! - [`core`]: the CoAP message layer (RFC 7252, Block1 of RFC 7959) as a sans-IO state
//!   machine: reliability, de-duplication, separate responses, block-wise transfers. No I/O.
//! - [`dtls`]: DTLS 1.2 sessions (OpenSSL) over in-memory datagrams, and a stateless cookie
//!   exchange for servers. No sockets; OpenSSL's handshake timers read the real clock.
//! - [`admission`]: who makes room when a server's handshake or session capacity is full.
//!   No I/O.
//! - [`driver`]: thin tokio loops that connect the above to a UDP socket, for a client (the
//!   uplink) and a server (the ingress).

pub mod admission;
pub mod core;
pub mod driver;
pub mod dtls;
pub mod pki;
pub mod senml;
