//! Relays: the global feed published to a broker, with none lost.
//!
//! The event log is the outbox. A [`Relay`] is a long-running component like a projection
//! runner: it follows the feed that never skips from its checkpoint, turns each event into a
//! public [`IntegrationEvent`] through a [`Mapping`] ([`PublishAsIs`] by default), publishes it
//! through a broker's [`Publisher`] (one crate per broker: `eventsource-relay-rabbitmq`,
//! `eventsource-relay-nats`, `eventsource-relay-kafka`), and moves its checkpoint only once the broker has
//! acknowledged every message before it. Delivery is therefore at least once: after a crash,
//! the messages published since the last checkpoint are published again, with the same message
//! id (the event id), and consumers deduplicate by it (the [inbox](crate::inbox) does that).
//!
//! Guarantees:
//! - every committed event the mapping publishes reaches the broker, and each stream's events
//!   go out in version order: a stream's next message is sent only once the previous one is
//!   acknowledged (messages of different streams are pipelined);
//! - one relay of a name is active across processes, with failover, through the same lock as
//!   projection runners;
//! - a broker outage is waited out with backoff; the relay never skips past it;
//! - a message refused for good (too large, unroutable, or unmappable) is parked as a
//!   [relay dead letter](dead_letters) with the reason, then the relay goes on or stops per
//!   [`OnRefusal`];
//! - lag is observable ([`Relay::lag`], [`Relay::status`]).
//!
//! Every message carries the envelope as headers (see [`header`]): message id, type, version,
//! stream, category, stream version, feed position, correlation id, causation id, actor,
//! recorded-at and `traceparent`.

pub mod dead_letters;
mod error;
mod mapping;
mod message;
mod publisher;
mod runner;

pub use error::RelayError;
pub use mapping::{IntegrationEvent, Mapping, PublishAsIs};
pub use message::{header, OutgoingMessage};
pub use publisher::{PublishError, Publisher};
pub use runner::{checkpoint_name, OnRefusal, Relay, RelayOptions, RelayStatus};
