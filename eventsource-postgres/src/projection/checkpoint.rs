//! Projection checkpoints, read and written inside the batch transaction.

use eventsource_core::FeedPosition;
use sqlx::{PgConnection, Row};

use super::error::ProjectionError;
use super::scope::quoted;
use crate::row::{feed_position, position_column};

const READ_CHECKPOINT: &str = include_str!("sql/read_checkpoint.sql");
const WRITE_CHECKPOINT: &str = include_str!("sql/write_checkpoint.sql");
const SCOPE_AND_LOCK: &str = include_str!("sql/scope_and_lock_checkpoint.sql");

/// The checkpoint named `name`, locked until the transaction ends; `None` if there is none.
pub(crate) async fn read_for_update(
    tx: &mut PgConnection,
    projection: &str,
    name: &str,
) -> Result<Option<FeedPosition>, ProjectionError> {
    let row = sqlx::query(READ_CHECKPOINT)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| ProjectionError::database(projection, "read the checkpoint", e))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let transaction: String = row
        .try_get("transaction_id")
        .map_err(|e| ProjectionError::database(projection, "read the checkpoint", e))?;
    let position: i64 = row
        .try_get("position")
        .map_err(|e| ProjectionError::database(projection, "read the checkpoint", e))?;
    Ok(Some(feed_position(&transaction, position)?))
}

/// Points the transaction at `schema` (see [`set_search_path`](super::scope::set_search_path))
/// and reads the checkpoint named `name`, locked until the transaction ends, in one statement.
/// Relies on `schema` having passed `check_identifier`.
pub(crate) async fn lock_in_schema(
    tx: &mut PgConnection,
    projection: &str,
    name: &str,
    schema: &str,
) -> Result<Option<FeedPosition>, ProjectionError> {
    let failed = |e| ProjectionError::database(projection, "read the checkpoint", e);
    let row = sqlx::query(SCOPE_AND_LOCK)
        .bind(name)
        .bind(format!("{}, public", quoted(schema)))
        .fetch_one(&mut *tx)
        .await
        .map_err(failed)?;
    let transaction: Option<String> = row.try_get("transaction_id").map_err(failed)?;
    let position: Option<i64> = row.try_get("position").map_err(failed)?;
    match (transaction, position) {
        (Some(transaction), Some(position)) => Ok(Some(feed_position(&transaction, position)?)),
        _ => Ok(None),
    }
}

/// Moves (or creates) the checkpoint named `name`.
pub(crate) async fn write(
    tx: &mut PgConnection,
    projection: &str,
    name: &str,
    position: FeedPosition,
) -> Result<(), ProjectionError> {
    let global = position_column(position.global_position);
    sqlx::query(WRITE_CHECKPOINT)
        .bind(name)
        .bind(position.transaction_id.to_string())
        .bind(global)
        .execute(&mut *tx)
        .await
        .map_err(|e| ProjectionError::database(projection, "write the checkpoint", e))?;
    Ok(())
}
