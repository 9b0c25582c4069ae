//! `gateway-certs` (run as `gateway certs`): development certificates for the DTLS link.
//!
//! ```text
//! gateway certs init   [--dir DIR] [--force]            a CA: ca.pem, ca.key
//! gateway certs server [--dir DIR] [--name NAME]... [--force]  server.pem, server.key (default names: localhost, 127.0.0.1)
//! gateway certs device NAME [--dir DIR] [--force]       device-NAME.pem, device-NAME.key (common name = NAME)
//! gateway certs revoke NAME [--dir DIR] [--days N]      adds device-NAME.pem to crl.pem (signed by the CA)
//! gateway certs revoke --server [--dir DIR] [--days N]  adds server.pem to crl.pem (the uplink's crl_file)
//! gateway certs request NAME [--dir DIR] [--force]      on a device: device-NAME.key and device-NAME.csr
//! gateway certs sign FILE.csr [--dir DIR] [--force]     on the CA's machine: device-NAME.pem for the request
//! ```
//! DIR defaults to `certs`. Keys are written with mode 0600.

use gateway_pki::{
    issue_for_request, issue_to, new_key, read_pair, request, revoke, Kind, Layout, PkiError,
};
use openssl::{
    asn1::Asn1Time,
    x509::{X509Crl, X509},
};
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

const USAGE: &str = "usage:
  gateway certs init   [--dir DIR] [--force]          create a development CA (ca.pem, ca.key)
  gateway certs server [--dir DIR] [--name NAME]... [--force]
                                                      a server certificate for these DNS names / IPs
                                                      (default: localhost and 127.0.0.1; one the CA
                                                      issued that is still valid is replaced only
                                                      with --force)
  gateway certs device NAME [--dir DIR] [--force]     a device certificate whose common name is NAME
                                                      (one the CA issued that is still valid and
                                                      not revoked is replaced only with --force)
  gateway certs revoke NAME [--dir DIR] [--days N]    revoke device NAME: add its certificate to
                                                      crl.pem, valid N days (default 30; issue it
                                                      again before then: an expired CRL locks
                                                      every device out); the ingress reads it as
                                                      client_crl_file at its next start or reload
  gateway certs revoke --server [--dir DIR] [--days N]
                                                      revoke the server certificate (its key was
                                                      stolen, say): the devices refuse it once
                                                      their uplink's crl_file holds this crl.pem
  gateway certs request NAME [--dir DIR] [--force]    on the device: a new key (device-NAME.key,
                                                      which never leaves it) and a request for its
                                                      certificate (device-NAME.csr) to take to the CA
  gateway certs sign FILE.csr [--dir DIR] [--force]   on the CA's machine: a device certificate for
                                                      the request (DIR/device-NAME.pem, kept there
                                                      for revoke NAME); copy it and ca.pem to the
                                                      device
DIR defaults to ./certs. Keys are written readable by their owner only. The CA's key (ca.key)
belongs on the CA's machine alone: a device or server needs only ca.pem and its own pair.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `DIR/.lock`, locked for this process (waiting for another command in the directory to
/// end). Opened for reading (a lock needs no more), so that a lock file another user made
/// (`sudo gateway certs ...` once) locks for this one too; made readable by all; never
/// followed if it is a link, nor waited on if it is a FIFO. Where this user can neither open
/// nor make it, the command goes on unlocked, and says so.
fn lock(dir: &std::path::Path) -> Result<Option<std::fs::File>, PkiError> {
    use std::{
        io::ErrorKind,
        os::unix::fs::{OpenOptionsExt, PermissionsExt},
    };
    let path = dir.join(".lock");
    let cannot = |e: std::io::Error| PkiError(format!("cannot lock {}: {e}", path.display()));
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let opened = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(&path)
    {
        Err(e) if e.kind() == ErrorKind::NotFound => std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(flags)
            .mode(0o644)
            .open(&path)
            .and_then(|f| {
                // Whatever the umask took away: others must open it to lock.
                f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
                Ok(f)
            }),
        other => other,
    };
    let file = match opened {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            eprintln!(
                "gateway certs: not locking {} ({e}): another command in the directory at the same time could undo this one's changes",
                path.display()
            );
            return Ok(None);
        }
        Err(e) => return Err(cannot(e)),
    };
    if !file.metadata().map_err(cannot)?.is_file() {
        return Err(PkiError(format!(
            "cannot lock {}: it is not a regular file",
            path.display()
        )));
    }
    file.lock().map_err(cannot)?;
    Ok(Some(file))
}

fn run(args: &[String]) -> Result<(), PkiError> {
    let mut dir = PathBuf::from("certs");
    let mut names = Vec::new();
    let mut force = false;
    let mut server = false;
    let mut days = None;
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => {
                dir = it
                    .next()
                    .map(PathBuf::from)
                    .ok_or_else(|| PkiError("--dir needs a value".into()))?
            }
            "--name" => names.push(
                it.next()
                    .cloned()
                    .ok_or_else(|| PkiError("--name needs a value".into()))?,
            ),
            "--force" => force = true,
            "--server" => server = true,
            "--days" => {
                days = Some(
                    it.next()
                        .and_then(|d| d.parse::<i64>().ok())
                        .filter(|d| *d > 0)
                        .ok_or_else(|| PkiError("--days needs a number of days above 0".into()))?,
                )
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other if other.starts_with('-') => {
                return Err(PkiError(format!("unknown option {other}\n{USAGE}")))
            }
            other => positional.push(other.to_owned()),
        }
    }
    // The options given beside --dir (which every command takes), to refuse one that the
    // command does not take rather than ignore it.
    let given = [
        ("--name", !names.is_empty()),
        ("--force", force),
        ("--server", server),
        ("--days", days.is_some()),
    ];
    check_usage(&positional, &given)?;
    let days = days.unwrap_or(30);
    std::fs::create_dir_all(&dir)
        .map_err(|e| PkiError(format!("cannot create {}: {e}", dir.display())))?;
    // One command at a time in a directory: two `revoke`s at once each read the CRL and wrote
    // it back with only their own serial added, so the first revocation was lost although it
    // had been said; two `init`s could pair one's key with the other's certificate.
    let _lock = lock(&dir)?;
    let l = Layout(&dir);
    let ca = || {
        read_pair(&l.ca(), &l.ca_key())
            .map_err(|e| PkiError(format!("{e} (run `gateway certs init` first)")))
    };
    match positional.first().map(String::as_str) {
        Some("init") => {
            // The key alone is the CA too: its certificate can be issued again from it.
            if let Some(there) = [l.ca(), l.ca_key()].into_iter().find(|p| p.exists()) {
                if !force {
                    return Err(PkiError(format!(
                        "{} exists; --force replaces the CA (and invalidates every certificate it signed)",
                        there.display()
                    )));
                }
            }
            issue_to(
                &l.ca(),
                &l.ca_key(),
                "gateway development CA",
                Kind::Ca,
                None,
                -1,
                3650,
            )?;
            println!(
                "CA written: {} and {}",
                l.ca().display(),
                l.ca_key().display()
            );
        }
        Some("server") => {
            let (ca, ca_key) = ca()?;
            if names.is_empty() {
                names = vec!["localhost".into(), "127.0.0.1".into()];
            }
            if let Some(old) = still_in_force(&l.server(), &ca, &l.crl())? {
                if !force {
                    return Err(PkiError(format!(
                        "{} exists: {old}. --force replaces it and its key (a server still using them keeps working until it restarts)",
                        l.server().display()
                    )));
                }
            }
            issue_to(
                &l.server(),
                &l.server_key(),
                &names[0],
                Kind::Server(&names),
                Some((&ca, &ca_key)),
                -1,
                825,
            )?;
            println!(
                "server certificate for {} written: {}",
                names.join(", "),
                l.server().display()
            );
        }
        Some("device") => {
            let name = positional
                .get(1)
                .ok_or_else(|| PkiError(format!("device needs a NAME\n{USAGE}")))?;
            check_device_name(name)?;
            let (ca, ca_key) = ca()?;
            replacing(&l, name, &ca, force)?;
            issue_to(
                &l.device(name),
                &l.device_key(name),
                name,
                Kind::Device,
                Some((&ca, &ca_key)),
                -1,
                825,
            )?;
            println!(
                "device certificate for {name} written: {}",
                l.device(name).display()
            );
        }
        Some("revoke") => {
            let (path, what, readers) = match (server, positional.get(1)) {
                (true, None) => (
                    l.server(),
                    "the server certificate".to_owned(),
                    "copy it to every device (the uplink's crl_file) and reload them, then issue the server a new certificate (`gateway certs server`)",
                ),
                (false, Some(name)) => (
                    l.device(name),
                    format!("device {name}"),
                    "copy it to the server and reload the ingress that reads it (client_crl_file)",
                ),
                _ => {
                    return Err(PkiError(format!(
                        "revoke needs a device NAME, or --server\n{USAGE}"
                    )))
                }
            };
            let (ca, ca_key) = ca()?;
            let pem = std::fs::read(&path)
                .map_err(|e| PkiError(format!("cannot read {}: {e}", path.display())))?;
            let cert = openssl::x509::X509::from_pem(&pem)
                .map_err(|e| PkiError(format!("{}: {e}", path.display())))?;
            let listed = revoke(&l.crl(), &ca, &ca_key, &[&cert], days)?;
            println!(
                "{what} revoked: {} lists {listed} certificate(s), valid {days} days; {readers}",
                l.crl().display()
            );
        }
        Some("request") => {
            let name = positional
                .get(1)
                .ok_or_else(|| PkiError(format!("request needs a NAME\n{USAGE}")))?;
            check_device_name(name)?;
            let (key_path, csr_path) = (l.device_key(name), l.device_request(name));
            if key_path.exists() && !force {
                return Err(PkiError(format!(
                    "{} exists; --force makes a new key in its place (the certificate of the old one stops working on this device once the new one is installed)",
                    key_path.display()
                )));
            }
            let key = new_key()?;
            let pem = request(name, &key)?;
            // As one: a request that cannot be written leaves the old key (and its
            // certificate) working, not a new key without its request.
            gateway_pki::replace_pair(
                (&key_path, &gateway_pki::key_pem(&key)?),
                (&csr_path, &pem),
            )?;
            println!(
                "key written: {} (it stays here); request written: {}\ntake the request to the CA's machine and run `gateway certs sign {}` there, then copy back device-{name}.pem and ca.pem",
                key_path.display(),
                csr_path.display(),
                csr_path.file_name().unwrap_or_default().to_string_lossy()
            );
        }
        Some("sign") => {
            let file = positional
                .get(1)
                .ok_or_else(|| PkiError(format!("sign needs a FILE.csr\n{USAGE}")))?;
            let pem =
                std::fs::read(file).map_err(|e| PkiError(format!("cannot read {file}: {e}")))?;
            let (ca, ca_key) = ca()?;
            // Issued first, checked before anything is written: the name is the request's.
            let (name, cert) = issue_for_request(&pem, (&ca, &ca_key), 825)
                .map_err(|e| PkiError(format!("{file}: {e}")))?;
            check_device_name(&name)?;
            replacing(&l, &name, &ca, force)?;
            gateway_pki::write_cert(&l.device(&name), &cert)?;
            println!(
                "device certificate for {name} written: {}; copy it and {} to the device's certificate directory",
                l.device(&name).display(),
                l.ca().display()
            );
        }
        _ => return Err(PkiError(USAGE.into())),
    }
    Ok(())
}

/// Refuses what a command does not take: a second NAME (`revoke pi-01 pi-02` revoked pi-01
/// alone and said only that), or an option it would ignore (`--days` outside `revoke`).
fn check_usage(positional: &[String], given: &[(&str, bool)]) -> Result<(), PkiError> {
    let Some(cmd) = positional.first().map(String::as_str) else {
        return Err(PkiError(USAGE.into()));
    };
    // Each command's most words after it, and the options it takes beside --dir.
    let (most, options): (usize, &[&str]) = match cmd {
        "init" => (0, &["--force"]),
        "server" => (0, &["--name", "--force"]),
        "device" | "request" | "sign" => (1, &["--force"]),
        "revoke" => (1, &["--server", "--days"]),
        _ => return Err(PkiError(USAGE.into())),
    };
    if let Some(extra) = positional.get(1 + most) {
        let what = match cmd {
            "revoke" => {
                let each: Vec<String> = positional[1..]
                    .iter()
                    .map(|n| format!("`gateway certs revoke {n}`"))
                    .collect();
                format!(
                    "revoke takes one NAME at a time: nothing was revoked; run {}",
                    each.join(", then ")
                )
            }
            _ => format!("{cmd} takes {most} argument(s); {extra:?} is one too many"),
        };
        return Err(PkiError(format!("{what}\n{USAGE}")));
    }
    if let Some((o, _)) = given
        .iter()
        .find(|(o, given)| *given && !options.contains(o))
    {
        return Err(PkiError(format!("{cmd} does not take {o}\n{USAGE}")));
    }
    Ok(())
}

/// Refuses a device name the ingress would not take as an identity (that would lock the
/// device out) or that would not make a file name.
fn check_device_name(name: &str) -> Result<(), PkiError> {
    if !gateway_pki::valid_identity(name)
        || name.len() > 128
        || name.contains('/')
        || name.starts_with('.')
    {
        return Err(PkiError(format!(
            "{name:?} cannot be a device identity: 1 to 128 bytes (what a device's [gateway] device takes), no control or invisible characters, no white space at either end, no '/', not starting with '.'"
        )));
    }
    Ok(())
}

/// Refuses, unless `force`, to replace device `name`'s certificate while it is still in force.
fn replacing(l: &Layout<'_>, name: &str, ca: &X509, force: bool) -> Result<(), PkiError> {
    if let Some(old) = still_in_force(&l.device(name), ca, &l.crl())? {
        if !force {
            return Err(PkiError(format!(
                "{} exists: {old}. If the device was lost or stolen, revoke it first (`gateway certs revoke {name}`), then issue the new one; a certificate that is replaced before it is revoked can no longer be revoked by name. --force replaces it anyway",
                l.device(name).display()
            )));
        }
        eprintln!(
            "replacing {}: {old}; it stays valid until it expires",
            l.device(name).display()
        );
    }
    Ok(())
}

/// The certificate at `path`, if `ca` issued it and it is neither expired nor listed in the
/// CRL at `crl`: its serial and end, in words. `None` when there is none, or it is of no use
/// any more (another CA's, expired, revoked, unreadable).
fn still_in_force(path: &Path, ca: &X509, crl: &Path) -> Result<Option<String>, PkiError> {
    let Some(cert) = std::fs::read(path)
        .ok()
        .and_then(|p| X509::from_pem(&p).ok())
    else {
        return Ok(None);
    };
    let ours = ca
        .public_key()
        .and_then(|k| cert.verify(&k))
        .unwrap_or(false);
    let now = Asn1Time::days_from_now(0).map_err(|e| PkiError(format!("time: {e}")))?;
    if !ours || cert.not_after() < now {
        return Ok(None);
    }
    let serial = cert
        .serial_number()
        .to_bn()
        .map_err(|e| PkiError(format!("serial: {e}")))?;
    if let Ok(pem) = std::fs::read(crl) {
        let list = X509Crl::from_pem(&pem)
            .map_err(|e| PkiError(format!("the CRL {}: {e}", crl.display())))?;
        for r in list.get_revoked().into_iter().flatten() {
            if r.serial_number().to_bn().is_ok_and(|s| s == serial) {
                return Ok(None);
            }
        }
    }
    let hex = serial
        .to_hex_str()
        .map_err(|e| PkiError(format!("serial: {e}")))?;
    Ok(Some(format!(
        "a certificate of this CA, serial {hex}, valid until {}, not revoked",
        cert.not_after()
    )))
}
