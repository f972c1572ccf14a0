//! Test support: a fresh, migrated database per test on a real PostgreSQL server.
//!
//! The server is the one `DATABASE_URL` names, else [`DEFAULT_DATABASE_URL`]. Each
//! [`TestDatabase`] is a new database, so tests run in parallel without seeing each other's
//! events or holding back each other's feeds (under the default
//! [`FeedHorizon::Writers`](crate::FeedHorizon::Writers); a store set to
//! [`FeedHorizon::Cluster`](crate::FeedHorizon::Cluster) shares the server's horizon: a test
//! that holds a write transaction open delays, but never breaks, its feed).
//!
//! [`ProjectionTest`] tests a projection on such a database: given events, the real runner,
//! then queries of the read model.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use eventsource_core::StoreError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::error::backend;
use crate::redact::target;
use crate::store::{check_reachable, parse_url, PostgresStore, DEFAULT_DATABASE_URL};

mod projection_test;

pub use projection_test::{ProjectionTest, ProjectionTestError};

/// Test databases are named `<PREFIX><unix seconds>_<pid>_<n>`.
const PREFIX: &str = "eventsource_test_";

/// Test databases older than this are dropped when a new one is made (leftovers of crashed runs).
const STALE_AFTER_SECS: u64 = 6 * 3600;

/// `DATABASE_URL`, else [`DEFAULT_DATABASE_URL`].
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// A new database on the test server, dropped by [`TestDatabase::drop_database`].
pub struct TestDatabase {
    name: String,
    server: PgConnectOptions,
}

impl TestDatabase {
    /// Creates a new empty database on the test server.
    pub async fn create() -> Result<Self, StoreError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let url = database_url();
        let server =
            parse_url(&url, "DATABASE_URL")?.log_statements(tracing::log::LevelFilter::Trace);
        // Fails within seconds, naming the server, when it is down or refuses the login.
        check_reachable(&server).await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let name = format!(
            "{PREFIX}{now}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let admin = admin_pool(&server).await.map_err(|e| {
            backend(
                format!(
                    "connect to the test server at {} (start PostgreSQL or set DATABASE_URL)",
                    target(&server)
                ),
                e,
            )
        })?;
        drop_stale(&admin, now).await;
        let created = sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&admin)
            .await
            .map_err(|e| backend(format!("create test database {name}"), e));
        admin.close().await;
        created?;
        Ok(Self { name, server })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connection options for this database.
    pub fn connect_options(&self) -> PgConnectOptions {
        self.server.clone().database(&self.name)
    }

    /// A pool of up to `max_connections` connections to this database.
    pub async fn pool(&self, max_connections: u32) -> Result<PgPool, StoreError> {
        PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(self.connect_options())
            .await
            .map_err(|e| backend(format!("connect to test database {}", self.name), e))
    }

    /// A migrated store on this database with a pool of up to 20 connections.
    pub async fn store(&self) -> Result<PostgresStore, StoreError> {
        let store = PostgresStore::new(self.pool(20).await?);
        store.migrate().await?;
        Ok(store)
    }

    /// Drops the database, closing any connections still open to it.
    pub async fn drop_database(self) -> Result<(), StoreError> {
        let admin = admin_pool(&self.server)
            .await
            .map_err(|e| backend("connect to drop a test database", e))?;
        let dropped = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&admin)
        .await
        .map_err(|e| backend(format!("drop test database {}", self.name), e));
        admin.close().await;
        dropped.map(|_| ())
    }
}

impl fmt::Debug for TestDatabase {
    /// Names the server without its password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestDatabase")
            .field("name", &self.name)
            .field("server", &target(&self.server))
            .finish()
    }
}

/// Drops test databases left behind by runs that ended hours ago. Best effort: a failure only
/// leaves them for the next run.
async fn drop_stale(admin: &PgPool, now: u64) {
    let names: Vec<String> =
        match sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1")
            .bind(format!("{PREFIX}%"))
            .fetch_all(admin)
            .await
        {
            Ok(names) => names,
            Err(_) => return,
        };
    for name in names {
        let created = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|t| t + STALE_AFTER_SECS < now) {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(admin)
                .await;
        }
    }
}

/// A one-connection pool to the server's maintenance database.
async fn admin_pool(server: &PgConnectOptions) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(1)
        .connect_with(server.clone())
        .await
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    /// The server's connection options hold the password; `Debug` names the server without it.
    #[test]
    fn debug_shows_no_password() {
        let db = TestDatabase {
            name: "eventsource_test_debug".into(),
            server: PgConnectOptions::from_str("postgres://u:S3cr3t-PW@h:5433/postgres")
                .expect("parses"),
        };
        let shown = format!("{db:?}");
        assert!(!shown.contains("S3cr3t"), "{shown}");
        assert!(shown.contains("eventsource_test_debug"), "{shown}");
        assert!(shown.contains("h:5433"), "{shown}");
    }
}
