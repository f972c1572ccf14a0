//! NATS JetStream for eventsource: a relay that publishes the feed with PubAck and
//! `Nats-Msg-Id` deduplication, and an inbox over a durable pull consumer.
//!
//! - [`NatsPublisher`] is the broker side of a
//!   [`Relay`](eventsource_postgres::relay::Relay): each event goes to the subject
//!   `<prefix>.<category>.<EventType>` with `Nats-Msg-Id` = its event id (JetStream drops a
//!   republished message within the stream's duplicate window) and the envelope as headers;
//!   the relay moves its checkpoint only after every PubAck.
//! - [`NatsInbox`] reads a durable pull consumer (explicit acks, `max_deliver`) into an
//!   [`Inbox`](eventsource_postgres::inbox::Inbox): each message handled exactly once in
//!   effect, then acknowledged; a message the handler cannot handle is copied to
//!   `<dead letter prefix>.<subject>` with the error in its headers, then terminated.
//! - [`ensure_stream`], [`NatsPublisher::ensure_stream`] and [`NatsInbox::ensure_topology`]
//!   declare the streams and the consumer when absent.
//!
//! ```no_run
//! use eventsource_postgres::inbox::{Inbox, InboxHandler, IncomingMessage};
//! use eventsource_postgres::relay::{PublishAsIs, Relay};
//! use eventsource_postgres::{PgConnection, PostgresStore};
//! use eventsource_relay_nats::{NatsInbox, NatsInboxOptions, NatsPublisher, NatsPublisherOptions};
//! use tokio_util::sync::CancellationToken;
//!
//! struct RecordShipment;
//!
//! #[async_trait::async_trait]
//! impl InboxHandler for RecordShipment {
//!     type Error = eventsource_postgres::sqlx::Error;
//!
//!     async fn handle(&self, tx: &mut PgConnection, message: &IncomingMessage) -> Result<(), Self::Error> {
//!         eventsource_postgres::sqlx::query("INSERT INTO shipments (message_id) VALUES ($1)")
//!             .bind(&message.message_id)
//!             .execute(tx)
//!             .await?;
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let store = PostgresStore::connect("postgres://postgres@127.0.0.1/orders").await?;
//! let shutdown = CancellationToken::new();
//!
//! // The relay: every event of the feed to `events.<category>.<EventType>`.
//! let mut publisher = NatsPublisher::new("nats://127.0.0.1:4222", NatsPublisherOptions::default())?;
//! publisher.ensure_stream("EVENTS").await?; // captures `events.>`
//! let relay = Relay::new(store.clone(), "nats", publisher, PublishAsIs);
//! let relay_task = tokio::spawn({
//!     let shutdown = shutdown.clone();
//!     async move { relay.run(shutdown).await }
//! });
//!
//! // An inbox in another service: the durable consumer `shipping` takes the order events;
//! // what its handler cannot handle goes to `dlq.<subject>`.
//! let options = NatsInboxOptions::new("EVENTS", "shipping").with_filter_subject("events.order.>");
//! let inbox = NatsInbox::new("nats://127.0.0.1:4222", Inbox::new(store, "shipping"), options)?;
//! inbox.ensure_topology().await?; // the DLQ stream and the durable consumer
//! inbox.run(&RecordShipment, shutdown.clone()).await?;
//! relay_task.await??;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod error;
mod inbox;
mod publisher;
mod subject;
mod topology;

#[doc(inline)]
pub use error::SetupError;
#[doc(inline)]
pub use inbox::{incoming_message, NatsInbox, NatsInboxOptions, NatsInboxStatus};
#[doc(inline)]
pub use publisher::{NatsPublisher, NatsPublisherOptions};
#[doc(inline)]
pub use topology::{ensure_stream, StreamSetup};

/// The client this crate is built on, for the raw JetStream API (streams, consumers).
pub use async_nats;

/// The content type header every relayed message carries.
pub(crate) const CONTENT_TYPE: &str = "Content-Type";
/// The relay's bodies are JSON.
pub(crate) const JSON: &str = "application/json";
