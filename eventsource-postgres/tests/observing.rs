//! What a service, or another process, can observe through the public API alone: where a
//! command's events are in the feed, when a running projection has applied them, how far
//! behind a projection is, and which runner instance holds it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventsource_core::testing::counter::{Counter, Increment};
use eventsource_core::{
    Aggregate, BoxError, Category, CommandContext, EventAppender, EventMetadata, ExpectedVersion,
    FeedFilter, NewEvent, RecordedEvent, Repository, StreamId,
};
use eventsource_postgres::projection::lag::lag_of;
use eventsource_postgres::projection::{active_runner, Projection, ProjectionRunner, RunnerState};
use eventsource_postgres::testing::TestDatabase;
use eventsource_postgres::{feed_position, PostgresStore};
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

/// Counts the `counter` events it applied.
struct Applied;

#[async_trait]
impl Projection for Applied {
    type Event = RecordedEvent;
    type Error = BoxError;

    fn name(&self) -> &str {
        "applied"
    }

    fn tables(&self) -> &[&str] {
        &["applied"]
    }

    fn filter(&self) -> FeedFilter {
        FeedFilter::all().with_categories([Category::new(Counter::CATEGORY).expect("category")])
    }

    async fn setup(&self, tx: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query("CREATE TABLE applied (events bigint NOT NULL)")
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO applied VALUES (0)")
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), BoxError> {
        sqlx::query("UPDATE applied SET events = events + $1")
            .bind(i64::try_from(events.len())?)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

async fn applied(store: &PostgresStore) -> i64 {
    sqlx::query_scalar("SELECT events FROM applied")
        .fetch_one(store.pool())
        .await
        .expect("read the model")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_observes_its_commands_and_projections() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    // Another process: its own pool, and no projection code.
    let observer = PostgresStore::new(db.pool(2).await.expect("observer pool"));
    let repository = Repository::<Counter, _>::new(store.clone());
    let id = Counter::stream_id("c-1").expect("id");

    // Which events a command stored, and where they are in the feed.
    let done = repository
        .execute(&id, Increment(2), &CommandContext::new())
        .await
        .expect("command");
    assert_eq!(done.appended.len(), 1);
    let appended = done.appended[0];
    assert_eq!(appended.version.get(), 1);
    assert_eq!(
        observer
            .feed_position_of(appended.event_id)
            .await
            .expect("position"),
        Some(appended.position)
    );
    assert_eq!(
        observer
            .feed_position_of(uuid::Uuid::now_v7())
            .await
            .expect("position"),
        None
    );
    let row =
        sqlx::query("SELECT transaction_id, position FROM eventsource.events WHERE event_id = $1")
            .bind(appended.event_id)
            .fetch_one(observer.pool())
            .await
            .expect("a row of my own query");
    assert_eq!(
        feed_position(&row).expect("position of a row"),
        appended.position
    );

    // Waiting on a runner that is already running.
    let runner = Arc::new(ProjectionRunner::new(store.clone(), Applied).with_instance("worker-a"));
    let shutdown = CancellationToken::new();
    let task = {
        let (runner, shutdown) = (runner.clone(), shutdown.clone());
        tokio::spawn(async move { runner.run(shutdown).await })
    };
    let at = runner
        .wait_until_applied(appended.position)
        .await
        .expect("the runner applies the command's event");
    assert!(at >= appended.position);
    assert_eq!(applied(&store).await, 1);
    for n in 0..4 {
        repository
            .execute(&id, Increment(n), &CommandContext::new())
            .await
            .expect("command");
    }
    runner.wait_until_caught_up().await.expect("caught up");
    assert_eq!(applied(&store).await, 5);

    // Who holds the projection, seen from the other process.
    let holder = active_runner(&observer, "applied")
        .await
        .expect("read the holder")
        .expect("a runner is active");
    assert_eq!(holder.instance, "worker-a");
    assert!(holder.since <= chrono::Utc::now());

    // Lag, seen from the other process with the filter the runner registered: events of other
    // categories do not count.
    shutdown.cancel();
    task.await
        .expect("runner task")
        .expect("runner stops cleanly");
    assert_eq!(runner.status().borrow().state, RunnerState::Stopped);
    assert_eq!(
        active_runner(&observer, "applied")
            .await
            .expect("read the holder"),
        None,
        "a stopped runner holds nothing"
    );
    let other = StreamId::new("other", "1").expect("id");
    let unwanted = NewEvent::new("Noise", 1, serde_json::json!({}), EventMetadata::default());
    store
        .append(&other, ExpectedVersion::Any, vec![unwanted])
        .await
        .expect("append");
    for n in 0..3 {
        repository
            .execute(&id, Increment(n), &CommandContext::new())
            .await
            .expect("command");
    }
    let lag = lag_of(&observer, "applied").await.expect("lag");
    assert_eq!(lag.events_behind, 3);
    assert!(lag.checkpoint.is_some());

    // A runner that has stopped is reported as such to whoever waits on it.
    let waited = tokio::time::timeout(Duration::from_secs(30), runner.wait_until_caught_up())
        .await
        .expect("returns at once");
    assert!(waited.is_err(), "{waited:?}");

    observer.close().await;
    store.close().await;
    db.drop_database().await.expect("drop");
}
