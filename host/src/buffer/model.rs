//! A model-based test of the disk buffer: random operations (appends, takes, acknowledgements,
//! crashes, crashes that tear the last write) against a simple model of what must be there,
//! for many seeds. The model: the readings appended and not acknowledged, in order.
//!
//! What must hold, always: a take returns only readings appended and not acknowledged (or,
//! after a crash, acknowledged ones that the head could not pass yet because something older
//! was still pending: sinks drop those by id), none twice between crashes; after a crash,
//! everything appended and not acknowledged comes back, in order, and nothing else but such
//! re-sends. A torn append (a crash mid-write, which never returned) loses that append only.

use super::{tests::*, DiskBuffer, Taken};
use crate::config::WhenFull;
use std::collections::{BTreeSet, HashSet};

/// xorshift64: the seed says everything, so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

struct Model {
    /// Appended and not acknowledged, in order.
    pending: Vec<i64>,
    /// Acknowledged.
    acked: HashSet<i64>,
    /// Acknowledged ones a crash may send again: those the head could not pass yet, because
    /// a reading appended before them was not acknowledged (they went in a live lane).
    resendable: HashSet<i64>,
    /// Acknowledged since the last crash.
    acked_since: HashSet<i64>,
    /// Taken since the last crash (a second take of one is a bug).
    taken: HashSet<i64>,
    next: i64,
    crashed: bool,
}

impl Model {
    fn crash(&mut self) {
        // What the buffer itself still counts as unacknowledged: the pending readings, and the
        // re-sendable ones not acknowledged again since the last crash.
        let unsure = self
            .resendable
            .iter()
            .filter(|v| !self.acked_since.contains(v));
        let oldest = self
            .pending
            .iter()
            .chain(unsure)
            .min()
            .copied()
            .unwrap_or(i64::MAX);
        self.resendable = self
            .acked
            .iter()
            .copied()
            .filter(|v| *v >= oldest)
            .collect();
        self.acked_since.clear();
        self.taken.clear();
        self.crashed = true;
    }
}

fn run(seed: u64, ops: usize) {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(1 << 30, WhenFull::Block);
    let open = |fsync: bool| {
        let mut s = settings.clone();
        s.fsync = fsync;
        DiskBuffer::open(dir.path(), &s).unwrap()
    };
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut b = open(false);
    let mut reader = b.reader();
    let mut out: Option<Taken> = None;
    let mut m = Model {
        pending: Vec::new(),
        acked: HashSet::new(),
        resendable: HashSet::new(),
        acked_since: HashSet::new(),
        taken: HashSet::new(),
        next: 0,
        crashed: false,
    };
    let ctx = |op: usize| format!("seed {seed}, op {op}");
    for op in 0..ops {
        let r = rng.below(100);
        match r {
            // Append one or more batches.
            0..=34 => {
                let batches: Vec<Vec<i64>> = (0..1 + rng.below(3))
                    .map(|_| {
                        let n = 1 + rng.below(20) as i64;
                        let v = (m.next..m.next + n).collect();
                        m.next += n;
                        v
                    })
                    .collect();
                let readings: Vec<Vec<_>> = batches
                    .iter()
                    .map(|v| v.iter().map(|&i| super::tests::reading(i)).collect())
                    .collect();
                let refs: Vec<&[_]> = readings.iter().map(Vec::as_slice).collect();
                let per = 1 + rng.below(40) as usize;
                b.append(&refs, per, &|| false, &|| false).unwrap();
                m.pending.extend(batches.into_iter().flatten());
            }
            // Take, if nothing is outstanding.
            35..=64 if out.is_none() => {
                let max = 1 + rng.below(50) as usize;
                if let Some(t) = b.take(&mut reader, max, NOW, NOW) {
                    for v in values(&t) {
                        let ok = m.pending.contains(&v) || m.resendable.contains(&v);
                        assert!(ok, "{}: {v} taken, but it is not pending", ctx(op));
                        assert!(m.taken.insert(v), "{}: {v} taken twice", ctx(op));
                    }
                    out = Some(t);
                }
            }
            // Acknowledge what is outstanding.
            35..=89 => {
                if let Some(t) = out.take() {
                    let vs: BTreeSet<i64> = values(&t).into_iter().collect();
                    b.ack(&mut reader, t);
                    m.pending.retain(|v| !vs.contains(v));
                    m.acked_since.extend(vs.iter().copied());
                    m.acked.extend(vs);
                }
            }
            // A crash: what was taken and not acknowledged is simply gone from memory.
            90..=96 => {
                out = None;
                drop(b);
                b = open(rng.below(2) == 0);
                reader = b.reader();
                m.crash();
                assert!(
                    b.pending() >= m.pending.len() as u64,
                    "{}: {} pending after the crash, the model has {}",
                    ctx(op),
                    b.pending(),
                    m.pending.len()
                );
            }
            // A crash in the middle of an append: the record is torn, and that append never
            // returned, so it was never accepted.
            _ => {
                out = None;
                drop(b);
                let n = 1 + rng.below(10) as i64;
                let before = segment_lengths(dir.path());
                {
                    let b = open(false);
                    b.append(&[&batch(m.next, n)], n as usize, &|| false, &|| false)
                        .unwrap();
                }
                // One record: from where the newest segment ended (its magic, if it is new).
                let seg = newest_segment(dir.path());
                let start = before
                    .get(&seg)
                    .copied()
                    .unwrap_or(super::segment::MAGIC.len() as u64);
                let after = std::fs::metadata(&seg).unwrap().len();
                assert!(after > start, "seed {seed}: the append wrote nothing");
                let cut = start + rng.below(after - start);
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&seg)
                    .unwrap()
                    .set_len(cut)
                    .unwrap();
                m.next += n;
                b = open(false);
                reader = b.reader();
                m.crash();
            }
        }
        if !m.crashed {
            assert_eq!(b.pending(), m.pending.len() as u64, "{}", ctx(op));
        }
    }
    // The end: everything pending comes out, in order, besides at most re-sends.
    drop(out);
    drop(b);
    m.crash();
    let b = open(true);
    let got = drain_all(&b, 1 + rng.below(100) as usize);
    let mut seen = HashSet::new();
    for v in &got {
        assert!(
            seen.insert(*v),
            "seed {seed}: {v} delivered twice in one drain"
        );
    }
    let fresh: Vec<i64> = got
        .iter()
        .copied()
        .filter(|v| !m.acked.contains(v))
        .collect();
    assert_same(&fresh, &m.pending);
    for v in got.iter().filter(|v| m.acked.contains(v)) {
        assert!(
            m.resendable.contains(v),
            "seed {seed}: {v} acknowledged with nothing older pending, and sent again"
        );
    }
}

/// Every segment file and its length.
fn segment_lengths(dir: &std::path::Path) -> std::collections::HashMap<std::path::PathBuf, u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .map(|p| {
            let len = std::fs::metadata(&p).unwrap().len();
            (p, len)
        })
        .collect()
}

/// The segment file with the highest first record.
fn newest_segment(dir: &std::path::Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs.pop().expect("a segment")
}

#[test]
fn random_operations_with_crashes_keep_to_the_model() {
    let seeds: u64 = std::env::var("GATEWAY_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    for seed in 0..seeds {
        run(seed, 150);
    }
}
