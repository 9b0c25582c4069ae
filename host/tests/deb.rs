//! The Debian packages (`cargo xtask deb`): what the amd64 package holds (binaries, plugins,
//! configs, hardened systemd units, maintainer scripts), and the arm64 package run for real
//! under `qemu-user-static`: its plugins load, `gateway check` passes, and the quick start's
//! chain (simulated probes and the GPS replay, DTLS on loopback) delivers readings.
//!
//! The arm64 build needs Debian's `gcc-aarch64-linux-gnu`, `qemu-user-static` and
//! `rustup target add aarch64-unknown-linux-gnu`; `cargo xtask test` installs them.

mod support;
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, OnceLock},
    time::Duration,
};
use support::*;

/// Builds the package for `triple` with `cargo xtask deb` (once per test binary) and returns
/// its path.
fn package(triple: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    // One build at a time: both packages share cargo's target directory.
    let mut built = built.lock().unwrap();
    if let Some(p) = built.get(triple) {
        return p.clone();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Under a umask of 002, as a user with a private group has (Ubuntu's default): the package
    // must not come out group-writable.
    let out = Command::new("sh")
        .args(["-c", "umask 002 && exec \"$0\" \"$@\""])
        .arg(cargo)
        .current_dir(workspace())
        .args(["xtask", "deb", "--target", triple])
        .output()
        .expect("run cargo xtask deb");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo xtask deb --target {triple} failed (cargo xtask test installs the cross tools):\n{stdout}\n{stderr}"
    );
    let deb = stdout
        .lines()
        .find_map(|l| l.split(" (").next().filter(|p| p.ends_with(".deb")))
        .unwrap_or_else(|| panic!("no package named:\n{stdout}"));
    built.insert(triple.to_owned(), PathBuf::from(deb));
    PathBuf::from(deb)
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .expect("run dpkg-deb");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The package's files and its control files, unpacked under `dir/root` and `dir/DEBIAN`.
fn unpack(deb: &Path, dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for (flag, into) in [("-x", &root), ("-e", &dir.join("DEBIAN"))] {
        let out = Command::new("dpkg-deb")
            .arg(flag)
            .arg(deb)
            .arg(into)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    root
}

const PLUGINS: &[&str] = &[
    "libconsole.so",
    "libexample.so",
    "libds18b20.so",
    "libublox7.so",
    "libsystem.so",
    "libcoaps_uplink.so",
    "libcoaps_ingress.so",
    "libsqlite.so",
    "libmysql.so",
    "libpostgres.so",
    "libmqtt.so",
    "libnats.so",
];

#[test]
fn the_amd64_package_holds_the_gateway_its_plugins_and_hardened_units() {
    let deb = package("x86_64-unknown-linux-gnu");
    assert!(
        deb.ends_with("gateway_0.1.0_amd64.deb"),
        "{}",
        deb.display()
    );
    let fields = dpkg_deb(&["-f"], &deb);
    for want in [
        "Package: gateway",
        "Architecture: amd64",
        "Depends: libc6 (>= 2.36), adduser",
    ] {
        assert!(fields.contains(want), "{want} in\n{fields}");
    }
    let listing = dpkg_deb(&["-c"], &deb);
    for file in ["gateway", "gateway-certs", "gateway-coap"]
        .iter()
        .chain(PLUGINS)
    {
        assert!(
            listing.contains(&format!("./usr/lib/gateway/{file}\n")),
            "{file} in\n{listing}"
        );
    }
    for line in [
        "./usr/bin/gateway -> ../lib/gateway/gateway",
        "./etc/gateway/client.toml",
        "./etc/gateway/server.toml",
        "./lib/systemd/system/gateway-client.service",
        "./lib/systemd/system/gateway-server.service",
        "./usr/share/doc/gateway/copyright",
    ] {
        assert!(listing.contains(line), "{line} in\n{listing}");
    }
    for config in ["./etc/gateway/client.toml", "./etc/gateway/server.toml"] {
        let line = listing
            .lines()
            .find(|l| l.ends_with(config))
            .unwrap_or_else(|| panic!("{config} in\n{listing}"));
        assert!(
            line.starts_with("-rw-r----- root/root"),
            "{config} must not be readable by every user: {line}"
        );
    }
    // Built under umask 002: still nothing its group may write (the loader refuses a plugin
    // directory its group can write).
    for line in listing.lines() {
        let mode = line.split_whitespace().next().unwrap_or("");
        if !mode.starts_with('l') {
            assert_ne!(
                mode.as_bytes().get(5),
                Some(&b'w'),
                "group-writable: {line}"
            );
        }
    }
    let lib = listing
        .lines()
        .find(|l| l.ends_with(" ./usr/lib/gateway/"))
        .unwrap_or_else(|| panic!("./usr/lib/gateway/ in\n{listing}"));
    assert!(lib.starts_with("drwxr-xr-x root/root"), "{lib}");

    let s = Setup::new();
    let root = unpack(&deb, s.dir.path());
    let control = s.path("DEBIAN");
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(
        conffiles,
        "/etc/gateway/client.toml\n/etc/gateway/server.toml\n"
    );
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system --group"), "{postinst}");
    assert!(
        postinst.contains("install -d -o gateway -g gateway -m 0700 /etc/gateway/certs"),
        "{postinst}"
    );
    // The password file exists, root's alone, before anyone edits it; an upgrade restarts a
    // running role on the new files (a security fix applies without a manual restart).
    assert!(
        postinst.contains("install -m 0600 -o root -g root /dev/null /etc/gateway/server.env"),
        "{postinst}"
    );
    assert!(
        postinst.contains("systemctl try-restart gateway-client.service gateway-server.service"),
        "{postinst}"
    );
    // sh -n: the scripts parse.
    for script in ["postinst", "prerm", "postrm"] {
        let ok = Command::new("sh")
            .arg("-n")
            .arg(control.join(script))
            .status()
            .unwrap();
        assert!(ok.success(), "{script} does not parse");
    }

    let unit =
        |name: &str| std::fs::read_to_string(root.join("lib/systemd/system").join(name)).unwrap();
    let (client, server) = (
        unit("gateway-client.service"),
        unit("gateway-server.service"),
    );
    for u in [&client, &server] {
        for line in [
            "Type=notify",
            "WatchdogSec=30s",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "User=gateway",
            "StateDirectory=gateway",
            "LimitCORE=0",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=\n",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "MemoryDenyWriteExecute=yes",
            "SystemCallFilter=@system-service",
            // Read-only: no capability may change the clock.
            "SystemCallFilter=adjtimex",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        ] {
            assert!(u.contains(line), "{line} in\n{u}");
        }
    }
    assert!(client.contains("ExecStart=/usr/bin/gateway run --config /etc/gateway/client.toml"));
    assert!(
        client.contains("SupplementaryGroups=dialout")
            && client.contains("DeviceAllow=char-ttyACM rw")
    );
    assert!(server.contains("ExecStart=/usr/bin/gateway run --config /etc/gateway/server.toml"));
    assert!(server.contains("PrivateDevices=yes") && !server.contains("DeviceAllow"));

    // systemd's own judgement of the hardening: "OK" (exposure at most 2.0 of 10) for both.
    for name in ["gateway-client.service", "gateway-server.service"] {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--threshold=20"])
            .arg(root.join("lib/systemd/system").join(name))
            .output()
            .expect("run systemd-analyze (Debian's systemd package)");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // The unpacked gateway finds its plugins beside itself, through the /usr/bin link.
    let out = Command::new(root.join("usr/bin/gateway"))
        .arg("plugins")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for id in [
        "ds18b20",
        "ublox7",
        "system",
        "coaps-uplink",
        "coaps-ingress",
        "mysql",
        "sqlite",
    ] {
        assert!(text.contains(id), "{id} in\n{text}");
    }
    assert!(!text.contains("refused"), "{text}");
}

#[test]
fn the_arm64_package_runs_the_quick_start_chain_under_qemu() {
    let deb = package("aarch64-unknown-linux-gnu");
    let fields = dpkg_deb(&["-f"], &deb);
    assert!(fields.contains("Architecture: arm64"), "{fields}");
    // Linked against Bookworm's glibc (symbols of 2.34), without DT_RELR (Debian 12's
    // aarch64 linker does not pack relocations).
    assert!(
        fields.contains("Depends: libc6 (>= 2.34), adduser"),
        "{fields}"
    );
    let s = Setup::new();
    let root = unpack(&deb, s.dir.path());
    let gateway = root.join("usr/lib/gateway/gateway");
    let elf = Command::new("readelf")
        .arg("-h")
        .arg(&gateway)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&elf.stdout).contains("AArch64"),
        "an arm64 binary"
    );
    // Run through qemu, with Debian's arm64 C library as the loader's root (binfmt_misc is not
    // needed). qemu answers /proc/self/exe with the emulated binary, so the gateway finds its
    // plugins beside it.
    let wrapper = s.path("gateway-arm64");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec qemu-aarch64-static -L /usr/aarch64-linux-gnu {} \"$@\"\n",
            gateway.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = Command::new(&wrapper).arg("plugins").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("coaps-ingress") && !text.contains("refused"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Certificates from this machine's gateway: they are the same files on any architecture.
    make_certs(&s.path("certs"), "pi-01");
    let config = pi_chain_config(&s, free_udp_port());
    let out = Command::new(&wrapper)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(": OK"),
        "gateway check under qemu: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut gw = Running::start_bin(&wrapper, &s, &config);
    check_pi_chain(&mut gw, Duration::from_secs(120));
}
