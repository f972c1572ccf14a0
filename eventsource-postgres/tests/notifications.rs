//! Wake-up notifications: every way events get committed wakes subscribers that never poll.
//!
//! This test has its own binary: a subscriber that never polls relies on notifications alone,
//! so no other test may hold the server's transaction horizon back meanwhile (a woken read
//! that finds the new events held back waits for the next wake-up, which polling provides).

use std::time::Duration;

use eventsource_core::{
    EventAppender, EventMetadata, ExpectedVersion, FeedOptions, FeedPosition, NewEvent,
    RecordedEvent, StreamId, Subscribe, Subscription,
};
use eventsource_postgres::testing::TestDatabase;
use eventsource_postgres::PostgresStore;
use futures::StreamExt;
use serde_json::json;

fn stream() -> StreamId {
    StreamId::new("notify", "1").expect("valid stream id")
}

fn event(n: u64) -> NewEvent {
    NewEvent::new("Happened", 1, json!({ "n": n }), EventMetadata::default())
}

async fn next_event(subscription: &mut Subscription) -> RecordedEvent {
    tokio::time::timeout(Duration::from_secs(60), subscription.next())
        .await
        .expect("a notification wakes the subscriber (it never polls)")
        .expect("the subscription does not end")
        .expect("the subscription does not fail")
}

/// A subscriber of another store (another process, in effect) that polls once an hour receives
/// events appended by the store (notified after commit), appended inside a caller's
/// transaction (notified by the trigger at commit) and inserted with plain SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_commit_wakes_a_subscriber_that_never_polls() {
    let db = TestDatabase::create().await.expect("test database");
    let writer = db.store().await.expect("migrated store");
    let reader = PostgresStore::new(db.pool(4).await.expect("reader pool"));
    let options = FeedOptions::default().with_poll_interval(Duration::from_secs(3600));
    let mut subscription = reader.subscribe(FeedPosition::START, options);

    // The first event also proves the listener is up: it is read at the latest when the
    // listener's connect wakes the subscription.
    writer
        .append(&stream(), ExpectedVersion::Any, vec![event(1)])
        .await
        .expect("append");
    assert_eq!(next_event(&mut subscription).await.payload["n"], 1);
    assert!(reader.listener_stats().connections() >= 1);

    writer
        .append(&stream(), ExpectedVersion::Any, vec![event(2)])
        .await
        .expect("autocommit append");
    assert_eq!(next_event(&mut subscription).await.payload["n"], 2);

    let mut tx = writer.pool().begin().await.expect("begin");
    writer
        .append_in(&mut tx, &stream(), ExpectedVersion::Any, vec![event(3)])
        .await
        .expect("append in a transaction");
    tx.commit().await.expect("commit");
    assert_eq!(next_event(&mut subscription).await.payload["n"], 3);

    sqlx::query(
        "INSERT INTO eventsource.events (event_id, category, stream_id, version, event_type, schema_version, payload)
         VALUES (gen_random_uuid(), 'notify', '1', 4, 'Happened', 1, '{\"n\": 4}')",
    )
    .execute(writer.pool())
    .await
    .expect("plain insert");
    assert_eq!(next_event(&mut subscription).await.payload["n"], 4);
    assert!(reader.listener_stats().notifications() >= 3);
}
