//! Durable store-and-forward in front of a sink: batches are accepted only once they are on disk,
//! and leave the disk only once the sink acknowledged them (see [`disk`]).

pub mod codec;
pub mod disk;
pub mod ledger;
pub mod reader;
mod recovery;
pub mod segment;
mod writer;

pub use disk::{AppendError, BufferStats, DiskBuffer};
pub use reader::{Reader, Taken};

#[cfg(test)]
mod model;
#[cfg(test)]
pub(crate) mod tests;
