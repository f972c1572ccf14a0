//! The store contract suite: what every [`EventStore`] must do, checked the same way for each.
//!
//! Each check takes a [`StoreFactory`] and asks it for fresh, empty stores. Checks panic (they
//! are tests) with a message naming the broken rule.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use uuid::Uuid;

use crate::error::{StoreError, ValidationError};
use crate::event::{NewEvent, RecordedEvent};
use crate::event_store::{EventAppender, EventStore, FeedReader, StreamReader};
use crate::expected_version::ExpectedVersion;
use crate::feed::{read_feed, FeedFilter};
use crate::limits::Limits;
use crate::metadata::EventMetadata;
use crate::position::FeedPosition;
use crate::repository::{CommandError, Repository};
use crate::retry_policy::RetryPolicy;
use crate::stream_id::{Category, StreamId};
use crate::subscription::{Subscribe, SubscriptionOptions};
use crate::testing::counter::{Counter, Increment};
use crate::version::StreamVersion;
use crate::{Aggregate, CommandContext};

/// Hands out empty stores for the contract checks.
#[async_trait]
pub trait StoreFactory: Send + Sync {
    /// The store type under test.
    type Store: EventStore + Subscribe;
    /// A new, empty store enforcing `limits`.
    async fn store(&self, limits: Limits) -> Self::Store;
}

fn stream(id: &str) -> StreamId {
    StreamId::new("contract", id).expect("valid test stream id")
}

fn version(n: u64) -> StreamVersion {
    StreamVersion::new(n).expect("valid test version")
}

fn event(kind: &str, n: u64) -> NewEvent {
    NewEvent::new(kind, 1, json!({ "n": n }), EventMetadata::default())
}

async fn read_all<S: EventStore>(store: &S, id: &StreamId) -> Vec<RecordedEvent> {
    store
        .read_stream(id, StreamVersion::FIRST)
        .try_collect()
        .await
        .expect("read stream")
}

/// Reads the feed from the start until `count` events passed `filter`.
///
/// A store's feed may hold back events behind a transaction still running elsewhere on the
/// server (another test's); they arrive once it ends, so the read repeats until they are there,
/// failing after a minute.
async fn read_whole_feed<S: EventStore>(
    store: &S,
    filter: FeedFilter,
    count: usize,
) -> Vec<RecordedEvent> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut after = FeedPosition::START;
    let mut events = Vec::new();
    while events.len() < count {
        let batch: Vec<RecordedEvent> = read_feed(store, after, 7, filter.clone())
            .try_collect()
            .await
            .expect("read feed");
        if let Some(last) = batch.last() {
            after = last.position;
        }
        events.extend(batch);
        if events.len() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "the feed delivered {} of {count} events within a minute",
                events.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    events
}

fn expect_conflict<T: std::fmt::Debug>(
    result: Result<T, StoreError>,
    id: &StreamId,
    expected: ExpectedVersion,
    actual: u64,
) {
    match result {
        Err(StoreError::Conflict(c)) => {
            assert_eq!(c.stream, *id, "conflict names the stream");
            assert_eq!(c.expected, expected, "conflict names the expectation");
            assert_eq!(
                c.actual,
                version(actual),
                "conflict names the actual version"
            );
        }
        other => panic!("expected a conflict ({expected} vs {actual}), got {other:?}"),
    }
}

/// Every `ExpectedVersion` case, on new and existing streams; a refused append stores nothing.
pub async fn expected_versions<F: StoreFactory>(factory: &F) {
    let store = factory.store(Limits::default()).await;
    let a = stream("a");

    // NoStream on a new stream, then on an existing one.
    let r = store
        .append(&a, ExpectedVersion::NoStream, vec![event("E", 1)])
        .await
        .expect("NoStream on a new stream");
    assert_eq!(r.stream_version, version(1));
    assert_eq!(r.positions.len(), 1);
    assert!(!r.already_stored);
    expect_conflict(
        store
            .append(&a, ExpectedVersion::NoStream, vec![event("E", 2)])
            .await,
        &a,
        ExpectedVersion::NoStream,
        1,
    );

    // Exact: the current version passes, anything else conflicts, without leaving a gap.
    let r = store
        .append(
            &a,
            ExpectedVersion::Exact(version(1)),
            vec![event("E", 2), event("E", 3)],
        )
        .await
        .expect("Exact(current)");
    assert_eq!(r.stream_version, version(3));
    for stale in [0, 1, 2, 5] {
        expect_conflict(
            store
                .append(
                    &a,
                    ExpectedVersion::Exact(version(stale)),
                    vec![event("E", 9)],
                )
                .await,
            &a,
            ExpectedVersion::Exact(version(stale)),
            3,
        );
    }

    // StreamExists.
    let b = stream("b");
    expect_conflict(
        store
            .append(&b, ExpectedVersion::StreamExists, vec![event("E", 1)])
            .await,
        &b,
        ExpectedVersion::StreamExists,
        0,
    );
    store
        .append(&a, ExpectedVersion::StreamExists, vec![event("E", 4)])
        .await
        .expect("StreamExists on an existing stream");

    // Any, on new and existing streams.
    store
        .append(&b, ExpectedVersion::Any, vec![event("E", 1)])
        .await
        .expect("Any on a new stream");
    let r = store
        .append(&a, ExpectedVersion::Any, vec![event("E", 5)])
        .await
        .expect("Any on an existing stream");
    assert_eq!(r.stream_version, version(5));

    // Exact(0) is NoStream.
    let c = stream("c");
    store
        .append(
            &c,
            ExpectedVersion::Exact(StreamVersion::INITIAL),
            vec![event("E", 1)],
        )
        .await
        .expect("Exact(0) on a new stream");

    // An empty append checks the expectation and stores nothing.
    let r = store
        .append(&a, ExpectedVersion::Exact(version(5)), vec![])
        .await
        .expect("empty append at the current version");
    assert_eq!(r.stream_version, version(5));
    assert!(r.positions.is_empty());
    expect_conflict(
        store
            .append(&a, ExpectedVersion::Exact(version(4)), vec![])
            .await,
        &a,
        ExpectedVersion::Exact(version(4)),
        5,
    );

    // Nothing of a refused append was stored: versions 1..=5, payloads 1..=5.
    let events = read_all(&store, &a).await;
    let versions: Vec<u64> = events.iter().map(|e| e.version.get()).collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    let payloads: Vec<u64> = events
        .iter()
        .map(|e| e.payload["n"].as_u64().expect("payload n"))
        .collect();
    assert_eq!(payloads, vec![1, 2, 3, 4, 5]);
    assert_eq!(read_all(&store, &b).await.len(), 1);
}

/// 16 tasks race 50 increments each on one counter through the repository: every increment
/// lands exactly once as versions 1..=800, and every retry was caused by a typed conflict.
pub async fn repository_race<F: StoreFactory>(factory: &F) {
    const TASKS: u32 = 16;
    const PER_TASK: u32 = 50;
    let store = factory.store(Limits::default()).await;
    let repository = Arc::new(
        Repository::<Counter, _>::new(store.clone()).with_retry_policy(RetryPolicy {
            max_attempts: 10_000,
            base_delay: std::time::Duration::from_micros(200),
            max_delay: std::time::Duration::from_millis(20),
        }),
    );
    let id = Counter::stream_id("raced").expect("valid id");
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let repository = repository.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0usize;
            for _ in 0..PER_TASK {
                let ctx = CommandContext::new().with_header("task", task.to_string());
                let done = repository
                    .execute(&id, Increment(1), &ctx)
                    .await
                    .expect("every increment eventually lands");
                assert_eq!(
                    done.conflicts.len() as u32,
                    done.attempts - 1,
                    "each retry follows exactly one conflict"
                );
                for c in &done.conflicts {
                    assert_eq!(c.stream, id);
                    assert!(
                        matches!(c.expected, ExpectedVersion::Exact(v) if v < c.actual),
                        "a loser saw a newer version: {c:?}"
                    );
                }
                conflicts += done.conflicts.len();
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.expect("task finished");
    }
    let events = read_all(&store, &id).await;
    let versions: Vec<u64> = events.iter().map(|e| e.version.get()).collect();
    let expected: Vec<u64> = (1..=u64::from(TASKS * PER_TASK)).collect();
    assert_eq!(
        versions, expected,
        "versions 1..=800 with no gap and no duplicate"
    );
    let ids: HashSet<Uuid> = events.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), events.len(), "no event stored twice");
    let loaded = repository.load(&id).await.expect("load");
    assert_eq!(loaded.state.value, u64::from(TASKS * PER_TASK));
    assert!(
        conflicts > 0,
        "16 writers on one stream must have collided at least once"
    );
}

/// Appending the same event ids again (a retry after a lost reply) succeeds without storing them
/// twice; reusing ids for other appends is refused.
pub async fn idempotent_append<F: StoreFactory>(factory: &F) {
    let store = factory.store(Limits::default()).await;
    let a = stream("a");
    let events = vec![event("E", 1), event("E", 2)];
    let first = store
        .append(&a, ExpectedVersion::NoStream, events.clone())
        .await
        .expect("first append");
    // The retry carries the same expectation, which no longer holds, and still succeeds.
    let retry = store
        .append(&a, ExpectedVersion::NoStream, events.clone())
        .await
        .expect("the retry succeeds");
    assert!(retry.already_stored);
    assert_eq!(retry.stream_version, first.stream_version);
    assert_eq!(retry.positions, first.positions);
    let retry_any = store
        .append(&a, ExpectedVersion::Any, events.clone())
        .await
        .expect("the retry with Any succeeds");
    assert!(retry_any.already_stored);
    assert_eq!(read_all(&store, &a).await.len(), 2, "nothing stored twice");

    // The same ids in another stream, or mixed with new ones, are refused.
    let b = stream("b");
    let err = store
        .append(&b, ExpectedVersion::Any, events.clone())
        .await
        .expect_err("ids reused in another stream");
    assert!(
        matches!(&err, StoreError::EventIdReused { stored_in, .. } if *stored_in == a),
        "{err:?}"
    );
    let mixed = vec![events[1].clone(), event("E", 3)];
    let err = store
        .append(&a, ExpectedVersion::Any, mixed)
        .await
        .expect_err("a stored id mixed with a new one");
    assert!(matches!(err, StoreError::EventIdReused { .. }), "{err:?}");
    let swapped = vec![events[1].clone(), events[0].clone()];
    let err = store
        .append(&a, ExpectedVersion::Any, swapped)
        .await
        .expect_err("stored ids in another order");
    assert!(matches!(err, StoreError::EventIdReused { .. }), "{err:?}");
    assert_eq!(read_all(&store, &a).await.len(), 2);
    assert!(read_all(&store, &b).await.is_empty());
}

/// Stream reads start at the version asked for; feed reads are bounded, ordered and complete.
pub async fn bounded_reads<F: StoreFactory>(factory: &F) {
    let store = factory.store(Limits::default()).await;
    let a = stream("a");
    let b = stream("b");
    for n in 1..=20u64 {
        let target = if n % 3 == 0 { &b } else { &a };
        store
            .append(target, ExpectedVersion::Any, vec![event("E", n)])
            .await
            .expect("append");
    }
    let from_five: Vec<u64> = store
        .read_stream(&a, version(5))
        .map_ok(|e| e.version.get())
        .try_collect()
        .await
        .expect("read from version 5");
    assert_eq!(from_five, (5..=14).collect::<Vec<_>>());
    assert!(read_all(&store, &stream("none")).await.is_empty());

    // Batches hold at most `limit` events and chain without gaps or repeats. (Events may wait
    // behind another transaction running on the same server; the loop waits for them.)
    let mut after = FeedPosition::START;
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let batch = store
            .read_feed_batch(after, 6, &FeedFilter::all())
            .await
            .expect("feed batch");
        assert!(batch.events.len() <= 6, "a batch is bounded by its limit");
        for e in &batch.events {
            assert!(e.position > after, "feed moves forward");
            after = e.position;
        }
        assert_eq!(batch.next, after);
        seen.extend(batch.events.iter().map(|e| e.payload["n"].as_u64()));
        if batch.reached_head && seen.len() >= 20 {
            break;
        }
        if batch.reached_head {
            assert!(
                std::time::Instant::now() < deadline,
                "feed stalled at {after}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    assert_eq!(
        seen,
        (1..=20).map(Some).collect::<Vec<_>>(),
        "feed in append order"
    );
    let err = store
        .read_feed_batch(FeedPosition::START, 0, &FeedFilter::all())
        .await
        .expect_err("a zero batch is refused");
    assert!(matches!(
        err,
        StoreError::Invalid(ValidationError::ZeroBatchSize)
    ));
}

/// Filters by category and type still advance the reader across events they drop.
pub async fn feed_filters<F: StoreFactory>(factory: &F) {
    let store = factory.store(Limits::default()).await;
    let order = StreamId::new("order", "1").expect("id");
    let user = StreamId::new("user", "1").expect("id");
    for n in 1..=30u64 {
        let (target, kind) = if n % 10 == 0 {
            (&order, "OrderShipped")
        } else if n % 2 == 0 {
            (&order, "OrderPlaced")
        } else {
            (&user, "UserSeen")
        };
        store
            .append(target, ExpectedVersion::Any, vec![event(kind, n)])
            .await
            .expect("append");
    }
    let orders = read_whole_feed(
        &store,
        FeedFilter::all().with_categories([Category::new("order").expect("category")]),
        15,
    )
    .await;
    assert_eq!(orders.len(), 15);
    assert!(orders.iter().all(|e| e.stream_id == order));
    let shipped = read_whole_feed(
        &store,
        FeedFilter::all().with_event_types(["OrderShipped"]),
        3,
    )
    .await;
    let ns: Vec<_> = shipped.iter().map(|e| e.payload["n"].as_u64()).collect();
    assert_eq!(ns, vec![Some(10), Some(20), Some(30)]);

    // A batch that examines only unwanted events returns none but moves past them.
    let filter = FeedFilter::all().with_event_types(["OrderShipped"]);
    let batch = store
        .read_feed_batch(FeedPosition::START, 5, &filter)
        .await
        .expect("batch");
    assert!(batch.events.is_empty());
    assert!(batch.next > FeedPosition::START, "the reader advanced");
    assert!(!batch.reached_head);
}

/// Unicode in payloads, metadata and ids, and large payloads, round-trip unchanged.
pub async fn unicode_and_large_payloads<F: StoreFactory>(factory: &F) {
    let store = factory.store(Limits::default()).await;
    let id = StreamId::new("order", "注文-🚀-Ωmega").expect("unicode id");
    let metadata = EventMetadata {
        correlation_id: Some(Uuid::now_v7()),
        causation_id: Some(Uuid::now_v7()),
        actor: Some("Zoë ☕".into()),
        headers: [("région".to_owned(), "Île-de-France".to_owned())].into(),
    };
    let text = "ünïcødé ✓ \u{1F600} \"quotes\" \\ backslash \n newline \u{7f}";
    let big = "x".repeat(900 * 1024);
    let events = vec![
        NewEvent::new(
            "Tëxt",
            1,
            json!({ "text": text, "キー": [1, 2.5, null, true] }),
            metadata.clone(),
        ),
        NewEvent::new("Big", 2, json!({ "blob": big }), metadata.clone()),
    ];
    store
        .append(&id, ExpectedVersion::NoStream, events.clone())
        .await
        .expect("append unicode and large events");
    let stored = read_all(&store, &id).await;
    assert_eq!(stored.len(), 2);
    for (stored, sent) in stored.iter().zip(&events) {
        assert_eq!(stored.stream_id, id);
        assert_eq!(stored.event_id, sent.event_id);
        assert_eq!(stored.event_type, sent.event_type);
        assert_eq!(stored.schema_version, sent.schema_version);
        assert_eq!(stored.payload, sent.payload);
        assert_eq!(stored.metadata, metadata);
    }
}

/// Bad input is refused with a typed error before it reaches storage.
pub async fn bad_input_refused<F: StoreFactory>(factory: &F) {
    let limits = Limits {
        max_payload_bytes: 1000,
        max_events_per_append: 5,
    };
    let store = factory.store(limits).await;
    let a = stream("a");

    assert_eq!(
        StreamId::new("order", ""),
        Err(ValidationError::EmptyStreamId)
    );
    assert!(matches!(
        StreamId::new("order", "x".repeat(256)),
        Err(ValidationError::StreamIdTooLong { .. })
    ));

    let big = NewEvent::new(
        "E",
        1,
        json!({ "blob": "x".repeat(1000) }),
        EventMetadata::default(),
    );
    let err = store
        .append(&a, ExpectedVersion::Any, vec![big])
        .await
        .expect_err("payload over the limit");
    assert!(
        matches!(
            err,
            StoreError::Invalid(ValidationError::PayloadTooLarge { limit: 1000, .. })
        ),
        "{err:?}"
    );

    let err = store
        .append(
            &a,
            ExpectedVersion::Any,
            (0..6).map(|n| event("E", n)).collect(),
        )
        .await
        .expect_err("too many events");
    assert!(matches!(
        err,
        StoreError::Invalid(ValidationError::TooManyEvents { .. })
    ));

    let err = store
        .append(
            &a,
            ExpectedVersion::Exact(StreamVersion::MAX),
            vec![event("E", 1)],
        )
        .await
        .expect_err("version overflow");
    assert!(matches!(
        err,
        StoreError::Invalid(ValidationError::VersionOverflow { .. })
    ));

    let mut zero = event("E", 1);
    zero.schema_version = 0;
    let err = store
        .append(&a, ExpectedVersion::Any, vec![zero])
        .await
        .expect_err("schema version 0");
    assert!(matches!(
        err,
        StoreError::Invalid(ValidationError::SchemaVersionOutOfRange { .. })
    ));

    let untyped = event("", 1);
    let err = store
        .append(&a, ExpectedVersion::Any, vec![untyped])
        .await
        .expect_err("empty type");
    assert!(matches!(
        err,
        StoreError::Invalid(ValidationError::EmptyEventType { .. })
    ));

    let twice = event("E", 1);
    let err = store
        .append(&a, ExpectedVersion::Any, vec![twice.clone(), twice])
        .await
        .expect_err("one id twice");
    assert!(matches!(
        err,
        StoreError::Invalid(ValidationError::DuplicateEventId { .. })
    ));

    let nul = NewEvent::new("E", 1, json!({ "s": "a\u{0}b" }), EventMetadata::default());
    let err = store
        .append(&a, ExpectedVersion::Any, vec![nul])
        .await
        .expect_err("NUL in payload");
    assert!(matches!(
        err,
        StoreError::Invalid(ValidationError::NulInPayload { .. })
    ));

    // A command addressed to a stream of another category.
    let repository = Repository::<Counter, _>::new(store.clone());
    let err = repository
        .execute(&stream("a"), Increment(1), &CommandContext::new())
        .await
        .expect_err("wrong category");
    assert!(matches!(
        err,
        CommandError::Invalid(ValidationError::WrongCategory { .. })
    ));

    assert!(read_all(&store, &a).await.is_empty(), "nothing was stored");
}

/// Events flow through the repository with metadata from the command context; a domain
/// refusal stores nothing; an event that does not decode is an error naming stream and version.
pub async fn repository_flow<F: StoreFactory>(factory: &F) {
    let store = factory.store(Limits::default()).await;
    let repository = Repository::<Counter, _>::new(store.clone());
    let id = Counter::stream_id("flow").expect("id");
    let ctx = CommandContext::new()
        .with_actor("tester")
        .with_header("k", "v");
    let done = repository
        .execute(&id, Increment(5), &ctx)
        .await
        .expect("increment");
    assert_eq!(done.version, version(1));
    assert_eq!(done.state.value, 5);
    assert_eq!(done.attempts, 1);

    let err = repository
        .execute(&id, Increment(Counter::MAX as u32), &CommandContext::new())
        .await
        .expect_err("over the maximum");
    assert!(matches!(err, CommandError::Rejected(_)), "{err:?}");

    let stored = read_all(&store, &id).await;
    assert_eq!(stored.len(), 1, "a refused command stores nothing");
    let meta = &stored[0].metadata;
    assert_eq!(meta.causation_id, Some(ctx.command_id));
    assert_eq!(meta.correlation_id, Some(ctx.correlation_id));
    assert_eq!(meta.actor.as_deref(), Some("tester"));
    assert_eq!(meta.headers.get("k").map(String::as_str), Some("v"));

    // An event of a type the aggregate does not know.
    store
        .append(&id, ExpectedVersion::Any, vec![event("Mystery", 1)])
        .await
        .expect("append a foreign event");
    match repository.load(&id).await {
        Err(CommandError::Store(StoreError::Decode {
            stream,
            version: v,
            source,
        })) => {
            assert_eq!(stream, id);
            assert_eq!(v, version(2));
            assert!(source.to_string().contains("Mystery"), "{source}");
        }
        other => panic!(
            "expected a decode error, got {:?}",
            other.map(|l| l.version)
        ),
    }
}

/// Takes the next event of a subscription, failing after a minute.
async fn next_event(subscription: &mut crate::Subscription) -> RecordedEvent {
    tokio::time::timeout(std::time::Duration::from_secs(60), subscription.next())
        .await
        .expect("the subscription delivered within a minute")
        .expect("the subscription does not end")
        .expect("the subscription does not fail")
}

/// A subscription catches up, then delivers events appended later, each once and in order;
/// resuming from its position delivers exactly the rest.
pub async fn subscription_catch_up_and_live<F: StoreFactory>(factory: &F) {
    let store = factory.store(Limits::default()).await;
    let a = stream("a");
    for n in 1..=5u64 {
        store
            .append(&a, ExpectedVersion::Any, vec![event("E", n)])
            .await
            .expect("append");
    }
    let options = SubscriptionOptions::default()
        .with_batch_size(2)
        .with_poll_interval(std::time::Duration::from_millis(50));
    let mut subscription = store.subscribe(FeedPosition::START, options.clone());
    for n in 1..=5u64 {
        assert_eq!(
            next_event(&mut subscription).await.payload["n"],
            n,
            "catch-up in order"
        );
    }
    let live = store.clone();
    let writer = tokio::spawn(async move {
        for n in 6..=9u64 {
            live.append(&stream("a"), ExpectedVersion::Any, vec![event("E", n)])
                .await
                .expect("append");
        }
    });
    for n in 6..=7u64 {
        assert_eq!(
            next_event(&mut subscription).await.payload["n"],
            n,
            "live in order"
        );
    }
    let saved = subscription.position();
    drop(subscription);
    writer.await.expect("writer");
    let mut resumed = store.subscribe(saved, options);
    for n in 8..=9u64 {
        let e = next_event(&mut resumed).await;
        assert_eq!(
            e.payload["n"], n,
            "resumed exactly after the saved position"
        );
        assert_eq!(e.version, version(n));
    }
}

/// A filtered subscription delivers only what it wants and its position moves past the rest.
pub async fn subscription_filter_advances<F: StoreFactory>(factory: &F) {
    let store = factory.store(Limits::default()).await;
    for n in 1..=40u64 {
        let kind = if n == 40 { "Wanted" } else { "Unwanted" };
        store
            .append(&stream("f"), ExpectedVersion::Any, vec![event(kind, n)])
            .await
            .expect("append");
    }
    let options = SubscriptionOptions::default()
        .with_batch_size(3)
        .with_poll_interval(std::time::Duration::from_millis(50))
        .with_filter(FeedFilter::all().with_event_types(["Wanted"]));
    let mut subscription = store.subscribe(FeedPosition::START, options);
    let wanted = next_event(&mut subscription).await;
    assert_eq!(wanted.payload["n"], 40);
    assert_eq!(subscription.position(), wanted.position);
    store
        .append(
            &stream("f"),
            ExpectedVersion::Any,
            vec![event("Unwanted", 41)],
        )
        .await
        .expect("append");
    // Only unwanted events follow: the position still moves past them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let stored = read_all(&store, &stream("f")).await;
    let last = stored.last().expect("events").position;
    while subscription.position() < last {
        assert!(
            std::time::Instant::now() < deadline,
            "position did not advance"
        );
        let _ =
            tokio::time::timeout(std::time::Duration::from_millis(100), subscription.next()).await;
    }
    assert_eq!(subscription.position(), last);
}

/// Runs every contract check as its own test, given an expression producing a
/// [`StoreFactory`].
///
/// ```text
/// eventsource_core::store_contract_tests!(MyFactory::new());
/// ```
#[macro_export]
macro_rules! store_contract_tests {
    ($factory:expr) => {
        $crate::store_contract_tests!(@each $factory;
            expected_versions, repository_race, idempotent_append, bounded_reads,
            feed_filters, unicode_and_large_payloads, bad_input_refused, repository_flow,
            subscription_catch_up_and_live, subscription_filter_advances);
    };
    (@each $factory:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $crate::testing::contract::$name(&$factory).await;
            }
        )*
    };
}
