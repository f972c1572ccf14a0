//! How far a projection (or any reader with a checkpoint, such as a relay) is behind the head
//! of the feed.

use chrono::{DateTime, Utc};
use eventsource_core::{FeedFilter, FeedHoldup, FeedPosition, StoreError};
use sqlx::Row;

use super::error::ProjectionError;
use super::registry::registration;
use super::{read_filter, Projection};
use crate::error::backend;
use crate::row::feed_position;
use crate::store::PostgresStore;

const LAG: &str = include_str!("sql/lag.sql");

/// A projection's distance from the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionLag {
    /// Its checkpoint (`None` before its first run).
    pub checkpoint: Option<FeedPosition>,
    /// Committed events it wants and has not applied (some may wait behind an open
    /// transaction: see `holdup`).
    pub events_behind: u64,
    /// When the oldest of them was recorded.
    pub oldest_pending: Option<DateTime<Utc>>,
    /// How long ago that was: the time lag.
    pub time_behind: Option<chrono::Duration>,
    /// What holds the feed back, if anything.
    pub holdup: Option<FeedHoldup>,
}

/// Measures `projection`'s lag: events and time behind the head, and any holdup.
pub async fn lag<P: Projection>(
    store: &PostgresStore,
    projection: &P,
) -> Result<ProjectionLag, ProjectionError> {
    Ok(measure(store, projection.name(), &read_filter(projection)).await?)
}

/// Measures the lag of the projection named `name`, from any process, without its code: the
/// filter is the one its last active runner registered (every event, before any runner ran).
pub async fn lag_of(store: &PostgresStore, name: &str) -> Result<ProjectionLag, ProjectionError> {
    let filter = registration(store, name)
        .await?
        .map_or_else(FeedFilter::all, |registration| registration.filter);
    Ok(measure(store, name, &filter).await?)
}

/// Measures the lag of the reader whose checkpoint is named `name` and reads `filter`.
pub(crate) async fn measure(
    store: &PostgresStore,
    name: &str,
    filter: &FeedFilter,
) -> Result<ProjectionLag, StoreError> {
    let operation = || format!("measure the lag of `{name}`");
    let db = |e| backend(operation(), e);
    let row = sqlx::query(LAG)
        .bind(name)
        .bind(filter.category_names())
        .bind(filter.event_types.as_deref())
        .fetch_one(store.pool())
        .await
        .map_err(db)?;
    let exists: bool = row.try_get("exists").map_err(db)?;
    let transaction: String = row.try_get("transaction_id").map_err(db)?;
    let position: i64 = row.try_get("position").map_err(db)?;
    let behind: i64 = row.try_get("events_behind").map_err(db)?;
    let oldest_pending: Option<DateTime<Utc>> = row.try_get("oldest_pending").map_err(db)?;
    Ok(ProjectionLag {
        checkpoint: if exists {
            Some(feed_position(&transaction, position)?)
        } else {
            None
        },
        events_behind: u64::try_from(behind).unwrap_or(0),
        oldest_pending,
        time_behind: oldest_pending.map(|t| Utc::now() - t),
        holdup: store.holdup().await?,
    })
}
