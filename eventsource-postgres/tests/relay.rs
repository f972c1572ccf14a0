//! The relay core against PostgreSQL, with a publisher scripted in the test: what reaches the
//! broker, in what order, what is resent after an outage, what is parked, and when the
//! checkpoint moves. (Each broker crate runs the same checks against its real broker.)

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use eventsource_core::{
    BoxError, DecodeError, DomainEvent, EncodeError, Envelope, EventAppender, EventMetadata,
    ExpectedVersion, FeedOptions, FeedPosition, NewEvent, StreamId,
};
use eventsource_postgres::delivery_check::{
    check_delivery, stored_messages, write_concurrently, ReceivedMessage,
};
use eventsource_postgres::projection::RunnerState;
use eventsource_postgres::relay::{
    checkpoint_name, dead_letters, header, IntegrationEvent, Mapping, OnRefusal, OutgoingMessage,
    PublishAsIs, PublishError, Publisher, Relay, RelayError, RelayOptions, RelayStatus,
};
use eventsource_postgres::testing::TestDatabase;
use eventsource_postgres::PostgresStore;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long any awaited condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// What the scripted broker saw.
#[derive(Default)]
struct Broker {
    /// Every message sent, in sending order, with whether it was acknowledged.
    sent: Vec<(OutgoingMessage, bool)>,
    /// Calls to fail as a whole (the broker is down).
    down_for_calls: usize,
    /// Messages (by stream and version) to leave unacknowledged once, as a broker that lost
    /// them would, while acknowledging the rest of their wave.
    lose_once: HashSet<(String, u64)>,
}

/// A publisher whose broker is the test's `Broker`; refuses events of type `Poison` for good.
#[derive(Clone, Default)]
struct Scripted(Arc<Mutex<Broker>>);

impl Scripted {
    fn received(&self) -> Vec<ReceivedMessage> {
        let broker = self.0.lock().unwrap();
        broker
            .sent
            .iter()
            .filter(|(_, acked)| *acked)
            .map(|(m, _)| ReceivedMessage {
                message_id: m.message_id.to_string(),
                stream: m.stream.clone(),
                version: m.stream_version,
            })
            .collect()
    }

    fn sent(&self) -> Vec<(OutgoingMessage, bool)> {
        self.0.lock().unwrap().sent.clone()
    }
}

#[async_trait]
impl Publisher for Scripted {
    fn destination(&self, message: &OutgoingMessage) -> String {
        format!("test/{}", message.routing_key())
    }

    async fn publish(&mut self, messages: &[OutgoingMessage]) -> Vec<Result<(), PublishError>> {
        let mut broker = self.0.lock().unwrap();
        if broker.down_for_calls > 0 {
            broker.down_for_calls -= 1;
            return messages
                .iter()
                .map(|_| Err(PublishError::unavailable("injected: the broker is down")))
                .collect();
        }
        messages
            .iter()
            .map(|message| {
                if message.event_type == "Poison" {
                    return Err(PublishError::Refused("injected: message too large".into()));
                }
                let key = (message.stream.clone(), message.stream_version);
                let lost = broker.lose_once.remove(&key);
                broker.sent.push((message.clone(), !lost));
                if lost {
                    Err(PublishError::unavailable("injected: no confirm came"))
                } else {
                    Ok(())
                }
            })
            .collect()
    }
}

async fn fresh() -> (TestDatabase, PostgresStore) {
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");
    (db, store)
}

fn options() -> RelayOptions {
    RelayOptions {
        feed: FeedOptions::default()
            .with_batch_size(50)
            .with_poll_interval(Duration::from_millis(50)),
        standby_retry: Duration::from_millis(50),
        retry_backoff: Duration::from_millis(10),
        max_retry_backoff: Duration::from_millis(50),
        ..RelayOptions::default()
    }
}

async fn append(store: &PostgresStore, stream: &str, types: &[&str], metadata: EventMetadata) {
    let id = StreamId::new("item", stream).expect("stream id");
    let events = types
        .iter()
        .map(|t| NewEvent::new(*t, 1, json!({ "type": t }), metadata.clone()))
        .collect();
    store
        .append(&id, ExpectedVersion::Any, events)
        .await
        .expect("append");
}

async fn head(store: &PostgresStore) -> FeedPosition {
    store.head_position().await.expect("head").expect("events")
}

/// Waits until the relay's status satisfies `done`.
async fn wait_for(
    status: &mut watch::Receiver<RelayStatus>,
    done: impl FnMut(&RelayStatus) -> bool,
) {
    tokio::time::timeout(DEADLINE, status.wait_for(done))
        .await
        .expect("the relay got there in time")
        .expect("the relay is alive");
}

async fn stored_checkpoint(store: &PostgresStore, relay: &str) -> Option<String> {
    sqlx::query_scalar(
        "SELECT transaction_id::text || '/' || position FROM eventsource.checkpoints WHERE name = $1",
    )
    .bind(checkpoint_name(relay))
    .fetch_optional(store.pool())
    .await
    .expect("read the checkpoint")
}

#[tokio::test]
async fn every_event_of_concurrent_writers_reaches_the_broker_in_stream_order() {
    let (db, store) = fresh().await;
    let broker = Scripted::default();
    let relay = Arc::new(
        Relay::new(store.clone(), "all", broker.clone(), PublishAsIs).with_options(options()),
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    let appended = write_concurrently(&store, "item", 8, 4, 25)
        .await
        .expect("write");
    assert_eq!(appended, 8 * 4 * 25);
    let target = head(&store).await;
    wait_for(&mut relay.status(), |s| s.position >= target).await;
    shutdown.cancel();
    running.await.expect("join").expect("relay ran");

    let stored = stored_messages(&store).await.expect("stored");
    let report = check_delivery(&stored, &broker.received());
    assert!(report.is_complete_and_ordered(), "{report:?}");
    assert_eq!(report.duplicates, 0);
    assert_eq!(broker.received().len(), appended);
    assert_eq!(
        stored_checkpoint(&store, "all").await,
        Some(target.to_string()),
        "the checkpoint is at the last acknowledged event"
    );
    assert_eq!(relay.status().borrow().state, RunnerState::Stopped);
    assert_eq!(relay.status().borrow().published, appended as u64);
    db.drop_database().await.expect("drop");
}

#[tokio::test]
async fn a_lost_confirm_resends_its_wave_and_never_sends_a_streams_next_event_first() {
    let (db, store) = fresh().await;
    let broker = Scripted::default();
    // Stream a's second event is not acknowledged the first time, while b's is.
    broker
        .0
        .lock()
        .unwrap()
        .lose_once
        .insert(("item-a".into(), 2));
    append(
        &store,
        "a",
        &["One", "Two", "Three"],
        EventMetadata::default(),
    )
    .await;
    append(
        &store,
        "b",
        &["One", "Two", "Three"],
        EventMetadata::default(),
    )
    .await;
    let relay =
        Relay::new(store.clone(), "resend", broker.clone(), PublishAsIs).with_options(options());
    let shutdown = CancellationToken::new();
    let target = head(&store).await;
    let mut status = relay.status();
    let run = relay.run(shutdown.clone());
    let wait = async {
        wait_for(&mut status, |s| s.position >= target).await;
        shutdown.cancel();
    };
    let (result, ()) = tokio::join!(run, wait);
    result.expect("relay ran");

    let sent: Vec<(String, u64, bool)> = broker
        .sent()
        .into_iter()
        .map(|(m, acked)| (m.stream, m.stream_version, acked))
        .collect();
    // Nothing of stream a after version 2 was sent before version 2 was acknowledged.
    let a: Vec<(u64, bool)> = sent
        .iter()
        .filter(|(s, ..)| s == "item-a")
        .map(|(_, v, acked)| (*v, *acked))
        .collect();
    assert_eq!(a, vec![(1, true), (2, false), (2, true), (3, true)]);
    // b's second event was acknowledged, then resent with its wave: a duplicate, in order.
    let b: Vec<u64> = sent
        .iter()
        .filter(|(s, ..)| s == "item-b")
        .map(|(_, v, _)| *v)
        .collect();
    assert_eq!(b, vec![1, 2, 2, 3]);
    let report = check_delivery(
        &stored_messages(&store).await.expect("stored"),
        &broker.received(),
    );
    assert!(report.is_complete_and_ordered(), "{report:?}");
    assert_eq!(report.duplicates, 1);
    assert_eq!(
        relay.status().borrow().published,
        6,
        "each message once, though the broker acknowledged one of them twice"
    );
    db.drop_database().await.expect("drop");
}

#[tokio::test]
async fn while_the_broker_is_down_the_checkpoint_stays_and_the_outage_is_reported() {
    let (db, store) = fresh().await;
    let broker = Scripted::default();
    broker.0.lock().unwrap().down_for_calls = usize::MAX;
    append(&store, "a", &["One"], EventMetadata::default()).await;
    let relay = Arc::new(
        Relay::new(store.clone(), "down", broker.clone(), PublishAsIs).with_options(options()),
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    wait_for(&mut relay.status(), |s| s.broker_outage.is_some()).await;
    assert_eq!(stored_checkpoint(&store, "down").await, None);
    let lag = relay.lag().await.expect("lag");
    assert_eq!(lag.events_behind, 1);
    // The broker comes back: the event goes out and the checkpoint moves.
    broker.0.lock().unwrap().down_for_calls = 0;
    let target = head(&store).await;
    wait_for(&mut relay.status(), |s| {
        s.position >= target && s.broker_outage.is_none()
    })
    .await;
    assert_eq!(relay.lag().await.expect("lag").events_behind, 0);
    shutdown.cancel();
    running.await.expect("join").expect("relay ran");
    assert_eq!(broker.received().len(), 1);
    db.drop_database().await.expect("drop");
}

#[tokio::test]
async fn a_refused_message_is_parked_and_the_relay_goes_on() {
    let (db, store) = fresh().await;
    let broker = Scripted::default();
    append(
        &store,
        "a",
        &["One", "Poison", "Three"],
        EventMetadata::default(),
    )
    .await;
    let relay =
        Relay::new(store.clone(), "park", broker.clone(), PublishAsIs).with_options(options());
    let shutdown = CancellationToken::new();
    let target = head(&store).await;
    let mut status = relay.status();
    let (result, ()) = tokio::join!(relay.run(shutdown.clone()), async {
        wait_for(&mut status, |s| s.position >= target).await;
        shutdown.cancel();
    });
    result.expect("relay ran");
    let types: Vec<String> = broker
        .sent()
        .into_iter()
        .map(|(m, _)| m.event_type)
        .collect();
    assert_eq!(types, ["One", "Three"]);
    let parked = dead_letters::list(&store, "park")
        .await
        .expect("dead letters");
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].event_type, "Poison");
    assert_eq!(parked[0].version.get(), 2);
    assert_eq!(parked[0].destination, "test/item.Poison");
    assert!(
        parked[0].error.contains("message too large"),
        "{}",
        parked[0].error
    );
    assert_eq!(relay.status().borrow().parked, 1);
    db.drop_database().await.expect("drop");
}

#[tokio::test]
async fn a_refused_message_stops_the_relay_when_asked_and_the_checkpoint_stays_before_it() {
    let (db, store) = fresh().await;
    let broker = Scripted::default();
    append(
        &store,
        "a",
        &["One", "Poison", "Three"],
        EventMetadata::default(),
    )
    .await;
    let relay =
        Relay::new(store.clone(), "stop", broker.clone(), PublishAsIs).with_options(RelayOptions {
            on_refusal: OnRefusal::Stop,
            ..options()
        });
    let error = tokio::time::timeout(DEADLINE, relay.run(CancellationToken::new()))
        .await
        .expect("the relay stops in time")
        .expect_err("the relay stops on the refusal");
    match &error {
        RelayError::Refused {
            stream,
            version,
            reason,
            ..
        } => {
            assert_eq!(stream.id(), "a");
            assert_eq!(version.get(), 2);
            assert!(reason.contains("message too large"));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(relay.status().borrow().state, RunnerState::Failed);
    assert_eq!(
        stored_checkpoint(&store, "stop").await,
        None,
        "no batch completed"
    );
    assert_eq!(
        dead_letters::list(&store, "stop")
            .await
            .expect("list")
            .len(),
        1
    );
    // Run again: the same refusal parks nothing twice and stops again.
    let again = relay.run(CancellationToken::new()).await;
    assert!(
        matches!(again, Err(RelayError::Refused { .. })),
        "{again:?}"
    );
    assert_eq!(
        dead_letters::list(&store, "stop")
            .await
            .expect("list")
            .len(),
        1
    );
    db.drop_database().await.expect("drop");
}

#[derive(Debug, PartialEq)]
enum ItemEvent {
    One,
    Two,
}

impl DomainEvent for ItemEvent {
    const EVENT_TYPES: &'static [&'static str] = &["One", "Two"];

    fn event_type(&self) -> &'static str {
        match self {
            Self::One => "One",
            Self::Two => "Two",
        }
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn encode(&self) -> Result<serde_json::Value, EncodeError> {
        Ok(json!({ "type": self.event_type() }))
    }

    fn decode(
        event_type: &str,
        schema_version: u32,
        _: &serde_json::Value,
    ) -> Result<Self, DecodeError> {
        if schema_version != 1 {
            return Err(DecodeError::UnsupportedVersion {
                event_type: event_type.to_owned(),
                schema_version,
                supported: 1,
            });
        }
        match event_type {
            "One" => Ok(Self::One),
            "Two" => Ok(Self::Two),
            other => Err(DecodeError::UnknownType {
                event_type: other.to_owned(),
            }),
        }
    }
}

/// Publishes `Two` only, as the public `ItemDoubled` version 3.
struct Doubled;

impl Mapping for Doubled {
    type Event = Envelope<ItemEvent>;

    fn map(&self, event: &Envelope<ItemEvent>) -> Result<Option<IntegrationEvent>, BoxError> {
        Ok(match event.event {
            ItemEvent::Two => Some(IntegrationEvent::new(
                "ItemDoubled",
                3,
                &json!({ "item": event.stream_id.id() }),
            )?),
            ItemEvent::One => None,
        })
    }
}

#[tokio::test]
async fn a_mapping_chooses_what_is_published_and_every_message_carries_the_envelope() {
    let (db, store) = fresh().await;
    let broker = Scripted::default();
    let correlation = uuid::Uuid::now_v7();
    let causation = uuid::Uuid::now_v7();
    let metadata = EventMetadata {
        correlation_id: Some(correlation),
        causation_id: Some(causation),
        actor: Some("alice".into()),
        headers: BTreeMap::from([(
            "traceparent".to_owned(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        )]),
    };
    append(&store, "x", &["One", "Two", "Unrelated"], metadata).await;
    let relay =
        Relay::new(store.clone(), "mapped", broker.clone(), Doubled).with_options(options());
    let shutdown = CancellationToken::new();
    let target = head(&store).await;
    let mut status = relay.status();
    let (result, ()) = tokio::join!(relay.run(shutdown.clone()), async {
        wait_for(&mut status, |s| s.position >= target).await;
        shutdown.cancel();
    });
    result.expect("relay ran");
    let sent = broker.sent();
    assert_eq!(sent.len(), 1, "only `Two` is published");
    let message = &sent[0].0;
    assert_eq!(message.routing_key(), "item.ItemDoubled");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&message.payload).unwrap(),
        json!({ "item": "x" })
    );
    let headers: BTreeMap<&str, String> = message.headers().into_iter().collect();
    let stored: uuid::Uuid =
        sqlx::query_scalar("SELECT event_id FROM eventsource.events WHERE version = 2")
            .fetch_one(store.pool())
            .await
            .expect("event id");
    let position: String = sqlx::query_scalar(
        "SELECT transaction_id::text || '/' || position FROM eventsource.events WHERE version = 2",
    )
    .fetch_one(store.pool())
    .await
    .expect("position");
    assert_eq!(headers[header::MESSAGE_ID], stored.to_string());
    assert_eq!(headers[header::EVENT_TYPE], "ItemDoubled");
    assert_eq!(headers[header::EVENT_VERSION], "3");
    assert_eq!(headers[header::STREAM], "item-x");
    assert_eq!(headers[header::CATEGORY], "item");
    assert_eq!(headers[header::STREAM_VERSION], "2");
    assert_eq!(headers[header::FEED_POSITION], position);
    assert_eq!(headers[header::CORRELATION_ID], correlation.to_string());
    assert_eq!(headers[header::CAUSATION_ID], causation.to_string());
    assert_eq!(headers[header::ACTOR], "alice");
    assert_eq!(
        headers[header::TRACEPARENT],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert!(headers[header::RECORDED_AT].ends_with('Z'));
    db.drop_database().await.expect("drop");
}

#[tokio::test]
async fn one_relay_of_a_name_is_active_and_a_standby_takes_over_from_the_checkpoint() {
    let (db, store) = fresh().await;
    let first_broker = Scripted::default();
    let second_broker = Scripted::default();
    let first = Arc::new(
        Relay::new(store.clone(), "shared", first_broker.clone(), PublishAsIs)
            .with_options(options()),
    );
    let second = Arc::new(
        Relay::new(store.clone(), "shared", second_broker.clone(), PublishAsIs)
            .with_options(options()),
    );
    let (stop_first, stop_second) = (CancellationToken::new(), CancellationToken::new());
    let first_run = tokio::spawn({
        let (relay, shutdown) = (first.clone(), stop_first.clone());
        async move { relay.run(shutdown).await }
    });
    wait_for(&mut first.status(), |s| s.activations == 1).await;
    let second_run = tokio::spawn({
        let (relay, shutdown) = (second.clone(), stop_second.clone());
        async move { relay.run(shutdown).await }
    });
    wait_for(&mut second.status(), |s| s.state == RunnerState::Standby).await;
    append(&store, "a", &["One", "Two"], EventMetadata::default()).await;
    let target = head(&store).await;
    wait_for(&mut first.status(), |s| s.position >= target).await;
    stop_first.cancel();
    first_run.await.expect("join").expect("first ran");
    wait_for(&mut second.status(), |s| s.activations == 1).await;
    append(&store, "a", &["Three"], EventMetadata::default()).await;
    let target = head(&store).await;
    wait_for(&mut second.status(), |s| s.position >= target).await;
    stop_second.cancel();
    second_run.await.expect("join").expect("second ran");

    assert_eq!(first_broker.received().len(), 2);
    assert_eq!(
        second_broker.received().len(),
        1,
        "the standby starts from the checkpoint"
    );
    let mut all = first_broker.received();
    all.extend(second_broker.received());
    let report = check_delivery(&stored_messages(&store).await.expect("stored"), &all);
    assert!(report.is_complete_and_ordered(), "{report:?}");
    assert_eq!(report.duplicates, 0);
    db.drop_database().await.expect("drop");
}

#[tokio::test]
async fn an_event_the_mapping_cannot_decode_is_parked_and_the_events_around_it_go_out() {
    let (db, store) = fresh().await;
    let broker = Scripted::default();
    let id = StreamId::new("item", "x").expect("stream id");
    let event =
        |schema_version| NewEvent::new("Two", schema_version, json!({}), EventMetadata::default());
    // Version 2 of the stream is stored under a schema version the code cannot read.
    store
        .append(
            &id,
            ExpectedVersion::NoStream,
            vec![event(1), event(2), event(1), event(1)],
        )
        .await
        .expect("append");
    let relay =
        Relay::new(store.clone(), "undecodable", broker.clone(), Doubled).with_options(options());
    let shutdown = CancellationToken::new();
    let target = head(&store).await;
    let mut status = relay.status();
    let (result, ()) = tokio::join!(relay.run(shutdown.clone()), async {
        wait_for(&mut status, |s| s.position >= target).await;
        shutdown.cancel();
    });
    result.expect("relay ran");
    let versions: Vec<u64> = broker
        .sent()
        .into_iter()
        .map(|(m, _)| m.stream_version)
        .collect();
    assert_eq!(
        versions,
        [1, 3, 4],
        "the events around the undecodable one, once each, in order"
    );
    let parked = dead_letters::list(&store, "undecodable")
        .await
        .expect("dead letters");
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].version.get(), 2);
    assert_eq!(parked[0].destination, "mapping");
    assert!(
        parked[0].error.contains("schema version 2"),
        "{}",
        parked[0].error
    );
    assert_eq!(relay.status().borrow().parked, 1);
    db.drop_database().await.expect("drop");
}
