//! The projection's setup lock: a projection's first setup and a rebuild's swap both create
//! the live checkpoint when it is missing, so they serialize on a transaction-level advisory
//! lock. (The one-active-runner lock is `ActiveInstance`, shared by every long-running
//! component.)

use sqlx::PgConnection;

use super::error::ProjectionError;

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
