//! What can go wrong between this crate and RabbitMQ.

use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::ErrorKind;

/// A failure of the publisher's or the inbox's dealings with RabbitMQ.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RabbitMqError {
    /// The URL cannot be parsed.
    #[error("the RabbitMQ URL {url:?} is not valid: {problem}; write it as amqp://user:password@host:5672/vhost (the default vhost `/` is written %2f)")]
    InvalidUrl {
        /// The URL, without its password.
        url: String,
        /// The parser's complaint.
        problem: String,
    },
    /// A name or an option cannot be used.
    #[error("misconfigured: {problem}")]
    Misconfigured {
        /// What is wrong, and how to fix it.
        problem: String,
    },
    /// The broker is unreachable, closed the connection or did not answer in time: retrying
    /// later can help.
    #[error("RabbitMQ: {operation} failed: {source}; the broker is unreachable or closed the connection, it is retried after a backoff")]
    Unavailable {
        /// What was being done.
        operation: String,
        /// The client's error.
        #[source]
        source: Box<lapin::Error>,
    },
    /// The broker did not answer in time.
    #[error("RabbitMQ: {operation} got no answer within {seconds} s; the connection is dropped and opened again")]
    Timeout {
        /// What was being done.
        operation: String,
        /// The limit, in seconds.
        seconds: u64,
    },
    /// The session with the broker broke off (a consumer cancelled, an acknowledgement or a
    /// dead-letter publish that could not be made): the connection is opened again.
    #[error("RabbitMQ: {what}; the connection is opened again")]
    Interrupted {
        /// What happened.
        what: String,
    },
    /// The broker refused a declaration for good: an exchange or queue of that name exists
    /// with other settings, or the user lacks the permission.
    #[error("RabbitMQ refused to {operation}: {source}; {hint}")]
    Topology {
        /// The declaration.
        operation: String,
        /// The client's error, with the broker's reply.
        #[source]
        source: Box<lapin::Error>,
        /// How to fix it.
        hint: String,
    },
}

impl RabbitMqError {
    /// The broker could not be reached or failed while `operation` ran.
    pub(crate) fn unavailable(operation: impl Into<String>, source: lapin::Error) -> Self {
        Self::Unavailable {
            operation: operation.into(),
            source: Box::new(source),
        }
    }

    /// A declaration failed: a refusal for good when the broker says so (precondition failed,
    /// access refused), an outage otherwise.
    pub(crate) fn declaration(operation: impl Into<String>, source: lapin::Error) -> Self {
        let operation = operation.into();
        let hint = match source.kind() {
            ErrorKind::ProtocolError(error) => match error.kind() {
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => Some(
                    "one of that name exists with other settings (type, durability or arguments); \
                     delete it (rabbitmqctl delete_queue / delete_exchange) or use the settings it was declared with",
                ),
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => Some(
                    "the user lacks the configure permission on that name; grant it with rabbitmqctl set_permissions",
                ),
                AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => {
                    Some("it does not exist; declare it first")
                }
                _ => None,
            },
            _ => None,
        };
        match hint {
            Some(hint) => Self::Topology {
                operation,
                source: Box::new(source),
                hint: hint.to_owned(),
            },
            None => Self::Unavailable {
                operation,
                source: Box::new(source),
            },
        }
    }

    /// Whether retrying cannot help (a refused declaration, a bad name or option).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::InvalidUrl { .. } | Self::Misconfigured { .. } | Self::Topology { .. }
        )
    }
}
