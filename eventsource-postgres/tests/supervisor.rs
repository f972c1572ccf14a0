//! The supervisor against PostgreSQL: several projection runners under one shutdown, one status
//! view, and restarts with backoff after failures.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use eventsource_core::{
    BoxError, Category, EventAppender, EventMetadata, ExpectedVersion, FeedFilter, FeedPosition,
    NewEvent, RecordedEvent, StreamId,
};
use eventsource_postgres::projection::{
    FailurePolicy, OnFailure, Projection, ProjectionRunner, RunnerOptions,
};
use eventsource_postgres::testing::TestDatabase;
use eventsource_postgres::{
    Component, ComponentState, ComponentStatus, PostgresStore, Supervisor, SupervisorError,
    SupervisorOptions,
};
use serde_json::json;
use sqlx::PgConnection;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long any awaited condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// One row per `item` event, in a table named after the projection; fails every batch while
/// `broken` is set.
struct Items {
    name: &'static str,
    tables: [&'static str; 1],
    broken: AtomicBool,
    failures: AtomicU32,
}

impl Items {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            tables: [name],
            broken: AtomicBool::new(false),
            failures: AtomicU32::new(0),
        }
    }
}

#[async_trait]
impl Projection for Items {
    type Event = RecordedEvent;
    type Error = BoxError;

    fn name(&self) -> &str {
        self.name
    }

    fn tables(&self) -> &[&str] {
        &self.tables
    }

    fn filter(&self) -> FeedFilter {
        FeedFilter::all().with_categories([Category::new("item").expect("category")])
    }

    async fn setup(&self, tx: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query(&format!(
            "CREATE TABLE {} (stream text NOT NULL, version bigint NOT NULL, PRIMARY KEY (stream, version))",
            self.name
        ))
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), BoxError> {
        if self.broken.load(Ordering::SeqCst) {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err("injected failure: the handler is broken".into());
        }
        for event in events {
            sqlx::query(&format!(
                "INSERT INTO {} (stream, version) VALUES ($1, $2)",
                self.name
            ))
            .bind(event.stream_id.id())
            .bind(i64::try_from(event.version.get()).expect("version"))
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}

async fn fresh() -> (TestDatabase, PostgresStore) {
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");
    (db, store)
}

async fn append_items(store: &PostgresStore, streams: usize, events: usize) {
    for i in 0..events {
        let stream = StreamId::new("item", format!("s{}", i % streams)).expect("id");
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![NewEvent::new(
                    "ItemAdded",
                    1,
                    json!({ "n": i }),
                    EventMetadata::default(),
                )],
            )
            .await
            .expect("append");
    }
}

async fn rows(store: &PostgresStore, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(store.pool())
        .await
        .expect("count the read model's rows")
}

async fn head(store: &PostgresStore) -> FeedPosition {
    store
        .head_position()
        .await
        .expect("head")
        .expect("events appended")
}

fn quick_runner(store: &PostgresStore, projection: Arc<Items>) -> ProjectionRunner<Items> {
    ProjectionRunner::with_shared(store.clone(), projection).with_options(RunnerOptions {
        feed: eventsource_core::FeedOptions::default()
            .with_poll_interval(Duration::from_millis(100)),
        standby_retry: Duration::from_millis(50),
        failure: FailurePolicy {
            max_attempts: 1,
            backoff: Duration::from_millis(1),
            on_failure: OnFailure::Stop,
        },
    })
}

fn quick_supervisor() -> Supervisor {
    Supervisor::new().with_options(SupervisorOptions {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        // Failing runs here last milliseconds, or a few hundred on a loaded machine: never
        // taken for a recovery that restarts the backoff.
        healthy_after: DEADLINE,
        shutdown_timeout: Duration::from_secs(10),
        observe_interval: Duration::from_millis(20),
    })
}

/// Polls the supervisor's status until `done` holds for it, or fails the test after
/// [`DEADLINE`], showing the last status.
async fn wait_for_status(
    supervisor: &Supervisor,
    what: &str,
    done: impl Fn(&[ComponentStatus]) -> bool,
) -> Vec<ComponentStatus> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = supervisor.status();
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "waited {DEADLINE:?} for {what}; status: {status:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn find<'a>(status: &'a [ComponentStatus], name: &str) -> &'a ComponentStatus {
    status
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("`{name}` in the status: {status:#?}"))
}

/// Two projections under one supervisor catch up on the events appended before it started and
/// follow those appended while it runs; the status lists both with their positions; cancelling
/// the token stops both and `run` returns `Ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_projections_catch_up_follow_and_stop_together() {
    let (_db, store) = fresh().await;
    append_items(&store, 5, 40).await;
    let first = Arc::new(Items::new("items_a"));
    let second = Arc::new(Items::new("items_b"));
    let supervisor = Arc::new(
        quick_supervisor()
            .with(quick_runner(&store, first.clone()))
            .with_shared(Arc::new(quick_runner(&store, second.clone()))),
    );
    let before = supervisor.status();
    assert_eq!(
        before
            .iter()
            .map(|c| (c.name.as_str(), c.state))
            .collect::<Vec<_>>(),
        [
            ("items_a", ComponentState::NotStarted),
            ("items_b", ComponentState::NotStarted)
        ]
    );

    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (supervisor, shutdown) = (supervisor.clone(), shutdown.clone());
        async move { supervisor.run(shutdown).await }
    });

    let caught_up = head(&store).await;
    let status = wait_for_status(&supervisor, "both at the head and live", |status| {
        status
            .iter()
            .all(|c| c.state == ComponentState::Live && c.position >= Some(caught_up))
    })
    .await;
    assert_eq!(status.len(), 2, "{status:#?}");
    for name in ["items_a", "items_b"] {
        let component = find(&status, name);
        assert_eq!(component.events_handled, 40, "{component:#?}");
        assert_eq!(component.restarts, 0, "{component:#?}");
        assert_eq!(component.last_error, None, "{component:#?}");
        assert_eq!(rows(&store, name).await, 40, "{name}'s rows");
    }

    // Live: events appended now reach both.
    append_items(&store, 5, 10).await;
    let live_head = head(&store).await;
    wait_for_status(&supervisor, "both following new events", |status| {
        status
            .iter()
            .all(|c| c.position >= Some(live_head) && c.events_handled == 50)
    })
    .await;
    assert_eq!(rows(&store, "items_a").await, 50);
    assert_eq!(rows(&store, "items_b").await, 50);

    shutdown.cancel();
    let result = tokio::time::timeout(DEADLINE, running)
        .await
        .expect("run returns soon after shutdown")
        .expect("the supervisor's task");
    assert!(result.is_ok(), "{result:?}");
    let after = supervisor.status();
    for component in &after {
        assert_eq!(component.state, ComponentState::Stopped, "{after:#?}");
        assert_eq!(component.position, Some(live_head), "{after:#?}");
    }
}

/// A projection whose handler fails (and whose policy is to stop) is run again after the
/// backoff, each failure counted in the status with its error; once the handler is fixed, the
/// next restart catches up and follows live, with no help from the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_projection_is_restarted_until_it_works() {
    let (_db, store) = fresh().await;
    append_items(&store, 3, 12).await;
    let healthy = Arc::new(Items::new("items_ok"));
    let flaky = Arc::new(Items::new("items_flaky"));
    flaky.broken.store(true, Ordering::SeqCst);
    let supervisor = Arc::new(
        quick_supervisor()
            .with(quick_runner(&store, healthy.clone()))
            .with(quick_runner(&store, flaky.clone())),
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (supervisor, shutdown) = (supervisor.clone(), shutdown.clone());
        async move { supervisor.run(shutdown).await }
    });

    let status = wait_for_status(&supervisor, "three restarts of the failing one", |s| {
        find(s, "items_flaky").restarts >= 3
    })
    .await;
    let failing = find(&status, "items_flaky");
    let error = failing.last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains("injected failure") && error.contains("items_flaky"),
        "the status names the failure: {failing:#?}"
    );
    assert_eq!(failing.events_handled, 0, "{failing:#?}");
    assert!(flaky.failures.load(Ordering::SeqCst) >= 3);
    // The healthy one is not disturbed by its neighbour's failures.
    let caught_up = head(&store).await;
    wait_for_status(&supervisor, "the healthy one live", |s| {
        let ok = find(s, "items_ok");
        ok.state == ComponentState::Live && ok.position >= Some(caught_up) && ok.restarts == 0
    })
    .await;

    flaky.broken.store(false, Ordering::SeqCst);
    let status = wait_for_status(&supervisor, "the fixed one live at the head", |s| {
        let fixed = find(s, "items_flaky");
        fixed.state == ComponentState::Live && fixed.position >= Some(caught_up)
    })
    .await;
    let fixed = find(&status, "items_flaky");
    assert!(fixed.restarts >= 3, "{fixed:#?}");
    assert!(
        fixed.last_error.is_some(),
        "the last error is kept: {fixed:#?}"
    );
    assert_eq!(rows(&store, "items_flaky").await, 12);

    // And it follows live after its restarts.
    append_items(&store, 3, 3).await;
    let live_head = head(&store).await;
    wait_for_status(&supervisor, "the fixed one following", |s| {
        find(s, "items_flaky").position >= Some(live_head)
    })
    .await;
    assert_eq!(rows(&store, "items_flaky").await, 15);

    shutdown.cancel();
    let result = tokio::time::timeout(DEADLINE, running)
        .await
        .expect("run returns soon after shutdown")
        .expect("the supervisor's task");
    assert!(result.is_ok(), "{result:?}");
}

/// A component that fails (by error or panic) a set number of times, recording when each run
/// started, then runs until shutdown; or, with `finish`, returns `Ok` at once.
struct Flaky {
    name: &'static str,
    failures_left: AtomicU32,
    finish: bool,
    starts: Mutex<Vec<Instant>>,
}

impl Flaky {
    fn new(name: &'static str, failures: u32) -> Self {
        Self {
            name,
            failures_left: AtomicU32::new(failures),
            finish: false,
            starts: Mutex::new(Vec::new()),
        }
    }
}

#[async_trait]
impl Component for Flaky {
    fn name(&self) -> String {
        self.name.to_owned()
    }

    async fn run(&self, shutdown: CancellationToken) -> Result<(), BoxError> {
        self.starts.lock().expect("lock").push(Instant::now());
        let left = self.failures_left.load(Ordering::SeqCst);
        if left > 0 {
            self.failures_left.store(left - 1, Ordering::SeqCst);
            if left % 2 == 0 {
                panic!("flaky panics ({left} failures left)");
            }
            return Err(format!("flaky fails ({left} failures left)").into());
        }
        if !self.finish {
            shutdown.cancelled().await;
        }
        Ok(())
    }
}

/// Failures (errors and panics alike) are counted, and the waits between runs double up to
/// the maximum; a component that returns `Ok` before shutdown is finished and not run again;
/// two components with one name are refused, and so is a second `run` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_back_off_and_finished_components_stay_finished() {
    let flaky = Arc::new(Flaky::new("flaky", 5));
    let done = Arc::new(Flaky {
        finish: true,
        ..Flaky::new("done", 0)
    });
    let supervisor = Arc::new(
        quick_supervisor()
            .with_shared(flaky.clone())
            .with_shared(done.clone()),
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (supervisor, shutdown) = (supervisor.clone(), shutdown.clone());
        async move { supervisor.run(shutdown).await }
    });
    let status = wait_for_status(&supervisor, "five restarts, then running", |s| {
        find(s, "flaky").state == ComponentState::Running
            && find(s, "done").state == ComponentState::Finished
            && flaky.starts.lock().expect("lock").len() == 6
    })
    .await;
    let component = find(&status, "flaky");
    assert_eq!(component.restarts, 5, "{component:#?}");
    let error = component.last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains("flaky fails (1 failures left)"),
        "{component:#?}"
    );
    let finished = find(&status, "done");
    assert_eq!(finished.restarts, 0, "{finished:#?}");

    let starts = flaky.starts.lock().expect("lock").clone();
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    // 50, 100, 200, 400 ms, then capped at 400 ms.
    for (gap, least) in gaps.iter().zip([50, 100, 200, 400, 400]) {
        assert!(
            *gap >= Duration::from_millis(least),
            "waits between runs {gaps:?}: expected at least {least} ms"
        );
    }
    assert!(
        gaps[4] < Duration::from_millis(790),
        "the wait is capped at max_backoff: {gaps:?}"
    );

    assert!(matches!(
        supervisor.run(CancellationToken::new()).await,
        Err(SupervisorError::AlreadyRunning)
    ));

    shutdown.cancel();
    let result = tokio::time::timeout(DEADLINE, running)
        .await
        .expect("run returns soon after shutdown")
        .expect("the supervisor's task");
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(done.starts.lock().expect("lock").len(), 1, "run once only");
    let status = supervisor.status();
    assert_eq!(find(&status, "flaky").state, ComponentState::Stopped);
    assert_eq!(find(&status, "done").state, ComponentState::Finished);

    let twins = Supervisor::new()
        .with(Flaky::new("twin", 0))
        .with(Flaky::new("twin", 0));
    assert!(matches!(
        twins.run(CancellationToken::new()).await,
        Err(SupervisorError::DuplicateName(name)) if name == "twin"
    ));
}
