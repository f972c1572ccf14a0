//! The unit of work: commands on several aggregates, decided one by one and appended together,
//! all or nothing.

use std::future::Future;
use std::pin::Pin;

use futures::TryStreamExt;
use uuid::Uuid;

use crate::aggregate::Aggregate;
use crate::command_context::CommandContext;
use crate::error::{Conflict, StoreError, ValidationError};
use crate::event_store::{AppendResult, EventAppender, StreamAppend, StreamReader};
use crate::expected_version::ExpectedVersion;
use crate::repository::{
    appended_events, encode, fold_stream, AppendedEvent, CommandError, Loaded, OUTAGE_RETRY,
};
use crate::retry_policy::RetryPolicy;
use crate::stream_id::StreamId;
use crate::version::StreamVersion;

/// Commands on several aggregates (of one type or of several), each loaded and decided in turn,
/// whose events are appended in one atomic
/// [`append_to_streams`](EventAppender::append_to_streams) by [`commit`](Self::commit): every
/// stream's events or none, each stream appended at the version its aggregate was loaded at.
///
/// - [`execute`](Self::execute) loads an aggregate and decides; nothing is stored until
///   `commit`. A refused command is returned as [`CommandError::Rejected`]: drop the unit to
///   abandon it (nothing was stored).
/// - A stream executed on twice in one unit sees the events decided the first time.
/// - `commit` fails with [`StoreError::Conflict`] naming the stream when a concurrent writer
///   got in first, and stores nothing anywhere. [`run`](Self::run) retries the whole unit on
///   conflicts: loads and decides again, under a bounded [`RetryPolicy`].
/// - Metadata and event ids come from each command's [`CommandContext`]. A command whose id
///   was given ([`CommandContext::with_command_id`]) and that already appended to its stream
///   is not decided again: its `execute` returns that run's events with `replayed = true` and
///   adds nothing to the unit. Running a unit again with the same command ids (after a crash,
///   say) therefore stores nothing twice.
/// - Snapshots are not taken by a unit (the next [`Repository`](crate::Repository) command
///   that passes a snapshot's version takes it).
///
/// ```
/// use async_trait::async_trait;
/// use eventsource_core::testing::counter::{Counter, Increment};
/// use eventsource_core::{Aggregate, CommandContext, InMemoryStore, UnitOfWork};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryStore::new();
/// let (a, b) = (Counter::stream_id("a")?, Counter::stream_id("b")?);
/// let ctx = CommandContext::new();
///
/// let mut unit = UnitOfWork::new(&store);
/// unit.execute::<Counter>(&a, Increment(1), &ctx).await?;
/// unit.execute::<Counter>(&b, Increment(2), &ctx).await?;
/// let committed = unit.commit().await?; // both streams, or neither
/// assert_eq!(committed.streams.len(), 2);
/// // Both appends are one transaction: one transaction id in the feed.
/// let first = committed.streams[0].appended[0].position;
/// let second = committed.streams[1].appended[0].position;
/// assert_eq!(first.transaction_id, second.transaction_id);
///
/// // The retrying form: on a conflict the whole unit is loaded and decided again.
/// let (a, b) = (&a, &b);
/// let ((), committed) = UnitOfWork::run(&store, Default::default(), |unit| {
///     let ctx = ctx.next_command();
///     Box::pin(async move {
///         unit.execute::<Counter>(a, Increment(10), &ctx).await?;
///         unit.execute::<Counter>(b, Increment(20), &ctx).await?;
///         Ok::<_, eventsource_core::CommandError<_>>(())
///     })
/// })
/// .await?;
/// assert_eq!(committed.attempts, 1);
/// # Ok(()) }
/// ```
pub struct UnitOfWork<'s, S> {
    store: &'s S,
    pending: Vec<Pending>,
}

/// One stream's part of a unit: the version its aggregate was loaded at and the events
/// decided for it.
struct Pending {
    append: StreamAppend,
    loaded_at: StreamVersion,
}

/// What [`UnitOfWork::execute`] decided for one aggregate (stored only at
/// [`commit`](UnitOfWork::commit)).
#[derive(Debug)]
pub struct Decided<A: Aggregate> {
    /// The aggregate's stream.
    pub stream_id: StreamId,
    /// The events the command produced (possibly none).
    pub events: Vec<A::Event>,
    /// The state after them.
    pub state: A,
    /// The version the stream will have after the commit (the version it was loaded at plus
    /// the events decided for it in this unit so far).
    pub version: StreamVersion,
    /// `true` when the command's id was given and an earlier run already appended its events
    /// to this stream: `events` are that run's, `version` the one after them, and nothing was
    /// added to the unit.
    pub replayed: bool,
}

/// A committed unit of work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Each stream the unit appended to (or checked), in the order first executed on.
    pub streams: Vec<CommittedStream>,
    /// Attempts the unit took ([`UnitOfWork::run`]; 1 for [`UnitOfWork::commit`]).
    pub attempts: u32,
    /// The conflicts met on the way, one per retry.
    pub conflicts: Vec<Conflict>,
}

/// One stream of a committed unit of work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedStream {
    /// The stream.
    pub stream_id: StreamId,
    /// Its version after the commit.
    pub version: StreamVersion,
    /// The stored events, with their ids, versions and feed positions (all in one transaction:
    /// the same `transaction_id`).
    pub appended: Vec<AppendedEvent>,
    /// `true` when the store already held these very events (a retry after a lost reply).
    pub already_stored: bool,
}

/// Why [`UnitOfWork::run`] stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum UnitError<E: std::error::Error + 'static> {
    /// The unit's body failed (a refused command, say): nothing was appended.
    #[error("the unit of work failed: {0}")]
    Failed(#[source] E),
    /// Concurrent writers won every attempt; nothing was appended.
    #[error("gave up after {attempts} attempts: {last}; raise RetryPolicy::max_attempts or reduce contention on these streams")]
    Conflict {
        /// Attempts made.
        attempts: u32,
        /// The last conflict.
        last: Conflict,
    },
    /// The store failed; nothing tells whether the unit was stored (a retry of the same unit
    /// with the same command ids is safe).
    #[error(transparent)]
    Store(StoreError),
}

/// What [`UnitOfWork::run`]'s body returns: a boxed future borrowing the unit.
pub type UnitFuture<'u, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'u>>;

impl<'s, S: EventAppender + StreamReader> UnitOfWork<'s, S> {
    /// An empty unit over `store`.
    pub fn new(store: &'s S) -> Self {
        Self {
            store,
            pending: Vec::new(),
        }
    }

    /// The streams executed on so far, in order.
    pub fn streams(&self) -> impl Iterator<Item = &StreamId> {
        self.pending.iter().map(|p| &p.append.stream)
    }

    /// Loads the aggregate in `stream` (folding the events decided for it earlier in this
    /// unit), decides on `command` with default services, and keeps the events for
    /// [`commit`](Self::commit).
    pub async fn execute<A: Aggregate>(
        &mut self,
        stream: &StreamId,
        command: A::Command,
        ctx: &CommandContext,
    ) -> Result<Decided<A>, CommandError<A::Error>>
    where
        A::Services: Default,
    {
        self.execute_with::<A>(stream, command, &A::Services::default(), ctx)
            .await
    }

    /// [`execute`](Self::execute) with the services the aggregate consults.
    pub async fn execute_with<A: Aggregate>(
        &mut self,
        stream: &StreamId,
        command: A::Command,
        services: &A::Services,
        ctx: &CommandContext,
    ) -> Result<Decided<A>, CommandError<A::Error>> {
        if stream.category().as_str() != A::CATEGORY {
            return Err(ValidationError::WrongCategory {
                stream: stream.clone(),
                expected: A::CATEGORY.to_owned(),
            }
            .into());
        }
        let index = self.pending.iter().position(|p| p.append.stream == *stream);
        if ctx.is_command_id_given() {
            if let Some(done) = self.earlier_run::<A>(stream, ctx).await? {
                return Ok(done);
            }
        }
        let mut loaded = Loaded {
            stream_id: stream.clone(),
            state: A::default(),
            version: StreamVersion::INITIAL,
        };
        let until = index.map_or(StreamVersion::MAX, |i| self.pending[i].loaded_at);
        fold_stream(self.store, &mut loaded, until).await?;
        let loaded_at = loaded.version;
        let mut earlier = 0;
        if let Some(i) = index {
            for new in &self.pending[i].append.events {
                let event: A::Event = new_event_decode(stream, loaded.version, new)?;
                loaded.state.apply(&event);
                loaded.version = loaded.version.next().unwrap_or(StreamVersion::MAX);
            }
            earlier = self.pending[i].append.events.len();
        }
        let events = loaded
            .state
            .handle(&command, services)
            .await
            .map_err(CommandError::Rejected)?;
        let ids: Vec<Uuid> = (earlier..earlier + events.len())
            .map(|n| ctx.event_id(stream, n))
            .collect();
        let encoded = encode(&events, &ids, &ctx.metadata())?;
        for event in &events {
            loaded.state.apply(event);
            loaded.version = loaded.version.next().unwrap_or(StreamVersion::MAX);
        }
        match index {
            Some(i) => self.pending[i].append.events.extend(encoded),
            None => self.pending.push(Pending {
                append: StreamAppend::new(
                    stream.clone(),
                    ExpectedVersion::Exact(loaded_at),
                    encoded,
                ),
                loaded_at,
            }),
        }
        Ok(Decided {
            stream_id: stream.clone(),
            events,
            state: loaded.state,
            version: loaded.version,
            replayed: false,
        })
    }

    /// The outcome of an earlier run of a command whose id was given, when it appended to
    /// `stream`: its events and the state right after them.
    async fn earlier_run<A: Aggregate>(
        &self,
        stream: &StreamId,
        ctx: &CommandContext,
    ) -> Result<Option<Decided<A>>, StoreError> {
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
        let mut loaded = Loaded {
            stream_id: stream.clone(),
            state: A::default(),
            version: StreamVersion::INITIAL,
        };
        fold_stream(self.store, &mut loaded, last).await?;
        Ok(Some(Decided {
            stream_id: stream.clone(),
            events,
            state: loaded.state,
            version: last,
            replayed: true,
        }))
    }

    /// Appends every stream's decided events in one
    /// [`append_to_streams`](EventAppender::append_to_streams), each stream expecting the
    /// version its aggregate was loaded at: all of them or none. A stream whose commands
    /// produced no events is still checked (a concurrent writer there is a conflict too, since
    /// the unit's decisions relied on its state).
    ///
    /// A transient store failure is retried with the very same events (4 attempts over about
    /// 2 s), which the store recognises by their ids if the first attempt was stored. A
    /// conflict is [`StoreError::Conflict`] naming its stream, and nothing is stored.
    pub async fn commit(self) -> Result<Committed, StoreError> {
        let appends: Vec<StreamAppend> = self.pending.into_iter().map(|p| p.append).collect();
        if appends.is_empty() {
            return Ok(Committed {
                streams: Vec::new(),
                attempts: 1,
                conflicts: Vec::new(),
            });
        }
        let mut attempts = 0;
        let results = loop {
            attempts += 1;
            match self.store.append_to_streams(appends.clone()).await {
                Ok(results) => break results,
                Err(error) if error.is_transient() && attempts < OUTAGE_RETRY.max_attempts => {
                    tracing::warn!(attempts, %error, "unit of work failed transiently; appending the same events again");
                    tokio::time::sleep(OUTAGE_RETRY.delay_after(attempts)).await;
                }
                Err(error) => return Err(error),
            }
        };
        Ok(Committed {
            streams: appends
                .iter()
                .zip(&results)
                .map(|(append, result)| committed_stream(append, result))
                .collect(),
            attempts: 1,
            conflicts: Vec::new(),
        })
    }

    /// Runs `body` on a new unit and commits it; on a conflict, runs it again on a new unit
    /// (everything loaded and decided anew) after the policy's backoff, up to its attempt
    /// budget. Returns the body's value and the committed unit.
    ///
    /// `body` may run several times, so it must not have side effects beyond its commands. An
    /// error of the body ends the run at once with [`UnitError::Failed`]. Give each command a
    /// given id ([`CommandContext::with_command_id`]) to make the whole run idempotent.
    pub async fn run<T, E, F>(
        store: &'s S,
        retry: RetryPolicy,
        mut body: F,
    ) -> Result<(T, Committed), UnitError<E>>
    where
        E: std::error::Error + 'static,
        F: for<'u> FnMut(&'u mut UnitOfWork<'s, S>) -> UnitFuture<'u, T, E>,
    {
        let mut conflicts = Vec::new();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut unit = UnitOfWork::new(store);
            let value = body(&mut unit).await.map_err(UnitError::Failed)?;
            match unit.commit().await {
                Ok(mut committed) => {
                    committed.attempts = attempts;
                    committed.conflicts = conflicts;
                    return Ok((value, committed));
                }
                Err(StoreError::Conflict(conflict)) => {
                    tracing::debug!(attempts, %conflict, "unit of work conflict; retrying");
                    if attempts >= retry.max_attempts {
                        return Err(UnitError::Conflict {
                            attempts,
                            last: conflict,
                        });
                    }
                    conflicts.push(conflict);
                    tokio::time::sleep(retry.delay_after(attempts)).await;
                }
                Err(error) => return Err(UnitError::Store(error)),
            }
        }
    }
}

/// Decodes an event decided earlier in the unit (as it would be read back once stored).
fn new_event_decode<E: crate::DomainEvent>(
    stream: &StreamId,
    after: StreamVersion,
    event: &crate::event::NewEvent,
) -> Result<E, StoreError> {
    E::decode(&event.event_type, event.schema_version, &event.payload).map_err(|source| {
        StoreError::Decode {
            stream: stream.clone(),
            version: after.next().unwrap_or(StreamVersion::MAX),
            source,
        }
    })
}

fn committed_stream(append: &StreamAppend, result: &AppendResult) -> CommittedStream {
    let ids: Vec<Uuid> = append.events.iter().map(|e| e.event_id).collect();
    CommittedStream {
        stream_id: append.stream.clone(),
        version: result.stream_version,
        appended: appended_events(&ids, result),
        already_stored: result.already_stored,
    }
}
