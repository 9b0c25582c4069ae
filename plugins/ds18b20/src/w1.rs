//! Parsing what the Linux `w1_therm` driver prints in a DS18B20's `w1_slave` file. No I/O.
//!
//! ```text
//! 9d 01 4b 46 7f ff 03 10 57 : crc=57 YES
//! 9d 01 4b 46 7f ff 03 10 57 t=25812
//! ```
//!
//! Line 1 holds the nine scratchpad bytes just read and the driver's CRC verdict; line 2 the last
//! *good* bytes and `t=`, computed from the *current* bytes (so garbage when line 1 says `NO`) and
//! truncated toward zero. The value is taken from the scratchpad bytes (exact to the resolution
//! the configuration register sets, 1/16 °C at 12 bits) after checking the CRC ourselves.

use std::fmt;

/// Why a read was not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    /// The file was empty: a bus or conversion error.
    Empty,
    /// The text is not what the driver prints.
    Malformed,
    /// The driver said `crc=.. NO`.
    CrcNo,
    /// The CRC of the bytes does not match their ninth byte (the driver said YES, we disagree).
    CrcMismatch,
    /// All nine bytes are zero (their CRC is zero too): an unplugged probe or a shorted line.
    AllZero,
    /// 85.000 °C with the power-on reset signature: the conversion did not run.
    PowerOnReset,
    /// 127.9375 °C (0x07FF): a parasite-powered probe that did not get enough current.
    ParasitePower,
    /// Outside the DS18B20's range of -55..125 °C.
    OutOfRange,
    /// `w1_slave` could not be read: a bus error (EIO), the driver busy (EINTR), the probe
    /// gone. Not a parse of the file: counted and retried as one.
    Io,
}

impl Reject {
    /// Every reason, for counters.
    pub const ALL: [Reject; 9] = [
        Reject::Empty,
        Reject::Malformed,
        Reject::CrcNo,
        Reject::CrcMismatch,
        Reject::AllZero,
        Reject::PowerOnReset,
        Reject::ParasitePower,
        Reject::OutOfRange,
        Reject::Io,
    ];

    /// The reason as a metric's label value.
    pub fn key(self) -> &'static str {
        match self {
            Reject::Empty => "empty",
            Reject::Malformed => "malformed",
            Reject::CrcNo => "crc_no",
            Reject::CrcMismatch => "crc_mismatch",
            Reject::AllZero => "all_zero",
            Reject::PowerOnReset => "power_on_reset",
            Reject::ParasitePower => "parasite_power",
            Reject::OutOfRange => "out_of_range",
            Reject::Io => "io",
        }
    }

    /// A short name for logs and counters.
    pub fn name(self) -> &'static str {
        match self {
            Reject::Empty => "empty read",
            Reject::Malformed => "malformed",
            Reject::CrcNo => "crc NO",
            Reject::CrcMismatch => "crc mismatch",
            Reject::AllZero => "all-zero read",
            Reject::PowerOnReset => "85 C power-on value",
            Reject::ParasitePower => "insufficient parasite power",
            Reject::OutOfRange => "out of range",
            Reject::Io => "read error",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The Dallas/Maxim CRC-8 (polynomial x^8 + x^5 + x^4 + 1, reflected, initial value 0).
pub fn crc8(bytes: &[u8]) -> u8 {
    let mut crc = 0u8;
    for &b in bytes {
        let mut b = b;
        for _ in 0..8 {
            let mix = (crc ^ b) & 1;
            crc >>= 1;
            if mix != 0 {
                crc ^= 0x8C;
            }
            b >>= 1;
        }
    }
    crc
}

fn hex_bytes(s: &str) -> Option<[u8; 9]> {
    let mut out = [0u8; 9];
    let mut n = 0;
    for tok in s.split_ascii_whitespace() {
        if n == 9 || tok.len() != 2 {
            return None;
        }
        out[n] = u8::from_str_radix(tok, 16).ok()?;
        n += 1;
    }
    (n == 9).then_some(out)
}

/// The temperature in °C from the scratchpad, honouring the resolution in the configuration
/// register (the low bits are undefined below 12 bits).
pub fn scratchpad_celsius(sp: &[u8; 9]) -> f64 {
    let raw = i16::from_le_bytes([sp[0], sp[1]]);
    let resolution_bits = 9 + ((sp[4] >> 5) & 0b11);
    let undefined = 12 - resolution_bits;
    let raw = raw & !((1i16 << undefined) - 1);
    f64::from(raw) / 16.0
}

/// Parses a `w1_slave` file into °C, or says why the read is not to be trusted.
pub fn parse_w1_slave(text: &str) -> Result<f64, Reject> {
    if text.trim().is_empty() {
        return Err(Reject::Empty);
    }
    let mut lines = text.lines();
    let first = lines.next().ok_or(Reject::Malformed)?;
    let (bytes, verdict) = first.split_once(": crc=").ok_or(Reject::Malformed)?;
    let sp = hex_bytes(bytes).ok_or(Reject::Malformed)?;
    let mut verdict = verdict.split_ascii_whitespace();
    let stated = verdict
        .next()
        .and_then(|c| u8::from_str_radix(c, 16).ok())
        .ok_or(Reject::Malformed)?;
    match verdict.next() {
        Some("YES") => {}
        Some("NO") => return Err(Reject::CrcNo),
        _ => return Err(Reject::Malformed),
    }
    // Line 2 must be there (a truncated read is not a reading), though its `t=` is not used.
    let second = lines.next().ok_or(Reject::Malformed)?;
    if !second.contains("t=") {
        return Err(Reject::Malformed);
    }
    if crc8(&sp[..8]) != sp[8] || stated != sp[8] {
        return Err(Reject::CrcMismatch);
    }
    if sp.iter().all(|&b| b == 0) {
        return Err(Reject::AllZero);
    }
    let raw = i16::from_le_bytes([sp[0], sp[1]]);
    if raw == 0x0550 && sp[6] == 0x0C {
        return Err(Reject::PowerOnReset);
    }
    if raw == 0x07FF {
        return Err(Reject::ParasitePower);
    }
    let c = scratchpad_celsius(&sp);
    if !(-55.0..=125.0).contains(&c) {
        return Err(Reject::OutOfRange);
    }
    Ok(c)
}

/// Formats `w1_slave` contents for a temperature, as the driver prints a good read (for the
/// simulator and tests). `celsius` is rounded to 1/16 °C.
pub fn format_w1_slave(celsius: f64) -> String {
    let raw = (celsius * 16.0).round() as i16;
    let [lo, hi] = raw.to_le_bytes();
    let remain = 0x10 - (raw as u8 & 0x0F);
    format_scratchpad([lo, hi, 0x4b, 0x46, 0x7f, 0xff, remain, 0x10, 0], true)
}

/// Formats a scratchpad (its CRC byte computed here) with the driver's verdict.
pub fn format_scratchpad(mut sp: [u8; 9], crc_ok: bool) -> String {
    sp[8] = crc8(&sp[..8]);
    let hex: Vec<String> = sp.iter().map(|b| format!("{b:02x}")).collect();
    let raw = i16::from_le_bytes([sp[0], sp[1]]);
    // The driver computes milli-degrees with integer arithmetic, truncating toward zero.
    let milli = i32::from(raw) * 1000 / 16;
    format!(
        "{} : crc={:02x} {}\n{} t={}\n",
        hex.join(" "),
        sp[8],
        if crc_ok { "YES" } else { "NO" },
        hex.join(" "),
        milli
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc8_matches_the_datasheet_example() {
        // The DS18B20 datasheet's ROM example: 02 1C B8 01 00 00 00 has CRC A2.
        assert_eq!(crc8(&[0x02, 0x1C, 0xB8, 0x01, 0x00, 0x00, 0x00]), 0xA2);
        assert_eq!(crc8(&[]), 0);
    }

    #[test]
    fn format_and_parse_round_trip_over_the_range() {
        let mut t = -55.0;
        while t <= 125.0 {
            let text = format_w1_slave(t);
            assert_eq!(parse_w1_slave(&text), Ok(t), "{text}");
            t += 0.0625 * 7.0;
        }
    }

    #[test]
    fn lower_resolutions_mask_the_undefined_bits() {
        // 9-bit resolution: config register 0x1f, the three low bits are undefined.
        let sp = [0x9f, 0x01, 0x4b, 0x46, 0x1f, 0xff, 0x01, 0x10, 0];
        assert_eq!(scratchpad_celsius(&sp), 25.5);
    }
}
