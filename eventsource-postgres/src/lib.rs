//! The PostgreSQL event store for eventsource.
//!
//! - [`PostgresStore`]: versioned appends in one statement, stream reads, and the global feed
//!   read below the transaction-id horizon, so it never skips an event that commits late
//!   ([`FeedHorizon`] chooses which open transactions hold it back);
//! - [`PostgresStore::migrate`]: creates the `eventsource` schema from `migrations/`;
//! - [`projection`]: projection runners, rebuilds, dead letters and lag;
//! - [`process_manager`]: process managers (sagas) run over the feed, with their instances'
//!   state, deadlines and exactly-once commands;
//! - [`relay`]: the feed published to a broker through a broker crate's publisher, and
//!   [`inbox`]: messages from a broker handled exactly once in effect;
//! - [`Supervisor`]: runs several projection runners (any [`Component`]) under one shutdown,
//!   with one status view and restarts with backoff;
//! - [`sqlx`] and [`PgConnection`]: the driver this crate is built on, re-exported so that a
//!   projection can write its read model without a `sqlx` dependency of its own (and with the
//!   very version this crate uses).
//!
//! With the feature `testing` (for tests, examples and development tools only; it is off by
//! default because these run `initdb` and `DROP DATABASE ... WITH (FORCE)`):
//! - `LocalServer`: a throwaway server from the installed binaries, for development;
//! - `testing`: a fresh database per test (`testing::TestDatabase`).
#![deny(missing_docs)]

pub mod active_instance;
mod append;
mod append_to_streams;
#[cfg(feature = "testing")]
pub mod delivery_check;
mod error;
mod feed_guard;
mod feed_horizon;
mod feed_position;
pub mod inbox;
mod listener;
#[cfg(feature = "testing")]
pub mod local_server;
mod notifier;
pub mod process_manager;
pub mod projection;
mod read_feed;
mod read_stream;
mod redact;
pub mod relay;
mod row;
mod single_instance;
mod snapshot;
mod store;
mod subscribe;
mod supervisor;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use active_instance::ActiveInstance;
#[doc(inline)]
pub use feed_horizon::FeedHorizon;
pub use feed_position::feed_position;
pub use listener::ListenerStats;
#[cfg(feature = "testing")]
pub use local_server::LocalServer;
/// The PostgreSQL driver this crate is built on: a projection's `setup` and `handle` receive a
/// [`PgConnection`] and write with `sqlx::query(...)`.
pub use sqlx;
#[doc(no_inline)]
pub use sqlx::PgConnection;
pub use store::{PostgresStore, DEFAULT_DATABASE_URL};
#[doc(inline)]
pub use supervisor::{
    Component, ComponentProgress, ComponentState, ComponentStatus, Supervisor, SupervisorError,
    SupervisorOptions,
};
