//! Shared by the tests: the broker's address, fresh databases, unique names, and a raw
//! consumer (rdkafka, not the crate's inbox) that records what reached a topic.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use eventsource_core::FeedOptions;
use eventsource_postgres::delivery_check::ReceivedMessage;
use eventsource_postgres::relay::{header, RelayOptions, RelayStatus};
use eventsource_postgres::testing::TestDatabase;
use eventsource_postgres::PostgresStore;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// `KAFKA_BROKERS`, else the local default.
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// Fails at once, saying what to do, when no broker answers (instead of waiting on timeouts).
pub async fn require_broker() {
    let brokers = brokers();
    let first = brokers.split(',').next().unwrap_or_default().to_owned();
    let reached = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(&first),
    )
    .await;
    if !matches!(reached, Ok(Ok(_))) {
        panic!(
            "no Kafka broker answers at {first} (KAFKA_BROKERS={brokers}): run the tests with scripts/test, or `. scripts/ensure-kafka.sh` first, which starts tansu"
        );
    }
}

/// A name no other test (or earlier run) uses: `<prefix>-<random>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", fastrand::u64(..))
}

/// A fresh database and its store.
pub async fn fresh() -> (TestDatabase, PostgresStore) {
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");
    (db, store)
}

/// Relay options for tests: small batches, quick polls and retries.
pub fn relay_options() -> RelayOptions {
    RelayOptions {
        feed: FeedOptions::default()
            .with_batch_size(100)
            .with_poll_interval(Duration::from_millis(20)),
        standby_retry: Duration::from_millis(100),
        retry_backoff: Duration::from_millis(20),
        max_retry_backoff: Duration::from_millis(500),
        ..RelayOptions::default()
    }
}

/// Waits until the relay's status satisfies `done`.
pub async fn wait_for_relay(
    status: &mut watch::Receiver<RelayStatus>,
    done: impl FnMut(&RelayStatus) -> bool,
) {
    tokio::time::timeout(DEADLINE, status.wait_for(done))
        .await
        .expect("the relay got there in time")
        .expect("the relay is alive");
}

/// A record as the raw consumer received it.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub payload: Vec<u8>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// What `check_delivery` needs: the headers `message-id`, `stream`, `stream-version`.
    pub fn received(&self) -> ReceivedMessage {
        ReceivedMessage {
            message_id: self
                .header(header::MESSAGE_ID)
                .expect("message-id")
                .to_owned(),
            stream: self.header(header::STREAM).expect("stream").to_owned(),
            version: self
                .header(header::STREAM_VERSION)
                .expect("stream-version")
                .parse()
                .expect("a version"),
        }
    }
}

/// A raw consumer of every partition of a topic, from its beginning, outside any group.
pub struct RawReader {
    consumer: StreamConsumer,
    /// Partitions whose end was reached after their last record read.
    at_end: HashSet<i32>,
    partitions: usize,
    pub records: Vec<Record>,
}

impl RawReader {
    /// Reads `topic`, which must exist.
    pub async fn new(topic: &str) -> Self {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", unique("raw-reader"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .expect("a consumer");
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions(&consumer, topic).await {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .expect("an assignment");
        }
        consumer.assign(&assignment).expect("assign");
        Self {
            consumer,
            at_end: HashSet::new(),
            partitions: assignment.count(),
            records: Vec::new(),
        }
    }

    /// Reads until `done(records so far)`; fails the test after the deadline.
    pub async fn read_until(&mut self, mut done: impl FnMut(&[Record]) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !done(&self.records) {
            self.read_one(deadline).await;
        }
    }

    /// Reads until `count` distinct message ids arrived.
    pub async fn read_distinct(&mut self, count: usize) {
        self.read_until(|records| {
            records
                .iter()
                .filter_map(|r| r.header(header::MESSAGE_ID))
                .collect::<HashSet<_>>()
                .len()
                >= count
        })
        .await;
    }

    /// Reads up to the end of every partition: when nothing is written any more, the reader
    /// has read everything. (The end is the consumer's end-of-partition event: tansu's
    /// ListOffsets answer is not the log's end when its last batch holds several records.)
    pub async fn read_to_end(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        while self.at_end.len() < self.partitions {
            self.read_one(deadline).await;
        }
    }

    async fn read_one(&mut self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = match tokio::time::timeout(left, self.consumer.recv()).await {
            Ok(Ok(message)) => message,
            Ok(Err(KafkaError::PartitionEOF(partition))) => {
                self.at_end.insert(partition);
                return;
            }
            Ok(Err(error)) => panic!("the raw consumer failed: {error}"),
            Err(_) => panic!(
                "the topics did not deliver what was expected within {DEADLINE:?}; {} records read",
                self.records.len()
            ),
        };
        let headers = message
            .headers()
            .map(|all| {
                all.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8(h.value.unwrap_or_default().to_vec())
                                .expect("a text header"),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.at_end.remove(&message.partition());
        self.records.push(Record {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|k| String::from_utf8(k.to_vec()).expect("a text key")),
            headers,
            payload: message.payload().unwrap_or_default().to_vec(),
        });
    }

    pub fn received(&self) -> Vec<ReceivedMessage> {
        self.records.iter().map(Record::received).collect()
    }
}

/// The partition count of `topic`, waiting until the broker knows the topic.
pub async fn partitions(consumer: &StreamConsumer, topic: &str) -> i32 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            if let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) {
                if t.error().is_none() && !t.partitions().is_empty() {
                    return t.partitions().len() as i32;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the topic {topic} did not appear within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
