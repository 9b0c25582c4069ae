//! A simulated w1 tree whose `w1_slave` files are FIFOs: a read blocks like the kernel's does
//! while the probe converts (up to 750 ms at 12 bits), and a probe whose writer never answers
//! hangs the read for good, as a dead probe on a real bus can.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
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
        let status = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
        assert!(status.success());
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
                std::thread::sleep(delay);
                let _ = f.write_all(texts[n % texts.len()].as_bytes());
                drop(f);
                n += 1;
                // Opening again while this read's reader still holds the FIFO would feed it a
                // second answer: wait until it has closed (a non-blocking open then fails).
                use std::os::unix::fs::OpenOptionsExt;
                while !stop.load(Ordering::SeqCst) {
                    match std::fs::OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NONBLOCK)
                        .open(&fifo)
                    {
                        Ok(_) => std::thread::sleep(Duration::from_millis(1)),
                        Err(_) => break,
                    }
                }
            }
        });
    }
}

impl Drop for FifoTree {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake writers blocked in open() by opening each FIFO for reading without blocking.
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let fifo = e.path().join("w1_slave");
                let _ = Command::new("timeout")
                    .arg("0.2")
                    .arg("cat")
                    .arg(&fifo)
                    .output();
            }
        }
    }
}
