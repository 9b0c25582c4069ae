//! PSKs from the config, the environment or files: read, checked, and never panicking on what a
//! person typed. I/O: reads the files named in the config.

use crate::config::{hex_key, IngressConfig, PskEntry, UplinkConfig};
use gateway_dtls::{psk_file_entries, valid_identity, Psk};
use gateway_sdk::{InitContext, PluginError};
use std::collections::HashMap;

/// The most key bytes OpenSSL takes for a PSK.
const MAX_KEY: usize = 256;
/// Fewer key bytes than this are refused: 128 bits is the least a key may have. Anyone on
/// the path who sees one handshake (or who answers as the server once) can try every shorter
/// key offline against its Finished message, and then pose as either end.
const MIN_KEY: usize = 16;

fn config(ctx: &InitContext, msg: String) -> PluginError {
    PluginError::config(format!("[{}] {msg}", ctx.info().table))
}

/// A key in hex, checked; `what` names where it came from, for errors and warnings.
fn key(ctx: &InitContext, what: &str, hex: &str) -> Result<Vec<u8>, PluginError> {
    let key = hex_key(hex).ok_or_else(|| {
        config(
            ctx,
            format!("{what}: must be an even number of hex digits (0-9, a-f)"),
        )
    })?;
    if key.len() > MAX_KEY {
        return Err(config(
            ctx,
            format!("{what}: {} bytes; a PSK has at most {MAX_KEY}", key.len()),
        ));
    }
    if guessable(&key) {
        return Err(config(
            ctx,
            format!("{what}: the key's bytes run in a fixed step (all the same, or like the examples' 000102...0f or 00112233...ff): anyone can guess it; use random bytes (`openssl rand -hex 32`)"),
        ));
    }
    if key.len() < MIN_KEY {
        return Err(config(
            ctx,
            format!("{what}: the key has {} bytes, and a PSK has at least {MIN_KEY} (a shorter one is found offline from one recorded handshake); use random bytes (`openssl rand -hex 32`)", key.len()),
        ));
    }
    Ok(key)
}

/// A key whose bytes are all printable text: a passphrase written in hex, as strong as the
/// text is hard to guess, not as long as it is. Taken (libcoap's examples and many devices use
/// text keys), but warned about. A key of 32 hex digits or more written as text (random hex
/// used as the bytes) has its 128 bits and is not.
fn text_key(key: &[u8]) -> bool {
    key.iter().all(|b| (0x20..0x7f).contains(b))
        && !(key.len() >= 32 && key.iter().all(u8::is_ascii_hexdigit))
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

/// A key whose bytes go up or down by one fixed step (zero included): the examples of
/// documentation and test vectors, the first thing an attacker tries.
fn guessable(key: &[u8]) -> bool {
    key.len() >= 2 && {
        let step = key[1].wrapping_sub(key[0]);
        key.windows(2).all(|w| w[1].wrapping_sub(w[0]) == step)
    }
}

fn identity(ctx: &InitContext, what: &str, id: &str) -> Result<(), PluginError> {
    if valid_identity(id) {
        Ok(())
    } else {
        Err(config(
            ctx,
            format!(
                "{what}: {id:?} is not a usable identity (1 to 254 bytes, no control, text-reordering or invisible characters, no spaces at either end)"
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
            identity(ctx, "psk_identity", id)?;
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
    let mut keys = HashMap::new();
    // Where each key's first and last 16 bytes were first given. A key two identities share
    // lets whoever holds one of them handshake, post and read as the other: the server cannot
    // tell them apart. One that starts or ends as another does (a byte added or changed at the
    // other end) leaves a holder of the one a few guesses from the other.
    // By the key's part: the entry's name for messages, and its identity.
    let mut heads: HashMap<[u8; MIN_KEY], (String, String)> = HashMap::new();
    let mut tails: HashMap<[u8; MIN_KEY], (String, String)> = HashMap::new();
    let mut text = Vec::new();
    let mut add = |what: String, id: &str, k: Vec<u8>| {
        identity(ctx, &what, id)?;
        if id == "anonymous" {
            return Err(config(
                ctx,
                format!("{what}: \"anonymous\" is reserved for peers without an identity"),
            ));
        }
        if keys.contains_key(id) {
            return Err(config(ctx, format!("{what}: {id:?} is given twice")));
        }
        // `key` checked the length: at least MIN_KEY bytes.
        let head: [u8; MIN_KEY] = k[..MIN_KEY].try_into().expect("MIN_KEY bytes");
        let tail: [u8; MIN_KEY] = k[k.len() - MIN_KEY..].try_into().expect("MIN_KEY bytes");
        let shared = [(&heads, &head, "first"), (&tails, &tail, "last")]
            .into_iter()
            .find_map(|(given, part, end)| given.get(part).map(|first| (first, end)));
        if let Some((first, end)) = shared {
            let how = match keys[&first.1] == k {
                true => "the same key as".to_owned(),
                false => format!("a key whose {end} {MIN_KEY} bytes are those of the key of"),
            };
            return Err(config(
                ctx,
                format!("{what}: {how} {}; each identity needs a key of its own, or whoever holds the one can post and read as the other (`openssl rand -hex 32` makes one)", first.0),
            ));
        }
        if text_key(&k) {
            text.push(what.clone());
        }
        heads.insert(head, (what.clone(), id.to_owned()));
        tails.insert(tail, (what, id.to_owned()));
        keys.insert(id.to_owned(), k);
        Ok(())
    };
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
        add(what, id, k)?;
    }
    if let Some(file) = &cfg.psk_file {
        let (path, text) = ctx.read_private_file("psk_file", file)?;
        let at = |n: usize| format!("psk_file {}:{n}", path.display());
        let entries = psk_file_entries(&text)
            .map_err(|n| config(ctx, format!("{}: expected IDENTITY:HEXKEY", at(n))))?;
        for (n, id, hex) in entries {
            // The line alone while the key is read: what comes before a line's last colon may
            // hold key bytes (a key written as aa:bb:..., a colon after the key).
            let k = key(ctx, &at(n), hex)?;
            add(format!("{} ({id:?})", at(n)), id, k)?;
        }
    }
    warn_of_text_keys(ctx, &text);
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::text_key;

    #[test]
    fn text_keys_are_told_from_random_ones() {
        assert!(text_key(b"correct horse battery staple"));
        assert!(text_key(b"secretPSK-long-enough"));
        // Random hex used as the key's bytes: 128 bits in 32 digits.
        assert!(!text_key(b"5f1c9e07a2d84b36e0917c5a3bf24d68"));
        // Fewer hex digits than that are as weak as any short text.
        assert!(text_key(b"5f1c9e07a2d84b36"));
        assert!(!text_key(&[0x5f, 0x1c, 0x9e, 0x07, 0xa2, 0xd8, 0x4b, 0x36]));
    }
}
