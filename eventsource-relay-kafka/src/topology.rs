//! Topic names, client settings shared by the publisher and the inbox, and topic creation.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::error::KafkaRelayError;

/// The longest topic name Kafka accepts.
const MAX_TOPIC_LEN: usize = 249;

/// The topic of a category: `<prefix><category>` (with the default prefix `events.`, the
/// category `order` goes to `events.order`).
///
/// ```
/// assert_eq!(eventsource_relay_kafka::topic_name("events.", "order"), "events.order");
/// ```
pub fn topic_name(prefix: &str, category: &str) -> String {
    format!("{prefix}{category}")
}

/// Why `topic` is not a legal Kafka topic name, if it is not: 1 to 249 ASCII letters, digits,
/// `.`, `_` and `-`, and neither `.` nor `..`.
pub(crate) fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic == "." || topic == ".." {
        return Err(format!("`{topic}` is not a legal Kafka topic name"));
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "the topic name `{topic}` is {} bytes long; Kafka allows {MAX_TOPIC_LEN}",
            topic.len()
        ));
    }
    if let Some(bad) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "the topic name `{topic}` contains `{bad}`; Kafka allows only ASCII letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

/// The bootstrap servers of `url`: `host:port[,host:port...]`, each optionally written
/// `kafka://host:port`.
pub(crate) fn bootstrap_servers(url: &str) -> Result<String, KafkaRelayError> {
    let servers: Vec<&str> = url
        .split(',')
        .map(|server| {
            let server = server.trim();
            server
                .strip_prefix("kafka://")
                .or_else(|| server.strip_prefix("tcp://"))
                .unwrap_or(server)
                .trim_end_matches('/')
        })
        .collect();
    if servers.iter().any(|s| s.is_empty() || !s.contains(':')) {
        return Err(KafkaRelayError::Config {
            problem: format!(
                "`{url}` is not a list of Kafka bootstrap servers; write `host:port[,host:port...]`, e.g. `127.0.0.1:9092`"
            ),
        });
    }
    Ok(servers.join(","))
}

/// A client configuration for `servers` with `settings` (librdkafka names) on top.
pub(crate) fn client_config(servers: &str, settings: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", servers);
    // A stream keyed `order-1` goes to the partition Java clients would choose too.
    config.set("partitioner", "murmur2_random");
    for (key, value) in settings {
        config.set(key, value);
    }
    config
}

/// How topics are created when absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSetup {
    /// Partitions of a new topic (default 3). A stream always stays in one partition; more
    /// partitions let more consumers of a group share the work.
    pub partitions: i32,
    /// Replicas of each partition (default 1; use 3 on a production cluster).
    pub replication_factor: i32,
    /// Topic-level settings of a new topic, e.g. `("retention.ms", "-1")`.
    pub settings: Vec<(String, String)>,
    /// How long the broker may take to create a topic (default 10 s).
    pub timeout: Duration,
}

impl Default for TopicSetup {
    fn default() -> Self {
        Self {
            partitions: 3,
            replication_factor: 1,
            settings: Vec::new(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Creates each of `topics` that does not exist yet on the cluster at `servers`, as `setup`
/// says (an existing topic is left as it is, whatever its partitions and settings).
pub(crate) async fn create_topics(
    servers: &str,
    client_settings: &[(String, String)],
    topics: &[String],
    setup: &TopicSetup,
) -> Result<(), KafkaRelayError> {
    for topic in topics {
        check_topic(topic).map_err(|problem| KafkaRelayError::Config { problem })?;
    }
    if setup.partitions < 1 || setup.replication_factor < 1 {
        return Err(KafkaRelayError::Config {
            problem: format!(
                "TopicSetup asks for {} partitions and replication factor {}; both must be at least 1",
                setup.partitions, setup.replication_factor
            ),
        });
    }
    let admin: AdminClient<DefaultClientContext> = client_config(servers, client_settings)
        .create()
        .map_err(|source| KafkaRelayError::Client {
            client: "admin client",
            brokers: servers.to_owned(),
            source: Box::new(source),
        })?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|topic| {
            setup.settings.iter().fold(
                NewTopic::new(
                    topic,
                    setup.partitions,
                    TopicReplication::Fixed(setup.replication_factor),
                ),
                |new, (key, value)| new.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .request_timeout(Some(setup.timeout))
        .operation_timeout(Some(setup.timeout));
    let failed = |topic: &str, reason: String| KafkaRelayError::Topic {
        topic: topic.to_owned(),
        brokers: servers.to_owned(),
        reason,
    };
    let results = tokio::time::timeout(
        setup.timeout + Duration::from_secs(1),
        admin.create_topics(&new_topics, &options),
    )
    .await
    .map_err(|_| {
        failed(
            &topics.join(", "),
            format!("no answer within {:?}", setup.timeout),
        )
    })?
    .map_err(|e: KafkaError| failed(&topics.join(", "), e.to_string()))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(failed(&topic, code.to_string())),
        }
    }
    Ok(())
}
