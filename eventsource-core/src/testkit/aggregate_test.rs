//! Given / when for aggregates: the events a stream already holds, then one command.

use futures::TryStreamExt;

use crate::aggregate::Aggregate;
use crate::command_context::CommandContext;
use crate::error::StoreError;
use crate::event::{NewEvent, RecordedEvent};
use crate::event_store::EventAppender;
use crate::expected_version::ExpectedVersion;
use crate::memory_store::InMemoryStore;
use crate::metadata::EventMetadata;
use crate::repository::{CommandError, Repository};
use crate::stream_id::StreamId;
use crate::version::StreamVersion;

use super::then::{Outcome, Then};

/// The instance id a test's stream has unless [`AggregateTest::for_instance`] names another.
pub const DEFAULT_INSTANCE: &str = "test";

/// A test of one aggregate instance: the events its stream already holds (`given`), one command
/// (`when`), then what came of it ([`Then`]).
///
/// The command runs through the real [`Repository`] on a fresh [`InMemoryStore`]: the given
/// events are encoded, stored and decoded before the aggregate folds them, the produced events
/// are stored with the [`CommandContext`]'s metadata at the next versions, and what the test
/// checks is what production would have appended. See the [module documentation](super) for why.
///
/// `when` is `async` (the aggregate's `handle` is); in a synchronous `#[test]`, use
/// [`AggregateTest::when_blocking`].
///
/// ```
/// use eventsource_core::testing::counter::{Counter, CounterEvent, Increment, Incremented, TooHigh};
/// use eventsource_core::testkit::AggregateTest;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// AggregateTest::<Counter>::new()
///     .given([CounterEvent::Incremented(Incremented { by: 2 })])
///     .when(Increment(3))
///     .await
///     .then_expect([CounterEvent::Incremented(Incremented { by: 3 })]);
///
/// AggregateTest::<Counter>::new()
///     .given([CounterEvent::Incremented(Incremented { by: 999_999 })])
///     .when(Increment(2))
///     .await
///     .then_refuses_with(TooHigh { max: Counter::MAX });
/// # }
/// ```
pub struct AggregateTest<A: Aggregate> {
    services: A::Services,
    instance: String,
    given: Vec<A::Event>,
    context: CommandContext,
}

impl<A: Aggregate> AggregateTest<A>
where
    A::Services: Default,
{
    /// A test of an aggregate whose services have a default (`()` included), on the stream of
    /// instance [`DEFAULT_INSTANCE`].
    pub fn new() -> Self {
        Self::with_services(A::Services::default())
    }
}

impl<A: Aggregate> Default for AggregateTest<A>
where
    A::Services: Default,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Aggregate> AggregateTest<A> {
    /// A test of an aggregate that consults `services` (a stub inventory, a fixed clock).
    pub fn with_services(services: A::Services) -> Self {
        Self {
            services,
            instance: DEFAULT_INSTANCE.to_owned(),
            given: Vec::new(),
            context: CommandContext::new(),
        }
    }

    /// Runs on the stream of instance `id` (`<category>-<id>` of the aggregate's category)
    /// instead of [`DEFAULT_INSTANCE`], for aggregates whose decisions read their own id. An id
    /// the stream rules refuse makes the command fail (reported by every `then_*`).
    pub fn for_instance(mut self, id: impl Into<String>) -> Self {
        self.instance = id.into();
        self
    }

    /// Events the stream already holds, in order (stored at versions 1, 2, ...). Calling it again
    /// adds events after those.
    pub fn given(mut self, events: impl IntoIterator<Item = A::Event>) -> Self {
        self.given.extend(events);
        self
    }

    /// The context the command runs in (actor, correlation id, headers), from which its events'
    /// metadata comes; a fresh [`CommandContext::new`] by default. Check the metadata with
    /// [`Then::recorded`].
    pub fn with_context(mut self, context: CommandContext) -> Self {
        self.context = context;
        self
    }

    /// Stores the given events, runs `command` through the repository, and returns what came
    /// of it, to check with the `then_*` methods.
    ///
    /// Never panics: a failure of the test's own setup (an event that does not encode, an
    /// invalid instance id) is kept and reported by the `then_*` methods.
    pub async fn when(self, command: A::Command) -> Then<A> {
        let given = self.given.len();
        let stream = match A::stream_id(self.instance.clone()) {
            Ok(stream) => stream,
            Err(error) => return Then::failed_setup(given, None, "make the stream id", error),
        };
        let store = InMemoryStore::new();
        if let Err(error) = append_given::<A>(&store, &stream, &self.given).await {
            return Then::failed_setup(given, Some(stream), "store the given events", error);
        }
        let repository = Repository::<A, _>::with_services(store.clone(), self.services);
        let outcome = match repository.execute(&stream, command, &self.context).await {
            Ok(executed) => Outcome::Produced(executed.events),
            Err(CommandError::Rejected(error)) => Outcome::Refused(error),
            Err(other) => Outcome::Failed(describe(&other)),
        };
        let after_given = StreamVersion::new(given as u64 + 1).unwrap_or(StreamVersion::MAX);
        let recorded = read_from(&store, &stream, after_given).await;
        let state = repository
            .load(&stream)
            .await
            .ok()
            .map(|loaded| loaded.state);
        Then::new(stream, given, outcome, recorded, state)
    }

    /// [`AggregateTest::when`] for a synchronous `#[test]`: runs the command on a runtime of its
    /// own (current thread, with timers).
    ///
    /// Called from inside an async runtime (`#[tokio::test]`), where a nested runtime cannot
    /// block, it runs nothing and the `then_*` methods report that `.when(command).await` is
    /// the form to use there.
    ///
    /// ```
    /// use eventsource_core::testing::counter::{Counter, CounterEvent, Increment, Incremented};
    /// use eventsource_core::testkit::AggregateTest;
    ///
    /// AggregateTest::<Counter>::new()
    ///     .when_blocking(Increment(1))
    ///     .then_expect([CounterEvent::Incremented(Incremented { by: 1 })]);
    /// ```
    pub fn when_blocking(self, command: A::Command) -> Then<A> {
        let given = self.given.len();
        if tokio::runtime::Handle::try_current().is_ok() {
            return Then::failed_setup(
                given,
                None,
                "run the command",
                "when_blocking was called inside an async runtime; use `.when(command).await` there",
            );
        }
        match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(runtime) => runtime.block_on(self.when(command)),
            Err(error) => Then::failed_setup(given, None, "start a runtime", error),
        }
    }
}

/// Appends the given events in one append, each with empty metadata, to a new stream.
async fn append_given<A: Aggregate>(
    store: &InMemoryStore,
    stream: &StreamId,
    events: &[A::Event],
) -> Result<(), String> {
    if events.is_empty() {
        return Ok(());
    }
    let batch = events
        .iter()
        .map(|e| NewEvent::from_domain(e, EventMetadata::default()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| describe(&e))?;
    store
        .append(stream, ExpectedVersion::NoStream, batch)
        .await
        .map(|_| ())
        .map_err(|e| describe(&e))
}

/// The events stored in `stream` from version `from`.
async fn read_from(
    store: &InMemoryStore,
    stream: &StreamId,
    from: StreamVersion,
) -> Result<Vec<RecordedEvent>, StoreError> {
    use crate::event_store::StreamReader;
    store.read_stream(stream, from).try_collect().await
}

/// An error with its chain of sources, on one line.
pub(crate) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
