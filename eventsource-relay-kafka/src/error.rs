//! What can go wrong while setting up a publisher or an inbox, or running an inbox.

use rdkafka::error::KafkaError;

/// A setup or runtime failure of this crate (a refused or unavailable *message* is a
/// [`PublishError`](eventsource_postgres::relay::PublishError) instead).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaRelayError {
    /// An argument or option cannot be used.
    #[error("invalid Kafka setup: {problem}")]
    Config {
        /// What is wrong, and how to fix it.
        problem: String,
    },
    /// librdkafka refused the client configuration or could not create a client.
    #[error("could not create the Kafka {client} for {brokers}: {source}; check the bootstrap servers and the extra client settings")]
    Client {
        /// Which client (producer, consumer, admin client).
        client: &'static str,
        /// The bootstrap servers.
        brokers: String,
        /// The client's error.
        #[source]
        source: Box<KafkaError>,
    },
    /// Creating a topic failed.
    #[error("could not create the Kafka topic `{topic}` on {brokers}: {reason}; create it yourself (or fix the broker's policy), or check that the broker answers")]
    Topic {
        /// The topic.
        topic: String,
        /// The bootstrap servers.
        brokers: String,
        /// The broker's or the client's reason.
        reason: String,
    },
    /// A consumer could not subscribe to its topics.
    #[error("the Kafka consumer of group `{group}` could not subscribe to {topics:?}: {source}")]
    Subscribe {
        /// The consumer group.
        group: String,
        /// The topics.
        topics: Vec<String>,
        /// The client's error.
        #[source]
        source: Box<KafkaError>,
    },
}
