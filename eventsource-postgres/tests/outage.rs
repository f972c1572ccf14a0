//! Lost connections: subscriptions ride out an outage and resume from their position; the
//! repository retries an append whose connection dropped with the same event ids, so the
//! command is neither lost nor applied twice.

mod common;

use std::time::{Duration, Instant};

use common::proxy::Proxy;
use eventsource_core::testing::counter::{Counter, Increment};
use eventsource_core::{
    Aggregate as _, CommandContext, EventAppender, EventMetadata, ExpectedVersion, FeedOptions,
    FeedPosition, NewEvent, RecordedEvent, Repository, StreamId, StreamReader, StreamVersion,
    Subscribe, Subscription,
};
use eventsource_postgres::testing::TestDatabase;
use eventsource_postgres::PostgresStore;
use futures::TryStreamExt;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;

/// How long a test waits for what it asserts on before it fails.
const PATIENCE: Duration = Duration::from_secs(60);

async fn append(store: &PostgresStore, stream: &StreamId, n: u64) {
    let event = NewEvent::new("Counted", 1, json!({ "n": n }), EventMetadata::default());
    store
        .append(stream, ExpectedVersion::Any, vec![event])
        .await
        .expect("append");
}

/// The next event.
async fn next(subscription: &mut Subscription) -> RecordedEvent {
    tokio::time::timeout(PATIENCE, subscription.try_next())
        .await
        .expect("an event in time")
        .expect("no error")
        .expect("an event")
}

/// Waits until the subscription reports an outage, driving it meanwhile (its reads fail); it
/// must not yield an event then.
async fn until_outage(subscription: &mut Subscription) {
    let deadline = Instant::now() + PATIENCE;
    while subscription.status().outage.is_none() {
        assert!(
            Instant::now() < deadline,
            "the subscription never reported the outage"
        );
        if let Ok(event) =
            tokio::time::timeout(Duration::from_millis(20), subscription.try_next()).await
        {
            panic!("no event can be read during the outage, got {event:?}");
        }
    }
}

/// A subscription whose connections are cut reports the outage, retries, and after the
/// connection is back delivers every event committed meanwhile, in order, exactly once,
/// without the caller resubscribing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_ride_out_lost_connections() {
    let db = TestDatabase::create().await.expect("test database");
    let direct = db.store().await.expect("store");
    let proxy = Proxy::start(&db.connect_options()).await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(proxy.options(&db.connect_options()))
        .await
        .expect("connect through the proxy");
    let through_proxy = PostgresStore::new(pool);
    let stream = StreamId::new("outage", "1").expect("id");
    let options = FeedOptions::default().with_poll_interval(Duration::from_millis(100));
    let options = FeedOptions {
        max_reconnect_delay: Duration::from_millis(200),
        ..options
    };
    let mut subscription = through_proxy.subscribe(FeedPosition::START, options);

    for n in 1..=3 {
        append(&direct, &stream, n).await;
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next(&mut subscription).await.payload["n"].as_u64());
    }

    proxy.cut();
    for n in 4..=6 {
        append(&direct, &stream, n).await;
    }
    until_outage(&mut subscription).await;
    let outage = subscription.status().outage.expect("an outage");
    assert!(outage.failed_reads >= 1);

    proxy.restore();
    let restored = Instant::now();
    let first = next(&mut subscription).await;
    let reconnect = restored.elapsed();
    seen.push(first.payload["n"].as_u64());
    for _ in 0..2 {
        seen.push(next(&mut subscription).await.payload["n"].as_u64());
    }
    assert_eq!(seen, (1..=6).map(Some).collect::<Vec<_>>());
    let status = subscription.status();
    assert!(status.outage.is_none(), "{status:?}");
    assert_eq!(status.outages_recovered, 1);
    eprintln!("first event {reconnect:?} after the connection came back");

    drop(subscription);
    through_proxy.close().await;
    direct.close().await;
    drop(proxy);
    db.drop_database().await.expect("drop");
}

/// The appending backend is terminated after its insert and before the reply (a trigger holds
/// the statement there): the repository appends the same events again, and the command's
/// events are stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_connection_dropped_mid_append_is_stored_once() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let repository = Repository::<Counter, _>::new(store.clone());
    let id = Counter::stream_id("held").expect("id");
    repository
        .execute(&id, Increment(1), &CommandContext::new())
        .await
        .expect("first command");

    // Appends wait in a trigger, after their insert, until this connection lets them go.
    let mut gate = db
        .pool(1)
        .await
        .expect("gate pool")
        .acquire()
        .await
        .expect("gate");
    sqlx::raw_sql(
        "CREATE FUNCTION public.hold_appends() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NULL; END $$;
         CREATE TRIGGER hold_appends AFTER INSERT ON eventsource.events
             FOR EACH STATEMENT EXECUTE FUNCTION public.hold_appends();
         SELECT pg_advisory_lock(4242);",
    )
    .execute(&mut *gate)
    .await
    .expect("install the gate");

    let command = {
        let repository = Repository::<Counter, _>::new(store.clone());
        let id = id.clone();
        tokio::spawn(async move {
            repository
                .execute(&id, Increment(10), &CommandContext::new())
                .await
        })
    };
    let deadline = Instant::now() + PATIENCE;
    let pid: i32 = loop {
        let waiting: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'
               AND wait_event = 'advisory' AND pid <> pg_backend_pid()",
        )
        .fetch_optional(&mut *gate)
        .await
        .expect("find the held append");
        if let Some(pid) = waiting {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the append never reached the gate"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut *gate)
        .await
        .expect("terminate the appending backend");
    assert!(terminated);
    sqlx::query("SELECT pg_advisory_unlock(4242)")
        .execute(&mut *gate)
        .await
        .expect("open the gate");

    let done = command
        .await
        .expect("command task")
        .expect("the repository retried the append");
    let events: Vec<RecordedEvent> = store
        .read_stream(&id, StreamVersion::INITIAL)
        .try_collect()
        .await
        .expect("read");
    assert_eq!(events.len(), 2, "the command's event is stored once");
    assert_eq!(done.appended[0].event_id, events[1].event_id);
    assert_eq!(done.version.get(), 2);
    assert_eq!(repository.load(&id).await.expect("load").state.value, 11);
    drop(gate);
    store.close().await;
    db.drop_database().await.expect("drop");
}
