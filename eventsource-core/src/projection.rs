//! In-memory projections, for domain tests on the in-memory store (PostgreSQL read models use
//! `eventsource_postgres::projection`).

use async_trait::async_trait;
use futures::TryStreamExt;

use crate::error::{BoxError, StoreError};
use crate::event::RecordedEvent;
use crate::event_store::FeedReader;
use crate::feed::{read_feed, BatchSize, FeedFilter};
use crate::position::FeedPosition;

/// A read model kept in memory, fed one event at a time.
#[async_trait]
pub trait InMemoryProjection: Send {
    /// Which events it wants (default: all).
    fn filter(&self) -> FeedFilter {
        FeedFilter::all()
    }

    /// Folds one event into the read model.
    async fn apply(&mut self, event: &RecordedEvent) -> Result<(), BoxError>;
}

/// Why [`catch_up`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    /// Reading the feed failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The projection failed on an event.
    #[error("the projection failed on version {version} of {stream} ({event_type}): {source}")]
    Apply {
        /// The event's stream.
        stream: crate::StreamId,
        /// Its version.
        version: crate::StreamVersion,
        /// Its type.
        event_type: String,
        /// The projection's error.
        #[source]
        source: BoxError,
    },
}

/// Feeds `projection` every event after `after` up to the head; returns the position of the
/// last event applied (or `after`).
///
/// ```
/// use async_trait::async_trait;
/// use eventsource_core::projection::{catch_up, InMemoryProjection};
/// use eventsource_core::*;
///
/// #[derive(Default)]
/// struct Count(usize);
///
/// #[async_trait]
/// impl InMemoryProjection for Count {
///     async fn apply(&mut self, _: &RecordedEvent) -> Result<(), BoxError> {
///         self.0 += 1;
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryStore::new();
/// let id = StreamId::new("order", "1")?;
/// let e = NewEvent::new("OrderPlaced", 1, serde_json::json!({}), EventMetadata::default());
/// store.append(&id, ExpectedVersion::NoStream, vec![e]).await?;
/// let mut count = Count::default();
/// catch_up(&store, &mut count, FeedPosition::START).await?;
/// assert_eq!(count.0, 1);
/// # Ok(()) }
/// ```
pub async fn catch_up<S, P>(
    store: &S,
    projection: &mut P,
    after: FeedPosition,
) -> Result<FeedPosition, CatchUpError>
where
    S: FeedReader + ?Sized,
    P: InMemoryProjection + ?Sized,
{
    let mut events = read_feed(store, after, BatchSize::default(), projection.filter());
    let mut position = after;
    while let Some(event) = events.try_next().await? {
        projection
            .apply(&event)
            .await
            .map_err(|source| CatchUpError::Apply {
                stream: event.stream_id.clone(),
                version: event.version,
                event_type: event.event_type.clone(),
                source,
            })?;
        position = event.position;
    }
    Ok(position)
}
