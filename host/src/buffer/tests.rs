//! The disk buffer against real files in a temporary directory.

use super::*;
use crate::config::{BufferSettings, WhenFull};
use gateway_sdk::{Label, Reading, ReadingId, Timestamp, Value};
use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

/// Reading `v` of sensor `seq` of device `pi`: value, id and time from `v`.
pub(crate) fn reading(v: i64) -> Reading {
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(&v.to_be_bytes());
    Reading {
        id: ReadingId(id),
        time: Timestamp(1_700_000_000_000_000 + v),
        device: Label::new("pi"),
        sensor: Label::new("seq"),
        name: Label::new("n"),
        unit: Label::new(""),
        value: Value::Int(v),
    }
}

/// Readings `from` to `from + n - 1` ([`reading`]).
pub(crate) fn batch(from: i64, n: i64) -> Vec<Reading> {
    (from..from + n).map(reading).collect()
}

pub(super) fn settings(max_size: u64, when_full: WhenFull) -> BufferSettings {
    BufferSettings {
        max_size,
        when_full,
        fsync: true,
    }
}

fn open(dir: &Path) -> DiskBuffer {
    DiskBuffer::open(dir, &settings(1 << 30, WhenFull::Block)).unwrap()
}

pub(super) fn values(t: &Taken) -> Vec<i64> {
    t.readings
        .iter()
        .map(|r| match r.value {
            Value::Int(v) => v,
            _ => unreachable!(),
        })
        .collect()
}

/// Compares long sequences, printing only where they differ.
pub(super) fn assert_same(got: &[i64], want: &[i64]) {
    if let Some(i) = (0..got.len().min(want.len())).find(|&i| got[i] != want[i]) {
        panic!(
            "differ at {i}: got {:?}, want {:?}",
            &got[i..(i + 5).min(got.len())],
            &want[i..(i + 5).min(want.len())]
        );
    }
    assert_eq!(got.len(), want.len(), "lengths differ");
}

pub(super) const NOW: Duration = Duration::ZERO;

/// Takes and acknowledges everything, returning the values in the order they came.
pub(super) fn drain_all(b: &DiskBuffer, max: usize) -> Vec<i64> {
    let mut reader = b.reader();
    let mut out = Vec::new();
    while let Some(t) = b.take(&mut reader, max, NOW, NOW) {
        out.extend(values(&t));
        b.ack(&mut reader, t);
    }
    out
}

fn never() -> bool {
    false
}

/// Appends `records` records of `per` readings each, numbered on from 0.
fn fill(b: &DiskBuffer, records: i64, per: i64) {
    for i in 0..records {
        b.append(&[&batch(i * per, per)], per as usize, &never, &never)
            .unwrap();
    }
}

/// The (first) segment file in `dir`.
fn segment_file(dir: &Path) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap()
}

/// The oldest age is the wait of the oldest reading not acknowledged, not the age of its
/// segment: before, a segment lasting weeks on a Pi reported weeks whenever a write was in
/// flight, with the sink keeping up.
#[test]
fn the_oldest_age_is_the_oldest_unacknowledged_readings_not_its_segments() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    assert_eq!(b.oldest_age(), None);
    b.append(&[&batch(0, 5)], 10, &never, &never).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    b.append(&[&batch(5, 5)], 10, &never, &never).unwrap();
    assert!(b.oldest_age().unwrap() >= Duration::from_millis(2500));
    let mut reader = b.reader();
    let t = b.take(&mut reader, 5, NOW, NOW).unwrap();
    b.ack(&mut reader, t);
    // The second batch, appended just now, is in flight in the same segment.
    let t = b.take(&mut reader, 5, NOW, NOW).unwrap();
    assert_eq!(values(&t), (5..10).collect::<Vec<_>>());
    // (The segment is 2.5 s old; the batch's mark, within a second of it, much younger,
    // whatever the acknowledgement's fsync took.)
    let age = b.oldest_age().unwrap();
    assert!(age < Duration::from_millis(2000), "{age:?}");
    b.ack(&mut reader, t);
    assert_eq!(b.oldest_age(), None);
    // Found at open, a reading counts from its segment's file.
    b.append(&[&batch(10, 5)], 10, &never, &never).unwrap();
    drop(b);
    std::thread::sleep(Duration::from_millis(1100));
    let b = open(dir.path());
    assert!(b.oldest_age().unwrap() >= Duration::from_millis(1100));
}

#[test]
fn delivers_batches_in_order_and_forgets_them_once_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    b.append(&[&batch(0, 3), &batch(3, 2)], 10, &never, &never)
        .unwrap();
    b.append(&[&batch(5, 20)], 10, &never, &never).unwrap();
    assert_eq!(b.pending(), 25);
    let mut reader = b.reader();
    let t = b.take(&mut reader, 10, NOW, NOW).unwrap();
    // Both source batches went into one record of 5; the 20-reading batch, larger than a
    // record, into two of 10.
    assert_eq!(values(&t), (0..5).collect::<Vec<_>>());
    b.ack(&mut reader, t);
    let t = b.take(&mut reader, 10, NOW, NOW).unwrap();
    assert_eq!(values(&t), (5..15).collect::<Vec<_>>());
    b.ack(&mut reader, t);
    let t = b.take(&mut reader, 10, NOW, NOW).unwrap();
    assert_eq!(values(&t), (15..25).collect::<Vec<_>>());
    b.ack(&mut reader, t);
    assert_eq!(b.pending(), 0);
    assert!(b.take(&mut reader, 10, NOW, NOW).is_none());
    drop(b);
    assert_eq!(open(dir.path()).pending(), 0);
}

#[test]
fn a_batch_larger_than_a_record_may_be_is_cut_and_read_back_whole() {
    // 40 readings of 1 MiB each, one source batch: as one record (40 MiB) it would be past
    // no limit here, but a batch of 300 such readings (or millions of small ones) made a
    // record over segment::MAX_RECORD, which the reader took for corruption and skipped after
    // its source had been told it was stored. Records are now cut at RECORD_BYTES.
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let big: Vec<Reading> = (0..40)
        .map(|v| Reading {
            value: Value::Text(format!("{v:08}{}", "x".repeat(1 << 20)).as_str().into()),
            ..reading(v)
        })
        .collect();
    b.append(&[&big], 1000, &never, &never).unwrap();
    drop(b);
    // The records as written: a header (length first) and the payload, after the magic.
    let file = std::fs::read(segment_file(dir.path())).unwrap();
    let (mut at, mut records) = (super::segment::MAGIC.len(), 0);
    while at < file.len() {
        let len = u32::from_le_bytes(file[at..at + 4].try_into().unwrap()) as usize;
        assert!(
            len <= super::segment::RECORD_BYTES,
            "a record of {len} bytes"
        );
        at += super::segment::HEADER + len;
        records += 1;
    }
    assert!(records >= 3, "{records}");
    let b = open(dir.path());
    assert_eq!(b.pending(), 40);
    let mut reader = b.reader();
    let mut got = Vec::new();
    while let Some(t) = b.take(&mut reader, 1000, NOW, NOW) {
        got.extend(t.readings.iter().map(|r| match &r.value {
            Value::Text(s) => s[..8].parse::<i64>().unwrap(),
            _ => unreachable!(),
        }));
        b.ack(&mut reader, t);
    }
    assert_same(&got, &(0..40).collect::<Vec<_>>());
    assert_eq!(b.stats.corrupt_records.load(Ordering::Relaxed), 0);
}

#[test]
fn unacknowledged_records_come_back_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    fill(&b, 10, 10);
    let mut reader = b.reader();
    for _ in 0..3 {
        let t = b.take(&mut reader, 10, NOW, NOW).unwrap();
        b.ack(&mut reader, t);
    }
    // Taken but never acknowledged: the sink did not store it before the crash.
    let _lost_in_flight = b.take(&mut reader, 10, NOW, NOW).unwrap();
    drop(b); // no close, no flush: like kill -9
    let b = open(dir.path());
    assert_eq!(b.stats.recovered.load(Ordering::Relaxed), 70);
    assert_eq!(drain_all(&b, 1000), (30..100).collect::<Vec<_>>());
}

#[test]
fn a_torn_tail_is_cut_off_and_counted_and_the_buffer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    for i in 0..3 {
        b.append(&[&batch(i * 4, 4)], 10, &never, &never).unwrap();
    }
    drop(b);
    let seg = segment_file(dir.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    // A power cut in the middle of the third record.
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 7).unwrap();
    drop(f);
    let b = open(dir.path());
    assert_eq!(b.stats.corrupt_records.load(Ordering::Relaxed), 1);
    assert!(b.stats.corrupt_bytes.load(Ordering::Relaxed) > 0);
    b.append(&[&batch(100, 2)], 10, &never, &never).unwrap();
    let mut got = drain_all(&b, 1000);
    got.sort();
    assert_eq!(got, vec![0, 1, 2, 3, 4, 5, 6, 7, 100, 101]);
    // Reopening again finds nothing wrong any more.
    drop(b);
    assert_eq!(
        open(dir.path())
            .stats
            .corrupt_records
            .load(Ordering::Relaxed),
        0
    );
}

#[test]
fn a_flipped_bit_is_detected_and_garbage_files_do_not_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    b.append(&[&batch(0, 4)], 10, &never, &never).unwrap();
    b.append(&[&batch(4, 4)], 10, &never, &never).unwrap();
    drop(b);
    let seg = segment_file(dir.path());
    damage(&seg, |bytes| {
        let last = bytes.len() - 3;
        bytes[last] ^= 0x10;
    });
    std::fs::write(
        dir.path().join("00000000000099999999.seg"),
        b"not a segment at all",
    )
    .unwrap();
    std::fs::write(dir.path().join("head"), b"garbage").unwrap();
    let b = open(dir.path());
    assert_eq!(b.stats.corrupt_records.load(Ordering::Relaxed), 2);
    assert_eq!(drain_all(&b, 1000), (0..4).collect::<Vec<_>>());
}

/// Changes the bytes of segment file `seg` as `f` does (damage, for a test).
fn damage(seg: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(seg).unwrap();
    f(&mut bytes);
    std::fs::write(seg, &bytes).unwrap();
}

/// Offsets of each record of a segment written by `fill` (records of equal size).
fn record_offsets(seg: &Path, records: usize) -> Vec<usize> {
    let len = std::fs::metadata(seg).unwrap().len() as usize;
    let size = (len - segment::MAGIC.len()) / records;
    (0..records)
        .map(|i| segment::MAGIC.len() + i * size)
        .collect()
}

#[test]
fn a_damaged_record_in_the_middle_costs_that_record_alone() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    fill(&b, 10, 5);
    drop(b);
    let seg = segment_file(dir.path());
    let at = record_offsets(&seg, 10);
    // A flipped bit in the payload of record 3, and a wrecked header (its length) in record 6.
    damage(&seg, |bytes| {
        bytes[at[3] + 30] ^= 0x04;
        bytes[at[6]] ^= 0xff;
        bytes[at[6] + 1] ^= 0xff;
    });
    let b = open(dir.path());
    assert_eq!(b.stats.corrupt_records.load(Ordering::Relaxed), 2);
    assert_eq!(b.pending(), 40, "8 intact records of 5");
    let want: Vec<i64> = (0..50)
        .filter(|v| !(15..20).contains(v) && !(30..35).contains(v))
        .collect();
    assert_same(&drain_all(&b, 7), &want);
    assert_eq!(
        b.stats.corrupt_records.load(Ordering::Relaxed),
        2,
        "counted once"
    );
    assert_eq!(b.pending(), 0);
}

/// A buffer of `records` records of 5 readings in one segment, complete on disk (opened again:
/// the next append goes into a new segment).
fn written(dir: &Path, records: i64) -> DiskBuffer {
    fill(&open(dir), records, 5);
    open(dir)
}

/// Damages, while the buffer runs, the first segment of `dir` (`records` records written by
/// [`written`]): `bytes` at `offset` into each record of `at`.
fn damage_records(dir: &Path, records: usize, at: &[usize], offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let seg = segment_file(dir);
    let starts = record_offsets(&seg, records);
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    for i in at {
        f.write_at(bytes, starts[*i] as u64 + offset).unwrap();
    }
}

/// Bytes that break a record's payload (its checksum).
const SPOILED: [u8; 4] = [0xde, 0xad, 0xbe, 0xef];

#[test]
fn damage_that_appears_while_running_costs_only_the_damaged_record() {
    let dir = tempfile::tempdir().unwrap();
    let b = written(dir.path(), 6);
    damage_records(dir.path(), 6, &[2], 25, &SPOILED);
    let want: Vec<i64> = (0..30).filter(|v| !(10..15).contains(v)).collect();
    assert_same(&drain_all(&b, 5), &want);
    assert_eq!(b.stats.corrupt_records.load(Ordering::Relaxed), 1);
    // Its readings are lost, not pending: before, they stayed in the buffer's pending count
    // (and its oldest age) for good, and a shutdown waited for them and exited 1.
    assert_eq!(b.stats.lost.load(Ordering::Relaxed), 5);
    assert_eq!(b.pending(), 0);
    assert!(b.oldest_age().is_none());
}

#[test]
fn damage_in_the_last_records_is_settled_with_nothing_after_it() {
    // The head moves on acknowledgements; records skipped at the end of the buffer had none
    // after them, and stayed pending (a shutdown waited for them, then exited 1).
    let dir = tempfile::tempdir().unwrap();
    let b = written(dir.path(), 6);
    damage_records(dir.path(), 6, &[5], 25, &SPOILED);
    // The first write takes records 0..5; the next finds only the damaged one.
    assert_same(&drain_all(&b, 25), &(0..25).collect::<Vec<_>>());
    assert_eq!(b.stats.corrupt_records.load(Ordering::Relaxed), 1);
    assert_eq!(b.stats.lost.load(Ordering::Relaxed), 5);
    assert_eq!(b.pending(), 0);
    assert!(b.oldest_age().is_none());
}

#[test]
fn damage_met_while_running_is_counted_once_and_walked_past_by_a_new_reader() {
    let dir = tempfile::tempdir().unwrap();
    let b = written(dir.path(), 10);
    let mut reader = b.reader();
    let t = b.take(&mut reader, 25, NOW, NOW).unwrap();
    assert_same(&values(&t), &(0..25).collect::<Vec<_>>());
    b.ack(&mut reader, t);
    // Damage in record 2's header (delivered) and record 7's payload.
    damage_records(dir.path(), 10, &[2], 8, &[0xff; 4]);
    damage_records(dir.path(), 10, &[7], 25, &SPOILED);
    let want: Vec<i64> = (25..50).filter(|v| !(35..40).contains(v)).collect();
    // A new reader (as after a reload, or a read again after an I/O error) walks the headers
    // from the segment's start to the head, record 5. Before, the damage it met on the way
    // was taken for record 5's: "attempt to subtract with overflow" (a wrapped count and a
    // reader moved back, in a release build).
    for _ in 0..2 {
        let mut reader = b.reader();
        let t = b.take(&mut reader, 1000, NOW, NOW).unwrap();
        assert_same(&values(&t), &want);
    }
    // Record 7 counted once: the second reader jumped over it. Before, each reader counted it.
    assert_eq!(b.stats.corrupt_records.load(Ordering::Relaxed), 1);
    assert_eq!(drain_all(&b, 1000).len(), 20);
    assert_eq!(b.stats.lost.load(Ordering::Relaxed), 5);
    assert_eq!(b.pending(), 0);
}

#[test]
fn a_segment_removed_while_written_costs_only_what_it_held() {
    // The way out the log gives for a segment that cannot be read (EIO, say) is to remove it.
    // Before, when it was the one being written, the writer went on appending to the removed
    // file: every reading after it was acknowledged to its source, then lost.
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    fill(&b, 5, 10);
    std::fs::remove_file(segment_file(dir.path())).unwrap();
    assert!(drain_all(&b, 100).is_empty());
    // Settled though nothing came after them to acknowledge.
    assert_eq!(b.stats.lost.load(Ordering::Relaxed), 50);
    assert_eq!(b.pending(), 0);
    b.append(&[&batch(50, 50)], 50, &never, &never).unwrap();
    b.append(&[&batch(100, 50)], 50, &never, &never).unwrap();
    // A new reader (a reload) does not count the removed segment again.
    assert_same(&drain_all(&b, 100), &(50..150).collect::<Vec<_>>());
    assert_eq!(b.stats.corrupt_records.load(Ordering::Relaxed), 5);
    assert_eq!(b.stats.lost.load(Ordering::Relaxed), 50);
    assert_eq!(b.pending(), 0);
    assert!(b.oldest_age().is_none());
}

/// The first record of segment file `p`, from its name.
fn first_of(p: &Path) -> u64 {
    p.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

#[test]
fn records_missing_between_segments_at_open_are_counted_lost() {
    // Before, a segment file removed (or emptied) between two others while the gateway was
    // stopped cost its records without a word, and one cut short counted as one record.
    for (what, harm) in [
        (
            "removed",
            (|p| std::fs::remove_file(p).unwrap()) as fn(&Path),
        ),
        ("emptied", |p| {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(0)
                .unwrap()
        }),
        ("cut short", |p| {
            let f = std::fs::File::options().write(true).open(p).unwrap();
            f.set_len(f.metadata().unwrap().len() / 2 + 7).unwrap()
        }),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let b = DiskBuffer::open(dir.path(), &settings(512 << 10, WhenFull::Block)).unwrap();
        fill(&b, 60, 100);
        drop(b);
        let files = segment_files(dir.path());
        assert!(files.len() >= 3, "{files:?}");
        let (second, third) = (first_of(&files[1]), first_of(&files[2]));
        harm(&files[1]);
        let b = DiskBuffer::open(dir.path(), &settings(512 << 10, WhenFull::Block)).unwrap();
        let got = drain_all(&b, 1000);
        let kept = got
            .iter()
            .filter(|v| (second * 100..third * 100).contains(&(**v as u64)))
            .count() as u64;
        assert_eq!(
            got.len() as u64,
            6000 - (third - second) * 100 + kept,
            "{what}"
        );
        assert_eq!(
            b.stats.corrupt_records.load(Ordering::Relaxed),
            third - second - kept / 100,
            "{what}"
        );
    }
}

#[test]
fn a_stray_file_named_as_a_segment_removes_nothing() {
    // Records 0..12 in one segment, 0..8 delivered; a file that is no segment, named as if it
    // held records from 5 on. Only a real segment after another says the other is delivered.
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    fill(&b, 12, 5);
    let mut reader = b.reader();
    let t = b.take(&mut reader, 40, NOW, NOW).unwrap();
    b.ack(&mut reader, t);
    drop(b);
    std::fs::write(
        dir.path().join("00000000000000000005.seg"),
        b"not a segment, though named as one",
    )
    .unwrap();
    let b = open(dir.path());
    assert_same(&drain_all(&b, 1000), &(40..60).collect::<Vec<_>>());
}

#[test]
fn a_delivered_segment_left_by_a_crash_is_removed_unread() {
    // A crash between the head's write and the removal of the segments it passed leaves them.
    // Before, each was read at the next start: one that could not be read (EIO) stopped the
    // start of the whole gateway, and damage in one was counted (or moved aside) though
    // nothing in it was wanted.
    let dir = tempfile::tempdir().unwrap();
    let b = DiskBuffer::open(dir.path(), &settings(512 << 10, WhenFull::Block)).unwrap();
    fill(&b, 60, 100);
    let first = segment_files(dir.path())[0].clone();
    assert_eq!(drain_all(&b, 1000).len(), 6000);
    drop(b);
    assert!(!first.exists());
    std::fs::write(&first, b"not a segment any more").unwrap();
    let b = DiskBuffer::open(dir.path(), &settings(512 << 10, WhenFull::Block)).unwrap();
    assert!(!first.exists());
    assert!(segment_files(dir.path()).is_empty());
    assert!(!dir
        .path()
        .join(format!("{}.damaged", first.display()))
        .exists());
    assert_eq!(b.stats.corrupt_records.load(Ordering::Relaxed), 0);
    assert_eq!(b.pending(), 0);
}

#[test]
fn stray_files_in_the_buffer_directory_never_stop_a_start() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    fill(&b, 3, 4);
    drop(b);
    let d = dir.path();
    // A segment-like name that is not a segment's (not 20 digits), a directory with a
    // segment's name, an editor's backup, and plain notes.
    std::fs::write(d.join("5.seg"), b"stray").unwrap();
    std::fs::create_dir(d.join("00000000000000000007.seg")).unwrap();
    std::fs::write(d.join("00000000000000000000.seg~"), b"backup").unwrap();
    std::fs::write(d.join("README"), b"notes").unwrap();
    let b = open(dir.path());
    assert_eq!(b.stats.corrupt_records.load(Ordering::Relaxed), 0);
    assert_eq!(drain_all(&b, 100), (0..12).collect::<Vec<_>>());
    b.append(&[&batch(100, 2)], 10, &never, &never).unwrap();
    assert_eq!(drain_all(&b, 100), vec![100, 101]);
    for f in ["5.seg", "00000000000000000000.seg~", "README"] {
        assert!(d.join(f).exists(), "{f} is left alone");
    }
}

#[test]
fn drop_oldest_keeps_the_size_limit_and_counts_every_dropped_reading() {
    let dir = tempfile::tempdir().unwrap();
    let max = 256 << 10;
    let b = DiskBuffer::open(dir.path(), &settings(max, WhenFull::DropOldest)).unwrap();
    let mut appended = 0;
    for i in 0..200 {
        b.append(&[&batch(i * 100, 100)], 100, &never, &never)
            .unwrap();
        appended += 100;
        assert!(b.bytes() <= max, "{} bytes on disk", b.bytes());
    }
    let dropped = b.stats.dropped.load(Ordering::Relaxed);
    assert!(dropped > 0);
    let got = drain_all(&b, 1000);
    assert_eq!(got.len() as u64 + dropped, appended);
    // What is left is the newest, in order.
    assert_eq!(*got.last().unwrap(), appended as i64 - 1);
    assert!(got.windows(2).all(|w| w[0] + 1 == w[1]));
}

#[test]
fn drop_oldest_counts_readings_in_flight_once() {
    // The readings of a write in progress, when `drop_oldest` dropped their segment, were
    // counted dropped at once, and written too when the write then stored them: the sink's
    // pending count came out short. Now they count as the write settles: stored, given back
    // whole by a shutdown, or given back with its first record stored (a refused write done
    // record by record, stopped after the first).
    for stored_records in [2, 0, 1] {
        let dir = tempfile::tempdir().unwrap();
        let b = DiskBuffer::open(dir.path(), &settings(256 << 10, WhenFull::DropOldest)).unwrap();
        b.append(&[&batch(0, 50), &batch(50, 50)], 50, &never, &never)
            .unwrap();
        let mut reader = b.reader();
        let flying = b.take(&mut reader, 100, NOW, NOW).unwrap();
        assert_eq!(values(&flying), (0..100).collect::<Vec<_>>());
        assert_eq!(flying.records.len(), 2);
        let mut appended = 100;
        for i in 1..200 {
            b.append(&[&batch(i * 100, 100)], 100, &never, &never)
                .unwrap();
            appended += 100;
        }
        let dropped = b.stats.dropped.load(Ordering::Relaxed);
        assert!(dropped > 0, "the first segment is dropped");
        if stored_records == 2 {
            b.ack(&mut reader, flying);
        } else {
            b.untake(&flying, |i| i < stored_records);
        }
        let lost_in_flight = 50 * (2 - stored_records as u64);
        assert_eq!(
            b.stats.dropped.load(Ordering::Relaxed),
            dropped + lost_in_flight
        );
        let mut rest = Vec::new();
        while let Some(t) = b.take(&mut reader, 1000, NOW, NOW) {
            rest.extend(values(&t));
            b.ack(&mut reader, t);
        }
        let dropped = b.stats.dropped.load(Ordering::Relaxed);
        let written = 50 * stored_records as u64 + rest.len() as u64;
        assert_eq!(written + dropped, appended, "{stored_records} stored");
    }
}

#[test]
fn block_holds_the_writer_until_the_sink_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let max = 256 << 10;
    let b = Arc::new(DiskBuffer::open(dir.path(), &settings(max, WhenFull::Block)).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (b, done) = (b.clone(), done.clone());
        std::thread::spawn(move || {
            for i in 0..200 {
                b.append(&[&batch(i * 100, 100)], 100, &never, &never)
                    .unwrap();
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(!done.load(Ordering::SeqCst), "the writer should be blocked");
    assert!(b.bytes() <= max);
    let mut reader = b.reader();
    let mut got = Vec::new();
    while got.len() < 20_000 {
        if let Some(t) = b.take(&mut reader, 1000, Duration::from_millis(100), NOW) {
            got.extend(values(&t));
            b.ack(&mut reader, t);
        }
    }
    writer.join().unwrap();
    // (Once a backlog forms, newer records travel beside it: compare as sets.)
    got.sort_unstable();
    assert_same(&got, &(0..20_000).collect::<Vec<_>>());
    assert_eq!(b.stats.dropped.load(Ordering::Relaxed), 0);
}

#[test]
fn block_with_room_for_about_one_segment_goes_on_once_everything_is_delivered() {
    // 64 KiB: the segment size too. Once the only segment is full and all of it delivered,
    // the writer must not wait for room that the reader never makes.
    let dir = tempfile::tempdir().unwrap();
    let b = Arc::new(DiskBuffer::open(dir.path(), &settings(64 << 10, WhenFull::Block)).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (b, done) = (b.clone(), done.clone());
        std::thread::spawn(move || {
            for i in 0..200 {
                b.append(
                    &[&batch(i * 100, 100)],
                    100,
                    &|| done.load(Ordering::SeqCst),
                    &never,
                )
                .unwrap();
            }
        })
    };
    let mut reader = b.reader();
    let mut got = Vec::new();
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while got.len() < 20_000 && std::time::Instant::now() < end {
        if let Some(t) = b.take(&mut reader, 1000, Duration::from_millis(100), NOW) {
            got.extend(values(&t));
            b.ack(&mut reader, t);
        }
    }
    let delivered = got.len();
    done.store(true, Ordering::SeqCst);
    let _ = writer.join();
    assert_eq!(
        delivered, 20_000,
        "the writer stalled with everything delivered"
    );
    got.sort_unstable();
    assert_same(&got, &(0..20_000).collect::<Vec<_>>());
    assert!(b.bytes() <= 64 << 10, "{}", b.bytes());
}

#[test]
fn a_blocked_writer_gives_up_when_told_to_stop() {
    let dir = tempfile::tempdir().unwrap();
    let b = DiskBuffer::open(dir.path(), &settings(64 << 10, WhenFull::Block)).unwrap();
    let mut i = 0;
    let outcome = loop {
        match b.append(&[&batch(i * 100, 100)], 100, &|| true, &never) {
            Ok(()) => i += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(outcome, AppendError::Stopped), "{outcome}");
}

#[test]
fn a_full_writer_told_to_write_past_its_limit_writes_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let max = 64 << 10;
    let b = DiskBuffer::open(dir.path(), &settings(max, WhenFull::Block)).unwrap();
    let mut i = 0;
    while b
        .append(&[&batch(i * 100, 100)], 100, &|| true, &never)
        .is_ok()
    {
        i += 1;
    }
    assert!(b.bytes() <= max, "{}", b.bytes());
    // A run that drains: the rest goes past max_size instead of waiting for room.
    for j in i..i + 3 {
        b.append(&[&batch(j * 100, 100)], 100, &|| false, &|| true)
            .unwrap();
    }
    assert!(b.bytes() > max, "{}", b.bytes());
    assert_same(
        &drain_all(&b, 1000),
        &(0..(i + 3) * 100).collect::<Vec<_>>(),
    );
}

#[test]
fn a_backlog_goes_out_oldest_first_with_new_readings_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    fill(&b, 50, 10);
    let mut reader = b.reader();
    let t = b.take(&mut reader, 40, NOW, NOW).unwrap();
    assert_eq!(values(&t), (0..40).collect::<Vec<_>>());
    b.ack(&mut reader, t);
    // The link came back with a backlog; a new reading arrives.
    b.append(&[&batch(1000, 1)], 10, &never, &never).unwrap();
    let t = b.take(&mut reader, 40, NOW, NOW).unwrap();
    let v = values(&t);
    assert_eq!(
        v[0], 1000,
        "the live reading is not held behind the backlog: {v:?}"
    );
    // Whole records only: 1 + 3 × 10 readings fit in a write of 40.
    assert_eq!(&v[1..], &(40..70).collect::<Vec<_>>()[..]);
    b.ack(&mut reader, t);
    // A crash now re-sends the live reading (the sinks drop it by id) but loses nothing.
    drop(reader);
    drop(b);
    let b = open(dir.path());
    let mut got = drain_all(&b, 40);
    assert_eq!(&got[..430], &(70..500).collect::<Vec<_>>()[..]);
    got.retain(|v| *v >= 1000);
    assert_eq!(got, vec![1000]);
}

#[test]
fn backlog_and_live_lanes_merge_once_the_backlog_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    fill(&b, 20, 10);
    let mut reader = b.reader();
    let mut got = Vec::new();
    let mut live = 10_000;
    while let Some(t) = b.take(&mut reader, 30, NOW, NOW) {
        got.extend(values(&t));
        b.ack(&mut reader, t);
        if live < 10_010 {
            b.append(&[&batch(live, 1)], 10, &never, &never).unwrap();
            live += 1;
        }
    }
    let (mut old, new): (Vec<i64>, Vec<i64>) = got.iter().partition(|v| **v < 10_000);
    assert_eq!(old, (0..200).collect::<Vec<_>>());
    assert_eq!(new, (10_000..10_010).collect::<Vec<_>>());
    assert_eq!(b.pending(), 0);
    drop(b);
    old.clear();
    let b = open(dir.path());
    assert_eq!(b.pending(), 0);
    assert!(drain_all(&b, 30).is_empty());
}

#[test]
fn the_live_lane_fills_whole_writes_once_the_backlog_is_all_taken() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    fill(&b, 20, 10);
    let mut reader = b.reader();
    // A sink with several writes in flight: nothing is acknowledged yet.
    let mut held = vec![b.take(&mut reader, 40, NOW, NOW).unwrap()];
    for i in 0..20 {
        b.append(&[&batch(2000 + i * 10, 10)], 10, &never, &never)
            .unwrap();
    }
    let backlog_taken = |held: &[Taken]| held.iter().flat_map(values).filter(|v| *v < 1000).count();
    // The backlog's other 16 records go out, a quarter of each write given to the live lane;
    // the write that takes the backlog's last record fills up from the live lane.
    while backlog_taken(&held) < 200 {
        held.push(b.take(&mut reader, 40, NOW, NOW).unwrap());
    }
    // Only acknowledgements are missing now: the live lane fills whole writes.
    let t = b.take(&mut reader, 40, NOW, NOW).unwrap();
    assert_eq!(values(&t), (2080..2120).collect::<Vec<_>>());
    held.push(t);
    for t in held {
        b.ack(&mut reader, t);
    }
    assert_eq!(drain_all(&b, 40), (2120..2200).collect::<Vec<_>>());
}

#[test]
fn take_waits_for_a_write_to_fill_until_the_batch_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let b = Arc::new(open(dir.path()));
    let w = {
        let b = b.clone();
        std::thread::spawn(move || {
            for i in 0..5 {
                b.append(&[&batch(i, 1)], 10, &never, &never).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut reader = b.reader();
    let t = b
        .take(
            &mut reader,
            5,
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(values(&t), vec![0, 1, 2, 3, 4]);
    w.join().unwrap();
}

#[test]
fn a_second_opener_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let second = DiskBuffer::open(dir.path(), &settings(1 << 30, WhenFull::Block));
    let err = second.err().expect("refused while the first is open");
    assert!(
        err.to_string().contains("in use by another gateway"),
        "{err}"
    );
    drop(b);
    DiskBuffer::open(dir.path(), &settings(1 << 30, WhenFull::Block)).expect("free again");
}

/// The segment files in `dir`, oldest first.
fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
}

/// Fills a buffer over several segments, puts something else in the second segment's place
/// (`put_in_place(segment, moved_aside)`), drains, puts the segment back, drains again: every
/// reading must come out, in order, none counted lost.
fn segment_put_back(what: &str, put_in_place: impl Fn(&Path, &Path)) {
    let dir = tempfile::tempdir().unwrap();
    let b = DiskBuffer::open(dir.path(), &settings(512 << 10, WhenFull::Block)).unwrap();
    fill(&b, 60, 100);
    let files = segment_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    let second = &files[1];
    let aside = dir.path().join("aside");
    std::fs::rename(second, &aside).unwrap();
    put_in_place(second, &aside);
    let mut got = drain_all(&b, 1000);
    assert!(!got.is_empty() && got.len() < 6000, "{what}: {}", got.len());
    assert!(second.symlink_metadata().is_ok(), "{what}: removed");
    if second.is_symlink() {
        std::fs::remove_file(second).unwrap();
    } else {
        std::fs::remove_dir(second).unwrap();
    }
    std::fs::rename(&aside, second).unwrap();
    got.extend(drain_all(&b, 1000));
    assert_same(&got, &(0..6000).collect::<Vec<i64>>());
    assert_eq!(b.stats.corrupt_records.load(Ordering::Relaxed), 0, "{what}");
}

#[test]
fn a_segment_that_cannot_be_opened_or_read_is_not_skipped() {
    // Before, a segment whose open failed for any reason (too many open files, a link in its
    // place) was taken for one `drop_oldest` had removed: skipped without a word, and deleted
    // at the next acknowledgement. A read error (EIO) was taken for damage: that record, or
    // the rest of the segment, skipped.
    segment_put_back("a link (open fails with ELOOP)", |p, aside| {
        std::os::unix::fs::symlink(aside, p).unwrap()
    });
    segment_put_back("a directory (reads fail with EISDIR)", |p, _| {
        std::fs::create_dir(p).unwrap()
    });
}

#[test]
fn a_flipped_bit_in_a_segments_magic_costs_no_record() {
    // Before, the whole segment was moved aside as "not a segment".
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    fill(&b, 8, 10);
    drop(b);
    let seg = segment_file(dir.path());
    damage(&seg, |bytes| bytes[0] ^= 0x01);
    let b = open(dir.path());
    assert_eq!(b.stats.corrupt_records.load(Ordering::Relaxed), 0);
    assert_same(&drain_all(&b, 1000), &(0..80).collect::<Vec<i64>>());
    drop(b);
    // A file that is not a segment goes aside, never over an earlier one.
    for round in 0..2 {
        std::fs::write(
            dir.path().join("00000000000099999999.seg"),
            format!("not a segment, round {round}"),
        )
        .unwrap();
        drop(open(dir.path()));
    }
    let kept = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    assert_eq!(
        kept("00000000000099999999.seg.damaged"),
        "not a segment, round 0"
    );
    assert_eq!(
        kept("00000000000099999999.seg.1.damaged"),
        "not a segment, round 1"
    );
}

#[test]
fn a_lost_first_page_costs_only_the_records_on_it() {
    // Damage over the magic and the first record (a lost page of an SD card) moved the whole
    // segment aside, the intact records after it with it.
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    fill(&b, 10, 5);
    drop(b);
    let seg = segment_file(dir.path());
    damage(&seg, |bytes| {
        bytes[..segment::MAGIC.len() + segment::HEADER + 10].fill(0)
    });
    let b = open(dir.path());
    assert_eq!(b.stats.corrupt_records.load(Ordering::Relaxed), 1);
    assert_same(&drain_all(&b, 1000), &(5..50).collect::<Vec<i64>>());
    assert!(seg.exists(), "read in place, not moved aside");
}

#[test]
fn holds_unsent_tells_an_emptied_buffer_from_one_with_readings_and_waits_on_no_fifo() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!DiskBuffer::holds_unsent(dir.path()).unwrap());
    let b = open(dir.path());
    fill(&b, 10, 5);
    drop(b);
    assert!(DiskBuffer::holds_unsent(dir.path()).unwrap());
    let b = open(dir.path());
    assert_eq!(drain_all(&b, 1000).len(), 50);
    drop(b);
    assert!(!DiskBuffer::holds_unsent(dir.path()).unwrap());
    // A FIFO in the ledger's place: an error at once, not a wait for a writer.
    std::fs::remove_file(dir.path().join("head")).unwrap();
    let c = std::ffi::CString::new(dir.path().join("head").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string; mkfifo has no other precondition.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = DiskBuffer::holds_unsent(dir.path()).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

#[test]
fn a_segment_that_cannot_be_read_at_open_is_an_error_not_moved_aside() {
    // A read that fails (EIO on an ageing SD card, often passing; here EISDIR, the error a
    // test can make) was taken for "not a segment": the file was renamed .damaged and its
    // records left the buffer for good. Now the open fails, naming the error, and the start
    // is tried again.
    let dir = tempfile::tempdir().unwrap();
    // Not empty: some filesystems (btrfs) give an empty directory the length 0, an empty
    // segment's.
    std::fs::write(dir.path().join("x"), b"x").unwrap();
    let Err(e) = segment::scan(dir.path(), 0, 0) else {
        panic!("read as a segment")
    };
    assert_eq!(e.kind(), std::io::ErrorKind::IsADirectory, "{e}");
    // Damage is still damage: a file too short for the magic is not a segment.
    let short = dir.path().join("short.seg");
    std::fs::write(&short, b"SEG").unwrap();
    assert!(segment::scan(&short, 0, 0).unwrap().is_none());
    // But the start of the magic alone is a segment whose making was cut short (a crash, a
    // full disk): empty, not damage.
    std::fs::write(&short, &segment::MAGIC[..3]).unwrap();
    let scan = segment::scan(&short, 0, 0)
        .unwrap()
        .expect("an empty segment");
    assert_eq!((scan.records, scan.readings), (0, 0));
}

/// A file system of `bytes` (a tmpfs) mounted on a new temporary directory, unmounted when
/// dropped. `None`, said on stderr, when this process may not mount one (not root, or root
/// without CAP_SYS_ADMIN as in a default container; CI's machine may).
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(bytes: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let (target, opts) = (
            c(dir.path().to_str().unwrap()),
            c(&format!("size={bytes},mode=0700")),
        );
        // SAFETY: valid C strings; mount(2) has no other precondition.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "mounting a tmpfs: {e}");
            eprintln!("skipped: mounting a tmpfs needs root with CAP_SYS_ADMIN ({e})");
            return None;
        }
        Some(SmallDisk(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.0.path().to_str().unwrap()).unwrap();
        // SAFETY: a valid C string; a lazy unmount has no other precondition.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn drop_oldest_makes_room_on_a_full_file_system_too() {
    // The file system filling before `max_size` (other files on it, a `max_size` larger than
    // the disk) failed each append with ENOSPC, retried for ever: the sources were held back,
    // and the newest readings lost, which is what `drop_oldest` is chosen to avoid.
    let Some(disk) = SmallDisk::mount(1 << 20) else {
        return;
    };
    let dir = disk.path().join("buffer");
    std::fs::create_dir(&dir).unwrap();
    // Segments of 256 KiB in a buffer allowed 2 MiB, on a disk of 1 MiB.
    let b = DiskBuffer::open(&dir, &settings(2 << 20, WhenFull::DropOldest)).unwrap();
    let mut appended = 0;
    for i in 0..300 {
        if let Err(e) = b.append(&[&batch(i * 100, 100)], 100, &never, &never) {
            panic!("append {i} failed: {e:?}");
        }
        appended += 100;
    }
    let dropped = b.stats.dropped.load(Ordering::Relaxed);
    assert!(dropped > 0 && b.bytes() < 1 << 20, "nothing dropped");
    let got = drain_all(&b, 1000);
    assert_eq!(got.len() as u64 + dropped, appended);
    assert_eq!(*got.last().unwrap(), appended as i64 - 1);
    assert!(
        got.windows(2).all(|w| w[0] + 1 == w[1]),
        "the newest, in order"
    );
    // Nothing of a segment cut short by the full disk is taken for damage at the next start.
    drop(b);
    let b = DiskBuffer::open(&dir, &settings(2 << 20, WhenFull::DropOldest)).unwrap();
    assert_eq!(b.stats.corrupt_records.load(Ordering::Relaxed), 0);
    assert_eq!(b.stats.corrupt_bytes.load(Ordering::Relaxed), 0);
    assert_eq!(b.pending(), 0);
}
