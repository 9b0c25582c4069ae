//! Figures a plugin instance shows on the host's metrics page (`[gateway] metrics`), beside the
//! host's own. They cross to the host as a log record of the target
//! [`crate::abi::METRICS_TARGET`] whose message is [`encode`]d families (no new ABI method:
//! plugins and hosts from before metrics existed load each other). In short: build a [`Metrics`] with the instance's counters, gauges and histograms, then
//! [`Metrics::publish`] it (again whenever the figures change; every few seconds is plenty).
//! The host adds the `instance` label, merges the families of every instance, and shows the
//! last set each instance published. Names should start with the plugin's domain
//! (`gateway_dtls_...`, `gateway_coap_...`) and follow Prometheus's conventions (`_total` for
//! counters, base units such as seconds and bytes).
//!
//! ```
//! use gateway_sdk::metrics::Metrics;
//! let mut m = Metrics::new();
//! m.counter("gateway_example_polls_total", "Polls of the sensor.", &[("result", "ok")], 41);
//! m.gauge("gateway_example_probes", "Probes found on the bus.", &[], 3.0);
//! m.histogram(
//!     "gateway_example_poll_seconds",
//!     "How long a poll took.",
//!     &[],
//!     &[(0.1, 30), (1.0, 41)],
//!     12.5,
//!     41,
//! );
//! m.publish("temp"); // in a plugin: the instance's name, `ctx.instance()`
//! ```

use crate::abi::{MetricFamily, MetricKind, MetricSample};
use abi_stable::std_types::{RString, RVec, Tuple2};

/// A set of metric families, built for one publication.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Metrics {
    families: Vec<MetricFamily>,
}

fn labels(pairs: &[(&str, &str)]) -> RVec<Tuple2<RString, RString>> {
    pairs
        .iter()
        .map(|(k, v)| Tuple2((*k).into(), (*v).into()))
        .collect()
}

impl Metrics {
    /// An empty set.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    fn family(&mut self, name: &str, help: &str, kind: MetricKind) -> &mut RVec<MetricSample> {
        let i = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(MetricFamily {
                    name: name.into(),
                    help: help.into(),
                    kind,
                    samples: RVec::new(),
                });
                self.families.len() - 1
            }
        };
        &mut self.families[i].samples
    }

    fn sample(
        &mut self,
        (name, help, kind): (&str, &str, MetricKind),
        suffix: &str,
        labels: RVec<Tuple2<RString, RString>>,
        value: f64,
    ) {
        self.family(name, help, kind).push(MetricSample {
            suffix: suffix.into(),
            labels,
            value,
        });
    }

    /// A counter's value for the labels `l` (samples of one name share its help).
    pub fn counter(&mut self, name: &str, help: &str, l: &[(&str, &str)], value: u64) -> &mut Self {
        self.sample(
            (name, help, MetricKind::Counter),
            "",
            labels(l),
            value as f64,
        );
        self
    }

    /// A gauge's value for the labels `l`.
    pub fn gauge(&mut self, name: &str, help: &str, l: &[(&str, &str)], value: f64) -> &mut Self {
        self.sample((name, help, MetricKind::Gauge), "", labels(l), value);
        self
    }

    /// A histogram for the labels `l`: `buckets` as (upper bound, observations at or below it,
    /// cumulative), then the sum and count of every observation (the `+Inf` bucket is
    /// `count`).
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        l: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) -> &mut Self {
        let family = (name, help, MetricKind::Histogram);
        let with_le = |le: String| {
            let mut all = labels(l);
            all.push(Tuple2("le".into(), le.into()));
            all
        };
        for (le, n) in buckets {
            self.sample(family, "_bucket", with_le(format!("{le}")), *n as f64);
        }
        self.sample(family, "_bucket", with_le("+Inf".into()), count as f64);
        self.sample(family, "_sum", labels(l), sum);
        self.sample(family, "_count", labels(l), count as f64);
        self
    }

    /// The families, as they cross to the host.
    pub fn families(&self) -> &[MetricFamily] {
        &self.families
    }

    /// Shows the set on the host's metrics page as `instance`'s, replacing what it showed
    /// before. Outside a host (unit tests) it does nothing.
    pub fn publish(&self, instance: &str) {
        crate::log::publish_metrics(instance, &self.families);
    }
}

/// Strips what the encoding uses as separators from free text (help, label values).
fn clean(s: &str) -> String {
    s.replace(['\t', '\n', '\x1e', '\x1f'], " ")
}

/// The families as the text that crosses to the host: a line `F<TAB>name<TAB>kind<TAB>help` per
/// family, then a line `S<TAB>suffix<TAB>value<TAB>labels` per sample, the labels as
/// `name<US>value` pairs each ended by `<RS>` (U+001F, U+001E). [`decode`] reads it back.
pub fn encode(families: &[MetricFamily]) -> String {
    encode_with(families, &|v| v.to_owned())
}

/// [`encode`], with each label value as `value` makes it (the library's secrets redacted).
pub(crate) fn encode_with(families: &[MetricFamily], value: &dyn Fn(&str) -> String) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for f in families {
        let kind = match f.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        };
        let _ = writeln!(out, "F\t{}\t{kind}\t{}", clean(&f.name), clean(&f.help));
        for s in &f.samples {
            let _ = write!(out, "S\t{}\t{}\t", clean(&s.suffix), s.value);
            for l in &s.labels {
                let _ = write!(out, "{}\x1f{}\x1e", clean(&l.0), clean(&value(&l.1)));
            }
            out.push('\n');
        }
    }
    out
}

/// Reads what [`encode`] wrote; lines it cannot read are skipped.
pub fn decode(text: &str) -> Vec<MetricFamily> {
    let mut families: Vec<MetricFamily> = Vec::new();
    for line in text.lines() {
        let mut parts = line.split('\t');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("F"), Some(name), Some(kind), Some(help)) => {
                let kind = match kind {
                    "counter" => MetricKind::Counter,
                    "gauge" => MetricKind::Gauge,
                    "histogram" => MetricKind::Histogram,
                    _ => continue,
                };
                families.push(MetricFamily {
                    name: name.into(),
                    help: help.into(),
                    kind,
                    samples: RVec::new(),
                });
            }
            (Some("S"), Some(suffix), Some(value), Some(labels)) => {
                let (Some(f), Ok(value)) = (families.last_mut(), value.parse::<f64>()) else {
                    continue;
                };
                let labels = labels
                    .split('\x1e')
                    .filter_map(|pair| pair.split_once('\x1f'))
                    .map(|(k, v)| Tuple2(k.into(), v.into()))
                    .collect();
                f.samples.push(MetricSample {
                    suffix: suffix.into(),
                    labels,
                    value,
                });
            }
            _ => {}
        }
    }
    families
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_cross_encoded_and_come_back_the_same() {
        let mut m = Metrics::new();
        m.counter(
            "a_total",
            "Help\twith\nodd bytes.",
            &[("k", "v\x1ex"), ("z", "")],
            7,
        )
        .gauge("b", "B.", &[], f64::INFINITY)
        .histogram(
            "c_seconds",
            "C.",
            &[("x", "y")],
            &[(0.5, 1), (1.0, 2)],
            1.25,
            3,
        );
        let back = decode(&encode(m.families()));
        assert_eq!(back.len(), 3);
        assert_eq!(back[0].help.as_str(), "Help with odd bytes.");
        assert_eq!(back[0].samples[0].labels[0].1.as_str(), "v x");
        assert_eq!(back[0].samples[0].labels[1].1.as_str(), "");
        assert_eq!(back[1].samples[0].value, f64::INFINITY);
        assert_eq!(back[2], m.families()[2]);
        assert_eq!(back[2].samples.len(), 5, "2 buckets, +Inf, sum and count");
        assert!(decode("garbage\nS\tno family\t1\t\n").is_empty());
    }
}
