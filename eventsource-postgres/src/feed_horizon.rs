//! The feed's horizon: below which transaction id every event's place in the feed is final.
//!
//! The feed reads only events whose transaction id is below the horizon, in
//! `(transaction id, position)` order, so no event can later appear before what a reader has
//! passed. [`FeedHorizon`] chooses how the horizon is found.
//!
//! # Writers mode: why a feed read never skips
//!
//! A read is two autocommit statements on one connection, each with its own snapshot:
//!
//! 1. `sql/feed_horizon.sql` (snapshot S1, taken when it starts): `bound` = S1's xmax, then
//!    `pg_locks` is read for the transactions holding a writing lock (RowExclusiveLock or
//!    stronger) on `eventsource.events` in this database, and their transaction ids;
//!    horizon = least(`bound`, the smallest of those ids).
//! 2. `sql/read_feed.sql` (snapshot S2, taken after step 1 ended) reads the events below the
//!    horizon.
//!
//! It relies on the feed-order rule (an event insert is its transaction's first write; the
//! store's own appends keep it, `append_in` documents it): a transaction gets its id at its
//! first event insert, after it took RowExclusiveLock on the events table, and keeps that lock
//! until it ends (a prepared transaction keeps it until `COMMIT PREPARED`). Take an event of
//! transaction T with id x below the horizon. Then x < `bound`, so T held its id before S1,
//! hence also the lock. Had T still been running at S2, it would have been running during the
//! whole lock read, been seen there, and the horizon would be at most x. So T ended before S2:
//! PostgreSQL makes a transaction's commit visible before it releases its locks, so if T
//! committed, S2 sees its events, and if it rolled back they never appear. Events above the
//! horizon are left for a later read. Hence every event a read passes over is final.
//!
//! The order of the two statements matters: a snapshot taken *before* the locks are read would
//! miss a transaction that committed in between (gone from `pg_locks`, not yet visible), and a
//! reader could pass it. And `bound` matters: a transaction that takes its id after the lock
//! read (so the locks do not show it) has an id at or above `bound` and is held back by it.
//!
//! Details the argument also covers:
//! - subtransactions: the events row stores the top-level id, the smallest `transactionid`
//!   lock of its virtual transaction, which is what step 1 takes;
//! - fast-path locks are reported by `pg_locks` (read before the main lock table, and a lock
//!   only ever moves from the fast path to the main table, so one held throughout is seen);
//! - ids are 32-bit in `pg_locks`: they are widened to 64 bits by their distance from `bound`.
//!
//! What breaks it: a transaction that holds an id *before* it takes the lock on the events
//! table (it wrote something else first, or appended in a savepoint it rolled back and then
//! appended again) is not seen while it has no lock, and its events can then land below a
//! horizon a reader already passed. That is the feed-order rule again; in Cluster mode
//! breaking it only misorders, in Writers mode it can skip.

use eventsource_core::StoreError;
use sqlx::{PgConnection, Row};

use crate::error::{backend, corrupt};
use crate::row::Xid8;

const FEED_HORIZON: &str = include_str!("sql/feed_horizon.sql");

/// How the feed finds its horizon: which open transactions hold subscribers back.
///
/// Set it with [`PostgresStore::with_feed_horizon`](crate::PostgresStore::with_feed_horizon).
/// Both modes keep the feed's guarantee (every committed event exactly once, each stream in
/// version order); they differ in what delays delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FeedHorizon {
    /// The default: only the transactions that can still commit events hold the feed back,
    /// namely those holding a writing lock on `eventsource.events` in this database (read from
    /// `pg_locks`), including prepared ones. Write transactions in other databases of the
    /// server, on other tables, and read-only transactions do not delay delivery.
    ///
    /// Each feed read costs one more short statement (on the same connection). It relies on
    /// every event insert being its transaction's first write (see
    /// [`PostgresStore::append_in`](crate::PostgresStore::append_in)).
    #[default]
    Writers,
    /// The oldest transaction of the whole server holds the feed back
    /// (`pg_snapshot_xmin(pg_current_snapshot())`): any write transaction left open anywhere
    /// on the server, even in another database, delays delivery until it ends.
    ///
    /// For servers where reading `pg_locks` is not possible or not wanted (the lock read takes
    /// the lock manager's partition locks briefly). It needs no extra statement per read.
    Cluster,
}

/// The oldest transaction that can still commit events, as step 1 found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Writer {
    /// Its backend's process id; `None` for a prepared transaction.
    pub(crate) pid: Option<i32>,
    /// Its 32-bit transaction id (as `pg_locks` and `pg_prepared_xacts` report it).
    pub(crate) xid: i64,
}

/// The Writers-mode horizon and the writer that sets it, if one does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Horizon {
    /// Every event below this transaction id is final.
    pub(crate) below: Xid8,
    /// The oldest writer, when it is below the snapshot's xmax (else the horizon is that xmax).
    pub(crate) writer: Option<Writer>,
}

/// Step 1 of a Writers-mode feed read, on `conn` in autocommit: see the module documentation.
/// Run the events read afterwards, as a separate statement on a connection outside any
/// transaction (so it takes a new snapshot).
pub(crate) async fn writers_horizon(conn: &mut PgConnection) -> Result<Horizon, StoreError> {
    let row = sqlx::query(FEED_HORIZON)
        .fetch_one(conn)
        .await
        .map_err(|e| {
            backend(
                "compute the feed's horizon from pg_locks (if this server refuses it, use \
                 FeedHorizon::Cluster)",
                e,
            )
        })?;
    fn get(name: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
        move |e| corrupt(format!("column `{name}` of the feed horizon query: {e}"))
    }
    let below: Xid8 = row.try_get("horizon").map_err(get("horizon"))?;
    let pid: Option<i32> = row.try_get("writer_pid").map_err(get("writer_pid"))?;
    let xid: Option<i64> = row.try_get("writer_xid").map_err(get("writer_xid"))?;
    Ok(Horizon {
        below,
        writer: xid.map(|xid| Writer { pid, xid }),
    })
}

#[cfg(test)]
mod tests {
    use eventsource_core::{
        BatchSize, EventAppender, EventMetadata, ExpectedVersion, FeedFilter, FeedPosition,
        FeedReader, NewEvent, StreamId,
    };
    use serde_json::json;

    use super::*;
    use crate::read_feed::read_below;
    use crate::testing::TestDatabase;

    fn event(n: u64) -> NewEvent {
        NewEvent::new("Happened", 1, json!({ "n": n }), EventMetadata::default())
    }

    fn payload_n(events: &[eventsource_core::RecordedEvent]) -> Vec<u64> {
        events
            .iter()
            .map(|e| e.payload["n"].as_u64().expect("n"))
            .collect()
    }

    /// The race the bound closes: T1 takes its id after the horizon was computed (so the lock
    /// read did not see it), T2 appends and commits after it, and the events read then runs.
    /// T2's event must not be returned: a reader would move past T2's id, and T1's event, with
    /// its lower id, would be skipped when T1 commits. Forced with the two steps run by hand.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_that_starts_between_the_steps_is_not_skipped(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let db = TestDatabase::create().await?;
        let store = db.store().await?;
        let (a, b) = (StreamId::new("race", "a")?, StreamId::new("race", "b")?);

        let mut reader = store.pool().acquire().await?;
        let horizon = writers_horizon(&mut reader).await?;

        let mut t1 = store.pool().begin().await?;
        store
            .append_in(&mut t1, &a, ExpectedVersion::NoStream, vec![event(1)])
            .await?;
        let t2 = store
            .append(&b, ExpectedVersion::NoStream, vec![event(2)])
            .await?;
        let x1: Xid8 = sqlx::query_scalar("SELECT pg_current_xact_id()")
            .fetch_one(&mut *t1)
            .await?;
        assert!(
            x1.0 < t2.positions[0].transaction_id,
            "T1 holds the lower id"
        );

        let batch = read_below(
            &mut reader,
            Some(horizon.below),
            FeedPosition::START,
            BatchSize::events(1000),
            &FeedFilter::all(),
        )
        .await?
        .0;
        assert_eq!(
            payload_n(&batch.events),
            Vec::<u64>::new(),
            "T2's event was read while T1, with a lower id, is still open (horizon {:?})",
            horizon.below
        );
        assert_eq!(batch.next, FeedPosition::START, "the reader did not move");

        t1.commit().await?;
        let batch = store
            .read_feed_batch(batch.next, BatchSize::events(1000), &FeedFilter::all())
            .await?;
        assert_eq!(
            payload_n(&batch.events),
            vec![1, 2],
            "T1's event, then T2's"
        );

        drop(reader);
        store.pool().close().await;
        db.drop_database().await?;
        Ok(())
    }
}
