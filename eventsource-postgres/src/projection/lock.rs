//! One active runner (and one rebuild) per projection: session advisory locks on dedicated
//! connections.
//!
//! The lock lives as long as the connection: when the process dies or the connection drops,
//! PostgreSQL releases it and a standby takes over. The connection asks the server for TCP
//! keepalives, so an idle connection to a machine that vanished (power, network) is noticed
//! within about half a minute, not after the operating system's default of hours (connected
//! directly; a pooler in between keeps its own connection to the server). (Behind a transaction-pooling pooler such as
//! PgBouncer in transaction mode, session locks do not hold: connect runners directly or
//! through session pooling. The checkpoint row lock still prevents double application.)

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};

use super::error::ProjectionError;

/// Takes the advisory lock whose key is the hash of `$1` (a lock's namespace and the
/// projection's name), if it is free.
const TRY_LOCK: &str = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))";

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

    /// The text whose hash is the advisory lock key of `projection` for this role.
    pub(crate) fn key(self, projection: &str) -> String {
        format!("{}{projection}", self.namespace())
    }
}

/// Asks the server for TCP keepalives on this session: first probe after 10 s of silence, then
/// every 5 s, the peer given up after 3 missed probes. Set after connecting (not as startup
/// options, which connection poolers refuse); where the server refuses them, they are skipped.
const KEEPALIVES: &str = "SELECT set_config('tcp_keepalives_idle', '10', false),
       set_config('tcp_keepalives_interval', '5', false),
       set_config('tcp_keepalives_count', '3', false)";

/// Serializes a projection's first setup with a rebuild's swap (both create the live
/// checkpoint when it is missing): held until `tx` ends.
pub(crate) async fn setup_lock(
    tx: &mut PgConnection,
    projection: &str,
) -> Result<(), ProjectionError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("eventsource.setup/{projection}"))
        .execute(&mut *tx)
        .await
        .map_err(|e| ProjectionError::database(projection, "take the setup lock", e))?;
    Ok(())
}

/// A dedicated connection; `Some` when it holds the projection's lock for `role`.
///
/// `spare` keeps the connection of an attempt that found the lock taken, for the next attempt
/// (standbys retry on one connection instead of opening one per attempt); a connection that
/// failed is dropped, and the next attempt connects anew.
pub(crate) async fn try_acquire(
    options: &PgConnectOptions,
    role: Role,
    projection: &str,
    spare: &mut Option<PgConnection>,
) -> Result<Option<PgConnection>, ProjectionError> {
    let mut conn = match spare.take() {
        Some(conn) => conn,
        None => {
            let mut conn = options
                .connect()
                .await
                .map_err(|e| ProjectionError::database(projection, "connect the runner", e))?;
            if let Err(error) = sqlx::query(KEEPALIVES).execute(&mut conn).await {
                tracing::debug!(projection, %error, "TCP keepalives not set on the lock connection");
            }
            conn
        }
    };
    let locked: bool = sqlx::query_scalar(TRY_LOCK)
        .bind(role.key(projection))
        .fetch_one(&mut conn)
        .await
        .map_err(|e| ProjectionError::database(projection, "take the projection's lock", e))?;
    if locked {
        return Ok(Some(conn));
    }
    *spare = Some(conn);
    Ok(None)
}
