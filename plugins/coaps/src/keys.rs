//! PSKs from the config, the environment or files: read, checked, and never panicking on what a
//! person typed. I/O: reads the files named in the config.

use crate::config::{IngressConfig, PskEntry, UplinkConfig};
use gateway_dtls::{checked_key, psk_file_entries, text_key, valid_identity, Psk, MIN_KEY};
use gateway_sdk::{InitContext, PluginError};
use std::collections::HashMap;

fn config(ctx: &InitContext, msg: String) -> PluginError {
    PluginError::config(format!("[{}] {msg}", ctx.info().table))
}

/// A key in hex, checked ([`checked_key`]); `what` names where it came from, for errors.
fn key(ctx: &InitContext, what: &str, hex: &str) -> Result<Vec<u8>, PluginError> {
    checked_key(hex).map_err(|e| config(ctx, format!("{what}: {e}")))
}

/// Warns once about the `text` keys ([`text_key`]), naming the first few.
fn warn_of_text_keys(ctx: &InitContext, text: &[String]) {
    if text.is_empty() {
        return;
    }
    let mut named = text.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    if text.len() > 3 {
        named.push_str(&format!(" and {} more", text.len() - 3));
    }
    gateway_sdk::tracing::warn!(
        "[{}] {named}: the key's bytes are all printable text (a passphrase in hex?): a text key is as strong as the text is hard to guess, not as long as it is, and one recorded handshake lets anyone try guesses offline; use random bytes (`openssl rand -hex 32`)",
        ctx.info().table
    );
}

/// `id` checked as an identity; `shown` is how the error names it (a `psk_file` line's
/// identity is not shown: it may hold key bytes).
fn identity(ctx: &InitContext, what: &str, id: &str, shown: &str) -> Result<(), PluginError> {
    if valid_identity(id) {
        Ok(())
    } else {
        Err(config(
            ctx,
            format!(
                "{what}: {shown} a usable identity (1 to 254 bytes, no control, text-reordering or invisible characters, no spaces at either end)"
            ),
        ))
    }
}

/// The uplink's PSK: `psk_identity` with one of `psk_key`, `psk_key_env`, `psk_key_file`.
pub fn uplink_psk(ctx: &InitContext, cfg: &UplinkConfig) -> Result<Option<Psk>, PluginError> {
    let hex = ctx.secret(
        "psk_key",
        cfg.psk_key.as_deref(),
        cfg.psk_key_env.as_deref(),
        cfg.psk_key_file.as_deref(),
    )?;
    match (&cfg.psk_identity, hex) {
        (Some(id), Some(hex)) => {
            identity(ctx, "psk_identity", id, &format!("{id:?} is not"))?;
            let key = key(ctx, "psk_key", &hex)?;
            if text_key(&key) {
                warn_of_text_keys(ctx, &["psk_key".to_owned()]);
            }
            Ok(Some(Psk {
                identity: id.clone(),
                key,
            }))
        }
        (None, None) => Ok(None),
        _ => Err(config(
            ctx,
            "psk_identity: psk_identity and a key (psk_key, psk_key_env or psk_key_file) go together"
                .into(),
        )),
    }
}

/// The ingress's PSKs: the `[[psk]]` entries and the lines of `psk_file`, by identity.
pub fn ingress_psks(
    ctx: &InitContext,
    cfg: &IngressConfig,
) -> Result<HashMap<String, Vec<u8>>, PluginError> {
    // Where each identity and each 16-byte run of a key (the least a key has) was first
    // given, by the entry's number in `all`. A key two identities share lets whoever
    // holds one of them handshake, post and read as the other: the server cannot tell them
    // apart. One that holds 16 bytes of another's in a row (a copy with a byte added, changed
    // at an end or shifted) leaves a holder of the one a few guesses from the other: a guard
    // against copy-and-edit keys, for random keys never meet by chance.
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut runs: HashMap<&[u8], usize> = HashMap::new();
    let mut text = Vec::new();
    let mut all: Vec<(String, &str, Vec<u8>)> = Vec::new();
    for (
        i,
        PskEntry {
            identity: id,
            key: k,
            key_env,
            key_file,
        },
    ) in cfg.psk.iter().enumerate()
    {
        let what = format!("psk[{i}] ({id:?})");
        // Per device, by the thousand in a fleet: not searched for in every log message (no
        // dependency logs a PSK, and the plugin never does).
        let hex = ctx
            .read_secret(
                &format!("psk[{i}].key"),
                k.as_deref(),
                key_env.as_deref(),
                key_file.as_deref(),
            )?
            .ok_or_else(|| config(ctx, format!("{what}: give key, key_env or key_file")))?;
        let k = key(ctx, &what, &hex)?;
        identity(ctx, &what, id, &format!("{id:?} is not"))?;
        all.push((what, id.as_str(), k));
    }
    let psk_file;
    if let Some(file) = &cfg.psk_file {
        let (path, text) = ctx.read_private_file("psk_file", file)?;
        psk_file = text;
        let at = |n: usize| format!("psk_file {}:{n}", path.display());
        let entries = psk_file_entries(&psk_file)
            .map_err(|n| config(ctx, format!("{}: expected IDENTITY:HEXKEY", at(n))))?;
        for (n, id, hex) in entries {
            // A line is named by its place alone, never by its identity: what comes before its
            // last colon may hold key bytes (a key written as aa:bb:..., OLDKEY:NEWKEY).
            let what = at(n);
            let k = key(ctx, &what, hex)?;
            // A field of 32 hex digits or more (ID:OLDKEY:NEWKEY) is a key, not a name: it
            // would show in the logs.
            if id
                .split(':')
                .any(|f| f.len() >= 2 * MIN_KEY && f.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(config(ctx, format!("{what}: the identity holds a key (a field of {} hex digits or more): write one key per line, IDENTITY:HEXKEY", 2 * MIN_KEY)));
            }
            identity(ctx, &what, id, "not")?;
            all.push((what, id, k));
        }
    }
    for (n, (what, id, k)) in all.iter().enumerate() {
        if *id == "anonymous" {
            return Err(config(
                ctx,
                format!("{what}: \"anonymous\" is reserved for peers without an identity"),
            ));
        }
        if let Some(&first) = ids.get(id) {
            return Err(config(
                ctx,
                format!("{what}: the identity of {} is given twice", all[first].0),
            ));
        }
        if let Some(&first) = k.windows(MIN_KEY).find_map(|run| runs.get(run)) {
            let how = match all[first].2 == *k {
                true => "the same key as",
                false => "a key that holds 16 bytes in a row of the key of",
            };
            return Err(config(
                ctx,
                format!("{what}: {how} {}; each identity needs a key of its own, or whoever holds the one can post and read as the other (`openssl rand -hex 32` makes one)", all[first].0),
            ));
        }
        ids.insert(id, n);
        for run in k.windows(MIN_KEY) {
            runs.entry(run).or_insert(n);
        }
        if text_key(k) {
            text.push(what.clone());
        }
    }
    warn_of_text_keys(ctx, &text);
    Ok(all
        .into_iter()
        .map(|(_, id, k)| (id.to_owned(), k))
        .collect())
}
