//! Who may change a file the gateway trusts: the file and every directory above it, owned by
//! root or the gateway's user and not writable by others, as sshd's `StrictModes` checks a
//! user's keys. The host checks its plugin libraries and its config so;
//! [`crate::InitContext::trusted_file`] checks a plugin's CA and CRL files so. I/O: `stat`.

use std::{fs::Metadata, os::unix::fs::MetadataExt, path::Path};

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// What whoever can change a file could do, for the messages.
#[derive(Clone, Copy, Debug)]
pub enum Stake {
    /// A plugin library: its group may not write it either.
    Code,
    /// The config, or a file that decides whom the gateway trusts: its group may write it (a
    /// umask of 002, as Debian gives a user of a private group, makes files and directories
    /// so).
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

/// The effective uid the gateway runs as.
pub fn gateway_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc_geteuid() }
}

/// Whether the file `meta` describes belongs to a user other than root and the gateway's.
pub fn foreign_owner(meta: &Metadata) -> bool {
    meta.uid() != 0 && meta.uid() != gateway_uid()
}

/// Whether others than root, the gateway's user and the file's group may change the file or
/// directory `meta` describes: writable by every user, or owned by another user.
pub fn others_may_change(meta: &Metadata) -> bool {
    meta.mode() & 0o002 != 0 || foreign_owner(meta)
}

/// When `path` is a link (`real` is where it leads), the directories of `path` as written:
/// whoever can write the one holding the link decides where it leads.
pub fn written_dirs(path: &Path, real: &Path, stake: Stake) -> Result<(), String> {
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
/// to is what is checked, and the link's own directory is the next one up): owned by root or
/// the gateway's user, and not writable by those `stake` excludes (a directory with the sticky
/// bit, such as `/tmp`, may be writable by all, since then nobody can rename or delete what
/// another user owns in it). `first` is how `from` is named in the message.
pub fn chain(from: &Path, first: &str, stake: Stake) -> Result<(), String> {
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

/// Checks the directories that decide what `path` (a file that exists; `real` is where it
/// leads, `std::fs::canonicalize(path)`) is: the one holding `real`, every one above that,
/// and, when `path` is a link, those of the link.
pub fn directories(path: &Path, real: &Path, stake: Stake) -> Result<(), String> {
    if let Some(dir) = real.parent() {
        chain(
            dir,
            &format!("{} (which holds {})", dir.display(), real.display()),
            stake,
        )?;
    }
    written_dirs(path, real, stake)
}
