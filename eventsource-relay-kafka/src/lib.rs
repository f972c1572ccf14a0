//! Kafka for eventsource: a relay that publishes the feed with an idempotent producer
//! (`acks=all`) to a topic per category keyed by stream, and an inbox over a consumer group.
//!
//! - [`KafkaPublisher`] is the broker side of a
//!   [`Relay`](eventsource_postgres::relay::Relay): each event goes to the topic
//!   `<prefix><category>` ([`topic_name`], e.g. `events.order`), keyed by its stream
//!   (`order-42`: a stream stays in one partition, in version order), with the envelope as
//!   headers (`message-id` = the event id, `event-type`, `stream`, `stream-version`,
//!   `feed-position`, ...) and `content-type: application/json`. A wave's messages are sent at
//!   once and every delivery report awaited before the relay moves its checkpoint.
//! - [`KafkaInbox`] reads topics as a consumer group (auto-commit off) into an
//!   [`Inbox`](eventsource_postgres::inbox::Inbox): each message handled exactly once in
//!   effect, then its offset committed; a message the handler gives up on goes to
//!   `<topic>.dlq` with the error in its headers, then its offset is committed; while the
//!   database is down nothing is committed and the message is retried.
//! - Topology: [`KafkaPublisher`] creates a category's topic when absent before its first
//!   message (or [`KafkaPublisher::ensure_topics`] up front; turn it off with
//!   [`KafkaPublisherOptions::create_topics`] `= None`, then the topics must exist);
//!   [`KafkaInbox::ensure_topics`] creates the consumed topics and their dead-letter topics.
//!   Consumer groups need no declaration.
//!
//! Delivery is at least once: after a crash of the relay, what it published after its last
//! checkpoint is published again with the same `message-id` (the idempotent producer only
//! removes duplicates within one producer's life), and the inbox recognises it.
//!
//! ```no_run
//! use eventsource_postgres::inbox::{Inbox, InboxHandler, IncomingMessage};
//! use eventsource_postgres::relay::{PublishAsIs, Relay};
//! use eventsource_postgres::{PgConnection, PostgresStore};
//! use eventsource_relay_kafka::{
//!     topic_name, KafkaInbox, KafkaInboxOptions, KafkaPublisher, KafkaPublisherOptions,
//! };
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
//! // The relay: every event of the feed to the topic `events.<category>`, keyed by stream.
//! let publisher = KafkaPublisher::new("127.0.0.1:9092", KafkaPublisherOptions::default())?;
//! let relay = Relay::new(store.clone(), "kafka", publisher, PublishAsIs);
//! let relay_task = tokio::spawn({
//!     let shutdown = shutdown.clone();
//!     async move { relay.run(shutdown).await }
//! });
//!
//! // An inbox in another service: the group `shipping` reads `events.order`, and gives up on
//! // a message into `events.order.dlq`.
//! let options = KafkaInboxOptions::new([topic_name("events.", "order")]);
//! let inbox = KafkaInbox::new("127.0.0.1:9092", Inbox::new(store, "shipping"), options)?;
//! inbox.ensure_topics().await?;
//! inbox.run(&RecordShipment, shutdown.clone()).await?;
//! relay_task.await??;
//! # Ok(()) }
//! ```
//!
//! Tested against [tansu](https://github.com/tansu-io/tansu) 0.6 (a Kafka-compatible broker)
//! with its in-memory storage; see the crate's README section in the tests for what that
//! broker does and does not do.

#![deny(missing_docs)]

mod error;
mod inbox;
mod publisher;
mod topology;

#[doc(inline)]
pub use error::KafkaRelayError;
#[doc(inline)]
pub use inbox::{incoming_message, KafkaInbox, KafkaInboxOptions, KafkaInboxStatus, SOURCE_HEADER};
#[doc(inline)]
pub use publisher::{KafkaPublisher, KafkaPublisherOptions};
#[doc(inline)]
pub use topology::{topic_name, TopicSetup};

/// The client this crate is built on, for the raw Kafka API (admin, consumers, producers).
pub use rdkafka;

/// The header naming the value's content type.
pub const CONTENT_TYPE_HEADER: &str = "content-type";

/// The content type of every relayed message's value.
pub const CONTENT_TYPE: &str = "application/json";
