//! `gateway-certs` as a person runs it.

use openssl::x509::{X509Crl, X509};
use std::{path::Path, process::Command};

fn certs(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway-certs"))
        .args(args)
        .args(["--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn serial(dir: &Path, name: &str) -> String {
    let pem = std::fs::read(dir.join(format!("device-{name}.pem"))).unwrap();
    let cert = X509::from_pem(&pem).unwrap();
    cert.serial_number()
        .to_bn()
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_string()
}

fn revoked(dir: &Path) -> Vec<String> {
    let crl = X509Crl::from_pem(&std::fs::read(dir.join("crl.pem")).unwrap()).unwrap();
    crl.get_revoked()
        .into_iter()
        .flatten()
        .map(|r| {
            r.serial_number()
                .to_bn()
                .unwrap()
                .to_hex_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// "pi-07 was stolen: issue a replacement, then revoke pi-07" would revoke the replacement and
/// leave the stolen certificate valid. A device certificate in force is not replaced unless
/// asked; once revoked (or with --force) it is.
#[test]
fn a_device_certificate_in_force_is_not_replaced_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(certs(d, &["init"]).0);
    assert!(certs(d, &["device", "pi-07"]).0);
    let stolen = serial(d, "pi-07");
    let (ok, err) = certs(d, &["device", "pi-07"]);
    assert!(!ok, "replaced silently");
    assert!(
        err.contains(&format!("serial {stolen}"))
            && err.contains("gateway certs revoke pi-07")
            && err.contains("--force"),
        "{err}"
    );
    assert_eq!(serial(d, "pi-07"), stolen, "the file is untouched");
    // Revoked first, as the message says: the new one is issued, and the CRL lists the old.
    assert!(certs(d, &["revoke", "pi-07"]).0);
    let (ok, err) = certs(d, &["device", "pi-07"]);
    assert!(ok, "{err}");
    let replacement = serial(d, "pi-07");
    assert_ne!(replacement, stolen);
    assert_eq!(revoked(d), [stolen]);
    // --force replaces one in force, and says it stays valid.
    let (ok, err) = certs(d, &["device", "pi-07", "--force"]);
    assert!(ok && err.contains("stays valid until it expires"), "{err}");
    assert_ne!(serial(d, "pi-07"), replacement);
    // A certificate of another CA (the CA was made again) is replaced without asking.
    assert!(certs(d, &["init", "--force"]).0);
    assert!(certs(d, &["device", "pi-07"]).0);
}
