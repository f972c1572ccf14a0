//! The eventsource model: events, streams, versions, aggregates, the store contract, the
//! repository and the in-memory store. This crate has no database code; the PostgreSQL store
//! lives in `eventsource-postgres`, and applications use both through the `eventsource` crate.
//!
//! The pieces, each in the module named after it:
//! - [`StreamId`] (category + instance id), [`StreamVersion`], [`FeedPosition`];
//! - [`NewEvent`] on the way in, [`RecordedEvent`] on the way out, with [`EventMetadata`];
//! - [`DomainEvent`]: a domain's event enum as (type name, schema version, JSON payload);
//! - [`Aggregate`] and [`Repository`] (load, decide, append, retry on [`Conflict`]; idempotent
//!   commands with [`CommandContext::with_command_id`]);
//! - [`UnitOfWork`]: commands on several aggregates appended in one atomic
//!   [`EventAppender::append_to_streams`];
//! - the store contract: [`EventAppender`], [`StreamReader`], [`FeedReader`] = [`EventStore`];
//! - [`InMemoryStore`], which keeps the same contract as the PostgreSQL store;
//! - [`testing`]: the store contract suite and a small aggregate for tests;
//! - `testkit` (feature `testing`): given / when / then for aggregates, with readable diffs;
//! - [`store`]: the building blocks of a store implementation, kept out of the crate root so
//!   that application code meets only what it uses.
#![deny(missing_docs)]

pub mod aggregate;
pub mod command_context;
pub mod domain_event;
pub mod envelope;
pub mod error;
pub mod event;
pub mod event_store;
pub mod expected_version;
pub mod feed;
pub mod feed_follower;
#[doc(hidden)]
pub mod idempotency;
#[doc(hidden)]
pub mod json_nesting;
pub mod limits;
pub mod memory_store;
pub mod metadata;
pub mod position;
pub mod process_manager;
pub mod projection;
pub mod repository;
pub mod retry_policy;
pub mod snapshot;
pub mod snapshot_policy;
pub mod store;
pub mod stream_id;
pub mod subscription;
pub mod testing;
#[cfg(feature = "testing")]
pub mod testkit;
pub mod unit_of_work;
pub mod version;

pub use aggregate::Aggregate;
pub use command_context::CommandContext;
pub use domain_event::{DecodeError, DomainEvent, EncodeError};
pub use envelope::{Envelope, FeedItem};
pub use error::{BoxError, Conflict, StoreError, ValidationError};
pub use event::{NewEvent, RecordedEvent};
pub use event_store::{
    AppendResult, EventAppender, EventStore, EventStream, FeedReader, StreamAppend, StreamReader,
};
pub use expected_version::ExpectedVersion;
pub use feed::{BatchSize, FeedBatch, FeedFilter};
pub use feed_follower::{FeedFollower, FeedOptions, FollowerStatus, Outage};
pub use limits::Limits;
pub use memory_store::InMemoryStore;
pub use metadata::EventMetadata;
pub use position::FeedPosition;
pub use repository::{AppendedEvent, CommandError, Executed, Loaded, Repository};
pub use retry_policy::RetryPolicy;
pub use snapshot::{Snapshot, SnapshotStore};
pub use snapshot_policy::SnapshotPolicy;
pub use stream_id::{Category, StreamId};
pub use subscription::{FeedHoldup, Subscribe, Subscription};
pub use unit_of_work::{Committed, CommittedStream, Decided, UnitError, UnitFuture, UnitOfWork};
pub use version::StreamVersion;
