//! Opening the files the gateway keeps in its `data_dir` (disk buffers, dead letters, their
//! locks), which whoever the service runs as can write to.
//!
//! None of them is ever a link: one opened as a link would let a process running as the
//! service's user (one a peer took over, say) plant `data_dir/.../lock -> /etc/shadow` and have
//! an operator's `sudo gateway dead-letters resend` truncate or overwrite the link's target.
//! So every such file is opened with `O_NOFOLLOW` (a link fails with `ELOOP`) and created
//! readable by its owner only, whatever the umask: readings are a device's whereabouts.
//! [`enter`] refuses, in the first place, root working in a directory that belongs to another
//! user, and keeps what the process creates from other users.

use std::{
    fs::OpenOptions,
    io,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::Path,
};

/// Options that open no link and create files with mode 0600.
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.custom_flags(libc::O_NOFOLLOW).mode(0o600);
    o
}

/// An existing file, for reading, not through a link.
pub fn open(path: &Path) -> io::Result<std::fs::File> {
    options().read(true).open(path)
}

/// An existing regular file, for reading, not through a link, and without waiting for a
/// writer should it be a FIFO (what a process running as the service's user could put in a
/// file's place for a reader to hang on); anything but a regular file is an error.
pub fn open_regular(path: &Path) -> io::Result<std::fs::File> {
    let f = options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(f)
}

/// Creates `dir` and the directories above it that are missing, each one's entry made
/// durable in its parent (fsync of the parent), so that a file synced inside it is not lost
/// with its directory at a power cut: a batch acknowledged as buffered or dead-lettered on a
/// first run must be there after it. Nothing is synced when `dir` exists already.
pub fn create_dir_durably(dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    for d in missing.iter().rev() {
        let parent = match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// What a command that writes to `dir` (a `data_dir`) does first: [`check_owner`], then
/// [`private_umask`].
pub fn enter(dir: &Path) -> Result<(), String> {
    check_owner(dir)?;
    private_umask();
    Ok(())
}

/// Refuses to work as root in `dir` when `dir` belongs to another user: what root creates
/// there the service could not open afterwards, and root would act on files that user
/// controls. Says which user to run as.
pub fn check_owner(dir: &Path) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(());
    };
    if me != 0 || meta.uid() == 0 {
        return Ok(());
    }
    let owner = user_name(meta.uid()).unwrap_or_else(|| format!("uid {}", meta.uid()));
    Err(format!(
        "{} belongs to {owner}, and this runs as root: run it as that user (`sudo -u {owner} gateway ...`), so that root neither acts on files that user controls nor leaves files behind that the service cannot open",
        dir.display()
    ))
}

/// A new directory of this process's own under the temporary directory, mode 0700: never one
/// that exists already (in /tmp another local user could have made it, with links in it).
pub fn scratch_dir(prefix: &str) -> io::Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let mut last = None;
    for attempt in 0..16u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}-{:08x}",
            std::process::id(),
            nanos ^ attempt.wrapping_mul(0x9E37_79B9)
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no scratch directory")))
}

/// Tightens the umask so that nothing this process creates is open to other users (the
/// group's bits are left as the caller set them): a manual `gateway run` under umask 022 would
/// otherwise leave the SQLite store and the data directories readable by every local user.
pub fn private_umask() {
    // SAFETY: umask has no preconditions; it is process-wide, set before threads start.
    unsafe {
        let old = libc::umask(0o077);
        libc::umask(old | 0o007);
    }
}

/// The name of user `uid`, from /etc/passwd.
pub(crate) fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn create_dir_durably_makes_every_missing_directory_and_takes_an_existing_one() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_dir_durably(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_durably(&deep).unwrap();
        std::fs::write(dir.path().join("file"), "").unwrap();
        assert!(create_dir_durably(&dir.path().join("file/x")).is_err());
    }

    #[test]
    fn a_link_in_place_of_an_own_file_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("shadow");
        std::fs::write(&target, "root:secret\n").unwrap();
        let link = dir.path().join("lock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&link)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        assert!(open(&link).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "root:secret\n");

        // A file of its own is created 0600 whatever the umask.
        let own = dir.path().join("segment");
        let mut f = options().write(true).create(true).open(&own).unwrap();
        f.write_all(b"x").unwrap();
        let mode = std::fs::metadata(&own).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mut s = String::new();
        open(&own).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "x");
    }

    #[test]
    fn a_scratch_directory_is_new_and_private() {
        let (a, b) = (
            scratch_dir("own-files-test").unwrap(),
            scratch_dir("own-files-test").unwrap(),
        );
        assert_ne!(a, b);
        for d in [&a, &b] {
            assert_eq!(std::fs::metadata(d).unwrap().mode() & 0o777, 0o700);
            std::fs::remove_dir(d).unwrap();
        }
    }
}
