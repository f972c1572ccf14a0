//! The publisher against the real broker: every event of concurrent writers reaches its topic,
//! keyed by stream, with its envelope; refusals are parked.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use eventsource_core::{EventAppender, EventMetadata, ExpectedVersion, NewEvent, StreamId};
use eventsource_postgres::delivery_check::{check_delivery, stored_messages, write_concurrently};
use eventsource_postgres::relay::{
    checkpoint_name, dead_letters, header, OnRefusal, OutgoingMessage, PublishAsIs, PublishError,
    Publisher, Relay, RelayError,
};
use eventsource_relay_kafka::{KafkaPublisher, KafkaPublisherOptions, TopicSetup, CONTENT_TYPE};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_of_concurrent_writers_reaches_its_topic_keyed_by_stream_in_order() {
    require_broker().await;
    let (db, store) = fresh().await;
    let prefix = format!("{}.", unique("complete"));
    let category = "item";
    let publisher = KafkaPublisher::new(
        &brokers(),
        KafkaPublisherOptions::default().with_topic_prefix(&prefix),
    )
    .expect("publisher");
    let topic = publisher.topic(category);
    let relay = Arc::new(
        Relay::new(store.clone(), "kafka", publisher, PublishAsIs).with_options(relay_options()),
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });

    let appended = write_concurrently(&store, category, 8, 4, 25)
        .await
        .expect("write");
    assert_eq!(appended, 8 * 4 * 25);
    let head = store.head_position().await.expect("head").expect("events");
    wait_for_relay(&mut relay.status(), |s| s.position >= head).await;

    let stored = stored_messages(&store).await.expect("stored");
    assert_eq!(stored.len(), appended);
    let mut reader = RawReader::new(&topic).await;
    reader.read_distinct(stored.len()).await;
    reader.read_to_end().await;
    let report = check_delivery(&stored, &reader.received());
    assert!(report.is_complete_and_ordered(), "{report:?}");
    assert_eq!(report.duplicates, 0, "one producer, no failure: no resend");
    assert_eq!(reader.records.len(), appended);

    // Keyed by stream: each stream in one partition; the envelope in the headers.
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    for record in &reader.records {
        let stream = record.header(header::STREAM).expect("stream").to_owned();
        assert_eq!(record.key.as_deref(), Some(stream.as_str()));
        let partition = *partition_of.entry(stream).or_insert(record.partition);
        assert_eq!(
            partition, record.partition,
            "a stream stays in one partition"
        );
        assert_eq!(record.header("content-type"), Some(CONTENT_TYPE));
        assert_eq!(record.header(header::CATEGORY), Some(category));
        assert_eq!(record.header(header::EVENT_TYPE), Some("Ticked"));
        assert_eq!(record.header(header::EVENT_VERSION), Some("1"));
        for name in [
            header::FEED_POSITION,
            header::RECORDED_AT,
            header::CORRELATION_ID,
        ] {
            assert!(record.header(name).is_some(), "header {name} is missing");
        }
        let body: serde_json::Value = serde_json::from_slice(&record.payload).expect("JSON");
        assert!(body["n"].is_u64());
    }
    let used: std::collections::HashSet<i32> = partition_of.values().copied().collect();
    assert!(
        used.len() > 1,
        "32 streams spread over the topic's partitions"
    );

    shutdown.cancel();
    running.await.expect("join").expect("relay ran");
    assert_eq!(relay.status().borrow().published, appended as u64);
    let checkpoint: Option<String> = sqlx::query_scalar(
        "SELECT transaction_id::text || '/' || position FROM eventsource.checkpoints WHERE name = $1",
    )
    .bind(checkpoint_name("kafka"))
    .fetch_optional(store.pool())
    .await
    .expect("checkpoint");
    assert_eq!(checkpoint, Some(head.to_string()));
    db.drop_database().await.expect("drop");
}

/// Appends `events` to `stream` of category `item`.
async fn append(store: &eventsource_postgres::PostgresStore, stream: &str, events: Vec<NewEvent>) {
    let id = StreamId::new("item", stream).expect("stream id");
    store
        .append(&id, ExpectedVersion::Any, events)
        .await
        .expect("append");
}

fn event(size: usize) -> NewEvent {
    NewEvent::new(
        "Sized",
        1,
        json!({ "text": "x".repeat(size) }),
        EventMetadata::default(),
    )
}

/// A publisher whose messages may be at most 10,000 bytes.
fn small_publisher(prefix: &str) -> KafkaPublisher {
    let options = KafkaPublisherOptions {
        max_message_bytes: 10_000,
        ..KafkaPublisherOptions::default().with_topic_prefix(prefix)
    };
    KafkaPublisher::new(&brokers(), options).expect("publisher")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_over_the_size_limit_is_parked_and_the_relay_goes_on() {
    require_broker().await;
    let (db, store) = fresh().await;
    let prefix = format!("{}.", unique("refuse"));
    let publisher = small_publisher(&prefix);
    let topic = publisher.topic("item");
    append(&store, "a", vec![event(10), event(20_000), event(10)]).await;
    append(&store, "b", vec![event(10)]).await;
    let relay = Arc::new(
        Relay::new(store.clone(), "kafka", publisher, PublishAsIs).with_options(relay_options()),
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    let head = store.head_position().await.expect("head").expect("events");
    wait_for_relay(&mut relay.status(), |s| s.position >= head).await;
    shutdown.cancel();
    running.await.expect("join").expect("relay ran");

    let parked = dead_letters::list(&store, "kafka")
        .await
        .expect("dead letters");
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].stream_id.to_string(), "item-a");
    assert_eq!(parked[0].version.get(), 2);
    assert_eq!(parked[0].destination, topic);
    assert!(
        parked[0].error.contains("size") || parked[0].error.contains("large"),
        "the reason names the size: {}",
        parked[0].error
    );
    let status = relay.status().borrow().clone();
    assert_eq!((status.published, status.parked), (3, 1));

    // The three others reached the topic; the large one did not.
    let mut reader = RawReader::new(&topic).await;
    reader.read_distinct(3).await;
    let versions: Vec<(String, u64)> = reader
        .received()
        .into_iter()
        .map(|m| (m.stream, m.version))
        .collect();
    let mut sorted = versions.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec![
            ("item-a".into(), 1),
            ("item-a".into(), 3),
            ("item-b".into(), 1)
        ]
    );
    db.drop_database().await.expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refusal_stops_the_relay_under_on_refusal_stop() {
    require_broker().await;
    let (db, store) = fresh().await;
    let prefix = format!("{}.", unique("stop"));
    append(&store, "a", vec![event(10), event(20_000), event(10)]).await;
    let relay = Relay::new(
        store.clone(),
        "kafka",
        small_publisher(&prefix),
        PublishAsIs,
    )
    .with_options(eventsource_postgres::relay::RelayOptions {
        on_refusal: OnRefusal::Stop,
        ..relay_options()
    });
    let ended = tokio::time::timeout(DEADLINE, relay.run(CancellationToken::new()))
        .await
        .expect("the relay stopped in time");
    match ended {
        Err(RelayError::Refused {
            stream,
            version,
            reason,
            ..
        }) => {
            assert_eq!(stream.to_string(), "item-a");
            assert_eq!(version.get(), 2);
            assert!(reason.contains("message.max.bytes"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let parked = dead_letters::list(&store, "kafka")
        .await
        .expect("dead letters");
    assert_eq!(parked.len(), 1);
    assert_eq!(relay.status().borrow().published, 1);
    db.drop_database().await.expect("drop");
}

fn message(category: &str) -> OutgoingMessage {
    OutgoingMessage {
        message_id: uuid::Uuid::now_v7(),
        event_type: "Happened".into(),
        event_version: 1,
        category: category.into(),
        stream: format!("{category}-1"),
        stream_version: 1,
        position: eventsource_core::FeedPosition::new(1, 1),
        correlation_id: None,
        causation_id: None,
        actor: None,
        recorded_at: chrono::Utc::now(),
        traceparent: None,
        payload: b"{}".to_vec(),
    }
}

#[tokio::test]
async fn a_broker_that_does_not_answer_makes_the_publisher_unavailable_not_refusing() {
    // Nothing listens on port 1: topic creation fails, then delivery times out.
    for create_topics in [
        Some(TopicSetup {
            timeout: Duration::from_secs(1),
            ..TopicSetup::default()
        }),
        None,
    ] {
        let options = KafkaPublisherOptions {
            create_topics,
            delivery_timeout: Duration::from_secs(1),
            ..KafkaPublisherOptions::default()
        };
        let mut publisher = KafkaPublisher::new("127.0.0.1:1", options).expect("publisher");
        let started = std::time::Instant::now();
        let results = publisher
            .publish(&[message("item"), message("order")])
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no hang: {:?}",
            started.elapsed()
        );
        assert_eq!(results.len(), 2);
        for result in results {
            assert!(
                matches!(result, Err(PublishError::Unavailable(_))),
                "{result:?}"
            );
        }
    }
}

#[test]
fn a_publisher_refuses_bad_settings_at_once() {
    for url in ["", "localhost", "kafka://", "127.0.0.1:9092,"] {
        assert!(
            KafkaPublisher::new(url, KafkaPublisherOptions::default()).is_err(),
            "{url}"
        );
    }
    let bad_prefix = KafkaPublisherOptions::default().with_topic_prefix("events/");
    let error = KafkaPublisher::new("127.0.0.1:9092", bad_prefix)
        .err()
        .expect("refused");
    assert!(error.to_string().contains("`/`"), "{error}");
    let publisher = KafkaPublisher::new("kafka://127.0.0.1:9092", KafkaPublisherOptions::default())
        .expect("ok");
    assert_eq!(publisher.topic("order"), "events.order");
    assert_eq!(publisher.destination(&message("order")), "events.order");
}
