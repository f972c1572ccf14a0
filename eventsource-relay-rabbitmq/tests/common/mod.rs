//! What the RabbitMQ tests share: the broker's URL, unique names, a raw consumer that drains a
//! queue, and waits with a deadline.
#![allow(dead_code)]

use std::time::Duration;

use eventsource_core::{FeedOptions, FeedPosition};
use eventsource_postgres::delivery_check::ReceivedMessage;
use eventsource_postgres::relay::{checkpoint_name, header, RelayOptions, RelayStatus};
use eventsource_postgres::PostgresStore;
use lapin::message::Delivery;
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::watch;

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// `RABBITMQ_URL`, else the local default.
pub fn rabbitmq_url() -> String {
    std::env::var("RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// `prefix` with a random suffix, so that parallel tests never share a name.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", fastrand::u64(..))
}

/// A raw connection and channel.
pub async fn raw_channel() -> (Connection, Channel) {
    let connection = Connection::connect(&rabbitmq_url(), ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ (run scripts/ensure-rabbitmq.sh, or set RABBITMQ_URL)");
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

/// Declares the durable topic `exchange` and a durable `queue` bound to it for `pattern`.
pub async fn declare_queue(channel: &Channel, exchange: &str, queue: &str, pattern: &str) {
    channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare the exchange");
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .expect("declare the queue");
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind the queue");
}

/// Deletes a queue (and, when named, an exchange) a test made.
pub async fn delete(channel: &Channel, queues: &[&str], exchanges: &[&str]) {
    for queue in queues {
        let _ = channel
            .queue_delete((*queue).into(), Default::default())
            .await;
    }
    for exchange in exchanges {
        let _ = channel
            .exchange_delete((*exchange).into(), Default::default())
            .await;
    }
}

/// Ready messages in `queue`.
pub async fn ready_messages(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("find the queue")
        .message_count()
}

/// A text header of a delivery.
pub fn header_of(delivery: &Delivery, name: &str) -> Option<String> {
    let value = delivery.properties.headers().as_ref()?.inner().get(name)?;
    match value {
        lapin::types::AMQPValue::LongString(s) => {
            Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        lapin::types::AMQPValue::ShortString(s) => Some(s.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// A message as the raw consumer received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// What `check_delivery` reads.
    pub message: ReceivedMessage,
    /// The header `feed-position`.
    pub position: FeedPosition,
}

/// Takes every message in `queue` (acknowledging each), in queue order, until it is empty.
/// Checks on the way that the AMQP properties agree with the envelope headers.
pub async fn drain(channel: &Channel, queue: &str) -> Vec<Received> {
    let mut received = Vec::new();
    loop {
        let got = tokio::time::timeout(
            DEADLINE,
            channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("basic.get answered in time")
        .expect("basic.get");
        let Some(got) = got else {
            return received;
        };
        let delivery = got.delivery;
        let header = |name| {
            header_of(&delivery, name).unwrap_or_else(|| panic!("header {name} in {delivery:?}"))
        };
        let message_id = header(header::MESSAGE_ID);
        let properties = &delivery.properties;
        assert_eq!(
            properties.message_id().as_ref().map(|id| id.to_string()),
            Some(message_id.clone()),
            "message_id property = header"
        );
        assert_eq!(properties.delivery_mode(), &Some(2), "persistent");
        assert_eq!(
            properties.content_type().as_ref().map(|t| t.to_string()),
            Some("application/json".to_owned())
        );
        assert_eq!(
            properties.kind().as_ref().map(|t| t.to_string()),
            Some(header(header::EVENT_TYPE))
        );
        assert_eq!(
            properties.correlation_id().as_ref().map(|t| t.to_string()),
            header_of(&delivery, header::CORRELATION_ID)
        );
        assert!(properties.timestamp().is_some(), "timestamp");
        assert_eq!(
            delivery.routing_key.to_string(),
            format!(
                "{}.{}",
                header(header::CATEGORY),
                header(header::EVENT_TYPE)
            )
        );
        serde_json::from_slice::<serde_json::Value>(&delivery.data).expect("a JSON body");
        received.push(Received {
            message: ReceivedMessage {
                message_id,
                stream: header(header::STREAM),
                version: header(header::STREAM_VERSION)
                    .parse()
                    .expect("stream-version is a number"),
            },
            position: header(header::FEED_POSITION)
                .parse()
                .expect("feed-position is a position"),
        });
    }
}

/// Relay options for tests: small batches, quick polls and retries.
pub fn relay_options(batch: usize) -> RelayOptions {
    RelayOptions {
        feed: FeedOptions::default()
            .with_batch_size(batch)
            .with_poll_interval(Duration::from_millis(50)),
        standby_retry: Duration::from_millis(100),
        retry_backoff: Duration::from_millis(50),
        max_retry_backoff: Duration::from_millis(500),
        ..RelayOptions::default()
    }
}

/// The store's last event's position.
pub async fn head(store: &PostgresStore) -> FeedPosition {
    store.head_position().await.expect("head").expect("events")
}

/// Waits until the relay's status satisfies `done`.
pub async fn wait_for(
    status: &mut watch::Receiver<RelayStatus>,
    done: impl FnMut(&RelayStatus) -> bool,
) {
    tokio::time::timeout(DEADLINE, status.wait_for(done))
        .await
        .expect("the relay got there in time")
        .expect("the relay is alive");
}

/// The relay's checkpoint as stored, if any.
pub async fn stored_checkpoint(store: &PostgresStore, relay: &str) -> Option<FeedPosition> {
    let row: Option<String> = eventsource_postgres::sqlx::query_scalar(
        "SELECT transaction_id::text || '/' || position FROM eventsource.checkpoints WHERE name = $1",
    )
    .bind(checkpoint_name(relay))
    .fetch_optional(store.pool())
    .await
    .expect("read the checkpoint");
    row.map(|p| p.parse().expect("a position"))
}

/// `received` as `check_delivery` reads it.
pub fn messages(received: &[Received]) -> Vec<ReceivedMessage> {
    received.iter().map(|r| r.message.clone()).collect()
}
