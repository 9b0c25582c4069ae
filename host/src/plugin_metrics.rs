//! What plugin instances show on the metrics page ([`gateway_sdk::metrics`]): each instance's
//! last published set of families, merged by name into Prometheus text with an `instance`
//! label in front of the plugin's own. A family whose name or labels are not Prometheus names,
//! or whose name is one of the host's own, is left out (and logged once).

use crate::metrics::escape;
use gateway_sdk::abi::{MetricFamily, MetricKind};
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    path::PathBuf,
    sync::{Mutex, RwLock},
};

/// A library's file as the kernel knows it (device and inode, through links), so that a
/// library reached under two names (a link to it, two `plugin_dir` entries) is one; its path
/// where the file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LibraryFile {
    /// Device and inode.
    Inode(u64, u64),
    /// The path, where the file's metadata cannot be had.
    Path(PathBuf),
}

#[cfg(test)]
impl LibraryFile {
    /// The file at `path` now (the loader keeps instead the file a library was first loaded
    /// from, [`crate::loader::Library::file`]).
    pub fn of(path: &std::path::Path) -> LibraryFile {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(path) {
            Ok(m) => LibraryFile::Inode(m.dev(), m.ino()),
            Err(_) => LibraryFile::Path(path.to_owned()),
        }
    }
}

/// Whether a library may speak for an instance ([`PluginMetrics::speaks_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    /// It was built from that library.
    Own,
    /// It was built from others only: the library claims an instance it does not run.
    Foreign,
    /// No library was built for it (a name of no instance).
    Unknown,
}

/// The libraries each instance may speak for.
pub type Bindings = HashMap<String, HashSet<LibraryFile>>;

/// Every instance's last published families.
#[derive(Debug, Default)]
pub struct PluginMetrics {
    by_instance: Mutex<BTreeMap<String, Vec<MetricFamily>>>,
    warned: Mutex<HashSet<String>>,
    /// The instances the running config has, once the graph has said ([`Self::keep_only`]):
    /// what others publish (an instance a reload removed, whose threads publish once more on
    /// their way out) is not kept.
    live: Mutex<Option<HashSet<String>>>,
    /// The libraries each instance is built from ([`Self::allow`]): a library speaks (logs,
    /// publishes) only for those instances. While a reload checks and applies a file, an
    /// instance it gives to another library has both, so that the one it stops still speaks
    /// on its way out; once it is applied ([`Self::bind_only`]), or refused
    /// ([`Self::set_bindings`]), only the running config's are left. `None` until an instance
    /// is built.
    owners: RwLock<Option<Bindings>>,
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':');
    matches!(chars.next(), Some(c) if (c.is_ascii_alphabetic() || c == '_' || (colon && c == ':')))
        && chars.all(ok)
}

/// A sample's value as the text format writes it (`+Inf`, `-Inf`, `NaN`, not Rust's `inf`).
fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        v.to_string()
    }
}

impl PluginMetrics {
    /// Replaces what `instance` shows (nothing, if the running config has no such instance).
    pub fn publish(&self, instance: &str, families: Vec<MetricFamily>) {
        let live = self.live.lock().unwrap();
        if live.as_ref().is_some_and(|l| !l.contains(instance)) {
            return;
        }
        self.by_instance
            .lock()
            .unwrap()
            .insert(instance.to_owned(), families);
    }

    /// Instance `instance` is being built from the library file `library` (for the running
    /// config, or for one a reload checks): that library may speak for it.
    pub fn allow(&self, instance: &str, library: &LibraryFile) {
        self.owners
            .write()
            .unwrap()
            .get_or_insert_with(Bindings::new)
            .entry(instance.to_owned())
            .or_default()
            .insert(library.clone());
    }

    /// The bindings now, for [`Self::set_bindings`] to put back.
    pub fn bindings(&self) -> Option<Bindings> {
        self.owners.read().unwrap().clone()
    }

    /// Puts back bindings taken with [`Self::bindings`]: a reload that is not applied leaves
    /// the libraries its check built instances from without a say. (A check abandoned while
    /// it still builds instances binds them when it gets there: libraries the operator named
    /// for those instances.)
    pub fn set_bindings(&self, bindings: Option<Bindings>) {
        *self.owners.write().unwrap() = bindings;
    }

    /// The instances that run now were built from these libraries, and no others: a reload
    /// has stopped (or given up on) what it replaced. A library that ran an instance before,
    /// and still runs another, no longer speaks for the first: a name a reload gave to another
    /// plugin is that plugin's alone. (An instance the reload left behind, still in a plugin
    /// call past `shutdown_timeout`, speaks under its library's name from now on, unless its
    /// successor runs from the same library.)
    pub fn bind_only(&self, running: impl IntoIterator<Item = (String, LibraryFile)>) {
        let mut owners = Bindings::new();
        for (instance, library) in running {
            owners.entry(instance).or_default().insert(library);
        }
        *self.owners.write().unwrap() = Some(owners);
    }

    /// Whether the library at `library` may speak for `instance`: a plugin of another
    /// library could otherwise put its figures, or erase the real ones, under the name of an
    /// instance it does not run (the coaps ingress's refused handshakes, say), and its log
    /// lines under that instance's name. Bound to the library's file, not to the plugin ids
    /// it says it exports (any library can say any id). `Own` before any instance is built
    /// (a tool that builds none); `Unknown` for an instance no library was built for.
    pub fn speaks_for(&self, instance: &str, library: &LibraryFile) -> Speaks {
        match &*self.owners.read().unwrap() {
            None => Speaks::Own,
            Some(owners) => match owners.get(instance) {
                None => Speaks::Unknown,
                Some(libraries) if libraries.contains(library) => Speaks::Own,
                Some(_) => Speaks::Foreign,
            },
        }
    }

    /// Says once that a library sent metrics for an instance it does not run.
    pub fn refuse_foreign(&self, library: &str, instance: &str) {
        self.refuse(
            instance,
            &format!("(any, from library {library})"),
            "that library exports no plugin of this instance; it published under another instance's name",
        );
    }

    /// The instances of the running config are `names`: only they publish from now on, and
    /// what others showed is dropped.
    pub fn keep_only<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let names: HashSet<String> = names.into_iter().map(str::to_owned).collect();
        let mut live = self.live.lock().unwrap();
        self.by_instance
            .lock()
            .unwrap()
            .retain(|instance, _| names.contains(instance));
        self.warned
            .lock()
            .unwrap()
            .retain(|w| w.split_once('/').is_some_and(|(i, _)| names.contains(i)));
        *live = Some(names);
    }

    /// Every instance's families now.
    pub fn snapshot(&self) -> Vec<(String, Vec<MetricFamily>)> {
        self.by_instance
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Drops what `instance` showed (it stopped, or a reload replaced it).
    pub fn forget(&self, instance: &str) {
        self.by_instance.lock().unwrap().remove(instance);
    }

    fn refuse(&self, instance: &str, name: &str, why: &str) {
        if self
            .warned
            .lock()
            .unwrap()
            .insert(format!("{instance}/{name}"))
        {
            tracing::warn!(
                instance,
                metric = name,
                "a plugin's metric is not shown: {why}"
            );
        }
    }

    /// Appends every family in Prometheus text, one `# HELP`/`# TYPE` per name, leaving out
    /// the names in `host` (the host's own).
    pub fn render(&self, out: &mut String, host: &[&str]) {
        let all = self.by_instance.lock().unwrap().clone();
        // name -> (help, kind, lines)
        let mut merged: BTreeMap<String, (String, MetricKind, String)> = BTreeMap::new();
        for (instance, families) in &all {
            for f in families {
                let name = f.name.as_str();
                if !is_name(name, true) {
                    self.refuse(instance, name, "not a Prometheus metric name");
                    continue;
                }
                if host.contains(&name) {
                    self.refuse(instance, name, "the host shows a metric of that name");
                    continue;
                }
                let entry = merged
                    .entry(name.to_owned())
                    .or_insert_with(|| (f.help.to_string(), f.kind, String::new()));
                if entry.1 != f.kind {
                    self.refuse(
                        instance,
                        name,
                        "another instance shows it with another type",
                    );
                    continue;
                }
                for s in &f.samples {
                    let mut labels = format!("instance=\"{}\"", escape(instance));
                    let mut bad = !matches!(s.suffix.as_str(), "" | "_bucket" | "_sum" | "_count");
                    // A label name twice in a sample (a histogram's own `le` among the
                    // plugin's labels, say) fails the whole scrape, the host's metrics too;
                    // names starting `__` are Prometheus's own, and `le` is a histogram's
                    // bucket bound, on its buckets only.
                    let mut seen: Vec<&str> = Vec::with_capacity(s.labels.len());
                    for pair in &s.labels {
                        let (k, v) = (pair.0.as_str(), pair.1.as_str());
                        bad |= !is_name(k, false)
                            || k == "instance"
                            || k.starts_with("__")
                            || seen.contains(&k)
                            || (k == "le"
                                && f.kind == MetricKind::Histogram
                                && s.suffix.as_str() != "_bucket");
                        seen.push(k);
                        let _ = write!(labels, ",{k}=\"{}\"", escape(v));
                    }
                    if bad {
                        self.refuse(
                            instance,
                            name,
                            "a sample's label name or suffix is not allowed",
                        );
                        continue;
                    }
                    let _ = writeln!(entry.2, "{name}{}{{{labels}}} {}", s.suffix, value(s.value));
                }
            }
        }
        for (name, (help, kind, lines)) in merged {
            let kind = match kind {
                MetricKind::Counter => "counter",
                MetricKind::Gauge => "gauge",
                MetricKind::Histogram => "histogram",
            };
            let help = help.replace('\\', "\\\\").replace('\n', "\\n");
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            out.push_str(&lines);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_sdk::metrics::Metrics;
    use std::path::Path;

    #[test]
    fn families_of_several_instances_merge_under_one_help_and_type() {
        let p = PluginMetrics::default();
        let mut a = Metrics::new();
        a.counter(
            "gateway_dtls_handshakes_total",
            "Handshakes.",
            &[("result", "ok")],
            3,
        )
        .histogram(
            "gateway_coap_latency_seconds",
            "Latency.",
            &[],
            &[(0.01, 2)],
            0.02,
            3,
        );
        p.publish("in1", a.families().to_vec());
        let mut b = Metrics::new();
        b.counter(
            "gateway_dtls_handshakes_total",
            "Handshakes.",
            &[("result", "ok")],
            5,
        )
        .gauge("bad name", "x", &[], 1.0)
        .gauge("gateway_sink_written_total", "a host name", &[], 1.0)
        .gauge("gateway_y", "not finite", &[], f64::INFINITY)
        .gauge(
            "gateway_x",
            "a label that is not a name",
            &[("a-b", "v\"q")],
            1.0,
        );
        p.publish("in2", b.families().to_vec());
        let mut out = String::new();
        p.render(&mut out, &["gateway_sink_written_total"]);
        assert_eq!(
            out.matches("# TYPE gateway_dtls_handshakes_total counter")
                .count(),
            1,
            "{out}"
        );
        assert!(
            out.contains("gateway_dtls_handshakes_total{instance=\"in1\",result=\"ok\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("gateway_dtls_handshakes_total{instance=\"in2\",result=\"ok\"} 5\n"),
            "{out}"
        );
        assert!(
            out.contains("gateway_coap_latency_seconds_bucket{instance=\"in1\",le=\"0.01\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("gateway_coap_latency_seconds_bucket{instance=\"in1\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("gateway_coap_latency_seconds_count{instance=\"in1\"} 3\n")
                && out.contains("gateway_y{instance=\"in2\"} +Inf\n"),
            "{out}"
        );
        assert!(
            !out.contains("bad name") && !out.contains("a host name") && !out.contains("a-b"),
            "{out}"
        );
        p.forget("in1");
        let mut out = String::new();
        p.render(&mut out, &[]);
        assert!(!out.contains("in1") && out.contains("in2"), "{out}");
    }

    /// Prometheus refuses a whole page with a label name twice in a sample: the host's own
    /// metrics would be lost with the plugin's.
    #[test]
    fn a_sample_naming_a_label_twice_is_left_out_not_the_page() {
        let p = PluginMetrics::default();
        let mut m = Metrics::new();
        m.histogram(
            "gateway_h",
            "A histogram.",
            &[("le", "x")],
            &[(1.0, 1)],
            1.0,
            1,
        )
        .gauge("gateway_g", "Twice.", &[("a", "1"), ("a", "2")], 1.0)
        .gauge("gateway_r", "Reserved.", &[("__name__", "x")], 1.0)
        .gauge("gateway_ok", "Fine.", &[("a", "1")], 2.0);
        p.publish("in", m.families().to_vec());
        let mut out = String::new();
        p.render(&mut out, &[]);
        assert!(
            !out.contains("le=\"x\"") && !out.contains("a=\"2\"") && !out.contains("__name__"),
            "{out}"
        );
        assert!(
            out.contains("gateway_ok{instance=\"in\",a=\"1\"} 2\n"),
            "{out}"
        );
    }

    /// An instance a reload removed may publish once more on its way out (a plugin's
    /// observer thread): it does not come back on the page.
    #[test]
    fn only_instances_of_the_running_config_are_shown() {
        let p = PluginMetrics::default();
        let mut m = Metrics::new();
        m.gauge("gateway_g", "G.", &[], 1.0);
        p.publish("old", m.families().to_vec());
        p.publish("kept", m.families().to_vec());
        p.keep_only(["kept", "new"]);
        p.publish("old", m.families().to_vec());
        p.publish("new", m.families().to_vec());
        let mut out = String::new();
        p.render(&mut out, &[]);
        assert!(!out.contains("\"old\""), "{out}");
        assert!(out.contains("\"kept\"") && out.contains("\"new\""), "{out}");
    }

    /// Found in a review: any library could publish under any instance's name; then, that
    /// a library could claim any plugin id.
    #[test]
    fn a_library_speaks_only_for_instances_built_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let lib = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, name).unwrap();
            path
        };
        let (ingress, thief, mqtt) = (
            lib("libcoaps_ingress.so"),
            lib("libthief.so"),
            lib("libmqtt.so"),
        );
        let file = |p: &Path| LibraryFile::of(p);
        let p = PluginMetrics::default();
        assert_eq!(
            p.speaks_for("in", &file(&thief)),
            Speaks::Own,
            "before any instance is built"
        );
        p.allow("in", &file(&ingress));
        assert_eq!(p.speaks_for("in", &file(&ingress)), Speaks::Own);
        assert_eq!(p.speaks_for("in", &file(&thief)), Speaks::Foreign);
        assert_eq!(p.speaks_for("nobody", &file(&ingress)), Speaks::Unknown);
        // A library reached under another name (a link, another plugin_dir) is the same.
        let link = dir.path().join("libcoaps_ingress_link.so");
        std::os::unix::fs::symlink(&ingress, &link).unwrap();
        assert_eq!(p.speaks_for("in", &file(&link)), Speaks::Own);
        // A reload that builds "in" from another library: both speak for it, the old one
        // on its way out too, whatever the running config says.
        let before = p.bindings();
        p.allow("in", &file(&mqtt));
        p.keep_only(["in"]);
        assert_eq!(p.speaks_for("in", &file(&mqtt)), Speaks::Own);
        assert_eq!(p.speaks_for("in", &file(&ingress)), Speaks::Own);
        assert_eq!(p.speaks_for("in", &file(&thief)), Speaks::Foreign);
        // Refused: as before.
        p.set_bindings(before);
        assert_eq!(p.speaks_for("in", &file(&mqtt)), Speaks::Foreign);
        assert_eq!(p.speaks_for("in", &file(&ingress)), Speaks::Own);
        // Applied: the new library's alone, though the old one runs another instance.
        p.allow("in", &file(&mqtt));
        p.bind_only([
            ("in".to_owned(), file(&mqtt)),
            ("other".to_owned(), file(&ingress)),
        ]);
        assert_eq!(p.speaks_for("in", &file(&mqtt)), Speaks::Own);
        assert_eq!(p.speaks_for("in", &file(&ingress)), Speaks::Foreign);
        assert_eq!(p.speaks_for("other", &file(&ingress)), Speaks::Own);
    }
}
