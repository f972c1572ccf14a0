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
    /// Attempts it took (1 when no concurrent writer got in the way; 0 when it found an
    /// earlier run's outcome before deciding, see `replayed`).
    pub attempts: u32,
    /// The conflicts met on the way, one per retry.
    pub conflicts: Vec<Conflict>,
    /// `true` when the command's id was given ([`CommandContext::with_command_id`]) and an
    /// earlier run of it had already appended: nothing was appended now, and `events`,
    /// `version` and `appended` are that run's (`state` is the state right after it).
    pub replayed: bool,
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
        self.load_until(stream, StreamVersion::MAX).await
    }

    /// Loads the aggregate in `stream` as it was at version `until` (or its latest version if
    /// lower): from a snapshot at or before `until`, if one is kept, else from the start.
    async fn load_until(
        &self,
        stream: &StreamId,
        until: StreamVersion,
    ) -> Result<Loaded<A>, CommandError<A::Error>> {
        self.check_category(stream)?;
        let restored = match &self.snapshots {
            Some(snapshots) => snapshots.restore(stream).await?,
            None => None,
        };
        let (state, version) = restored
            .filter(|(_, version)| *version <= until)
            .unwrap_or_else(|| (A::default(), StreamVersion::INITIAL));
        let mut loaded = Loaded {
            stream_id: stream.clone(),
            state,
            version,
        };
        self.catch_up_until(&mut loaded, until).await?;
        Ok(loaded)
    }

    /// Folds the events stored after `loaded.version` into `loaded`.
    async fn catch_up(&self, loaded: &mut Loaded<A>) -> Result<(), CommandError<A::Error>> {
        self.catch_up_until(loaded, StreamVersion::MAX).await
    }

    /// Folds the events stored after `loaded.version`, up to version `until`, into `loaded`.
    async fn catch_up_until(
        &self,
        loaded: &mut Loaded<A>,
        until: StreamVersion,
    ) -> Result<(), CommandError<A::Error>> {
        fold_stream(&self.store, loaded, until).await?;
        Ok(())
    }

    /// Runs `command` against the aggregate in `stream`: load, decide, append with the loaded
    /// version as the expected version. On a conflict it waits, reloads and decides again, up to
    /// the retry policy's attempt budget; a reload after a conflict folds only the events stored
    /// since the last one (`apply` is deterministic). Every event gets `causation_id = ctx.command_id` and
    /// the context's correlation id, actor and headers.
    ///
    /// # Idempotent commands
    ///
    /// When the caller gave the command's id ([`CommandContext::with_command_id`]), a command
    /// runs at most once per stream, however often it is sent, and every send returns the same
    /// outcome:
    ///
    /// - It first looks for the events of `stream` caused by that id
    ///   ([`StreamReader::read_caused_by`]). If there are any, an earlier run appended them: it
    ///   returns that run's outcome, with `replayed = true` and without deciding or appending:
    ///   the events (decoded from the store), the version after them, `appended` describing
    ///   the stored events, and the state right after them. This holds after a restart too
    ///   (a new repository, a new connection): the store is the only memory.
    /// - Otherwise it decides and appends with deterministic event ids
    ///   ([`CommandContext::event_id`]). A concurrent run of the same id that appended first
    ///   makes this append a conflict or a replay of its ids; it then finds that run's events
    ///   and returns them the same way.
    /// - A command that produced no events left nothing to find: a second send decides again,
    ///   and (deciding the same) appends nothing again. Its outcome is the stream's version at
    ///   that time, which may have moved.
    /// - A command id is per stream: the same id sent to another stream is another command.
    ///
    /// ```
    /// # use eventsource_core::testing::counter::{Counter, Increment};
    /// use eventsource_core::{Aggregate, CommandContext, InMemoryStore, Repository};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let repository = Repository::<Counter, _>::new(InMemoryStore::new());
    /// let id = Counter::stream_id("c-1")?;
    /// let request = uuid::Uuid::now_v7(); // e.g. from the client's Idempotency-Key
    /// let first = repository
    ///     .execute(&id, Increment(2), &CommandContext::new().with_command_id(request))
    ///     .await?;
    /// let again = repository
    ///     .execute(&id, Increment(2), &CommandContext::new().with_command_id(request))
    ///     .await?;
    /// assert!(again.replayed);
    /// assert_eq!((again.version, &again.appended), (first.version, &first.appended));
    /// assert_eq!(repository.load(&id).await?.state.value, 2); // counted once
    /// # Ok(()) }
    /// ```
    pub async fn execute(
        &self,
        stream: &StreamId,
        command: A::Command,
        ctx: &CommandContext,
    ) -> Result<Executed<A>, CommandError<A::Error>> {
        let mut conflicts = Vec::new();
        let mut attempts = 0;
        if let Some(done) = self.earlier_run(stream, ctx, attempts, &[]).await? {
            return Ok(done);
        }
        let mut loaded = self.load(stream).await?;
        loop {
            attempts += 1;
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
                    replayed: false,
                });
            }
            match self
                .append(stream, ExpectedVersion::Exact(loaded.version), &events, ctx)
                .await
            {
                Ok((result, _)) if result.already_stored && ctx.is_command_id_given() => {
                    // A concurrent run of this command stored these ids first: its outcome
                    // is the one to return (its events may differ from this decision's).
                    if let Some(done) = self.earlier_run(stream, ctx, attempts, &conflicts).await? {
                        return Ok(done);
                    }
                    return Err(StoreError::Corrupt {
                        what: format!(
                            "the events of command {} in {stream} were reported stored, but no event of {stream} names it as causation",
                            ctx.command_id
                        ),
                    }
                    .into());
                }
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
                        replayed: false,
                    });
                }
                Err(CommandError::Store(StoreError::EventIdReused { stored_in, .. }))
                    if ctx.is_command_id_given() && stored_in == *stream =>
                {
                    // A run of this command that decided other events stored first.
                    if let Some(done) = self.earlier_run(stream, ctx, attempts, &conflicts).await? {
                        return Ok(done);
                    }
                    return Err(StoreError::Corrupt {
                        what: format!(
                            "event ids of command {} are stored in {stream}, but no event of {stream} names it as causation",
                            ctx.command_id
                        ),
                    }
                    .into());
                }
                Err(CommandError::Store(StoreError::Conflict(conflict))) => {
                    tracing::debug!(%stream, attempts, %conflict, "conflict; retrying");
                    // The winner may be a concurrent run of this very command.
                    if let Some(done) = self.earlier_run(stream, ctx, attempts, &conflicts).await? {
                        return Ok(done);
                    }
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

    /// The outcome of an earlier run of the command, when its id was given and events of
    /// `stream` name it as their causation: those events, decoded, and the state right after
    /// them. `None` for a command whose id was not given, or that appended nothing here.
    async fn earlier_run(
        &self,
        stream: &StreamId,
        ctx: &CommandContext,
        attempts: u32,
        conflicts: &[Conflict],
    ) -> Result<Option<Executed<A>>, CommandError<A::Error>> {
        if !ctx.is_command_id_given() {
            return Ok(None);
        }
        self.check_category(stream)?;
        let recorded: Vec<_> = self
            .store
            .read_caused_by(stream, ctx.command_id)
            .try_collect()
            .await?;
        let Some(last) = recorded.last().map(|r| r.version) else {
            return Ok(None);
        };
        let events = recorded
            .iter()
            .map(|r| r.decode::<A::Event>())
            .collect::<Result<Vec<_>, _>>()?;
        let appended = recorded
            .iter()
            .map(|r| AppendedEvent {
                event_id: r.event_id,
                version: r.version,
                position: r.position,
            })
            .collect();
        let loaded = self.load_until(stream, last).await?;
        tracing::debug!(%stream, command_id = %ctx.command_id, version = %last, "command already run; returning its outcome");
        Ok(Some(Executed {
            stream_id: stream.clone(),
            events,
            state: loaded.state,
            version: last,
            appended,
            attempts,
            conflicts: conflicts.to_vec(),
            replayed: true,
        }))
    }

    /// Encodes and appends `events`, with the ids `ctx` gives them
    /// ([`CommandContext::event_id`]); when the store fails with a transient error, appends the
    /// very same events (same ids, encoded again: the store took the first encoding) under the
    /// outage retry policy. An append whose reply was lost after it was stored is then
    /// recognised by its event ids and not stored twice, and one that was not stored is stored
    /// now. Returns the result and the appended ids.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[A::Event],
        ctx: &CommandContext,
    ) -> Result<(AppendResult, Vec<Uuid>), CommandError<A::Error>> {
        let metadata = ctx.metadata();
        let ids: Vec<Uuid> = (0..events.len())
            .map(|index| ctx.event_id(stream, index))
            .collect();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let batch = encode(events, &ids, &metadata)?;
            match self.store.append(stream, expected, batch).await {
                Ok(result) => return Ok((result, ids)),
                Err(error) if error.is_transient() && attempts < self.outage_retry.max_attempts => {
                    tracing::warn!(%stream, attempts, %error, "append failed transiently; appending the same events again");
                    tokio::time::sleep(self.outage_retry.delay_after(attempts)).await;
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
pub(crate) const OUTAGE_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 4,
    base_delay: Duration::from_millis(250),
    max_delay: Duration::from_secs(1),
};

/// Folds the events of `loaded.stream_id` stored after `loaded.version`, up to version `until`,
/// into `loaded`.
///
/// Relies on the store returning versions in order from the one asked for; a gap is reported
/// as corrupt data rather than folded.
pub(crate) async fn fold_stream<A: Aggregate>(
    store: &impl StreamReader,
    loaded: &mut Loaded<A>,
    until: StreamVersion,
) -> Result<(), StoreError> {
    let stream = &loaded.stream_id;
    if loaded.version >= until {
        return Ok(());
    }
    let from = loaded.version.next().unwrap_or(StreamVersion::MAX);
    let mut events = store.read_stream(stream, from);
    while let Some(recorded) = events.try_next().await? {
        if Some(recorded.version) != loaded.version.next() {
            return Err(StoreError::Corrupt {
                what: format!(
                    "stream {stream} jumps from version {} to {}",
                    loaded.version, recorded.version
                ),
            });
        }
        let event: A::Event = recorded.decode()?;
        loaded.state.apply(&event);
        loaded.version = recorded.version;
        if loaded.version >= until {
            break;
        }
    }
    Ok(())
}

/// Encodes `events` with the ids `ids` (same length) and `metadata`.
pub(crate) fn encode<E: crate::DomainEvent>(
    events: &[E],
    ids: &[Uuid],
    metadata: &EventMetadata,
) -> Result<Vec<NewEvent>, EncodeError> {
    events
        .iter()
        .zip(ids)
        .map(|(event, &event_id)| {
            NewEvent::from_domain(event, metadata.clone()).map(|encoded| NewEvent {
                event_id,
                ..encoded
            })
        })
        .collect()
}

/// The stored events of an append: `ids` in order, at the versions ending at
/// `result.stream_version`, with the positions the store reported.
pub(crate) fn appended_events(ids: &[Uuid], result: &AppendResult) -> Vec<AppendedEvent> {
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
