//! Certificate files checked before OpenSSL loads them, so that what goes wrong is said in
//! words a person can act on: which setting, which file, which certificate (its common name)
//! and which dates, and how to make a new one, instead of an OpenSSL error stack. No I/O but
//! reading the files named.

use crate::DtlsError;
use openssl::{
    asn1::Asn1Time,
    error::ErrorStack,
    nid::Nid,
    pkey::{PKey, Private},
    stack::Stack,
    x509::{
        store::X509StoreBuilder, verify::X509VerifyFlags, X509Crl, X509Ref, X509StoreContext,
        X509VerifyResult, X509,
    },
};
use std::path::Path;

/// The identity (see [`crate::certificate_identity`]) of the first certificate in the PEM file
/// at `path`; `None` if it does not read or gives none.
pub fn file_identity(path: &Path) -> Option<String> {
    let pem = std::fs::read(path).ok()?;
    let leaf = X509::from_pem(&pem).ok()?;
    crate::certificate_identity(&leaf)
}

/// `CN=name` of a certificate (or its whole subject when it has no common name). A name that
/// holds a character a terminal or a log would act on (a control character, a bidirectional
/// control) is written quoted, with Rust's escapes: a peer chooses what its certificate says,
/// and this text goes into errors and logs.
pub fn name_of(cert: &X509Ref) -> String {
    let subject = cert.subject_name();
    let (prefix, name) = match subject.entries_by_nid(Nid::COMMONNAME).next() {
        Some(cn) => (
            "CN=",
            cn.data()
                .to_string()
                .map(|s| s.to_string())
                .unwrap_or_default(),
        ),
        None => ("", format!("{subject:?}")),
    };
    let acts = |c: char| !matches!(c, '"' | '\\' | '\'') && c.escape_debug().len() > 1;
    if name.chars().any(acts) {
        format!("{prefix}{name:?}")
    } else {
        format!("{prefix}{name}")
    }
}

/// `CN=name, valid from .. to ..`.
pub fn describe(cert: &X509Ref) -> String {
    format!(
        "{}, valid from {} to {}",
        name_of(cert),
        cert.not_before(),
        cert.not_after()
    )
}

fn config(msg: String) -> DtlsError {
    DtlsError::Config(msg)
}

/// The certificates of a PEM file, or why there are none.
fn read_pem(key: &str, path: &Path, make: &str) -> Result<Vec<X509>, DtlsError> {
    let bytes = std::fs::read(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            format!("; {make}")
        } else {
            String::new()
        };
        config(format!("{key} {}: {e}{hint}", path.display()))
    })?;
    let certs = X509::stack_from_pem(&bytes).unwrap_or_default();
    if certs.is_empty() {
        return Err(config(format!(
            "{key} {}: no PEM certificate in it (expected \"-----BEGIN CERTIFICATE-----\")",
            path.display()
        )));
    }
    Ok(certs)
}

/// What is wrong with a certificate's dates, in words, when it is outside its validity period;
/// a certificate not yet valid is often this machine's clock (a Pi without network time starts
/// in the past). Said, not refused: the dates are the clock's business, which may be set a
/// minute later, and a sink that could not be built would keep the whole gateway from starting
/// (its sources unread, its buffer unfilled) where a handshake that fails only holds the
/// readings until the certificate is renewed or the clock is right.
pub fn date_problem(key: &str, path: &Path, cert: &X509Ref, renew: &str) -> Option<String> {
    let now = Asn1Time::days_from_now(0).ok()?;
    if cert.not_after() < now {
        return Some(format!(
            "{key} {}: the certificate {} expired on {}; {renew}",
            path.display(),
            name_of(cert),
            cert.not_after()
        ));
    }
    if cert.not_before() > now {
        return Some(format!(
            "{key} {}: the certificate {} is not valid before {} and this machine's clock says {}: is the clock right (a Pi without network time starts in the past)?",
            path.display(),
            name_of(cert),
            cert.not_before(),
            &*now
        ));
    }
    None
}

/// Checks an identity's certificate chain and key files: both readable, the certificate in its
/// validity period, the key the one it was made with. `role` is `server` or `device`; it picks
/// the `gateway certs` command to suggest. The certificates of `cert`, leaf first, and the key:
/// what was checked is what gets used (each file is read once).
pub fn check_identity(
    cert: &Path,
    key: &Path,
    role: &str,
) -> Result<(Vec<X509>, PKey<Private>), DtlsError> {
    let make = match role {
        "server" => "make a development one with `gateway certs server --name HOST` (see certs/README.md), or set cert_file and key_file to your own",
        _ => "make a development one with `gateway certs device NAME` (see certs/README.md), or set cert_file and key_file to your own",
    };
    let chain = read_pem("cert_file", cert, make)?;
    let leaf = &chain[0];
    if let Some(problem) = date_problem("cert_file", cert, leaf, make) {
        tracing::warn!("{problem}; DTLS handshakes with it fail until then");
    }
    let key_pem = std::fs::read(key).map_err(|e| {
        config(format!(
            "key_file {}: {e}; the key is made together with cert_file {} ({make})",
            key.display(),
            cert.display()
        ))
    })?;
    let pkey = PKey::private_key_from_pem(&key_pem).map_err(|_| {
        config(format!(
            "key_file {}: not a PEM private key (expected \"-----BEGIN PRIVATE KEY-----\" or \"-----BEGIN EC PRIVATE KEY-----\")",
            key.display()
        ))
    })?;
    let matches = leaf
        .public_key()
        .map(|public| public.public_eq(&pkey))
        .unwrap_or(false);
    if !matches {
        return Err(config(format!(
            "key_file {} does not belong to cert_file {} ({}): the certificate was made with another key; use the key file made with it",
            key.display(),
            cert.display(),
            name_of(leaf)
        )));
    }
    Ok((chain, pkey))
}

/// Checks a CA file: readable, PEM. Its certificates. When every one of them has expired by
/// this machine's clock, nothing it vouches for can be verified: said, not refused (see
/// [`date_problem`]).
pub fn check_ca(key: &str, path: &Path) -> Result<Vec<X509>, DtlsError> {
    let certs = read_pem(
        key,
        path,
        "`gateway certs init` makes a development CA (see certs/README.md)",
    )?;
    if let Some(problem) = ca_date_problem(key, path, &certs) {
        tracing::warn!("{problem}");
    }
    Ok(certs)
}

/// What [`check_ca`] says when every certificate of a CA file has expired.
pub fn ca_date_problem(key: &str, path: &Path, certs: &[X509]) -> Option<String> {
    let now = Asn1Time::days_from_now(0).ok()?;
    if !certs.iter().all(|c| c.not_after() < now) {
        return None;
    }
    let names: Vec<String> = certs.iter().map(|c| describe(c)).collect();
    Some(format!(
        "{key} {}: every CA certificate in it has expired ({}) by this machine's clock; nothing it issued can be verified (DTLS handshakes fail) until it is replaced or the clock is right",
        path.display(),
        names.join("; ")
    ))
}

/// The CRLs of a PEM file, read once: for the verify store and for how long a verification
/// that checked them may be remembered (see `verified`).
pub fn read_crls(key: &str, path: &Path) -> Result<Vec<X509Crl>, DtlsError> {
    const BEGIN: &str = "-----BEGIN X509 CRL-----";
    let bytes = std::fs::read(path).map_err(|e| {
        config(format!(
            "{key} {}: {e}; `gateway certs revoke NAME` writes one (see certs/README.md)",
            path.display()
        ))
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let mut crls = Vec::new();
    for (n, (at, _)) in text.match_indices(BEGIN).enumerate() {
        let crl = X509Crl::from_pem(text[at..].as_bytes()).map_err(|e| {
            config(format!(
                "{key} {}: CRL {} in it does not parse: {e}",
                path.display(),
                n + 1
            ))
        })?;
        crls.push(crl);
    }
    if crls.is_empty() {
        return Err(config(format!(
            "{key} {}: no PEM CRL in it (expected \"{BEGIN}\")",
            path.display()
        )));
    }
    Ok(crls)
}

/// What to send after our own certificate `leaf`: its chain through `cas` up to, not
/// including, the root (the peer has its trust anchor; RFC 5246 §7.4.2 lets the root be left
/// out). Built once, with the context: left to OpenSSL, the chain is built (and so verified, an
/// ECDSA verification per certificate) at every full handshake, 13 % of a server's CPU per
/// handshake, and the root goes on the wire too. Empty when `leaf` does not lead to `cas`: the
/// leaf goes alone, as OpenSSL would send it.
pub fn chain_to_send(leaf: &X509Ref, cas: &[X509]) -> Vec<X509> {
    let build = || -> Result<Vec<X509>, ErrorStack> {
        let mut store = X509StoreBuilder::new()?;
        for c in cas {
            store.add_cert(c.clone())?;
        }
        // Which certificates to send is no trust decision, and the clock may be wrong now
        // and right in a minute (a Pi before network time): built without dates, or a leaf
        // not yet valid at start went without its intermediates until a restart.
        store.set_flags(X509VerifyFlags::NO_CHECK_TIME)?;
        let store = store.build();
        let untrusted: Stack<X509> = Stack::new()?;
        let mut ctx = X509StoreContext::new()?;
        ctx.init(&store, leaf, &untrusted, |c| {
            if !c.verify_cert()? {
                return Ok(Vec::new());
            }
            let chain = c.chain().map(|ch| {
                ch.iter()
                    .skip(1)
                    .filter(|x| x.issued(x) != X509VerifyResult::OK)
                    .map(ToOwned::to_owned)
                    .collect()
            });
            Ok(chain.unwrap_or_default())
        })
    };
    build().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::{
        asn1::Asn1Integer,
        bn::BigNum,
        ec::{EcGroup, EcKey},
        hash::MessageDigest,
        pkey::Private,
        x509::{extension::BasicConstraints, X509Builder, X509NameBuilder},
    };

    fn key() -> PKey<Private> {
        let g = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&g).unwrap()).unwrap()
    }

    /// A certificate for `cn` with `key`, signed by `issuer` (itself when `None`).
    fn cert(
        cn: &str,
        key: &PKey<Private>,
        ca: bool,
        issuer: Option<(&X509, &PKey<Private>)>,
    ) -> X509 {
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        let serial = Asn1Integer::from_bn(&BigNum::from_u32(cn.len() as u32 + 7).unwrap());
        b.set_serial_number(&serial.unwrap()).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(issuer.map_or(&*name, |(c, _)| c.subject_name()))
            .unwrap();
        b.set_pubkey(key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
            .unwrap();
        if ca {
            b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                .unwrap();
        }
        b.sign(issuer.map_or(key, |(_, k)| k), MessageDigest::sha256())
            .unwrap();
        b.build()
    }

    #[test]
    fn the_chain_sent_is_the_leafs_path_to_its_root_without_the_root() {
        let (rk, ik, lk) = (key(), key(), key());
        let root = cert("root", &rk, true, None);
        let inter = cert("intermediate", &ik, true, Some((&root, &rk)));
        let leaf = cert("server", &lk, false, Some((&inter, &ik)));
        let direct = cert("device", &lk, false, Some((&root, &rk)));
        let names = |v: Vec<X509>| v.iter().map(|c| name_of(c)).collect::<Vec<_>>();
        // Signed by the root itself: nothing but the leaf goes.
        assert!(chain_to_send(&direct, std::slice::from_ref(&root)).is_empty());
        // Through an intermediate that the CA file holds: the intermediate goes with it.
        assert_eq!(
            names(chain_to_send(&leaf, &[root.clone(), inter.clone()])),
            ["CN=intermediate"]
        );
        // A leaf that does not lead to the CA file goes alone.
        assert!(chain_to_send(&leaf, &[root]).is_empty());
        assert!(chain_to_send(&leaf, &[]).is_empty());
    }

    #[test]
    fn a_certificate_name_cannot_act_on_a_terminal_or_a_log() {
        let k = key();
        assert_eq!(
            name_of(&cert("pi-01 \"x\"", &k, false, None)),
            "CN=pi-01 \"x\""
        );
        let hostile = cert("\u{1b}]8;;http://x\u{7}a\nINFO b\u{202e}", &k, false, None);
        assert_eq!(
            name_of(&hostile),
            "CN=\"\\u{1b}]8;;http://x\\u{7}a\\nINFO b\\u{202e}\""
        );
    }
}
