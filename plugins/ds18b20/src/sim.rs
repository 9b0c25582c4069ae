//! Demo mode (`simulate = N`): writes `N` probes' `w1_slave` files under the configured root, as
//! the kernel driver would print them, with temperatures that drift and occasional faults (CRC
//! errors, the 85 °C power-on value, empty reads). The plugin then reads them through its real
//! parsing path. Nothing here runs unless `simulate` is set.

use crate::w1::{format_scratchpad, format_w1_slave};
use gateway_sdk::tracing;
use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Stops the simulator when dropped.
pub struct Simulator {
    stop: Arc<AtomicBool>,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The id of simulated probe `i`.
pub fn probe_id(i: u32) -> String {
    format!("28-5a1d{:08x}", i + 1)
}

/// Writes `path` atomically, so a reader never sees half a file.
fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

/// Starts writing `n` probes under `root`, refreshed every `every`.
pub fn start(root: &Path, n: u32, every: Duration) -> std::io::Result<Simulator> {
    let dirs: Vec<PathBuf> = (0..n).map(|i| root.join(probe_id(i))).collect();
    for d in &dirs {
        std::fs::create_dir_all(d)?;
        write_atomic(&d.join("w1_slave"), &format_w1_slave(20.0))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("w1-sim".into())
        .spawn(move || {
            let started = Instant::now();
            let mut rng = 0x2545_F491_4F6C_DD1Du64 ^ started.elapsed().subsec_nanos() as u64;
            let mut next = || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            while !flag.load(Ordering::SeqCst) {
                let t = started.elapsed().as_secs_f64();
                for (i, d) in dirs.iter().enumerate() {
                    let base = 18.0 + 2.5 * i as f64 + 3.0 * wave(t / 90.0 + i as f64);
                    let noise = (next() % 5) as f64 * 0.0625 - 0.125;
                    let text = match next() % 100 {
                        0..=2 => format_scratchpad([0xff; 9], false),
                        3 => format_scratchpad(
                            [0x50, 0x05, 0x4b, 0x46, 0x7f, 0xff, 0x0c, 0x10, 0],
                            true,
                        ),
                        4 => String::new(),
                        _ => format_w1_slave(base + noise),
                    };
                    if let Err(e) = write_atomic(&d.join("w1_slave"), &text) {
                        tracing::warn!(error = %e, "simulator cannot write");
                    }
                }
                let end = Instant::now() + every;
                while Instant::now() < end && !flag.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })?;
    tracing::info!(probes = n, root = %root.display(), "simulating DS18B20 probes (demo mode)");
    Ok(Simulator { stop })
}

/// A smooth wave in [-1, 1] with period 2π, close to `sin` (Bhaskara I's approximation, within
/// 0.002). The simulator needs no more, and using it keeps libm out of the plugin: `f64::sin`
/// would make every process that loads the library map libm (about 0.6 MB resident).
fn wave(x: f64) -> f64 {
    use std::f64::consts::PI;
    // No `%` or `floor`: both are libm calls on some targets.
    let tau = 2.0 * PI;
    let mut r = x - (x / tau) as i64 as f64 * tau;
    if r < 0.0 {
        r += tau;
    }
    let (y, sign) = if r < PI { (r, 1.0) } else { (r - PI, -1.0) };
    sign * 16.0 * y * (PI - y) / (5.0 * PI * PI - 4.0 * y * (PI - y))
}

#[cfg(test)]
mod wave_tests {
    #[test]
    fn wave_follows_sin() {
        for k in -2000..2000 {
            let x = k as f64 * 0.01;
            assert!((super::wave(x) - x.sin()).abs() < 0.002, "x = {x}");
        }
    }
}
