//! One active instance of a named component across processes: the lock behind every
//! long-running component that must run once (a projection's runner, its rebuild, and any
//! other consumer of the feed that asks for it).
//!
//! The lock is a session advisory lock on a dedicated connection, so it lives exactly as long as
//! that connection: when the process dies or the connection drops, PostgreSQL releases it and a
//! standby takes over. The connection asks the server for TCP keepalives, so an idle connection
//! to a machine that vanished (power, network) is noticed within about half a minute, not after
//! the operating system's default of hours (connected directly; a pooler in between keeps its
//! own connection to the server). Behind a transaction-pooling pooler such as PgBouncer in
//! transaction mode, session locks do not hold: connect such components directly or through
//! session pooling.

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};

use crate::store::PostgresStore;

/// Takes the advisory lock whose key is the hash of `$1`, if it is free.
const TRY_LOCK: &str = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))";

/// Releases the advisory lock whose key is the hash of `$1`.
const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtextextended($1, 0))";

/// Asks the server for TCP keepalives on this session: first probe after 10 s of silence, then
/// every 5 s, the peer given up after 3 missed probes. Set after connecting (not as startup
/// options, which connection poolers refuse); where the server refuses them, they are skipped.
const KEEPALIVES: &str = "SELECT set_config('tcp_keepalives_idle', '10', false),
       set_config('tcp_keepalives_interval', '5', false),
       set_config('tcp_keepalives_count', '3', false)";

/// Contends for the active role of one named component: `kind` names the sort of component
/// (`projection`, `rebuild`...), `name` the instance of it.
///
/// Standbys retry on one kept connection instead of opening one per attempt; a connection that
/// failed is dropped, and the next attempt connects anew.
///
/// ```no_run
/// # async fn run(store: eventsource_postgres::PostgresStore) -> Result<(), sqlx::Error> {
/// use eventsource_postgres::ActiveInstance;
/// let mut relay = ActiveInstance::new(&store, "relay", "orders-to-rabbitmq");
/// loop {
///     if let Some(lock_connection) = relay.try_acquire().await? {
///         // Active until `lock_connection` closes: do the work, checkpoint, and keep it open.
///         # drop(lock_connection);
///         break;
///     }
///     tokio::time::sleep(std::time::Duration::from_secs(1)).await; // another process is active
/// }
/// # Ok(()) }
/// ```
pub struct ActiveInstance {
    options: PgConnectOptions,
    key: String,
    /// The connection of an attempt that found the lock taken, for the next attempt.
    spare: Option<PgConnection>,
}

impl ActiveInstance {
    /// Contends for the role of `name` among components of `kind` on `store`'s database.
    pub fn new(store: &PostgresStore, kind: &str, name: &str) -> Self {
        Self {
            options: (*store.pool().connect_options()).clone(),
            key: Self::key(kind, name),
            spare: None,
        }
    }

    /// The text whose hash is the lock key of `name` among components of `kind`.
    pub fn key(kind: &str, name: &str) -> String {
        format!("eventsource.{kind}/{name}")
    }

    /// One attempt: `Some(connection)` holding the lock (the role lasts as long as that
    /// connection), `None` while another instance holds it.
    pub async fn try_acquire(&mut self) -> Result<Option<PgConnection>, sqlx::Error> {
        let mut conn = match self.spare.take() {
            Some(conn) => conn,
            None => {
                let mut conn = self.options.connect().await?;
                if let Err(error) = sqlx::query(KEEPALIVES).execute(&mut conn).await {
                    tracing::debug!(key = %self.key, %error, "TCP keepalives not set on the lock connection");
                }
                conn
            }
        };
        let locked: bool = sqlx::query_scalar(TRY_LOCK)
            .bind(&self.key)
            .fetch_one(&mut conn)
            .await?;
        if locked {
            return Ok(Some(conn));
        }
        self.spare = Some(conn);
        Ok(None)
    }

    /// Gives up the role: releases the lock on `conn` (the connection [`try_acquire`] returned),
    /// then closes it. Once this returns, another instance can take the role at once, and no
    /// observer sees this one holding it; closing alone leaves the lock held until the server
    /// process has noticed the disconnection. On a broken connection the server releases the
    /// lock when that process ends.
    ///
    /// [`try_acquire`]: Self::try_acquire
    pub async fn release(&self, mut conn: PgConnection) {
        if let Err(error) = sqlx::query(UNLOCK).bind(&self.key).execute(&mut conn).await {
            tracing::debug!(key = %self.key, %error, "the lock is left to the server to release");
        }
        let _ = sqlx::Connection::close(conn).await;
    }

    /// Closes the connection kept between attempts.
    pub async fn close(&mut self) {
        if let Some(conn) = self.spare.take() {
            let _ = sqlx::Connection::close(conn).await;
        }
    }
}
