//! Relay benchmarks against the real broker (tansu or Kafka at `KAFKA_BROKERS`) and
//! PostgreSQL, run on demand: `cargo bench -p eventsource-relay-kafka --bench relay`.
//!
//! 1. Throughput: the relay publishes a backlog of 20,000 events (200 streams), against a raw
//!    rdkafka loop publishing the same messages (same topic layout, keys, headers and values,
//!    the same idempotent producer settings: `acks=all`, `linger.ms=1`) in the same windows:
//!    the feed in batches of the relay's batch size, each batch in waves of one message per
//!    stream, a wave sent whole and every delivery report awaited before the next. The raw
//!    loop's messages are built beforehand; the relay reads the feed and writes its checkpoint
//!    on top. Run with the default batch size (500) and with 2,000, three rounds each (relay,
//!    then raw), on a busy machine the median says more than one run. Reported: events/s of
//!    each and the ratio (goal ≥ 0.8).
//! 2. Latency: 1,000 events/s appended for 10 s (10 appenders, 100 streams) while the relay
//!    and a `KafkaInbox` run (a topic of 12 partitions, handled concurrently); the time from
//!    just before each append to the inbox handler, p50/p99 (goal p99 < 50 ms).
//!
//! `BENCH_SKIP_THROUGHPUT=1` runs the latency part only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use eventsource_core::{
    EventAppender, EventMetadata, ExpectedVersion, FeedFollower, FeedOptions, FeedPosition,
    NewEvent, RecordedEvent, StreamId,
};
use eventsource_postgres::delivery_check::write_concurrently;
use eventsource_postgres::inbox::{Inbox, InboxHandler, IncomingMessage};
use eventsource_postgres::relay::{
    Mapping, OutgoingMessage, PublishAsIs, PublishError, Publisher, Relay, RelayOptions,
};
use eventsource_postgres::testing::TestDatabase;
use eventsource_postgres::{PgConnection, PostgresStore};
use eventsource_relay_kafka::rdkafka::message::{Header, OwnedHeaders};
use eventsource_relay_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use eventsource_relay_kafka::rdkafka::ClientConfig;
use eventsource_relay_kafka::{
    topic_name, KafkaInbox, KafkaInboxOptions, KafkaPublisher, KafkaPublisherOptions, TopicSetup,
    CONTENT_TYPE, CONTENT_TYPE_HEADER,
};
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const WRITERS: usize = 8;
const STREAMS_PER_WRITER: usize = 25;
const EVENTS_PER_STREAM: usize = 100;
const RATE: u64 = 1_000;
const SECONDS: u64 = 10;
const APPENDERS: u64 = 10;
const ROUNDS: usize = 3;
const CATEGORY: &str = "bench";
/// The relay's default batch size.
const DEFAULT_BATCH: usize = 500;

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn suffix() -> String {
    format!("{:08x}", fastrand::u32(..))
}

fn relay_options(batch_size: usize) -> RelayOptions {
    RelayOptions {
        feed: FeedOptions::default()
            .with_batch_size(batch_size)
            .with_poll_interval(Duration::from_millis(100)),
        ..RelayOptions::default()
    }
}

/// The feed in the relay's batches, mapped as the relay maps it.
async fn batches(
    store: &PostgresStore,
    batch_size: usize,
) -> Result<Vec<Vec<OutgoingMessage>>, BoxError> {
    let mut follower = FeedFollower::new(
        store.clone(),
        FeedPosition::START,
        relay_options(batch_size).feed,
    );
    let mut batches = Vec::new();
    loop {
        let batch = follower.next().await?;
        let messages = batch
            .events
            .iter()
            .map(|event: &RecordedEvent| {
                let public = PublishAsIs
                    .map(event)?
                    .ok_or("PublishAsIs maps every event")?;
                Ok(OutgoingMessage::new(event, &public))
            })
            .collect::<Result<Vec<_>, BoxError>>()?;
        if !messages.is_empty() {
            batches.push(messages);
        }
        if batch.reached_head {
            return Ok(batches);
        }
    }
}

/// A batch in waves: a stream's n-th message in the n-th wave.
fn waves(batch: Vec<OutgoingMessage>) -> Vec<Vec<OutgoingMessage>> {
    let mut waves: Vec<Vec<OutgoingMessage>> = Vec::new();
    let mut next: HashMap<String, usize> = HashMap::new();
    for message in batch {
        let wave = next.entry(message.stream.clone()).or_insert(0);
        if waves.len() <= *wave {
            waves.push(Vec::new());
        }
        waves[*wave].push(message);
        *wave += 1;
    }
    waves
}

/// The raw loop: the same records, wave by wave, every delivery report awaited.
async fn raw_publish(waves: &[Vec<OutgoingMessage>], prefix: &str) -> Result<Duration, BoxError> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .create()?;
    let started = Instant::now();
    for wave in waves {
        let sends = wave.iter().map(|message| {
            let producer = &producer;
            async move {
                let topic = topic_name(prefix, &message.category);
                let mut headers = OwnedHeaders::new_with_capacity(14);
                for (name, value) in message.headers() {
                    headers = headers.insert(Header {
                        key: name,
                        value: Some(value.as_str()),
                    });
                }
                headers = headers.insert(Header {
                    key: CONTENT_TYPE_HEADER,
                    value: Some(CONTENT_TYPE),
                });
                let record = FutureRecord::to(&topic)
                    .key(message.stream.as_bytes())
                    .payload(message.payload.as_slice())
                    .headers(headers);
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map_err(|(e, _)| e)
            }
        });
        for result in futures::future::join_all(sends).await {
            result?;
        }
    }
    Ok(started.elapsed())
}

/// The relay from the start of the feed to `head`, to topics of their own; its duration.
async fn relay_run(
    store: &PostgresStore,
    name: &str,
    batch_size: usize,
    head: FeedPosition,
) -> Result<Duration, BoxError> {
    let mut publisher = KafkaPublisher::new(
        &brokers(),
        KafkaPublisherOptions::default().with_topic_prefix(format!("{name}{}.", suffix())),
    )?;
    publisher.ensure_topics(&[CATEGORY]).await?;
    let relay = Arc::new(
        Relay::new(store.clone(), name, publisher, PublishAsIs)
            .with_options(relay_options(batch_size)),
    );
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    relay.status().wait_for(|s| s.position >= head).await?;
    let elapsed = started.elapsed();
    shutdown.cancel();
    running.await??;
    Ok(elapsed)
}

fn median(mut durations: Vec<Duration>) -> Duration {
    durations.sort();
    durations[durations.len() / 2]
}

/// `ROUNDS` rounds of a relay run then a raw run of the same messages; the medians.
async fn throughput(batch_size: usize) -> Result<(), BoxError> {
    let db = TestDatabase::create().await?;
    let store = db.store().await?;
    let appended = write_concurrently(
        &store,
        CATEGORY,
        WRITERS,
        STREAMS_PER_WRITER,
        EVENTS_PER_STREAM,
    )
    .await?;
    let head = store.head_position().await?.ok_or("no events")?;
    let all_waves: Vec<Vec<OutgoingMessage>> = batches(&store, batch_size)
        .await?
        .into_iter()
        .flat_map(waves)
        .collect();
    let sent: usize = all_waves.iter().map(Vec::len).sum();
    assert_eq!(sent, appended);

    let (mut relay_times, mut raw_times) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        relay_times.push(relay_run(&store, &format!("relay{round}"), batch_size, head).await?);
        let raw_prefix = format!("raw{round}{}.", suffix());
        KafkaPublisher::new(
            &brokers(),
            KafkaPublisherOptions::default().with_topic_prefix(&raw_prefix),
        )?
        .ensure_topics(&[CATEGORY])
        .await?;
        raw_times.push(raw_publish(&all_waves, &raw_prefix).await?);
    }
    let rate = |time: Duration| appended as f64 / time.as_secs_f64();
    let ratios: Vec<String> = relay_times
        .iter()
        .zip(&raw_times)
        .map(|(relay, raw)| format!("{:.2}", rate(*relay) / rate(*raw)))
        .collect();
    let (relay_time, raw_time) = (median(relay_times), median(raw_times));
    println!(
        "throughput, batches of {batch_size}: {appended} events, {} streams, {} waves, median of {ROUNDS} rounds; relay {:.0} events/s ({relay_time:.2?}), raw rdkafka {:.0} events/s ({raw_time:.2?}), ratio {:.2} (goal >= 0.8; per round {})",
        WRITERS * STREAMS_PER_WRITER,
        all_waves.len(),
        rate(relay_time),
        rate(raw_time),
        rate(relay_time) / rate(raw_time),
        ratios.join(", ")
    );
    db.drop_database().await?;
    Ok(())
}

/// Records how long after its append each message reached the handler.
struct Latencies(Mutex<Vec<Duration>>);

#[async_trait]
impl InboxHandler for Latencies {
    type Error = BoxError;

    async fn handle(
        &self,
        _tx: &mut PgConnection,
        message: &IncomingMessage,
    ) -> Result<(), BoxError> {
        let latency = since(sent_nanos(&message.payload)?)?;
        self.0.lock().map_err(|_| "poisoned")?.push(latency);
        Ok(())
    }
}

/// The nanoseconds since the epoch the bench wrote in a body as `sent_nanos`.
fn sent_nanos(payload: &[u8]) -> Result<u64, BoxError> {
    let body: serde_json::Value = serde_json::from_slice(payload)?;
    body["sent_nanos"]
        .as_u64()
        .ok_or_else(|| "no sent_nanos".into())
}

fn since(sent: u64) -> Result<Duration, BoxError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    Ok(Duration::from_nanos(now.saturating_sub(sent)))
}

/// The relay's publisher, recording how long after its append each message was acknowledged.
struct Timed {
    inner: KafkaPublisher,
    acknowledged: Arc<Mutex<Vec<Duration>>>,
}

#[async_trait]
impl Publisher for Timed {
    fn destination(&self, message: &OutgoingMessage) -> String {
        self.inner.destination(message)
    }

    async fn publish(&mut self, messages: &[OutgoingMessage]) -> Vec<Result<(), PublishError>> {
        let results = self.inner.publish(messages).await;
        if let Ok(mut acknowledged) = self.acknowledged.lock() {
            for (message, result) in messages.iter().zip(&results) {
                if let (Ok(()), Ok(sent)) = (result, sent_nanos(&message.payload)) {
                    acknowledged.extend(since(sent).ok());
                }
            }
        }
        results
    }
}

/// p50, p99 and max of `latencies`.
fn percentiles(mut latencies: Vec<Duration>) -> String {
    if latencies.is_empty() {
        return "none".to_owned();
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    format!(
        "p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        at(0.50),
        at(0.99),
        latencies[latencies.len() - 1]
    )
}

async fn latency() -> Result<(), BoxError> {
    let db = TestDatabase::create().await?;
    let store = db.store().await?;
    let prefix = format!("lat{}.", suffix());
    let category = "tick";
    let topic = topic_name(&prefix, category);

    let publisher = KafkaPublisher::new(
        &brokers(),
        KafkaPublisherOptions::default().with_topic_prefix(&prefix),
    )?;
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let publisher = Timed {
        inner: publisher,
        acknowledged: acknowledged.clone(),
    };
    let relay = Arc::new(
        Relay::new(store.clone(), "latency", publisher, PublishAsIs)
            .with_options(relay_options(DEFAULT_BATCH)),
    );
    // The consuming service has its own pool: one connection per partition being handled.
    let inbox_store = PostgresStore::new(db.pool(16).await?);
    // Twelve partitions: the inbox handles them concurrently, each in order.
    let options = KafkaInboxOptions {
        topic_setup: TopicSetup {
            partitions: std::env::var("BENCH_PARTITIONS")
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(12),
            ..TopicSetup::default()
        },
        // tansu answers a fetch at the end of the log only when its wait expires, not when a
        // record arrives: the wait bounds the latency there (on Kafka, keep the default 500).
        ..KafkaInboxOptions::new([topic.clone()]).with_client_setting("fetch.wait.max.ms", "10")
    };
    let inbox = KafkaInbox::new(&brokers(), Inbox::new(inbox_store, "latency"), options)?;
    inbox.ensure_topics().await?;
    let handler = Arc::new(Latencies(Mutex::new(Vec::new())));
    let shutdown = CancellationToken::new();
    let relay_task = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    let mut inbox_status = inbox.status();
    let inbox_task = tokio::spawn({
        let (handler, shutdown) = (handler.clone(), shutdown.clone());
        async move { inbox.run(handler.as_ref(), shutdown).await }
    });
    // Let the consumer join its group before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let total = RATE * SECONDS;
    let mut appenders = Vec::new();
    for appender in 0..APPENDERS {
        let store = store.clone();
        appenders.push(tokio::spawn(async move {
            let per_task = total / APPENDERS;
            let mut tick =
                tokio::time::interval(Duration::from_nanos(1_000_000_000 * APPENDERS / RATE));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for n in 0..per_task {
                tick.tick().await;
                let stream = StreamId::new(category, format!("a{appender}s{}", n % 10))?;
                let sent = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
                let event = NewEvent::new(
                    "Ticked",
                    1,
                    serde_json::json!({ "sent_nanos": sent }),
                    EventMetadata::default(),
                );
                store
                    .append(&stream, ExpectedVersion::Any, vec![event])
                    .await?;
            }
            Ok::<(), BoxError>(())
        }));
    }
    let started = Instant::now();
    for appender in appenders {
        appender.await??;
    }
    let append_time = started.elapsed();
    let head = store.head_position().await?.ok_or("no events")?;
    relay.status().wait_for(|s| s.position >= head).await?;
    let relayed = started.elapsed();
    let handled_then = inbox_status.borrow().handled;
    if tokio::time::timeout(
        Duration::from_secs(60),
        inbox_status.wait_for(|s| s.handled >= total),
    )
    .await
    .is_err()
    {
        return Err(format!(
            "the inbox did not handle every event within 60 s: {:?}",
            *inbox_status.borrow()
        )
        .into());
    }
    let inboxed = started.elapsed();
    eprintln!("relay at head after {relayed:?}; inbox had handled {handled_then}; all handled after {inboxed:?}");
    shutdown.cancel();
    relay_task.await??;
    inbox_task.await??;

    let handled = handler.0.lock().map_err(|_| "poisoned")?.clone();
    let acknowledged = acknowledged.lock().map_err(|_| "poisoned")?.clone();
    println!(
        "latency: {} events appended at {RATE}/s in {append_time:.2?}; append to broker acknowledgement {}; append to inbox handler {} (goal p99 < 50 ms)",
        handled.len(),
        percentiles(acknowledged),
        percentiles(handled),
    );
    db.drop_database().await?;
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        if std::env::var("BENCH_SKIP_THROUGHPUT").is_err() {
            throughput(DEFAULT_BATCH).await?;
            throughput(4 * DEFAULT_BATCH).await?;
        }
        latency().await
    })
}
