//! The head of the feed: the newest event by transaction id, compared as numbers.

use eventsource_core::{
    EventAppender, EventMetadata, ExpectedVersion, FeedPosition, NewEvent, StreamId,
};
use eventsource_postgres::testing::TestDatabase;
use eventsource_postgres::PostgresStore;
use serde_json::json;

fn stream() -> StreamId {
    StreamId::new("head", "1").expect("valid stream id")
}

/// Appends versions 1 and 2 of one stream in two transactions, then stamps them with the
/// transaction ids 9 and 10 through the administrative path: ids whose text forms sort the
/// other way round ("9" > "10").
async fn two_events_at_transactions_9_and_10() -> (TestDatabase, PostgresStore) {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("migrated store");
    for n in [1, 2] {
        let event = NewEvent::new("Happened", 1, json!({ "n": n }), EventMetadata::default());
        store
            .append(&stream(), ExpectedVersion::Any, vec![event])
            .await
            .expect("append");
    }
    let mut admin = store.pool().begin().await.expect("begin");
    sqlx::query("SET LOCAL eventsource.allow_event_changes = 'on'")
        .execute(&mut *admin)
        .await
        .expect("opt in to changing events");
    for (version, transaction) in [(1_i64, "9"), (2, "10")] {
        let changed = sqlx::query(
            "UPDATE eventsource.events SET transaction_id = $1::text::xid8 WHERE version = $2",
        )
        .bind(transaction)
        .bind(version)
        .execute(&mut *admin)
        .await
        .expect("restamp an event")
        .rows_affected();
        assert_eq!(changed, 1);
    }
    admin.commit().await.expect("commit");
    (db, store)
}

/// The stored position of the event at `version`.
async fn position_of(store: &PostgresStore, version: i64) -> FeedPosition {
    let (transaction, position): (String, i64) = sqlx::query_as(
        "SELECT transaction_id::text, position FROM eventsource.events WHERE version = $1",
    )
    .bind(version)
    .fetch_one(store.pool())
    .await
    .expect("read a stored position");
    FeedPosition::new(
        transaction.parse().expect("a transaction id"),
        u64::try_from(position).expect("a stored position"),
    )
}

/// Transaction ids of different digit counts: the head is the event of transaction 10, not
/// the one of transaction 9 (which a comparison of their text would pick).
#[tokio::test]
async fn head_compares_transaction_ids_as_numbers() {
    let (db, store) = two_events_at_transactions_9_and_10().await;
    let newest = position_of(&store, 2).await;
    assert_eq!(newest.transaction_id, 10);
    assert_eq!(store.head_position().await.expect("head"), Some(newest));
    store.close().await;
    db.drop_database().await.expect("drop database");
}
