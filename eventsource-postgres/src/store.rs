//! The PostgreSQL store: a connection pool, limits, and the schema migrations.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use eventsource_core::store::WakeSignal;
use eventsource_core::{FeedPosition, Limits, StoreError};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::error::backend;
use crate::feed_horizon::FeedHorizon;
use crate::listener::ListenerStats;
use crate::notifier::Notifier;
use crate::redact::{misspelled_password_key, redact_url, target};
use crate::row::{column, stored_feed_position, Xid8};

/// The server tried when no URL is given: a local PostgreSQL with trust authentication.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

const HEAD_POSITION: &str = include_str!("sql/head_position.sql");

/// The schema migrations, embedded from the workspace's `migrations/` folder.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// How long the first connection to a server may take before it counts as unreachable.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An advisory lock key serializing concurrent `migrate` calls ("eventsrc" in ASCII).
const MIGRATION_LOCK: i64 = 0x6576_656e_7473_7263;

/// The PostgreSQL event store. Cloning it is cheap and shares the pool.
///
/// All tables live in the `eventsource` schema; create them with [`PostgresStore::migrate`].
///
/// ```no_run
/// use eventsource_postgres::PostgresStore;
/// # async fn run() -> Result<(), eventsource_core::StoreError> {
/// let store = PostgresStore::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pub(crate) pool: PgPool,
    pub(crate) limits: Limits,
    pub(crate) feed_horizon: FeedHorizon,
    pub(crate) shared: Arc<Shared>,
}

/// State shared by the clones of one store.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// The wake-up signal of the store's one listener, started by the first subscription.
    pub(crate) signal: OnceLock<WakeSignal>,
    pub(crate) listener_stats: Arc<ListenerStats>,
    /// Set once the stored transaction ids were found consistent with the cluster's.
    pub(crate) ids_checked: OnceLock<()>,
    /// Whether subscriptions listen for notifications (else they only poll).
    pub(crate) notifications_off: bool,
    /// Announces the store's autocommit appends after they commit.
    pub(crate) notifier: Notifier,
}

impl PostgresStore {
    /// A store over an existing pool, with default limits.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            limits: Limits::default(),
            feed_horizon: FeedHorizon::default(),
            shared: Arc::default(),
        }
    }

    /// Connects a pool of up to 10 connections to `url`.
    ///
    /// One connection is tried first, for at most 5 seconds: a server that refuses, does not
    /// answer, or turns the connection down (unknown database or user, wrong password) is
    /// reported at once, naming the host, port, database and user tried (never the password).
    /// The pool then waits for connections as usual.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = parse_url(url, "the database URL")?;
        check_reachable(&options).await?;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect_with(options.clone())
            .await
            .map_err(|e| backend(format!("connect to PostgreSQL at {}", target(&options)), e))?;
        Ok(Self::new(pool))
    }

    /// The same store enforcing other limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The same store finding the feed's horizon another way (default
    /// [`FeedHorizon::Writers`]: only open transactions that can commit events in this database
    /// hold subscribers back; [`FeedHorizon::Cluster`]: any open write transaction on the
    /// server does, for servers where reading `pg_locks` is not possible or wanted).
    ///
    /// ```no_run
    /// use eventsource_postgres::{FeedHorizon, PostgresStore};
    /// # async fn run() -> Result<(), eventsource_core::StoreError> {
    /// let store = PostgresStore::connect("postgres://postgres@127.0.0.1:5432/postgres")
    ///     .await?
    ///     .with_feed_horizon(FeedHorizon::Cluster);
    /// # Ok(()) }
    /// ```
    pub fn with_feed_horizon(mut self, horizon: FeedHorizon) -> Self {
        self.feed_horizon = horizon;
        self
    }

    /// How this store's feed finds its horizon.
    pub fn feed_horizon(&self) -> FeedHorizon {
        self.feed_horizon
    }

    /// The same store with subscriptions that only poll, never LISTEN (for servers behind a
    /// pooler that does not pass notifications through). Call it before subscribing.
    pub fn without_notifications(mut self) -> Self {
        self.shared = Arc::new(Shared {
            notifications_off: true,
            ..Shared::default()
        });
        self
    }

    /// Counters of the store's shared LISTEN connection.
    pub fn listener_stats(&self) -> &ListenerStats {
        &self.shared.listener_stats
    }

    /// The limits this store enforces on appends.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The connection pool (for read models in the same database).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes the pool and stops the store's LISTEN connection; waits for connections in use to
    /// be returned. Subscriptions and runners of the store then fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The feed position of the newest committed event (`None` without events): a target for
    /// "caught up with everything committed until now".
    pub async fn head_position(&self) -> Result<Option<FeedPosition>, StoreError> {
        let row = sqlx::query(HEAD_POSITION)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| backend("read the head of the feed", e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(stored_feed_position(
            column::<Xid8>(&row, "transaction_id")?,
            column(&row, "position")?,
        )?))
    }

    /// Creates or upgrades the `eventsource` schema. Safe to call from several processes at
    /// once, and on every start: applied migrations are skipped.
    ///
    /// sqlx's migrator keeps its bookkeeping table in the `eventsource` schema, so it never mixes
    /// with an application's own sqlx migrations in `public`.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        // One dedicated connection whose search_path puts sqlx's bookkeeping table in the
        // eventsource schema; it never returns to the store's pool.
        let options = (*self.pool.connect_options())
            .clone()
            .options([("search_path", "eventsource")]);
        let conn = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| backend("migrate: connect", e))?;
        let migrated = migrate_on(&conn).await;
        conn.close().await;
        migrated
    }
}

/// Runs the migrations on a one-connection pool (so the advisory lock and the migrations share
/// one session).
async fn migrate_on(conn: &PgPool) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(conn)
        .await
        .map_err(|e| backend("migrate: take the migration lock", e))?;
    sqlx::query("CREATE SCHEMA IF NOT EXISTS eventsource")
        .execute(conn)
        .await
        .map_err(|e| backend("migrate: create the eventsource schema", e))?;
    MIGRATOR
        .run(conn)
        .await
        .map_err(|e| StoreError::backend("migrate: apply the eventsource migrations", e))?;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK)
        .execute(conn)
        .await
        .map_err(|e| backend("migrate: release the migration lock", e))?;
    Ok(())
}

impl fmt::Debug for PostgresStore {
    /// Names the server without its password (the pool's connection options hold it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options = self.pool.connect_options();
        f.debug_struct("PostgresStore")
            .field("server", &target(&options))
            .field("connections", &self.pool.size())
            .field("idle", &self.pool.num_idle())
            .field("closed", &self.pool.is_closed())
            .field("limits", &self.limits)
            .field("notifications", &!self.shared.notifications_off)
            .finish_non_exhaustive()
    }
}

/// Parses a connection URL (`what` names it in the error: "the database URL", "DATABASE_URL").
/// The error shows the URL without its password.
///
/// A `password` query parameter spelled in another case is refused: the driver would ignore
/// it and log its value.
pub(crate) fn parse_url(url: &str, what: &str) -> Result<PgConnectOptions, StoreError> {
    if let Some(key) = misspelled_password_key(url) {
        return Err(StoreError::backend(
            format!("parse {what} {}", redact_url(url)),
            format!("the query parameter `{key}` is not known; spell it `password`"),
        ));
    }
    PgConnectOptions::from_str(url).map_err(|e| {
        backend(
            format!(
                "parse {what} {} (expected postgres://user:password@host:port/database)",
                redact_url(url)
            ),
            e,
        )
    })
}

/// Opens one connection to the server `options` name and closes it, giving up after
/// [`CONNECT_TIMEOUT`]: a refused, unanswered or rejected connection becomes an error naming
/// the host, port, database and user tried, and what to do.
pub(crate) async fn check_reachable(options: &PgConnectOptions) -> Result<(), StoreError> {
    let operation = || {
        format!(
            "connect to PostgreSQL at {} (start the server there, or check the URL or \
             DATABASE_URL: host, port, database, user and password)",
            target(options)
        )
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => {
            // Only a courtesy to the server: the connection did its job.
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(error)) => Err(backend(operation(), error)),
        // An I/O timeout, as the driver reports one, so it is classified like a refusal.
        Err(_) => Err(backend(
            operation(),
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
            )),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool's connection options hold the password; the store's `Debug` names the server
    /// without it.
    #[tokio::test]
    async fn debug_shows_no_password() {
        let options = parse_url(
            "postgres://u:S3cr3t-PW@h:5433/db?password=S3cr3t-PW",
            "a URL",
        )
        .expect("parses");
        let store = PostgresStore::new(PgPoolOptions::new().connect_lazy_with(options));
        let shown = format!("{store:?}");
        assert!(!shown.contains("S3cr3t"), "{shown}");
        assert!(shown.contains("h:5433, database db, user u"), "{shown}");
    }
}
