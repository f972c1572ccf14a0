//! Live subscriptions on PostgreSQL: wake-ups from the shared listener, holdup reports.

use chrono::{DateTime, Utc};
use eventsource_core::{FeedHoldup, StoreError, Subscribe, WakeSignal};
use sqlx::Row;

use crate::error::{backend, corrupt};
use crate::listener;
use crate::store::PostgresStore;

const FEED_HOLDUP: &str = include_str!("sql/feed_holdup.sql");

impl Subscribe for PostgresStore {
    /// The signal of the store's one LISTEN connection, started on first use and shared by
    /// every subscription of this store and its clones. Without notifications, a signal that
    /// never fires: subscriptions poll.
    fn wake_signal(&self) -> WakeSignal {
        if self.shared.notifications_off {
            return tokio::sync::watch::channel(0).1;
        }
        self.shared
            .signal
            .get_or_init(|| listener::start(self.pool.clone(), self.shared.listener_stats.clone()))
            .clone()
    }

    async fn feed_holdup(&self) -> Result<Option<FeedHoldup>, StoreError> {
        self.holdup().await
    }
}

impl PostgresStore {
    /// What holds the feed back: `Some` when committed events wait behind a write transaction
    /// that is still open (anywhere on the server), naming its backend pid, database, start time
    /// and statement.
    pub async fn holdup(&self) -> Result<Option<FeedHoldup>, StoreError> {
        let row = sqlx::query(FEED_HOLDUP)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| backend("find what holds the feed back", e))?;
        let get = |name: &str| corrupt(format!("column {name} of the holdup query"));
        let waiting: i64 = row
            .try_get("events_waiting")
            .map_err(|_| get("events_waiting"))?;
        if waiting == 0 {
            return Ok(None);
        }
        Ok(Some(FeedHoldup {
            pid: row.try_get("pid").map_err(|_| get("pid"))?,
            database: row.try_get("database").map_err(|_| get("database"))?,
            transaction_started: row
                .try_get::<Option<DateTime<Utc>>, _>("started")
                .map_err(|_| get("started"))?,
            state: row.try_get("state").map_err(|_| get("state"))?,
            query: row.try_get("query").map_err(|_| get("query"))?,
            events_waiting: u64::try_from(waiting).unwrap_or(0),
        }))
    }
}
