//! `gateway-load`: a load generator for CoAP-over-DTLS servers (`coaps-ingress`, libcoap's
//! `coap-server-openssl`, anyone's). Many simulated devices, each with its own UDP socket and
//! DTLS session and one confirmable POST of SenML CBOR readings in flight, on a few threads.
//! It prints requests and readings per second, latency percentiles and every kind of failure,
//! and last a `result key=value ...` line for scripts.
//!
//! Modes: `requests` (connect every device, then measure), `handshakes` (each device loops
//! over a full handshake, one POST, a close), `idle` (connect every device, then hold the
//! sessions without traffic, to read the server's memory per session), `observe` (one device
//! POSTs while the others observe its sensor: notifications/s and latency from POST to
//! notification).

mod device;
mod fanout;
mod identities;
mod payload;
mod report;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use device::{Device, Outcome};
use gateway_coap::Config as CoapConfig;
use gateway_dtls::{client::Config, ClientSettings, DEFAULT_MTU};
use openssl::ssl::SslContext;
use report::Tally;
use std::{
    net::{SocketAddr, ToSocketAddrs},
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::{mpsc, watch};

/// What the devices do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Connect every device, then POST as fast as answers come, one request in flight each.
    Requests,
    /// Each device loops: a new session (a full handshake), one POST, a close.
    Handshakes,
    /// Connect every device (one POST each), then hold the sessions idle.
    Idle,
    /// Observe fan-out: device 0 POSTs one reading at a time while every other device observes
    /// its sensor (they must be allowed to read it: the ingress's `readers`).
    Observe,
}

/// Load a CoAP-over-DTLS server with many devices, each with its own DTLS session.
///
/// A device answered 5.03 Service Unavailable or 4.29 Too Many Requests with a Max-Age pauses
/// that long before its next request, as a real device would; the pauses are counted.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:
  gateway-load --server 127.0.0.1:5684 --ca certs/ca.pem --ca-key certs/ca.key --devices 100
  gateway-load --server gw.example.org:5684 --ca ca.pem --certs-dir devices/ --readings 20
  gateway-load --server 127.0.0.1:5684 --psk-file psk.txt --mode handshakes  (psk.txt: load-0:HEXKEY ...)"
)]
struct Cli {
    /// The server, HOST:PORT.
    #[arg(long)]
    server: String,
    /// The name checked against the server's certificate (default: the host of --server).
    #[arg(long)]
    host: Option<String>,
    /// CA certificate (PEM) the server's certificate must lead to; not needed with a PSK
    /// (a PSK handshake shows no certificate).
    #[arg(long, required_unless_present_any = ["psk_file", "psk_env"])]
    ca: Option<PathBuf>,
    /// Give each device a certificate of its own, issued by this key of --ca (a development
    /// CA; the certificates live in a temporary directory for the run).
    #[arg(long, conflicts_with_all = ["certs_dir", "psk_file", "psk_env"])]
    ca_key: Option<PathBuf>,
    /// Each device's certificate and key: DIR/NAME.pem and DIR/NAME.key.
    #[arg(long, conflicts_with_all = ["psk_file", "psk_env"])]
    certs_dir: Option<PathBuf>,
    /// Each device's PSK, under its own name as the identity: lines `NAME:HEXKEY` (device N is
    /// PREFIX-N), the format of `coaps-ingress`'s `psk_file`, so one file of load devices
    /// serves both ends (make one for the test: the fleet's file has every device's key).
    /// Never on the command line, where `ps` shows it to every user.
    #[arg(long, conflicts_with = "psk_env", value_name = "FILE")]
    psk_file: Option<PathBuf>,
    /// The lines of --psk-file from this environment variable instead.
    #[arg(long, value_name = "VAR")]
    psk_env: Option<String>,
    /// Devices: device N is named PREFIX-N and is its own SenML device.
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Name prefix of the devices.
    #[arg(long, default_value = "load")]
    prefix: String,
    /// Readings per request.
    #[arg(long, default_value_t = 1)]
    readings: usize,
    /// How long to measure (after every device connected, in `requests` mode).
    #[arg(long, default_value = "10s", value_parser = gateway_sdk::config::duration::parse)]
    duration: Duration,
    /// What the devices do.
    #[arg(long, value_enum, default_value_t = Mode::Requests)]
    mode: Mode,
    /// The resource POSTed to.
    #[arg(long, default_value = "gpsflowtemp")]
    path: String,
    /// Measure reading back instead: each device POSTs once, then GETs its own last readings
    /// (`GET /PATH/NAME`, as `coaps-ingress` answers them) for the whole run.
    #[arg(long)]
    get: bool,
    /// How long a request may take before it counts as a timeout (a device's first request
    /// includes its handshake).
    #[arg(long, default_value = "30s", value_parser = gateway_sdk::config::duration::parse)]
    timeout: Duration,
    /// How long a handshake may take.
    #[arg(long, default_value = "30s", value_parser = gateway_sdk::config::duration::parse)]
    handshake_timeout: Duration,
    /// Devices that start their first handshake per second (0: all at once).
    #[arg(long, default_value_t = 0)]
    connect_rate: u32,
    /// OpenSSL cipher list (default: OpenSSL's).
    #[arg(long, default_value = "")]
    ciphers: String,
    /// Threads that run the devices (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("gateway-load: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the load; `false` if any request or handshake failed.
fn run(cli: Cli) -> Result<bool> {
    if cli.devices == 0 || cli.readings == 0 {
        bail!("--devices and --readings must be at least 1");
    }
    let server = cli
        .server
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve --server {}", cli.server))?
        .next()
        .with_context(|| format!("--server {} has no address", cli.server))?;
    let host = cli.host.clone().unwrap_or_else(|| {
        cli.server
            .rsplit_once(':')
            .map_or(cli.server.as_str(), |(h, _)| h)
            .trim_matches(['[', ']'])
            .to_owned()
    });
    identities::raise_fd_limit(cli.devices + 64);
    let ids = identities::Identities::new(&cli)?;
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // One thread: the devices run on the thread that waits for them, with no hand-offs
    // between threads (a multi-thread runtime's one worker is a second thread).
    let rt = match threads {
        0 | 1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    println!(
        "gateway-load: {} mode, {} devices, {} reading(s) per request, against {server}, {threads} threads",
        format!("{:?}", cli.mode).to_lowercase(),
        cli.devices,
        cli.readings,
    );
    let cfgs: Vec<Config> = (0..cli.devices)
        .map(|n| ids.config(&cli, &host, n))
        .collect::<Result<_>>()?;
    if cli.mode == Mode::Observe {
        if cfgs.len() < 2 {
            bail!("--mode observe needs --devices 2 at least: one POSTs, the others observe");
        }
        return Ok(rt.block_on(fanout::run(Arc::new(cli), server, cfgs)));
    }
    let tally = rt.block_on(drive(Arc::new(cli), server, cfgs));
    Ok(tally.print())
}

/// The devices' settings.
pub(crate) fn client_config(cli: &Cli, host: &str, tls: ClientSettings) -> Config {
    Config {
        host: host.to_owned(),
        verify_host: tls.psk.is_none(),
        tls: ClientSettings {
            ca_file: cli.ca.clone(),
            ciphers: cli.ciphers.clone(),
            mtu: DEFAULT_MTU,
            ..tls
        },
        coap: CoapConfig::default(),
        handshake_timeout: cli.handshake_timeout,
    }
}

/// What a device task reports when it is connected (or gave up), then when it is done.
enum Report {
    Connected(Outcome, Duration),
    Done(Tally),
}

/// Starts every device, runs the mode, and adds up what they report.
async fn drive(cli: Arc<Cli>, server: SocketAddr, cfgs: Vec<Config>) -> Tally {
    let n = cfgs.len();
    // Every device's DTLS context first, outside the timing: a device has its certificate and
    // key loaded long before it connects (after a server restart, say), and building 2,000
    // contexts (reading and checking the files) while connecting took the load generator's CPU
    // from the handshakes.
    let prepared = Instant::now();
    let ctxs: Vec<Result<SslContext, String>> = cfgs
        .iter()
        .map(|c| gateway_dtls::client_context(&c.tls).map_err(|e| e.to_string()))
        .collect();
    if n >= 100 {
        println!(
            "prepared {n} devices' DTLS contexts in {:.1} s",
            prepared.elapsed().as_secs_f64()
        );
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The measurement window: sent once every device has connected.
    let (window_tx, window_rx) = watch::channel(None::<Instant>);
    let started = Instant::now();
    if cli.mode == Mode::Handshakes {
        let _ = window_tx.send(Some(started + cli.duration));
    }
    for (i, (cfg, ctx)) in cfgs.into_iter().zip(ctxs).enumerate() {
        let (cli, tx, mut window) = (cli.clone(), tx.clone(), window_rx.clone());
        let delay = match cli.connect_rate {
            0 => Duration::ZERO,
            r => Duration::from_secs_f64(i as f64 / f64::from(r)),
        };
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let name = format!("{}-{i}", cli.prefix);
            let tally = match cli.mode {
                Mode::Handshakes => {
                    let stop = window.borrow().expect("set before the devices start");
                    handshakes(&cli, server, cfg, ctx, &name, stop).await
                }
                Mode::Requests | Mode::Idle | Mode::Observe => {
                    let mut dev = match ctx {
                        Ok(ctx) => Device::new(
                            cfg,
                            ctx,
                            server,
                            &name,
                            cli.readings,
                            &cli.path,
                            cli.timeout,
                        ),
                        Err(e) => {
                            let _ =
                                tx.send(Report::Connected(Outcome::Handshake(e), Duration::ZERO));
                            let _ = tx.send(Report::Done(Tally::default()));
                            return;
                        }
                    };
                    let t0 = Instant::now();
                    let first = dev.post().await;
                    let ok = dev.is_connected();
                    let _ = tx.send(Report::Connected(first, t0.elapsed()));
                    let _ = window.wait_for(Option::is_some).await;
                    let stop = window.borrow().expect("set");
                    let mut tally = Tally::default();
                    if ok && cli.mode == Mode::Requests {
                        loop {
                            pause(&mut tally, dev.take_pause(), stop).await;
                            if Instant::now() >= stop {
                                break;
                            }
                            let t = Instant::now();
                            let o = if cli.get {
                                dev.get().await
                            } else {
                                dev.post().await
                            };
                            let end = Instant::now();
                            if end > stop {
                                break;
                            }
                            tally.add(&o, end - t);
                        }
                    } else {
                        tokio::time::sleep_until(stop.into()).await;
                    }
                    dev.close().await;
                    tally
                }
            };
            let _ = tx.send(Report::Done(tally));
        });
    }
    drop(tx);
    let mut connect = Tally::default();
    let mut total = Tally::default();
    let mut connected = 0;
    let mut done = 0;
    let mut window = (started, started + cli.duration);
    while let Some(r) = rx.recv().await {
        match r {
            Report::Connected(o, took) => {
                connect.add(&o, took);
                connected += 1;
                if connected == n {
                    report::connected(&connect, started.elapsed());
                    let start = Instant::now();
                    window = (start, start + cli.duration);
                    if cli.mode == Mode::Idle {
                        println!(
                            "idle: holding {} sessions for {:?}",
                            connect.ok, cli.duration
                        );
                    }
                    let _ = window_tx.send(Some(window.1));
                }
            }
            Report::Done(t) => {
                total.merge(t);
                done += 1;
                if done == n {
                    break;
                }
            }
        }
    }
    total.window = window.1.saturating_duration_since(window.0);
    total.readings_per_request = cli.readings;
    total.mode = format!("{:?}", cli.mode).to_lowercase();
    total.devices = n;
    total.connect = Some(Box::new(connect));
    total
}

/// A device that loops over a full handshake, one POST and a close until `stop`.
async fn handshakes(
    cli: &Cli,
    server: SocketAddr,
    cfg: Config,
    ctx: Result<SslContext, String>,
    name: &str,
    stop: Instant,
) -> Tally {
    let mut tally = Tally::default();
    // One context for all of this device's sessions (reading the files is not part of a
    // handshake); each session is new, never resumed.
    let ctx = match ctx {
        Ok(c) => c,
        Err(e) => {
            tally.add(&Outcome::Handshake(e), Duration::ZERO);
            return tally;
        }
    };
    while Instant::now() < stop {
        let t = Instant::now();
        let mut dev = Device::new(
            cfg.clone(),
            ctx.clone(),
            server,
            name,
            cli.readings,
            &cli.path,
            cli.timeout,
        );
        let o = dev.post().await;
        let end = Instant::now();
        let until = dev.take_pause();
        dev.close().await;
        if end > stop {
            break;
        }
        tally.add(&o, end - t);
        pause(&mut tally, until, stop).await;
    }
    tally
}

/// Waits until `until` (the end of a pause the server asked for), `stop` at most, and counts
/// the pause. A real device gives a server that asked for a pause its pause: a load generator
/// that hammered it instead would measure nothing but its refusals.
async fn pause(tally: &mut Tally, until: Option<Instant>, stop: Instant) {
    if let Some(until) = until {
        tally.waited(until.saturating_duration_since(Instant::now()));
        tokio::time::sleep_until(until.min(stop).into()).await;
    }
}
