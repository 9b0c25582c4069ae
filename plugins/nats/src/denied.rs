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
/// callback, which wakes a batch waiting for its acknowledgements when one of its subjects is
/// refused ([`Denied::until_refused`]).
#[derive(Clone, Default)]
pub struct Denied(Arc<Inner>);

#[derive(Default)]
struct Inner {
    map: Mutex<HashMap<String, Instant>>,
    noted: tokio::sync::Notify,
}

impl Denied {
    /// Notes the subject a server error names, if it is a refused publish.
    pub fn note_error(&self, error: &str, now: Instant) {
        let Some(subject) = refused_subject(error) else {
            return;
        };
        self.note(subject, now);
        self.0.noted.notify_waiters();
    }

    fn note(&self, subject: String, now: Instant) {
        let mut map = self.0.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MOST && !map.contains_key(&subject) {
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
        map.insert(subject, now);
    }

    /// The first of `subjects` the server refused a publish to within [`REMEMBERED`] of `now`.
    pub fn first_refused(&self, subjects: &[String], now: Instant) -> Option<usize> {
        let map = self.0.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.is_empty() {
            return None;
        }
        subjects.iter().position(|s| {
            map.get(s)
                .is_some_and(|at| now.saturating_duration_since(*at) < REMEMBERED)
        })
    }

    /// Waits until the server refuses a publish to one of `subjects`, and gives its index: a
    /// batch holding one need not wait for the acknowledgement that will never come.
    pub async fn until_refused(&self, subjects: &[String]) -> usize {
        loop {
            let noted = self.0.noted.notified();
            tokio::pin!(noted);
            // Registered before the look, so that a note between the two is not missed.
            noted.as_mut().enable();
            if let Some(i) = self.first_refused(subjects, Instant::now()) {
                return i;
            }
            noted.await;
        }
    }
}

/// The subject of a server error that refuses a publish: `Permissions Violation for Publish to
/// "SUBJECT"` (nats-server 2.x quotes it as Go's `%q` does; async-nats has taken off the
/// quotes around the whole text).
fn refused_subject(error: &str) -> Option<String> {
    let rest = error.trim().strip_prefix(PREFIX)?;
    let subject = go_unquote(rest)?;
    (!subject.is_empty()).then_some(subject)
}

/// The string Go's `%q` wrote at the start of `text` (a `"`, the text with `\` escapes, a
/// `"`): `\"`, `\\`, `\a` `\b` `\f` `\n` `\r` `\t` `\v`, `\xHH`, `\uHHHH`, `\UHHHHHHHH`.
fn go_unquote(text: &str) -> Option<String> {
    let mut chars = text.strip_prefix('"')?.chars();
    let mut out = String::new();
    let mut bytes = Vec::new();
    loop {
        let c = chars.next()?;
        if c == '"' {
            break;
        }
        if c != '\\' {
            out.push_str(std::str::from_utf8(&std::mem::take(&mut bytes)).ok()?);
            out.push(c);
            continue;
        }
        fn hex(chars: &mut std::str::Chars<'_>, n: usize) -> Option<u32> {
            let digits: String = (0..n).map(|_| chars.next()).collect::<Option<_>>()?;
            if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(&digits, 16).ok()
        }
        let escaped = match chars.next()? {
            // A byte: bytes that are not UTF-8 alone may be with the next ones.
            'x' => {
                bytes.push(u8::try_from(hex(&mut chars, 2)?).ok()?);
                continue;
            }
            'u' => char::from_u32(hex(&mut chars, 4)?)?,
            'U' => char::from_u32(hex(&mut chars, 8)?)?,
            'a' => '\u{7}',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\u{b}',
            c @ ('\\' | '"' | '\'') => c,
            _ => return None,
        };
        out.push_str(std::str::from_utf8(&std::mem::take(&mut bytes)).ok()?);
        out.push(escaped);
    }
    out.push_str(std::str::from_utf8(&bytes).ok()?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_publish_names_its_subject_and_nothing_else_does() {
        assert_eq!(
            refused_subject(r#"Permissions Violation for Publish to "readings.pi-02.t.t""#)
                .as_deref(),
            Some("readings.pi-02.t.t")
        );
        // Go's %q: a quote, a backslash, a byte that is not printable, UTF-8 as it is.
        assert_eq!(
            refused_subject(r#"Permissions Violation for Publish to "readings.pi\"0\\1\x01.ü.t""#)
                .as_deref(),
            Some("readings.pi\"0\\1\u{1}.ü.t")
        );
        assert_eq!(
            refused_subject(r#"Permissions Violation for Publish to "a.\xc3\xbc""#).as_deref(),
            Some("a.ü")
        );
        for other in [
            r#"Permissions Violation for Subscription to "_INBOX.>""#,
            "Authorization Violation",
            r#"Permissions Violation for Publish to """#,
            "Permissions Violation for Publish to readings.x",
            r#"Permissions Violation for Publish to "cut"#,
            r#"Permissions Violation for Publish to "bad\q""#,
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
        let refuses = |s: &str, at| d.first_refused(&[s.to_owned()], at).is_some();
        assert!(refuses("a.b", t0 + REMEMBERED - Duration::from_millis(1)));
        assert!(!refuses("a.c", t0));
        assert!(!refuses("a.b", t0 + REMEMBERED));
        for i in 0..MOST + 10 {
            d.note_error(
                &format!(r#"Permissions Violation for Publish to "s.{i}""#),
                t0 + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(d.0.map.lock().unwrap().len(), MOST);
        let last = t0 + Duration::from_millis(MOST as u64 + 9);
        assert!(refuses(&format!("s.{}", MOST + 9), last));
        assert!(!refuses("s.0", last), "the oldest made way");
    }

    #[test]
    fn a_batch_waiting_is_woken_when_one_of_its_subjects_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let d = Denied::default();
        let subjects = ["a.1".to_owned(), "a.2".to_owned()];
        let noter = d.clone();
        let found = rt.block_on(async {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                noter.note_error(
                    r#"Permissions Violation for Publish to "b.1""#,
                    Instant::now(),
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
                noter.note_error(
                    r#"Permissions Violation for Publish to "a.2""#,
                    Instant::now(),
                );
            });
            tokio::time::timeout(Duration::from_secs(5), d.until_refused(&subjects)).await
        });
        assert_eq!(found, Ok(1));
    }
}
