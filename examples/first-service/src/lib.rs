//! The smallest complete service on eventsource: a bank account as an aggregate, its events,
//! and a read model of balances kept by a projection runner. Its only dependencies are
//! `eventsource`, `tokio` and `serde`.
#![deny(missing_docs)]

use eventsource::postgres::sqlx;
use eventsource::postgres::PgConnection;
use eventsource::{async_trait, Aggregate, BoxError, DomainEvent, Envelope, Projection};
use serde::{Deserialize, Serialize};

/// A deposit or a withdrawal: the payload of two events, so one struct.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Movement {
    /// In cents, always positive.
    pub cents: u64,
}

/// What happens to an account.
#[derive(Debug, Clone, PartialEq, DomainEvent)]
pub enum AccountEvent {
    /// The account was opened for its owner.
    #[event(name = "AccountOpened")]
    Opened {
        /// Who owns it.
        owner: String,
    },
    /// Money came in.
    #[event(name = "MoneyDeposited")]
    Deposited(Movement),
    /// Money went out.
    #[event(name = "MoneyWithdrawn")]
    Withdrawn(Movement),
}

/// What a caller asks of an account.
#[derive(Debug, Clone)]
pub enum AccountCommand {
    /// Opens the account.
    Open {
        /// Who owns it.
        owner: String,
    },
    /// Puts money in.
    Deposit {
        /// In cents.
        cents: u64,
    },
    /// Takes money out, if there is enough.
    Withdraw {
        /// In cents.
        cents: u64,
    },
}

/// Why a command was refused.
#[derive(Debug, PartialEq)]
pub enum AccountError {
    /// `Open` on an account that is already open.
    AlreadyOpen,
    /// A deposit or withdrawal on an account that was never opened.
    NotOpen,
    /// A movement of zero cents.
    ZeroAmount,
    /// A withdrawal of more than the balance.
    InsufficientFunds {
        /// The balance, in cents.
        balance: u64,
    },
}

impl std::fmt::Display for AccountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AlreadyOpen => write!(f, "the account is already open"),
            Self::NotOpen => write!(f, "open the account first"),
            Self::ZeroAmount => write!(f, "an amount must be more than zero cents"),
            Self::InsufficientFunds { balance } => {
                write!(
                    f,
                    "the balance ({balance} cents) does not cover the withdrawal"
                )
            }
        }
    }
}

impl std::error::Error for AccountError {}

/// An account's state, folded from its events.
#[derive(Debug, Default)]
pub struct Account {
    open: bool,
    balance: u64,
}

#[async_trait]
impl Aggregate for Account {
    const CATEGORY: &'static str = "account";
    type Event = AccountEvent;
    type Command = AccountCommand;
    type Error = AccountError;
    type Services = ();

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { .. } => self.open = true,
            AccountEvent::Deposited(m) => self.balance = self.balance.saturating_add(m.cents),
            AccountEvent::Withdrawn(m) => self.balance = self.balance.saturating_sub(m.cents),
        }
    }

    async fn handle(
        &self,
        command: &AccountCommand,
        _: &(),
    ) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open { .. } if self.open => Err(AccountError::AlreadyOpen),
            AccountCommand::Open { owner } => Ok(vec![AccountEvent::Opened {
                owner: owner.clone(),
            }]),
            _ if !self.open => Err(AccountError::NotOpen),
            AccountCommand::Deposit { cents: 0 } | AccountCommand::Withdraw { cents: 0 } => {
                Err(AccountError::ZeroAmount)
            }
            AccountCommand::Deposit { cents } => {
                Ok(vec![AccountEvent::Deposited(Movement { cents: *cents })])
            }
            AccountCommand::Withdraw { cents } if *cents > self.balance => {
                Err(AccountError::InsufficientFunds {
                    balance: self.balance,
                })
            }
            AccountCommand::Withdraw { cents } => {
                Ok(vec![AccountEvent::Withdrawn(Movement { cents: *cents })])
            }
        }
    }
}

/// The read model: one row per account with its owner and balance, in table `balances`.
pub struct Balances;

#[async_trait]
impl Projection for Balances {
    type Event = Envelope<AccountEvent>;
    type Error = BoxError;

    fn name(&self) -> &str {
        "balances"
    }

    fn tables(&self) -> &[&str] {
        &["balances"]
    }

    async fn setup(&self, tx: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query(
            "CREATE TABLE balances (
                 account text PRIMARY KEY,
                 owner text NOT NULL,
                 cents bigint NOT NULL
             )",
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[Envelope<AccountEvent>],
    ) -> Result<(), BoxError> {
        for envelope in events {
            let account = envelope.stream_id.id();
            let query = match &envelope.event {
                AccountEvent::Opened { owner } => {
                    sqlx::query("INSERT INTO balances VALUES ($1, $2, 0)")
                        .bind(account)
                        .bind(owner)
                }
                AccountEvent::Deposited(m) => {
                    sqlx::query("UPDATE balances SET cents = cents + $2 WHERE account = $1")
                        .bind(account)
                        .bind(i64::try_from(m.cents)?)
                }
                AccountEvent::Withdrawn(m) => {
                    sqlx::query("UPDATE balances SET cents = cents - $2 WHERE account = $1")
                        .bind(account)
                        .bind(i64::try_from(m.cents)?)
                }
            };
            query.execute(&mut *tx).await?;
        }
        Ok(())
    }
}

/// An account's balance in cents as the read model has it, `None` if it does not know the
/// account.
pub async fn balance(
    store: &eventsource::PostgresStore,
    account: &str,
) -> Result<Option<i64>, BoxError> {
    let cents = sqlx::query_scalar("SELECT cents FROM balances WHERE account = $1")
        .bind(account)
        .fetch_optional(store.pool())
        .await?;
    Ok(cents)
}
