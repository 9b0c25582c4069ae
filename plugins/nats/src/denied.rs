//! Subjects the server refused this connection's publishes to (its publish permissions).
//!
//! NATS answers a publish that the user's permissions do not allow with an asynchronous
//! `-ERR 'Permissions Violation for Publish to "SUBJECT"'` and drops the message; JetStream
//! never sees it, so its acknowledgement only times out. Retried, such a reading would time
//! out at every try and stall the sink for every device. The sink therefore notes the
//! subjects named in those errors here and refuses their readings for good (they go to the
//! dead-letter file, whence `gateway dead-letters resend` sends them once the permissions
//! are fixed). A note is forgotten after [`REMEMBERED`]: the server's permissions may be
//! changed meanwhile, and a subject still refused is noted again at its next try.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// How long a refused subject is refused without a try.
pub const REMEMBERED: Duration = Duration::from_secs(60);

/// The most subjects remembered; the one noted longest ago makes way for a new one.
const MOST: usize = 4_096;

/// What the server says before the subject when it refuses a publish.
const PREFIX: &str = "Permissions Violation for Publish to ";

/// The subjects refused, and when each was last; shared with the connection's event
/// callback.
#[derive(Clone, Default)]
pub struct Denied(Arc<Mutex<HashMap<String, Instant>>>);

impl Denied {
    /// Notes the subject a server error names, if it is a refused publish.
    pub fn note_error(&self, error: &str, now: Instant) {
        let Some(subject) = refused_subject(error) else {
            return;
        };
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MOST && !map.contains_key(subject) {
            map.retain(|_, at| now.saturating_duration_since(*at) < REMEMBERED);
            if map.len() >= MOST {
                if let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(s, _)| s.clone())
                {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(subject.to_owned(), now);
    }

    /// Whether the server refused a publish to `subject` within [`REMEMBERED`] of `now`.
    pub fn refuses(&self, subject: &str, now: Instant) -> bool {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(subject)
            .is_some_and(|at| now.saturating_duration_since(*at) < REMEMBERED)
    }
}

/// The subject of a server error that refuses a publish: `Permissions Violation for Publish to
/// "SUBJECT"` (nats-server 2.x; async-nats has taken off the quotes around the whole text).
fn refused_subject(error: &str) -> Option<&str> {
    let rest = error.trim().strip_prefix(PREFIX)?;
    let rest = rest.strip_prefix('"')?;
    let (subject, _) = rest.split_once('"')?;
    (!subject.is_empty()).then_some(subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_publish_names_its_subject_and_nothing_else_does() {
        assert_eq!(
            refused_subject(r#"Permissions Violation for Publish to "readings.pi-02.t.t""#),
            Some("readings.pi-02.t.t")
        );
        for other in [
            r#"Permissions Violation for Subscription to "_INBOX.>""#,
            "Authorization Violation",
            r#"Permissions Violation for Publish to """#,
            "Permissions Violation for Publish to readings.x",
            "",
        ] {
            assert_eq!(refused_subject(other), None, "{other}");
        }
    }

    #[test]
    fn a_refused_subject_is_remembered_for_a_while_and_within_bounds() {
        let d = Denied::default();
        let t0 = Instant::now();
        d.note_error(r#"Permissions Violation for Publish to "a.b""#, t0);
        d.note_error("Authorization Violation", t0);
        assert!(d.refuses("a.b", t0 + REMEMBERED - Duration::from_millis(1)));
        assert!(!d.refuses("a.c", t0));
        assert!(!d.refuses("a.b", t0 + REMEMBERED));
        for i in 0..MOST + 10 {
            d.note_error(
                &format!(r#"Permissions Violation for Publish to "s.{i}""#),
                t0 + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(d.0.lock().unwrap().len(), MOST);
        let last = t0 + Duration::from_millis(MOST as u64 + 9);
        assert!(d.refuses(&format!("s.{}", MOST + 9), last));
        assert!(!d.refuses("s.0", last), "the oldest made way");
    }
}
