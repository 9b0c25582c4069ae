//! Who each device is: a certificate of its own (issued for the run from a development CA, or
//! read from a directory), or a PSK of its own under its own name.

use crate::{client_config, Cli};
use anyhow::{anyhow, bail, Context, Result};
use gateway_dtls::{client::Config, hex_key, psk_file_entries, ClientSettings, Psk};
use gateway_pki::{issue_to, read_pair, Kind};
use std::{collections::HashMap, path::PathBuf};

/// Where the devices' credentials come from.
pub enum Identities {
    /// `DIR/NAME.pem` and `DIR/NAME.key`; the temporary directory is kept alive for the run.
    Certs {
        /// The directory.
        dir: PathBuf,
        /// Removed when the run ends.
        _temporary: Option<tempfile::TempDir>,
    },
    /// Each device's own key, by its name.
    Psk(HashMap<String, Vec<u8>>),
}

impl Identities {
    /// Reads, or makes, what `cli` asks for.
    pub fn new(cli: &Cli) -> Result<Identities> {
        let psk = match (&cli.psk_file, &cli.psk_env) {
            (Some(file), _) => Some((
                format!("--psk-file {}", file.display()),
                std::fs::read_to_string(file)
                    .with_context(|| format!("--psk-file {}", file.display()))?,
            )),
            (None, Some(var)) => Some((
                format!("--psk-env {var}"),
                std::env::var(var).with_context(|| format!("--psk-env {var}: not set"))?,
            )),
            (None, None) => None,
        };
        if let Some((from, text)) = &psk {
            return Ok(Identities::Psk(psk_keys(from, text)?));
        }
        if let Some(dir) = &cli.certs_dir {
            let first = dir.join(format!("{}-0.pem", cli.prefix));
            if !first.exists() {
                bail!(
                    "--certs-dir {}: no {} (device N's certificate is {}-N.pem, its key {}-N.key)",
                    dir.display(),
                    first.display(),
                    cli.prefix,
                    cli.prefix
                );
            }
            return Ok(Identities::Certs {
                dir: dir.clone(),
                _temporary: None,
            });
        }
        let Some(ca_key) = &cli.ca_key else {
            bail!("say who the devices are: --ca-key (issue certificates), --certs-dir, --psk-file or --psk-env");
        };
        // Given: --ca-key conflicts with a PSK, without which --ca is required.
        let ca_file = cli.ca.as_ref().expect("clap requires --ca without a PSK");
        let (ca, key) = read_pair(ca_file, ca_key)
            .with_context(|| format!("reading the CA {} and its key", ca_file.display()))?;
        let dir = tempfile::tempdir()?;
        let started = std::time::Instant::now();
        for n in 0..cli.devices {
            let name = format!("{}-{n}", cli.prefix);
            let p = |ext: &str| dir.path().join(format!("{name}.{ext}"));
            issue_to(
                &p("pem"),
                &p("key"),
                &name,
                Kind::Device,
                Some((&ca, &key)),
                -1,
                2,
            )
            .with_context(|| format!("issuing {name}'s certificate"))?;
        }
        println!(
            "issued {} device certificates from {} in {:.1} s",
            cli.devices,
            ca_file.display(),
            started.elapsed().as_secs_f64()
        );
        Ok(Identities::Certs {
            dir: dir.path().to_owned(),
            _temporary: Some(dir),
        })
    }

    /// Device `n`'s settings.
    pub fn config(&self, cli: &Cli, host: &str, n: usize) -> Result<Config> {
        let name = format!("{}-{n}", cli.prefix);
        let tls = match self {
            Identities::Certs { dir, .. } => {
                let (cert, key) = (
                    dir.join(format!("{name}.pem")),
                    dir.join(format!("{name}.key")),
                );
                if !cert.exists() || !key.exists() {
                    bail!("no certificate or key for {name} in {}", dir.display());
                }
                ClientSettings {
                    cert: Some((cert, key)),
                    ..ClientSettings::default()
                }
            }
            Identities::Psk(keys) => {
                let Some(key) = keys.get(&name) else {
                    bail!("no PSK for {name} (device N is {}-N): give each device a line {name}:HEXKEY", cli.prefix);
                };
                ClientSettings {
                    psk: Some(Psk {
                        identity: name,
                        key: key.clone(),
                    }),
                    ..ClientSettings::default()
                }
            }
        };
        Ok(client_config(cli, host, tls))
    }
}

/// The devices' keys from `text`, in the format of `coaps-ingress`'s `psk_file`
/// (`IDENTITY:HEXKEY` per line), so that one file serves both ends.
fn psk_keys(from: &str, text: &str) -> Result<HashMap<String, Vec<u8>>> {
    let entries = psk_file_entries(text).map_err(|n| {
        anyhow!("{from}: line {n}: expected IDENTITY:HEXKEY, one line per device, as coaps-ingress's psk_file (each device has a key of its own)")
    })?;
    let mut keys = HashMap::new();
    for (n, id, hex) in entries {
        let key = hex_key(hex).with_context(|| {
            format!("{from}: line {n}: the key must be an even number of hex digits")
        })?;
        if keys.insert(id.to_owned(), key).is_some() {
            bail!("{from}: line {n}: {id:?} is given twice");
        }
    }
    Ok(keys)
}

/// Every device holds a socket: raise the soft limit of open files toward `want` (up to the
/// hard limit), and say so if that is not enough.
pub fn raise_fd_limit(want: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let want = want as libc::rlim_t;
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        if lim.rlim_cur < want {
            eprintln!(
                "gateway-load: at most {} open files (ulimit -n); {} devices need about {want}",
                lim.rlim_cur,
                want.saturating_sub(64)
            );
        }
    }
}
