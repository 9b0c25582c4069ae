//! Finds plugin libraries, checks that they were built against a compatible SDK, and hands out
//! their plugins by id.
//!
//! Libraries are loaded with `dlopen` and never unloaded (neither `abi_stable` nor the plugins'
//! own statics allow it). A plugin id is looked for only in the libraries its name gives: the
//! library named after the id (`libds18b20.so` for `ds18b20`, with `-` as `_`), then the one
//! named after the id's first part (`libacme.so` for `acme-uplink`), which is how one library
//! exports several plugins. No other file is opened for it.
//!
//! Before anything is opened, the directory and the file are checked the way sshd's
//! `StrictModes` checks a user's keys ([`trust::library`]): whoever can write a library can run code
//! inside the gateway, so only the administrator (root) or the gateway's own user may.

use crate::plugin_metrics::LibraryFile;
use crate::{logging::HostLogger, trust};
use abi_stable::{
    library::{lib_header_from_raw_library, AbiHeader, LibraryError, RawLibrary},
    sabi_trait::TD_Opaque,
    StableAbi,
};
use gateway_sdk::abi::{self, HostLog_TO, PluginDescriptor, PluginKind, PluginLibraryRef};
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
};

mod elf;
mod layout;

/// A loaded, compatible plugin library.
#[derive(Clone)]
pub struct Library {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// Its package name.
    pub name: String,
    /// Its package version.
    pub version: String,
    /// The SDK version it was built against.
    pub sdk_version: String,
    /// The plugins it exports.
    pub plugins: Vec<PluginDescriptor>,
    /// The file it was first loaded from, which the process runs for good: what its logs and
    /// metrics are bound to ([`crate::plugin_metrics::PluginMetrics::allow`]).
    pub file: LibraryFile,
}

impl Library {
    /// The file name, for messages.
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Why a file could not be used as a plugin library. Each message says what is wrong and what
/// to do about it; the caller puts the file's path before it (`libx.so: is not a gateway
/// plugin: ...`).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file is gone or not a regular file, or the dynamic loader refused it for a reason the
    /// file's header does not show (a library it needs is missing, say).
    #[error("cannot be loaded: {reason}; {fix}")]
    Open {
        /// What is wrong, in the dynamic loader's words where it gave some.
        reason: String,
        /// What to do.
        fix: String,
    },
    /// The file is not a shared library at all.
    #[error("is not a shared library ({what}; the dynamic loader says \"{loader}\"): a plugin directory holds only plugin libraries, so move it elsewhere")]
    NotALibrary {
        /// What the file is instead.
        what: String,
        /// The dynamic loader's error.
        loader: String,
    },
    /// A shared library built for another kind of machine.
    #[error("is a shared library for {found}, but this gateway runs on {host}: install the plugin's {host} build, or rebuild it for {host}")]
    WrongMachine {
        /// The library's machine.
        found: String,
        /// The gateway's machine.
        host: String,
    },
    /// A shared library that exports no gateway plugin module.
    #[error("is not a gateway plugin: it is a shared library, but it exports no plugin module; move it out of the plugin directory, or, if it is meant to be a plugin, export its plugins with `gateway_sdk::export!` and build it as a cdylib")]
    NotAPlugin,
    /// Built against an SDK whose major version differs from the host's.
    #[error("was built against gateway-sdk {plugin}, but this gateway uses gateway-sdk {host}; rebuild the plugin against gateway-sdk {host} (the major versions must match)")]
    IncompatibleSdk {
        /// The host's SDK version.
        host: String,
        /// The plugin's SDK version.
        plugin: String,
    },
    /// Built against an SDK of a compatible version whose types differ (a patched or
    /// unreleased SDK).
    #[error("has an incompatible ABI layout: {difference}; the plugin says it was built against gateway-sdk {plugin} and this gateway was built against gateway-sdk {host}, but their types differ (the plugin's SDK was patched or unreleased): rebuild the plugin against the gateway-sdk this gateway was built with, {host}")]
    Layout {
        /// The first type that differs, where, and how.
        difference: String,
        /// The SDK version the library says it was built against.
        plugin: String,
        /// The host's SDK version.
        host: String,
    },
    /// Exported without the layout of its types (`#[unsafe_no_layout_constant]`, or a header
    /// made by hand), so nothing could show that they are the host's: used anyway, a type that
    /// differs would be read as the host's.
    #[error("carries no layout of its types to check against this gateway's (it was exported with #[unsafe_no_layout_constant] or a header made by hand): export its plugins with `gateway_sdk::export!` and rebuild it against gateway-sdk {sdk}", sdk = gateway_sdk::SDK_VERSION)]
    NoLayout,
    /// Built with an `abi_stable` whose library header this host cannot read.
    #[error("was built with {found}, but this gateway uses abi_stable {host}, which cannot read its library header: rebuild the plugin against gateway-sdk {sdk} (which brings abi_stable {host})", sdk = gateway_sdk::SDK_VERSION)]
    AbiStable {
        /// `abi_stable 0.10`, or what else the header is.
        found: String,
        /// The host's `abi_stable` version (`0.11`).
        host: String,
    },
    /// Passes values across the boundary differently from the host (`abi_stable`'s C ABI test).
    #[error("passes values to functions differently from this gateway (abi_stable's test of the C calling convention expected {expected}, found {found}): it was built for another target or by an incompatible compiler; rebuild it for this machine against gateway-sdk {sdk}", sdk = gateway_sdk::SDK_VERSION)]
    CAbi {
        /// What the host's side computed.
        expected: String,
        /// What the library's side computed.
        found: String,
    },
    /// The library's root module constructor failed.
    #[error("failed to initialise: {0}; a library whose plugins are exported with `gateway_sdk::export!` cannot fail here, so its export glue is broken: rebuild it against gateway-sdk {sdk} with `gateway_sdk::export!`, or ask its author", sdk = gateway_sdk::SDK_VERSION)]
    Init(String),
    /// The file, or a directory above it, could be changed by someone other than the
    /// administrator or the gateway's user.
    #[error("is not trusted: {0}")]
    Untrusted(String),
    /// Built with `panic = "abort"`: a panic inside it would end the gateway, every other
    /// plugin with it, instead of becoming an error of its instance.
    #[error("was built with panic = \"abort\": one panic inside it would end the whole gateway, every other plugin with it, where a library that unwinds has the instance that panicked rebuilt; rebuild it with panic = \"unwind\" (Cargo's default: remove `panic = \"abort\"` from the [profile] of its workspace's Cargo.toml)")]
    Aborts,
}

/// A library error's text on one line: its last lines, where `abi_stable` puts the cause.
fn summarize(report: &str) -> String {
    let lines: Vec<&str> = report
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = &lines[lines.len().saturating_sub(4)..];
    tail.join(" ")
}

/// The `abi_stable` version a library header stands for: `abi_stable 0.11`.
fn abi_stable_of(header: &AbiHeader) -> String {
    if header.magic_string == AbiHeader::VALUE.magic_string {
        format!("abi_stable {}.{}", header.abi_major, header.abi_minor)
    } else {
        "a library header that is not abi_stable's".into()
    }
}

/// Why the dynamic loader refused `file`: what the file's header shows (it is not a shared
/// library, or one for another machine), or else the loader's own words and what they call for.
fn refused_by_loader(file: &Path, loader_error: &str) -> LoadError {
    let loader = loader_error.trim().replace('\n', " ");
    // The loader names the file first; the caller names it already.
    let loader = loader
        .strip_prefix(&format!("{}: ", file.display()))
        .unwrap_or(&loader)
        .to_owned();
    match elf::inspect(file) {
        elf::Inspected::NotALibrary(what) => {
            return LoadError::NotALibrary {
                what: what.into(),
                loader,
            }
        }
        elf::Inspected::ForAnotherMachine { found, host } => {
            return LoadError::WrongMachine { found, host }
        }
        elf::Inspected::ForThisMachine => {}
    }
    let fix = if loader.contains("cannot open shared object file") {
        "a library it needs is missing: install it (`ldd` on the file lists what is missing)"
    } else if loader.contains("version `") {
        "it needs newer system libraries than this machine has: rebuild it for this system"
    } else {
        "rebuild it for this system, or move it out of the plugin directory"
    };
    LoadError::Open {
        reason: format!("the dynamic loader refused it ({loader})"),
        fix: fix.into(),
    }
}

/// Which file each library path was loaded from (device, inode, modification time): the
/// dynamic loader hands back a library already loaded under a path, even when another file is
/// there now.
static LOADED: std::sync::Mutex<BTreeMap<PathBuf, (u64, u64, i64)>> =
    std::sync::Mutex::new(BTreeMap::new());

/// The file at `real` now, as [`LOADED`] keeps it.
fn file_identity(real: &Path) -> Option<(u64, u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(real).ok()?;
    Some((m.dev(), m.ino(), m.mtime()))
}

/// Whether the library at `real` (a resolved path) was loaded by this process from a file
/// that is no longer the one there: a plugin upgraded in place, whose new code a reload does
/// not run (the process keeps the code it loaded first).
pub fn replaced_since_loaded(real: &Path) -> bool {
    replaced(real, file_identity(real))
}

/// Whether the library at `real`, now the file `now`, was loaded from another one.
fn replaced(real: &Path, now: Option<(u64, u64, i64)>) -> bool {
    let loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    now.is_some_and(|now| loaded.get(real).is_some_and(|was| now != *was))
}

/// Loads one library file and checks it; the file and the directories above it must pass
/// [`trust::library`] first.
pub fn load(path: &Path, logger: &Arc<HostLogger>) -> Result<Library, LoadError> {
    if !path.exists() {
        return Err(LoadError::Open {
            reason: "there is no such file".into(),
            fix: "check the path, or put the plugin library there".into(),
        });
    }
    let real = trust::library(path).map_err(LoadError::Untrusted)?;
    if !real.is_file() {
        return Err(LoadError::Open {
            reason: "it is not a regular file".into(),
            fix: "replace it with the plugin library, or move it out of the plugin directory"
                .into(),
        });
    }
    let identity = file_identity(&real);
    if replaced(&real, identity) {
        tracing::warn!(
            library = %real.display(),
            "the plugin library was replaced on disk since the gateway loaded it; it keeps running the code it loaded then (the dynamic loader gives a library already loaded again): restart the gateway to run the new one"
        );
    }
    let opened = |real: &Path| {
        let raw = RawLibrary::load_at(real)?;
        // SAFETY: the header lives as long as the library, which is never unloaded (`raw` is
        // forgotten below); abi_stable checks its magic and version before using it.
        let header = unsafe { lib_header_from_raw_library(&raw)? };
        let unwinds = unwinds(&raw);
        std::mem::forget(raw);
        Ok((header, unwinds))
    };
    let (header, unwinds) = opened(&real).map_err(|e| match e {
        LibraryError::OpenError { err, .. } => refused_by_loader(&real, &err.to_string()),
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin,
        LibraryError::InvalidAbiHeader(h) => LoadError::AbiStable {
            found: abi_stable_of(&h),
            host: format!(
                "{}.{}",
                AbiHeader::VALUE.abi_major,
                AbiHeader::VALUE.abi_minor
            ),
        },
        LibraryError::InvalidCAbi { expected, found } => LoadError::CAbi {
            expected: expected.to_string(),
            found: found.to_string(),
        },
        other => LoadError::Init(summarize(&other.to_string())),
    })?;
    // Loaded (and never unloaded): the file it came from is the one its path keeps for good,
    // and the one its logs and metrics are known by, whatever is at the path now.
    let file = match identity {
        Some(id) => {
            let (dev, ino, _) = *LOADED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(real.clone())
                .or_insert(id);
            LibraryFile::Inode(dev, ino)
        }
        None => LibraryFile::Path(real.clone()),
    };
    let plugin_sdk = header.version_strings().version.to_string();
    if !abi::versions_compatible(gateway_sdk::SDK_VERSION, &plugin_sdk) {
        return Err(LoadError::IncompatibleSdk {
            host: gateway_sdk::SDK_VERSION.into(),
            plugin: plugin_sdk,
        });
    }
    let layout_error = |difference| LoadError::Layout {
        difference,
        plugin: plugin_sdk.clone(),
        host: gateway_sdk::SDK_VERSION.into(),
    };
    // `init_root_module` checks the layout too, but hands back only the text of its report, a
    // thousand lines; this check keeps the report's fields, to say which type differs and how.
    // A library with no layout is refused: abi_stable checks nothing then, and neither could
    // this.
    let found = header.layout().ok_or(LoadError::NoLayout)?;
    if let Some(difference) = layout::difference(PluginLibraryRef::LAYOUT, found) {
        return Err(layout_error(difference));
    }
    // Before any of its code runs (its root module is built next).
    match unwinds {
        Some(true) => {}
        Some(false) => return Err(LoadError::Aborts),
        None => tracing::warn!(
            library = %real.display(),
            "the library does not record whether it was built with panic = \"abort\" (it says it was built against gateway-sdk {plugin_sdk}: 0.1.1 and older do not record it, nor a library exported without gateway_sdk::export!): if it was, one panic inside it ends the whole gateway; rebuild it against gateway-sdk {} with gateway_sdk::export! to have it checked",
            gateway_sdk::SDK_VERSION
        ),
    }
    let root = header
        .init_root_module::<PluginLibraryRef>()
        .map_err(|e| match e {
            LibraryError::IncompatibleVersionNumber {
                expected_version,
                actual_version,
                ..
            } => LoadError::IncompatibleSdk {
                host: expected_version.to_string(),
                plugin: actual_version.to_string(),
            },
            LibraryError::AbiInstability(report) => {
                layout_error(layout::first_difference_in_text(&report.to_string()))
            }
            LibraryError::RootModule { err, .. } => LoadError::Init(summarize(&err.to_string())),
            other => LoadError::Init(summarize(&other.to_string())),
        })?;
    let name = root.name().to_string();
    (root.init())(HostLog_TO::from_value(
        HostLogger::for_library(logger, &name, file.clone()),
        TD_Opaque,
    ));
    let plugins = (root.plugins())().into_vec();
    if let Some(bad) = plugins.iter().find(|p| !well_formed(p)) {
        return Err(LoadError::Init(format!(
            "its plugin {:?} is a {} without the constructor of one",
            bad.id.as_str(),
            bad.kind.name()
        )));
    }
    Ok(Library {
        path: path.to_path_buf(),
        name,
        version: root.version().to_string(),
        sdk_version: root.sdk_version().to_string(),
        plugins,
        file,
    })
}

/// Whether the library unwinds a panic, as its [`abi::UNWINDS_SYMBOL`] says; `None` when it
/// does not say (built against gateway-sdk 0.1.1 or older).
fn unwinds(library: &RawLibrary) -> Option<bool> {
    // SAFETY: the export macro defines the symbol as a `u8` static, which `get` gives as the
    // address of; a library without it is an error, not a read.
    let symbol = unsafe { library.get::<*const u8>(abi::UNWINDS_SYMBOL) }.ok()?;
    // SAFETY: the address of a static of the library, which stays loaded.
    Some(unsafe { **symbol } != 0)
}

/// Whether `p` has the constructor its kind needs (the export macro always gives it; a
/// descriptor made by hand may not, and the host would fail on it when it builds one).
fn well_formed(p: &PluginDescriptor) -> bool {
    match p.kind {
        PluginKind::Source => p.new_source.is_some(),
        PluginKind::Sink => p.new_sink.is_some(),
    }
}

/// Directories joined for a message: `a, b`.
pub fn show_dirs(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The plugin libraries of the plugin directories, loaded on demand.
pub struct Catalog {
    dirs: Vec<PathBuf>,
    logger: Arc<HostLogger>,
    loaded: HashMap<PathBuf, Result<Library, LoadError>>,
}

/// What `Catalog::find` found.
pub struct Found {
    /// The library.
    pub library: Library,
    /// The plugin.
    pub plugin: PluginDescriptor,
}

impl Catalog {
    /// A catalog of `dirs`, looked at in order; nothing is loaded yet.
    pub fn new(dirs: &[PathBuf], logger: Arc<HostLogger>) -> Self {
        Catalog {
            dirs: dirs.to_vec(),
            logger,
            loaded: HashMap::new(),
        }
    }

    /// The directories, joined for a message.
    pub fn shown(&self) -> String {
        show_dirs(&self.dirs)
    }

    /// The library files of every directory: each directory's sorted, in directory order.
    pub fn files(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut all = Vec::new();
        for dir in &self.dirs {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .is_some_and(|x| x == std::env::consts::DLL_EXTENSION)
                })
                .collect();
            files.sort();
            all.extend(files);
        }
        Ok(all)
    }

    fn load(&mut self, path: &Path) -> &Result<Library, LoadError> {
        if !self.loaded.contains_key(path) {
            let r = load(path, &self.logger);
            self.loaded.insert(path.to_path_buf(), r);
        }
        &self.loaded[path]
    }

    /// Loads every library of the directories.
    pub fn load_all(&mut self) -> std::io::Result<Vec<(PathBuf, Result<Library, LoadError>)>> {
        let files = self.files()?;
        Ok(files
            .into_iter()
            .map(|f| {
                let r = self.load(&f).clone();
                (f, r)
            })
            .collect())
    }

    /// The files a plugin id is expected in, in order, in each directory in turn: `libID.so`
    /// with `-` written `_`, then the library named after the id's first part (`libacme.so`
    /// for `acme-uplink`), which is how a library exporting several plugins is found without
    /// loading every other one.
    pub fn conventional_paths(&self, id: &str) -> Vec<PathBuf> {
        let mut stems = vec![id.replace('-', "_")];
        if let Some((family, _)) = id.split_once('-') {
            stems.push(family.to_owned());
        }
        self.dirs
            .iter()
            .flat_map(|dir| {
                stems.iter().map(move |stem| {
                    dir.join(format!(
                        "{}{stem}{}",
                        std::env::consts::DLL_PREFIX,
                        std::env::consts::DLL_SUFFIX
                    ))
                })
            })
            .collect()
    }

    /// Finds the library exporting plugin `id` of kind `kind`, among the files its name gives
    /// ([`Catalog::conventional_paths`]) only. The error says what was looked at. A library
    /// there that is refused (another SDK, files others can change) is the error: one in a
    /// later place is not loaded in its stead, or the stock plugin would silently stand in
    /// for the one an operator put first (a patched build, say) once that one is refused.
    pub fn find(&mut self, id: &str, kind: PluginKind) -> Result<Found, String> {
        if let Some(found) = built_in(id, kind) {
            return found;
        }
        let candidates = self.conventional_paths(id);
        let mut wrong_kind = None;
        for path in &candidates {
            if !path.exists() {
                continue;
            }
            match self.load(path) {
                Ok(lib) => {
                    // A library may give a source and a sink the same id (`nats`): the kind
                    // picks one.
                    let same_id = || lib.plugins.iter().filter(|p| p.id.as_str() == id);
                    if let Some(p) = same_id().find(|p| p.kind == kind) {
                        return Ok(Found {
                            library: lib.clone(),
                            plugin: p.clone(),
                        });
                    }
                    if let Some(p) = same_id().next() {
                        wrong_kind = Some((lib.file_name(), p.kind));
                    }
                }
                Err(e) => return Err(format!("plugin {id:?}: {}: {e}", path.display())),
            }
        }
        if let Some((file, k)) = wrong_kind {
            return Err(format!(
                "plugin {id:?} in {file} is a {}, but it is configured as a {}",
                k.name(),
                kind.name()
            ));
        }
        let mut names: Vec<String> = candidates
            .iter()
            .map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.dedup();
        Err(format!(
            "plugin {id:?}: no library in {} exports it (looked for {}; a library exports only ids named after its file)",
            self.shown(),
            names.join(" and ")
        ))
    }
}

/// The plugins built into the host (no library to load): `internal`.
fn built_in(id: &str, kind: PluginKind) -> Option<Result<Found, String>> {
    use gateway_sdk::Source as _;
    if id != crate::internal::Internal::ID {
        return None;
    }
    if kind != PluginKind::Source {
        return Some(Err(format!(
            "plugin {id:?} is built into the gateway as a source, but it is configured as a {}",
            kind.name()
        )));
    }
    let plugin = gateway_sdk::shim::source_descriptor::<crate::internal::Internal>();
    Some(Ok(Found {
        library: Library {
            path: PathBuf::from("(built into gateway)"),
            name: "gateway".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            sdk_version: gateway_sdk::SDK_VERSION.into(),
            plugins: vec![plugin.clone()],
            file: LibraryFile::Path(PathBuf::from("(built into gateway)")),
        },
        plugin,
    }))
}
