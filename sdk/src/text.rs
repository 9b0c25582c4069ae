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

/// Secret values shorter than this many characters are replaced only as words of their own.
pub const WORD_ONLY_BELOW: usize = 8;

/// The forms in which a message may hold secret `value`: as it is; as `{:?}` writes it (a
/// `"` or `\` in a password comes out as `\"` or `\\` where a library shows its options with
/// Debug), and as `{:?}` writes that (options held in a struct that is Debug-printed in turn);
/// and percent-encoded, as a driver puts a password with `@` or `:` into the URL its error
/// quotes: every byte but RFC 3986's unreserved characters (upper- and lower-case hex digits),
/// or only those the `url` crate encodes in a URL's user information (it leaves
/// `!$%&'()*+,` as they are). None for a value of fewer than 4 bytes: too short to be a
/// secret, it would take words out of every message.
pub fn secret_forms(value: &str) -> Vec<String> {
    if value.len() < 4 {
        return Vec::new();
    }
    let debug = |v: &str| {
        let quoted = format!("{v:?}");
        quoted[1..quoted.len() - 1].to_owned()
    };
    let escaped = debug(value);
    let twice = debug(&escaped);
    let mut forms = vec![value.to_owned()];
    for form in [
        escaped,
        twice,
        percent_encoded(value, b"0123456789ABCDEF", b"-._~"),
        percent_encoded(value, b"0123456789abcdef", b"-._~"),
        percent_encoded(value, b"0123456789ABCDEF", b"-._~!$%&'()*+,"),
    ] {
        if !forms.contains(&form) {
            forms.push(form);
        }
    }
    forms
}

/// `value` with every byte but ASCII letters, digits and `kept` written `%XX` in `digits`.
fn percent_encoded(value: &str, digits: &[u8; 16], kept: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || kept.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(digits[usize::from(b >> 4)]));
            out.push(char::from(digits[usize::from(b & 15)]));
        }
    }
    out
}

/// `text` with `value` (a secret) written as `shown_as`. A short value, or a number, could be
/// part of any text: it is replaced only where it stands as a word of its own (a side of it
/// that is a letter, a digit or `_` may not touch another; a side that is punctuation may).
/// A longer one is a secret wherever it stands (`key_<secret>`, `%40<secret>`). After a match
/// that does not stand alone, the search goes on from its next character, so that an
/// overlapping one is not passed over. The host's redaction of `${...}` values and a plugin
/// library's of its secrets both use it.
pub fn replace_secret<'a>(text: &'a str, value: &str, shown_as: &str) -> Cow<'a, str> {
    if value.is_empty() || !text.contains(value) {
        return Cow::Borrowed(text);
    }
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let as_word = value.chars().count() < WORD_ONLY_BELOW
        || value.chars().all(|c| c.is_ascii_digit() || c == '.');
    let (starts_word, ends_word) = (
        as_word && word(value.chars().next()),
        as_word && word(value.chars().next_back()),
    );
    let mut out = String::with_capacity(text.len());
    let (mut from, mut search) = (0, 0);
    while let Some(found) = text[search..].find(value) {
        let at = search + found;
        let end = at + value.len();
        if (starts_word && word(text[..at].chars().next_back()))
            || (ends_word && word(text[end..].chars().next()))
        {
            search = at + text[at..].chars().next().map_or(1, char::len_utf8);
            continue;
        }
        out.push_str(&text[from..at]);
        out.push_str(shown_as);
        (from, search) = (end, end);
    }
    out.push_str(&text[from..]);
    Cow::Owned(out)
}

/// `text` with every character [`shown_escaped`] names (line breaks and tabs included)
/// escaped: for one line of a log or a terminal.
pub fn one_line(text: &str) -> Cow<'_, str> {
    escape(text, |_| false)
}

/// `text` for a terminal, its line breaks and tabs kept: for a body the user asked to see
/// (`\r`, which would return to the start of a line and overwrite it, is escaped).
pub fn printable(text: &str) -> Cow<'_, str> {
    escape(text, |c| c == '\n' || c == '\t')
}

/// Whether `c` is refused in names: a control character, one that breaks a line (U+2028,
/// U+2029), or one a screen shows as nothing ([`invisible`], which holds the characters that
/// reorder text): `pi-01\u{200b}` and `pi-\u{202e}10` show as names they are not. Not the
/// invisible characters ordinary text is written with ([`joins`]): the joiners of Persian and
/// the Indic scripts, an emoji's variation selector. Those are escaped where text is shown
/// ([`shown_escaped`]).
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') || (invisible(c) && !joins(c))
}

/// Whether `c` is one of the invisible characters that ordinary text is written with: U+200C
/// ZERO WIDTH NON-JOINER and U+200D ZERO WIDTH JOINER (Persian, the Indic scripts, emoji
/// sequences) and the variation selectors (U+FE00 to U+FE0F, U+E0100 to U+E01EF: `🌡️`).
pub fn joins(c: char) -> bool {
    matches!(c, '\u{200C}' | '\u{200D}' | '\u{FE00}'..='\u{FE0F}' | '\u{E0100}'..='\u{E01EF}')
}

/// Whether `c` is escaped where text is shown ([`one_line`], [`printable`]): what
/// [`is_unsafe`] refuses, and every other [`invisible`] character, so that `pi\u{200d}-01`
/// never shows as `pi-01`.
pub fn shown_escaped(c: char) -> bool {
    is_unsafe(c) || invisible(c)
}

/// Whether `c` is one of Unicode's default-ignorable code points (the derived property
/// Default_Ignorable_Code_Point of Unicode 15): characters a font shows as nothing, such as
/// U+00AD SOFT HYPHEN, U+200B ZERO WIDTH SPACE, U+2060 WORD JOINER, U+FEFF, the variation
/// selectors and the tags, and the bidirectional controls (U+061C, U+200E, U+200F, U+202A to
/// U+202E, U+2066 to U+2069).
pub fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}'..='\u{1160}' | '\u{17B4}'..='\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}' | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}

fn escape(text: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    let bad = |c: char| shown_escaped(c) && !keep(c);
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
        // The Arabic letter mark reorders as U+200F does.
        assert_eq!(one_line("pi-\u{61c}01"), "pi-\\u{61c}01");
        assert_eq!(printable("a\n\tb\r\u{1b}[2J"), "a\n\tb\\r\\u{1b}[2J");
        // Quotes and backslashes are text, not escapes.
        assert_eq!(one_line(r#"say "\n""#), r#"say "\n""#);
        // Found in a review: characters a screen shows as nothing made `pi\u{200b}-01` look
        // like `pi-01` in `gateway coap discover` and `gateway dead-letters show`.
        assert_eq!(
            one_line("pi\u{200b}-01\u{feff}\u{ad}\u{2060}\u{e0041}"),
            "pi\\u{200b}-01\\u{feff}\\u{ad}\\u{2060}\\u{e0041}"
        );
        assert!(crate::Label::check_name("pi\u{200b}-01").is_err());
        // Found in a review: joiners and variation selectors are ordinary text (a name
        // 0.1.2 took must still load), but are shown escaped.
        for name in ["می\u{200c}خواهم", "🌡\u{fe0f}", "👩\u{200d}🔬"] {
            assert!(crate::Label::check_name(name).is_ok(), "{name}");
        }
        assert_eq!(one_line("pi\u{200d}-01\u{fe0f}"), "pi\\u{200d}-01\\u{fe0f}");
        // Not in a device's name, which is its certificate's identity.
        assert!(crate::Label::check_device("pi\u{200d}01").is_err());
        assert!(crate::Label::check_device("pi-01").is_ok());
    }

    #[test]
    fn a_secret_is_known_escaped_escaped_twice_and_percent_encoded() {
        let forms = secret_forms("p@ss:w\"d/ü");
        for form in [
            "p@ss:w\"d/ü",
            "p@ss:w\\\"d/ü",
            "p@ss:w\\\\\\\"d/ü",
            "p%40ss%3Aw%22d%2F%C3%BC",
            "p%40ss%3aw%22d%2f%c3%bc",
        ] {
            assert!(forms.iter().any(|f| f == form), "{form} in {forms:?}");
        }
        // As the `url` crate writes a password into a URL's user information.
        let forms = secret_forms("p@ss!(1)");
        for form in ["p%40ss%21%281%29", "p%40ss!(1)"] {
            assert!(forms.iter().any(|f| f == form), "{form} in {forms:?}");
        }
        // A value that no encoding changes has one form.
        assert_eq!(secret_forms("Tk7secret"), ["Tk7secret"]);
        assert!(secret_forms("abc").is_empty());
    }
}
