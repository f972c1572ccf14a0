//! What can go wrong while connecting and declaring the JetStream topology, and what stops an
//! inbox.

use eventsource_core::BoxError;

/// Connecting to NATS, or declaring a stream or consumer, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The server at `url` did not accept a connection.
    #[error("cannot connect to NATS at {url}: {source}; check that the server runs and the URL is right")]
    Connect {
        /// The server's URL.
        url: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// A setting cannot be used (an empty name, a subject prefix NATS cannot publish to).
    #[error("invalid NATS setting: {problem}")]
    Invalid {
        /// What is wrong, and how to fix it.
        problem: String,
    },
    /// JetStream refused or did not answer a request about a stream or a consumer.
    #[error("JetStream: {operation} failed: {source}; check that the server runs with JetStream enabled (-js) and that the names and subjects do not overlap another stream's")]
    JetStream {
        /// What was being done, with the names involved.
        operation: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// A stream or consumer the inbox reads from does not exist.
    #[error("JetStream: {what} does not exist; declare it first (NatsInbox::ensure_topology, ensure_stream) or fix the name")]
    Missing {
        /// The stream or consumer, by name.
        what: String,
    },
}

impl SetupError {
    pub(crate) fn jetstream(operation: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::JetStream {
            operation: operation.into(),
            source: source.into(),
        }
    }

    pub(crate) fn invalid(problem: impl Into<String>) -> Self {
        Self::Invalid {
            problem: problem.into(),
        }
    }
}
