//! The test kit for domain code: given / when / then for aggregates, on the in-memory store,
//! needing no database (feature `testing`; enable it in `[dev-dependencies]`).
//!
//! ```
//! use eventsource_core::testing::counter::{Counter, CounterEvent, Increment, Incremented, TooHigh};
//! use eventsource_core::testkit::AggregateTest;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! AggregateTest::<Counter>::new()
//!     .given([CounterEvent::Incremented(Incremented { by: 999_999 })])
//!     .when(Increment(2))
//!     .await
//!     .then_refuses(|error| matches!(error, TooHigh { .. }));
//! # }
//! ```
//!
//! - [`AggregateTest`]: the events the stream already holds, then one command (`when(..).await`,
//!   or [`AggregateTest::when_blocking`] in a synchronous test);
//! - [`Then`]: `then_expect(events)`, `then_refuses(|error| ...)`, `then_refuses_with(error)`,
//!   and the events, error, stored records and state, to check anything else;
//! - [`ProcessManagerHarness`]: a process manager's decisions, given events (and elapsed time
//!   on a virtual clock), then expect commands, deadlines, completion and state;
//! - [`ListDiff`], [`Listing`] and [`assert_list_eq`]: the failure messages' diff of two lists
//!   of values, for any assertion over lists (a process manager's commands, a read model's
//!   rows).
//!
//! Read models are tested on a real database: `eventsource_postgres::testing::ProjectionTest`
//! (`eventsource::postgres::testing::ProjectionTest`).
//!
//! **Why through the repository, not `apply` and `handle` directly.** The command runs through
//! the real [`Repository`](crate::Repository) on a fresh [`InMemoryStore`](crate::InMemoryStore),
//! which costs microseconds and checks what a direct call would not: the given events are
//! encoded, stored and decoded before the aggregate folds them (a variant that does not round
//! trip, or an upcaster that breaks, fails the test as it would fail a load in production); the
//! produced events are stored at the next versions with the metadata of the test's
//! [`CommandContext`](crate::CommandContext) (see [`Then::recorded`]), and must read back equal
//! to what was produced; the category check and the encoding checks of the repository apply.
//! What the test asserts is what production would have appended.
//!
//! **Failures** panic like `assert_eq!`, pointing at the test's line (`#[track_caller]`), with
//! the expected and actual events one per line in pretty `Debug`, differing lines marked:
//!
//! ```text
//! then_expect: the command produced other events than expected
//! stream counter-test, given 1 event
//! expected 2 events, produced 1; first difference at event 1
//! (- expected, + produced)
//! ...
//! ```

mod aggregate_test;
mod diff;
mod process_manager;
mod then;

pub use aggregate_test::{AggregateTest, DEFAULT_INSTANCE};
pub use diff::{assert_list_eq, ListDiff, Listing};
pub use process_manager::{envelope, Mismatch, ProcessManagerHarness};
pub use then::Then;
