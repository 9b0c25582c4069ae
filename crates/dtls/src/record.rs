//! DTLS 1.2 records of an established session with an AEAD suite (AES-GCM, RFC 5288;
//! ChaCha20-Poly1305, RFC 7905), protected here instead of by OpenSSL, at either end. No I/O.
//!
//! Why: after the handshake an OpenSSL `SSL` object keeps about 30 KB per association (for DTLS
//! it never frees its 22 KB handshake buffer, and the record buffers come back at every
//! datagram), and a fleet server holds tens of thousands of mostly idle associations; at the
//! client's end, OpenSSL's record path (its BIO, its cipher context set up again for every
//! record) cost about as much CPU per request as the client's CoAP. The handshake stays
//! OpenSSL's; once it is done, [`Established::take_over`] derives the record keys from the
//! session's master secret (RFC 5246 §6.3) and the `SSL` object is freed. What is left per
//! association is two keys (ring's AEAD, see [`Direction`]), the sequence numbers and the
//! replay window.
//!
//! The record header (RFC 6347 §4.1) is written and parsed here only. Rules kept:
//! - records that do not decrypt, of another epoch, or seen before (a 64-record sliding window,
//!   §4.1.2.6) are dropped without an answer, as §4.1.2.7 says;
//! - the last flight (ChangeCipherSpec, Finished: the server's after a full handshake, the
//!   client's after an abbreviated one) is kept until the peer shows that it has it (its first
//!   application record), and sent again when the peer repeats its Finished, as OpenSSL would
//!   (RFC 6347 §4.2.4);
//! - renegotiation is refused (ignored), as the contexts say;
//! - an alert ends the association.

use openssl::{hash::MessageDigest, nid::Nid, ssl::SslRef};
use ring::{
    aead::{self, LessSafeKey, UnboundKey},
    hmac,
};
use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// Record content types (RFC 5246 §6.2.1).
pub(crate) const ALERT: u8 = 21;
pub(crate) const HANDSHAKE: u8 = 22;
pub(crate) const APPLICATION_DATA: u8 = 23;

/// DTLS 1.2 on the wire.
const VERSION: [u8; 2] = [0xfe, 0xfd];
/// Type, version, epoch, sequence number, length.
pub(crate) const HEADER_LEN: usize = 13;
const TAG_LEN: usize = 16;
/// The largest plaintext of a record (RFC 5246 §6.2.1).
const MAX_PLAINTEXT: usize = 1 << 14;
/// How often the last flight may go out again for a client that repeats its Finished.
const RESEND_GAP: Duration = Duration::from_millis(250);

/// One record's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub content_type: u8,
    /// The record's protocol version, as it came: a record we open must say DTLS 1.2, since
    /// the additional data it is authenticated with says so.
    pub version: [u8; 2],
    pub epoch: u16,
    /// 48 bits.
    pub seq: u64,
}

impl Header {
    /// Epoch and sequence number as one 64-bit number, as the nonce and the AAD use them.
    fn epoch_seq(&self) -> [u8; 8] {
        ((u64::from(self.epoch) << 48) | self.seq).to_be_bytes()
    }

    fn write(&self, len: usize, out: &mut Vec<u8>) {
        out.push(self.content_type);
        out.extend_from_slice(&self.version);
        out.extend_from_slice(&self.epoch_seq());
        out.extend_from_slice(&(len as u16).to_be_bytes());
    }
}

/// The records of a datagram, each with its fragment; stops at the first one that does not
/// fit (the rest of the datagram is dropped, RFC 6347 §4.1.2.7).
pub(crate) fn records(datagram: &[u8]) -> impl Iterator<Item = (Header, &[u8])> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.len() < HEADER_LEN {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        let fragment = rest.get(HEADER_LEN..HEADER_LEN + len)?;
        let mut es = [0u8; 8];
        es.copy_from_slice(&rest[3..11]);
        let es = u64::from_be_bytes(es);
        let h = Header {
            content_type: rest[0],
            version: [rest[1], rest[2]],
            epoch: (es >> 48) as u16,
            seq: es & ((1 << 48) - 1),
        };
        rest = &rest[HEADER_LEN + len..];
        Some((h, fragment))
    })
}

/// The AEAD of a suite, with what its records carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aead {
    Aes128Gcm,
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl Aead {
    fn of(nid: Nid) -> Option<Aead> {
        match nid {
            Nid::AES_128_GCM => Some(Aead::Aes128Gcm),
            Nid::AES_256_GCM => Some(Aead::Aes256Gcm),
            Nid::CHACHA20_POLY1305 => Some(Aead::ChaCha20Poly1305),
            _ => None,
        }
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Aead::Aes128Gcm => &aead::AES_128_GCM,
            Aead::Aes256Gcm => &aead::AES_256_GCM,
            Aead::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    fn key_len(self) -> usize {
        match self {
            Aead::Aes128Gcm => 16,
            _ => 32,
        }
    }

    /// The fixed part of the nonce from the key block: GCM's 4-byte salt (RFC 5288 §3),
    /// ChaCha20's 12-byte IV (RFC 7905 §2).
    fn fixed_iv_len(self) -> usize {
        match self {
            Aead::ChaCha20Poly1305 => 12,
            _ => 4,
        }
    }

    /// The nonce part each record carries: GCM's 8 bytes (we send the epoch and sequence
    /// number, which are unique per key), none for ChaCha20.
    fn explicit_len(self) -> usize {
        match self {
            Aead::ChaCha20Poly1305 => 0,
            _ => 8,
        }
    }

    fn nonce(self, fixed: &[u8], explicit: &[u8], epoch_seq: [u8; 8]) -> [u8; 12] {
        let mut n = [0u8; 12];
        match self {
            Aead::ChaCha20Poly1305 => {
                n.copy_from_slice(fixed);
                for (b, s) in n[4..].iter_mut().zip(epoch_seq) {
                    *b ^= s;
                }
            }
            _ => {
                n[..4].copy_from_slice(&fixed[..4]);
                n[4..].copy_from_slice(explicit);
            }
        }
        n
    }
}

/// TLS 1.2's PRF (RFC 5246 §5): P_hash of `secret` over `label` and `seed`, into `out`.
///
/// ring's HMAC, not OpenSSL's: with OpenSSL 3.0 each HMAC made a key object and a signer
/// through the provider lookups, and the five of one key expansion showed at about 2 % of a
/// fleet server's CPU per full handshake.
fn prf(md: hmac::Algorithm, secret: &[u8], label: &[u8], seed: &[&[u8]], out: &mut [u8]) {
    let key = hmac::Key::new(md, secret);
    // HMAC(secret, prefix + label + seed).
    let hmac = |prefix: &[u8]| {
        let mut c = hmac::Context::with_key(&key);
        c.update(prefix);
        c.update(label);
        seed.iter().for_each(|s| c.update(s));
        c.sign()
    };
    let mut a = hmac(&[]);
    let mut filled = 0;
    while filled < out.len() {
        let block = hmac(a.as_ref());
        let n = block.as_ref().len().min(out.len() - filled);
        out[filled..filled + n].copy_from_slice(&block.as_ref()[..n]);
        filled += n;
        a = hmac::sign(&key, a.as_ref());
    }
}

/// The PRF's HMAC for a suite's handshake digest (SHA-256 or SHA-384 for the AEAD suites).
fn prf_hmac(md: MessageDigest) -> Option<hmac::Algorithm> {
    match md.type_() {
        Nid::SHA256 => Some(hmac::HMAC_SHA256),
        Nid::SHA384 => Some(hmac::HMAC_SHA384),
        _ => None,
    }
}

/// One direction's protection: the key (scheduled once) and the fixed nonce part.
///
/// The record's AEAD is ring's rather than OpenSSL's: with OpenSSL 3 every record cost five
/// EVP calls (IV, AAD, data, final, tag), each going through the provider's parameter lookup,
/// about 0.8 µs per small record sealed and opened against ring's 0.3 µs, and its contexts
/// are larger. The handshake, and the key derivation from its master secret, stay OpenSSL's.
struct Direction {
    key: LessSafeKey,
    fixed: [u8; 12],
}

impl Direction {
    /// `None` if `key` is not of the suite's length (the caller keeps OpenSSL then).
    fn new(aead: Aead, key: &[u8], fixed: &[u8]) -> Option<Direction> {
        let key = UnboundKey::new(aead.algorithm(), key).ok()?;
        let mut f = [0u8; 12];
        f[..fixed.len()].copy_from_slice(fixed);
        Some(Direction {
            key: LessSafeKey::new(key),
            fixed: f,
        })
    }
}

/// The sliding window of RFC 6347 §4.1.2.6: the highest sequence number accepted and which of
/// the 63 below it were.
#[derive(Debug, Default, Clone, Copy)]
struct ReplayWindow {
    top: Option<u64>,
    bits: u64,
}

impl ReplayWindow {
    /// Whether `seq` is new and not too old (checked before decrypting).
    fn fresh(&self, seq: u64) -> bool {
        match self.top {
            None => true,
            Some(top) if seq > top => true,
            Some(top) => top - seq < 64 && self.bits & (1 << (top - seq)) == 0,
        }
    }

    /// Marks `seq` seen (after the record authenticated).
    fn mark(&mut self, seq: u64) {
        match self.top {
            Some(top) if seq <= top => self.bits |= 1 << (top - seq),
            Some(top) => {
                let shift = seq - top;
                self.bits = if shift >= 64 { 0 } else { self.bits << shift };
                self.bits |= 1;
                self.top = Some(seq);
            }
            None => {
                self.bits = 1;
                self.top = Some(seq);
            }
        }
    }
}

/// What a datagram brought.
#[derive(Debug, Default)]
pub(crate) struct Opened {
    /// Application data, one entry per record.
    pub data: Vec<Vec<u8>>,
    /// The peer sent an alert: the association is over.
    pub alert: bool,
    /// That alert was a close_notify (RFC 5246 §7.2.1): it is answered with one.
    pub close_notify: bool,
    /// That alert was a fatal one: its description (e.g. 45, certificate_expired).
    pub fatal: Option<u8>,
    /// At least one record authenticated: the peer, not someone sending from its address,
    /// was heard.
    pub authentic: bool,
}

/// An established association's record protection after OpenSSL handed it over.
pub(crate) struct Established {
    aead: Aead,
    epoch: u16,
    read: Direction,
    write: Direction,
    write_seq: u64,
    window: ReplayWindow,
    /// Our last handshake flight, until the peer shows it has it (its first application
    /// record).
    last_flight: Option<Vec<Vec<u8>>>,
    last_resend: Option<Instant>,
    /// Datagrams to send.
    pub outbox: VecDeque<Vec<u8>>,
}

impl Established {
    /// Takes over a session OpenSSL has just established (the client's end if `is_client`),
    /// if its suite is one of ours: derives the keys from `ssl`'s master secret and randoms.
    /// `next_write_seq` is the next sequence number of the current epoch (OpenSSL's last
    /// record +1), `outbox` what OpenSSL queued at completion and has not gone out yet: the
    /// final flight (the server's after a full handshake, the client's after an abbreviated
    /// one), also kept to be sent again if the peer repeats its Finished. `None` for a suite
    /// we do not protect ourselves (the caller keeps OpenSSL then, and its outbox).
    ///
    /// `already_read` are the records of the new epoch that OpenSSL was given (the peer's Finished,
    /// and whatever came with it or was forged in its name): those that open with the new
    /// keys go into the replay window, so that a copy of the peer's Finished, or of
    /// application data OpenSSL read, is not taken again.
    pub fn take_over(
        ssl: &SslRef,
        is_client: bool,
        epoch: u16,
        next_write_seq: u64,
        outbox: &mut VecDeque<Vec<u8>>,
        already_read: &[(Header, Vec<u8>)],
    ) -> Option<Established> {
        let cipher = ssl.current_cipher()?;
        let aead = Aead::of(cipher.cipher_nid()?)?;
        let md = prf_hmac(cipher.handshake_digest()?)?;
        let session = ssl.session()?;
        let mut master = [0u8; 48];
        if session.master_key(&mut master) != master.len() {
            return None;
        }
        let (mut client_random, mut server_random) = ([0u8; 32], [0u8; 32]);
        if ssl.client_random(&mut client_random) != 32
            || ssl.server_random(&mut server_random) != 32
        {
            return None;
        }
        let (k, iv) = (aead.key_len(), aead.fixed_iv_len());
        let mut block = [0u8; 2 * 32 + 2 * 12];
        let block = &mut block[..2 * k + 2 * iv];
        // RFC 5246 §6.3: client key, server key, client IV, server IV (no MAC keys for AEAD).
        prf(
            md,
            &master,
            b"key expansion",
            &[&server_random, &client_random],
            block,
        );
        master.fill(0);
        let (client_key, rest) = block.split_at(k);
        let (server_key, rest) = rest.split_at(k);
        let (client_iv, server_iv) = rest.split_at(iv);
        let ((read_key, read_iv), (write_key, write_iv)) = match is_client {
            false => ((client_key, client_iv), (server_key, server_iv)),
            true => ((server_key, server_iv), (client_key, client_iv)),
        };
        let read = Direction::new(aead, read_key, read_iv)?;
        let write = Direction::new(aead, write_key, write_iv)?;
        block.fill(0);
        let mut est = Established {
            aead,
            epoch,
            read,
            write,
            write_seq: next_write_seq,
            window: ReplayWindow::default(),
            last_flight: (!outbox.is_empty()).then(|| outbox.iter().cloned().collect()),
            last_resend: None,
            outbox: std::mem::take(outbox),
        };
        let mut scratch = Vec::new();
        for (h, fragment) in already_read {
            if !est.may_take(h) {
                continue;
            }
            scratch.resize(fragment.len(), 0);
            if est.decrypt(h, fragment, &mut scratch).is_some() {
                est.window.mark(h.seq);
            }
        }
        Some(est)
    }

    /// Whether a record with header `h` is worth opening: of the current epoch, saying DTLS
    /// 1.2, and not seen before. Epoch 0 is the peer's flight again (its Finished, at this
    /// epoch, follows), or a new ClientHello, which the server routes before the session sees
    /// it. A record that says another version was changed on the way: the additional data it
    /// was sealed with says DTLS 1.2.
    fn may_take(&self, h: &Header) -> bool {
        h.epoch == self.epoch && h.version == VERSION && self.window.fresh(h.seq)
    }

    /// Protects `data` as one record of `content_type` and queues the datagram.
    pub fn seal(&mut self, content_type: u8, data: &[u8]) -> Result<(), String> {
        if data.len() > MAX_PLAINTEXT {
            return Err(format!(
                "a record of {} bytes is over the limit of {MAX_PLAINTEXT}",
                data.len()
            ));
        }
        if self.write_seq >= (1 << 48) - 1 {
            return Err("the record sequence numbers are used up".into());
        }
        let h = Header {
            content_type,
            version: VERSION,
            epoch: self.epoch,
            seq: self.write_seq,
        };
        self.write_seq += 1;
        let explicit = h.epoch_seq();
        let explicit = &explicit[..self.aead.explicit_len()];
        let len = explicit.len() + data.len() + TAG_LEN;
        let mut out = Vec::with_capacity(HEADER_LEN + len);
        h.write(len, &mut out);
        out.extend_from_slice(explicit);
        let nonce = self.aead.nonce(&self.write.fixed, explicit, h.epoch_seq());
        let aad = aad(&h, data.len());
        let body = out.len();
        out.extend_from_slice(data);
        let tag = self
            .write
            .key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                &mut out[body..],
            )
            .map_err(|_| "cannot encrypt a record".to_owned())?;
        out.extend_from_slice(tag.as_ref());
        self.outbox.push_back(out);
        Ok(())
    }

    /// Opens the records of a datagram from the peer.
    pub fn open(&mut self, now: Instant, datagram: &[u8], plaintext: &mut [u8]) -> Opened {
        let mut got = Opened::default();
        for (h, fragment) in records(datagram) {
            if !self.may_take(&h) {
                continue;
            }
            let Some(n) = self.decrypt(&h, fragment, plaintext) else {
                continue;
            };
            self.window.mark(h.seq);
            got.authentic = true;
            match h.content_type {
                APPLICATION_DATA => {
                    // The peer has our Finished: the flight is not needed again.
                    self.last_flight = None;
                    got.data.push(plaintext[..n].to_vec());
                }
                ALERT => {
                    got.alert = true;
                    // Warning level (1), close_notify (0): a fatal alert ends it, unanswered.
                    got.close_notify |= n == 2 && plaintext[..2] == [1, 0];
                    if n == 2 && plaintext[0] == 2 {
                        got.fatal = Some(plaintext[1]);
                    }
                    // The session ends here: what the datagram carries after the alert is
                    // not taken (RFC 5246 §7.2.1).
                    break;
                }
                HANDSHAKE => self.resend_last_flight(now),
                _ => {}
            }
        }
        got
    }

    /// The peer repeated its Finished: our last flight did not reach it.
    fn resend_last_flight(&mut self, now: Instant) {
        let Some(flight) = &self.last_flight else {
            return; // renegotiation, which is not offered
        };
        if self
            .last_resend
            .is_some_and(|t| now.saturating_duration_since(t) < RESEND_GAP)
        {
            return;
        }
        self.last_resend = Some(now);
        self.outbox.extend(flight.iter().cloned());
    }

    /// Decrypts one record into `plaintext`; its length, or `None` if it does not authenticate.
    fn decrypt(&mut self, h: &Header, fragment: &[u8], plaintext: &mut [u8]) -> Option<usize> {
        let explicit_len = self.aead.explicit_len();
        let len = fragment.len().checked_sub(explicit_len + TAG_LEN)?;
        if len > MAX_PLAINTEXT || len > plaintext.len() {
            return None;
        }
        let (explicit, rest) = fragment.split_at(explicit_len);
        let (cipher, tag) = rest.split_at(len);
        let nonce = self.aead.nonce(&self.read.fixed, explicit, h.epoch_seq());
        let aad = aad(h, len);
        let out = &mut plaintext[..len];
        out.copy_from_slice(cipher);
        let tag = aead::Tag::try_from(tag).ok()?;
        self.read
            .key
            .open_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                tag,
                out,
                0..,
            )
            .ok()
            .map(|_| len)
    }
}

/// An alert's description as OpenSSL words it (RFC 5246 §7.2, RFC 8446 §6), e.g. 45:
/// "certificate expired".
pub(crate) fn alert_name(description: u8) -> String {
    let name = match description {
        0 => "close notify",
        10 => "unexpected message",
        20 => "bad record mac",
        21 => "decryption failed",
        22 => "record overflow",
        40 => "handshake failure",
        42 => "bad certificate",
        43 => "unsupported certificate",
        44 => "certificate revoked",
        45 => "certificate expired",
        46 => "certificate unknown",
        47 => "illegal parameter",
        48 => "unknown ca",
        49 => "access denied",
        50 => "decode error",
        51 => "decrypt error",
        70 => "protocol version",
        71 => "insufficient security",
        80 => "internal error",
        90 => "user canceled",
        100 => "no renegotiation",
        110 => "unsupported extension",
        d => return format!("alert number {d}"),
    };
    name.to_owned()
}

/// The additional data of a record (RFC 5246 §6.2.3.3 with DTLS's epoch and sequence number).
fn aad(h: &Header, plaintext_len: usize) -> [u8; 13] {
    let mut a = [0u8; 13];
    a[..8].copy_from_slice(&h.epoch_seq());
    a[8] = h.content_type;
    a[9..11].copy_from_slice(&VERSION);
    a[11..].copy_from_slice(&(plaintext_len as u16).to_be_bytes());
    a
}

/// The highest epoch and, in it, the next sequence number of the records in `datagram`
/// (what OpenSSL wrote), folded into `next`.
pub(crate) fn note_written(datagram: &[u8], next: &mut (u16, u64)) {
    for (h, _) in records(datagram) {
        if h.epoch > next.0 {
            *next = (h.epoch, h.seq + 1);
        } else if h.epoch == next.0 {
            next.1 = next.1.max(h.seq + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn the_prf_gives_what_openssls_tls1_prf_gives() {
        // `openssl kdf -keylen 40 -kdfopt digest:SHA256 -kdfopt secret:secret
        //  -kdfopt seed:"key expansion" -kdfopt hexseed:0102 TLS1-PRF`
        // and the same with `digest:SHA384`, the PRF of the AES-256-GCM-SHA384 suites.
        for (md, expected) in [
            (
                MessageDigest::sha256(),
                "9ea7cc1330bfee334bc3d8514b2463f093b7fe7e1d3511dc72350b74837d1e4a95c0070baf3bbb53",
            ),
            (
                MessageDigest::sha384(),
                "fe510653580d4c2adf9c6738eca5279a80bca8978169a4918de43283ba9b07c45b023c71bd66bd38",
            ),
        ] {
            let mut out = [0u8; 40];
            let hmac = prf_hmac(md).expect("a PRF for SHA-256 and SHA-384");
            prf(hmac, b"secret", b"key expansion", &[&[1], &[2]], &mut out);
            assert_eq!(out.to_vec(), hex(expected), "{:?}", md.type_());
        }
        assert!(prf_hmac(MessageDigest::sha1()).is_none());
    }

    #[test]
    fn the_replay_window_takes_each_number_once_and_nothing_64_below_the_top() {
        let mut w = ReplayWindow::default();
        for s in [5, 3, 70, 69, 7] {
            assert!(w.fresh(s), "{s} is new");
            w.mark(s);
        }
        for s in [5, 70, 69, 7] {
            assert!(!w.fresh(s), "{s} again");
        }
        assert!(!w.fresh(6), "64 below the top of 70");
        assert!(w.fresh(8) && w.fresh(71) && w.fresh(1000));
        w.mark(1000);
        assert!(!w.fresh(70) && w.fresh(999));
    }

    #[test]
    fn records_are_split_and_a_short_one_ends_the_datagram() {
        let mut d = Vec::new();
        Header {
            content_type: APPLICATION_DATA,
            version: VERSION,
            epoch: 1,
            seq: 0x0102_0304_0506,
        }
        .write(2, &mut d);
        d.extend_from_slice(&[9, 9]);
        Header {
            content_type: ALERT,
            version: VERSION,
            epoch: 1,
            seq: 7,
        }
        .write(5, &mut d);
        d.extend_from_slice(&[1, 2]); // 3 bytes short
        let got: Vec<_> = records(&d).collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.seq, 0x0102_0304_0506);
        assert_eq!(got[0].0.epoch, 1);
        assert_eq!(got[0].1, &[9, 9]);
        let mut next = (0, 0);
        note_written(&d[..15], &mut next);
        assert_eq!(next, (1, 0x0102_0304_0507));
    }
}
