//! Parsing a plugin's config table, and serde helpers for the value types configs use.

use crate::{abi::InstanceInfo, error::PluginError};
use serde::de::DeserializeOwned;

/// Parses the plugin keys of an instance table into `T`.
///
/// Errors read like `gateway.toml:12: [sources.temp] unknown field `intervall`, expected one of
/// `interval`, `path``: the host keeps each key on its line of the original file.
pub fn parse<T: DeserializeOwned>(info: &InstanceInfo) -> Result<T, PluginError> {
    toml::from_str::<T>(&info.config_toml).map_err(|e| {
        let message = e.message().trim_end();
        match e.span() {
            Some(span) => {
                let line = info.config_toml[..span.start.min(info.config_toml.len())]
                    .matches('\n')
                    .count()
                    + 1;
                PluginError::config(format!(
                    "{}:{}: [{}] {}",
                    info.config_file, line, info.table, message
                ))
            }
            None => PluginError::config(format!(
                "{}: [{}] {}",
                info.config_file, info.table, message
            )),
        }
    })
}

/// An error about `key` of an instance's table (see [`crate::InitContext::config_error`]):
/// `FILE:LINE: [TABLE] KEY: MESSAGE`, or without the line when the key is not in the table.
pub fn key_error(info: &InstanceInfo, key: &str, message: impl std::fmt::Display) -> PluginError {
    match key_line(&info.config_toml, key) {
        Some(line) => PluginError::config(format!(
            "{}:{}: [{}] {}: {}",
            info.config_file, line, info.table, key, message
        )),
        None => PluginError::config(format!(
            "{}: [{}] {}: {}",
            info.config_file, info.table, key, message
        )),
    }
}

/// The 1-based line of `toml` on which the dotted `key` is written (a number picks an array
/// element), or `None` when the TOML does not parse or has no such key.
pub fn key_line(toml: &str, key: &str) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(toml).ok()?;
    let mut segments = key.split('.');
    let first = segments.next()?;
    let (mut span, mut value) = root
        .get_ref()
        .iter()
        .find(|(k, _)| k.get_ref() == first)
        .map(|(k, v)| (k.span(), v))?;
    for seg in segments {
        let next = match (value.get_ref(), seg.parse::<usize>()) {
            (DeValue::Array(a), Ok(i)) => a.get(i).map(|v| (v.span(), v)),
            (DeValue::Table(t), _) => t
                .iter()
                .find(|(k, _)| k.get_ref() == seg)
                .map(|(k, v)| (k.span(), v)),
            _ => None,
        };
        (span, value) = next?;
    }
    Some(toml[..span.start.min(toml.len())].matches('\n').count() + 1)
}

/// Whether `host` (a name or an address, IPv6 with or without brackets) is this machine's
/// loopback, where traffic without TLS does not leave the machine: a sink that sends a
/// password elsewhere without TLS says so in a warning.
pub fn is_loopback(host: &str) -> bool {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// `#[serde(with = "gateway_sdk::config::duration")]` for a `std::time::Duration` written as
/// `"5s"`, `"250ms"`, `"1h 30m"`.
pub mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Reads a human-readable duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    /// The longest duration taken: 100 years (of 365.25 days, as `"100y"` reads). Longer ones cannot be meant, and past them the
    /// arithmetic of deadlines (now + timeout, a timeout doubled) would overflow.
    pub const MAX: Duration = Duration::from_secs(100 * 31_557_600);

    /// Parses `"5s"`, `"250ms"`, `"1h 30m"`, at most [`MAX`]; the error says what was wrong and
    /// how to write it.
    pub fn parse(s: &str) -> Result<Duration, String> {
        let d = humantime::parse_duration(s).map_err(|e| {
            format!("invalid duration {s:?} ({e}); write it like \"5s\" or \"250ms\"")
        })?;
        if d > MAX {
            return Err(format!(
                "duration {s:?} is longer than 100 years; write a shorter one"
            ));
        }
        Ok(d)
    }

    /// `#[serde(default, with = "gateway_sdk::config::duration::option")]` for an
    /// `Option<Duration>`: absent is `None`.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};
        use std::time::Duration;

        /// Reads a human-readable duration.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let s = String::deserialize(d)?;
            super::parse(&s).map(Some).map_err(serde::de::Error::custom)
        }
        /// Writes a human-readable duration (nothing for `None`).
        pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }
    }
    /// Writes a human-readable duration.
    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }

    /// `#[serde(with = "gateway_sdk::config::duration::positive")]`: a duration as
    /// [`duration`](self) reads it, 0 refused. For a timeout: one of 0 fails every try.
    pub mod positive {
        use serde::{Deserializer, Serializer};
        use std::time::Duration;

        /// Reads a human-readable duration above 0.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
            let v = super::deserialize(d)?;
            if v.is_zero() {
                return Err(serde::de::Error::custom(
                    "a duration of 0 here would make every try fail; give one above 0, like \"10s\"",
                ));
            }
            Ok(v)
        }
        /// Writes a human-readable duration.
        pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
            super::serialize(v, s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::time::Duration;

    #[test]
    fn loopback_hosts_are_told_from_others() {
        for h in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.8.9.1",
            "::1",
            "[::1]",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "db.example",
            "10.0.0.1",
            "[fe80::1]",
            "localhost.example",
            "",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        #[serde(with = "duration")]
        interval: Duration,
    }

    fn info(toml: &str) -> InstanceInfo {
        InstanceInfo {
            instance: "temp".into(),
            device: "dev".into(),
            config_toml: toml.into(),
            config_file: "gateway.toml".into(),
            table: "sources.temp".into(),
            data_dir: "/tmp".into(),
        }
    }

    #[test]
    fn parses_durations() {
        let c: Cfg = parse(&info("interval = \"1m 5s\"\n")).unwrap();
        assert_eq!(c.interval, Duration::from_secs(65));
    }

    #[test]
    fn a_duration_past_a_century_is_refused_not_left_to_overflow() {
        let c: Cfg = parse(&info("interval = \"100y\"\n")).unwrap();
        assert_eq!(c.interval, duration::MAX);
        // humantime takes up to about 5.8e11 years; a deadline that far would overflow.
        let e = parse::<Cfg>(&info("interval = \"500000000000y\"\n")).unwrap_err();
        assert_eq!(e.kind, crate::ErrorKind::CONFIG);
        assert!(e.message().contains("longer than 100 years"), "{e}");
        assert!(parse::<Cfg>(&info("interval = \"101y\"\n")).is_err());
    }

    #[test]
    fn unknown_key_error_names_file_line_table_and_key() {
        let e = parse::<Cfg>(&info("\n\n\ninterval = \"1s\"\nintervall = \"5s\"\n")).unwrap_err();
        assert_eq!(e.kind, crate::ErrorKind::CONFIG);
        assert!(
            e.message()
                .starts_with("gateway.toml:5: [sources.temp] unknown field `intervall`"),
            "{e}"
        );
    }

    #[test]
    fn bad_duration_error_says_what_was_expected() {
        let e = parse::<Cfg>(&info("\ninterval = \"soon\"\n")).unwrap_err();
        assert!(
            e.message()
                .starts_with("gateway.toml:2: [sources.temp] invalid duration \"soon\""),
            "{e}"
        );
    }

    #[test]
    fn key_error_points_at_the_line_of_a_nested_key() {
        let toml =
            "\n\ninterval = \"1s\"\n[tls]\nca = \"x\"\n[[probes]]\nid = 1\n[[probes]]\nid = 2\n";
        assert_eq!(key_line(toml, "interval"), Some(3));
        assert_eq!(key_line(toml, "tls.ca"), Some(5));
        assert_eq!(key_line(toml, "probes.1.id"), Some(9));
        assert_eq!(key_line(toml, "tls.cert"), None);
        assert_eq!(key_line("not toml = = ", "x"), None);
        let e = key_error(&info(toml), "tls.ca", "no such file");
        assert_eq!(e.kind, crate::ErrorKind::CONFIG);
        assert_eq!(
            e.message(),
            "gateway.toml:5: [sources.temp] tls.ca: no such file"
        );
        let e = key_error(&info(toml), "window", "must be at least 1");
        assert_eq!(
            e.message(),
            "gateway.toml: [sources.temp] window: must be at least 1"
        );
    }

    #[test]
    fn missing_key_is_reported() {
        let e = parse::<Cfg>(&info("")).unwrap_err();
        assert!(e.message().contains("missing field `interval`"), "{e}");
    }
}
