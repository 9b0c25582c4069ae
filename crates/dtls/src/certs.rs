//! Certificate files checked before OpenSSL loads them, so that what goes wrong is said in
//! words a person can act on: which setting, which file, which certificate (its common name)
//! and which dates, and how to make a new one, instead of an OpenSSL error stack. No I/O but
//! reading the files named.

use crate::DtlsError;
use openssl::{
    asn1::Asn1Time,
    nid::Nid,
    pkey::PKey,
    x509::{X509Ref, X509},
};
use std::path::Path;

/// `CN=name` of a certificate (or its whole subject when it has no common name).
pub fn name_of(cert: &X509Ref) -> String {
    let subject = cert.subject_name();
    match subject.entries_by_nid(Nid::COMMONNAME).next() {
        Some(cn) => format!(
            "CN={}",
            cn.data()
                .to_string()
                .map(|s| s.to_string())
                .unwrap_or_default()
        ),
        None => format!("{subject:?}"),
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

/// Refuses a certificate outside its validity period, with its dates; a certificate not yet
/// valid is often this machine's clock (a Pi without network time starts in the past).
fn check_dates(key: &str, path: &Path, cert: &X509Ref, renew: &str) -> Result<(), DtlsError> {
    let now = Asn1Time::days_from_now(0).map_err(|e| config(e.to_string()))?;
    if cert.not_after() < now {
        return Err(config(format!(
            "{key} {}: the certificate {} expired on {}; {renew}",
            path.display(),
            name_of(cert),
            cert.not_after()
        )));
    }
    if cert.not_before() > now {
        return Err(config(format!(
            "{key} {}: the certificate {} is not valid before {} and this machine's clock says {}: is the clock right (a Pi without network time starts in the past)?",
            path.display(),
            name_of(cert),
            cert.not_before(),
            &*now
        )));
    }
    Ok(())
}

/// Checks an identity's certificate chain and key files: both readable, the certificate in its
/// validity period, the key the one it was made with. `role` is `server` or `device`; it picks
/// the `gateway certs` command to suggest.
pub fn check_identity(cert: &Path, key: &Path, role: &str) -> Result<(), DtlsError> {
    let make = match role {
        "server" => "make a development one with `gateway certs server --name HOST` (see certs/README.md), or set cert_file and key_file to your own",
        _ => "make a development one with `gateway certs device NAME` (see certs/README.md), or set cert_file and key_file to your own",
    };
    let chain = read_pem("cert_file", cert, make)?;
    let leaf = &chain[0];
    check_dates("cert_file", cert, leaf, make)?;
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
    Ok(())
}

/// Checks a CA file: readable, PEM, and not every certificate in it expired (then nothing it
/// vouches for could be verified).
pub fn check_ca(key: &str, path: &Path) -> Result<(), DtlsError> {
    let certs = read_pem(
        key,
        path,
        "`gateway certs init` makes a development CA (see certs/README.md)",
    )?;
    let now = Asn1Time::days_from_now(0).map_err(|e| config(e.to_string()))?;
    if certs.iter().all(|c| c.not_after() < now) {
        let names: Vec<String> = certs.iter().map(|c| describe(c)).collect();
        return Err(config(format!(
            "{key} {}: every CA certificate in it has expired ({}); nothing it issued can be verified",
            path.display(),
            names.join("; ")
        )));
    }
    Ok(())
}
