//! Test support shared by this crate's tests: unique names, a raw JetStream reader that records
//! what reached a stream, waits with a deadline, and relays run in the test.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsource_core::FeedPosition;
use eventsource_postgres::delivery_check::ReceivedMessage;
use eventsource_postgres::relay::{
    checkpoint_name, header, PublishAsIs, Relay, RelayError, RelayOptions, RelayStatus,
};
use eventsource_postgres::PostgresStore;
use eventsource_relay_nats::async_nats::jetstream;
use eventsource_relay_nats::async_nats::jetstream::consumer::{pull, DeliverPolicy};
use eventsource_relay_nats::{ensure_stream, NatsPublisher, NatsPublisherOptions, StreamSetup};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The broker's URL: `NATS_URL` (set by scripts/ensure-nats.sh), else the local default.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A test's own names, with a random suffix: the subject prefix, the relay's stream, the
/// consumer, the dead-letter prefix and stream.
#[derive(Debug, Clone)]
pub struct Names {
    pub prefix: String,
    pub stream: String,
    pub consumer: String,
    pub dead_letter_prefix: String,
    pub dead_letter_stream: String,
}

impl Names {
    pub fn new(test: &str) -> Self {
        let suffix = format!("{test}{:08x}", fastrand::u32(..));
        Self {
            prefix: format!("t{suffix}"),
            stream: format!("T_{suffix}"),
            consumer: format!("c_{suffix}"),
            dead_letter_prefix: format!("dlq{suffix}"),
            dead_letter_stream: format!("DLQ_{suffix}"),
        }
    }

    /// The relay's stream: `<prefix>.>`, kept an hour at most (tests that fail leave it).
    pub fn stream_setup(&self) -> StreamSetup {
        StreamSetup::for_prefix(&self.stream, &self.prefix).with_max_age(Duration::from_secs(3600))
    }

    pub fn publisher_options(&self) -> NatsPublisherOptions {
        NatsPublisherOptions {
            subject_prefix: self.prefix.clone(),
            ..NatsPublisherOptions::default()
        }
    }

    pub fn publisher(&self) -> NatsPublisher {
        NatsPublisher::new(nats_url(), self.publisher_options()).expect("publisher options")
    }
}

/// A JetStream context on a connection of its own.
pub async fn jetstream() -> jetstream::Context {
    let client = eventsource_relay_nats::async_nats::connect(nats_url())
        .await
        .expect("connect to NATS (is it running? scripts/ensure-nats.sh starts it)");
    jetstream::new(client)
}

/// Declares the relay's stream of `names`.
pub async fn create_stream(js: &jetstream::Context, setup: &StreamSetup) {
    ensure_stream(js, setup).await.expect("declare the stream");
}

/// Deletes the streams of `names` (the relay's and the dead-letter one), when they exist.
pub async fn delete_streams(js: &jetstream::Context, names: &Names) {
    let _ = js.delete_stream(&names.stream).await;
    let _ = js.delete_stream(&names.dead_letter_stream).await;
}

/// A message as the raw reader saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub received: ReceivedMessage,
    pub position: FeedPosition,
    pub subject: String,
    pub stream_sequence: u64,
    pub headers: HashMap<String, String>,
}

/// Records every message of a stream, in stream order, with an ordered consumer of its own
/// (not the inbox): what a consumer of the relay's stream receives.
#[derive(Clone, Default)]
pub struct Reader {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Reader {
    /// Starts reading `stream` from its first message, until `stop`. After a broker outage
    /// (the ordered consumer is ephemeral: a restarted server forgets it), it reads on from the
    /// sequence after the last one it saw.
    pub async fn start(stream: &str, stop: CancellationToken) -> Self {
        let reader = Reader::default();
        let js = jetstream().await;
        let seen = reader.seen.clone();
        let stream = stream.to_owned();
        tokio::spawn(async move {
            let mut next_sequence = 1;
            loop {
                let opened = async {
                    let stream = js.get_stream(&stream).await.map_err(|e| e.to_string())?;
                    let consumer = stream
                        .create_consumer(pull::OrderedConfig {
                            deliver_policy: DeliverPolicy::ByStartSequence {
                                start_sequence: next_sequence,
                            },
                            ..pull::OrderedConfig::default()
                        })
                        .await
                        .map_err(|e| e.to_string())?;
                    consumer.messages().await.map_err(|e| e.to_string())
                };
                let mut messages = tokio::select! {
                    () = stop.cancelled() => return,
                    opened = opened => match opened {
                        Ok(messages) => messages,
                        Err(error) => {
                            eprintln!("reader: {error}; retrying");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                loop {
                    let next = tokio::select! {
                        () = stop.cancelled() => return,
                        next = messages.next() => next,
                    };
                    match next {
                        Some(Ok(message)) => {
                            let record = seen_message(&message);
                            next_sequence = record.stream_sequence + 1;
                            seen.lock().unwrap().push(record);
                        }
                        Some(Err(error)) => {
                            eprintln!("reader: {error}; reading on from sequence {next_sequence}");
                            break;
                        }
                        None => break,
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        reader
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn received(&self) -> Vec<ReceivedMessage> {
        self.seen().into_iter().map(|s| s.received).collect()
    }

    /// Distinct message ids seen.
    pub fn distinct(&self) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .map(|s| s.received.message_id.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    /// Waits until `count` distinct messages were seen.
    pub async fn wait_for(&self, count: usize) {
        eventually(
            &format!("{count} distinct messages in the stream"),
            || async { self.distinct() >= count },
        )
        .await;
    }
}

fn header_value<'a>(headers: &'a HashMap<String, String>, name: &str) -> &'a str {
    headers
        .get(name)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("header {name} missing in {headers:?}"))
}

pub fn seen_message(message: &jetstream::Message) -> Seen {
    let headers: HashMap<String, String> = message
        .headers
        .as_ref()
        .map(|map| {
            map.iter()
                .filter_map(|(name, values)| {
                    Some((name.to_string(), values.last()?.as_str().to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    let received = ReceivedMessage {
        message_id: header_value(&headers, header::MESSAGE_ID).to_owned(),
        stream: header_value(&headers, header::STREAM).to_owned(),
        version: header_value(&headers, header::STREAM_VERSION)
            .parse()
            .expect("stream-version is a number"),
    };
    let position = header_value(&headers, header::FEED_POSITION)
        .parse()
        .expect("feed-position is a position");
    Seen {
        received,
        position,
        subject: message.subject.to_string(),
        stream_sequence: message.info().expect("a JetStream message").stream_sequence,
        headers,
    }
}

/// Waits until `check` holds, failing the test after [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Relay options for tests: quick standby and retries.
pub fn relay_options() -> RelayOptions {
    RelayOptions {
        standby_retry: Duration::from_millis(100),
        max_retry_backoff: Duration::from_millis(500),
        ..RelayOptions::default()
    }
}

/// A relay running in the test, until `shutdown`.
pub struct RunningRelay {
    pub shutdown: CancellationToken,
    pub status: watch::Receiver<RelayStatus>,
    pub task: JoinHandle<Result<(), RelayError>>,
}

impl RunningRelay {
    pub fn start(
        store: &PostgresStore,
        name: &str,
        publisher: NatsPublisher,
        options: RelayOptions,
    ) -> Self {
        let relay = Relay::new(store.clone(), name, publisher, PublishAsIs).with_options(options);
        let status = relay.status();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { relay.run(shutdown).await }
        });
        Self {
            shutdown,
            status,
            task,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("the relay task")
            .expect("the relay ends without error");
    }
}

/// The relay's checkpoint as stored (`None` before its first batch).
pub async fn stored_checkpoint(store: &PostgresStore, relay: &str) -> Option<FeedPosition> {
    let row: Option<(String, i64)> = sqlx::query_as(
        "SELECT transaction_id::text, position FROM eventsource.checkpoints WHERE name = $1",
    )
    .bind(checkpoint_name(relay))
    .fetch_optional(store.pool())
    .await
    .expect("read the checkpoint");
    row.map(|(transaction, position)| {
        FeedPosition::new(
            transaction.parse().expect("a transaction id"),
            position as u64,
        )
    })
}
