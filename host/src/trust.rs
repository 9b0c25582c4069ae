//! Who may change what the gateway trusts: the plugin libraries it runs ([`library`]), and
//! the config (`open_config`: the main file, its `conf.d/` fragments and the files
//! `${file:...}` takes values from), which says where the readings go and whom the gateway
//! trusts. Checked the way sshd's `StrictModes` checks a user's keys: the file and every
//! directory above it, owned by root or the gateway's user, and not writable by others. I/O:
//! `stat`, and `open` of the config files.

use gateway_sdk::trust::{chain, directories, Stake};
pub(crate) use gateway_sdk::trust::{gateway_uid, others_may_change};
use std::{
    fs::{File, Metadata},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

/// Checks that `path` (resolved through symlinks) and every directory above it can be changed
/// only by root or by the user the gateway runs as: owned by one of them and not writable by
/// group or others (a directory with the sticky bit, such as `/tmp`, may be writable by all,
/// since then nobody can rename or delete what another user owns in it). The directories of
/// `path` as it is written are checked too, and those of every link on the way: one that holds
/// a link (`libx.so -> libx-1.2.so`) decides where the link leads, and whoever can write it
/// could point the link at another library. Returns the resolved path, to be opened instead of `path`, or why it is refused
/// and how to fix it.
pub fn library(path: &Path) -> Result<PathBuf, String> {
    let real = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let first = if real == path {
        real.display().to_string()
    } else {
        format!("{} (where {} leads)", real.display(), path.display())
    };
    chain(&real, &first, Stake::Code)?;
    directories(path, Stake::Code)?;
    Ok(real)
}

/// Opens a file of the config (`what` names it: "the config file", "the fragment") for
/// reading, if it is a regular file that only root, the gateway's user and the file's group
/// can change, in directories that only root and the gateway's user can change (the
/// directory's group may write it too; others only with the sticky bit, as in `/tmp`). Whoever
/// can replace the file, or add a fragment, decides where the readings go. A FIFO or a device
/// is refused without waiting for a writer. Errors start with the path and say how to fix it.
pub(crate) fn open_config(path: &Path, what: &str) -> Result<(File, Metadata), String> {
    let cannot = |e: &dyn std::fmt::Display| format!("{}: cannot read {what}: {e}", path.display());
    let (f, meta) = open_regular(path).map_err(|e| cannot(&e))?;
    if others_may_change(&meta) {
        return Err(format!(
            "{}: {what} can be changed by others (mode {:04o}, owner uid {}; the gateway runs as uid {}): whoever can change it decides where the readings go and whom the gateway trusts; `chmod o-w` it and give it to root or the gateway's user",
            path.display(),
            meta.mode() & 0o7777,
            meta.uid(),
            gateway_uid()
        ));
    }
    gateway_sdk::trust::no_acl_writers_of(&f, path, Stake::Config)?;
    directories(path, Stake::Config).map_err(|e| {
        format!(
            "{}: {what} is in a directory others can change: {e}",
            path.display()
        )
    })?;
    Ok((f, meta))
}

/// Opens `path` for reading if it is a regular file, without waiting on a FIFO for a writer.
pub(crate) fn open_regular(path: &Path) -> std::io::Result<(File, Metadata)> {
    // O_NONBLOCK makes the open of a FIFO return at once; reads of a regular file ignore it.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok((f, meta))
}
