//! Counting outcomes and printing them.

use crate::device::Outcome;
use std::{collections::BTreeMap, time::Duration};

/// What some devices did.
#[derive(Default)]
pub struct Tally {
    /// 2.xx answers.
    pub ok: u64,
    refused: BTreeMap<String, u64>,
    timeouts: u64,
    handshake_failures: u64,
    failed: u64,
    /// Pauses a server asked for (Max-Age of a 5.03 or 4.29), and their sum.
    waits: u64,
    waited: Duration,
    /// The first few error messages, to show what went wrong.
    errors: Vec<String>,
    /// Latency of every finished request, µs.
    latencies: Vec<u32>,
    /// The measurement window.
    pub window: Duration,
    /// Readings per request.
    pub readings_per_request: usize,
    /// The mode's name.
    pub mode: String,
    /// Devices.
    pub devices: usize,
    /// How the devices' first requests went.
    pub connect: Option<Box<Tally>>,
}

impl Tally {
    /// Counts one request that took `took`.
    pub fn add(&mut self, o: &Outcome, took: Duration) {
        let mut note = |what: String| {
            if self.errors.len() < 5 && !self.errors.contains(&what) {
                self.errors.push(what);
            }
        };
        match o {
            Outcome::Stored => {
                self.ok += 1;
                self.latencies
                    .push(took.as_micros().min(u128::from(u32::MAX)) as u32);
            }
            Outcome::Refused(code, why) => {
                note(format!("answered {code} {why}"));
                *self.refused.entry(code.clone()).or_default() += 1;
            }
            Outcome::Timeout => self.timeouts += 1,
            Outcome::Handshake(e) => {
                note(format!("handshake: {e}"));
                self.handshake_failures += 1;
            }
            Outcome::Failed(e) => {
                note(e.clone());
                self.failed += 1;
            }
        }
    }

    /// Counts a pause of `d` the server asked for.
    pub fn waited(&mut self, d: Duration) {
        self.waits += 1;
        self.waited += d;
    }

    /// Adds another device's tally.
    pub fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.waits += other.waits;
        self.waited += other.waited;
        for (k, v) in other.refused {
            *self.refused.entry(k).or_default() += v;
        }
        self.timeouts += other.timeouts;
        self.handshake_failures += other.handshake_failures;
        self.failed += other.failed;
        for e in other.errors {
            if self.errors.len() < 5 && !self.errors.contains(&e) {
                self.errors.push(e);
            }
        }
        self.latencies.extend(other.latencies);
    }

    fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }

    fn failures(&self) -> u64 {
        self.refused_total() + self.timeouts + self.handshake_failures + self.failed
    }

    /// The `q` quantile of the latencies, ms.
    fn quantile(sorted: &[u32], q: f64) -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let i = ((sorted.len() - 1) as f64 * q).round() as usize;
        f64::from(sorted[i]) / 1000.0
    }

    fn failure_line(&self) -> String {
        let refused: Vec<String> = self
            .refused
            .iter()
            .map(|(c, n)| format!("{n} × {c}"))
            .collect();
        let waits = match self.waits {
            0 => String::new(),
            n => format!(
                "; paused {n} times as the server asked (Max-Age), {:.1} s in all",
                self.waited.as_secs_f64()
            ),
        };
        format!(
            "{} timeouts, {} handshake failures, {} refused{}, {} other{waits}",
            self.timeouts,
            self.handshake_failures,
            self.refused_total(),
            if refused.is_empty() {
                String::new()
            } else {
                format!(" ({})", refused.join(", "))
            },
            self.failed
        )
    }

    /// Prints the figures and the `result` line; `true` if nothing failed.
    pub fn print(mut self) -> bool {
        let connect_failures = self.connect.as_ref().map_or(0, |c| c.failures());
        self.latencies.sort_unstable();
        let secs = self.window.as_secs_f64().max(1e-9);
        let per_s = self.ok as f64 / secs;
        let l = &self.latencies;
        let (p50, p90, p99, max) = (
            Self::quantile(l, 0.5),
            Self::quantile(l, 0.9),
            Self::quantile(l, 0.99),
            Self::quantile(l, 1.0),
        );
        if self.mode == "handshakes" {
            println!(
                "handshakes: {} full handshakes (each + 1 POST + close) in {secs:.1} s = {per_s:.0}/s",
                self.ok
            );
        } else if self.mode == "requests" {
            println!(
                "requests: {} in {secs:.1} s = {per_s:.0} req/s, {:.0} readings/s",
                self.ok,
                per_s * self.readings_per_request as f64
            );
        }
        if self.mode != "idle" {
            println!("latency: p50 {p50:.3} ms, p90 {p90:.3} ms, p99 {p99:.3} ms, max {max:.3} ms");
            println!("failures: {}", self.failure_line());
        }
        let mut errors = self.errors.clone();
        if let Some(c) = &self.connect {
            errors.extend(
                c.errors
                    .iter()
                    .filter(|e| !self.errors.contains(e))
                    .cloned(),
            );
        }
        for e in errors.iter().take(5) {
            println!("  e.g. {e}");
        }
        println!(
            "result mode={} devices={} readings={} ok={} per_s={per_s:.1} readings_per_s={:.1} p50_ms={p50:.3} p90_ms={p90:.3} p99_ms={p99:.3} timeouts={} handshake_failures={} refused={} failed={} connect_failures={connect_failures} waits={}",
            self.mode,
            self.devices,
            self.readings_per_request,
            self.ok,
            per_s * self.readings_per_request as f64,
            self.timeouts,
            self.handshake_failures,
            self.refused_total(),
            self.failed,
            self.waits,
        );
        self.failures() == 0 && connect_failures == 0
    }
}

/// Prints how connecting went.
pub fn connected(c: &Tally, took: Duration) {
    let mut l = c.latencies.clone();
    l.sort_unstable();
    println!(
        "connect: {} of {} devices connected in {:.2} s (first request p50 {:.1} ms, max {:.1} ms); {}",
        c.ok,
        c.ok + c.failures(),
        took.as_secs_f64(),
        Tally::quantile(&l, 0.5),
        Tally::quantile(&l, 1.0),
        c.failure_line()
    );
}
