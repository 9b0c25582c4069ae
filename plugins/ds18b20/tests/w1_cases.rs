//! Every `w1_slave` case: the real and constructed fixtures, and the faults built here.

use ds18b20::w1::{format_scratchpad, format_w1_slave, parse_w1_slave, Reject};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn accepts_a_real_good_reading_exactly() {
    // t=25812 is truncated; the bytes say 0x019d / 16 = 25.8125.
    assert_eq!(
        parse_w1_slave(&fixture("real_good_25812.w1_slave")),
        Ok(25.8125)
    );
}

#[test]
fn rejects_crc_no_from_an_open_bus_even_though_line_two_looks_good() {
    assert_eq!(
        parse_w1_slave(&fixture("real_crc_no_bus_ff_retained.w1_slave")),
        Err(Reject::CrcNo)
    );
}

#[test]
fn rejects_power_on_value() {
    assert_eq!(
        parse_w1_slave(&fixture("power_on_reset_85000.w1_slave")),
        Err(Reject::PowerOnReset)
    );
}

#[test]
fn takes_negative_values_from_the_bytes_not_the_truncated_t() {
    assert_eq!(
        parse_w1_slave(&fixture("constructed_neg_0.0625.w1_slave")),
        Ok(-0.0625)
    );
    assert_eq!(
        parse_w1_slave(&fixture("constructed_neg_10.125.w1_slave")),
        Ok(-10.125)
    );
}

#[test]
fn accepts_the_top_of_the_range() {
    assert_eq!(
        parse_w1_slave(&fixture("constructed_pos_125.w1_slave")),
        Ok(125.0)
    );
}

#[test]
fn rejects_empty_read() {
    assert_eq!(
        parse_w1_slave(&fixture("empty_read_error.w1_slave")),
        Err(Reject::Empty)
    );
    assert_eq!(parse_w1_slave("\n"), Err(Reject::Empty));
}

#[test]
fn does_not_trust_the_temperature_attribute_alone() {
    // `temperature` holds only "23125": no bytes, no CRC.
    assert_eq!(
        parse_w1_slave(&fixture("temperature_good.txt")),
        Err(Reject::Malformed)
    );
}

#[test]
fn rejects_the_all_zero_read_of_an_unplugged_probe() {
    // Nine zero bytes have a CRC of zero, so the driver says YES.
    let text = format_scratchpad([0; 9], true);
    assert!(text.starts_with("00 00 00 00 00 00 00 00 00 : crc=00 YES"));
    assert_eq!(parse_w1_slave(&text), Err(Reject::AllZero));
}

#[test]
fn rejects_insufficient_parasite_power_value() {
    let text = format_scratchpad([0xff, 0x07, 0x4b, 0x46, 0x7f, 0xff, 0x01, 0x10, 0], true);
    assert_eq!(parse_w1_slave(&text), Err(Reject::ParasitePower));
}

#[test]
fn rejects_values_outside_the_range() {
    let raw = (-60.0f64 * 16.0) as i16;
    let [lo, hi] = raw.to_le_bytes();
    let text = format_scratchpad([lo, hi, 0x4b, 0x46, 0x7f, 0xff, 0x10, 0x10, 0], true);
    assert_eq!(parse_w1_slave(&text), Err(Reject::OutOfRange));
    let raw = (126.0f64 * 16.0) as i16;
    let [lo, hi] = raw.to_le_bytes();
    let text = format_scratchpad([lo, hi, 0x4b, 0x46, 0x7f, 0xff, 0x10, 0x10, 0], true);
    assert_eq!(parse_w1_slave(&text), Err(Reject::OutOfRange));
}

#[test]
fn rejects_bytes_whose_crc_does_not_match_even_if_the_driver_said_yes() {
    let good = format_w1_slave(21.5);
    let mut first = good.lines().next().unwrap().to_owned();
    first.replace_range(0..2, "99");
    let text = format!("{first}\n{}\n", good.lines().nth(1).unwrap());
    assert_eq!(parse_w1_slave(&text), Err(Reject::CrcMismatch));
}

#[test]
fn rejects_truncated_and_garbled_files() {
    let good = format_w1_slave(21.5);
    assert_eq!(
        parse_w1_slave(good.lines().next().unwrap()),
        Err(Reject::Malformed),
        "line 2 missing"
    );
    assert_eq!(parse_w1_slave("hello world\n"), Err(Reject::Malformed));
    assert_eq!(
        parse_w1_slave("9d 01 4b : crc=57 YES\nx t=1\n"),
        Err(Reject::Malformed),
        "too few bytes"
    );
    assert_eq!(
        parse_w1_slave("9d 01 4b 46 7f ff 03 10 57 : crc=57 MAYBE\n9d t=1\n"),
        Err(Reject::Malformed)
    );
    assert_eq!(
        parse_w1_slave("zz 01 4b 46 7f ff 03 10 57 : crc=57 YES\nt=1\n"),
        Err(Reject::Malformed)
    );
}

#[test]
fn format_matches_the_kernel_for_the_fixtures() {
    // The simulator's output is byte for byte what the driver prints.
    assert_eq!(
        format_w1_slave(25.8125),
        fixture("real_good_25812.w1_slave")
    );
    assert_eq!(
        format_w1_slave(-0.0625),
        fixture("constructed_neg_0.0625.w1_slave")
    );
    assert_eq!(
        format_w1_slave(-10.125),
        fixture("constructed_neg_10.125.w1_slave")
    );
    assert_eq!(
        format_w1_slave(125.0),
        fixture("constructed_pos_125.w1_slave")
    );
}

#[test]
fn never_panics_on_arbitrary_text() {
    // A cheap stand-in for the fuzz target, run on every test: mutations of a good file.
    let good = format_w1_slave(21.5).into_bytes();
    let mut seed = 0x1234_5678u32;
    for _ in 0..20_000 {
        let mut b = good.clone();
        for _ in 0..3 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let i = seed as usize % b.len();
            b[i] = (seed >> 8) as u8;
        }
        b.truncate(seed as usize % (b.len() + 1));
        let _ = parse_w1_slave(&String::from_utf8_lossy(&b));
    }
}
