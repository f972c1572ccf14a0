//! The feed's horizon in Writers mode (the default): only open transactions that can commit
//! events in this database hold the feed back. Write transactions in another database or on
//! another table do not; an open or prepared append does, and is named as the holder. Cluster
//! mode keeps the server-wide horizon.
//!
//! Every check here is a single read taken while the other transactions are held open on
//! purpose, so none depends on timing.

use std::time::Duration;

use eventsource_core::{
    BatchSize, EventAppender, EventMetadata, ExpectedVersion, FeedFilter, FeedPosition, FeedReader,
    NewEvent, RecordedEvent, StreamId,
};
use eventsource_postgres::testing::TestDatabase;
use eventsource_postgres::{FeedHorizon, PostgresStore};
use serde_json::json;
use sqlx::{ConnectOptions, Connection, PgConnection};

fn stream(id: &str) -> StreamId {
    StreamId::new("horizon", id).expect("valid stream id")
}

fn event(n: u64) -> NewEvent {
    NewEvent::new("Happened", 1, json!({ "n": n }), EventMetadata::default())
}

async fn fresh_store() -> (TestDatabase, PostgresStore) {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("migrated store");
    (db, store)
}

/// One read of the feed from the start.
async fn read_once(store: &PostgresStore) -> Vec<RecordedEvent> {
    store
        .read_feed_batch(
            FeedPosition::START,
            BatchSize::events(1000),
            &FeedFilter::all(),
        )
        .await
        .expect("read the feed")
        .events
}

/// Reads from the start until `count` events have come (in Writers mode nothing outside this
/// test's database can hold them, so this only waits for a commit to become visible), failing
/// after a minute.
async fn read_until(store: &PostgresStore, count: usize) -> Vec<RecordedEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = read_once(store).await;
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

/// Opens a transaction on `conn` that writes to a plain table `unrelated` (created first) and keeps it
/// open; returns once the write is done, so the transaction holds its id.
async fn open_write_transaction(conn: &mut PgConnection) {
    sqlx::query("CREATE TABLE IF NOT EXISTS unrelated (x int)")
        .execute(&mut *conn)
        .await
        .expect("create a plain table");
    sqlx::query("BEGIN")
        .execute(&mut *conn)
        .await
        .expect("begin");
    sqlx::query("INSERT INTO unrelated VALUES (1)")
        .execute(&mut *conn)
        .await
        .expect("write to the plain table");
}

/// With a write transaction open on `holder` (opened before the append), an event appended and
/// committed is delivered by one read in Writers mode, and not in Cluster mode (which shows
/// the holder really is older than the event).
async fn not_delayed_by(store: &PostgresStore, holder: &mut PgConnection) {
    open_write_transaction(holder).await;
    store
        .append(&stream("s"), ExpectedVersion::NoStream, vec![event(1)])
        .await
        .expect("append while the other transaction is open");

    assert_eq!(store.feed_horizon(), FeedHorizon::Writers, "the default");
    assert_eq!(
        payload_n(&read_once(store).await),
        vec![1],
        "Writers mode: one read delivers the event"
    );
    assert_eq!(
        store.holdup().await.expect("holdup"),
        None,
        "Writers mode: nothing holds the feed back"
    );

    let cluster = store.clone().with_feed_horizon(FeedHorizon::Cluster);
    assert!(
        read_once(&cluster).await.is_empty(),
        "Cluster mode: the other transaction holds the event back"
    );
    assert!(
        cluster.holdup().await.expect("holdup").is_some(),
        "Cluster mode reports a holdup"
    );

    sqlx::query("COMMIT")
        .execute(&mut *holder)
        .await
        .expect("commit the other transaction");
}

/// A write transaction held open in another database of the same server does not delay
/// delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_in_another_database_does_not_delay_delivery() {
    let (_db, store) = fresh_store().await;
    let other = TestDatabase::create().await.expect("a second database");
    let mut holder = other
        .connect_options()
        .connect()
        .await
        .expect("connect to the second database");
    not_delayed_by(&store, &mut holder).await;
    holder.close().await.expect("close");
    other
        .drop_database()
        .await
        .expect("drop the second database");
}

/// A write transaction held open on another table of the same database does not delay
/// delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_to_another_table_does_not_delay_delivery() {
    let (db, store) = fresh_store().await;
    let mut holder = db.connect_options().connect().await.expect("connect");
    not_delayed_by(&store, &mut holder).await;
}

/// An open transaction that appended holds back a later event of another stream, committed
/// meanwhile; the store names it as the holder; after it commits, both arrive, its event first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_append_holds_the_feed() {
    let (db, store) = fresh_store().await;
    let mut held = store.pool().begin().await.expect("begin");
    let held_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *held)
        .await
        .expect("pid");
    store
        .append_in(
            &mut held,
            &stream("a"),
            ExpectedVersion::NoStream,
            vec![event(1)],
        )
        .await
        .expect("append in the held transaction");
    store
        .append(&stream("b"), ExpectedVersion::NoStream, vec![event(2)])
        .await
        .expect("append and commit another stream");

    assert!(
        read_once(&store).await.is_empty(),
        "the later event waits behind the open append"
    );
    let holdup = store
        .holdup()
        .await
        .expect("holdup")
        .expect("the feed is held");
    assert_eq!(holdup.pid, Some(held_pid), "{holdup}");
    assert_eq!(holdup.events_waiting, 1, "{holdup}");
    assert_eq!(holdup.database.as_deref(), Some(db.name()), "{holdup}");
    assert!(holdup.transaction_started.is_some(), "{holdup}");

    held.commit().await.expect("commit the held append");
    assert_eq!(payload_n(&read_until(&store, 2).await), vec![1, 2]);
    assert_eq!(store.holdup().await.expect("holdup"), None);
}

/// A prepared transaction that appended holds the feed back until `COMMIT PREPARED` (from
/// another connection); the store names it by its gid. Needs `max_prepared_transactions > 0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_append_holds_the_feed() {
    let (db, store) = fresh_store().await;
    let enabled: String = sqlx::query_scalar("SHOW max_prepared_transactions")
        .fetch_one(store.pool())
        .await
        .expect("show max_prepared_transactions");
    assert_ne!(
        enabled, "0",
        "this test needs prepared transactions: the server has max_prepared_transactions = 0. \
         Run `ALTER SYSTEM SET max_prepared_transactions = 64` and restart PostgreSQL \
         (scripts/ensure-postgres.sh does it for the local server)"
    );
    let gid = format!("{}_append", db.name());

    let mut preparer = db.connect_options().connect().await.expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut preparer)
        .await
        .expect("begin");
    // The events table's trigger notifies subscribers at commit, and PostgreSQL refuses to
    // prepare a transaction that notified: with triggers off for this transaction (a setting,
    // not a write), the append can be prepared, as a plain insert from a tool would be.
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut preparer)
        .await
        .expect("turn triggers off for the transaction");
    store
        .append_in(
            &mut preparer,
            &stream("a"),
            ExpectedVersion::NoStream,
            vec![event(1)],
        )
        .await
        .expect("append in the transaction to prepare");
    sqlx::query(&format!("PREPARE TRANSACTION '{gid}'"))
        .execute(&mut preparer)
        .await
        .expect("prepare");
    let _ = preparer.close().await;

    // Nothing between PREPARE and COMMIT PREPARED may panic: a prepared transaction left behind
    // would hold the feed of this database (and the server's horizon) forever.
    let appended = store
        .append(&stream("b"), ExpectedVersion::NoStream, vec![event(2)])
        .await;
    let while_prepared = match appended {
        Ok(_) => Some(
            store
                .read_feed_batch(
                    FeedPosition::START,
                    BatchSize::events(1000),
                    &FeedFilter::all(),
                )
                .await,
        ),
        Err(_) => None,
    };
    let holdup = store.holdup().await;
    let committed = sqlx::query(&format!("COMMIT PREPARED '{gid}'"))
        .execute(store.pool())
        .await;

    committed.expect("commit prepared");
    appended.expect("append and commit another stream");
    let while_prepared = while_prepared
        .expect("appended")
        .expect("read while prepared");
    assert_eq!(
        payload_n(&while_prepared.events),
        Vec::<u64>::new(),
        "the later event waits behind the prepared append"
    );
    let holdup = holdup.expect("holdup").expect("the feed is held");
    assert_eq!(holdup.pid, None, "{holdup}");
    assert_eq!(holdup.state.as_deref(), Some("prepared"), "{holdup}");
    assert!(
        holdup.query.as_deref().unwrap_or("").contains(&gid),
        "named by its gid: {holdup}"
    );
    assert_eq!(holdup.events_waiting, 1, "{holdup}");

    assert_eq!(payload_n(&read_until(&store, 2).await), vec![1, 2]);
}
