//! Benchmark: one round over 100 simulated probes whose reads block 750 ms like a 12-bit
//! conversion (FIFOs served by a child process, so that only the reading side is measured).
//! Prints wall time and the plugin's CPU time per round.
//!
//! `cargo run --release -p gateway-plugin-ds18b20 --example probes_bench [PROBES] [ROUNDS]`

use gateway_test_support::w1 as common;

use ds18b20::{bus::Bus, config::Config, w1::format_w1_slave};
use std::time::{Duration, Instant};

fn cpu_time() -> Duration {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        let (root, n): (&str, usize) = (&args[2], args[3].parse().unwrap());
        let tree = common::FifoTree::new(std::path::Path::new(root));
        for i in 0..n {
            tree.probe(
                &format!("28-00000000{i:04x}"),
                common::Behaviour::Answers {
                    delay: Duration::from_millis(750),
                    texts: vec![format_w1_slave(20.0 + (i % 16) as f64 / 16.0)],
                },
            );
        }
        std::fs::write(std::path::Path::new(root).join("ready"), "").unwrap();
        std::thread::sleep(Duration::from_secs(3600));
        return;
    }
    let probes: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap().to_owned();
    let mut server = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--serve", &root, &probes.to_string()])
        .spawn()
        .unwrap();
    while !dir.path().join("ready").exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let cfg: Config = toml::from_str(&format!("root = {root:?}\nread_timeout = \"5s\"")).unwrap();
    let mut bus = Bus::new(&cfg);
    println!("ds18b20: {probes} probes, reads blocking 750 ms each (a 12-bit conversion), {rounds} rounds");
    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    for _ in 0..rounds {
        let (t0, c0) = (Instant::now(), cpu_time());
        let got = bus.round().len();
        let (wall, cpu) = (t0.elapsed(), cpu_time() - c0);
        assert_eq!(got, probes, "every probe read");
        walls.push(wall);
        cpus.push(cpu);
    }
    let _ = server.kill();
    let _ = server.wait();
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let max_wall = walls.iter().map(ms).fold(0.0, f64::max);
    let avg_wall = walls.iter().map(ms).sum::<f64>() / rounds as f64;
    let avg_cpu = cpus.iter().map(ms).sum::<f64>() / rounds as f64;
    println!(
        "   wall per round: mean {avg_wall:.0} ms, max {max_wall:.0} ms (target: under 1000 ms)"
    );
    println!(
        "   plugin CPU time per round: mean {avg_cpu:.1} ms ({:.2} ms per probe)",
        avg_cpu / probes as f64
    );
}
