//! Snapshots: an aggregate's state saved as of a stream version, so that loading it folds only
//! the events stored after that version.

use async_trait::async_trait;

use crate::error::StoreError;
use crate::stream_id::StreamId;
use crate::version::StreamVersion;

/// An aggregate's state as of a stream version, as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The stream whose events the state folds.
    pub stream_id: StreamId,
    /// The version of the last event folded into `state`.
    pub version: StreamVersion,
    /// The shape of `state` (the [`SnapshotPolicy::state_version`](crate::SnapshotPolicy) it
    /// was taken under); snapshots of another shape are ignored.
    pub state_version: u32,
    /// The state.
    pub state: serde_json::Value,
}

/// Where snapshots are kept: at most one per stream, the latest.
///
/// A snapshot is a cache of a fold of events that never change: losing one (or ignoring one
/// of an old shape) only makes the next load fold more events, never changes its result.
///
/// ```
/// use eventsource_core::{InMemoryStore, Snapshot, SnapshotStore, StreamId, StreamVersion};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryStore::new();
/// let stream = StreamId::new("counter", "c-1")?;
/// let snapshot = Snapshot {
///     stream_id: stream.clone(),
///     version: StreamVersion::new(20)?,
///     state_version: 1,
///     state: serde_json::json!({ "value": 20 }),
/// };
/// store.save_snapshot(&snapshot).await?;
/// assert_eq!(store.load_snapshot(&stream).await?, Some(snapshot));
/// # Ok(()) }
/// ```
#[async_trait]
pub trait SnapshotStore: Send + Sync {
    /// The snapshot kept for `stream`, if any.
    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError>;

    /// Keeps `snapshot` as its stream's snapshot, unless the one kept is of a later version
    /// (writers that race keep the newest).
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError>;
}

/// A repository's snapshot support: where snapshots go, when, and how the aggregate's state
/// is converted (captured where the state is known to be serializable).
pub(crate) struct Snapshotting<A> {
    pub(crate) store: std::sync::Arc<dyn SnapshotStore>,
    pub(crate) policy: crate::SnapshotPolicy,
    pub(crate) encode: fn(&A) -> Result<serde_json::Value, serde_json::Error>,
    pub(crate) decode: fn(serde_json::Value) -> Result<A, serde_json::Error>,
}

impl<A> Snapshotting<A> {
    /// The state and version of `stream`'s snapshot, when one of the policy's state shape is
    /// kept and decodes; `None` makes the caller fold the stream from the start.
    ///
    /// Relies on events never changing: a snapshot at version `v` stays the fold of versions
    /// `1..=v`, whatever was appended since.
    pub(crate) async fn restore(
        &self,
        stream: &StreamId,
    ) -> Result<Option<(A, StreamVersion)>, StoreError> {
        let Some(snapshot) = self.store.load_snapshot(stream).await? else {
            return Ok(None);
        };
        if snapshot.state_version != self.policy.state_version {
            tracing::debug!(
                %stream,
                kept = snapshot.state_version,
                wanted = self.policy.state_version,
                "ignoring a snapshot of another state shape"
            );
            return Ok(None);
        }
        match (self.decode)(snapshot.state) {
            Ok(state) => Ok(Some((state, snapshot.version))),
            Err(error) => {
                tracing::warn!(
                    %stream,
                    version = %snapshot.version,
                    %error,
                    "ignoring a snapshot that does not decode; bump SnapshotPolicy::state_version when the state changes shape"
                );
                Ok(None)
            }
        }
    }

    /// Saves `state` as of `after` if the append from `before` made a snapshot due. A failure
    /// is logged, not returned: the events are stored, and the next due snapshot tries again.
    pub(crate) async fn after_append(
        &self,
        stream: &StreamId,
        before: StreamVersion,
        after: StreamVersion,
        state: &A,
    ) {
        if !self.policy.due(before, after) {
            return;
        }
        let saved = match (self.encode)(state) {
            Ok(state) => {
                let snapshot = Snapshot {
                    stream_id: stream.clone(),
                    version: after,
                    state_version: self.policy.state_version,
                    state,
                };
                self.store
                    .save_snapshot(&snapshot)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(error) => Err(format!("the state does not serialize: {error}")),
        };
        if let Err(error) = saved {
            tracing::warn!(%stream, version = %after, %error, "could not save a snapshot");
        }
    }
}
