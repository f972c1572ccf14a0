//! Decoding event rows into [`RecordedEvent`]s, with checked conversions at the boundary.

use chrono::{DateTime, Utc};
use eventsource_core::store::{json_nesting, GlobalPosition};
use eventsource_core::{
    EventMetadata, FeedPosition, RecordedEvent, StoreError, StreamId, StreamVersion,
};
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgRow, PgTypeInfo, PgValueFormat, PgValueRef};
use sqlx::{Column, Postgres, Row, ValueRef};
use uuid::Uuid;

use crate::error::corrupt;

/// Reads a column, reporting a missing or mistyped one as corrupt data.
pub(crate) fn column<'r, T>(row: &'r PgRow, name: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(name)
        .map_err(|e| corrupt(format!("column `{name}` of an event row: {e}")))
}

/// A PostgreSQL `xid8` (a 64-bit transaction id), exchanged in its binary form: 8 bytes, big
/// endian, with no text conversion on either side.
///
/// It also decodes a `text` column holding an id (queries that still select
/// `transaction_id::text`), so row decoders work with either form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Xid8(pub(crate) u64);

/// The OID of `xid8`, fixed in PostgreSQL's catalog since version 13.
const XID8_OID: Oid = Oid(5069);

impl sqlx::Type<Postgres> for Xid8 {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(XID8_OID)
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        *ty == Self::type_info() || <&str as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for Xid8 {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let is_text = value.format() == PgValueFormat::Text
            || <&str as sqlx::Type<Postgres>>::compatible(&value.type_info());
        if is_text {
            return Ok(Self(transaction_id(value.as_str()?)?));
        }
        let bytes: [u8; 8] = value
            .as_bytes()?
            .try_into()
            .map_err(|_| "an xid8 value is not 8 bytes long")?;
        Ok(Self(u64::from_be_bytes(bytes)))
    }
}

impl sqlx::Encode<'_, Postgres> for Xid8 {
    fn encode_by_ref(
        &self,
        buf: &mut PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, BoxDynError> {
        buf.extend(&self.0.to_be_bytes());
        Ok(sqlx::encode::IsNull::No)
    }
}

/// Parses an `xid8` sent as text.
pub(crate) fn transaction_id(text: &str) -> Result<u64, StoreError> {
    text.parse()
        .map_err(|_| corrupt(format!("transaction id `{text}` is not a 64-bit number")))
}

/// A feed position from its stored parts, the transaction id as text.
pub(crate) fn feed_position(transaction: &str, position: i64) -> Result<FeedPosition, StoreError> {
    stored_feed_position(Xid8(transaction_id(transaction)?), position)
}

/// A feed position from its stored parts.
pub(crate) fn stored_feed_position(
    transaction: Xid8,
    position: i64,
) -> Result<FeedPosition, StoreError> {
    let position = u64::try_from(position)
        .map_err(|_| corrupt(format!("negative global position {position}")))?;
    Ok(FeedPosition::new(transaction.0, position))
}

/// A global position as stored (`bigint`). Stored positions come from an identity column and
/// fit; a larger one (never stored) is clamped to `i64::MAX`, which still compares past every
/// stored position.
pub(crate) fn position_column(position: GlobalPosition) -> i64 {
    i64::try_from(position.get()).unwrap_or(i64::MAX)
}

/// A stream version from its stored `bigint`.
pub(crate) fn stream_version(version: i64) -> Result<StreamVersion, StoreError> {
    StreamVersion::try_from(version).map_err(StoreError::from)
}

/// Decodes a row with the columns position, transaction_id (`xid8`, or its text), event_id,
/// category, stream_id, version, event_type, schema_version, payload, metadata, recorded_at.
///
/// For many rows of one result, [`EventColumns`] finds the columns once instead of per row.
pub(crate) fn recorded_event(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    EventColumns::of(row)?.decode(row, None)
}

/// Where an event's columns are in the rows of one result: looked up by name once, then read by
/// index for every row of that result.
///
/// Relies on every row of one result having the same columns, which PostgreSQL guarantees (one
/// row description per result); so build it from one row and use it only for rows of the same
/// result.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventColumns {
    position: usize,
    transaction_id: usize,
    event_id: usize,
    category: usize,
    stream_id: usize,
    version: usize,
    event_type: usize,
    schema_version: usize,
    payload: usize,
    metadata: usize,
    recorded_at: usize,
}

impl EventColumns {
    /// Finds the event columns of `row`'s result.
    pub(crate) fn of(row: &PgRow) -> Result<Self, StoreError> {
        let find = |name: &str| {
            row.try_column(name)
                .map(|c| c.ordinal())
                .map_err(|e| corrupt(format!("column `{name}` of an event row: {e}")))
        };
        Ok(Self {
            position: find("position")?,
            transaction_id: find("transaction_id")?,
            event_id: find("event_id")?,
            category: find("category")?,
            stream_id: find("stream_id")?,
            version: find("version")?,
            event_type: find("event_type")?,
            schema_version: find("schema_version")?,
            payload: find("payload")?,
            metadata: find("metadata")?,
            recorded_at: find("recorded_at")?,
        })
    }

    /// The feed position of one row of the result these columns were found in.
    pub(crate) fn feed_position(&self, row: &PgRow) -> Result<FeedPosition, StoreError> {
        stored_feed_position(
            get(row, self.transaction_id, "transaction_id")?,
            get(row, self.position, "position")?,
        )
    }

    /// The bytes of one row's payload and metadata as received: what a batch bounded by bytes
    /// counts.
    pub(crate) fn data_bytes(&self, row: &PgRow) -> usize {
        raw_len(row, self.payload) + raw_len(row, self.metadata)
    }

    /// Decodes one row of the result these columns were found in.
    ///
    /// `previous` is the stream of an event decoded before (from the same database): when this
    /// row names the same stream, its already checked id is reused instead of checking the same
    /// text again. Every distinct stream id is still checked once.
    pub(crate) fn decode(
        &self,
        row: &PgRow,
        previous: Option<&StreamId>,
    ) -> Result<RecordedEvent, StoreError> {
        let category: &str = get(row, self.category, "category")?;
        let id: &str = get(row, self.stream_id, "stream_id")?;
        let stream_id = match previous {
            Some(stream) if stream.category().as_str() == category && stream.id() == id => {
                stream.clone()
            }
            _ => StreamId::new(category, id)
                .map_err(|e| corrupt(format!("stored stream id is not valid: {e}")))?,
        };
        let version = stream_version(get(row, self.version, "version")?)?;
        let position = self.feed_position(row)?;
        let schema_version: i32 = get(row, self.schema_version, "schema_version")?;
        let schema_version = u32::try_from(schema_version).map_err(|_| {
            corrupt(format!(
                "schema version {schema_version} at version {version} of {stream_id}"
            ))
        })?;
        let payload: serde_json::Value = json(row, self.payload).map_err(|e| {
            corrupt(format!(
                "the payload at version {version} of {stream_id} does not read back: {e}"
            ))
        })?;
        // Straight from the row's JSON into the metadata type (no intermediate JSON value).
        let metadata: EventMetadata = json(row, self.metadata).map_err(|e| {
            corrupt(format!(
                "metadata at version {version} of {stream_id} does not decode: {e}"
            ))
        })?;
        let event_id: Uuid = get(row, self.event_id, "event_id")?;
        let recorded_at: DateTime<Utc> = get(row, self.recorded_at, "recorded_at")?;
        Ok(RecordedEvent {
            event_id,
            stream_id,
            version,
            position,
            event_type: get(row, self.event_type, "event_type")?,
            schema_version,
            payload,
            metadata,
            recorded_at,
        })
    }
}

/// Reads a `json` or `jsonb` column into `T`, whatever its nesting depth (up to what a reader
/// can hold safely: see [`json_nesting::parse_stored`]). Rows stored before appends limited the
/// depth may nest deeper than serde_json's own limit of 128 levels.
fn json<T: for<'de> serde::Deserialize<'de>>(row: &PgRow, index: usize) -> Result<T, BoxDynError> {
    let value = row.try_get_raw(index)?;
    if value.is_null() {
        return Err("the column is NULL".into());
    }
    let is_jsonb = value.type_info().oid() == Some(JSONB_OID);
    let binary = value.format() == PgValueFormat::Binary;
    let mut bytes = value.as_bytes()?;
    if is_jsonb && binary {
        // jsonb's binary form is a version byte (1) and the JSON text.
        match bytes.split_first() {
            Some((1, text)) => bytes = text,
            _ => return Err("unknown jsonb binary format version".into()),
        }
    }
    Ok(json_nesting::parse_stored(bytes)?)
}

/// The bytes of a column as received (0 for NULL), for batches bounded by bytes.
pub(crate) fn raw_len(row: &PgRow, index: usize) -> usize {
    row.try_get_raw(index)
        .ok()
        .and_then(|value| value.as_bytes().ok().map(<[u8]>::len))
        .unwrap_or(0)
}

/// The OID of `jsonb`, fixed in PostgreSQL's catalog.
const JSONB_OID: Oid = Oid(3802);

/// Reads the column at `index`, naming it as `name` when it is missing or mistyped.
fn get<'r, T>(row: &'r PgRow, index: usize, name: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(index)
        .map_err(|e| corrupt(format!("column `{name}` of an event row: {e}")))
}

#[cfg(test)]
mod tests {
    use eventsource_core::{EventAppender, ExpectedVersion, NewEvent};
    use serde_json::json;

    use super::*;
    use crate::testing::TestDatabase;

    /// The binary `xid8` exchange agrees with PostgreSQL's own text form, both ways, and the
    /// positions an append returns are the stored ones.
    #[tokio::test]
    async fn transaction_ids_match_the_database() -> Result<(), Box<dyn std::error::Error>> {
        let db = TestDatabase::create().await?;
        let store = db.store().await?;
        let pool = store.pool().clone();

        let large = Xid8((1 << 40) + 5);
        let (text, back): (String, Xid8) = sqlx::query_as("SELECT $1::xid8::text, $1::xid8")
            .bind(large)
            .fetch_one(&pool)
            .await?;
        assert_eq!((text.as_str(), back), ("1099511627781", large));
        let from_text: Xid8 = sqlx::query_scalar("SELECT '1099511627781'::text")
            .fetch_one(&pool)
            .await?;
        assert_eq!(from_text, large);

        let stream = StreamId::new("order", "1")?;
        let event = NewEvent::new("OrderPlaced", 1, json!({}), EventMetadata::default());
        let appended = store
            .append(&stream, ExpectedVersion::NoStream, vec![event])
            .await?;
        let (transaction, position): (String, i64) =
            sqlx::query_as("SELECT transaction_id::text, position FROM eventsource.events")
                .fetch_one(&pool)
                .await?;
        assert_eq!(
            appended.positions,
            vec![FeedPosition::new(
                transaction.parse()?,
                u64::try_from(position)?
            )]
        );

        pool.close().await;
        db.drop_database().await?;
        Ok(())
    }
}
