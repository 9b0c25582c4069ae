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

use crate::{cargo, has, root, run};
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

/// A target the distribution is built for.
struct Target {
    /// Rust's name for it.
    triple: &'static str,
    /// OpenSSL's.
    openssl: &'static str,
    /// The prefix of Debian's cross compiler for it (package `gcc-PREFIX`, without the dash).
    cross_prefix: &'static str,
}

const TARGETS: &[Target] = &[
    Target {
        triple: "x86_64-unknown-linux-gnu",
        openssl: "linux-x86_64",
        cross_prefix: "x86_64-linux-gnu-",
    },
    Target {
        triple: "aarch64-unknown-linux-gnu",
        openssl: "linux-aarch64",
        cross_prefix: "aarch64-linux-gnu-",
    },
    Target {
        triple: "armv7-unknown-linux-gnueabihf",
        openssl: "linux-armv4",
        cross_prefix: "arm-linux-gnueabihf-",
    },
];

fn target(triple: &str) -> Result<&'static Target> {
    TARGETS.iter().find(|t| t.triple == triple).with_context(|| {
        format!("no OpenSSL platform known for {triple}; the distribution targets x86_64, aarch64 and armv7 Linux")
    })
}

/// Says what is missing for a build for `triple` before anything is built: the tools that
/// build OpenSSL, and for another target its Rust standard library and a cross compiler.
fn preflight(t: &Target, host: &str) -> Result<()> {
    for tool in ["perl", "make"] {
        if !has(tool) {
            bail!("`{tool}` is needed to build OpenSSL: apt install perl make");
        }
    }
    if t.triple != host {
        let (triple, prefix) = (t.triple, t.cross_prefix);
        let gcc = format!("{prefix}gcc");
        if !has(&gcc) {
            bail!(
                "`{gcc}` is needed to build for {triple}: apt install gcc-{} (it is used as the linker too)",
                prefix.trim_end_matches('-').replace('_', "-"),
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

/// Builds the trimmed static OpenSSL for `t` under `target/openssl/TRIPLE` (once; a stamp
/// holding the version and options says whether the build there is current). Returns the
/// install prefix.
fn openssl(t: &Target, host: &str) -> Result<PathBuf> {
    let triple = t.triple;
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
        .arg(t.openssl)
        .arg(format!("--prefix={}", prefix.display()))
        .arg("--libdir=lib")
        // Debian's and Raspberry Pi OS's: where the system's CA certificates are, for an uplink
        // configured without `ca_file`.
        .arg("--openssldir=/usr/lib/ssl")
        .args(OPENSSL_OPTIONS)
        .args(["-fPIC", "-Os", "-ffunction-sections", "-fdata-sections"]);
    if triple != host {
        configure.arg(format!("--cross-compile-prefix={}", t.cross_prefix));
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

/// What goes into the distribution directory: the host, the certificate tool and the plugins,
/// each with the package that builds it.
pub const FILES: &[(&str, &str)] = &[
    ("gateway", "gateway"),
    ("gateway-pki", "gateway-certs"),
    ("gateway-coap-cli", "gateway-coap"),
    ("gateway-plugin-console", "libconsole.so"),
    ("gateway-plugin-example", "libexample.so"),
    ("gateway-plugin-ds18b20", "libds18b20.so"),
    ("gateway-plugin-ublox7", "libublox7.so"),
    ("gateway-plugin-system", "libsystem.so"),
    ("gateway-plugin-coaps-uplink", "libcoaps_uplink.so"),
    ("gateway-plugin-coaps-ingress", "libcoaps_ingress.so"),
    ("gateway-plugin-sqlite", "libsqlite.so"),
    ("gateway-plugin-mysql", "libmysql.so"),
    ("gateway-plugin-postgres", "libpostgres.so"),
    ("gateway-plugin-mqtt", "libmqtt.so"),
    ("gateway-plugin-nats", "libnats.so"),
];

/// Builds the distribution for `target` (default: this machine) and returns its directory,
/// `target/dist/gateway-TRIPLE`, which holds the files of [`FILES`], ready to copy to
/// `/opt/gateway/`.
pub fn dist(target: Option<&str>) -> Result<PathBuf> {
    let (triple, built) = build_with_openssl(
        target,
        &FILES
            .iter()
            .map(|(package, _)| *package)
            .collect::<Vec<_>>(),
    )?;
    let target_dir = root().join("target").join("dist");
    let out = target_dir.join(format!("gateway-{triple}"));
    // Afresh, so that nothing of an earlier layout is left to be loaded.
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    for (_, name) in FILES {
        copy(&built.join(name), &out.join(name))?;
    }
    Ok(out)
}

/// The load generator (`gateway-load`) as the distribution is built: release, with the
/// trimmed static OpenSSL 3.5, for this machine. Its path.
///
/// The benchmarks run it on the machine of the server they measure, so what it spends per
/// handshake is taken from the server: with OpenSSL 3.0 (Debian 12's), each certificate it
/// parses builds a key decoder, a quarter of its CPU per handshake.
pub fn load_generator() -> Result<PathBuf> {
    let (_, built) = build_with_openssl(None, &["gateway-loadgen"])?;
    Ok(built.join("gateway-load"))
}

/// The server side as the Debian package ships it (`cargo xtask deb`): release, with the
/// trimmed static OpenSSL 3.5, for this machine; the gateway, the coaps ingress and the
/// testkit's null sink, side by side (the gateway loads plugins from its own directory). The
/// gateway's path.
///
/// The ingress benchmark measures this build by default: what a fleet server runs. The
/// development build (`target/release`) links Debian 12's OpenSSL 3.0, which builds a key
/// decoder for each certificate it parses and spends about twice the CPU per handshake.
pub fn server() -> Result<PathBuf> {
    let (_, built) = build_with_openssl(
        None,
        &[
            "gateway",
            "gateway-plugin-coaps-ingress",
            "gateway-testkit-plugins",
        ],
    )?;
    Ok(built.join("gateway"))
}

/// Builds `packages` in release for `target` (default: this machine) against the trimmed
/// static OpenSSL, under `target/dist`; the triple, and the directory the files are in.
fn build_with_openssl(target: Option<&str>, packages: &[&str]) -> Result<(&'static str, PathBuf)> {
    // What ships comes out the same whatever the builder's umask: under 002 (a user's private
    // group, Ubuntu's default) the directories and libraries would be group-writable, which
    // the installed gateway's loader refuses (`/usr/lib/gateway` writable by its group).
    // SAFETY: umask has no preconditions; it sets this process's mask, which children inherit.
    unsafe { libc::umask(0o022) };
    let host = host_triple()?;
    let t = self::target(target.unwrap_or(&host))?;
    let triple = t.triple;
    preflight(t, &host)?;
    let openssl = openssl(t, &host)?;
    let target_dir = root().join("target").join("dist");
    let linker_var = format!(
        "CARGO_TARGET_{}_LINKER",
        triple.to_uppercase().replace('-', "_")
    );
    let mut c = cargo();
    c.args(["build", "--release", "--target", triple])
        .args(packages.iter().flat_map(|package| ["-p", package]))
        .arg("--target-dir")
        .arg(&target_dir)
        .env("OPENSSL_DIR", &openssl)
        .env("OPENSSL_STATIC", "1")
        .env_remove("OPENSSL_LIB_DIR")
        .env_remove("OPENSSL_INCLUDE_DIR");
    if triple != host && std::env::var_os(&linker_var).is_none() {
        // Debian's cross compiler links for the other target.
        c.env(&linker_var, format!("{}gcc", t.cross_prefix));
    }
    run(c)?;
    Ok((triple, target_dir.join(triple).join("release")))
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    // Replace rather than overwrite: a running gateway may have the old file mapped.
    let _ = std::fs::remove_file(to);
    std::fs::copy(from, to).with_context(|| format!("copy {}", from.display()))?;
    // The copy keeps the source's mode, which an earlier build under another umask set.
    use std::os::unix::fs::PermissionsExt;
    let mode = if to.extension().is_some_and(|x| x == "so") {
        0o644
    } else {
        0o755
    };
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}
