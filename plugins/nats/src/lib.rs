//! `nats`: a sink and a source for NATS JetStream, the durable log between an ingress tier and
//! a store tier. The sink publishes each reading (SenML JSON, its id as `Nats-Msg-Id`) and
//! acknowledges a batch only after JetStream's publish acknowledgements; the source consumes
//! with a durable pull consumer and acknowledges messages only after every sink it feeds stored
//! them. I/O: one NATS connection each, on the plugin's own tokio runtime.
#![forbid(unsafe_code)]

pub mod config;
mod connect;
mod denied;
pub mod sink;
pub mod source;
pub mod subject;

pub use sink::NatsSink;
pub use source::NatsSource;

gateway_sdk::export!(sources: [NatsSource], sinks: [NatsSink]);
