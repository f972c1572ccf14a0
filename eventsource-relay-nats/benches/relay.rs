//! Relay benchmarks against the real NATS server and PostgreSQL, run on demand:
//! `cargo bench -p eventsource-relay-nats --bench relay`.
//!
//! 1. Throughput: the relay publishes a backlog of 20,000 events (200 streams) to JetStream,
//!    against a raw async-nats loop publishing the same messages (same subjects, headers and
//!    body, PubAck awaited with the same timeout) in the same waves: the feed read in batches
//!    of the relay's batch size, each batch split into waves of one message per stream, every
//!    wave sent whole before its acknowledgements are awaited. Reported: events/s of each and
//!    the ratio (goal ≥ 0.8).
//! 2. Latency: events appended at 1,000/s for 10 s while the relay and a `NatsInbox` run; the
//!    time from just before the append to the inbox handler, p50/p99 (goal p99 < 50 ms), and
//!    to the message's arrival in JetStream (the relay's share).
//!
//! `BENCH_ONLY=latency` runs the second part only.

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
use eventsource_postgres::relay::{Mapping, OutgoingMessage, PublishAsIs, Relay, RelayOptions};
use eventsource_postgres::testing::TestDatabase;
use eventsource_postgres::{PgConnection, PostgresStore};
use eventsource_relay_nats::async_nats::jetstream::{self, message::PublishMessage};
use eventsource_relay_nats::async_nats::{self, HeaderMap, HeaderValue};
use eventsource_relay_nats::{
    ensure_stream, NatsInbox, NatsInboxOptions, NatsPublisher, NatsPublisherOptions, StreamSetup,
};
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const WRITERS: usize = 8;
const STREAMS_PER_WRITER: usize = 25;
const EVENTS_PER_STREAM: usize = 100;
const ROUNDS: usize = 3;
const LATENCY_RATE: u64 = 1_000;
const LATENCY_SECONDS: u64 = 10;
const APPENDERS: u64 = 10;

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn suffix() -> String {
    format!("{:08x}", fastrand::u32(..))
}

/// A retained stream for one run, kept ten minutes at most.
async fn stream_for(js: &jetstream::Context, name: &str, prefix: &str) -> Result<(), BoxError> {
    let setup = StreamSetup::for_prefix(name, prefix).with_max_age(Duration::from_secs(600));
    ensure_stream(js, &setup).await?;
    Ok(())
}

/// Every event of the store, in feed order.
async fn all_events(store: &PostgresStore) -> Result<Vec<RecordedEvent>, BoxError> {
    let mut follower =
        FeedFollower::catch_up(store.clone(), FeedPosition::START, FeedOptions::default());
    let mut events = Vec::new();
    loop {
        let batch = follower.next().await?;
        events.extend(batch.events);
        if batch.reached_head {
            return Ok(events);
        }
    }
}

/// The relay's waves: batches of `batch` events in feed order, each split so that a wave holds
/// one message per stream.
fn waves(messages: &[OutgoingMessage], batch: usize) -> Vec<Vec<&OutgoingMessage>> {
    let mut waves = Vec::new();
    for chunk in messages.chunks(batch) {
        let mut of_batch: Vec<Vec<&OutgoingMessage>> = Vec::new();
        let mut next: HashMap<&str, usize> = HashMap::new();
        for message in chunk {
            let wave = next.entry(message.stream.as_str()).or_insert(0);
            if of_batch.len() <= *wave {
                of_batch.push(Vec::new());
            }
            of_batch[*wave].push(message);
            *wave += 1;
        }
        waves.extend(of_batch);
    }
    waves
}

/// The raw loop: the same messages a `NatsPublisher` sends, wave by wave, all PubAcks awaited.
async fn raw_publish(
    waves: &[Vec<&OutgoingMessage>],
    prefix: &str,
    ack_timeout: Duration,
) -> Result<Duration, BoxError> {
    let client = async_nats::connect(nats_url()).await?;
    let js = jetstream::ContextBuilder::new()
        .timeout(ack_timeout)
        .build(client);
    let start = Instant::now();
    for wave in waves {
        let mut acks = Vec::with_capacity(wave.len());
        for message in wave {
            let mut headers = HeaderMap::new();
            headers.insert("Content-Type", "application/json");
            for (name, value) in message.headers() {
                headers.insert(name, value.parse::<HeaderValue>()?);
            }
            let publish = PublishMessage::build()
                .payload(message.payload.clone().into())
                .headers(headers)
                .message_id(message.message_id.to_string());
            let subject = format!("{prefix}.{}", message.routing_key());
            acks.push(js.send_publish(subject, publish).await?);
        }
        for result in
            futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future))
                .await
        {
            result?;
        }
    }
    Ok(start.elapsed())
}

/// The relay from the start of the feed until its checkpoint reaches `head`.
async fn relay_publish(
    store: &PostgresStore,
    name: &str,
    prefix: &str,
    head: FeedPosition,
) -> Result<Duration, BoxError> {
    let publisher = NatsPublisher::new(
        nats_url(),
        NatsPublisherOptions {
            subject_prefix: prefix.to_owned(),
            ..NatsPublisherOptions::default()
        },
    )?;
    let relay = Relay::new(store.clone(), name, publisher, PublishAsIs);
    let mut status = relay.status();
    let shutdown = CancellationToken::new();
    let start = Instant::now();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown).await }
    });
    tokio::time::timeout(
        Duration::from_secs(300),
        status.wait_for(|s| s.position >= head),
    )
    .await??;
    let elapsed = start.elapsed();
    shutdown.cancel();
    task.await??;
    Ok(elapsed)
}

async fn throughput() -> Result<(), BoxError> {
    let db = TestDatabase::create().await?;
    let store = db.store().await?;
    let appended = write_concurrently(
        &store,
        "bench",
        WRITERS,
        STREAMS_PER_WRITER,
        EVENTS_PER_STREAM,
    )
    .await?;
    let events = all_events(&store).await?;
    assert_eq!(events.len(), appended);
    let head = events
        .last()
        .map(|e| e.position)
        .unwrap_or(FeedPosition::START);
    let messages: Vec<OutgoingMessage> = events
        .iter()
        .filter_map(|event| {
            let public = PublishAsIs.map(event).ok()??;
            Some(OutgoingMessage::new(event, &public))
        })
        .collect();
    let options = RelayOptions::default();
    let waves = waves(&messages, options.feed.batch_size);
    let ack_timeout = NatsPublisherOptions::default().ack_timeout;
    println!(
        "throughput: {} events, {} streams, {} waves (batch {}, mean wave {:.0} messages)",
        messages.len(),
        WRITERS * STREAMS_PER_WRITER,
        waves.len(),
        options.feed.batch_size,
        messages.len() as f64 / waves.len() as f64
    );

    let client = async_nats::connect(nats_url()).await?;
    let js = jetstream::new(client);
    let mut raw_rates = Vec::new();
    let mut relay_rates = Vec::new();
    for round in 0..ROUNDS {
        let id = suffix();
        let (raw_stream, raw_prefix) = (format!("BENCH_RAW_{id}"), format!("bench{id}raw"));
        stream_for(&js, &raw_stream, &raw_prefix).await?;
        let (relay_stream, relay_prefix) = (format!("BENCH_RELAY_{id}"), format!("bench{id}relay"));
        stream_for(&js, &relay_stream, &relay_prefix).await?;
        // Alternate which goes first, so that neither always meets a warmer server.
        let relay_name = format!("bench{round}");
        let (raw, relay) = if round % 2 == 0 {
            let raw = raw_publish(&waves, &raw_prefix, ack_timeout).await?;
            (
                raw,
                relay_publish(&store, &relay_name, &relay_prefix, head).await?,
            )
        } else {
            let relay = relay_publish(&store, &relay_name, &relay_prefix, head).await?;
            (raw_publish(&waves, &raw_prefix, ack_timeout).await?, relay)
        };
        let raw_rate = messages.len() as f64 / raw.as_secs_f64();
        raw_rates.push(raw_rate);
        let relay_rate = messages.len() as f64 / relay.as_secs_f64();
        relay_rates.push(relay_rate);
        let published = js
            .get_stream(&relay_stream)
            .await?
            .info()
            .await?
            .state
            .messages;
        assert_eq!(
            published as usize,
            messages.len(),
            "the relay published every event"
        );
        println!(
            "  round {}: raw loop {:>8.0} events/s ({:.2} s), relay {:>8.0} events/s ({:.2} s), ratio {:.2}",
            round + 1,
            raw_rate,
            raw.as_secs_f64(),
            relay_rate,
            relay.as_secs_f64(),
            relay_rate / raw_rate
        );
        js.delete_stream(&raw_stream).await?;
        js.delete_stream(&relay_stream).await?;
    }
    let mean = |rates: &[f64]| rates.iter().sum::<f64>() / rates.len() as f64;
    println!(
        "throughput: raw loop {:.0} events/s, relay {:.0} events/s (means of {ROUNDS}); relay/raw = {:.2} (goal >= 0.8)",
        mean(&raw_rates),
        mean(&relay_rates),
        mean(&relay_rates) / mean(&raw_rates)
    );
    db.drop_database().await?;
    Ok(())
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Records, per message, the time since its append started (the body's `sent_us`).
#[derive(Clone, Default)]
struct Latencies(Arc<Mutex<Vec<u64>>>);

#[async_trait]
impl InboxHandler for Latencies {
    type Error = BoxError;

    async fn handle(
        &self,
        _tx: &mut PgConnection,
        message: &IncomingMessage,
    ) -> Result<(), BoxError> {
        let body: serde_json::Value = message.json()?;
        let sent = body["sent_us"].as_u64().ok_or("no sent_us in the body")?;
        let latency = now_micros().saturating_sub(sent);
        self.0.lock().map_err(|_| "poisoned")?.push(latency);
        Ok(())
    }
}

async fn latency() -> Result<(), BoxError> {
    let db = TestDatabase::create().await?;
    let store = db.store().await?;
    let id = suffix();
    let (stream, prefix) = (format!("BENCH_LAT_{id}"), format!("bench{id}lat"));
    let client = async_nats::connect(nats_url()).await?;
    let js = jetstream::new(client);
    stream_for(&js, &stream, &prefix).await?;

    let shutdown = CancellationToken::new();
    let publisher = NatsPublisher::new(
        nats_url(),
        NatsPublisherOptions {
            subject_prefix: prefix.clone(),
            ..NatsPublisherOptions::default()
        },
    )?;
    let relay = Relay::new(store.clone(), "latency", publisher, PublishAsIs);
    let relay_task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown).await }
    });
    let consumer = format!("bench_{id}");
    let inbox = NatsInbox::new(
        nats_url(),
        // The consuming service's own pool, as it would have in production.
        Inbox::new(PostgresStore::new(db.pool(20).await?), &consumer),
        NatsInboxOptions::new(&stream, &consumer)
            .with_dead_letters(format!("bench{id}dlq"), format!("BENCH_DLQ_{id}")),
    )?;
    inbox.ensure_topology().await?;
    let latencies = Latencies::default();
    let inbox_task = tokio::spawn({
        let shutdown = shutdown.clone();
        let handler = latencies.clone();
        async move { inbox.run(&handler, shutdown).await }
    });

    // A raw reader of the stream: when each message reached JetStream.
    let arrivals = Latencies::default();
    let reader = {
        let stream = js.get_stream(&stream).await?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
            .await?;
        let mut messages = consumer.messages().await?;
        let arrivals = arrivals.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    () = shutdown.cancelled() => return,
                    next = futures::StreamExt::next(&mut messages) => next,
                };
                let Some(Ok(message)) = next else { return };
                let sent = serde_json::from_slice::<serde_json::Value>(&message.payload)
                    .ok()
                    .and_then(|body| body["sent_us"].as_u64());
                if let (Some(sent), Ok(mut arrivals)) = (sent, arrivals.0.lock()) {
                    arrivals.push(now_micros().saturating_sub(sent));
                }
            }
        })
    };

    // APPENDERS tasks, each appending at LATENCY_RATE / APPENDERS per second to 10 streams.
    let total = LATENCY_RATE * LATENCY_SECONDS;
    let per_task = total / APPENDERS;
    let period = Duration::from_micros(1_000_000 * APPENDERS / LATENCY_RATE);
    let start = Instant::now();
    let mut appenders = Vec::new();
    for task in 0..APPENDERS {
        let store = store.clone();
        appenders.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for n in 0..per_task {
                ticks.tick().await;
                let stream = StreamId::new("latency", format!("t{task}s{}", n % 10))?;
                let event = NewEvent::new(
                    "Measured",
                    1,
                    serde_json::json!({ "sent_us": now_micros() }),
                    EventMetadata::default(),
                );
                store
                    .append(&stream, ExpectedVersion::Any, vec![event])
                    .await?;
            }
            Ok::<(), BoxError>(())
        }));
    }
    for appender in appenders {
        appender.await??;
    }
    let appending = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    while latencies.0.lock().map_err(|_| "poisoned")?.len() < total as usize {
        if Instant::now() > deadline {
            return Err("the inbox did not receive every event within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    relay_task.await??;
    inbox_task.await??;
    reader.await?;

    println!(
        "latency: {total} events appended at {:.0}/s over {:.1} s",
        total as f64 / appending.as_secs_f64(),
        appending.as_secs_f64(),
    );
    for (what, samples, goal) in [
        ("append -> JetStream (relay)", &arrivals, ""),
        ("append -> inbox handler", &latencies, " (goal p99 < 50 ms)"),
    ] {
        let mut samples = samples.0.lock().map_err(|_| "poisoned")?.clone();
        if samples.is_empty() {
            println!("  {what}: no samples");
            continue;
        }
        samples.sort_unstable();
        let at =
            |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        println!(
            "  {what}: {} samples, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{goal}",
            samples.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
    js.delete_stream(&stream).await?;
    js.delete_stream(format!("BENCH_DLQ_{id}")).await?;
    db.drop_database().await?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<(), BoxError> {
    // `cargo test --benches` runs bench targets with `--bench`; only `cargo bench` runs them.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    if std::env::var("BENCH_ONLY").as_deref() != Ok("latency") {
        throughput().await?;
    }
    latency().await?;
    Ok(())
}
