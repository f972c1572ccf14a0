//! The inbox consumer against RabbitMQ and PostgreSQL: a redelivery after a commit is
//! acknowledged without a second effect; a failing handler's message lands in the dead-letter
//! queue with the error; an unreachable database leaves the message in the queue; a relay's
//! messages from concurrent writers are all handled once, each stream in order.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use eventsource_core::{BoxError, FeedPosition};
use eventsource_postgres::delivery_check::{stored_messages, write_concurrently};
use eventsource_postgres::inbox::{
    failure_header, Disposition, Inbox, InboxHandler, InboxRetry, IncomingMessage,
};
use eventsource_postgres::relay::{header, OutgoingMessage, PublishAsIs, Publisher, Relay};
use eventsource_postgres::sqlx::{self, PgConnection};
use eventsource_postgres::testing::TestDatabase;
use eventsource_postgres::PostgresStore;
use eventsource_relay_rabbitmq::{
    InboxOptions, InboxStatus, PublisherOptions, QueueTopology, RabbitMqInbox, RabbitMqPublisher,
};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicGetOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Writes one row per message into `effects`; fails on bodies with `"fail": true`.
#[derive(Default)]
struct Effects {
    calls: AtomicU32,
}

#[async_trait]
impl InboxHandler for Effects {
    type Error = BoxError;

    async fn handle(
        &self,
        tx: &mut PgConnection,
        message: &IncomingMessage,
    ) -> Result<(), BoxError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let body: serde_json::Value = message.json()?;
        if body["fail"] == json!(true) {
            return Err(format!("refusing message {} on purpose", message.message_id).into());
        }
        sqlx::query("INSERT INTO effects (message_id, stream, version) VALUES ($1, $2, $3)")
            .bind(&message.message_id)
            .bind(message.header(header::STREAM))
            .bind(
                message
                    .header(header::STREAM_VERSION)
                    .and_then(|v| v.parse::<i64>().ok()),
            )
            .execute(tx)
            .await?;
        Ok(())
    }
}

async fn fresh() -> (TestDatabase, PostgresStore) {
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");
    sqlx::query(
        "CREATE TABLE effects (seq bigserial PRIMARY KEY, message_id text NOT NULL UNIQUE, stream text, version bigint)",
    )
    .execute(store.pool())
    .await
    .expect("create the effects table");
    (db, store)
}

async fn effects(store: &PostgresStore) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects")
        .fetch_one(store.pool())
        .await
        .expect("count effects")
}

fn inbox_options() -> InboxOptions {
    InboxOptions {
        backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..InboxOptions::default()
    }
}

fn outgoing(stream: &str, version: u64, payload: serde_json::Value) -> OutgoingMessage {
    OutgoingMessage {
        message_id: Uuid::now_v7(),
        event_type: "Placed".into(),
        event_version: 1,
        category: "order".into(),
        stream: format!("order-{stream}"),
        stream_version: version,
        position: FeedPosition::new(1, version),
        correlation_id: Some(Uuid::now_v7()),
        causation_id: None,
        actor: Some("tester".into()),
        recorded_at: chrono::Utc::now(),
        traceparent: None,
        payload: serde_json::to_vec(&payload).expect("json"),
    }
}

async fn publish(exchange: &str, messages: &[OutgoingMessage]) {
    let mut publisher = RabbitMqPublisher::new(&rabbitmq_url(), PublisherOptions::new(exchange))
        .expect("publisher");
    for result in publisher.publish(messages).await {
        result.expect("published and confirmed");
    }
}

/// Runs `consumer` until its status satisfies `done`, then stops it.
async fn run_until(
    consumer: &RabbitMqInbox,
    handler: &Effects,
    done: impl FnMut(&InboxStatus) -> bool,
) -> InboxStatus {
    let shutdown = CancellationToken::new();
    let mut status = consumer.status();
    let wait = async {
        let reached = tokio::time::timeout(DEADLINE, status.wait_for(done)).await;
        shutdown.cancel();
        reached
            .expect("the inbox got there in time")
            .expect("status")
            .clone()
    };
    let (ran, reached) = tokio::join!(consumer.run(handler, shutdown.clone()), wait);
    ran.expect("the inbox ran");
    reached
}

#[tokio::test]
async fn a_message_redelivered_after_its_commit_is_acknowledged_without_running_the_handler() {
    let (db, store) = fresh().await;
    let (exchange, queue) = (unique("inbox-redeliver"), unique("inbox-redeliver"));
    let topology = QueueTopology::new(&exchange, &queue).bind("order.*");
    let consumer = RabbitMqInbox::new(
        &rabbitmq_url(),
        Inbox::new(store.clone(), "billing"),
        topology,
    )
    .expect("inbox")
    .with_options(inbox_options());
    consumer.declare().await.expect("declare");
    let message = outgoing("1", 1, json!({ "total": 10 }));
    publish(&exchange, std::slice::from_ref(&message)).await;

    // A consumer takes the message, the inbox commits its effect, and the connection drops
    // before the acknowledgement.
    let handler = Effects::default();
    let (connection, channel) = raw_channel().await;
    let mut raw = channel
        .basic_consume(
            queue.as_str().into(),
            "crashing".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let delivery = tokio::time::timeout(DEADLINE, raw.next())
        .await
        .expect("a delivery in time")
        .expect("a delivery")
        .expect("no error");
    let headers: BTreeMap<String, String> = delivery
        .properties
        .headers()
        .as_ref()
        .expect("headers")
        .inner()
        .keys()
        .map(|name| {
            (
                name.to_string(),
                header_of(&delivery, name.as_str()).expect("text"),
            )
        })
        .collect();
    let incoming = IncomingMessage {
        message_id: delivery
            .properties
            .message_id()
            .as_ref()
            .expect("message id")
            .to_string(),
        subject: delivery.routing_key.to_string(),
        headers,
        payload: delivery.data.clone(),
    };
    assert_eq!(incoming.message_id, message.message_id.to_string());
    let disposition = consumer
        .inbox()
        .receive(&handler, &incoming)
        .await
        .expect("the inbox recorded it");
    assert!(
        matches!(disposition, Disposition::Handled),
        "{disposition:?}"
    );
    connection.close(200, "crash".into()).await.expect("close");
    drop(delivery);

    // The broker delivers it again; the inbox acknowledges it without running the handler.
    let status = run_until(&consumer, &handler, |s| s.duplicates == 1).await;
    assert_eq!(status.handled, 0);
    assert_eq!(status.dead_lettered, 0);
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        1,
        "the handler ran once"
    );
    assert_eq!(effects(&store).await, 1, "one effect");
    // The consumer has closed its channel: an unacknowledged message would be back.
    let (_connection, channel) = raw_channel().await;
    assert_eq!(ready_messages(&channel, &queue).await, 0, "nothing left");

    delete(
        &channel,
        &[&queue, &format!("{queue}.dead-letter")],
        &[&exchange, &format!("{queue}.dead-letter")],
    )
    .await;
    db.drop_database().await.expect("drop");
}

#[tokio::test]
async fn a_message_the_handler_always_fails_on_lands_in_the_dead_letter_queue_with_the_error() {
    let (db, store) = fresh().await;
    let (exchange, queue) = (unique("inbox-fail"), unique("inbox-fail"));
    let topology = QueueTopology::new(&exchange, &queue).bind("order.*");
    let inbox = Inbox::new(store.clone(), "billing").with_retry(InboxRetry {
        max_attempts: 2,
        backoff: Duration::from_millis(10),
    });
    let consumer = RabbitMqInbox::new(&rabbitmq_url(), inbox, topology)
        .expect("inbox")
        .with_options(inbox_options());
    consumer.declare().await.expect("declare");
    let messages = vec![
        outgoing("1", 1, json!({ "total": 1 })),
        outgoing("2", 1, json!({ "total": 2 })),
        outgoing("1", 2, json!({ "fail": true })),
        outgoing("1", 3, json!({ "total": 3 })),
        outgoing("3", 1, json!({ "total": 4 })),
    ];
    publish(&exchange, &messages).await;
    // And one without a message id, which no inbox can deduplicate.
    let (_connection, channel) = raw_channel().await;
    channel
        .basic_publish(
            exchange.as_str().into(),
            "order.Anonymous".into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");

    let handler = Effects::default();
    let status = run_until(&consumer, &handler, |s| {
        s.handled == 4 && s.dead_lettered == 2
    })
    .await;
    assert_eq!(status.duplicates, 0);
    assert_eq!(effects(&store).await, 4, "the other messages were handled");
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        4 + 2,
        "two attempts at the failing one"
    );
    assert_eq!(ready_messages(&channel, &queue).await, 0);

    // The dead-letter queue holds a copy of each, with the error.
    let dead_letter_queue = format!("{queue}.dead-letter");
    let mut dead = Vec::new();
    while let Some(got) = channel
        .basic_get(
            dead_letter_queue.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
    {
        dead.push(got.delivery);
    }
    assert_eq!(dead.len(), 2);
    let failed = dead
        .iter()
        .find(|d| d.routing_key.as_str() == "order.Placed")
        .expect("the failed message");
    let failing = &messages[2];
    assert_eq!(
        failed
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string()),
        Some(failing.message_id.to_string())
    );
    assert_eq!(failed.data, failing.payload);
    let error = header_of(failed, failure_header::ERROR).expect("inbox-error");
    assert!(
        error.contains(&format!(
            "refusing message {} on purpose",
            failing.message_id
        )),
        "{error}"
    );
    assert_eq!(
        header_of(failed, failure_header::ATTEMPTS).as_deref(),
        Some("2")
    );
    assert_eq!(
        header_of(failed, failure_header::INBOX).as_deref(),
        Some("billing")
    );
    assert_eq!(
        header_of(failed, header::STREAM).as_deref(),
        Some("order-1")
    );
    let anonymous = dead
        .iter()
        .find(|d| d.routing_key.as_str() == "order.Anonymous")
        .expect("the message without an id");
    let error = header_of(anonymous, failure_header::ERROR).expect("inbox-error");
    assert!(error.contains("message_id"), "{error}");
    assert_eq!(
        header_of(anonymous, failure_header::ATTEMPTS).as_deref(),
        Some("0")
    );

    delete(
        &channel,
        &[&queue, &dead_letter_queue],
        &[&exchange, &dead_letter_queue],
    )
    .await;
    db.drop_database().await.expect("drop");
}

#[tokio::test]
async fn while_the_database_is_unreachable_the_message_stays_in_the_queue() {
    let (db, store) = fresh().await;
    let (exchange, queue) = (unique("inbox-nodb"), unique("inbox-nodb"));
    let topology = QueueTopology::new(&exchange, &queue).bind("order.*");
    // A store whose pool is closed: every transaction fails to start.
    let closed = PostgresStore::new(db.pool(1).await.expect("pool"));
    closed.close().await;
    let consumer = RabbitMqInbox::new(&rabbitmq_url(), Inbox::new(closed, "billing"), topology)
        .expect("inbox")
        .with_options(inbox_options());
    consumer.declare().await.expect("declare");
    publish(&exchange, &[outgoing("1", 1, json!({ "total": 1 }))]).await;

    let handler = Effects::default();
    let status = run_until(&consumer, &handler, |s| {
        s.outage
            .as_deref()
            .is_some_and(|o| o.contains("left unacknowledged"))
    })
    .await;
    assert_eq!(status.handled + status.duplicates + status.dead_lettered, 0);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0);
    let (_connection, channel) = raw_channel().await;
    assert_eq!(
        ready_messages(&channel, &queue).await,
        1,
        "the message is back in the queue for the next consumer"
    );
    assert_eq!(effects(&store).await, 0);

    let dead_letter_queue = format!("{queue}.dead-letter");
    delete(
        &channel,
        &[&queue, &dead_letter_queue],
        &[&exchange, &dead_letter_queue],
    )
    .await;
    db.drop_database().await.expect("drop");
}

#[tokio::test]
async fn a_relays_messages_are_each_handled_once_and_each_stream_in_order() {
    let (db, store) = fresh().await;
    let (exchange, queue) = (unique("inbox-relay"), unique("inbox-relay"));
    let topology = QueueTopology::new(&exchange, &queue).bind("tick.*");
    let consumer = RabbitMqInbox::new(
        &rabbitmq_url(),
        Inbox::new(store.clone(), "ticks"),
        topology,
    )
    .expect("inbox")
    .with_options(inbox_options());
    consumer.declare().await.expect("declare");

    let relay = Arc::new(
        Relay::new(
            store.clone(),
            "ticks",
            RabbitMqPublisher::new(&rabbitmq_url(), PublisherOptions::new(&exchange))
                .expect("publisher"),
            PublishAsIs,
        )
        .with_options(relay_options(100)),
    );
    let shutdown = CancellationToken::new();
    let relaying = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    let appended = write_concurrently(&store, "tick", 8, 3, 10)
        .await
        .expect("write");
    let handler = Effects::default();
    let status = run_until(&consumer, &handler, |s| s.handled == appended as u64).await;
    shutdown.cancel();
    relaying.await.expect("join").expect("the relay ran");

    assert_eq!(status.duplicates, 0);
    assert_eq!(status.dead_lettered, 0);
    assert_eq!(effects(&store).await, appended as i64);
    assert_eq!(
        stored_messages(&store).await.expect("stored").len(),
        appended
    );
    // Each stream's messages were handled (committed) in version order.
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT stream, version FROM effects ORDER BY seq")
            .fetch_all(store.pool())
            .await
            .expect("effects");
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for (stream, version) in rows {
        let previous = last.insert(stream.clone(), version).unwrap_or(0);
        assert_eq!(version, previous + 1, "stream {stream}");
    }
    assert_eq!(last.len(), 8 * 3);

    let (_connection, channel) = raw_channel().await;
    let dead_letter_queue = format!("{queue}.dead-letter");
    delete(
        &channel,
        &[&queue, &dead_letter_queue],
        &[&exchange, &dead_letter_queue],
    )
    .await;
    db.drop_database().await.expect("drop");
}

#[tokio::test]
async fn a_queue_that_exists_with_other_settings_is_refused_for_good_with_a_hint() {
    let (db, store) = fresh().await;
    let (exchange, queue) = (unique("inbox-clash"), unique("inbox-clash"));
    // The queue exists already, without the dead-letter argument.
    let (_connection, channel) = raw_channel().await;
    declare_queue(&channel, &exchange, &queue, "#").await;

    let consumer = RabbitMqInbox::new(
        &rabbitmq_url(),
        Inbox::new(store.clone(), "clash"),
        QueueTopology::new(&exchange, &queue).bind("order.*"),
    )
    .expect("inbox")
    .with_options(inbox_options());
    let ran = tokio::time::timeout(
        DEADLINE,
        consumer.run(&Effects::default(), CancellationToken::new()),
    )
    .await
    .expect("the inbox gave up in time");
    let error = ran.expect_err("the broker refuses the declaration");
    assert!(error.is_permanent(), "{error}");
    let text = error.to_string();
    assert!(
        text.contains(&format!("declare the durable queue `{queue}`")),
        "{text}"
    );
    assert!(text.contains("exists with other settings"), "{text}");
    assert!(consumer.status().borrow().outage.is_some());

    let dead_letter_queue = format!("{queue}.dead-letter");
    delete(
        &channel,
        &[&queue, &dead_letter_queue],
        &[&exchange, &dead_letter_queue],
    )
    .await;
    db.drop_database().await.expect("drop");
}
