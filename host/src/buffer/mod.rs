//! Durable store-and-forward in front of a sink: batches are accepted only once they are on disk,
//! and leave the disk only once the sink acknowledged them (see [`disk`]).

pub mod codec;
pub mod disk;
pub mod segment;

pub use disk::{AppendError, BufferStats, DiskBuffer, Reader, Taken};

#[cfg(test)]
mod tests;
