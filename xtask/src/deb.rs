//! `cargo xtask deb [--target TRIPLE]...`: Debian packages of the distribution build (static,
//! trimmed OpenSSL; see `dist.rs`), one per architecture: amd64 (`x86_64-unknown-linux-gnu`),
//! arm64 (`aarch64-unknown-linux-gnu`, 64-bit Raspberry Pi OS) and armhf
//! (`armv7-unknown-linux-gnueabihf`, 32-bit Raspberry Pi OS). Built with `dpkg-deb` from a
//! staged tree, no other tool:
//!
//! - `/usr/lib/gateway/`: `gateway`, `gateway-certs`, `gateway-coap` and every plugin (the gateway looks for
//!   plugins beside itself), `/usr/bin/gateway` a link to it;
//! - `/etc/gateway/client.toml` (the Pi role) and `server.toml` (the server role), conffiles,
//!   readable by the `gateway` group only (they may hold secrets); `/etc/gateway/certs/`, owned
//!   by the `gateway` user, mode 0700, for the keys;
//! - `gateway-client.service` and `gateway-server.service`: `Type=notify` with a watchdog,
//!   `systemctl reload` as SIGHUP, run as `gateway` with what systemd can take away taken away;
//!   the client keeps serial ports (group `dialout`, `DeviceAllow`) and reads the w1 sysfs;
//! - `postinst` makes the `gateway` system user and group, `/var/lib/gateway` (mode 0750) and
//!   the certificate directory; nothing is enabled or started (the device name and the
//!   certificates come first).
//!
//! Cross builds use Debian's cross compilers (`gcc-aarch64-linux-gnu`,
//! `gcc-arm-linux-gnueabihf`) and `rustup target add TRIPLE`. `Depends: libc6` names the glibc
//! the files need (read from them): 2.36 for amd64, whose build packs relative relocations
//! (DT_RELR), 2.34 for the Pi's (Debian 12's cross linkers cannot pack them): Debian 12 and
//! Raspberry Pi OS 12 (Bookworm) or later.

use crate::{dist, root, run};
use anyhow::{bail, Context, Result};
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

/// Debian's architecture name for a Rust target.
pub fn arch(triple: &str) -> Result<&'static str> {
    Ok(match triple {
        "x86_64-unknown-linux-gnu" => "amd64",
        "aarch64-unknown-linux-gnu" => "arm64",
        "armv7-unknown-linux-gnueabihf" => "armhf",
        t => bail!("no Debian architecture known for {t}"),
    })
}

/// The package's version: the host crate's.
fn version() -> Result<String> {
    let manifest = std::fs::read_to_string(root().join("host/Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \"")?.strip_suffix('"'))
        .map(str::to_owned)
        .context("host/Cargo.toml has no version")
}

/// The systemd unit of a role. Shared by both: the hardening, which takes away everything the
/// gateway does not use (it needs no capability: it binds ports above 1024, reads sysfs and
/// files, and talks to the network).
fn unit(role: &str, description: &str, extra: &str) -> String {
    format!(
        r#"[Unit]
Description={description}
Documentation=file:///usr/share/doc/gateway/README.md
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart=/usr/bin/gateway run --config /etc/gateway/{role}.toml
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5s
WatchdogSec=30s
# Above the config's shutdown_timeout (10 s by default), so that the drain can finish.
TimeoutStopSec=30s
User=gateway
Group=gateway
StateDirectory=gateway
StateDirectoryMode=0750
UMask=0027
# No core file of a process that holds the secrets (the gateway also makes itself not
# dumpable; this covers what runs before that).
LimitCORE=0
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
PrivateMounts=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
# adjtimex, to read whether the clock is synchronised (gateway_clock_synchronized); without
# CAP_SYS_TIME the kernel refuses any change of the clock (ProtectClock would refuse the read).
SystemCallFilter=adjtimex
SystemCallErrorNumber=EPERM
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
{extra}
[Install]
WantedBy=multi-user.target
"#
    )
}

fn units() -> [(&'static str, String); 2] {
    [
        (
            "gateway-client.service",
            unit(
                "client",
                "IoT gateway, the Raspberry Pi role: sensors to the server over CoAP/DTLS",
                "# Serial GPS receivers (USB ACM, USB serial, the Pi's UARTs); the w1 sysfs is read\n\
                 # through /sys, which stays readable.\n\
                 SupplementaryGroups=dialout\n\
                 DevicePolicy=closed\n\
                 DeviceAllow=char-ttyACM rw\n\
                 DeviceAllow=char-ttyUSB rw\n\
                 DeviceAllow=char-ttyAMA rw\n\
                 DeviceAllow=char-ttyS rw\n",
            ),
        ),
        (
            "gateway-server.service",
            unit(
                "server",
                "IoT gateway, the server role: CoAP/DTLS ingress into the database",
                "PrivateDevices=yes\n\
                 # The database password, e.g. GATEWAY_DB_PASSWORD=... (server.toml's password_env).\n\
                 EnvironmentFile=-/etc/gateway/server.env\n",
            ),
        ),
    ]
}

const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ]; then
    mkdir -p /var/lib/gateway
    if ! getent passwd gateway >/dev/null; then
        adduser --system --group --home /var/lib/gateway --no-create-home \
            --gecos "IoT gateway" gateway >/dev/null
    fi
    # Serial GPS receivers.
    if getent group dialout >/dev/null; then
        adduser gateway dialout >/dev/null 2>&1 || true
    fi
    install -d -o gateway -g gateway -m 0750 /var/lib/gateway
    # Keys: made there as the gateway user (`sudo -u gateway gateway certs ... --dir
    # /etc/gateway/certs`), readable by nobody else.
    install -d -o gateway -g gateway -m 0700 /etc/gateway/certs
    for f in /etc/gateway/client.toml /etc/gateway/server.toml; do
        if [ -f "$f" ]; then chgrp gateway "$f"; chmod 0640 "$f"; fi
    done
    # The server role's database password (GATEWAY_DB_PASSWORD=...): systemd reads it as root,
    # so the gateway's own check of a password file's mode never sees it. Made readable by
    # root alone before anyone edits it (an editor under umask 022 would make it 0644).
    if [ ! -e /etc/gateway/server.env ]; then
        install -m 0600 -o root -g root /dev/null /etc/gateway/server.env
    else
        chmod go-rwx /etc/gateway/server.env
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        # An upgrade (configure with the old version in $2): a running role restarts on the
        # new files, the OpenSSL linked into them included; a stopped one stays stopped.
        if [ -n "$2" ]; then
            systemctl try-restart gateway-client.service gateway-server.service >/dev/null 2>&1 || true
        fi
    fi
    echo "gateway: edit /etc/gateway/client.toml (a Pi) or server.toml (a server), put the certificates in /etc/gateway/certs, then: systemctl enable --now gateway-client (or gateway-server)"
fi
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl stop gateway-client.service gateway-server.service >/dev/null 2>&1 || true
fi
"#;

const POSTRM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
# On purge the configuration goes (dpkg removes the conffiles, this the password file);
# /var/lib/gateway (disk buffers, dead letters), /etc/gateway/certs (keys) and the gateway user
# stay: delete them by hand.
if [ "$1" = purge ]; then
    rm -f /etc/gateway/server.env
fi
"#;

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The oldest glibc that runs every file in `dir`: the highest `GLIBC_2.N` symbol version the
/// files need, or 2.36 if they need `GLIBC_ABI_DT_RELR` (packed relative relocations), read
/// with `readelf -V` (which reads any architecture's ELF files).
fn glibc_needed(dir: &Path) -> Result<(u32, u32)> {
    let mut need = (2, 17);
    for e in std::fs::read_dir(dir)? {
        let out = Command::new("readelf").arg("-V").arg(e?.path()).output()?;
        for word in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if word == "GLIBC_ABI_DT_RELR" {
                need = need.max((2, 36));
            } else if let Some(v) = word.strip_prefix("GLIBC_") {
                let mut parts = v.split('.').map(|p| p.parse::<u32>());
                if let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) {
                    need = need.max((major, minor));
                }
            }
        }
    }
    Ok(need)
}

/// Installed size in KiB, as `Installed-Size` wants it.
fn size_kib(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let meta = e.path().symlink_metadata()?;
        total += if meta.is_dir() {
            size_kib(&e.path())? * 1024
        } else {
            meta.len()
        };
    }
    Ok(total.div_ceil(1024))
}

/// Builds the package for `triple` (default: this machine) and returns its path,
/// `target/deb/gateway_VERSION_ARCH.deb`.
pub fn deb(triple: Option<&str>) -> Result<PathBuf> {
    let dist = dist::dist(triple)?;
    let triple = dist
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("gateway-"))
        .context("the distribution directory is gateway-TRIPLE")?
        .to_owned();
    let arch = arch(&triple)?;
    let version = version()?;
    let name = format!("gateway_{version}_{arch}");
    let out = root().join("target").join("deb");
    let stage = out.join(&name);
    let _ = std::fs::remove_dir_all(&stage);
    let lib = stage.join("usr/lib/gateway");
    std::fs::create_dir_all(&lib)?;
    for (_, file) in dist::FILES {
        let to = lib.join(file);
        std::fs::copy(dist.join(file), &to)?;
        let mode = if file.ends_with(".so") { 0o644 } else { 0o755 };
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
    }
    std::fs::create_dir_all(stage.join("usr/bin"))?;
    std::os::unix::fs::symlink("../lib/gateway/gateway", stage.join("usr/bin/gateway"))?;
    for role in ["client", "server"] {
        let text = std::fs::read_to_string(root().join(format!("{role}.toml")))?;
        write(
            &stage.join(format!("etc/gateway/{role}.toml")),
            &text,
            0o640,
        )?;
    }
    for (file, text) in units() {
        write(&stage.join("lib/systemd/system").join(file), &text, 0o644)?;
    }
    let doc = stage.join("usr/share/doc/gateway");
    write(
        &doc.join("README.md"),
        &std::fs::read_to_string(root().join("README.md"))?,
        0o644,
    )?;
    write(
        &doc.join("copyright"),
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: gateway\n\n\
         Files: *\n\
         License: MIT or Apache-2.0\n\
         Comment: OpenSSL 3.5 is linked statically into gateway-certs, gateway-coap and the coaps, mysql,\n postgres \
         and mqtt plugins (Apache-2.0).\n",
        0o644,
    )?;
    let control = stage.join("DEBIAN");
    let installed = size_kib(&stage)?;
    let (major, minor) = glibc_needed(&lib)?;
    write(
        &control.join("control"),
        &format!(
            "Package: gateway\n\
             Version: {version}\n\
             Architecture: {arch}\n\
             Maintainer: gateway maintainers <gateway@example.invalid>\n\
             Installed-Size: {installed}\n\
             Depends: libc6 (>= {major}.{minor}), adduser\n\
             Section: net\n\
             Priority: optional\n\
             Homepage: https://example.invalid/gateway\n\
             Description: IoT gateway: sensor readings from sources to sinks, over CoAP/DTLS\n \
             One program for both ends of a link: on a Raspberry Pi it reads DS18B20\n \
             thermometers and a u-blox GPS and sends the readings as CoAP over DTLS 1.2;\n \
             on a server it receives them and stores them in MySQL. Plugins are shared\n \
             libraries; third parties add their own.\n"
        ),
        0o644,
    )?;
    write(
        &control.join("conffiles"),
        "/etc/gateway/client.toml\n/etc/gateway/server.toml\n",
        0o644,
    )?;
    write(&control.join("postinst"), POSTINST, 0o755)?;
    write(&control.join("prerm"), PRERM, 0o755)?;
    write(&control.join("postrm"), POSTRM, 0o755)?;
    let deb = out.join(format!("{name}.deb"));
    let mut c = Command::new("dpkg-deb");
    c.args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb);
    run(c)?;
    Ok(deb)
}
