//! Pre-shared keys as people write them: checked before a handshake, so that a key anyone
//! could guess or find offline is refused, not used. `coaps-uplink`, `coaps-ingress` and
//! `gateway coap` take keys through these checks.

use crate::hex_key;

/// The most key bytes OpenSSL takes for a PSK.
pub const MAX_KEY: usize = 256;
/// Fewer key bytes than this are refused: 128 bits is the least a key may have. Anyone on
/// the path who sees one handshake (or who answers as the server once) can try every shorter
/// key offline against its Finished message, and then pose as either end.
pub const MIN_KEY: usize = 16;

/// `hex` as a key's bytes, if it is a key to use: hex digits, at most [`MAX_KEY`] bytes, at
/// least [`MIN_KEY`], not a fixed step or a short pattern over and over. `Err` says why, and
/// what to use instead.
pub fn checked_key(hex: &str) -> Result<Vec<u8>, String> {
    let key = hex_key(hex).ok_or("must be an even number of hex digits (0-9, a-f)")?;
    if key.len() > MAX_KEY {
        return Err(format!("{} bytes; a PSK has at most {MAX_KEY}", key.len()));
    }
    if guessable(&key) {
        return Err("the key's bytes run in a fixed step or repeat a short pattern (all the same, like the examples' 000102...0f or 00112233...ff, or deadbeefdeadbeef...): anyone can guess it; use random bytes (`openssl rand -hex 32`)".into());
    }
    if key.len() < MIN_KEY {
        return Err(format!("the key has {} bytes, and a PSK has at least {MIN_KEY} (a shorter one is found offline from one recorded handshake); use random bytes (`openssl rand -hex 32`)", key.len()));
    }
    Ok(key)
}

/// A key whose bytes are all printable text: a passphrase written in hex, as strong as the
/// text is hard to guess, not as long as it is. Taken (libcoap's examples and many devices use
/// text keys), but warned about. A key of 32 hex digits or more written as text (random hex
/// used as the bytes) has its 128 bits and is not.
pub fn text_key(key: &[u8]) -> bool {
    let random_hex = key.len() >= 32
        && key.iter().all(u8::is_ascii_hexdigit)
        && key
            .iter()
            .map(u8::to_ascii_lowercase)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            >= 10
        && !(2..=key.len() / 2).any(|p| repeats(key, p));
    key.iter().all(|b| (0x20..0x7f).contains(b)) && !random_hex
}

/// Whether `key` is one pattern of `period` bytes over and over.
fn repeats(key: &[u8], period: usize) -> bool {
    key.len() >= 2 * period && key.iter().zip(&key[period..]).all(|(a, b)| a == b)
}

/// A key whose bytes go up or down by one fixed step (zero included), or that repeats a
/// pattern of up to 4 bytes (`deadbeefdeadbeef...`): the examples of documentation and test
/// vectors, the first thing an attacker tries.
fn guessable(key: &[u8]) -> bool {
    let stepping = key.len() >= 2 && {
        let step = key[1].wrapping_sub(key[0]);
        key.windows(2).all(|w| w[1].wrapping_sub(w[0]) == step)
    };
    stepping || (2..=4).any(|p| repeats(key, p))
}

#[cfg(test)]
mod tests {
    use super::{guessable, text_key};

    #[test]
    fn keys_that_step_or_repeat_a_short_pattern_are_guessable() {
        assert!(guessable(&[7; 16]));
        assert!(guessable(&(0..16).collect::<Vec<u8>>()));
        assert!(guessable(&[0xde, 0xad, 0xbe, 0xef].repeat(4)));
        assert!(guessable(&[0x5f, 0x1c].repeat(8)));
        assert!(!guessable(&[
            0x5f, 0x1c, 0x9e, 0x07, 0xa2, 0xd8, 0x4b, 0x36, 0xe0, 0x91, 0x7c, 0x5a, 0x3b, 0xf2,
            0x4d, 0x68
        ]));
    }

    #[test]
    fn text_keys_are_told_from_random_ones() {
        assert!(text_key(b"correct horse battery staple"));
        assert!(text_key(b"secretPSK-long-enough"));
        // Random hex used as the key's bytes: 128 bits in 32 digits.
        assert!(!text_key(b"5f1c9e07a2d84b36e0917c5a3bf24d68"));
        // Hex digits that are no random hex.
        assert!(text_key(b"0123456789abcdef0123456789abcdef"));
        assert!(text_key(b"deadbeefdeadbeefdeadbeefdeadbeef"));
        assert!(text_key(b"00000000000000000000000000000001"));
        // Fewer hex digits than that are as weak as any short text.
        assert!(text_key(b"5f1c9e07a2d84b36"));
        assert!(!text_key(&[0x5f, 0x1c, 0x9e, 0x07, 0xa2, 0xd8, 0x4b, 0x36]));
    }
}
