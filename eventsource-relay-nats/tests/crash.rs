//! The relay killed with SIGKILL at five random moments while writers append: a child process
//! runs the relay (this binary again, with `NATS_CRASH_CHILD_DATABASE` set), the test kills it
//! and starts another. At the end every event is in the stream once, in stream order: what a
//! killed relay had published after its checkpoint is republished with the same `Nats-Msg-Id`,
//! and JetStream drops it.
//!
//! Its own `main` (harness = false), because it re-executes itself as the relay process.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use common::{
    delete_streams, eventually, jetstream, relay_options, stored_checkpoint, Names, Reader,
};
use eventsource_core::FeedPosition;
use eventsource_postgres::delivery_check::{check_delivery, stored_messages, write_concurrently};
use eventsource_postgres::relay::{PublishAsIs, Relay};
use eventsource_postgres::testing::{database_url, TestDatabase};
use eventsource_postgres::PostgresStore;
use eventsource_relay_nats::{NatsPublisher, NatsPublisherOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const TEST: &str = "a_relay_killed_five_times_publishes_every_event_once_in_stream_order";
/// Set in a child: the test database the relay reads.
const CHILD_DATABASE: &str = "NATS_CRASH_CHILD_DATABASE";
/// Set in a child: the subject prefix it publishes under.
const CHILD_PREFIX: &str = "NATS_CRASH_CHILD_PREFIX";
const RELAY: &str = "nats";
const KILLS: usize = 5;
/// Writer rounds allowed per relay process started (each 8 writers × 2 streams × 10 events):
/// every relay has events of its own to publish, however fast the writers are, and the test
/// writes at most `(KILLS + 1) × ROUNDS_PER_RELAY` rounds.
const ROUNDS_PER_RELAY: usize = 8;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a runtime");
    if let Ok(database) = std::env::var(CHILD_DATABASE) {
        let prefix = std::env::var(CHILD_PREFIX).expect("the child's subject prefix");
        runtime.block_on(child(&database, &prefix));
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("{TEST}: test");
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| TEST.contains(f.as_str())) {
        println!("test result: ok. 0 passed; 0 failed; 1 filtered out");
        return;
    }
    println!("running 1 test");
    runtime.block_on(crash_test());
    println!("test {TEST} ... ok");
}

/// The relay process: runs until killed.
async fn child(database: &str, prefix: &str) {
    let options = PgConnectOptions::from_str(&database_url())
        .expect("DATABASE_URL")
        .database(database);
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .expect("connect to the test database");
    let publisher = NatsPublisher::new(
        common::nats_url(),
        NatsPublisherOptions {
            subject_prefix: prefix.to_owned(),
            ..NatsPublisherOptions::default()
        },
    )
    .expect("publisher options");
    let relay = Relay::new(PostgresStore::new(pool), RELAY, publisher, PublishAsIs)
        .with_options(relay_options());
    if let Err(error) = relay.run(CancellationToken::new()).await {
        eprintln!("crash child: the relay failed: {error}");
        std::process::exit(1);
    }
}

fn spawn_child(db: &TestDatabase, names: &Names) -> Child {
    Command::new(std::env::current_exe().expect("this test binary"))
        .env(CHILD_DATABASE, db.name())
        .env(CHILD_PREFIX, &names.prefix)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the relay process")
}

/// What was true when a relay process died.
#[derive(Debug)]
struct Kill {
    /// The relay's stored checkpoint: every event after it is published again.
    checkpoint: FeedPosition,
    /// The stream's last sequence: what the killed relay had published.
    last_sequence: u64,
}

async fn crash_test() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let names = Names::new("crash");
    let js = jetstream().await;
    common::create_stream(&js, &names.stream_setup()).await;
    let stop_reading = CancellationToken::new();
    let reader = Reader::start(&names.stream, stop_reading.clone()).await;

    // Writers append in rounds until told to stop, ROUNDS_PER_RELAY rounds more for each relay
    // process started. Not a fixed number of rounds: writers faster than the kill loop would
    // finish before the last kills, and a relay started then would find everything published
    // already, with nothing to publish before it is killed.
    let stop_writing = CancellationToken::new();
    let rounds = Arc::new(Semaphore::new(0));
    let writers = tokio::spawn({
        let store = store.clone();
        let stop = stop_writing.clone();
        let rounds = rounds.clone();
        async move {
            let mut appended = 0;
            for round in 0.. {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    permit = rounds.acquire() => permit.expect("the rounds' semaphore").forget(),
                }
                appended += write_concurrently(&store, &format!("crash{round}"), 8, 2, 10)
                    .await
                    .expect("writers");
            }
            appended
        }
    });

    let mut kills = Vec::new();
    for _ in 0..KILLS {
        let before = reader.distinct();
        let mut relay = spawn_child(&db, &names);
        rounds.add_permits(ROUNDS_PER_RELAY);
        // The relay gets to publish something, then dies at a random moment.
        eventually("the relay process to publish", || async {
            reader.distinct() > before
        })
        .await;
        tokio::time::sleep(Duration::from_millis(fastrand::u64(50..1000))).await;
        relay.start_kill().expect("SIGKILL the relay");
        let status = relay.wait().await.expect("the killed relay's status");
        assert!(!status.success(), "the relay was killed: {status}");
        let mut stream = js.get_stream(&names.stream).await.expect("the stream");
        let last_sequence = stream
            .info()
            .await
            .expect("stream info")
            .state
            .last_sequence;
        let checkpoint = stored_checkpoint(&store, RELAY)
            .await
            .unwrap_or(FeedPosition::START);
        kills.push(Kill {
            checkpoint,
            last_sequence,
        });
    }

    // A last relay publishes the rest.
    let mut relay = spawn_child(&db, &names);
    stop_writing.cancel();
    let appended = writers.await.expect("the writers' task");
    let stored = stored_messages(&store).await.expect("stored events");
    assert_eq!(stored.len(), appended);
    reader.wait_for(stored.len()).await;
    relay.start_kill().expect("stop the last relay");
    relay.wait().await.expect("the last relay's status");
    stop_reading.cancel();

    let seen = reader.seen();
    let report = check_delivery(&stored, &reader.received());
    assert!(report.is_complete_and_ordered(), "{report:?}");
    // A duplicate can only be an event after the checkpoint stored at a kill.
    let mut copies: HashMap<&str, (usize, FeedPosition)> = HashMap::new();
    for s in &seen {
        copies
            .entry(s.received.message_id.as_str())
            .or_insert((0, s.position))
            .0 += 1;
    }
    for (id, (count, position)) in &copies {
        if *count > 1 {
            assert!(
                kills.iter().any(|k| *position > k.checkpoint),
                "message {id} at {position} came {count} times but is before every kill's checkpoint {kills:?}"
            );
        }
    }
    // Within the duplicate window JetStream stores a republished Nats-Msg-Id once.
    assert_eq!(report.duplicates, 0, "{report:?}");
    // What the killed relays had published after their checkpoints: republished, dropped by
    // JetStream.
    let republished: usize = kills
        .iter()
        .map(|k| {
            seen.iter()
                .filter(|s| s.stream_sequence <= k.last_sequence && s.position > k.checkpoint)
                .count()
        })
        .sum();
    println!(
        "{appended} events in {} rounds, {KILLS} kills; {republished} messages published after a kill's checkpoint were published again and dropped by JetStream",
        appended / 160
    );

    delete_streams(&js, &names).await;
    db.drop_database().await.expect("drop the test database");
}
