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
//! # Settings that matter
//!
//! - Partitioning: records are keyed by stream and partitioned with `murmur2_random` (the Java
//!   client's partitioner), so every client puts a stream in the same partition. Adding
//!   partitions to a topic later moves streams to other partitions: a stream's order holds
//!   only among records written with the same partition count.
//! - Retention: Kafka deletes records by age (`retention.ms`, 7 days by default). A consumer
//!   that must be able to rebuild from the topic needs `retention.ms=-1` (give it in
//!   [`TopicSetup::settings`]); the event store stays the source of truth either way.
//! - Message size: [`KafkaPublisherOptions::max_message_bytes`] must not exceed the broker's
//!   `message.max.bytes` and the topic's `max.message.bytes`; a larger event is parked by the
//!   relay as a relay dead letter instead of being retried forever.
//!
//! # Tested broker
//!
//! The tests and the benchmark run against [tansu](https://github.com/tansu-io/tansu) 0.6, a
//! Kafka-compatible broker in one binary (`scripts/ensure-kafka.sh` installs and starts it
//! with its in-memory storage engine), through librdkafka 2.12. What works there: topic
//! creation (CreateTopics), the idempotent producer with `acks=all`, record headers and keys,
//! per-key order, consumer groups with manual offset commits and committed-offset lookups,
//! end-of-partition events. What differs from Kafka:
//! - it does not create a topic on first use (producing to an unknown topic fails), hence
//!   [`KafkaPublisherOptions::create_topics`];
//! - it accepts records of any size (5 MB went through): the size refusal the tests see is
//!   librdkafka's own `message.max.bytes` check, not a broker's `MESSAGE_TOO_LARGE`;
//! - its ListOffsets answer for the latest offset is one past the *first* record of the last
//!   batch, not one past the last record (after a batch of 5 records at offsets 0 to 4 it
//!   answers 1), so `fetch_watermarks` and lag tools read too low; consumers are not affected;
//! - its memory engine keeps nothing across a restart, so there is no broker-restart test here
//!   (a restarted broker has lost what the relay had published, which no relay can detect).

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
