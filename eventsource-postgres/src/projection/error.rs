//! What stops a projection.

use eventsource_core::{
    BoxError, FeedPosition, RecordedEvent, StoreError, StreamId, StreamVersion,
};

/// Why a projection runner or rebuild stopped.
///
/// A handler's own error is kept as it was returned, as the `source()` of
/// [`ProjectionError::HandlerFailed`], [`ProjectionError::SetupFailed`] and
/// [`ProjectionError::RebuildBatchFailed`]: `error.source().and_then(|e| e.downcast_ref::<MyError>())`
/// gets it back.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The handler kept failing on one event (or the event did not decode into the
    /// projection's event type) and the policy is to stop. The checkpoint stays before this
    /// event.
    #[error("projection `{}` stopped at event {} (version {} of {}, feed position {}) after {} attempts: {source}; fix the handler or the data and start the runner again, or use OnFailure::DeadLetter to park such events", .event.projection, .event.event_type, .event.version, .event.stream, .event.position, .event.attempts)]
    HandlerFailed {
        /// The event it failed on.
        event: Box<FailedEvent>,
        /// The handler's last error (a `StoreError::Decode` when the event did not decode).
        #[source]
        source: BoxError,
    },
    /// The handler failed on a batch of a rebuild. The rebuild's own checkpoint stays before
    /// the batch, and the live model is untouched.
    #[error("rebuild of projection `{projection}` failed in the batch of {events} events from feed position {first} to {last}: {source}; fix the handler or the data and call rebuild again: it resumes with this batch")]
    RebuildBatchFailed {
        /// The projection.
        projection: String,
        /// The first event of the batch.
        first: FeedPosition,
        /// The last event of the batch.
        last: FeedPosition,
        /// Events in the batch.
        events: usize,
        /// The handler's error.
        #[source]
        source: BoxError,
    },
    /// Setting up the read model's tables failed.
    #[error("projection `{projection}` could not set up its tables: {source}; fix its setup and start it again")]
    SetupFailed {
        /// The projection.
        projection: String,
        /// The setup's error.
        #[source]
        source: BoxError,
    },
    /// The checkpoint moved under a batch (a rebuild swapped its model in, or another writer of
    /// the checkpoint was active), so the batch was given up (never applied twice). An active
    /// runner continues from the checkpoint found.
    #[error("projection `{projection}`: checkpoint is at {found}, expected {expected}; it was moved by a rebuild or another runner")]
    CheckpointMoved {
        /// The projection.
        projection: String,
        /// Where this runner thought it was.
        expected: FeedPosition,
        /// Where the checkpoint is.
        found: FeedPosition,
    },
    /// The projection's checkpoint row disappeared while its runner was active.
    #[error("projection `{projection}`: its checkpoint row is gone (deleted by hand?); to start over, rebuild the projection")]
    CheckpointMissing {
        /// The projection.
        projection: String,
    },
    /// A dead letter to replay is unknown, or was replayed already.
    #[error("projection `{projection}`: dead letter {id} is unknown or was already replayed; list the dead letters to see what is parked")]
    DeadLetterNotFound {
        /// The projection.
        projection: String,
        /// The dead letter's id.
        id: i64,
    },
    /// The projection or its options cannot be used as configured (a name or table that is not
    /// a plain identifier, a batch that allows nothing).
    #[error("projection `{projection}` is misconfigured: {problem}")]
    Misconfigured {
        /// The projection.
        projection: String,
        /// What is wrong, and how to fix it.
        problem: String,
    },
    /// A runner that was waited on stopped or failed before applying up to the target.
    #[error("the runner of projection `{projection}` ended ({state:?}) before applying events up to {target}; see its run() result for why")]
    RunnerEnded {
        /// The projection.
        projection: String,
        /// How the runner ended.
        state: super::RunnerState,
        /// The position that was waited for.
        target: FeedPosition,
    },
    /// Reading the feed or the checkpoint failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A database statement of the runner failed (connection lost, ...).
    #[error("projection `{projection}`: {operation} failed: {source}")]
    Database {
        /// The projection.
        projection: String,
        /// What the runner was doing.
        operation: String,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },
}

/// The event a projection's handler failed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedEvent {
    /// The projection.
    pub projection: String,
    /// The failing event's stream.
    pub stream: StreamId,
    /// Its version.
    pub version: StreamVersion,
    /// Its type.
    pub event_type: String,
    /// Its feed position.
    pub position: FeedPosition,
    /// Attempts made.
    pub attempts: u32,
}

impl ProjectionError {
    /// The handler of `projection` failed on `event` after `attempts` attempts.
    pub(crate) fn handler_failed(
        projection: &str,
        event: &RecordedEvent,
        attempts: u32,
        source: BoxError,
    ) -> Self {
        Self::HandlerFailed {
            event: Box::new(FailedEvent {
                projection: projection.to_owned(),
                stream: event.stream_id.clone(),
                version: event.version,
                event_type: event.event_type.clone(),
                position: event.position,
                attempts,
            }),
            source,
        }
    }

    pub(crate) fn database(
        projection: &str,
        operation: impl Into<String>,
        source: sqlx::Error,
    ) -> Self {
        Self::Database {
            projection: projection.to_owned(),
            operation: operation.into(),
            source,
        }
    }

    pub(crate) fn misconfigured(projection: &str, problem: impl Into<String>) -> Self {
        Self::Misconfigured {
            projection: projection.to_owned(),
            problem: problem.into(),
        }
    }
}
