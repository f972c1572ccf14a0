//! Projection runners against PostgreSQL: crash safety, two runners of one projection, poison
//! events, rebuilds under load, lag.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventsource_core::{
    BatchSize, BoxError, Category, EventAppender, EventMetadata, ExpectedVersion, FeedFilter,
    FeedOptions, FeedPosition, FeedReader, NewEvent, RecordedEvent, StreamId,
};
use eventsource_postgres::projection::{
    dead_letters, lag, rebuild, FailurePolicy, OnFailure, Projection, ProjectionError,
    ProjectionRunner, RebuildOptions, RunnerOptions, RunnerState, RunnerStatus,
};
use eventsource_postgres::testing::TestDatabase;
use eventsource_postgres::PostgresStore;
use serde_json::json;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

/// Counts events and sums their `n` per stream, with failures injectable on purpose.
#[derive(Default)]
struct Tally {
    /// When set, the handler succeeds this many more times, then fails after its writes
    /// every time.
    fail_after: std::sync::Mutex<Option<u32>>,
    /// Refuse events whose payload has `"poison": true` until fixed.
    poison_fixed: AtomicBool,
    /// Sleep per batch, to keep batches in flight.
    slow: AtomicBool,
    /// When set, the handler completes this many more batches, then never returns (a process
    /// stuck mid-batch, until its task is aborted).
    stall_after: std::sync::Mutex<Option<u32>>,
}

#[async_trait]
impl Projection for Tally {
    type Event = RecordedEvent;
    type Error = BoxError;

    fn name(&self) -> &str {
        "tally"
    }

    fn tables(&self) -> &[&str] {
        &["tally"]
    }

    fn filter(&self) -> FeedFilter {
        FeedFilter::all().with_categories([Category::new("tally").expect("category")])
    }

    async fn setup(&self, tx: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query("CREATE TABLE tally (stream text PRIMARY KEY, events bigint NOT NULL, total bigint NOT NULL)")
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), BoxError> {
        for event in events {
            if event.payload["poison"] == true && !self.poison_fixed.load(Ordering::SeqCst) {
                return Err(format!("cannot digest event {}", event.version).into());
            }
            sqlx::query(
                "INSERT INTO tally (stream, events, total) VALUES ($1, 1, $2)
                 ON CONFLICT (stream) DO UPDATE SET events = tally.events + 1, total = tally.total + EXCLUDED.total",
            )
            .bind(event.stream_id.id())
            .bind(event.payload["n"].as_i64().unwrap_or(0))
            .execute(&mut *tx)
            .await?;
        }
        if self.slow.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let stalled = match self.stall_after.lock().expect("lock").as_mut() {
            Some(0) => true,
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        };
        if stalled {
            std::future::pending::<()>().await;
        }
        let mut fail_after = self.fail_after.lock().expect("lock");
        match fail_after.as_mut() {
            Some(0) => Err("injected failure after the batch's writes".into()),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

fn tally_event(n: i64) -> NewEvent {
    NewEvent::new("Counted", 1, json!({ "n": n }), EventMetadata::default())
}

async fn append_many(store: &PostgresStore, streams: usize, events: usize, offset: usize) {
    for i in 0..events {
        let stream = StreamId::new("tally", format!("s{}", (i + offset) % streams)).expect("id");
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![tally_event((i + offset) as i64)],
            )
            .await
            .expect("append");
    }
}

/// The read model as rows, and what a from-scratch build must contain, computed from the events.
async fn model(store: &PostgresStore) -> Vec<(String, i64, i64)> {
    sqlx::query_as("SELECT stream, events, total FROM tally ORDER BY stream")
        .fetch_all(store.pool())
        .await
        .expect("read the model")
}

async fn expected(store: &PostgresStore, exclude_poison: bool) -> Vec<(String, i64, i64)> {
    sqlx::query_as(
        "SELECT stream_id, count(*), sum((payload->>'n')::bigint)::bigint FROM eventsource.events
         WHERE category = 'tally' AND NOT ($1 AND payload ? 'poison')
         GROUP BY stream_id ORDER BY stream_id",
    )
    .bind(exclude_poison)
    .fetch_all(store.pool())
    .await
    .expect("compute the expected model")
}

fn quick_options(batch_size: usize) -> RunnerOptions {
    RunnerOptions {
        feed: FeedOptions::default()
            .with_batch_size(batch_size)
            .with_poll_interval(Duration::from_millis(100)),
        standby_retry: Duration::from_millis(50),
        failure: FailurePolicy {
            max_attempts: 1,
            backoff: Duration::from_millis(1),
            on_failure: OnFailure::Stop,
        },
    }
}

/// Waits until the feed shows `count` events (another test's open transaction may hold it
/// back for a moment; once shown, they stay readable).
async fn wait_until_readable(store: &PostgresStore, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let batch = store
            .read_feed_batch(
                FeedPosition::START,
                BatchSize::events(count),
                &FeedFilter::all(),
            )
            .await
            .expect("read the feed");
        if batch.events.len() == count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} events readable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn fresh() -> (TestDatabase, PostgresStore) {
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");
    (db, store)
}

/// Failures injected after the handler's writes, and runner tasks aborted mid-batch, at many
/// points: after a restart the model equals a from-scratch build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_safety_under_failures_and_aborts() {
    let (_db, store) = fresh().await;
    append_many(&store, 20, 1_500, 0).await;
    // Every batch below is then a full one.
    wait_until_readable(&store, 1_500).await;
    let projection = Arc::new(Tally::default());
    let runner = ProjectionRunner::with_shared(store.clone(), projection.clone())
        .with_options(quick_options(37));

    // Injected failures: each run lets some batches through, then fails after the writes of
    // every later attempt; the runner stops with the failing batch rolled back.
    for (i, passing) in [0, 3, 1, 7, 2, 5, 0, 4].into_iter().enumerate() {
        *projection.fail_after.lock().unwrap() = Some(passing);
        let before = runner.status().borrow().events_applied;
        match runner.run_until_caught_up().await {
            Err(ProjectionError::HandlerFailed { source, .. }) => {
                assert!(source.to_string().contains("injected"), "{source}");
            }
            other => {
                panic!("run {i}: expected the injected failure to stop the runner, got {other:?}")
            }
        }
        let applied = runner.status().borrow().events_applied - before;
        assert_eq!(
            applied,
            u64::from(passing) * 37,
            "run {i}: only the passing batches applied"
        );
        let (got, want) = (model(&store).await, expected(&store, false).await);
        let got_events: i64 = got.iter().map(|r| r.1).sum();
        assert_eq!(
            got_events as u64,
            runner.status().borrow().events_applied,
            "run {i}: nothing of a failed batch leaked"
        );
        assert!(got_events < want.iter().map(|r| r.1).sum::<i64>());
    }
    *projection.fail_after.lock().unwrap() = None;
    runner.run_until_caught_up().await.expect("catch up");
    assert_eq!(
        model(&store).await,
        expected(&store, false).await,
        "after injected failures"
    );

    // Aborted runner tasks, mid-batch, at many points.
    append_many(&store, 20, 1_500, 1_500).await;
    projection.slow.store(true, Ordering::SeqCst);
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..12 {
        let runner = Arc::new(
            ProjectionRunner::with_shared(store.clone(), projection.clone())
                .with_options(quick_options(23)),
        );
        let task = tokio::spawn({
            let runner = runner.clone();
            async move { runner.run(CancellationToken::new()).await }
        });
        tokio::time::sleep(Duration::from_millis(rng.u64(5..60))).await;
        task.abort();
        let _ = task.await;
    }
    projection.slow.store(false, Ordering::SeqCst);
    let restarted = ProjectionRunner::with_shared(store.clone(), projection.clone())
        .with_options(quick_options(100));
    restarted
        .run_until_caught_up()
        .await
        .expect("catch up after aborts");
    assert_eq!(
        model(&store).await,
        expected(&store, false).await,
        "after aborted runners"
    );
}

/// Waits until the model equals the from-scratch expectation.
async fn wait_for_model(store: &PostgresStore) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (got, want) = (model(store).await, expected(store, false).await);
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "model never matched: {got:?} vs {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn runner_backend_pid(store: &PostgresStore, db: &TestDatabase) -> i32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database
             WHERE l.locktype = 'advisory' AND l.granted AND d.datname = $1 LIMIT 1",
        )
        .bind(db.name())
        .fetch_optional(store.pool())
        .await
        .expect("find the lock holder");
        if let Some(pid) = pid {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no runner holds the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn terminate(store: &PostgresStore, pid: i32) {
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(store.pool())
        .await
        .expect("terminate");
    assert!(killed);
}

/// Two runners of one projection (two pools standing for two processes): every event applied
/// exactly once; killing the active one's connection, and then the active process, hands over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_apply_once_and_hand_over() {
    let (db, store) = fresh().await;
    let second_process = PostgresStore::new(db.pool(5).await.expect("second pool"));
    let token = CancellationToken::new();
    let runners = [
        Arc::new(
            ProjectionRunner::new(store.clone(), Tally::default()).with_options(quick_options(50)),
        ),
        Arc::new(
            ProjectionRunner::new(second_process, Tally::default()).with_options(quick_options(50)),
        ),
    ];
    let mut tasks: Vec<_> = runners
        .iter()
        .map(|r| {
            let (r, token) = (r.clone(), token.clone());
            Some(tokio::spawn(async move { r.run(token).await }))
        })
        .collect();

    append_many(&store, 10, 600, 0).await;
    wait_for_model(&store).await;
    let active: Vec<usize> = (0..2)
        .filter(|&i| {
            matches!(
                runners[i].status().borrow().state,
                RunnerState::Live | RunnerState::CatchingUp
            )
        })
        .collect();
    assert_eq!(active.len(), 1, "exactly one runner is active");

    // The active runner's connection dies: processing goes on, still exactly once.
    let pid = runner_backend_pid(&store, &db).await;
    terminate(&store, pid).await;
    append_many(&store, 10, 300, 600).await;
    wait_for_model(&store).await;

    // The active process dies: the other one takes over.
    let active = (0..2)
        .find(|&i| {
            matches!(
                runners[i].status().borrow().state,
                RunnerState::Live | RunnerState::CatchingUp
            )
        })
        .expect("an active runner");
    let other = 1 - active;
    let activations_before = runners[other].status().borrow().activations;
    if let Some(task) = tasks[active].take() {
        // Dropping the task drops its connection, as a dying process would.
        task.abort();
        let _ = task.await;
    }
    append_many(&store, 10, 300, 900).await;
    wait_for_model(&store).await;
    assert!(
        runners[other].status().borrow().activations > activations_before,
        "the standby took over"
    );

    token.cancel();
    for task in tasks.into_iter().flatten() {
        task.await.expect("join").expect("clean shutdown");
    }
}

fn poisoned_events() -> Vec<NewEvent> {
    (1..=50)
        .map(|n| {
            let payload = if n == 25 {
                json!({ "n": n, "poison": true })
            } else {
                json!({ "n": n })
            };
            NewEvent::new("Counted", 1, payload, EventMetadata::default())
        })
        .collect()
}

/// Appends the poisoned events to `stream` and runs a dead-lettering runner over them: the
/// poison is parked, the rest applied. Returns the projection (the poison still unfixed).
async fn park_the_poison(store: &PostgresStore, stream: &StreamId) -> Arc<Tally> {
    store
        .append(stream, ExpectedVersion::NoStream, poisoned_events())
        .await
        .expect("append");
    let projection = Arc::new(Tally::default());
    let mut options = quick_options(10);
    options.failure.max_attempts = 2;
    options.failure.on_failure = OnFailure::DeadLetter;
    let runner =
        ProjectionRunner::with_shared(store.clone(), projection.clone()).with_options(options);
    runner
        .run_until_caught_up()
        .await
        .expect("the runner goes on");
    assert_eq!(runner.status().borrow().dead_lettered, 1);
    projection
}

/// A poison event: with the stop policy the runner stops before it and names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_event_stops_the_runner_before_it() {
    let (_db, store) = fresh().await;
    let stream = StreamId::new("tally", "p").expect("id");
    let appended = store
        .append(&stream, ExpectedVersion::NoStream, poisoned_events())
        .await
        .expect("append");
    let mut options = quick_options(10);
    options.failure.max_attempts = 3;
    let projection = Tally::default();
    let runner = ProjectionRunner::new(store.clone(), Tally::default()).with_options(options);
    match runner.run_until_caught_up().await {
        Err(ProjectionError::HandlerFailed { event, source }) => {
            let (s, version, attempts, error) = (
                event.stream,
                event.version,
                event.attempts,
                source.to_string(),
            );
            assert_eq!(s, stream);
            assert_eq!(version.get(), 25);
            assert_eq!(attempts, 3);
            assert!(error.contains("cannot digest"), "{error}");
        }
        other => panic!("expected the runner to stop on the poison event, got {other:?}"),
    }
    let lag = lag::lag(&store, &projection).await.expect("lag");
    assert_eq!(
        lag.checkpoint,
        Some(appended.positions[23]),
        "checkpoint right before event 25"
    );
    assert_eq!(lag.events_behind, 26);
    assert_eq!(
        model(&store).await,
        vec![("p".to_owned(), 24, (1..=24).sum())]
    );
}

/// A poison event with the dead-letter policy: parked, the rest applied; replayed after a fix,
/// applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_event_is_parked_and_replayed_once() {
    let (_db, store) = fresh().await;
    let stream = StreamId::new("tally", "p").expect("id");
    let projection = park_the_poison(&store, &stream).await;
    assert_eq!(
        model(&store).await,
        expected(&store, true).await,
        "everything but the poison"
    );

    let parked = dead_letters::list(&store, "tally").await.expect("list");
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].version.get(), 25);
    assert_eq!(parked[0].stream_id, stream);
    assert!(parked[0].error.contains("cannot digest"));

    let still_broken = dead_letters::replay(&store, projection.as_ref(), parked[0].id).await;
    assert!(matches!(
        still_broken,
        Err(ProjectionError::HandlerFailed { .. })
    ));
    assert_eq!(
        dead_letters::list(&store, "tally")
            .await
            .expect("list")
            .len(),
        1,
        "still parked"
    );

    projection.poison_fixed.store(true, Ordering::SeqCst);
    dead_letters::replay(&store, projection.as_ref(), parked[0].id)
        .await
        .expect("replay after the fix");
    assert_eq!(
        model(&store).await,
        expected(&store, false).await,
        "applied once"
    );
    let again = dead_letters::replay(&store, projection.as_ref(), parked[0].id).await;
    assert!(
        matches!(again, Err(ProjectionError::DeadLetterNotFound { .. })),
        "{again:?}"
    );
    assert_eq!(
        model(&store).await,
        expected(&store, false).await,
        "not applied twice"
    );
    assert!(dead_letters::list(&store, "tally")
        .await
        .expect("list")
        .is_empty());
}

/// A runner of a fresh `Tally` (batches of `batch_size`) running in its own task until
/// `shutdown`.
fn spawn_runner(
    store: &PostgresStore,
    batch_size: usize,
    shutdown: CancellationToken,
) -> (
    Arc<ProjectionRunner<Tally>>,
    tokio::task::JoinHandle<Result<(), ProjectionError>>,
) {
    let runner = Arc::new(
        ProjectionRunner::new(store.clone(), Tally::default())
            .with_options(quick_options(batch_size)),
    );
    let task = tokio::spawn({
        let runner = runner.clone();
        async move { runner.run(shutdown).await }
    });
    (runner, task)
}

/// Waits up to a minute for the runner's status to satisfy `done`; on timeout, fails saying
/// `what` was expected and where the runner is.
async fn wait_for_status(
    runner: &ProjectionRunner<Tally>,
    what: &str,
    done: impl FnMut(&RunnerStatus) -> bool,
) {
    let mut status = runner.status();
    let waited = tokio::time::timeout(Duration::from_secs(60), status.wait_for(done)).await;
    match waited {
        Ok(Ok(_)) => {}
        _ => panic!("{what}: {:?}", *runner.status().borrow()),
    }
}

/// Appends 10 events at a time from `first` on, until `writing` is cancelled, pausing between
/// appends to leave a rebuild room to catch up on a loaded machine.
fn keep_appending(
    store: &PostgresStore,
    first: usize,
    writing: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let store = store.clone();
    tokio::spawn(async move {
        let mut n = first;
        while !writing.is_cancelled() {
            append_many(&store, 25, 10, n).await;
            n += 10;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// Corrupts the live model on purpose: only a rebuild can repair it.
async fn corrupt_the_model(store: &PostgresStore) {
    sqlx::query("UPDATE tally SET total = -1 WHERE stream = 's0'")
        .execute(store.pool())
        .await
        .expect("corrupt");
}

/// A rebuild while writers keep appending: readers never see a half-built model, and after the
/// rebuild (and the live runner catching up) the model equals a from-scratch build.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_while_writers_append() {
    let (_db, store) = fresh().await;
    append_many(&store, 25, 1_000, 0).await;
    let runner =
        ProjectionRunner::new(store.clone(), Tally::default()).with_options(quick_options(100));
    runner.run_until_caught_up().await.expect("live model");
    corrupt_the_model(&store).await;

    let writing = CancellationToken::new();
    let writer = keep_appending(&store, 1_000, writing.clone());
    let reading = CancellationToken::new();
    let reader = tokio::spawn({
        let (store, reading) = (store.clone(), reading.clone());
        async move {
            let mut last = 0i64;
            let mut reads = 0;
            while !reading.is_cancelled() {
                let sum: i64 =
                    sqlx::query_scalar("SELECT COALESCE(sum(events), 0)::bigint FROM tally")
                        .fetch_one(store.pool())
                        .await
                        .expect("read the live model");
                assert!(
                    sum >= last,
                    "the live model went back from {last} to {sum} events: half-built"
                );
                assert!(sum >= 1_000, "never less than the model before the rebuild");
                last = sum;
                reads += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            reads
        }
    });

    let progress = Arc::new(AtomicUsize::new(0));
    let seen = progress.clone();
    let options = RebuildOptions {
        feed: FeedOptions::default().with_batch_size(50),
        lock_retry: Duration::from_millis(50),
        ..RebuildOptions::default()
    };
    let fresh_model = Tally::default();
    let rebuilt = rebuild(&store, &fresh_model, options, move |p| {
        assert!(p.done <= p.total, "{p:?}");
        seen.store(p.done as usize, Ordering::SeqCst);
    });
    tokio::time::timeout(Duration::from_secs(600), rebuilt)
        .await
        .expect("the rebuild catches up with the writer")
        .expect("rebuild");
    assert!(
        progress.load(Ordering::SeqCst) >= 1_000,
        "progress reported"
    );

    writing.cancel();
    writer.await.expect("writer");
    reading.cancel();
    assert!(
        reader.await.expect("reader") > 0,
        "the model was read during the rebuild"
    );
    runner
        .run_until_caught_up()
        .await
        .expect("the live runner continues after the swap");
    assert_eq!(model(&store).await, expected(&store, false).await);
    let leftover: Option<String> =
        sqlx::query_scalar("SELECT to_regnamespace('tally_rebuild')::text")
            .fetch_one(store.pool())
            .await
            .expect("schema lookup");
    assert_eq!(leftover, None, "the shadow schema is gone");
}

/// An interrupted rebuild resumes from where it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_rebuild_resumes() {
    let (_db, store) = fresh().await;
    append_many(&store, 5, 600, 0).await;
    let stuck = Arc::new(Tally::default());
    *stuck.stall_after.lock().unwrap() = Some(3);
    let options = RebuildOptions {
        feed: FeedOptions::default().with_batch_size(20),
        lock_retry: Duration::from_millis(50),
        ..RebuildOptions::default()
    };
    let task = tokio::spawn({
        let (store, stuck, options) = (store.clone(), stuck.clone(), options.clone());
        async move { rebuild(&store, stuck.as_ref(), options, |_| {}).await }
    });
    // Three batches are in and the fourth is stuck: abort it there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let saved: Option<i64> = sqlx::query_scalar(
            "SELECT position FROM eventsource.checkpoints WHERE name = 'tally#rebuild'",
        )
        .fetch_optional(store.pool())
        .await
        .expect("rebuild checkpoint");
        if saved.is_some_and(|p| p > 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rebuild made no progress"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    let _ = task.await;

    let first = Arc::new(std::sync::Mutex::new(None));
    let record = first.clone();
    rebuild(&store, &Tally::default(), options, move |p| {
        record.lock().unwrap().get_or_insert(p.done);
    })
    .await
    .expect("the rebuild resumes and finishes");
    let resumed_at = first.lock().unwrap().expect("progress reported");
    assert!(
        resumed_at > 0 && resumed_at < 600,
        "resumed part-way, at {resumed_at}"
    );
    assert_eq!(model(&store).await, expected(&store, false).await);

    // A runner started after a rebuild of a projection that never ran before continues from
    // the rebuilt checkpoint: nothing is applied twice.
    ProjectionRunner::new(store.clone(), Tally::default())
        .with_options(quick_options(50))
        .run_until_caught_up()
        .await
        .expect("a runner after the rebuild");
    assert_eq!(model(&store).await, expected(&store, false).await);
}

/// Lag counts the events a projection has not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_observable() {
    let (_db, store) = fresh().await;
    let projection = Tally::default();
    append_many(&store, 3, 30, 0).await;
    let before = lag::lag(&store, &projection).await.expect("lag");
    assert_eq!(before.checkpoint, None);
    assert_eq!(before.events_behind, 30);
    assert!(before.time_behind.is_some());
    ProjectionRunner::new(store.clone(), Tally::default())
        .run_until_caught_up()
        .await
        .expect("catch up");
    let after = lag::lag(&store, &projection).await.expect("lag");
    assert_eq!(after.events_behind, 0);
    assert_eq!(after.time_behind, None);
}

/// Errors that retrying cannot clear stop the runner instead of sending it back to standby
/// forever: a zero batch size, and a store that was closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_stops_on_errors_that_cannot_clear() {
    let (_db, store) = fresh().await;
    let zero =
        ProjectionRunner::new(store.clone(), Tally::default()).with_options(quick_options(0));
    let refused = zero
        .run(CancellationToken::new())
        .await
        .expect_err("a zero batch size is refused");
    assert!(
        matches!(refused, ProjectionError::Misconfigured { .. }),
        "{refused}"
    );

    append_many(&store, 2, 10, 0).await;
    let (runner, task) = spawn_runner(&store, 5, CancellationToken::new());
    wait_for_status(&runner, "the runner goes live", |s| {
        s.state == RunnerState::Live
    })
    .await;
    store.close().await;
    let stopped = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the runner stops once its store is closed")
        .expect("runner task");
    assert!(stopped.is_err(), "it reports why: {stopped:?}");
    assert_eq!(runner.status().borrow().state, RunnerState::Failed);
}

/// A rebuild after a fix applies the parked events itself: they are settled, and replaying one
/// afterwards cannot apply it twice. A rebuild batch that fails names the batch, not a guess.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_settles_the_dead_letters_it_applied() {
    let (_db, store) = fresh().await;
    let stream = StreamId::new("tally", "p").expect("id");
    let projection = park_the_poison(&store, &stream).await;
    let parked = dead_letters::list(&store, "tally").await.expect("list");
    assert_eq!(parked.len(), 1);

    let rebuild_options = RebuildOptions {
        feed: FeedOptions::default().with_batch_size(10),
        lock_retry: Duration::from_millis(50),
        ..RebuildOptions::default()
    };
    let failed = rebuild(&store, projection.as_ref(), rebuild_options.clone(), |_| {})
        .await
        .expect_err("the poison still fails the rebuild");
    match &failed {
        ProjectionError::RebuildBatchFailed { events, source, .. } => {
            assert_eq!(*events, 10, "{failed}");
            assert!(source.to_string().contains("cannot digest"), "{failed}");
        }
        other => panic!("a failed rebuild batch, got {other:?}"),
    }

    projection.poison_fixed.store(true, Ordering::SeqCst);
    rebuild(&store, projection.as_ref(), rebuild_options, |_| {})
        .await
        .expect("the rebuild resumes after the fix");
    assert_eq!(
        model(&store).await,
        expected(&store, false).await,
        "the rebuilt model has the once-parked event"
    );
    assert!(
        dead_letters::list(&store, "tally")
            .await
            .expect("list")
            .is_empty(),
        "the rebuild settled the dead letter"
    );
    let replayed = dead_letters::replay(&store, projection.as_ref(), parked[0].id).await;
    assert!(
        matches!(replayed, Err(ProjectionError::DeadLetterNotFound { .. })),
        "{replayed:?}"
    );
    assert_eq!(
        model(&store).await,
        expected(&store, false).await,
        "not applied twice"
    );
}

/// A rebuild runs beside a live runner that keeps going: no stop, no handover. After the swap
/// the runner continues on the rebuilt tables from the rebuilt checkpoint, and the model
/// equals a from-scratch build once writers stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_beside_a_live_runner() {
    let (_db, store) = fresh().await;
    append_many(&store, 25, 500, 0).await;
    let shutdown = CancellationToken::new();
    let (runner, running) = spawn_runner(&store, 50, shutdown.clone());
    let head = store.head_position().await.expect("head").expect("events");
    wait_for_status(&runner, "the runner catches up", |s| {
        s.state == RunnerState::Live && s.position >= head
    })
    .await;
    corrupt_the_model(&store).await;

    let writing = CancellationToken::new();
    let writer = keep_appending(&store, 500, writing.clone());
    let options = RebuildOptions {
        feed: FeedOptions::default().with_batch_size(50),
        lock_retry: Duration::from_millis(50),
        ..RebuildOptions::default()
    };
    let fresh_model = Tally::default();
    tokio::time::timeout(
        Duration::from_secs(600),
        rebuild(&store, &fresh_model, options, |_| {}),
    )
    .await
    .expect("the rebuild does not wait for the live runner")
    .expect("rebuild");
    writing.cancel();
    writer.await.expect("writer");

    let head = store.head_position().await.expect("head").expect("events");
    wait_for_status(
        &runner,
        &format!("the runner follows the new events to {head}"),
        |s| s.position >= head,
    )
    .await;
    assert_eq!(model(&store).await, expected(&store, false).await);
    assert_eq!(
        runner.status().borrow().activations,
        1,
        "the runner stayed active throughout"
    );
    shutdown.cancel();
    running.await.expect("runner task").expect("clean stop");
}

/// A long reader of a live table does not make the rebuild fail: the swap gives up waiting for
/// the table after its lock timeout (so it does not hold the feed back), tries again, and
/// completes once the reader is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_waits_out_a_long_reader() {
    let (_db, store) = fresh().await;
    append_many(&store, 5, 100, 0).await;
    ProjectionRunner::new(store.clone(), Tally::default())
        .with_options(quick_options(50))
        .run_until_caught_up()
        .await
        .expect("live model");
    let mut reader = store.pool().begin().await.expect("begin");
    sqlx::query("SELECT count(*) FROM tally")
        .execute(&mut *reader)
        .await
        .expect("a reader holds the live table");

    let task = tokio::spawn({
        let store = store.clone();
        async move {
            let options = RebuildOptions {
                feed: FeedOptions::default().with_batch_size(50),
                lock_retry: Duration::from_millis(200),
                ..RebuildOptions::default()
            };
            rebuild(&store, &Tally::default(), options, |_| {}).await
        }
    });
    // The swap waits for the reader's lock, longer than its lock timeout.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(store.pool())
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the swap waits");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !task.is_finished(),
        "the swap cannot finish while the reader holds the table"
    );
    reader.commit().await.expect("the reader is done");

    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the swap completes after the reader")
        .expect("rebuild task")
        .expect("the rebuild succeeds");
    assert_eq!(model(&store).await, expected(&store, false).await);
}

/// A runner whose checkpoint row disappears (deleted by hand) stops instead of replaying
/// everything onto the existing tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_stops_when_its_checkpoint_is_deleted() {
    let (_db, store) = fresh().await;
    append_many(&store, 2, 10, 0).await;
    let (runner, task) = spawn_runner(&store, 5, CancellationToken::new());
    wait_for_status(&runner, "live with every event applied", |s| {
        s.state == RunnerState::Live && s.events_applied == 10
    })
    .await;
    sqlx::query("DELETE FROM eventsource.checkpoints WHERE name = 'tally'")
        .execute(store.pool())
        .await
        .expect("delete the checkpoint");
    append_many(&store, 2, 1, 10).await;
    let stopped = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the runner stops")
        .expect("runner task");
    assert!(
        matches!(stopped, Err(ProjectionError::CheckpointMissing { .. })),
        "{stopped:?}"
    );
    let applied: i64 = sqlx::query_scalar("SELECT sum(events)::bigint FROM tally")
        .fetch_one(store.pool())
        .await
        .expect("model");
    assert_eq!(applied, 10, "nothing was applied again");
}

/// A runner whose checkpoint is moved under it (as a rebuild's swap does) gives up the batch it
/// holds, rolls that transaction back at once (it held a transaction id, which would hold the
/// feed back, its own reads included) and goes on from the moved checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_continues_after_its_checkpoint_is_moved() {
    let (_db, store) = fresh().await;
    append_many(&store, 2, 10, 0).await;
    let shutdown = CancellationToken::new();
    let (runner, task) = spawn_runner(&store, 5, shutdown.clone());
    wait_for_status(&runner, "live", |s| {
        s.state == RunnerState::Live && s.events_applied == 10
    })
    .await;

    // One event, and the checkpoint moved past it in the same transaction.
    let mut tx = store.pool().begin().await.expect("begin");
    let skipped = store
        .append_in(
            &mut tx,
            &StreamId::new("tally", "s0").expect("id"),
            ExpectedVersion::Any,
            vec![tally_event(100)],
        )
        .await
        .expect("append");
    let moved_to = skipped.positions[0];
    sqlx::query(
        "UPDATE eventsource.checkpoints SET transaction_id = $1::text::xid8, position = $2
         WHERE name = 'tally'",
    )
    .bind(moved_to.transaction_id.to_string())
    .bind(i64::try_from(moved_to.global_position.get()).expect("position"))
    .execute(&mut *tx)
    .await
    .expect("move the checkpoint");
    tx.commit().await.expect("commit");
    // The runner meets the moved checkpoint with that event, then must see the next one.
    wait_for_status(&runner, "the runner takes the moved checkpoint", |s| {
        s.position == moved_to
    })
    .await;
    append_many(&store, 2, 1, 200).await;
    let head = store.head_position().await.expect("head").expect("events");
    wait_for_status(&runner, &format!("the runner goes on to {head}"), |s| {
        s.position >= head
    })
    .await;
    assert_eq!(
        runner.status().borrow().events_applied,
        11,
        "the moved-past event was not applied"
    );
    assert_eq!(runner.status().borrow().activations, 1);
    shutdown.cancel();
    task.await.expect("runner task").expect("clean stop");
}
