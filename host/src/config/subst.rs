//! `${VAR}`, `${VAR:-default}` and `${file:PATH}` in the config's string values, resolved by
//! the host for every plugin, so that secrets and per-machine settings can come from the
//! environment (systemd's `Environment=`/`EnvironmentFile=`, a container's variables) or from
//! files (`LoadCredential=`, Kubernetes secrets) instead of being written into the file.
//!
//! - `${NAME}`: the environment variable NAME (letters, digits, `_`); unset is an error;
//! - `${NAME:-default}`: NAME, or `default` when NAME is unset or empty;
//! - `${file:PATH}`: the file's contents, less one trailing newline; a relative PATH is taken
//!   from the config file's directory;
//! - `$$` is a `$`; a `$` not followed by `{` or `$` stays as it is.
//!
//! Substitution happens once, on parsed values (a value can never add TOML syntax), and only
//! in strings. The values put in a source's or sink's table are remembered per instance so
//! that messages can show `${NAME}` instead of them, and for the whole process ([`redact_known`]), so that neither the
//! log (whoever wrote the line: the host, a plugin, an error a plugin returned at run time), nor
//! a dead-letter header, nor `gateway test-plugin`'s report ever shows them.

use std::{borrow::Cow, path::Path, sync::RwLock};

/// A value put into the config, and what to show instead of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    pub value: String,
    pub shown_as: String,
}

/// Substitutes every reference in `s`. `base` resolves relative `${file:...}` paths. Adds what
/// it put in to `secrets`, and to the process's list ([`redact_known`]).
pub fn substitute(s: &str, base: &Path, secrets: &mut Vec<Secret>) -> Result<String, String> {
    let mut put_in = Vec::new();
    let out = expand(s, base, &mut put_in)?;
    for secret in put_in {
        keep(secrets, secret);
    }
    Ok(out)
}

/// Substitutes every reference in a setting that holds no secret (a `[gateway]` key, such as
/// `data_dir = "${STATE_DIRECTORY}"`): messages show what it became.
pub fn substitute_setting(s: &str, base: &Path) -> Result<String, String> {
    expand(s, base, &mut Vec::new())
}

/// [`substitute`], pushing what it put in to `put_in`: each reference's value, and the whole
/// value shown as written.
fn expand(s: &str, base: &Path, put_in: &mut Vec<Secret>) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut substituted = false;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            // The value is not quoted in these errors: it may be a password that happens to
            // hold `${` (the error goes to the terminal and the journal).
            let byte = s.len() - rest.len() + at;
            let end = body.find('}').ok_or_else(|| {
                format!("`${{` at byte {byte} of the value without its closing `}}` (write $$ for a literal $)")
            })?;
            let reference = &body[..end];
            // `${A:-${B}}` ends at the first `}`: the default would be `${B` and the value
            // the text `${B}`, used as the password it was meant to fetch.
            if reference.contains("${") {
                return Err(format!(
                    "the `${{...}}` at byte {byte} of the value holds another: a default is plain text, and cannot hold `${{` or `}}`"
                ));
            }
            let value = resolve(reference, base).map_err(|e| match e {
                Resolve::NotAReference => format!(
                    "the `${{...}}` at byte {byte} of the value is not a reference: use ${{NAME}}, ${{NAME:-default}} or ${{file:PATH}} (write $$ for a literal $)"
                ),
                Resolve::Failed(e) => e,
            })?;
            // A default is in the file for anyone to read: kept out of messages, it would only
            // mangle them (`${DB_NAME:-gateway}` in every line saying "gateway").
            let (value, from_outside) = value;
            if from_outside && !value.is_empty() {
                substituted = true;
                put_in.push(Secret {
                    value: value.clone(),
                    shown_as: format!("${{{reference}}}"),
                });
            }
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    // The whole value too, shown as written: where a value joins two references, or a
    // reference and letters (`${USER}${PW}`), a message quoting it shows neither part as a
    // word of its own.
    if substituted {
        put_in.push(Secret {
            value: out.clone(),
            shown_as: s.to_owned(),
        });
    }
    Ok(out)
}

/// Adds `secret` to `secrets` and to the process's [`redact_known`] list, once.
fn keep(secrets: &mut Vec<Secret>, secret: Secret) {
    if secret.value == secret.shown_as || secrets.contains(&secret) {
        return;
    }
    let mut known = KNOWN.write().unwrap_or_else(|e| e.into_inner());
    for form in forms(std::slice::from_ref(&secret)) {
        if !known.contains(&form) {
            known.push(form);
        }
    }
    known.sort_by_key(|f| std::cmp::Reverse(f.0.len()));
    drop(known);
    secrets.push(secret);
}

/// Every value `${...}` has put into a config in this process, in each form a message may
/// quote it ([`forms`]), the longest first. A value taken out of the config by a reload stays:
/// an instance of the old config may still be logging.
static KNOWN: RwLock<Vec<(String, String)>> = RwLock::new(Vec::new());

/// Whether `text` (a JSON line) may quote a value [`redact_known`] would keep out: one appears
/// in it as it is, or one holds a character JSON escapes (so that it would not appear as it is).
pub fn may_quote_known(text: &str) -> bool {
    let known = KNOWN.read().unwrap_or_else(|e| e.into_inner());
    known.iter().any(|(form, _)| {
        text.contains(form.as_str())
            || form
                .chars()
                .any(|c| matches!(c, '"' | '\\') || c.is_control())
    })
}

/// `msg` with every value `${...}` has put into any config of this process shown as its
/// reference, as `redact` does for one instance's. Borrowed when there is none in it: it
/// runs on every line the log writes.
pub fn redact_known(msg: &str) -> Cow<'_, str> {
    let known = KNOWN.read().unwrap_or_else(|e| e.into_inner());
    replace_forms(msg, &known)
}

/// Why a reference gave no value.
enum Resolve {
    /// It is not one (its text is not repeated: it may be part of a secret).
    NotAReference,
    /// It is one, and this went wrong.
    Failed(String),
}

/// The value of `reference`, and whether it came from outside the file (not its default).
fn resolve(reference: &str, base: &Path) -> Result<(String, bool), Resolve> {
    let failed = Resolve::Failed;
    if let Some(path) = reference.strip_prefix("file:") {
        if path.is_empty() {
            return Err(failed(
                "`${file:}` needs a path, e.g. ${file:/etc/gateway/db-password}".into(),
            ));
        }
        let p = base.join(path);
        let text = read_small(&p).map_err(|e| failed(format!("`${{file:{path}}}`: {e}")))?;
        let text = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        return Ok((text.to_owned(), true));
    }
    let (name, default) = match reference.split_once(":-") {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Resolve::NotAReference);
    }
    match (std::env::var(name), default) {
        (Ok(v), Some(d)) if v.is_empty() => Ok((d.to_owned(), false)),
        (Ok(v), _) => Ok((v, true)),
        // Set, but not text: an error with a default too (the default is for a variable
        // that is not set, not for one that holds something else).
        (Err(std::env::VarError::NotUnicode(_)), _) => Err(failed(format!(
            "`${{{name}}}`: the environment variable {name} is not valid UTF-8"
        ))),
        (Err(_), Some(d)) => Ok((d.to_owned(), false)),
        (Err(std::env::VarError::NotPresent), None) => Err(failed(format!(
            "`${{{name}}}`: the environment variable {name} is not set (set it, or give a default: ${{{name}:-value}})"
        ))),
    }
}

/// The most a `${file:...}` may hold: secrets and settings are small, and a device file such
/// as /dev/zero must not take the memory.
const MAX_FILE: u64 = 64 * 1024;

/// A regular file of at most [`MAX_FILE`] bytes that others cannot change, as text; or what
/// is wrong, naming the file.
fn read_small(p: &Path) -> Result<String, String> {
    use std::io::Read;
    let cannot = |e: &dyn std::fmt::Display| format!("cannot read {}: {e}", p.display());
    let (f, meta) = crate::trust::open_config(p, "the file")?;
    if meta.len() > MAX_FILE {
        return Err(cannot(&format!(
            "{} bytes; at most {MAX_FILE} are read",
            meta.len()
        )));
    }
    let mut text = String::new();
    f.take(MAX_FILE)
        .read_to_string(&mut text)
        .map_err(|e| cannot(&e))?;
    Ok(text)
}

/// Substitutes in every string of `v`, arrays and tables included (not in keys).
pub fn substitute_value(
    v: &mut toml::Value,
    base: &Path,
    secrets: &mut Vec<Secret>,
) -> Result<(), String> {
    match v {
        toml::Value::String(s) => *s = substitute(s, base, secrets)?,
        toml::Value::Array(a) => {
            for x in a {
                substitute_value(x, base, secrets)?;
            }
        }
        toml::Value::Table(t) => {
            for (_, x) in t.iter_mut() {
                substitute_value(x, base, secrets)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `msg` with every substituted value of 4 characters or more shown as its reference (shorter
/// ones, such as a port number, would match too much text and are not secrets), as it is and
/// as a message may quote it escaped (serde shows a string with `{:?}`: a `"` or `\` in a
/// password comes out as `\"` or `\\`).
///
/// A value shorter than [`gateway_sdk::text::WORD_ONLY_BELOW`] characters, or a number, that starts (ends) with
/// a letter, digit or `_` is replaced only where the text before (after) it is not one: a port
/// such as `5684` is replaced in `0.0.0.0:5684` but not inside `156842`, a name `gateway` in
/// `user gateway` but not in `gateway_host`. A longer value is replaced wherever it stands.
pub fn redact(msg: &str, secrets: &[Secret]) -> String {
    replace_forms(msg, &forms(secrets)).into_owned()
}

/// The forms of each secret a message may hold, with what to show instead, the longest first.
fn forms(secrets: &[Secret]) -> Vec<(String, String)> {
    let mut forms: Vec<(String, String)> = secrets
        .iter()
        .flat_map(|s| {
            gateway_sdk::text::secret_forms(&s.value)
                .into_iter()
                .map(|f| (f, s.shown_as.clone()))
        })
        .collect();
    forms.sort_by_key(|f| std::cmp::Reverse(f.0.len()));
    forms
}

fn replace_forms<'a>(msg: &'a str, forms: &[(String, String)]) -> Cow<'a, str> {
    let mut out = Cow::Borrowed(msg);
    for (value, shown_as) in forms {
        if let Cow::Owned(r) = gateway_sdk::text::replace_secret(&out, value, shown_as) {
            out = Cow::Owned(r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(s: &str) -> Result<String, String> {
        substitute(s, Path::new("/nonexistent"), &mut Vec::new())
    }

    #[test]
    fn references_are_replaced_and_dollars_escaped() {
        std::env::set_var("GW_SUBST_TEST", "pi-07");
        std::env::set_var("GW_SUBST_EMPTY", "");
        assert_eq!(sub("dev-${GW_SUBST_TEST}").unwrap(), "dev-pi-07");
        assert_eq!(
            sub("${GW_SUBST_UNSET_X:-x}${GW_SUBST_EMPTY:-y}").unwrap(),
            "xy"
        );
        assert_eq!(sub("$$5 and $HOME and a$").unwrap(), "$5 and $HOME and a$");
        assert_eq!(sub("$${GW_SUBST_TEST}").unwrap(), "${GW_SUBST_TEST}");
    }

    #[test]
    fn bad_references_say_what_to_write() {
        let unset = sub("${GW_SUBST_UNSET_Y}").unwrap_err();
        assert!(unset.contains("GW_SUBST_UNSET_Y is not set"), "{unset}");
        // A password that happens to hold `${` is not repeated in the error (it goes to the
        // terminal and the journal); the error says where and what to write.
        let open = sub("Xk9s3cr3t${q7").unwrap_err();
        assert!(
            open.contains("closing") && open.contains("byte 9"),
            "{open}"
        );
        let not = sub("Xk9s3cr3t${q7 ab}").unwrap_err();
        assert!(
            not.contains("not a reference") && not.contains("$$"),
            "{not}"
        );
        for e in [open, not] {
            assert!(!e.contains("s3cr3t") && !e.contains("q7"), "{e}");
        }
        let missing = sub("${file:missing}").unwrap_err();
        assert!(missing.contains("/nonexistent/missing"), "{missing}");
        let device = sub("${file:/dev/zero}").unwrap_err();
        assert!(device.contains("not a regular file"), "{device}");
        // A reference in a default: it was the literal text `${file:/etc/gw/pw}`, taken as
        // the password, without a word.
        let nested = sub("${GW_SUBST_UNSET_Z:-${file:/etc/gw/pw}}").unwrap_err();
        assert!(
            nested.contains("holds another") && nested.contains("byte 0"),
            "{nested}"
        );
        // A variable set to what is not text is an error with a default too.
        std::env::set_var(
            "GW_SUBST_BYTES",
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"\xff"),
        );
        let bytes = sub("${GW_SUBST_BYTES:-fallback}").unwrap_err();
        assert!(bytes.contains("not valid UTF-8"), "{bytes}");
    }

    #[test]
    fn files_lose_one_trailing_newline_and_values_are_redacted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "s3cret-pw\r\n").unwrap();
        let mut secrets = Vec::new();
        let v = substitute("${file:pw}", dir.path(), &mut secrets).unwrap();
        assert_eq!(v, "s3cret-pw");
        assert_eq!(
            redact("invalid value: string \"s3cret-pw\"", &secrets),
            "invalid value: string \"${file:pw}\""
        );
    }

    #[test]
    fn a_value_is_redacted_as_a_word_and_a_joined_value_as_a_whole() {
        std::env::set_var("GW_SUBST_PORT", "5684");
        std::env::set_var("GW_SUBST_USER", "gwuser");
        std::env::set_var("GW_SUBST_PW", "pw9876");
        let mut secrets = Vec::new();
        let base = Path::new("/nonexistent");
        substitute("${GW_SUBST_PORT}", base, &mut secrets).unwrap();
        let joined = substitute("${GW_SUBST_USER}${GW_SUBST_PW}", base, &mut secrets).unwrap();
        assert_eq!(joined, "gwuserpw9876");
        assert_eq!(
            redact("listening on 0.0.0.0:5684; 156842 readings", &secrets),
            "listening on 0.0.0.0:${GW_SUBST_PORT}; 156842 readings"
        );
        assert_eq!(
            redact("bad login gwuserpw9876.", &secrets),
            "bad login ${GW_SUBST_USER}${GW_SUBST_PW}."
        );
        // The process-wide list holds them too, for every line the log writes.
        assert_eq!(
            redact_known("user gwuser, port 5684"),
            "user ${GW_SUBST_USER}, port ${GW_SUBST_PORT}"
        );
        assert!(matches!(redact_known("nothing here"), Cow::Borrowed(_)));
        assert_eq!(redact_known("gwuser_id 5684x"), "gwuser_id 5684x");
        // A long value is a secret wherever it stands.
        std::env::set_var("GW_SUBST_LONG", "Lk9long-secret");
        substitute("${GW_SUBST_LONG}", base, &mut secrets).unwrap();
        assert_eq!(
            redact_known("key_Lk9long-secret %40Lk9long-secretx"),
            "key_${GW_SUBST_LONG} %40${GW_SUBST_LONG}x"
        );
        // A default is in the file: not kept out of messages.
        substitute("${GW_SUBST_UNSET_Z:-gateway}", base, &mut secrets).unwrap();
        assert_eq!(redact_known("gateway running"), "gateway running");
    }

    #[test]
    fn a_value_is_redacted_where_a_message_quotes_it_escaped() {
        let secrets = [Secret {
            value: "pa\"ss\\word".into(),
            shown_as: "${PW}".into(),
        }];
        // serde quotes a string with `{:?}`: `"pa\"ss\\word"`.
        let quoted = format!(
            "invalid type: string {:?}, expected a number",
            secrets[0].value
        );
        assert_eq!(
            redact(&quoted, &secrets),
            "invalid type: string \"${PW}\", expected a number"
        );
        assert_eq!(redact("raw pa\"ss\\word", &secrets), "raw ${PW}");
    }
}
