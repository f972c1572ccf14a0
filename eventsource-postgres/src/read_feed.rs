//! Reading the global feed below the transaction-id horizon (see feed_horizon.rs).

use async_trait::async_trait;
use eventsource_core::{
    BatchSize, FeedBatch, FeedFilter, FeedPosition, FeedReader, RecordedEvent, StoreError,
    ValidationError,
};
use futures::TryStreamExt;
use sqlx::postgres::PgRow;
use sqlx::{Column, PgConnection, Row};

use crate::error::{backend, corrupt};
use crate::feed_horizon::{writers_horizon, FeedHorizon};
use crate::row::{EventColumns, Xid8};
use crate::store::PostgresStore;

const READ_FEED: &str = include_str!("sql/read_feed.sql");

#[async_trait]
impl FeedReader for PostgresStore {
    /// Reads in `(transaction_id, position)` order, only events below the store's
    /// [`FeedHorizon`]: in Writers mode, computed by one statement and then used by a second
    /// one on the same connection (see `feed_horizon.rs` for why that never skips); in Cluster
    /// mode, the oldest transaction still running on the server, in the read's own statement.
    ///
    /// Relies on every event insert being its transaction's first write (true of
    /// [`PostgresStore::append`](eventsource_core::EventAppender::append)): then a transaction
    /// that appends after another committed has a larger id, so each stream's versions appear in
    /// order. Relies on the query returning one row per examined event, in feed order: the batch
    /// continues after the last row it keeps and reaches the head when fewer than `size.events`
    /// came back and none was left for the byte budget.
    ///
    /// The byte budget is kept here: the reader counts the payload and metadata bytes it
    /// receives and stops before the event that would pass the budget. It then closes its
    /// connection instead of returning it to the pool, so the rest of the result is never
    /// transferred (the server abandons the read-only statement).
    async fn read_feed_batch(
        &self,
        after: FeedPosition,
        size: BatchSize,
        filter: &FeedFilter,
    ) -> Result<FeedBatch, StoreError> {
        let size = size.check()?;
        self.check_transaction_ids(None).await?;
        // Both statements on one connection, each in autocommit: the events are read in a
        // snapshot taken after the horizon was computed (see feed_horizon.rs for why).
        let mut conn =
            self.pool.acquire().await.map_err(|e| {
                backend(format!("read the feed after {after}: take a connection"), e)
            })?;
        let horizon = match self.feed_horizon {
            FeedHorizon::Writers => Some(writers_horizon(&mut conn).await?.below),
            FeedHorizon::Cluster => None,
        };
        let (batch, unread) = read_below(&mut conn, horizon, after, size, filter).await?;
        if unread {
            // Rows are still on their way: close the connection rather than receive them.
            drop(conn.detach());
        }
        Ok(batch)
    }
}

/// Step 2 of a feed read: one batch after `after` of the events below `horizon` (`None`: below
/// the oldest transaction running on the server, read in the same statement), on `conn`.
///
/// `conn` must not be in a transaction, and in Writers mode `horizon` must come from
/// [`writers_horizon`] run *before* this, so that this statement's snapshot is taken after the
/// lock read. `size` must be checked ([`BatchSize::check`]).
///
/// The second value is `true` when the batch stopped at its byte budget with rows of the result
/// still unread: `conn` is then in the middle of a result, and must be closed, not reused.
pub(crate) async fn read_below(
    conn: &mut PgConnection,
    horizon: Option<Xid8>,
    after: FeedPosition,
    size: BatchSize,
    filter: &FeedFilter,
) -> Result<(FeedBatch, bool), StoreError> {
    let categories: Option<Vec<&str>> = filter
        .categories
        .as_ref()
        .map(|cs| cs.iter().map(|c| c.as_str()).collect());
    let after_position = i64::try_from(after.global_position.get()).map_err(|_| {
        ValidationError::FeedPositionSyntax {
            input: after.to_string(),
        }
    })?;
    let mut rows = sqlx::query(READ_FEED)
        .bind(Xid8(after.transaction_id))
        .bind(after_position)
        .bind(i64::try_from(size.events).unwrap_or(i64::MAX))
        .bind(categories)
        .bind(filter.event_types.as_deref())
        .bind(horizon)
        .fetch(&mut *conn);
    let failed = |e| backend(format!("read the feed after {after}"), e);
    // Rows are decoded as they arrive, while the server still sends the rest.
    let mut decoder: Option<(EventColumns, usize)> = None;
    let mut events: Vec<RecordedEvent> = Vec::new();
    let mut examined = 0;
    let mut bytes = 0usize;
    let mut stopped = false;
    let mut last = None;
    while let Some(row) = rows.try_next().await.map_err(failed)? {
        let (columns, wanted) = match decoder {
            Some(decoder) => decoder,
            None => *decoder.insert((EventColumns::of(&row)?, flag_column(&row, "wanted")?)),
        };
        if flag(&row, wanted, "wanted")? {
            bytes = bytes.saturating_add(columns.data_bytes(&row));
            if bytes > size.bytes && !events.is_empty() {
                stopped = true;
                break;
            }
            let previous = events.last().map(|e| &e.stream_id);
            events.push(columns.decode(&row, previous)?);
        }
        examined += 1;
        last = Some((columns, row));
    }
    drop(rows);
    let next = match last {
        Some((columns, row)) => columns.feed_position(&row)?,
        None => after,
    };
    let batch = FeedBatch {
        events,
        next,
        reached_head: !stopped && examined < size.events,
    };
    Ok((batch, stopped))
}

/// Where the feed query's flag `name` is in its rows.
fn flag_column(row: &PgRow, name: &str) -> Result<usize, StoreError> {
    row.try_column(name)
        .map(|c| c.ordinal())
        .map_err(|e| corrupt(format!("column `{name}` of the feed query: {e}")))
}

/// Reads the flag `name` at `index`.
fn flag(row: &PgRow, index: usize, name: &str) -> Result<bool, StoreError> {
    row.try_get(index)
        .map_err(|e| corrupt(format!("column `{name}` of the feed query: {e}")))
}
