//! What the tests share: the real MariaDB/MySQL server, by default root without a password on
//! 127.0.0.1:3306 (as on this project's machines); GATEWAY_TEST_MYSQL_URL points the tests at
//! another server (`mysql://USER:PASSWORD@HOST:PORT/DATABASE`). Each test works in a database of
//! its own, dropped at the end. The tests fail, not skip, when the server is unreachable.

// Each test file uses a part of this module.
#![allow(dead_code)]

use gateway_test_support::mariadb::MariaDb;
use mysql_async::prelude::*;

pub fn admin_url() -> String {
    std::env::var("GATEWAY_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A database of the test's own; dropped when this is dropped.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub fn new(tag: &str) -> TestDb {
        let name = format!("gw_test_{tag}_{}", std::process::id());
        rt().block_on(async {
            let pool = mysql_async::Pool::new(admin_url().as_str());
            let mut c = pool
                .get_conn()
                .await
                .unwrap_or_else(|e| panic!("MariaDB at {} is not reachable: {e}", admin_url()));
            c.query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                .await
                .unwrap();
            c.query_drop(format!("CREATE DATABASE `{name}`"))
                .await
                .unwrap();
            drop(c);
            pool.disconnect().await.unwrap();
        });
        TestDb { name }
    }

    /// The sink's URL: the admin URL with this database, and the password (if any) moved to an
    /// environment variable, as the plugin wants it.
    pub fn config(&self, extra: &str) -> String {
        let opts = mysql_async::Opts::from_url(&admin_url()).unwrap();
        let user = opts.user().unwrap_or("root").to_owned();
        let pw = opts
            .pass()
            .map(|p| ("GATEWAY_TEST_MYSQL_PASSWORD", p.to_owned()));
        self.config_as(&user, pw, extra)
    }

    /// The sink's config for another user of the admin URL's server, with the password in the
    /// environment variable named.
    pub fn config_as(&self, user: &str, password: Option<(&str, String)>, extra: &str) -> String {
        let opts = mysql_async::Opts::from_url(&admin_url()).unwrap();
        let mut cfg = format!(
            "url = \"mysql://{user}@{}:{}/{}\"\n",
            opts.ip_or_hostname(),
            opts.tcp_port(),
            self.name
        );
        if let Some((var, pw)) = password {
            std::env::set_var(var, pw);
            cfg.push_str(&format!("password_env = \"{var}\"\n"));
        }
        cfg + extra
    }

    /// Runs `sql` in this database as the admin user.
    pub fn query<T: FromRow + Send + 'static>(&self, sql: &str) -> Vec<T> {
        self.query_in_session(&[], sql)
    }

    /// Runs the `setup` statements (`SET time_zone = ...`), then `sql`, on one connection.
    pub fn query_in_session<T: FromRow + Send + 'static>(
        &self,
        setup: &[&str],
        sql: &str,
    ) -> Vec<T> {
        let url = admin_url();
        let name = self.name.clone();
        let setup: Vec<String> = setup.iter().map(|s| s.to_string()).collect();
        let sql = sql.to_owned();
        rt().block_on(async move {
            let pool = mysql_async::Pool::new(url.as_str());
            let mut c = pool.get_conn().await.unwrap();
            c.query_drop(format!("USE `{name}`")).await.unwrap();
            for s in setup {
                c.query_drop(&s)
                    .await
                    .unwrap_or_else(|e| panic!("{s}: {e}"));
            }
            let r = c
                .query(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}\n: {e}"));
            drop(c);
            pool.disconnect().await.unwrap();
            r
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        rt().block_on(async move {
            let pool = mysql_async::Pool::new(admin_url().as_str());
            if let Ok(mut c) = pool.get_conn().await {
                let _ = c
                    .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                    .await;
            }
            let _ = pool.disconnect().await;
        });
    }
}
/// A user of the server's own; dropped when this is dropped.
pub struct TestUser {
    pub name: String,
    pub password: String,
}

impl TestUser {
    pub fn new(name: &str) -> TestUser {
        let user = TestUser {
            name: name.to_owned(),
            password: format!("pw-{}", std::process::id()),
        };
        user.admin(&format!("DROP USER IF EXISTS '{name}'@'%'"));
        user.admin(&format!(
            "CREATE USER '{name}'@'%' IDENTIFIED BY '{}'",
            user.password
        ));
        user
    }
    /// Runs `sql` as the admin user.
    pub fn admin(&self, sql: &str) {
        exec_at(&admin_url(), sql)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        self.admin(&format!("DROP USER IF EXISTS '{}'@'%'", self.name));
    }
}

/// A MariaDB server of the test's own beside the machine's (`gateway_test_support::mariadb`),
/// in a temporary folder: the second server of a `url` that lists two. Killed when dropped.
pub struct OwnServer {
    pub port: u16,
    db: MariaDb,
    _dir: tempfile::TempDir,
}

impl OwnServer {
    pub fn start() -> OwnServer {
        let dir = tempfile::tempdir().unwrap();
        let mut db = MariaDb::init(dir.path());
        db.start();
        OwnServer {
            port: db.port(),
            db,
            _dir: dir,
        }
    }

    /// `mysql://root@127.0.0.1:PORT/DATABASE`.
    pub fn url(&self, database: &str) -> String {
        self.db.url(database)
    }

    /// Runs `sql` as root.
    pub fn admin(&self, sql: &str) {
        exec_at(&self.url(""), sql)
    }

    /// Runs `sql` as root, for its rows.
    pub fn query<T: FromRow + Send + 'static>(&self, sql: &str) -> Vec<T> {
        query_at(&self.url(""), sql)
    }
}

/// Runs `sql` on a connection of its own to `url`.
pub fn exec_at(url: &str, sql: &str) {
    query_at::<mysql_async::Row>(url, sql);
}

/// Runs `sql` on a connection of its own to `url`, for its rows.
pub fn query_at<T: FromRow + Send + 'static>(url: &str, sql: &str) -> Vec<T> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    rt().block_on(async move {
        let pool = mysql_async::Pool::new(url.as_str());
        let mut c = pool.get_conn().await.unwrap();
        let r = c.query(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        drop(c);
        pool.disconnect().await.unwrap();
        r
    })
}
