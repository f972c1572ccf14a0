//! Reading one stream, directly from the table (never through the feed's horizon).

use eventsource_core::{EventStream, StoreError, StreamId, StreamReader, StreamVersion};
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::error::backend;
use crate::row::recorded_event;
use crate::store::PostgresStore;

const READ_STREAM: &str = include_str!("sql/read_stream.sql");

/// Events per query. Most streams load in one query; longer ones page, so memory stays bounded.
const PAGE_SIZE: i64 = 1000;

impl StreamReader for PostgresStore {
    fn read_stream<'a>(&'a self, stream: &'a StreamId, from: StreamVersion) -> EventStream<'a> {
        // (next version to read, whether the previous page was the last)
        let start = (from.max(StreamVersion::FIRST), false);
        stream::try_unfold(start, move |(from, done)| async move {
            if done {
                return Ok::<_, StoreError>(None);
            }
            let rows = sqlx::query(READ_STREAM)
                .bind(stream.category().as_str())
                .bind(stream.id())
                .bind(i64::from(from))
                .bind(PAGE_SIZE)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| backend(format!("read stream {stream} from version {from}"), e))?;
            let events = rows
                .iter()
                .map(recorded_event)
                .collect::<Result<Vec<_>, _>>()?;
            let last_page = (events.len() as i64) < PAGE_SIZE;
            let next = match events.last() {
                Some(last) => last.version.next().unwrap_or(StreamVersion::MAX),
                None => from,
            };
            if events.is_empty() {
                return Ok(None);
            }
            Ok(Some((
                stream::iter(events.into_iter().map(Ok::<_, StoreError>)),
                (next, last_page),
            )))
        })
        .try_flatten()
        .boxed()
    }
}
