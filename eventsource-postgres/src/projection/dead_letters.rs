//! Dead letters: events a projection could not handle, parked with their error, listed and
//! replayed through the API.

use chrono::{DateTime, Utc};
use eventsource_core::{BoxError, FeedItem, FeedPosition, RecordedEvent, StreamId, StreamVersion};
use sqlx::{Connection, PgConnection, Row};

use super::error::ProjectionError;
use super::{checkpoint, Projection};
use crate::row::{feed_position, position_column, recorded_event};
use crate::store::PostgresStore;

const PARK: &str = include_str!("sql/park_dead_letter.sql");
const LIST: &str = include_str!("sql/list_dead_letters.sql");
const TAKE: &str = include_str!("sql/take_dead_letter.sql");

/// A parked event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its id, for [`replay`].
    pub id: i64,
    /// The event's id.
    pub event_id: uuid::Uuid,
    /// The event's feed position.
    pub position: FeedPosition,
    /// Its stream.
    pub stream_id: StreamId,
    /// Its version.
    pub version: StreamVersion,
    /// Its type.
    pub event_type: String,
    /// The handler's last error.
    pub error: String,
    /// Attempts made before parking.
    pub attempts: i32,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
}

/// Parks `event` and moves the checkpoint past it, in one transaction.
pub(crate) async fn park(
    conn: &mut PgConnection,
    projection: &str,
    from: FeedPosition,
    event: &RecordedEvent,
    error: &str,
    attempts: u32,
) -> Result<(), ProjectionError> {
    let db = |op: &'static str| move |e| ProjectionError::database(projection, op, e);
    let mut tx = conn.begin().await.map_err(db("begin parking an event"))?;
    let found = checkpoint::read_for_update(&mut tx, projection, projection).await?;
    if found != Some(from) {
        // Rolled back now: the row lock gave the transaction an id, which holds the feed back
        // until the transaction ends, and the runner goes on with this connection.
        let _ = tx.rollback().await;
        return Err(ProjectionError::CheckpointMoved {
            projection: projection.to_owned(),
            expected: from,
            found: found.unwrap_or(FeedPosition::START),
        });
    }
    sqlx::query(PARK)
        .bind(projection)
        .bind(event.event_id)
        .bind(event.position.transaction_id.to_string())
        .bind(position_column(event.global_position()))
        .bind(event.stream_id.category().as_str())
        .bind(event.stream_id.id())
        .bind(i64::from(event.version))
        .bind(&event.event_type)
        .bind(error)
        .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await
        .map_err(db("park an event"))?;
    checkpoint::write(&mut tx, projection, projection, event.position).await?;
    tx.commit().await.map_err(db("commit parking an event"))
}

/// The events parked by `projection` and not replayed yet, in feed order.
pub async fn list(
    store: &PostgresStore,
    projection: &str,
) -> Result<Vec<DeadLetter>, ProjectionError> {
    let db = |e| ProjectionError::database(projection, "list dead letters", e);
    let rows = sqlx::query(LIST)
        .bind(projection)
        .fetch_all(store.pool())
        .await
        .map_err(db)?;
    rows.iter()
        .map(|row| {
            let transaction: String = row.try_get("transaction_id").map_err(db)?;
            let category: String = row.try_get("category").map_err(db)?;
            let stream: String = row.try_get("stream_id").map_err(db)?;
            Ok(DeadLetter {
                id: row.try_get("id").map_err(db)?,
                event_id: row.try_get("event_id").map_err(db)?,
                position: feed_position(&transaction, row.try_get("position").map_err(db)?)?,
                stream_id: StreamId::new(category, stream)
                    .map_err(eventsource_core::StoreError::from)?,
                version: crate::row::stream_version(row.try_get("version").map_err(db)?)?,
                event_type: row.try_get("event_type").map_err(db)?,
                error: row.try_get("error").map_err(db)?,
                attempts: row.try_get("attempts").map_err(db)?,
                parked_at: row.try_get("parked_at").map_err(db)?,
            })
        })
        .collect()
}

/// Applies a parked event through `projection` once more (after a fix), and marks it replayed,
/// in one transaction that also locks the projection's checkpoint row, so it never overlaps a
/// runner's batch. A dead letter that was already replayed, or is unknown, is an error; one
/// whose handler fails again stays parked.
///
/// The event is applied after the events the runner applied since it was parked: handlers
/// whose effect depends on order must account for that.
pub async fn replay<P: Projection>(
    store: &PostgresStore,
    projection: &P,
    id: i64,
) -> Result<(), ProjectionError> {
    let name = projection.name();
    let db = |op: &'static str| move |e| ProjectionError::database(name, op, e);
    let mut conn = store.pool().acquire().await.map_err(db("connect"))?;
    let mut tx = conn.begin().await.map_err(db("begin a replay"))?;
    checkpoint::lock_in_schema(&mut tx, name, name, projection.schema()).await?;
    let row = sqlx::query(TAKE)
        .bind(id)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("take a dead letter"))?;
    let Some(row) = row else {
        let _ = tx.rollback().await;
        return Err(ProjectionError::DeadLetterNotFound {
            projection: name.to_owned(),
            id,
        });
    };
    let event = recorded_event(&row)?;
    let handled = match P::Event::view(std::slice::from_ref(&event)) {
        Ok(items) => projection
            .handle(&mut tx, &items)
            .await
            .map_err(Into::<BoxError>::into),
        Err((_, error)) => Err(error as BoxError),
    };
    if let Err(error) = handled {
        // Rolled back before the connection goes back to the pool (the handler's writes gave
        // the transaction an id, which holds the feed back until it ends).
        let _ = tx.rollback().await;
        return Err(ProjectionError::handler_failed(name, &event, 1, error));
    }
    sqlx::query("UPDATE eventsource.dead_letters SET replayed_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db("mark a dead letter replayed"))?;
    tx.commit().await.map_err(db("commit a replay"))
}
