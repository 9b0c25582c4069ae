//! The OpenSSL contexts of the link. Settings are checked here, once: a context that would let
//! an unauthenticated peer in, or send data unencrypted, is refused with a message that names
//! the setting to change.

use crate::{certs, other, DtlsError};
use foreign_types::ForeignTypeRef;
use openssl::{
    ssl::{
        Ssl, SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslVerifyMode,
        SslVersion,
    },
    x509::verify::X509VerifyFlags,
};
use std::{collections::HashMap, path::PathBuf, sync::OnceLock};

/// A pre-shared key. Its Debug shows the identity, never the key (settings that hold one are
/// Debug-printed whole).
#[derive(Clone)]
pub struct Psk {
    /// The identity sent to the server.
    pub identity: String,
    /// The key bytes.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Psk")
            .field("identity", &self.identity)
            .field("key", &format_args!("<{} bytes>", self.key.len()))
            .finish()
    }
}

/// Parses a key written in hex (surrounding blanks allowed); `None` for anything but an even,
/// non-zero number of hex digits. Works on bytes: non-ASCII text is an error, not a panic.
pub fn hex_key(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().as_bytes();
    if !s.len().is_multiple_of(2) || s.is_empty() {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    s.chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// The entries of a PSK file, as `coaps-ingress`'s `psk_file` and `gateway-load --psk-file`
/// read it: `IDENTITY:HEXKEY` per line (split at the last colon); blank lines and lines
/// starting with `#` are skipped, and a byte-order mark (as some editors save) is not part of
/// the first identity. Gives each entry's line number (from 1), identity and hex key as
/// written, or the number of the first line without a colon.
pub fn psk_file_entries(text: &str) -> Result<Vec<(usize, &str, &str)>, usize> {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (id, hex) = line.rsplit_once(':').ok_or(n + 1)?;
        out.push((n + 1, id, hex));
    }
    Ok(out)
}

/// Client side settings.
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    /// CA file (PEM) the server's chain must lead to.
    pub ca_file: Option<PathBuf>,
    /// CRLs (PEM) of `ca_file`'s CA: a server certificate they revoke is refused (a server
    /// whose key was stolen, before its certificate expires).
    pub crl_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for mutual authentication.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// PSK instead of certificates.
    pub psk: Option<Psk>,
    /// OpenSSL cipher list; empty for the default.
    pub ciphers: String,
    /// Path MTU for DTLS records.
    pub mtu: u32,
}

/// Server side settings. Their Debug shows the PSK identities, never the keys.
#[derive(Clone, Default)]
pub struct ServerSettings {
    /// Certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM).
    pub key_file: Option<PathBuf>,
    /// CA file (PEM) that client certificates must lead to.
    pub client_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate from `client_ca_file`.
    pub require_client_cert: bool,
    /// CRLs (PEM) of `client_ca_file`: a client certificate they revoke is refused.
    pub client_crl_file: Option<PathBuf>,
    /// PSK identities and keys accepted.
    pub psk: HashMap<String, Vec<u8>>,
    /// OpenSSL cipher list; empty for the default.
    pub ciphers: String,
    /// Path MTU for DTLS records.
    pub mtu: u32,
}

impl std::fmt::Debug for ServerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut identities: Vec<&String> = self.psk.keys().collect();
        identities.sort();
        f.debug_struct("ServerSettings")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("client_ca_file", &self.client_ca_file)
            .field("require_client_cert", &self.require_client_cert)
            .field("client_crl_file", &self.client_crl_file)
            .field("psk_identities", &identities)
            .field("ciphers", &self.ciphers)
            .field("mtu", &self.mtu)
            .finish()
    }
}

/// The default: ECDHE with AES-GCM (what the original deployment used) and ChaCha20-Poly1305
/// (fast on a Pi 3, which has no AES instructions); last, RFC 7252's mandatory suite for
/// certificates, `ECDHE-ECDSA-AES128-CCM8` (RFC 7925's too), which constrained devices
/// (tinydtls: RIOT, Contiki-NG, libcoap built with it) may be limited to.
pub const DEFAULT_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-CCM8";
/// The default with a PSK: ECDHE-PSK, so that a key that leaks later does not open what was
/// recorded before (forward secrecy). OpenSSL has no ECDHE-PSK suite with AES-GCM; ChaCha20 is
/// the fast one on a Pi without AES instructions. The plain-PSK suites, RFC 7925's
/// `PSK-AES128-CCM8` among them, are there by configuration.
pub const DEFAULT_PSK_CIPHERS: &str = "ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES128-CBC-SHA256";

/// The default path MTU: IPv6's minimum of 1280 less the IP and UDP headers.
pub const DEFAULT_MTU: u32 = 1232;

pub(crate) fn cookie_index() -> openssl::ex_data::Index<Ssl, Vec<u8>> {
    static IDX: OnceLock<openssl::ex_data::Index<Ssl, Vec<u8>>> = OnceLock::new();
    *IDX.get_or_init(|| Ssl::new_ex_index().expect("ex index"))
}

/// The PSK identity a client named that the server does not know, set on its connection (see
/// [`server_context`]), so that the server can say so in its own log.
pub(crate) fn unknown_psk_index() -> openssl::ex_data::Index<Ssl, String> {
    static IDX: OnceLock<openssl::ex_data::Index<Ssl, String>> = OnceLock::new();
    *IDX.get_or_init(|| Ssl::new_ex_index().expect("ex index"))
}

fn cfg_err(what: &str, e: impl std::fmt::Display) -> DtlsError {
    DtlsError::Config(format!("{what}: {e}"))
}

/// OpenSSL's reasons without its codes, functions and source lines ("key values mismatch",
/// not "error:05800074:x509 certificate routines:X509_check_private_key:...:x509_cmp.c:403:").
fn reasons(e: &openssl::error::ErrorStack) -> String {
    let r: Vec<String> = e
        .errors()
        .iter()
        .map(|x| {
            x.reason()
                .map_or_else(|| x.code().to_string(), str::to_owned)
        })
        .collect();
    if r.is_empty() {
        "unknown OpenSSL error".to_owned()
    } else {
        r.join("; ")
    }
}

/// Settles the chain sent after our own certificate: the rest of its file (`chain`, leaf
/// first) if that holds more than the leaf, else the leaf's path through the CA file's `cas`
/// ([`certs::chain_to_send`]), once, instead of OpenSSL building it from the verify store at
/// every full handshake.
fn settle_chain(
    b: &mut SslContextBuilder,
    chain: &[openssl::x509::X509],
    cas: &[openssl::x509::X509],
) -> Result<(), DtlsError> {
    if let [leaf] = chain {
        for c in certs::chain_to_send(leaf, cas) {
            b.add_extra_chain_cert(c)
                .map_err(|e| cfg_err("the certificate chain", e))?;
        }
    }
    b.set_mode(SslMode::NO_AUTO_CHAIN);
    Ok(())
}

/// Loads a certificate chain and its private key (PEM), after [`certs::check_identity`] said
/// what is wrong with them in words (missing, not PEM, not a pair; dates outside the validity
/// period are a warning): each file is
/// read once, so what was checked is what is used, even if the file changes meanwhile. The
/// certificates of `cert`, leaf first.
fn load_identity(
    b: &mut SslContextBuilder,
    cert: &std::path::Path,
    key: &std::path::Path,
    role: &str,
) -> Result<Vec<openssl::x509::X509>, DtlsError> {
    let (chain, pkey) = certs::check_identity(cert, key, role)?;
    let at = |what: &str, path: &std::path::Path| format!("{what} {}", path.display());
    b.set_certificate(&chain[0])
        .map_err(|e| cfg_err(&at("cert_file", cert), reasons(&e)))?;
    for c in &chain[1..] {
        b.add_extra_chain_cert(c.clone())
            .map_err(|e| cfg_err(&at("cert_file", cert), reasons(&e)))?;
    }
    // check_identity compared this key with this leaf: OpenSSL's check_private_key would
    // compare them again.
    b.set_private_key(&pkey)
        .map_err(|e| cfg_err(&at("key_file", key), reasons(&e)))?;
    Ok(chain)
}

/// The largest certificate message a peer may send (OpenSSL's default is 100 KiB). A chain
/// of three RSA-4096 certificates is about 6 KiB; our ECDSA ones are a few hundred bytes
/// each. It also bounds what OpenSSL buffers for each handshake message that arrives out of
/// order (to about 16.7 KiB, a record's size, instead of 100 KiB each, up to a dozen of them
/// per handshake, for any peer that got a cookie), and the chain a cached session keeps.
const MAX_CERT_LIST: libc::c_long = 16 * 1024;

/// What every context of the link has: DTLS 1.2 at least, no renegotiation (a renegotiation
/// could change the peer's identity under a session), no compression, and at most
/// [`MAX_CERT_LIST`] bytes of certificates from the peer.
fn base_context() -> Result<SslContextBuilder, DtlsError> {
    let mut b = SslContextBuilder::new(SslMethod::dtls())
        .map_err(|e| cfg_err("cannot create a DTLS context", e))?;
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))
        .map_err(|e| cfg_err("DTLS 1.2 as the minimum", e))?;
    b.set_options(
        SslOptions::NO_QUERY_MTU | SslOptions::NO_COMPRESSION | SslOptions::NO_RENEGOTIATION,
    );
    // SAFETY: a valid SSL_CTX; SSL_CTX_set_max_cert_list is this ctrl (a macro in ssl.h).
    unsafe {
        openssl_sys::SSL_CTX_ctrl(
            b.as_ptr(),
            SSL_CTRL_SET_MAX_CERT_LIST,
            MAX_CERT_LIST,
            std::ptr::null_mut(),
        )
    };
    Ok(b)
}

/// `SSL_CTRL_SET_MAX_CERT_LIST` of ssl.h.
const SSL_CTRL_SET_MAX_CERT_LIST: libc::c_int = 51;

extern "C" {
    // Not exported by openssl-sys; part of libssl's public API.
    fn SSL_get_ciphers(s: *const openssl_sys::SSL) -> *mut libc::c_void;
    // Not exported by openssl-sys; part of libcrypto's public API.
    fn X509_STORE_add_crl(
        store: *mut openssl_sys::X509_STORE,
        crl: *mut openssl_sys::X509_CRL,
    ) -> libc::c_int;
}

/// The DTLS 1.2 suites of `ctx` whose OpenSSL description (`Kx=.. Au=.. Enc=..`) has a field
/// for which `pick` says yes.
fn suites_where(ctx: &SslContext, pick: impl Fn(&str) -> bool) -> Result<Vec<String>, DtlsError> {
    let ssl = Ssl::new(ctx).map_err(other)?;
    // SAFETY: SSL_get_ciphers returns the SSL's own stack (or NULL); it lives as long as `ssl`.
    let stack = unsafe { SSL_get_ciphers(ssl.as_ptr()) };
    if stack.is_null() {
        return Ok(Vec::new());
    }
    // SAFETY: a STACK_OF(SSL_CIPHER) owned by `ssl`, borrowed for this function only.
    let stack: &openssl::stack::StackRef<openssl::ssl::SslCipher> =
        unsafe { openssl::stack::StackRef::from_ptr(stack.cast()) };
    Ok(stack
        .iter()
        .filter(|c| c.version() != "TLSv1.3")
        .filter(|c| c.description().split_whitespace().any(&pick))
        .map(|c| c.name().to_owned())
        .collect())
}

/// The most bytes a DTLS 1.2 record adds to what it carries under any suite `ctx` may agree
/// on: the record header (13), and for an AEAD suite an explicit nonce and a tag (24 at most),
/// for a CBC one an IV, a MAC and up to a block of padding (16 + 20, 32 or 48 + 16). What fits
/// a datagram of the path's MTU is the MTU less this and the protocol's own headers.
pub fn record_overhead(ctx: &SslContext) -> usize {
    // Whether a suite of `ctx` has a field that `pick` takes (if the list cannot be read: as
    // if one had).
    let any = |pick: &dyn Fn(&str) -> bool| suites_where(ctx, pick).map_or(true, |s| !s.is_empty());
    let sizes = [("Mac=SHA1", 52), ("Mac=SHA256", 64), ("Mac=SHA384", 80)];
    let mut most = 24;
    for (mac, size) in sizes {
        if any(&|f| f == mac) {
            most = most.max(size);
        }
    }
    // A MAC not named above: as much as the largest.
    if any(&|f| f.starts_with("Mac=") && f != "Mac=AEAD" && !sizes.iter().any(|s| s.0 == f)) {
        most = most.max(80);
    }
    13 + most
}

/// Refuses a cipher list with suites that encrypt nothing or authenticate nobody (`eNULL`,
/// `aNULL`): either would hand the link to whoever sits on the path.
fn refuse_null_suites(ctx: &SslContext) -> Result<(), DtlsError> {
    let bad = suites_where(ctx, |f| f == "Enc=None" || f == "Au=None")?;
    if bad.is_empty() {
        Ok(())
    } else {
        Err(DtlsError::Config(format!(
            "the cipher list has suites without encryption or without authentication: {}; remove them from ciphers",
            bad.join(", ")
        )))
    }
}

/// The suites of `ctx`'s cipher list without forward secrecy (OpenSSL's `Kx=RSA`, `Kx=PSK`,
/// `Kx=RSAPSK`: no ephemeral key exchange): whoever gets the server's RSA key or the PSK later
/// opens what was recorded before. `PSK-AES128-CCM8`, RFC 7925's suite for PSK devices, is one.
/// For the plugins to warn about, at start and in `gateway check`.
pub fn without_forward_secrecy(ctx: &SslContext) -> Vec<String> {
    suites_where(ctx, |f| matches!(f, "Kx=RSA" | "Kx=PSK" | "Kx=RSAPSK")).unwrap_or_default()
}

/// Builds the client context. It always verifies the server: by its certificate chain (against
/// `ca_file`) or by the PSK, never neither. With a PSK and no `ca_file`, every suite of the
/// cipher list must be a PSK suite, or the context is refused. With `ca_file`, the server's
/// chain is checked against that CA alone: the system's trust store is not loaded (a publicly
/// trusted certificate for the server's name must not pass for the private CA's server, and the
/// store would cost about 0.9 MB of heap on the Pi). Without `ca_file` and without PSK, the
/// system's default trust store is used.
pub fn client_context(s: &ClientSettings) -> Result<SslContext, DtlsError> {
    let mut b = base_context()?;
    // Idle sessions give their record buffers back.
    b.set_mode(SslMode::RELEASE_BUFFERS);
    b.set_verify(SslVerifyMode::PEER);
    let ciphers = match (&s.psk, s.ciphers.is_empty()) {
        (_, false) => s.ciphers.clone(),
        (Some(_), true) => DEFAULT_PSK_CIPHERS.to_owned(),
        (None, true) => DEFAULT_CIPHERS.to_owned(),
    };
    b.set_cipher_list(&ciphers)
        .map_err(|e| cfg_err(&format!("cipher list {ciphers:?}"), e))?;
    let mut cas = Vec::new();
    if let Some(ca) = &s.ca_file {
        cas = certs::check_ca("ca_file", ca)?;
        b.set_ca_file(ca)
            .map_err(|e| cfg_err(&format!("ca_file {}", ca.display()), reasons(&e)))?;
        // The CA file is read whole here; the system's trust store (below) is a directory
        // read as it goes, and is verified by OpenSSL every time.
        let crls = match &s.crl_file {
            Some(path) => add_crls(&mut b, "crl_file", path)?,
            None => Vec::new(),
        };
        crate::verified::install(&mut b, crls, true);
    } else if s.crl_file.is_some() {
        return Err(DtlsError::Config(
            "crl_file needs ca_file (the CA whose revocations it lists)".into(),
        ));
    } else if s.psk.is_none() {
        b.set_default_verify_paths()
            .map_err(|e| cfg_err("the system's trust store", e))?;
    }
    if let Some((cert, key)) = &s.cert {
        let chain = load_identity(&mut b, cert, key, "device")?;
        if s.ca_file.is_some() {
            settle_chain(&mut b, &chain, &cas)?;
        }
    }
    if let Some(psk) = s.psk.clone() {
        b.set_psk_client_callback(move |_ssl, _hint, identity, key| {
            let id = psk.identity.as_bytes();
            if id.len() + 1 > identity.len() || psk.key.len() > key.len() {
                return Err(openssl::error::ErrorStack::get());
            }
            identity[..id.len()].copy_from_slice(id);
            identity[id.len()] = 0;
            key[..psk.key.len()].copy_from_slice(&psk.key);
            Ok(psk.key.len())
        });
    }
    let ctx = b.build();
    refuse_null_suites(&ctx)?;
    if s.psk.is_some() && s.ca_file.is_none() {
        // Any suite but a PSK one would take the server's certificate unverified.
        let unauthenticated = suites_where(&ctx, |f| f.starts_with("Au=") && f != "Au=PSK")?;
        if !unauthenticated.is_empty() {
            return Err(DtlsError::Config(format!(
                "with a PSK and no ca_file, only the PSK can authenticate the server, but the cipher list also has {}, which would take any server's certificate unverified: list only PSK suites in ciphers",
                unauthenticated.join(", ")
            )));
        }
    }
    Ok(ctx)
}

/// Reads the CRLs of `path` (setting `key`) into the context's verify store and turns CRL
/// checking on for the peer's certificate; returns them (the earliest next update of them
/// bounds the verdicts the context keeps, and [`crate::verified`] checks the chain's CA
/// certificates against them).
fn add_crls(
    b: &mut openssl::ssl::SslContextBuilder,
    key: &str,
    path: &std::path::Path,
) -> Result<Vec<openssl::x509::X509Crl>, DtlsError> {
    let crls = certs::read_crls(key, path)?;
    let store = b.cert_store_mut();
    for crl in &crls {
        // SAFETY: a valid store and CRL; the store takes its own reference.
        if unsafe { X509_STORE_add_crl(store.as_ptr(), crl.as_ptr()) } != 1 {
            return Err(cfg_err(
                &format!("{key} {}", path.display()),
                reasons(&openssl::error::ErrorStack::get()),
            ));
        }
    }
    store
        .set_flags(X509VerifyFlags::CRL_CHECK)
        .map_err(|e| cfg_err("CRL checking", e))?;
    Ok(crls)
}

/// Builds the server context.
///
/// Sessions may be resumed (tickets and the session cache, both per context, so a restart
/// forgets them); a resumed session keeps the identity it was established with, since both
/// the client certificate and the PSK identity are part of the session. A CRL is checked at
/// full handshakes only: the CRL file is read when the context is built.
pub fn server_context(s: &ServerSettings) -> Result<SslContext, DtlsError> {
    let mut b = base_context()?;
    // Resumption from the session cache, not tickets: a ticket serialises the whole session,
    // client certificate included, at every full handshake. (An idle session's record buffers
    // are released by `Session`: SSL_MODE_RELEASE_BUFFERS does not release them for DTLS.)
    // The server's order of suites decides (its list starts with the suites the crate's own
    // record layer protects, and ends with CCM8 for devices limited to it).
    b.set_options(
        SslOptions::COOKIE_EXCHANGE | SslOptions::NO_TICKET | SslOptions::CIPHER_SERVER_PREFERENCE,
    );
    // Ties the sessions to this server: required for resumption with client certificates.
    b.set_session_id_context(b"gateway-coaps")
        .map_err(|e| cfg_err("session id context", e))?;
    let ciphers = match (
        s.ciphers.is_empty(),
        s.psk.is_empty(),
        s.cert_file.is_some(),
    ) {
        (false, _, _) => s.ciphers.clone(),
        (true, true, _) => DEFAULT_CIPHERS.to_owned(),
        (true, false, false) => DEFAULT_PSK_CIPHERS.to_owned(),
        (true, false, true) => format!("{DEFAULT_PSK_CIPHERS}:{DEFAULT_CIPHERS}"),
    };
    b.set_cipher_list(&ciphers)
        .map_err(|e| cfg_err(&format!("cipher list {ciphers:?}"), e))?;
    let chain = match (&s.cert_file, &s.key_file) {
        (Some(cert), Some(key)) => load_identity(&mut b, cert, key, "server")?,
        (None, None) if !s.psk.is_empty() => Vec::new(),
        _ => {
            return Err(DtlsError::Config(
                "a server needs cert_file and key_file (or PSK keys)".into(),
            ))
        }
    };
    if let Some(ca) = &s.client_ca_file {
        let cas = certs::check_ca("client_ca_file", ca)?;
        if !chain.is_empty() {
            // OpenSSL would build our chain from the clients' CA file, the verify store.
            settle_chain(&mut b, &chain, &cas)?;
        }
        b.set_ca_file(ca)
            .map_err(|e| cfg_err(&format!("client_ca_file {}", ca.display()), reasons(&e)))?;
        let mut mode = SslVerifyMode::PEER;
        if s.require_client_cert {
            mode |= SslVerifyMode::FAIL_IF_NO_PEER_CERT;
        }
        b.set_verify(mode);
        // Read once: what the store checks is what bounds the verdicts kept on it.
        let crls = match &s.client_crl_file {
            Some(path) => add_crls(&mut b, "client_crl_file", path)?,
            None => Vec::new(),
        };
        crate::verified::install(&mut b, crls, false);
    } else if s.require_client_cert {
        return Err(DtlsError::Config(
            "require_client_cert needs client_ca_file".into(),
        ));
    } else if s.client_crl_file.is_some() {
        return Err(DtlsError::Config(
            "client_crl_file needs client_ca_file".into(),
        ));
    }
    if !s.psk.is_empty() {
        let keys = s.psk.clone();
        // An identity the server does not know gets a key nobody has, drawn for this context,
        // instead of OpenSSL's unknown_psk_identity alert (RFC 4279 §2 allows either): its
        // handshake then fails as a known identity's with a wrong key does, silently at the
        // client's Finished, so that nobody can try names to learn which devices exist.
        let mut unknown = [0u8; 32];
        openssl::rand::rand_bytes(&mut unknown).map_err(|e| cfg_err("random bytes", e))?;
        // The identity is read from the session afterwards (`Session::peer_identity`), so that
        // a resumed session, which skips this callback, has it too.
        b.set_psk_server_callback(move |ssl, identity, key| {
            let known = identity
                .and_then(|i| std::str::from_utf8(i).ok())
                .and_then(|id| keys.get(id))
                .filter(|k| k.len() <= key.len());
            let k = match known {
                Some(k) => k.as_slice(),
                None => {
                    let name = String::from_utf8_lossy(identity.unwrap_or_default());
                    ssl.set_ex_data(unknown_psk_index(), name.into_owned());
                    &unknown
                }
            };
            key[..k.len()].copy_from_slice(k);
            Ok(k.len())
        });
    }
    // The cookie was checked before the session existed (see `CookieJar`); OpenSSL checks it
    // again against what we stored.
    b.set_cookie_generate_cb(|_, _| Ok(0));
    b.set_cookie_verify_cb(|ssl, cookie| {
        ssl.ex_data(cookie_index())
            .is_some_and(|c| c.as_slice() == cookie)
    });
    let ctx = b.build();
    refuse_null_suites(&ctx)?;
    Ok(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_pki::{issue_to, Kind};

    #[test]
    fn debug_shows_psk_identities_never_their_keys() {
        let psk = Psk {
            identity: "pi-02".into(),
            key: vec![0x5e, 0xc2, 0xe7, 0x01],
        };
        let shown = format!("{psk:?}");
        assert_eq!(shown, "Psk { identity: \"pi-02\", key: <4 bytes> }");
        let server = ServerSettings {
            psk: [("pi-03".to_owned(), vec![0x5e, 0xc2, 0xe7, 0x01])].into(),
            ..Default::default()
        };
        let shown = format!("{server:?}");
        assert!(shown.contains("psk_identities: [\"pi-03\"]"), "{shown}");
        assert!(!shown.contains("94, 194"), "{shown}");
    }

    /// What a record adds is that of the costliest suite the list allows.
    #[test]
    fn a_records_overhead_is_that_of_the_costliest_suite() {
        let psk = |ciphers: &str| ClientSettings {
            psk: Some(Psk {
                identity: "pi-01".into(),
                key: vec![7; 16],
            }),
            ciphers: ciphers.into(),
            ..Default::default()
        };
        let of = |s: &ClientSettings| record_overhead(&client_context(s).unwrap());
        // AES-GCM, ChaCha20-Poly1305, AES-CCM8: AEAD.
        let certs = ClientSettings {
            ca_file: None,
            ..Default::default()
        };
        assert_eq!(of(&certs), 13 + 24);
        // The default PSK list ends with AES-CBC and SHA-256: 16 + 32 + 16.
        assert_eq!(of(&psk("")), 13 + 64);
        assert_eq!(of(&psk("ECDHE-PSK-CHACHA20-POLY1305")), 13 + 24);
        assert_eq!(of(&psk("ECDHE-PSK-AES256-CBC-SHA384")), 13 + 80);
        assert_eq!(of(&psk("ECDHE-PSK-AES128-CBC-SHA")), 13 + 52);
    }

    /// A chain file (leaf, then intermediate) is loaded as read: the leaf as the certificate,
    /// the intermediate to go with it; a key that is not the leaf's is refused in words.
    #[test]
    fn an_identity_is_loaded_from_what_was_checked() {
        let dir = tempfile::tempdir().unwrap();
        let d = |f: &str| dir.path().join(f);
        let root = issue_to(&d("ca.pem"), &d("ca.key"), "Root", Kind::Ca, None, -1, 30).unwrap();
        let inter = issue_to(
            &d("inter.pem"),
            &d("inter.key"),
            "Intermediate",
            Kind::Ca,
            Some((&root.0, &root.1)),
            -1,
            30,
        )
        .unwrap();
        let names = vec!["localhost".to_owned()];
        let leaf = issue_to(
            &d("leaf.pem"),
            &d("leaf.key"),
            "server",
            Kind::Server(&names),
            Some((&inter.0, &inter.1)),
            -1,
            30,
        )
        .unwrap();
        let mut chain = leaf.0.to_pem().unwrap();
        chain.extend(inter.0.to_pem().unwrap());
        std::fs::write(d("chain.pem"), chain).unwrap();

        let mut b = base_context().unwrap();
        let loaded = load_identity(&mut b, &d("chain.pem"), &d("leaf.key"), "server").unwrap();
        assert_eq!(loaded.len(), 2);
        let ctx = b.build();
        let der = |c: &openssl::x509::X509Ref| c.to_der().unwrap();
        assert_eq!(der(ctx.certificate().unwrap()), der(&leaf.0));
        let extra: Vec<_> = ctx.extra_chain_certs().iter().map(der).collect();
        assert_eq!(extra, vec![der(&inter.0)]);
        assert!(ctx.private_key().unwrap().public_eq(&leaf.1));

        let mut b = base_context().unwrap();
        let e = load_identity(&mut b, &d("chain.pem"), &d("inter.key"), "server").unwrap_err();
        assert!(
            e.to_string().contains("does not belong to cert_file"),
            "{e}"
        );
    }
}
