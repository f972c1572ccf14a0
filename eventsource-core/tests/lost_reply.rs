//! The repository retries an append that failed transiently with the very same events, so a
//! command whose reply was lost is neither lost nor applied twice.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventsource_core::testing::counter::{Counter, Increment};
use eventsource_core::{
    Aggregate as _, AppendResult, CommandContext, CommandError, EventAppender, EventStream,
    ExpectedVersion, InMemoryStore, NewEvent, Repository, RetryPolicy, StoreError, StreamAppend,
    StreamId, StreamReader, StreamVersion, UnitOfWork,
};
use futures::TryStreamExt;

/// What the wrapped store does to the first `failures` appends.
#[derive(Clone, Copy)]
enum Fault {
    /// Stores the events, then reports the connection lost (the reply never arrived).
    StoredThenLost,
    /// Reports the connection lost before anything was stored.
    LostBeforeStoring,
    /// Fails for good (not transient).
    Permanent,
}

#[derive(Clone)]
struct Faulty {
    inner: InMemoryStore,
    fault: Fault,
    failures: Arc<AtomicU32>,
    appends: Arc<AtomicU32>,
}

impl Faulty {
    fn new(fault: Fault, failures: u32) -> Self {
        Self {
            inner: InMemoryStore::new(),
            fault,
            failures: Arc::new(AtomicU32::new(failures)),
            appends: Arc::new(AtomicU32::new(0)),
        }
    }
}

#[async_trait]
impl EventAppender for Faulty {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        let fail = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !fail {
            return self.inner.append(stream, expected, events).await;
        }
        let lost = || {
            StoreError::unavailable(
                format!("append to {stream}"),
                std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset"),
            )
        };
        match self.fault {
            Fault::StoredThenLost => {
                self.inner.append(stream, expected, events).await?;
                Err(lost())
            }
            Fault::LostBeforeStoring => Err(lost()),
            Fault::Permanent => Err(StoreError::backend(
                format!("append to {stream}"),
                std::io::Error::other("disk full"),
            )),
        }
    }

    async fn append_to_streams(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>, StoreError> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        let fail = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !fail {
            return self.inner.append_to_streams(appends).await;
        }
        let lost = || {
            StoreError::unavailable(
                "append to several streams",
                std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset"),
            )
        };
        match self.fault {
            Fault::StoredThenLost => {
                self.inner.append_to_streams(appends).await?;
                Err(lost())
            }
            Fault::LostBeforeStoring => Err(lost()),
            Fault::Permanent => Err(StoreError::backend(
                "append to several streams",
                std::io::Error::other("disk full"),
            )),
        }
    }
}

impl StreamReader for Faulty {
    fn read_stream<'a>(&'a self, stream: &'a StreamId, from: StreamVersion) -> EventStream<'a> {
        self.inner.read_stream(stream, from)
    }
}

fn quick() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
    }
}

async fn stored(store: &Faulty, id: &StreamId) -> Vec<eventsource_core::RecordedEvent> {
    store
        .inner
        .read_stream(id, StreamVersion::INITIAL)
        .try_collect()
        .await
        .expect("read")
}

#[tokio::test]
async fn a_stored_append_whose_reply_was_lost_is_not_applied_twice() {
    let store = Faulty::new(Fault::StoredThenLost, 1);
    let repository = Repository::<Counter, _>::new(store.clone()).with_outage_retry_policy(quick());
    let id = Counter::stream_id("c").expect("id");
    let done = repository
        .execute(&id, Increment(5), &CommandContext::new())
        .await
        .expect("the retry finds the events stored and succeeds");
    let events = stored(&store, &id).await;
    assert_eq!(events.len(), 1, "stored once");
    assert_eq!(store.appends.load(Ordering::SeqCst), 2, "appended twice");
    assert_eq!(done.version.get(), 1);
    assert_eq!(done.appended.len(), 1);
    assert_eq!(done.appended[0].event_id, events[0].event_id);
    assert_eq!(done.appended[0].position, events[0].position);
    assert_eq!(repository.load(&id).await.expect("load").state.value, 5);
}

#[tokio::test]
async fn an_append_lost_before_storing_is_stored_once_by_the_retry() {
    let store = Faulty::new(Fault::LostBeforeStoring, 2);
    let repository = Repository::<Counter, _>::new(store.clone()).with_outage_retry_policy(quick());
    let id = Counter::stream_id("c").expect("id");
    let done = repository
        .execute(&id, Increment(3), &CommandContext::new())
        .await
        .expect("the third attempt stores the events");
    let events = stored(&store, &id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(store.appends.load(Ordering::SeqCst), 3);
    assert_eq!(done.appended[0].event_id, events[0].event_id);
    assert_eq!(done.appended[0].version, events[0].version);
}

#[tokio::test]
async fn retries_are_bounded_and_permanent_failures_are_not_retried() {
    let store = Faulty::new(Fault::LostBeforeStoring, 100);
    let repository = Repository::<Counter, _>::new(store.clone()).with_outage_retry_policy(quick());
    let id = Counter::stream_id("c").expect("id");
    let result = repository
        .execute(&id, Increment(1), &CommandContext::new())
        .await;
    match result {
        Err(CommandError::Store(error)) => assert!(error.is_transient(), "{error}"),
        other => panic!("expected the transient error after 4 attempts, got {other:?}"),
    }
    assert_eq!(store.appends.load(Ordering::SeqCst), 4);

    let store = Faulty::new(Fault::Permanent, 1);
    let repository = Repository::<Counter, _>::new(store.clone()).with_outage_retry_policy(quick());
    let result = repository
        .execute(&id, Increment(1), &CommandContext::new())
        .await;
    assert!(
        matches!(&result, Err(CommandError::Store(e)) if !e.is_transient()),
        "{result:?}"
    );
    assert_eq!(store.appends.load(Ordering::SeqCst), 1, "not retried");
    assert!(stored(&store, &id).await.is_empty());
}

/// A unit of work whose commit was stored but whose reply was lost is committed again with the
/// very same events: the store recognises them, and nothing is stored twice.
#[tokio::test]
async fn a_unit_whose_reply_was_lost_is_stored_once() {
    let store = Faulty::new(Fault::StoredThenLost, 1);
    let a = Counter::stream_id("a").expect("stream id");
    let b = Counter::stream_id("b").expect("stream id");
    let ctx = CommandContext::new();
    let mut unit = UnitOfWork::new(&store);
    unit.execute::<Counter>(&a, Increment(1), &ctx)
        .await
        .expect("decide on a");
    unit.execute::<Counter>(&b, Increment(2), &ctx)
        .await
        .expect("decide on b");
    let committed = unit.commit().await.expect("the unit commits");
    assert_eq!(store.appends.load(Ordering::SeqCst), 2, "committed twice");
    assert!(committed.streams.iter().all(|s| s.already_stored));
    assert_eq!(stored(&store, &a).await.len(), 1);
    assert_eq!(stored(&store, &b).await.len(), 1);
    let first = &committed.streams[0].appended;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].event_id, stored(&store, &a).await[0].event_id);
}

/// A unit whose commit fails for good reports the failure and stores nothing.
#[tokio::test]
async fn a_unit_failing_for_good_stores_nothing() {
    let store = Faulty::new(Fault::Permanent, 1);
    let a = Counter::stream_id("a").expect("stream id");
    let mut unit = UnitOfWork::new(&store);
    unit.execute::<Counter>(&a, Increment(1), &CommandContext::new())
        .await
        .expect("decide on a");
    let error = unit.commit().await.expect_err("the commit fails");
    assert!(matches!(error, StoreError::Backend { .. }), "{error:?}");
    assert_eq!(store.appends.load(Ordering::SeqCst), 1, "not retried");
    assert!(stored(&store, &a).await.is_empty());
}
