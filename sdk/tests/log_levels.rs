//! A plugin library's log filter follows the host's levels: a reload that raises an instance's
//! `log_level` takes effect without rebuilding the library's instances. Its own test binary:
//! it installs the library's global subscriber.

use abi_stable::sabi_trait::TD_Opaque;
use gateway_sdk::abi::{HostLog, HostLog_TO, LogRecord};
use std::sync::{
    atomic::{AtomicU8, Ordering},
    Arc, Mutex,
};

#[derive(Clone, Default)]
struct Host {
    max: Arc<AtomicU8>,
    got: Arc<Mutex<Vec<String>>>,
}

impl HostLog for Host {
    fn max_level(&self) -> u8 {
        self.max.load(Ordering::Relaxed)
    }
    fn log(&self, record: LogRecord<'_>) {
        self.got
            .lock()
            .unwrap()
            .push(record.message.as_str().to_owned());
    }
}

#[test]
fn a_level_raised_by_the_host_reaches_the_library_within_a_second() {
    let host = Host::default();
    host.max.store(3, Ordering::Relaxed); // info
    let library = gateway_sdk::shim::library("levels", "0", Vec::new);
    (library.init())(HostLog_TO::from_value(host.clone(), TD_Opaque));
    // What the host got, copied: a failed assertion must not hold the lock while the panic
    // hook logs through the host.
    let got = || host.got.lock().unwrap().clone();
    let debug_seen = |n: u32| {
        tracing::debug!("debug {n}");
        got().contains(&format!("debug {n}"))
    };
    tracing::info!("info 1");
    assert!(!debug_seen(1), "debug is below info");
    // A reload sets an instance to debug. Before, the library had fixed its filter when it
    // was loaded, and every debug event stayed in it.
    host.max.store(4, Ordering::Relaxed);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    tracing::info!("info 2"); // an event that passes reads the host's level again
    assert!(debug_seen(2), "{:?}", got());
    // And back down.
    host.max.store(3, Ordering::Relaxed);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    tracing::info!("info 3");
    assert!(!debug_seen(3), "{:?}", got());
}
