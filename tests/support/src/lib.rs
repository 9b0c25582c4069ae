//! What several crates' tests and benchmarks share, so that none includes another's files with
//! `#[path]`. Test code only: it panics on failure, and does I/O (files, UDP, processes).
//!
//! - [`coaps`]: a throwaway PKI (CA, server, one device) and coaps-ingress / coaps-uplink
//!   configs that use it; a free UDP port.
//! - [`libcoap`]: libcoap's command-line client as a peer.
//! - [`lossy_relay`]: a UDP relay that loses, duplicates and delays datagrams.
//! - [`mariadb`]: a MariaDB server of a test's own, that can be stopped and started.
//! - [`nats`]: a NATS server with JetStream of a test's own.
//! - [`w1`]: a simulated Linux w1 tree whose `w1_slave` files block like the kernel's.
//!
//! [`coaps`] needs OpenSSL (feature `pki`, on by default); `xtask` goes without it, so that
//! `cargo xtask test` builds on a machine that lacks `libssl-dev` and can install it.

#[cfg(feature = "pki")]
pub mod coaps;
pub mod libcoap;
pub mod lossy_relay;
pub mod mariadb;
pub mod nats;
pub mod w1;
