//! Who may change a file the gateway trusts: the file and every directory above it, owned by
//! root or the gateway's user and not writable by others, as sshd's `StrictModes` checks a
//! user's keys. The host checks its plugin libraries and its config so;
//! [`crate::InitContext::trusted_file`] checks a plugin's CA and CRL files so. I/O: `stat`.

use std::{
    collections::VecDeque,
    fs::Metadata,
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
};

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

/// How many links [`directories`] follows before it gives up, as the kernel's `ELOOP` limit.
const MAX_LINKS: usize = 40;

/// One step of a path being resolved.
enum Step {
    Root,
    Parent,
    Name(std::ffi::OsString),
}

fn steps(p: &Path) -> impl DoubleEndedIterator<Item = Step> + '_ {
    p.components().filter_map(|c| match c {
        Component::RootDir | Component::Prefix(_) => Some(Step::Root),
        Component::CurDir => None,
        Component::ParentDir => Some(Step::Parent),
        Component::Normal(n) => Some(Step::Name(n.to_owned())),
    })
}

/// Resolves `path` one name at a time, as the kernel does, and returns where it leads with
/// every link met on the way (the link's own path, without links in it): the directory that
/// holds a link decides where the link leads, wherever the link is, at the end or in the name
/// of a directory.
fn resolve(path: &Path) -> std::io::Result<(PathBuf, Vec<PathBuf>)> {
    let mut todo: VecDeque<Step> = steps(&std::path::absolute(path)?).collect();
    let (mut at, mut links) = (PathBuf::from("/"), Vec::new());
    while let Some(step) = todo.pop_front() {
        match step {
            Step::Root => at = PathBuf::from("/"),
            // `at` holds no link: its parent is the one the kernel takes.
            Step::Parent => {
                at.pop();
            }
            Step::Name(name) => {
                let next = at.join(name);
                if !std::fs::symlink_metadata(&next)?.file_type().is_symlink() {
                    at = next;
                    continue;
                }
                if links.len() == MAX_LINKS {
                    return Err(std::io::Error::other("too many levels of symbolic links"));
                }
                let target = std::fs::read_link(&next)?;
                for s in steps(&target).rev() {
                    todo.push_front(s);
                }
                links.push(next);
            }
        }
    }
    Ok((at, links))
}

/// Checks the directories that decide what `path` (a file that exists) is, and returns where
/// it leads (as `std::fs::canonicalize`): the one that holds the file, and every one that
/// holds a link met on the way to it (a link at the end, a link to a link, a link in the name
/// of a directory), each with every directory above it. Whoever can write one of them can put
/// another file, or a link to another file, in place of a name in it.
pub fn directories(path: &Path, stake: Stake) -> Result<PathBuf, String> {
    let (real, links) = resolve(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let holds = std::iter::once((&real, "")).chain(links.iter().map(|l| (l, "the link ")));
    for (entry, what) in holds {
        if let Some(dir) = entry.parent() {
            chain(
                dir,
                &format!("{} (which holds {what}{})", dir.display(), entry.display()),
                stake,
            )?;
        }
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// A directory of its own under the temporary directory, removed when dropped.
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(name: &str) -> Scratch {
            let p = std::env::temp_dir().join(format!("gw-trust-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir(&p).unwrap();
            Scratch(p)
        }
        fn dir(&self, name: &str, mode: u32) -> PathBuf {
            let d = self.0.join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
            d
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn every_link_on_the_way_has_its_directory_checked() {
        let s = Scratch::new("links");
        let etc = s.dir("etc", 0o755);
        let shared = s.dir("shared", 0o777);
        std::fs::write(etc.join("real.pem"), "ca").unwrap();
        // ca.pem -> ../shared/hop.pem -> ../etc/real.pem: both ends are in `etc`, the middle
        // link in a directory every user can write, who can point it at any file.
        symlink("../etc/real.pem", shared.join("hop.pem")).unwrap();
        symlink("../shared/hop.pem", etc.join("ca.pem")).unwrap();
        let ca = etc.join("ca.pem");
        let e = directories(&ca, Stake::Config).unwrap_err();
        assert!(
            e.contains(&format!(
                "which holds the link {}",
                shared.join("hop.pem").display()
            )) && e.contains("writable by others (mode 0777)"),
            "{e}"
        );
        // A link in the name of a directory: etc/x -> ../shared/y -> real, a directory in
        // `etc`; `shared` holds the link `y`.
        std::fs::create_dir(etc.join("real")).unwrap();
        std::fs::write(etc.join("real/ca.pem"), "ca").unwrap();
        symlink("../etc/real", shared.join("y")).unwrap();
        symlink("../shared/y", etc.join("x")).unwrap();
        let e = directories(&etc.join("x/ca.pem"), Stake::Config).unwrap_err();
        assert!(
            e.contains(&format!(
                "which holds the link {}",
                shared.join("y").display()
            )),
            "{e}"
        );
        // With `shared` closed, both pass, and lead where the kernel goes.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        for p in [ca, etc.join("x/ca.pem"), etc.join("x/../real.pem")] {
            assert_eq!(
                directories(&p, Stake::Config).unwrap(),
                std::fs::canonicalize(&p).unwrap(),
                "{}",
                p.display()
            );
        }
    }

    #[test]
    fn a_file_itself_in_a_directory_others_can_write_is_refused_and_a_loop_is_named() {
        let s = Scratch::new("plain");
        let open = s.dir("open", 0o777);
        std::fs::write(open.join("ca.pem"), "ca").unwrap();
        let e = directories(&open.join("ca.pem"), Stake::Config).unwrap_err();
        assert!(
            e.contains(&format!(
                "{} (which holds {})",
                open.display(),
                open.join("ca.pem").display()
            )),
            "{e}"
        );
        let closed = s.dir("closed", 0o755);
        symlink("b", closed.join("a")).unwrap();
        symlink("a", closed.join("b")).unwrap();
        let e = directories(&closed.join("a"), Stake::Config).unwrap_err();
        assert!(e.contains("too many levels of symbolic links"), "{e}");
        let e = directories(&closed.join("none"), Stake::Config).unwrap_err();
        assert!(e.contains("No such file"), "{e}");
    }
}
