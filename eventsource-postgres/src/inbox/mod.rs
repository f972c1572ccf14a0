//! The inbox: messages from a broker handled exactly once in effect.
//!
//! A broker delivers at least once: a message comes again after a consumer crashed between its
//! work and its acknowledgement. The inbox makes that harmless. For each message it opens a
//! PostgreSQL transaction, records the message id, runs the user's [`InboxHandler`] in the same
//! transaction and commits; only then does the broker crate acknowledge the message. A message
//! whose id is already recorded is acknowledged without running the handler again.
//!
//! A failing handler is retried with backoff ([`InboxRetry`]); when the attempts are spent,
//! [`Inbox::receive`] returns [`Disposition::Failed`] and the broker crate sends the message to
//! the broker's dead-letter path with the error in its headers (names in [`failure_header`]).
//!
//! The broker crates (`eventsource-relay-rabbitmq`, `eventsource-relay-nats`, `eventsource-relay-kafka`) run the
//! consuming loop; this module is their shared core.

mod handler;
mod message;

use std::time::Duration;

use eventsource_core::BoxError;
use sqlx::{Connection, Row};

pub use handler::InboxHandler;
pub use message::IncomingMessage;

use crate::store::PostgresStore;

const RECORD: &str = include_str!("sql/record_message.sql");
const WAS_HANDLED: &str = include_str!("sql/was_handled.sql");

/// Headers a broker crate adds to a message it dead-letters.
pub mod failure_header {
    /// The handler's last error.
    pub const ERROR: &str = "inbox-error";
    /// How many times the handler ran.
    pub const ATTEMPTS: &str = "inbox-attempts";
    /// The inbox that gave up on it.
    pub const INBOX: &str = "inbox";
}

/// How often a failing handler is retried before its message is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxRetry {
    /// Attempts per message, at least 1 (default 3).
    pub max_attempts: u32,
    /// The wait after the first failure (default 100 ms); doubled after each further one.
    pub backoff: Duration,
}

impl Default for InboxRetry {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Duration::from_millis(100),
        }
    }
}

/// What became of a message: the broker crate acknowledges it or dead-letters it accordingly.
#[derive(Debug)]
pub enum Disposition {
    /// The handler ran and its transaction committed: acknowledge.
    Handled,
    /// The message was handled before (a redelivery): acknowledge without running the handler.
    Duplicate,
    /// The handler failed on every attempt: dead-letter the message with this error.
    Failed {
        /// The handler's last error.
        error: BoxError,
        /// Attempts made.
        attempts: u32,
    },
}

/// The inbox could not do its own part (the database is unreachable): neither acknowledge nor
/// dead-letter the message; let the broker deliver it again.
#[derive(Debug, thiserror::Error)]
#[error("inbox `{inbox}`: {operation} failed for message {message_id}: {source}; the message is left unacknowledged for the broker to deliver again")]
pub struct InboxError {
    /// The inbox.
    pub inbox: String,
    /// The message.
    pub message_id: String,
    /// What the inbox was doing.
    pub operation: &'static str,
    /// The driver error.
    #[source]
    pub source: sqlx::Error,
}

/// The bookkeeping of one named inbox (a consuming service's queue, durable consumer or group).
#[derive(Clone)]
pub struct Inbox {
    store: PostgresStore,
    name: String,
    retry: InboxRetry,
}

impl Inbox {
    /// The inbox named `name` on `store` (message ids are unique per inbox name).
    pub fn new(store: PostgresStore, name: impl Into<String>) -> Self {
        Self {
            store,
            name: name.into(),
            retry: InboxRetry::default(),
        }
    }

    /// The same inbox with another retry policy.
    pub fn with_retry(mut self, retry: InboxRetry) -> Self {
        self.retry = retry;
        self
    }

    /// The inbox's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Handles `message` exactly once in effect: records its id and runs `handler` in one
    /// transaction, with retries; see [`Disposition`]. Acknowledge the message only after this
    /// returns.
    pub async fn receive<H: InboxHandler + ?Sized>(
        &self,
        handler: &H,
        message: &IncomingMessage,
    ) -> Result<Disposition, InboxError> {
        let mut delay = self.retry.backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.attempt(handler, message).await? {
                Ok(disposition) => return Ok(disposition),
                Err(error) if attempt >= self.retry.max_attempts.max(1) => {
                    return Ok(Disposition::Failed {
                        error,
                        attempts: attempt,
                    })
                }
                Err(error) => {
                    tracing::warn!(inbox = %self.name, message_id = %message.message_id, attempt, %error, "handler failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                }
            }
        }
    }

    /// One transaction: record the id (or find it recorded), run the handler, commit.
    async fn attempt<H: InboxHandler + ?Sized>(
        &self,
        handler: &H,
        message: &IncomingMessage,
    ) -> Result<Result<Disposition, BoxError>, InboxError> {
        let failed = |operation| {
            move |source| InboxError {
                inbox: self.name.clone(),
                message_id: message.message_id.clone(),
                operation,
                source,
            }
        };
        let mut conn = self
            .store
            .pool()
            .acquire()
            .await
            .map_err(failed("connect"))?;
        let mut tx = conn.begin().await.map_err(failed("begin"))?;
        let recorded = sqlx::query(RECORD)
            .bind(&self.name)
            .bind(&message.message_id)
            .bind(message.correlation_id())
            .execute(&mut *tx)
            .await
            .map_err(failed("record the message id"))?;
        if recorded.rows_affected() == 0 {
            tx.rollback().await.map_err(failed("roll back"))?;
            return Ok(Ok(Disposition::Duplicate));
        }
        let span = tracing::info_span!("inbox_message", inbox = %self.name, message_id = %message.message_id, correlation_id = ?message.correlation_id(), causation_id = ?message.causation_id());
        let handled = tracing::Instrument::instrument(handler.handle(&mut tx, message), span).await;
        match handled {
            Ok(()) => {
                tx.commit().await.map_err(failed("commit"))?;
                Ok(Ok(Disposition::Handled))
            }
            Err(error) => {
                let _ = tx.rollback().await;
                Ok(Err(error.into()))
            }
        }
    }

    /// Whether this inbox has handled the message `message_id` (its transaction committed).
    pub async fn was_handled(&self, message_id: &str) -> Result<bool, InboxError> {
        let failed = |source| InboxError {
            inbox: self.name.clone(),
            message_id: message_id.to_owned(),
            operation: "look the message up",
            source,
        };
        let row = sqlx::query(WAS_HANDLED)
            .bind(&self.name)
            .bind(message_id)
            .fetch_one(self.store.pool())
            .await
            .map_err(failed)?;
        row.try_get(0).map_err(failed)
    }
}
