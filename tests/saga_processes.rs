//! Two runner processes of the order example's fulfilment saga on one database: one is active,
//! the other stands by. The active one is killed with SIGKILL mid-saga, right after it carried
//! out a command and before it stored that trigger's outcome; the standby takes over and
//! finishes every instance, and plain SQL over the events shows that every saga command
//! produced its events once.
//!
//! A runner process is this binary again, with `SAGA_KILL_CHILD_DATABASE` set (hence its own
//! `main`, `harness = false`). It prints its runner's status and every command it carries out
//! on stdout, one line each, which is how the test knows which one is active and when to kill
//! it. Each command is followed by a pause (`COMMAND_DELAY`, in this test's wiring of the saga,
//! not in the library), so that the kill lands between a command and the commit of its trigger.

#![allow(dead_code)]

#[path = "../examples/order/domain.rs"]
mod domain;
#[path = "../examples/order/fulfilment.rs"]
mod fulfilment;
#[path = "../examples/order/inventory.rs"]
mod inventory;
#[path = "../examples/order/payment.rs"]
mod payment;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::process::Stdio;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use eventsource::postgres::process_manager::{self, ProcessManagerOptions, ProcessManagerRunner};
use eventsource::postgres::testing::{database_url, TestDatabase};
use eventsource::postgres::PostgresStore;
use eventsource::process_manager::{CommandFailure, Decision, ProcessManager, Trigger};
use eventsource::{
    Aggregate, CancellationToken, CommandContext, Envelope, FeedFilter, FeedOptions, Repository,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use domain::{Order, OrderCommand};
use fulfilment::{Fulfilment, FulfilmentCommand, FulfilmentEvent, FulfilmentState, Stage, NAME};
use payment::{Payment, PaymentCommand, PaymentStatus, DECLINED_CARD_PREFIX};

const TEST: &str = "a_killed_runner_process_leaves_its_sagas_to_the_standby_with_no_command_twice";
/// Set in a child: the test database it runs the saga on.
const CHILD_DATABASE: &str = "SAGA_KILL_CHILD_DATABASE";
/// Set in a child: its name (`a` or `b`), also in its connections' `application_name`.
const CHILD_NAME: &str = "SAGA_KILL_CHILD_NAME";
/// The `application_name` prefix of the children's connections (to find the lock's holder).
const APPLICATION: &str = "saga-runner-";
/// The pause after each command a child carries out.
const COMMAND_DELAY: Duration = Duration::from_millis(250);
/// The payment deadline: long enough for the paid and declined orders to be settled first,
/// short enough for the unpaid ones to be cancelled by it within the test.
const PAYMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Orders: paid, declined, unpaid, paid, declined, unpaid.
const ORDERS: usize = 6;
/// The active child is killed once it has carried out this many commands (of 24).
const KILL_AFTER: usize = 8;
/// The whole test.
const TEST_DEADLINE: Duration = Duration::from_secs(50);
/// Each wait within it.
const STEP_DEADLINE: Duration = Duration::from_secs(30);

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    if let Ok(database) = std::env::var(CHILD_DATABASE) {
        let name = std::env::var(CHILD_NAME).expect("the child's name");
        runtime.block_on(child(&database, &name));
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
    runtime.block_on(async {
        tokio::time::timeout(TEST_DEADLINE, kill_test())
            .await
            .unwrap_or_else(|_| panic!("the test did not finish within {TEST_DEADLINE:?}"))
    });
    println!("test {TEST} ... ok");
}

// ---------------------------------------------------------------------------------------------
// The runner process.

/// The example's saga, pausing after each command it carries out, and telling stdout about it.
struct Slow {
    inner: Fulfilment<PostgresStore>,
}

#[async_trait]
impl ProcessManager for Slow {
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
        let how = match &outcome {
            Ok(()) => "done",
            Err(CommandFailure::Refused(_)) => "refused",
            Err(_) => "failed",
        };
        // Line-buffered: the test reads it before the pause is over.
        println!(
            "command {} {} {} {how}",
            ctx.command_id,
            command.name(),
            order_of(command)
        );
        tokio::time::sleep(COMMAND_DELAY).await;
        outcome
    }
}

fn order_of(command: &FulfilmentCommand) -> &str {
    use FulfilmentCommand as C;
    match command {
        C::ReserveStock { order }
        | C::RequestPayment { order }
        | C::CommitStock { order }
        | C::ReleaseStock { order, .. }
        | C::CancelPayment { order, .. }
        | C::CancelOrder { order, .. } => order,
    }
}

/// A runner process: runs the saga until killed, or until the test process goes away.
async fn child(database: &str, name: &str) {
    // The test holds our stdin open; when it ends (or dies), so do we.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let options = PgConnectOptions::from_str(&database_url())
        .expect("DATABASE_URL")
        .database(database)
        .application_name(&format!("{APPLICATION}{name}"));
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .expect("connect to the test database");
    let store = PostgresStore::new(pool);
    let saga = Slow {
        inner: Fulfilment::new(store.clone(), PAYMENT_TIMEOUT),
    };
    let options = ProcessManagerOptions {
        feed: FeedOptions::default().with_poll_interval(Duration::from_millis(100)),
        standby_retry: Duration::from_millis(100),
        ..ProcessManagerOptions::default()
    };
    let runner = Arc::new(ProcessManagerRunner::new(store, saga).with_options(options));
    let mut status = runner.status();
    tokio::spawn(async move {
        loop {
            let now = status.borrow_and_update().clone();
            println!(
                "status {:?} {} {}",
                now.state, now.activations, now.commands_issued
            );
            if status.changed().await.is_err() {
                return;
            }
        }
    });
    if let Err(error) = runner.run(CancellationToken::new()).await {
        eprintln!("runner {name}: the runner failed: {error}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// The test.

/// What a runner process has told the test.
#[derive(Debug, Clone, Default)]
struct Log {
    /// Its runner's state (`Standby`, `Live`...).
    state: String,
    /// Times it became active.
    activations: u64,
    /// Commands whose trigger it committed.
    committed: u64,
    /// Commands it carried out (`id name order outcome`), in order.
    commands: Vec<String>,
    /// Its stdout closed.
    ended: bool,
}

impl Log {
    fn read(&mut self, line: &str) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["status", state, activations, committed] => {
                self.state = (*state).to_owned();
                self.activations = activations.parse().expect("activations");
                self.committed = committed.parse().expect("commands issued");
            }
            ["command", ..] => self.commands.push(words[1..].join(" ")),
            _ => eprintln!("unexpected line from a runner: {line}"),
        }
    }

    fn command_ids(&self) -> BTreeSet<String> {
        self.commands
            .iter()
            .map(|c| c.split(' ').next().unwrap_or_default().to_owned())
            .collect()
    }
}

/// A runner process, killed (SIGKILL) when dropped, so also when the test fails.
struct RunnerProcess {
    name: &'static str,
    child: Child,
    log: watch::Receiver<Log>,
}

impl RunnerProcess {
    fn spawn(db: &TestDatabase, name: &'static str) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("this test binary"))
            .env(CHILD_DATABASE, db.name())
            .env(CHILD_NAME, name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start a runner process");
        let stdout = child.stdout.take().expect("the child's stdout");
        let (sender, log) = watch::channel(Log::default());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sender.send_modify(|log| log.read(&line));
            }
            sender.send_modify(|log| log.ended = true);
        });
        Self { name, child, log }
    }

    fn log(&self) -> Log {
        self.log.borrow().clone()
    }

    async fn wait_for(&mut self, what: &str, done: impl FnMut(&Log) -> bool) -> Log {
        let name = self.name;
        tokio::time::timeout(STEP_DEADLINE, self.log.wait_for(done))
            .await
            .unwrap_or_else(|_| panic!("runner {name}: {what} within {STEP_DEADLINE:?}"))
            .expect("the runner's log")
            .clone()
    }

    /// SIGKILL, then everything it printed before it died.
    async fn kill(&mut self) -> Log {
        self.child.start_kill().expect("SIGKILL the runner");
        let status = self.child.wait().await.expect("the killed runner's status");
        assert!(
            !status.success(),
            "runner {} was killed: {status}",
            self.name
        );
        self.wait_for("its stdout to close", |log| log.ended).await
    }
}

/// Polls `done` every 50 ms until it holds, for up to [`STEP_DEADLINE`].
async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !done().await {
        assert!(
            start.elapsed() < STEP_DEADLINE,
            "{what} within {STEP_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn case_of(order: usize) -> &'static str {
    ["paid", "declined", "unpaid"][order % 3]
}

/// Places and confirms an order (one correlation chain).
async fn confirmed_order(store: &PostgresStore, id: &str) {
    let orders = Repository::<Order, _>::new(store.clone());
    let stream = Order::stream_id(id).expect("a valid id");
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
            .await
            .expect("the customer's order command");
    }
}

/// The customer: pays with `card` once the saga has asked for the payment.
fn customer_pays(store: &PostgresStore, id: &str, card: &str) -> JoinHandle<()> {
    let payments = Repository::<Payment, _>::new(store.clone());
    let stream = Payment::stream_id(id).expect("a valid id");
    let card = card.to_owned();
    tokio::spawn(async move {
        loop {
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

/// The event types of each of the order's streams, as they must end.
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

/// The saga's commands on each path (each produces one event).
fn commands_of(case: &str) -> usize {
    match case {
        "paid" => 3,     // reserve, request payment, commit stock
        "declined" => 4, // reserve, request payment, release stock, cancel order
        "unpaid" => 5,   // reserve, request payment; deadline: cancel payment, release, cancel
        _ => unreachable!(),
    }
}

/// Events the saga's commands produced so far.
async fn saga_events(store: &PostgresStore) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM eventsource.events WHERE metadata->'headers'->>'process-manager' = $1",
    )
    .bind(NAME)
    .fetch_one(store.pool())
    .await
    .expect("count the saga's events")
}

async fn completed_instances(store: &PostgresStore) -> usize {
    process_manager::instances::<FulfilmentState>(store, NAME)
        .await
        .expect("read the instances")
        .iter()
        .filter(|i| i.completed)
        .count()
}

/// The `application_name`s of the sessions holding an advisory lock in the test database.
async fn lock_holders(store: &PostgresStore) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND a.application_name LIKE $1
         ORDER BY 1",
    )
    .bind(format!("{APPLICATION}%"))
    .fetch_all(store.pool())
    .await
    .expect("read pg_locks")
}

async fn kill_test() {
    let started = Instant::now();
    let db = TestDatabase::create().await.expect("a test database");
    let store = db.store().await.expect("a migrated store");

    // Two runner processes of the same process manager: one becomes active, the other stands by.
    let mut runners = [
        RunnerProcess::spawn(&db, "a"),
        RunnerProcess::spawn(&db, "b"),
    ];
    eventually("one runner live and the other standing by", || {
        let states = [runners[0].log().state, runners[1].log().state];
        async move {
            let mut states = states.to_vec();
            states.sort();
            states == ["Live", "Standby"]
        }
    })
    .await;
    let [a, b] = &mut runners;
    let (active, standby) = if a.log().state == "Live" {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(
        lock_holders(&store).await,
        [format!("{APPLICATION}{}", active.name)],
        "the live runner holds the lock, and only it"
    );

    // The sagas: two of each path.
    let orders: Vec<String> = (0..ORDERS).map(|i| format!("saga-kill-{i}")).collect();
    let mut customers = Vec::new();
    for (i, id) in orders.iter().enumerate() {
        confirmed_order(&store, id).await;
        match case_of(i) {
            "paid" => customers.push(customer_pays(&store, id, "4242-4242-4242-4242")),
            "declined" => customers.push(customer_pays(&store, id, DECLINED_CARD_PREFIX)),
            _ => {}
        }
    }
    let total_commands: usize = (0..ORDERS).map(|i| commands_of(case_of(i))).sum();

    // Kill the active one right after its KILL_AFTER-th command, during the pause that follows
    // it: that command's trigger is not committed.
    active
        .wait_for("to carry out the first commands", |log| {
            log.commands.len() >= KILL_AFTER
        })
        .await;
    let killed = active.kill().await;
    let events_at_kill = saga_events(&store).await;
    let completed_at_kill = completed_instances(&store).await;
    assert_eq!(
        standby.log().activations,
        0,
        "the standby was not active before the kill"
    );
    assert!(
        events_at_kill > 0 && (events_at_kill as usize) < total_commands,
        "the kill landed mid-saga: {events_at_kill} of {total_commands} saga events stored"
    );
    assert!(completed_at_kill < ORDERS, "the kill landed mid-saga");

    // The standby takes over and finishes every instance.
    standby
        .wait_for("to take over", |log| log.activations == 1)
        .await;
    eventually("every instance to complete", || async {
        completed_instances(&store).await == ORDERS
    })
    .await;
    let finished = Instant::now();
    let took_over = standby.kill().await;
    for customer in customers {
        customer.abort();
    }
    assert_eq!(took_over.activations, 1, "the standby took over once");
    assert!(
        took_over.commands.iter().all(|c| c.ends_with(" done"))
            && killed.commands.iter().all(|c| c.ends_with(" done")),
        "no command was refused or failed: {killed:?} {took_over:?}"
    );

    // Each instance ended in the right state, each stream holds what it must, once.
    for (i, id) in orders.iter().enumerate() {
        let case = case_of(i);
        let instance = process_manager::instance::<FulfilmentState>(&store, NAME, id)
            .await
            .expect("read the instance")
            .expect("the instance");
        assert!(instance.completed, "{id}");
        match case {
            "paid" => assert_eq!(instance.state.stage, Stage::Fulfilled, "{id}"),
            "declined" => {
                assert_eq!(instance.state.stage, Stage::Cancelled, "{id}");
                assert!(
                    instance
                        .state
                        .cancelled_because
                        .as_deref()
                        .is_some_and(|r| r.starts_with("payment declined")),
                    "{id}: {:?}",
                    instance.state
                );
            }
            _ => {
                assert_eq!(instance.state.stage, Stage::Cancelled, "{id}");
                assert_eq!(
                    instance.state.cancelled_because.as_deref(),
                    Some("not paid in time"),
                    "{id}"
                );
            }
        }
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT category, event_type FROM eventsource.events
             WHERE stream_id = $1 ORDER BY category, version",
        )
        .bind(id)
        .fetch_all(store.pool())
        .await
        .expect("read the order's events");
        let mut streams: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (category, event_type) in rows {
            streams.entry(category).or_default().push(event_type);
        }
        assert_eq!(streams, expected_streams(case), "{id}: the events stored");

        // Per saga command (the causation id of the events it produced): one event, all
        // carrying the instance's correlation id.
        let per_command: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT metadata->>'causation_id', count(*),
                    count(*) FILTER (WHERE metadata->>'correlation_id' = $3)
             FROM eventsource.events
             WHERE stream_id = $1 AND metadata->'headers'->>'process-manager' = $2
             GROUP BY 1",
        )
        .bind(id)
        .bind(NAME)
        .bind(instance.correlation_id.to_string())
        .fetch_all(store.pool())
        .await
        .expect("count the events per command");
        assert_eq!(
            per_command.len(),
            commands_of(case),
            "{id}: one causation id per saga command: {per_command:?}"
        );
        for (command, events, correlated) in &per_command {
            assert_eq!(
                *events, 1,
                "{id}: command {command} produced {events} events"
            );
            assert_eq!(*correlated, 1, "{id}: command {command}'s correlation id");
        }
    }
    let all_saga_events = saga_events(&store).await;
    assert_eq!(all_saga_events as usize, total_commands);
    assert!(
        process_manager::deadlines(&store, NAME)
            .await
            .expect("read the deadlines")
            .is_empty(),
        "no deadline is left behind"
    );
    let parked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM eventsource.dead_letters WHERE projection = $1")
            .bind(process_manager::checkpoint_name(NAME))
            .fetch_one(store.pool())
            .await
            .expect("count the dead letters");
    assert_eq!(parked, 0, "nothing was parked");

    // The kill landed between a command and its trigger's commit: the standby carried out that
    // command again (with the same id), and the store stored nothing twice (checked above).
    let again: BTreeSet<String> = killed
        .command_ids()
        .intersection(&took_over.command_ids())
        .cloned()
        .collect();
    assert!(
        !again.is_empty(),
        "the standby re-issued the command the kill interrupted: {killed:?} {took_over:?}"
    );
    assert_eq!(
        killed.command_ids().union(&took_over.command_ids()).count(),
        total_commands,
        "between them the runners carried out every saga command"
    );
    println!(
        "runner {} killed after carrying out {} commands ({} of them committed); at the kill: \
         {events_at_kill} of {total_commands} saga events stored, {completed_at_kill} of \
         {ORDERS} instances complete; runner {} took over and carried out {} commands, {} of \
         them again: {:?}; all done {:.1?} after the start",
        active.name,
        killed.commands.len(),
        killed.committed,
        standby.name,
        took_over.commands.len(),
        again.len(),
        killed
            .commands
            .iter()
            .filter(|c| again.contains(c.split(' ').next().unwrap_or_default()))
            .collect::<Vec<_>>(),
        finished - started,
    );
    store.close().await;
    db.drop_database().await.expect("drop the test database");
}
