//! Connecting to NATS with the configured credentials, on the plugin's own runtime.

use crate::{config::Connection, denied::Denied};
use gateway_sdk::{InitContext, PluginError};
use std::path::PathBuf;

/// What a connection needs, checked when the instance is built (nothing is connected then).
#[derive(Clone)]
pub struct Settings {
    url: String,
    user: Option<(String, String)>,
    token: Option<String>,
    credentials: Option<PathBuf>,
    ca: Option<PathBuf>,
    timeout: std::time::Duration,
}

impl Settings {
    /// Checks `c` and reads its secrets.
    pub fn new(ctx: &InitContext, c: &Connection) -> Result<Settings, PluginError> {
        let bad = |key: &str, e: &str| ctx.config_error(key, e);
        for u in c.url.split(',') {
            let u = u.trim();
            if !(u.starts_with("nats://") || u.starts_with("tls://")) {
                return Err(bad(
                    "url",
                    "give nats://HOST[:PORT] or tls://HOST[:PORT], several separated by commas",
                ));
            }
            if u.contains('@') {
                return Err(bad("url", "put the user in username and the password in password_env or password_file, not in the URL"));
            }
        }
        let password = ctx.secret(
            "password",
            None,
            c.password_env.as_deref(),
            c.password_file.as_deref(),
        )?;
        let user = match (&c.username, password) {
            (Some(u), Some(p)) => Some((u.clone(), p)),
            (None, None) => None,
            _ => return Err(bad("username", "give username and a password together")),
        };
        let token = ctx.secret("token", None, c.token_env.as_deref(), None)?;
        // A .creds file holds the NKey seed: a secret, checked as key files are. Its user JWT
        // authenticates on its own (a bearer JWT) and async-nats traces it with the connect
        // options: both are kept out of the log.
        let credentials = match &c.credentials_file {
            Some(p) => {
                let (path, text) = ctx.read_private_file("credentials_file", p)?;
                for secret in creds_secrets(&text) {
                    ctx.secret("credentials_file", Some(secret), None, None)?;
                }
                Some(path)
            }
            None => None,
        };
        let ways = [user.is_some(), token.is_some(), credentials.is_some()];
        if ways.iter().filter(|w| **w).count() > 1 {
            return Err(bad(
                "username",
                "give one of username and password, token_env, credentials_file",
            ));
        }
        let table = &ctx.info().table;
        for (scheme, host) in remote_hosts(&c.url) {
            if !ways.contains(&true) {
                // Whoever may publish into the stream posts readings as any device; whoever
                // may read it reads every device's.
                gateway_sdk::tracing::warn!("[{table}] no credentials for {host}: whoever can reach that server can publish readings into the stream and read it; give username with password_file, token_env or credentials_file, and tls://");
            } else if scheme == "nats" && c.tls_ca_file.is_none() {
                gateway_sdk::tracing::warn!("[{table}] the credentials go to {host} in clear text over nats://, unless the server asks for TLS; use tls:// and tls_ca_file");
            }
        }
        Ok(Settings {
            url: c.url.clone(),
            user,
            token,
            credentials,
            ca: c
                .tls_ca_file
                .as_ref()
                .map(|p| ctx.trusted_file("tls_ca_file", p))
                .transpose()?,
            timeout: c.connect_timeout,
        })
    }

    /// Connects; a retryable error says why not. The subjects the server refuses this
    /// connection's publishes to are noted in `denied`, if given.
    pub async fn connect(
        &self,
        denied: Option<&Denied>,
    ) -> Result<async_nats::Client, PluginError> {
        let mut o = async_nats::ConnectOptions::new()
            .connection_timeout(self.timeout)
            .name("gateway");
        if let Some(denied) = denied.cloned() {
            o = o.event_callback(move |event| {
                if let async_nats::Event::ServerError(async_nats::ServerError::Other(e)) = &event {
                    denied.note_error(e, std::time::Instant::now());
                }
                std::future::ready(())
            });
        }
        if let Some((u, p)) = &self.user {
            o = o.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &self.token {
            o = o.token(t.clone());
        }
        if let Some(c) = &self.credentials {
            o = o.credentials_file(c).await.map_err(|e| {
                PluginError::config(format!("credentials_file {}: {e}", c.display()))
            })?;
        }
        if let Some(ca) = &self.ca {
            o = o.add_root_certificates(ca.clone());
        }
        if self.ca.is_some() || wants_tls(&self.url) {
            // Else a server found through the cluster's gossip (its `connect_urls`, which
            // async-nats dials as nats://) is spoken to in clear text when its INFO, which anyone
            // on the path can write, says it takes no TLS: the credentials and the readings go
            // in the clear, and a forged acknowledgement has a reading dropped as stored.
            o = o.require_tls(true);
        }
        // async-nats times the TCP connect only: a server that takes the connection and then
        // says nothing (or a balancer with a dead backend) would hold the INFO, TLS and
        // CONNECT exchange, and the sink or source with it, for ever.
        // async-nats gives each address of each server of `url` connect_timeout for its TCP
        // connect, one after another: the whole connect gets that for each, and once more for
        // the rest.
        let limit = self.timeout * (addresses(&self.url, self.timeout).await + 1);
        match tokio::time::timeout(limit, o.connect(self.url.replace(' ', "").as_str())).await {
            Ok(connected) => connected.map_err(|e| {
                PluginError::retry(format!("cannot connect to NATS at {}: {e}", self.url))
            }),
            Err(_) => Err(PluginError::retry(format!(
                "cannot connect to NATS at {}: no answer within {limit:?} (connect_timeout for each server, and once more)",
                self.url
            ))),
        }
    }
}

/// The secrets of a NATS `.creds` file's text: what stands between its `-----BEGIN` and
/// `-----END` lines (the user JWT and the NKey seed).
fn creds_secrets(text: &str) -> Vec<&str> {
    let mut inside = false;
    let mut found = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with("-----BEGIN") {
            inside = true;
        } else if line.starts_with("-----END") || line.starts_with("------END") {
            inside = false;
        } else if inside && !line.is_empty() {
            found.push(line);
        }
    }
    found
}

/// How many addresses the servers of `urls` (comma-separated URLs) have: each server's
/// host looked up (within `limit`), one for a host that cannot be.
async fn addresses(urls: &str, limit: std::time::Duration) -> u32 {
    let mut n = 0u32;
    for u in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let rest = u.split_once("://").map_or(u, |(_, r)| r);
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or(rest);
        let with_port = if authority.ends_with(']') || !authority.contains(':') {
            format!("{authority}:4222")
        } else {
            authority.to_owned()
        };
        let found = tokio::time::timeout(limit, tokio::net::lookup_host(with_port)).await;
        n = n.saturating_add(match found {
            Ok(Ok(addrs)) => u32::try_from(addrs.count()).unwrap_or(u32::MAX).max(1),
            _ => 1,
        });
    }
    n.clamp(1, 64)
}

/// Whether a server of `urls` is given as `tls://`: then every connection must be TLS.
fn wants_tls(urls: &str) -> bool {
    urls.split(',').map(str::trim).any(|u| {
        u.split_once("://")
            .is_some_and(|(s, _)| s.eq_ignore_ascii_case("tls"))
    })
}

/// The hosts of `urls` (comma-separated `nats://` and `tls://` URLs) that are not this
/// machine, with their scheme.
fn remote_hosts(urls: &str) -> Vec<(&str, &str)> {
    urls.split(',')
        .map(str::trim)
        .filter_map(|u| {
            let (scheme, rest) = u.split_once("://")?;
            let host = match rest.strip_prefix('[') {
                Some(r) => r.split(']').next().unwrap_or(r),
                None => rest.split([':', '/']).next().unwrap_or(rest),
            };
            (!gateway_sdk::config::is_loopback(host)).then_some((scheme, host))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    /// The layout `nsc generate creds` writes.
    #[test]
    fn a_creds_file_s_jwt_and_seed_are_its_secrets() {
        let creds = "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.sig\n------END NATS USER JWT------\n\n************************* IMPORTANT *************************\nNKEY Seed printed below can be used to sign and prove identity.\nNKEYs are sensitive and should be treated as secrets.\n\n-----BEGIN USER NKEY SEED-----\nSUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4\n------END USER NKEY SEED------\n\n*************************************************************\n";
        assert_eq!(
            super::creds_secrets(creds),
            [
                "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.sig",
                "SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4"
            ]
        );
    }

    #[test]
    fn each_address_of_each_server_is_counted() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let n = |urls: &str| rt.block_on(super::addresses(urls, std::time::Duration::from_secs(2)));
        assert_eq!(n("nats://127.0.0.1:4222"), 1);
        assert_eq!(
            n("nats://127.0.0.1:4222, tls://u@[::1]:4222,nats://127.0.0.1"),
            3
        );
        // A name that does not resolve counts once.
        assert_eq!(n("nats://no-such-host.invalid:4222"), 1);
    }

    #[test]
    fn a_tls_url_asks_tls_of_every_connection() {
        assert!(super::wants_tls(
            "nats://127.0.0.1:4222, TLS://nats.example:4222"
        ));
        assert!(super::wants_tls("tls://nats.example"));
        assert!(!super::wants_tls(
            "nats://nats.example:4222,nats.example:4223"
        ));
    }

    #[test]
    fn remote_hosts_are_told_from_this_machine() {
        assert_eq!(
            super::remote_hosts("nats://127.0.0.1:4222, tls://[::1]:4222,nats://nats.example:4222,tls://[2001:db8::1]"),
            [("nats", "nats.example"), ("tls", "2001:db8::1")]
        );
    }
}
