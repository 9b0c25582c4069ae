//! Who may change what the gateway trusts: the plugin libraries it runs ([`library`]), and
//! the config (`open_config`: the main file, its `conf.d/` fragments and the files
//! `${file:...}` takes values from), which says where the readings go and whom the gateway
//! trusts. Checked the way sshd's `StrictModes` checks a user's keys: the file and every
//! directory above it, owned by root or the gateway's user, and not writable by others. I/O:
//! `stat`, and `open` of the config files.

use std::{
    fs::{File, Metadata},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

/// What whoever can change a file could do, for the messages.
#[derive(Clone, Copy)]
enum Stake {
    /// A plugin library: its group may not write it either.
    Code,
    /// The config: its group may write it (a umask of 002, as Debian gives a user of a
    /// private group, makes files and directories so).
    Config,
}

impl Stake {
    fn what(self) -> &'static str {
        match self {
            Stake::Code => "run code inside the gateway",
            Stake::Config => "decide where the readings go and whom the gateway trusts",
        }
    }

    fn write_bits(self) -> u32 {
        match self {
            Stake::Code => 0o022,
            Stake::Config => 0o002,
        }
    }
}

/// Checks that `path` (resolved through symlinks) and every directory above it can be changed
/// only by root or by the user the gateway runs as: owned by one of them and not writable by
/// group or others (a directory with the sticky bit, such as `/tmp`, may be writable by all,
/// since then nobody can rename or delete what another user owns in it). The directories of
/// `path` as it is written are checked too: one that holds a link (`libx.so -> libx-1.2.so`)
/// decides where the link leads, and whoever can write it could point the link at another
/// library. Returns the resolved path, to be opened instead of `path`, or why it is refused
/// and how to fix it.
pub fn library(path: &Path) -> Result<PathBuf, String> {
    let real = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let first = if real == path {
        real.display().to_string()
    } else {
        format!("{} (where {} leads)", real.display(), path.display())
    };
    chain(&real, &first, Stake::Code)?;
    written_dirs(path, &real, Stake::Code)?;
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
    let real = std::fs::canonicalize(path).map_err(|e| cannot(&e))?;
    let dirs = match real.parent() {
        Some(dir) => chain(
            dir,
            &format!("{} (which holds {})", dir.display(), real.display()),
            Stake::Config,
        )
        .and_then(|()| written_dirs(path, &real, Stake::Config)),
        None => Ok(()),
    };
    dirs.map_err(|e| {
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

/// When `path` is a link (`real` is where it leads), the directories of `path` as written:
/// whoever can write the one holding the link decides where it leads.
fn written_dirs(path: &Path, real: &Path, stake: Stake) -> Result<(), String> {
    if real == path {
        return Ok(());
    }
    let written = std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))?;
    match written.parent() {
        Some(dir) => chain(
            dir,
            &format!(
                "{} (which holds the link {})",
                dir.display(),
                path.display()
            ),
            stake,
        ),
        None => Ok(()),
    }
}

/// Checks `from` and every directory above it (following links: the directory a link leads
/// to is what is checked, and the link's own directory is the next one up). `first` is how
/// `from` is named in the message.
fn chain(from: &Path, first: &str, stake: Stake) -> Result<(), String> {
    let me = gateway_uid();
    let mut at = Some(from);
    while let Some(p) = at {
        let m = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let shown = if p == from {
            first.to_owned()
        } else {
            p.display().to_string()
        };
        if foreign_owner(&m) {
            return Err(format!(
                "{shown} is owned by uid {}, neither root nor the user the gateway runs as (uid {me}); whoever owns it can {}: `chown root {}` (or the gateway's user)",
                m.uid(),
                stake.what(),
                p.display()
            ));
        }
        let sticky_dir = m.is_dir() && m.mode() & 0o1000 != 0;
        if m.mode() & stake.write_bits() != 0 && !sticky_dir {
            let by = match (stake, m.mode() & 0o020 != 0, m.mode() & 0o002 != 0) {
                (Stake::Config, _, _) | (Stake::Code, false, _) => "others",
                (Stake::Code, true, true) => "group and others",
                (Stake::Code, true, false) => "its group",
            };
            return Err(format!(
                "{shown} is writable by {by} (mode {:04o}); whoever can write it can {}: `chmod {} {}`",
                m.mode() & 0o7777,
                stake.what(),
                match stake {
                    Stake::Code => "go-w",
                    Stake::Config => "o-w",
                },
                p.display()
            ));
        }
        at = p.parent();
    }
    Ok(())
}

/// The effective uid the gateway runs as.
pub(crate) fn gateway_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether others than root, the gateway's user and the group may change the config file or
/// directory `meta` describes: writable by every user, or owned by another user.
pub(crate) fn others_may_change(meta: &Metadata) -> bool {
    meta.mode() & 0o002 != 0 || foreign_owner(meta)
}

/// Whether the file `meta` describes belongs to a user other than root and the gateway's.
pub(crate) fn foreign_owner(meta: &Metadata) -> bool {
    meta.uid() != 0 && meta.uid() != gateway_uid()
}
