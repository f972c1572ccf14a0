//! The service end to end against a real PostgreSQL, in a database of its own.

use eventsource::postgres::testing::TestDatabase;
use eventsource::{Aggregate, BoxError, CommandContext, ProjectionRunner, Repository};
use first_service::{balance, Account, AccountCommand, AccountError, Balances};

#[tokio::test]
async fn commands_become_balances_in_the_read_model() -> Result<(), BoxError> {
    let db = TestDatabase::create().await?;
    let store = db.store().await?;
    let accounts = Repository::<Account, _>::new(store.clone());
    let ctx = CommandContext::new();
    let id = Account::stream_id("a-1")?;

    accounts
        .execute(
            &id,
            AccountCommand::Open {
                owner: "Ada".into(),
            },
            &ctx,
        )
        .await?;
    accounts
        .execute(&id, AccountCommand::Deposit { cents: 700 }, &ctx)
        .await?;
    let refused = accounts
        .execute(&id, AccountCommand::Withdraw { cents: 701 }, &ctx)
        .await;
    assert!(
        matches!(
            refused,
            Err(eventsource::CommandError::Rejected(
                AccountError::InsufficientFunds { balance: 700 }
            ))
        ),
        "{:?}",
        refused.err()
    );
    accounts
        .execute(&id, AccountCommand::Withdraw { cents: 200 }, &ctx)
        .await?;

    ProjectionRunner::new(store.clone(), Balances)
        .run_until_caught_up()
        .await?;
    assert_eq!(balance(&store, "a-1").await?, Some(500));
    assert_eq!(balance(&store, "a-2").await?, None);
    store.pool().close().await;
    db.drop_database().await?;
    Ok(())
}
