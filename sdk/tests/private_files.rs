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
        // One per test: the tests run at once.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("gw-private-{}-{n}", std::process::id()));
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

/// `setfacl -m u:U:r` on a secret file: the mode bits (0640, the ACL's mask in the group
/// bits) said only its group may read it, and the key passed while user U could read it.
#[test]
fn a_secret_whose_acl_lets_another_user_read_it_is_refused() {
    use std::os::unix::ffi::OsStrExt;
    let dir = Scratch::new();
    let secret = dir.path().join("device.key");
    std::fs::write(&secret, "key").unwrap();
    mode(&secret, 0o600);
    ctx().read_private_file("key_file", &secret).unwrap();
    let me = gateway_sdk::trust::gateway_uid();
    let stranger = if me == 54321 { 54322 } else { 54321 };
    const ANY: u32 = u32::MAX;
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, ANY),
        (0x02, 4, stranger),
        (0x04, 0, ANY),
        (0x10, 4, ANY),
        (0x20, 0, ANY),
    ] {
        acl.extend(tag.to_le_bytes());
        acl.extend(perm.to_le_bytes());
        acl.extend(id.to_le_bytes());
    }
    let c = std::ffi::CString::new(secret.as_os_str().as_bytes()).unwrap();
    // SAFETY: NUL-terminated strings and a buffer of `acl.len()` bytes.
    let r = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            acl.as_ptr().cast(),
            acl.len(),
            0,
        )
    };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTSUP) {
        eprintln!("no ACLs on this filesystem: skipped");
        return;
    }
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&secret).unwrap().mode() & 0o777, 0o640);
    for e in [
        ctx().read_private_file("key_file", &secret).unwrap_err(),
        ctx().private_file("key_file", &secret).unwrap_err(),
    ] {
        assert!(
            e.message()
                .contains(&format!("its ACL lets user {stranger} read it"))
                && e.message().contains("setfacl -b"),
            "{e}"
        );
    }
}
