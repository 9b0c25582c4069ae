//! `conf.d/`: fragments of the config beside the main file, read in file-name order
//! (`10-sensors.toml` before `20-uplink.toml`), as Telegraf's and Vector's users expect.
//! A package, a provisioning tool or a third party adds an instance by dropping a file there,
//! without editing the main file. A fragment holds `[sources.*]` and `[sinks.*]` tables only
//! (`[gateway]` stays in the main file), and an instance name may be used once in all files.
//! Only `*.toml` files are read, and not hidden ones: an editor's backup or lock, or a package
//! manager's `.dpkg-old`, is not.

use super::{ConfigError, Instance};
use std::path::{Path, PathBuf};

/// The fragments of the `conf.d/` directory beside `main`, with their text, in name order.
/// No directory, no fragments.
pub fn read(main: &Path) -> Result<Vec<(PathBuf, String)>, ConfigError> {
    let dir = main
        .parent()
        .map_or_else(|| PathBuf::from("conf.d"), |p| p.join("conf.d"));
    // Every file in it is read: adding one is the attack, which the sticky bit (as /tmp has)
    // does not stop. So no other user may write it at all, sticky or not.
    if let Ok(meta) = std::fs::metadata(&dir) {
        use std::os::unix::fs::MetadataExt;
        if crate::trust::others_may_change(&meta) {
            return Err(ConfigError(format!(
                "{}: the fragment directory can be written by others (mode {:04o}, owner uid {}): whoever can add a fragment decides where the readings go and whom the gateway trusts; `chmod o-w` it and give it to root or the gateway's user",
                dir.display(),
                meta.mode() & 0o7777,
                meta.uid()
            )));
        }
        gateway_sdk::trust::no_acl_writers(
            &dir,
            &format!("{} (the fragment directory)", dir.display()),
            gateway_sdk::trust::Stake::Config,
        )
        .map_err(ConfigError)?;
    }
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ConfigError(format!(
                "{}: cannot read the fragment directory: {e}",
                dir.display()
            )))
        }
    };
    // Every `*.toml` name is a fragment but hidden ones (an editor's lock, `.#10-x.toml`, a
    // link to nowhere while a fragment is edited) and directories: one that is no regular
    // file (a FIFO, a link to nothing) is refused by name when it is read, not skipped
    // without a word with the instances it was meant to hold.
    let mut paths = Vec::new();
    for e in entries {
        let e = e.map_err(|e| {
            ConfigError(format!(
                "{}: cannot read the fragment directory: {e}",
                dir.display()
            ))
        })?;
        let name = e.file_name();
        let hidden = name.as_encoded_bytes().starts_with(b".");
        let p = e.path();
        if !hidden && p.extension().is_some_and(|x| x == "toml") && !p.is_dir() {
            paths.push(p);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| super::read_config_file(&p, "the fragment").map(|t| (p.clone(), t)))
        .collect()
}

/// Refuses `new` if an instance of the same name came before it, in any file.
pub fn check_unique<'a>(
    new: &Instance,
    earlier: impl IntoIterator<Item = &'a Instance>,
) -> Result<(), ConfigError> {
    match earlier.into_iter().find(|e| e.name == new.name) {
        None => Ok(()),
        Some(e) => Err(ConfigError(format!(
            "{}:{}: [{}] the name {:?} is already used by [{}] in {}:{}: instance names must be unique across the main file and conf.d",
            new.file.display(),
            new.line,
            new.table(),
            new.name,
            e.table(),
            e.file.display(),
            e.line
        ))),
    }
}
