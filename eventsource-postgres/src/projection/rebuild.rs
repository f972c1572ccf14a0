//! Rebuilding a projection: replay from the start into shadow tables, then swap them in.
//!
//! **Readers never see a half-built read model.** The rebuild creates the projection's tables
//! in a private schema (`<projection>_rebuild`), replays the whole feed into them, and then, in
//! one transaction, drops the live tables and moves the new ones into the projection's schema
//! together with the checkpoint. Readers of the live tables keep reading the old model during
//! the replay and until the swap commits, then read the new tables. The swap waits at most a
//! few seconds for a live table that a long reader holds (it holds the feed back meanwhile),
//! then gives up and tries again. Views or foreign keys that depend on the live tables make the
//! swap fail: drop and recreate them around a rebuild.
//!
//! A rebuild runs beside the projection's live runner, which keeps the live model current
//! meanwhile (one rebuild of a projection runs at a time). The swap locks the live checkpoint
//! first, so it waits for the runner's batch in hand, then applies the events committed since
//! its last batch; the runner's next batch finds the checkpoint moved and continues from the
//! rebuilt one, on the rebuilt tables. This assumes the live runner runs the same projection
//! code: to rebuild for a changed model, stop the runners of the old code first and start the
//! new code's after the swap (or during the rebuild: they then take part as above).
//!
//! An interrupted rebuild resumes from its own checkpoint on the next call, unless
//! [`RebuildOptions::fresh`] is set; so does one whose handler failed
//! ([`ProjectionError::RebuildBatchFailed`]), once the handler is fixed.
//!
//! A rebuild applies every event the projection wants, including those a live runner parked as
//! dead letters: the swap settles the projection's dead letters up to the rebuilt checkpoint,
//! so a later replay cannot apply them twice.

use std::time::Duration;

use eventsource_core::{BoxError, FeedFilter, FeedFollower, FeedItem, FeedOptions, FeedPosition};
use sqlx::{Connection, PgConnection, Row};

use super::error::ProjectionError;
use super::scope::{check_identifier, quoted, set_search_path};
use super::setup::install;
use super::setup_lock;
use super::{checkpoint, read_filter, Projection};
use crate::active_instance::ActiveInstance;
use crate::error::sqlstate;
use crate::row::{position_column, Xid8};
use crate::store::PostgresStore;

/// The kind of the rebuild's lock: one rebuild per projection, beside its active runner.
const REBUILD: &str = "rebuild";

const COUNT_EVENTS: &str = include_str!("sql/count_events.sql");
const SETTLE_DEAD_LETTERS: &str = include_str!("sql/settle_dead_letters.sql");

/// How a rebuild runs.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildOptions {
    /// Events and bytes per transaction (default 1,000 events and 16 MiB), with the reconnect
    /// backoff of its reads. Its `filter` is ignored: the rebuild reads what
    /// [`Projection::filter`] asks for.
    pub feed: FeedOptions,
    /// Discard an interrupted rebuild instead of resuming it.
    pub fresh: bool,
    /// How long to wait before trying again while another rebuild of the projection runs, or
    /// after a swap found the live tables busy (default 1 s).
    pub lock_retry: Duration,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self {
            feed: FeedOptions::default().with_batch_size(1_000),
            fresh: false,
            lock_retry: Duration::from_secs(1),
        }
    }
}

impl RebuildOptions {
    /// The catch-up follower of the projection's events after `position`.
    fn follower<'s>(
        &self,
        store: &'s PostgresStore,
        filter: &FeedFilter,
        position: FeedPosition,
    ) -> FeedFollower<&'s PostgresStore> {
        let options = self.feed.clone().with_filter(filter.clone());
        FeedFollower::catch_up(store, position, options)
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
    let mut instance = ActiveInstance::new(store, REBUILD, name);
    let mut conn = loop {
        let acquired = instance.try_acquire().await.map_err(|e| {
            ProjectionError::database(name, "take the projection's rebuild lock", e)
        })?;
        if let Some(conn) = acquired {
            instance.close().await;
            break conn;
        }
        tracing::info!(
            projection = name,
            "waiting for another rebuild of the projection to finish"
        );
        tokio::time::sleep(options.lock_retry).await;
    };
    let result = replay_and_swap(store, projection, &options, &mut progress, &mut conn).await;
    instance.release(conn).await;
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
    let filter = read_filter(projection);
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
                install(projection, &mut tx, &shadow, &rebuild_checkpoint).await?;
                FeedPosition::START
            }
        };
        tx.commit().await.map_err(db("commit the rebuild start"))?;
        position
    };

    let mut done = count(store, name, &filter, Some(position)).await?;
    let mut total = count(store, name, &filter, None).await?.max(done);
    progress(RebuildProgress { done, total });
    let mut feed = options.follower(store, &filter, position);
    loop {
        let batch = feed.next().await?;
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

    // Swap, retried while readers of the live tables hold them longer than the lock timeout.
    loop {
        match swap(store, projection, options, conn, position).await? {
            Swapped::Done {
                position,
                caught_up,
            } => {
                done += caught_up;
                progress(RebuildProgress {
                    done,
                    total: total.max(done),
                });
                tracing::info!(projection = name, events = done, "rebuilt and swapped in");
                return Ok(position);
            }
            Swapped::TablesBusy => {
                tracing::info!(
                    projection = name,
                    "the live tables are in use; retrying the swap"
                );
                tokio::time::sleep(options.lock_retry).await;
            }
        }
    }
}

/// How a swap attempt ended.
enum Swapped {
    /// The rebuilt model is live from `position`, after applying `caught_up` more events.
    Done {
        position: FeedPosition,
        caught_up: u64,
    },
    /// A live table stayed locked (by a long reader) past the lock timeout: nothing changed.
    TablesBusy,
}

/// How long the swap waits for a live table's lock. The swap holds a transaction id meanwhile,
/// which holds back every feed reader of the database, so it gives up quickly and retries.
const SWAP_LOCK_TIMEOUT: &str = "2s";

/// SQLSTATE of a lock timeout.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Swaps the rebuilt model (at `position`) in: the live tables go, the rebuilt ones move in,
/// with the checkpoint, atomically.
///
/// Locks the live checkpoint row first, as a runner's batch and a dead-letter replay do before
/// they write the live tables (so none of them can deadlock): that waits for the live runner's
/// batch in hand and holds its next one back. Takes the setup lock too, so a runner's first
/// setup cannot overwrite the checkpoint written here. The events committed since the last
/// rebuild batch, which the live model may already hold, are applied to the rebuilt model in
/// this transaction, so the swapped-in model is never behind the one it replaces.
async fn swap<P: Projection>(
    store: &PostgresStore,
    projection: &P,
    options: &RebuildOptions,
    conn: &mut PgConnection,
    mut position: FeedPosition,
) -> Result<Swapped, ProjectionError> {
    let name = projection.name();
    let shadow = format!("{name}_rebuild");
    let filter = read_filter(projection);
    let db = |op: &'static str| move |e| ProjectionError::database(name, op, e);
    let live = projection.schema();
    let mut tx = conn.begin().await.map_err(db("begin the swap"))?;
    setup_lock::setup_lock(&mut tx, name).await?;
    checkpoint::read_for_update(&mut tx, name, name).await?;
    sqlx::query(&format!("SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'"))
        .execute(&mut *tx)
        .await
        .map_err(db("set the swap's lock timeout"))?;
    set_search_path(name, &mut tx, &shadow).await?;
    let mut caught_up = 0;
    let mut feed = options.follower(store, &filter, position);
    loop {
        let batch = feed.next().await?;
        apply(projection, &mut tx, &batch.events).await?;
        position = batch.next;
        caught_up += batch.events.len() as u64;
        if batch.reached_head {
            break;
        }
    }
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
            let dropped = sqlx::query(&format!("DROP TABLE {}.{}", quoted(live), quoted(table)))
                .execute(&mut *tx)
                .await;
            match dropped {
                Err(error) if sqlstate(&error).as_deref() == Some(LOCK_NOT_AVAILABLE) => {
                    // Rolled back now, not at the next attempt: it holds a transaction id.
                    let _ = tx.rollback().await;
                    return Ok(Swapped::TablesBusy);
                }
                Err(error) => {
                    return Err(db(
                        "drop a live table (do views or foreign keys depend on it?)",
                    )(error))
                }
                Ok(_) => {}
            }
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
    // The rebuilt model applied every event up to `position` that the projection wants, parked
    // ones included (a rebuild stops on a failing event): replaying them would apply them twice.
    sqlx::query(SETTLE_DEAD_LETTERS)
        .bind(name)
        .bind(Xid8(position.transaction_id))
        .bind(position_column(position.global_position))
        .execute(&mut *tx)
        .await
        .map_err(db("settle the dead letters the rebuild applied"))?;
    sqlx::query("DELETE FROM eventsource.checkpoints WHERE name = $1")
        .bind(format!("{name}#rebuild"))
        .execute(&mut *tx)
        .await
        .map_err(db("drop the rebuild checkpoint"))?;
    // Without CASCADE: anything setup created besides the moved tables (their indexes and
    // owned sequences moved with them) would otherwise be dropped along with what depends on it.
    sqlx::query(&format!("DROP SCHEMA {}", quoted(&shadow)))
        .execute(&mut *tx)
        .await
        .map_err(db(
            "drop the shadow schema (setup created objects other than the tables of tables(), such as types or functions: create those outside the projection's schema)",
        ))?;
    tx.commit().await.map_err(db("commit the swap"))?;
    Ok(Swapped::Done {
        position,
        caught_up,
    })
}

/// Applies one batch of the rebuild through the projection's handler. An event that does
/// not decode into the projection's event type fails the batch like a failing handler.
async fn apply<P: Projection>(
    projection: &P,
    tx: &mut PgConnection,
    events: &[eventsource_core::RecordedEvent],
) -> Result<(), ProjectionError> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Ok(());
    };
    let failed = |source: BoxError| ProjectionError::RebuildBatchFailed {
        projection: projection.name().to_owned(),
        first: first.position,
        last: last.position,
        events: events.len(),
        source,
    };
    let items = P::Event::view(events).map_err(|(_, error)| failed(error))?;
    projection
        .handle(tx, &items)
        .await
        .map_err(|error| failed(error.into()))
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
        .bind(upto.map(|p| position_column(p.global_position)))
        .fetch_one(store.pool())
        .await
        .map_err(|e| ProjectionError::database(name, "count events", e))?;
    let events: i64 = row
        .try_get("events")
        .map_err(|e| ProjectionError::database(name, "count events", e))?;
    Ok(u64::try_from(events).unwrap_or(0))
}
