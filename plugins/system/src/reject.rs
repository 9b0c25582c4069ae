//! Why a value was skipped, and the tally of skipped values: each distinct problem is logged at
//! warn the first time it is seen and only counted after that, so a broken file that stays
//! broken does not fill the log once a minute.

use gateway_sdk::tracing;
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

/// Why a value was not reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Reject {
    /// The file could not be read: missing, not permitted, or an error from the driver.
    Unreadable,
    /// The file was empty.
    Empty,
    /// The text is not in the format the kernel prints.
    Malformed,
    /// A field the format should have is not there (`MemAvailable` before Linux 3.14, say).
    Missing,
    /// A number no machine reports: negative, beyond the hardware's range, or overflowing.
    OutOfRange,
    /// A Wi-Fi signal level on a driver's own scale rather than in dBm.
    NotDbm,
    /// The read (or `statvfs`) did not come back within [`crate::collect::IO_TIMEOUT`]: a FIFO
    /// with no writer, a network filesystem whose server is gone, a dying SD card. The subject
    /// is skipped until it comes back; the others are read meanwhile.
    Hung,
}

impl Reject {
    /// A short name for logs and counters.
    pub fn name(self) -> &'static str {
        match self {
            Reject::Unreadable => "unreadable",
            Reject::Empty => "empty",
            Reject::Malformed => "malformed",
            Reject::Missing => "missing field",
            Reject::OutOfRange => "out of range",
            Reject::NotDbm => "not in dBm",
            Reject::Hung => "hung",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Skipped values so far, per subject (a file under the root, with the field where a file
/// holds several: `proc/meminfo MemAvailable`) and reason.
pub type RejectCounts = BTreeMap<(String, Reject), u64>;

/// Counts skipped values and logs each distinct problem once.
#[derive(Debug, Default)]
pub struct Problems {
    counts: RejectCounts,
    noted: BTreeSet<String>,
}

impl Problems {
    /// Counts a skipped value; logs it at warn if this subject never failed this way before.
    pub fn reject(&mut self, subject: &str, reason: Reject, detail: impl fmt::Display) {
        let n = self.counts.entry((subject.to_owned(), reason)).or_insert(0);
        *n += 1;
        if *n == 1 {
            tracing::warn!(%subject, %reason, %detail, "value skipped (reported once; counted from now on)");
        } else {
            tracing::trace!(%subject, %reason, %detail, times = *n, "value skipped again");
        }
    }

    /// Logs `message` about `subject` at debug, the first time only: for what is normal on some
    /// machines (no Raspberry Pi firmware, no Wi-Fi) and so not a problem.
    pub fn note_once(&mut self, subject: &str, message: &str) {
        if self.noted.insert(subject.to_owned()) {
            tracing::debug!(%subject, "{message}");
        }
    }

    /// Skipped values so far, per subject and reason.
    pub fn counts(&self) -> &RejectCounts {
        &self.counts
    }

    /// How many values were skipped in all.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_occurrence_per_subject_and_reason() {
        let mut p = Problems::default();
        p.reject("proc/uptime", Reject::Empty, "");
        p.reject("proc/uptime", Reject::Empty, "");
        p.reject("proc/uptime", Reject::Malformed, "x");
        p.reject("proc/loadavg", Reject::Unreadable, "gone");
        assert_eq!(p.counts()[&("proc/uptime".into(), Reject::Empty)], 2);
        assert_eq!(p.counts()[&("proc/uptime".into(), Reject::Malformed)], 1);
        assert_eq!(p.total(), 4);
    }
}
