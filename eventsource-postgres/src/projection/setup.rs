//! Installing a projection's read model: its tables in a schema, and a checkpoint at the start
//! of the feed. A runner's first start installs it in the projection's schema; a rebuild
//! installs it afresh in its shadow schema.

use eventsource_core::FeedPosition;
use sqlx::PgConnection;

use super::error::ProjectionError;
use super::scope::set_search_path;
use super::{checkpoint, Projection};

/// In `tx`: points the transaction at `schema`, runs the projection's setup there, and writes
/// the checkpoint named `checkpoint` at the start of the feed.
///
/// Relies on `schema` existing and having passed `check_identifier`.
pub(crate) async fn install<P: Projection + ?Sized>(
    projection: &P,
    tx: &mut PgConnection,
    schema: &str,
    checkpoint: &str,
) -> Result<(), ProjectionError> {
    let name = projection.name();
    set_search_path(name, tx, schema).await?;
    projection
        .setup(tx)
        .await
        .map_err(|e| ProjectionError::SetupFailed {
            projection: name.to_owned(),
            source: e.into(),
        })?;
    checkpoint::write(tx, name, checkpoint, FeedPosition::START).await
}
