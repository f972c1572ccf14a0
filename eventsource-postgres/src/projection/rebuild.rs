//! Rebuilding a projection: replay from the start into shadow tables, then swap them in.
//!
//! **Readers never see a half-built read model.** The rebuild creates the projection's tables
//! in a private schema (`<projection>_rebuild`), replays the whole feed into them, and then, in
//! one transaction, drops the live tables and moves the new ones into the projection's schema
//! together with the checkpoint. Readers of the live tables keep reading the old model during
//! the replay; during the swap transaction (milliseconds) they wait on its lock, then read the
//! new tables. Views or foreign keys that depend on the live tables make the swap fail: drop
//! and recreate them around a rebuild.
//!
//! A rebuild runs beside the projection's live runner, which keeps the live model current
//! meanwhile (one rebuild of a projection runs at a time). The swap locks the live checkpoint
//! first, so it waits for the runner's batch in hand; the runner's next batch finds the
//! checkpoint moved and continues from the rebuilt one, on the rebuilt tables. An interrupted rebuild resumes from its own checkpoint on the next call,
//! unless [`RebuildOptions::fresh`] is set; so does one whose handler failed
//! ([`ProjectionError::RebuildBatchFailed`]), once the handler is fixed.
//!
//! A rebuild applies every event the projection wants, including those a live runner parked as
//! dead letters: the swap marks those as settled, so a later replay cannot apply them twice.

use std::time::Duration;

use eventsource_core::{FeedFilter, FeedPosition, FeedReader};
use sqlx::{Connection, PgConnection, Row};

use super::error::ProjectionError;
use super::lock::{self, Role};
use super::scope::{check_identifier, quoted, set_search_path};
use super::{checkpoint, Projection};
use crate::row::Xid8;
use crate::store::PostgresStore;

const COUNT_EVENTS: &str = include_str!("sql/count_events.sql");
const SETTLE_DEAD_LETTERS: &str = include_str!("sql/settle_dead_letters.sql");

/// How a rebuild runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildOptions {
    /// Events per transaction (default 1,000).
    pub batch_size: usize,
    /// Discard an interrupted rebuild instead of resuming it.
    pub fresh: bool,
    /// How often to retry taking the projection's lock while a runner holds it (default 1 s).
    pub lock_retry: Duration,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self {
            batch_size: 1_000,
            fresh: false,
            lock_retry: Duration::from_secs(1),
        }
    }
}

/// Progress of a rebuild: events applied of the events to apply (the total grows while
/// writers append).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildProgress {
    /// Events applied so far (including those of an interrupted run that this one resumed).
    pub done: u64,
    /// Events the projection wants, as last counted.
    pub total: u64,
}

/// Rebuilds `projection` from the start of the feed (see the [module documentation](self)),
/// calling `progress` after each batch. Returns the checkpoint the live model continues from.
pub async fn rebuild<P: Projection>(
    store: &PostgresStore,
    projection: &P,
    options: RebuildOptions,
    mut progress: impl FnMut(RebuildProgress) + Send,
) -> Result<FeedPosition, ProjectionError> {
    let name = projection.name();
    // The shadow schema is `<name>_rebuild`, itself an identifier of at most 63 bytes.
    check_identifier(name, "projection name", &format!("{name}_rebuild"))?;
    check_identifier(name, "schema", projection.schema())?;
    for table in projection.tables() {
        check_identifier(name, "table", table)?;
    }
    let connect_options = (*store.pool().connect_options()).clone();
    let mut spare = None;
    let mut conn = loop {
        if let Some(conn) =
            lock::try_acquire(&connect_options, Role::Rebuild, name, &mut spare).await?
        {
            break conn;
        }
        tracing::info!(
            projection = name,
            "waiting for another rebuild of the projection to finish"
        );
        tokio::time::sleep(options.lock_retry).await;
    };
    let result = replay_and_swap(store, projection, &options, &mut progress, &mut conn).await;
    let _ = conn.close().await;
    result
}

async fn replay_and_swap<P: Projection>(
    store: &PostgresStore,
    projection: &P,
    options: &RebuildOptions,
    progress: &mut (impl FnMut(RebuildProgress) + Send),
    conn: &mut PgConnection,
) -> Result<FeedPosition, ProjectionError> {
    let name = projection.name();
    let shadow = format!("{name}_rebuild");
    let rebuild_checkpoint = format!("{name}#rebuild");
    let filter = projection.filter();
    let db = |op: &'static str| move |e| ProjectionError::database(name, op, e);

    // Start (or resume) the shadow model.
    let mut position = {
        let mut tx = conn.begin().await.map_err(db("begin the rebuild"))?;
        let resumed = checkpoint::read_for_update(&mut tx, name, &rebuild_checkpoint).await?;
        let position = match resumed {
            Some(position) if !options.fresh => position,
            _ => {
                for statement in [
                    format!("DROP SCHEMA IF EXISTS {} CASCADE", quoted(&shadow)),
                    format!("CREATE SCHEMA {}", quoted(&shadow)),
                ] {
                    sqlx::query(&statement)
                        .execute(&mut *tx)
                        .await
                        .map_err(db("create the shadow schema"))?;
                }
                set_search_path(name, &mut tx, &shadow).await?;
                projection
                    .setup(&mut tx)
                    .await
                    .map_err(|e| ProjectionError::SetupFailed {
                        projection: name.to_owned(),
                        error: e.to_string(),
                    })?;
                checkpoint::write(&mut tx, name, &rebuild_checkpoint, FeedPosition::START).await?;
                FeedPosition::START
            }
        };
        tx.commit().await.map_err(db("commit the rebuild start"))?;
        position
    };

    let mut done = count(store, name, &filter, Some(position)).await?;
    let mut total = count(store, name, &filter, None).await?.max(done);
    progress(RebuildProgress { done, total });
    loop {
        let batch = store
            .read_feed_batch(position, options.batch_size, &filter)
            .await?;
        if batch.next != position {
            let mut tx = conn.begin().await.map_err(db("begin a rebuild batch"))?;
            checkpoint::lock_in_schema(&mut tx, name, &rebuild_checkpoint, &shadow).await?;
            apply(projection, &mut tx, &batch.events).await?;
            checkpoint::write(&mut tx, name, &rebuild_checkpoint, batch.next).await?;
            tx.commit().await.map_err(db("commit a rebuild batch"))?;
            position = batch.next;
            done += batch.events.len() as u64;
            total = total.max(done);
            progress(RebuildProgress { done, total });
        }
        if batch.reached_head {
            break;
        }
    }

    // Swap: the live tables go, the rebuilt ones move in, with the checkpoint, atomically.
    // The live checkpoint row is locked first (as a dead-letter replay does before it writes
    // the live tables, so the two cannot deadlock): that waits for the live runner's batch in
    // hand and holds its next one back. The events committed since the last batch, which the
    // live model may already hold, are then applied to the rebuilt model in this transaction,
    // so the swapped-in model is never behind the one it replaces.
    let live = projection.schema();
    let mut tx = conn.begin().await.map_err(db("begin the swap"))?;
    checkpoint::read_for_update(&mut tx, name, name).await?;
    set_search_path(name, &mut tx, &shadow).await?;
    loop {
        let batch = store
            .read_feed_batch(position, options.batch_size, &filter)
            .await?;
        apply(projection, &mut tx, &batch.events).await?;
        position = batch.next;
        done += batch.events.len() as u64;
        if batch.reached_head {
            break;
        }
    }
    progress(RebuildProgress {
        done,
        total: total.max(done),
    });
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {}", quoted(live)))
        .execute(&mut *tx)
        .await
        .map_err(db("create the live schema"))?;
    for table in projection.tables() {
        let row = sqlx::query("SELECT to_regclass($1) IS NOT NULL AS present")
            .bind(format!("{}.{}", quoted(live), quoted(table)))
            .fetch_one(&mut *tx)
            .await
            .map_err(db("look up a live table"))?;
        let present: bool = row.try_get("present").map_err(db("look up a live table"))?;
        if present {
            sqlx::query(&format!("DROP TABLE {}.{}", quoted(live), quoted(table)))
                .execute(&mut *tx)
                .await
                .map_err(db(
                    "drop a live table (do views or foreign keys depend on it?)",
                ))?;
        }
        sqlx::query(&format!(
            "ALTER TABLE {}.{} SET SCHEMA {}",
            quoted(&shadow),
            quoted(table),
            quoted(live)
        ))
        .execute(&mut *tx)
        .await
        .map_err(db(
            "move a rebuilt table in (did setup create every table of tables()?)",
        ))?;
    }
    checkpoint::write(&mut tx, name, name, position).await?;
    // The rebuilt model applied every event up to `position`, parked ones included (a rebuild
    // stops on a failing event): replaying them would apply them twice.
    sqlx::query(SETTLE_DEAD_LETTERS)
        .bind(name)
        .bind(Xid8(position.transaction_id))
        .bind(i64::try_from(position.global_position.get()).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(db("settle the dead letters the rebuild applied"))?;
    sqlx::query("DELETE FROM eventsource.checkpoints WHERE name = $1")
        .bind(&rebuild_checkpoint)
        .execute(&mut *tx)
        .await
        .map_err(db("drop the rebuild checkpoint"))?;
    sqlx::query(&format!("DROP SCHEMA {} CASCADE", quoted(&shadow)))
        .execute(&mut *tx)
        .await
        .map_err(db("drop the shadow schema"))?;
    tx.commit().await.map_err(db("commit the swap"))?;
    tracing::info!(projection = name, events = done, "rebuilt and swapped in");
    Ok(position)
}

/// Applies one batch of the rebuild through the projection's handler.
async fn apply<P: Projection>(
    projection: &P,
    tx: &mut PgConnection,
    events: &[eventsource_core::RecordedEvent],
) -> Result<(), ProjectionError> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Ok(());
    };
    projection
        .handle(tx, events)
        .await
        .map_err(|error| ProjectionError::RebuildBatchFailed {
            projection: projection.name().to_owned(),
            first: first.position,
            last: last.position,
            events: events.len(),
            error: error.to_string(),
        })
}

/// Events `filter` wants, up to `upto` (all when `None`).
async fn count(
    store: &PostgresStore,
    name: &str,
    filter: &FeedFilter,
    upto: Option<FeedPosition>,
) -> Result<u64, ProjectionError> {
    let row = sqlx::query(COUNT_EVENTS)
        .bind(filter.category_names())
        .bind(filter.event_types.as_deref())
        .bind(upto.map(|p| p.transaction_id.to_string()))
        .bind(upto.map(|p| i64::try_from(p.global_position.get()).unwrap_or(i64::MAX)))
        .fetch_one(store.pool())
        .await
        .map_err(|e| ProjectionError::database(name, "count events", e))?;
    let events: i64 = row
        .try_get("events")
        .map_err(|e| ProjectionError::database(name, "count events", e))?;
    Ok(u64::try_from(events).unwrap_or(0))
}
