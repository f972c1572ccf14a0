//! One active runner per projection: a session advisory lock on a dedicated connection.
//!
//! The lock lives as long as the connection: when the process dies or the connection drops,
//! PostgreSQL releases it and a standby takes over. The connection asks the server for TCP
//! keepalives, so a machine that vanishes (power, network) is noticed within about half a
//! minute, not after the operating system's default of hours. (Behind a transaction-pooling pooler such as
//! PgBouncer in transaction mode, session locks do not hold: connect runners directly or
//! through session pooling. The checkpoint row lock still prevents double application.)

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};

use super::error::ProjectionError;

/// The advisory lock key of a projection.
const LOCK_KEY: &str = "SELECT hashtextextended('eventsource.projection/' || $1, 0)";

/// Server-side TCP keepalives of the lock connection: first probe after 10 s of silence, then
/// every 5 s, the peer given up after 3 missed probes.
const KEEPALIVES: [(&str, &str); 3] = [
    ("tcp_keepalives_idle", "10"),
    ("tcp_keepalives_interval", "5"),
    ("tcp_keepalives_count", "3"),
];

/// A dedicated connection; `Some` when it holds the projection's lock.
pub(crate) async fn try_acquire(
    options: &PgConnectOptions,
    projection: &str,
) -> Result<Option<PgConnection>, ProjectionError> {
    let mut conn = options
        .clone()
        .options(KEEPALIVES)
        .connect()
        .await
        .map_err(|e| ProjectionError::database(projection, "connect the runner", e))?;
    let key: i64 = sqlx::query_scalar(LOCK_KEY)
        .bind(projection)
        .fetch_one(&mut conn)
        .await
        .map_err(|e| ProjectionError::database(projection, "compute the lock key", e))?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut conn)
        .await
        .map_err(|e| ProjectionError::database(projection, "take the runner lock", e))?;
    Ok(locked.then_some(conn))
}
