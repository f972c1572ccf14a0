//! Opens an account, moves some money, and shows the balance from the read model.
//!
//! `cargo run -p first-service` runs once and exits; `cargo run -p first-service -- --follow`
//! then keeps the read model current under a supervisor until Ctrl-C. The database is
//! `DATABASE_URL`, else `postgres://postgres@127.0.0.1:5432/postgres`.

use std::time::{SystemTime, UNIX_EPOCH};

use eventsource::postgres::DEFAULT_DATABASE_URL;
use eventsource::{
    Aggregate, BoxError, CancellationToken, CommandContext, PostgresStore, ProjectionRunner,
    Repository, Supervisor,
};
use first_service::{balance, Account, AccountCommand, Balances};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
    let store = PostgresStore::connect(&url).await?;
    store.migrate().await?;

    // Commands: load, decide, append (retried on a concurrent write).
    let accounts = Repository::<Account, _>::new(store.clone());
    let name = format!(
        "acc-{}",
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis()
    );
    let id = Account::stream_id(&name)?;
    let ctx = CommandContext::new().with_actor("first-service");
    for command in [
        AccountCommand::Open {
            owner: "Ada".into(),
        },
        AccountCommand::Deposit { cents: 10_000 },
        AccountCommand::Withdraw { cents: 2_500 },
    ] {
        let done = accounts.execute(&id, command, &ctx).await?;
        println!("{id} is at version {}", done.version);
    }
    // A refused command is a typed domain error.
    if let Err(refused) = accounts
        .execute(&id, AccountCommand::Withdraw { cents: 1_000_000 }, &ctx)
        .await
    {
        println!("refused: {refused}");
    }

    // The read model: catch up once, then read it.
    let runner = ProjectionRunner::new(store.clone(), Balances);
    runner.run_until_caught_up().await?;
    println!(
        "balance of {name}: {:?} cents",
        balance(&store, &name).await?
    );

    if std::env::args().any(|arg| arg == "--follow") {
        // Keep the read model current until Ctrl-C; start this on several machines and one
        // runner is active while the others stand by.
        let supervisor = Supervisor::new().with(runner);
        let shutdown = CancellationToken::new();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let _ = tokio::signal::ctrl_c().await;
                shutdown.cancel();
            }
        });
        println!("following the feed; Ctrl-C to stop");
        supervisor.run(shutdown).await?;
    }
    Ok(())
}
