//! In-memory read models, folded one event at a time: for domain tests and small views on any
//! store. Read models kept in PostgreSQL tables, exactly once and rebuildable, use the
//! `Projection` trait of `eventsource_postgres::projection` instead (it is the one to reach for
//! first; its logic is SQL, tested against a real server: a test database is one line,
//! `TestDatabase::create().await?.store().await?`).

use async_trait::async_trait;

use crate::envelope::{filter_for, FeedItem};
use crate::error::{BoxError, StoreError};
use crate::event_store::FeedReader;
use crate::feed::FeedFilter;
use crate::feed_follower::{FeedFollower, FeedOptions};
use crate::position::FeedPosition;

/// A read model kept in memory, fed one event at a time.
///
/// Like a PostgreSQL projection, it names what it reads: `Envelope<E>` for a domain event enum
/// (decoded; only `E`'s types are read) or `RecordedEvent` (raw).
#[async_trait]
pub trait InMemoryProjection: Send {
    /// What [`InMemoryProjection::apply`] receives per event.
    type Event: FeedItem;

    /// Which events it wants (default: every event of [`InMemoryProjection::Event`]'s types).
    fn filter(&self) -> FeedFilter {
        FeedFilter::all()
    }

    /// Folds one event into the read model.
    async fn apply(&mut self, event: &Self::Event) -> Result<(), BoxError>;
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

/// Feeds `projection` every event after `after` up to the head (through a catch-up
/// [`FeedFollower`]); returns the position reached (past the last event applied, and past
/// events the filter passed over), or `after`.
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
///     type Event = RecordedEvent;
///
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
    let filter = filter_for::<P::Event>(projection.filter());
    let options = FeedOptions::default().with_filter(filter);
    let mut feed = FeedFollower::catch_up(store, after, options);
    loop {
        let batch = feed.next().await?;
        let applied = match P::Event::view(&batch.events) {
            Ok(items) => apply_each(projection, &items).await,
            Err((index, error)) => Err((index, error as BoxError)),
        };
        if let Err((index, source)) = applied {
            let event = &batch.events[index];
            return Err(CatchUpError::Apply {
                stream: event.stream_id.clone(),
                version: event.version,
                event_type: event.event_type.clone(),
                source,
            });
        }
        if batch.reached_head {
            return Ok(feed.position());
        }
    }
}

/// Applies `items` in order; on a failure, its index and error.
async fn apply_each<P: InMemoryProjection + ?Sized>(
    projection: &mut P,
    items: &[P::Event],
) -> Result<(), (usize, BoxError)> {
    for (index, item) in items.iter().enumerate() {
        projection.apply(item).await.map_err(|e| (index, e))?;
    }
    Ok(())
}
