//! `gateway dead-letters resend`: offers a dead-letter file's readings to its sink again.
//!
//! A sink that refuses the file as a whole is offered halves of it, as the pipeline narrows
//! down a refused batch: one bad reading no longer keeps the good ones of its file (the
//! pipeline stops narrowing after 64 writes, so a file may hold some). What the sink takes
//! leaves the file; what it refuses again, and what was not tried because the sink stopped
//! taking readings, stays in it (rewritten whole under its own name, so that a crash leaves
//! the old file or the new one). Files are only read and written here; the sink does the rest
//! of the I/O.

use crate::{deadletter::DeadLetters, narrow::Narrowed};
use gateway_sdk::{PluginError, Reading};
use std::path::Path;

/// The most writes one file is given: enough to find a few bad readings among thousands
/// (each halving takes two), not so many that a file the sink refuses whole (a table of the
/// wrong schema) takes a write per reading.
pub const MAX_WRITES: usize = 256;

/// Offers `readings` to `write` whole, then what it refuses for good in halves
/// ([`crate::narrow::narrow`]) within [`MAX_WRITES`] writes.
pub fn offer(
    readings: &[Reading],
    write: impl FnMut(&[Reading]) -> Result<(), PluginError>,
) -> Narrowed {
    crate::narrow::narrow(
        readings,
        std::iter::once(0..readings.len()),
        MAX_WRITES,
        write,
    )
}

/// What became of a file.
#[derive(Debug)]
pub enum Settled {
    /// The sink took every reading (or the file held none); the file is removed.
    Removed,
    /// The sink took none: the file stays as it was.
    Kept,
    /// The sink took some: the file now holds the rest.
    Shrunk,
}

/// Settles `file`, whose `readings` were offered (`offered`) and which said `error`: removes
/// it, or leaves in it what is still to keep (the last refusal then says why). On an error
/// the file stays as it was, and the readings taken go again with the rest next time (the
/// sinks drop repeated ids).
pub fn settle(
    letters: &DeadLetters,
    file: &Path,
    readings: &[Reading],
    error: &str,
    offered: &Narrowed,
) -> std::io::Result<Settled> {
    if offered.kept.is_empty() {
        std::fs::remove_file(file)?;
        return Ok(Settled::Removed);
    }
    if offered.taken == 0 {
        return Ok(Settled::Kept);
    }
    let rest: Vec<Reading> = offered
        .kept
        .iter()
        .flat_map(|r| readings[r.clone()].iter().cloned())
        .collect();
    let why = offered.refusal.as_ref().map_or(error, |e| e.message());
    letters.replace(file, why, &rest)?;
    Ok(Settled::Shrunk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_sdk::Value;

    /// Readings 0 to `n - 1`, each of value its number.
    fn readings(n: i64) -> Vec<Reading> {
        crate::buffer::tests::batch(0, n)
    }

    fn values(rs: &[Reading]) -> Vec<i64> {
        rs.iter()
            .map(|r| match r.value {
                Value::Int(v) => v,
                _ => unreachable!(),
            })
            .collect()
    }

    /// A sink that refuses any batch holding a value in `bad`, and records what it takes.
    fn refusing(
        bad: &[i64],
    ) -> (
        impl FnMut(&[Reading]) -> Result<(), PluginError> + '_,
        std::rc::Rc<std::cell::RefCell<Vec<i64>>>,
    ) {
        let got = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let g = got.clone();
        let write = move |b: &[Reading]| {
            let v = values(b);
            if v.iter().any(|x| bad.contains(x)) {
                return Err(PluginError::rejected("bad value"));
            }
            g.borrow_mut().extend(v);
            Ok(())
        };
        (write, got)
    }

    #[test]
    fn one_bad_reading_keeps_only_itself() {
        let rs = readings(10);
        let (write, got) = refusing(&[3]);
        let o = offer(&rs, write);
        assert_eq!(o.taken, 9);
        assert_eq!(o.kept.len(), 1);
        assert_eq!(o.kept[0], 3..4);
        assert!(o.refusal.is_some() && o.stopped.is_none());
        // In the file's order.
        assert_eq!(*got.borrow(), [0, 1, 2, 4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn an_outage_keeps_what_was_not_tried_and_a_refusal_in_order() {
        let rs = readings(8);
        let mut calls = 0;
        let o = offer(&rs, |b| {
            calls += 1;
            match calls {
                // The whole, then its first half, are refused; the first quarter is taken;
                // then the sink goes away.
                1 | 2 => Err(PluginError::rejected("no")),
                3 => Ok(()),
                _ => Err(PluginError::retry(format!("down ({} readings)", b.len()))),
            }
        });
        assert_eq!(o.taken, 2);
        assert_eq!(o.kept, [2..4, 4..8]);
        assert!(o.stopped.is_some_and(|e| e.kind.is_retryable()));
        assert_eq!(calls, 4, "nothing after the outage");
    }

    #[test]
    fn a_file_refused_whole_takes_a_bounded_number_of_writes() {
        let rs = readings(100_000);
        let mut calls = 0;
        let o = offer(&rs, |_| {
            calls += 1;
            Err(PluginError::rejected("wrong schema"))
        });
        assert!(calls <= MAX_WRITES, "{calls}");
        assert_eq!(o.taken, 0);
        let kept: usize = o.kept.iter().map(|r| r.len()).sum();
        assert_eq!(kept, rs.len());
        assert!(
            o.kept.windows(2).all(|w| w[0].end == w[1].start),
            "in order"
        );
    }

    #[test]
    fn settling_keeps_the_rest_in_the_file_even_when_the_directory_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let rs = readings(6);
        // A directory at its limit, as when a resend is most needed: the file alone fills it.
        let letters = DeadLetters::new(dir.path().to_owned(), "rec", "testkit-recorder")
            .with_own_device("pi")
            .with_max_size(1);
        let file = letters.put("refused", &rs).unwrap();
        let (write, _) = refusing(&[1, 4]);
        let o = offer(&rs, write);
        assert!(matches!(
            settle(&letters, &file, &rs, "refused", &o).unwrap(),
            Settled::Shrunk
        ));
        let (h, kept) = crate::deadletter::read(&file).unwrap();
        assert_eq!(values(&kept), [1, 4]);
        assert_eq!(h.error, "bad value");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "the same file, no other: {names:?}");
        // Nothing taken: the file stays; everything taken: it goes.
        let (write, _) = refusing(&[1, 4]);
        let o = offer(&kept, write);
        assert!(matches!(
            settle(&letters, &file, &kept, "x", &o).unwrap(),
            Settled::Kept
        ));
        assert!(file.exists());
        let (write, _) = refusing(&[]);
        let o = offer(&kept, write);
        assert!(matches!(
            settle(&letters, &file, &kept, "x", &o).unwrap(),
            Settled::Removed
        ));
        assert!(!file.exists());
        // A file holding no reading (edited by hand) goes too.
        let empty = letters.put("refused", &[]).unwrap();
        let o = offer(&[], |_| unreachable!("nothing to write"));
        assert!(matches!(
            settle(&letters, &empty, &[], "x", &o).unwrap(),
            Settled::Removed
        ));
    }
}
