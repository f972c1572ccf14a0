//! The building blocks of an event store implementation, for crates that implement
//! [`EventAppender`](crate::EventAppender), [`StreamReader`](crate::StreamReader),
//! [`FeedReader`](crate::FeedReader) and [`Subscribe`](crate::Subscribe) (such as
//! `eventsource-postgres`), and for tools that work below the application API.
//!
//! Application code does not need this module: aggregates, repositories, subscriptions and
//! projections are all at the crate root.
//!
//! - [`replayed_append`], [`replayed_multi_append`] and [`StoredEventLocation`]: the
//!   idempotent-append rule (the same event
//!   ids appended again after a lost reply), decided once for every store;
//! - [`EncodedEvent`]: an event checked against the [`Limits`](crate::Limits) and encoded, as
//!   [`Limits::check_append`](crate::Limits::check_append) returns it;
//! - [`json_nesting`]: stack-safe depth checks and parsing of stored JSON;
//! - [`GlobalPosition`]: the identity half of a [`FeedPosition`](crate::FeedPosition);
//! - [`WakeSignal`]: what [`Subscribe::wake_signal`](crate::Subscribe::wake_signal) returns;
//! - [`filter_for`]: a filter with a feed item's event type names added;
//! - [`Items`]: a batch as [`FeedItem::view`](crate::FeedItem::view) returns it;
//! - [`read_feed`]: the feed from a position up to the head as one stream of events, for
//!   tools and benchmarks over any [`FeedReader`](crate::FeedReader).

#[doc(inline)]
pub use crate::envelope::{filter_for, Items};
#[doc(inline)]
pub use crate::feed::read_feed;
#[doc(inline)]
pub use crate::idempotency::{replayed_append, replayed_multi_append, StoredEventLocation};
#[doc(inline)]
pub use crate::json_nesting;
#[doc(inline)]
pub use crate::limits::EncodedEvent;
#[doc(inline)]
pub use crate::position::GlobalPosition;
#[doc(inline)]
pub use crate::subscription::WakeSignal;
