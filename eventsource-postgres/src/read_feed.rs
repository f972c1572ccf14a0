//! Reading the global feed below the transaction-id horizon.

use async_trait::async_trait;
use eventsource_core::{
    FeedBatch, FeedFilter, FeedPosition, FeedReader, RecordedEvent, StoreError, ValidationError,
};
use futures::TryStreamExt;
use sqlx::postgres::PgRow;
use sqlx::{Column, Row};

use crate::error::{backend, corrupt};
use crate::row::{EventColumns, Xid8};
use crate::store::PostgresStore;

const READ_FEED: &str = include_str!("sql/read_feed.sql");

#[async_trait]
impl FeedReader for PostgresStore {
    /// Reads in `(transaction_id, position)` order, only events of transactions older than the
    /// oldest one still running (see `sql/read_feed.sql`).
    ///
    /// Relies on every event insert being its transaction's first write (true of
    /// [`PostgresStore::append`](eventsource_core::EventAppender::append)): then a transaction
    /// that appends after another committed has a larger id, so each stream's versions appear in
    /// order. Relies on the query returning one row per examined event, in feed order: the batch
    /// continues after the last row and reaches the head when fewer than `limit` came back.
    async fn read_feed_batch(
        &self,
        after: FeedPosition,
        limit: usize,
        filter: &FeedFilter,
    ) -> Result<FeedBatch, StoreError> {
        if limit == 0 {
            return Err(ValidationError::ZeroBatchSize.into());
        }
        self.check_transaction_ids(None).await?;
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
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(categories)
            .bind(filter.event_types.as_deref())
            .fetch(&self.pool);
        let failed = |e| backend(format!("read the feed after {after}"), e);
        // Rows are decoded as they arrive, while the server still sends the rest.
        let mut decoder: Option<(EventColumns, usize)> = None;
        let mut events: Vec<RecordedEvent> = Vec::new();
        let mut examined = 0;
        let mut last = None;
        while let Some(row) = rows.try_next().await.map_err(failed)? {
            let (columns, wanted) = match decoder {
                Some(decoder) => decoder,
                None => *decoder.insert((EventColumns::of(&row)?, wanted_column(&row)?)),
            };
            let is_wanted: bool = row
                .try_get(wanted)
                .map_err(|e| corrupt(format!("column `wanted` of the feed query: {e}")))?;
            if is_wanted {
                let previous = events.last().map(|e| &e.stream_id);
                events.push(columns.decode(&row, previous)?);
            }
            examined += 1;
            last = Some((columns, row));
        }
        let next = match last {
            Some((columns, row)) => columns.feed_position(&row)?,
            None => after,
        };
        Ok(FeedBatch {
            events,
            next,
            reached_head: examined < limit,
        })
    }
}

/// Where the feed query's `wanted` flag is in its rows.
fn wanted_column(row: &PgRow) -> Result<usize, StoreError> {
    row.try_column("wanted")
        .map(|c| c.ordinal())
        .map_err(|e| corrupt(format!("column `wanted` of the feed query: {e}")))
}
