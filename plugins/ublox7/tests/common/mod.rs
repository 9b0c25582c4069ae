//! Real pseudo-terminals for the serial tests.
#![allow(dead_code)]

use std::{
    ffi::CStr,
    fs::File,
    io::Write,
    os::fd::{FromRawFd, OwnedFd},
    path::PathBuf,
    time::Duration,
};

/// Held by each test that opens ptys, one at a time: a test that looks for a pty's device
/// among this process's open files must not find another test's that reuses its number.
pub static PTYS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A pty pair: the test writes to `master` what a receiver would send; the plugin opens
/// `slave_path`.
pub struct Pty {
    pub master: File,
    pub slave_path: PathBuf,
    _slave: OwnedFd,
}

pub fn open_pty() -> Pty {
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty fills two fds we then own; the termios and winsize pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // Raw mode, so nothing is echoed or edited before the plugin opens the port.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        libc::tcgetattr(s, &mut t);
        libc::cfmakeraw(&mut t);
        libc::tcsetattr(s, libc::TCSANOW, &t);
    }
    let name = unsafe { CStr::from_ptr(libc::ptsname(m)) }
        .to_string_lossy()
        .into_owned();
    Pty {
        master: unsafe { File::from_raw_fd(m) },
        slave_path: PathBuf::from(name),
        _slave: unsafe { OwnedFd::from_raw_fd(s) },
    }
}

/// Writes `bytes` at the pace of `baud` (8N1: ten bits a byte), in small chunks.
pub fn write_paced(master: &mut File, bytes: &[u8], baud: u32) {
    let per_chunk = 32usize;
    let chunk_time = Duration::from_secs_f64(per_chunk as f64 * 10.0 / baud as f64);
    for c in bytes.chunks(per_chunk) {
        master.write_all(c).unwrap();
        std::thread::sleep(chunk_time);
    }
}

/// A log without its `#` comment lines.
pub fn stream(name: &str) -> Vec<u8> {
    let raw = std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    raw.split_inclusive(|&b| b == b'\n')
        .filter(|l| !l.starts_with(b"#"))
        .flatten()
        .copied()
        .collect()
}

/// A log subscriber that keeps every WARN and INFO event as `LEVEL message field=value ...`
/// (set as the process's global one: it sees the source's thread).
pub struct Said(pub std::sync::Arc<std::sync::Mutex<Vec<String>>>);

struct Fields(String, String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        } else {
            self.1 += &format!(" {}={value:?}", field.name());
        }
    }
}

use gateway_sdk::tracing::{self, span, Event, Metadata, Subscriber};

impl Subscriber for Said {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &Event<'_>) {
        let level = *event.metadata().level();
        if level == tracing::Level::WARN || level == tracing::Level::INFO {
            let mut m = Fields(String::new(), String::new());
            event.record(&mut m);
            self.0
                .lock()
                .unwrap()
                .push(format!("{level} {}{}", m.0, m.1));
        }
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}
