//! The I/O: a serial port (reopened with backoff when it vanishes) or a replayed log, fed into
//! the [`Decoder`].

use crate::{config::Config, decoder::Decoder, epoch::Epoch, reader::ReaderStats, readings};
use gateway_sdk::{tracing, ErrorKind, PluginError, SourceContext, Timestamp};
use std::{
    io::Read,
    time::{Duration, Instant},
};

/// Hands epochs to the host and logs what the decoder dropped.
pub struct Output<'a> {
    ctx: &'a SourceContext,
    labels: readings::Labels,
    last_stats: ReaderStats,
    /// The counts of the ports closed before (each open starts a new decoder).
    earlier: ReaderStats,
    last_log: Instant,
    last_valid: Option<bool>,
    /// Epochs emitted.
    pub epochs: u64,
}

impl<'a> Output<'a> {
    /// Output for `ctx` with readings of sensor `sensor`.
    pub fn new(ctx: &'a SourceContext, sensor: &str) -> Self {
        Output {
            ctx,
            labels: readings::Labels::new(sensor),
            last_stats: ReaderStats::default(),
            earlier: ReaderStats::default(),
            last_log: Instant::now(),
            last_valid: None,
            epochs: 0,
        }
    }

    /// Emits one epoch as a batch. `Err` only when the host is stopping.
    pub fn epoch(&mut self, e: &Epoch) -> Result<(), PluginError> {
        let time = e.received.unwrap_or_else(Timestamp::now);
        let batch = readings::readings(self.ctx, &self.labels, e, time);
        self.epochs += 1;
        if self.last_valid != Some(e.has_fix()) {
            let fix = e.fix_kind().map(|f| f.name()).unwrap_or("unknown");
            tracing::info!(fix, satellites_in_view = ?e.satellites_in_view(), "GPS fix {}", if e.has_fix() { "acquired" } else { "lost" });
        }
        self.last_valid = Some(e.has_fix());
        let span = tracing::Span::current();
        let n = batch.len();
        self.ctx.emit_with(batch, move |r| {
            if let Err(e) = r {
                let _e = span.enter();
                tracing::warn!(readings = n, error = %e, "a sink did not take a fix");
            }
        })
    }

    /// The counts of the port now closed (`s`, its decoder's) go into the totals: a port
    /// opened again starts a decoder whose counts start from zero.
    pub fn closed(&mut self, s: &ReaderStats) {
        self.earlier = self.earlier.plus(s);
    }

    /// Logs the totals since the start (the ports closed before, and `s`: the counts of the
    /// decoder of the port open now) when something was dropped since the last time (at most
    /// once a minute, and always when `force`).
    pub fn stats(&mut self, s: &ReaderStats, force: bool) {
        let s = &self.earlier.plus(s);
        if *s == self.last_stats || (!force && self.last_log.elapsed() < Duration::from_secs(60)) {
            return;
        }
        if s.dropped() + s.garbage_bytes > self.last_stats.dropped() + self.last_stats.garbage_bytes
        {
            tracing::warn!(
                garbage_bytes = s.garbage_bytes,
                cut_lines = s.cut_lines,
                too_long = s.too_long,
                bad_bytes = s.bad_bytes,
                no_checksum = s.no_checksum,
                bad_checksum = s.bad_checksum,
                malformed = s.malformed,
                sentences = s.sentences,
                "NMEA input dropped (totals so far)"
            );
        }
        self.last_stats = s.clone();
        self.last_log = Instant::now();
    }
}

fn stopped(e: &PluginError) -> bool {
    e.kind == ErrorKind::STOPPED
}

/// Reads the serial port until the host stops; reopens it with backoff when it vanishes.
pub fn run_serial(cfg: &Config, ctx: &SourceContext) -> Result<(), PluginError> {
    let mut out = Output::new(ctx, &cfg.sensor);
    let mut backoff = cfg.reopen_backoff;
    // When the GPS's absence (it cannot be opened, or fails before it gives an epoch) was
    // last said at warn; `None` while it works. Said again hourly while it lasts, at debug in
    // between, so that neither a receiver gone for months leaves one line in a year's log nor
    // one in a reset loop (which prints its boot banner each time) floods it. Only an epoch
    // ends it, and only then does the reopening backoff start again from its first step.
    let mut absent: Option<Instant> = None;
    let port_name = cfg.port.to_string_lossy().into_owned();
    loop {
        if ctx.is_stopping() {
            return Ok(());
        }
        let port = serialport::new(&port_name, cfg.baud)
            .data_bits(serialport::DataBits::Eight)
            .parity(serialport::Parity::None)
            .stop_bits(serialport::StopBits::One)
            .timeout(Duration::from_millis(50))
            .open();
        let mut port = match port {
            Ok(p) => p,
            Err(e) => {
                if due(absent) {
                    tracing::warn!(port = %port_name, error = %e, "cannot open the GPS; retrying with backoff (said again hourly while it stays away)");
                    absent = Some(Instant::now());
                } else {
                    tracing::debug!(port = %port_name, error = %e, "GPS still not there");
                }
                if ctx.wait_stop(backoff) {
                    return Ok(());
                }
                backoff = (backoff * 2).min(cfg.reopen_backoff_max);
                continue;
            }
        };
        if absent.is_none() {
            tracing::info!(port = %port_name, baud = cfg.baud, "GPS opened");
        } else {
            tracing::debug!(port = %port_name, baud = cfg.baud, "GPS opened; waiting for an epoch");
        }
        let mut decoder = Decoder::default();
        let mut buf = [0u8; 1024];
        let mut last_byte = Instant::now();
        // When this open port's silence was last said.
        let mut silent: Option<Instant> = None;
        let mut zero_reads = 0;
        let gone = loop {
            if ctx.is_stopping() {
                return Ok(());
            }
            match port.read(&mut buf) {
                Ok(0) => {
                    // A tty that hung up reads 0 bytes at once, forever.
                    zero_reads += 1;
                    if zero_reads > 20 {
                        break "the device hung up".to_owned();
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(n) => {
                    zero_reads = 0;
                    last_byte = Instant::now();
                    if silent.take().is_some() {
                        tracing::info!(port = %port_name, "the GPS sends again");
                    }
                    for e in decoder.push_at(&buf[..n], Timestamp::now()) {
                        if absent.take().is_some() {
                            tracing::info!(port = %port_name, baud = cfg.baud, "GPS is back: reading it");
                        }
                        backoff = cfg.reopen_backoff;
                        if let Err(err) = out.epoch(&e) {
                            return if stopped(&err) { Ok(()) } else { Err(err) };
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break e.to_string(),
            }
            // Open but silent (a receiver that hung, the wrong port, a getty on the UART):
            // said after SILENT, then hourly; "sends again" when it does.
            if last_byte.elapsed() >= SILENT && due(silent) {
                tracing::warn!(port = %port_name, "the GPS has sent nothing for {:?} since it was opened or last sent (a receiver that hung needs a power cycle; is it the right port?); said again hourly while it stays silent", SILENT);
                silent = Some(Instant::now());
            }
            if last_byte.elapsed() >= cfg.epoch_gap {
                if let Some(e) = decoder.flush() {
                    if let Err(err) = out.epoch(&e) {
                        return if stopped(&err) { Ok(()) } else { Err(err) };
                    }
                }
            }
            out.stats(decoder.stats(), false);
        };
        // Closed before anything else: a receiver that comes back at once (a USB reset) gets
        // its old device name again only if nothing holds the old one open.
        drop(port);
        out.stats(decoder.stats(), true);
        out.closed(decoder.stats());
        if absent.is_none() {
            tracing::warn!(port = %port_name, reason = %gone, "GPS vanished; reopening with backoff");
            absent = Some(Instant::now());
        } else if due(absent) {
            tracing::warn!(port = %port_name, reason = %gone, "the GPS opens but fails before it gives an epoch; reopening with backoff (said again hourly while it does)");
            absent = Some(Instant::now());
        } else {
            tracing::debug!(port = %port_name, reason = %gone, "GPS failed again before it gave an epoch");
        }
        if let Some(e) = decoder.flush() {
            let _ = out.epoch(&e);
        }
        if ctx.wait_stop(backoff) {
            return Ok(());
        }
        backoff = (backoff * 2).min(cfg.reopen_backoff_max);
    }
}

/// How long an open GPS may send nothing before it is said.
const SILENT: Duration = Duration::from_secs(10);

/// Whether a problem last said at `said` is to be said again (hourly while it lasts).
fn due(said: Option<Instant>) -> bool {
    said.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600))
}

/// Replays a recorded log: one epoch per second (divided by `replay_speed`), optionally looping.
pub fn run_replay(cfg: &Config, ctx: &SourceContext) -> Result<(), PluginError> {
    let path = cfg.replay.as_ref().expect("replay set");
    let text = std::fs::read(path).map_err(|e| {
        PluginError::config(format!(
            "cannot read the replay log {}: {e}",
            path.display()
        ))
    })?;
    let mut out = Output::new(ctx, &cfg.sensor);
    let period = Duration::from_secs_f64(1.0 / cfg.replay_speed);
    tracing::info!(log = %path.display(), speed = cfg.replay_speed, "replaying a recorded NMEA log");
    loop {
        let mut decoder = Decoder::default();
        let mut next = Instant::now();
        for line in text.split_inclusive(|&b| b == b'\n') {
            if line.starts_with(b"#") {
                continue;
            }
            for e in decoder.push(line) {
                if ctx.wait_stop(next.saturating_duration_since(Instant::now())) {
                    return Ok(());
                }
                next = Instant::now() + period;
                if let Err(err) = out.epoch(&e) {
                    return if stopped(&err) { Ok(()) } else { Err(err) };
                }
            }
        }
        if let Some(e) = decoder.flush() {
            if ctx.wait_stop(next.saturating_duration_since(Instant::now())) {
                return Ok(());
            }
            if let Err(err) = out.epoch(&e) {
                return if stopped(&err) { Ok(()) } else { Err(err) };
            }
        }
        // A replay that loops says its totals at most once a minute, as a port does.
        out.stats(decoder.stats(), !cfg.replay_loop);
        out.closed(decoder.stats());
        if !cfg.replay_loop {
            tracing::info!(epochs = out.epochs, "replay finished");
            return Ok(());
        }
        if ctx.wait_stop(period) {
            return Ok(());
        }
    }
}
