//! The broker side of a relay: a [`Publisher`] sends messages and waits for the broker's
//! acknowledgements. Each broker crate implements it.

use async_trait::async_trait;
use eventsource_core::BoxError;

use super::message::OutgoingMessage;

/// Why a message was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker is unreachable, or did not answer in time: the relay retries with backoff
    /// (and the publisher reconnects) until it does.
    #[error("the broker is unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// The broker refused the message for good (too large, unroutable): retrying cannot help.
    /// The relay parks it as a relay dead letter with this reason.
    #[error("the broker refused the message: {0}")]
    Refused(String),
}

impl PublishError {
    /// An unavailable broker, from any error.
    pub fn unavailable(error: impl Into<BoxError>) -> Self {
        Self::Unavailable(error.into())
    }
}

/// Publishes to one broker, with its acknowledgements.
///
/// A publisher connects on first use and, after a connection failure, reconnects on the next
/// call: the relay calls [`publish`](Publisher::publish) again after a backoff.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Where `message` goes, as a dead letter records it (an exchange and routing key, a
    /// subject, a topic).
    fn destination(&self, message: &OutgoingMessage) -> String;

    /// Publishes `messages` durably and waits for the broker's acknowledgement of each; returns
    /// one result per message, in their order.
    ///
    /// The relay passes at most one message per stream in a call, so the messages may be sent
    /// concurrently (pipelined): their order among themselves does not matter, and a stream's
    /// next message is only passed once this one is acknowledged.
    async fn publish(&mut self, messages: &[OutgoingMessage]) -> Vec<Result<(), PublishError>>;
}
