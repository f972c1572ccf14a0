//! The order example's fulfilment saga on PostgreSQL, through the process manager runner:
//! crashes after every command, a failover between two runners, and deadlines across a restart.
//!
//! A "crash" aborts the runner's task while it hangs right after a command was carried out:
//! its futures are dropped, its transaction never commits, and its lock connection closes (the
//! server ends the session and releases the lock), as when the process dies.

#![allow(dead_code)]

#[path = "../examples/order/domain.rs"]
mod domain;
#[path = "../examples/order/fulfilment.rs"]
mod fulfilment;
#[path = "../examples/order/inventory.rs"]
mod inventory;
#[path = "../examples/order/payment.rs"]
mod payment;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventsource::postgres::process_manager::{
    self, ProcessManagerOptions, ProcessManagerRunner, ProcessManagerStatus,
};
use eventsource::postgres::projection::RunnerState;
use eventsource::postgres::testing::TestDatabase;
use eventsource::postgres::{sqlx, PostgresStore};
use eventsource::process_manager::{CommandFailure, Decision, ProcessManager, Trigger};
use eventsource::{
    Aggregate, CancellationToken, CommandContext, Envelope, FeedFilter, FeedOptions, Repository,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use domain::{Order, OrderCommand};
use fulfilment::{
    Fulfilment, FulfilmentCommand, FulfilmentEvent, FulfilmentState, Stage, NAME, PAYMENT_DUE,
};
use payment::{Payment, PaymentCommand, PaymentStatus, DECLINED_CARD_PREFIX};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The saga, hanging for good right after its `crash_at`-th command was carried out (counting
/// from 1), with `crashed` notified: the test then aborts the runner.
struct Crashing {
    inner: Fulfilment<PostgresStore>,
    executed: AtomicUsize,
    crash_at: Option<usize>,
    crashed: Arc<Notify>,
}

#[async_trait]
impl ProcessManager for Crashing {
    type Event = Envelope<FulfilmentEvent>;
    type State = FulfilmentState;
    type Command = FulfilmentCommand;

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn filter(&self) -> FeedFilter {
        self.inner.filter()
    }

    fn instance_of(&self, event: &Self::Event) -> Option<String> {
        self.inner.instance_of(event)
    }

    fn decide(
        &self,
        state: &mut FulfilmentState,
        trigger: Trigger<'_, Self::Event, FulfilmentCommand>,
    ) -> Decision<FulfilmentCommand> {
        self.inner.decide(state, trigger)
    }

    async fn execute(
        &self,
        command: &FulfilmentCommand,
        ctx: &CommandContext,
    ) -> Result<(), CommandFailure> {
        let outcome = self.inner.execute(command, ctx).await;
        let executed = self.executed.fetch_add(1, Ordering::SeqCst) + 1;
        if Some(executed) == self.crash_at {
            self.crashed.notify_one();
            std::future::pending::<()>().await;
        }
        outcome
    }
}

/// A runner of the saga, in a task of its own.
struct Running {
    runner: Arc<ProcessManagerRunner<Crashing>>,
    task: JoinHandle<Result<(), process_manager::ProcessManagerError>>,
    shutdown: CancellationToken,
    crashed: Arc<Notify>,
}

impl Running {
    fn start(store: &PostgresStore, timeout: Duration, crash_at: Option<usize>) -> Self {
        let crashed = Arc::new(Notify::new());
        let saga = Crashing {
            inner: Fulfilment::new(store.clone(), timeout),
            executed: AtomicUsize::new(0),
            crash_at,
            crashed: crashed.clone(),
        };
        let options = ProcessManagerOptions {
            feed: FeedOptions::default().with_poll_interval(Duration::from_millis(100)),
            standby_retry: Duration::from_millis(100),
            ..ProcessManagerOptions::default()
        };
        let runner = Arc::new(ProcessManagerRunner::new(store.clone(), saga).with_options(options));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let runner = runner.clone();
            let shutdown = shutdown.clone();
            async move { runner.run(shutdown).await }
        });
        Self {
            runner,
            task,
            shutdown,
            crashed,
        }
    }

    fn status(&self) -> ProcessManagerStatus {
        self.runner.status().borrow().clone()
    }

    /// Waits for the injected crash, then kills the runner.
    async fn crash(self) {
        tokio::time::timeout(Duration::from_secs(20), self.crashed.notified())
            .await
            .expect("the runner reached its crash point within 20 s");
        self.task.abort();
        let _ = self.task.await;
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("the runner's task")
            .expect("the runner stopped cleanly");
    }
}

/// Places and confirms an order (one correlation chain).
async fn confirmed_order(store: &PostgresStore, id: &str) -> Result<(), Error> {
    let orders = Repository::<Order, _>::new(store.clone());
    let stream = Order::stream_id(id)?;
    let ctx = CommandContext::new().with_actor("customer");
    for command in [
        OrderCommand::PlaceOrder {
            customer: "dana".into(),
        },
        OrderCommand::AddItem {
            sku: "COFFEE-1KG".into(),
            quantity: 2,
            unit_price_cents: 1_890,
        },
        OrderCommand::Confirm,
    ] {
        orders
            .execute(&stream, command, &ctx.next_command())
            .await?;
    }
    Ok(())
}

/// The customer: pays with `card` once the saga has asked for the payment (gives up after
/// 15 s; abort it once the test has its answer).
fn customer_pays(store: &PostgresStore, id: &str, card: &str) -> JoinHandle<()> {
    let payments = Repository::<Payment, _>::new(store.clone());
    let stream = Payment::stream_id(id).expect("a valid id");
    let card = card.to_owned();
    tokio::spawn(async move {
        for _ in 0..750 {
            let loaded = payments.load(&stream).await.expect("load the payment");
            if loaded.state.status == PaymentStatus::Requested {
                payments
                    .execute(
                        &stream,
                        PaymentCommand::Pay { card },
                        &CommandContext::new(),
                    )
                    .await
                    .expect("pay");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Stops a customer that may still be waiting (when the saga went wrong).
fn dismiss(customer: Option<JoinHandle<()>>) {
    if let Some(customer) = customer {
        customer.abort();
    }
}

async fn wait_completed(store: &PostgresStore, id: &str) -> FulfilmentState {
    for _ in 0..300 {
        let instance = process_manager::instance::<FulfilmentState>(store, NAME, id)
            .await
            .expect("read the instance");
        if let Some(instance) = instance.filter(|i| i.completed) {
            return instance.state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("instance {id} did not complete within 15 s");
}

/// Every event of the order's three streams, as `stream -> [types]`, and how many events each
/// saga command id produced.
async fn effects(
    store: &PostgresStore,
    id: &str,
) -> (BTreeMap<String, Vec<String>>, BTreeMap<String, i64>) {
    let rows: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT category, event_type, metadata->>'causation_id', metadata->'headers'->>'process-manager'
         FROM eventsource.events WHERE stream_id = $1 ORDER BY category, version",
    )
    .bind(id)
    .fetch_all(store.pool())
    .await
    .expect("read the events");
    let mut streams: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut per_command: BTreeMap<String, i64> = BTreeMap::new();
    for (category, event_type, causation, manager) in rows {
        streams.entry(category).or_default().push(event_type);
        if manager.is_some() {
            *per_command
                .entry(causation.unwrap_or_default())
                .or_default() += 1;
        }
    }
    (streams, per_command)
}

fn expected_streams(case: &str) -> BTreeMap<String, Vec<String>> {
    let order_placed = ["OrderPlaced", "ItemAdded", "OrderConfirmed"];
    let (order, stock, payment): (Vec<&str>, Vec<&str>, Vec<&str>) = match case {
        "paid" => (
            order_placed.to_vec(),
            vec!["StockReserved", "StockCommitted"],
            vec!["PaymentRequested", "PaymentCaptured"],
        ),
        "declined" => (
            [&order_placed[..], &["OrderCancelled"]].concat(),
            vec!["StockReserved", "StockReleased"],
            vec!["PaymentRequested", "PaymentDeclined"],
        ),
        "unpaid" => (
            [&order_placed[..], &["OrderCancelled"]].concat(),
            vec!["StockReserved", "StockReleased"],
            vec!["PaymentRequested", "PaymentCancelled"],
        ),
        _ => unreachable!(),
    };
    let own = |types: Vec<&str>| types.into_iter().map(str::to_owned).collect();
    BTreeMap::from([
        ("order".to_owned(), own(order)),
        ("payment".to_owned(), own(payment)),
        ("stock".to_owned(), own(stock)),
    ])
}

/// Commands each path issues.
fn commands_of(case: &str) -> usize {
    match case {
        "paid" => 3,     // reserve, request payment, commit stock
        "declined" => 4, // reserve, request payment, release stock, cancel order
        "unpaid" => 5,   // reserve, request payment; deadline: cancel payment, release, cancel
        _ => unreachable!(),
    }
}

fn expected_stage(case: &str) -> Stage {
    if case == "paid" {
        Stage::Fulfilled
    } else {
        Stage::Cancelled
    }
}

/// Injects a crash after each command of the happy path, the compensation path and the
/// deadline path, then restarts: every command's effect is in the store once, and the instance
/// ends in the right state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_any_command_leaves_every_effect_once() -> Result<(), Error> {
    let db = TestDatabase::create().await?;
    let store = db.store().await?;
    for case in ["paid", "declined", "unpaid"] {
        let timeout = if case == "unpaid" {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(600)
        };
        for crash_at in 1..=commands_of(case) {
            let id = format!("saga-{case}-crash-{crash_at}");
            let crashing = Running::start(&store, timeout, Some(crash_at));
            confirmed_order(&store, &id).await?;
            let customer = match case {
                "paid" => Some(customer_pays(&store, &id, "4242-4242-4242-4242")),
                "declined" => Some(customer_pays(&store, &id, DECLINED_CARD_PREFIX)),
                _ => None,
            };
            crashing.crash().await;
            let restarted = Running::start(&store, timeout, None);
            let state = wait_completed(&store, &id).await;
            restarted.stop().await;
            dismiss(customer);

            assert_eq!(state.stage, expected_stage(case), "{id}: {state:?}");
            let (streams, per_command) = effects(&store, &id).await;
            assert_eq!(streams, expected_streams(case), "{id}: the events stored");
            let saga_events = expected_streams(case)
                .values()
                .flatten()
                .filter(|t| {
                    !matches!(
                        t.as_str(),
                        "OrderPlaced"
                            | "ItemAdded"
                            | "OrderConfirmed"
                            | "PaymentCaptured"
                            | "PaymentDeclined"
                    )
                })
                .count();
            assert_eq!(per_command.len(), saga_events, "{id}: {per_command:?}");
            assert!(
                per_command.values().all(|&n| n == 1),
                "{id}: a command produced its events twice: {per_command:?}"
            );
        }
    }
    assert!(
        process_manager::deadlines(&store, NAME).await?.is_empty(),
        "no deadline is left behind"
    );
    store.close().await;
    db.drop_database().await?;
    Ok(())
}

/// Two runners: one active, the other standing by; the active one is killed mid-saga, and the
/// standby finishes every instance with no command carried out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_finishes_the_sagas_of_a_killed_runner() -> Result<(), Error> {
    let db = TestDatabase::create().await?;
    let store = db.store().await?;
    let timeout = Duration::from_secs(600);
    let first = Running::start(&store, timeout, Some(5));
    let mut status = first.runner.status();
    status.wait_for(|s| s.state == RunnerState::Live).await?;
    let second = Running::start(&store, timeout, None);
    let mut standby = second.runner.status();
    standby
        .wait_for(|s| s.state == RunnerState::Standby)
        .await?;

    let orders: Vec<String> = (0..6).map(|i| format!("saga-failover-{i}")).collect();
    let mut customers = Vec::new();
    for (i, id) in orders.iter().enumerate() {
        confirmed_order(&store, id).await?;
        let card = if i % 2 == 0 {
            "4242-4242-4242-4242"
        } else {
            DECLINED_CARD_PREFIX
        };
        customers.push(customer_pays(&store, id, card));
    }
    assert_eq!(second.status().activations, 0, "only one runner is active");
    first.crash().await;
    for id in &orders {
        wait_completed(&store, id).await;
    }
    assert_eq!(second.status().activations, 1, "the standby took over");
    second.stop().await;
    for customer in customers {
        dismiss(Some(customer));
    }
    for (i, id) in orders.iter().enumerate() {
        let case = if i % 2 == 0 { "paid" } else { "declined" };
        let (streams, per_command) = effects(&store, id).await;
        assert_eq!(streams, expected_streams(case), "{id}");
        assert!(
            per_command.values().all(|&n| n == 1),
            "{id}: a command produced its events twice: {per_command:?}"
        );
    }
    store.close().await;
    db.drop_database().await?;
    Ok(())
}

/// A deadline set before a shutdown fires after the restart, once: the order is cancelled once,
/// and nothing more happens while the runner keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_survives_a_restart_and_fires_once() -> Result<(), Error> {
    let db = TestDatabase::create().await?;
    let store = db.store().await?;
    let timeout = Duration::from_secs(1);
    let id = "saga-deadline";
    let running = Running::start(&store, timeout, None);
    confirmed_order(&store, id).await?;
    // Wait for the saga to have asked for the payment, then stop it before the deadline.
    let payments = Repository::<Payment, _>::new(store.clone());
    let stream = Payment::stream_id(id)?;
    while payments.load(&stream).await?.state.status != PaymentStatus::Requested {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
    let pending = process_manager::deadlines(&store, NAME).await?;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].name, PAYMENT_DUE);

    // Down past the deadline.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let restarted = Running::start(&store, timeout, None);
    let state = wait_completed(&store, id).await;
    assert_eq!(state.stage, Stage::Cancelled);
    assert_eq!(state.cancelled_because.as_deref(), Some("not paid in time"));
    // Keep running: nothing fires again.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let fired = restarted.status().deadlines_fired;
    restarted.stop().await;
    assert_eq!(fired, 1);
    let (streams, per_command) = effects(&store, id).await;
    assert_eq!(streams, expected_streams("unpaid"));
    assert!(per_command.values().all(|&n| n == 1), "{per_command:?}");
    assert!(process_manager::deadlines(&store, NAME).await?.is_empty());
    store.close().await;
    db.drop_database().await?;
    Ok(())
}
