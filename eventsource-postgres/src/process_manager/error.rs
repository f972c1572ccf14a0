//! What can stop a process manager's runner.

use eventsource_core::process_manager::TriggerError;
use eventsource_core::{FeedPosition, StoreError};

use crate::projection::ProjectionError;

/// A process manager runner's failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessManagerError {
    /// A trigger could not be handled (a command kept failing, refusals without end, an event
    /// that does not decode) and the failure policy is `OnFailure::Stop`: the checkpoint stays
    /// before the event (or the deadline stays pending).
    #[error("process manager `{manager}`, instance `{instance}`, on {trigger}: {source}; fix the cause and restart the runner (the trigger is handled again, with the same command ids), or choose OnFailure::DeadLetter to park such triggers")]
    TriggerFailed {
        /// The process manager.
        manager: String,
        /// The instance.
        instance: String,
        /// The trigger, described (event or deadline).
        trigger: String,
        /// Why.
        #[source]
        source: Box<TriggerError>,
    },
    /// An event of the feed could not be decoded into the manager's event type, and the
    /// failure policy is `OnFailure::Stop`.
    #[error("process manager `{manager}`: {source}; fix the event's decoding and restart, or choose OnFailure::DeadLetter")]
    Undecodable {
        /// The process manager.
        manager: String,
        /// The decoding error (names the stream, version and type).
        #[source]
        source: Box<StoreError>,
    },
    /// An instance's stored state does not decode into the manager's `State` (its type changed
    /// incompatibly): give the new fields serde defaults, or migrate the stored JSON.
    #[error("process manager `{manager}`: the stored state of instance `{instance}` does not decode: {source}; give new fields #[serde(default)], or migrate eventsource.process_manager_instances")]
    State {
        /// The process manager.
        manager: String,
        /// The instance.
        instance: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// The checkpoint is not where this runner left it: another runner moved it (this one had
    /// lost its lock). The runner goes back to standby.
    #[error("process manager `{manager}`: the checkpoint moved from {expected} to {found} behind this runner's back; standing by")]
    CheckpointMoved {
        /// The process manager.
        manager: String,
        /// Where this runner left it.
        expected: FeedPosition,
        /// Where it is.
        found: FeedPosition,
    },
    /// The manager's name or options cannot be used.
    #[error("process manager `{manager}` is misconfigured: {problem}")]
    Misconfigured {
        /// The process manager.
        manager: String,
        /// What is wrong, and how to fix it.
        problem: String,
    },
    /// Reading the feed failed for good.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The checkpoint or dead-letter machinery shared with projections failed.
    #[error(transparent)]
    Checkpoint(Box<ProjectionError>),
    /// A statement of the runner failed (connection lost, ...).
    #[error("process manager `{manager}`: {operation} failed: {source}")]
    Database {
        /// The process manager.
        manager: String,
        /// What the runner was doing.
        operation: String,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },
}

impl From<ProjectionError> for ProcessManagerError {
    fn from(error: ProjectionError) -> Self {
        Self::Checkpoint(Box::new(error))
    }
}

impl ProcessManagerError {
    pub(crate) fn database(
        manager: &str,
        operation: impl Into<String>,
        source: sqlx::Error,
    ) -> Self {
        Self::Database {
            manager: manager.to_owned(),
            operation: operation.into(),
            source,
        }
    }

    /// Whether retrying cannot clear it (the runner stops instead of standing by).
    pub(crate) fn is_terminal(&self) -> bool {
        match self {
            Self::TriggerFailed { .. }
            | Self::Undecodable { .. }
            | Self::State { .. }
            | Self::Misconfigured { .. } => true,
            Self::CheckpointMoved { .. } | Self::Database { .. } => false,
            Self::Store(error) => !error.is_transient(),
            Self::Checkpoint(error) => !matches!(
                **error,
                ProjectionError::Database { .. } | ProjectionError::CheckpointMoved { .. }
            ),
        }
    }
}
