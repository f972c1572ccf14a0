//! Units of work and idempotent commands on PostgreSQL, with accounts: a transfer appends its
//! withdrawal and its deposit in one transaction or not at all, concurrent transfers never
//! create or lose money, and a command sent again (even through a new connection) runs once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use eventsource::postgres::testing::TestDatabase;
use eventsource::postgres::PostgresStore;
use eventsource::{
    Aggregate, CommandContext, CommandError, DomainEvent, EventAppender, ExpectedVersion,
    FeedPosition, InMemoryStore, RecordedEvent, Repository, RetryPolicy, StoreError, StreamId,
    StreamReader, UnitError, UnitOfWork,
};
use futures::TryStreamExt;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, DomainEvent)]
enum AccountEvent {
    #[event(name = "Deposited")]
    Deposited { amount: u64 },
    #[event(name = "Withdrawn")]
    Withdrawn { amount: u64 },
}

#[derive(Debug, Clone, Copy)]
enum AccountCommand {
    Deposit(u64),
    Withdraw(u64),
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("insufficient funds: balance {balance}, asked {asked}")]
struct InsufficientFunds {
    balance: u64,
    asked: u64,
}

#[derive(Debug, Default, Clone)]
struct Account {
    balance: u64,
}

#[async_trait]
impl Aggregate for Account {
    const CATEGORY: &'static str = "account";
    type Event = AccountEvent;
    type Command = AccountCommand;
    type Error = InsufficientFunds;
    type Services = ();

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
        }
    }

    async fn handle(
        &self,
        command: &AccountCommand,
        _: &(),
    ) -> Result<Vec<AccountEvent>, InsufficientFunds> {
        match *command {
            AccountCommand::Deposit(amount) => Ok(vec![AccountEvent::Deposited { amount }]),
            AccountCommand::Withdraw(amount) if amount > self.balance => Err(InsufficientFunds {
                balance: self.balance,
                asked: amount,
            }),
            AccountCommand::Withdraw(amount) => Ok(vec![AccountEvent::Withdrawn { amount }]),
        }
    }
}

fn account(n: usize) -> StreamId {
    Account::stream_id(format!("acc-{n}")).expect("valid account id")
}

/// Moves `amount` from `from` to `to` in one unit of work, retried on conflicts.
async fn transfer<S: EventAppender + StreamReader>(
    store: &S,
    from: &StreamId,
    to: &StreamId,
    amount: u64,
    ctx: &CommandContext,
) -> Result<eventsource::Committed, UnitError<CommandError<InsufficientFunds>>> {
    let retry = RetryPolicy::default().with_max_attempts(100);
    let ((), committed) = UnitOfWork::run(store, retry, |unit| {
        Box::pin(async move {
            unit.execute::<Account>(from, AccountCommand::Withdraw(amount), ctx)
                .await?;
            unit.execute::<Account>(to, AccountCommand::Deposit(amount), ctx)
                .await?;
            Ok(())
        })
    })
    .await?;
    Ok(committed)
}

async fn balance<S: EventAppender + StreamReader>(store: S, id: &StreamId) -> u64 {
    Repository::<Account, _>::new(store)
        .load(id)
        .await
        .expect("load the account")
        .state
        .balance
}

/// A transfer appends both events in one transaction; an overdraft refuses the whole unit.
#[tokio::test]
async fn a_transfer_is_one_transaction_and_a_refusal_stores_nothing() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let repository = Repository::<Account, _>::new(store.clone());
    let (a, b) = (account(1), account(2));
    repository
        .execute(&a, AccountCommand::Deposit(100), &CommandContext::new())
        .await
        .expect("open a");

    let committed = transfer(&store, &a, &b, 30, &CommandContext::new())
        .await
        .expect("transfer");
    assert_eq!(committed.attempts, 1);
    let positions: Vec<FeedPosition> = committed
        .streams
        .iter()
        .flat_map(|s| s.appended.iter().map(|e| e.position))
        .collect();
    assert_eq!(positions.len(), 2);
    assert_eq!(
        positions[0].transaction_id, positions[1].transaction_id,
        "one transaction"
    );
    assert_eq!(balance(store.clone(), &a).await, 70);
    assert_eq!(balance(store.clone(), &b).await, 30);

    let refused = transfer(&store, &b, &a, 31, &CommandContext::new()).await;
    assert!(
        matches!(
            refused,
            Err(UnitError::Failed(CommandError::Rejected(
                InsufficientFunds {
                    balance: 30,
                    asked: 31
                }
            )))
        ),
        "{refused:?}"
    );
    // Withdraw first, then a refused withdrawal in the same unit: nothing is stored.
    let mut unit = UnitOfWork::new(&store);
    unit.execute::<Account>(&a, AccountCommand::Withdraw(10), &CommandContext::new())
        .await
        .expect("withdraw from a");
    let error = unit
        .execute::<Account>(&b, AccountCommand::Withdraw(1_000), &CommandContext::new())
        .await
        .expect_err("overdraft");
    assert!(matches!(error, CommandError::Rejected(_)));
    drop(unit);
    assert_eq!(
        balance(store.clone(), &a).await,
        70,
        "the abandoned unit stored nothing"
    );
    db.drop_database().await.expect("drop");
}

/// A concurrent writer on one account between deciding and committing: the unit's commit is a
/// conflict naming that account, and nothing is appended to the other.
#[tokio::test]
async fn a_conflict_on_one_account_appends_nothing_to_the_other() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let repository = Repository::<Account, _>::new(store.clone());
    let (a, b) = (account(1), account(2));
    repository
        .execute(&a, AccountCommand::Deposit(100), &CommandContext::new())
        .await
        .expect("open a");
    let ctx = CommandContext::new();
    let mut unit = UnitOfWork::new(&store);
    unit.execute::<Account>(&a, AccountCommand::Withdraw(40), &ctx)
        .await
        .expect("withdraw");
    unit.execute::<Account>(&b, AccountCommand::Deposit(40), &ctx)
        .await
        .expect("deposit");
    repository
        .execute(&b, AccountCommand::Deposit(5), &CommandContext::new())
        .await
        .expect("a concurrent deposit to b");
    match unit.commit().await {
        Err(StoreError::Conflict(conflict)) => {
            assert_eq!(conflict.stream, b);
            assert_eq!(
                conflict.expected,
                ExpectedVersion::Exact(eventsource::StreamVersion::INITIAL)
            );
            assert_eq!(conflict.actual.get(), 1);
        }
        other => panic!("expected a conflict on {b}, got {other:?}"),
    }
    let in_a: Vec<RecordedEvent> = store
        .read_caused_by(&a, ctx.command_id)
        .try_collect()
        .await
        .expect("read a");
    assert!(in_a.is_empty(), "nothing appended to a: {in_a:?}");
    assert_eq!(balance(store.clone(), &a).await, 100);
    assert_eq!(balance(store.clone(), &b).await, 5);
    db.drop_database().await.expect("drop");
}

/// 16 concurrent transfers among 10 accounts: every one commits (retrying on conflicts), the
/// total balance is unchanged by plain SQL over the stored events, and the feed delivers each
/// transfer's withdrawal and deposit together under one transaction id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transfers_keep_the_total() {
    const ACCOUNTS: usize = 10;
    const TRANSFERS: usize = 16;
    const OPENING: u64 = 1_000;
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let repository = Repository::<Account, _>::new(store.clone());
    for n in 0..ACCOUNTS {
        repository
            .execute(
                &account(n),
                AccountCommand::Deposit(OPENING),
                &CommandContext::new(),
            )
            .await
            .expect("open an account");
    }
    let conflicts = AtomicU32::new(0);
    let mut transfers = Vec::new();
    let mut commands = Vec::new();
    for t in 0..TRANSFERS {
        // Pairs that overlap, so that transfers contend for accounts.
        let (from, to) = (account(t % ACCOUNTS), account((t * 3 + 1) % ACCOUNTS));
        let from = if from == to {
            account((t + 5) % ACCOUNTS)
        } else {
            from
        };
        let ctx = CommandContext::new();
        commands.push(ctx.command_id);
        let (store, conflicts) = (&store, &conflicts);
        transfers.push(async move {
            let committed = transfer(store, &from, &to, 10 + t as u64, &ctx)
                .await
                .expect("the transfer commits");
            conflicts.fetch_add(committed.conflicts.len() as u32, Ordering::Relaxed);
            committed
        });
    }
    let committed = futures::future::join_all(transfers).await;
    assert_eq!(committed.len(), TRANSFERS);

    let pool = db.pool(2).await.expect("pool");
    let (total, events): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(CASE event_type
                    WHEN 'Deposited' THEN (payload->>'amount')::bigint
                    WHEN 'Withdrawn' THEN -(payload->>'amount')::bigint
                END), 0)::bigint,
                count(*)
         FROM eventsource.events WHERE category = 'account'",
    )
    .fetch_one(&pool)
    .await
    .expect("sum the balances");
    assert_eq!(
        total,
        (ACCOUNTS as u64 * OPENING) as i64,
        "no money created or lost"
    );
    assert_eq!(
        events as usize,
        ACCOUNTS + 2 * TRANSFERS,
        "every transfer stored once"
    );
    let negative: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
             SELECT stream_id, SUM(CASE event_type
                        WHEN 'Deposited' THEN (payload->>'amount')::bigint
                        ELSE -(payload->>'amount')::bigint END) AS balance
             FROM eventsource.events WHERE category = 'account' GROUP BY stream_id
         ) b WHERE balance < 0",
    )
    .fetch_one(&pool)
    .await
    .expect("balances");
    assert_eq!(negative, 0, "no account overdrawn");

    // The feed: each transfer's two events are adjacent, under one transaction id.
    let feed: Vec<RecordedEvent> = eventsource::store::read_feed(
        &store,
        FeedPosition::START,
        eventsource::BatchSize::events(100),
        eventsource::FeedFilter::all(),
    )
    .try_collect()
    .await
    .expect("read the feed");
    assert_eq!(feed.len(), ACCOUNTS + 2 * TRANSFERS);
    let mut by_command: HashMap<Uuid, Vec<usize>> = HashMap::new();
    for (i, event) in feed.iter().enumerate() {
        if let Some(causation) = event.metadata.causation_id {
            by_command.entry(causation).or_default().push(i);
        }
    }
    for command in &commands {
        let at = &by_command[command];
        assert_eq!(at.len(), 2, "a transfer has two events");
        assert_eq!(
            at[1],
            at[0] + 1,
            "a transfer's events are adjacent in the feed"
        );
        let (w, d) = (&feed[at[0]], &feed[at[1]]);
        assert_eq!(w.position.transaction_id, d.position.transaction_id);
        assert_eq!(w.event_type, "Withdrawn");
        assert_eq!(d.event_type, "Deposited");
    }
    let mut balances = 0;
    for n in 0..ACCOUNTS {
        balances += balance(store.clone(), &account(n)).await;
    }
    assert_eq!(balances, ACCOUNTS as u64 * OPENING);
    eprintln!(
        "16 concurrent transfers: {} conflicts retried",
        conflicts.load(Ordering::Relaxed)
    );
    db.drop_database().await.expect("drop");
}

/// A command sent again through a new store (another pool: a restarted process) returns the
/// first run's outcome and appends nothing; a transfer whose command id is given, run again
/// after it committed, stores nothing twice.
#[tokio::test]
async fn an_idempotent_command_survives_a_restart() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let a = account(1);
    let command_id = Uuid::now_v7();
    let ctx = || CommandContext::new().with_command_id(command_id);
    let first = Repository::<Account, _>::new(store.clone())
        .execute(&a, AccountCommand::Deposit(50), &ctx())
        .await
        .expect("first run");
    Repository::<Account, _>::new(store.clone())
        .execute(&a, AccountCommand::Deposit(7), &CommandContext::new())
        .await
        .expect("another command");
    store.close().await;

    let restarted = PostgresStore::new(db.pool(2).await.expect("pool"));
    let again = Repository::<Account, _>::new(restarted.clone())
        .execute(&a, AccountCommand::Deposit(50), &ctx())
        .await
        .expect("second run");
    assert!(again.replayed);
    assert_eq!(again.version, first.version);
    assert_eq!(again.events, first.events);
    assert_eq!(again.appended, first.appended);
    assert_eq!(
        again.state.balance, 50,
        "the state right after the first run"
    );
    assert_eq!(balance(restarted.clone(), &a).await, 57, "deposited once");

    // A transfer with given command ids, run again after it committed.
    let b = account(2);
    let transfer_ctx = CommandContext::new().with_command_id(Uuid::now_v7());
    let once = transfer(&restarted, &a, &b, 20, &transfer_ctx)
        .await
        .expect("transfer");
    let twice = transfer(&restarted, &a, &b, 20, &transfer_ctx)
        .await
        .expect("the transfer again");
    assert!(
        twice.streams.is_empty(),
        "nothing to append the second time: {twice:?}"
    );
    assert_eq!(once.streams.len(), 2);
    assert_eq!(balance(restarted.clone(), &a).await, 37);
    assert_eq!(balance(restarted.clone(), &b).await, 20);
    db.drop_database().await.expect("drop");
}

/// The same transfer on the in-memory store, as a domain test needs no database.
#[tokio::test]
async fn a_transfer_on_the_in_memory_store() {
    let store = InMemoryStore::new();
    let (a, b) = (account(1), account(2));
    Repository::<Account, _>::new(store.clone())
        .execute(&a, AccountCommand::Deposit(10), &CommandContext::new())
        .await
        .expect("open a");
    transfer(&store, &a, &b, 10, &CommandContext::new())
        .await
        .expect("transfer");
    assert_eq!(balance(store.clone(), &a).await, 0);
    assert_eq!(balance(store.clone(), &b).await, 10);
}
