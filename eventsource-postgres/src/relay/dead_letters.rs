//! Relay dead letters: events a broker refused for good (or the mapping could not map), parked
//! with the error instead of being skipped silently.

use chrono::{DateTime, Utc};
use eventsource_core::{FeedPosition, RecordedEvent, StreamId, StreamVersion};
use sqlx::{PgConnection, Row};

use super::error::RelayError;
use crate::row::feed_position;
use crate::store::PostgresStore;

const PARK: &str = include_str!("sql/park_relay_dead_letter.sql");
const LIST: &str = include_str!("sql/list_relay_dead_letters.sql");

/// A parked event of a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayDeadLetter {
    /// The row's id.
    pub id: i64,
    /// The event's id (the message id).
    pub event_id: uuid::Uuid,
    /// The event's feed position.
    pub position: FeedPosition,
    /// Its stream.
    pub stream_id: StreamId,
    /// Its version.
    pub version: StreamVersion,
    /// Its stored type.
    pub event_type: String,
    /// Where it was to go (exchange and routing key, subject, topic), or `mapping`.
    pub destination: String,
    /// Why it was refused.
    pub error: String,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
}

/// Parks `event` for `relay`, unless it is parked already.
pub(crate) async fn park(
    conn: &mut PgConnection,
    relay: &str,
    event: &RecordedEvent,
    destination: &str,
    error: &str,
) -> Result<(), RelayError> {
    sqlx::query(PARK)
        .bind(relay)
        .bind(event.event_id)
        .bind(event.position.transaction_id.to_string())
        .bind(event.position.global_position.get() as i64)
        .bind(event.stream_id.category().as_str())
        .bind(event.stream_id.id())
        .bind(event.version.get() as i64)
        .bind(&event.event_type)
        .bind(destination)
        .bind(error)
        .execute(conn)
        .await
        .map_err(|e| RelayError::database(relay, "park a refused message", e))?;
    Ok(())
}

/// The messages parked by the relay named `relay`, oldest first.
pub async fn list(store: &PostgresStore, relay: &str) -> Result<Vec<RelayDeadLetter>, RelayError> {
    let db = |e| RelayError::database(relay, "list dead letters", e);
    let rows = sqlx::query(LIST)
        .bind(relay)
        .fetch_all(store.pool())
        .await
        .map_err(db)?;
    rows.iter()
        .map(|row| {
            let transaction: String = row.try_get("transaction_id").map_err(db)?;
            let position: i64 = row.try_get("position").map_err(db)?;
            let category: String = row.try_get("category").map_err(db)?;
            let stream: String = row.try_get("stream_id").map_err(db)?;
            let version: i64 = row.try_get("version").map_err(db)?;
            let corrupt =
                |what: String| RelayError::Store(eventsource_core::StoreError::Corrupt { what });
            Ok(RelayDeadLetter {
                id: row.try_get("id").map_err(db)?,
                event_id: row.try_get("event_id").map_err(db)?,
                position: feed_position(&transaction, position).map_err(RelayError::Store)?,
                stream_id: StreamId::new(category, stream.clone())
                    .map_err(|e| corrupt(format!("relay dead letter stream {stream:?}: {e}")))?,
                version: StreamVersion::try_from(version)
                    .map_err(|e| corrupt(format!("relay dead letter version {version}: {e}")))?,
                event_type: row.try_get("event_type").map_err(db)?,
                destination: row.try_get("destination").map_err(db)?,
                error: row.try_get("error").map_err(db)?,
                parked_at: row.try_get("parked_at").map_err(db)?,
            })
        })
        .collect()
}
