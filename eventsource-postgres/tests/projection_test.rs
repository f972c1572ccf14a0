//! The projection test kit: given events appended through the store, the real runner, queries
//! of the read model, the database dropped at the end.

use std::error::Error as _;

use async_trait::async_trait;
use eventsource_core::testing::counter::{CounterEvent, Incremented};
use eventsource_core::testkit::assert_list_eq;
use eventsource_core::{
    BoxError, CommandContext, Envelope, EventMetadata, NewEvent, RecordedEvent, StreamId,
};
use eventsource_postgres::projection::{
    FailurePolicy, OnFailure, Projection, ProjectionError, RunnerOptions,
};
use eventsource_postgres::testing::{database_url, ProjectionTest, ProjectionTestError};
use serde_json::json;
use sqlx::PgConnection;

fn inc(by: u32) -> CounterEvent {
    CounterEvent::Incremented(Incremented { by })
}

fn counter(id: &str) -> StreamId {
    StreamId::new("counter", id).expect("stream id")
}

/// Per stream: the sum, the last version, the actor and correlation id of the last event.
/// Refuses increments of 13. Its table lives in the schema `stats`.
struct Totals;

#[derive(Debug, thiserror::Error)]
enum TotalsError {
    #[error("13 is unlucky")]
    Unlucky,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

#[async_trait]
impl Projection for Totals {
    type Event = Envelope<CounterEvent>;
    type Error = TotalsError;

    fn name(&self) -> &str {
        "totals"
    }

    fn tables(&self) -> &[&str] {
        &["totals"]
    }

    fn schema(&self) -> &str {
        "stats"
    }

    async fn setup(&self, tx: &mut PgConnection) -> Result<(), TotalsError> {
        sqlx::query(
            "CREATE TABLE totals (stream text PRIMARY KEY, sum bigint NOT NULL,
                                  version bigint NOT NULL, actor text, correlation uuid)",
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[Envelope<CounterEvent>],
    ) -> Result<(), TotalsError> {
        for e in events {
            let CounterEvent::Incremented(Incremented { by }) = e.event;
            if by == 13 {
                return Err(TotalsError::Unlucky);
            }
            sqlx::query(
                "INSERT INTO totals VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (stream) DO UPDATE SET sum = totals.sum + $2, version = $3,
                                                    actor = $4, correlation = $5",
            )
            .bind(e.stream_id.to_string())
            .bind(i64::from(by))
            .bind(i64::from(e.version))
            .bind(e.metadata.actor.as_deref())
            .bind(e.metadata.correlation_id)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_events_then_the_read_model_in_steps() {
    let test = ProjectionTest::new(Totals).await.expect("test");
    test.given(&counter("a"), [inc(2), inc(3)])
        .await
        .expect("given");
    test.given(&counter("b"), [inc(10)]).await.expect("given");
    test.run().await.expect("run");
    // Unqualified names resolve in the projection's schema.
    let rows: Vec<(String, i64, i64)> = test
        .query("SELECT stream, sum, version FROM totals ORDER BY stream")
        .await
        .expect("query");
    assert_list_eq(
        &[
            ("counter-a".to_owned(), 5, 2),
            ("counter-b".to_owned(), 10, 1),
        ],
        &rows,
    );

    // More events, a second run: the runner goes on from its checkpoint.
    test.given(&counter("a"), [inc(1)]).await.expect("given");
    test.run().await.expect("run");
    let rows: Vec<(i64, i64)> = test
        .query("SELECT sum, version FROM totals WHERE stream = 'counter-a'")
        .await
        .expect("query");
    assert_eq!(rows, [(6, 3)]);
    assert_eq!(test.runner().status().borrow().events_applied, 4);
    test.finish().await.expect("finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_events_carry_the_metadata_of_a_command() {
    let test = ProjectionTest::new(Totals).await.expect("test");
    let ctx = CommandContext::new().with_actor("alice");
    test.given_with(&counter("a"), [inc(1)], &ctx)
        .await
        .expect("given");
    test.run().await.expect("run");
    let rows: Vec<(Option<String>, Option<uuid::Uuid>)> = test
        .query("SELECT actor, correlation FROM totals")
        .await
        .expect("query");
    assert_eq!(rows, [(Some("alice".to_owned()), Some(ctx.correlation_id))]);

    // Without a context, a fresh one: a correlation id all the same.
    test.given(&counter("b"), [inc(1)]).await.expect("given");
    test.run().await.expect("run");
    let rows: Vec<(Option<uuid::Uuid>,)> = test
        .query("SELECT correlation FROM totals WHERE stream = 'counter-b'")
        .await
        .expect("query");
    assert!(rows[0].0.is_some());
    test.finish().await.expect("finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_stops_the_run_with_its_own_error() {
    let test = ProjectionTest::new(Totals)
        .await
        .expect("test")
        .with_runner_options(RunnerOptions {
            failure: FailurePolicy {
                max_attempts: 1,
                backoff: std::time::Duration::from_millis(1),
                on_failure: OnFailure::Stop,
            },
            ..RunnerOptions::default()
        });
    test.given(&counter("a"), [inc(1), inc(13)])
        .await
        .expect("given");
    let error = test.run().await.expect_err("13 is refused");
    let ProjectionTestError::Projection(stopped @ ProjectionError::HandlerFailed { .. }) = &error
    else {
        panic!("expected HandlerFailed, got {error:?}");
    };
    assert!(
        matches!(
            stopped
                .source()
                .and_then(|s| s.downcast_ref::<TotalsError>()),
            Some(TotalsError::Unlucky)
        ),
        "{stopped:?}"
    );
    // The event before it was applied in its own transaction (the runner narrowed the batch).
    let rows: Vec<(i64,)> = test.query("SELECT sum FROM totals").await.expect("query");
    assert_eq!(rows, [(1,)]);
    test.finish().await.expect("finish");
}

/// A raw projection sees events appended with `given_raw`, whatever their type.
struct Types;

#[async_trait]
impl Projection for Types {
    type Event = RecordedEvent;
    type Error = BoxError;

    fn name(&self) -> &str {
        "types"
    }

    fn tables(&self) -> &[&str] {
        &["types"]
    }

    async fn setup(&self, tx: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query("CREATE TABLE types (event_type text NOT NULL, position bigint NOT NULL)")
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), BoxError> {
        for e in events {
            sqlx::query("INSERT INTO types VALUES ($1, $2)")
                .bind(&e.event_type)
                .bind(i64::try_from(e.global_position().get())?)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_events_and_finish_drops_the_database() {
    let test = ProjectionTest::new(Types).await.expect("test");
    let raw = |t: &str| NewEvent::new(t, 1, json!({}), EventMetadata::default());
    test.given_raw(&counter("x"), vec![raw("Opened"), raw("Closed")])
        .await
        .expect("given");
    test.run().await.expect("run");
    let rows: Vec<(String,)> = test
        .query("SELECT event_type FROM types ORDER BY position")
        .await
        .expect("query");
    assert_list_eq(&[("Opened".to_owned(),), ("Closed".to_owned(),)], &rows);

    // A query error names the projection.
    let error = test
        .query::<(i64,)>("SELECT nothing FROM nowhere")
        .await
        .expect_err("no such table");
    assert!(error.to_string().contains("projection `types`"), "{error}");

    let name = test.database().name().to_owned();
    test.finish().await.expect("finish");
    let admin = sqlx::PgPool::connect(&database_url()).await.expect("admin");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&admin)
        .await
        .expect("count");
    assert_eq!(left, 0, "the test database is dropped");
    admin.close().await;
}
