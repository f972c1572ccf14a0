//! What a service does with a message: an [`InboxHandler`].

use async_trait::async_trait;
use eventsource_core::BoxError;
use sqlx::PgConnection;

use super::message::IncomingMessage;

/// Handles messages from a broker inside the inbox's transaction.
///
/// `tx` is the transaction that also records the message id: write the handler's effects
/// through it, and they commit together with the record, exactly once. Effects outside the
/// database (an e-mail, an HTTP call) happen at least once; make them idempotent by the message
/// id.
///
/// An `Err` rolls the transaction back; the inbox retries with backoff, then dead-letters the
/// message with the error.
///
/// ```
/// use eventsource_postgres::inbox::{IncomingMessage, InboxHandler};
/// use eventsource_postgres::PgConnection;
///
/// struct RecordShipment;
///
/// #[async_trait::async_trait]
/// impl InboxHandler for RecordShipment {
///     type Error = sqlx::Error;
///
///     async fn handle(&self, tx: &mut PgConnection, message: &IncomingMessage) -> Result<(), sqlx::Error> {
///         sqlx::query("INSERT INTO shipments (message_id) VALUES ($1)")
///             .bind(&message.message_id)
///             .execute(tx)
///             .await?;
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait InboxHandler: Send + Sync + 'static {
    /// The handler's own error; it survives as the `source()` of the inbox's errors.
    type Error: Into<BoxError> + Send;

    /// Handles `message` in `tx`.
    async fn handle(
        &self,
        tx: &mut PgConnection,
        message: &IncomingMessage,
    ) -> Result<(), Self::Error>;
}
