//! When a sink worker says which readings its dead-letter directory did not keep (their device
//! past its share, or the directory full): a device may have them refused as fast as it can
//! send, so the warning is said at most once a minute, but at once for each of the first
//! [`NotKeptSaid::DEVICES`] devices of a minute, so that a new culprit is named when it
//! starts. No I/O: the worker logs what [`NotKeptSaid::add`] returns.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

/// How often the warning is said while readings go on being not kept.
pub(super) const EVERY: Duration = Duration::from_secs(60);

/// The readings not kept since they were last said.
#[derive(Debug, Default)]
pub(super) struct NotKeptSaid {
    /// When the minute of the warnings began.
    at: Option<Instant>,
    /// The devices named in it (at most [`NotKeptSaid::DEVICES`]): another is named at once.
    named: BTreeSet<String>,
    /// How many since the last warning.
    readings: u64,
    /// Of which devices, with how many and why (the first [`NotKeptSaid::DEVICES`] devices).
    by_device: BTreeMap<String, (u64, String)>,
    /// Readings of the devices past those.
    more: u64,
}

/// A warning to say: how many readings were not kept since the last, and of which devices.
#[derive(Debug, PartialEq)]
pub(super) struct Say {
    /// Readings not kept since the last warning.
    pub readings: u64,
    /// `"DEVICE": N (WHY); ...`, and how many readings of other devices.
    pub devices: String,
}

impl NotKeptSaid {
    /// The most devices named in one warning, and said at once in one minute.
    pub(super) const DEVICES: usize = 8;

    /// Counts `not_kept` (device, readings, why) at `now`; the warning to say now, if any:
    /// once the minute since the last one is over, or when a device not yet named in it comes
    /// while fewer than [`NotKeptSaid::DEVICES`] are.
    pub(super) fn add(
        &mut self,
        now: Instant,
        not_kept: &[(String, usize, String)],
    ) -> Option<Say> {
        if not_kept.is_empty() {
            return None;
        }
        for (device, n, why) in not_kept {
            self.count(device, *n as u64, why);
        }
        let minute_over = self
            .at
            .is_none_or(|at| now.saturating_duration_since(at) >= EVERY);
        let unnamed = self.named.len() < Self::DEVICES
            && not_kept.iter().any(|(d, ..)| !self.named.contains(d));
        if !minute_over && !unnamed {
            return None;
        }
        let say = Say {
            readings: self.readings,
            devices: self.devices(),
        };
        if minute_over {
            self.at = Some(now);
            self.named.clear();
        }
        for d in std::mem::take(&mut self.by_device).into_keys() {
            if self.named.len() < Self::DEVICES {
                self.named.insert(d);
            }
        }
        self.readings = 0;
        self.more = 0;
        Some(say)
    }

    fn count(&mut self, device: &str, n: u64, why: &str) {
        self.readings += n;
        if let Some((count, last)) = self.by_device.get_mut(device) {
            *count += n;
            why.clone_into(last);
        } else if self.by_device.len() < Self::DEVICES {
            self.by_device
                .insert(device.to_owned(), (n, why.to_owned()));
        } else {
            self.more += n;
        }
    }

    fn devices(&self) -> String {
        let mut out: Vec<String> = self
            .by_device
            .iter()
            .map(|(d, (n, why))| format!("{d:?}: {n} ({why})"))
            .collect();
        if self.more > 0 {
            out.push(format!("and {} readings of other devices", self.more));
        }
        out.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(device: &str, n: usize) -> Vec<(String, usize, String)> {
        vec![(device.to_owned(), n, "past its share".to_owned())]
    }

    #[test]
    fn each_new_device_is_named_at_once_and_the_rest_once_a_minute() {
        let t0 = Instant::now();
        let mut s = NotKeptSaid::default();
        assert_eq!(s.add(t0, &[]), None, "nothing not kept, nothing said");
        let first = s.add(t0, &of("a", 3)).expect("the first refusal is said");
        assert_eq!(first.readings, 3);
        assert_eq!(first.devices, "\"a\": 3 (past its share)");
        // The same device again within the minute: counted, not said.
        assert_eq!(s.add(t0 + Duration::from_secs(1), &of("a", 2)), None);
        // A new device is said at once, with what came since the last warning.
        let second = s.add(t0 + Duration::from_secs(2), &of("b", 1)).expect("b");
        assert_eq!(second.readings, 3);
        assert_eq!(
            second.devices,
            "\"a\": 2 (past its share); \"b\": 1 (past its share)"
        );
        // Six more devices fill the minute's names, each said as it comes.
        for d in ["c", "d", "e", "f", "g", "h"] {
            let said = s.add(t0 + Duration::from_secs(3), &of(d, 1));
            assert!(
                said.is_some_and(|x| x.devices.contains(&format!("{d:?}"))),
                "{d}"
            );
        }
        // A ninth waits for the minute: a device flood is not a log flood.
        assert_eq!(s.add(t0 + Duration::from_secs(4), &of("i", 5)), None);
        assert_eq!(s.add(t0 + Duration::from_secs(59), &of("j", 1)), None);
        let later = s
            .add(t0 + Duration::from_secs(60), &of("a", 1))
            .expect("the minute is over");
        assert_eq!(later.readings, 7);
        assert_eq!(
            later.devices,
            "\"a\": 1 (past its share); \"i\": 5 (past its share); \"j\": 1 (past its share)"
        );
        // A new minute: its first devices are said at once again.
        assert_eq!(s.add(t0 + Duration::from_secs(61), &of("a", 1)), None);
        assert!(s.add(t0 + Duration::from_secs(61), &of("k", 1)).is_some());
    }

    #[test]
    fn a_warning_names_at_most_eight_devices_and_counts_the_others() {
        let t0 = Instant::now();
        let mut s = NotKeptSaid::default();
        let many: Vec<(String, usize, String)> = (0..12)
            .map(|i| (format!("d{i:02}"), 2, "full".to_owned()))
            .collect();
        let said = s.add(t0, &many).expect("said");
        assert_eq!(said.readings, 24);
        assert_eq!(
            said.devices.matches("(full)").count(),
            8,
            "{}",
            said.devices
        );
        assert!(
            said.devices.ends_with("and 8 readings of other devices"),
            "{}",
            said.devices
        );
    }
}
