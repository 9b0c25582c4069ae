//! Narrowing down what a sink refuses: a batch it refuses for good is written again in
//! halves, and a half refused again in halves, so that what is kept back is what the sink
//! refuses, not the readings that came with it. The pipeline does so before it dead-letters
//! a batch ([`crate::pipeline`]), and `gateway dead-letters resend` with a dead-letter file
//! ([`crate::resend`]). No I/O of its own: the caller's `write` does it.

use gateway_sdk::{ErrorKind, PluginError, Reading};
use std::ops::Range;

/// How narrowing went.
#[derive(Debug)]
pub struct Narrowed {
    /// How many readings the sink took.
    pub taken: usize,
    /// The readings still to keep (refused again, or not tried), in the batch's order.
    pub kept: Vec<Range<usize>>,
    /// The last refusal, if the sink refused any of the ranges written.
    pub refusal: Option<PluginError>,
    /// Why the sink stopped taking readings (an outage, a failure, the shutdown), if it did:
    /// nothing was written after it, and the ranges not tried are in `kept`.
    pub stopped: Option<PluginError>,
}

/// The two halves of `r`, the second first: pushed on a stack, the first half is written
/// first.
pub fn halves(r: Range<usize>) -> [Range<usize>; 2] {
    let mid = r.start + r.len() / 2;
    [mid..r.end, r.start..mid]
}

/// Writes the ranges of `readings` in `first` (a stack: the last one first) with `write`,
/// halving each one the sink refuses for good while at most `budget` ranges are planned in
/// all (those of `first` included), depth first, so that what the sink takes reaches it in the
/// batch's order (a retained MQTT topic keeps the last one written). Each range is written
/// once; any other error stops the writes.
pub fn narrow(
    readings: &[Reading],
    first: impl IntoIterator<Item = Range<usize>>,
    budget: usize,
    mut write: impl FnMut(&[Reading]) -> Result<(), PluginError>,
) -> Narrowed {
    let mut todo: Vec<Range<usize>> = Vec::with_capacity(16);
    todo.extend(first);
    let mut planned = todo.len();
    let mut out = Narrowed {
        taken: 0,
        kept: Vec::new(),
        refusal: None,
        stopped: None,
    };
    while let Some(r) = todo.pop() {
        if r.is_empty() {
            continue;
        }
        if out.stopped.is_some() {
            out.kept.push(r);
            continue;
        }
        match write(&readings[r.clone()]) {
            Ok(()) => out.taken += r.len(),
            Err(e) if e.kind == ErrorKind::REJECTED => {
                if r.len() > 1 && planned + 2 <= budget {
                    planned += 2;
                    todo.extend(halves(r));
                } else {
                    out.kept.push(r);
                }
                out.refusal = Some(e);
            }
            Err(e) => {
                out.kept.push(r);
                out.stopped = Some(e);
            }
        }
    }
    out.kept.sort_by_key(|r| r.start);
    out
}
