//! The repository retries an append that failed transiently with the very same events, so a
//! command whose reply was lost is neither lost nor applied twice.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventsource_core::testing::counter::{Counter, Increment};
use eventsource_core::{
    Aggregate as _, AppendResult, CommandContext, CommandError, EventAppender, EventStream,
    ExpectedVersion, InMemoryStore, NewEvent, Repository, RetryPolicy, StoreError, StreamId,
    StreamReader, StreamVersion,
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
