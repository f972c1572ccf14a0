//! Reading the global feed: filters, batches and the catch-up stream.

use futures::stream::{self, StreamExt, TryStreamExt};

use crate::aggregate::Aggregate;
use crate::domain_event::DomainEvent;
use crate::error::StoreError;
use crate::event::RecordedEvent;
use crate::event_store::{EventStream, FeedReader};
use crate::position::FeedPosition;
use crate::stream_id::Category;

/// Which events a feed reader wants. The default wants every event.
///
/// ```
/// use eventsource_core::{Category, FeedFilter};
/// let filter = FeedFilter::all()
///     .with_categories([Category::new("order")?])
///     .with_event_types(["OrderPlaced", "OrderShipped"]);
/// assert!(!filter.is_all());
/// # Ok::<(), eventsource_core::ValidationError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedFilter {
    /// Only events of these categories (`None`: every category).
    pub categories: Option<Vec<Category>>,
    /// Only events with these type names (`None`: every type).
    pub event_types: Option<Vec<String>>,
}

impl FeedFilter {
    /// Every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// The events of aggregate `A`: its category and its event types.
    pub fn for_aggregate<A: Aggregate>() -> Self {
        let category =
            Category::new(A::CATEGORY).unwrap_or_else(|_| Category::unchecked(A::CATEGORY));
        Self::all()
            .with_categories([category])
            .with_event_types(A::Event::EVENT_TYPES.iter().copied())
    }

    /// Keeps only events of these categories.
    pub fn with_categories(mut self, categories: impl IntoIterator<Item = Category>) -> Self {
        self.categories = Some(categories.into_iter().collect());
        self
    }

    /// Keeps only events with these type names (for a derived event enum: `E::EVENT_TYPES`).
    pub fn with_event_types<T: Into<String>>(mut self, types: impl IntoIterator<Item = T>) -> Self {
        self.event_types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// The category names as text (for binding to a query), `None` for every category.
    pub fn category_names(&self) -> Option<Vec<&str>> {
        self.categories
            .as_ref()
            .map(|cs| cs.iter().map(Category::as_str).collect())
    }

    /// Whether this filter keeps every event.
    pub fn is_all(&self) -> bool {
        self.categories.is_none() && self.event_types.is_none()
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        let category_ok = self
            .categories
            .as_ref()
            .is_none_or(|cs| cs.iter().any(|c| c == event.stream_id.category()));
        let type_ok = self
            .event_types
            .as_ref()
            .is_none_or(|ts| ts.contains(&event.event_type));
        category_ok && type_ok
    }
}

/// How much one read of the feed may return: a bound on the events it examines and on the
/// bytes of event data it carries, so memory stays bounded whatever the events' sizes.
///
/// A read stops before the event that would take the payload and metadata bytes of the events
/// it returns past `bytes`, but always returns at least one event (so an event larger than the
/// budget is still delivered, alone).
///
/// ```
/// use eventsource_core::BatchSize;
/// let size = BatchSize::events(100).with_bytes(4 * 1024 * 1024);
/// assert_eq!((size.events, size.bytes), (100, 4 * 1024 * 1024));
/// assert_eq!(BatchSize::default().bytes, BatchSize::DEFAULT_BYTES);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSize {
    /// The most events examined per read, including those the filter drops (default 500).
    pub events: usize,
    /// The most bytes of payloads and metadata returned per read (default 16 MiB).
    pub bytes: usize,
}

impl BatchSize {
    /// The default byte budget of a read: 16 MiB.
    pub const DEFAULT_BYTES: usize = 16 * 1024 * 1024;

    /// At most `events` events, and the default byte budget.
    pub const fn events(events: usize) -> Self {
        Self {
            events,
            bytes: Self::DEFAULT_BYTES,
        }
    }

    /// The same bound with another byte budget.
    pub const fn with_bytes(mut self, bytes: usize) -> Self {
        self.bytes = bytes;
        self
    }

    /// Refuses a bound that lets no event through.
    pub fn check(self) -> Result<Self, crate::ValidationError> {
        if self.events == 0 || self.bytes == 0 {
            return Err(crate::ValidationError::ZeroBatchSize);
        }
        Ok(self)
    }
}

impl Default for BatchSize {
    fn default() -> Self {
        Self::events(500)
    }
}

/// One bounded read of the feed.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedBatch {
    /// The events that passed the filter, in feed order.
    pub events: Vec<RecordedEvent>,
    /// Where the next read continues: after the last event examined, whether or not it passed
    /// the filter. Equal to the read's start when nothing new was final.
    pub next: FeedPosition,
    /// `true` when the read examined fewer events than its limit (and was not cut short by its
    /// byte budget): the reader has reached the events whose place is final for now.
    pub reached_head: bool,
}

/// Reads the feed after `after` up to the current head, in batches of `batch_size`, as a stream
/// (a catch-up [`FeedFollower`](crate::FeedFollower) underneath).
///
/// Memory stays bounded by one batch, however long the feed. The stream ends at the head; use a
/// subscription to follow new events. A batch size the store refuses (0) is the stream's first
/// item, as an error.
pub fn read_feed<'a, S: FeedReader + ?Sized>(
    store: &'a S,
    after: FeedPosition,
    batch_size: BatchSize,
    filter: FeedFilter,
) -> EventStream<'a> {
    let options = crate::FeedOptions::default()
        .with_batch_size(batch_size.events)
        .with_max_batch_bytes(batch_size.bytes)
        .with_filter(filter);
    let follower = Some(crate::FeedFollower::catch_up(store, after, options));
    stream::try_unfold(follower, |follower| async move {
        let Some(mut follower) = follower else {
            return Ok::<_, StoreError>(None);
        };
        let batch = follower.next().await?;
        let events = stream::iter(batch.events.into_iter().map(Ok::<_, StoreError>));
        let rest = (!batch.reached_head).then_some(follower);
        Ok(Some((events, rest)))
    })
    .try_flatten()
    .boxed()
}
