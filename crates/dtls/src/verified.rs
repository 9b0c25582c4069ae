//! Client certificate chains a server context has verified, so that a device reconnecting with
//! the same chain is not verified again. No I/O.
//!
//! Why: with OpenSSL 3.0, `X509_verify_cert` (building the chain, checking the CA's signature
//! on the device's certificate, the CRL lookup) took about 13 % of the server's CPU per full
//! handshake, and a fleet's devices reconnect with the same certificate again and again.
//!
//! What is remembered is only the verdict on exact bytes: the SHA-256 of every certificate the
//! device sent, in order. Everything that proves who is at the other end is still checked at
//! every handshake by OpenSSL: the device's CertificateVerify (its signature with the key of
//! that certificate over this handshake), the Finished messages. A verdict is kept until the
//! first `notAfter` of the verified chain, the earliest `nextUpdate` of the context's CRLs and
//! an hour at most, whichever comes first; failed verifications are not kept. The trust store
//! and the CRLs never change under a context (a reload builds a new context, with a cache of
//! its own), so a verdict cannot outlive what it was made against.
//!
//! A client context with a CA file does the same for the server's chain, with the name the
//! server's certificate was checked against as part of the key (the client sets it per
//! connection: see [`expected_name`]); a connection that did not say which name it checks is
//! verified by OpenSSL every time.

use foreign_types::{ForeignType, ForeignTypeRef};
use openssl::{
    asn1::{Asn1Time, Asn1TimeRef},
    ssl::SslContextBuilder,
    stack::{Stack, StackRef},
    x509::{CrlStatus, X509Crl, X509Ref, X509StoreContext, X509StoreContextRef, X509},
};
use openssl_sys::{stack_st_X509, SSL_CTX, X509 as RAW_X509, X509_STORE_CTX};
use ring::digest;
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{SystemTime, UNIX_EPOCH},
};

extern "C" {
    fn SSL_CTX_set_cert_verify_callback(
        ctx: *mut SSL_CTX,
        cb: Option<unsafe extern "C" fn(*mut X509_STORE_CTX, *mut libc::c_void) -> libc::c_int>,
        arg: *mut libc::c_void,
    );
    fn X509_STORE_CTX_get0_cert(ctx: *const X509_STORE_CTX) -> *mut RAW_X509;
    fn X509_STORE_CTX_get0_untrusted(ctx: *const X509_STORE_CTX) -> *mut stack_st_X509;
    fn X509_STORE_CTX_set0_verified_chain(ctx: *mut X509_STORE_CTX, chain: *mut stack_st_X509);
}

/// The longest a verdict is kept, whatever the certificates' dates.
const MAX_AGE_S: i64 = 3600;
/// Verdicts kept at most; past it, expired ones go, then all (a fleet of 20,000 devices fits
/// three times over, at about 100 bytes each).
const LIMIT: usize = 65_536;

/// The chains verified under one context (a server's, or a client's with a CA file).
pub(crate) struct Verified {
    /// By the SHA-256 of the chain the device sent.
    verdicts: Mutex<HashMap<[u8; 32], Verdict>>,
    /// The earliest `nextUpdate` of the context's CRLs (Unix seconds), if any.
    crls_until: Option<i64>,
    /// The context's CRLs, for the CA certificates of a chain (see [`ca_revoked`]).
    crls: Vec<X509Crl>,
    /// A client context: the name each connection checks is part of the key.
    client: bool,
    /// Handshakes that reused a verdict; shared with a server's [`crate::server::Stats`].
    reused: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Verdict {
    /// Unix seconds: the verdict holds before this.
    until: i64,
    /// The verified chain after the device's own certificate (the intermediates and the trust
    /// anchor), given to OpenSSL as the verified chain when the verdict is reused.
    rest: Vec<X509>,
}

/// What a client connection checks the server's certificate against: the host name or IP
/// address, or "" when it does not check one. Part of a verdict's key on a client.
pub(crate) fn expected_name() -> openssl::ex_data::Index<openssl::ssl::Ssl, String> {
    static IDX: OnceLock<openssl::ex_data::Index<openssl::ssl::Ssl, String>> = OnceLock::new();
    *IDX.get_or_init(|| openssl::ssl::Ssl::new_ex_index().expect("ex index"))
}

fn index() -> openssl::ex_data::Index<openssl::ssl::SslContext, Verified> {
    static IDX: OnceLock<openssl::ex_data::Index<openssl::ssl::SslContext, Verified>> =
        OnceLock::new();
    *IDX.get_or_init(|| openssl::ssl::SslContext::new_ex_index().expect("ex index"))
}

/// Verify the peers' chains through a cache of verdicts from now on; `crls` are the CRLs the
/// context checks; `client` for a client context, whose verdicts are also keyed by each
/// connection's [`expected_name`].
pub(crate) fn install(b: &mut SslContextBuilder, crls: Vec<X509Crl>, client: bool) {
    let mut v = Verified::new(crls_until(&crls), client);
    v.crls = crls;
    b.set_ex_data(index(), v);
    // SAFETY: a valid SSL_CTX; the callback finds its cache through the SSL it verifies for.
    unsafe { SSL_CTX_set_cert_verify_callback(b.as_ptr(), Some(verify), std::ptr::null_mut()) };
}

/// How many handshakes of `ctx` reused a verdict instead of verifying the chain again
/// (`None` for a context without the cache: a server's without a client CA, a client's
/// without a CA file).
pub fn chains_reused(ctx: &openssl::ssl::SslContextRef) -> Option<u64> {
    ctx.ex_data(index())
        .map(|v| v.reused.load(Ordering::Relaxed))
}

/// The counter behind [`chains_reused`], to be read where the context's other figures are.
pub(crate) fn reuse_counter(ctx: &openssl::ssl::SslContextRef) -> Option<Arc<AtomicU64>> {
    ctx.ex_data(index()).map(|v| v.reused.clone())
}

/// Unix seconds of an ASN.1 time.
pub(crate) fn unix(t: &Asn1TimeRef) -> Option<i64> {
    let d = Asn1Time::from_unix(0).ok()?.diff(t).ok()?;
    Some(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

/// The earliest `nextUpdate` (Unix seconds) of `crls`, if any has one.
fn crls_until(crls: &[X509Crl]) -> Option<i64> {
    crls.iter()
        .filter_map(|crl| crl.next_update().and_then(unix))
        .min()
}

/// Whether a CA certificate of the verified `chain` (leaf first) is revoked by one of `crls`
/// its issuer signed. OpenSSL's `X509_V_FLAG_CRL_CHECK` looks at the leaf alone, and
/// `CRL_CHECK_ALL` refuses every chain with a CA whose issuer has no CRL in the file: with
/// this, an intermediate CA revoked in its issuer's CRL lets no certificate it issued in (a
/// stolen sub-CA key mints any device name), and a file without such a CRL checks as before.
fn ca_revoked(chain: &StackRef<X509>, crls: &[X509Crl]) -> bool {
    if crls.is_empty() {
        return false;
    }
    let chain: Vec<&X509Ref> = chain.iter().collect();
    chain.windows(2).skip(1).any(|pair| {
        let (ca, issuer) = (pair[0], pair[1]);
        let Ok(key) = issuer.public_key() else {
            return false;
        };
        crls.iter()
            .filter(|crl| {
                crl.issuer_name().try_cmp(ca.issuer_name()).ok() == Some(std::cmp::Ordering::Equal)
            })
            .filter(|crl| crl.verify(&key).unwrap_or(false))
            .any(|crl| matches!(crl.get_by_serial(ca.serial_number()), CrlStatus::Revoked(_)))
    })
}

/// What the peer sent (its own certificate first), as the store context `raw` holds it.
///
/// # Safety
/// `raw` is a valid store context; the stack is borrowed for as long as it is.
unsafe fn sent<'a>(raw: *mut X509_STORE_CTX) -> Option<&'a StackRef<X509>> {
    // SAFETY: the caller's promise.
    let sent = unsafe { X509_STORE_CTX_get0_untrusted(raw) };
    // SAFETY: a non-null untrusted stack of the store context.
    (!sent.is_null()).then(|| unsafe { StackRef::<X509>::from_ptr(sent) })
}

/// Whether the peer sent no more certificates than the `chain` that was verified has, each of
/// them on it or another certificate of a CA on it ([`same_ca`]; the trust anchor may be sent
/// or not). A peer with a good certificate could otherwise pad
/// its Certificate message with others, up to [`crate::context`]'s limit of 16 KiB: OpenSSL
/// keeps every certificate sent, parsed, in the session and in the server's session cache,
/// for hours after the session ended. RFC 5246 §7.4.2 has each certificate certify the one
/// before it, so a peer that follows it sends nothing else.
fn only_the_path(sent: Option<&StackRef<X509>>, chain: &StackRef<X509>) -> bool {
    sent.is_none_or(|sent| {
        sent.len() <= chain.len() && sent.iter().all(|c| chain.iter().any(|v| same_ca(v, c)))
    })
}

/// Whether `sent` is `on_chain`, or another certificate of the same CA: the same subject and
/// key (a root cross-signed by an older one, which a peer sends during a CA's move while the
/// trust store holds the new root itself; a CA certificate issued again with its key).
fn same_ca(on_chain: &X509Ref, sent: &X509Ref) -> bool {
    on_chain == sent
        || (on_chain
            .subject_name()
            .try_cmp(sent.subject_name())
            .is_ok_and(|o| o == std::cmp::Ordering::Equal)
            && matches!(
                (on_chain.public_key(), sent.public_key()),
                (Ok(a), Ok(b)) if a.public_eq(&b)
            ))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The key of a chain: SHA-256 over the name checked, then each certificate's length and DER,
/// in the order sent.
fn key_of<'a>(name: &str, certs: impl Iterator<Item = &'a X509Ref>) -> Option<[u8; 32]> {
    let mut h = digest::Context::new(&digest::SHA256);
    h.update(&(name.len() as u64).to_be_bytes());
    h.update(name.as_bytes());
    for c in certs {
        let der = c.to_der().ok()?;
        h.update(&(der.len() as u64).to_be_bytes());
        h.update(&der);
    }
    h.finish().as_ref().try_into().ok()
}

impl Verified {
    fn new(crls_until: Option<i64>, client: bool) -> Verified {
        Verified {
            verdicts: Mutex::new(HashMap::new()),
            crls_until,
            crls: Vec::new(),
            client,
            reused: Arc::default(),
        }
    }

    /// The rest of the verified chain for `key`, if a verdict holds at `now`.
    fn lookup(&self, key: &[u8; 32], now: i64) -> Option<Vec<X509>> {
        let v = self.verdicts.lock().ok()?;
        let verdict = v.get(key).filter(|v| now < v.until)?;
        Some(verdict.rest.clone())
    }

    /// Keeps the verdict on `key` for `chain` (leaf first), verified at `now`.
    fn keep(&self, key: [u8; 32], chain: &StackRef<X509>, now: i64) {
        let mut until = now + MAX_AGE_S;
        for c in chain {
            match unix(c.not_after()) {
                Some(t) => until = until.min(t),
                None => return,
            }
        }
        if let Some(t) = self.crls_until {
            until = until.min(t);
        }
        if until <= now {
            return;
        }
        let rest = chain.iter().skip(1).map(X509Ref::to_owned).collect();
        let Ok(mut v) = self.verdicts.lock() else {
            return;
        };
        if v.len() >= LIMIT {
            v.retain(|_, d| now < d.until);
            if v.len() >= LIMIT {
                v.clear();
            }
        }
        v.insert(key, Verdict { until, rest });
    }

    /// OpenSSL's `X509_verify_cert` on `ctx`, then the chain's CA certificates against the
    /// context's CRLs ([`ca_revoked`]), then what the peer sent against the chain
    /// ([`only_the_path`]).
    fn verify_chain(&self, ctx: &mut X509StoreContextRef) -> libc::c_int {
        // SAFETY: the store context OpenSSL set up for this verification.
        let ok = unsafe { openssl_sys::X509_verify_cert(ctx.as_ptr()) };
        if ok != 1 {
            return ok;
        }
        let refused = match ctx.chain() {
            Some(c) if ca_revoked(c, &self.crls) => openssl_sys::X509_V_ERR_CERT_REVOKED,
            // SAFETY: the untrusted certificates belong to the store context for the call.
            Some(c) if !only_the_path(unsafe { sent(ctx.as_ptr()) }, c) => {
                openssl_sys::X509_V_ERR_CERT_CHAIN_TOO_LONG
            }
            _ => return ok,
        };
        // SAFETY: as above.
        unsafe { openssl_sys::X509_STORE_CTX_set_error(ctx.as_ptr(), refused) };
        0
    }

    /// What the verification of `ctx` decides: a verdict kept for its exact chain (and, on a
    /// client, the `name` checked), or OpenSSL's `X509_verify_cert`, kept when it succeeds.
    fn decide(&self, ctx: &mut X509StoreContextRef, name: Option<&str>) -> libc::c_int {
        let name = match (self.client, name) {
            (false, _) => "",
            (true, Some(name)) => name,
            (true, None) => return self.verify_chain(ctx),
        };
        let raw = ctx.as_ptr();
        // SAFETY: the certificate and the untrusted chain (what the peer sent, its own
        // certificate first) belong to the store context for the whole call.
        let (leaf, sent) = unsafe {
            let leaf = X509_STORE_CTX_get0_cert(raw);
            (
                (!leaf.is_null()).then(|| X509Ref::from_ptr(leaf)),
                sent(raw),
            )
        };
        let now = unix_now();
        // What the peer sent starts with its own certificate (libssl's ssl_verify_cert_chain):
        // the leaf is encoded and hashed once.
        let key = leaf.and_then(|leaf| {
            let rest = sent.into_iter().flatten();
            let rest = rest.filter(|c| c.as_ptr() != leaf.as_ptr());
            key_of(name, std::iter::once(leaf).chain(rest))
        });
        let remembered = leaf.zip(key).and_then(|(leaf, key)| {
            let rest = self.lookup(&key, now)?;
            let mut chain = Stack::new().ok()?;
            chain.push(leaf.to_owned()).ok()?;
            for c in rest {
                chain.push(c).ok()?;
            }
            Some(chain)
        });
        if let Some(chain) = remembered {
            // SAFETY: the store context takes the stack (it frees its old chain).
            unsafe {
                X509_STORE_CTX_set0_verified_chain(raw, chain.as_ptr());
                std::mem::forget(chain);
                openssl_sys::X509_STORE_CTX_set_error(raw, openssl_sys::X509_V_OK);
            }
            self.reused.fetch_add(1, Ordering::Relaxed);
            return 1;
        }
        let ok = self.verify_chain(ctx);
        if ok == 1 && ctx.error() == openssl::x509::X509VerifyResult::OK {
            if let (Some(key), Some(chain)) = (key, ctx.chain()) {
                self.keep(key, chain, now);
            }
        }
        ok
    }
}

/// OpenSSL's certificate verification callback (`SSL_CTX_set_cert_verify_callback`): returns
/// 1 for a chain to trust, 0 otherwise, with the store context's error set.
unsafe extern "C" fn verify(raw: *mut X509_STORE_CTX, _: *mut libc::c_void) -> libc::c_int {
    // Never unwind into OpenSSL: a panic refuses the chain.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: OpenSSL calls this with a valid store context for the call's duration.
        let ctx = unsafe { X509StoreContextRef::from_ptr_mut(raw) };
        let ssl = X509StoreContext::ssl_idx()
            .ok()
            .and_then(|i| ctx.ex_data(i))
            .map(|ssl| ssl.as_ptr());
        // SAFETY: the SSL, and its SSL_CTX, outlive the verification done for it.
        let ssl = ssl.map(|s| unsafe { openssl::ssl::SslRef::from_ptr(s) });
        let verified = ssl.and_then(|s| s.ssl_context().ex_data(index()));
        let name = ssl.and_then(|s| s.ex_data(expected_name()));
        match verified {
            Some(v) => v.decide(ctx, name.map(String::as_str)),
            // SAFETY: as above.
            None => unsafe { openssl_sys::X509_verify_cert(raw) },
        }
    }))
    .unwrap_or_else(|_| {
        // SAFETY: as above.
        unsafe { openssl_sys::X509_STORE_CTX_set_error(raw, openssl_sys::X509_V_ERR_UNSPECIFIED) };
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_pki::{issue, new_key, Kind};

    #[test]
    fn a_verdict_holds_until_the_first_expiry_of_its_chain_its_crls_or_an_hour() {
        let ca_key = new_key().unwrap();
        let ca = issue("CA", &ca_key, Kind::Ca, None, -1, 30).unwrap();
        let key = new_key().unwrap();
        let leaf = issue("dev-1", &key, Kind::Device, Some((&ca, &ca_key)), -1, 2).unwrap();
        let mut chain = Stack::new().unwrap();
        chain.push(leaf.clone()).unwrap();
        chain.push(ca.clone()).unwrap();
        let leaf_end = unix(leaf.not_after()).unwrap();
        let now = unix_now();
        let k = [1; 32];

        let v = Verified::new(None, false);
        v.keep(k, &chain, now);
        let rest = v.lookup(&k, now + MAX_AGE_S - 1).expect("kept for an hour");
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].to_der().unwrap(), ca.to_der().unwrap());
        assert!(v.lookup(&k, now + MAX_AGE_S).is_none(), "not past an hour");
        assert!(v.lookup(&[2; 32], now).is_none(), "only for its own chain");

        // Verified shortly before the device's certificate expires: not past its notAfter.
        v.keep(k, &chain, leaf_end - 10);
        assert!(v.lookup(&k, leaf_end - 1).is_some());
        assert!(v.lookup(&k, leaf_end).is_none());
        // A chain verified at or after its expiry is not kept at all.
        let late = Verified::new(None, false);
        late.keep(k, &chain, leaf_end);
        assert!(late.lookup(&k, leaf_end - 5).is_none());

        // A CRL due for renewal ends it too.
        let crl = Verified::new(Some(now + 100), false);
        crl.keep(k, &chain, now);
        assert!(crl.lookup(&k, now + 99).is_some());
        assert!(crl.lookup(&k, now + 100).is_none());
    }

    #[test]
    fn a_chain_is_known_by_every_byte_the_order_of_its_certificates_and_the_name_checked() {
        let ca_key = new_key().unwrap();
        let ca = issue("CA", &ca_key, Kind::Ca, None, -1, 30).unwrap();
        let key = new_key().unwrap();
        let a = issue("dev-1", &key, Kind::Device, Some((&ca, &ca_key)), -1, 2).unwrap();
        // The same name and key, issued again: another certificate.
        let b = issue("dev-1", &key, Kind::Device, Some((&ca, &ca_key)), -1, 2).unwrap();
        let of = |certs: &[&X509]| key_of("", certs.iter().map(|c| &***c)).unwrap();
        let named = |name: &str| key_of(name, [&*a].into_iter()).unwrap();
        assert_ne!(named("server-a"), named("server-b"));
        assert_ne!(named(""), named("server-a"));
        assert_eq!(of(&[&a]), of(&[&a]));
        assert_ne!(of(&[&a]), of(&[&b]));
        assert_ne!(of(&[&a, &ca]), of(&[&a]));
        assert_ne!(of(&[&a, &ca]), of(&[&ca, &a]));
    }
}
