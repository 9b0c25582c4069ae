//! The subject template: literal tokens and `{device}`, `{sensor}`, `{name}`. No I/O.

use gateway_sdk::Reading;

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Device,
    Sensor,
    Name,
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template(Vec<Part>);

impl Template {
    /// Parses `t`; says what is wrong with it.
    pub fn parse(t: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = t;
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("{t:?}: a {{ without its }}"))?;
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            parts.push(match &rest[open + 1..open + close] {
                "device" => Part::Device,
                "sensor" => Part::Sensor,
                "name" => Part::Name,
                other => {
                    return Err(format!(
                        "{t:?}: {{{other}}} is not one of {{device}}, {{sensor}}, {{name}}"
                    ))
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        let literal_ok = parts.iter().all(|p| match p {
            Part::Text(s) => !s.contains(['*', '>', ' ', '\t', '}']) && !s.contains(".."),
            _ => true,
        });
        if t.is_empty() || !literal_ok || t.starts_with('.') || t.ends_with('.') {
            return Err(format!(
                "{t:?}: a subject to publish to has tokens separated by single dots and no wildcards (*, >) or spaces"
            ));
        }
        Ok(Template(parts))
    }

    /// The tokens that hold two values or more (`{device}-{sensor}`), each as its values
    /// joined by " and ": their text can make the same token of two readings (`pi` and
    /// `01-x`, `pi-01` and `x`).
    pub fn shared_tokens(&self) -> Vec<String> {
        let mut tokens: Vec<Vec<&str>> = vec![Vec::new()];
        for p in &self.0 {
            let value = match p {
                Part::Text(s) => {
                    for _ in s.matches('.') {
                        tokens.push(Vec::new());
                    }
                    continue;
                }
                Part::Device => "{device}",
                Part::Sensor => "{sensor}",
                Part::Name => "{name}",
            };
            tokens.last_mut().expect("one").push(value);
        }
        tokens
            .into_iter()
            .filter(|t| t.len() > 1)
            .map(|t| t.join(" and "))
            .collect()
    }

    /// The subject of reading `r`: each value one token, and two values never the same token:
    /// `.`, `*`, `>`, `%`, white space and control characters are percent-encoded (`pi.01` is
    /// `pi%2E01`, `Pi 01` is `Pi%2001`, so neither is `pi_01`'s); an empty value is `_`, and a
    /// value that is `_` is `%5F`. A `$` that would begin the subject is `%24`: subjects that
    /// begin with `$` are the system's (`$SYS`, `$JS.API`).
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
            };
            let first = out.is_empty();
            gateway_senml::push_token(&mut out, v, |c| {
                matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control()
            });
            // `$JS.API...`, `$SYS...` are the server's own subjects (device `$JS`, sensor
            // `API` would publish JetStream API requests). `%` is encoded too, so `%24` comes
            // from a `$` only.
            if first && out.starts_with('$') {
                out.replace_range(..1, "%24");
            }
        }
        out
    }
}

/// Whether `subject` is one of those `filter` names, by NATS's rules: tokens separated by
/// dots, `*` standing for one token, `>` (last) for one or more.
pub fn matches(filter: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for f in filter.split('.') {
        match (f, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (f, Some(s)) if f == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_sdk::{Label, ReadingId, Timestamp, Value};

    #[test]
    fn one_token_per_value() {
        let t = Template::parse("readings.{device}.{sensor}.{name}").unwrap();
        let r = Reading {
            id: ReadingId([0; 16]),
            time: Timestamp(0),
            device: Label::from("pi-01"),
            sensor: Label::from("a.b >*"),
            name: Label::from(""),
            unit: Label::from(""),
            value: Value::Float(1.0),
        };
        assert_eq!(t.render(&r), "readings.pi-01.a%2Eb%20%3E%2A._");
        // Devices whose names differ keep subjects of their own (before, all three were
        // `pi_01`'s, and a consumer took one device's readings for another's).
        let subject = |device: &str| {
            let mut r = r.clone();
            r.device = Label::from(device);
            r.name = Label::from("t");
            t.render(&r)
        };
        let names = ["pi_01", "pi.01", "pi 01", "pi%2E01", "_", ""];
        let subjects: std::collections::HashSet<_> = names.iter().map(|d| subject(d)).collect();
        assert_eq!(subjects.len(), names.len(), "{subjects:?}");
        for bad in ["", "a.*", "a.>", "a..b", ".a", "a b", "{dev}", "a.{device"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    /// Subjects that begin with `$` are the server's (`$SYS.`, `$JS.API.`): a reading must
    /// not publish there. Before, a value the template begins with could begin one.
    #[test]
    fn a_value_that_would_begin_the_subject_with_a_dollar_is_encoded() {
        let t = Template::parse("{device}.{sensor}.{name}").unwrap();
        let r = |device: &str, sensor: &str| Reading {
            id: ReadingId([0; 16]),
            time: Timestamp(0),
            device: Label::from(device),
            sensor: Label::from(sensor),
            name: Label::from("t"),
            unit: Label::from(""),
            value: Value::Float(1.0),
        };
        assert_eq!(t.render(&r("$SYS", "s")), "%24SYS.s.t");
        // Only at the start: elsewhere a `$` is a character like any other.
        assert_eq!(t.render(&r("pi$", "$s")), "pi$.$s.t");
        let t = Template::parse("readings.{device}").unwrap();
        assert_eq!(t.render(&r("$SYS", "s")), "readings.$SYS");
        // Still a subject of its own: `%` is encoded, so no other value renders `%24SYS`.
        let t = Template::parse("{device}").unwrap();
        assert_eq!(t.render(&r("%24SYS", "s")), "%2524SYS");
    }

    #[test]
    fn two_values_in_one_token_are_found() {
        let tokens = |t: &str| Template::parse(t).unwrap().shared_tokens();
        assert_eq!(
            tokens("r.{device}-{sensor}.{name}"),
            ["{device} and {sensor}"]
        );
        assert_eq!(tokens("r.{device}.{sensor}{name}"), ["{sensor} and {name}"]);
        assert!(tokens("readings.{device}.{sensor}.{name}").is_empty());
        assert!(tokens("r.d-{device}.s_{sensor}").is_empty());
    }

    #[test]
    fn filters_match_as_nats_matches_them() {
        for (filter, subject, yes) in [
            ("readings.>", "readings.pi.t.temperature", true),
            ("readings.>", "readings", false),
            ("readings.pi-01.>", "readings.pi-02.t.temperature", false),
            ("readings.*.t.*", "readings.pi.t.temperature", true),
            ("readings.*.t.*", "readings.pi.t.temperature.x", false),
            ("readings.*", "readings.pi.t", false),
            ("READINGS", "READINGS", true),
            ("readings.pi", "readings.pi%2E01", false),
        ] {
            assert_eq!(matches(filter, subject), yes, "{filter} {subject}");
        }
    }
}
