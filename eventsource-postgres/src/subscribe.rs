//! Live subscriptions on PostgreSQL: wake-ups from the shared listener, holdup reports.

use chrono::{DateTime, Utc};
use eventsource_core::store::WakeSignal;
use eventsource_core::{FeedHoldup, StoreError, Subscribe};
use sqlx::postgres::PgRow;
use sqlx::Row;

use crate::error::{backend, corrupt};
use crate::feed_horizon::{writers_horizon, FeedHorizon};
use crate::listener;
use crate::store::PostgresStore;

const FEED_HOLDUP: &str = include_str!("sql/feed_holdup.sql");
const FEED_HOLDUP_WRITERS: &str = include_str!("sql/feed_holdup_writers.sql");

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
    /// that is still open, naming its backend pid, database, start time and statement (a
    /// prepared transaction by its gid, with no pid).
    ///
    /// Which transactions count depends on the store's [`FeedHorizon`]: in Writers mode (the
    /// default), the oldest open transaction that has appended to `eventsource.events` in this
    /// database; in Cluster mode, the oldest transaction holding an id anywhere on the server.
    pub async fn holdup(&self) -> Result<Option<FeedHoldup>, StoreError> {
        let failed = |e| backend("find what holds the feed back", e);
        let row = match self.feed_horizon {
            FeedHorizon::Cluster => sqlx::query(FEED_HOLDUP)
                .fetch_one(&self.pool)
                .await
                .map_err(failed)?,
            FeedHorizon::Writers => {
                let mut conn = self.pool.acquire().await.map_err(failed)?;
                let horizon = writers_horizon(&mut conn).await?;
                let Some(writer) = horizon.writer else {
                    // Nothing but the snapshot's own bound: no open writer holds the feed.
                    return Ok(None);
                };
                sqlx::query(FEED_HOLDUP_WRITERS)
                    .bind(horizon.below)
                    .bind(writer.pid)
                    .bind(writer.xid)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(failed)?
            }
        };
        holdup_of(&row)
    }
}

/// The holdup a row of either holdup query describes (`None` when no event waits).
fn holdup_of(row: &PgRow) -> Result<Option<FeedHoldup>, StoreError> {
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
