//! `SIGHUP` (and `systemctl reload`): re-read the config, check it as `gateway check` does, and
//! rebuild only the instances whose settings changed.
//!
//! - A file that does not load or check changes nothing: every problem is logged, and the
//!   running graph goes on as it was.
//! - An instance whose table is the same (plugin, its keys after `${...}` substitution, the
//!   host's keys) keeps running: an unchanged ingress keeps its DTLS sessions.
//! - A changed source is stopped (within `shutdown_timeout`), then its successor starts.
//! - A changed sink hands its line to its successor: the queue and the batches it had taken
//!   and not written, and its disk buffer (reopened if its buffer settings changed).
//! - A removed sink writes what is queued; a buffered one keeps its records on disk.
//! - `[gateway]` settings, a sink's `queue_capacity`, and the removal of a sink's disk buffer
//!   (it may hold readings, and only it can send them) apply only at the next start; a reload
//!   that changes them says so.
//!
//! Files count as settings: an instance whose table is the same but one of whose files (every
//! value of a key ending in `_file`: certificates, CRLs, keys, PSK files) holds something
//! else than when the running instance was built (stamped just before its constructor ran)
//! is rebuilt, so that every DTLS session is authenticated against
//! the new files (a device revoked by a new CRL loses its session). Every `new` runs again for
//! the check, so a file that no longer loads refuses the reload.

use super::{
    slots::{Line, SinkSlot, SourceSlot},
    Graph,
};
use crate::{
    buffer::DiskBuffer,
    config::{Config, Gateway, Instance},
    pipeline::source::{Routes, SinkPort},
    plan::{buffer_dir, Plan},
};
use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

/// How the instances of one role differ between two configs.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Changes {
    /// The same table: left running.
    pub kept: Vec<String>,
    /// A different table: replaced.
    pub changed: Vec<String>,
    /// Only in the new config: started.
    pub added: Vec<String>,
    /// Only in the old config: stopped.
    pub removed: Vec<String>,
}

impl Changes {
    /// Compares the instances of one role; `files_changed` says whether a running instance's
    /// files changed since it was built.
    pub fn of(
        old: &[Instance],
        new: &[Instance],
        files_changed: impl Fn(&Instance) -> bool,
    ) -> Changes {
        let mut c = Changes::default();
        for n in new {
            match old.iter().find(|o| o.name == n.name) {
                None => c.added.push(n.name.clone()),
                Some(o) if same(o, n) && !files_changed(o) => c.kept.push(n.name.clone()),
                Some(_) => c.changed.push(n.name.clone()),
            }
        }
        c.removed = old
            .iter()
            .filter(|o| !new.iter().any(|n| n.name == o.name))
            .map(|o| o.name.clone())
            .collect();
        c
    }

    fn is_quiet(&self) -> bool {
        self.changed.is_empty() && self.added.is_empty() && self.removed.is_empty()
    }

    /// `rebuilt a, b; added c; removed d` (what changed), for the log.
    fn describe(&self, what: &str) -> Option<String> {
        let parts: Vec<String> = [
            ("rebuilt", &self.changed),
            ("added", &self.added),
            ("removed", &self.removed),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(verb, v)| format!("{verb} {}", v.join(", ")))
        .collect();
        (!parts.is_empty()).then(|| format!("{what}: {}", parts.join("; ")))
    }
}

/// Whether two tables describe the same instance. The plugin's keys are compared as TOML
/// values, so moving a table in the file or re-indenting it changes nothing; `log_level`
/// applies without a rebuild.
fn same(a: &Instance, b: &Instance) -> bool {
    let keys = |i: &Instance| toml::from_str::<toml::Table>(&i.plugin_toml).ok();
    a.plugin == b.plugin
        && a.role == b.role
        && a.restart_backoff == b.restart_backoff
        && a.restart_backoff_max == b.restart_backoff_max
        && match (keys(a), keys(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a.plugin_toml == b.plugin_toml,
        }
}

/// What the files an instance names held when it was built ([`file_stamps`]).
pub(crate) type Files = Vec<(PathBuf, Option<u64>)>;

/// The [`Files`] of a running instance, shared with the factory that builds it again after a
/// failure: each build stamps the files it is about to read, so that a reload compares the
/// files with what the running instance read, not with what its first build did.
#[derive(Clone)]
pub(crate) struct Stamps {
    files: Arc<Mutex<Files>>,
    decl: Arc<Instance>,
}

impl Stamps {
    /// The stamps of an instance built with `files`, twice: for its slot and its factory.
    pub(crate) fn of(files: Files, decl: &Instance) -> (Stamps, Stamps) {
        let s = Stamps {
            files: Arc::new(Mutex::new(files)),
            decl: Arc::new(decl.clone()),
        };
        (s.clone(), s)
    }

    /// Stamps the files again, before the instance is built again.
    pub(crate) fn restamp(&self) {
        let now = file_stamps(&self.decl);
        *self.files.lock().unwrap_or_else(PoisonError::into_inner) = now;
    }

    /// Whether the files hold something else than they did when the running instance was
    /// built, as `decl` names them now.
    pub(crate) fn changed(&self, decl: &Instance) -> bool {
        // Read before the lock: a rebuild's restamp does not wait for it.
        let now = file_stamps(decl);
        *self.files.lock().unwrap_or_else(PoisonError::into_inner) != now
    }
}

/// What an instance's files hold: each value of a key ending in `_file` (at any depth of its
/// table, tables in arrays too, as the ingress's `psk = [{ identity, key_file }]`), resolved as plugins resolve paths (relative to the file the table is in), with a
/// hash of its contents (`None`: unreadable). Files over 16 MiB are stamped by size and
/// modification time instead.
pub(crate) fn file_stamps(decl: &Instance) -> Files {
    fn collect(t: &toml::Table, base: &Path, out: &mut Files) {
        for (k, v) in t {
            match v {
                toml::Value::String(s) if k.ends_with("_file") => {
                    let p = base.join(s);
                    let stamp = stamp(&p);
                    out.push((p, stamp));
                }
                toml::Value::Table(t) => collect(t, base, out),
                toml::Value::Array(a) => {
                    for t in a.iter().filter_map(toml::Value::as_table) {
                        collect(t, base, out);
                    }
                }
                _ => {}
            }
        }
    }
    // Opened without waiting (a FIFO named by a `*_file` key would hold the run loop until
    // a writer came) and only if it is a regular file; read at most 16 MiB.
    fn stamp(p: &Path) -> Option<u64> {
        use std::io::Read;
        let (f, meta) = crate::trust::open_regular(p).ok()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        if meta.len() > 16 << 20 {
            (meta.len(), meta.modified().ok()).hash(&mut h);
        } else {
            let mut bytes = Vec::with_capacity(meta.len() as usize);
            f.take(16 << 20).read_to_end(&mut bytes).ok()?;
            bytes.hash(&mut h);
        }
        Some(h.finish())
    }
    let mut out = Vec::new();
    if let Ok(table) = toml::from_str::<toml::Table>(&decl.plugin_toml) {
        let base = decl.file.parent().unwrap_or(Path::new(""));
        collect(&table, base, &mut out);
    }
    out
}

/// The `[gateway]` keys that differ (a reload does not apply them).
pub(super) fn gateway_changes(old: &Gateway, new: &Gateway) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut differ = |key, changed: bool| {
        if changed {
            keys.push(key);
        }
    };
    differ("device", old.device != new.device);
    differ("plugin_dir", old.plugin_dirs != new.plugin_dirs);
    differ("data_dir", old.data_dir != new.data_dir);
    differ("log_level", old.log_level != new.log_level);
    differ("log_format", old.log_format != new.log_format);
    differ(
        "shutdown_timeout",
        old.shutdown_timeout != new.shutdown_timeout,
    );
    differ("stats_interval", old.stats_interval != new.stats_interval);
    differ("metrics", old.metrics != new.metrics);
    differ("stall_warning", old.stall_warning != new.stall_warning);
    keys
}

/// Reads the config at `path` and checks it (libraries loaded, the new instances built),
/// keeping the `running` `[gateway]` settings (a reload does not apply them: it says which
/// changed). Logs why it is refused and gives `None` then.
fn check(path: &Path, running: Gateway, logger: &Arc<crate::logging::HostLogger>) -> Option<Plan> {
    let mut new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload refused, nothing changed: {e}");
            return None;
        }
    };
    let gateway = gateway_changes(&running, &new.gateway);
    if !gateway.is_empty() {
        tracing::warn!(
            "reload: [gateway] {} changed; a reload does not apply [gateway] settings, a restart does (the running ones are kept)",
            gateway.join(", ")
        );
    }
    new.gateway = running;
    match Plan::check(new, logger) {
        Ok(p) => Some(p),
        Err(errors) => {
            for e in &errors {
                tracing::error!("{e}");
            }
            tracing::error!(
                "reload refused, nothing changed: {} problem{} in {}",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" },
                path.display()
            );
            None
        }
    }
}

impl Graph {
    /// Re-reads the config and applies what changed (see the module's doc). Logs what it did
    /// and how long it took. Reading and checking the new config (which loads libraries and
    /// builds the new instances, whose constructors may hang) runs on a thread of its own,
    /// watched here: a shutdown requested meanwhile (`stop`) abandons the reload and is
    /// answered (`false`: stop now), and so does a check that takes longer than `longest`,
    /// which leaves everything as it was.
    pub(super) fn reload(
        &mut self,
        stop: &crossbeam_channel::Receiver<()>,
        longest: Duration,
    ) -> bool {
        let started = Instant::now();
        let path = self.config.path.clone();
        tracing::info!(config = %path.display(), "reload requested: reading and checking the config");
        let (tx, checked) = crossbeam_channel::bounded(1);
        let running = self.config.gateway.clone();
        let logger = self.logger.clone();
        // The check sets the new file's levels, and binds instances to the libraries it builds
        // them from, before it builds them; a reload that is not applied puts the running ones
        // back.
        let levels = self.logger.levels();
        let bindings = self.logger.metrics.bindings();
        let unapplied = |logger: &crate::logging::HostLogger| {
            logger.set_levels(levels.clone());
            logger.metrics.set_bindings(bindings.clone());
        };
        let spawned = std::thread::Builder::new()
            .name("reload-check".into())
            .spawn(move || {
                let _ = tx.send(check(&path, running, &logger));
            });
        if let Err(e) = spawned {
            tracing::error!("reload refused, nothing changed: cannot start its thread: {e}");
            return true;
        }
        let plan = crossbeam_channel::select! {
            recv(checked) -> plan => match plan {
                Ok(Some(plan)) => plan,
                _ => {
                    unapplied(&self.logger);
                    return true;
                }
            },
            recv(stop) -> _ => {
                unapplied(&self.logger);
                tracing::warn!("shutdown requested while the reload was still reading and checking the config: the reload is abandoned, nothing of it applied");
                return false;
            }
            default(longest) => {
                unapplied(&self.logger);
                tracing::error!("reload abandoned, nothing changed: reading and checking the config took over {longest:?} (a plugin's constructor that does not return? the log names an instance overdue); the running config stays");
                return true;
            }
        };
        let sources = Changes::of(&self.config.sources, &plan.config.sources, |o| {
            self.sources
                .get(&o.name)
                .is_some_and(|s| s.files.changed(o))
        });
        // A sink an earlier reload could not replace is replaced now, changed or not.
        let sinks = Changes::of(&self.config.sinks, &plan.config.sinks, |o| {
            self.sinks.get(&o.name).is_some_and(|s| {
                s.files.changed(o) || s.handover.load(std::sync::atomic::Ordering::Relaxed)
            })
        });
        if sources.is_quiet() && sinks.is_quiet() {
            self.bind_running();
            self.config = plan.config;
            tracing::info!(
                "reload: no instance changed ({:.1} ms)",
                ms(started.elapsed())
            );
            return true;
        }
        self.apply(plan, &sources, &sinks);
        self.bind_running();
        let mut what: Vec<String> = [sources.describe("sources"), sinks.describe("sinks")]
            .into_iter()
            .flatten()
            .collect();
        // "added" is what the file asked; a sink whose disk buffer did not open is parked, not
        // running, and the summary says so beside the error that said why.
        let parked: Vec<&str> = sinks
            .added
            .iter()
            .chain(&sinks.changed)
            .filter(|n| self.parked.contains_key(*n))
            .map(String::as_str)
            .collect();
        if !parked.is_empty() {
            what.push(format!(
                "not started (their queues are kept; see the error above): {}",
                parked.join(", ")
            ));
        }
        tracing::info!(
            kept = sources.kept.len() + sinks.kept.len(),
            "reload applied in {:.1} ms: {}",
            ms(started.elapsed()),
            what.join("; ")
        );
        true
    }

    /// Stops what went or changed and starts what came or changed, in the order that keeps
    /// every reading somewhere: routes to sinks that go are cut first; every instance that goes
    /// is asked to stop at once and waited for against one deadline (`shutdown_timeout`), so a
    /// reload takes at most about that long; then the successors and the new instances start,
    /// and every source is routed as the config that is running says. A sink that cannot
    /// start (its disk buffer does not open) keeps its queue, still routed (its sources wait
    /// for it), but is left out of the running config: the next reload starts it as a new
    /// one, on that queue. A sink whose instance is still in a plugin call at the deadline
    /// keeps its place, queue and routes under its old settings (and the routes of its new
    /// ones); once the call returns, the replacement built here starts
    /// ([`Graph::replace_stuck`]).
    fn apply(&mut self, plan: Plan, sources: &Changes, sinks: &Changes) {
        let Plan {
            config: mut new,
            sources: mut built_sources,
            sinks: mut built_sinks,
        } = plan;
        let deadline = Instant::now() + self.config.gateway.shutdown_timeout;
        self.keep_metrics_of(&new);
        // A replacement saved for a stuck sink gives way to this file's: the sink is replaced
        // below again (its handover flag makes it changed), or stuck again.
        let stuck = std::mem::take(&mut self.stuck);
        // A sink parked by an earlier reload that the config no longer names goes, with what
        // its queue holds (whose sources are told it was not delivered), once no source is
        // routed to it any more.
        let unparked: Vec<String> = self
            .parked
            .keys()
            .filter(|name| !new.sinks.iter().any(|d| &d.name == *name))
            .cloned()
            .collect();
        // Sources keep only the routes to sinks that stay (kept or changed: their queues stay).
        for slot in self.sources.values() {
            let keep: Vec<SinkPort> = slot
                .routes
                .get()
                .iter()
                .filter(|p| {
                    let going = |line: &Line| Arc::ptr_eq(&line.port.stats, &p.stats);
                    !sinks
                        .removed
                        .iter()
                        .any(|n| self.sinks.get(n).is_some_and(|k| going(&k.line)))
                        && !unparked
                            .iter()
                            .any(|n| self.parked.get(n).is_some_and(|(l, _)| going(l)))
                })
                .cloned()
                .collect();
            slot.routes.set(keep);
        }
        let mut gone_lines = Vec::new();
        for name in unparked {
            if let Some((line, _)) = self.parked.remove(&name) {
                tracing::warn!(sink = %name, batches = line.rx.len(), "the sink a reload could not start is no longer in the config: its queue goes, and the sources of what it holds are told it was not delivered");
                gone_lines.push(line);
            }
        }
        // Everything that goes is asked at once, then waited for against one deadline.
        let retiring: Vec<_> = sources
            .changed
            .iter()
            .chain(&sources.removed)
            .map(|n| self.sources.shift_remove(n).expect("a running source"))
            .collect();
        retiring.iter().for_each(SourceSlot::begin_retire);
        let removed: Vec<_> = sinks
            .removed
            .iter()
            .map(|n| self.sinks.shift_remove(n).expect("a running sink"))
            .collect();
        removed.iter().for_each(SinkSlot::begin_remove);
        let replaced: Vec<_> = sinks
            .changed
            .iter()
            .map(|n| self.sinks.shift_remove(n).expect("a running sink"))
            .collect();
        replaced.iter().for_each(SinkSlot::begin_handover);
        for slot in retiring {
            let name = slot.decl.name.clone();
            if !slot.finish_retire(deadline) {
                tracing::error!(source = %name, "the source did not stop within shutdown_timeout; it is left behind");
            }
            self.logger.metrics.forget(&name);
        }
        for slot in removed {
            let name = slot.decl.name.clone();
            if !slot.finish_remove(deadline) {
                tracing::error!(sink = %name, "the removed sink did not stop within shutdown_timeout; it is left behind");
            }
            self.logger.metrics.forget(&name);
        }
        let mut lines = Vec::new();
        for old in replaced {
            let name = old.decl.name.clone();
            let old_buffer = old.decl.sink_settings().and_then(|s| s.buffer.clone());
            let line = match old.finish_handover(deadline) {
                Ok(line) => line,
                Err(old) => {
                    // Its thread holds the line until its plugin call returns. Unrouted, the
                    // sink would be passed over: its sources' batches acknowledged once the
                    // other sinks took them, stored nowhere here. It keeps its place, under
                    // the settings it runs with, and its replacement, built from this file,
                    // starts once that call has returned (Graph::replace_stuck).
                    tracing::error!(sink = %name, "the sink did not stop within shutdown_timeout (it is still in a plugin call): it keeps its queue and its routes, so its sources wait for it; its replacement starts once that call has returned");
                    if let Some(d) = new.sinks.iter_mut().find(|d| d.name == name) {
                        *d = old.decl.clone();
                    }
                    let built = take(&mut built_sinks, &name);
                    self.stuck.insert(name.clone(), Stuck { built, old_buffer });
                    self.sinks.insert(name, *old);
                    continue;
                }
            };
            self.logger.metrics.forget(&name);
            let keep_writer =
                prepare_successor(&name, &line, find(&built_sinks, &name), &old_buffer);
            lines.push((name, line, keep_writer));
        }
        for decl in new.sources.iter().chain(&new.sinks).filter(|d| {
            let role = if matches!(d.role, crate::config::Role::Source) {
                sources
            } else {
                sinks
            };
            role.added.contains(&d.name) || role.changed.contains(&d.name)
        }) {
            // As a start makes it (the SDK promises it is there when the instance runs); one
            // that cannot be made is said here, and the instance's own errors follow.
            if let Err(e) = crate::plan::make_data_dir(&new, decl) {
                tracing::error!(instance = %decl.name, "{e}");
            }
        }
        // The old buffers are released before they are opened again (the views held them).
        self.publish();
        for (name, line, keep_writer) in lines {
            let k = take(&mut built_sinks, &name);
            self.start_successor(&mut new, name, line, k, keep_writer, deadline);
        }
        for name in &sinks.added {
            let mut k = take(&mut built_sinks, name);
            let line = match self.parked.remove(name) {
                Some((line, _)) => line,
                None => Line::new(k.settings.queue_capacity),
            };
            match open_buffer(&new, &k.decl) {
                Ok(b) => k.buffer = b,
                Err(e) => {
                    tracing::error!(sink = %name, "{e}; the sink is not started: its queue is kept, and its sources wait for it; fix it and reload again");
                    self.park(&mut new, name, line, k);
                    continue;
                }
            }
            let slot = self.starter_for(&new).sink(k, line);
            self.sinks.insert(name.clone(), slot);
        }
        self.config = new;
        for name in sources.changed.iter().chain(&sources.added) {
            let s = take(&mut built_sources, name);
            let routes = Routes::new(self.ports_for(name));
            let config = self.config.clone();
            let slot = self.starter_for(&config).source(s, routes);
            self.sources.insert(name.clone(), slot);
        }
        // Every source routed as the running config says (a sink that did not start is not in
        // it).
        for (name, slot) in &self.sources {
            slot.routes.set(self.ports_for(name));
        }
        // File order, as a start would have them.
        let order = |names: Vec<&String>| -> HashMap<String, usize> {
            names
                .into_iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), i))
                .collect()
        };
        let so = order(self.config.sources.iter().map(|d| &d.name).collect());
        let ko = order(self.config.sinks.iter().map(|d| &d.name).collect());
        self.sources.sort_by_cached_key(|n, _| so.get(n).copied());
        self.sinks.sort_by_cached_key(|n, _| ko.get(n).copied());
        self.publish();
        // What is left (the instances built only to check the config, for those kept; a
        // replacement given up; the queue of a parked sink that went) is dropped on a thread
        // of its own: a plugin's `Drop` may take its time (a client closing its connection),
        // and the main loop must go on answering signals meanwhile.
        self.dropping.retain(|h| !h.is_finished());
        self.dropping.extend(drop_elsewhere((
            built_sources,
            built_sinks,
            stuck,
            gone_lines,
        )));
    }

    /// Starts `k` on `line`, the queue its predecessor handed over, in the running config
    /// `new`: with the predecessor's disk buffer (`keep_writer`), or with its own, opened
    /// once the old writer has stopped. A sink that cannot start keeps its queue routed
    /// (parked) and leaves `new`, for a later reload to start it.
    fn start_successor(
        &mut self,
        new: &mut Config,
        name: String,
        mut line: Line,
        mut k: BuiltSink,
        keep_writer: bool,
        deadline: Instant,
    ) {
        if !keep_writer {
            if let Some(mut w) = line.writer.take() {
                if !w.finish_stop(deadline) {
                    // Its thread still reads the queue once it returns, in handover mode:
                    // what it took then goes to the line's handover channel.
                    tracing::error!(sink = %name, "the disk buffer's writer did not stop within shutdown_timeout; the sink is not started: its queue is kept, and its sources wait for it; reload again once the disk answers");
                    self.park(new, &name, line, k);
                    return;
                }
                // The buffer opened again counts its drops and losses from 0; the line's
                // counters, which go on, keep those of this one.
                let gone = w.buffer.stats.gone();
                line.port
                    .stats
                    .buffer_gone
                    .fetch_add(gone, std::sync::atomic::Ordering::Relaxed);
            }
            match open_buffer(new, &k.decl) {
                Ok(b) => k.buffer = b,
                Err(e) => {
                    tracing::error!(sink = %name, "{e}; the sink is not started: its queue is kept, and its sources wait for it; fix it and reload again");
                    self.park(new, &name, line, k);
                    return;
                }
            }
        }
        let slot = self.starter_for(new).sink(k, line);
        self.sinks.insert(name, slot);
    }

    /// Parks sink `name`, which could not start: its queue `line` stays routed (its sources
    /// wait for it) and it leaves the running config `new`, for a later reload to start it.
    /// `k`, the instance built for it, is dropped as the reload's other leftovers are, on a
    /// thread of its own.
    fn park(&mut self, new: &mut Config, name: &str, line: Line, k: BuiltSink) {
        self.parked.insert(name.to_owned(), (line, k.decl.clone()));
        new.sinks.retain(|d| d.name != name);
        self.dropping.extend(drop_elsewhere(k));
    }

    /// Starts the replacement of each sink a reload could not replace whose plugin call has
    /// returned since: the one built from the file of that reload (the file is not read
    /// again: an edit in progress is not applied, and one that does not check cannot keep
    /// the replacement from starting).
    pub(super) fn replace_stuck(&mut self) {
        let now = Instant::now();
        let mut ended = Vec::new();
        for name in self.stuck.keys() {
            if self.sinks.get_mut(name).is_none_or(|k| k.thread.wait(now)) {
                ended.push(name.clone());
            }
        }
        if ended.is_empty() {
            return;
        }
        let started = Instant::now();
        let deadline = now + self.config.gateway.shutdown_timeout;
        let mut new = self.config.clone();
        let mut lines = Vec::new();
        for name in ended {
            let Some(Stuck { built, old_buffer }) = self.stuck.remove(&name) else {
                continue;
            };
            let Some(old) = self.sinks.shift_remove(&name) else {
                continue;
            };
            let line = match old.finish_handover(now) {
                Ok(line) => line,
                Err(old) => {
                    self.sinks.insert(name.clone(), *old);
                    self.stuck.insert(name, Stuck { built, old_buffer });
                    continue;
                }
            };
            self.logger.metrics.forget(&name);
            if let Some(d) = new.sinks.iter_mut().find(|d| d.name == name) {
                *d = built.decl.clone();
            }
            let keep_writer = prepare_successor(&name, &line, &built, &old_buffer);
            lines.push((name, line, built, keep_writer));
        }
        self.publish();
        let names: Vec<String> = lines.iter().map(|l| l.0.clone()).collect();
        for (name, line, built, keep_writer) in lines {
            // Its library speaks for it from its start: the others may take a while.
            self.logger.metrics.allow(&name, &built.library.file);
            self.start_successor(&mut new, name, line, built, keep_writer, deadline);
        }
        self.config = new;
        for (name, slot) in &self.sources {
            slot.routes.set(self.ports_for(name));
        }
        let order: HashMap<String, usize> = self
            .config
            .sinks
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.clone(), i))
            .collect();
        self.sinks.sort_by_cached_key(|n, _| order.get(n).copied());
        self.publish();
        self.bind_running();
        tracing::info!(sinks = ?names, "the replacement of a sink the last reload left stuck started in {:.1} ms", ms(started.elapsed()));
    }

    /// Each running instance may speak only as the library it was built from: what a reload
    /// stopped has stopped (or was given up on), so a library that ran an instance before no
    /// longer speaks for its name. From the slots, not the file: a kept instance runs what it
    /// was built from when the file names another library file now (a link an upgrade
    /// re-pointed), a stuck sink what it ran before, and a parked sink runs nothing.
    fn bind_running(&self) {
        let sources = self.sources.values().map(|s| (&s.decl, &s.library));
        let sinks = self.sinks.values().map(|k| (&k.decl, &k.library));
        self.logger.metrics.bind_only(
            sources
                .chain(sinks)
                .map(|(decl, library)| (decl.name.clone(), library.clone())),
        );
    }

    fn starter_for<'a>(&'a mut self, config: &'a Config) -> super::slots::Starter<'a> {
        super::slots::Starter {
            config,
            exits: &self.exits_tx,
            next_id: &mut self.next_id,
        }
    }
}

/// A sink built by a reload.
pub(super) type BuiltSink = crate::plan::Built<
    gateway_sdk::abi::SinkBox,
    crate::plan::NewSink,
    crate::config::SinkSettings,
>;

/// A sink a reload could not replace (its instance was still in a plugin call): its slot
/// stays in the graph; this replaces it once that call returns.
pub(super) struct Stuck {
    /// Its replacement, built from the file of that reload.
    pub built: BuiltSink,
    /// The disk buffer settings it runs with.
    pub old_buffer: Option<crate::config::BufferSettings>,
}

/// Says what the successor `k` of sink `name` keeps of the `line` handed over, and asks the
/// line's disk buffer writer to stop if the successor opens its own; whether it keeps it.
fn prepare_successor(
    name: &str,
    line: &Line,
    k: &BuiltSink,
    old_buffer: &Option<crate::config::BufferSettings>,
) -> bool {
    if k.settings.queue_capacity != line.capacity {
        tracing::warn!(sink = %name, "queue_capacity changed: the queue keeps {} batches until the next start", line.capacity);
    }
    // A buffer that the new config drops stays: it may hold readings, and only it can send
    // them (a start opens it again while it holds some: `plan::leftover_buffer`).
    if line.writer.is_some() && k.settings.buffer.is_none() && old_buffer.is_some() {
        tracing::warn!(sink = %name, "the config no longer gives this sink a disk buffer: it keeps the one it has (and sends what it holds) for this run, and a start opens it again while it holds unsent readings");
    }
    let keep_writer = line.writer.as_ref().is_some_and(|w| {
        k.settings.buffer.is_none()
            || (*old_buffer == k.settings.buffer && w.record_readings == k.settings.batch_size)
    });
    if !keep_writer {
        if let Some(w) = &line.writer {
            w.begin_stop();
        }
    }
    keep_writer
}

/// The built instance named `name` in `built`.
fn find<'a, T: Named>(built: &'a [T], name: &str) -> &'a T {
    built
        .iter()
        .find(|b| b.name() == name)
        .expect("the check built every instance")
}

/// Takes the built instance named `name` out of `built`.
fn take<T: Named>(built: &mut Vec<T>, name: &str) -> T {
    let i = built
        .iter()
        .position(|b| b.name() == name)
        .expect("the check built every instance");
    built.swap_remove(i)
}

trait Named {
    fn name(&self) -> &str;
}

impl<T, F, S> Named for crate::plan::Built<T, F, S> {
    fn name(&self) -> &str {
        &self.decl.name
    }
}

/// Opens sink `decl`'s disk buffer, if it has one.
fn open_buffer(config: &Config, decl: &Instance) -> Result<Option<Arc<DiskBuffer>>, String> {
    let Some(settings) = decl.sink_settings().and_then(|s| s.buffer.as_ref()) else {
        return crate::plan::leftover_buffer(config, decl).map(|b| b.map(Arc::new));
    };
    let dir = buffer_dir(config, decl);
    // A page of metrics being served may hold the old buffer (and its lock) for a moment.
    let mut tries = 0;
    loop {
        match DiskBuffer::open(&dir, settings) {
            Ok(b) => return Ok(Some(Arc::new(b))),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && tries < 40 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(format!(
                    "cannot open the disk buffer in {}: {e}",
                    dir.display()
                ))
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Drops `leftovers` on a thread of its own, or here if none can be made. (The libraries are
/// never unloaded, so their code outlives whatever drops.) The thread, to wait for at
/// shutdown.
fn drop_elsewhere<T: Send + 'static>(leftovers: T) -> Option<std::thread::JoinHandle<()>> {
    let held = std::sync::Arc::new(std::sync::Mutex::new(Some(leftovers)));
    let theirs = held.clone();
    let spawned = std::thread::Builder::new()
        .name("reload-drop".into())
        .spawn(move || drop(theirs.lock().unwrap_or_else(|e| e.into_inner()).take()));
    match spawned {
        Ok(handle) => Some(handle),
        Err(_) => {
            drop(held.lock().unwrap_or_else(|e| e.into_inner()).take());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config `text`, read from one directory every time (paths are relative to it).
    fn config(text: &str) -> Config {
        static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
        let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
        let path = dir.path().join(format!("{:x}.toml", fxhash(text)));
        std::fs::write(&path, text).unwrap();
        Config::load(&path).unwrap()
    }

    fn fxhash(s: &str) -> u64 {
        s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    }

    const BASE: &str = r#"
[gateway]
device = "pi"

[sources.a]
plugin = "testkit-sequence"
count = 5

[sources.b]
plugin = "testkit-sequence"
count = 7

[sinks.out]
plugin = "testkit-recorder"
path = "out.jsonl"
"#;

    #[test]
    fn an_instance_moved_in_the_file_is_kept_and_a_changed_key_rebuilds_it() {
        let old = config(BASE);
        // `b` moved above `a` with blank lines and comments around it; `a`'s count changed;
        // a sink was added; nothing else changed.
        let new = config(
            r#"
[gateway]
device = "pi"

# moved

[sources.b]
count   = 7
plugin  = "testkit-sequence"

[sources.a]
plugin = "testkit-sequence"
count = 6

[sinks.out]
plugin = "testkit-recorder"
path = "out.jsonl"

[sinks.more]
plugin = "testkit-recorder"
path = "more.jsonl"
"#,
        );
        let s = Changes::of(&old.sources, &new.sources, |_| false);
        assert_eq!(s.kept, ["b"]);
        assert_eq!(s.changed, ["a"]);
        assert!(s.added.is_empty() && s.removed.is_empty());
        let k = Changes::of(&old.sinks, &new.sinks, |_| false);
        assert_eq!(k.added, ["more"]);
        assert!(
            k.changed.is_empty(),
            "sinks without inputs take every source: unchanged"
        );
        assert_eq!(k.kept, ["out"]);
    }

    #[test]
    fn host_keys_count_and_log_level_does_not() {
        let old = config(BASE);
        let new = config(&BASE.replace(
            "path = \"out.jsonl\"",
            "path = \"out.jsonl\"\nbatch_size = 10",
        ));
        assert_eq!(
            Changes::of(&old.sinks, &new.sinks, |_| false).changed,
            ["out"]
        );
        let new = config(&BASE.replace("count = 7", "count = 7\nlog_level = \"debug\""));
        assert_eq!(
            Changes::of(&old.sources, &new.sources, |_| false).kept,
            ["a", "b"]
        );
        let new = config(&BASE.replace(
            "[sources.b]\nplugin = \"testkit-sequence\"\ncount = 7\n",
            "",
        ));
        assert_eq!(
            Changes::of(&old.sources, &new.sources, |_| false).removed,
            ["b"]
        );
    }

    #[test]
    fn gateway_changes_are_named() {
        let old = config(BASE);
        let new = config(&BASE.replace(
            "device = \"pi\"",
            "device = \"pi2\"\nshutdown_timeout = \"3s\"",
        ));
        assert_eq!(
            gateway_changes(&old.gateway, &new.gateway),
            ["device", "shutdown_timeout"]
        );
        assert!(gateway_changes(&old.gateway, &old.gateway).is_empty());
    }

    #[test]
    fn files_named_by_file_keys_are_stamped_by_their_contents() {
        let cfg = config(&BASE.replace(
            "path = \"out.jsonl\"",
            "path = \"out.jsonl\"\npsk = [{ identity = \"pi-07\", key_file = \"k.hex\" }]\n[sinks.out.tls]\nca_file = \"ca-under-test.pem\"",
        ));
        let decl = &cfg.sinks[0];
        let dir = decl.file.parent().unwrap();
        let ca = dir.join("ca-under-test.pem");
        std::fs::write(&ca, "one").unwrap();
        let key = dir.join("k.hex");
        std::fs::write(&key, "00112233").unwrap();
        let stamps = || {
            let mut s = file_stamps(decl);
            s.sort();
            s
        };
        let first = stamps();
        let paths: Vec<_> = first.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(
            paths,
            [ca.clone(), key.clone()],
            "only *_file keys, nested ones and ones in arrays of tables too: {first:?}"
        );
        assert_eq!(stamps(), first, "the same contents, the same stamp");
        // A rotated PSK (a leaked key rewritten in its file) is a change.
        std::fs::write(&key, "44556677").unwrap();
        assert_ne!(stamps(), first);
        std::fs::write(&key, "00112233").unwrap();
        assert_eq!(stamps(), first);
        std::fs::write(&ca, "two").unwrap();
        assert_ne!(stamps(), first);
        std::fs::remove_file(&ca).unwrap();
        assert_eq!(stamps()[0].1, None);
        // A FIFO in its place is not waited on (it held the run loop until a writer came).
        assert!(std::process::Command::new("mkfifo")
            .arg(&ca)
            .status()
            .unwrap()
            .success());
        let t = std::time::Instant::now();
        assert_eq!(stamps()[0].1, None);
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        std::fs::remove_file(&ca).unwrap();
        let changed = |_: &Instance| true;
        assert_eq!(
            Changes::of(&cfg.sinks, &cfg.sinks, changed).changed,
            ["out"]
        );
    }
}
