//! The process's memory: a small resident heap (glibc's malloc; elsewhere that does nothing), and
//! kept out of core dumps.

/// glibc gives every thread that allocates an arena of its own, up to eight per core, and each
/// keeps freed memory resident. The gateway's threads allocate little and mostly hand buffers to
/// each other, so one arena (each thread still has its own lock-free cache of small blocks) saves
/// about 0.8 MB resident on the Pi side at no measurable cost. `MALLOC_ARENA_MAX` in the
/// environment still wins. Call it first thing in `main`, before any other thread exists.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a parameter; called before other threads allocate.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Keeps the process's memory out of core dumps and from other processes of its user: it
/// holds database passwords, PSKs and private keys. A crash (or the watchdog's SIGABRT) would
/// otherwise write them to a core file, and systemd-coredump copies the environment (the
/// password of `server.env`) into the journal, which the `adm` group reads. Not dumpable, the
/// kernel writes no core file and `/proc/PID/` (`environ`, `mem`) is root's. `GATEWAY_DUMPABLE=1`
/// keeps the process dumpable, to debug a crash. Call it first thing in `main`.
pub fn keep_out_of_core_dumps() {
    if std::env::var_os("GATEWAY_DUMPABLE").is_some_and(|v| v == "1") {
        return;
    }
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) changes only this process's dumpable flag.
    let r = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if r != 0 {
        eprintln!(
            "warning: cannot keep the gateway out of core dumps (prctl: {})",
            std::io::Error::last_os_error()
        );
    }
}
