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

/// A device's key is made on the device and never leaves it; the CA's key stays on the CA's
/// machine: the device sends a request, the CA's machine signs it. Before, `device NAME` made
/// the key next to the CA's, so the documented install put ca.key on every Pi.
#[test]
fn a_device_key_stays_on_the_device_and_the_ca_key_on_the_ca() {
    let (ca_dir, dev_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ca, dev) = (ca_dir.path(), dev_dir.path());
    assert!(certs(ca, &["init"]).0);
    let (ok, err) = certs(dev, &["request", "pi-01"]);
    assert!(ok, "{err}");
    let csr = dev.join("device-pi-01.csr");
    assert!(dev.join("device-pi-01.key").exists() && csr.exists());
    let (ok, err) = certs(ca, &["sign", csr.to_str().unwrap()]);
    assert!(ok, "{err}");
    let names = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            // Each command locks its directory with `.lock`.
            .filter(|n| n != ".lock")
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(dev), ["device-pi-01.csr", "device-pi-01.key"]);
    assert_eq!(names(ca), ["ca.key", "ca.pem", "device-pi-01.pem"]);

    // The certificate is for the device's own key, named as it asked, issued by the CA.
    let cert = X509::from_pem(&std::fs::read(ca.join("device-pi-01.pem")).unwrap()).unwrap();
    let key = openssl::pkey::PKey::private_key_from_pem(
        &std::fs::read(dev.join("device-pi-01.key")).unwrap(),
    )
    .unwrap();
    assert!(cert.public_key().unwrap().public_eq(&key));
    let ca_cert = X509::from_pem(&std::fs::read(ca.join("ca.pem")).unwrap()).unwrap();
    assert!(cert.verify(&ca_cert.public_key().unwrap()).unwrap());
    let cn = cert
        .subject_name()
        .entries()
        .next()
        .unwrap()
        .data()
        .to_string();
    assert_eq!(cn.unwrap(), "pi-01");

    // The CA keeps its copy, so that revoke works by name there; a second request for a
    // device in force is refused unless asked.
    assert!(certs(dev, &["request", "pi-01"]).1.contains("--force"));
    // A new key that cannot be written (here a directory where it is written first) leaves
    // the old one as it was: the device keeps a working key.
    let old_key = std::fs::read(dev.join("device-pi-01.key")).unwrap();
    std::fs::create_dir(dev.join(".device-pi-01.key.new")).unwrap();
    let (ok, err) = certs(dev, &["request", "pi-01", "--force"]);
    assert!(!ok && err.contains("cannot write"), "{err}");
    assert_eq!(
        std::fs::read(dev.join("device-pi-01.key")).unwrap(),
        old_key
    );
    std::fs::remove_dir(dev.join(".device-pi-01.key.new")).unwrap();
    assert!(certs(dev, &["request", "pi-01", "--force"]).0);
    assert_ne!(
        std::fs::read(dev.join("device-pi-01.key")).unwrap(),
        old_key
    );
    let (ok, err) = certs(ca, &["sign", csr.to_str().unwrap()]);
    assert!(!ok && err.contains("revoke it first"), "{err}");
    // A link where the CRL is written first (.crl.pem.new) is replaced, not written through.
    let sentinel = ca.join("sentinel");
    std::fs::write(&sentinel, "keep").unwrap();
    std::os::unix::fs::symlink(&sentinel, ca.join(".crl.pem.new")).unwrap();
    assert!(certs(ca, &["revoke", "pi-01"]).0);
    assert_eq!(std::fs::read_to_string(&sentinel).unwrap(), "keep");
    std::fs::remove_file(&sentinel).unwrap();
    // The server's certificate goes into the same CRL, beside the device's.
    assert!(certs(ca, &["server"]).0);
    let (ok, err) = certs(ca, &["revoke", "--server"]);
    assert!(ok, "{err}");
    assert_eq!(revoked(ca).len(), 2);
    assert!(certs(ca, &["revoke"])
        .1
        .contains("a device NAME, or --server"));
    assert!(certs(ca, &["sign", csr.to_str().unwrap()]).0);

    // A request whose signature is not by the key it holds (someone asking for a certificate
    // of another's key) is refused, and so is one for a name that cannot be an identity.
    let mut other = openssl::x509::X509NameBuilder::new().unwrap();
    other.append_entry_by_text("CN", "pi-02").unwrap();
    let mut req = openssl::x509::X509ReqBuilder::new().unwrap();
    req.set_subject_name(&other.build()).unwrap();
    req.set_pubkey(&key).unwrap();
    let g = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
    let not_its_key =
        openssl::pkey::PKey::from_ec_key(openssl::ec::EcKey::generate(&g).unwrap()).unwrap();
    req.sign(&not_its_key, openssl::hash::MessageDigest::sha256())
        .unwrap();
    let req = req.build();
    let forged = dev.join("forged.csr");
    std::fs::write(&forged, req.to_pem().unwrap()).unwrap();
    let (ok, err) = certs(ca, &["sign", forged.to_str().unwrap()]);
    assert!(!ok && err.contains("not signed by the key"), "{err}");
    assert!(!ca.join("device-pi-02.pem").exists());
    for name in [" pi-03", "pi-\u{202e}03", "pi\u{2028}03"] {
        let (ok, err) = certs(dev, &["request", name]);
        assert!(
            !ok && err.contains("cannot be a device identity"),
            "{name:?}: {err}"
        );
    }
}

/// Commands in one directory run one at a time: each `revoke` reads the CRL and writes it back
/// with its serial added, and two at once each wrote theirs over the other's.
#[test]
fn revocations_made_at_once_are_all_in_the_crl() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    assert!(certs(d, &["init"]).0);
    let names: Vec<String> = (0..8).map(|i| format!("pi-{i:02}")).collect();
    for n in &names {
        assert!(certs(d, &["device", n]).0);
    }
    let serials: Vec<String> = names.iter().map(|n| serial(d, n)).collect();
    let children: Vec<_> = names
        .iter()
        .map(|n| {
            Command::new(env!("CARGO_BIN_EXE_gateway-certs"))
                .args(["revoke", n, "--dir", d.to_str().unwrap()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut got = revoked(d);
    got.sort();
    let mut want = serials;
    want.sort();
    assert_eq!(got, want);
    // No temporary file is left beside them.
    let left: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".new"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// What a command does not take is refused before anything is done, not ignored: `revoke
/// pi-01 pi-02` revoked pi-01 alone and said only that, so pi-02 stayed trusted unnoticed.
#[test]
fn words_and_options_a_command_does_not_take_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(certs(d, &["init"]).0);
    assert!(certs(d, &["device", "pi-01"]).0);
    assert!(certs(d, &["device", "pi-02"]).0);
    let (ok, err) = certs(d, &["revoke", "pi-01", "pi-02"]);
    assert!(
        !ok && err.contains("one NAME at a time: nothing was revoked")
            && err.contains("`gateway certs revoke pi-01`, then `gateway certs revoke pi-02`"),
        "{err}"
    );
    assert!(!d.join("crl.pem").exists(), "nothing revoked");
    for (args, refused) in [
        (
            &["device", "pi-03", "--days", "5"][..],
            "device does not take --days",
        ),
        (&["init", "--name", "x"][..], "init does not take --name"),
        (
            &["device", "pi-03", "--server"][..],
            "device does not take --server",
        ),
        (&["server", "extra"][..], "\"extra\" is one too many"),
        (
            &["revoke", "pi-01", "--force"][..],
            "revoke does not take --force",
        ),
    ] {
        let (ok, err) = certs(d, args);
        assert!(!ok && err.contains(refused), "{args:?}: {err}");
    }
    assert!(!d.join("device-pi-03.pem").exists());
    // What each takes still works.
    let (ok, err) = certs(d, &["revoke", "pi-01", "--days", "5"]);
    assert!(ok, "{err}");
    assert_eq!(revoked(d).len(), 1);
}

/// A CRL that is there but cannot be read stops `revoke`: it used to be taken for "no CRL
/// yet", and the new CRL, listing only the new revocation, trusted again every certificate
/// revoked before (a CRL left root-only by an earlier `sudo gateway certs revoke`, then a
/// revoke as the CA's owner). Root reads any file, so a link to itself stands in for the
/// unreadable file here: reading it fails, and the rename that writes a CRL would replace it.
#[test]
fn a_crl_that_cannot_be_read_or_is_another_cas_stops_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(certs(d, &["init"]).0);
    assert!(certs(d, &["device", "pi-01"]).0);
    assert!(certs(d, &["device", "pi-02"]).0);
    let crl = d.join("crl.pem");
    std::os::unix::fs::symlink("crl.pem", &crl).unwrap();
    let (ok, err) = certs(d, &["revoke", "pi-02"]);
    assert!(
        !ok && err.contains("cannot read the CRL") && err.contains("nothing was revoked"),
        "{err}"
    );
    assert!(
        crl.symlink_metadata().unwrap().is_symlink(),
        "left as it was"
    );

    // A CRL another CA signed is not taken as this CA's.
    std::fs::remove_file(&crl).unwrap();
    let other = tempfile::tempdir().unwrap();
    assert!(certs(other.path(), &["init"]).0);
    assert!(certs(other.path(), &["device", "pi-09"]).0);
    assert!(certs(other.path(), &["revoke", "pi-09"]).0);
    std::fs::copy(other.path().join("crl.pem"), &crl).unwrap();
    let (ok, err) = certs(d, &["revoke", "pi-02"]);
    assert!(!ok && err.contains("not signed by this CA"), "{err}");
    assert_eq!(revoked(d), revoked(other.path()), "left as it was");

    // This CA's own CRL is carried over.
    std::fs::remove_file(&crl).unwrap();
    assert!(certs(d, &["revoke", "pi-01"]).0);
    assert!(certs(d, &["revoke", "pi-02"]).0);
    let mut want = vec![serial(d, "pi-01"), serial(d, "pi-02")];
    want.sort();
    let mut got = revoked(d);
    got.sort();
    assert_eq!(got, want);
}

/// `init` replaces a CA only with --force, and a CA's key without its certificate is the CA
/// still: it used to be overwritten when `ca.pem` alone was missing.
#[test]
fn init_keeps_a_ca_key_whose_certificate_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(certs(d, &["init"]).0);
    let (ok, err) = certs(d, &["init"]);
    assert!(!ok && err.contains("ca.pem exists; --force"), "{err}");
    let key = std::fs::read(d.join("ca.key")).unwrap();
    std::fs::remove_file(d.join("ca.pem")).unwrap();
    let (ok, err) = certs(d, &["init"]);
    assert!(!ok && err.contains("ca.key exists; --force"), "{err}");
    assert_eq!(std::fs::read(d.join("ca.key")).unwrap(), key);
    assert!(certs(d, &["init", "--force"]).0);
    assert_ne!(std::fs::read(d.join("ca.key")).unwrap(), key);
}

/// A request is written by whoever holds the device. One with a weak key (RSA-1024, an EC
/// key on a 192-bit curve, DSA) was signed as readily as a P-256 one: a certificate that
/// whoever breaks the key could use as that device. Now only strong keys are signed; an RSA
/// key of 2,048 bits and a P-384 key still are.
#[test]
fn a_request_with_a_weak_key_is_not_signed() {
    use openssl::{
        ec::{EcGroup, EcKey},
        nid::Nid,
        pkey::{PKey, Private},
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path();
    assert!(certs(ca, &["init"]).0);
    let ec = |nid: Nid| {
        PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(nid).unwrap()).unwrap())
            .unwrap()
    };
    let rsa = |bits: u32| PKey::from_rsa(openssl::rsa::Rsa::generate(bits).unwrap()).unwrap();
    let dsa = || PKey::from_dsa(openssl::dsa::Dsa::generate(2048).unwrap()).unwrap();
    let sign = |name: &str, key: &PKey<Private>| {
        let mut n = openssl::x509::X509NameBuilder::new().unwrap();
        n.append_entry_by_text("CN", name).unwrap();
        let mut req = openssl::x509::X509ReqBuilder::new().unwrap();
        req.set_subject_name(&n.build()).unwrap();
        req.set_pubkey(key).unwrap();
        req.sign(key, openssl::hash::MessageDigest::sha256())
            .unwrap();
        let path = ca.join(format!("{name}.csr"));
        std::fs::write(&path, req.build().to_pem().unwrap()).unwrap();
        certs(ca, &["sign", path.to_str().unwrap()])
    };
    for (name, key, what) in [
        ("pi-rsa", rsa(1024), "RSA of 1024 bits"),
        ("pi-p192", ec(Nid::X9_62_PRIME192V1), "on curve prime192v1"),
        ("pi-dsa", dsa(), "DSA"),
    ] {
        let (ok, err) = sign(name, &key);
        assert!(
            !ok && err.contains(what) && err.contains("2048 bits or more"),
            "{name}: {err}"
        );
        assert!(!ca.join(format!("device-{name}.pem")).exists(), "{name}");
    }
    for (name, key) in [("pi-rsa2048", rsa(2048)), ("pi-p384", ec(Nid::SECP384R1))] {
        let (ok, err) = sign(name, &key);
        assert!(ok, "{name}: {err}");
        assert!(ca.join(format!("device-{name}.pem")).exists(), "{name}");
    }
}
