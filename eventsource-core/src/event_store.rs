//! The store contract, split by capability: appending, reading one stream, reading the feed.

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use uuid::Uuid;

use crate::error::StoreError;
use crate::event::{NewEvent, RecordedEvent};
use crate::expected_version::ExpectedVersion;
use crate::feed::{BatchSize, FeedBatch, FeedFilter};
use crate::position::FeedPosition;
use crate::stream_id::StreamId;
use crate::version::StreamVersion;

/// A stream of recorded events that may fail part-way.
pub type EventStream<'a> = BoxStream<'a, Result<RecordedEvent, StoreError>>;

/// What a successful append reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    /// The stream's version after the append (the last appended event's version).
    pub stream_version: StreamVersion,
    /// The feed position of each appended event, in append order.
    pub positions: Vec<FeedPosition>,
    /// `true` when every event id was already stored by an earlier identical append (a retry
    /// after a lost reply): nothing new was written.
    pub already_stored: bool,
}

/// The events to append to one stream, as part of an append to several streams
/// ([`EventAppender::append_to_streams`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamAppend {
    /// The stream appended to.
    pub stream: StreamId,
    /// What the stream's current version must be.
    pub expected: ExpectedVersion,
    /// Its events, in order (none: only the expectation is checked).
    pub events: Vec<NewEvent>,
}

impl StreamAppend {
    /// The events `events` for `stream`, if its current version satisfies `expected`.
    pub fn new(stream: StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Self {
            stream,
            expected,
            events,
        }
    }
}

/// Appends events to streams under optimistic concurrency.
#[async_trait]
pub trait EventAppender: Send + Sync {
    /// Appends `events` to `stream` if its current version satisfies `expected`, atomically:
    /// all of them or none.
    ///
    /// - A failed expectation is [`StoreError::Conflict`] and stores nothing.
    /// - Appending event ids that an earlier append of the same events to the same stream already
    ///   stored succeeds with `already_stored = true` and stores nothing again.
    /// - An empty `events` only checks the expectation.
    /// - Input past the store's [`Limits`](crate::Limits) is refused with
    ///   [`StoreError::Invalid`] before storage is touched.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError>;

    /// Appends to several streams in one transaction: every stream's events or none at all.
    /// Returns one result per stream, in the order given.
    ///
    /// - Each stream's expectation is checked; if one fails, nothing is stored in any stream
    ///   and the error is the [`StoreError::Conflict`] naming that stream (the first such
    ///   stream in the order given).
    /// - Input is checked as a whole before storage is touched: invalid events of any stream
    ///   refuse the whole append, a stream given twice is refused with
    ///   [`ValidationError::StreamGivenTwice`](crate::ValidationError::StreamGivenTwice), and
    ///   the [`Limits`](crate::Limits) on events and bytes per append apply to all the streams'
    ///   events together.
    /// - Idempotent as [`append`](Self::append) is: appending the very same events again (a
    ///   retry after a lost reply) succeeds with `already_stored = true` for each stream and
    ///   stores nothing; event ids stored otherwise are refused with
    ///   [`StoreError::EventIdReused`].
    /// - The feed delivers the whole append in one place (one transaction), each stream's
    ///   events in version order.
    /// - No streams: nothing to do, an empty result.
    async fn append_to_streams(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>, StoreError>;
}

/// Reads the events of one stream.
pub trait StreamReader: Send + Sync {
    /// The events of `stream` with versions from `from` on, in version order. A stream without
    /// events yields nothing. Reads every committed event, whatever the feed's horizon.
    fn read_stream<'a>(&'a self, stream: &'a StreamId, from: StreamVersion) -> EventStream<'a>;

    /// The events of `stream` whose metadata names `causation_id` as their causation id, in
    /// version order: what one command (with that id) appended there. Reads every committed
    /// event, whatever the feed's horizon.
    ///
    /// [`Repository::execute`](crate::Repository::execute) uses it to find the first run of
    /// a command whose id was given. The default reads the whole stream and keeps the matching
    /// events; a store with an index on causation ids overrides it (the PostgreSQL store does).
    fn read_caused_by<'a>(&'a self, stream: &'a StreamId, causation_id: Uuid) -> EventStream<'a> {
        self.read_stream(stream, StreamVersion::FIRST)
            .filter(move |event| {
                let keep = match event {
                    Ok(event) => event.metadata.causation_id == Some(causation_id),
                    Err(_) => true,
                };
                futures::future::ready(keep)
            })
            .boxed()
    }
}

/// Reads the global feed: every committed event exactly once, each stream in version order.
#[async_trait]
pub trait FeedReader: Send + Sync {
    /// Reads one bounded batch of the feed after `after`: at most `size.events` events are
    /// examined, the ones that pass `filter` are returned up to `size.bytes` bytes of payload
    /// and metadata (at least one), and [`FeedBatch::next`] tells where to continue (past
    /// examined events the filter dropped, so a filtered reader keeps advancing).
    ///
    /// Only events whose place in the feed is final are returned: an event never appears later
    /// at a position before one already returned. A size of 0 events or 0 bytes is refused with
    /// [`ValidationError::ZeroBatchSize`](crate::ValidationError::ZeroBatchSize).
    async fn read_feed_batch(
        &self,
        after: FeedPosition,
        size: BatchSize,
        filter: &FeedFilter,
    ) -> Result<FeedBatch, StoreError>;
}

#[async_trait]
impl<T: FeedReader + ?Sized> FeedReader for &T {
    async fn read_feed_batch(
        &self,
        after: FeedPosition,
        size: BatchSize,
        filter: &FeedFilter,
    ) -> Result<FeedBatch, StoreError> {
        (**self).read_feed_batch(after, size, filter).await
    }
}

/// A complete event store: appends, stream reads and feed reads.
pub trait EventStore: EventAppender + StreamReader + FeedReader {}

impl<T: EventAppender + StreamReader + FeedReader> EventStore for T {}
