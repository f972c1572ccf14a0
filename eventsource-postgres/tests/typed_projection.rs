//! Typed read models: a projection receives its domain events decoded, the store reads only
//! its event types, an event that does not decode goes through the failure policy, and the
//! handler's own error type comes back out of the runner's error.

use std::error::Error as _;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use eventsource_core::testing::counter::{CounterEvent, Incremented};
use eventsource_core::{
    Envelope, EventAppender, EventMetadata, ExpectedVersion, NewEvent, StoreError, StreamId,
};
use eventsource_postgres::projection::{
    dead_letters, FailurePolicy, OnFailure, Projection, ProjectionError, ProjectionRunner,
    RunnerOptions,
};
use eventsource_postgres::testing::TestDatabase;
use eventsource_postgres::PostgresStore;
use serde_json::json;
use sqlx::PgConnection;

/// The handler's own error.
#[derive(Debug, thiserror::Error)]
enum TotalError {
    #[error("increments of {by} are refused")]
    Refused { by: u32 },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Sums the increments of every counter; refuses increments of `refuse`.
struct Total {
    refuse: AtomicU32,
}

#[async_trait]
impl Projection for Total {
    type Event = Envelope<CounterEvent>;
    type Error = TotalError;

    fn name(&self) -> &str {
        "total"
    }

    fn tables(&self) -> &[&str] {
        &["total"]
    }

    async fn setup(&self, tx: &mut PgConnection) -> Result<(), TotalError> {
        sqlx::query("CREATE TABLE total (sum bigint NOT NULL, last_version bigint)")
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO total VALUES (0, NULL)")
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[Envelope<CounterEvent>],
    ) -> Result<(), TotalError> {
        for envelope in events {
            let CounterEvent::Incremented(Incremented { by }) = envelope.event;
            if by == self.refuse.load(Ordering::SeqCst) {
                return Err(TotalError::Refused { by });
            }
            sqlx::query("UPDATE total SET sum = sum + $1, last_version = $2")
                .bind(i64::from(by))
                .bind(i64::from(envelope.version))
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }
}

async fn append(
    store: &PostgresStore,
    stream: &StreamId,
    event_type: &str,
    payload: serde_json::Value,
) {
    store
        .append(
            stream,
            ExpectedVersion::Any,
            vec![NewEvent::new(
                event_type,
                1,
                payload,
                EventMetadata::default(),
            )],
        )
        .await
        .expect("append");
}

async fn total(store: &PostgresStore) -> i64 {
    sqlx::query_scalar("SELECT sum FROM total")
        .fetch_one(store.pool())
        .await
        .expect("read the model")
}

fn options(on_failure: OnFailure) -> RunnerOptions {
    RunnerOptions {
        failure: FailurePolicy {
            max_attempts: 2,
            backoff: std::time::Duration::from_millis(1),
            on_failure,
        },
        ..RunnerOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_events_typed_errors_and_undecodable_events() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let counter = StreamId::new("counter", "1").expect("id");
    append(&store, &counter, "CounterIncremented", json!({ "by": 2 })).await;
    // Not one of CounterEvent's types: the store does not even read it.
    append(&store, &counter, "CounterRenamed", json!({ "name": "x" })).await;
    append(&store, &counter, "CounterIncremented", json!({ "by": 3 })).await;

    let projection = Total {
        refuse: AtomicU32::new(0),
    };
    let runner =
        ProjectionRunner::new(store.clone(), projection).with_options(options(OnFailure::Stop));
    runner
        .run_until_caught_up()
        .await
        .expect("typed events applied");
    assert_eq!(total(&store).await, 5);

    // The handler's own error comes back out of the runner's error.
    runner.projection().refuse.store(7, Ordering::SeqCst);
    append(&store, &counter, "CounterIncremented", json!({ "by": 7 })).await;
    let stopped = runner.run_until_caught_up().await.expect_err("refused");
    let own = stopped
        .source()
        .and_then(|source| source.downcast_ref::<TotalError>());
    assert!(
        matches!(own, Some(TotalError::Refused { by: 7 })),
        "{stopped:?}"
    );
    match &stopped {
        ProjectionError::HandlerFailed { event, .. } => {
            assert_eq!((event.version.get(), event.attempts), (4, 2))
        }
        other => panic!("expected HandlerFailed, got {other:?}"),
    }

    // An event of the projection's type that does not decode goes through the policy: stop...
    runner.projection().refuse.store(0, Ordering::SeqCst);
    runner
        .run_until_caught_up()
        .await
        .expect("the 7 is applied now");
    append(
        &store,
        &counter,
        "CounterIncremented",
        json!({ "by": "many" }),
    )
    .await;
    append(&store, &counter, "CounterIncremented", json!({ "by": 10 })).await;
    let stopped = runner
        .run_until_caught_up()
        .await
        .expect_err("does not decode");
    let decode = stopped
        .source()
        .and_then(|source| source.downcast_ref::<StoreError>());
    assert!(
        matches!(decode, Some(StoreError::Decode { .. })),
        "{stopped:?}"
    );
    assert_eq!(
        total(&store).await,
        12,
        "nothing after the undecodable event"
    );

    // ... or park it as a dead letter, with its error text, and go on.
    let parking = ProjectionRunner::new(
        store.clone(),
        Total {
            refuse: AtomicU32::new(0),
        },
    )
    .with_options(options(OnFailure::DeadLetter));
    parking.run_until_caught_up().await.expect("goes on");
    assert_eq!(total(&store).await, 22);
    let parked = dead_letters::list(&store, "total").await.expect("list");
    assert_eq!(parked.len(), 1);
    assert!(
        parked[0].error.contains("does not decode"),
        "{}",
        parked[0].error
    );

    store.close().await;
    db.drop_database().await.expect("drop");
}
