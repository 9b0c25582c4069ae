//! A dead-letter file that cannot be written whole leaves nothing behind: a disk that is full
//! must not gather one half-written file per retry. One test in its own process, because it
//! limits the size of the files that the whole process may write.

use gateway_host::deadletter::DeadLetters;

#[test]
fn a_dead_letter_file_that_cannot_be_written_whole_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let letters = DeadLetters::new(dir.path().join("dl"), "db", "mysql");
    let readings = gateway_sdk::testing::sample_readings(1000);
    // Writes past 4 KiB fail with EFBIG (SIGXFSZ ignored), as a full disk fails them.
    let limit = libc::rlimit {
        rlim_cur: 4096,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain system calls on this process's own settings; no other test runs here.
    let old = unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let mut old = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_FSIZE, &mut old);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
        old
    };
    let outcome = letters.put("refused", &readings);
    let second = letters.put("refused", &readings);
    // SAFETY: as above.
    unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &old) };
    assert!(outcome.is_err() && second.is_err(), "{outcome:?}");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("dl"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "half-written files left: {left:?}");
    // With room again, the same batch is kept whole.
    let path = letters.put("refused", &readings).unwrap();
    assert_eq!(letters.files().unwrap(), vec![path]);
}
