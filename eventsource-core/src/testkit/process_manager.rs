//! The process manager kit: given events and elapsed time, then expect commands and deadlines.

use std::collections::BTreeMap;
use std::fmt::{self, Debug};
use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;

use super::diff::ListDiff;
use crate::envelope::Envelope;
use crate::metadata::EventMetadata;
use crate::position::FeedPosition;
use crate::process_manager::{Decision, ProcessManager, Trigger};
use crate::stream_id::StreamId;
use crate::version::StreamVersion;

/// Drives a [`ProcessManager`]'s `decide` without a store or a clock: events go to the instance
/// [`ProcessManager::instance_of`] names, time passes on a virtual clock and fires the
/// deadlines that come due, in due order, and commands a rule says are refused go back into
/// `decide` as [`Trigger::Refused`], as the runner does. `execute` is never called.
///
/// The `then_*` assertions panic with a diff of expected against actual; their `check_*` twins
/// return the [`Mismatch`] instead.
///
/// ```
/// # use std::time::Duration;
/// # use async_trait::async_trait;
/// # use eventsource_core::*;
/// use eventsource_core::process_manager::{CommandFailure, Decision, ProcessManager, Trigger};
/// use eventsource_core::testkit::{envelope, ProcessManagerHarness};
/// # #[derive(Debug, Clone, PartialEq)] enum Task { Opened }
/// # impl DomainEvent for Task {
/// #     const EVENT_TYPES: &'static [&'static str] = &["TaskOpened"];
/// #     fn event_type(&self) -> &'static str { "TaskOpened" }
/// #     fn schema_version(&self) -> u32 { 1 }
/// #     fn encode(&self) -> Result<serde_json::Value, EncodeError> { Ok(serde_json::json!({})) }
/// #     fn decode(_: &str, _: u32, _: &serde_json::Value) -> Result<Self, DecodeError> { Ok(Task::Opened) }
/// # }
///
/// /// Reminds once, a minute after a task is opened.
/// struct Reminder;
///
/// #[async_trait]
/// impl ProcessManager for Reminder {
///     type Event = Envelope<Task>;
///     type State = ();
///     type Command = String;
///
///     fn name(&self) -> &str { "reminder" }
///
///     fn instance_of(&self, e: &Envelope<Task>) -> Option<String> {
///         Some(e.stream_id.id().to_owned())
///     }
///
///     fn decide(&self, _: &mut (), trigger: Trigger<'_, Envelope<Task>, String>) -> Decision<String> {
///         match trigger {
///             Trigger::Event(_) => Decision::new().set_deadline("remind", Duration::from_secs(60)),
///             Trigger::Deadline { .. } => Decision::new().command("remind".to_owned()).complete(),
///             Trigger::Refused { .. } => Decision::new(),
///         }
///     }
///
///     async fn execute(&self, _: &String, _: &CommandContext) -> Result<(), CommandFailure> {
///         Ok(())
///     }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// ProcessManagerHarness::new(Reminder)
///     .given([envelope(StreamId::new("task", "t-1")?, 1, Task::Opened)])
///     .then_no_commands()
///     .then_deadlines([("t-1", "remind", Duration::from_secs(60))])
///     .when_time_passes(Duration::from_secs(59))
///     .then_no_commands()
///     .when_time_passes(Duration::from_secs(1))
///     .then_commands(["remind".to_owned()])
///     .then_completed("t-1")
///     .then_no_deadlines();
/// # Ok(()) }
/// ```
pub struct ProcessManagerHarness<P: ProcessManager> {
    manager: P,
    instances: BTreeMap<String, Instance<P::State>>,
    /// The virtual clock, since the harness was made.
    now: Duration,
    /// Commands issued since the last `given`/`when` step began, in order.
    issued: Vec<P::Command>,
    #[allow(clippy::type_complexity)]
    refuse: Option<Box<dyn Fn(&P::Command) -> Option<String> + Send + Sync>>,
    max_refusals: u32,
}

struct Instance<S> {
    state: S,
    /// Deadline name -> due time on the virtual clock.
    deadlines: BTreeMap<String, Duration>,
    completed: bool,
}

impl<S: Default> Default for Instance<S> {
    fn default() -> Self {
        Self {
            state: S::default(),
            deadlines: BTreeMap::new(),
            completed: false,
        }
    }
}

/// What an expectation of the [`ProcessManagerHarness`] found instead: its `Display` is the
/// message the `then_*` assertions panic with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The process manager.
    pub manager: String,
    /// What was expected (`commands`, `deadlines`, ...).
    pub what: String,
    /// The diff, expected lines `-`, actual lines `+`.
    pub diff: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "process manager `{}`: the {} differ from the expected ones (- expected, + actual):\n{}",
            self.manager, self.what, self.diff
        )
    }
}

impl std::error::Error for Mismatch {}

/// An envelope for tests: `event` at `version` of `stream`, with a new event id, a correlation
/// id of its own and the current time.
pub fn envelope<E>(stream: StreamId, version: u64, event: E) -> Envelope<E> {
    let event_id = Uuid::now_v7();
    Envelope {
        event,
        event_id,
        stream_id: stream,
        version: StreamVersion::new(version).unwrap_or(StreamVersion::FIRST),
        position: FeedPosition::START,
        metadata: EventMetadata {
            correlation_id: Some(event_id),
            ..EventMetadata::default()
        },
        recorded_at: Utc::now(),
    }
}

impl<P: ProcessManager> ProcessManagerHarness<P> {
    /// A harness with no instances, at time zero, where every command is carried out.
    pub fn new(manager: P) -> Self {
        Self {
            manager,
            instances: BTreeMap::new(),
            now: Duration::ZERO,
            issued: Vec::new(),
            refuse: None,
            max_refusals: 8,
        }
    }

    /// Commands for which `rule` returns `Some(reason)` are refused with that reason, and fed
    /// back into `decide` (for the steps after this call).
    pub fn refusing(
        mut self,
        rule: impl Fn(&P::Command) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.refuse = Some(Box::new(rule));
        self
    }

    /// Handles `events` in order; the commands they lead to are what the next `then_commands`
    /// checks (each `given` and `when` step starts a new list).
    pub fn given(mut self, events: impl IntoIterator<Item = P::Event>) -> Self {
        self.issued.clear();
        for event in events {
            self.handle(&event);
        }
        self
    }

    /// Handles one event.
    pub fn when(self, event: P::Event) -> Self {
        self.given([event])
    }

    /// Moves the virtual clock on by `elapsed`, firing every deadline that comes due, in due
    /// order (ties by instance, then name).
    pub fn when_time_passes(mut self, elapsed: Duration) -> Self {
        self.issued.clear();
        let until = self.now.saturating_add(elapsed);
        loop {
            let next = self
                .instances
                .iter()
                .flat_map(|(instance, i)| {
                    i.deadlines
                        .iter()
                        .map(move |(name, due)| (*due, instance.clone(), name.clone()))
                })
                .filter(|(due, _, _)| *due <= until)
                .min();
            let Some((due, instance, name)) = next else {
                break;
            };
            self.now = self.now.max(due);
            let entry = self.instances.entry(instance.clone()).or_default();
            entry.deadlines.remove(&name);
            let decision = self
                .manager
                .decide(&mut entry.state, Trigger::Deadline { name: &name });
            self.apply(&instance, decision);
        }
        self.now = until;
        self
    }

    fn handle(&mut self, event: &P::Event) {
        let Some(instance) = self.manager.instance_of(event) else {
            return;
        };
        let entry = self.instances.entry(instance.clone()).or_default();
        if entry.completed {
            return;
        }
        let decision = self.manager.decide(&mut entry.state, Trigger::Event(event));
        self.apply(&instance, decision);
    }

    /// Applies a decision as the runner does: commands in order, a refusal stops the rest and
    /// is decided on, then deadlines and completion.
    fn apply(&mut self, instance: &str, decision: Decision<P::Command>) {
        let mut pending = Some(decision);
        let mut refusals = 0;
        while let Some(decision) = pending.take() {
            let entry = self.instances.entry(instance.to_owned()).or_default();
            for name in &decision.cancel_deadlines {
                entry.deadlines.remove(name);
            }
            for (name, after) in &decision.set_deadlines {
                entry
                    .deadlines
                    .insert(name.clone(), self.now.saturating_add(*after));
            }
            if decision.completed {
                entry.completed = true;
            }
            for command in decision.commands {
                self.issued.push(command.clone());
                let reason = self.refuse.as_ref().and_then(|rule| rule(&command));
                if let Some(reason) = reason {
                    refusals += 1;
                    assert!(
                        refusals <= self.max_refusals,
                        "process manager `{}`: more than {} refusals on one trigger; decide() keeps answering refusals with refused commands",
                        self.manager.name(),
                        self.max_refusals
                    );
                    let entry = self.instances.entry(instance.to_owned()).or_default();
                    pending = Some(self.manager.decide(
                        &mut entry.state,
                        Trigger::Refused {
                            command: &command,
                            reason: &reason,
                        },
                    ));
                    break;
                }
            }
        }
        let entry = self.instances.entry(instance.to_owned()).or_default();
        if entry.completed {
            entry.deadlines.clear();
        }
    }

    /// The commands issued by the last step, as the next `then_commands` sees them.
    pub fn issued(&self) -> &[P::Command] {
        &self.issued
    }

    /// The state of `instance` (`None` if no event reached it).
    pub fn state(&self, instance: &str) -> Option<&P::State> {
        self.instances.get(instance).map(|i| &i.state)
    }

    /// Checks the commands the last step issued, in order.
    pub fn check_commands(
        &self,
        expected: impl IntoIterator<Item = P::Command>,
    ) -> Result<(), Mismatch> {
        let expected: Vec<P::Command> = expected.into_iter().collect();
        if expected == self.issued {
            return Ok(());
        }
        Err(self.mismatch("commands", &expected, &self.issued))
    }

    /// Asserts the commands the last step issued, in order.
    #[track_caller]
    pub fn then_commands(self, expected: impl IntoIterator<Item = P::Command>) -> Self {
        if let Err(mismatch) = self.check_commands(expected) {
            panic!("{mismatch}");
        }
        self
    }

    /// Asserts that the last step issued no command.
    #[track_caller]
    pub fn then_no_commands(self) -> Self {
        self.then_commands([])
    }

    /// Checks every pending deadline, as `(instance, name, due in)` from the virtual now.
    pub fn check_deadlines<'a>(
        &self,
        expected: impl IntoIterator<Item = (&'a str, &'a str, Duration)>,
    ) -> Result<(), Mismatch> {
        let mut expected: Vec<String> = expected
            .into_iter()
            .map(|(instance, name, due_in)| deadline_line(instance, name, due_in))
            .collect();
        expected.sort();
        let actual = self.deadline_lines();
        if expected == actual {
            return Ok(());
        }
        Err(self.mismatch("deadlines", &expected, &actual))
    }

    /// Asserts every pending deadline, as `(instance, name, due in)` from the virtual now.
    #[track_caller]
    pub fn then_deadlines<'a>(
        self,
        expected: impl IntoIterator<Item = (&'a str, &'a str, Duration)>,
    ) -> Self {
        if let Err(mismatch) = self.check_deadlines(expected) {
            panic!("{mismatch}");
        }
        self
    }

    /// Asserts that no deadline is pending.
    #[track_caller]
    pub fn then_no_deadlines(self) -> Self {
        self.then_deadlines([])
    }

    /// Asserts that `instance` is complete.
    #[track_caller]
    pub fn then_completed(self, instance: &str) -> Self {
        let completed = self.instances.get(instance).is_some_and(|i| i.completed);
        if !completed {
            let mismatch = self.mismatch(
                "completions",
                &[format!("{instance}: completed")],
                &[format!("{instance}: not completed")],
            );
            panic!("{mismatch}");
        }
        self
    }

    /// Asserts `instance`'s state (compared by its `Debug` text, so the state needs no
    /// `PartialEq`).
    #[track_caller]
    pub fn then_state(self, instance: &str, expected: &P::State) -> Self {
        let expected = pretty_lines(expected);
        let actual = self
            .state(instance)
            .map(pretty_lines)
            .unwrap_or_else(|| vec!["(no such instance)".to_owned()]);
        if expected != actual {
            panic!("{}", self.mismatch("states", &expected, &actual));
        }
        self
    }

    fn deadline_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .instances
            .iter()
            .flat_map(|(instance, i)| {
                i.deadlines.iter().map(move |(name, due)| {
                    deadline_line(instance, name, due.saturating_sub(self.now))
                })
            })
            .collect();
        lines.sort();
        lines
    }

    fn mismatch<T: Debug + PartialEq>(&self, what: &str, expected: &[T], actual: &[T]) -> Mismatch {
        Mismatch {
            manager: self.manager.name().to_owned(),
            what: what.to_owned(),
            diff: ListDiff::new(expected, actual).to_string(),
        }
    }
}

fn deadline_line(instance: &str, name: &str, due_in: Duration) -> String {
    format!("{instance}: {name} due in {due_in:?}")
}

fn pretty_lines<T: Debug>(value: &T) -> Vec<String> {
    format!("{value:#?}").lines().map(str::to_owned).collect()
}
