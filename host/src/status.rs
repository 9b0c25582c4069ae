//! `gateway status`: what a running gateway's metrics page says, for a person. It reads
//! `[gateway] metrics` from the config and asks that address; nothing is loaded or started.

use crate::metrics;
use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, time::Duration};

/// Samples by metric name, then by instance label.
type Samples = BTreeMap<String, BTreeMap<String, f64>>;

/// Parses the text exposition: `name{instance="x"} value` lines (other labels are ignored).
fn parse(text: &str) -> Samples {
    let mut out: Samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, instance) = match series.split_once('{') {
            Some((n, labels)) => (
                n,
                labels
                    .split_once("instance=\"")
                    .and_then(|(_, r)| r.split_once('"'))
                    .map_or("", |(i, _)| i),
            ),
            None => (series, ""),
        };
        out.entry(name.to_owned())
            .or_default()
            .insert(instance.to_owned(), value);
    }
    out
}

/// The report for the gateway at `addr`, and whether it is well: ready, and no sink in a
/// plugin call for the gateway's `[gateway] stall_warning` or longer (as its page says; zero:
/// not looked at).
pub fn report(addr: SocketAddr) -> Result<(String, bool), String> {
    let unreachable = |e: std::io::Error| {
        format!("cannot reach the gateway's metrics at {addr}: {e} (is `gateway run` running with this config?)")
    };
    let (code, text) = metrics::get(addr, "/metrics").map_err(unreachable)?;
    if code != 200 {
        return Err(format!("{addr}/metrics answered {code}"));
    }
    let (ready_code, _) = metrics::get(addr, "/readyz").map_err(unreachable)?;
    let ready = ready_code == 200;
    let m = parse(&text);
    let v = |name: &str, inst: &str| {
        m.get(name)
            .and_then(|s| s.get(inst))
            .copied()
            .unwrap_or(0.0)
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "gateway at {addr}: {}",
        if ready { "running" } else { "shutting down" }
    );
    // The clock: readings are stamped with it (a Pi has no real-time clock).
    match m.get("gateway_clock_synchronized").and_then(|s| s.get("")) {
        Some(s) if *s > 0.0 => {
            let _ = writeln!(out, "clock: synchronised");
        }
        Some(_) => {
            let _ = writeln!(
                out,
                "clock: not synchronised (no NTP yet): readings carry the system clock's time, which may be off; the log says of each step"
            );
        }
        None => {}
    }
    let instances = |name: &str| -> Vec<String> {
        m.get(name)
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default()
    };
    // Names as the page spells them, escaped for the terminal: whatever listens on the port
    // chooses them.
    let shown = |i: &str| gateway_sdk::text::one_line(i).into_owned();
    let _ = writeln!(out, "sources            readings     batches  restarts");
    for i in instances("gateway_source_readings_total") {
        let _ = writeln!(
            out,
            "  {:<16} {:>10} {:>10} {:>9}",
            shown(&i),
            v("gateway_source_readings_total", &i),
            v("gateway_source_batches_total", &i),
            v("gateway_source_restarts_total", &i)
        );
    }
    let _ = writeln!(
        out,
        "sinks               written     pending   retries  rejected  restarts  disk buffer"
    );
    let buffered = instances("gateway_buffer_readings");
    for i in instances("gateway_sink_written_total") {
        let buffer = if buffered.contains(&i) {
            let dropped = v("gateway_buffer_dropped_total", &i);
            let lost = v("gateway_buffer_lost_total", &i);
            format!(
                "{} readings, {} bytes, oldest {:.0} s{}{}",
                v("gateway_buffer_readings", &i),
                v("gateway_buffer_bytes", &i),
                v("gateway_buffer_oldest_age_seconds", &i),
                if dropped > 0.0 {
                    format!(", {dropped} dropped when full")
                } else {
                    String::new()
                },
                if lost > 0.0 {
                    format!(", {lost} lost to damage")
                } else {
                    String::new()
                }
            )
        } else {
            "none".to_owned()
        };
        let _ = writeln!(
            out,
            "  {:<16} {:>10} {:>10} {:>9} {:>9} {:>9}  {buffer}",
            shown(&i),
            v("gateway_sink_written_total", &i),
            v("gateway_sink_pending_readings", &i),
            v("gateway_sink_retries_total", &i),
            v("gateway_sink_rejected_total", &i),
            v("gateway_sink_restarts_total", &i)
        );
    }
    // The running gateway's: a reload does not change it, the file may have since. (A page
    // without it has no call lengths either.)
    let stall_warning = m
        .get("gateway_stall_warning_seconds")
        .and_then(|s| s.get(""))
        .map_or(Duration::ZERO, |s| {
            // Whatever the page says: this may not be the gateway's (1e300 panicked here).
            Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
        });
    let mut stalled = false;
    for (i, n) in m
        .get("gateway_sink_dead_letter_held_readings")
        .into_iter()
        .flatten()
    {
        if *n > 0.0 {
            stalled = true;
            let _ = writeln!(
                out,
                "stalled: sink {} holds {n:.0} refused readings its dead-letter directory has no room for (see `gateway dead-letters list`); the gateway's log says more",
                shown(i)
            );
        }
    }
    for (i, secs) in m.get("gateway_sink_call_seconds").into_iter().flatten() {
        if !stall_warning.is_zero() && *secs >= stall_warning.as_secs_f64() {
            stalled = true;
            let _ = writeln!(
                out,
                "stalled: sink {} has been in one plugin call for {secs:.0} s (stall_warning {stall_warning:?}); the gateway's log says more",
                shown(i)
            );
        }
    }
    Ok((out, ready && !stalled))
}

#[cfg(test)]
mod tests {
    use super::{parse, report};
    use std::io::{Read, Write};

    /// Whatever listens on the metrics port (the gateway may be down, and another local user
    /// may hold the port) writes the page: an absurd figure must not panic `status`, and a
    /// name must not write escape sequences to the terminal.
    #[test]
    fn a_hostile_page_neither_panics_status_nor_reaches_the_terminal_raw() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let page = "gateway_stall_warning_seconds 1e300\n\
            gateway_sink_written_total{instance=\"db\u{1b}]0;pwned\u{7}\u{202e}\"} 5\n\
            gateway_sink_call_seconds{instance=\"db\u{1b}]0;pwned\u{7}\u{202e}\"} 1e308\n\
            gateway_source_readings_total{instance=\"\u{1b}[2J\"} 1\n";
        std::thread::spawn(move || {
            for conn in listener.incoming().take(2) {
                let mut c = conn.unwrap();
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
            }
        });
        let (text, _well) = report(addr).unwrap();
        assert!(!text.contains(['\u{1b}', '\u{7}', '\u{202e}']), "{text}");
        assert!(text.contains("db\\u{1b}]0;pwned"), "{text}");
    }

    #[test]
    fn samples_are_read_by_name_and_instance() {
        let m = parse(
            "# HELP x y\n# TYPE x counter\nx{instance=\"a\"} 3\nx{instance=\"b\\\"q\"} 4\ngateway_ready 1\nbroken line\n",
        );
        assert_eq!(m["x"]["a"], 3.0);
        assert_eq!(m["gateway_ready"][""], 1.0);
        assert_eq!(m.len(), 2);
    }
}
