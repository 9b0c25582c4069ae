//! Any bytes from the serial port: the decoder resynchronises and never panics, in any chunking.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut whole = ublox7::decoder::Decoder::default();
    let mut a = whole.push(data);
    a.extend(whole.flush());
    let mut bytewise = ublox7::decoder::Decoder::default();
    let mut b = Vec::new();
    for byte in data {
        b.extend(bytewise.push(std::slice::from_ref(byte)));
    }
    b.extend(bytewise.flush());
    assert_eq!(a, b, "chunking changed the result");
    for e in &a {
        let _ = ublox7::readings::values(e);
    }
});
