//! `internal`: a source built into the host that emits the gateway's own figures as readings,
//! every `interval` (60 s by default), so that they travel with the data (through a Pi's uplink
//! to the server, into the database beside the temperatures). What the metrics page shows:
//!
//! - the host (sensor `host`): `clock_synchronized` (1 or 0, [`crate::clock`]; left out where
//!   the kernel does not say);
//! - per source (sensor `source:NAME`): `readings`, `restarts`;
//! - per sink (`sink:NAME`): `written`, `pending`, `retries`, `rejected`, `restarts`;
//! - per disk buffer (`buffer:NAME`): `readings`, `bytes` (By), `oldest_age` (s);
//! - what plugin instances publish (sensor NAME, the instance): each counter and gauge sample,
//!   named after the metric without its `gateway_` prefix, with its label values after dots
//!   (`dtls_sessions`, `dtls_handshakes_total.failed.certificate`); histograms as their
//!   `_count` and `_sum`.
//!
//! It reads the run's figures through [`install`]d views; outside a run (`gateway check`) it
//! builds, and has nothing to emit.

use crate::{plugin_metrics::PluginMetrics, stats::Views};
use gateway_sdk::{
    abi::MetricKind, config::duration, InitContext, Label, PluginError, Reading, Source,
    SourceContext,
};
use serde::Deserialize;
use std::{
    sync::{atomic::Ordering, Arc, OnceLock},
    time::{Duration, Instant},
};

/// What the running graph shows: set once by the run.
static RUN: OnceLock<(Views, Arc<PluginMetrics>)> = OnceLock::new();

/// Lets `internal` sources read the run's figures.
pub fn install(views: Views, plugins: Arc<PluginMetrics>) {
    let _ = RUN.set((views, plugins));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// How often the figures are emitted.
    #[serde(default = "default_interval", with = "duration")]
    interval: Duration,
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}

/// The source.
pub struct Internal {
    interval: Duration,
}

impl Source for Internal {
    const ID: &'static str = "internal";
    const DESCRIPTION: &'static str =
        "built in: the gateway's own figures (queues, buffers, retries, link) as readings";

    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        let cfg: Config = ctx.parse_config()?;
        if cfg.interval.is_zero() {
            return Err(PluginError::config(format!(
                "{}: [{}] interval: must be more than 0s",
                ctx.info().config_file,
                ctx.info().table
            )));
        }
        Ok(Internal {
            interval: cfg.interval,
        })
    }

    fn run(&mut self, ctx: &SourceContext) -> Result<(), PluginError> {
        let mut next = Instant::now() + self.interval;
        loop {
            if ctx.wait_stop(next.saturating_duration_since(Instant::now())) {
                return Ok(());
            }
            next += self.interval;
            let batch = figures(ctx);
            if batch.is_empty() {
                continue;
            }
            // Not waited for: a sink that cannot write now must not hold this source (nor a
            // shutdown) up; the next round has the figures again.
            let n = batch.len();
            let sent = ctx.emit_with(batch, move |outcome| {
                if let Err(e) = outcome {
                    tracing::warn!(readings = n, error = %e, "a sink did not take the gateway's figures");
                }
            });
            match sent {
                Ok(()) => {}
                Err(e) if e.kind == gateway_sdk::ErrorKind::STOPPED => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Every figure now, as readings.
fn figures(ctx: &SourceContext) -> Vec<Reading> {
    let Some((views, plugins)) = RUN.get() else {
        return Vec::new();
    };
    let now = views.get();
    let mut out = Vec::new();
    let mut add = |sensor: &str, name: &str, unit: &str, v: f64| {
        out.push(ctx.reading(
            &Label::from(sensor),
            &Label::from(name),
            &Label::from(unit),
            v,
        ));
    };
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as f64;
    if let Some(synced) = crate::clock::synchronized() {
        add(
            "host",
            "clock_synchronized",
            "",
            f64::from(u8::from(synced)),
        );
    }
    for (name, s) in &now.sources {
        let sensor = format!("source:{name}");
        add(&sensor, "readings", "", get(&s.readings));
        add(&sensor, "restarts", "", get(&s.restarts));
    }
    for k in &now.sinks {
        let sensor = format!("sink:{}", k.name);
        let s = &k.stats;
        add(&sensor, "written", "", get(&s.written));
        add(&sensor, "pending", "", k.pending() as f64);
        add(&sensor, "retries", "", get(&s.retries));
        add(&sensor, "rejected", "", get(&s.rejected));
        add(&sensor, "restarts", "", get(&s.restarts));
        if let Some(b) = &k.buffer {
            let sensor = format!("buffer:{}", k.name);
            add(&sensor, "readings", "", b.pending() as f64);
            add(&sensor, "bytes", "By", b.bytes() as f64);
            let age = b.oldest_age().map_or(0.0, |d| d.as_secs_f64());
            add(&sensor, "oldest_age", "s", age);
        }
    }
    for (instance, families) in plugins.snapshot() {
        for f in families {
            let base = f.name.as_str().trim_start_matches("gateway_");
            for s in &f.samples {
                let keep = match f.kind {
                    MetricKind::Histogram => matches!(s.suffix.as_str(), "_count" | "_sum"),
                    _ => s.suffix.is_empty(),
                };
                if !keep {
                    continue;
                }
                let mut name = format!("{base}{}", s.suffix);
                for pair in &s.labels {
                    name.push('.');
                    name.push_str(pair.1.as_str());
                }
                add(&instance, &name, "", s.value);
            }
        }
    }
    out
}
