//! The repository: load an aggregate, decide on a command, append under optimistic concurrency,
//! and retry on conflicts.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::aggregate::Aggregate;
use crate::command_context::CommandContext;
use crate::domain_event::EncodeError;
use crate::error::{Conflict, StoreError, ValidationError};
use crate::event::NewEvent;
use crate::event_store::{AppendResult, EventAppender, StreamReader};
use crate::expected_version::ExpectedVersion;
use crate::metadata::EventMetadata;
use crate::position::FeedPosition;
use crate::retry_policy::RetryPolicy;
use crate::snapshot::{SnapshotStore, Snapshotting};
use crate::snapshot_policy::SnapshotPolicy;
use crate::stream_id::StreamId;
use crate::version::StreamVersion;
use uuid::Uuid;

/// An aggregate folded from its stream, with the version it was folded up to.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    /// The stream it was loaded from.
    pub stream_id: StreamId,
    /// The state after every stored event.
    pub state: A,
    /// The version of the last event folded (`INITIAL` for a new aggregate).
    pub version: StreamVersion,
}

/// Where an event a command produced was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendedEvent {
    /// The event's id.
    pub event_id: Uuid,
    /// Its version in the stream.
    pub version: StreamVersion,
    /// Its place in the global feed: wait for a subscription or a projection to pass it to
    /// read your own write.
    pub position: FeedPosition,
}

/// A command that was carried out.
#[derive(Debug)]
pub struct Executed<A: Aggregate> {
    /// The stream appended to.
    pub stream_id: StreamId,
    /// The events the command produced (possibly none).
    pub events: Vec<A::Event>,
    /// The state after them.
    pub state: A,
    /// The stream's version after the append.
    pub version: StreamVersion,
    /// The stored events, in order, with their ids, versions and feed positions (empty when
    /// the command produced none).
    pub appended: Vec<AppendedEvent>,
    /// Attempts it took (1 when no concurrent writer got in the way).
    pub attempts: u32,
    /// The conflicts met on the way, one per retry.
    pub conflicts: Vec<Conflict>,
}

/// Why a command was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The aggregate refused the command (a domain rule).
    #[error("command refused: {0}")]
    Rejected(#[source] E),
    /// Concurrent writers won every attempt; nothing was appended.
    #[error("gave up after {attempts} attempts: {last}; raise RetryPolicy::max_attempts or reduce contention on the stream")]
    Conflict {
        /// Attempts made.
        attempts: u32,
        /// The last conflict.
        last: Conflict,
    },
    /// The command addressed a stream of another category, or similar bad input.
    #[error("invalid command target: {0}")]
    Invalid(#[from] ValidationError),
    /// A produced event could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The store failed (including events that do not decode).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Loads aggregates of type `A` from a store and runs commands on them.
///
/// ```
/// # use eventsource_core::testing::counter::{Counter, Increment};
/// use eventsource_core::{Aggregate, CommandContext, InMemoryStore, Repository};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let repository = Repository::<Counter, _>::new(InMemoryStore::new());
/// let id = Counter::stream_id("c-1")?;
/// let done = repository.execute(&id, Increment(2), &CommandContext::new()).await?;
/// assert_eq!(done.version.get(), 1);
/// assert_eq!(repository.load(&id).await?.state.value, 2);
/// # Ok(()) }
/// ```
pub struct Repository<A: Aggregate, S> {
    store: S,
    services: A::Services,
    retry: RetryPolicy,
    outage_retry: RetryPolicy,
    snapshots: Option<Snapshotting<A>>,
}

impl<A: Aggregate, S: EventAppender + StreamReader> Repository<A, S>
where
    A::Services: Default,
{
    /// A repository over `store`, with default services and the default retry policy.
    pub fn new(store: S) -> Self {
        Self::with_services(store, A::Services::default())
    }
}

impl<A: Aggregate, S: EventAppender + StreamReader> Repository<A, S> {
    /// A repository over `store` whose aggregates consult `services`.
    pub fn with_services(store: S, services: A::Services) -> Self {
        Self {
            store,
            services,
            retry: RetryPolicy::default(),
            outage_retry: OUTAGE_RETRY,
            snapshots: None,
        }
    }

    /// Replaces the retry policy for concurrency conflicts.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Replaces the retry policy for appends that fail with a transient error
    /// ([`StoreError::is_transient`]); the default makes 4 attempts over about 3 s.
    pub fn with_outage_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.outage_retry = retry;
        self
    }

    /// The store underneath.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Loads the aggregate in `stream`: its snapshot, when the repository takes snapshots and
    /// one is kept, and the events stored after it (else every event).
    ///
    /// Reads the stream directly (every committed event), never through the feed's horizon.
    pub async fn load(&self, stream: &StreamId) -> Result<Loaded<A>, CommandError<A::Error>> {
        self.check_category(stream)?;
        let restored = match &self.snapshots {
            Some(snapshots) => snapshots.restore(stream).await?,
            None => None,
        };
        let (state, version) = restored.unwrap_or_else(|| (A::default(), StreamVersion::INITIAL));
        let mut loaded = Loaded {
            stream_id: stream.clone(),
            state,
            version,
        };
        self.catch_up(&mut loaded).await?;
        Ok(loaded)
    }

    /// Folds the events stored after `loaded.version` into `loaded`.
    ///
    /// Relies on the store returning versions in order from the one asked for; a gap is
    /// reported as corrupt data rather than folded.
    async fn catch_up(&self, loaded: &mut Loaded<A>) -> Result<(), CommandError<A::Error>> {
        let stream = &loaded.stream_id;
        let from = loaded.version.next().unwrap_or(StreamVersion::MAX);
        let mut events = self.store.read_stream(stream, from);
        while let Some(recorded) = events.try_next().await? {
            if Some(recorded.version) != loaded.version.next() {
                return Err(StoreError::Corrupt {
                    what: format!(
                        "stream {stream} jumps from version {} to {}",
                        loaded.version, recorded.version
                    ),
                }
                .into());
            }
            let event: A::Event = recorded.decode()?;
            loaded.state.apply(&event);
            loaded.version = recorded.version;
        }
        Ok(())
    }

    /// Runs `command` against the aggregate in `stream`: load, decide, append with the loaded
    /// version as the expected version. On a conflict it waits, reloads and decides again, up to
    /// the retry policy's attempt budget; a reload after a conflict folds only the events stored
    /// since the last one (`apply` is deterministic). Every event gets `causation_id = ctx.command_id` and
    /// the context's correlation id, actor and headers.
    pub async fn execute(
        &self,
        stream: &StreamId,
        command: A::Command,
        ctx: &CommandContext,
    ) -> Result<Executed<A>, CommandError<A::Error>> {
        let mut conflicts = Vec::new();
        let mut attempts = 0;
        let mut loaded = self.load(stream).await?;
        loop {
            attempts += 1;
            if ctx.idempotent {
                // SHIM until idempotent commands land on main.
                if let Some((events, appended)) =
                    crate::idempotent_command_shim::previous_run::<A, S>(&self.store, stream, ctx)
                        .await?
                {
                    return Ok(Executed {
                        stream_id: stream.clone(),
                        events,
                        state: loaded.state,
                        version: appended.last().map_or(loaded.version, |a| a.version),
                        appended,
                        attempts,
                        conflicts,
                    });
                }
            }
            let events = loaded
                .state
                .handle(&command, &self.services)
                .await
                .map_err(CommandError::Rejected)?;
            if events.is_empty() {
                return Ok(Executed {
                    stream_id: stream.clone(),
                    events,
                    state: loaded.state,
                    version: loaded.version,
                    appended: Vec::new(),
                    attempts,
                    conflicts,
                });
            }
            let metadata = ctx.metadata();
            match self
                .append(
                    stream,
                    ExpectedVersion::Exact(loaded.version),
                    &events,
                    &metadata,
                    ctx,
                )
                .await
            {
                Ok((result, ids)) => {
                    let appended = appended_events(&ids, &result);
                    for event in &events {
                        loaded.state.apply(event);
                    }
                    if let Some(snapshots) = &self.snapshots {
                        snapshots
                            .after_append(
                                stream,
                                loaded.version,
                                result.stream_version,
                                &loaded.state,
                            )
                            .await;
                    }
                    return Ok(Executed {
                        stream_id: stream.clone(),
                        events,
                        state: loaded.state,
                        version: result.stream_version,
                        appended,
                        attempts,
                        conflicts,
                    });
                }
                Err(CommandError::Store(StoreError::Conflict(conflict))) => {
                    tracing::debug!(%stream, attempts, %conflict, "conflict; retrying");
                    if attempts >= self.retry.max_attempts {
                        return Err(CommandError::Conflict {
                            attempts,
                            last: conflict,
                        });
                    }
                    conflicts.push(conflict);
                    tokio::time::sleep(self.retry.delay_after(attempts)).await;
                    self.catch_up(&mut loaded).await?;
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Encodes and appends `events`; when the store fails with a transient error, appends the
    /// very same events (same ids, encoded again: the store took the first encoding) under the
    /// outage retry policy. An append whose reply was lost after it was stored is then
    /// recognised by its event ids and not stored twice, and one that was not stored is stored
    /// now. Returns the result and the appended ids.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[A::Event],
        metadata: &EventMetadata,
        ctx: &CommandContext,
    ) -> Result<(AppendResult, Vec<Uuid>), CommandError<A::Error>> {
        let mut batch = events
            .iter()
            .map(|e| NewEvent::from_domain(e, metadata.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        if ctx.idempotent {
            crate::idempotent_command_shim::deterministic_ids(&mut batch, ctx.command_id);
        }
        let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.store.append(stream, expected, batch).await {
                Ok(result) => return Ok((result, ids)),
                Err(error) if error.is_transient() && attempts < self.outage_retry.max_attempts => {
                    tracing::warn!(%stream, attempts, %error, "append failed transiently; appending the same events again");
                    tokio::time::sleep(self.outage_retry.delay_after(attempts)).await;
                    batch = events
                        .iter()
                        .zip(&ids)
                        .map(|(e, &event_id)| {
                            NewEvent::from_domain(e, metadata.clone()).map(|encoded| NewEvent {
                                event_id,
                                ..encoded
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    fn check_category(&self, stream: &StreamId) -> Result<(), ValidationError> {
        if stream.category().as_str() != A::CATEGORY {
            return Err(ValidationError::WrongCategory {
                stream: stream.clone(),
                expected: A::CATEGORY.to_owned(),
            });
        }
        Ok(())
    }
}

/// How the repository retries an append that failed with a transient error: 4 attempts,
/// waits of up to 0.25, 0.5 and 1 s (jittered), long enough for a connection to be replaced and
/// short enough for a caller waiting on the command.
const OUTAGE_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 4,
    base_delay: Duration::from_millis(250),
    max_delay: Duration::from_secs(1),
};

/// The stored events of an append: `ids` in order, at the versions ending at
/// `result.stream_version`, with the positions the store reported.
fn appended_events(ids: &[Uuid], result: &AppendResult) -> Vec<AppendedEvent> {
    let first = result
        .stream_version
        .get()
        .saturating_sub(ids.len() as u64)
        .saturating_add(1);
    ids.iter()
        .zip(&result.positions)
        .zip(first..)
        .map(|((&event_id, &position), version)| AppendedEvent {
            event_id,
            version: StreamVersion::new(version).unwrap_or(result.stream_version),
            position,
        })
        .collect()
}

impl<A, S> Repository<A, S>
where
    A: Aggregate + Serialize + DeserializeOwned,
    S: EventAppender + StreamReader,
{
    /// Takes a snapshot of the aggregate's state (serialized with serde) each time a command
    /// makes its stream pass a multiple of `policy.every` events, into `snapshots` (usually the
    /// event store itself), and loads from the latest snapshot plus the events after it.
    ///
    /// The snapshot holds the state folded from the command's events as the aggregate produced
    /// them; it equals a fold of the stored events as long as encoding then decoding an event
    /// gives it back unchanged (true of the derive's encoding for ordinary serde types).
    ///
    /// ```
    /// # use eventsource_core::testing::counter::{Counter, Increment};
    /// use eventsource_core::{Aggregate, CommandContext, InMemoryStore, Repository, SnapshotPolicy};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = InMemoryStore::new();
    /// let repository = Repository::<Counter, _>::new(store.clone())
    ///     .with_snapshots(store.clone(), SnapshotPolicy::every(100));
    /// let id = Counter::stream_id("c-1")?;
    /// repository.execute(&id, Increment(2), &CommandContext::new()).await?;
    /// assert_eq!(repository.load(&id).await?.state.value, 2);
    /// # Ok(()) }
    /// ```
    pub fn with_snapshots(
        mut self,
        snapshots: impl SnapshotStore + 'static,
        policy: SnapshotPolicy,
    ) -> Self {
        self.snapshots = Some(Snapshotting {
            store: Arc::new(snapshots),
            policy,
            encode: |state| serde_json::to_value(state),
            decode: serde_json::from_value,
        });
        self
    }
}
