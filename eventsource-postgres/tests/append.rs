//! Appends on PostgreSQL beyond the shared contract: lost version races under `Any`, the
//! append-only event table, and when appends notify subscribers.

use std::collections::HashSet;
use std::time::Duration;

use eventsource_core::{
    EventAppender, EventMetadata, ExpectedVersion, NewEvent, RecordedEvent, StoreError, StreamId,
    StreamReader, StreamVersion,
};
use eventsource_postgres::testing::TestDatabase;
use eventsource_postgres::PostgresStore;
use futures::TryStreamExt;
use serde_json::json;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use uuid::Uuid;

/// The channel subscribers listen on.
const CHANNEL: &str = "eventsource_events";

fn stream(id: &str) -> StreamId {
    StreamId::new("append", id).expect("valid stream id")
}

fn event(n: usize) -> NewEvent {
    NewEvent::new("Happened", 1, json!({ "n": n }), EventMetadata::default())
}

/// How many backends of this database wait for a lock (here: for another transaction's
/// uncommitted index entry).
async fn lock_waiters(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(pool)
    .await
    .expect("read pg_stat_activity")
}

/// Many `Any` appends queue behind a transaction holding the stream's next version. When it
/// commits, all of them lose the race for that version at once, and they keep losing to each
/// other: one winner per round. Every one of them must still land, with no gap and no
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_appends_that_keep_losing_races_all_land() {
    const QUEUED: usize = 48;
    let db = TestDatabase::create().await.expect("test database");
    let pool = db.pool(QUEUED as u32 + 4).await.expect("pool");
    let store = PostgresStore::new(pool.clone());
    store.migrate().await.expect("migrate");
    let target = stream("hot");

    let mut holder = pool.begin().await.expect("begin");
    let held = event(0);
    let mut expected_ids = vec![held.event_id];
    store
        .append_in(&mut holder, &target, ExpectedVersion::Any, vec![held])
        .await
        .expect("append in the held transaction");

    let mut appends = Vec::new();
    for n in 1..=QUEUED {
        let (store, target) = (store.clone(), target.clone());
        let new = event(n);
        expected_ids.push(new.event_id);
        appends.push(tokio::spawn(async move {
            store.append(&target, ExpectedVersion::Any, vec![new]).await
        }));
    }
    // Every queued append blocks on the held transaction's version 1.
    wait_for_lock_waiters(&pool, QUEUED as i64).await;
    holder.commit().await.expect("commit the held transaction");

    let mut versions = Vec::new();
    for append in appends {
        let result = append
            .await
            .expect("append task")
            .expect("an Any append never reports a conflict it can retry");
        assert_eq!(result.positions.len(), 1);
        assert!(!result.already_stored);
        versions.push(result.stream_version.get());
    }
    versions.sort_unstable();
    assert_eq!(versions, (2..=QUEUED as u64 + 1).collect::<Vec<_>>());

    let stored: Vec<RecordedEvent> = store
        .read_stream(&target, StreamVersion::INITIAL)
        .try_collect()
        .await
        .expect("read the stream");
    let stored_versions: Vec<u64> = stored.iter().map(|e| e.version.get()).collect();
    assert_eq!(stored_versions, (1..=QUEUED as u64 + 1).collect::<Vec<_>>());
    let stored_ids: HashSet<Uuid> = stored.iter().map(|e| e.event_id).collect();
    assert_eq!(stored_ids, expected_ids.into_iter().collect::<HashSet<_>>());
}

/// Waits until `count` backends of this database wait for a lock.
async fn wait_for_lock_waiters(pool: &PgPool, count: i64) {
    let mut waited = 0;
    while lock_waiters(pool).await < count {
        waited += 1;
        assert!(
            waited < 6000,
            "{count} statements queue behind the held transaction"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A `StreamExists` append that loses the race for its version still holds at the new one:
/// it retries instead of reporting a conflict its expectation accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_exists_appends_retry_a_lost_race() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("migrated store");
    let target = stream("exists");
    store
        .append(&target, ExpectedVersion::NoStream, vec![event(1)])
        .await
        .expect("first event");

    let mut holder = store.pool().begin().await.expect("begin");
    store
        .append_in(&mut holder, &target, ExpectedVersion::Any, vec![event(2)])
        .await
        .expect("append in the held transaction");
    let queued = tokio::spawn({
        let (store, target) = (store.clone(), target.clone());
        async move {
            store
                .append(&target, ExpectedVersion::StreamExists, vec![event(3)])
                .await
        }
    });
    wait_for_lock_waiters(store.pool(), 1).await;
    holder.commit().await.expect("commit");
    let appended = queued
        .await
        .expect("append task")
        .expect("the stream exists at version 2 as well");
    assert_eq!(appended.stream_version.get(), 3);
}

/// Under `serializable` isolation a writer that loses the race for a stream's versions may fail
/// with a serialization failure instead of a unique violation: it is still a typed conflict for
/// an exact expectation, and still retried for `Any`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_losers_get_typed_conflicts() {
    let db = TestDatabase::create().await.expect("test database");
    db.store().await.expect("migrated store");
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" SET default_transaction_isolation = 'serializable'",
        db.name()
    ))
    .execute(&db.pool(1).await.expect("pool"))
    .await
    .expect("make serializable the default");
    let store = PostgresStore::new(db.pool(6).await.expect("serializable pool"));
    let isolation: String = sqlx::query_scalar("SHOW transaction_isolation")
        .fetch_one(store.pool())
        .await
        .expect("isolation");
    assert_eq!(isolation, "serializable");
    let target = stream("serial");

    let mut holder = store.pool().begin().await.expect("begin");
    store
        .append_in(
            &mut holder,
            &target,
            ExpectedVersion::NoStream,
            vec![event(1)],
        )
        .await
        .expect("append in the held transaction");
    let exact = tokio::spawn({
        let (store, target) = (store.clone(), target.clone());
        async move {
            store
                .append(&target, ExpectedVersion::NoStream, vec![event(2)])
                .await
        }
    });
    let any = tokio::spawn({
        let (store, target) = (store.clone(), target.clone());
        async move {
            store
                .append(&target, ExpectedVersion::Any, vec![event(3)])
                .await
        }
    });
    wait_for_lock_waiters(store.pool(), 2).await;
    holder.commit().await.expect("commit");

    match exact.await.expect("append task") {
        Err(StoreError::Conflict(conflict)) => {
            assert_eq!(conflict.expected, ExpectedVersion::NoStream);
            assert!(conflict.actual.get() >= 1, "{conflict}");
        }
        other => panic!("the loser gets a typed conflict, got {other:?}"),
    }
    let appended = any
        .await
        .expect("append task")
        .expect("an Any append retries its lost race");
    assert_eq!(appended.stream_version.get(), 2);
}

/// An append inside a caller's transaction runs its checks on that transaction's connection:
/// on a one-connection pool it does not wait for a second connection.
#[tokio::test]
async fn append_in_needs_no_second_connection() {
    let db = TestDatabase::create().await.expect("test database");
    db.store().await.expect("migrated store");
    let store = PostgresStore::new(db.pool(1).await.expect("one-connection pool"));
    let mut tx = store.pool().begin().await.expect("begin");
    let appended = tokio::time::timeout(
        Duration::from_secs(20),
        store.append_in(
            &mut tx,
            &stream("single"),
            ExpectedVersion::NoStream,
            vec![event(1)],
        ),
    )
    .await
    .expect("no wait for another connection")
    .expect("append in the transaction");
    tx.commit().await.expect("commit");
    assert_eq!(appended.stream_version.get(), 1);
}

/// How long an append in a caller's transaction may take before it counts as waiting for a
/// second connection (the pool's acquire timeout is 30 s).
const PROMPT: Duration = Duration::from_secs(5);

/// A store whose pool has one connection, on a migrated test database.
async fn one_connection_store(db: &TestDatabase) -> PostgresStore {
    db.store().await.expect("migrated store").close().await;
    PostgresStore::new(db.pool(1).await.expect("one-connection pool"))
}

/// Runs `append` and returns its result with how long it took, failing after 60 s.
async fn timed<T>(append: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(60), append)
        .await
        .expect("the append ends");
    (result, started.elapsed())
}

/// A wrong expected version inside a caller's transaction on a one-connection pool: the
/// idempotency lookup and the version it reports run on the caller's connection, so the typed
/// conflict comes back at once instead of a pool timeout.
#[tokio::test]
async fn append_in_conflict_on_one_connection_is_prompt() {
    let db = TestDatabase::create().await.expect("test database");
    let store = one_connection_store(&db).await;
    let target = stream("single-conflict");
    store
        .append(&target, ExpectedVersion::NoStream, vec![event(1)])
        .await
        .expect("first event");

    let mut tx = store.pool().begin().await.expect("begin");
    let (result, took) = timed(store.append_in(
        &mut tx,
        &target,
        ExpectedVersion::Exact(StreamVersion::new(5).expect("version")),
        vec![event(2)],
    ))
    .await;
    let error = result.expect_err("the expectation does not hold");
    let conflict = error
        .as_conflict()
        .unwrap_or_else(|| panic!("a typed conflict, got {error}"));
    assert_eq!(conflict.actual.get(), 1);
    assert!(took < PROMPT, "the conflict took {took:?}");
    tx.rollback().await.expect("rollback");

    store.close().await;
    db.drop_database().await.expect("drop database");
}

/// Re-appending already stored events inside a caller's transaction on a one-connection pool
/// is recognised as a retry, on the caller's connection.
#[tokio::test]
async fn append_in_retry_on_one_connection_is_recognised() {
    let db = TestDatabase::create().await.expect("test database");
    let store = one_connection_store(&db).await;
    let target = stream("single-retry");
    let events = vec![event(1), event(2)];
    let first = store
        .append(&target, ExpectedVersion::NoStream, events.clone())
        .await
        .expect("first append");

    let mut tx = store.pool().begin().await.expect("begin");
    let (result, took) =
        timed(store.append_in(&mut tx, &target, ExpectedVersion::NoStream, events)).await;
    let again = result.expect("a retry of the stored append");
    assert!(again.already_stored);
    assert_eq!(again.stream_version, first.stream_version);
    assert_eq!(again.positions, first.positions);
    assert!(took < PROMPT, "the retry took {took:?}");
    tx.commit().await.expect("commit");

    store.close().await;
    db.drop_database().await.expect("drop database");
}

/// An append in a caller's transaction on a one-connection pool that loses the race for its
/// version (its statement fails, aborting the transaction, and the pool has no other
/// connection): a typed conflict comes back at once, naming the lowest version the stream now
/// has, instead of waiting for the connection the caller holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_in_lost_race_on_one_connection_is_prompt() {
    let db = TestDatabase::create().await.expect("test database");
    let store = one_connection_store(&db).await;
    let other = PostgresStore::new(db.pool(2).await.expect("another pool"));
    let target = stream("single-race");

    let mut holder = other.pool().begin().await.expect("begin");
    other
        .append_in(
            &mut holder,
            &target,
            ExpectedVersion::NoStream,
            vec![event(1)],
        )
        .await
        .expect("append in the held transaction");
    let queued = tokio::spawn({
        let (store, target) = (store.clone(), target.clone());
        async move {
            let mut tx = store.pool().begin().await.expect("begin");
            let result =
                timed(store.append_in(&mut tx, &target, ExpectedVersion::NoStream, vec![event(2)]))
                    .await;
            tx.rollback().await.expect("rollback");
            result
        }
    });
    wait_for_lock_waiters(other.pool(), 1).await;
    let committed = std::time::Instant::now();
    holder.commit().await.expect("commit");
    let (result, _) = queued.await.expect("append task");
    let after_commit = committed.elapsed();
    let error = result.expect_err("the race is lost");
    let conflict = error
        .as_conflict()
        .unwrap_or_else(|| panic!("a typed conflict, got {error}"));
    assert_eq!(conflict.actual.get(), 1);
    assert!(
        after_commit < PROMPT,
        "the conflict came {after_commit:?} after the winner committed"
    );

    other.close().await;
    store.close().await;
    db.drop_database().await.expect("drop database");
}

/// Re-appending stored events under `Any` inside a caller's transaction makes the statement
/// fail on the event ids; on a one-connection pool the store cannot look them up, and says so
/// at once instead of waiting for the connection the caller holds.
#[tokio::test]
async fn append_in_stored_ids_on_one_connection_fail_promptly() {
    let db = TestDatabase::create().await.expect("test database");
    let store = one_connection_store(&db).await;
    let target = stream("single-ids");
    let events = vec![event(1)];
    store
        .append(&target, ExpectedVersion::Any, events.clone())
        .await
        .expect("first append");

    let mut tx = store.pool().begin().await.expect("begin");
    let (result, took) =
        timed(store.append_in(&mut tx, &target, ExpectedVersion::Any, events)).await;
    let error = result.expect_err("no lookup is possible");
    assert!(
        error.to_string().contains("already stored"),
        "the error says why: {error}"
    );
    assert!(took < PROMPT, "the error took {took:?}");
    tx.rollback().await.expect("rollback");

    store.close().await;
    db.drop_database().await.expect("drop database");
}

/// The SQLSTATE of a failed statement.
fn sqlstate(error: sqlx::Error) -> String {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|code| code.into_owned())
        .unwrap_or_else(|| panic!("a database error, got {error}"))
}

/// Stored events cannot be changed or removed by ordinary SQL; only a transaction that opts
/// in with `SET LOCAL eventsource.allow_event_changes = 'on'` can (the administrative path).
#[tokio::test]
async fn events_are_append_only() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("migrated store");
    let pool = store.pool().clone();
    let target = stream("facts");
    store
        .append(&target, ExpectedVersion::NoStream, vec![event(1), event(2)])
        .await
        .expect("append");

    for statement in [
        "UPDATE eventsource.events SET payload = '{\"n\": 99}'",
        "DELETE FROM eventsource.events WHERE version = 2",
        "TRUNCATE eventsource.events",
    ] {
        let error = sqlx::query(statement)
            .execute(&pool)
            .await
            .expect_err(statement);
        assert_eq!(sqlstate(error), "42501", "{statement} is refused");
    }
    let payloads: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT payload FROM eventsource.events ORDER BY version")
            .fetch_all(&pool)
            .await
            .expect("read payloads");
    assert_eq!(payloads, vec![json!({ "n": 1 }), json!({ "n": 2 })]);

    // The administrative path: only inside a transaction that opts in.
    let mut admin = pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL eventsource.allow_event_changes = 'on'")
        .execute(&mut *admin)
        .await
        .expect("opt in");
    let changed = sqlx::query("UPDATE eventsource.events SET metadata = '{}' WHERE version = 1")
        .execute(&mut *admin)
        .await
        .expect("the administrative path may change events")
        .rows_affected();
    assert_eq!(changed, 1);
    admin.commit().await.expect("commit");
    let error = sqlx::query("DELETE FROM eventsource.events")
        .execute(&pool)
        .await
        .expect_err("the opt-in ends with its transaction");
    assert_eq!(sqlstate(error), "42501");
}

/// Inserts one event of stream `notify-1` at version `$1` with plain SQL.
const PLAIN_INSERT: &str = "
INSERT INTO eventsource.events (event_id, category, stream_id, version, event_type, schema_version, payload)
VALUES (gen_random_uuid(), 'notify', '1', $1, 'Happened', 1, '{}')";

/// A listener on the subscribers' channel.
async fn listen(store: &PostgresStore) -> PgListener {
    let mut listener = PgListener::connect_with(store.pool())
        .await
        .expect("listener");
    listener.listen(CHANNEL).await.expect("listen");
    listener
}

/// Sends a notification with payload `marker` (after everything committed so far).
async fn send_marker(store: &PostgresStore) {
    sqlx::query("SELECT pg_notify($1, 'marker')")
        .bind(CHANNEL)
        .execute(store.pool())
        .await
        .expect("marker");
}

/// The store's append does not notify inside its transaction: the first notification a
/// listener receives is the store's own, sent after the commit (the trigger's would come first,
/// at the append's commit, and carry no payload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_appends_notify_after_their_commit() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("migrated store");
    let mut listener = listen(&store).await;
    for n in 1..=3 {
        store
            .append(&stream("notified"), ExpectedVersion::Any, vec![event(n)])
            .await
            .expect("append");
        let first = listener.recv().await.expect("a notification");
        assert_eq!(first.payload(), "after-commit", "append {n}");
        // Drain what the appends so far announced, up to a marker sent after them.
        send_marker(&store).await;
        while listener.recv().await.expect("a notification").payload() != "marker" {}
    }
}

/// A transaction that says it notifies after its commit does not notify inside it: a marker
/// notification sent after that commit is the first one a listener receives (PostgreSQL
/// delivers notifications in commit order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_that_notify_after_commit_skip_the_trigger() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("migrated store");
    let mut listener = listen(&store).await;

    let mut tx = store.pool().begin().await.expect("begin");
    sqlx::query("SET LOCAL eventsource.notify_after_commit = 'on'")
        .execute(&mut *tx)
        .await
        .expect("opt out of the trigger");
    sqlx::query(PLAIN_INSERT)
        .bind(1i64)
        .execute(&mut *tx)
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
    send_marker(&store).await;
    let first = listener.recv().await.expect("a notification");
    assert_eq!(first.payload(), "marker", "the insert did not notify");

    // Without the setting, the trigger notifies at commit, before the next marker.
    sqlx::query(PLAIN_INSERT)
        .bind(2i64)
        .execute(store.pool())
        .await
        .expect("insert");
    send_marker(&store).await;
    let first = listener.recv().await.expect("a notification");
    assert_eq!(first.payload(), "", "the trigger notified at commit");
}
