//! What stops a projection.

use eventsource_core::{FeedPosition, RecordedEvent, StoreError, StreamId, StreamVersion};

/// Why a projection runner or rebuild stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The handler kept failing on one event and the policy is to stop. The checkpoint stays
    /// before this event.
    #[error("projection `{}` stopped at event {} (version {} of {}, feed position {}) after {} attempts: {}; fix the handler or the data and start the runner again, or use OnFailure::DeadLetter to park such events", .0.projection, .0.event_type, .0.version, .0.stream, .0.position, .0.attempts, .0.error)]
    HandlerFailed(Box<FailedEvent>),
    /// The handler failed on a batch of a rebuild. The rebuild's own checkpoint stays before
    /// the batch, and the live model is untouched.
    #[error("rebuild of projection `{projection}` failed in the batch of {events} events from feed position {first} to {last}: {error}; fix the handler or the data and call rebuild again: it resumes with this batch")]
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
        error: String,
    },
    /// Setting up the read model's tables failed.
    #[error("projection `{projection}` could not set up its tables: {error}")]
    SetupFailed {
        /// The projection.
        projection: String,
        /// The error.
        error: String,
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
    /// A projection name or table name that cannot be used.
    #[error("projection `{projection}`: {problem}")]
    Invalid {
        /// The projection.
        projection: String,
        /// What is wrong.
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

/// The event a projection's handler failed on, and why.
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
    /// The handler's last error.
    pub error: String,
}

impl ProjectionError {
    /// The handler of `projection` failed on `event` after `attempts` attempts.
    pub(crate) fn handler_failed(
        projection: &str,
        event: &RecordedEvent,
        attempts: u32,
        error: impl Into<String>,
    ) -> Self {
        Self::HandlerFailed(Box::new(FailedEvent {
            projection: projection.to_owned(),
            stream: event.stream_id.clone(),
            version: event.version,
            event_type: event.event_type.clone(),
            position: event.position,
            attempts,
            error: error.into(),
        }))
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
}
