//! Then: what came of an aggregate test's command, and the assertions over it.

use std::fmt::{Debug, Display};

use crate::aggregate::Aggregate;
use crate::event::RecordedEvent;
use crate::stream_id::StreamId;

use super::aggregate_test::describe;
use super::diff::{pretty, ListDiff, Listing};

/// What the command did.
pub(crate) enum Outcome<A: Aggregate> {
    /// The aggregate decided these events (possibly none) and they were stored.
    Produced(Vec<A::Event>),
    /// The aggregate refused the command.
    Refused(A::Error),
    /// The command did not get to a decision, or its events were not stored (the test's setup
    /// failed, or the repository did): the reason.
    Failed(String),
}

/// What came of an [`AggregateTest`](super::AggregateTest)'s command: check it with the
/// `then_*` methods, or read it with the accessors.
///
/// The `then_*` methods panic, like `assert_eq!`, with a message that shows the expected and
/// the actual events one per line (pretty `Debug`), the differing lines marked `-` (expected)
/// and `+` (produced), and the number of the first event that differs; the panic points at the
/// test's line. Each returns `&Self`, so that checks can be chained.
pub struct Then<A: Aggregate> {
    stream: Option<StreamId>,
    given: usize,
    outcome: Outcome<A>,
    recorded: Result<Vec<RecordedEvent>, String>,
    state: Option<A>,
}

impl<A: Aggregate> Then<A> {
    pub(crate) fn new(
        stream: StreamId,
        given: usize,
        outcome: Outcome<A>,
        recorded: Result<Vec<RecordedEvent>, crate::error::StoreError>,
        state: Option<A>,
    ) -> Self {
        Self {
            stream: Some(stream),
            given,
            outcome,
            recorded: recorded.map_err(|e| describe(&e)),
            state,
        }
    }

    /// A test whose setup failed before the command could run.
    pub(crate) fn failed_setup(
        given: usize,
        stream: Option<StreamId>,
        what: &str,
        error: impl Display,
    ) -> Self {
        Self {
            stream,
            given,
            outcome: Outcome::Failed(format!("could not {what}: {error}")),
            recorded: Ok(Vec::new()),
            state: None,
        }
    }

    /// Checks that the command produced exactly `expected`, in order (`[]` for none), and that
    /// they read back from the store as they were produced.
    ///
    /// ```
    /// # use eventsource_core::testing::counter::{Counter, CounterEvent, Increment, Incremented};
    /// # use eventsource_core::testkit::AggregateTest;
    /// AggregateTest::<Counter>::new()
    ///     .when_blocking(Increment(4))
    ///     .then_expect([CounterEvent::Incremented(Incremented { by: 4 })]);
    /// ```
    #[track_caller]
    pub fn then_expect(&self, expected: impl IntoIterator<Item = A::Event>) -> &Self
    where
        A::Event: Debug + PartialEq,
    {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match &self.outcome {
            Outcome::Produced(produced) => {
                let diff = ListDiff::new(&expected, produced);
                if !diff.is_same() {
                    self.fail(
                        "then_expect",
                        "the command produced other events than expected",
                        &format!(
                            "expected {}, produced {}; first difference at event {}\n(- expected, + produced)\n{diff}",
                            count(expected.len()),
                            produced.len(),
                            diff.first_difference().unwrap_or(0),
                        ),
                    );
                }
                self.check_read_back(produced);
            }
            Outcome::Refused(error) => self.fail(
                "then_expect",
                &format!(
                    "expected {}, but the command was refused",
                    count(expected.len())
                ),
                &format!(
                    "refused with: {error}\n{}\nexpected:\n{}",
                    pretty(error),
                    Listing::new(&expected)
                ),
            ),
            Outcome::Failed(reason) => self.fail_to_run("then_expect", reason),
        }
        self
    }

    /// Checks that the command was refused with an error for which `check` is true, typically
    /// `|error| matches!(error, OrderError::EmptyOrder)`.
    ///
    /// ```
    /// # use eventsource_core::testing::counter::{Counter, CounterEvent, Increment, Incremented, TooHigh};
    /// # use eventsource_core::testkit::AggregateTest;
    /// AggregateTest::<Counter>::new()
    ///     .given([CounterEvent::Incremented(Incremented { by: 1_000_000 })])
    ///     .when_blocking(Increment(1))
    ///     .then_refuses(|error| matches!(error, TooHigh { .. }));
    /// ```
    #[track_caller]
    pub fn then_refuses(&self, check: impl FnOnce(&A::Error) -> bool) -> &Self
    where
        A::Event: Debug,
    {
        match &self.outcome {
            Outcome::Refused(error) if check(error) => {}
            Outcome::Refused(error) => self.fail(
                "then_refuses",
                "the command was refused, but not with the error expected",
                &format!("refused with: {error}\n{}", pretty(error)),
            ),
            Outcome::Produced(produced) => self.refusal_expected("then_refuses", produced),
            Outcome::Failed(reason) => self.fail_to_run("then_refuses", reason),
        }
        self
    }

    /// Checks that the command was refused with `expected` (compared with `==`).
    ///
    /// ```
    /// # use eventsource_core::testing::counter::{Counter, CounterEvent, Increment, Incremented, TooHigh};
    /// # use eventsource_core::testkit::AggregateTest;
    /// AggregateTest::<Counter>::new()
    ///     .given([CounterEvent::Incremented(Incremented { by: 1_000_000 })])
    ///     .when_blocking(Increment(1))
    ///     .then_refuses_with(TooHigh { max: Counter::MAX });
    /// ```
    #[track_caller]
    pub fn then_refuses_with(&self, expected: A::Error) -> &Self
    where
        A::Event: Debug,
        A::Error: PartialEq,
    {
        match &self.outcome {
            Outcome::Refused(error) if *error == expected => {}
            Outcome::Refused(error) => {
                let diff =
                    ListDiff::new(std::slice::from_ref(&expected), std::slice::from_ref(error));
                self.fail(
                    "then_refuses_with",
                    "the command was refused with another error than expected",
                    &format!(
                        "expected: {expected}\nrefused with: {error}\n(- expected, + refused with)\n{diff}"
                    ),
                )
            }
            Outcome::Produced(produced) => self.refusal_expected("then_refuses_with", produced),
            Outcome::Failed(reason) => self.fail_to_run("then_refuses_with", reason),
        }
        self
    }

    /// The events the command produced, or `None` if it was refused or did not run.
    pub fn events(&self) -> Option<&[A::Event]> {
        match &self.outcome {
            Outcome::Produced(events) => Some(events),
            _ => None,
        }
    }

    /// The aggregate's refusal, if it refused.
    pub fn error(&self) -> Option<&A::Error> {
        match &self.outcome {
            Outcome::Refused(error) => Some(error),
            _ => None,
        }
    }

    /// Why the command did not run (a failure of the test's setup or of the repository), if it
    /// did not.
    pub fn failure(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Failed(reason) => Some(reason),
            _ => None,
        }
    }

    /// The command's events as the store recorded them: ids, versions (after the given
    /// events'), positions and metadata (from the test's
    /// [`CommandContext`](crate::CommandContext)).
    ///
    /// ```
    /// # use eventsource_core::testing::counter::{Counter, Increment};
    /// # use eventsource_core::testkit::AggregateTest;
    /// use eventsource_core::CommandContext;
    ///
    /// let ctx = CommandContext::new().with_actor("alice");
    /// let then = AggregateTest::<Counter>::new().with_context(ctx.clone()).when_blocking(Increment(1));
    /// assert_eq!(then.recorded()[0].metadata, ctx.metadata());
    /// assert_eq!(then.recorded()[0].version.get(), 1);
    /// ```
    pub fn recorded(&self) -> &[RecordedEvent] {
        self.recorded.as_deref().unwrap_or_default()
    }

    /// The aggregate's state after the command (after the given events alone when it was
    /// refused), loaded from the store; `None` if the command did not run.
    pub fn state(&self) -> Option<&A> {
        self.state.as_ref()
    }

    /// The stream the test ran on (`None` if its id was refused).
    pub fn stream_id(&self) -> Option<&StreamId> {
        self.stream.as_ref()
    }

    /// Checks that the stored events decode into the events as produced: an encoding that
    /// loses or changes data would otherwise pass here and fail in production.
    #[track_caller]
    fn check_read_back(&self, produced: &[A::Event])
    where
        A::Event: Debug + PartialEq,
    {
        let read_back = match &self.recorded {
            Ok(recorded) => recorded
                .iter()
                .map(|e| e.decode::<A::Event>().map_err(|e| describe(&e)))
                .collect(),
            Err(error) => Err(error.clone()),
        };
        let read_back: Vec<A::Event> = match read_back {
            Ok(events) => events,
            Err(error) => self.fail(
                "then_expect",
                "the produced events do not read back from the store",
                &error,
            ),
        };
        let diff = ListDiff::new(produced, &read_back);
        if !diff.is_same() {
            self.fail(
                "then_expect",
                "the produced events do not read back unchanged from the store (check their encoding)",
                &format!("(- produced, + read back)\n{diff}"),
            );
        }
    }

    #[track_caller]
    fn refusal_expected(&self, method: &str, produced: &[A::Event]) -> !
    where
        A::Event: Debug,
    {
        let what = if produced.is_empty() {
            "expected a refusal, but the command succeeded and produced no events".to_owned()
        } else {
            format!(
                "expected a refusal, but the command produced {}",
                count(produced.len())
            )
        };
        self.fail(
            method,
            &what,
            &format!("produced:\n{}", Listing::new(produced)),
        );
    }

    #[track_caller]
    fn fail_to_run(&self, method: &str, reason: &str) -> ! {
        self.fail(method, "the command did not run", reason);
    }

    /// Panics with `<method>: <what>`, a line naming the stream and the given events, then
    /// `details`.
    #[track_caller]
    fn fail(&self, method: &str, what: &str, details: &str) -> ! {
        let stream = self
            .stream
            .as_ref()
            .map_or_else(|| "no stream".to_owned(), |s| format!("stream {s}"));
        panic!(
            "{method}: {what}\n{stream}, given {}\n{}",
            count(self.given),
            details.trim_end()
        );
    }
}

impl<A: Aggregate> Debug for Then<A>
where
    A::Event: Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = f.debug_struct("Then");
        s.field("stream", &self.stream).field("given", &self.given);
        match &self.outcome {
            Outcome::Produced(events) => s.field("produced", events),
            Outcome::Refused(error) => s.field("refused", error),
            Outcome::Failed(reason) => s.field("failed", reason),
        };
        s.finish_non_exhaustive()
    }
}

/// `1 event`, `2 events`.
fn count(n: usize) -> String {
    if n == 1 {
        "1 event".to_owned()
    } else {
        format!("{n} events")
    }
}
