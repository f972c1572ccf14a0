//! Errors of the stores: typed conflicts, input refused before the database, storage failures.

use crate::domain_event::DecodeError;
use crate::expected_version::ExpectedVersion;
use crate::stream_id::StreamId;
use crate::version::StreamVersion;

/// A boxed error from a storage driver (the core does not name any driver).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An append whose expected version did not hold. Nothing of it was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("concurrency conflict on stream {stream}: expected {expected}, found version {actual}; reload the stream and decide again")]
pub struct Conflict {
    /// The stream appended to.
    pub stream: StreamId,
    /// What the append expected.
    pub expected: ExpectedVersion,
    /// The stream's version when the append was refused.
    pub actual: StreamVersion,
}

/// Input refused before it reaches a store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// An empty category name.
    #[error("the stream category is empty; name the aggregate type, such as `order`")]
    EmptyCategory,
    /// A category name over the limit.
    #[error("the stream category is {len} bytes long; the limit is {max}")]
    CategoryTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A category name with a character outside `[A-Za-z0-9_.-]`.
    #[error("the stream category `{category}` contains {character:?}; use ASCII letters, digits, `_`, `-` and `.`")]
    CategoryCharacter {
        /// The refused name.
        category: String,
        /// The first refused character.
        character: char,
    },
    /// An empty instance id.
    #[error("the stream id is empty; every aggregate instance needs an id")]
    EmptyStreamId,
    /// An instance id over the limit.
    #[error("the stream id is {len} bytes long; the limit is {max}")]
    StreamIdTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An instance id with a control character (PostgreSQL text cannot hold NUL).
    #[error("the stream id contains a control character; use printable characters only")]
    StreamIdControlCharacter,
    /// A version above `i64::MAX`.
    #[error("version {version} is out of range; versions go up to {}", i64::MAX)]
    VersionOutOfRange {
        /// The refused number.
        version: u64,
    },
    /// A negative version read from storage.
    #[error("stored version {version} is negative; the events table is corrupt")]
    NegativeVersion {
        /// The stored number.
        version: i64,
    },
    /// An append that would take the stream past `i64::MAX` events.
    #[error("appending {count} events to stream {stream} after version {after} would overflow the version range")]
    VersionOverflow {
        /// The stream.
        stream: StreamId,
        /// The version the events would follow.
        after: StreamVersion,
        /// How many events.
        count: usize,
    },
    /// An empty event type name.
    #[error("event {index} of the append has an empty type name")]
    EmptyEventType {
        /// Its index in the append.
        index: usize,
    },
    /// A schema version of 0 or above `i32::MAX`.
    #[error("event type `{event_type}` has schema version {schema_version}; schema versions go from 1 to {}", i32::MAX)]
    SchemaVersionOutOfRange {
        /// The type name.
        event_type: String,
        /// The refused version.
        schema_version: u32,
    },
    /// A payload above the store's configured limit.
    #[error("event type `{event_type}` has a {size}-byte payload; the limit is {limit} bytes (raise Limits::max_payload_bytes or store the data elsewhere and reference it)")]
    PayloadTooLarge {
        /// The type name.
        event_type: String,
        /// Its encoded size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A payload nested deeper than the store's configured limit.
    #[error("the payload of event type `{event_type}` nests arrays and objects more than {limit} levels deep; flatten it (or raise Limits::max_json_depth, up to 1,000)")]
    PayloadTooDeep {
        /// The type name.
        event_type: String,
        /// The configured limit.
        limit: usize,
    },
    /// Metadata above the store's configured limit.
    #[error("the metadata (correlation, causation, actor, headers) of an event of type `{event_type}` is {size} bytes; the limit is {limit} bytes (keep headers small, or raise Limits::max_metadata_bytes)")]
    MetadataTooLarge {
        /// The type name.
        event_type: String,
        /// Its encoded size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// An event type name above the store's configured limit.
    #[error("event {index} of the append has a {len}-byte type name; the limit is {limit} bytes (use a short, stable name)")]
    EventTypeTooLong {
        /// Its index in the append.
        index: usize,
        /// Its length in bytes.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// An append whose events together exceed the store's configured byte limit.
    #[error("an append of {events} events carries more than {limit} bytes (at least {size_so_far}); split it into several appends, or raise Limits::max_append_bytes")]
    AppendTooLarge {
        /// Events in the append.
        events: usize,
        /// Bytes counted until the limit was passed.
        size_so_far: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A payload string holding U+0000, which PostgreSQL `jsonb` cannot store.
    #[error("the payload of event type `{event_type}` contains the character U+0000, which cannot be stored; remove it or encode binary data (base64)")]
    NulInPayload {
        /// The type name.
        event_type: String,
    },
    /// A type name or metadata text (actor, header) holding U+0000, which PostgreSQL text
    /// cannot store.
    #[error("the {field} of an event of type {event_type:?} contains the character U+0000, which cannot be stored; remove it")]
    NulInEventText {
        /// The type name (escaped when printed).
        event_type: String,
        /// Which text: `type name`, `actor` or `header`.
        field: &'static str,
    },
    /// More events in one append than the configured limit.
    #[error(
        "an append of {count} events exceeds the limit of {limit}; split it into several appends"
    )]
    TooManyEvents {
        /// How many events.
        count: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The same event id twice in one append.
    #[error("event id {event_id} appears twice in one append")]
    DuplicateEventId {
        /// The repeated id.
        event_id: uuid::Uuid,
    },
    /// The same stream twice in one append to several streams.
    #[error("stream {stream} appears twice in one append to several streams; give each stream's events in one StreamAppend")]
    StreamGivenTwice {
        /// The repeated stream.
        stream: StreamId,
    },
    /// Metadata that does not encode as JSON.
    #[error("the metadata of event {index} of the append does not encode as JSON: {reason}")]
    MetadataEncoding {
        /// Its index in the append.
        index: usize,
        /// What serde_json reported.
        reason: String,
    },
    /// A command addressed to a stream of another aggregate type.
    #[error("stream {stream} belongs to category `{}`, but this repository handles `{expected}`", stream.category())]
    WrongCategory {
        /// The stream given.
        stream: StreamId,
        /// The repository's category.
        expected: String,
    },
    /// A feed position that does not parse.
    #[error("`{input}` is not a feed position; write it as `transaction_id/global_position`, such as `7345/120`")]
    FeedPositionSyntax {
        /// The refused text.
        input: String,
    },
    /// A feed read with a batch size of 0 events or 0 bytes.
    #[error("a feed batch must allow at least 1 event and 1 byte")]
    ZeroBatchSize,
}

/// What can go wrong when appending to or reading from a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The expected version did not hold; nothing was stored.
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// The input was refused before reaching the store.
    #[error("invalid input: {0}")]
    Invalid(#[from] ValidationError),
    /// Event ids of the append were already stored, but not as this same append (other streams,
    /// other versions, or only some of them).
    #[error("event {event_id} is already stored in stream {stored_in} at version {version}, which does not match this append to {stream}; give new events new ids")]
    EventIdReused {
        /// The reused id.
        event_id: uuid::Uuid,
        /// The stream appended to.
        stream: StreamId,
        /// Where the id is stored.
        stored_in: StreamId,
        /// At which version.
        version: StreamVersion,
    },
    /// A stored event does not decode into the domain's event type.
    #[error("event at version {version} of stream {stream} does not decode: {source}")]
    Decode {
        /// The stream.
        stream: StreamId,
        /// The event's version.
        version: StreamVersion,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// Stored events carry transaction ids the database has not assigned yet: it was restored
    /// from a dump into another cluster. The feed refuses to run rather than silently never
    /// deliver new events.
    #[error("the events carry transaction ids up to {newest_stored}, but this database's next transaction id is {next_transaction}: it was restored into another cluster, and appends and feed reads are refused until it is repaired. Stop writers and subscribers and run `SELECT * FROM eventsource.repair_restored_feed(ARRAY[<positions you saved outside the database>])` once (see docs/administration.md)")]
    TransactionIdsWentBackwards {
        /// The newest transaction id stored with an event.
        newest_stored: u64,
        /// The next transaction id the database will assign.
        next_transaction: u64,
    },
    /// Stored data violates an invariant the store relies on.
    #[error("stored data is corrupt: {what}")]
    Corrupt {
        /// What was found.
        what: String,
    },
    /// The storage backend could not be reached or failed in a way that may clear by itself: a
    /// refused or lost connection, a server shutting down or restarting, a serialization failure
    /// or a deadlock. Nothing tells whether a write that failed so was stored.
    ///
    /// Retrying is safe for reads, and for appends *with the same event ids* (an append stored
    /// before the connection dropped is then recognised and not stored again):
    /// [`Repository::execute`](crate::Repository::execute) does so by itself.
    #[error("{operation} failed: {source}; the database may be restarting or unreachable: retry (appends with the same event ids)")]
    Unavailable {
        /// What the store was doing.
        operation: String,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// The storage backend failed.
    #[error("{operation} failed: {source}")]
    Backend {
        /// What the store was doing ("append to order-1", "read the feed"...).
        operation: String,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    /// The conflict, if this is one.
    pub fn as_conflict(&self) -> Option<&Conflict> {
        match self {
            Self::Conflict(c) => Some(c),
            _ => None,
        }
    }

    /// Whether the failure may clear by itself ([`StoreError::Unavailable`]): a retry of the
    /// same call may succeed. Conflicts are not transient in this sense: they need a new
    /// decision.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    /// Wraps a backend error that may clear by itself with what the store was doing.
    pub fn unavailable(operation: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            operation: operation.into(),
            source: source.into(),
        }
    }

    /// Wraps a backend error with what the store was doing.
    pub fn backend(operation: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            operation: operation.into(),
            source: source.into(),
        }
    }
}
