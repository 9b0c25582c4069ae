//! `coaps`: the secure link between a Pi and the server, as two plugins. Each is exported by a
//! library of its own (`uplink/` builds `libcoaps_uplink.so`, `ingress/` `libcoaps_ingress.so`).
//! `coaps-uplink` (a sink, on the Pi) POSTs each batch as SenML over CoAP/DTLS 1.2 and returns
//! only after the server answered 2.01 or 2.04; `coaps-ingress` (a source, on the server) takes those
//! POSTs and answers 2.04 only once every sink it feeds stored them. I/O: UDP sockets, on a
//! thread and tokio runtime of the plugin's own.

pub mod config;
mod held;
mod ingress;
mod keys;
pub mod latest;
mod lookup;
mod metrics;
pub mod observe;
pub mod request;
pub mod seen;
mod serving;
mod uplink;

pub use ingress::Ingress;
pub use uplink::Uplink;

/// Warns, naming them, about the `weak` suites of a cipher list (the `ciphers` setting), those
/// without forward secrecy ([`gateway_dtls::without_forward_secrecy`]): they are there by
/// configuration only (a tinydtls device may offer nothing but `PSK-AES128-CCM8`), and whoever
/// sets them should know what they give up. `gateway check` shows it.
fn warn_without_forward_secrecy(table: &str, weak: &[String]) {
    if !weak.is_empty() {
        gateway_sdk::tracing::warn!(
            "[{table}] ciphers: {} without forward secrecy: a key that leaks later (the PSK, or the server's RSA key) opens every session recorded with them; list ECDHE suites first, and these only for devices that offer nothing else",
            weak.join(", ")
        );
    }
}
