//! Parsing what the kernel prints in the `/proc` files this source reads. No I/O.
//!
//! Formats as proc(5) and Documentation/filesystems/proc.rst describe them:
//!
//! ```text
//! /proc/loadavg   0.52 0.58 0.59 1/221 1342          1, 5, 15 min averages, runnable/all, last pid
//! /proc/uptime    351735.51 1395217.26                seconds since boot, idle seconds (all CPUs)
//! /proc/meminfo   MemTotal:        3882420 kB         one `Key: value [kB]` per line; kB = 1024 bytes
//! ```
//!
//! `/proc/net/wireless` is printed by net/wireless/wext-proc.c: two header lines, then one line
//! per wireless interface, `"%6s: %04x  %3d%c  %3d%c  %3d%c  %6d %6d %6d %6d %6d   %6d"` (name,
//! status, link quality, signal level, noise level, each number followed by `.` when it was
//! updated since the last read, then discarded packet counts and missed beacons). A driver that
//! reports in dBm (flag `IW_QUAL_DBM`) has 256 taken off its level and noise, so they print as
//! negative dBm and a level of 0 prints as `-256`: nothing measured.

use crate::reject::Reject;

/// The highest load average taken as real. Load counts runnable and uninterruptible tasks; a
/// gateway with ten thousand of them is not reporting anything any more.
pub const MAX_LOAD: f64 = 10_000.0;

/// The longest uptime taken as real: a hundred years, in seconds.
pub const MAX_UPTIME_S: f64 = 100.0 * 365.25 * 86_400.0;

/// The most memory taken as real: 1 PiB.
pub const MAX_MEMORY_BYTES: u64 = 1 << 50;

/// The signal levels taken as dBm. Receivers stop at about -100 dBm and a transmitter on the
/// same desk gives about -10; -150 and 0 leave margin without taking in the `-256` of "not
/// measured".
pub const SIGNAL_DBM: std::ops::RangeInclusive<i64> = -150..=-1;

/// A non-negative decimal as the kernel prints it (`0.52`, `351735.51`). A minus sign is out of
/// range; anything else that is not digits and one point is malformed (Rust's `f64` parser
/// would take `inf`, `NaN` and `1e3`).
fn parse_decimal(token: &str) -> Result<f64, Reject> {
    let (negative, digits) = match token.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, token),
    };
    let points = digits.bytes().filter(|&b| b == b'.').count();
    let fine = digits.bytes().any(|b| b.is_ascii_digit())
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && points <= 1;
    if !fine {
        return Err(Reject::Malformed);
    }
    let v: f64 = digits.parse().map_err(|_| Reject::Malformed)?;
    if negative && v != 0.0 {
        return Err(Reject::OutOfRange);
    }
    Ok(v)
}

/// The three load averages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadAvg {
    /// Over the last minute.
    pub one: f64,
    /// Over the last 5 minutes.
    pub five: f64,
    /// Over the last 15 minutes.
    pub fifteen: f64,
}

/// Parses `/proc/loadavg`. The line is taken whole or not at all.
pub fn parse_loadavg(text: &str) -> Result<LoadAvg, Reject> {
    if text.trim().is_empty() {
        return Err(Reject::Empty);
    }
    let mut tokens = text.split_ascii_whitespace();
    let mut next = || -> Result<f64, Reject> {
        let v = parse_decimal(tokens.next().ok_or(Reject::Malformed)?)?;
        if v > MAX_LOAD {
            return Err(Reject::OutOfRange);
        }
        Ok(v)
    };
    Ok(LoadAvg {
        one: next()?,
        five: next()?,
        fifteen: next()?,
    })
}

/// Parses `/proc/uptime` into seconds since boot.
pub fn parse_uptime(text: &str) -> Result<f64, Reject> {
    let first = text.split_ascii_whitespace().next().ok_or(Reject::Empty)?;
    let v = parse_decimal(first)?;
    if v > MAX_UPTIME_S {
        return Err(Reject::OutOfRange);
    }
    Ok(v)
}

/// One `Key: N kB` field of `/proc/meminfo`, in bytes.
pub fn meminfo_bytes(text: &str, key: &str) -> Result<u64, Reject> {
    if text.trim().is_empty() {
        return Err(Reject::Empty);
    }
    let value = text
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .and_then(|(k, v)| (k.trim() == key).then_some(v))
        })
        .ok_or(Reject::Missing)?;
    let mut tokens = value.split_ascii_whitespace();
    let number = tokens.next().ok_or(Reject::Malformed)?;
    if tokens.next() != Some("kB") || tokens.next().is_some() {
        return Err(Reject::Malformed);
    }
    let digits = number.strip_prefix('-').unwrap_or(number);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reject::Malformed);
    }
    if digits.len() != number.len() {
        return Err(Reject::OutOfRange);
    }
    let kib: u64 = number.parse().map_err(|_| Reject::OutOfRange)?;
    kib.checked_mul(1024)
        .filter(|&b| b <= MAX_MEMORY_BYTES)
        .ok_or(Reject::OutOfRange)
}

/// Total and available memory from `/proc/meminfo`, each on its own: one bad field does not
/// cost the other.
#[derive(Debug, Clone, PartialEq)]
pub struct MemInfo {
    /// `MemTotal`: the RAM the kernel manages, in bytes. Never 0.
    pub total: Result<u64, Reject>,
    /// `MemAvailable`: what new work could get without swapping, in bytes. Never more than
    /// `total` when that is known.
    pub available: Result<u64, Reject>,
}

/// Parses `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> MemInfo {
    let total = meminfo_bytes(text, "MemTotal").and_then(|t| match t {
        0 => Err(Reject::OutOfRange),
        t => Ok(t),
    });
    let available = meminfo_bytes(text, "MemAvailable").and_then(|a| match total {
        Ok(t) if a > t => Err(Reject::OutOfRange),
        _ => Ok(a),
    });
    MemInfo { total, available }
}

/// One interface's line of `/proc/net/wireless`.
#[derive(Debug, Clone, PartialEq)]
pub struct Wireless {
    /// The interface name (`wlan0`).
    pub interface: String,
    /// The driver's link quality (0..=255; its scale, often out of 70, is the driver's).
    pub link_quality: Result<i64, Reject>,
    /// The signal level in dBm; `None` when the driver measured none (not associated).
    pub signal_dbm: Result<Option<i64>, Reject>,
}

/// A line of `/proc/net/wireless` that is not an interface's line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BadLine {
    /// Its number, from 1.
    pub line: usize,
    /// Why.
    pub reject: Reject,
}

/// A number of `/proc/net/wireless`: an integer, with a `.` after it when it was updated.
fn wireless_number(token: &str) -> Result<i64, Reject> {
    let t = token.strip_suffix('.').unwrap_or(token);
    let digits = t.strip_prefix('-').unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reject::Malformed);
    }
    t.parse().map_err(|_| Reject::OutOfRange)
}

/// Parses `/proc/net/wireless`: one entry per interface line, in order; no interface is no
/// entry. The whole file is refused only when its header is not the kernel's.
pub fn parse_wireless(text: &str) -> Result<Vec<Result<Wireless, BadLine>>, Reject> {
    if text.trim().is_empty() {
        return Err(Reject::Empty);
    }
    let mut lines = text.lines();
    let header = (lines.next(), lines.next());
    let (Some(h1), Some(h2)) = header else {
        return Err(Reject::Malformed);
    };
    if !h1.starts_with("Inter-|") || !h2.trim_start().starts_with("face |") {
        return Err(Reject::Malformed);
    }
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reject| BadLine {
            line: i + 3,
            reject,
        };
        let Some((name, rest)) = line.split_once(':') else {
            out.push(Err(bad(Reject::Malformed)));
            continue;
        };
        let interface = name.trim();
        // It becomes part of the readings' sensor: a label the SDK takes, without spaces.
        if interface.contains(char::is_whitespace)
            || gateway_sdk::Label::check_name(interface).is_err()
        {
            out.push(Err(bad(Reject::Malformed)));
            continue;
        }
        let mut tokens = rest.split_ascii_whitespace();
        let (Some(_status), Some(quality), Some(level)) =
            (tokens.next(), tokens.next(), tokens.next())
        else {
            out.push(Err(bad(Reject::Malformed)));
            continue;
        };
        let link_quality = wireless_number(quality).and_then(|q| match q {
            0..=255 => Ok(q),
            _ => Err(Reject::OutOfRange),
        });
        let signal_dbm = wireless_number(level).and_then(|l| match l {
            -256 | 0 => Ok(None),
            l if SIGNAL_DBM.contains(&l) => Ok(Some(l)),
            1..=255 => Err(Reject::NotDbm),
            _ => Err(Reject::OutOfRange),
        });
        out.push(Ok(Wireless {
            interface: interface.to_owned(),
            link_quality,
            signal_dbm,
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIRELESS_HEADER: &str = "Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE\n face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22\n";

    #[test]
    fn loadavg_takes_the_three_averages() {
        assert_eq!(
            parse_loadavg("0.52 0.58 0.59 1/221 1342\n"),
            Ok(LoadAvg {
                one: 0.52,
                five: 0.58,
                fifteen: 0.59
            })
        );
    }

    #[test]
    fn loadavg_rejects_empty_short_garbage_negative_and_absurd_lines() {
        assert_eq!(parse_loadavg(""), Err(Reject::Empty));
        assert_eq!(parse_loadavg("0.52 0.58\n"), Err(Reject::Malformed));
        assert_eq!(parse_loadavg("0.52 x 0.59 1/1 1\n"), Err(Reject::Malformed));
        assert_eq!(parse_loadavg("inf 0 0 1/1 1"), Err(Reject::Malformed));
        assert_eq!(parse_loadavg("NaN 0 0 1/1 1"), Err(Reject::Malformed));
        assert_eq!(parse_loadavg("1.2.3 0 0 1/1 1"), Err(Reject::Malformed));
        assert_eq!(parse_loadavg("-0.5 0 0 1/1 1"), Err(Reject::OutOfRange));
        assert_eq!(parse_loadavg("99999.0 0 0 1/1 1"), Err(Reject::OutOfRange));
    }

    #[test]
    fn uptime_is_the_first_number() {
        assert_eq!(parse_uptime("351735.51 1395217.26\n"), Ok(351735.51));
        assert_eq!(parse_uptime("\n"), Err(Reject::Empty));
        assert_eq!(parse_uptime("up 3 days\n"), Err(Reject::Malformed));
        assert_eq!(parse_uptime("-5.00 1.00\n"), Err(Reject::OutOfRange));
        assert_eq!(
            parse_uptime("9999999999999.00 0\n"),
            Err(Reject::OutOfRange)
        );
    }

    #[test]
    fn meminfo_fields_are_kib_in_bytes() {
        let text = "MemTotal:        3882420 kB\nMemFree:         2734132 kB\nMemAvailable:    3391856 kB\nHugePages_Total:       0\n";
        assert_eq!(
            parse_meminfo(text),
            MemInfo {
                total: Ok(3882420 * 1024),
                available: Ok(3391856 * 1024)
            }
        );
        assert_eq!(
            meminfo_bytes(text, "HugePages_Total"),
            Err(Reject::Malformed)
        );
        assert_eq!(meminfo_bytes(text, "Mem"), Err(Reject::Missing));
    }

    #[test]
    fn meminfo_fields_fail_one_at_a_time() {
        // Before Linux 3.14 there is no MemAvailable.
        let old = "MemTotal:        3882420 kB\nMemFree:         2734132 kB\n";
        assert_eq!(
            parse_meminfo(old),
            MemInfo {
                total: Ok(3882420 * 1024),
                available: Err(Reject::Missing)
            }
        );
        let bad = "MemTotal:        lots kB\nMemAvailable:    -3 kB\n";
        assert_eq!(
            parse_meminfo(bad),
            MemInfo {
                total: Err(Reject::Malformed),
                available: Err(Reject::OutOfRange)
            }
        );
        let inverted = "MemTotal: 1000 kB\nMemAvailable: 2000 kB\n";
        assert_eq!(parse_meminfo(inverted).available, Err(Reject::OutOfRange));
        let absurd = "MemTotal: 99999999999999999999 kB\nMemAvailable: 0 kB\n";
        assert_eq!(parse_meminfo(absurd).total, Err(Reject::OutOfRange));
        assert_eq!(parse_meminfo(absurd).available, Ok(0));
        assert_eq!(
            parse_meminfo("MemTotal: 0 kB\n").total,
            Err(Reject::OutOfRange)
        );
        assert_eq!(
            parse_meminfo("MemTotal: 12 MB\n").total,
            Err(Reject::Malformed)
        );
        assert_eq!(parse_meminfo("").total, Err(Reject::Empty));
    }

    #[test]
    fn wireless_reads_quality_and_dbm_per_interface() {
        let text = format!(
            "{WIRELESS_HEADER} wlan0: 0000   61.  -49.  -256        0      0      0      0     29        0\n  wlp2s0: 0000   70.  -38.  -256        0      0      0      0      0        0\n"
        );
        let w = parse_wireless(&text).unwrap();
        assert_eq!(
            w,
            [
                Ok(Wireless {
                    interface: "wlan0".into(),
                    link_quality: Ok(61),
                    signal_dbm: Ok(Some(-49))
                }),
                Ok(Wireless {
                    interface: "wlp2s0".into(),
                    link_quality: Ok(70),
                    signal_dbm: Ok(Some(-38))
                })
            ]
        );
    }

    #[test]
    fn wireless_with_no_interface_is_no_entry() {
        assert_eq!(parse_wireless(WIRELESS_HEADER), Ok(vec![]));
    }

    #[test]
    fn wireless_level_not_measured_or_not_in_dbm() {
        let text = format!(
            "{WIRELESS_HEADER} wlan0: 0000    0   -256   -256        0      0      0      0      0        0\n wlan1: 0000   40.   216.     0        0      0      0      0      0        0\n wlan2: 0000  300.  -400.  -256        0      0      0      0      0        0\n"
        );
        let w = parse_wireless(&text).unwrap();
        let got: Vec<_> = w
            .into_iter()
            .map(|l| {
                let l = l.unwrap();
                (l.link_quality, l.signal_dbm)
            })
            .collect();
        assert_eq!(
            got,
            [
                (Ok(0), Ok(None)),
                (Ok(40), Err(Reject::NotDbm)),
                (Err(Reject::OutOfRange), Err(Reject::OutOfRange)),
            ]
        );
    }

    #[test]
    fn wireless_bad_lines_and_headers() {
        let text = format!("{WIRELESS_HEADER}garbage\n wlan0: 0000 abc. -40. -256\n : 1 2 3\n");
        let w = parse_wireless(&text).unwrap();
        assert_eq!(
            w[0],
            Err(BadLine {
                line: 3,
                reject: Reject::Malformed
            })
        );
        let second = w[1].as_ref().unwrap();
        assert_eq!(second.link_quality, Err(Reject::Malformed));
        assert_eq!(second.signal_dbm, Ok(Some(-40)));
        assert_eq!(
            w[2],
            Err(BadLine {
                line: 5,
                reject: Reject::Malformed
            })
        );
        assert_eq!(parse_wireless(""), Err(Reject::Empty));
        // An interface name with a control or reordering character is no name.
        for name in ["wl\u{1b}[2Jan0", "wlan\u{202e}0"] {
            let text = format!("{WIRELESS_HEADER} {name}: 0000 70. -40. -256\n");
            assert_eq!(
                parse_wireless(&text).unwrap()[0],
                Err(BadLine {
                    line: 3,
                    reject: Reject::Malformed
                }),
                "{name:?}"
            );
        }
        assert_eq!(
            parse_wireless("wlan0: 0000 70. -40. -256\n"),
            Err(Reject::Malformed)
        );
    }
}
