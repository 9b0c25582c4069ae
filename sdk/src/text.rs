//! Text from outside (a peer's name, a server's message, a file's contents) made safe to write
//! to a log or a terminal. No I/O.
//!
//! A control character in such text can forge a log line (a line break), rewrite what a
//! terminal shows (ESC starts the sequences that move the cursor, clear the screen, set the
//! window title or the clipboard, plant hyperlinks), and the bidirectional controls and the
//! line and paragraph separators reorder or break a line without being control characters to
//! [`char::is_control`]. These functions write each of them as its Rust escape (`\u{1b}`),
//! and leave every other character as it is.

use std::borrow::Cow;

/// `text` with every control character (line breaks and tabs included), bidirectional control
/// and line or paragraph separator escaped: for one line of a log or a terminal.
pub fn one_line(text: &str) -> Cow<'_, str> {
    escape(text, |_| false)
}

/// `text` for a terminal, its line breaks and tabs kept: for a body the user asked to see
/// (`\r`, which would return to the start of a line and overwrite it, is escaped).
pub fn printable(text: &str) -> Cow<'_, str> {
    escape(text, |c| c == '\n' || c == '\t')
}

/// Whether `c` is escaped: a control character, or one that reorders or breaks a line (U+200E,
/// U+200F, U+2028 to U+202E, U+2066 to U+2069).
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200E}' | '\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn escape(text: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    let bad = |c: char| is_unsafe(c) && !keep(c);
    let Some(first) = text.find(bad) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str(&text[..first]);
    for c in text[first..].chars() {
        if bad(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_rewrites_a_terminal_or_a_line() {
        assert!(matches!(one_line("plain ünïcode"), Cow::Borrowed(_)));
        assert_eq!(
            one_line("a\u{1b}]52;c;ZXZpbA==\u{7}b\nINFO x\r\u{202e}y\u{2028}\u{2066}\u{9b}\u{0e}"),
            "a\\u{1b}]52;c;ZXZpbA==\\u{7}b\\nINFO x\\r\\u{202e}y\\u{2028}\\u{2066}\\u{9b}\\u{e}"
        );
        assert_eq!(printable("a\n\tb\r\u{1b}[2J"), "a\n\tb\\r\\u{1b}[2J");
        // Quotes and backslashes are text, not escapes.
        assert_eq!(one_line(r#"say "\n""#), r#"say "\n""#);
    }
}
