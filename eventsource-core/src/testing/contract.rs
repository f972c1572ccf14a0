//! The store contract suite: what every [`EventStore`] must do, checked the same way for each.
//!
//! Each check takes a [`StoreFactory`] and asks it for fresh, empty stores. A check never
//! panics: it returns a [`Violation`] whose message names the broken rule and what it saw
//! instead. `store_contract_tests!` runs each check as a test that fails with that message.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use uuid::Uuid;

use crate::error::{StoreError, ValidationError};
use crate::event::{NewEvent, RecordedEvent};
use crate::event_store::{EventAppender, EventStore, FeedReader, StreamAppend, StreamReader};
use crate::expected_version::ExpectedVersion;
use crate::feed::{read_feed, BatchSize, FeedFilter};
use crate::feed_follower::FeedOptions;
use crate::limits::Limits;
use crate::metadata::EventMetadata;
use crate::position::FeedPosition;
use crate::repository::{CommandError, Repository};
use crate::retry_policy::RetryPolicy;
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::snapshot_policy::SnapshotPolicy;
use crate::stream_id::{Category, StreamId};
use crate::subscription::Subscribe;
use crate::testing::counter::{Counter, CounterEvent, Increment, Incremented, TooHigh};
use crate::testing::violation::{ensure, ensure_eq, OrViolation};
use crate::testing::Violation;
use crate::unit_of_work::UnitOfWork;
use crate::version::StreamVersion;
use crate::{Aggregate, CommandContext};

/// Hands out empty stores for the contract checks.
#[async_trait]
pub trait StoreFactory: Send + Sync {
    /// The store type under test.
    type Store: EventStore + Subscribe + SnapshotStore;
    /// A new, empty store enforcing `limits`.
    async fn store(&self, limits: Limits) -> Self::Store;
}

fn stream(id: &str) -> Result<StreamId, Violation> {
    StreamId::new("contract", id).or_violation("valid test stream id")
}

fn version(n: u64) -> Result<StreamVersion, Violation> {
    StreamVersion::new(n).or_violation("valid test version")
}

fn event(kind: &str, n: u64) -> NewEvent {
    NewEvent::new(kind, 1, json!({ "n": n }), EventMetadata::default())
}

async fn read_all<S: EventStore>(
    store: &S,
    id: &StreamId,
) -> Result<Vec<RecordedEvent>, Violation> {
    store
        .read_stream(id, StreamVersion::FIRST)
        .try_collect()
        .await
        .or_violation("read stream")
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
) -> Result<Vec<RecordedEvent>, Violation> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut after = FeedPosition::START;
    let mut events = Vec::new();
    while events.len() < count {
        let batch: Vec<RecordedEvent> =
            read_feed(store, after, BatchSize::events(7), filter.clone())
                .try_collect()
                .await
                .or_violation("read feed")?;
        if let Some(last) = batch.last() {
            after = last.position;
        }
        events.extend(batch);
        if events.len() < count {
            ensure!(
                std::time::Instant::now() < deadline,
                "the feed delivered {} of {count} events within a minute",
                events.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    Ok(events)
}

/// The append was refused with a conflict naming the stream, the expectation and the actual
/// version.
fn expect_conflict<T: std::fmt::Debug>(
    result: Result<T, StoreError>,
    id: &StreamId,
    expected: ExpectedVersion,
    actual: u64,
) -> Result<(), Violation> {
    match result {
        Err(StoreError::Conflict(c)) => {
            ensure_eq!(c.stream, *id, "conflict names the stream");
            ensure_eq!(c.expected, expected, "conflict names the expectation");
            ensure_eq!(
                c.actual,
                version(actual)?,
                "conflict names the actual version"
            );
            Ok(())
        }
        other => Err(Violation::new(format!(
            "expected a conflict ({expected} vs {actual}), got {other:?}"
        ))),
    }
}

/// Every `ExpectedVersion` case, on new and existing streams; a refused append stores nothing.
pub async fn expected_versions<F: StoreFactory>(factory: &F) -> Result<(), Violation> {
    let store = factory.store(Limits::default()).await;
    let a = stream("a")?;

    // NoStream on a new stream, then on an existing one.
    let r = store
        .append(&a, ExpectedVersion::NoStream, vec![event("E", 1)])
        .await
        .or_violation("NoStream on a new stream")?;
    ensure_eq!(
        r.stream_version,
        version(1)?,
        "the first append to a new stream makes version 1"
    );
    ensure_eq!(r.positions.len(), 1, "one position per appended event");
    ensure!(
        !r.already_stored,
        "a first append is not reported as already stored: {r:?}"
    );
    expect_conflict(
        store
            .append(&a, ExpectedVersion::NoStream, vec![event("E", 2)])
            .await,
        &a,
        ExpectedVersion::NoStream,
        1,
    )?;

    // Exact: the current version passes, anything else conflicts, without leaving a gap.
    let r = store
        .append(
            &a,
            ExpectedVersion::Exact(version(1)?),
            vec![event("E", 2), event("E", 3)],
        )
        .await
        .or_violation("Exact(current)")?;
    ensure_eq!(
        r.stream_version,
        version(3)?,
        "two events appended after version 1 make version 3"
    );
    for stale in [0, 1, 2, 5] {
        expect_conflict(
            store
                .append(
                    &a,
                    ExpectedVersion::Exact(version(stale)?),
                    vec![event("E", 9)],
                )
                .await,
            &a,
            ExpectedVersion::Exact(version(stale)?),
            3,
        )?;
    }

    // StreamExists.
    let b = stream("b")?;
    expect_conflict(
        store
            .append(&b, ExpectedVersion::StreamExists, vec![event("E", 1)])
            .await,
        &b,
        ExpectedVersion::StreamExists,
        0,
    )?;
    store
        .append(&a, ExpectedVersion::StreamExists, vec![event("E", 4)])
        .await
        .or_violation("StreamExists on an existing stream")?;

    // Any, on new and existing streams.
    store
        .append(&b, ExpectedVersion::Any, vec![event("E", 1)])
        .await
        .or_violation("Any on a new stream")?;
    let r = store
        .append(&a, ExpectedVersion::Any, vec![event("E", 5)])
        .await
        .or_violation("Any on an existing stream")?;
    ensure_eq!(
        r.stream_version,
        version(5)?,
        "Any appends after the current version 4"
    );

    // Exact(0) is NoStream.
    let c = stream("c")?;
    store
        .append(
            &c,
            ExpectedVersion::Exact(StreamVersion::INITIAL),
            vec![event("E", 1)],
        )
        .await
        .or_violation("Exact(0) on a new stream")?;

    // An empty append checks the expectation and stores nothing.
    let r = store
        .append(&a, ExpectedVersion::Exact(version(5)?), vec![])
        .await
        .or_violation("empty append at the current version")?;
    ensure_eq!(
        r.stream_version,
        version(5)?,
        "an empty append reports the current version"
    );
    ensure!(
        r.positions.is_empty(),
        "an empty append stores nothing, got positions {:?}",
        r.positions
    );
    expect_conflict(
        store
            .append(&a, ExpectedVersion::Exact(version(4)?), vec![])
            .await,
        &a,
        ExpectedVersion::Exact(version(4)?),
        5,
    )?;

    // Nothing of a refused append was stored: versions 1..=5, payloads 1..=5.
    let events = read_all(&store, &a).await?;
    let versions: Vec<u64> = events.iter().map(|e| e.version.get()).collect();
    ensure_eq!(
        versions,
        vec![1, 2, 3, 4, 5],
        "a refused append stores nothing: the stream versions"
    );
    let payloads = events
        .iter()
        .map(|e| e.payload["n"].as_u64().or_violation("payload n"))
        .collect::<Result<Vec<u64>, Violation>>()?;
    ensure_eq!(
        payloads,
        vec![1, 2, 3, 4, 5],
        "a refused append stores nothing: the payloads"
    );
    ensure_eq!(
        read_all(&store, &b).await?.len(),
        1,
        "the refused StreamExists append stored nothing in stream b, the Any append one event"
    );
    Ok(())
}

/// 16 tasks race 50 increments each on one counter through the repository: every increment
/// lands exactly once as versions 1..=800, and every retry was caused by a typed conflict.
pub async fn repository_race<F: StoreFactory>(factory: &F) -> Result<(), Violation> {
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
    let id = Counter::stream_id("raced").or_violation("valid id")?;
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
                    .or_violation("every increment eventually lands")?;
                ensure_eq!(
                    done.conflicts.len() as u64 + 1,
                    u64::from(done.attempts),
                    "each retry follows exactly one conflict (conflicts + 1 = attempts)"
                );
                for c in &done.conflicts {
                    ensure_eq!(c.stream, id, "a conflict names the raced stream");
                    ensure!(
                        matches!(c.expected, ExpectedVersion::Exact(v) if v < c.actual),
                        "a loser saw a newer version: {c:?}"
                    );
                }
                conflicts += done.conflicts.len();
            }
            Ok::<usize, Violation>(conflicts)
        }));
    }
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.or_violation("task finished")??;
    }
    let events = read_all(&store, &id).await?;
    let versions: Vec<u64> = events.iter().map(|e| e.version.get()).collect();
    let expected: Vec<u64> = (1..=u64::from(TASKS * PER_TASK)).collect();
    ensure_eq!(
        versions,
        expected,
        "versions 1..=800 with no gap and no duplicate"
    );
    let ids: HashSet<Uuid> = events.iter().map(|e| e.event_id).collect();
    ensure_eq!(ids.len(), events.len(), "no event stored twice");
    let loaded = repository.load(&id).await.or_violation("load")?;
    ensure_eq!(
        loaded.state.value,
        u64::from(TASKS * PER_TASK),
        "the counter holds every increment"
    );
    ensure!(
        conflicts > 0,
        "16 writers on one stream must have collided at least once"
    );
    Ok(())
}

/// Appending the same event ids again (a retry after a lost reply) succeeds without storing them
/// twice; reusing ids for other appends is refused.
pub async fn idempotent_append<F: StoreFactory>(factory: &F) -> Result<(), Violation> {
    let store = factory.store(Limits::default()).await;
    let a = stream("a")?;
    let events = vec![event("E", 1), event("E", 2)];
    let first = store
        .append(&a, ExpectedVersion::NoStream, events.clone())
        .await
        .or_violation("first append")?;
    // The retry carries the same expectation, which no longer holds, and still succeeds.
    let retry = store
        .append(&a, ExpectedVersion::NoStream, events.clone())
        .await
        .or_violation("the retry succeeds")?;
    ensure!(
        retry.already_stored,
        "the retry is reported as already stored: {retry:?}"
    );
    ensure_eq!(
        retry.stream_version,
        first.stream_version,
        "the retry reports the version of the first append"
    );
    ensure_eq!(
        retry.positions,
        first.positions,
        "the retry reports the positions of the first append"
    );
    let retry_any = store
        .append(&a, ExpectedVersion::Any, events.clone())
        .await
        .or_violation("the retry with Any succeeds")?;
    ensure!(
        retry_any.already_stored,
        "the retry with Any is reported as already stored: {retry_any:?}"
    );
    ensure_eq!(read_all(&store, &a).await?.len(), 2, "nothing stored twice");

    // The same ids in another stream, or mixed with new ones, are refused.
    let b = stream("b")?;
    let result = store.append(&b, ExpectedVersion::Any, events.clone()).await;
    ensure!(
        matches!(&result, Err(StoreError::EventIdReused { stored_in, .. }) if *stored_in == a),
        "ids reused in another stream are refused with EventIdReused naming stream {a}, got {result:?}"
    );
    let mixed = vec![events[1].clone(), event("E", 3)];
    let result = store.append(&a, ExpectedVersion::Any, mixed).await;
    ensure!(
        matches!(result, Err(StoreError::EventIdReused { .. })),
        "a stored id mixed with a new one is refused with EventIdReused, got {result:?}"
    );
    let swapped = vec![events[1].clone(), events[0].clone()];
    let result = store.append(&a, ExpectedVersion::Any, swapped).await;
    ensure!(
        matches!(result, Err(StoreError::EventIdReused { .. })),
        "stored ids in another order are refused with EventIdReused, got {result:?}"
    );
    ensure_eq!(
        read_all(&store, &a).await?.len(),
        2,
        "the refused appends stored nothing in stream a"
    );
    let in_b = read_all(&store, &b).await?;
    ensure!(
        in_b.is_empty(),
        "the refused append stored nothing in stream b, got {} events",
        in_b.len()
    );
    Ok(())
}

/// An append to several streams is one transaction: every stream's events or none, each
/// stream's expectation checked, a conflict naming its stream, idempotent by event ids, its
/// input checked as a whole, and delivered by the feed in one place.
pub async fn multi_stream_append<F: StoreFactory>(factory: &F) -> Result<(), Violation> {
    let store = factory.store(Limits::default()).await;
    let (a, b, c) = (stream("a")?, stream("b")?, stream("c")?);
    let nothing = store
        .append_to_streams(Vec::new())
        .await
        .or_violation("an append to no streams")?;
    ensure!(nothing.is_empty(), "no streams, no results: {nothing:?}");

    // Other transactions before and after, so that "one place" means something.
    store
        .append(&c, ExpectedVersion::NoStream, vec![event("Before", 0)])
        .await
        .or_violation("append before")?;
    let first = vec![
        StreamAppend::new(
            a.clone(),
            ExpectedVersion::NoStream,
            vec![event("A", 1), event("A", 2)],
        ),
        StreamAppend::new(b.clone(), ExpectedVersion::Any, vec![event("B", 1)]),
        StreamAppend::new(c.clone(), ExpectedVersion::Exact(version(1)?), Vec::new()),
    ];
    let results = store
        .append_to_streams(first.clone())
        .await
        .or_violation("append to a, b and check c")?;
    ensure_eq!(results.len(), 3, "one result per stream");
    ensure_eq!(
        results
            .iter()
            .map(|r| r.stream_version.get())
            .collect::<Vec<_>>(),
        vec![2, 1, 1],
        "each stream's version after the append, in the order given"
    );
    ensure!(
        results.iter().all(|r| !r.already_stored),
        "a first append is not already stored: {results:?}"
    );
    ensure_eq!(
        results
            .iter()
            .map(|r| r.positions.len())
            .collect::<Vec<_>>(),
        vec![2, 1, 0],
        "one position per appended event"
    );
    store
        .append(&c, ExpectedVersion::Any, vec![event("After", 0)])
        .await
        .or_violation("append after")?;

    let feed = read_whole_feed(&store, FeedFilter::all(), 5).await?;
    let kinds: Vec<&str> = feed.iter().map(|e| e.event_type.as_str()).collect();
    ensure!(
        kinds.first() == Some(&"Before") && kinds.last() == Some(&"After"),
        "the feed delivers the append between the transactions before and after it: {kinds:?}"
    );
    let middle = &feed[1..4];
    ensure!(
        middle
            .iter()
            .all(|e| e.position.transaction_id == middle[0].position.transaction_id),
        "the feed delivers the whole append as one transaction: {:?}",
        middle.iter().map(|e| e.position).collect::<Vec<_>>()
    );
    let in_a: Vec<u64> = middle
        .iter()
        .filter(|e| e.stream_id == a)
        .map(|e| e.version.get())
        .collect();
    ensure_eq!(
        in_a,
        vec![1, 2],
        "the feed delivers stream a in version order"
    );
    let positions: Vec<_> = middle.iter().map(|e| e.position).collect();
    let reported: HashSet<_> = results.iter().flat_map(|r| r.positions.clone()).collect();
    ensure!(
        positions.iter().all(|p| reported.contains(p)),
        "the reported positions are the feed's: {positions:?} vs {reported:?}"
    );

    // The very same append again: a retry after a lost reply.
    let retry = store
        .append_to_streams(first.clone())
        .await
        .or_violation("the retry succeeds")?;
    ensure!(
        retry.iter().all(|r| r.already_stored),
        "the retry is reported as already stored: {retry:?}"
    );
    ensure_eq!(
        retry
            .iter()
            .map(|r| r.positions.clone())
            .collect::<Vec<_>>(),
        results
            .iter()
            .map(|r| r.positions.clone())
            .collect::<Vec<_>>(),
        "the retry reports the first append's positions"
    );
    ensure_eq!(
        read_all(&store, &a).await?.len(),
        2,
        "nothing stored twice in a"
    );
    ensure_eq!(
        read_all(&store, &b).await?.len(),
        1,
        "nothing stored twice in b"
    );
    // Part of it again, with new events: ids reused otherwise.
    let mixed = vec![
        first[1].clone(),
        StreamAppend::new(c.clone(), ExpectedVersion::Any, vec![event("C", 9)]),
    ];
    let result = store.append_to_streams(mixed).await;
    ensure!(
        matches!(result, Err(StoreError::EventIdReused { .. })),
        "stored events mixed with new ones in another stream are refused with EventIdReused, got {result:?}"
    );

    // A conflict on one stream appends nothing to any; it names that stream.
    let d = stream("d")?;
    let conflicting = vec![
        StreamAppend::new(d.clone(), ExpectedVersion::NoStream, vec![event("D", 1)]),
        StreamAppend::new(
            a.clone(),
            ExpectedVersion::Exact(version(2)?),
            vec![event("A", 3)],
        ),
        StreamAppend::new(
            b.clone(),
            ExpectedVersion::Exact(version(5)?),
            vec![event("B", 2)],
        ),
    ];
    expect_conflict(
        store.append_to_streams(conflicting).await,
        &b,
        ExpectedVersion::Exact(version(5)?),
        1,
    )?;
    ensure!(
        read_all(&store, &d).await?.is_empty(),
        "a conflict on b stores nothing in d"
    );
    ensure_eq!(
        read_all(&store, &a).await?.len(),
        2,
        "a conflict on b stores nothing in a"
    );
    let only_check = vec![
        StreamAppend::new(d.clone(), ExpectedVersion::NoStream, vec![event("D", 1)]),
        StreamAppend::new(a.clone(), ExpectedVersion::NoStream, Vec::new()),
    ];
    expect_conflict(
        store.append_to_streams(only_check).await,
        &a,
        ExpectedVersion::NoStream,
        2,
    )?;
    ensure!(
        read_all(&store, &d).await?.is_empty(),
        "a failed check on a stream without events stores nothing in the others"
    );

    // Input is checked as a whole.
    let twice = vec![
        StreamAppend::new(d.clone(), ExpectedVersion::Any, vec![event("D", 1)]),
        StreamAppend::new(d.clone(), ExpectedVersion::Any, vec![event("D", 2)]),
    ];
    let result = store.append_to_streams(twice).await;
    ensure!(
        matches!(
            &result,
            Err(StoreError::Invalid(ValidationError::StreamGivenTwice { stream })) if *stream == d
        ),
        "a stream given twice is refused with StreamGivenTwice, got {result:?}"
    );
    let same_id = event("D", 1);
    let shared = vec![
        StreamAppend::new(d.clone(), ExpectedVersion::Any, vec![same_id.clone()]),
        StreamAppend::new(stream("e")?, ExpectedVersion::Any, vec![same_id]),
    ];
    let result = store.append_to_streams(shared).await;
    ensure!(
        matches!(
            result,
            Err(StoreError::Invalid(
                ValidationError::DuplicateEventId { .. }
            ))
        ),
        "an event id given in two streams is refused with DuplicateEventId, got {result:?}"
    );
    let mut bad = event("E", 1);
    bad.event_type = String::new();
    let invalid = vec![
        StreamAppend::new(d.clone(), ExpectedVersion::Any, vec![event("D", 1)]),
        StreamAppend::new(stream("e")?, ExpectedVersion::Any, vec![bad]),
    ];
    let result = store.append_to_streams(invalid).await;
    ensure!(
        matches!(
            result,
            Err(StoreError::Invalid(ValidationError::EmptyEventType { .. }))
        ),
        "invalid events in one stream refuse the whole append, got {result:?}"
    );
    ensure!(
        read_all(&store, &d).await?.is_empty(),
        "refused input stores nothing"
    );

    // The limits apply to the whole append.
    let small = factory
        .store(Limits::default().with_max_events_per_append(3))
        .await;
    let too_many = vec![
        StreamAppend::new(
            a.clone(),
            ExpectedVersion::Any,
            vec![event("A", 1), event("A", 2)],
        ),
        StreamAppend::new(
            b.clone(),
            ExpectedVersion::Any,
            vec![event("B", 1), event("B", 2)],
        ),
    ];
    let result = small.append_to_streams(too_many).await;
    ensure!(
        matches!(
            result,
            Err(StoreError::Invalid(ValidationError::TooManyEvents {
                count: 4,
                limit: 3
            }))
        ),
        "4 events in two streams pass a limit of 3 per append, got {result:?}"
    );
    ensure!(
        read_all(&small, &a).await?.is_empty(),
        "an append past the limits stores nothing"
    );
    // Each stream's events within the byte limit, all of them together past it.
    let one = event("A", 1);
    let bytes = one.payload.to_string().len()
        + serde_json::to_string(&one.metadata).map_or(0, |m| m.len())
        + one.event_type.len();
    let narrow = factory
        .store(Limits::default().with_max_append_bytes(bytes * 3))
        .await;
    let too_large = vec![
        StreamAppend::new(
            a.clone(),
            ExpectedVersion::Any,
            vec![event("A", 1), event("A", 2)],
        ),
        StreamAppend::new(
            b.clone(),
            ExpectedVersion::Any,
            vec![event("B", 1), event("B", 2)],
        ),
    ];
    let result = narrow.append_to_streams(too_large).await;
    ensure!(
        matches!(
            result,
            Err(StoreError::Invalid(ValidationError::AppendTooLarge { events: 4, .. }))
        ),
        "4 events of {bytes} bytes in two streams pass a limit of {} bytes per append, got {result:?}",
        bytes * 3
    );
    ensure!(
        read_all(&narrow, &a).await?.is_empty(),
        "an append past the byte limit stores nothing"
    );
    Ok(())
}

/// The counter, deciding only once two commands have loaded: forces two runs of one command
/// to decide at the same version.
#[derive(Debug, Default, Clone)]
struct Gated {
    value: u64,
}

#[async_trait]
impl crate::Aggregate for Gated {
    const CATEGORY: &'static str = "gated";
    type Event = CounterEvent;
    type Command = Increment;
    type Error = TooHigh;
    type Services = Arc<tokio::sync::Barrier>;

    fn apply(&mut self, event: &CounterEvent) {
        let CounterEvent::Incremented(Incremented { by }) = event;
        self.value += u64::from(*by);
    }

    async fn handle(
        &self,
        command: &Increment,
        gate: &Arc<tokio::sync::Barrier>,
    ) -> Result<Vec<CounterEvent>, TooHigh> {
        gate.wait().await;
        Ok(vec![
            CounterEvent::Incremented(Incremented { by: command.0 }),
            CounterEvent::Incremented(Incremented { by: 1 }),
        ])
    }
}

/// A command whose id was given runs once per stream: sent again, by the same repository, by
/// a new one, or concurrently, it returns the first run's outcome and appends nothing.
pub async fn idempotent_commands<F: StoreFactory>(factory: &F) -> Result<(), Violation> {
    let store = factory.store(Limits::default()).await;
    let repository = Repository::<Counter, _>::new(store.clone());
    let id = Counter::stream_id("idem").or_violation("id")?;
    let command_id = Uuid::now_v7();
    let ctx = || CommandContext::new().with_command_id(command_id);
    repository
        .execute(&id, Increment(1), &CommandContext::new())
        .await
        .or_violation("another command first")?;
    let first = repository
        .execute(&id, Increment(5), &ctx())
        .await
        .or_violation("the first run")?;
    ensure!(!first.replayed, "the first run is not a replay");
    ensure_eq!(
        first.version,
        version(2)?,
        "the first run appends version 2"
    );
    ensure_eq!(
        first
            .appended
            .iter()
            .map(|e| e.event_id)
            .collect::<Vec<_>>(),
        vec![ctx().event_id(&id, 0)],
        "the first run's event has the deterministic id"
    );
    repository
        .execute(&id, Increment(100), &CommandContext::new())
        .await
        .or_violation("another command after")?;

    for (who, again) in [
        (
            "the same repository",
            repository.execute(&id, Increment(5), &ctx()).await,
        ),
        (
            "a new repository",
            Repository::<Counter, _>::new(store.clone())
                .execute(&id, Increment(5), &ctx())
                .await,
        ),
    ] {
        let again = again.or_violation(who)?;
        ensure!(again.replayed, "{who}: the second send is a replay");
        ensure_eq!(
            again.version,
            first.version,
            "{who}: the first run's version"
        );
        ensure_eq!(again.events, first.events, "{who}: the first run's events");
        ensure_eq!(
            again.appended,
            first.appended,
            "{who}: the first run's event ids, versions and positions"
        );
        ensure_eq!(
            again.state.value,
            6,
            "{who}: the state right after the first run, not after later commands"
        );
    }
    ensure_eq!(
        read_all(&store, &id).await?.len(),
        3,
        "the command stored once"
    );
    let caused: Vec<RecordedEvent> = store
        .read_caused_by(&id, command_id)
        .try_collect()
        .await
        .or_violation("read the command's events")?;
    ensure_eq!(
        caused.iter().map(|e| e.version.get()).collect::<Vec<_>>(),
        vec![2],
        "read_caused_by finds the command's events, and only them"
    );
    let elsewhere = Counter::stream_id("other").or_violation("id")?;
    let other = repository
        .execute(&elsewhere, Increment(5), &ctx())
        .await
        .or_violation("the same id in another stream")?;
    ensure!(
        !other.replayed && other.version == version(1)?,
        "the same command id in another stream is another command: {other:?}"
    );

    // Two runs of one command id that decide at the same version, concurrently.
    let gate = Arc::new(tokio::sync::Barrier::new(2));
    let gated = Repository::<Gated, _>::with_services(store.clone(), gate);
    let target = Gated::stream_id("race").or_violation("id")?;
    let race_id = Uuid::now_v7();
    let race_ctx = CommandContext::new().with_command_id(race_id);
    let (one, two) = futures::join!(
        gated.execute(&target, Increment(7), &race_ctx),
        gated.execute(&target, Increment(7), &race_ctx)
    );
    let (one, two) = (
        one.or_violation("the first concurrent run")?,
        two.or_violation("the second concurrent run")?,
    );
    ensure!(
        one.replayed != two.replayed,
        "one run appends and the other finds its events (replayed: {} and {})",
        one.replayed,
        two.replayed
    );
    ensure_eq!(
        one.version,
        two.version,
        "both runs report the same version"
    );
    ensure_eq!(
        one.appended,
        two.appended,
        "both runs report the same events"
    );
    ensure_eq!(
        read_all(&store, &target).await?.len(),
        2,
        "two concurrent runs of one command append once"
    );
    Ok(())
}

/// A unit of work appends its aggregates' events together; a conflict on one of its streams
/// appends nothing to any, and the retrying form decides again and succeeds.
pub async fn unit_of_work<F: StoreFactory>(factory: &F) -> Result<(), Violation> {
    let store = factory.store(Limits::default()).await;
    let a = Counter::stream_id("a").or_violation("id")?;
    let b = Counter::stream_id("b").or_violation("id")?;
    let ctx = CommandContext::new();
    let mut unit = UnitOfWork::new(&store);
    unit.execute::<Counter>(&a, Increment(1), &ctx)
        .await
        .or_violation("decide on a")?;
    let twice = unit
        .execute::<Counter>(&a, Increment(2), &ctx)
        .await
        .or_violation("decide on a again")?;
    ensure_eq!(
        (twice.state.value, twice.version.get()),
        (3, 2),
        "a second command on a stream of the unit sees the first one's events"
    );
    unit.execute::<Counter>(&b, Increment(10), &ctx)
        .await
        .or_violation("decide on b")?;
    let committed = unit.commit().await.or_violation("commit")?;
    ensure_eq!(
        committed
            .streams
            .iter()
            .map(|s| (s.stream_id.clone(), s.version.get(), s.appended.len()))
            .collect::<Vec<_>>(),
        vec![(a.clone(), 2, 2), (b.clone(), 1, 1)],
        "the committed streams, versions and events"
    );

    // A concurrent writer on b between deciding and committing.
    let mut unit = UnitOfWork::new(&store);
    unit.execute::<Counter>(&a, Increment(1), &ctx)
        .await
        .or_violation("decide on a")?;
    unit.execute::<Counter>(&b, Increment(1), &ctx)
        .await
        .or_violation("decide on b")?;
    Repository::<Counter, _>::new(store.clone())
        .execute(&b, Increment(100), &CommandContext::new())
        .await
        .or_violation("a concurrent command on b")?;
    expect_conflict(
        unit.commit().await,
        &b,
        ExpectedVersion::Exact(version(1)?),
        2,
    )?;
    ensure_eq!(
        read_all(&store, &a).await?.len(),
        2,
        "a conflict on b appends nothing to a"
    );

    // The retrying form: the first attempt loses to a writer on b, the second succeeds.
    let interfered = std::sync::atomic::AtomicBool::new(false);
    let (a_ref, b_ref, store_ref, interfered_ref) = (&a, &b, &store, &interfered);
    let run = UnitOfWork::run(&store, RetryPolicy::default(), |unit| {
        Box::pin(async move {
            unit.execute::<Counter>(a_ref, Increment(1), &CommandContext::new())
                .await?;
            unit.execute::<Counter>(b_ref, Increment(1), &CommandContext::new())
                .await?;
            if !interfered_ref.swap(true, std::sync::atomic::Ordering::SeqCst) {
                store_ref
                    .append(
                        b_ref,
                        ExpectedVersion::Any,
                        vec![NewEvent::new(
                            "CounterIncremented",
                            1,
                            json!({ "by": 1 }),
                            EventMetadata::default(),
                        )],
                    )
                    .await
                    .map_err(CommandError::Store)?;
            }
            Ok::<_, CommandError<TooHigh>>(())
        })
    })
    .await;
    let ((), committed) = run.or_violation("the retrying unit")?;
    ensure_eq!(committed.attempts, 2, "the unit took two attempts");
    ensure_eq!(committed.conflicts.len(), 1, "the unit met one conflict");
    ensure_eq!(
        committed
            .streams
            .iter()
            .map(|s| s.version.get())
            .collect::<Vec<_>>(),
        vec![3, 4],
        "the second attempt appended after the interfering event"
    );
    Ok(())
}

/// Stream reads start at the version asked for; feed reads are bounded, ordered and complete.
pub async fn bounded_reads<F: StoreFactory>(factory: &F) -> Result<(), Violation> {
    let store = factory.store(Limits::default()).await;
    let a = stream("a")?;
    let b = stream("b")?;
    for n in 1..=20u64 {
        let target = if n % 3 == 0 { &b } else { &a };
        store
            .append(target, ExpectedVersion::Any, vec![event("E", n)])
            .await
            .or_violation("append")?;
    }
    let from_five: Vec<u64> = store
        .read_stream(&a, version(5)?)
        .map_ok(|e| e.version.get())
        .try_collect()
        .await
        .or_violation("read from version 5")?;
    ensure_eq!(
        from_five,
        (5..=14).collect::<Vec<_>>(),
        "a stream read starts at the version asked for"
    );
    let none = read_all(&store, &stream("none")?).await?;
    ensure!(
        none.is_empty(),
        "a stream never appended to reads empty, got {} events",
        none.len()
    );

    // Batches hold at most `limit` events and chain without gaps or repeats. (Events may wait
    // behind another transaction running on the same server; the loop waits for them.)
    let mut after = FeedPosition::START;
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let batch = store
            .read_feed_batch(after, BatchSize::events(6), &FeedFilter::all())
            .await
            .or_violation("feed batch")?;
        ensure!(
            batch.events.len() <= 6,
            "a batch is bounded by its limit: got {} events for a limit of 6",
            batch.events.len()
        );
        for e in &batch.events {
            ensure!(
                e.position > after,
                "feed moves forward: got {} after {after}",
                e.position
            );
            after = e.position;
        }
        ensure_eq!(
            batch.next,
            after,
            "a batch's next position is that of its last event"
        );
        seen.extend(batch.events.iter().map(|e| e.payload["n"].as_u64()));
        if batch.reached_head && seen.len() >= 20 {
            break;
        }
        if batch.reached_head {
            ensure!(
                std::time::Instant::now() < deadline,
                "feed stalled at {after}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    ensure_eq!(
        seen,
        (1..=20).map(Some).collect::<Vec<_>>(),
        "feed in append order"
    );
    // Any positive limit is accepted, however large, from any position.
    let first = store
        .read_feed_batch(
            FeedPosition::START,
            BatchSize::events(1),
            &FeedFilter::all(),
        )
        .await
        .or_violation("the first event of the feed")?
        .next;
    let rest = store
        .read_feed_batch(first, BatchSize::events(usize::MAX), &FeedFilter::all())
        .await
        .or_violation("a feed batch with the largest limit")?;
    ensure_eq!(
        rest.events.len(),
        19,
        "the largest limit reads every event after the first"
    );
    let result = store
        .read_feed_batch(
            FeedPosition::START,
            BatchSize::events(0),
            &FeedFilter::all(),
        )
        .await;
    ensure!(
        matches!(
            result,
            Err(StoreError::Invalid(ValidationError::ZeroBatchSize))
        ),
        "a zero batch is refused with ZeroBatchSize, got {result:?}"
    );
    Ok(())
}

/// Filters by category and type still advance the reader across events they drop.
pub async fn feed_filters<F: StoreFactory>(factory: &F) -> Result<(), Violation> {
    let store = factory.store(Limits::default()).await;
    let order = StreamId::new("order", "1").or_violation("id")?;
    let user = StreamId::new("user", "1").or_violation("id")?;
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
            .or_violation("append")?;
    }
    let orders = read_whole_feed(
        &store,
        FeedFilter::all().with_categories([Category::new("order").or_violation("category")?]),
        15,
    )
    .await?;
    ensure_eq!(
        orders.len(),
        15,
        "the category filter passes the 15 order events"
    );
    let strays: Vec<&StreamId> = orders
        .iter()
        .map(|e| &e.stream_id)
        .filter(|s| **s != order)
        .collect();
    ensure!(
        strays.is_empty(),
        "the category filter passes only order events, got events of {strays:?}"
    );
    let shipped = read_whole_feed(
        &store,
        FeedFilter::all().with_event_types(["OrderShipped"]),
        3,
    )
    .await?;
    let ns: Vec<_> = shipped.iter().map(|e| e.payload["n"].as_u64()).collect();
    ensure_eq!(
        ns,
        vec![Some(10), Some(20), Some(30)],
        "the type filter passes the three OrderShipped events, in order"
    );

    // A batch that examines only unwanted events returns none but moves past them.
    let filter = FeedFilter::all().with_event_types(["OrderShipped"]);
    let batch = store
        .read_feed_batch(FeedPosition::START, BatchSize::events(5), &filter)
        .await
        .or_violation("batch")?;
    ensure!(
        batch.events.is_empty(),
        "a batch that examines only unwanted events returns none, got {} events",
        batch.events.len()
    );
    ensure!(
        batch.next > FeedPosition::START,
        "the reader advanced: next is {}",
        batch.next
    );
    ensure!(
        !batch.reached_head,
        "a batch that examined 5 of 30 events did not reach the head"
    );
    Ok(())
}

/// Unicode in payloads, metadata and ids, and large payloads, round-trip unchanged.
pub async fn unicode_and_large_payloads<F: StoreFactory>(factory: &F) -> Result<(), Violation> {
    let store = factory.store(Limits::default()).await;
    let id = StreamId::new("order", "注文-🚀-Ωmega").or_violation("unicode id")?;
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
        .or_violation("append unicode and large events")?;
    let stored = read_all(&store, &id).await?;
    ensure_eq!(stored.len(), 2, "both events are stored");
    for (stored, sent) in stored.iter().zip(&events) {
        ensure_eq!(stored.stream_id, id, "the stream id round-trips");
        ensure_eq!(stored.event_id, sent.event_id, "the event id round-trips");
        ensure_eq!(
            stored.event_type,
            sent.event_type,
            "the event type round-trips"
        );
        ensure_eq!(
            stored.schema_version,
            sent.schema_version,
            "the schema version round-trips"
        );
        ensure_eq!(stored.payload, sent.payload, "the payload round-trips");
        ensure_eq!(stored.metadata, metadata, "the metadata round-trips");
    }
    Ok(())
}

/// Bad input is refused with a typed error before it reaches storage.
pub async fn bad_input_refused<F: StoreFactory>(factory: &F) -> Result<(), Violation> {
    let limits = Limits::default()
        .with_max_payload_bytes(1000)
        .with_max_events_per_append(5);
    let store = factory.store(limits).await;
    let a = stream("a")?;

    ensure_eq!(
        StreamId::new("order", ""),
        Err(ValidationError::EmptyStreamId),
        "an empty stream id is refused"
    );
    let long = StreamId::new("order", "x".repeat(256));
    ensure!(
        matches!(long, Err(ValidationError::StreamIdTooLong { .. })),
        "a 256-byte stream id is refused with StreamIdTooLong, got {long:?}"
    );

    let big = NewEvent::new(
        "E",
        1,
        json!({ "blob": "x".repeat(1000) }),
        EventMetadata::default(),
    );
    let result = store.append(&a, ExpectedVersion::Any, vec![big]).await;
    ensure!(
        matches!(
            result,
            Err(StoreError::Invalid(ValidationError::PayloadTooLarge { limit: 1000, .. }))
        ),
        "a payload over the limit is refused with PayloadTooLarge naming the limit 1000, got {result:?}"
    );

    let result = store
        .append(
            &a,
            ExpectedVersion::Any,
            (0..6).map(|n| event("E", n)).collect(),
        )
        .await;
    ensure!(
        matches!(
            result,
            Err(StoreError::Invalid(ValidationError::TooManyEvents { .. }))
        ),
        "too many events are refused with TooManyEvents, got {result:?}"
    );

    let result = store
        .append(
            &a,
            ExpectedVersion::Exact(StreamVersion::MAX),
            vec![event("E", 1)],
        )
        .await;
    ensure!(
        matches!(
            result,
            Err(StoreError::Invalid(ValidationError::VersionOverflow { .. }))
        ),
        "a version overflow is refused with VersionOverflow, got {result:?}"
    );

    let mut zero = event("E", 1);
    zero.schema_version = 0;
    let result = store.append(&a, ExpectedVersion::Any, vec![zero]).await;
    ensure!(
        matches!(
            result,
            Err(StoreError::Invalid(
                ValidationError::SchemaVersionOutOfRange { .. }
            ))
        ),
        "schema version 0 is refused with SchemaVersionOutOfRange, got {result:?}"
    );

    let untyped = event("", 1);
    let result = store.append(&a, ExpectedVersion::Any, vec![untyped]).await;
    ensure!(
        matches!(
            result,
            Err(StoreError::Invalid(ValidationError::EmptyEventType { .. }))
        ),
        "an empty type is refused with EmptyEventType, got {result:?}"
    );

    let twice = event("E", 1);
    let result = store
        .append(&a, ExpectedVersion::Any, vec![twice.clone(), twice])
        .await;
    ensure!(
        matches!(
            result,
            Err(StoreError::Invalid(
                ValidationError::DuplicateEventId { .. }
            ))
        ),
        "one id twice is refused with DuplicateEventId, got {result:?}"
    );

    let nul = NewEvent::new("E", 1, json!({ "s": "a\u{0}b" }), EventMetadata::default());
    let result = store.append(&a, ExpectedVersion::Any, vec![nul]).await;
    ensure!(
        matches!(
            result,
            Err(StoreError::Invalid(ValidationError::NulInPayload { .. }))
        ),
        "NUL in payload is refused with NulInPayload, got {result:?}"
    );
    let mut nul_header = event("E", 1);
    nul_header
        .metadata
        .headers
        .insert("tenant".into(), "a\u{0}b".into());
    let result = store
        .append(&a, ExpectedVersion::Any, vec![nul_header])
        .await;
    ensure!(
        matches!(
            result,
            Err(StoreError::Invalid(ValidationError::NulInEventText {
                field: "header",
                ..
            }))
        ),
        "NUL in a header is refused with NulInEventText, got {result:?}"
    );
    let result = store
        .append(&a, ExpectedVersion::Any, vec![event("E\u{0}", 1)])
        .await;
    ensure!(
        matches!(
            result,
            Err(StoreError::Invalid(ValidationError::NulInEventText {
                field: "type name",
                ..
            }))
        ),
        "NUL in a type name is refused with NulInEventText, got {result:?}"
    );

    // A command addressed to a stream of another category.
    let repository = Repository::<Counter, _>::new(store.clone());
    let result = repository
        .execute(&stream("a")?, Increment(1), &CommandContext::new())
        .await;
    ensure!(
        matches!(
            result,
            Err(CommandError::Invalid(ValidationError::WrongCategory { .. }))
        ),
        "a command to a stream of the wrong category is refused with WrongCategory, got {result:?}"
    );

    let stored = read_all(&store, &a).await?;
    ensure!(
        stored.is_empty(),
        "nothing was stored, got {} events",
        stored.len()
    );
    Ok(())
}

/// Everything a store keeps is bounded, and what it refuses it refuses whole, at once, with an
/// error naming the limit: payload nesting, metadata, type names, the bytes of one append.
/// What it accepts at the limits reads back unchanged.
pub async fn limits_refused<F: StoreFactory>(factory: &F) -> Result<(), Violation> {
    let limits = Limits::default()
        .with_max_json_depth(10)
        .with_max_metadata_bytes(200)
        .with_max_event_type_bytes(20)
        .with_max_append_bytes(5_000);
    let store = factory.store(limits).await;
    let a = stream("limits")?;
    let nested = |depth: usize| {
        let mut value = json!(1);
        for _ in 0..depth {
            value = json!([value]);
        }
        value
    };
    let refused = |result: Result<crate::AppendResult, StoreError>| match result {
        Err(StoreError::Invalid(error)) => Some(error),
        _ => None,
    };

    let deep = NewEvent::new("E", 1, json!({ "a": nested(10) }), EventMetadata::default());
    let result = store.append(&a, ExpectedVersion::Any, vec![deep]).await;
    ensure!(
        matches!(
            refused(result),
            Some(ValidationError::PayloadTooDeep { limit: 10, .. })
        ),
        "a payload 11 levels deep is refused with PayloadTooDeep naming the limit 10"
    );
    // A depth that no JSON reader takes by default is refused too, without recursion on the way
    // (300 levels: past serde_json's own limit of 128; far deeper values overflow a thread's stack
    // when merely dropped).
    let hostile = NewEvent::new("E", 1, nested(300), EventMetadata::default());
    let result = store.append(&a, ExpectedVersion::Any, vec![hostile]).await;
    ensure!(
        matches!(
            refused(result),
            Some(ValidationError::PayloadTooDeep { .. })
        ),
        "a payload 300 levels deep is refused with PayloadTooDeep"
    );

    let mut chatty = event("E", 1);
    chatty
        .metadata
        .headers
        .insert("note".into(), "x".repeat(200));
    let result = store.append(&a, ExpectedVersion::Any, vec![chatty]).await;
    ensure!(
        matches!(
            refused(result),
            Some(ValidationError::MetadataTooLarge { limit: 200, .. })
        ),
        "metadata over 200 bytes is refused with MetadataTooLarge naming the limit"
    );

    let result = store
        .append(&a, ExpectedVersion::Any, vec![event(&"T".repeat(21), 1)])
        .await;
    ensure!(
        matches!(
            refused(result),
            Some(ValidationError::EventTypeTooLong {
                len: 21,
                limit: 20,
                ..
            })
        ),
        "a 21-byte type name is refused with EventTypeTooLong naming the limit 20"
    );

    let chunk = |n: u64| {
        NewEvent::new(
            "E",
            1,
            json!({ "n": n, "blob": "x".repeat(900) }),
            EventMetadata::default(),
        )
    };
    let result = store
        .append(&a, ExpectedVersion::Any, (0..6).map(chunk).collect())
        .await;
    ensure!(
        matches!(
            refused(result),
            Some(ValidationError::AppendTooLarge { limit: 5_000, .. })
        ),
        "six events of about 930 bytes are refused with AppendTooLarge naming the limit 5,000"
    );
    ensure!(
        read_all(&store, &a).await?.is_empty(),
        "nothing of a refused append is stored"
    );

    // At the limits: accepted, and read back unchanged.
    let mut at_limits = vec![
        NewEvent::new("E", 1, json!({ "a": nested(9) }), EventMetadata::default()),
        event(&"T".repeat(20), 2),
    ];
    at_limits.extend((3..6).map(chunk));
    let sent = at_limits.clone();
    store
        .append(&a, ExpectedVersion::NoStream, at_limits)
        .await
        .or_violation("an append at every limit is accepted")?;
    let stored = read_all(&store, &a).await?;
    ensure_eq!(
        stored
            .iter()
            .map(|e| (&e.event_type, &e.payload))
            .collect::<Vec<_>>(),
        sent.iter()
            .map(|e| (&e.event_type, &e.payload))
            .collect::<Vec<_>>(),
        "what is accepted at the limits reads back unchanged"
    );
    Ok(())
}

/// Feed reads stop at their byte budget (always returning at least one event) and chain
/// without gaps, so a reader's memory is bounded whatever the events' sizes.
pub async fn reads_bounded_by_bytes<F: StoreFactory>(factory: &F) -> Result<(), Violation> {
    let store = factory.store(Limits::default()).await;
    let a = stream("bytes")?;
    let sized = |n: u64, bytes: usize| {
        NewEvent::new(
            "E",
            1,
            json!({ "n": n, "blob": "x".repeat(bytes) }),
            EventMetadata::default(),
        )
    };
    // Five events of about 1 KB, then one of 10 KB, then one small one.
    let mut events: Vec<NewEvent> = (1..=5).map(|n| sized(n, 1_000)).collect();
    events.push(sized(6, 10_000));
    events.push(sized(7, 10));
    store
        .append(&a, ExpectedVersion::NoStream, events)
        .await
        .or_violation("append")?;
    let size = BatchSize::events(100).with_bytes(2_500);
    let mut after = FeedPosition::START;
    let mut batches = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let batch = store
            .read_feed_batch(after, size, &FeedFilter::all())
            .await
            .or_violation("a feed batch bounded by bytes")?;
        let numbers: Vec<u64> = batch
            .events
            .iter()
            .filter_map(|e| e.payload["n"].as_u64())
            .collect();
        after = batch.next;
        if !numbers.is_empty() {
            batches.push(numbers);
        }
        if batch.reached_head && batches.iter().map(Vec::len).sum::<usize>() >= 7 {
            break;
        }
        if batch.reached_head {
            ensure!(
                std::time::Instant::now() < deadline,
                "feed stalled at {after}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    ensure_eq!(
        batches,
        vec![vec![1, 2], vec![3, 4], vec![5], vec![6], vec![7]],
        "batches of at most 2,500 bytes, an event larger than that alone, in feed order"
    );
    Ok(())
}

/// Events flow through the repository with metadata from the command context; a domain
/// refusal stores nothing; an event that does not decode is an error naming stream and version.
pub async fn repository_flow<F: StoreFactory>(factory: &F) -> Result<(), Violation> {
    let store = factory.store(Limits::default()).await;
    let repository = Repository::<Counter, _>::new(store.clone());
    let id = Counter::stream_id("flow").or_violation("id")?;
    let ctx = CommandContext::new()
        .with_actor("tester")
        .with_header("k", "v");
    let done = repository
        .execute(&id, Increment(5), &ctx)
        .await
        .or_violation("increment")?;
    ensure_eq!(
        done.version,
        version(1)?,
        "the first command makes version 1"
    );
    ensure_eq!(done.state.value, 5, "the new state holds the increment");
    ensure_eq!(done.attempts, 1, "an uncontended command takes one attempt");

    let result = repository
        .execute(&id, Increment(Counter::MAX as u32), &CommandContext::new())
        .await;
    ensure!(
        matches!(result, Err(CommandError::Rejected(_))),
        "a command over the maximum is rejected, got {result:?}"
    );

    let stored = read_all(&store, &id).await?;
    ensure_eq!(stored.len(), 1, "a refused command stores nothing");
    let meta = &stored[0].metadata;
    ensure_eq!(
        meta.causation_id,
        Some(ctx.command_id),
        "the causation id is the command id"
    );
    ensure_eq!(
        meta.correlation_id,
        Some(ctx.correlation_id),
        "the correlation id comes from the command context"
    );
    ensure_eq!(
        meta.actor.as_deref(),
        Some("tester"),
        "the actor comes from the command context"
    );
    ensure_eq!(
        meta.headers.get("k").map(String::as_str),
        Some("v"),
        "the headers come from the command context"
    );

    // An event of a type the aggregate does not know.
    store
        .append(&id, ExpectedVersion::Any, vec![event("Mystery", 1)])
        .await
        .or_violation("append a foreign event")?;
    match repository.load(&id).await {
        Err(CommandError::Store(StoreError::Decode {
            stream,
            version: v,
            source,
        })) => {
            ensure_eq!(stream, id, "the decode error names the stream");
            ensure_eq!(v, version(2)?, "the decode error names the version");
            ensure!(
                source.to_string().contains("Mystery"),
                "the decode error names the unknown type Mystery: {source}"
            );
            Ok(())
        }
        other => Err(Violation::new(format!(
            "expected a decode error, got {:?}",
            other.map(|l| l.version)
        ))),
    }
}

/// Takes the next event of a subscription, failing after a minute.
async fn next_event(subscription: &mut crate::Subscription) -> Result<RecordedEvent, Violation> {
    tokio::time::timeout(std::time::Duration::from_secs(60), subscription.next())
        .await
        .or_violation("the subscription delivered within a minute")?
        .or_violation("the subscription does not end")?
        .or_violation("the subscription does not fail")
}

/// A subscription catches up, then delivers events appended later, each once and in order;
/// resuming from its position delivers exactly the rest.
pub async fn subscription_catch_up_and_live<F: StoreFactory>(factory: &F) -> Result<(), Violation> {
    let store = factory.store(Limits::default()).await;
    let a = stream("a")?;
    for n in 1..=5u64 {
        store
            .append(&a, ExpectedVersion::Any, vec![event("E", n)])
            .await
            .or_violation("append")?;
    }
    let options = FeedOptions::default()
        .with_batch_size(2)
        .with_poll_interval(std::time::Duration::from_millis(50));
    let mut subscription = store.subscribe(FeedPosition::START, options.clone());
    for n in 1..=5u64 {
        ensure_eq!(
            next_event(&mut subscription).await?.payload["n"],
            n,
            "catch-up in order"
        );
    }
    let live = store.clone();
    let writer = tokio::spawn(async move {
        for n in 6..=9u64 {
            live.append(&stream("a")?, ExpectedVersion::Any, vec![event("E", n)])
                .await
                .or_violation("append")?;
        }
        Ok::<(), Violation>(())
    });
    for n in 6..=7u64 {
        ensure_eq!(
            next_event(&mut subscription).await?.payload["n"],
            n,
            "live in order"
        );
    }
    let saved = subscription.position();
    drop(subscription);
    writer.await.or_violation("writer")??;
    let mut resumed = store.subscribe(saved, options);
    for n in 8..=9u64 {
        let e = next_event(&mut resumed).await?;
        ensure_eq!(
            e.payload["n"],
            n,
            "resumed exactly after the saved position"
        );
        ensure_eq!(
            e.version,
            version(n)?,
            "a resumed event keeps its stream version"
        );
    }
    Ok(())
}

/// A filtered subscription delivers only what it wants and its position moves past the rest.
pub async fn subscription_filter_advances<F: StoreFactory>(factory: &F) -> Result<(), Violation> {
    let store = factory.store(Limits::default()).await;
    for n in 1..=40u64 {
        let kind = if n == 40 { "Wanted" } else { "Unwanted" };
        store
            .append(&stream("f")?, ExpectedVersion::Any, vec![event(kind, n)])
            .await
            .or_violation("append")?;
    }
    let options = FeedOptions::default()
        .with_batch_size(3)
        .with_poll_interval(std::time::Duration::from_millis(50))
        .with_filter(FeedFilter::all().with_event_types(["Wanted"]));
    let mut subscription = store.subscribe(FeedPosition::START, options);
    let wanted = next_event(&mut subscription).await?;
    ensure_eq!(
        wanted.payload["n"],
        40,
        "the filtered subscription delivers the Wanted event first"
    );
    ensure_eq!(
        subscription.position(),
        wanted.position,
        "the position is that of the delivered event"
    );
    store
        .append(
            &stream("f")?,
            ExpectedVersion::Any,
            vec![event("Unwanted", 41)],
        )
        .await
        .or_violation("append")?;
    // Only unwanted events follow: the position still moves past them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let stored = read_all(&store, &stream("f")?).await?;
    let last = stored.last().or_violation("events")?.position;
    while subscription.position() < last {
        ensure!(
            std::time::Instant::now() < deadline,
            "position did not advance: at {} after a minute, short of {last}",
            subscription.position()
        );
        let _ =
            tokio::time::timeout(std::time::Duration::from_millis(100), subscription.next()).await;
    }
    ensure_eq!(
        subscription.position(),
        last,
        "the position moves past the unwanted events to the last one"
    );
    Ok(())
}

/// A stream's snapshot is kept and read back as saved; a snapshot of an older version never
/// replaces a newer one.
pub async fn snapshots_keep_the_latest<F: StoreFactory>(factory: &F) -> Result<(), Violation> {
    let store = factory.store(Limits::default()).await;
    let id = stream("snap")?;
    let at = |v: u64, value: u64| -> Result<Snapshot, Violation> {
        Ok(Snapshot {
            stream_id: id.clone(),
            version: version(v)?,
            state_version: 3,
            state: json!({ "value": value, "text": "ünïcødé" }),
        })
    };
    let none = store
        .load_snapshot(&id)
        .await
        .or_violation("load a missing snapshot")?;
    ensure_eq!(none, None, "a stream without a snapshot has none");

    store
        .save_snapshot(&at(20, 1)?)
        .await
        .or_violation("save a snapshot")?;
    let kept = store.load_snapshot(&id).await.or_violation("load")?;
    ensure_eq!(kept, Some(at(20, 1)?), "the snapshot reads back as saved");

    store
        .save_snapshot(&at(10, 2)?)
        .await
        .or_violation("save an older snapshot")?;
    let kept = store.load_snapshot(&id).await.or_violation("load")?;
    ensure_eq!(
        kept,
        Some(at(20, 1)?),
        "an older snapshot does not replace a newer one"
    );

    store
        .save_snapshot(&at(30, 3)?)
        .await
        .or_violation("save a newer snapshot")?;
    let kept = store.load_snapshot(&id).await.or_violation("load")?;
    ensure_eq!(
        kept,
        Some(at(30, 3)?),
        "a newer snapshot replaces the kept one"
    );
    let other = store
        .load_snapshot(&stream("other")?)
        .await
        .or_violation("load another stream's snapshot")?;
    ensure_eq!(other, None, "snapshots belong to their own stream");
    Ok(())
}

/// Runs `times` commands adding 1 on the counter `id`.
async fn increment<S: EventStore>(
    repository: &Repository<Counter, S>,
    id: &StreamId,
    times: usize,
) -> Result<(), Violation> {
    for _ in 0..times {
        repository
            .execute(id, Increment(1), &CommandContext::new())
            .await
            .or_violation("increment")?;
    }
    Ok(())
}

/// The snapshot kept for `id`, which must exist.
async fn kept_snapshot<S: SnapshotStore>(store: &S, id: &StreamId) -> Result<Snapshot, Violation> {
    store
        .load_snapshot(id)
        .await
        .or_violation("load the snapshot")?
        .or_violation("a snapshot was taken")
}

/// A repository with snapshots saves one each time a stream passes a multiple of the policy's
/// interval and loads from it plus the events after it; snapshots of another state shape, or
/// that do not decode, are ignored.
pub async fn repository_loads_snapshot_and_tail<F: StoreFactory>(
    factory: &F,
) -> Result<(), Violation> {
    let store = factory.store(Limits::default()).await;
    let policy = SnapshotPolicy::every(10);
    let repository =
        Repository::<Counter, _>::new(store.clone()).with_snapshots(store.clone(), policy);
    let id = Counter::stream_id("snapped").or_violation("id")?;
    increment(&repository, &id, 25).await?;
    let kept = kept_snapshot(&store, &id).await?;
    ensure_eq!(
        kept.version,
        version(20)?,
        "the snapshot is of the last multiple of 10"
    );
    ensure_eq!(
        kept.state_version,
        1,
        "the snapshot has the policy's state shape"
    );
    ensure_eq!(
        kept.state,
        json!({ "value": 20, "events": 20 }),
        "the snapshot holds the state at its version"
    );

    // A snapshot whose state differs from the fold shows which one a load used.
    let marked = Snapshot {
        state: json!({ "value": 1000, "events": 20 }),
        ..kept.clone()
    };
    store
        .save_snapshot(&marked)
        .await
        .or_violation("save a marked snapshot")?;
    let loaded = repository.load(&id).await.or_violation("load")?;
    ensure_eq!(
        (loaded.state.value, loaded.version),
        (1005, version(25)?),
        "a load folds the 5 events after the snapshot into it"
    );

    let reshaped = Repository::<Counter, _>::new(store.clone())
        .with_snapshots(store.clone(), policy.with_state_version(2));
    let loaded = reshaped.load(&id).await.or_violation("load")?;
    ensure_eq!(
        (loaded.state.value, loaded.version),
        (25, version(25)?),
        "a snapshot of another state shape is ignored"
    );

    let garbled = Snapshot {
        state: json!("not a counter"),
        ..kept
    };
    store
        .save_snapshot(&garbled)
        .await
        .or_violation("save a garbled snapshot")?;
    let loaded = repository.load(&id).await.or_violation("load")?;
    ensure_eq!(
        (loaded.state.value, loaded.version),
        (25, version(25)?),
        "a snapshot that does not decode is ignored"
    );

    // Commands keep working on top of a snapshot and take the next one when due.
    increment(&reshaped, &id, 5).await?;
    let kept = kept_snapshot(&store, &id).await?;
    ensure_eq!(
        (kept.version, kept.state_version, kept.state),
        (version(30)?, 2, json!({ "value": 30, "events": 30 })),
        "the next snapshot is taken at 30, in the new shape"
    );
    Ok(())
}

/// Runs every contract check as its own test, given an expression producing a
/// [`StoreFactory`].
///
/// A test fails with the message of the [`Violation`] its check returns.
///
/// ```text
/// eventsource_core::store_contract_tests!(MyFactory::new());
/// ```
#[macro_export]
macro_rules! store_contract_tests {
    ($factory:expr) => {
        $crate::store_contract_tests!(@each $factory;
            expected_versions, repository_race, idempotent_append, multi_stream_append,
            idempotent_commands, unit_of_work, bounded_reads,
            feed_filters, unicode_and_large_payloads, bad_input_refused, limits_refused,
            reads_bounded_by_bytes, repository_flow,
            subscription_catch_up_and_live, subscription_filter_advances, snapshots_keep_the_latest,
            repository_loads_snapshot_and_tail);
    };
    (@each $factory:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                if let Err(violation) = $crate::testing::contract::$name(&$factory).await {
                    panic!("{violation}");
                }
            }
        )*
    };
}
