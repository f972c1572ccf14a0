//! The global feed and live subscriptions on PostgreSQL: out-of-order commits, rollbacks, a
//! stress run, a long write transaction, a killed listening connection, and a restored
//! database.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsource_core::{
    BatchSize, EventAppender, EventMetadata, ExpectedVersion, FeedFilter, FeedOptions,
    FeedPosition, FeedReader, NewEvent, RecordedEvent, StoreError, StreamId, Subscribe,
    Subscription,
};
use eventsource_postgres::testing::TestDatabase;
use eventsource_postgres::{FeedHorizon, PostgresStore};
use futures::StreamExt;
use serde_json::json;
use uuid::Uuid;

fn stream(id: &str) -> StreamId {
    StreamId::new("feed", id).expect("valid stream id")
}

fn event(n: u64) -> NewEvent {
    NewEvent::new("Happened", 1, json!({ "n": n }), EventMetadata::default())
}

async fn fresh_store() -> (TestDatabase, PostgresStore) {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("migrated store");
    (db, store)
}

fn fast_options() -> FeedOptions {
    FeedOptions::default()
        .with_batch_size(100)
        .with_poll_interval(Duration::from_millis(100))
}

async fn next_event(subscription: &mut Subscription) -> RecordedEvent {
    tokio::time::timeout(Duration::from_secs(60), subscription.next())
        .await
        .expect("an event within a minute")
        .expect("the subscription does not end")
        .expect("the subscription does not fail")
}

/// Waits until the store's listener has connected `connections` times (it connects in the
/// background after the first subscription), failing after a minute.
async fn wait_for_listener(store: &PostgresStore, connections: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while store.listener_stats().connections() < connections {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listener connected {connections} times"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads the feed after `after` once; events of transactions still open are not returned.
async fn read_once(store: &PostgresStore, after: FeedPosition) -> Vec<RecordedEvent> {
    store
        .read_feed_batch(after, BatchSize::events(1000), &FeedFilter::all())
        .await
        .expect("read the feed")
        .events
}

/// Reads until `count` events have come (other tests' transactions may hold some back for a
/// moment), failing after a minute.
async fn read_until(
    store: &PostgresStore,
    after: FeedPosition,
    count: usize,
) -> Vec<RecordedEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = read_once(store, after).await;
        if events.len() >= count || tokio::time::Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn payload_n(events: &[RecordedEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e.payload["n"].as_u64().expect("n"))
        .collect()
}

/// Opens transaction A and appends to stream `a`, then transaction B appending to stream `b`:
/// A holds the older transaction id. Both stay open.
async fn two_open_appends(
    store: &PostgresStore,
) -> (
    sqlx::Transaction<'static, sqlx::Postgres>,
    sqlx::Transaction<'static, sqlx::Postgres>,
) {
    let mut a = store.pool().begin().await.expect("begin A");
    store
        .append_in(
            &mut a,
            &stream("a"),
            ExpectedVersion::NoStream,
            vec![event(1)],
        )
        .await
        .expect("A appends");
    let mut b = store.pool().begin().await.expect("begin B");
    store
        .append_in(
            &mut b,
            &stream("b"),
            ExpectedVersion::NoStream,
            vec![event(2)],
        )
        .await
        .expect("B appends");
    (a, b)
}

/// A appends first, B second, B commits first: a reader between the commits does not pass A's
/// place; after A commits it receives A and B, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_commit_is_not_skipped() {
    let (_db, store) = fresh_store().await;
    store
        .append(&stream("before"), ExpectedVersion::Any, vec![event(0)])
        .await
        .expect("append");
    let before = read_until(&store, FeedPosition::START, 1).await;
    let start = before.last().expect("the first event").position;

    let (a, b) = two_open_appends(&store).await;
    b.commit().await.expect("B commits first");

    // B is committed, A is not: the reader must not move past A's place.
    for _ in 0..5 {
        let batch = store
            .read_feed_batch(start, BatchSize::events(1000), &FeedFilter::all())
            .await
            .expect("read");
        assert!(
            batch.events.is_empty(),
            "B delivered before A committed: {:?}",
            payload_n(&batch.events)
        );
        assert_eq!(batch.next, start, "the reader did not move past A's place");
    }

    a.commit().await.expect("A commits");
    let events = read_until(&store, start, 2).await;
    assert_eq!(payload_n(&events), vec![1, 2], "A then B, each once");
}

/// The same with A rolled back: the reader moves on and never delivers A's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_append_is_never_delivered() {
    let (_db, store) = fresh_store().await;
    let (a, b) = two_open_appends(&store).await;
    b.commit().await.expect("B commits");
    assert!(
        read_once(&store, FeedPosition::START).await.is_empty(),
        "held behind A"
    );
    a.rollback().await.expect("A rolls back");

    let events = read_until(&store, FeedPosition::START, 1).await;
    assert_eq!(payload_n(&events), vec![2], "only B");
    store
        .append(&stream("a"), ExpectedVersion::NoStream, vec![event(3)])
        .await
        .expect("A's stream is still new");
    let after = events[0].position;
    assert_eq!(payload_n(&read_until(&store, after, 1).await), vec![3]);
}

/// What one writer committed: event ids per stream.
type Committed = Arc<Mutex<HashSet<Uuid>>>;

/// 16 writers append 5,000 events in all to shared and private streams; some transactions roll
/// back on purpose and some stay open for a random short time. A live subscriber from the start
/// and one that stops and resumes from its saved position each receive exactly the committed
/// events, each once, with every stream's versions in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stress_many_writers_two_subscribers() {
    const WRITERS: usize = 16;
    const EVENTS: usize = 5_000;
    let db = TestDatabase::create().await.expect("test database");
    let store = PostgresStore::new(db.pool(40).await.expect("pool"));
    store.migrate().await.expect("migrate");
    let committed: Committed = Arc::default();
    let target = Target::default();

    let live = store.subscribe(FeedPosition::START, fast_options());
    let live_reader = tokio::spawn(collect(live, None, target.clone(), 0));
    let resumed_reader = tokio::spawn(collect_with_restart(store.clone(), target.clone()));

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let committed = committed.clone();
        writers.push(tokio::spawn(async move {
            let mut attempted = 0;
            let mut rng = fastrand::Rng::with_seed(w as u64);
            while attempted < EVENTS / WRITERS {
                let target = if rng.bool() {
                    stream(&format!("shared-{}", rng.usize(0..4)))
                } else {
                    stream(&format!("private-{w}"))
                };
                let count = rng.u64(1..=3);
                let events: Vec<NewEvent> = (0..count).map(|_| event(rng.u64(..1 << 50))).collect();
                attempted += events.len();
                let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
                match rng.u8(0..100) {
                    0..=59 => {
                        store
                            .append(&target, ExpectedVersion::Any, events)
                            .await
                            .expect("autocommit append");
                        committed.lock().unwrap().extend(ids);
                    }
                    roll => {
                        let mut tx = store.pool().begin().await.expect("begin");
                        let appended = store
                            .append_in(&mut tx, &target, ExpectedVersion::Any, events)
                            .await;
                        tokio::time::sleep(Duration::from_millis(rng.u64(0..15))).await;
                        match appended {
                            Ok(_) if roll < 85 => {
                                tx.commit().await.expect("commit");
                                committed.lock().unwrap().extend(ids);
                            }
                            Ok(_) => tx.rollback().await.expect("rollback"),
                            Err(StoreError::Conflict(_)) => {
                                // Another writer took the version inside our transaction.
                                tx.rollback().await.expect("rollback after conflict");
                            }
                            Err(e) => panic!("append in a transaction failed: {e}"),
                        }
                    }
                }
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let committed: HashSet<Uuid> = committed.lock().unwrap().clone();
    assert!(
        committed.len() > EVENTS / 2,
        "most appends committed ({})",
        committed.len()
    );
    target.store(committed.len(), std::sync::atomic::Ordering::SeqCst);

    for (name, reader) in [("live", live_reader), ("resumed", resumed_reader)] {
        let (received, _) = reader.await.expect("reader");
        let ids: Vec<Uuid> = received.iter().map(|e| e.event_id).collect();
        let unique: HashSet<Uuid> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "{name}: no event delivered twice");
        assert_eq!(unique, committed, "{name}: exactly the committed events");
        let mut versions: BTreeMap<StreamId, Vec<u64>> = BTreeMap::new();
        for e in &received {
            versions
                .entry(e.stream_id.clone())
                .or_default()
                .push(e.version.get());
        }
        for (stream, versions) in versions {
            let expected: Vec<u64> = (1..=versions.len() as u64).collect();
            assert_eq!(
                versions, expected,
                "{name}: {stream} in version order without gaps"
            );
        }
    }
}

/// How many events a reader must receive: unknown (0) until the writers are done.
type Target = Arc<std::sync::atomic::AtomicUsize>;

/// Receives until `stop_after` events, or until the target is known and reached (counting
/// `earlier` events received before this subscription).
async fn collect(
    mut subscription: Subscription,
    stop_after: Option<usize>,
    target: Target,
    earlier: usize,
) -> (Vec<RecordedEvent>, FeedPosition) {
    let mut received = Vec::new();
    let mut last_progress = tokio::time::Instant::now();
    loop {
        let goal = stop_after.unwrap_or_else(|| {
            target
                .load(std::sync::atomic::Ordering::SeqCst)
                .saturating_sub(earlier)
        });
        if goal > 0 && received.len() >= goal {
            break;
        }
        assert!(
            last_progress.elapsed() < Duration::from_secs(60),
            "no event for a minute after {} events (goal {goal}, at {})",
            received.len(),
            subscription.position()
        );
        match tokio::time::timeout(Duration::from_millis(200), subscription.next()).await {
            Ok(Some(Ok(e))) => {
                received.push(e);
                last_progress = tokio::time::Instant::now();
            }
            Ok(Some(Err(e))) => panic!("subscription failed: {e}"),
            Ok(None) => panic!("subscription ended"),
            Err(_) => {} // nothing yet: check the target again
        }
    }
    (received, subscription.position())
}

/// Reads 1,000 events, drops the subscription, and resumes from its saved position.
async fn collect_with_restart(
    store: PostgresStore,
    target: Target,
) -> (Vec<RecordedEvent>, FeedPosition) {
    let first = store.subscribe(FeedPosition::START, fast_options());
    let (received, saved) = collect(first, Some(1_000), target.clone(), 0).await;
    let second = store.subscribe(saved, fast_options());
    let (rest, position) = collect(second, None, target, received.len()).await;
    let mut all = received;
    all.extend(rest);
    (all, position)
}

/// In Cluster mode, a long write transaction on an unrelated table holds subscribers back; they
/// resume when it ends; the store names the holder and the subscription logs it at warn level.
#[tokio::test(flavor = "current_thread")]
async fn long_write_transaction_holds_and_is_reported() {
    let logs = LogCapture::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .finish(),
    );
    let (_db, store) = fresh_store().await;
    let store = store.with_feed_horizon(FeedHorizon::Cluster);
    sqlx::query("CREATE TABLE unrelated (x int)")
        .execute(store.pool())
        .await
        .expect("create table");
    let mut holder = store.pool().begin().await.expect("begin");
    let holder_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *holder)
        .await
        .expect("pid");
    sqlx::query("INSERT INTO unrelated VALUES (1)")
        .execute(&mut *holder)
        .await
        .expect("write");

    store
        .append(
            &stream("held"),
            ExpectedVersion::Any,
            vec![event(1), event(2), event(3)],
        )
        .await
        .expect("append after the holder began");
    // The oldest open transaction on the server is ours once any older one (another test's)
    // has ended; from then on, no other can be older, so the warning below names ours.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let holdup = loop {
        let holdup = store
            .holdup()
            .await
            .expect("holdup")
            .expect("the feed is held");
        if holdup.pid == Some(holder_pid) || tokio::time::Instant::now() > deadline {
            break holdup;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(holdup.pid, Some(holder_pid), "{holdup}");
    assert!(holdup.events_waiting >= 3, "{holdup}");
    assert!(
        holdup.query.as_deref().unwrap_or("").contains("unrelated"),
        "{holdup}"
    );
    assert!(holdup.transaction_started.is_some());

    let options = fast_options().with_holdup_warning_after(Duration::from_millis(300));
    let mut subscription = store.subscribe(FeedPosition::START, options);
    let waited = tokio::time::timeout(Duration::from_secs(1), subscription.next()).await;
    assert!(
        waited.is_err(),
        "nothing is delivered while the transaction is open"
    );

    // Keep the subscription waiting past the warning delay.
    let waited = tokio::time::timeout(Duration::from_secs(1), subscription.next()).await;
    assert!(waited.is_err(), "still held");
    let logged = logs.text();
    assert!(
        logged.contains("WARN") && logged.contains("feed held back"),
        "warned: {logged}"
    );
    assert!(
        logged.contains(&holder_pid.to_string()),
        "the warning names the pid: {logged}"
    );

    holder.commit().await.expect("the holder commits");
    let mut ns = Vec::new();
    for _ in 0..3 {
        ns.push(
            next_event(&mut subscription).await.payload["n"]
                .as_u64()
                .expect("n"),
        );
    }
    assert_eq!(ns, vec![1, 2, 3]);
}

/// Captures formatted log lines.
#[derive(Clone, Default)]
struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = Self;
    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

/// With the listening connection killed mid-run, the listener reconnects and delivery goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_survives_a_killed_listener() {
    let (db, store) = fresh_store().await;
    let mut subscription = store.subscribe(FeedPosition::START, fast_options());
    wait_for_listener(&store, 1).await;
    store
        .append(&stream("k"), ExpectedVersion::Any, vec![event(1)])
        .await
        .expect("append");
    assert_eq!(next_event(&mut subscription).await.payload["n"], 1);

    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    )
    .bind(db.name())
    .fetch_all(store.pool())
    .await
    .expect("terminate the listener");
    assert_eq!(
        killed,
        vec![true],
        "exactly one listening connection, killed"
    );

    for n in 2..=20u64 {
        store
            .append(&stream("k"), ExpectedVersion::Any, vec![event(n)])
            .await
            .expect("append");
        assert_eq!(next_event(&mut subscription).await.payload["n"], n);
    }
    // The listener is back and receives notifications again.
    wait_for_listener(&store, 2).await;
    let before = store.listener_stats().notifications();
    store
        .append(&stream("k"), ExpectedVersion::Any, vec![event(21)])
        .await
        .expect("append");
    assert_eq!(next_event(&mut subscription).await.payload["n"], 21);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while store.listener_stats().notifications() == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a notification arrived on the new connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Subscriptions of one store share one listening connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_share_one_listener() {
    let (db, store) = fresh_store().await;
    let mut subscriptions: Vec<Subscription> = (0..5)
        .map(|_| store.clone().subscribe(FeedPosition::START, fast_options()))
        .collect();
    wait_for_listener(&store, 1).await;
    store
        .append(&stream("s"), ExpectedVersion::Any, vec![event(1)])
        .await
        .expect("append");
    for s in &mut subscriptions {
        assert_eq!(next_event(s).await.payload["n"], 1);
    }
    let listeners: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(db.name())
    .fetch_one(store.pool())
    .await
    .expect("count listeners");
    assert_eq!(listeners, 1);
    assert_eq!(store.listener_stats().connections(), 1);
}

/// The listening connection does not take one of the store's connections: a store over a
/// one-connection pool still appends and delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_leaves_the_pool_alone() {
    let db = TestDatabase::create().await.expect("test database");
    db.store().await.expect("migrated store");
    let store = PostgresStore::new(db.pool(1).await.expect("one-connection pool"));
    let mut subscription = store.subscribe(FeedPosition::START, fast_options());
    wait_for_listener(&store, 1).await;
    store
        .append(&stream("one"), ExpectedVersion::Any, vec![event(1)])
        .await
        .expect("append with the listener connected");
    assert_eq!(next_event(&mut subscription).await.payload["n"], 1);
}

/// Without notifications, polling alone delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_alone_delivers() {
    let (_db, store) = fresh_store().await;
    let store = store.without_notifications();
    let mut subscription = store.subscribe(FeedPosition::START, fast_options());
    for n in 1..=3u64 {
        store
            .append(&stream("p"), ExpectedVersion::Any, vec![event(n)])
            .await
            .expect("append");
        assert_eq!(next_event(&mut subscription).await.payload["n"], n);
    }
    assert_eq!(
        store.listener_stats().connections(),
        0,
        "no LISTEN connection"
    );
}

/// After a restore into another cluster (simulated: stored transaction ids above the
/// cluster's), the feed refuses to run; the documented repair translates saved positions so
/// readers resume exactly where they were, and new events follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_database_is_refused_then_repaired() {
    let (_db, store) = fresh_store().await;
    for n in 1..=10u64 {
        store
            .append(&stream("r"), ExpectedVersion::Any, vec![event(n)])
            .await
            .expect("append");
    }
    let events = read_until(&store, FeedPosition::START, 10).await;
    assert_eq!(events.len(), 10);
    let external = events[3].position; // a reader that saved its position after event 4
    sqlx::query("INSERT INTO eventsource.checkpoints (name, transaction_id, position) VALUES ('projection', $1::text::xid8, $2)")
        .bind(events[5].position.transaction_id.to_string())
        .bind(events[5].position.global_position.get() as i64)
        .execute(store.pool())
        .await
        .expect("a saved checkpoint after event 6");

    // Simulate the restore: the old cluster's ids were far above this one's.
    const SHIFT: u64 = 1_000_000_000_000;
    sqlx::raw_sql(&format!(
        "BEGIN;
         SET LOCAL eventsource.allow_event_changes = 'on';
         UPDATE eventsource.events SET transaction_id = (transaction_id::text::bigint + {SHIFT})::text::xid8;
         UPDATE eventsource.checkpoints SET transaction_id = (transaction_id::text::bigint + {SHIFT})::text::xid8;
         COMMIT;"
    ))
    .execute(store.pool())
    .await
    .expect("simulate a restore");
    let external = FeedPosition::new(
        external.transaction_id + SHIFT,
        external.global_position.get(),
    );

    let restored = PostgresStore::new(store.pool().clone());
    let refused = restored
        .read_feed_batch(
            FeedPosition::START,
            BatchSize::events(10),
            &FeedFilter::all(),
        )
        .await
        .expect_err("the feed refuses to run");
    assert!(
        matches!(refused, StoreError::TransactionIdsWentBackwards { .. }),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("repair_restored_feed"),
        "the error names the repair"
    );
    // Writers are refused too: their events would sort before the old ones, and the repair
    // would then place them behind the saved positions.
    let refused_append = restored
        .append(&stream("r"), ExpectedVersion::Any, vec![event(99)])
        .await
        .expect_err("appends are refused");
    assert!(
        matches!(
            refused_append,
            StoreError::TransactionIdsWentBackwards { .. }
        ),
        "{refused_append}"
    );
    let mut refused_subscription = restored.subscribe(FeedPosition::START, fast_options());
    let first = refused_subscription.next().await.expect("an item");
    assert!(matches!(
        first,
        Err(StoreError::TransactionIdsWentBackwards { .. })
    ));

    let translated: Vec<(String, String)> = sqlx::query_as(
        "SELECT old_position, new_position FROM eventsource.repair_restored_feed(ARRAY[$1])",
    )
    .bind(external.to_string())
    .fetch_all(store.pool())
    .await
    .expect("repair");
    assert_eq!(
        translated.len(),
        2,
        "the external position and the checkpoint"
    );
    let new_external: FeedPosition = translated
        .iter()
        .find(|(old, _)| *old == external.to_string())
        .expect("the external position was translated")
        .1
        .parse()
        .expect("a feed position");
    let (checkpoint_tx, checkpoint_pos): (String, i64) = sqlx::query_as(
        "SELECT transaction_id::text, position FROM eventsource.checkpoints WHERE name = 'projection'",
    )
    .fetch_one(store.pool())
    .await
    .expect("checkpoint");
    let checkpoint = FeedPosition::new(checkpoint_tx.parse().expect("xid"), checkpoint_pos as u64);

    let repaired = PostgresStore::new(store.pool().clone());
    repaired
        .append(
            &stream("r"),
            ExpectedVersion::Exact(eventsource_core::StreamVersion::new(10).unwrap()),
            vec![event(11)],
        )
        .await
        .expect("append after the repair");
    let rest = read_until(&repaired, new_external, 7).await;
    assert_eq!(
        payload_n(&rest),
        vec![5, 6, 7, 8, 9, 10, 11],
        "resumes exactly after event 4"
    );
    let rest = read_until(&repaired, checkpoint, 5).await;
    assert_eq!(
        payload_n(&rest),
        vec![7, 8, 9, 10, 11],
        "the checkpoint resumes after event 6"
    );
}
