//! Parsing what the kernel prints in the sysfs files this source reads. No I/O.
//!
//! - `/sys/class/thermal/thermal_zone<N>/temp`: the zone's temperature in millidegrees Celsius,
//!   one signed integer (`48686`); `type` beside it names the zone (`cpu-thermal`).
//!   Documentation/driver-api/thermal/sysfs-api.rst ("Generic Thermal Sysfs driver How To").
//! - `/sys/devices/platform/soc/soc:firmware/get_throttled`: the Raspberry Pi firmware's
//!   throttling flags. The driver (drivers/firmware/raspberrypi.c in the Raspberry Pi kernel)
//!   prints them with `"%x\n"`: hexadecimal *without* `0x` (`50005`), so a bare number is hex,
//!   never decimal. `vcgencmd get_throttled` prints the same value as `throttled=0x50005`; both
//!   spellings are read. The bits are those of the firmware's GET_THROTTLED property, as the
//!   Raspberry Pi documentation lists them under `vcgencmd get_throttled`.

use crate::reject::Reject;

/// The temperatures a thermal zone can report, in millidegrees: SoCs and their sensors are
/// specified from -40 °C to 125 °C; with a margin either side. Anything beyond is not a
/// temperature (a sentinel such as `INT_MAX`, a driver's error, a file that is not a zone's).
pub const TEMP_RANGE_MILLI: std::ops::RangeInclusive<i64> = -60_000..=150_000;

/// Parses a thermal zone's `temp` into °C.
pub fn parse_temp(text: &str) -> Result<f64, Reject> {
    let t = text.trim();
    if t.is_empty() {
        return Err(Reject::Empty);
    }
    let digits = t.strip_prefix('-').unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reject::Malformed);
    }
    // All digits: the only way left to fail is a number too long for an i64.
    let milli: i64 = t.parse().map_err(|_| Reject::OutOfRange)?;
    if !TEMP_RANGE_MILLI.contains(&milli) {
        return Err(Reject::OutOfRange);
    }
    Ok(milli as f64 / 1000.0)
}

/// A thermal zone's name from its `type` file, if it holds one: printable, without spaces,
/// and a name the SDK takes for a label (no control or reordering character, no U+FFFD from
/// bytes that were not UTF-8): it becomes the readings' sensor, shown on terminals and
/// dashboards.
pub fn parse_zone_type(text: &str) -> Option<&str> {
    let t = text.trim();
    let fine = !t.is_empty()
        && t.len() <= 64
        && t.chars().all(|c| c.is_ascii_graphic() || !c.is_ascii())
        && gateway_sdk::Label::check_name(t).is_ok();
    fine.then_some(t)
}

/// The number of a `thermal_zone<N>` directory, for sorting zone 10 after zone 9.
pub fn zone_index(dir_name: &str) -> Option<u32> {
    let n = dir_name.strip_prefix("thermal_zone")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// The Raspberry Pi firmware's throttling flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled(pub u32);

impl Throttled {
    /// Bit 0: under-voltage detected now (the supply is below what the board needs).
    pub const UNDER_VOLTAGE_NOW: u32 = 1 << 0;
    /// Bit 1: the ARM core frequency is capped now.
    pub const ARM_CAPPED_NOW: u32 = 1 << 1;
    /// Bit 2: the cores are throttled now.
    pub const THROTTLED_NOW: u32 = 1 << 2;
    /// Bit 3: the soft temperature limit is active now.
    pub const SOFT_TEMP_LIMIT_NOW: u32 = 1 << 3;
    /// Bit 16: under-voltage has occurred since boot.
    pub const UNDER_VOLTAGE_OCCURRED: u32 = 1 << 16;
    /// Bit 17: ARM frequency capping has occurred since boot.
    pub const ARM_CAPPED_OCCURRED: u32 = 1 << 17;
    /// Bit 18: throttling has occurred since boot.
    pub const THROTTLED_OCCURRED: u32 = 1 << 18;
    /// Bit 19: the soft temperature limit has been reached since boot.
    pub const SOFT_TEMP_LIMIT_OCCURRED: u32 = 1 << 19;

    fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }
    /// Bit 0.
    pub fn under_voltage_now(self) -> bool {
        self.has(Self::UNDER_VOLTAGE_NOW)
    }
    /// Bit 2.
    pub fn throttled_now(self) -> bool {
        self.has(Self::THROTTLED_NOW)
    }
    /// Bit 16.
    pub fn under_voltage_occurred(self) -> bool {
        self.has(Self::UNDER_VOLTAGE_OCCURRED)
    }
    /// Bit 18.
    pub fn throttled_occurred(self) -> bool {
        self.has(Self::THROTTLED_OCCURRED)
    }
}

/// Parses `get_throttled` (`50005`), or `vcgencmd`'s `throttled=0x50005`.
pub fn parse_throttled(text: &str) -> Result<Throttled, Reject> {
    let t = text.trim();
    if t.is_empty() {
        return Err(Reject::Empty);
    }
    let t = t.strip_prefix("throttled=").unwrap_or(t);
    let hex = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Reject::Malformed);
    }
    // All hex digits: the only way left to fail is more than 32 bits.
    u32::from_str_radix(hex, 16)
        .map(Throttled)
        .map_err(|_| Reject::OutOfRange)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_is_millidegrees_and_may_be_negative() {
        assert_eq!(parse_temp("48686\n"), Ok(48.686));
        assert_eq!(parse_temp("-12500\n"), Ok(-12.5));
        assert_eq!(parse_temp("0"), Ok(0.0));
    }

    #[test]
    fn temp_rejects_garbage_empty_and_absurd_values() {
        assert_eq!(parse_temp(""), Err(Reject::Empty));
        assert_eq!(parse_temp(" \n"), Err(Reject::Empty));
        assert_eq!(parse_temp("n/a\n"), Err(Reject::Malformed));
        assert_eq!(parse_temp("48.686\n"), Err(Reject::Malformed));
        assert_eq!(parse_temp("-"), Err(Reject::Malformed));
        assert_eq!(parse_temp("+48686"), Err(Reject::Malformed));
        assert_eq!(parse_temp("2147483647"), Err(Reject::OutOfRange));
        assert_eq!(parse_temp("-274000"), Err(Reject::OutOfRange));
        assert_eq!(
            parse_temp("99999999999999999999999"),
            Err(Reject::OutOfRange)
        );
    }

    #[test]
    fn zone_types_and_indexes() {
        assert_eq!(parse_zone_type("cpu-thermal\n"), Some("cpu-thermal"));
        assert_eq!(parse_zone_type("\n"), None);
        assert_eq!(parse_zone_type("two words"), None);
        // What would act on a terminal or reorder a dashboard's text is no name.
        assert_eq!(parse_zone_type("cpu\u{202e}lamreht\n"), None);
        assert_eq!(parse_zone_type("cpu\u{fffd}\n"), None);
        assert_eq!(parse_zone_type("cpu-\u{b0}C\n"), Some("cpu-\u{b0}C"));
        assert_eq!(zone_index("thermal_zone0"), Some(0));
        assert_eq!(zone_index("thermal_zone12"), Some(12));
        assert_eq!(zone_index("thermal_zone"), None);
        assert_eq!(zone_index("cooling_device0"), None);
    }

    #[test]
    fn throttled_is_hex_with_or_without_prefix() {
        assert_eq!(parse_throttled("50005\n"), Ok(Throttled(0x50005)));
        assert_eq!(parse_throttled("0x50005\n"), Ok(Throttled(0x50005)));
        assert_eq!(
            parse_throttled("throttled=0x50005\n"),
            Ok(Throttled(0x50005))
        );
        assert_eq!(parse_throttled("0\n"), Ok(Throttled(0)));
        assert_eq!(parse_throttled("e0008\n"), Ok(Throttled(0xe0008)));
    }

    #[test]
    fn throttled_decodes_the_documented_bits() {
        let t = Throttled(0x50005);
        assert!(t.under_voltage_now() && t.throttled_now());
        assert!(t.under_voltage_occurred() && t.throttled_occurred());
        let t = Throttled(0x50000);
        assert!(!t.under_voltage_now() && !t.throttled_now());
        assert!(t.under_voltage_occurred() && t.throttled_occurred());
        let t = Throttled(Throttled::ARM_CAPPED_NOW | Throttled::SOFT_TEMP_LIMIT_OCCURRED);
        assert!(!t.under_voltage_now() && !t.throttled_now());
        assert!(!t.under_voltage_occurred() && !t.throttled_occurred());
    }

    #[test]
    fn throttled_rejects_garbage_and_overflow() {
        assert_eq!(parse_throttled(""), Err(Reject::Empty));
        assert_eq!(parse_throttled("0x"), Err(Reject::Malformed));
        assert_eq!(parse_throttled("-5"), Err(Reject::Malformed));
        assert_eq!(parse_throttled("zz"), Err(Reject::Malformed));
        assert_eq!(parse_throttled("1ffffffff"), Err(Reject::OutOfRange));
    }
}
