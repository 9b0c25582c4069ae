//! The plan of a run: the graph a config describes, every plugin loaded and every instance
//! built (and every disk buffer opened and recovered) before anything starts, so that a
//! mistake anywhere is reported, with every other one, before any reading moves.
//! [`crate::run`] runs it.

use crate::{
    buffer::DiskBuffer,
    config::{Config, Instance, Role, SinkSettings},
    loader::{Catalog, Library},
    logging::HostLogger,
    overdue::Overdue,
};
use gateway_sdk::{
    abi::{InstanceInfo, PluginKind, SinkBox, SourceBox},
    PluginError,
};
use std::{fmt::Write as _, sync::Arc};

pub(crate) type NewSource =
    extern "C" fn(&InstanceInfo) -> abi_stable::std_types::RResult<SourceBox, PluginError>;
pub(crate) type NewSink =
    extern "C" fn(&InstanceInfo) -> abi_stable::std_types::RResult<SinkBox, PluginError>;

pub(crate) struct Built<T, F, S = ()> {
    pub(crate) decl: Instance,
    /// What the role adds: a sink's settings.
    pub(crate) settings: S,
    pub(crate) library: Library,
    pub(crate) info: InstanceInfo,
    pub(crate) new: F,
    pub(crate) instance: T,
    /// What the files it names held just before `instance` was built: a reload compares them
    /// with what the files hold then. Taken here, not when the instance starts running (a
    /// reload's successor starts after its predecessor stopped, up to `shutdown_timeout`
    /// later), so that an edit made meanwhile, which `instance` never read, is seen.
    pub(crate) files: crate::run::Files,
    /// The sink's disk buffer, opened (and recovered) at build time.
    pub(crate) buffer: Option<Arc<DiskBuffer>>,
}

/// Every instance of a config, built and ready to run.
pub struct Plan {
    pub(crate) config: Config,
    pub(crate) sources: Vec<Built<SourceBox, NewSource>>,
    pub(crate) sinks: Vec<Built<SinkBox, NewSink, SinkSettings>>,
}

pub(crate) fn info_for(config: &Config, decl: &Instance) -> InstanceInfo {
    let data_dir = data_dir(config, decl);
    InstanceInfo {
        instance: decl.name.as_str().into(),
        device: config.gateway.device.as_str().into(),
        config_toml: decl.plugin_toml.as_str().into(),
        config_file: decl.file.display().to_string().into(),
        table: decl.table().into(),
        data_dir: data_dir.display().to_string().into(),
    }
}

/// `FILE:LINE: [GROUP.NAME]`, what every message about an instance starts with (the file is
/// the main file or the `conf.d` fragment the table is in).
fn at(decl: &Instance) -> String {
    format!("{}:{}: [{}]", decl.file.display(), decl.line, decl.table())
}

/// Puts the file, line and table in front of a plugin's message unless it already has them,
/// and shows the values `${...}` put in as their references (a plugin's parse error may quote
/// a value, and a value may be a secret).
fn located(decl: &Instance, what: &str, e: &PluginError) -> String {
    let msg = decl.redact(e.message());
    if msg.starts_with(&decl.file.display().to_string()) {
        msg
    } else {
        format!("{} {what}: {msg} ({})", at(decl), e.kind)
    }
}

/// An instance's own directory under `data_dir`.
fn data_dir(config: &Config, decl: &Instance) -> std::path::PathBuf {
    config.gateway.data_dir.join(&decl.name)
}

/// Makes instance `decl`'s own directory (durably), as a start and a reload do before it
/// runs: the SDK promises it is there. `Err` says which directory could not be made, or
/// which one others can change ([`trusted_data_dir`]).
pub(crate) fn make_data_dir(config: &Config, decl: &Instance) -> Result<(), String> {
    let dir = data_dir(config, decl);
    // Checked before it is made too: making it follows the links on the way.
    trusted_data_dir(&dir)?;
    crate::own_files::create_dir_durably(&dir)
        .map_err(|e| format!("cannot create its data directory {}: {e}", dir.display()))?;
    trusted_data_dir(&dir)
}

/// Checks that only root and the gateway's user (and the directory's group) can change
/// instance directory `dir`, the directories above it and those of any link on the way, as
/// the config's are checked: whoever can write one of them can take the buffered and
/// dead-lettered readings away, or put readings there that are sent under this gateway's
/// identity after a restart. Where `dir` is not there yet (`gateway check` makes nothing),
/// the nearest directory above it that is.
fn trusted_data_dir(dir: &std::path::Path) -> Result<(), String> {
    let absolute = std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let Some(there) = absolute.ancestors().find(|d| d.exists()) else {
        return Ok(());
    };
    use gateway_sdk::trust::{chain, directories, Stake};
    let checked = directories(there, Stake::Config)
        .and_then(|real| chain(&real, &real.display().to_string(), Stake::Config));
    checked.map_err(|e| {
        format!(
            "its data directory {} (its buffered and dead-lettered readings, sent under this gateway's identity) can be changed by others: {e}",
            dir.display()
        )
    })
}

/// A sink's dead letters: `dead-letter/` in its data directory.
pub fn dead_letters(config: &Config, decl: &Instance) -> crate::deadletter::DeadLetters {
    let letters = crate::deadletter::DeadLetters::new(
        data_dir(config, decl).join("dead-letter"),
        &decl.name,
        &decl.plugin,
    )
    .with_own_device(&config.gateway.device);
    match decl.sink_settings() {
        Some(s) => letters
            .with_max_size(s.dead_letter_max_size)
            .with_device_share(s.dead_letter_device_share),
        None => letters,
    }
}

/// Where an instance's disk buffer lives: `buffer/` in its data directory.
pub(crate) fn buffer_dir(config: &Config, decl: &Instance) -> std::path::PathBuf {
    data_dir(config, decl).join("buffer")
}

/// The disk buffer an earlier run left to sink `decl`, which the config gives none now (its
/// `buffer` was removed): its readings were acknowledged to their sources as stored, and only
/// this sink sends them, so it is opened and the sink runs with it (and warns), until a start
/// finds it empty. It is opened with the default settings, and room for what it holds besides:
/// the sources wait for it no sooner than for a default buffer. `None` when there is none or it
/// holds nothing unsent.
pub(crate) fn leftover_buffer(
    config: &Config,
    decl: &Instance,
) -> Result<Option<DiskBuffer>, String> {
    let dir = buffer_dir(config, decl);
    let cannot = |e: &dyn std::fmt::Display| {
        format!(
            "buffer: the config gives it none, and the disk buffer an earlier run left in {} cannot be opened: {e}",
            dir.display()
        )
    };
    if decl.sink_settings().is_none() || !is_real_dir(&dir) {
        return Ok(None);
    }
    if !DiskBuffer::holds_unsent(&dir).map_err(|e| cannot(&e))? {
        return Ok(None);
    }
    let mut settings = crate::config::BufferSettings::default();
    settings.max_size = settings.max_size.saturating_add(segment_bytes(&dir));
    let b = DiskBuffer::open(&dir, &settings).map_err(|e| cannot(&e))?;
    // What looked unsent may have been a torn tail, cut at open.
    if b.pending() == 0 {
        return Ok(None);
    }
    tracing::warn!(
        sink = %decl.name,
        readings = b.pending(),
        dir = %dir.display(),
        "the config gives this sink no disk buffer, but an earlier run left readings in one; they were acknowledged as stored and only this sink sends them, so it runs with that buffer (default settings) until a start finds it empty; to discard them instead, remove the directory while the gateway is stopped"
    );
    Ok(Some(b))
}

/// Bytes of the segment files in `dir` (links not followed).
fn segment_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .fold(0, |sum, m| sum.saturating_add(m.len()))
    })
}

/// Whether `dir` is a directory, not a link to one.
fn is_real_dir(dir: &std::path::Path) -> bool {
    dir.symlink_metadata().is_ok_and(|m| m.is_dir())
}

/// The directories in `data_dir` (real ones, not links) with the names they have there: one
/// per instance that has run. Read only, without any lock: another gateway may use the same
/// `data_dir`.
fn instance_dirs(config: &Config) -> Vec<(String, std::path::PathBuf)> {
    let Ok(dirs) = std::fs::read_dir(&config.gateway.data_dir) else {
        return Vec::new();
    };
    dirs.flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect()
}

/// Warns of the disk buffers among `dirs` ([`instance_dirs`]) that hold unsent readings under
/// a name no instance of the config has (a sink renamed or removed): they were acknowledged as
/// stored, and only a sink of that name sends them.
fn warn_of_orphaned_buffers(config: &Config, dirs: &[(String, std::path::PathBuf)]) {
    for (name, dir) in dirs {
        let known = config
            .sources
            .iter()
            .chain(&config.sinks)
            .any(|d| &d.name == name);
        let dir = dir.join("buffer");
        if known || !is_real_dir(&dir) {
            continue;
        }
        if DiskBuffer::holds_unsent(&dir).unwrap_or(false) {
            tracing::warn!(
                sink = %name,
                bytes = segment_bytes(&dir),
                dir = %dir.display(),
                "a disk buffer holds unsent readings of a sink this config does not have; if it was this config's (renamed or removed), they were acknowledged as stored and only a sink of that name sends them: give one that name again to send them, or remove the directory to discard them (if another gateway uses this data_dir, it may be that one's)"
            );
        }
    }
}

/// The dead-letter directories in `data_dir` of sinks the config does not have (renamed or
/// removed), with how many files each holds: `gateway dead-letters` works on the config's
/// sinks only, so their readings would be seen by no one. Read only.
pub fn orphaned_dead_letters(config: &Config) -> Vec<(String, std::path::PathBuf, usize)> {
    orphaned_dead_letters_in(config, &instance_dirs(config))
}

/// [`orphaned_dead_letters`] among `dirs` ([`instance_dirs`]).
fn orphaned_dead_letters_in(
    config: &Config,
    dirs: &[(String, std::path::PathBuf)],
) -> Vec<(String, std::path::PathBuf, usize)> {
    let mut found = Vec::new();
    for (name, dir) in dirs {
        let dir = dir.join("dead-letter");
        if config.sinks.iter().any(|d| &d.name == name) || !is_real_dir(&dir) {
            continue;
        }
        let files = crate::deadletter::DeadLetters::new(dir.clone(), name, "")
            .files()
            .map_or(0, |f| f.len());
        if files > 0 {
            found.push((name.clone(), dir, files));
        }
    }
    found.sort();
    found
}

/// Warns of the dead letters among `dirs` of sinks the config does not have
/// ([`orphaned_dead_letters`]).
fn warn_of_orphaned_dead_letters(config: &Config, dirs: &[(String, std::path::PathBuf)]) {
    for (name, dir, files) in orphaned_dead_letters_in(config, dirs) {
        tracing::warn!(
            sink = %name,
            files,
            dir = %dir.display(),
            "dead-letter files of a sink this config does not have: `gateway dead-letters` shows and resends them only for a sink of that name; give one that name again, or move the files out (if another gateway uses this data_dir, they may be that one's)"
        );
    }
}

/// What [`Overdue`] calls an instance's constructor: `sink db: its start`.
fn started(decl: &Instance) -> String {
    format!("{} {}: its start", decl.role, decl.name)
}

/// Files what the plugin's constructor `new` made of `info`: into `built`, or, failing, into
/// `errors`.
fn build<T, F, S>(
    (new, made, files): (
        F,
        abi_stable::std_types::RResult<T, PluginError>,
        crate::run::Files,
    ),
    info: InstanceInfo,
    library: Library,
    decl: &Instance,
    (settings, buffer): (S, Option<Arc<DiskBuffer>>),
    built: &mut Vec<Built<T, F, S>>,
    errors: &mut Vec<String>,
) {
    match made.into_result() {
        Ok(instance) => built.push(Built {
            decl: decl.clone(),
            settings,
            library,
            info,
            new,
            instance,
            files,
            buffer,
        }),
        Err(e) => errors.push(located(decl, "could not be built", &e)),
    }
}

impl Plan {
    /// Loads the plugins, builds every instance and opens (recovers) the sinks' disk buffers,
    /// ready to run. Returns every problem found, not just the first.
    pub fn build(config: Config, logger: &Arc<HostLogger>) -> Result<Plan, Vec<String>> {
        Self::build_inner(config, logger, true)
    }

    /// Like [`Plan::build`], for `gateway check`: disk buffers are left alone (a running gateway
    /// may be writing them), only their size on disk is read, and no data directory is made.
    pub fn check(config: Config, logger: &Arc<HostLogger>) -> Result<Plan, Vec<String>> {
        Self::build_inner(config, logger, false)
    }

    fn build_inner(
        config: Config,
        logger: &Arc<HostLogger>,
        for_run: bool,
    ) -> Result<Plan, Vec<String>> {
        // Before the instances are built, so that their libraries produce what the levels ask
        // for from the start (a reload whose file does not check puts the levels back).
        logger.set_levels(
            config
                .sources
                .iter()
                .chain(&config.sinks)
                .filter_map(|d| d.log_level.map(|l| (d.name.clone(), l)))
                .collect(),
        );
        let mut catalog = Catalog::new(&config.gateway.plugin_dirs, logger.clone());
        let stall_warning = config.gateway.stall_warning;
        let mut errors = Vec::new();
        let mut sources = Vec::new();
        let mut sinks = Vec::new();
        for decl in config.sources.iter().chain(&config.sinks) {
            let kind = match decl.role {
                Role::Source => PluginKind::Source,
                Role::Sink(_) => PluginKind::Sink,
            };
            let found = match catalog.find(&decl.plugin, kind) {
                Ok(f) => f,
                Err(e) => {
                    errors.push(format!("{} {e}", at(decl)));
                    continue;
                }
            };
            logger.metrics.allow(&decl.name, &found.library.file);
            let info = info_for(&config, decl);
            // `check` has no side effects: the directory is made only for a run.
            let dir = match for_run {
                true => make_data_dir(&config, decl),
                false => trusted_data_dir(&data_dir(&config, decl)),
            };
            if let Err(e) = dir {
                errors.push(format!("{} {e}", at(decl)));
                continue;
            }
            let buffer = match decl.sink_settings().and_then(|s| s.buffer.as_ref()) {
                Some(_) if !for_run => None,
                None if !for_run => None,
                None => match leftover_buffer(&config, decl) {
                    Ok(b) => b.map(Arc::new),
                    Err(e) => {
                        errors.push(format!("{} {e}", at(decl)));
                        continue;
                    }
                },
                Some(settings) => {
                    let dir = buffer_dir(&config, decl);
                    match DiskBuffer::open(&dir, settings) {
                        Ok(b) => Some(Arc::new(b)),
                        Err(e) => {
                            errors.push(format!(
                                "{} buffer: cannot open the disk buffer in {}: {e}",
                                at(decl),
                                dir.display()
                            ));
                            continue;
                        }
                    }
                }
            };
            let what = decl;
            // Before the constructor reads them: an edit made while it runs is a change.
            let files = crate::run::file_stamps(decl);
            match &decl.role {
                Role::Source => {
                    let new = found
                        .plugin
                        .new_source
                        .expect("source descriptor has new_source");
                    let made = {
                        let _watch = Overdue::watch(stall_warning, started(decl));
                        new(&info)
                    };
                    build(
                        (new, made, files),
                        info,
                        found.library,
                        what,
                        ((), None),
                        &mut sources,
                        &mut errors,
                    );
                }
                Role::Sink(settings) => {
                    let new = found.plugin.new_sink.expect("sink descriptor has new_sink");
                    let made = {
                        let _watch = Overdue::watch(stall_warning, started(decl));
                        new(&info)
                    };
                    build(
                        (new, made, files),
                        info,
                        found.library,
                        what,
                        (settings.clone(), buffer),
                        &mut sinks,
                        &mut errors,
                    );
                }
            }
        }
        if for_run {
            // One look at data_dir for both.
            let dirs = instance_dirs(&config);
            warn_of_orphaned_buffers(&config, &dirs);
            warn_of_orphaned_dead_letters(&config, &dirs);
        }
        if errors.is_empty() {
            Ok(Plan {
                config,
                sources,
                sinks,
            })
        } else {
            Err(errors)
        }
    }

    /// The graph, for `gateway check`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let c = &self.config.gateway;
        let _ = writeln!(
            out,
            "device {:?}, plugins from {}, data in {}",
            c.device,
            crate::loader::show_dirs(&c.plugin_dirs),
            c.data_dir.display()
        );
        let _ = writeln!(out, "sources:");
        for s in &self.sources {
            let to: Vec<_> = self
                .config
                .sinks_of(&s.decl.name)
                .map(|k| k.name.as_str())
                .collect();
            let _ = writeln!(
                out,
                "  {:<16} {} ({} {}, {})  -> {}",
                s.decl.name,
                s.decl.plugin,
                s.library.name,
                s.library.version,
                s.library.file_name(),
                to.join(", ")
            );
        }
        let _ = writeln!(out, "sinks:");
        for k in &self.sinks {
            let from: Vec<_> = self
                .config
                .sources_of(&k.decl)
                .map(|s| s.name.as_str())
                .collect();
            let st = &k.settings;
            let buffer = match &st.buffer {
                Some(b) => {
                    let dir = buffer_dir(&self.config, &k.decl);
                    let used: u64 = std::fs::read_dir(&dir)
                        .map(|d| {
                            d.filter_map(|e| e.ok()?.metadata().ok())
                                .map(|m| m.len())
                                .sum()
                        })
                        .unwrap_or(0);
                    format!(
                        ", disk buffer in {}: {used} of {} bytes used, when full {:?}, fsync {}",
                        dir.display(),
                        b.max_size,
                        b.when_full,
                        if b.fsync { "always" } else { "never" }
                    )
                }
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "  {:<16} {} ({} {}, {})  <- {}  [batch {} readings / {:?}, queue {} batches{buffer}]",
                k.decl.name,
                k.decl.plugin,
                k.library.name,
                k.library.version,
                k.library.file_name(),
                from.join(", "),
                st.batch_size,
                st.batch_timeout,
                st.queue_capacity
            );
        }
        out
    }
}

/// Builds sink instance `decl` of `config` alone (its plugin loaded, its `new` called; the
/// first write opens it), for commands that write to one sink outside a run
/// (`gateway dead-letters resend`).
pub fn build_sink(
    config: &Config,
    decl: &Instance,
    logger: &Arc<HostLogger>,
) -> Result<SinkBox, String> {
    let mut catalog = Catalog::new(&config.gateway.plugin_dirs, logger.clone());
    let found = catalog.find(&decl.plugin, PluginKind::Sink)?;
    logger.metrics.allow(&decl.name, &found.library.file);
    let info = info_for(config, decl);
    crate::own_files::create_dir_durably(std::path::Path::new(info.data_dir.as_str()))
        .map_err(|e| format!("cannot create {}: {e}", info.data_dir))?;
    let new = found.plugin.new_sink.expect("sink descriptor has new_sink");
    let _watch = Overdue::watch(config.gateway.stall_warning, started(decl));
    new(&info)
        .into_result()
        .map_err(|e| located(decl, "could not be built", &e))
}
