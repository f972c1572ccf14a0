//! The in-memory store: the same contract as the PostgreSQL store, for domain tests and examples.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::Utc;
use futures::stream::{self, StreamExt};
use uuid::Uuid;

use crate::error::{Conflict, StoreError, ValidationError};
use crate::event::{NewEvent, RecordedEvent};
use crate::event_store::{
    AppendResult, EventAppender, EventStream, FeedReader, StreamAppend, StreamReader,
};
use crate::expected_version::ExpectedVersion;
use crate::feed::{BatchSize, FeedBatch, FeedFilter};
use crate::idempotency::{replayed_append, replayed_multi_append, StoredEventLocation};
use crate::limits::Limits;
use crate::position::FeedPosition;
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::stream_id::StreamId;
use crate::subscription::{Subscribe, WakeSignal};
use crate::version::StreamVersion;

/// An event store in process memory. Cloning it shares the same events.
///
/// Each append is one transaction with the next transaction id, committed at once, so the feed
/// is simply append order. Nothing survives the process.
#[derive(Clone)]
pub struct InMemoryStore {
    inner: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    limits: Limits,
    /// Counts appends, for waking subscribers.
    appended: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    /// Every event in feed order.
    events: Vec<RecordedEvent>,
    /// The bytes of each event's encoded payload and metadata (same indexes as `events`), for
    /// feed reads bounded by bytes.
    sizes: Vec<usize>,
    /// Indexes into `events`, per stream, in version order.
    streams: HashMap<StreamId, Vec<usize>>,
    /// Index into `events` of each stored event id.
    event_ids: HashMap<Uuid, usize>,
    /// The latest snapshot of each stream that has one.
    snapshots: HashMap<StreamId, Snapshot>,
    last_transaction: u64,
}

impl InMemoryStore {
    /// An empty store with default limits.
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    /// An empty store with the given limits.
    pub fn with_limits(limits: Limits) -> Self {
        let (appended, _) = tokio::sync::watch::channel(0);
        Self {
            inner: Arc::new(Shared {
                state: Mutex::default(),
                limits,
                appended,
            }),
        }
    }

    /// The limits this store enforces.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` half-updated: every mutation below
        // happens after all checks, so a poisoned lock still guards consistent data.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for InMemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    fn version_of(&self, stream: &StreamId) -> StreamVersion {
        self.streams
            .get(stream)
            .and_then(|indexes| indexes.last())
            .map(|&i| self.events[i].version)
            .unwrap_or(StreamVersion::INITIAL)
    }
}

#[async_trait]
impl EventAppender for InMemoryStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let sizes: Vec<usize> = self
            .inner
            .limits
            .check_append(stream, expected, &events)?
            .iter()
            .map(|e| e.payload_json.len() + e.metadata_json.len())
            .collect();
        let mut state = self.state();
        if events
            .iter()
            .any(|e| state.event_ids.contains_key(&e.event_id))
        {
            let stored = events
                .iter()
                .filter_map(|e| state.event_ids.get(&e.event_id))
                .map(|&i| {
                    let e = &state.events[i];
                    let at = StoredEventLocation {
                        stream_id: e.stream_id.clone(),
                        version: e.version,
                        position: e.position,
                    };
                    (e.event_id, at)
                })
                .collect();
            return replayed_append(stream, &events, &stored);
        }
        let current = state.version_of(stream);
        if !expected.accepts(current) {
            return Err(Conflict {
                stream: stream.clone(),
                expected,
                actual: current,
            }
            .into());
        }
        if current.checked_add(events.len() as u64).is_none() {
            return Err(ValidationError::VersionOverflow {
                stream: stream.clone(),
                after: current,
                count: events.len(),
            }
            .into());
        }
        if events.is_empty() {
            return Ok(AppendResult {
                stream_version: current,
                positions: Vec::new(),
                already_stored: false,
            });
        }
        state.last_transaction += 1;
        let transaction_id = state.last_transaction;
        let (version, positions) = state.write(stream, current, events, sizes, transaction_id);
        drop(state);
        self.inner.appended.send_modify(|n| *n = n.wrapping_add(1));
        Ok(AppendResult {
            stream_version: version,
            positions,
            already_stored: false,
        })
    }

    /// Checks every stream's expectation, then writes all the streams' events as one
    /// transaction (one transaction id, positions in the order given), under one lock.
    async fn append_to_streams(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>, StoreError> {
        let sizes: Vec<Vec<usize>> = self
            .inner
            .limits
            .check_multi_append(&appends)?
            .iter()
            .map(|events| {
                events
                    .iter()
                    .map(|e| e.payload_json.len() + e.metadata_json.len())
                    .collect()
            })
            .collect();
        let mut state = self.state();
        let stored: HashMap<Uuid, StoredEventLocation> = appends
            .iter()
            .flat_map(|a| &a.events)
            .filter_map(|e| state.event_ids.get(&e.event_id))
            .map(|&i| {
                let e = &state.events[i];
                let at = StoredEventLocation {
                    stream_id: e.stream_id.clone(),
                    version: e.version,
                    position: e.position,
                };
                (e.event_id, at)
            })
            .collect();
        if !stored.is_empty() {
            return replayed_multi_append(&appends, &stored, |stream| state.version_of(stream));
        }
        let mut currents = Vec::with_capacity(appends.len());
        for append in &appends {
            let current = state.version_of(&append.stream);
            if !append.expected.accepts(current) {
                return Err(Conflict {
                    stream: append.stream.clone(),
                    expected: append.expected,
                    actual: current,
                }
                .into());
            }
            if current.checked_add(append.events.len() as u64).is_none() {
                return Err(ValidationError::VersionOverflow {
                    stream: append.stream.clone(),
                    after: current,
                    count: append.events.len(),
                }
                .into());
            }
            currents.push(current);
        }
        let any_events = appends.iter().any(|a| !a.events.is_empty());
        let transaction_id = if any_events {
            state.last_transaction += 1;
            state.last_transaction
        } else {
            0
        };
        let mut results = Vec::with_capacity(appends.len());
        for ((append, current), sizes) in appends.into_iter().zip(currents).zip(sizes) {
            let (version, positions) = state.write(
                &append.stream,
                current,
                append.events,
                sizes,
                transaction_id,
            );
            results.push(AppendResult {
                stream_version: version,
                positions,
                already_stored: false,
            });
        }
        drop(state);
        if any_events {
            self.inner.appended.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(results)
    }
}

impl State {
    /// Stores `events` in `stream` after version `current`, as part of transaction
    /// `transaction_id`; returns the stream's new version and the events' positions.
    ///
    /// The caller checked that the versions stay in range.
    fn write(
        &mut self,
        stream: &StreamId,
        current: StreamVersion,
        events: Vec<NewEvent>,
        sizes: Vec<usize>,
        transaction_id: u64,
    ) -> (StreamVersion, Vec<FeedPosition>) {
        let recorded_at = Utc::now();
        let mut positions = Vec::with_capacity(events.len());
        let mut version = current;
        for (event, size) in events.into_iter().zip(sizes) {
            // Bounded by the caller's overflow check.
            version = version.next().unwrap_or(StreamVersion::MAX);
            let index = self.events.len();
            let position = FeedPosition::new(transaction_id, index as u64 + 1);
            self.events.push(RecordedEvent {
                event_id: event.event_id,
                stream_id: stream.clone(),
                version,
                position,
                event_type: event.event_type,
                schema_version: event.schema_version,
                payload: event.payload,
                metadata: event.metadata,
                recorded_at,
            });
            self.sizes.push(size);
            self.event_ids.insert(event.event_id, index);
            self.streams.entry(stream.clone()).or_default().push(index);
            positions.push(position);
        }
        (version, positions)
    }
}

impl StreamReader for InMemoryStore {
    fn read_stream<'a>(&'a self, stream: &'a StreamId, from: StreamVersion) -> EventStream<'a> {
        let state = self.state();
        let events: Vec<_> = state
            .streams
            .get(stream)
            .map(|indexes| {
                indexes
                    .iter()
                    .map(|&i| &state.events[i])
                    .filter(|e| e.version >= from)
                    .cloned()
                    .map(Ok)
                    .collect()
            })
            .unwrap_or_default();
        stream::iter(events).boxed()
    }
}

#[async_trait]
impl FeedReader for InMemoryStore {
    async fn read_feed_batch(
        &self,
        after: FeedPosition,
        size: BatchSize,
        filter: &FeedFilter,
    ) -> Result<FeedBatch, StoreError> {
        let size = size.check()?;
        let state = self.state();
        let start = state.events.partition_point(|e| e.position <= after);
        let end = state.events.len().min(start.saturating_add(size.events));
        let mut batch = FeedBatch {
            events: Vec::new(),
            next: after,
            reached_head: end - start < size.events,
        };
        let mut bytes = 0usize;
        for (event, &event_bytes) in state.events[start..end]
            .iter()
            .zip(&state.sizes[start..end])
        {
            if filter.matches(event) {
                bytes = bytes.saturating_add(event_bytes);
                if bytes > size.bytes && !batch.events.is_empty() {
                    // Past the byte budget: the next read starts with this event.
                    batch.reached_head = false;
                    break;
                }
                batch.events.push(event.clone());
            }
            batch.next = event.position;
        }
        Ok(batch)
    }
}

#[async_trait]
impl SnapshotStore for InMemoryStore {
    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.state().snapshots.get(stream).cloned())
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let mut state = self.state();
        let kept = state.snapshots.get(&snapshot.stream_id);
        if kept.is_none_or(|kept| kept.version <= snapshot.version) {
            state
                .snapshots
                .insert(snapshot.stream_id.clone(), snapshot.clone());
        }
        Ok(())
    }
}

impl Subscribe for InMemoryStore {
    fn wake_signal(&self) -> WakeSignal {
        self.inner.appended.subscribe()
    }
}
