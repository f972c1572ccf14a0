//! The relay through NATS JetStream: every committed event reaches the stream once, in stream
//! order, with its envelope; what the broker refuses for good is parked; a missing stream is
//! waited out.

mod common;

use common::{delete_streams, eventually, jetstream, relay_options, Names, Reader, RunningRelay};
use eventsource_core::{EventAppender, EventMetadata, ExpectedVersion, NewEvent, StreamId};
use eventsource_postgres::delivery_check::{check_delivery, stored_messages, write_concurrently};
use eventsource_postgres::relay::{dead_letters, header, OnRefusal, RelayError, RelayOptions};
use eventsource_postgres::testing::TestDatabase;
use eventsource_postgres::PostgresStore;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn append(store: &PostgresStore, stream: &str, payload: serde_json::Value) -> Uuid {
    let id = StreamId::new("item", stream).expect("stream id");
    let event = NewEvent::new(
        "ItemNoted",
        1,
        payload,
        EventMetadata {
            correlation_id: Some(Uuid::now_v7()),
            actor: Some("tester".into()),
            ..EventMetadata::default()
        },
    );
    let event_id = event.event_id;
    store
        .append(&id, ExpectedVersion::Any, vec![event])
        .await
        .expect("append");
    event_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_of_concurrent_writers_reaches_the_stream_once_in_stream_order() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let names = Names::new("complete");
    let js = jetstream().await;
    common::create_stream(&js, &names.stream_setup()).await;
    let stop = CancellationToken::new();
    let reader = Reader::start(&names.stream, stop.clone()).await;

    let relay = RunningRelay::start(&store, "nats", names.publisher(), relay_options());
    let appended = write_concurrently(&store, "order", 8, 5, 40)
        .await
        .expect("writers");
    assert_eq!(appended, 8 * 5 * 40);
    reader.wait_for(appended).await;
    relay.stop().await;

    let stored = stored_messages(&store).await.expect("stored events");
    assert_eq!(stored.len(), appended);
    let received = reader.received();
    let report = check_delivery(&stored, &received);
    assert!(report.is_complete_and_ordered(), "{report:?}");
    // One relay, no crash, and JetStream drops a resent Nats-Msg-Id: each event once.
    assert_eq!(report.duplicates, 0, "{report:?}");
    assert_eq!(received.len(), appended);

    // The envelope and routing of one message.
    let seen = reader.seen();
    let first = &seen[0];
    assert_eq!(first.subject, format!("{}.order.Ticked", names.prefix));
    assert_eq!(first.headers["Nats-Msg-Id"], first.received.message_id);
    assert_eq!(first.headers["Content-Type"], "application/json");
    for name in [
        header::EVENT_TYPE,
        header::EVENT_VERSION,
        header::CATEGORY,
        header::RECORDED_AT,
        header::CORRELATION_ID,
    ] {
        assert!(
            first.headers.contains_key(name),
            "header {name} missing: {:?}",
            first.headers
        );
    }
    assert_eq!(first.headers[header::EVENT_TYPE], "Ticked");
    assert_eq!(first.headers[header::CATEGORY], "order");

    stop.cancel();
    delete_streams(&js, &names).await;
    db.drop_database().await.expect("drop the test database");
}

#[tokio::test]
async fn an_oversized_message_is_parked_with_the_reason_and_the_relay_goes_on() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let names = Names::new("oversize");
    let js = jetstream().await;
    common::create_stream(&js, &names.stream_setup().with_max_message_size(2048)).await;
    let stop = CancellationToken::new();
    let reader = Reader::start(&names.stream, stop.clone()).await;

    let small_before = append(&store, "a", json!({ "n": 1 })).await;
    let big = append(&store, "a", json!({ "blob": "x".repeat(4096) })).await;
    let small_after = append(&store, "a", json!({ "n": 3 })).await;
    let other = append(&store, "b", json!({ "n": 1 })).await;

    let relay = RunningRelay::start(&store, "nats", names.publisher(), relay_options());
    reader.wait_for(3).await;
    let mut status = relay.status.clone();
    status
        .wait_for(|s| s.parked == 1 && s.published == 3)
        .await
        .expect("relay status");
    relay.stop().await;

    let received = reader.received();
    let of_stream = |stream: &str| -> Vec<String> {
        received
            .iter()
            .filter(|m| m.stream == stream)
            .map(|m| m.message_id.clone())
            .collect()
    };
    assert_eq!(
        of_stream("item-a"),
        [small_before, small_after].map(|id| id.to_string()),
        "the events around the refused one are published, in order"
    );
    assert_eq!(of_stream("item-b"), [other.to_string()]);
    assert_eq!(received.len(), 3);
    let parked = dead_letters::list(&store, "nats")
        .await
        .expect("dead letters");
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].event_id, big);
    assert_eq!(
        parked[0].destination,
        format!("{}.item.ItemNoted", names.prefix)
    );
    assert!(
        parked[0].error.contains("too large") && parked[0].error.contains("maximum"),
        "the reason names the size limit: {}",
        parked[0].error
    );

    stop.cancel();
    delete_streams(&js, &names).await;
    db.drop_database().await.expect("drop the test database");
}

#[tokio::test]
async fn an_oversized_message_stops_the_relay_under_on_refusal_stop() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let names = Names::new("stop");
    let js = jetstream().await;
    common::create_stream(&js, &names.stream_setup().with_max_message_size(2048)).await;

    append(&store, "a", json!({ "n": 1 })).await;
    let big = append(&store, "a", json!({ "blob": "x".repeat(4096) })).await;
    append(&store, "a", json!({ "n": 3 })).await;

    let options = RelayOptions {
        on_refusal: OnRefusal::Stop,
        ..relay_options()
    };
    let relay = RunningRelay::start(&store, "nats", names.publisher(), options);
    let ended = tokio::time::timeout(common::DEADLINE, relay.task)
        .await
        .expect("the relay stops by itself")
        .expect("the relay task");
    match ended {
        Err(RelayError::Refused { reason, .. }) => {
            assert!(reason.contains("too large"), "{reason}")
        }
        other => panic!("expected RelayError::Refused, got {other:?}"),
    }
    let parked = dead_letters::list(&store, "nats")
        .await
        .expect("dead letters");
    assert_eq!(parked.iter().map(|p| p.event_id).collect::<Vec<_>>(), [big]);
    let info = js
        .get_stream(&names.stream)
        .await
        .expect("stream")
        .info()
        .await
        .expect("stream info")
        .clone();
    assert_eq!(
        info.state.messages, 1,
        "nothing after the refused event went out"
    );

    delete_streams(&js, &names).await;
    db.drop_database().await.expect("drop the test database");
}

#[tokio::test]
async fn a_subject_no_stream_captures_is_waited_out_until_the_stream_exists() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let names = Names::new("nostream");
    let js = jetstream().await;
    let first = append(&store, "a", json!({ "n": 1 })).await;
    let second = append(&store, "a", json!({ "n": 2 })).await;

    // No stream yet: NATS answers "no responders"; the relay waits, parks nothing.
    let relay = RunningRelay::start(&store, "nats", names.publisher(), relay_options());
    let mut status = relay.status.clone();
    let outage = status
        .wait_for(|s| s.broker_outage.is_some())
        .await
        .expect("relay status")
        .broker_outage
        .clone()
        .unwrap_or_default();
    assert!(outage.contains("no JetStream stream captures"), "{outage}");
    assert_eq!(status.borrow().parked, 0);

    common::create_stream(&js, &names.stream_setup()).await;
    let stop = CancellationToken::new();
    let reader = Reader::start(&names.stream, stop.clone()).await;
    reader.wait_for(2).await;
    let ids: Vec<String> = reader
        .received()
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    assert_eq!(ids, [first, second].map(|id| id.to_string()));
    eventually("the outage to clear", || async {
        status.borrow().broker_outage.is_none()
    })
    .await;
    relay.stop().await;
    assert!(dead_letters::list(&store, "nats")
        .await
        .expect("dead letters")
        .is_empty());

    stop.cancel();
    delete_streams(&js, &names).await;
    db.drop_database().await.expect("drop the test database");
}

#[tokio::test]
async fn an_event_type_nats_cannot_publish_to_is_parked() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let names = Names::new("badsubject");
    let js = jetstream().await;
    common::create_stream(&js, &names.stream_setup()).await;

    let id = StreamId::new("item", "a").expect("stream id");
    let bad = NewEvent::new("Item Noted", 1, json!({}), EventMetadata::default());
    let bad_id = bad.event_id;
    store
        .append(&id, ExpectedVersion::Any, vec![bad])
        .await
        .expect("append");
    let good = append(&store, "a", json!({ "n": 2 })).await;

    let relay = RunningRelay::start(&store, "nats", names.publisher(), relay_options());
    let mut status = relay.status.clone();
    status
        .wait_for(|s| s.parked == 1 && s.published == 1)
        .await
        .expect("relay status");
    relay.stop().await;
    let parked = dead_letters::list(&store, "nats")
        .await
        .expect("dead letters");
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].event_id, bad_id);
    assert!(
        parked[0].error.contains("whitespace"),
        "{}",
        parked[0].error
    );
    let stop = CancellationToken::new();
    let reader = Reader::start(&names.stream, stop.clone()).await;
    reader.wait_for(1).await;
    assert_eq!(reader.received()[0].message_id, good.to_string());

    stop.cancel();
    delete_streams(&js, &names).await;
    db.drop_database().await.expect("drop the test database");
}
