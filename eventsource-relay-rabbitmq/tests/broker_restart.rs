//! The relay while RabbitMQ restarts (`rabbitmqctl stop_app`, then `start_app`) in the middle of
//! publishing: it reports the outage, reconnects by itself, and nothing is lost. The exchange,
//! the queue and the messages are durable, so they survive the restart.
//!
//! In a file of its own: the restart disturbs every other test using the broker, and cargo runs
//! test binaries one at a time.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use eventsource_postgres::delivery_check::{check_delivery, stored_messages, write_concurrently};
use eventsource_postgres::relay::{PublishAsIs, Relay};
use eventsource_postgres::testing::TestDatabase;
use eventsource_relay_rabbitmq::{PublisherOptions, RabbitMqPublisher};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// Starts the broker's application again if the test ends while it is stopped.
struct StartAppOnDrop;

impl Drop for StartAppOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "start_app"])
            .status();
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
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");
    let (exchange, queue) = (unique("restart"), unique("restart"));
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
    // Records whether the relay saw the outage.
    let saw_outage = tokio::spawn({
        let mut status = relay.status();
        async move { status.wait_for(|s| s.broker_outage.is_some()).await.is_ok() }
    });

    // Writers append before, during and after the restart.
    let writers = tokio::spawn({
        let store = store.clone();
        async move {
            let mut appended = 0;
            for round in 0..3 {
                appended += write_concurrently(&store, &format!("tick{round}"), 8, 4, 10)
                    .await
                    .expect("write");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            appended
        }
    });
    wait_for(&mut relay.status(), |s| s.published >= 50).await;
    let _restart_guard = StartAppOnDrop;
    rabbitmqctl(&["stop_app"]).await;
    rabbitmqctl(&["start_app"]).await;
    rabbitmqctl(&["await_startup"]).await;

    let appended = writers.await.expect("writers");
    let target = head(&store).await;
    wait_for(&mut relay.status(), |s| s.position >= target).await;
    assert!(
        saw_outage.await.expect("join"),
        "the relay reported the outage"
    );
    assert_eq!(relay.status().borrow().broker_outage, None, "and its end");
    shutdown.cancel();
    running.await.expect("join").expect("the relay ran");

    let (_connection, channel) = raw_channel().await;
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

    delete(&channel, &[&queue], &[&exchange]).await;
    db.drop_database().await.expect("drop");
}
