//! Projections: read models in PostgreSQL built from the feed, exactly once.
//!
//! - [`Projection`]: what a read model implements (its tables, its setup, its batch handler);
//! - [`ProjectionRunner`]: catches up from the checkpoint, then follows the feed live; one
//!   active runner per projection across processes (a session advisory lock), the others stand
//!   by; failures retried, then stop or dead-letter;
//! - [`rebuild()`]: replays a projection into shadow tables and swaps them in atomically;
//! - [`dead_letters`]: parked events, listed and replayed;
//! - [`lag`]: how far a projection is behind the head;
//! - [`active_runner`]: which runner instance, in any process, holds a projection, and since
//!   when.

pub(crate) mod checkpoint;
pub mod dead_letters;
mod error;
pub mod lag;
pub mod rebuild;
mod registry;
mod runner;
mod scope;
mod setup;
mod setup_lock;

use async_trait::async_trait;
use eventsource_core::store::filter_for;
use eventsource_core::{BoxError, FeedFilter, FeedItem};
use sqlx::PgConnection;

pub use error::{FailedEvent, ProjectionError};
pub use rebuild::{rebuild, RebuildOptions, RebuildProgress};
pub use registry::{active_runner, ActiveRunner};
pub use runner::{
    FailurePolicy, OnFailure, ProjectionRunner, RunnerOptions, RunnerState, RunnerStatus,
};

/// A read model kept in PostgreSQL tables.
///
/// The runner calls [`Projection::handle`] with batches of events inside a transaction it owns,
/// and advances the projection's checkpoint in that same transaction: each event's effect is
/// applied exactly once, whatever point the process dies at.
///
/// A projection names the events it reads as [`Projection::Event`]:
/// - `Envelope<E>` for a domain event enum `E` (`#[derive(DomainEvent)]`): the handler gets the
///   events decoded, each with its stream, version, feed position and metadata, and the store
///   reads only `E`'s event types. An event that does not decode goes through the failure
///   policy, like a failing handler.
/// - `RecordedEvent` for raw events with JSON payloads (generic tools).
///
/// Its own error type comes back out of a [`ProjectionError`] as the error's `source()`, through
/// retries and dead letters (which also keep its text).
///
/// **Write only to your own tables, by unqualified name.** The runner sets `search_path` to the
/// projection's schema for the transaction, and a rebuild points it at a shadow schema instead;
/// qualified names would bypass the rebuild.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// What the handler receives per event: `Envelope<YourEvent>`, or `RecordedEvent`.
    type Event: FeedItem;
    /// The handler's error (anything that converts into a boxed error, `BoxError` included).
    type Error: Into<BoxError> + Send + 'static;

    /// The projection's unique name: the key of its checkpoint and of its runner lock.
    fn name(&self) -> &str;

    /// The tables it owns (unqualified). A rebuild builds new ones and swaps them in.
    fn tables(&self) -> &[&str];

    /// The schema its tables live in (default `public`).
    fn schema(&self) -> &str {
        "public"
    }

    /// Which events it wants (default: every event of [`Projection::Event`]'s types). A filter
    /// without types of its own gets those types added. Others are skipped without stalling
    /// the checkpoint.
    fn filter(&self) -> FeedFilter {
        FeedFilter::all()
    }

    /// Creates its tables (with unqualified names, in the transaction's `search_path`). Runs
    /// once before the first batch, and once per rebuild in the shadow schema.
    ///
    /// To run a multi-statement script, write `tx.execute(sqlx::raw_sql(SCRIPT))` (with
    /// `sqlx::Executor` in scope): the form `sqlx::raw_sql(SCRIPT).execute(tx)` does not compile
    /// inside an `async_trait` method.
    async fn setup(&self, tx: &mut PgConnection) -> Result<(), Self::Error>;

    /// Applies a batch of events, in feed order, inside the runner's transaction. An error rolls
    /// the whole batch back.
    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[Self::Event],
    ) -> Result<(), Self::Error>;
}

/// The filter a projection reads with: its own, with its event type's names added when it
/// names no types itself.
pub(crate) fn read_filter<P: Projection + ?Sized>(projection: &P) -> FeedFilter {
    filter_for::<P::Event>(projection.filter())
}
