//! `cargo xtask dist [--target TRIPLE]`: the build that goes onto a Pi.
//!
//! The development build links the system's shared OpenSSL. On the Pi that library alone is
//! about 4.7 MB resident (libcrypto and libssl, nearly all of it mapped in), more than everything
//! else the gateway needs. The distribution links instead a static OpenSSL 3.5 (the LTS
//! release, from the `openssl-src` crate pinned in Cargo.lock) configured with only what the
//! link, `gateway certs` and the MySQL sink use: DTLS 1.2 and TLS 1.2, ECDHE on the NIST curves
//! (P-256, as the original deployment, P-384, P-521), ECDSA and RSA certificates, AES-GCM,
//! AES-CCM, ChaCha20-Poly1305, PSK. Everything else is left out: TLS 1.3 (the link is DTLS 1.2;
//! MariaDB speaks TLS 1.2 too), X25519/X448 and Ed25519/Ed448, legacy ciphers, DH, DSA, engines,
//! CMS, OCSP, QUIC, the post-quantum schemes, the configuration file. The linker then drops
//! what nothing calls.
//!
//! The cost: OpenSSL security fixes reach the Pi through a rebuild (`cargo update -p
//! openssl-src`, then `cargo xtask dist`), not through the system's package updates.

use crate::{cargo, root, run};
use anyhow::{bail, Context, Result};
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// OpenSSL's `Configure` options of the distribution build.
const OPENSSL_OPTIONS: &[&str] = &[
    // A static library, nothing else.
    "no-shared",
    "no-module",
    "no-tests",
    "no-apps",
    "no-docs",
    "no-dso",
    "no-engine",
    "no-legacy",
    "no-autoload-config",
    "no-uplink",
    "no-afalgeng",
    "no-padlockeng",
    "no-capieng",
    "no-loadereng",
    "no-devcryptoeng",
    "no-ktls",
    "no-async",
    "no-thread-pool",
    "no-default-thread-pool",
    "no-ui-console",
    "no-filenames",
    "no-ssl-trace",
    // No SSLKEYLOGFILE: session keys never go to a file.
    "no-sslkeylog",
    "no-unit-test",
    "no-fips",
    // Protocols and features the gateway does not speak.
    "no-ssl3",
    "no-tls1",
    "no-tls1_1",
    "no-tls1_3",
    "no-weak-ssl-ciphers",
    "no-quic",
    "no-srtp",
    "no-nextprotoneg",
    "no-ct",
    "no-ocsp",
    "no-cms",
    "no-ts",
    "no-srp",
    "no-cmp",
    "no-http",
    "no-rfc3779",
    "no-sctp",
    "no-comp",
    "no-zlib",
    "no-brotli",
    "no-zstd",
    "no-multiblock",
    // Algorithms no suite of the gateway uses.
    "no-aria",
    "no-bf",
    "no-blake2",
    "no-camellia",
    "no-cast",
    "no-des",
    "no-dh",
    "no-dsa",
    "no-ec2m",
    "no-ecx",
    "no-gost",
    "no-idea",
    "no-md4",
    "no-mdc2",
    "no-ocb",
    "no-rc2",
    "no-rc4",
    "no-rc5",
    "no-rmd160",
    "no-scrypt",
    "no-seed",
    "no-siphash",
    "no-siv",
    "no-sm2",
    "no-sm3",
    "no-sm4",
    "no-whirlpool",
    "no-argon2",
    "no-ml-kem",
    "no-ml-dsa",
    "no-slh-dsa",
];

/// The host's target triple, from `rustc -vV`.
fn host_triple() -> Result<String> {
    let out = Command::new("rustc").arg("-vV").output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV names no host")
}

/// OpenSSL's name for a Rust target.
fn openssl_platform(triple: &str) -> Result<&'static str> {
    Ok(match triple {
        "x86_64-unknown-linux-gnu" => "linux-x86_64",
        "aarch64-unknown-linux-gnu" => "linux-aarch64",
        "armv7-unknown-linux-gnueabihf" => "linux-armv4",
        other => bail!(
            "no OpenSSL platform known for {other}; the distribution targets x86_64, aarch64 and armv7 Linux"
        ),
    })
}

/// The prefix of Debian's cross compiler for `triple` (gcc-aarch64-linux-gnu,
/// gcc-arm-linux-gnueabihf), or `None` when building for this machine.
fn cross_prefix(triple: &str, host: &str) -> Option<&'static str> {
    let prefix = match triple {
        "aarch64-unknown-linux-gnu" => "aarch64-linux-gnu-",
        _ => "arm-linux-gnueabihf-",
    };
    (triple != host).then_some(prefix)
}

/// Says what is missing for a build for `triple` before anything is built: the tools that
/// build OpenSSL, and for another target its Rust standard library and a cross compiler.
fn preflight(triple: &str, host: &str) -> Result<()> {
    let runs = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    openssl_platform(triple)?;
    for tool in ["perl", "make"] {
        if !runs(tool, "--version") {
            bail!("`{tool}` is needed to build OpenSSL: apt install perl make");
        }
    }
    if let Some(prefix) = cross_prefix(triple, host) {
        let gcc = format!("{prefix}gcc");
        if !runs(&gcc, "--version") {
            bail!(
                "`{gcc}` is needed to build for {triple}: apt install gcc-{}, and set CARGO_TARGET_{}_LINKER={gcc}",
                prefix.trim_end_matches('-'),
                triple.to_uppercase().replace('-', "_")
            );
        }
        let installed = Command::new("rustup")
            .args(["target", "list", "--installed"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l == triple)
            });
        if let Ok(false) = installed {
            bail!(
                "Rust's standard library for {triple} is not installed: rustup target add {triple}"
            );
        }
    }
    Ok(())
}

/// Builds the trimmed static OpenSSL for `triple` under `target/openssl/TRIPLE` (once; a stamp
/// holding the version and options says whether the build there is current). Returns the
/// install prefix.
pub fn openssl(triple: &str, host: &str) -> Result<PathBuf> {
    let base = root().join("target").join("openssl");
    let prefix = base.join(triple);
    let stamp = prefix.join("BUILT");
    let want = format!(
        "OpenSSL {} for {triple}: {}\n",
        openssl_src::version(),
        OPENSSL_OPTIONS.join(" ")
    );
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(prefix);
    }
    let src = base.join(format!("{triple}-src"));
    eprintln!(
        "building OpenSSL {} (static, trimmed) for {triple} in {} (once; a few minutes)",
        openssl_src::version(),
        src.display()
    );
    let _ = std::fs::remove_dir_all(&src);
    let _ = std::fs::remove_dir_all(&prefix);
    std::fs::create_dir_all(&base)?;
    let mut cp = Command::new("cp");
    cp.arg("-R").arg(openssl_src::source_dir()).arg(&src);
    run(cp)?;

    let mut configure = Command::new("perl");
    configure
        .current_dir(&src)
        .arg("./Configure")
        .arg(openssl_platform(triple)?)
        .arg(format!("--prefix={}", prefix.display()))
        .arg("--libdir=lib")
        // Debian's and Raspberry Pi OS's: where the system's CA certificates are, for an uplink
        // configured without `ca_file`.
        .arg("--openssldir=/usr/lib/ssl")
        .args(OPENSSL_OPTIONS)
        .args(["-fPIC", "-Os", "-ffunction-sections", "-fdata-sections"]);
    if let Some(prefix) = cross_prefix(triple, host) {
        configure.arg(format!("--cross-compile-prefix={prefix}"));
    }
    run(configure)?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut make = Command::new("make");
    make.current_dir(&src)
        .arg(format!("-j{jobs}"))
        .arg("build_libs")
        .env_remove("MAKEFLAGS");
    run(make)?;
    let mut install = Command::new("make");
    install.current_dir(&src).arg("install_dev");
    run(install)?;
    std::fs::write(&stamp, want)?;
    let _ = std::fs::remove_dir_all(&src);
    Ok(prefix)
}

/// What goes into the distribution directory: the host, the certificate tool and the plugins.
pub const FILES: &[&str] = &[
    "gateway",
    "gateway-certs",
    "libconsole.so",
    "libexample.so",
    "libds18b20.so",
    "libublox7.so",
    "libcoaps_uplink.so",
    "libcoaps_ingress.so",
    "libsqlite.so",
    "libmysql.so",
];

/// Builds the distribution for `target` (default: this machine) and returns its directory,
/// `target/dist/gateway-TRIPLE`, which holds the files of [`FILES`], ready to copy to
/// `/opt/gateway/`.
pub fn dist(target: Option<&str>) -> Result<PathBuf> {
    let host = host_triple()?;
    let triple = target.unwrap_or(&host).to_owned();
    preflight(&triple, &host)?;
    let openssl = openssl(&triple, &host)?;
    let target_dir = root().join("target").join("dist");
    let mut c = cargo();
    c.args(["build", "--release", "--target", &triple])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("OPENSSL_DIR", &openssl)
        .env("OPENSSL_STATIC", "1")
        .env_remove("OPENSSL_LIB_DIR")
        .env_remove("OPENSSL_INCLUDE_DIR");
    run(c)?;
    let built = target_dir.join(&triple).join("release");
    let out = target_dir.join(format!("gateway-{triple}"));
    // Afresh, so that nothing of an earlier layout is left to be loaded.
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    for name in FILES {
        copy(&built.join(name), &out.join(name))?;
    }
    Ok(out)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    // Replace rather than overwrite: a running gateway may have the old file mapped.
    let _ = std::fs::remove_file(to);
    std::fs::copy(from, to).with_context(|| format!("copy {}", from.display()))?;
    Ok(())
}
