//! Feed positions of stored events: by event id, or from a row of your own query.

use eventsource_core::{FeedPosition, StoreError};
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::error::backend;
use crate::row::{column, stored_feed_position, Xid8};
use crate::store::PostgresStore;

const EVENT_POSITION: &str = include_str!("sql/event_position.sql");

impl PostgresStore {
    /// The feed position of the stored event `event_id`, `None` when no such event is stored:
    /// a target to wait for ("has my read model seen this event?").
    ///
    /// ```no_run
    /// # async fn run(store: eventsource_postgres::PostgresStore, id: uuid::Uuid) -> Result<(), eventsource_core::StoreError> {
    /// if let Some(position) = store.feed_position_of(id).await? {
    ///     println!("event {id} is at {position} in the feed");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn feed_position_of(
        &self,
        event_id: Uuid,
    ) -> Result<Option<FeedPosition>, StoreError> {
        let row = sqlx::query(EVENT_POSITION)
            .bind(event_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| backend(format!("read the feed position of event {event_id}"), e))?;
        row.as_ref().map(feed_position).transpose()
    }
}

/// The feed position of a row of `eventsource.events` selected by your own query: the row must
/// have the columns `transaction_id` (as stored, `xid8`, or as text) and `position`.
///
/// ```no_run
/// # async fn run(store: eventsource_postgres::PostgresStore) -> Result<(), Box<dyn std::error::Error>> {
/// let row = sqlx::query(
///     "SELECT transaction_id, position FROM eventsource.events
///      WHERE category = 'order' ORDER BY transaction_id DESC, position DESC LIMIT 1",
/// )
/// .fetch_one(store.pool())
/// .await?;
/// let newest_order_event = eventsource_postgres::feed_position(&row)?;
/// # Ok(()) }
/// ```
pub fn feed_position(row: &PgRow) -> Result<FeedPosition, StoreError> {
    stored_feed_position(
        column::<Xid8>(row, "transaction_id")?,
        column(row, "position")?,
    )
}
