//! The relay killed with SIGKILL at random moments while writers append: after each restart
//! it resumes from its checkpoint, nothing is lost, each stream stays in order, and every
//! duplicate is an event the killed relay had published after its stored checkpoint.
//!
//! The relay runs in a child process: this test binary run again with `KAFKA_CRASH_CHILD`
//! set (hence its own `main`, without the test harness).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use common::*;
use eventsource_core::FeedPosition;
use eventsource_postgres::delivery_check::{check_delivery, stored_messages, write_concurrently};
use eventsource_postgres::relay::{checkpoint_name, header, PublishAsIs, Relay};
use eventsource_postgres::testing::database_url;
use eventsource_postgres::PostgresStore;
use eventsource_relay_kafka::{topic_name, KafkaPublisher, KafkaPublisherOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The child's environment: the database name and the topic prefix.
const CHILD_DATABASE: &str = "KAFKA_CRASH_CHILD";
const CHILD_PREFIX: &str = "KAFKA_CRASH_PREFIX";
const RELAY: &str = "crash";
const KILLS: usize = 5;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a runtime");
    if let Ok(database) = std::env::var(CHILD_DATABASE) {
        runtime.block_on(child(&database));
        return;
    }
    let started = Instant::now();
    print!("test a_relay_killed_at_random_moments_loses_nothing_and_duplicates_only_after_its_checkpoints ... ");
    runtime.block_on(
        a_relay_killed_at_random_moments_loses_nothing_and_duplicates_only_after_its_checkpoints(),
    );
    println!("ok ({:.1} s)", started.elapsed().as_secs_f64());
}

/// The relay process: runs until it is killed.
async fn child(database: &str) {
    let options = PgConnectOptions::from_str(&database_url())
        .expect("DATABASE_URL")
        .database(database);
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .expect("connect");
    let prefix = std::env::var(CHILD_PREFIX).expect("the topic prefix");
    let publisher = KafkaPublisher::new(
        &brokers(),
        KafkaPublisherOptions::default().with_topic_prefix(prefix),
    )
    .expect("publisher");
    Relay::new(PostgresStore::new(pool), RELAY, publisher, PublishAsIs)
        .with_options(relay_options())
        .run(CancellationToken::new())
        .await
        .expect("the relay runs until it is killed");
}

fn spawn_child(database: &str, prefix: &str) -> Child {
    Command::new(std::env::current_exe().expect("the test binary"))
        .env(CHILD_DATABASE, database)
        .env(CHILD_PREFIX, prefix)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the relay process")
}

async fn checkpoint(store: &PostgresStore) -> FeedPosition {
    let stored: Option<String> = sqlx::query_scalar(
        "SELECT transaction_id::text || '/' || position FROM eventsource.checkpoints WHERE name = $1",
    )
    .bind(checkpoint_name(RELAY))
    .fetch_optional(store.pool())
    .await
    .expect("read the checkpoint");
    stored.map_or(FeedPosition::START, |p| p.parse().expect("a position"))
}

async fn a_relay_killed_at_random_moments_loses_nothing_and_duplicates_only_after_its_checkpoints()
{
    require_broker().await;
    let (db, store) = fresh().await;
    let prefix = format!("{}.", unique("crash"));

    // Writers append round after round (a category per round) until the kills are over.
    let writing = CancellationToken::new();
    let writers = tokio::spawn({
        let (store, writing) = (store.clone(), writing.clone());
        async move {
            let mut appended = 0;
            for round in 0..30 {
                if writing.is_cancelled() && round >= 2 {
                    break;
                }
                appended += write_concurrently(&store, &format!("c{round}"), 8, 4, 10)
                    .await
                    .expect("write");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            appended
        }
    });

    // (checkpoint stored at the kill, head of the feed just after it)
    let mut kills: Vec<(FeedPosition, FeedPosition)> = Vec::new();
    let started = Instant::now();
    for _ in 0..KILLS {
        // Killed once it has moved its checkpoint (it is active and publishing), after a
        // random further delay.
        let before = checkpoint(&store).await;
        let mut relay = spawn_child(db.name(), &prefix);
        let deadline = Instant::now() + DEADLINE;
        while checkpoint(&store).await == before {
            assert!(
                Instant::now() < deadline,
                "the relay made no progress in time"
            );
            assert!(
                relay.try_wait().expect("status").is_none(),
                "the relay died"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..400))).await;
        relay.start_kill().expect("SIGKILL");
        let status = relay.wait().await.expect("the relay process ended");
        assert!(
            !status.success(),
            "the relay was killed, it did not exit: {status}"
        );
        let at = checkpoint(&store).await;
        let head = store
            .head_position()
            .await
            .expect("head")
            .unwrap_or(FeedPosition::START);
        kills.push((at, head));
        eprintln!("kill at {at} (head {head}) after {:?}", started.elapsed());
    }
    writing.cancel();
    let appended = writers.await.expect("writers");

    // A last relay catches up with the head; then it is killed too.
    let mut relay = spawn_child(db.name(), &prefix);
    let head = store.head_position().await.expect("head").expect("events");
    let deadline = Instant::now() + DEADLINE;
    while checkpoint(&store).await < head {
        assert!(
            Instant::now() < deadline,
            "the last relay did not reach the head in time"
        );
        assert!(
            relay.try_wait().expect("status").is_none(),
            "the last relay died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.start_kill().expect("SIGKILL");
    relay.wait().await.expect("ended");
    eprintln!("caught up with {head} after {:?}", started.elapsed());

    let stored = stored_messages(&store).await.expect("stored");
    assert_eq!(stored.len(), appended);
    let categories: BTreeSet<String> = stored
        .iter()
        .map(|m| m.stream.split_once('-').expect("category-id").0.to_owned())
        .collect();
    // One reader per topic, all at once, each to the end of its partitions.
    let readers = categories.iter().map(|category| {
        let topic = topic_name(&prefix, category);
        let in_category = stored
            .iter()
            .filter(|m| m.stream.starts_with(&format!("{category}-")))
            .count();
        async move {
            let mut reader = RawReader::new(&topic).await;
            reader.read_distinct(in_category).await;
            reader.read_to_end().await;
            reader
        }
    });
    let readers = futures::future::join_all(readers).await;
    let received: Vec<_> = readers.iter().flat_map(RawReader::received).collect();
    let records: Vec<_> = readers.into_iter().flat_map(|r| r.records).collect();
    eprintln!("read after {:?}", started.elapsed());
    let report = check_delivery(&stored, &received);
    assert!(report.is_complete_and_ordered(), "{report:?}");

    // Every duplicate was published by a killed relay after the checkpoint it had stored.
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for record in &records {
        *copies
            .entry(record.header(header::MESSAGE_ID).expect("id"))
            .or_default() += 1;
    }
    let mut duplicated = 0;
    for record in &records {
        let id = record.header(header::MESSAGE_ID).expect("id");
        if copies[id] < 2 {
            continue;
        }
        duplicated += 1;
        let position: FeedPosition = record
            .header(header::FEED_POSITION)
            .expect("feed-position")
            .parse()
            .expect("a position");
        assert!(
            kills
                .iter()
                .any(|(at, head)| *at < position && position <= *head),
            "the duplicate at {position} is not after the checkpoint of any kill {kills:?}"
        );
    }
    assert_eq!(
        report.duplicates,
        duplicated - copies.values().filter(|c| **c > 1).count()
    );
    let moved = kills.windows(2).filter(|w| w[0].0 < w[1].0).count();
    assert!(
        moved >= 1,
        "the relays made progress between kills: {kills:?}"
    );
    eprintln!(
        "{} events in {} categories, {} kills at checkpoints {:?}, {} duplicates",
        appended,
        categories.len(),
        kills.len(),
        kills
            .iter()
            .map(|(at, _)| at.to_string())
            .collect::<Vec<_>>(),
        report.duplicates
    );
    db.drop_database().await.expect("drop");
}
