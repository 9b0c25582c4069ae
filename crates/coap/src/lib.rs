//! The CoAP message layer (RFC 7252) with block-wise Block1 (RFC 7959), as a plain state
//! machine: no sockets, no tokio, no clock of its own, randomness injected.
//!
//! Inputs: [`Endpoint::handle_datagram`], [`Endpoint::handle_timeout`], and the application's
//! [`Endpoint::request`] (client) and [`Endpoint::respond`] (server). Outputs:
//! [`Endpoint::poll_event`], [`Endpoint::poll_transmit`], [`Endpoint::poll_timeout`].
//!
//! After every input, drain the outputs in this order: events (they may lead the application to
//! call `request` or `respond`, which queue more transmits), then transmits, then ask
//! `poll_timeout` when to call `handle_timeout` next.
//!
//! What it does:
//! - at most NSTART requests are in flight to one peer (`Config::nstart`, 1 by default as in
//!   RFC 7252 §4.7); later ones wait in order, and one that has not gone out yet can be
//!   cancelled;
//! - CON requests and responses are retransmitted on the RFC 7252 schedule (initial timeout
//!   random in `ACK_TIMEOUT .. ACK_TIMEOUT * ACK_RANDOM_FACTOR`, doubling, `MAX_RETRANSMIT`
//!   times) and given up with [`ClientError::Timeout`];
//! - duplicate requests (same peer and message id within `EXCHANGE_LIFETIME`) are answered from
//!   a cache, never handed to the application twice;
//! - a request the application has not answered within `separate_after` gets an empty ACK, and
//!   the response follows as a separate CON;
//! - payloads larger than one block go out as Block1 transfers, and incoming Block1 transfers
//!   are reassembled (up to `max_body` bytes) before the application sees the request;
//! - Observe (RFC 7641), server and client: a GET with `Observe: 0` answered 2.xx with an
//!   Observe option registers the client, [`Endpoint::notify`] numbers and sends each
//!   notification (NON, with a CON every so often and at most one CON in flight per client),
//!   and [`Event::Deregistered`] says when a client is gone; a client's observation delivers
//!   [`Event::Notification`]s in order;
//! - empty CON (CoAP ping) is answered with RST; a RST cancels the matching exchange; a
//!   malformed CON is answered with RST, anything else malformed is dropped; both are counted.

#![forbid(unsafe_code)]

mod codes;
mod endpoint;
mod keyed;
mod message;
mod uri;

/// The message types of `coap-lite`, which this crate's API speaks.
pub use coap_lite;
pub use codes::{Code, ContentFormat, InvalidContentFormat};
pub use endpoint::{
    observe_of, ClientError, Config, Endpoint, Event, RequestId, Stats, Token, DEDUP_KEPT_PER_PEER,
};
pub use keyed::{Gathered, Keyed};
pub use message::{
    decode_uint, encode_uint, path_of, path_segment, request, response, retry_after, retry_later,
    Block,
};
pub use uri::Uri;

/// An xorshift64 generator started at `seed` (made odd: never stuck at 0), as
/// [`Endpoint::new`] takes for message ids, tokens and retransmission jitter. Seed it from a
/// secure source where peers must not guess tokens (`gateway_dtls::rng` seeds it from
/// OpenSSL); tests and benchmarks give a constant, so that a run repeats.
pub fn xorshift(seed: u64) -> Box<dyn FnMut() -> u64 + Send> {
    let mut x = seed | 1;
    Box::new(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    })
}
