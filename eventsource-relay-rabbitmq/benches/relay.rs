//! The RabbitMQ relay's throughput against a raw lapin loop, and the latency from an append to
//! the inbox handler of another service, in the same run.
//!
//! ```text
//! DATABASE_URL=postgres://... RABBITMQ_URL=amqp://... cargo bench -p eventsource-relay-rabbitmq --bench relay
//! ```
//!
//! - **relay**: [`Relay`] with [`RabbitMqPublisher`] from an empty checkpoint over 20,000
//!   events of 200 streams written by 8 writers (default relay options: batches of 500, waves
//!   of at most one message per stream), until its checkpoint is at the head;
//! - **raw**: the same 20,000 messages (read beforehand), with the same properties and headers,
//!   published by a plain lapin loop with the same settings (confirm mode, persistent,
//!   mandatory, the same exchange and queue) in the same windows as the relay's waves: each
//!   window's messages pipelined, then all their confirms awaited;
//! - **latency**: 1,000 events/s appended for 10 s by 4 tasks while a relay and a
//!   [`RabbitMqInbox`] run (default options); the handler records the time since just before
//!   each append, split at the moment the relay hands the message to the publisher.
//!
//! Knobs: `LATENCY_ONLY=1` runs the latency part alone; `WORKERS=n` sets the inbox's workers;
//! `POLL_MS=n` the relay's poll interval at the head.
//!
//! The ratio relay/raw, not the absolute rate, is what to compare across machines.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use eventsource_core::{
    BatchSize, BoxError, EventAppender, EventMetadata, ExpectedVersion, FeedFilter, FeedPosition,
    NewEvent, StreamId,
};
use eventsource_postgres::delivery_check::write_concurrently;
use eventsource_postgres::inbox::{Inbox, InboxHandler, IncomingMessage};
use eventsource_postgres::relay::{
    Mapping, OutgoingMessage, PublishAsIs, PublishError, Publisher, Relay, RelayOptions,
};
use eventsource_postgres::testing::TestDatabase;
use eventsource_postgres::{PgConnection, PostgresStore};
use eventsource_relay_rabbitmq::{
    InboxOptions, PublisherOptions, QueueTopology, RabbitMqInbox, RabbitMqPublisher,
};
use futures::future::join_all;
use futures::TryStreamExt;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

const WRITERS: usize = 8;
const STREAMS_PER_WRITER: usize = 25;
const EVENTS_PER_STREAM: usize = 100;
const EVENTS: usize = WRITERS * STREAMS_PER_WRITER * EVENTS_PER_STREAM;
/// The relay's default batch.
const BATCH: usize = 500;
/// Times each contender runs (the best counts).
const ROUNDS: usize = 3;
/// The latency run's append rate and length.
const RATE: u64 = 1_000;
const LATENCY_SECONDS: u64 = 10;
const APPENDERS: u64 = 4;

type BenchResult<T> = Result<T, BoxError>;

fn rabbitmq_url() -> String {
    std::env::var("RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", fastrand::u64(..))
}

#[tokio::main]
async fn main() -> BenchResult<()> {
    let url = rabbitmq_url();
    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;

    if std::env::var("LATENCY_ONLY").is_ok() {
        let latency = latency_run(&url).await?;
        println!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {} at {:.0}/s",
            latency.p50, latency.p99, latency.max, latency.count, latency.rate
        );
        return Ok(());
    }
    let db = TestDatabase::create().await?;
    let store = db.store().await?;
    eprintln!("seeding {EVENTS} events...");
    let appended = write_concurrently(
        &store,
        "bench",
        WRITERS,
        STREAMS_PER_WRITER,
        EVENTS_PER_STREAM,
    )
    .await?;
    assert_eq!(appended, EVENTS);
    let target = store.head_position().await?.ok_or("no events")?;

    let exchange = unique("bench");
    let queue = unique("bench");
    declare(&channel, &exchange, &queue).await?;
    let waves = relay_waves(&store).await?;
    eprintln!(
        "{} waves (mean {:.0} messages)",
        waves.len(),
        EVENTS as f64 / waves.len() as f64
    );

    let mut relay_best = f64::MAX;
    let mut raw_best = f64::MAX;
    for round in 0..ROUNDS {
        let relay = relay_run(&store, &url, &exchange, &format!("bench-{round}"), target).await?;
        check_queue(&channel, &queue, EVENTS).await?;
        let raw = raw_run(&connection, &exchange, &waves).await?;
        check_queue(&channel, &queue, EVENTS).await?;
        eprintln!(
            "round {round}: relay {relay:.2} s ({:.0}/s), raw {raw:.2} s ({:.0}/s)",
            EVENTS as f64 / relay,
            EVENTS as f64 / raw
        );
        relay_best = relay_best.min(relay);
        raw_best = raw_best.min(raw);
    }
    let relay_rate = EVENTS as f64 / relay_best;
    let raw_rate = EVENTS as f64 / raw_best;
    channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await?;
    channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await?;
    db.drop_database().await?;

    let latency = latency_run(&url).await?;

    println!(
        "RabbitMQ relay, {EVENTS} events of {} streams, best of {ROUNDS}:",
        WRITERS * STREAMS_PER_WRITER
    );
    println!("  relay (Relay + RabbitMqPublisher): {relay_rate:>8.0} events/s");
    println!("  raw lapin loop, same waves:        {raw_rate:>8.0} events/s");
    println!(
        "  ratio relay/raw:                   {:>8.2}",
        relay_rate / raw_rate
    );
    println!(
        "End-to-end latency, append -> relay -> RabbitMQ -> inbox handler, {} events at {:.0}/s for {LATENCY_SECONDS} s:",
        latency.count, latency.rate
    );
    println!(
        "  p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latency.p50, latency.p99, latency.max
    );
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

async fn declare(channel: &Channel, exchange: &str, queue: &str) -> BenchResult<()> {
    channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Checks that `queue` holds `expected` messages, then empties it.
async fn check_queue(channel: &Channel, queue: &str, expected: usize) -> BenchResult<()> {
    let purged = channel
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await?;
    if purged as usize != expected {
        return Err(format!("the queue held {purged} messages, not {expected}").into());
    }
    Ok(())
}

/// The seeded events as the relay publishes them, cut into the relay's waves: batches of
/// `BATCH` events, each split so that a wave holds at most one message per stream.
async fn relay_waves(store: &PostgresStore) -> BenchResult<Vec<Vec<OutgoingMessage>>> {
    let events: Vec<_> = eventsource_core::feed::read_feed(
        store,
        FeedPosition::START,
        BatchSize::events(BATCH),
        FeedFilter::all(),
    )
    .try_collect()
    .await?;
    let mut waves = Vec::new();
    for batch in events.chunks(BATCH) {
        let mut batch_waves: Vec<Vec<OutgoingMessage>> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for event in batch {
            let public = PublishAsIs
                .map(event)?
                .ok_or("PublishAsIs maps every event")?;
            let wave = seen.entry(event.stream_id.to_string()).or_insert(0);
            if batch_waves.len() <= *wave {
                batch_waves.push(Vec::new());
            }
            batch_waves[*wave].push(OutgoingMessage::new(event, &public));
            *wave += 1;
        }
        waves.extend(batch_waves);
    }
    Ok(waves)
}

/// Runs a relay named `name` from the start until its checkpoint is at `target`; seconds.
async fn relay_run(
    store: &PostgresStore,
    url: &str,
    exchange: &str,
    name: &str,
    target: FeedPosition,
) -> BenchResult<f64> {
    let publisher = RabbitMqPublisher::new(url, PublisherOptions::new(exchange))?;
    let relay = Relay::new(store.clone(), name, publisher, PublishAsIs);
    let shutdown = CancellationToken::new();
    let mut status = relay.status();
    let started = Instant::now();
    let (ran, waited) = tokio::join!(relay.run(shutdown.clone()), async {
        let reached = tokio::time::timeout(
            Duration::from_secs(300),
            status.wait_for(|s| s.position >= target),
        )
        .await
        .map(|_| started.elapsed());
        shutdown.cancel();
        reached
    });
    ran?;
    Ok(waited
        .map_err(|_| "the relay did not finish in 300 s")?
        .as_secs_f64())
}

/// Publishes `waves` with a plain lapin loop: confirm mode, persistent, mandatory; each wave
/// pipelined, then its confirms awaited. Seconds.
async fn raw_run(
    connection: &Connection,
    exchange: &str,
    waves: &[Vec<OutgoingMessage>],
) -> BenchResult<f64> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let started = Instant::now();
    for wave in waves {
        let confirms = join_all(wave.iter().map(|message| {
            let channel = &channel;
            async move {
                let mut headers = FieldTable::default();
                for (name, value) in message.headers() {
                    headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
                }
                let mut properties = BasicProperties::default()
                    .with_message_id(message.message_id.to_string().into())
                    .with_type(message.event_type.as_str().into())
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2)
                    .with_timestamp(message.recorded_at.timestamp() as u64)
                    .with_headers(headers);
                if let Some(id) = message.correlation_id {
                    properties = properties.with_correlation_id(id.to_string().into());
                }
                channel
                    .basic_publish(
                        exchange.into(),
                        message.routing_key().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            immediate: false,
                        },
                        &message.payload,
                        properties,
                    )
                    .await?
                    .await
            }
        }))
        .await;
        for confirm in confirms {
            match confirm? {
                Confirmation::Ack(None) => {}
                other => return Err(format!("not confirmed: {other:?}").into()),
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = channel.close(200, "done".into()).await;
    Ok(elapsed)
}

/// A publisher that notes when the relay handed each message over (µs since the epoch, by
/// message id), so the latency splits into append -> relay and relay -> handler.
struct Timed {
    inner: RabbitMqPublisher,
    handed: Arc<Mutex<HashMap<String, u64>>>,
}

#[async_trait]
impl Publisher for Timed {
    fn destination(&self, message: &OutgoingMessage) -> String {
        self.inner.destination(message)
    }

    async fn publish(&mut self, messages: &[OutgoingMessage]) -> Vec<Result<(), PublishError>> {
        let now = now_micros();
        if let Ok(mut handed) = self.handed.lock() {
            for message in messages {
                handed.entry(message.message_id.to_string()).or_insert(now);
            }
        }
        self.inner.publish(messages).await
    }
}

/// Records, per message, the milliseconds since the `at` (µs since the epoch) in its body.
#[derive(Default)]
struct Latencies(Mutex<Vec<(String, u64, u64)>>);

#[async_trait]
impl InboxHandler for Latencies {
    type Error = BoxError;

    async fn handle(&self, _tx: &mut PgConnection, message: &IncomingMessage) -> BenchResult<()> {
        let body: serde_json::Value = message.json()?;
        let at = body["at"].as_u64().ok_or("no `at` in the body")?;
        self.0
            .lock()
            .map_err(|_| "poisoned")?
            .push((message.message_id.clone(), at, now_micros()));
        Ok(())
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// p50, p99 and max of a sample, in ms.
struct Quantiles {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Quantiles {
    fn of(mut sample: Vec<f64>) -> BenchResult<Self> {
        if sample.is_empty() {
            return Err("no latencies recorded".into());
        }
        sample.sort_by(f64::total_cmp);
        let at = |q: f64| sample[((sample.len() as f64 * q) as usize).min(sample.len() - 1)];
        Ok(Self {
            p50: at(0.50),
            p99: at(0.99),
            max: sample[sample.len() - 1],
        })
    }
}

impl std::fmt::Display for Quantiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.p50, self.p99, self.max
        )
    }
}

struct Latency {
    count: usize,
    rate: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

/// Appends at `RATE` for `LATENCY_SECONDS` while a relay and an inbox run.
async fn latency_run(url: &str) -> BenchResult<Latency> {
    eprintln!("latency: {RATE} events/s for {LATENCY_SECONDS} s...");
    let db = TestDatabase::create().await?;
    let store = db.store().await?;
    let exchange = unique("latency");
    let queue = unique("latency");
    let topology = QueueTopology::new(&exchange, &queue).bind("lat.*");
    let mut inbox_options = InboxOptions::default();
    if let Some(workers) = std::env::var("WORKERS").ok().and_then(|v| v.parse().ok()) {
        inbox_options.workers = workers;
    }
    let consumer = Arc::new(
        RabbitMqInbox::new(url, Inbox::new(store.clone(), "latency"), topology)?
            .with_options(inbox_options),
    );
    consumer.declare().await?;
    let handed = Arc::new(Mutex::new(HashMap::new()));
    let mut options = RelayOptions::default();
    if let Some(ms) = std::env::var("POLL_MS").ok().and_then(|v| v.parse().ok()) {
        options.feed = options.feed.with_poll_interval(Duration::from_millis(ms));
    }
    let relay = Arc::new(
        Relay::new(
            store.clone(),
            "latency",
            Timed {
                inner: RabbitMqPublisher::new(url, PublisherOptions::new(&exchange))?,
                handed: handed.clone(),
            },
            PublishAsIs,
        )
        .with_options(options),
    );
    let handler = Arc::new(Latencies::default());
    let shutdown = CancellationToken::new();
    let relaying = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    let consuming = tokio::spawn({
        let (consumer, handler, shutdown) = (consumer.clone(), handler.clone(), shutdown.clone());
        async move { consumer.run(&*handler, shutdown).await }
    });

    let started = Instant::now();
    let appenders: Vec<_> = (0..APPENDERS)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                let period = Duration::from_micros(1_000_000 * APPENDERS / RATE);
                let mut ticks = tokio::time::interval(period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut appended = 0u64;
                while started.elapsed() < Duration::from_secs(LATENCY_SECONDS) {
                    ticks.tick().await;
                    let stream = StreamId::new("lat", format!("t{task}s{}", appended % 50))?;
                    let event = NewEvent::new(
                        "Measured",
                        1,
                        serde_json::json!({ "at": now_micros() }),
                        EventMetadata::default(),
                    );
                    store
                        .append(&stream, ExpectedVersion::Any, vec![event])
                        .await?;
                    appended += 1;
                }
                Ok::<u64, BoxError>(appended)
            })
        })
        .collect();
    let mut appended = 0;
    for appender in appenders {
        appended += appender.await??;
    }
    let rate = appended as f64 / started.elapsed().as_secs_f64();
    let mut status = consumer.status();
    tokio::time::timeout(
        Duration::from_secs(60),
        status.wait_for(|s| s.handled >= appended),
    )
    .await
    .map_err(|_| "the inbox did not handle every event within 60 s")??;
    shutdown.cancel();
    relaying.await??;
    consuming.await??;

    let records = handler.0.lock().map_err(|_| "poisoned")?.clone();
    let handed = handed.lock().map_err(|_| "poisoned")?.clone();
    let ms = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1000.0;
    let total: Vec<f64> = records.iter().map(|(_, at, done)| ms(*at, *done)).collect();
    let to_relay: Vec<f64> = records
        .iter()
        .filter_map(|(id, at, _)| handed.get(id).map(|h| ms(*at, *h)))
        .collect();
    let to_handler: Vec<f64> = records
        .iter()
        .filter_map(|(id, _, done)| handed.get(id).map(|h| ms(*h, *done)))
        .collect();
    let total = Quantiles::of(total)?;
    let to_relay = Quantiles::of(to_relay)?;
    let to_handler = Quantiles::of(to_handler)?;
    eprintln!("  append -> relay hands it to the publisher: {to_relay}");
    eprintln!("  publisher -> inbox handler:               {to_handler}");
    let latency = Latency {
        count: records.len(),
        rate,
        p50: total.p50,
        p99: total.p99,
        max: total.max,
    };
    let (connection, channel) = {
        let connection = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        (connection, channel)
    };
    for queue in [queue.clone(), format!("{queue}.dead-letter")] {
        channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await?;
    }
    for exchange in [exchange.clone(), format!("{queue}.dead-letter")] {
        channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await?;
    }
    let _ = connection.close(200, "done".into()).await;
    db.drop_database().await?;
    Ok(latency)
}
