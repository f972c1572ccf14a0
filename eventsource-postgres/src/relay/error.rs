//! What can stop a relay.

use eventsource_core::{FeedPosition, StoreError, StreamId, StreamVersion};

/// A relay's failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The broker refused a message for good and the policy is [`OnRefusal::Stop`]: the
    /// message is parked as a relay dead letter and the checkpoint stays before it.
    ///
    /// [`OnRefusal::Stop`]: super::OnRefusal::Stop
    #[error("relay `{relay}`: the event at version {version} of stream `{stream}` (position {position}) was refused for good, parked as a relay dead letter, and the relay stopped (policy OnRefusal::Stop): {reason}; fix the cause, then restart the relay, or choose OnRefusal::Park to go on past such messages")]
    Refused {
        /// The relay.
        relay: String,
        /// The refused event's stream.
        stream: StreamId,
        /// Its version.
        version: StreamVersion,
        /// Its feed position.
        position: FeedPosition,
        /// The broker's or the mapping's reason.
        reason: String,
    },
    /// The relay's name or options cannot be used.
    #[error("relay `{relay}` is misconfigured: {problem}")]
    Misconfigured {
        /// The relay.
        relay: String,
        /// What is wrong, and how to fix it.
        problem: String,
    },
    /// Reading the feed failed for good (an event that cannot be read, a repaired cluster).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A database statement of the relay failed (connection lost, ...).
    #[error("relay `{relay}`: {operation} failed: {source}")]
    Database {
        /// The relay.
        relay: String,
        /// What the relay was doing.
        operation: String,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },
}

impl RelayError {
    pub(crate) fn database(relay: &str, operation: impl Into<String>, source: sqlx::Error) -> Self {
        Self::Database {
            relay: relay.to_owned(),
            operation: operation.into(),
            source,
        }
    }
}
