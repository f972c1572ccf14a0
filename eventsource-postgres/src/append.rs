//! Appending: one statement, one round trip, conflicts from SQLSTATE and constraint names.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use eventsource_core::store::{replayed_append, StoredEventLocation};
use eventsource_core::{
    AppendResult, Conflict, EventAppender, ExpectedVersion, NewEvent, RetryPolicy, StoreError,
    StreamAppend, StreamId, StreamVersion, ValidationError,
};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, Postgres, Row};
use uuid::Uuid;

use crate::error::{
    backend, sqlstate, unique_violation, EVENT_ID_KEY, NUMERIC_OUT_OF_RANGE, SERIALIZATION_FAILURE,
    STREAM_VERSION_KEY,
};
use crate::notifier::NotifyWhenDone;
use crate::row::{column, stored_feed_position, stream_version, Xid8};
use crate::store::PostgresStore;

const APPEND: &str = include_str!("sql/append.sql");
const STORED_EVENT_IDS: &str = include_str!("sql/stored_event_ids.sql");
const STREAM_VERSION: &str = include_str!("sql/stream_version.sql");

/// How an autocommit append retries after losing a race for its versions while its expectation
/// accepts more than one version (`Any`, `StreamExists`), or after finding its event ids held by
/// a transaction that then rolled back.
///
/// Losers of one race retry together and only one of them can win each round, so a burst of `k`
/// writers on one stream costs the last of them `k - 1` lost rounds; the jittered backoff spreads
/// them out and the budget covers bursts far beyond the pool sizes writers use. Every lost round
/// means another append to the stream committed, so the store as a whole always makes progress.
pub(crate) const RACE_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 200,
    base_delay: Duration::from_micros(500),
    max_delay: Duration::from_millis(20),
};

/// What one run of the append statement did.
enum Attempt {
    Appended(AppendResult),
    /// The expectation did not hold at the version the statement saw.
    Refused {
        current: StreamVersion,
    },
}

#[async_trait]
impl EventAppender for PostgresStore {
    /// Appends in one `INSERT ... SELECT FROM UNNEST` statement outside any explicit
    /// transaction: one round trip, and the insert is its transaction's first write, which the
    /// feed's ordering relies on.
    ///
    /// Subscribers are notified after the commit, by one notification shared with the appends
    /// that complete meanwhile, rather than by the events table's trigger inside the append's
    /// transaction, which would make concurrent appends commit one at a time.
    ///
    /// An `Any` or `StreamExists` append that loses the race for its versions to a concurrent
    /// writer retries, each time as a new transaction, after a jittered backoff (up to 200
    /// attempts). Under `serializable` isolation a statement that fails with a serialization
    /// failure (SQLSTATE 40001) is run again the same way, whatever the expectation: the new
    /// run checks it anew (and reports a typed conflict if it no longer holds).
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        self.append_via(None, stream, expected, events).await
    }

    /// Appends to all the streams in one `INSERT ... SELECT FROM UNNEST` statement outside any
    /// explicit transaction (see `append_to_streams.rs`): one round trip, the insert is its
    /// transaction's first write, and the feed delivers all the events under one transaction
    /// id. Lost version races and serialization failures are retried as for
    /// [`append`](Self::append) while every expectation still holds.
    async fn append_to_streams(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>, StoreError> {
        self.append_streams(appends).await
    }
}

impl PostgresStore {
    /// Appends inside the caller's open transaction, so the events commit (or roll back) with
    /// the caller's other writes.
    ///
    /// **The feed-order rule:** the global feed orders events by the id of the transaction that
    /// wrote them, which PostgreSQL assigns at a transaction's first write. Make this append the
    /// transaction's *first write*; a transaction that wrote something else first holds an older
    /// id, and another writer's events appended (and committed) in between would come before
    /// its events in the feed, whatever their stream versions. Do not retry a conflict inside the
    /// same transaction (with a savepoint): a conflict aborts the transaction; retry in a new one.
    /// The default [`FeedHorizon::Writers`](crate::FeedHorizon::Writers) relies on the rule to
    /// see every open writer: a transaction that wrote elsewhere first is invisible to it until
    /// it appends, and its events could be skipped by a reader that passed their place.
    ///
    /// Subscribers are notified when the caller's transaction commits (by the events table's
    /// trigger). After a conflict, roll the caller's transaction back.
    ///
    /// **Connections:** every statement runs on `transaction`, never waiting for a second
    /// connection from the pool (which may be the one `transaction` holds). A wrong expected
    /// version is found without a failed statement: the transaction stays usable, and the
    /// idempotency lookup (is this a retry of an append already stored?) runs on it, so a
    /// retry returns `already_stored = true` even on a one-connection pool. When the statement
    /// itself fails (a concurrent writer committed the same versions or event ids first),
    /// PostgreSQL aborts the transaction; the lookups then run on a connection only if one is
    /// idle in the pool. Without one, a lost race for the versions is reported as a
    /// [`Conflict`] whose `actual` is the lowest version the stream can now have (the version
    /// after the lowest one the expectation accepted), and event ids already stored as an
    /// error saying to retry in a new transaction.
    pub async fn append_in(
        &self,
        transaction: &mut PgConnection,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        self.append_via(Some(transaction), stream, expected, events)
            .await
    }

    /// Runs the append statement on `transaction`, or on the pool (autocommit) when `None`.
    async fn append_via(
        &self,
        mut transaction: Option<&mut PgConnection>,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let encoded = self.limits.check_append(stream, expected, &events)?;
        // After a restore into another cluster, new events would sort before old ones in the
        // feed (and a repair would then hide them behind saved positions): refuse to write.
        // In the caller's transaction the check runs on its connection (it only reads, so the
        // append stays the transaction's first write), never waiting for another one.
        self.check_transaction_ids(transaction.as_deref_mut())
            .await?;
        // An autocommit statement tells the trigger not to notify (see append.sql); this
        // announces the append once it is over, however it ends (if the future is dropped
        // before the commit, the notification may come early: subscribers then poll).
        let _announce = transaction.is_none().then(|| NotifyWhenDone {
            notifier: &self.shared.notifier,
            pool: &self.pool,
        });
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        // check_append bounded schema versions by i32::MAX.
        let schema_versions: Vec<i32> = events
            .iter()
            .map(|e| i32::try_from(e.schema_version).unwrap_or(i32::MAX))
            .collect();
        let payloads: Vec<&str> = encoded.iter().map(|e| e.payload_json.as_str()).collect();
        let metadata: Vec<&str> = encoded.iter().map(|e| e.metadata_json.as_str()).collect();
        let (low, high) = expected.accepted_range();
        let operation = || format!("append {} events to {stream}", events.len());

        let mut lost_races = 0;
        loop {
            let query = sqlx::query(APPEND)
                .bind(stream.category().as_str())
                .bind(stream.id())
                .bind(i64::from(low))
                .bind(i64::from(high))
                .bind(&ids)
                .bind(&types)
                .bind(&schema_versions)
                .bind(&payloads)
                .bind(&metadata)
                .bind(if transaction.is_none() { "on" } else { "off" });
            let result = match transaction.as_deref_mut() {
                Some(conn) => query.fetch_all(conn).await,
                None => query.fetch_all(&self.pool).await,
            };
            let error = match result {
                Ok(rows) => match read_attempt(&rows, events.len())? {
                    Attempt::Appended(result) => return Ok(result),
                    Attempt::Refused { current }
                        if events.is_empty() && expected.accepts(current) =>
                    {
                        return Ok(AppendResult {
                            stream_version: current,
                            positions: Vec::new(),
                            already_stored: false,
                        });
                    }
                    Attempt::Refused { current } => {
                        // No statement failed: a caller's transaction is still usable, and the
                        // lookup runs on it (never waiting for a second connection).
                        if !events.is_empty() {
                            if let Some(replay) = self
                                .replay(transaction.as_deref_mut(), stream, &events)
                                .await?
                            {
                                return Ok(replay);
                            }
                        }
                        return Err(Conflict {
                            stream: stream.clone(),
                            expected,
                            actual: current,
                        }
                        .into());
                    }
                },
                Err(error) => error,
            };
            // In the caller's transaction, any error has aborted it: no retry there.
            let can_retry = transaction.is_none() && lost_races + 1 < RACE_RETRY.max_attempts;
            let lost_versions = unique_violation(&error) == Some(STREAM_VERSION_KEY);
            if sqlstate(&error).as_deref() == Some(SERIALIZATION_FAILURE) && can_retry {
                // Under serializable isolation a writer that lost the race for the stream's
                // versions fails so (or, spuriously, one that conflicted with nothing of this
                // stream): run the statement again, which checks the expectation anew.
                lost_races += 1;
                tokio::time::sleep(RACE_RETRY.delay_after(lost_races)).await;
                continue;
            }
            // The statement failed: a caller's transaction is now aborted and cannot run the
            // lookups below (see `lookup_after_failure`).
            let in_transaction = transaction.is_some();
            match unique_violation(&error) {
                _ if lost_versions => {
                    // A concurrent writer committed the versions this statement computed.
                    // Expectations that accept more than one version (`Any`, `StreamExists`)
                    // may still hold at the new version: try again.
                    if low != high && can_retry {
                        lost_races += 1;
                        tokio::time::sleep(RACE_RETRY.delay_after(lost_races)).await;
                        continue;
                    }
                    let mut lookup = self.lookup_after_failure(in_transaction);
                    let Some(conn) = lookup.connection() else {
                        // The winner stored at least the version after the lowest one this
                        // append accepts; without a second connection that bound is all
                        // that is known.
                        return Err(Conflict {
                            stream: stream.clone(),
                            expected,
                            actual: lowest_after_lost_race(low),
                        }
                        .into());
                    };
                    if let Some(replay) = self.replay(conn, stream, &events).await? {
                        return Ok(replay);
                    }
                    // `Some(None)` (the pool) flattens to `None`, which means the pool too.
                    let actual = self
                        .version_on(lookup.connection().flatten(), stream)
                        .await?;
                    return Err(Conflict {
                        stream: stream.clone(),
                        expected,
                        actual,
                    }
                    .into());
                }
                Some(EVENT_ID_KEY) => {
                    let mut lookup = self.lookup_after_failure(in_transaction);
                    let Some(conn) = lookup.connection() else {
                        return Err(backend(
                            format!(
                                "{} (its event ids are already stored, and with no idle \
                                 connection in the pool the store cannot tell whether it is a \
                                 retry of the append that stored them: roll back, and retry in a \
                                 new transaction with the expectation the first attempt used, \
                                 or give the pool a spare connection)",
                                operation()
                            ),
                            error,
                        ));
                    };
                    if let Some(replay) = self.replay(conn, stream, &events).await? {
                        return Ok(replay);
                    }
                    if can_retry {
                        // The stored copy was rolled back meanwhile: try again.
                        lost_races += 1;
                        continue;
                    }
                }
                _ => {}
            }
            if sqlstate(&error).as_deref() == Some(NUMERIC_OUT_OF_RANGE) {
                let mut lookup = self.lookup_after_failure(in_transaction);
                if let Some(conn) = lookup.connection() {
                    let after = self.version_on(conn, stream).await?;
                    return Err(ValidationError::VersionOverflow {
                        stream: stream.clone(),
                        after,
                        count: events.len(),
                    }
                    .into());
                }
            }
            return Err(backend(operation(), error));
        }
    }
}

/// Where the lookups after a failed append statement run.
enum Lookup {
    /// Autocommit: on the pool.
    Pool,
    /// In a caller's (now aborted) transaction: on a connection that was idle in the pool.
    Spare(PoolConnection<Postgres>),
    /// In a caller's transaction, with no idle connection in the pool.
    Unavailable,
}

impl Lookup {
    /// The connection argument of the lookups (`Some(None)`: the pool), or `None` when no
    /// lookup can run.
    fn connection(&mut self) -> Option<Option<&mut PgConnection>> {
        match self {
            Self::Pool => Some(None),
            Self::Spare(conn) => Some(Some(&mut **conn)),
            Self::Unavailable => None,
        }
    }
}

impl PostgresStore {
    /// Where the lookups after a failed append statement run: on the pool for an autocommit
    /// append; for an append in a caller's transaction (which the failure aborted) on a
    /// connection idle in the pool, if there is one. It never waits for one: the connection it
    /// would wait for may be the one the caller's transaction holds.
    fn lookup_after_failure(&self, in_transaction: bool) -> Lookup {
        if !in_transaction {
            return Lookup::Pool;
        }
        match self.pool.try_acquire() {
            Some(spare) => Lookup::Spare(spare),
            None => Lookup::Unavailable,
        }
    }
}

/// The lowest version a stream can have after an append whose expectation accepted versions
/// from `low` on lost the race for its versions: the winner stored at least `low + 1`.
fn lowest_after_lost_race(low: StreamVersion) -> StreamVersion {
    StreamVersion::new(low.get().saturating_add(1)).unwrap_or(StreamVersion::MAX)
}

/// Reads the append statement's rows: one per appended event, in no particular order, or one
/// with a NULL version when the expectation failed (or there was nothing to append).
///
/// Relies on the statement inserting all `count` events or none (one statement) with versions
/// `previous + 1 ..= previous + count`: the positions are returned in that version order, and
/// anything else is reported as corrupt.
fn read_attempt(rows: &[sqlx::postgres::PgRow], count: usize) -> Result<Attempt, StoreError> {
    let Some(first) = rows.first() else {
        return Err(crate::error::corrupt(
            "the append statement returned no row",
        ));
    };
    let previous = stream_version(column(first, "previous_version")?)?;
    if column::<Option<i64>>(first, "version")?.is_none() {
        return Ok(Attempt::Refused { current: previous });
    }
    let mut appended = Vec::with_capacity(rows.len());
    for row in rows {
        let version = stream_version(column(row, "version")?)?;
        let position = stored_feed_position(
            column::<Xid8>(row, "transaction_id")?,
            column(row, "position")?,
        )?;
        appended.push((version, position));
    }
    appended.sort_unstable_by_key(|(version, _)| *version);
    let in_sequence = appended.len() == count
        && appended
            .iter()
            .zip(1u64..)
            .all(|((version, _), n)| previous.get().checked_add(n) == Some(version.get()));
    let Some(&(last, _)) = appended.last().filter(|_| in_sequence) else {
        return Err(crate::error::corrupt(format!(
            "the append statement returned {} rows that are not versions {} to {previous} + {count}",
            appended.len(),
            previous.get().saturating_add(1),
        )));
    };
    Ok(Attempt::Appended(AppendResult {
        stream_version: last,
        positions: appended.into_iter().map(|(_, position)| position).collect(),
        already_stored: false,
    }))
}

impl PostgresStore {
    /// If some of `events` are already stored, decides whether this append is a retry of the
    /// append that stored them (see [`replayed_append`]). `None` when none is stored.
    ///
    /// Runs on `conn` when given (a caller's transaction that is still usable, or a spare
    /// connection), else on the pool.
    async fn replay(
        &self,
        conn: Option<&mut PgConnection>,
        stream: &StreamId,
        events: &[NewEvent],
    ) -> Result<Option<AppendResult>, StoreError> {
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let stored = self.stored_locations(conn, &ids, stream).await?;
        if stored.is_empty() {
            return Ok(None);
        }
        replayed_append(stream, events, &stored).map(Some)
    }

    /// Where the given event ids are stored (the ones that are), read on `conn` when given,
    /// else on the pool. `appending_to` names the append in an error.
    pub(crate) async fn stored_locations(
        &self,
        conn: Option<&mut PgConnection>,
        ids: &[Uuid],
        appending_to: &(dyn std::fmt::Display + Sync),
    ) -> Result<HashMap<Uuid, StoredEventLocation>, StoreError> {
        let query = sqlx::query(STORED_EVENT_IDS).bind(ids);
        let rows = match conn {
            Some(conn) => query.fetch_all(conn).await,
            None => query.fetch_all(&self.pool).await,
        }
        .map_err(|e| backend(format!("look up stored event ids for {appending_to}"), e))?;
        let mut stored = HashMap::with_capacity(rows.len());
        for row in &rows {
            let category: String = column(row, "category")?;
            let id: String = column(row, "stream_id")?;
            let location = StoredEventLocation {
                stream_id: StreamId::new(category, id)?,
                version: stream_version(column(row, "version")?)?,
                position: stored_feed_position(
                    column(row, "transaction_id")?,
                    column(row, "position")?,
                )?,
            };
            stored.insert(column::<Uuid>(row, "event_id")?, location);
        }
        Ok(stored)
    }

    /// The current version of `stream`, read directly (every committed event).
    pub async fn current_version(&self, stream: &StreamId) -> Result<StreamVersion, StoreError> {
        self.version_on(None, stream).await
    }

    /// The current version of `stream`, read on `conn` when given, else on the pool.
    pub(crate) async fn version_on(
        &self,
        conn: Option<&mut PgConnection>,
        stream: &StreamId,
    ) -> Result<StreamVersion, StoreError> {
        let query = sqlx::query(STREAM_VERSION)
            .bind(stream.category().as_str())
            .bind(stream.id());
        let row = match conn {
            Some(conn) => query.fetch_one(conn).await,
            None => query.fetch_one(&self.pool).await,
        }
        .map_err(|e| backend(format!("read the version of {stream}"), e))?;
        stream_version(
            row.try_get("version")
                .map_err(|e| backend("read a stream version", e))?,
        )
    }
}
