//! The topic template: literal text and `{device}`, `{sensor}`, `{name}`, `{unit}`. No I/O.

use gateway_sdk::Reading;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Device,
    Sensor,
    Name,
    Unit,
}

impl Part {
    /// How the template writes it.
    fn name(&self) -> &str {
        match self {
            Part::Text(s) => s,
            Part::Device => "{device}",
            Part::Sensor => "{sensor}",
            Part::Name => "{name}",
            Part::Unit => "{unit}",
        }
    }
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template(Vec<Part>);

impl Template {
    /// Parses `t`; says what is wrong with it.
    pub fn parse(t: &str) -> Result<Template, String> {
        if t.is_empty() {
            return Err("the topic is empty".into());
        }
        let mut parts = Vec::new();
        let mut rest = t;
        while let Some(open) = rest.find('{') {
            let text = &rest[..open];
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("{t:?}: a {{ without its }}"));
            };
            let part = match &rest[open + 1..open + close] {
                "device" => Part::Device,
                "sensor" => Part::Sensor,
                "name" => Part::Name,
                "unit" => Part::Unit,
                other => {
                    return Err(format!(
                    "{t:?}: {{{other}}} is not one of {{device}}, {{sensor}}, {{name}}, {{unit}}"
                ))
                }
            };
            if !text.is_empty() {
                parts.push(Part::Text(text.to_owned()));
            }
            parts.push(part);
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        for p in &parts {
            if let Part::Text(s) = p {
                if s.contains(['+', '#', '\0', '}']) {
                    return Err(format!(
                        "{t:?}: a topic to publish to has no wildcards (+, #), NUL or stray }}"
                    ));
                }
            }
        }
        if t.starts_with('$') {
            return Err(format!("{t:?}: topics that begin with $ are the broker's"));
        }
        Ok(Template(parts))
    }

    /// The levels that hold two values or more (`{device}-{sensor}`), each as its values
    /// joined by " and ": their text can make the same level of two readings (`pi` and `01-x`,
    /// `pi-01` and `x`).
    pub fn shared_levels(&self) -> Vec<String> {
        let mut levels: Vec<Vec<&str>> = vec![Vec::new()];
        for p in &self.0 {
            match p {
                Part::Text(s) => {
                    for _ in s.matches('/') {
                        levels.push(Vec::new());
                    }
                }
                value => levels.last_mut().expect("one").push(value.name()),
            }
        }
        levels
            .into_iter()
            .filter(|l| l.len() > 1)
            .map(|l| l.join(" and "))
            .collect()
    }

    /// The topic of reading `r`. A value is one topic level whatever it holds, and two values
    /// never make the same level: `/`, `+`, `#`, `%` and the characters brokers refuse in a
    /// topic (control characters, Unicode non-characters) are percent-encoded (`a/b` is
    /// `a%2Fb`, so a sensor cannot publish under another level, and devices `a/b` and `a_b`
    /// keep topics of their own); an empty value is `_`, and a value that is `_` is `%5F`. A
    /// `$` that would begin the topic is `%24`: topics that begin with `$` are the broker's.
    pub fn render(&self, r: &Reading) -> String {
        let mut out = String::new();
        for p in &self.0 {
            let v = match p {
                Part::Text(s) => {
                    out.push_str(s);
                    continue;
                }
                Part::Device => r.device.as_str(),
                Part::Sensor => r.sensor.as_str(),
                Part::Name => r.name.as_str(),
                Part::Unit => r.unit.as_str(),
            };
            let first = out.is_empty();
            gateway_senml::push_token(&mut out, v, |c| matches!(c, '/' | '+' | '#') || refused(c));
            // `$SYS/...`: no `#` subscriber gets it, and brokers may refuse it. (`%` is
            // encoded too, so `%24` comes from a `$` only.)
            if first && out.starts_with('$') {
                out.replace_range(..1, "%24");
            }
        }
        out
    }
}

/// Characters a broker refuses in a topic: Mosquitto drops the connection of a client that
/// publishes one (control characters, MQTT 3.1.1 1.5.3; and the Unicode non-characters),
/// which the sink would take for a broken link and retry for good.
fn refused(c: char) -> bool {
    c.is_control() || ('\u{fdd0}'..='\u{fdef}').contains(&c) || (c as u32 & 0xfffe) == 0xfffe
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_sdk::{Label, ReadingId, Timestamp, Value};

    fn reading(device: &str, sensor: &str) -> Reading {
        Reading {
            id: ReadingId([0; 16]),
            time: Timestamp(0),
            device: Label::from(device),
            sensor: Label::from(sensor),
            name: Label::from("temperature"),
            unit: Label::from(""),
            value: Value::Float(1.0),
        }
    }

    #[test]
    fn fills_the_levels_and_keeps_each_value_in_its_own() {
        let t = Template::parse("gateway/{device}/{sensor}/{name}").unwrap();
        assert_eq!(
            t.render(&reading("pi-01", "28-01")),
            "gateway/pi-01/28-01/temperature"
        );
        assert_eq!(
            t.render(&reading("pi-01", "../pi-02/#")),
            "gateway/pi-01/..%2Fpi-02%2F%23/temperature"
        );
        assert_eq!(
            t.render(&reading(
                "pi\0-01",
                "a\tb\u{7f}\u{9b}\u{fdd0}\u{fffe}\u{1ffff}é"
            )),
            "gateway/pi%00-01/a%09b%7F%C2%9B%EF%B7%90%EF%BF%BE%F0%9F%BF%BFé/temperature",
            "what a broker refuses in a topic"
        );
        // Devices whose names differ keep topics of their own (before, `a/b` and `a_b` were
        // one topic, and with `retain` one device's last value replaced the other's).
        let names = ["a_b", "a/b", "a+b", "a#b", "a%2Fb", "_", ""];
        let topics: std::collections::HashSet<_> =
            names.iter().map(|d| t.render(&reading(d, "s"))).collect();
        assert_eq!(topics.len(), names.len(), "{topics:?}");
        let t = Template::parse("{device}-{name}[{unit}]").unwrap();
        assert_eq!(t.render(&reading("pi", "s")), "pi-temperature[_]");
    }

    /// Topics that begin with `$` are the broker's (`$SYS/...`): a `#` subscriber never gets
    /// them, and brokers may refuse them. The template may not begin with one; before, a value
    /// the template begins with could.
    #[test]
    fn a_value_that_would_begin_the_topic_with_a_dollar_is_encoded() {
        let t = Template::parse("{device}/{sensor}/{name}").unwrap();
        assert_eq!(t.render(&reading("$SYS", "s")), "%24SYS/s/temperature");
        // Only at the start: elsewhere a `$` is a character like any other.
        assert_eq!(t.render(&reading("pi$", "$s")), "pi$/$s/temperature");
        let t = Template::parse("gw/{device}").unwrap();
        assert_eq!(t.render(&reading("$SYS", "s")), "gw/$SYS");
        // Still a topic of its own: `%` is encoded, so no other value renders `%24SYS`.
        let t = Template::parse("{device}").unwrap();
        assert_eq!(t.render(&reading("%24SYS", "s")), "%2524SYS");
    }

    #[test]
    fn two_values_in_one_level_are_found() {
        let levels = |t: &str| Template::parse(t).unwrap().shared_levels();
        assert_eq!(
            levels("{device}-{name}[{unit}]"),
            ["{device} and {name} and {unit}"]
        );
        assert_eq!(
            levels("gw/{device}{sensor}/x-{name}.{unit}"),
            ["{device} and {sensor}", "{name} and {unit}"]
        );
        for one_each in [
            "gateway/{device}/{sensor}/{name}",
            "d-{device}/s_{sensor}",
            "x",
        ] {
            assert!(levels(one_each).is_empty(), "{one_each}");
        }
        // The reason: two readings of different devices, one topic.
        let t = Template::parse("{device}-{sensor}").unwrap();
        assert_eq!(
            t.render(&reading("pi", "01-x")),
            t.render(&reading("pi-01", "x"))
        );
    }

    #[test]
    fn refuses_what_cannot_be_published_to() {
        for bad in [
            "",
            "a/+/b",
            "a/#",
            "{devices}/x",
            "{device",
            "$SYS/{device}",
            "a}b",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
