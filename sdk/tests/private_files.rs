//! `InitContext::read_private_file` and `private_file`: a secret is read from the file that was
//! checked, never waited on, and not taken from a directory others can change.

use gateway_sdk::{testing::instance_info, InitContext};
use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    time::{Duration, Instant},
};

/// A directory of its own under the temporary directory, removed when dropped.
struct Scratch(std::path::PathBuf);
impl Scratch {
    fn new() -> Scratch {
        let p = std::env::temp_dir().join(format!("gw-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).unwrap();
        mode(&p, 0o700);
        Scratch(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ctx() -> InitContext {
    InitContext::new(instance_info("keys", ""))
}

fn mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_private_file_is_read_once_checked_and_never_waited_on() {
    let dir = Scratch::new();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "hunter22hunter22\n").unwrap();
    mode(&secret, 0o600);
    let (path, text) = ctx().read_private_file("password_file", &secret).unwrap();
    assert_eq!(
        (path, text.as_str()),
        (secret.clone(), "hunter22hunter22\n")
    );

    // A FIFO in its place: opening it for reading would wait for a writer for ever.
    let fifo = dir.path().join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    mode(&fifo, 0o600);
    let started = Instant::now();
    let e = ctx().read_private_file("password_file", &fifo).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(e.message().contains("is not a regular file"), "{e}");
    let e = ctx().private_file("password_file", &fifo).unwrap_err();
    assert!(e.message().contains("is not a regular file"), "{e}");

    // A directory every user can write (without the sticky bit): anyone could put a file of
    // their own in the secret's place.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    let inside = open.join("secret");
    std::fs::write(&inside, "hunter22hunter22\n").unwrap();
    mode(&inside, 0o600);
    mode(&open, 0o777);
    for e in [
        ctx()
            .read_private_file("password_file", &inside)
            .unwrap_err(),
        ctx().private_file("password_file", &inside).unwrap_err(),
    ] {
        assert!(
            e.message()
                .contains("holds a secret, but is in a directory others can change"),
            "{e}"
        );
    }
    mode(&open, 0o700);
    assert!(ctx().read_private_file("password_file", &inside).is_ok());

    // Every user may read it: refused as before, from the open file's own mode.
    mode(&inside, 0o644);
    let e = ctx()
        .read_private_file("password_file", &inside)
        .unwrap_err();
    assert!(e.message().contains("every local user may read it"), "{e}");
}
