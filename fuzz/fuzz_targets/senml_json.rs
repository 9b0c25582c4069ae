//! Any bytes as a SenML JSON pack: readings or a reason, never a panic; what decodes encodes
//! and decodes again to the same readings.
#![no_main]
use gateway_senml as senml;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = gateway_sdk::Timestamp(1_764_085_351_000_000);
    if let Ok(pack) = senml::decode_json(data, 1000, now, "peer") {
        let again = senml::decode_json(&senml::encode_json(&pack.readings), 1000, now, "peer").expect("our own encoding decodes");
        assert_eq!(again.readings.len(), pack.readings.len());
    }
});
