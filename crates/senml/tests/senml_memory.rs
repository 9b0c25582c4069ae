//! What a hostile SenML payload costs in memory, measured with a counting allocator: decoding
//! must stay bounded by `max_records`, whatever the payload claims or holds. One test in its
//! own binary, so that no other test allocates meanwhile.

use gateway_sdk::{testing::sample_readings, Timestamp};
use gateway_senml::{decode_cbor, decode_json, encode_cbor, DecodeError};
use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering::SeqCst},
};

struct Counting;
static NOW_BYTES: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's layout, passed on.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = NOW_BYTES.fetch_add(l.size(), SeqCst) + l.size();
            PEAK.fetch_max(now, SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `alloc` with `l`.
        unsafe { System.dealloc(p, l) };
        NOW_BYTES.fetch_sub(l.size(), SeqCst);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: `p` came from `alloc` with `l`.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            NOW_BYTES.fetch_sub(l.size(), SeqCst);
            let now = NOW_BYTES.fetch_add(new, SeqCst) + new;
            PEAK.fetch_max(now, SeqCst);
        }
        q
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Bytes allocated at the peak of `f`, above what was allocated before it.
fn peak<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = NOW_BYTES.load(SeqCst);
    PEAK.store(base, SeqCst);
    let out = f();
    (out, PEAK.load(SeqCst) - base)
}

const MIB: usize = 1 << 20;

#[test]
fn hostile_packs_cost_little_memory() {
    let now = Timestamp(1_764_583_200_000_000);
    // A 1 MiB CBOR array of empty maps: [ {}, {}, ... ] with a 32-bit count.
    let n = MIB - 5;
    let mut empty_maps = vec![0x9a];
    empty_maps.extend_from_slice(&(n as u32).to_be_bytes());
    empty_maps.resize(MIB, 0xa0);
    let (r, bytes) = peak(|| decode_cbor(&empty_maps, 10_000, now, "d"));
    assert_eq!(r, Err(DecodeError::NoValue(0)));
    assert!(bytes < 256 << 10, "{bytes} bytes for a pack of empty maps");

    // The same as JSON.
    let mut json = b"[".to_vec();
    while json.len() < MIB {
        json.extend_from_slice(b"{},");
    }
    json.extend_from_slice(b"{}]");
    let (r, bytes) = peak(|| decode_json(&json, 10_000, now, "d"));
    assert_eq!(r, Err(DecodeError::NoValue(0)));
    assert!(
        bytes < 256 << 10,
        "{bytes} bytes for a JSON pack of empty objects"
    );

    // An array that claims 2^64 - 1 records and has a few.
    let mut liar = vec![0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    liar.extend_from_slice(&encode_cbor(&sample_readings(3))[1..]);
    let (r, bytes) = peak(|| decode_cbor(&liar, 10_000, now, "d"));
    assert_eq!(r, Err(DecodeError::Syntax("CBOR")));
    assert!(bytes < 256 << 10, "{bytes} bytes for a lying count");

    // A megabyte of valid records, more than max_records: decoding stops at the first extra.
    let many = sample_readings(40_000);
    let payload = encode_cbor(&many);
    assert!(payload.len() > MIB, "{}", payload.len());
    let (r, bytes) = peak(|| decode_cbor(&payload, 10_000, now, "d"));
    assert_eq!(r, Err(DecodeError::TooMany(10_000)));
    assert!(bytes < 8 * MIB, "{bytes} bytes for 10,000 records");
    println!("10,000 records decoded in {} KiB", bytes >> 10);

    // A base unit (or base name) is applied to every record after it: a long one must not be
    // copied into each. Names longer than 255 bytes, units longer than 64, are refused.
    let mut amplifier = br#"[{"n":"s/a","bu":""#.to_vec();
    amplifier.extend(std::iter::repeat_n(b'u', 400_000));
    amplifier.extend_from_slice(br#"","v":1}"#);
    for _ in 0..9_000 {
        amplifier.extend_from_slice(br#",{"v":1}"#);
    }
    amplifier.push(b']');
    let (r, bytes) = peak(|| decode_json(&amplifier, 10_000, now, "d"));
    assert_eq!(r, Err(DecodeError::UnitTooLong(0, "bu")));
    assert!(bytes < 2 * MIB, "{bytes} bytes for a long base unit");
    // At the limits, 10,000 records under one 64-byte base unit and 255-byte base name stay
    // small. (The
    // base name is a device's, "DEVICE:": a foreign one of 255 bytes would make a sensor name
    // too long to send on, and is refused; see senml.rs.)
    let mut at_limit = format!(
        r#"[{{"bn":"{}:","bu":"{}","n":"s","v":1}}"#,
        "b".repeat(254),
        "u".repeat(64)
    )
    .into_bytes();
    for _ in 1..10_000 {
        at_limit.extend_from_slice(br#",{"n":"s","v":1}"#);
    }
    at_limit.push(b']');
    let (r, bytes) = peak(|| decode_json(&at_limit, 10_000, now, "d"));
    assert_eq!(r.map(|p| p.readings.len()), Ok(10_000));
    assert!(
        bytes < 16 * MIB,
        "{bytes} bytes for 10,000 records under long base fields"
    );
    println!(
        "10,000 records under 255-byte base fields decoded in {} KiB",
        bytes >> 10
    );

    // Deep nesting in a field nobody uses is skipped, not built, and not a stack overflow.
    let mut deep = vec![0x81, 0xa2, 0x02, 0x01, 0x63, b'x', b'y', b'z'];
    deep.extend(std::iter::repeat_n(0x81u8, 100_000));
    deep.push(0x01);
    let (r, bytes) = peak(|| decode_cbor(&deep, 10_000, now, "d"));
    assert_eq!(r, Err(DecodeError::Syntax("CBOR")));
    assert!(bytes < 256 << 10, "{bytes} bytes for deep nesting");
}
