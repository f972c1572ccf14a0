//! Reading one stream, directly from the table (never through the feed's horizon).

use eventsource_core::{EventStream, StreamId, StreamReader, StreamVersion};
use futures::future;
use futures::stream::{StreamExt, TryStreamExt};
use uuid::Uuid;

use crate::error::backend;
use crate::row::EventColumns;
use crate::store::PostgresStore;

const READ_STREAM: &str = include_str!("sql/read_stream.sql");
const READ_CAUSED_BY: &str = include_str!("sql/read_caused_by.sql");

impl StreamReader for PostgresStore {
    /// Reads with one query whose rows are decoded as they arrive: one round trip however long
    /// the stream, and bounded memory. The read holds one pool connection until the returned
    /// stream ends or is dropped.
    fn read_stream<'a>(&'a self, stream: &'a StreamId, from: StreamVersion) -> EventStream<'a> {
        let from = from.max(StreamVersion::FIRST);
        // Found on the first row: every row of one result has the same columns.
        let mut columns: Option<EventColumns> = None;
        sqlx::query(READ_STREAM)
            .bind(stream.category().as_str())
            .bind(stream.id())
            .bind(i64::from(from))
            .fetch(&self.pool)
            .map_err(move |e| backend(format!("read stream {stream} from version {from}"), e))
            .and_then(move |row| {
                let decoded = match columns {
                    Some(columns) => Ok(columns),
                    None => EventColumns::of(&row).inspect(|found| columns = Some(*found)),
                }
                // Every row is of `stream`: its checked id is reused.
                .and_then(|columns| columns.decode(&row, Some(stream)));
                future::ready(decoded)
            })
            .boxed()
    }

    /// Reads with one query on the index of causation ids (`events_causation_idx`): its cost
    /// does not grow with the stream's length.
    fn read_caused_by<'a>(&'a self, stream: &'a StreamId, causation_id: Uuid) -> EventStream<'a> {
        let mut columns: Option<EventColumns> = None;
        sqlx::query(READ_CAUSED_BY)
            .bind(stream.category().as_str())
            .bind(stream.id())
            .bind(causation_id.to_string())
            .fetch(&self.pool)
            .map_err(move |e| {
                backend(
                    format!("read the events of {stream} caused by {causation_id}"),
                    e,
                )
            })
            .and_then(move |row| {
                let decoded = match columns {
                    Some(columns) => Ok(columns),
                    None => EventColumns::of(&row).inspect(|found| columns = Some(*found)),
                }
                .and_then(|columns| columns.decode(&row, Some(stream)));
                future::ready(decoded)
            })
            .boxed()
    }
}
