//! RabbitMQ for eventsource: a relay that publishes the feed to a topic exchange with publisher
//! confirms, and an inbox that consumes a queue exactly once in effect.
//!
//! - [`RabbitMqPublisher`]: the [`Publisher`](eventsource_postgres::relay::Publisher) a
//!   [`Relay`](eventsource_postgres::relay::Relay) publishes through. Persistent messages, on
//!   a confirm-mode channel, with mandatory routing, to a durable topic exchange (declared when
//!   absent) under the routing key `<category>.<EventType>`. The AMQP `message_id` is the event
//!   id, and every envelope header travels in the headers table, so a consumer needs neither
//!   this crate nor the producer's database.
//! - [`RabbitMqInbox`]: consumes a queue ([`QueueTopology`]: bound to the exchange by
//!   routing-key patterns, with a dead-letter exchange and queue) through an
//!   [`Inbox`](eventsource_postgres::inbox::Inbox): each message is handled in one PostgreSQL
//!   transaction with its id recorded, then acknowledged; redeliveries are acknowledged without
//!   running the handler; messages the handler fails on go to the dead-letter queue with the
//!   error in their headers.
//!
//! Delivery is at least once from the relay to the queue, and exactly once in effect into the
//! consumer's database. Each stream's messages arrive in version order: the relay publishes a
//! stream's next event only once the broker confirmed the previous one, the queue keeps that
//! order, and the inbox hands a stream's messages to one worker.
//!
//! The client is [`lapin`] on tokio, without TLS (`amqp://` URLs).
//!
//! # A producing service
//!
//! ```no_run
//! use eventsource_postgres::relay::{PublishAsIs, Relay};
//! use eventsource_postgres::PostgresStore;
//! use eventsource_relay_rabbitmq::{PublisherOptions, RabbitMqPublisher};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PostgresStore::connect("postgres://postgres@127.0.0.1/orders").await?;
//! let publisher = RabbitMqPublisher::new(
//!     "amqp://guest:guest@127.0.0.1:5672/%2f",
//!     PublisherOptions::new("orders"),
//! )?;
//! let relay = Relay::new(store, "orders-to-rabbitmq", publisher, PublishAsIs);
//! let shutdown = CancellationToken::new();
//! relay.run(shutdown).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # A consuming service
//!
//! ```no_run
//! use eventsource_postgres::inbox::{Inbox, InboxHandler, IncomingMessage};
//! use eventsource_postgres::{PgConnection, PostgresStore};
//! use eventsource_relay_rabbitmq::{QueueTopology, RabbitMqInbox};
//! use tokio_util::sync::CancellationToken;
//!
//! /// Records each placed order's invoice, in the inbox's transaction.
//! struct Invoices;
//!
//! #[async_trait::async_trait]
//! impl InboxHandler for Invoices {
//!     type Error = eventsource_postgres::sqlx::Error;
//!
//!     async fn handle(&self, tx: &mut PgConnection, message: &IncomingMessage) -> Result<(), Self::Error> {
//!         eventsource_postgres::sqlx::query("INSERT INTO invoices (order_stream) VALUES ($1)")
//!             .bind(message.header("stream"))
//!             .execute(tx)
//!             .await?;
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PostgresStore::connect("postgres://postgres@127.0.0.1/billing").await?;
//! store.migrate().await?;
//! let consumer = RabbitMqInbox::new(
//!     "amqp://guest:guest@127.0.0.1:5672/%2f",
//!     Inbox::new(store, "billing"),
//!     // Queue `billing`, bound to the exchange `orders` for `order.OrderPlaced`; failures go
//!     // to the queue `billing.dead-letter`.
//!     QueueTopology::new("orders", "billing").bind("order.OrderPlaced"),
//! )?;
//! // Declare the queue before the producer's relay publishes to it (the relay parks messages
//! // that no queue is bound for).
//! consumer.declare().await?;
//! let shutdown = CancellationToken::new();
//! consumer.run(&Invoices, shutdown).await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod amqp;
mod error;
mod inbox;
mod publisher;
mod topology;

#[doc(inline)]
pub use error::RabbitMqError;
#[doc(inline)]
pub use inbox::{InboxOptions, InboxStatus, RabbitMqInbox};
#[doc(inline)]
pub use publisher::{PublisherOptions, RabbitMqPublisher, RABBITMQ_MAX_MESSAGE_BYTES};
#[doc(inline)]
pub use topology::QueueTopology;
