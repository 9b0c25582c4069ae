//! Development certificates: a CA, server certificates with the names and addresses they serve,
//! device certificates whose common name is the device identity. EC P-256, SHA-256. Writes
//! PEM files; private keys are created with mode 0600.

use openssl::{
    asn1::Asn1Time,
    bn::{BigNum, MsbOption},
    ec::{EcGroup, EcKey},
    hash::MessageDigest,
    nid::Nid,
    pkey::{HasPublic, PKey, PKeyRef, Private},
    x509::{
        extension::{
            AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage,
            SubjectAlternativeName, SubjectKeyIdentifier,
        },
        X509Crl, X509CrlBuilder, X509NameBuilder, X509Req, X509ReqBuilder, X509RevokedBuilder,
        X509,
    },
};
use std::{io::Write, os::unix::fs::OpenOptionsExt, path::Path};

/// The longest identity, in bytes (see [`valid_identity`]).
pub const MAX_IDENTITY: usize = 254;

/// Whether `id` can be a device identity: 1 to 254 bytes (a SenML base name, at most 255
/// bytes, is the device and a `:`; a 255-byte identity could never post), no control characters (a NUL would
/// let `victim\0x` pass for `victim` wherever a C string is made of it), no U+FFFD (what a
/// lossy conversion of bytes that are not text leaves, so two names could become one), and no
/// white space at either end (MySQL's and MariaDB's PAD SPACE collations, `utf8mb4_bin`
/// among them, compare `victim ` equal to `victim`: its rows would answer for the victim's).
/// No bidirectional control or line separator either (U+061C, U+200E, U+200F, U+2028 to U+202E,
/// U+2066 to U+2069: `pi-\u{202e}10` shows as another name than it is), and no invisible
/// character ([`invisible`]): `pi-01\u{200b}` is another device that every screen shows as `pi-01`,
/// and `gateway certs sign`, which takes the name from a device's request, would have issued
/// it while `pi-01` was in force.
/// The DTLS server gives a peer whose certificate's common name is not one no identity.
pub fn valid_identity(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_IDENTITY
        && id.trim() == id
        && !id.chars().any(|c| {
            c.is_control()
                || c == '\u{FFFD}'
                || invisible(c)
                || matches!(c, '\u{2028}'..='\u{2029}')
        })
}

pub use gateway_sdk::text::invisible;

/// A private key.
pub type Key = PKey<Private>;

/// An error making or writing certificates.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PkiError(pub String);

fn e(what: &str) -> impl Fn(openssl::error::ErrorStack) -> PkiError + '_ {
    move |err| PkiError(format!("{what}: {err}"))
}

/// A new EC P-256 key.
pub fn new_key() -> Result<Key, PkiError> {
    let g = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(e("curve"))?;
    PKey::from_ec_key(EcKey::generate(&g).map_err(e("key"))?).map_err(e("key"))
}

/// What a certificate is for.
pub enum Kind<'a> {
    /// A self-signed CA.
    Ca,
    /// A server certificate for these DNS names and IP addresses.
    Server(&'a [String]),
    /// A device (client) certificate.
    Device,
}

/// Issues a certificate for `cn` valid from `not_before_days` to `not_after_days` from now
/// (negative: in the past), signed by `issuer` (self-signed when `None`).
pub fn issue(
    cn: &str,
    key: &Key,
    kind: Kind<'_>,
    issuer: Option<(&X509, &Key)>,
    not_before_days: i64,
    not_after_days: i64,
) -> Result<X509, PkiError> {
    issue_between(
        cn,
        key,
        kind,
        issuer,
        days_from_now(not_before_days),
        days_from_now(not_after_days),
    )
}

/// `days` days from now (negative: in the past), in seconds since the Unix epoch.
fn days_from_now(days: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    now + days * 86400
}

/// [`issue`] with its validity to the second: from `not_before` to `not_after`, in seconds
/// since the Unix epoch (a short-lived certificate, say).
pub fn issue_between(
    cn: &str,
    key: &Key,
    kind: Kind<'_>,
    issuer: Option<(&X509, &Key)>,
    not_before: i64,
    not_after: i64,
) -> Result<X509, PkiError> {
    let signer = match issuer {
        Some((ca, ca_key)) => (Some(ca), ca_key),
        None => (None, key),
    };
    certify(cn, key, kind, signer, not_before, not_after)
}

/// A certificate for `cn` and the public key `public`, signed by `signer`'s key: the CA's
/// (with its certificate), or `public`'s own (`None`, self-signed).
fn certify<T: HasPublic>(
    cn: &str,
    public: &PKeyRef<T>,
    kind: Kind<'_>,
    signer: (Option<&X509>, &Key),
    not_before: i64,
    not_after: i64,
) -> Result<X509, PkiError> {
    let issuer = signer.0;
    let mut name = X509NameBuilder::new().map_err(e("name"))?;
    name.append_entry_by_nid(Nid::COMMONNAME, cn)
        .map_err(e("common name"))?;
    let name = name.build();
    let mut b = X509::builder().map_err(e("builder"))?;
    b.set_version(2).map_err(e("version"))?;
    let mut serial = BigNum::new().map_err(e("serial"))?;
    serial
        .rand(127, MsbOption::MAYBE_ZERO, false)
        .map_err(e("serial"))?;
    let serial = serial.to_asn1_integer().map_err(e("serial"))?;
    b.set_serial_number(&serial).map_err(e("serial"))?;
    b.set_subject_name(&name).map_err(e("subject"))?;
    b.set_issuer_name(issuer.map(|c| c.subject_name()).unwrap_or(&name))
        .map_err(e("issuer"))?;
    b.set_pubkey(public).map_err(e("public key"))?;
    let (from, until) = (x509_time(not_before)?, x509_time(not_after)?);
    b.set_not_before(&from).map_err(e("validity"))?;
    b.set_not_after(&until).map_err(e("validity"))?;
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(issuer.map(|c| &**c), None))
        .map_err(e("ski"))?;
    b.append_extension(ski).map_err(e("ski"))?;
    match (&kind, issuer) {
        (Kind::Ca, _) | (_, None) => {
            b.append_extension(
                BasicConstraints::new()
                    .critical()
                    .ca()
                    .build()
                    .map_err(e("constraints"))?,
            )
            .map_err(e("constraints"))?;
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()
                    .map_err(e("usage"))?,
            )
            .map_err(e("usage"))?;
        }
        (kind, Some(ca)) => {
            b.append_extension(
                BasicConstraints::new()
                    .critical()
                    .build()
                    .map_err(e("constraints"))?,
            )
            .map_err(e("constraints"))?;
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .digital_signature()
                    .build()
                    .map_err(e("usage"))?,
            )
            .map_err(e("usage"))?;
            let mut eku = ExtendedKeyUsage::new();
            match kind {
                Kind::Server(_) => eku.server_auth(),
                _ => eku.client_auth(),
            };
            b.append_extension(eku.build().map_err(e("usage"))?)
                .map_err(e("usage"))?;
            let aki = AuthorityKeyIdentifier::new()
                .keyid(false)
                .build(&b.x509v3_context(Some(ca), None))
                .map_err(e("aki"))?;
            b.append_extension(aki).map_err(e("aki"))?;
            if let Kind::Server(names) = kind {
                let mut san = SubjectAlternativeName::new();
                for n in names.iter() {
                    if n.parse::<std::net::IpAddr>().is_ok() {
                        san.ip(n);
                    } else {
                        san.dns(n);
                    }
                }
                let san = san
                    .build(&b.x509v3_context(Some(ca), None))
                    .map_err(e("subject alternative names"))?;
                b.append_extension(san)
                    .map_err(e("subject alternative names"))?;
            }
        }
    }
    b.sign(signer.1, MessageDigest::sha256())
        .map_err(e("signing"))?;
    Ok(b.build())
}

/// A certificate signing request for a device whose identity (common name) is `cn`, signed
/// with its new `key`, as PEM: made on the device, so that its key never leaves it.
pub fn request(cn: &str, key: &Key) -> Result<Vec<u8>, PkiError> {
    let mut name = X509NameBuilder::new().map_err(e("name"))?;
    name.append_entry_by_nid(Nid::COMMONNAME, cn)
        .map_err(e("common name"))?;
    let mut b = X509ReqBuilder::new().map_err(e("request"))?;
    b.set_subject_name(&name.build()).map_err(e("request"))?;
    b.set_pubkey(key).map_err(e("request"))?;
    b.sign(key, MessageDigest::sha256()).map_err(e("request"))?;
    b.build().to_pem().map_err(e("PEM"))
}

/// A device certificate for the request `pem` (see [`request`]), signed by `ca`, valid from a
/// day ago for `days` days: the common name the request asks for, and its public key. The
/// request must be signed by that key (its holder asked for it); nothing else of it (other
/// names, extensions) is copied: the certificate is a device certificate whatever the
/// request says. Returns the common name with the certificate, for the caller to check it.
pub fn issue_for_request(
    pem: &[u8],
    ca: (&X509, &Key),
    days: i64,
) -> Result<(String, X509), PkiError> {
    let req = X509Req::from_pem(pem).map_err(e("not a PEM certificate request"))?;
    let public = req.public_key().map_err(e("the request's key"))?;
    strong_enough(&public)?;
    if !req.verify(&public).map_err(e("the request's signature"))? {
        return Err(PkiError(
            "the request is not signed by the key it holds".into(),
        ));
    }
    let mut cns = req.subject_name().entries_by_nid(Nid::COMMONNAME);
    let cn = match (cns.next(), cns.next()) {
        (Some(cn), None) => cn
            .data()
            .to_string()
            .map_err(e("the request's common name"))?
            .to_string(),
        _ => {
            return Err(PkiError(
                "the request must name exactly one common name (the device's identity)".into(),
            ))
        }
    };
    let cert = certify(
        &cn,
        &public,
        Kind::Device,
        (Some(ca.0), ca.1),
        days_from_now(-1),
        days_from_now(days),
    )?;
    Ok((cn, cert))
}

/// Refuses a key that a certificate of this CA must not vouch for: only EC keys on P-256,
/// P-384 or P-521, Ed25519 and Ed448, and RSA keys of at least 2,048 bits are signed. A
/// request is written by whoever holds the device; an RSA-512 or DSA key in it would be a
/// certificate that anyone who factors or breaks the key can use as that device.
fn strong_enough<T: HasPublic>(key: &PKeyRef<T>) -> Result<(), PkiError> {
    use openssl::pkey::Id;
    let refused = |what: String| {
        Err(PkiError(format!(
            "the request's key is {what}: only EC keys on P-256, P-384 or P-521, Ed25519, Ed448 and RSA keys of 2048 bits or more are signed; make a new request with `gateway certs request` (EC P-256)"
        )))
    };
    match key.id() {
        Id::EC => {
            let ec = key.ec_key().map_err(e("the request's EC key"))?;
            let curve = ec.group().curve_name();
            match curve {
                Some(Nid::X9_62_PRIME256V1 | Nid::SECP384R1 | Nid::SECP521R1) => Ok(()),
                Some(n) => refused(format!(
                    "on curve {}",
                    n.short_name().unwrap_or("(unnamed)")
                )),
                None => refused("on explicit curve parameters".into()),
            }
        }
        Id::ED25519 | Id::ED448 => Ok(()),
        Id::RSA if key.bits() >= 2048 => Ok(()),
        Id::RSA => refused(format!("RSA of {} bits", key.bits())),
        Id::DSA => refused("DSA".into()),
        other => refused(format!("of another type (OpenSSL's id {})", other.as_raw())),
    }
}

/// Makes a new key, issues a certificate for it (see [`issue`]), and writes both: the
/// certificate to `cert_path`, the key (mode 0600) to `key_path`.
#[allow(clippy::too_many_arguments)]
pub fn issue_to(
    cert_path: &Path,
    key_path: &Path,
    cn: &str,
    kind: Kind<'_>,
    issuer: Option<(&X509, &Key)>,
    not_before_days: i64,
    not_after_days: i64,
) -> Result<(X509, Key), PkiError> {
    let key = new_key()?;
    let cert = issue(cn, &key, kind, issuer, not_before_days, not_after_days)?;
    let pem = cert.to_pem().map_err(e("PEM"))?;
    replace_pair((key_path, &key_pem(&key)?), (cert_path, &pem))?;
    Ok((cert, key))
}

/// Writes a key (mode 0600) and what goes with it (a certificate, a request: anyone may read
/// it) in their places as one: both are written beside their places first and then moved
/// there, key first, so that a write that fails (a full disk, a directory in the way) leaves
/// the pair that was there as it was (the new key never beside the old certificate, nor the
/// old key beside a request for a new one), and a link at either place is replaced, not
/// followed.
pub fn replace_pair(key: (&Path, &[u8]), public: (&Path, &[u8])) -> Result<(), PkiError> {
    replace(&[(key.0, key.1, 0o600), (public.0, public.1, 0o644)])
}

/// A hidden temporary name beside `path`: `.NAME.new` (`gateway certs` runs one command at a
/// time in a directory, so one left there is a failed run's).
fn beside(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy());
    path.with_file_name(format!(".{name}.new"))
}

/// Writes a certificate as PEM.
pub fn write_cert(path: &Path, cert: &X509) -> Result<(), PkiError> {
    write_public(path, &cert.to_pem().map_err(e("PEM"))?)
}

/// Writes `pem` that anyone may read (a certificate, a request, a CRL) in `path`'s place: a new
/// file beside it, synced, then renamed there, so that a write that fails (a full disk) leaves
/// what was there as it was, a reader never sees half a file, and a link in its place is
/// replaced, not followed.
pub fn write_public(path: &Path, pem: &[u8]) -> Result<(), PkiError> {
    replace(&[(path, pem, 0o644)])
}

/// Writes a private key as PEM, readable by its owner only, in `path`'s place as
/// [`write_public`] does: a key that was there stays whole until the new one is.
pub fn write_key(path: &Path, key: &Key) -> Result<(), PkiError> {
    replace(&[(path, &key_pem(key)?, 0o600)])
}

/// A private key as PEM (PKCS #8).
pub fn key_pem(key: &Key) -> Result<Vec<u8>, PkiError> {
    key.private_key_to_pem_pkcs8().map_err(e("PEM"))
}

/// Each `(path, bytes, mode)` as a new file beside its path, synced; once all are written, each
/// renamed onto its path, in order, and the directories synced, so that what the command said
/// it wrote is there after a power cut. What was written is removed if any step fails.
fn replace(files: &[(&Path, &[u8], u32)]) -> Result<(), PkiError> {
    for (path, _, _) in files {
        // A rename onto a directory fails: found now, not between two renames.
        if path.is_dir() {
            return Err(PkiError(format!(
                "cannot write {}: a directory is in its place",
                path.display()
            )));
        }
    }
    let tmps: Vec<_> = files.iter().map(|(path, _, _)| beside(path)).collect();
    let done = files
        .iter()
        .zip(&tmps)
        .try_for_each(|((_, bytes, mode), tmp)| write_new(tmp, bytes, *mode))
        .and_then(|()| {
            files.iter().zip(&tmps).try_for_each(|((path, _, _), tmp)| {
                std::fs::rename(tmp, path)
                    .map_err(|err| PkiError(format!("cannot write {}: {err}", path.display())))
            })
        });
    if done.is_err() {
        for tmp in &tmps {
            let _ = std::fs::remove_file(tmp);
        }
    }
    done?;
    let mut dirs: Vec<&Path> = files
        .iter()
        .map(|(path, _, _)| match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        })
        .collect();
    dirs.dedup();
    for dir in dirs {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|err| PkiError(format!("cannot sync {}: {err}", dir.display())))?;
    }
    Ok(())
}

/// `bytes` as a new file at `path` (mode `mode`), synced: whatever was at `path` (a file a
/// failed run left, a link) is removed first, not written through.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .map_err(|err| PkiError(format!("cannot write {}: {err}", path.display())))
}

/// Reads a certificate and key written by this module.
pub fn read_pair(cert: &Path, key: &Path) -> Result<(X509, Key), PkiError> {
    let c = std::fs::read(cert)
        .map_err(|err| PkiError(format!("cannot read {}: {err}", cert.display())))?;
    let k = std::fs::read(key)
        .map_err(|err| PkiError(format!("cannot read {}: {err}", key.display())))?;
    Ok((
        X509::from_pem(&c).map_err(e("certificate"))?,
        PKey::private_key_from_pem(&k).map_err(e("key"))?,
    ))
}

/// `unix` (seconds since 1970, UTC) as an X.509 time: UTCTime through 2049, GeneralizedTime
/// after, as RFC 5280 wants. Made from the calendar date, not from a `time_t`, which has 32 bits
/// on armhf and ends in 2038 (a CA valid for 20 years outlives it).
fn x509_time(unix: i64) -> Result<Asn1Time, PkiError> {
    let (days, secs) = (unix.div_euclid(86400), unix.rem_euclid(86400));
    let (y, m, d) = civil_from_days(days);
    let text = format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    );
    Asn1Time::from_str_x509(&text).map_err(e("validity"))
}

/// The proleptic Gregorian date of day `z` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Revokes `certs`: writes to `crl_path` a CRL signed by the CA that lists them and every
/// certificate the CRL already there listed, valid for `days` (a server refuses every client
/// certificate of that CA once its CRL has expired: issue it again before then). Returns how
/// many certificates the new CRL lists.
pub fn revoke(
    crl_path: &Path,
    ca: &X509,
    ca_key: &Key,
    certs: &[&X509],
    days: i64,
) -> Result<usize, PkiError> {
    let now = x509_time(unix_now())?;
    let mut b = X509CrlBuilder::new().map_err(e("CRL"))?;
    b.set_issuer_name(ca.subject_name())
        .map_err(e("CRL issuer"))?;
    b.set_last_update(&now).map_err(e("CRL time"))?;
    let next = x509_time(unix_now() + days * 86400)?;
    b.set_next_update(&next).map_err(e("CRL time"))?;
    // The authority key identifier (RFC 5280 §5.2.1): SEQUENCE { [0] keyIdentifier } of the
    // CA's subject key identifier.
    let ski = ca
        .subject_key_id()
        .ok_or_else(|| PkiError("the CA certificate has no subject key identifier".into()))?
        .as_slice();
    let mut aki = vec![0x30, (ski.len() + 2) as u8, 0x80, ski.len() as u8];
    aki.extend_from_slice(ski);
    // The CRL number (§5.2.3): the time of issue, so that a later CRL has a larger one.
    let mut number: Vec<u8> = (unix_now() as u64)
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    if number.first().is_none_or(|b| b & 0x80 != 0) {
        number.insert(0, 0);
    }
    let mut crl_number = vec![0x02, number.len() as u8];
    crl_number.extend_from_slice(&number);
    for (oid, der) in [("2.5.29.35", aki), ("2.5.29.20", crl_number)] {
        let oid = openssl::asn1::Asn1Object::from_str(oid).map_err(e("CRL extension"))?;
        let value =
            openssl::asn1::Asn1OctetString::new_from_bytes(&der).map_err(e("CRL extension"))?;
        b.append_extension(
            openssl::x509::X509Extension::new_from_der(&oid, false, &value)
                .map_err(e("CRL extension"))?,
        )
        .map_err(e("CRL extension"))?;
    }
    let mut listed = 0;
    let mut serials = Vec::new();
    // The CRL there lists every revocation so far: one that cannot be read, or that another
    // CA signed, stops the command, for a new CRL without its entries would trust again every
    // certificate it listed. Only a CRL that is not there at all means none yet.
    let shown = crl_path.display();
    let old = match std::fs::read(crl_path) {
        Ok(pem) => Some(pem),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => {
            return Err(PkiError(format!(
                "cannot read the CRL {shown} ({err}): nothing was revoked. It lists the \
                 certificates revoked so far, and a new CRL without them would trust them \
                 again; run the command as a user that may read it"
            )))
        }
    };
    if let Some(pem) = old {
        let old = X509Crl::from_pem(&pem).map_err(e(&format!("the CRL {shown}")))?;
        let ours = old.issuer_name().try_cmp(ca.subject_name()).ok()
            == Some(std::cmp::Ordering::Equal)
            && old
                .verify(ca.public_key().map_err(e("the CA's key"))?.as_ref())
                .unwrap_or(false);
        if !ours {
            return Err(PkiError(format!(
                "the CRL {shown} was not signed by this CA: nothing was revoked. Move it aside \
                 if it belongs to another CA"
            )));
        }
        for r in old.get_revoked().into_iter().flatten() {
            let serial = r.serial_number().to_bn().map_err(e("serial"))?;
            serials.push(serial.to_vec());
            b.add_revoked(r.to_owned().map_err(e("CRL entry"))?)
                .map_err(e("CRL entry"))?;
            listed += 1;
        }
    }
    for cert in certs {
        let serial = cert.serial_number();
        if serials.contains(&serial.to_bn().map_err(e("serial"))?.to_vec()) {
            continue;
        }
        let mut r = X509RevokedBuilder::new().map_err(e("CRL entry"))?;
        r.set_serial_number(serial).map_err(e("CRL entry"))?;
        r.set_revocation_date(&now).map_err(e("CRL entry"))?;
        b.add_revoked(r.build()).map_err(e("CRL entry"))?;
        listed += 1;
    }
    b.sort().map_err(e("CRL"))?;
    b.sign(ca_key, MessageDigest::sha256())
        .map_err(e("signing the CRL"))?;
    let pem = b.build().map_err(e("CRL"))?.to_pem().map_err(e("PEM"))?;
    // Written whole, then renamed: a server reading it never sees half a CRL.
    write_public(crl_path, &pem)?;
    Ok(listed)
}

/// Paths of the development PKI under a directory.
pub struct Layout<'a>(pub &'a Path);

impl Layout<'_> {
    /// `ca.pem`.
    pub fn ca(&self) -> std::path::PathBuf {
        self.0.join("ca.pem")
    }
    /// `ca.key`.
    pub fn ca_key(&self) -> std::path::PathBuf {
        self.0.join("ca.key")
    }
    /// `server.pem`.
    pub fn server(&self) -> std::path::PathBuf {
        self.0.join("server.pem")
    }
    /// `server.key`.
    pub fn server_key(&self) -> std::path::PathBuf {
        self.0.join("server.key")
    }
    /// `device-NAME.pem`.
    pub fn device(&self, name: &str) -> std::path::PathBuf {
        self.0.join(format!("device-{name}.pem"))
    }
    /// `device-NAME.csr`: the request `gateway certs request` makes on the device.
    pub fn device_request(&self, name: &str) -> std::path::PathBuf {
        self.0.join(format!("device-{name}.csr"))
    }
    /// `device-NAME.key`.
    pub fn device_key(&self, name: &str) -> std::path::PathBuf {
        self.0.join(format!("device-{name}.key"))
    }
    /// `crl.pem`: the certificates revoked (devices', and the server's).
    pub fn crl(&self) -> std::path::PathBuf {
        self.0.join("crl.pem")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x509_times_are_calendar_dates_past_2038_too() {
        for (unix, shown) in [
            (0, "Jan  1 00:00:00 1970 GMT"),
            (951_782_400, "Feb 29 00:00:00 2000 GMT"),
            (2_147_483_648, "Jan 19 03:14:08 2038 GMT"),
            (2_524_608_000, "Jan  1 00:00:00 2050 GMT"),
            (4_107_542_399, "Feb 28 23:59:59 2100 GMT"),
        ] {
            assert_eq!(x509_time(unix).unwrap().to_string(), shown, "{unix}");
        }
    }
}
