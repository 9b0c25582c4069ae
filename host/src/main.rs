//! `gateway`: the command line.

use anyhow::{anyhow, Context as _};
use clap::{Parser, Subcommand};
use gateway_host::{
    config::{default_plugin_dir, Config, LogFormat},
    loader::Catalog,
    logging::{self, HostLogger},
    plan::{self, Plan},
    run::{self, RunOptions},
};
use gateway_sdk::text::{one_line, printable};
use std::{path::PathBuf, process::ExitCode};
use tracing::level_filters::LevelFilter;

/// Moves sensor readings from source plugins to sink plugins, as a TOML file describes.
#[derive(Parser)]
#[command(name = "gateway", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway until SIGINT or SIGTERM (a second signal exits at once). SIGHUP
    /// re-reads the config and rebuilds only the instances whose settings changed.
    Run {
        /// The config file.
        #[arg(short, long, default_value = "gateway.toml", value_name = "FILE")]
        config: PathBuf,
        /// Log level, overriding `[gateway] log_level` (off, error, warn, info, debug, trace).
        #[arg(long, value_name = "LEVEL")]
        log_level: Option<LevelFilter>,
        /// Log as JSON, overriding `[gateway] log_format`.
        #[arg(long)]
        json: bool,
        /// Drain and exit once every source finished on its own (replays, benchmarks).
        #[arg(long)]
        until_sources_finish: bool,
    },
    /// Check a config: parse it, load every plugin, build every instance, print the graph.
    /// Exits non-zero on any problem, listing every plugin's and instance's problems (one in
    /// the file's own syntax, `[gateway]` or the graph stops at the first).
    Check {
        /// The config file.
        #[arg(short, long, default_value = "gateway.toml", value_name = "FILE")]
        config: PathBuf,
    },
    /// What a running gateway is doing: each instance's counters, queues and disk buffers, read
    /// from its `[gateway] metrics` address. Exits 1 if it cannot be reached, is shutting down,
    /// has a sink stuck in a plugin call (`[gateway] stall_warning`), or a sink held by a full
    /// dead-letter directory.
    Status {
        /// The config file of the running gateway.
        #[arg(short, long, default_value = "gateway.toml", value_name = "FILE")]
        config: PathBuf,
    },
    /// Certificates for the DTLS link: `certs init`, `certs server [--name N]...`, `certs device
    /// NAME`, `certs request NAME` on a device and `certs sign FILE.csr` on the CA's machine,
    /// `certs revoke NAME` or `certs revoke --server` (runs `gateway-certs`, installed next to
    /// `gateway`; `certs --help` shows every option, `--dir`, `--force` and `--days` among them).
    #[command(disable_help_flag = true)]
    Certs {
        /// Arguments for gateway-certs (`--help` shows them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// A CoAP-over-DTLS client for people: `coap get|post|put|delete|observe|discover URI`
    /// with the uplink's DTLS options (runs `gateway-coap`, installed next to `gateway`;
    /// `coap --help` shows its options and exit codes).
    #[command(disable_help_flag = true)]
    Coap {
        /// Arguments for gateway-coap.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The batches sinks refused for good, kept in dead-letter files under each sink's data
    /// directory: list them, print their readings, or send them to their sink again.
    #[command(name = "dead-letters", subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Run the conformance checks on the plugins a config names, one instance at a time: the
    /// library loads, an unknown key is refused with its file and line, `new` has no side
    /// effects, a source stops within the deadline, a sink takes a batch and the same batch
    /// again, and closes. For plugin authors: `gateway test-plugin --config sample.toml
    /// --plugin-dir target/release`. A sink's test batches go where its table says: use a
    /// scratch store. Exits 1 if a check fails.
    #[command(name = "test-plugin")]
    TestPlugin {
        /// A config with the instance tables to test (a plugin's sample.toml); it needs no
        /// sink for its sources.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Where the libraries are (default: the config's `plugin_dir`).
        #[arg(long, value_name = "DIR")]
        plugin_dir: Option<PathBuf>,
        /// How long each source runs before it is asked to stop.
        #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = gateway_sdk::config::duration::parse)]
        run_for: std::time::Duration,
        /// How long each step may take: a source's stop, a sink's open, write and close.
        #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = gateway_sdk::config::duration::parse)]
        deadline: std::time::Duration,
    },
    /// List the plugin libraries of a directory: name, version, SDK version, plugins and kinds.
    /// Exits 1 if a file in it was refused.
    Plugins {
        /// The directory (default: the `plugin_dir` directories of --config if given, else the
        /// directory of this binary).
        #[arg(long, value_name = "DIR", conflicts_with = "config")]
        plugin_dir: Option<PathBuf>,
        /// Take the directory from this config file.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// Every sink's dead-letter files: when, how many readings, and why they were refused.
    List {
        /// The config file.
        #[arg(short, long, default_value = "gateway.toml", value_name = "FILE")]
        config: PathBuf,
    },
    /// Print the readings of a sink's dead-letter files, one per line.
    Show {
        /// The config file.
        #[arg(short, long, default_value = "gateway.toml", value_name = "FILE")]
        config: PathBuf,
        /// The sink instance (the NAME of `[sinks.NAME]`).
        sink: String,
    },
    /// Write each of a sink's dead-letter files to the sink again, as the config builds it
    /// (the gateway may be running meanwhile). A file the sink takes is deleted; one it refuses
    /// is offered again in halves, and the readings it refuses again (and those not tried
    /// because it stopped taking readings) stay in the file. Exits non-zero if any file is
    /// left.
    Resend {
        /// The config file.
        #[arg(short, long, default_value = "gateway.toml", value_name = "FILE")]
        config: PathBuf,
        /// The sink instance (the NAME of `[sinks.NAME]`).
        sink: String,
    },
}

fn main() -> ExitCode {
    gateway_host::memory::limit_malloc_arenas();
    gateway_host::memory::keep_out_of_core_dumps();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // The commands that print (`plugins`, `check`, `status`, `dead-letters`) end quietly
        // when their reader goes away (`gateway plugins | head`), as Unix tools do, instead of
        // panicking on the failed write. `run` keeps SIGPIPE ignored: a metrics client that
        // hangs up must not end the gateway.
        // SAFETY: sets the disposition of one signal before any other thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            let e = format!("{e:#}");
            eprintln!("error: {}", gateway_host::config::redact_known(&e));
            ExitCode::FAILURE
        }
    }
}

/// Prints each error, as text for a terminal: they quote plugins' messages, which may hold
/// what a plugin read (a file, a server's answer), and the version strings of libraries.
fn report(errors: &[String]) -> anyhow::Error {
    for e in errors {
        // Each error was redacted with its own instance's secrets; another's may be in it
        // too (a plugin quoting a file it read).
        eprintln!(
            "error: {}",
            printable(&gateway_host::config::redact_known(e))
        );
    }
    anyhow!(
        "{} problem{} found; nothing was started",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    )
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run {
            config,
            log_level,
            json,
            until_sources_finish,
        } => {
            let config = Config::load(&config)?;
            gateway_host::own_files::enter(&config.gateway.data_dir).map_err(|e| anyhow!(e))?;
            let level = log_level.unwrap_or(config.gateway.log_level);
            let format = if json {
                LogFormat::Json
            } else {
                config.gateway.log_format
            };
            let logger = HostLogger::new(level);
            for d in config.sources.iter().chain(&config.sinks) {
                if let Some(l) = d.log_level {
                    logger.set_level(&d.name, l);
                }
            }
            // Plugin events are filtered per instance where they come in (`LibraryLog`), at the
            // levels a reload may change: the subscriber lets them all through, or a level
            // raised by a reload above the start's would stay filtered out here.
            logging::init(format, level, LevelFilter::TRACE);
            tracing::info!(config = %config.path.display(), version = env!("CARGO_PKG_VERSION"), "gateway starting");
            // Bound before anything starts: a port another process holds (one that would then
            // answer health checks and `gateway status` in the gateway's name) stops the start.
            let metrics = match config.gateway.metrics {
                Some(addr) => Some(std::net::TcpListener::bind(addr).with_context(|| {
                    format!("[gateway] metrics = \"{addr}\": cannot listen there (another process, or another gateway, holds the port?); nothing was started")
                })?),
                None => None,
            };
            // Under systemd the start timeout is extended while it runs (for at most an hour):
            // reading a full disk buffer back can take longer than that timeout.
            let plan = gateway_host::notify::Notifier::from_env()
                .extending_start_while(std::time::Duration::from_secs(3600), || {
                    Plan::build(config, &logger)
                })
                .map_err(|e| report(&e))?;
            let signals = signals()?;
            let summary = run::run(
                plan,
                RunOptions {
                    until_sources_finish,
                    metrics,
                },
                signals,
                logger,
            );
            Ok(if summary.clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Check { config } => {
            let config = Config::load(&config)?;
            let path = config.path.clone();
            logging::init(
                config.gateway.log_format,
                LevelFilter::WARN,
                LevelFilter::WARN,
            );
            let logger = HostLogger::new(LevelFilter::WARN);
            let plan = Plan::check(config, &logger).map_err(|e| report(&e))?;
            println!("{}: OK", path.display());
            // Library names and versions are a vendor's text: escaped for the terminal.
            print!("{}", printable(&plan.describe()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config } => {
            let config = Config::load(&config)?;
            let Some(addr) = config.gateway.metrics else {
                anyhow::bail!(
                    "{}: gateway status reads the metrics page: set [gateway] metrics = \"127.0.0.1:9464\" and restart the gateway",
                    config.path.display()
                );
            };
            let (text, ready) = gateway_host::status::report(addr).map_err(anyhow::Error::msg)?;
            print!("{text}");
            Ok(if ready {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        // The tools' exit codes are the command's (`gateway coap`'s say what happened: 2.xx,
        // 4.xx, 5.xx, no answer, handshake).
        Command::Certs { args } => Err(tool("gateway-certs", &args)),
        Command::Coap { args } => Err(tool("gateway-coap", &args)),
        Command::DeadLetters(cmd) => dead_letters(cmd),
        Command::TestPlugin {
            config,
            plugin_dir,
            run_for,
            deadline,
        } => {
            let mut config = Config::load_instances(&config)?;
            if let Some(d) = plugin_dir {
                config.gateway.plugin_dirs = vec![d];
            }
            logging::init(LogFormat::Text, LevelFilter::WARN, LevelFilter::WARN);
            let logger = HostLogger::new(LevelFilter::WARN);
            // The instances' data directories: a scratch directory, not the config's.
            let scratch = gateway_host::own_files::scratch_dir("gateway-test-plugin")?;
            let report =
                gateway_host::conformance::run(&config, &logger, &scratch, run_for, deadline);
            let _ = std::fs::remove_dir_all(&scratch);
            // A plugin's error may quote a value `${...}` put in (a URL with a password).
            print!("{}", gateway_host::config::redact_known(&report.text));
            Ok(if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Plugins { plugin_dir, config } => {
            let dirs = match (plugin_dir, config) {
                (Some(d), _) => vec![d],
                (None, Some(c)) => Config::load(&c)?.gateway.plugin_dirs,
                (None, None) => vec![default_plugin_dir()],
            };
            logging::init(LogFormat::Text, LevelFilter::WARN, LevelFilter::WARN);
            let mut catalog = Catalog::new(&dirs, HostLogger::new(LevelFilter::WARN));
            let all = catalog
                .load_all()
                .with_context(|| format!("cannot list {}", catalog.shown()))?;
            println!("plugin libraries in {}:", catalog.shown());
            if all.is_empty() {
                println!("  (none)");
            }
            let mut refused = 0;
            // File names and what a library says of itself are a vendor's text, and a
            // loader's error can quote them: escaped for the terminal.
            let shown = |t: &str| one_line(t).into_owned();
            for (path, r) in all {
                let file = shown(&path.file_name().unwrap_or_default().to_string_lossy());
                match r {
                    Ok(lib) => {
                        println!(
                            "  {file}: {} {} (gateway-sdk {})",
                            shown(&lib.name),
                            shown(&lib.version),
                            shown(&lib.sdk_version)
                        );
                        for p in &lib.plugins {
                            println!(
                                "    {:<8} {:<16} {}",
                                p.kind.name(),
                                shown(p.id.as_str()),
                                shown(p.description.as_str())
                            );
                        }
                    }
                    Err(e) => {
                        refused += 1;
                        println!("  {file}: refused: it {}", shown(&e.to_string()));
                    }
                }
            }
            if refused > 0 {
                eprintln!(
                    "error: {refused} of the files in {} {} refused",
                    catalog.shown(),
                    if refused == 1 { "was" } else { "were" }
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs the tool `name` installed next to `gateway` in this process's place (exec): its exit
/// code is the command's, and a Ctrl-C reaches it alone, instead of ending `gateway` and
/// leaving the tool running behind the shell's prompt. Returns only if it could not be run.
fn tool(name: &str, args: &[String]) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let path = default_plugin_dir().join(name);
    let e = std::process::Command::new(&path).args(args).exec();
    anyhow!(e).context(format!("cannot run {}", path.display()))
}

fn dead_letters(cmd: DeadLetterCommand) -> anyhow::Result<ExitCode> {
    use gateway_host::{config::redact_known, deadletter};
    let (DeadLetterCommand::List { config }
    | DeadLetterCommand::Show { config, .. }
    | DeadLetterCommand::Resend { config, .. }) = &cmd;
    let config = Config::load(config)?;
    let sink_of = |name: &str| config.sink(name).map_err(|e| anyhow!(e));
    match cmd {
        DeadLetterCommand::List { .. } => {
            let mut any = false;
            for d in &config.sinks {
                let letters = plan::dead_letters(&config, d);
                for f in letters.files()? {
                    any = true;
                    match deadletter::header(&f) {
                        Ok(h) => println!(
                            "{}  {}  {} readings{} refused at {}: {}",
                            d.name,
                            one_line(&f.display().to_string()),
                            h.readings,
                            // Redacted as the header's error is (files of before it
                            // was redacted when written hold it as it was).
                            h.device
                                .map(|d| format!(" of {}", one_line(&redact_known(&d))))
                                .unwrap_or_default(),
                            one_line(&h.refused_at),
                            one_line(&redact_known(&h.error))
                        ),
                        Err(e) => println!(
                            "{}  {}  unreadable: {}",
                            d.name,
                            one_line(&f.display().to_string()),
                            one_line(&e)
                        ),
                    }
                }
            }
            // Those of a sink renamed or removed, which nothing else would show.
            for (name, dir, files) in plan::orphaned_dead_letters(&config) {
                any = true;
                println!(
                    "{}  {}  {files} files of a sink this config does not have: add a sink named {} again to show and resend them",
                    one_line(&name),
                    one_line(&dir.display().to_string()),
                    one_line(&name),
                );
            }
            if !any {
                println!("no dead letters");
            }
            Ok(ExitCode::SUCCESS)
        }
        DeadLetterCommand::Show { sink: name, .. } => {
            // A file that cannot be read is named, and the others are still shown.
            let mut unreadable = 0;
            for f in plan::dead_letters(&config, sink_of(&name)?).files()? {
                let (h, readings) = match deadletter::read(&f) {
                    Ok(letter) => letter,
                    Err(e) => {
                        unreadable += 1;
                        eprintln!("gateway: unreadable dead-letter file {}", one_line(&e));
                        continue;
                    }
                };
                // The refusal is a peer's or a plugin's text, and the readings' labels and
                // text values may come from a device far away. Secrets of the config are
                // redacted as `list` and `resend` redact them (a device named by
                // `${file:...}`; a file written before errors were redacted).
                println!(
                    "# {}: refused at {}: {}",
                    one_line(&f.display().to_string()),
                    one_line(&h.refused_at),
                    one_line(&redact_known(&h.error))
                );
                for r in readings {
                    println!("{}", one_line(&redact_known(&r.to_string())));
                }
            }
            Ok(if unreadable == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        DeadLetterCommand::Resend { sink, .. } => {
            use gateway_host::resend::{offer, settle, Settled};
            let decl = sink_of(&sink)?;
            let letters = plan::dead_letters(&config, decl);
            if letters.files()?.is_empty() {
                println!("{sink}: no dead letters");
                return Ok(ExitCode::SUCCESS);
            }
            // One resend at a time per sink; the files are listed once it holds the lock, so
            // that those another resend removed meanwhile are not named as unreadable.
            gateway_host::own_files::enter(&config.gateway.data_dir).map_err(|e| anyhow!(e))?;
            let lock = gateway_host::own_files::options()
                .write(true)
                .create(true)
                .truncate(false)
                .open(letters.dir().join(".resend.lock"))?;
            lock.try_lock()
                .map_err(|_| anyhow!("another `gateway dead-letters resend {sink}` is running"))?;
            let files = letters.files()?;
            logging::init(
                config.gateway.log_format,
                LevelFilter::WARN,
                LevelFilter::WARN,
            );
            let logger = HostLogger::new(LevelFilter::WARN);
            let mut instance = plan::build_sink(&config, decl, &logger).map_err(|e| anyhow!(e))?;
            let mut left = 0;
            // The sink's and the file's text may quote a peer far away.
            let said =
                |e: &gateway_sdk::PluginError| one_line(&redact_known(e.message())).into_owned();
            for f in files {
                let name = one_line(&f.display().to_string()).into_owned();
                // An unreadable file stays as it is, named; the others are still sent.
                let (header, readings) = match deadletter::read(&f) {
                    Ok(letter) => letter,
                    Err(e) => {
                        left += 1;
                        println!("{name}: kept: unreadable: {}", one_line(&e));
                        continue;
                    }
                };
                // Another sink's file (its directory reached through a link someone made):
                // its readings are not sent with this sink's credentials.
                if header.sink != sink {
                    left += 1;
                    println!(
                        "{name}: kept: a dead letter of sink {}, not of {sink}",
                        one_line(&header.sink)
                    );
                    continue;
                }
                let offered = offer(&readings, |batch| {
                    instance
                        .write(abi_stable::std_types::RSlice::from_slice(batch))
                        .into_result()
                });
                let kept: usize = offered.kept.iter().map(|r| r.len()).sum();
                let why = offered
                    .stopped
                    .as_ref()
                    .or(offered.refusal.as_ref())
                    .map(|e| format!(": {} ({})", said(e), e.kind))
                    .unwrap_or_default();
                match settle(&letters, &f, &readings, &header.error, &offered) {
                    Ok(Settled::Removed) => {
                        println!("{name}: {} readings taken; file removed", offered.taken)
                    }
                    Ok(Settled::Kept) => {
                        left += 1;
                        println!("{name}: kept{why}");
                    }
                    Ok(Settled::Shrunk) => {
                        left += 1;
                        println!(
                            "{name}: {} readings taken, {kept} kept in the file{why}",
                            offered.taken
                        );
                    }
                    Err(e) => {
                        left += 1;
                        println!(
                            "{name}: {} readings taken, but the file could not be changed \
                             ({e}): it stays whole, and the taken ones go again next time",
                            offered.taken
                        );
                    }
                }
                if let Some(e) = &offered.stopped {
                    if e.kind.is_retryable() {
                        println!("the sink cannot take readings now; try again later");
                    } else {
                        println!("the sink failed; the other files wait for the next resend");
                    }
                    break;
                }
            }
            let _ = instance.close().into_result();
            Ok(if left == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// First SIGINT/SIGTERM: a message on `stop`. Second: exit at once. SIGHUP: a message on
/// `reload` (several while one is applied count as one).
fn signals() -> anyhow::Result<run::Signals> {
    use signal_hook::{consts::*, iterator::Signals};
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot install signal handlers")?;
    let (tx, stop) = crossbeam_channel::bounded(1);
    let (reload_tx, reload) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    tracing::info!(signal = sig, "SIGHUP received: reloading the config");
                    let _ = reload_tx.try_send(());
                    continue;
                }
                seen += 1;
                if seen == 1 {
                    tracing::info!(signal = sig, "signal received");
                    let _ = tx.send(());
                } else {
                    eprintln!("gateway: second signal, exiting at once");
                    std::process::exit(130);
                }
            }
        })?;
    Ok(run::Signals { stop, reload })
}
