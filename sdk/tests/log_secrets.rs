//! A secret a plugin reads through `InitContext::secret` never reaches the host's log, whoever
//! logs it: a dependency that traces its connect options with the password in them, say. Its
//! own test binary: it installs the library's global subscriber.

use abi_stable::sabi_trait::TD_Opaque;
use gateway_sdk::{
    abi::{HostLog, HostLog_TO, LogRecord},
    testing::SinkHarness,
    InitContext, PluginError, Reading, Sink,
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

#[derive(Clone, Default)]
struct Host {
    got: Arc<Mutex<Vec<String>>>,
    /// The instance each record names.
    instances: Arc<Mutex<Vec<String>>>,
}

impl HostLog for Host {
    fn max_level(&self) -> u8 {
        5 // trace
    }
    fn log(&self, record: LogRecord<'_>) {
        self.got
            .lock()
            .unwrap()
            .push(record.message.as_str().to_owned());
        self.instances
            .lock()
            .unwrap()
            .push(record.instance.as_str().to_owned());
    }
}

/// The host's logger, installed in the library once for the tests of this binary (a
/// library takes the first it is given: a test of its own would see no message if another
/// test's got in first).
fn host() -> Host {
    static HOST: std::sync::OnceLock<Host> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        let host = Host::default();
        let library = gateway_sdk::shim::library("secrets", "0", Vec::new);
        (library.init())(HostLog_TO::from_value(host.clone(), TD_Opaque));
        host
    })
    .clone()
}

/// Options as a client library keeps them, with a Debug that shows the password.
#[derive(Debug)]
#[allow(dead_code)]
struct ConnectInfo {
    user: String,
    pass: String,
}

struct Leaky;

impl Sink for Leaky {
    const ID: &'static str = "leaky";
    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        let pass = ctx
            .secret("password", Some("S3cr3t\"Pw"), None, None)?
            .expect("given");
        let info = ConnectInfo {
            user: "gw".into(),
            pass,
        };
        tracing::trace!(target: "some_client::connection", ?info, "write operation: CONNECT");
        tracing::info!("connecting as gw with S3cr3t\"Pw");
        // A value too short to be a secret takes no words out of messages; a short one is
        // taken out where it stands as a word of its own only.
        ctx.secret("token", Some("abc"), None, None)?;
        tracing::info!("abc stays");
        ctx.secret("user_password", Some("gate"), None, None)?;
        tracing::info!("gateway with gate, gate_1 and (gate)");
        // One read without being kept (a fleet's per-device keys) is not searched for.
        ctx.read_secret("psk", Some("0011223344556677"), None, None)?;
        tracing::info!("loaded 0011223344556677");
        // A dependency's span whose field is called `instance` names the instance of the
        // records within it; a metric's label value is the plugin's to choose.
        tracing::info_span!("pool", instance = "db S3cr3t\"Pw").in_scope(|| {
            tracing::info!("in the pool's span");
        });
        // A secret that is also a word of a metric's name leaves the name whole: only label
        // values are redacted.
        ctx.secret("api_key", Some("connects"), None, None)?;
        let mut m = gateway_sdk::metrics::Metrics::new();
        m.counter(
            "leaky_connects_total",
            "Connects.",
            &[("url", "gw:S3cr3t\"Pw@db")],
            1,
        );
        m.publish("leaky");
        Ok(Leaky)
    }
    fn write(&mut self, batch: &[Reading]) -> Result<(), PluginError> {
        // A driver's error that quotes the connection URL, password and all.
        match batch.len() {
            1 => Err(PluginError::retry(
                "cannot connect to mysql://gw:S3cr3t\"Pw@db:3306/test",
            )),
            2 => panic!("lost S3cr3t\"Pw"),
            _ => Ok(()),
        }
    }
    fn window(&self) -> usize {
        2
    }
    fn submit(&mut self, batch: &[Reading], done: gateway_sdk::Written) {
        // An error given back later, from another thread.
        let outcome = self.write(&batch[..batch.len().min(1)]);
        std::thread::spawn(move || done.finish(outcome));
    }
}

#[test]
fn a_secret_is_kept_out_of_every_log_message_whoever_logs_it() {
    let host = host();
    SinkHarness::new::<Leaky>("").unwrap();
    let got = host.got.lock().unwrap().clone();
    assert!(got.len() >= 3, "{got:?}");
    assert!(got.iter().all(|m| !m.contains("S3cr3t")), "{got:?}");
    assert!(
        got.iter()
            .any(|m| m.contains("leaky_connects_total") && m.contains("gw:<redacted>@db")),
        "the metrics went too, their names whole: {got:?}"
    );
    let instances = host.instances.lock().unwrap().clone();
    assert!(
        instances.iter().all(|i| !i.contains("S3cr3t")),
        "{instances:?}"
    );
    assert!(
        instances.iter().any(|i| i == "db <redacted>"),
        "{instances:?}"
    );
    assert!(
        got.iter().any(|m| m.contains("pass: \"<redacted>\"")),
        "{got:?}"
    );
    assert!(
        got.iter().any(|m| m == "connecting as gw with <redacted>"),
        "{got:?}"
    );
    assert!(got.iter().any(|m| m == "abc stays"), "{got:?}");
    assert!(
        got.iter()
            .any(|m| m == "gateway with <redacted>, gate_1 and (<redacted>)"),
        "{got:?}"
    );
    assert!(
        got.iter().any(|m| m == "loaded 0011223344556677"),
        "{got:?}"
    );
}

/// An error's message reaches the host's log, `gateway check` and dead-letter files: the
/// secrets are taken out of it as out of log messages, whether the error is returned, a
/// panic's, or given back later to a submitted batch.
#[test]
fn a_secret_is_kept_out_of_the_errors_the_host_is_given() {
    host();
    let mut sink = SinkHarness::new::<Leaky>("").unwrap();
    let readings = gateway_sdk::testing::sample_readings(2);
    let e = sink.write(readings[..1].to_vec()).unwrap_err();
    assert_eq!(
        e.message(),
        "cannot connect to mysql://gw:<redacted>@db:3306/test"
    );
    let outcomes = sink.submit(vec![readings[..1].to_vec()], Duration::from_secs(10));
    let e = outcomes[0].clone().unwrap_err();
    assert_eq!(
        e.message(),
        "cannot connect to mysql://gw:<redacted>@db:3306/test"
    );
    // Last: a panic leaves the instance poisoned.
    let e = sink.write(readings.clone()).unwrap_err();
    assert!(e.message().ends_with("lost <redacted>"), "{e}");
}

/// A sink whose password is its own instance name ([sinks.mqtt] with the development password
/// `mqtt`, say).
struct Named;

impl Sink for Named {
    const ID: &'static str = "named";
    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        ctx.secret("password", Some("named-sink"), None, None)?;
        tracing::info!("built");
        Ok(Named)
    }
    fn write(&mut self, _batch: &[Reading]) -> Result<(), PluginError> {
        Ok(())
    }
}

/// The SDK's own span names the instance, from the config: the host looks its `log_level`
/// up by that name, so it is not redacted even when a secret is the same text (a dependency's
/// span with an `instance` field is).
#[test]
fn an_instance_s_own_name_stays_its_name_whatever_its_secrets() {
    let host = host();
    let info = gateway_sdk::testing::instance_info("named-sink", "");
    for _ in 0..2 {
        let _ = gateway_sdk::shim::new_sink::<Named>(&info)
            .into_result()
            .unwrap();
    }
    let got = host.got.lock().unwrap().clone();
    let instances = host.instances.lock().unwrap().clone();
    let built: Vec<&String> = got
        .iter()
        .zip(&instances)
        .filter(|(m, _)| *m == "built")
        .map(|(_, i)| i)
        .collect();
    assert_eq!(built, ["named-sink", "named-sink"], "{got:?} {instances:?}");
}
