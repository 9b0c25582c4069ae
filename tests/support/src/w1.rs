//! A simulated w1 tree whose `w1_slave` files are FIFOs: a read blocks like the kernel's does
//! while the probe converts (up to 750 ms at 12 bits), and a probe whose writer never answers
//! hangs the read for good, as a dead probe on a real bus can.

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

/// What a simulated probe answers, read after read.
pub enum Behaviour {
    /// Waits `delay`, then answers with `texts[n % len]` on the n-th read.
    Answers { delay: Duration, texts: Vec<String> },
    /// Never answers.
    Hung,
}

/// A FIFO-backed w1 tree. Dropping it stops the writers.
pub struct FifoTree {
    pub root: PathBuf,
    stop: Arc<AtomicBool>,
}

impl FifoTree {
    pub fn new(root: &Path) -> Self {
        FifoTree {
            root: root.to_path_buf(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Adds probe `id` with `behaviour`.
    pub fn probe(&self, id: &str, behaviour: Behaviour) {
        let dir = self.root.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("w1_slave");
        mkfifo(&fifo);
        let Behaviour::Answers { delay, texts } = behaviour else {
            return;
        };
        let stop = self.stop.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                // Opening for writing blocks until a reader opens: that is the start of a read.
                let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&fifo) else {
                    return;
                };
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                // Our open() returns as soon as a reader is *in* its open(), not when it holds
                // its descriptor: wait for that descriptor, or the answer could be written and
                // closed before it exists, the wait below see nobody, and the next answer go
                // down the same reader's pipe (answers out of step, a test that fails 1 in 10).
                while !stop.load(Ordering::SeqCst) && holders(&fifo) < 2 {
                    std::thread::sleep(Duration::from_micros(100));
                }
                std::thread::sleep(delay);
                let _ = f.write_all(texts[n % texts.len()].as_bytes());
                drop(f);
                n += 1;
                // Opening again while this read's reader still holds the FIFO would feed it a
                // second answer: wait until no process holds it open. (Probing with a
                // non-blocking open would itself count as a writer, and hand a reader already
                // blocked in its next open() an empty answer.)
                while !stop.load(Ordering::SeqCst) && holders(&fifo) > 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
    }
}

/// Makes a FIFO without starting a process. The tests of a binary run on threads of one
/// process, and a child started by one of them holds a copy of every descriptor open at that
/// moment until it execs: if that is the read end of a FIFO, a writer that believes the reader
/// gone has its answer swallowed, and the probe's answers fall out of step.
fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in a path");
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(
        rc,
        0,
        "mkfifo {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// How many descriptors, in any process, have `path` open, from those listed under
/// `/proc/*/fd`. A reader still blocked in `open()` holds no descriptor yet, so it does not
/// count.
fn holders(path: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = std::fs::metadata(path) else {
        return 0;
    };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .flatten()
        // Processes only: `self` and `thread-self` are this process again.
        .filter(|p| {
            p.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|p| {
            let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
                return 0;
            };
            fds.flatten()
                .filter(|fd| {
                    std::fs::metadata(fd.path())
                        .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
                })
                .count()
        })
        .sum()
}

impl Drop for FifoTree {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake writers blocked in open() by opening each FIFO for reading without blocking.
        use std::os::unix::fs::OpenOptionsExt;
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let _ = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(e.path().join("w1_slave"));
            }
        }
    }
}
