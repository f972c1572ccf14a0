//! The relay through RabbitMQ: every event of concurrent writers reaches a queue bound to the
//! exchange, once after deduplication and in stream order, with its envelope; refused
//! messages (unroutable, too large) are parked, and stop the relay when asked to.

mod common;

use std::sync::Arc;

use common::*;
use eventsource_core::{EventAppender, EventMetadata, ExpectedVersion, NewEvent, StreamId};
use eventsource_postgres::delivery_check::{check_delivery, stored_messages, write_concurrently};
use eventsource_postgres::relay::{dead_letters, OnRefusal, PublishAsIs, Relay, RelayError};
use eventsource_postgres::testing::TestDatabase;
use eventsource_postgres::PostgresStore;
use eventsource_relay_rabbitmq::{PublisherOptions, RabbitMqPublisher};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn publisher(exchange: &str) -> RabbitMqPublisher {
    RabbitMqPublisher::new(&rabbitmq_url(), PublisherOptions::new(exchange)).expect("publisher")
}

async fn append(store: &PostgresStore, category: &str, id: &str, payload: serde_json::Value) {
    let stream = StreamId::new(category, id).expect("stream id");
    store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![NewEvent::new(
                "Happened",
                1,
                payload,
                EventMetadata::default(),
            )],
        )
        .await
        .expect("append");
}

#[tokio::test]
async fn every_event_of_eight_writers_reaches_the_queue_complete_and_in_stream_order() {
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");
    let (exchange, queue) = (unique("relay-all"), unique("relay-all"));
    let (_connection, channel) = raw_channel().await;
    declare_queue(&channel, &exchange, &queue, "#").await;

    let relay = Arc::new(
        Relay::new(store.clone(), "all", publisher(&exchange), PublishAsIs)
            .with_options(relay_options(100)),
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    let appended = write_concurrently(&store, "tick", 8, 4, 25)
        .await
        .expect("write");
    assert_eq!(appended, 8 * 4 * 25);
    let target = head(&store).await;
    wait_for(&mut relay.status(), |s| s.position >= target).await;
    shutdown.cancel();
    running.await.expect("join").expect("the relay ran");

    // Every message the broker confirmed is in the queue: take them all.
    let received = drain(&channel, &queue).await;
    let stored = stored_messages(&store).await.expect("stored");
    assert_eq!(stored.len(), appended);
    let report = check_delivery(&stored, &messages(&received));
    assert!(report.is_complete_and_ordered(), "{report:?}");
    assert_eq!(report.duplicates, 0, "no outage, so nothing was resent");
    assert_eq!(received.len(), appended);
    assert_eq!(relay.status().borrow().published, appended as u64);
    assert_eq!(stored_checkpoint(&store, "all").await, Some(target));
    assert!(dead_letters::list(&store, "all")
        .await
        .expect("dead letters")
        .is_empty());

    delete(&channel, &[&queue], &[&exchange]).await;
    db.drop_database().await.expect("drop");
}

#[tokio::test]
async fn unroutable_and_oversized_messages_are_parked_and_the_relay_goes_on() {
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");
    let (exchange, queue) = (unique("relay-park"), unique("relay-park"));
    let (_connection, channel) = raw_channel().await;
    // Only `kept` events are routed anywhere.
    declare_queue(&channel, &exchange, &queue, "kept.*").await;

    append(&store, "kept", "a", json!({ "n": 1 })).await;
    append(&store, "lost", "b", json!({ "n": 1 })).await;
    append(&store, "kept", "a", json!({ "big": "x".repeat(2000) })).await;
    append(&store, "kept", "a", json!({ "n": 3 })).await;
    append(&store, "lost", "b", json!({ "n": 2 })).await;
    append(&store, "kept", "c", json!({ "n": 1 })).await;

    let publisher = RabbitMqPublisher::new(
        &rabbitmq_url(),
        PublisherOptions {
            max_message_bytes: 1000,
            ..PublisherOptions::new(&exchange)
        },
    )
    .expect("publisher");
    let relay =
        Relay::new(store.clone(), "park", publisher, PublishAsIs).with_options(relay_options(10));
    let target = head(&store).await;
    let shutdown = CancellationToken::new();
    let mut status = relay.status();
    let (ran, ()) = tokio::join!(relay.run(shutdown.clone()), async {
        wait_for(&mut status, |s| s.position >= target).await;
        shutdown.cancel();
    });
    ran.expect("the relay ran");

    let parked = dead_letters::list(&store, "park")
        .await
        .expect("dead letters");
    let parked: Vec<(String, u64, String, String)> = parked
        .into_iter()
        .map(|d| {
            (
                d.stream_id.to_string(),
                d.version.get(),
                d.destination,
                d.error,
            )
        })
        .collect();
    assert_eq!(parked.len(), 3, "{parked:#?}");
    assert_eq!((parked[0].0.as_str(), parked[0].1), ("lost-b", 1));
    assert_eq!(
        parked[0].2,
        format!("exchange {exchange} routing key lost.Happened")
    );
    assert!(parked[0].3.contains("unroutable"), "{}", parked[0].3);
    assert!(parked[0].3.contains("NO_ROUTE"), "{}", parked[0].3);
    assert_eq!((parked[1].0.as_str(), parked[1].1), ("kept-a", 2));
    assert!(
        parked[1].3.contains("over the limit of 1000"),
        "{}",
        parked[1].3
    );
    assert_eq!((parked[2].0.as_str(), parked[2].1), ("lost-b", 2));
    assert_eq!(relay.status().borrow().parked, 3);

    // The relay went on past them: the routable, small events are all in the queue, in order.
    let received = drain(&channel, &queue).await;
    let delivered: Vec<(String, u64)> = received
        .iter()
        .map(|r| (r.message.stream.clone(), r.message.version))
        .collect();
    let mut by_stream = delivered.clone();
    by_stream.sort();
    assert_eq!(
        by_stream,
        vec![
            ("kept-a".to_owned(), 1),
            ("kept-a".to_owned(), 3),
            ("kept-c".to_owned(), 1)
        ]
    );
    let a: Vec<u64> = delivered
        .iter()
        .filter(|(s, _)| s == "kept-a")
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(a, vec![1, 3]);

    delete(&channel, &[&queue], &[&exchange]).await;
    db.drop_database().await.expect("drop");
}

#[tokio::test]
async fn with_on_refusal_stop_an_unroutable_message_stops_the_relay_before_it() {
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");
    let exchange = unique("relay-stop");
    append(&store, "nobody", "a", json!({ "n": 1 })).await;
    append(&store, "nobody", "a", json!({ "n": 2 })).await;

    let relay = Relay::new(store.clone(), "stop", publisher(&exchange), PublishAsIs).with_options(
        eventsource_postgres::relay::RelayOptions {
            on_refusal: OnRefusal::Stop,
            ..relay_options(10)
        },
    );
    let ran = tokio::time::timeout(DEADLINE, relay.run(CancellationToken::new()))
        .await
        .expect("the relay stopped in time");
    match ran {
        Err(RelayError::Refused {
            stream,
            version,
            reason,
            ..
        }) => {
            assert_eq!(stream.to_string(), "nobody-a");
            assert_eq!(version.get(), 1);
            assert!(reason.contains("unroutable"), "{reason}");
        }
        other => panic!("expected RelayError::Refused, got {other:?}"),
    }
    let parked = dead_letters::list(&store, "stop")
        .await
        .expect("dead letters");
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].version.get(), 1);
    assert_eq!(
        stored_checkpoint(&store, "stop").await,
        None,
        "the checkpoint stays before the refused event"
    );

    let (_connection, channel) = raw_channel().await;
    delete(&channel, &[], &[&exchange]).await;
    db.drop_database().await.expect("drop");
}
