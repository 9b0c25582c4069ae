//! The servers `url` lists and which of them takes writes: an operation runs on the server in
//! use, and moves on to the next (in `url`'s order, round to the first) when that one is gone
//! or does not take writes now. No I/O of its own; the operations bring theirs.

use crate::store::classify;
use gateway_sdk::{tracing, PluginError};
use mysql_async::Pool;
use std::{
    future::Future,
    sync::atomic::{AtomicUsize, Ordering},
};

/// How an operation on one server ended, when it did not succeed.
pub enum Failure {
    /// The server's error, and what was being done.
    Db(String, mysql_async::Error),
    /// This server did not answer in time (what, and the limit): a hung or black-holed server
    /// is passed over for the next, as one that refuses connections is.
    Timeout(String),
    /// A verdict that is the same on any server (a newer schema).
    Plugin(PluginError),
}

impl Failure {
    /// `Failure::Db` with `what`, for `map_err`.
    pub fn at(what: &str) -> impl FnOnce(mysql_async::Error) -> Failure {
        let what = what.to_owned();
        move |e| Failure::Db(what, e)
    }
}

/// Whether another server of `url` should take what this one could not: it is gone (the
/// connection broke or was refused, it is shutting down, too many connections), or it does not
/// take writes now (read-only: a replica, or a primary that was switched; a Galera node that is
/// not synced).
pub fn fails_over(e: &mysql_async::Error) -> bool {
    match e {
        mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => true,
        // 1040 too many connections, 1047 WSREP has not yet prepared the node, 1053 shutdown in
        // progress, 1290 --read-only, 1792 read-only transaction, 1836 read-only mode, 1927
        // connection killed.
        mysql_async::Error::Server(s) => {
            matches!(s.code, 1040 | 1047 | 1053 | 1290 | 1792 | 1836 | 1927)
        }
        _ => false,
    }
}

/// Each server's address (for the logs) and pool, and the one in use.
pub struct Servers {
    pools: Vec<(String, Pool)>,
    /// The server operations go to: the first that took one, until it fails over.
    current: AtomicUsize,
}

impl Servers {
    /// The servers in `url`'s order; the first is in use.
    pub fn new(pools: Vec<(String, Pool)>) -> Servers {
        assert!(!pools.is_empty(), "url lists one server at least");
        Servers {
            pools,
            current: AtomicUsize::new(0),
        }
    }

    /// The server in use: its index in `url`.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// The pools, for closing them.
    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.pools.iter().map(|(_, p)| p)
    }

    /// Runs `op` on the server in use; where it fails in a way [`fails_over`] names, on the
    /// next, until one succeeds or each was tried once. The server that succeeded is in use
    /// from then on. The error is that of the last server tried.
    pub fn run<T, F, Fut>(&self, rt: &tokio::runtime::Runtime, mut op: F) -> Result<T, PluginError>
    where
        F: FnMut(Pool) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let n = self.pools.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            let (host, pool) = &self.pools[i];
            match rt.block_on(op(pool.clone())) {
                Ok(v) => {
                    if i != start {
                        self.current.store(i, Ordering::Relaxed);
                        tracing::warn!(server = %host, "writing to this server from now on");
                    }
                    return Ok(v);
                }
                Err(Failure::Db(what, e)) if fails_over(&e) && n > 1 => {
                    tracing::warn!(server = %host, error = %e, "this server cannot take writes now ({what}); trying the next in url");
                    last = Some(classify(&format!("{what} on {host}"), e));
                }
                Err(Failure::Db(what, e)) => return Err(classify(&what, e)),
                Err(Failure::Timeout(what)) => {
                    let e = PluginError::retry(format!("{what} on {host}"));
                    if n == 1 {
                        return Err(e);
                    }
                    tracing::warn!(server = %host, "this server did not answer in time ({what}); trying the next in url");
                    last = Some(e);
                }
                Err(Failure::Plugin(e)) => return Err(e),
            }
        }
        Err(last.expect("one server at least, and each failed over"))
    }
}
