//! Bad input at the domain level, on both stores, and rows that older versions of the store
//! accepted, on PostgreSQL: the store never accepts what it cannot read back, and reads back
//! whatever it once accepted.
//!
//! The store-level cases (limits on payload depth, metadata, type names, append bytes; NUL
//! characters; batch bounds) are in the contract suite, run on both stores.

use async_trait::async_trait;
use eventsource::postgres::testing::TestDatabase;
use eventsource::postgres::PostgresStore;
use eventsource::{
    Aggregate, BatchSize, CommandContext, CommandError, DomainEvent, EncodeError, EventAppender,
    EventMetadata, EventStore, ExpectedVersion, FeedFilter, FeedOptions, FeedPosition, FeedReader,
    InMemoryStore, NewEvent, Repository, StreamId, StreamReader, Subscribe,
};
use futures::TryStreamExt;
use serde_json::json;

#[derive(Debug, Clone, PartialEq, DomainEvent)]
enum ThermometerEvent {
    #[event(name = "TemperatureMeasured")]
    Measured { celsius: f64 },
}

#[derive(Debug, Default)]
struct Thermometer {
    readings: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("never refused")]
struct Never;

#[async_trait]
impl Aggregate for Thermometer {
    const CATEGORY: &'static str = "thermometer";
    type Event = ThermometerEvent;
    type Command = f64;
    type Error = Never;
    type Services = ();

    fn apply(&mut self, _: &ThermometerEvent) {
        self.readings += 1;
    }

    async fn handle(&self, celsius: &f64, _: &()) -> Result<Vec<ThermometerEvent>, Never> {
        Ok(vec![ThermometerEvent::Measured { celsius: *celsius }])
    }
}

/// NaN and infinities encode as JSON `null`, which does not decode back into an `f64`: such an
/// event is refused before anything is stored, naming its type, and the stream stays loadable.
async fn floats_that_do_not_read_back_are_refused<S: EventStore + Clone>(store: S) {
    let repository = Repository::<Thermometer, _>::new(store.clone());
    let id = Thermometer::stream_id("t-1").expect("valid id");
    let ctx = CommandContext::new();
    repository
        .execute(&id, 21.5, &ctx)
        .await
        .expect("a finite reading is stored");
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let refused = repository.execute(&id, bad, &ctx).await;
        match refused {
            Err(CommandError::Encode(EncodeError::NotReadBack { event_type, .. })) => {
                assert_eq!(event_type, "TemperatureMeasured")
            }
            other => panic!("{bad} should be refused as NotReadBack, got {other:?}"),
        }
    }
    let loaded = repository.load(&id).await.expect("the stream still loads");
    assert_eq!((loaded.state.readings, loaded.version.get()), (1, 1));
}

#[tokio::test]
async fn floats_that_do_not_read_back_are_refused_in_memory() {
    floats_that_do_not_read_back_are_refused(InMemoryStore::new()).await;
}

#[tokio::test]
async fn floats_that_do_not_read_back_are_refused_on_postgres() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    floats_that_do_not_read_back_are_refused(store.clone()).await;
    store.close().await;
    db.drop_database().await.expect("drop");
}

/// A JSON document nested `depth` levels deep.
fn nested(depth: usize) -> serde_json::Value {
    let mut value = json!("leaf");
    for _ in 0..depth {
        value = json!({ "in": value });
    }
    value
}

/// Stores an event with `payload` the way an older store version could: by plain SQL.
async fn insert_by_sql(store: &PostgresStore, stream: &StreamId, version: i64, payload: &str) {
    sqlx::query(
        "INSERT INTO eventsource.events
             (event_id, category, stream_id, version, event_type, schema_version, payload)
         VALUES ($1, $2, $3, $4, 'Deep', 1, $5::jsonb)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(stream.category().as_str())
    .bind(stream.id())
    .bind(version)
    .bind(payload)
    .execute(store.pool())
    .await
    .expect("insert a legacy row");
}

/// A payload nested 200 levels deep, stored before appends limited nesting, used to stop every
/// read of its stream and of the feed ("recursion limit exceeded"). Every reader now reads it,
/// and the events after it, while new appends of such a payload are refused.
#[tokio::test]
async fn rows_nested_deeper_than_serde_json_reads_are_read_back() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let deep = StreamId::new("legacy", "deep").expect("id");
    insert_by_sql(&store, &deep, 1, &nested(200).to_string()).await;
    let after = NewEvent::new("After", 1, json!({ "n": 2 }), EventMetadata::default());
    store
        .append(
            &deep,
            ExpectedVersion::Exact(eventsource::StreamVersion::new(1).expect("v")),
            vec![after],
        )
        .await
        .expect("append after the legacy row");

    let stream: Vec<_> = store
        .read_stream(&deep, eventsource::StreamVersion::INITIAL)
        .try_collect()
        .await
        .expect("the stream reads");
    assert_eq!(stream.len(), 2);
    assert_eq!(stream[0].payload, nested(200));

    let batch = store
        .read_feed_batch(
            FeedPosition::START,
            BatchSize::events(10),
            &FeedFilter::all(),
        )
        .await
        .expect("the feed reads");
    assert_eq!(batch.events.len(), 2, "the feed goes past the deep event");

    let mut subscription = store.subscribe(FeedPosition::START, FeedOptions::default());
    for expected in ["Deep", "After"] {
        let event = subscription
            .try_next()
            .await
            .expect("the subscription reads")
            .expect("an event");
        assert_eq!(event.event_type, expected);
    }

    let refused = store
        .append(
            &deep,
            ExpectedVersion::Any,
            vec![NewEvent::new(
                "Deep",
                1,
                nested(200),
                EventMetadata::default(),
            )],
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(eventsource::StoreError::Invalid(
                eventsource::ValidationError::PayloadTooDeep { limit: 64, .. }
            ))
        ),
        "new deep payloads are refused, naming the default limit: {refused:?}"
    );
    drop(subscription);
    store.close().await;
    db.drop_database().await.expect("drop");
}

/// A row nested deeper than any reader holds safely is reported as corrupt, naming its stream
/// and version, rather than crashing the process.
#[tokio::test]
async fn rows_nested_past_the_read_limit_are_named() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let id = StreamId::new("legacy", "abyss").expect("id");
    let depth = eventsource::store::json_nesting::MAX_READ_DEPTH + 1;
    let text = "[".repeat(depth) + &"]".repeat(depth);
    insert_by_sql(&store, &id, 1, &text).await;
    let read: Result<Vec<_>, _> = store
        .read_stream(&id, eventsource::StreamVersion::INITIAL)
        .try_collect()
        .await;
    let error = read.expect_err("too deep to read").to_string();
    assert!(
        error.contains("version 1 of legacy-abyss") && error.contains("1001 levels"),
        "{error}"
    );
    store.close().await;
    db.drop_database().await.expect("drop");
}
