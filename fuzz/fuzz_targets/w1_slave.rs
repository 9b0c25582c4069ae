//! Any bytes as a `w1_slave` file: the parser answers a value in range or a reason, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = ds18b20::w1::parse_w1_slave(&text) {
        assert!((-55.0..=125.0).contains(&c));
    }
});
