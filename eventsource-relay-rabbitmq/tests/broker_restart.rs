//! The relay and an inbox consumer while RabbitMQ restarts (`rabbitmqctl stop_app`, then
//! `start_app`) in the middle of publishing and consuming: both report the outage, reconnect by
//! themselves, and nothing is lost. The exchanges, the queues and the messages are durable, so
//! they survive the restart.
//!
//! In a file of its own: the restart disturbs every other test using the broker, and cargo runs
//! test binaries one at a time.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use eventsource_core::BoxError;
use eventsource_postgres::delivery_check::{check_delivery, stored_messages, write_concurrently};
use eventsource_postgres::inbox::{Inbox, InboxHandler, IncomingMessage};
use eventsource_postgres::relay::{PublishAsIs, Relay};
use eventsource_postgres::sqlx::{self, PgConnection};
use eventsource_postgres::testing::TestDatabase;
use eventsource_relay_rabbitmq::{
    InboxOptions, PublisherOptions, QueueTopology, RabbitMqInbox, RabbitMqPublisher,
};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// Bounds the writers: at most this many rounds of 8 writers x 2 streams x 5 events.
const MAX_ROUNDS: usize = 100;

/// Starts the broker's application again if the test ends while it is stopped.
struct StartAppOnDrop;

impl Drop for StartAppOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "start_app"])
            .status();
    }
}

/// One row per message.
struct Rows;

#[async_trait]
impl InboxHandler for Rows {
    type Error = BoxError;

    async fn handle(
        &self,
        tx: &mut PgConnection,
        message: &IncomingMessage,
    ) -> Result<(), BoxError> {
        sqlx::query("INSERT INTO handled (message_id) VALUES ($1)")
            .bind(&message.message_id)
            .execute(tx)
            .await?;
        Ok(())
    }
}

async fn rabbitmqctl(args: &[&str]) {
    let status = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new("rabbitmqctl").arg("-q").args(args).status(),
    )
    .await
    .unwrap_or_else(|_| panic!("rabbitmqctl {args:?} finished in time"))
    .unwrap_or_else(|e| panic!("run rabbitmqctl {args:?} (is RabbitMQ installed here?): {e}"));
    assert!(status.success(), "rabbitmqctl {args:?}: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_rides_out_a_broker_restart_and_loses_nothing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");
    sqlx::query("CREATE TABLE handled (message_id text PRIMARY KEY)")
        .execute(store.pool())
        .await
        .expect("create the handled table");
    let (exchange, queue) = (unique("restart"), unique("restart"));
    let inbox_queue = unique("restart-inbox");
    let consumer = Arc::new(
        RabbitMqInbox::new(
            &rabbitmq_url(),
            Inbox::new(store.clone(), "restart"),
            QueueTopology::new(&exchange, &inbox_queue).bind("#"),
        )
        .expect("inbox")
        .with_options(InboxOptions {
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            ..InboxOptions::default()
        }),
    );
    consumer.declare().await.expect("declare the inbox's queue");
    {
        let (connection, channel) = raw_channel().await;
        declare_queue(&channel, &exchange, &queue, "#").await;
        let _ = connection.close(200, "declared".into()).await;
    }

    let publisher = RabbitMqPublisher::new(
        &rabbitmq_url(),
        PublisherOptions {
            timeout: Duration::from_secs(5),
            ..PublisherOptions::new(&exchange)
        },
    )
    .expect("publisher");
    let relay = Arc::new(
        Relay::new(store.clone(), "restart", publisher, PublishAsIs)
            .with_options(relay_options(50)),
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    let consuming = tokio::spawn({
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        async move { consumer.run(&Rows, shutdown).await }
    });
    // Records whether the relay saw the outage.
    let saw_outage = tokio::spawn({
        let mut status = relay.status();
        async move { status.wait_for(|s| s.broker_outage.is_some()).await.is_ok() }
    });

    // Writers append before, during and after the restart, so that the relay is publishing
    // when the broker goes away.
    let restarted = Arc::new(AtomicBool::new(false));
    let writers = tokio::spawn({
        let (store, restarted) = (store.clone(), restarted.clone());
        async move {
            let mut appended = 0;
            for round in 0..MAX_ROUNDS {
                let last = restarted.load(Ordering::SeqCst);
                appended += write_concurrently(&store, &format!("tick{round}"), 8, 2, 5)
                    .await
                    .expect("write");
                if last {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            appended
        }
    });
    wait_for(&mut relay.status(), |s| s.published >= 50).await;
    tokio::time::timeout(DEADLINE, consumer.status().wait_for(|s| s.handled >= 10))
        .await
        .expect("the inbox consumes in time")
        .expect("status");
    let _restart_guard = StartAppOnDrop;
    rabbitmqctl(&["stop_app"]).await;
    rabbitmqctl(&["start_app"]).await;
    rabbitmqctl(&["await_startup"]).await;
    restarted.store(true, Ordering::SeqCst);

    let appended = writers.await.expect("writers");
    let target = head(&store).await;
    wait_for(&mut relay.status(), |s| s.position >= target).await;
    assert!(
        tokio::time::timeout(Duration::from_secs(1), saw_outage)
            .await
            .is_ok_and(|saw| saw.expect("join")),
        "the relay reported the outage"
    );
    assert_eq!(relay.status().borrow().broker_outage, None, "and its end");
    // The inbox reconnected by itself and handled every event once. (Its counts may see a
    // message twice: an acknowledgement the restart cut off brings the message again, and it
    // is acknowledged as a duplicate. The effects in the database are what counts.)
    let rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM handled")
            .fetch_one(store.pool())
            .await
            .expect("count")
    };
    tokio::time::timeout(DEADLINE, async {
        while rows().await < appended as i64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the inbox handled every event in time: {:?}",
            consumer.status().borrow()
        )
    });
    shutdown.cancel();
    tokio::time::timeout(DEADLINE, running)
        .await
        .expect("the relay stopped in time")
        .expect("join")
        .expect("the relay ran");
    tokio::time::timeout(DEADLINE, consuming)
        .await
        .expect("the inbox stopped in time")
        .expect("join")
        .expect("the inbox ran");
    let consumed = consumer.status().borrow().clone();
    assert!(
        consumed.sessions >= 2,
        "the inbox reconnected: {consumed:?}"
    );
    assert_eq!(consumed.dead_lettered, 0);
    assert_eq!(rows().await, appended as i64, "each event had one effect");

    let (_connection, channel) = raw_channel().await;
    assert_eq!(
        ready_messages(&channel, &inbox_queue).await,
        0,
        "the inbox acknowledged everything"
    );
    let received = drain(&channel, &queue).await;
    let stored = stored_messages(&store).await.expect("stored");
    assert_eq!(stored.len(), appended);
    let report = check_delivery(&stored, &messages(&received));
    assert!(report.is_complete_and_ordered(), "{report:?}");
    assert_eq!(received.len(), appended + report.duplicates);
    eprintln!(
        "{appended} events across the restart, {} duplicates",
        report.duplicates
    );

    let dead_letter = format!("{inbox_queue}.dead-letter");
    delete(
        &channel,
        &[&queue, &inbox_queue, &dead_letter],
        &[&exchange, &dead_letter],
    )
    .await;
    db.drop_database().await.expect("drop");
}
