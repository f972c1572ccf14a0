//! A relay process killed with SIGKILL at random moments while writers append: nothing is
//! lost, each stream stays in order, and the only duplicates are events the killed relay had
//! published after its stored checkpoint, within the batch it was publishing.
//!
//! The relay runs in a child process: this test binary started again with `--ignored --exact
//! relay_process` and the database and exchange in the environment.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use eventsource_core::FeedPosition;
use eventsource_postgres::delivery_check::{check_delivery, stored_messages, write_concurrently};
use eventsource_postgres::relay::{PublishAsIs, Relay};
use eventsource_postgres::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use eventsource_postgres::testing::{database_url, TestDatabase};
use eventsource_postgres::PostgresStore;
use eventsource_relay_rabbitmq::{PublisherOptions, RabbitMqPublisher};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

const KILLS: usize = 5;
/// The relay's batch: the most events it publishes past its stored checkpoint.
const BATCH: usize = 50;
const RELAY: &str = "crash";
const DATABASE_VAR: &str = "ES_RABBITMQ_CRASH_DATABASE";
const EXCHANGE_VAR: &str = "ES_RABBITMQ_CRASH_EXCHANGE";
/// Bounds the writers: at most this many rounds of 8 writers x 2 streams x 10 events.
const MAX_ROUNDS: usize = 30;

/// The relay process (started by the test below, never on its own).
#[test]
#[ignore = "the relay process of relay_killed_with_sigkill_at_random_moments_loses_nothing, started by it"]
fn relay_process() {
    let database = std::env::var(DATABASE_VAR)
        .expect("run only by relay_killed_with_sigkill_at_random_moments_loses_nothing");
    let exchange = std::env::var(EXCHANGE_VAR).expect("the exchange");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let options: PgConnectOptions = database_url().parse().expect("DATABASE_URL");
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options.database(&database))
            .await
            .expect("connect to the test database");
        let publisher = RabbitMqPublisher::new(&rabbitmq_url(), PublisherOptions::new(exchange))
            .expect("publisher");
        Relay::new(PostgresStore::new(pool), RELAY, publisher, PublishAsIs)
            .with_options(relay_options(BATCH))
            .run(CancellationToken::new())
            .await
            .expect("the relay runs until killed");
    });
}

fn spawn_relay(database: &str, exchange: &str) -> Child {
    Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--ignored", "--exact", "relay_process", "--nocapture"])
        .env(DATABASE_VAR, database)
        .env(EXCHANGE_VAR, exchange)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the relay process")
}

/// Waits until the stored checkpoint is past `after` (or at the head, when the writers are
/// done).
async fn wait_for_checkpoint_past(store: &PostgresStore, after: Option<FeedPosition>) {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let now = stored_checkpoint(store, RELAY).await;
            let head = store.head_position().await.expect("head");
            if now.is_some() && (now > after || now == head) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the relay moved its checkpoint in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_with_sigkill_at_random_moments_loses_nothing() {
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");
    let (exchange, queue) = (unique("crash"), unique("crash"));
    let (_connection, channel) = raw_channel().await;
    declare_queue(&channel, &exchange, &queue, "#").await;

    // Writers append in rounds until the kills are over.
    let stop_writing = Arc::new(AtomicBool::new(false));
    let writers = tokio::spawn({
        let (store, stop) = (store.clone(), stop_writing.clone());
        async move {
            let mut appended = 0;
            for round in 0..MAX_ROUNDS {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                appended += write_concurrently(&store, &format!("tick{round}"), 8, 2, 10)
                    .await
                    .expect("write");
            }
            appended
        }
    });

    // Kill the relay at random moments, each once it has moved its checkpoint at least once.
    let mut checkpoints_at_kills = Vec::new();
    let mut last = None;
    for _ in 0..KILLS {
        let mut relay = spawn_relay(db.name(), &exchange);
        wait_for_checkpoint_past(&store, last).await;
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..300))).await;
        relay.start_kill().expect("kill -9");
        let status = relay.wait().await.expect("reap the relay");
        assert!(
            !status.success(),
            "the relay died by the signal: {status:?}"
        );
        last = stored_checkpoint(&store, RELAY).await;
        checkpoints_at_kills.push(last.expect("a checkpoint"));
    }
    stop_writing.store(true, Ordering::SeqCst);
    let appended = writers.await.expect("writers");

    // A last relay catches up with the head.
    let target = head(&store).await;
    let mut relay = spawn_relay(db.name(), &exchange);
    tokio::time::timeout(DEADLINE, async {
        while stored_checkpoint(&store, RELAY).await < Some(target) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the last relay caught up in time");
    relay.start_kill().expect("kill");
    relay.wait().await.expect("reap");

    let received = drain(&channel, &queue).await;
    let stored = stored_messages(&store).await.expect("stored");
    assert_eq!(stored.len(), appended);
    let report = check_delivery(&stored, &messages(&received));
    assert!(report.is_complete_and_ordered(), "{report:?}");
    assert_eq!(received.len(), appended + report.duplicates);

    // Every duplicate is an event within the batch after the checkpoint stored at a kill.
    let feed: Vec<(String, FeedPosition)> = eventsource_postgres::sqlx::query_as::<_, (String, String)>(
        "SELECT event_id::text, transaction_id::text || '/' || position FROM eventsource.events ORDER BY transaction_id, position",
    )
    .fetch_all(store.pool())
    .await
    .expect("the feed")
    .into_iter()
    .map(|(id, position)| (id, position.parse().expect("a position")))
    .collect();
    let index: HashMap<&str, usize> = feed
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id.as_str(), i))
        .collect();
    let after_kill: Vec<usize> = checkpoints_at_kills
        .iter()
        .map(|checkpoint| feed.partition_point(|(_, position)| position <= checkpoint))
        .collect();
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for r in &received {
        *copies.entry(r.message.message_id.as_str()).or_default() += 1;
    }
    let mut duplicated = 0;
    for (id, count) in copies.into_iter().filter(|(_, count)| *count > 1) {
        duplicated += count - 1;
        let i = index[id];
        assert!(
            after_kill.iter().any(|&first| first <= i && i < first + BATCH),
            "event {id} (feed index {i}) was delivered {count} times but is not within {BATCH} events after a kill's checkpoint {after_kill:?}"
        );
    }
    assert_eq!(duplicated, report.duplicates);
    assert!(report.duplicates <= KILLS * BATCH);
    eprintln!(
        "{appended} events, {KILLS} kills at checkpoints {}, {} duplicates",
        checkpoints_at_kills
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        report.duplicates
    );

    delete(&channel, &[&queue], &[&exchange]).await;
    db.drop_database().await.expect("drop");
}
