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

mod checkpoint;
pub mod dead_letters;
mod error;
pub mod lag;
mod lock;
pub mod rebuild;
mod registry;
mod runner;
mod scope;

use async_trait::async_trait;
use eventsource_core::{BoxError, FeedFilter, RecordedEvent};
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
/// **Write only to your own tables, by unqualified name.** The runner sets `search_path` to the
/// projection's schema for the transaction, and a rebuild points it at a shadow schema instead;
/// qualified names would bypass the rebuild.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// The projection's unique name: the key of its checkpoint and of its runner lock.
    fn name(&self) -> &str;

    /// The tables it owns (unqualified). A rebuild builds new ones and swaps them in.
    fn tables(&self) -> &[&str];

    /// The schema its tables live in (default `public`).
    fn schema(&self) -> &str {
        "public"
    }

    /// Which events it wants (default: all). Others are skipped without stalling the checkpoint.
    fn filter(&self) -> FeedFilter {
        FeedFilter::all()
    }

    /// Creates its tables (with unqualified names, in the transaction's `search_path`). Runs
    /// once before the first batch, and once per rebuild in the shadow schema.
    ///
    /// To run a multi-statement script, write `tx.execute(sqlx::raw_sql(SCRIPT))` (with
    /// `sqlx::Executor` in scope): the form `sqlx::raw_sql(SCRIPT).execute(tx)` does not compile
    /// inside an `async_trait` method.
    async fn setup(&self, tx: &mut PgConnection) -> Result<(), BoxError>;

    /// Applies a batch of events, in feed order, inside the runner's transaction. An error rolls
    /// the whole batch back.
    async fn handle(&self, tx: &mut PgConnection, events: &[RecordedEvent])
        -> Result<(), BoxError>;
}
