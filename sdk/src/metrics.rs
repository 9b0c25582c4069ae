//! Figures a plugin instance shows on the host's metrics page (`[gateway] metrics`), beside the
//! host's own: build a [`Metrics`] with the instance's counters, gauges and histograms, then
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
use abi_stable::std_types::{RStr, RString, RVec, Tuple2};

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
        crate::log::publish_metrics(RStr::from_str(instance), self.families.clone().into());
    }
}
