//! The order example and the shipping example as two processes, end to end: the order service
//! relays its confirmations to RabbitMQ, the shipping service consumes them through its inbox,
//! and each shipment carries the correlation id of the order's command.
//!
//! Both run against a fresh database and a fresh RabbitMQ virtual host, so that nothing else
//! publishes to their exchange or consumes from their queue.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use eventsource::postgres::testing::TestDatabase;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long the shipping service may take to ship every confirmed order.
const DEADLINE: Duration = Duration::from_secs(60);

/// The binary of a compiled example (`cargo test` builds the examples beside the tests).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let target = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    target.join("examples").join(name)
}

/// `rabbitmqctl` with `args`; panics with its output when it fails.
fn rabbitmqctl(args: &[&str]) {
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("run rabbitmqctl (RabbitMQ's admin tool must be installed)");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A RabbitMQ virtual host of its own, deleted when dropped.
struct VirtualHost(String);

impl VirtualHost {
    fn create() -> Self {
        let name = format!("eventsource-two-services-{}", uuid::Uuid::now_v7().simple());
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Self(name)
    }

    fn url(&self) -> String {
        let base = std::env::var("RABBITMQ_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
        let server = base
            .rsplit_once('/')
            .map_or(base.as_str(), |(server, _)| server);
        format!("{server}/{}", self.0)
    }
}

impl Drop for VirtualHost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.0])
            .output();
    }
}

fn spawn(binary: &str, args: &[&str], database_url: &str, rabbitmq_url: &str) -> Child {
    Command::new(example(binary))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RABBITMQ_URL", rabbitmq_url)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start the {binary} example: {e}"))
}

#[tokio::test]
async fn a_confirmed_order_is_shipped_once_by_the_other_service_with_its_correlation_id() {
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");
    // The test server's URL, pointing at this test's database.
    let server = eventsource::postgres::testing::database_url();
    let database_url = match server.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{}", db.name()),
        None => panic!("DATABASE_URL names no database: {server}"),
    };
    let vhost = VirtualHost::create();
    let rabbitmq_url = vhost.url();

    // The shipping service first: it declares its queue, so no confirmation goes unrouted.
    let shipping = spawn("shipping", &[], &database_url, &rabbitmq_url);
    let declared = Instant::now();
    loop {
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass('shipping.shipments') IS NOT NULL")
                .fetch_one(store.pool())
                .await
                .expect("look for the shipments table");
        if exists {
            break;
        }
        assert!(
            declared.elapsed() < DEADLINE,
            "the shipping service did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The table is created before the queue is declared: wait for the queue too.
    let queue_ready = Instant::now();
    loop {
        let output = std::process::Command::new("rabbitmqctl")
            .args(["list_queues", "-p", &vhost.0, "name", "--quiet"])
            .output()
            .expect("rabbitmqctl list_queues");
        if String::from_utf8_lossy(&output.stdout)
            .lines()
            .any(|l| l.trim() == "shipping")
        {
            break;
        }
        assert!(
            queue_ready.elapsed() < DEADLINE,
            "the shipping queue was never declared"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let order = spawn(
        "order",
        &["watch", "--relay", "--orders", "3"],
        &database_url,
        &rabbitmq_url,
    )
    .wait_with_output()
    .await
    .expect("run the order example");
    assert!(
        order.status.success(),
        "the order example failed: {}",
        String::from_utf8_lossy(&order.stderr)
    );

    // The truth, by plain SQL over the order service's events.
    let confirmed: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT stream_id, metadata->>'correlation_id' FROM eventsource.events
         WHERE category = 'order' AND event_type = 'OrderConfirmed' ORDER BY position",
    )
    .fetch_all(store.pool())
    .await
    .expect("the confirmations");
    assert!(
        !confirmed.is_empty(),
        "the order example confirmed no order"
    );
    let started = Instant::now();
    let shipped: Vec<(String, Option<String>)> = loop {
        let shipped: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT order_id, correlation_id::text FROM shipping.shipments")
                .fetch_all(store.pool())
                .await
                .expect("the shipments");
        if shipped.len() >= confirmed.len() {
            break shipped;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "shipped {} of {} orders",
            shipped.len(),
            confirmed.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut expected = confirmed.clone();
    expected.sort();
    let mut actual = shipped;
    actual.sort();
    assert_eq!(
        actual, expected,
        "each confirmed order shipped once, under its order's correlation id"
    );
    assert!(expected
        .iter()
        .all(|(_, correlation)| correlation.is_some()));
    let handled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM eventsource.inbox_messages WHERE inbox = 'shipping'",
    )
    .fetch_one(store.pool())
    .await
    .expect("the inbox's records");
    assert_eq!(handled as usize, confirmed.len());

    // Ctrl-C: the shipping service stops cleanly.
    let pid = shipping.id().expect("the shipping process runs");
    std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("send SIGINT");
    let output = tokio::time::timeout(DEADLINE, shipping.wait_with_output())
        .await
        .expect("the shipping service stops after Ctrl-C")
        .expect("wait for the shipping service");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "shipping failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for (order_id, correlation) in &expected {
        let line = format!("shipped order {order_id} as TRK-");
        assert!(stdout.contains(&line), "{stdout}");
        assert!(
            stdout.contains(correlation.as_deref().unwrap_or("?")),
            "{stdout}"
        );
    }
    store.close().await;
    db.drop_database().await.expect("drop");
}
