//! The relay's publisher: an idempotent Kafka producer (`acks=all`), a topic per category,
//! keyed by stream.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use eventsource_postgres::relay::{OutgoingMessage, PublishError, Publisher};
use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;

use crate::error::KafkaRelayError;
use crate::topology::TopicSetup;
use crate::topology::{bootstrap_servers, check_topic, client_config, create_topics, topic_name};
use crate::{CONTENT_TYPE, CONTENT_TYPE_HEADER};

/// How a [`KafkaPublisher`] names topics, creates them and waits for acknowledgements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaPublisherOptions {
    /// Put before the category to name its topic (default `events.`: the category `order`
    /// goes to the topic `events.order`). See [`topic_name`].
    pub topic_prefix: String,
    /// How a topic that does not exist yet is created, before the first message to it (default
    /// 3 partitions, replication factor 1); `None` to create none: then every category's topic
    /// must exist before the relay publishes to it, and until it does the relay waits (the
    /// broker is *unavailable* for it).
    pub create_topics: Option<TopicSetup>,
    /// How long librdkafka keeps trying to deliver a message before the relay is told the
    /// broker is unavailable (`message.timeout.ms`, default 30 s); the relay then resends.
    pub delivery_timeout: Duration,
    /// The largest message the producer sends (`message.max.bytes`, default 1,000,000 bytes:
    /// the broker's default limit). A larger message is refused for good, and the relay parks
    /// it as a relay dead letter. Keep it at most the broker's `message.max.bytes` (and the
    /// topics' `max.message.bytes`).
    pub max_message_bytes: usize,
    /// Further librdkafka producer settings (`security.protocol`, `sasl.*`, `linger.ms`,
    /// `compression.type`...), applied before the settings the relay's guarantees rest on:
    /// `enable.idempotence=true` and `acks=all` cannot be overridden.
    pub client_settings: Vec<(String, String)>,
}

impl Default for KafkaPublisherOptions {
    fn default() -> Self {
        Self {
            topic_prefix: "events.".to_owned(),
            create_topics: Some(TopicSetup::default()),
            delivery_timeout: Duration::from_secs(30),
            max_message_bytes: 1_000_000,
            client_settings: Vec::new(),
        }
    }
}

impl KafkaPublisherOptions {
    /// The same options with another topic prefix.
    pub fn with_topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topic_prefix = prefix.into();
        self
    }

    /// The same options with a librdkafka producer setting added.
    pub fn with_client_setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.client_settings.push((key.into(), value.into()));
        self
    }
}

/// Publishes a relay's messages to Kafka.
///
/// - Each message goes to the topic `<prefix><category>` ([`topic_name`]), created when absent
///   per [`KafkaPublisherOptions::create_topics`].
/// - Its key is the stream (`order-42`), so a stream's events stay in one partition, in order.
/// - Its headers are the envelope ([`header`](eventsource_postgres::relay::header): `message-id`
///   is the event id, then `event-type`, `stream`, `stream-version`, `feed-position`, ...) and
///   `content-type: application/json`; its value is the JSON body.
/// - The producer is idempotent (`enable.idempotence=true`, `acks=all`): every message of a
///   wave is sent at once and each one's delivery report awaited; the relay moves its
///   checkpoint only after all of them.
///
/// A message Kafka refuses for good (larger than `message.max.bytes`, an illegal topic name,
/// a record the broker calls invalid) is reported [`PublishError::Refused`]; any other
/// failure (no broker answers, delivery timeout, leader changes, missing topic) is
/// [`PublishError::Unavailable`], and the relay resends. The producer is created on the first
/// publish, and made anew after a fatal producer error (such as a lost idempotence sequence).
pub struct KafkaPublisher {
    servers: String,
    options: KafkaPublisherOptions,
    producer: Option<FutureProducer>,
    /// Topics known to exist (created or found), so each is created once per publisher.
    ready_topics: HashSet<String>,
}

impl KafkaPublisher {
    /// A publisher to the cluster whose bootstrap servers are `url` (`host:port[,host:port]`,
    /// each optionally written `kafka://host:port`). Nothing connects before the first publish.
    ///
    /// Fails when `url` is not a server list, or the topic prefix cannot begin a topic name.
    pub fn new(url: &str, options: KafkaPublisherOptions) -> Result<Self, KafkaRelayError> {
        let servers = bootstrap_servers(url)?;
        // The longest category (64 bytes) after the prefix must still be a legal topic name.
        check_topic(&topic_name(&options.topic_prefix, &"c".repeat(64))).map_err(|problem| {
            KafkaRelayError::Config {
                problem: format!(
                    "the topic prefix `{}` cannot begin a topic name: {problem}",
                    options.topic_prefix
                ),
            }
        })?;
        if options.max_message_bytes < 1000 || options.delivery_timeout < Duration::from_millis(1) {
            return Err(KafkaRelayError::Config {
                problem: "KafkaPublisherOptions::max_message_bytes must be at least 1000 and delivery_timeout at least 1 ms".to_owned(),
            });
        }
        Ok(Self {
            servers,
            options,
            producer: None,
            ready_topics: HashSet::new(),
        })
    }

    /// The topic of `category`: `<prefix><category>`.
    pub fn topic(&self, category: &str) -> String {
        topic_name(&self.options.topic_prefix, category)
    }

    /// Creates the topics of `categories` now when they do not exist (as
    /// [`KafkaPublisherOptions::create_topics`] says, else with the default
    /// [`TopicSetup`]), instead of before the first message to each.
    pub async fn ensure_topics(&mut self, categories: &[&str]) -> Result<(), KafkaRelayError> {
        let topics: Vec<String> = categories.iter().map(|c| self.topic(c)).collect();
        let setup = self.options.create_topics.clone().unwrap_or_default();
        create_topics(
            &self.servers,
            &self.options.client_settings,
            &topics,
            &setup,
        )
        .await?;
        self.ready_topics.extend(topics);
        Ok(())
    }

    /// The producer, created if there is none.
    fn producer(&mut self) -> Result<FutureProducer, KafkaRelayError> {
        if let Some(producer) = &self.producer {
            return Ok(producer.clone());
        }
        let mut config = client_config(&self.servers, &self.options.client_settings);
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                self.options.delivery_timeout.as_millis().to_string(),
            )
            .set(
                "message.max.bytes",
                self.options.max_message_bytes.to_string(),
            );
        if !self
            .options
            .client_settings
            .iter()
            .any(|(key, _)| key == "linger.ms" || key == "queue.buffering.max.ms")
        {
            // A wave is sent at once: batch what is sent together, not wait for more.
            config.set("linger.ms", "1");
        }
        let producer: FutureProducer =
            config.create().map_err(|source| KafkaRelayError::Client {
                client: "producer",
                brokers: self.servers.clone(),
                source: Box::new(source),
            })?;
        self.producer = Some(producer.clone());
        Ok(producer)
    }

    /// Makes sure the topics of `topics` exist; returns, per topic, why it cannot be used.
    async fn prepare_topics(&mut self, topics: &[String]) -> Vec<(String, PublishError)> {
        let mut problems = Vec::new();
        let mut missing: Vec<String> = Vec::new();
        for topic in topics {
            if self.ready_topics.contains(topic) || missing.contains(topic) {
                continue;
            }
            match check_topic(topic) {
                Ok(()) => missing.push(topic.clone()),
                Err(reason) => problems.push((topic.clone(), PublishError::Refused(reason))),
            }
        }
        if missing.is_empty() {
            return problems;
        }
        let Some(setup) = &self.options.create_topics else {
            // The topics must exist; a missing one shows as unavailable on delivery.
            self.ready_topics.extend(missing);
            return problems;
        };
        match create_topics(
            &self.servers,
            &self.options.client_settings,
            &missing,
            setup,
        )
        .await
        {
            Ok(()) => self.ready_topics.extend(missing),
            Err(error) => {
                let reason = error.to_string();
                problems.extend(
                    missing
                        .into_iter()
                        .map(|t| (t, PublishError::unavailable(reason.clone()))),
                );
            }
        }
        problems
    }
}

/// The record headers of `message`: its envelope and the content type.
fn headers(message: &OutgoingMessage) -> OwnedHeaders {
    let envelope = message.headers();
    let mut headers = OwnedHeaders::new_with_capacity(envelope.len() + 1);
    for (name, value) in &envelope {
        headers = headers.insert(Header {
            key: name,
            value: Some(value.as_str()),
        });
    }
    headers.insert(Header {
        key: CONTENT_TYPE_HEADER,
        value: Some(CONTENT_TYPE),
    })
}

/// Part of the reason given for a missing topic.
const MISSING_TOPIC: &str = "does not exist";

/// What a failed delivery means for the relay.
fn classify(topic: &str, message: &OutgoingMessage, error: &KafkaError) -> PublishError {
    use RDKafkaErrorCode::*;
    match error.rdkafka_error_code() {
        Some(
            code @ (MessageSizeTooLarge | InvalidMessageSize | MessageBatchTooLarge),
        ) => PublishError::Refused(format!(
            "Kafka refused the message for topic `{topic}` ({code}): its value alone is {} bytes; with its headers it is over the producer's message.max.bytes (KafkaPublisherOptions::max_message_bytes), the broker's message.max.bytes or the topic's max.message.bytes",
            message.payload.len()
        )),
        Some(code @ (InvalidTopic | InvalidRecord)) => {
            PublishError::Refused(format!(
                "Kafka refused the message for topic `{topic}`: {code}"
            ))
        }
        Some(UnknownTopicOrPartition | UnknownTopic) => PublishError::unavailable(format!(
            "the Kafka topic `{topic}` {MISSING_TOPIC}: create it, or let the publisher create topics (KafkaPublisherOptions::create_topics); {error}"
        )),
        _ => PublishError::unavailable(format!(
            "Kafka did not acknowledge the message for topic `{topic}`: {error}"
        )),
    }
}

#[async_trait]
impl Publisher for KafkaPublisher {
    fn destination(&self, message: &OutgoingMessage) -> String {
        self.topic(&message.category)
    }

    async fn publish(&mut self, messages: &[OutgoingMessage]) -> Vec<Result<(), PublishError>> {
        let producer = match self.producer() {
            Ok(producer) => producer,
            Err(error) => {
                let reason = error.to_string();
                return messages
                    .iter()
                    .map(|_| Err(PublishError::unavailable(reason.clone())))
                    .collect();
            }
        };
        let topics: Vec<String> = messages.iter().map(|m| self.topic(&m.category)).collect();
        let problems = self.prepare_topics(&topics).await;
        let delivery_timeout = self.options.delivery_timeout;
        let sends = messages.iter().zip(&topics).map(|(message, topic)| {
            let producer = &producer;
            let problem = problems.iter().find(|(t, _)| t == topic);
            async move {
                if let Some((_, problem)) = problem {
                    return Err(match problem {
                        PublishError::Refused(reason) => PublishError::Refused(reason.clone()),
                        PublishError::Unavailable(error) => {
                            PublishError::unavailable(error.to_string())
                        }
                    });
                }
                let record = FutureRecord::to(topic)
                    .key(message.stream.as_bytes())
                    .payload(message.payload.as_slice())
                    .headers(headers(message));
                // Never wait on a full local queue past the delivery timeout.
                match producer
                    .send(record, Timeout::After(delivery_timeout))
                    .await
                {
                    Ok(_) => Ok(()),
                    Err((error, _)) => Err(classify(topic, message, &error)),
                }
            }
        });
        let results = join_all(sends).await;
        // A topic deleted since (or lost by a broker restarted without its data) is created
        // again before the resend.
        for (topic, result) in topics.iter().zip(&results) {
            if matches!(result, Err(PublishError::Unavailable(e)) if e.to_string().contains(MISSING_TOPIC))
            {
                self.ready_topics.remove(topic);
            }
        }
        if let Some((code, reason)) = producer.client().fatal_error() {
            // An idempotent producer that lost its sequence cannot go on: make a new one.
            tracing::warn!(%code, reason, "the Kafka producer failed fatally; a new one is made on the next publish");
            self.producer = None;
        }
        results
    }
}
