//! Events as handlers see them: decoded into the domain's event type, with where and when they
//! were recorded ([`Envelope`]); or raw ([`RecordedEvent`]), for generic tools.

use std::ops::Deref;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain_event::DomainEvent;
use crate::error::StoreError;
use crate::event::RecordedEvent;
use crate::feed::FeedFilter;
use crate::metadata::EventMetadata;
use crate::position::FeedPosition;
use crate::stream_id::StreamId;
use crate::version::StreamVersion;

/// A stored event decoded into the domain's event type `E`, with its metadata and its place in
/// its stream and in the feed.
///
/// ```
/// use eventsource_core::*;
/// # #[derive(Debug, PartialEq)] enum Shop { Opened }
/// # impl DomainEvent for Shop {
/// #     const EVENT_TYPES: &'static [&'static str] = &["ShopOpened"];
/// #     fn event_type(&self) -> &'static str { "ShopOpened" }
/// #     fn schema_version(&self) -> u32 { 1 }
/// #     fn encode(&self) -> Result<serde_json::Value, EncodeError> { Ok(serde_json::json!({})) }
/// #     fn decode(_: &str, _: u32, _: &serde_json::Value) -> Result<Self, DecodeError> { Ok(Shop::Opened) }
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryStore::new();
/// let id = StreamId::new("shop", "1")?;
/// let e = NewEvent::new("ShopOpened", 1, serde_json::json!({}), EventMetadata::default());
/// store.append(&id, ExpectedVersion::NoStream, vec![e]).await?;
/// let batch = store.read_feed_batch(FeedPosition::START, BatchSize::default(), &FeedFilter::all()).await?;
/// let envelope: Envelope<Shop> = batch.events[0].to_envelope()?;
/// assert_eq!(envelope.event, Shop::Opened);
/// assert_eq!(envelope.stream_id, id);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<E> {
    /// The decoded event.
    pub event: E,
    /// The event's unique id.
    pub event_id: Uuid,
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// Its version within the stream.
    pub version: StreamVersion,
    /// Its place in the global feed.
    pub position: FeedPosition,
    /// Correlation, causation, actor and headers.
    pub metadata: EventMetadata,
    /// When the store recorded it (database time).
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    /// Decodes this event into `E`, keeping its metadata and place. A failure names the stream,
    /// version and type.
    pub fn to_envelope<E: DomainEvent>(&self) -> Result<Envelope<E>, StoreError> {
        Ok(Envelope {
            event: self.decode()?,
            event_id: self.event_id,
            stream_id: self.stream_id.clone(),
            version: self.version,
            position: self.position,
            metadata: self.metadata.clone(),
            recorded_at: self.recorded_at,
        })
    }
}

/// What a handler of the feed receives for each event: an [`Envelope`] of a domain event type
/// (decoded; the store reads only that type's events), or the raw [`RecordedEvent`].
pub trait FeedItem: Sized + Send + Sync + 'static {
    /// The type names to read, `None` for every type.
    fn event_types() -> Option<&'static [&'static str]>;

    /// A batch of recorded events as handlers of this item see it; on an event that does not
    /// decode, its index in `events` and the error.
    fn view(events: &[RecordedEvent]) -> Result<Items<'_, Self>, (usize, Box<StoreError>)>;
}

/// `filter` as a reader of `I` reads with: when it names no event types itself, the type names
/// of `I` are added, so the store reads only events that `I` can decode.
pub fn filter_for<I: FeedItem>(filter: FeedFilter) -> FeedFilter {
    match (&filter.event_types, I::event_types()) {
        (None, Some(types)) => filter.with_event_types(types.iter().copied()),
        _ => filter,
    }
}

impl FeedItem for RecordedEvent {
    fn event_types() -> Option<&'static [&'static str]> {
        None
    }

    fn view(events: &[RecordedEvent]) -> Result<Items<'_, Self>, (usize, Box<StoreError>)> {
        Ok(Items::Borrowed(events))
    }
}

impl<E: DomainEvent> FeedItem for Envelope<E> {
    fn event_types() -> Option<&'static [&'static str]> {
        Some(E::EVENT_TYPES)
    }

    fn view(events: &[RecordedEvent]) -> Result<Items<'_, Self>, (usize, Box<StoreError>)> {
        events
            .iter()
            .enumerate()
            .map(|(index, event)| {
                event
                    .to_envelope()
                    .map_err(|error| (index, Box::new(error)))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Items::Owned)
    }
}

/// A batch of feed items: borrowed from the recorded events (raw handlers), or decoded.
#[derive(Debug)]
pub enum Items<'a, T> {
    /// The recorded events themselves.
    Borrowed(&'a [T]),
    /// Decoded from them.
    Owned(Vec<T>),
}

impl<T> Deref for Items<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            Self::Borrowed(items) => items,
            Self::Owned(items) => items,
        }
    }
}
