//! The inbox loop against the real broker: a redelivery after a crash between the inbox's
//! commit and the offset commit is recognised without running the handler, and a message the
//! handler cannot handle ends in the dead-letter topic with the error while the others are
//! handled.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use eventsource_postgres::inbox::{
    failure_header, Disposition, Inbox, InboxHandler, InboxRetry, IncomingMessage,
};
use eventsource_postgres::relay::header;
use eventsource_postgres::{PgConnection, PostgresStore};
use eventsource_relay_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use eventsource_relay_kafka::rdkafka::message::{Header, OwnedHeaders};
use eventsource_relay_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use eventsource_relay_kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use eventsource_relay_kafka::{
    incoming_message, KafkaInbox, KafkaInboxOptions, KafkaInboxStatus, TopicSetup, SOURCE_HEADER,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Records each message id in the table `handled`, in the inbox's transaction; fails for good
/// on messages of type `Poison`.
#[derive(Default)]
struct Recorder {
    calls: AtomicU32,
}

#[async_trait]
impl InboxHandler for Recorder {
    type Error = Box<dyn std::error::Error + Send + Sync>;

    async fn handle(
        &self,
        tx: &mut PgConnection,
        message: &IncomingMessage,
    ) -> Result<(), Self::Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if message.event_type() == Some("Poison") {
            return Err(format!("cannot ship {}: no address", message.message_id).into());
        }
        sqlx::query("INSERT INTO handled (message_id) VALUES ($1)")
            .bind(&message.message_id)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

async fn handled_rows(store: &PostgresStore) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM handled")
        .fetch_one(store.pool())
        .await
        .expect("count")
}

async fn create_table(store: &PostgresStore) {
    sqlx::query("CREATE TABLE handled (message_id text PRIMARY KEY)")
        .execute(store.pool())
        .await
        .expect("create table");
}

/// Produces messages of `types` to `topic`, each with a fresh message id; returns the ids.
async fn produce(topic: &str, types: &[&str]) -> Vec<String> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .expect("producer");
    let mut ids = Vec::new();
    for (n, event_type) in types.iter().enumerate() {
        let id = uuid::Uuid::now_v7().to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: header::MESSAGE_ID,
                value: Some(id.as_str()),
            })
            .insert(Header {
                key: header::EVENT_TYPE,
                value: Some(*event_type),
            })
            .insert(Header {
                key: header::STREAM,
                value: Some("order-1"),
            });
        let payload = format!(r#"{{"n":{n}}}"#);
        producer
            .send(
                FutureRecord::to(topic)
                    .key("order-1")
                    .payload(&payload)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .expect("delivered");
        ids.push(id);
    }
    ids
}

fn options(topic: &str, group: &str) -> KafkaInboxOptions {
    KafkaInboxOptions {
        retry_backoff: Duration::from_millis(20),
        max_retry_backoff: Duration::from_millis(200),
        topic_setup: TopicSetup {
            partitions: 1,
            ..TopicSetup::default()
        },
        ..KafkaInboxOptions::new([topic]).with_group_id(group)
    }
}

async fn wait_for_inbox(
    status: &mut watch::Receiver<KafkaInboxStatus>,
    done: impl FnMut(&KafkaInboxStatus) -> bool,
) -> KafkaInboxStatus {
    tokio::time::timeout(DEADLINE, status.wait_for(done))
        .await
        .expect("the inbox got there in time")
        .expect("the inbox is alive")
        .clone()
}

/// What the group still has to read in `topic`: high watermark minus committed offset, summed
/// over the partitions. (tansu's high watermark is exact only when the last batch holds one
/// record: `produce` sends one record at a time.)
async fn left_for_group(topic: &str, group: &str) -> i64 {
    let (topic, group) = (topic.to_owned(), group.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .expect("metadata");
        let partitions = metadata.topics()[0].partitions().len() as i32;
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition(&topic, p);
        }
        let committed = consumer
            .committed_offsets(list, Duration::from_secs(10))
            .expect("committed offsets");
        let mut left = 0;
        for p in 0..partitions {
            let (_, high) = consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
                .expect("watermarks");
            let done = match committed.find_partition(&topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            };
            left += high - done;
        }
        left
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_redelivered_after_the_inbox_committed_is_not_handled_again() {
    require_broker().await;
    let (db, store) = fresh().await;
    create_table(&store).await;
    let topic = unique("inbox-redeliver");
    let group = unique("shipping");
    let inbox = Inbox::new(store.clone(), "shipping");
    let kafka = KafkaInbox::new(&brokers(), inbox.clone(), options(&topic, &group)).expect("inbox");
    kafka.ensure_topics().await.expect("topics");
    let ids = produce(&topic, &["Shipped", "Shipped", "Shipped"]).await;
    let handler = Arc::new(Recorder::default());

    // A consumer of the group receives the first message, the inbox commits it in PostgreSQL,
    // and the consumer goes away before committing the offset.
    {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        consumer.subscribe(&[&topic]).expect("subscribe");
        let message = tokio::time::timeout(DEADLINE, consumer.recv())
            .await
            .expect("a message in time")
            .expect("a message");
        let incoming = incoming_message(&message);
        assert_eq!(incoming.message_id, ids[0]);
        let disposition = inbox
            .receive(handler.as_ref(), &incoming)
            .await
            .expect("received");
        assert!(
            matches!(disposition, Disposition::Handled),
            "{disposition:?}"
        );
        drop(message);
        tokio::task::spawn_blocking(move || drop(consumer))
            .await
            .expect("closed");
    }
    assert_eq!(
        left_for_group(&topic, &group).await,
        3,
        "nothing was committed to Kafka"
    );

    let shutdown = CancellationToken::new();
    let mut status = kafka.status();
    let running = tokio::spawn({
        let (handler, shutdown) = (handler.clone(), shutdown.clone());
        async move { kafka.run(handler.as_ref(), shutdown).await }
    });
    let status = wait_for_inbox(&mut status, |s| s.handled + s.duplicates >= 3).await;
    shutdown.cancel();
    running.await.expect("join").expect("inbox ran");

    assert_eq!(
        (status.handled, status.duplicates, status.dead_lettered),
        (2, 1, 0)
    );
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        3,
        "one call per message"
    );
    assert_eq!(handled_rows(&store).await, 3, "one effect per message");
    for id in &ids {
        assert!(inbox.was_handled(id).await.expect("lookup"));
    }
    assert_eq!(
        left_for_group(&topic, &group).await,
        0,
        "every offset is committed"
    );
    db.drop_database().await.expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_the_handler_cannot_handle_goes_to_the_dead_letter_topic_with_the_error() {
    require_broker().await;
    let (db, store) = fresh().await;
    create_table(&store).await;
    let topic = unique("inbox-dlq");
    let group = unique("billing");
    let inbox = Inbox::new(store.clone(), "billing").with_retry(InboxRetry {
        max_attempts: 2,
        backoff: Duration::from_millis(10),
    });
    let kafka = KafkaInbox::new(&brokers(), inbox, options(&topic, &group)).expect("inbox");
    let dead_letter_topic = kafka.dead_letter_topic(&topic);
    assert_eq!(dead_letter_topic, format!("{topic}.dlq"));
    kafka.ensure_topics().await.expect("topics");
    let ids = produce(&topic, &["Shipped", "Poison", "Shipped"]).await;
    let handler = Arc::new(Recorder::default());

    let shutdown = CancellationToken::new();
    let mut status = kafka.status();
    let running = tokio::spawn({
        let (handler, shutdown) = (handler.clone(), shutdown.clone());
        async move { kafka.run(handler.as_ref(), shutdown).await }
    });
    let status = wait_for_inbox(&mut status, |s| s.handled + s.dead_lettered >= 3).await;
    shutdown.cancel();
    running.await.expect("join").expect("inbox ran");

    assert_eq!(
        (status.handled, status.duplicates, status.dead_lettered),
        (2, 0, 1)
    );
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        2 + 2,
        "the poison was tried twice"
    );
    assert_eq!(handled_rows(&store).await, 2);

    let mut reader = RawReader::new(&dead_letter_topic).await;
    reader.read_until(|records| !records.is_empty()).await;
    let dead = &reader.records[0];
    assert_eq!(dead.header(header::MESSAGE_ID), Some(ids[1].as_str()));
    assert_eq!(dead.header(header::EVENT_TYPE), Some("Poison"));
    assert_eq!(dead.key.as_deref(), Some("order-1"));
    assert_eq!(dead.payload, br#"{"n":1}"#);
    let error = dead
        .header(failure_header::ERROR)
        .expect("the error header");
    assert!(error.contains("no address"), "{error}");
    assert_eq!(dead.header(failure_header::ATTEMPTS), Some("2"));
    assert_eq!(dead.header(failure_header::INBOX), Some("billing"));
    assert_eq!(
        dead.header(SOURCE_HEADER),
        Some(format!("{topic}/0/1").as_str())
    );
    assert_eq!(
        left_for_group(&topic, &group).await,
        0,
        "the poison is not delivered again"
    );
    db.drop_database().await.expect("drop");
}

/// Records each message's stream and version in the table `received`, in arrival order.
struct StreamRecorder;

#[async_trait]
impl InboxHandler for StreamRecorder {
    type Error = Box<dyn std::error::Error + Send + Sync>;

    async fn handle(
        &self,
        tx: &mut PgConnection,
        message: &IncomingMessage,
    ) -> Result<(), Self::Error> {
        sqlx::query("INSERT INTO received (message_id, stream, version) VALUES ($1, $2, $3)")
            .bind(&message.message_id)
            .bind(message.header(header::STREAM).ok_or("no stream header")?)
            .bind(
                message
                    .header(header::STREAM_VERSION)
                    .ok_or("no version header")?
                    .parse::<i64>()?,
            )
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_and_the_inbox_hand_every_event_to_the_handler_once_in_stream_order() {
    require_broker().await;
    let (db, store) = fresh().await;
    sqlx::query("CREATE TABLE received (n bigserial PRIMARY KEY, message_id text NOT NULL, stream text NOT NULL, version bigint NOT NULL)")
        .execute(store.pool())
        .await
        .expect("create table");
    let prefix = format!("{}.", unique("e2e"));
    let topic = eventsource_relay_kafka::topic_name(&prefix, "item");
    let inbox = KafkaInbox::new(
        &brokers(),
        Inbox::new(store.clone(), "e2e"),
        KafkaInboxOptions {
            topic_setup: TopicSetup {
                partitions: 4,
                ..TopicSetup::default()
            },
            ..options(&topic, &unique("e2e"))
        },
    )
    .expect("inbox");
    inbox.ensure_topics().await.expect("topics");
    let publisher = eventsource_relay_kafka::KafkaPublisher::new(
        &brokers(),
        eventsource_relay_kafka::KafkaPublisherOptions::default().with_topic_prefix(&prefix),
    )
    .expect("publisher");
    let relay = eventsource_postgres::relay::Relay::new(
        store.clone(),
        "e2e",
        publisher,
        eventsource_postgres::relay::PublishAsIs,
    )
    .with_options(relay_options());
    let shutdown = CancellationToken::new();
    let relay_task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown).await }
    });
    let mut status = inbox.status();
    let inbox_task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { inbox.run(&StreamRecorder, shutdown).await }
    });
    let appended =
        eventsource_postgres::delivery_check::write_concurrently(&store, "item", 8, 4, 25)
            .await
            .expect("write");
    let status = wait_for_inbox(&mut status, |s| s.handled as usize >= appended).await;
    shutdown.cancel();
    relay_task.await.expect("join").expect("relay ran");
    inbox_task.await.expect("join").expect("inbox ran");

    assert_eq!(
        (
            status.handled as usize,
            status.duplicates,
            status.dead_lettered
        ),
        (appended, 0, 0)
    );
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT message_id, stream, version FROM received ORDER BY n")
            .fetch_all(store.pool())
            .await
            .expect("rows");
    let received: Vec<_> = rows
        .into_iter()
        .map(|(message_id, stream, version)| {
            eventsource_postgres::delivery_check::ReceivedMessage {
                message_id,
                stream,
                version: version as u64,
            }
        })
        .collect();
    let stored = eventsource_postgres::delivery_check::stored_messages(&store)
        .await
        .expect("stored");
    let report = eventsource_postgres::delivery_check::check_delivery(&stored, &received);
    assert!(report.is_complete_and_ordered(), "{report:?}");
    assert_eq!(report.duplicates, 0);
    assert_eq!(received.len(), appended);
    db.drop_database().await.expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_the_database_is_unreachable_nothing_is_committed_and_the_messages_come_again() {
    require_broker().await;
    let (db, store) = fresh().await;
    create_table(&store).await;
    let topic = unique("inbox-db-down");
    let group = unique("packing");
    // An inbox whose database does not answer (nothing listens on port 1).
    let unreachable = PostgresStore::new(
        sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(500))
            .connect_lazy("postgres://postgres@127.0.0.1:1/nowhere")
            .expect("a lazy pool"),
    );
    let down = KafkaInbox::new(
        &brokers(),
        Inbox::new(unreachable, "packing"),
        options(&topic, &group),
    )
    .expect("inbox");
    down.ensure_topics().await.expect("topics");
    produce(&topic, &["Shipped", "Shipped"]).await;
    let handler = Arc::new(Recorder::default());

    let shutdown = CancellationToken::new();
    let mut status = down.status();
    let running = tokio::spawn({
        let (handler, shutdown) = (handler.clone(), shutdown.clone());
        async move { down.run(handler.as_ref(), shutdown).await }
    });
    let status = wait_for_inbox(&mut status, |s| s.retrying.is_some()).await;
    let reason = status.retrying.expect("a reason");
    assert!(
        reason.contains("packing") && reason.contains("connect"),
        "{reason}"
    );
    shutdown.cancel();
    running.await.expect("join").expect("inbox ran");
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0);
    assert_eq!(
        left_for_group(&topic, &group).await,
        2,
        "nothing was committed"
    );

    // Once the database answers, the same group gets both messages again and handles them.
    let up = KafkaInbox::new(
        &brokers(),
        Inbox::new(store.clone(), "packing"),
        options(&topic, &group),
    )
    .expect("inbox");
    let shutdown = CancellationToken::new();
    let mut status = up.status();
    let running = tokio::spawn({
        let (handler, shutdown) = (handler.clone(), shutdown.clone());
        async move { up.run(handler.as_ref(), shutdown).await }
    });
    let status = wait_for_inbox(&mut status, |s| s.handled >= 2).await;
    shutdown.cancel();
    running.await.expect("join").expect("inbox ran");
    assert_eq!((status.handled, status.dead_lettered), (2, 0));
    assert_eq!(handled_rows(&store).await, 2);
    assert_eq!(left_for_group(&topic, &group).await, 0);
    db.drop_database().await.expect("drop");
}
