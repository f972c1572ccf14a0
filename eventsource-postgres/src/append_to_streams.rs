//! Appending to several streams in one transaction: one statement, all or nothing.

use std::collections::HashMap;

use eventsource_core::store::replayed_multi_append;
use eventsource_core::{AppendResult, Conflict, StoreError, StreamAppend, StreamVersion};
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::append::RACE_RETRY;
use crate::error::{
    backend, corrupt, sqlstate, unique_violation, EVENT_ID_KEY, SERIALIZATION_FAILURE,
    STREAM_VERSION_KEY,
};
use crate::notifier::NotifyWhenDone;
use crate::row::{column, stored_feed_position, stream_version, Xid8};
use crate::store::PostgresStore;

const APPEND_TO_STREAMS: &str = include_str!("sql/append_to_streams.sql");

/// What one run of the statement did.
enum Attempt {
    Appended(Vec<AppendResult>),
    /// Nothing was appended; each stream's version as the statement saw it.
    Refused(Vec<StreamVersion>),
}

impl PostgresStore {
    /// Appends to several streams in one autocommit statement (see
    /// [`EventAppender::append_to_streams`](eventsource_core::EventAppender::append_to_streams)).
    ///
    /// A failed expectation is found without a failed statement; the stored event ids are then
    /// looked up (is this a retry of an append already stored?) before the conflict is
    /// reported. A lost race (a unique violation on the versions or the event ids, or a
    /// serialization failure) is followed by the same lookup and by a read of the streams'
    /// versions: a stream whose expectation no longer holds is the conflict; if every one still
    /// holds (expectations that accept several versions), the statement runs again in a new
    /// transaction, up to [`RACE_RETRY`]'s budget.
    pub(crate) async fn append_streams(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>, StoreError> {
        let encoded = self.limits.check_multi_append(&appends)?;
        if appends.is_empty() {
            return Ok(Vec::new());
        }
        self.check_transaction_ids(None).await?;
        let _announce = NotifyWhenDone {
            notifier: &self.shared.notifier,
            pool: &self.pool,
        };
        let categories: Vec<&str> = appends
            .iter()
            .map(|a| a.stream.category().as_str())
            .collect();
        let stream_ids: Vec<&str> = appends.iter().map(|a| a.stream.id()).collect();
        let (lows, highs): (Vec<i64>, Vec<i64>) = appends
            .iter()
            .map(|a| {
                let (low, high) = a.expected.accepted_range();
                (i64::from(low), i64::from(high))
            })
            .unzip();
        let count = appends.iter().map(|a| a.events.len()).sum::<usize>();
        let mut ks = Vec::with_capacity(count);
        let mut ns = Vec::with_capacity(count);
        let mut ids = Vec::with_capacity(count);
        let mut types = Vec::with_capacity(count);
        let mut schema_versions = Vec::with_capacity(count);
        let mut payloads = Vec::with_capacity(count);
        let mut metadata = Vec::with_capacity(count);
        // check_multi_append returns each stream's events, all of them, in order.
        for (k, checked) in (1i64..).zip(&encoded) {
            for (n, event) in (1i64..).zip(checked) {
                ks.push(k);
                ns.push(n);
                ids.push(event.event.event_id);
                types.push(event.event.event_type.as_str());
                // check_multi_append bounded schema versions by i32::MAX.
                schema_versions.push(i32::try_from(event.event.schema_version).unwrap_or(i32::MAX));
                payloads.push(event.payload_json.as_str());
                metadata.push(event.metadata_json.as_str());
            }
        }
        let operation = || {
            format!(
                "append {count} events to {} streams ({}...)",
                appends.len(),
                appends[0].stream
            )
        };

        let mut lost_races = 0;
        loop {
            let result = sqlx::query(APPEND_TO_STREAMS)
                .bind(&categories)
                .bind(&stream_ids)
                .bind(&lows)
                .bind(&highs)
                .bind(&ks)
                .bind(&ids)
                .bind(&types)
                .bind(&schema_versions)
                .bind(&payloads)
                .bind(&metadata)
                .bind(&ns)
                .bind("on")
                .fetch_all(&self.pool)
                .await;
            let error = match result {
                Ok(rows) => match read_attempt(&rows, &appends)? {
                    Attempt::Appended(results) => return Ok(results),
                    Attempt::Refused(currents) => {
                        if count > 0 {
                            if let Some(replay) = self.replay_streams(&appends, &ids).await? {
                                return Ok(replay);
                            }
                        }
                        if let Some(conflict) = first_refused(&appends, &currents) {
                            return Err(conflict.into());
                        }
                        // Every expectation holds and there was nothing to append.
                        return Ok(currents
                            .into_iter()
                            .map(|current| AppendResult {
                                stream_version: current,
                                positions: Vec::new(),
                                already_stored: false,
                            })
                            .collect());
                    }
                },
                Err(error) => error,
            };
            let can_retry = lost_races + 1 < RACE_RETRY.max_attempts;
            let lost_race = sqlstate(&error).as_deref() == Some(SERIALIZATION_FAILURE)
                || matches!(
                    unique_violation(&error),
                    Some(STREAM_VERSION_KEY | EVENT_ID_KEY)
                );
            if !lost_race {
                return Err(backend(operation(), error));
            }
            // A concurrent writer committed versions or event ids of this append first.
            if let Some(replay) = self.replay_streams(&appends, &ids).await? {
                return Ok(replay);
            }
            let mut currents = Vec::with_capacity(appends.len());
            for append in &appends {
                currents.push(self.version_on(None, &append.stream).await?);
            }
            if let Some(conflict) = first_refused(&appends, &currents) {
                return Err(conflict.into());
            }
            if !can_retry {
                return Err(backend(operation(), error));
            }
            lost_races += 1;
            tokio::time::sleep(RACE_RETRY.delay_after(lost_races)).await;
        }
    }

    /// If some of the append's events are stored, decides whether it is a retry of the append
    /// that stored them (see [`replayed_multi_append`]). `None` when none is stored.
    async fn replay_streams(
        &self,
        appends: &[StreamAppend],
        ids: &[Uuid],
    ) -> Result<Option<Vec<AppendResult>>, StoreError> {
        let stored = self
            .stored_locations(None, ids, &format!("{} streams", appends.len()))
            .await?;
        if stored.is_empty() {
            return Ok(None);
        }
        let mut currents = HashMap::new();
        for append in appends.iter().filter(|a| a.events.is_empty()) {
            let current = self.version_on(None, &append.stream).await?;
            currents.insert(append.stream.clone(), current);
        }
        replayed_multi_append(appends, &stored, |stream| {
            currents
                .get(stream)
                .copied()
                .unwrap_or(StreamVersion::INITIAL)
        })
        .map(Some)
    }
}

/// The conflict of the first stream whose expectation `currents` (one per stream) refuses.
fn first_refused(appends: &[StreamAppend], currents: &[StreamVersion]) -> Option<Conflict> {
    appends
        .iter()
        .zip(currents)
        .find(|(append, current)| !append.expected.accepts(**current))
        .map(|(append, &actual)| Conflict {
            stream: append.stream.clone(),
            expected: append.expected,
            actual,
        })
}

/// Reads the statement's rows: per stream (`k`, from 1), one row per appended event, or one
/// row with a NULL version.
///
/// Relies on the statement inserting every stream's events or none (one statement), each
/// stream's at versions `previous + 1 ..= previous + count`: anything else is reported as
/// corrupt.
fn read_attempt(rows: &[PgRow], appends: &[StreamAppend]) -> Result<Attempt, StoreError> {
    let mut previous: Vec<Option<StreamVersion>> = vec![None; appends.len()];
    let mut stored: Vec<Vec<(StreamVersion, eventsource_core::FeedPosition)>> =
        vec![Vec::new(); appends.len()];
    let mut any_appended = false;
    for row in rows {
        let k: i64 = column(row, "k")?;
        let index = usize::try_from(k)
            .ok()
            .and_then(|k| k.checked_sub(1))
            .filter(|&i| i < appends.len())
            .ok_or_else(|| corrupt(format!("the append statement returned stream number {k}")))?;
        previous[index] = Some(stream_version(column(row, "previous_version")?)?);
        if let Some(version) = column::<Option<i64>>(row, "version")? {
            any_appended = true;
            let position = stored_feed_position(
                column::<Xid8>(row, "transaction_id")?,
                column(row, "position")?,
            )?;
            stored[index].push((stream_version(version)?, position));
        }
    }
    let previous = previous
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| corrupt("the append statement returned no row for a stream"))?;
    if !any_appended {
        return Ok(Attempt::Refused(previous));
    }
    let mut results = Vec::with_capacity(appends.len());
    for ((append, previous), mut appended) in appends.iter().zip(previous).zip(stored) {
        appended.sort_unstable_by_key(|(version, _)| *version);
        let count = append.events.len();
        let in_sequence = appended.len() == count
            && appended
                .iter()
                .zip(1u64..)
                .all(|((version, _), n)| previous.get().checked_add(n) == Some(version.get()));
        if !in_sequence {
            return Err(corrupt(format!(
                "the append statement returned {} rows for {} that are not versions {} to {previous} + {count}",
                appended.len(),
                append.stream,
                previous.get().saturating_add(1),
            )));
        }
        results.push(AppendResult {
            stream_version: appended.last().map_or(previous, |(version, _)| *version),
            positions: appended.into_iter().map(|(_, position)| position).collect(),
            already_stored: false,
        });
    }
    Ok(Attempt::Appended(results))
}
