//! Thin tokio drivers for the CoAP-over-DTLS link: each pumps one of `gateway-dtls`'s sans-IO
//! state machines from a UDP socket, on a thread of its own with a single-threaded runtime (a
//! plugin owns its runtime: the host's does not exist inside a plugin).
//!
//! The loop is always the same: wait for a datagram, a command or the next timer; hand it to
//! the state machine with the time; deliver its events; send what it queued. Every rule of the
//! link (reconnects, stale sessions, cookies, capacity) lives in the state machines, not here.

#![deny(unsafe_code)]

pub mod busy;
mod client;
#[allow(unsafe_code)]
mod mmsg;
mod server;

pub use client::{
    bind_for, carry_out, pick, Client, ClientOptions, Notice, Observation, Observer, Pending,
    Reply, Tagged, MAX_WAITING_NOTICES,
};
pub use gateway_dtls::{
    client::{Config as ClientConfig, Figures as ClientFigures, RequestError},
    server::{Config as ServerConfig, Incoming, Stats as ServerStats},
};
pub use server::{Bound, Handler, Responder, Server, ServerOptions};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Socket buffers: the kernel's default receive buffer (208 KiB on Linux) overflows when many
/// peers, or one peer with several large requests in flight, send at once, and every datagram
/// dropped there costs a whole ACK_TIMEOUT. Ask for 4 MiB each way; the kernel caps it at
/// `net.core.rmem_max` / `wmem_max`.
fn grow_buffers(s: &socket2::SockRef<'_>) {
    for (what, r) in [
        ("receive", s.set_recv_buffer_size(4 << 20)),
        ("send", s.set_send_buffer_size(4 << 20)),
    ] {
        if let Err(e) = r {
            tracing::debug!(error = %e, "could not enlarge the UDP {what} buffer");
        }
    }
}
