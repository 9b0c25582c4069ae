//! `--mode observe`: one device POSTs a reading at a time, its value the POST's number, while
//! every other device observes that sensor (`GET /PATH/PREFIX-0/load` with `Observe: 0`, SenML
//! CBOR). Prints notifications/s, the latency from each POST going out to each of its
//! notifications arriving (p50, p99), and what never arrived.

use crate::{
    device::{Device, Outcome},
    Cli,
};
use gateway_dtls::client::Config;
use gateway_sdk::{Timestamp, Value};
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::{mpsc, watch};

/// How long observers listen after the last POST: a state that waits behind an unacknowledged
/// CON notification goes at its retransmission (ACK_TIMEOUT 2 s, up to 3 with its random
/// factor), so a lost CON delays the last state by that much.
const GRACE: Duration = Duration::from_secs(4);

/// What an observer saw.
#[derive(Default)]
struct Seen {
    /// Notifications of a POST of the window, and their latency, µs.
    latencies: Vec<u32>,
    /// Notifications whose value was no POST of ours (or did not decode).
    strange: u64,
    /// Whether the server registered it.
    registered: bool,
    /// The newest POST number it was told of.
    newest: Option<usize>,
}

/// Runs the mode; `false` if something failed (an observer not registered, a POST refused).
pub async fn run(cli: Arc<Cli>, server: SocketAddr, cfgs: Vec<Config>) -> bool {
    let observers = cfgs.len() - 1;
    let poster_name = format!("{}-0", cli.prefix);
    let mut cfgs = cfgs.into_iter();
    let Some(mut poster) = device(
        &cli,
        server,
        cfgs.next().expect("two devices"),
        &poster_name,
    ) else {
        return false;
    };
    // The resource must hold a reading before anyone can observe it.
    if !matches!(poster.post_values(|_| -1.0).await, Outcome::Stored) {
        println!("observe: the first POST of {poster_name} was not stored");
        return false;
    }
    // When each POST of the window went out, by its number.
    let sent: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let (stop_tx, stop_rx) = watch::channel(None::<Instant>);
    let (reg_tx, mut reg_rx) = mpsc::unbounded_channel();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    for (i, cfg) in cfgs.enumerate() {
        let name = format!("{}-{}", cli.prefix, i + 1);
        let (cli, sent, poster_name) = (cli.clone(), sent.clone(), poster_name.clone());
        let (reg_tx, done_tx, mut stop) = (reg_tx.clone(), done_tx.clone(), stop_rx.clone());
        let delay = match cli.connect_rate {
            0 => Duration::ZERO,
            r => Duration::from_secs_f64(i as f64 / f64::from(r)),
        };
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Some(mut dev) = device(&cli, server, cfg, &name) else {
                let _ = reg_tx.send(false);
                return;
            };
            let registered = matches!(dev.observe(&poster_name).await, Outcome::Stored);
            let _ = reg_tx.send(registered);
            let mut seen = Seen {
                registered,
                ..Seen::default()
            };
            if registered {
                let _ = stop.wait_for(Option::is_some).await;
                let until = stop.borrow().expect("set");
                while let Some((at, p)) = dev.notification(until).await {
                    match number(&p.payload, &poster_name) {
                        Some(k) => match sent.lock().expect("sent").get(k) {
                            Some(t) => {
                                seen.newest = seen.newest.max(Some(k));
                                seen.latencies.push(
                                    at.saturating_duration_since(*t)
                                        .as_micros()
                                        .min(u128::from(u32::MAX))
                                        as u32,
                                );
                            }
                            None => seen.strange += 1,
                        },
                        None => seen.strange += 1,
                    }
                }
            }
            dev.close().await;
            let _ = done_tx.send(seen);
        });
    }
    drop((reg_tx, done_tx));
    let mut registered = 0;
    for _ in 0..observers {
        if reg_rx.recv().await == Some(true) {
            registered += 1;
        }
    }
    println!(
        "connect: {registered} of {observers} observers registered in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    // The window: POSTs one at a time; then the observers listen a while longer.
    let begin = Instant::now();
    let end = begin + cli.duration;
    let _ = stop_tx.send(Some(end + GRACE));
    let (mut posts, mut refused) = (0usize, 0u64);
    while Instant::now() < end {
        let k = posts;
        sent.lock().expect("sent").push(Instant::now());
        match poster.post_values(|_| k as f64).await {
            Outcome::Stored => {}
            _ => refused += 1,
        }
        posts += 1;
    }
    let window = begin.elapsed();
    poster.close().await;
    let mut all = Seen::default();
    // Registered observers that got no notification at all, and those that were not told of
    // the last POST (the state they were left with is not the newest).
    let (mut silent, mut behind) = (0, 0);
    while let Some(s) = done_rx.recv().await {
        if s.registered && s.latencies.is_empty() {
            silent += 1;
        }
        if s.registered && posts > 0 && s.newest != Some(posts - 1) {
            behind += 1;
        }
        all.latencies.extend(s.latencies);
        all.strange += s.strange;
    }
    all.latencies.sort_unstable();
    let got = all.latencies.len() as u64;
    let expected = (posts * registered) as u64;
    let q = |f: f64| {
        let l = &all.latencies;
        if l.is_empty() {
            0.0
        } else {
            f64::from(l[((l.len() - 1) as f64 * f).round() as usize]) / 1000.0
        }
    };
    let secs = window.as_secs_f64().max(1e-9);
    println!(
        "observe: {posts} POSTs in {secs:.1} s ({:.0}/s, {refused} not stored); {got} notifications of {expected} states ({:.1} %: a state superseded while a CON notification awaits its ACK is not sent), {:.0} notifications/s; {} of {registered} observers were told of the last POST",
        posts as f64 / secs,
        100.0 * got as f64 / (expected.max(1)) as f64,
        got as f64 / secs,
        registered - behind
    );
    println!(
        "latency from POST to notification: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0)
    );
    println!(
        "result mode=observe observers={registered} posts={posts} notifications={got} expected={expected} per_s={:.1} p50_ms={:.3} p99_ms={:.3} strange={} silent={silent} behind={behind} refused={refused}",
        got as f64 / secs,
        q(0.5),
        q(0.99),
        all.strange
    );
    if silent > 0 {
        println!("observe: {silent} registered observers got no notification");
    }
    if behind > 0 {
        println!("observe: {behind} observers were never told of the last POST");
    }
    registered == observers && refused == 0 && silent == 0 && behind == 0
}

/// A device, or `None` (said) if its DTLS settings do not load.
fn device(cli: &Cli, server: SocketAddr, cfg: Config, name: &str) -> Option<Device> {
    match gateway_dtls::client_context(&cfg.tls) {
        Ok(ctx) => Some(Device::new(
            cfg,
            ctx,
            server,
            name,
            1,
            &cli.path,
            cli.timeout,
        )),
        Err(e) => {
            println!("{name}: {e}");
            None
        }
    }
}

/// The POST number a notification carries: its reading's value.
fn number(payload: &[u8], device: &str) -> Option<usize> {
    let pack = gateway_senml::decode_cbor(payload, 64, Timestamp::now(), device).ok()?;
    match pack.readings.first()?.value {
        Value::Float(v) if v >= 0.0 => Some(v as usize),
        _ => None,
    }
}
