//! Who may change a file the gateway trusts: the file and every directory above it, owned by
//! root or the gateway's user and not writable by others, as sshd's `StrictModes` checks a
//! user's keys, and by their POSIX ACLs too (which the mode bits do not show). The host checks
//! its plugin libraries and its config so;
//! [`crate::InitContext::trusted_file`] checks a plugin's CA and CRL files so. I/O: `stat`,
//! and `getxattr` for the ACLs.

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

/// What an access ACL entry may let do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acl {
    /// Read the file (a secret).
    Read,
    /// Write the file, or add and remove names in the directory.
    Write,
}

/// The users and groups that the POSIX access ACL of `path` (following links) lets do `what`
/// (after its mask), as `user 1001`, `group 27`, but root, the gateway's user, and the groups
/// in `groups` (those the mode bits may let do it too: the file's own, the gateway's): the
/// mode bits do not show them (the group bits of a file with an ACL are its mask), so a check
/// of the mode alone lets `setfacl -m u:mallory:rw` through. Empty when the file has no ACL,
/// or its filesystem has none (NFSv4 ACLs are not read).
pub fn acl_grants(path: &Path, what: Acl, groups: &[u32]) -> std::io::Result<Vec<String>> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a path with a NUL byte"))?;
    acl_xattr(what, groups, |buf| {
        // SAFETY: both strings are NUL-terminated, and `buf` is valid for `buf.len()` bytes.
        unsafe {
            libc::getxattr(
                c.as_ptr(),
                ACL_XATTR.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        }
    })
}

/// [`acl_grants`] of a file already open: what is checked is what is read.
pub fn acl_grants_of(
    file: &std::fs::File,
    what: Acl,
    groups: &[u32],
) -> std::io::Result<Vec<String>> {
    use std::os::fd::AsRawFd;
    acl_xattr(what, groups, |buf| {
        // SAFETY: the descriptor is open for the call, the name is NUL-terminated, and `buf`
        // is valid for `buf.len()` bytes.
        unsafe {
            libc::fgetxattr(
                file.as_raw_fd(),
                ACL_XATTR.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        }
    })
}

/// The attribute that holds a POSIX access ACL.
const ACL_XATTR: &std::ffi::CStr = c"system.posix_acl_access";

/// The group the gateway runs as.
pub fn gateway_gid() -> u32 {
    // SAFETY: getegid has no preconditions and cannot fail.
    unsafe { libc::getegid() }
}

/// Reads the ACL attribute with `get` and lists who it lets do `what`.
fn acl_xattr(
    what: Acl,
    groups: &[u32],
    get: impl Fn(&mut [u8]) -> libc::ssize_t,
) -> std::io::Result<Vec<String>> {
    // An ACL holds a few 8-byte entries: 4 KiB on the stack takes 511, and a larger one is
    // read again into the kernel's limit for an attribute, 64 KiB.
    let mut small = [0u8; 4096];
    let mut large = Vec::new();
    let mut n = get(&mut small);
    let mut buf = &small[..];
    if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE) {
        large.resize(64 * 1024, 0);
        n = get(&mut large);
        buf = &large;
    }
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA | libc::ENOTSUP) => Ok(Vec::new()),
            _ => Err(e),
        };
    }
    Ok(acl_entries_granting(&buf[..n as usize], what, groups))
}

/// [`acl_grants`] of the bytes of a `system.posix_acl_access` attribute: a version word (2),
/// then entries of a tag, permissions and an id (little-endian u16, u16, u32).
fn acl_entries_granting(xattr: &[u8], what: Acl, groups: &[u32]) -> Vec<String> {
    const USER: u16 = 0x02;
    const GROUP: u16 = 0x08;
    const MASK: u16 = 0x10;
    let bit = match what {
        Acl::Read => 4,
        Acl::Write => 2,
    };
    let entries: Vec<(u16, u16, u32)> = xattr
        .get(4..)
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|e| {
            (
                u16::from_le_bytes([e[0], e[1]]),
                u16::from_le_bytes([e[2], e[3]]),
                u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            )
        })
        .collect();
    let mask = entries.iter().find(|e| e.0 == MASK).map_or(7, |e| e.1);
    let me = gateway_uid();
    entries
        .iter()
        .filter(|(_, perm, _)| perm & mask & bit != 0)
        .filter_map(|(tag, _, id)| match *tag {
            USER if *id != 0 && *id != me => Some(format!("user {id}")),
            GROUP if *id != 0 && !groups.contains(id) => Some(format!("group {id}")),
            _ => None,
        })
        .collect()
}

/// Refuses a file or directory of group `gid` (shown as `shown` in the error, at `path`)
/// whose ACL, read by `grants`, lets others write it: beyond root and the gateway's user, the
/// groups `stake` lets write as the owning group may (the file's own and the gateway's for
/// the config; none for code). The error names them and the fix.
fn refuse_acl_writers(
    shown: &str,
    path: &Path,
    stake: Stake,
    gid: u32,
    grants: impl FnOnce(&[u32]) -> std::io::Result<Vec<String>>,
) -> Result<(), String> {
    let groups = [gid, gateway_gid()];
    let allowed = match stake {
        Stake::Code => &groups[..0],
        Stake::Config => &groups[..],
    };
    let who = grants(allowed).map_err(|e| format!("{}: {e}", path.display()))?;
    if who.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{shown} has an ACL that lets {} write it (`getfacl {}`); whoever can write it can {}: `setfacl -b {}`",
        who.join(", "),
        path.display(),
        stake.what(),
        path.display()
    ))
}

/// Checks that no ACL of `path` lets others write it (beyond the groups `stake` allows):
/// the error names them and the fix.
pub fn no_acl_writers(path: &Path, shown: &str, stake: Stake) -> Result<(), String> {
    let gid = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .gid();
    refuse_acl_writers(shown, path, stake, gid, |g| acl_grants(path, Acl::Write, g))
}

/// [`no_acl_writers`] of a file already open at `path`: what is checked is what is read.
pub fn no_acl_writers_of(file: &std::fs::File, path: &Path, stake: Stake) -> Result<(), String> {
    let gid = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .gid();
    let shown = path.display().to_string();
    refuse_acl_writers(&shown, path, stake, gid, |g| {
        acl_grants_of(file, Acl::Write, g)
    })
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
        if !sticky_dir {
            refuse_acl_writers(&shown, p, stake, m.gid(), |g| acl_grants(p, Acl::Write, g))?;
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

/// Checks that the file `meta` describes, at `path` (open as `file`, if it is: then its ACL
/// is read from what is read), is a secret only its owner can change and no other user can
/// read: a private key, a password, a list of keys readable by every local user, writable by
/// its group or others, or owned by a user other than root or the gateway's, is refused, as
/// ssh and PostgreSQL refuse them (mode 0600, or 0640 for a group the service shares, is
/// fine). So is one that is not a regular file (a FIFO would hang whoever opens it), and one
/// in a directory others can change (whoever can write it can put a file of their own in its
/// place). `owners` says whose files are taken, and which directories checked. `Err` names
/// the problem and its fix.
pub fn private(
    path: &Path,
    meta: &Metadata,
    file: Option<&std::fs::File>,
    owners: Owners,
) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let mode = meta.permissions().mode();
    // The directory that holds it, for an operator's tool.
    if owners == Owners::Operator {
        operator_may_use(path, meta, "holds a secret", 0o022)?;
    }
    // Whoever can change a secret file can add a key of their own to it.
    if mode & 0o022 != 0 || (owners == Owners::Gateway && foreign_owner(meta)) {
        return Err(format!(
            "{} holds a secret but can be changed by others (mode {:04o}, owner uid {}; the gateway runs as uid {}): `chmod go-w {}` and give it to root or the gateway's user",
            path.display(),
            mode & 0o7777,
            meta.uid(),
            gateway_uid(),
            path.display()
        ));
    }
    if mode & 0o007 != 0 {
        return Err(format!(
            "{} holds a secret but every local user may read it (mode {:04o}): `chmod o-rwx {}`",
            path.display(),
            mode & 0o7777,
            path.display()
        ));
    }
    // The mode bits do not show a POSIX ACL's named users and groups. As with the mode, the
    // file's group and the gateway's may read it, and none but its owner change it.
    let readers = [meta.gid(), gateway_gid()];
    for (what, verb, groups) in [
        (Acl::Write, "change", &[][..]),
        (Acl::Read, "read", &readers[..]),
    ] {
        let who = match file {
            Some(f) => acl_grants_of(f, what, groups),
            None => acl_grants(path, what, groups),
        }
        .map_err(|e| format!("{}: {e}", path.display()))?;
        if !who.is_empty() {
            return Err(format!(
                "{} holds a secret but its ACL lets {} {verb} it (`getfacl {}`): `setfacl -b {}`",
                path.display(),
                who.join(", "),
                path.display(),
                path.display()
            ));
        }
    }
    // Whoever can change a directory on the way can put another file in its place.
    if owners == Owners::Gateway {
        directories(path, Stake::Config).map_err(|e| {
            format!(
                "{} holds a secret, but is in a directory others can change: {e}",
                path.display()
            )
        })?;
    }
    Ok(())
}

/// The checks of [`Owners::Operator`] for the file `meta` describes, at `path`: its owner is
/// root, this user or the owner of the directory that holds it, and that directory's group and
/// other users may not write it (`dir_write`: the bits that count), unless it is sticky, as
/// `/tmp`. `what` says what the file is, for the message.
fn operator_may_use(
    path: &Path,
    meta: &Metadata,
    what: &str,
    dir_write: u32,
) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    let parent = parent.unwrap_or(Path::new("."));
    let dir = std::fs::metadata(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let uid = meta.uid();
    if uid != 0 && uid != gateway_uid() && uid != dir.uid() {
        return Err(format!(
            "{} {what} but belongs to uid {uid}, neither this user, root nor the owner of its directory: its owner could have put what they like in it",
            path.display()
        ));
    }
    // Sticky (/tmp): others may not move this file away or put another in its place.
    let mode = dir.permissions().mode();
    if mode & dir_write != 0 && mode & 0o1000 == 0 {
        return Err(format!(
            "{} {what}, but its directory may be changed by others (mode {:04o}): whoever may write it can put another file in its place",
            path.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Checks, for a tool an operator runs, a file that decides whom it trusts (a CA or CRL
/// file): every user may read it, and its group may write it, as
/// [`crate::InitContext::trusted_file`] takes one, but not every user; its owner and
/// directory as [`Owners::Operator`] takes them. Whoever can add a certificate to it can pose
/// as the server. A file that does not exist passes: the tool says so when it loads it.
pub fn operator_may_trust(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let what = "decides whom this tool trusts";
    if meta.permissions().mode() & 0o002 != 0 {
        return Err(format!(
            "{} {what} but every user may change it (mode {:04o}): `chmod o-w {}`",
            path.display(),
            meta.permissions().mode() & 0o7777,
            path.display()
        ));
    }
    operator_may_use(path, &meta, what, 0o002)
}

/// Whose private files [`private`] takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owners {
    /// The gateway's: root's or its own user's, in directories only they can change, all the
    /// way up ([`directories`]).
    Gateway,
    /// A tool an operator runs: root's, this user's, or the owner's of the directory that
    /// holds it (the service's key in the service's directory, which root may use), in a
    /// directory its group and other users may not change (or a sticky one, as `/tmp`).
    Operator,
}

/// The text of the private file at `path`, checked as [`private`] checks one, and read from
/// the file it checked: it is opened once, and the open file is what is checked and read, so
/// that nobody can put another in its place between the check and the read. A FIFO or a
/// device is refused rather than waited on, and a file above 16 MiB rather than read.
pub fn read_private(path: &Path, owners: Owners) -> Result<String, String> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    const MAX: u64 = 16 << 20;
    let failed = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    // Non-blocking: opening a FIFO for reading would wait for a writer.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| failed(&e))?;
    let meta = file.metadata().map_err(|e| failed(&e))?;
    private(path, &meta, Some(&file), owners)?;
    let mut bytes = Vec::new();
    (&mut file)
        .take(MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| failed(&e))?;
    if bytes.len() as u64 > MAX {
        return Err(failed(&"larger than 16 MiB: not a file of secrets"));
    }
    String::from_utf8(bytes).map_err(|_| failed(&"not UTF-8 text"))
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

    /// A user and a group that are neither root, the gateway's, nor the file's.
    pub(crate) fn strangers() -> (u32, u32) {
        let user = if gateway_uid() == 54321 { 54322 } else { 54321 };
        let group = if gateway_gid() == 54327 { 54328 } else { 54327 };
        (user, group)
    }

    /// Gives `path` an access ACL that lets the [`strangers`] and group `also` do `perm` (6:
    /// read and write), with a mask of `mask`, as `setfacl -m u:U:rw,g:G:rw,m::rw` would;
    /// `false` when its filesystem has no ACLs.
    pub(crate) fn set_acl(path: &Path, perm: u16, mask: u16, also: u32) -> bool {
        use std::os::unix::ffi::OsStrExt;
        const ANY: u32 = u32::MAX;
        let (user, group) = strangers();
        let mut groups = [group, also];
        groups.sort();
        let mut x = 2u32.to_le_bytes().to_vec();
        for (tag, p, id) in [
            (0x01u16, 6u16, ANY),
            (0x02, perm, user),
            (0x04, 4, ANY),
            (0x08, perm, groups[0]),
            (0x08, perm, groups[1]),
            (0x10, mask, ANY),
            (0x20, 4, ANY),
        ] {
            x.extend(tag.to_le_bytes());
            x.extend(p.to_le_bytes());
            x.extend(id.to_le_bytes());
        }
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated strings and a buffer of `x.len()` bytes.
        let r = unsafe {
            libc::setxattr(
                c.as_ptr(),
                ACL_XATTR.as_ptr(),
                x.as_ptr().cast(),
                x.len(),
                0,
            )
        };
        if r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTSUP) {
            return false;
        }
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        true
    }

    /// `setfacl -m u:mallory:rw` on a directory of the config: the mode bits showed a group
    /// that may write (the mask), which a config's directory may have, and it passed.
    #[test]
    fn an_acl_that_lets_others_write_is_refused_and_a_masked_one_passes() {
        let s = Scratch::new("acl");
        let etc = s.dir("etc", 0o755);
        std::fs::write(etc.join("ca.pem"), "ca").unwrap();
        let own = std::fs::metadata(&etc).unwrap().gid();
        if !set_acl(&etc, 6, 6, own) {
            eprintln!("no ACLs on this filesystem: skipped");
            return;
        }
        let (user, group) = strangers();
        let e = directories(&etc.join("ca.pem"), Stake::Config).unwrap_err();
        assert!(
            e.contains(&format!(
                "has an ACL that lets user {user}, group {group} write it"
            )) && e.contains(&format!("`setfacl -b {}`", etc.display())),
            "{e}"
        );
        // The mask takes write away: nobody named may write.
        set_acl(&etc, 6, 4, own);
        directories(&etc.join("ca.pem"), Stake::Config).unwrap();
        // The directory's own group, named, may read as its mode bits would let it; as may
        // the gateway's. Strangers may not.
        assert_eq!(
            acl_grants(&etc, Acl::Read, &[own, gateway_gid()]).unwrap(),
            [format!("user {user}"), format!("group {group}")]
        );
        // A file without an ACL has none to tell.
        assert!(acl_grants(&etc.join("ca.pem"), Acl::Write, &[])
            .unwrap()
            .is_empty());
    }

    /// A key shared with the service's group by ACL (`setfacl -m g:gateway:r`, as certbot's
    /// keys often are) is what mode 0640 gives that group: the groups a check allows are no
    /// strangers, read by path or from the open file.
    #[test]
    fn an_acl_naming_an_allowed_group_is_no_stranger() {
        let s = Scratch::new("acl-own");
        let d = s.dir("d", 0o755);
        let key = d.join("k");
        std::fs::write(&key, "k").unwrap();
        let service = 54330;
        if !set_acl(&key, 4, 4, service) {
            return;
        }
        let (user, group) = strangers();
        let strangers = [format!("user {user}"), format!("group {group}")];
        assert_eq!(acl_grants(&key, Acl::Read, &[service]).unwrap(), strangers);
        let f = std::fs::File::open(&key).unwrap();
        assert_eq!(acl_grants_of(&f, Acl::Read, &[service]).unwrap(), strangers);
        assert!(acl_grants(&key, Acl::Read, &[])
            .unwrap()
            .contains(&format!("group {service}")));
        assert!(acl_grants(&key, Acl::Write, &[]).unwrap().is_empty());
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
