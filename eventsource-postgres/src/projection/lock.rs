//! One active runner (and one rebuild) per projection: session advisory locks on dedicated
//! connections.
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

/// The advisory lock key of `$1` (a lock's namespace and the projection's name).
const LOCK_KEY: &str = "SELECT hashtextextended($1, 0)";

/// What a projection lock is for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role {
    /// The active runner of the projection.
    Runner,
    /// A rebuild of the projection (it runs beside the active runner).
    Rebuild,
}

impl Role {
    fn namespace(self) -> &'static str {
        match self {
            Self::Runner => "eventsource.projection/",
            Self::Rebuild => "eventsource.rebuild/",
        }
    }
}

/// Server-side TCP keepalives of the lock connection: first probe after 10 s of silence, then
/// every 5 s, the peer given up after 3 missed probes.
const KEEPALIVES: [(&str, &str); 3] = [
    ("tcp_keepalives_idle", "10"),
    ("tcp_keepalives_interval", "5"),
    ("tcp_keepalives_count", "3"),
];

/// A dedicated connection; `Some` when it holds the projection's lock for `role`.
pub(crate) async fn try_acquire(
    options: &PgConnectOptions,
    role: Role,
    projection: &str,
) -> Result<Option<PgConnection>, ProjectionError> {
    let mut conn = options
        .clone()
        .options(KEEPALIVES)
        .connect()
        .await
        .map_err(|e| ProjectionError::database(projection, "connect the runner", e))?;
    let key: i64 = sqlx::query_scalar(LOCK_KEY)
        .bind(format!("{}{projection}", role.namespace()))
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
