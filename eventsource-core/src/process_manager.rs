//! Process managers (orchestrated sagas): coordinators that react to events, keep a state per
//! instance, and issue commands to aggregates, with compensation and deadlines.
//!
//! A [`ProcessManager`] is the pure part: which instance an event belongs to
//! ([`ProcessManager::instance_of`]), what to do next ([`ProcessManager::decide`], a pure
//! function of the instance's state and a [`Trigger`]), and how to carry out one of its
//! commands ([`ProcessManager::execute`], through the service's repositories). A runner (the
//! PostgreSQL one is `eventsource_postgres::process_manager::ProcessManagerRunner`) follows the
//! feed, keeps each instance's state and deadlines, and drives every trigger through
//! [`handle_trigger`]; the test kit (`testkit::ProcessManagerHarness`, feature `testing`) drives `decide`
//! alone, without a store.
//!
//! Exactly-once effects rest on three rules:
//! - `decide` is pure: the same state and trigger give the same [`Decision`];
//! - every command gets a deterministic id, [`command_id`] (manager, instance, trigger id, step),
//!   and runs under [`CommandContext::with_command_id`], so the repository recognises a command
//!   it already carried out and returns its first outcome without appending again;
//! - the runner stores the instance's new state together with its checkpoint (or the removal of
//!   the deadline that fired) only after every command of the trigger was carried out.
//!
//! A crash at any point re-runs the trigger from the old state: the same decisions, the same
//! command ids, no second effect.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::command_context::CommandContext;
use crate::envelope::FeedItem;
use crate::error::BoxError;
use crate::feed::FeedFilter;

/// A coordinator over several aggregates: see the [module documentation](self).
///
/// ```
/// use std::time::Duration;
/// use async_trait::async_trait;
/// use eventsource_core::process_manager::{CommandFailure, Decision, ProcessManager, Trigger};
/// use eventsource_core::{CommandContext, RecordedEvent};
///
/// /// Asks for payment when an order is confirmed, and cancels it if no payment comes in time.
/// struct Payments;
///
/// #[derive(Debug, Clone, PartialEq)]
/// enum Command { RequestPayment(String), CancelOrder(String) }
///
/// #[async_trait]
/// impl ProcessManager for Payments {
///     type Event = RecordedEvent;
///     type State = Option<String>; // the order id, once started
///     type Command = Command;
///
///     fn name(&self) -> &str { "payments" }
///
///     fn instance_of(&self, event: &RecordedEvent) -> Option<String> {
///         (event.stream_id.category().as_str() == "order").then(|| event.stream_id.id().to_owned())
///     }
///
///     fn decide(&self, state: &mut Option<String>, trigger: Trigger<'_, RecordedEvent, Command>) -> Decision<Command> {
///         match trigger {
///             Trigger::Event(e) if e.event_type == "OrderConfirmed" => {
///                 let order = e.stream_id.id().to_owned();
///                 *state = Some(order.clone());
///                 Decision::new()
///                     .command(Command::RequestPayment(order))
///                     .set_deadline("payment", Duration::from_secs(15 * 60))
///             }
///             Trigger::Event(e) if e.event_type == "PaymentCaptured" => {
///                 Decision::new().cancel_deadline("payment").complete()
///             }
///             Trigger::Deadline { .. } => match state.clone() {
///                 Some(order) => Decision::new().command(Command::CancelOrder(order)).complete(),
///                 None => Decision::new().complete(),
///             },
///             _ => Decision::new(),
///         }
///     }
///
///     async fn execute(&self, command: &Command, ctx: &CommandContext) -> Result<(), CommandFailure> {
///         // repository.execute(&stream, ..., ctx) in a real service
///         # let _ = (command, ctx);
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait ProcessManager: Send + Sync + 'static {
    /// The events it reacts to: `Envelope<E>` for a domain event enum (decoded; only `E`'s
    /// types are read; a process manager over several aggregates may declare its own enum of
    /// just the events it needs), or `RecordedEvent`.
    type Event: FeedItem;
    /// An instance's state, stored as JSON between triggers.
    type State: Default + Serialize + DeserializeOwned + Clone + Debug + Send + Sync;
    /// The commands it issues.
    type Command: Debug + Clone + PartialEq + Send + Sync;

    /// Its unique name: the key of its checkpoint, its lock, its instances and deadlines.
    fn name(&self) -> &str;

    /// Which events it wants (default: every event of [`ProcessManager::Event`]'s types).
    fn filter(&self) -> FeedFilter {
        FeedFilter::all()
    }

    /// The instance an event belongs to (such as the order id), or `None` when the event is
    /// not for this manager.
    fn instance_of(&self, event: &Self::Event) -> Option<String>;

    /// What to do on `trigger`, updating `state`. Must be pure (no clock, no I/O, no random):
    /// after a crash it runs again on the same state and trigger and must decide the same.
    fn decide(
        &self,
        state: &mut Self::State,
        trigger: Trigger<'_, Self::Event, Self::Command>,
    ) -> Decision<Self::Command>;

    /// Carries out one command through the service's repositories, with `ctx` as the command's
    /// context (pass it to `Repository::execute` as is: it holds the deterministic command id,
    /// the instance's correlation id and the trigger as a header).
    ///
    /// A domain refusal is [`CommandFailure::Refused`]: it goes back into
    /// [`ProcessManager::decide`] as [`Trigger::Refused`]. Anything else is
    /// [`CommandFailure::Failed`]: retried with backoff, then the runner's failure policy.
    async fn execute(
        &self,
        command: &Self::Command,
        ctx: &CommandContext,
    ) -> Result<(), CommandFailure>;
}

/// What a process manager instance reacts to.
#[derive(Debug)]
pub enum Trigger<'a, E, C> {
    /// An event of the feed that belongs to the instance.
    Event(&'a E),
    /// A deadline the instance set has come.
    Deadline {
        /// The deadline's name.
        name: &'a str,
    },
    /// A command it issued was refused by the aggregate: decide on compensation.
    Refused {
        /// The refused command.
        command: &'a C,
        /// The aggregate's reason.
        reason: &'a str,
    },
}

impl<E, C> Clone for Trigger<'_, E, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E, C> Copy for Trigger<'_, E, C> {}

/// What an instance decided: commands to issue (in order), deadlines to set or cancel, and
/// whether it is complete (a complete instance ignores later events and its deadlines are
/// cancelled).
///
/// ```
/// use std::time::Duration;
/// use eventsource_core::process_manager::Decision;
/// let d = Decision::new().command("reserve").set_deadline("payment", Duration::from_secs(2));
/// assert_eq!(d.commands, vec!["reserve"]);
/// assert!(!d.completed);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<C> {
    /// Commands to issue, in order.
    pub commands: Vec<C>,
    /// Deadlines to set (name, due after): setting a name again moves it.
    pub set_deadlines: Vec<(String, Duration)>,
    /// Deadlines to cancel, by name (unknown names are ignored).
    pub cancel_deadlines: Vec<String>,
    /// The instance is done.
    pub completed: bool,
}

impl<C> Default for Decision<C> {
    fn default() -> Self {
        Self {
            commands: Vec::new(),
            set_deadlines: Vec::new(),
            cancel_deadlines: Vec::new(),
            completed: false,
        }
    }
}

impl<C> Decision<C> {
    /// Nothing to do.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a command to issue.
    pub fn command(mut self, command: C) -> Self {
        self.commands.push(command);
        self
    }

    /// Sets (or moves) the deadline `name` to `after` from now.
    pub fn set_deadline(mut self, name: impl Into<String>, after: Duration) -> Self {
        self.set_deadlines.push((name.into(), after));
        self
    }

    /// Cancels the deadline `name`.
    pub fn cancel_deadline(mut self, name: impl Into<String>) -> Self {
        self.cancel_deadlines.push(name.into());
        self
    }

    /// Marks the instance complete.
    pub fn complete(mut self) -> Self {
        self.completed = true;
        self
    }

    /// Whether it decides nothing at all.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
            && self.set_deadlines.is_empty()
            && self.cancel_deadlines.is_empty()
            && !self.completed
    }
}

/// Why a command of a process manager was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum CommandFailure {
    /// The aggregate refused it (a domain rule): an input to the next decision, not a crash.
    #[error("refused: {0}")]
    Refused(String),
    /// It failed otherwise (store unavailable, a conflict that outlasted the retries...):
    /// retried with backoff, then the runner's failure policy.
    #[error("failed: {0}")]
    Failed(#[source] BoxError),
}

impl CommandFailure {
    /// A refusal, with the domain error's text as the reason.
    pub fn refused(reason: impl std::fmt::Display) -> Self {
        Self::Refused(reason.to_string())
    }

    /// A failure to retry.
    pub fn failed(error: impl Into<BoxError>) -> Self {
        Self::Failed(error.into())
    }
}

/// The namespace of process managers' command ids (UUID v5).
const COMMAND_NAMESPACE: Uuid = Uuid::from_u128(0x6a0c_51f2_1e7d_4c6b_9a53_2f4e_8d1b_7c90);

/// The deterministic id of the `step`-th command (counting from 0, refusals' compensations
/// included) that `manager`'s instance `instance` issues on the trigger `trigger` (an event id
/// or a deadline id).
///
/// ```
/// use eventsource_core::process_manager::command_id;
/// let trigger = uuid::Uuid::nil();
/// assert_eq!(command_id("fulfilment", "o-1", trigger, 0), command_id("fulfilment", "o-1", trigger, 0));
/// assert_ne!(command_id("fulfilment", "o-1", trigger, 0), command_id("fulfilment", "o-1", trigger, 1));
/// ```
pub fn command_id(manager: &str, instance: &str, trigger: Uuid, step: u32) -> Uuid {
    // Lengths first, so that no two (manager, instance) pairs give the same text.
    let name = format!(
        "command/{}/{manager}/{}/{instance}/{trigger}/{step}",
        manager.len(),
        instance.len()
    );
    Uuid::new_v5(&COMMAND_NAMESPACE, name.as_bytes())
}

/// The deterministic id of the deadline `name` of `manager`'s instance `instance`, as set on the
/// trigger `trigger`: a deadline set again by a re-run trigger keeps its id, and the commands
/// of its firing get ids derived from it.
pub fn deadline_id(manager: &str, instance: &str, trigger: Uuid, name: &str) -> Uuid {
    let text = format!(
        "deadline/{}/{manager}/{}/{instance}/{trigger}/{name}",
        manager.len(),
        instance.len()
    );
    Uuid::new_v5(&COMMAND_NAMESPACE, text.as_bytes())
}

/// The header naming the process manager on the events its commands produce.
pub const PROCESS_MANAGER_HEADER: &str = "process-manager";
/// The header holding the trigger's id (the event or deadline that caused the command) on the
/// events its commands produce; their causation id is the command id.
pub const TRIGGER_HEADER: &str = "trigger-id";

/// A command an instance issued, with how it went.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuedCommand<C> {
    /// The command.
    pub command: C,
    /// Its deterministic id (see [`command_id`]).
    pub command_id: Uuid,
    /// The trigger that caused it (event or deadline id).
    pub causation_id: Uuid,
    /// `Some(reason)` when the aggregate refused it.
    pub refused: Option<String>,
}

/// Everything one trigger led to: the commands issued (including compensations decided on
/// refusals) and the merged deadline changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled<C> {
    /// Commands in the order they were issued.
    pub issued: Vec<IssuedCommand<C>>,
    /// Deadlines to set, in order (a later entry for a name wins).
    pub set_deadlines: Vec<(String, Duration)>,
    /// Deadlines to cancel (applied before `set_deadlines`).
    pub cancel_deadlines: Vec<String>,
    /// Whether the instance is complete.
    pub completed: bool,
}

/// How [`handle_trigger`] retries and bounds a trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TriggerLimits {
    /// Attempts per command that fails with [`CommandFailure::Failed`] (at least 1).
    pub max_attempts: u32,
    /// The wait after the first failure, doubled after each further one.
    pub backoff: Duration,
    /// Refusals fed back into `decide` per trigger before the trigger fails: a decision that
    /// answers each refusal with another refused command would otherwise loop forever.
    pub max_refusals: u32,
}

impl Default for TriggerLimits {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Duration::from_millis(200),
            max_refusals: 8,
        }
    }
}

/// Why a trigger could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// A command kept failing.
    #[error("command {command_id} ({command}) failed {attempts} times: {source}")]
    CommandFailed {
        /// The command, as `Debug` text.
        command: String,
        /// Its id.
        command_id: Uuid,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        #[source]
        source: BoxError,
    },
    /// More refusals than [`TriggerLimits::max_refusals`]: the decisions answer refusals with
    /// commands that are refused again.
    #[error("{refusals} commands refused on one trigger (last: {last}); decide() keeps answering refusals with refused commands")]
    TooManyRefusals {
        /// Refusals counted.
        refusals: u32,
        /// The last reason.
        last: String,
    },
}

/// Drives one trigger of one instance: decides, carries out each command in order with its
/// deterministic id, feeds each refusal back into `decide` (its compensating commands are
/// issued next), and returns everything it led to. `state` is updated in place; the caller
/// stores it (with its checkpoint or the fired deadline's removal) only on `Ok`.
///
/// `base` is the context every command derives from: its correlation id (the instance's), actor
/// and headers; each command gets `with_command_id(command_id(..))` and the
/// [`TRIGGER_HEADER`] and [`PROCESS_MANAGER_HEADER`] headers.
///
/// Relies on `decide` being pure, and on the repository's idempotent command ids: then a re-run
/// after a crash part-way issues the same commands with the same ids, and the ones already
/// carried out are no-ops.
pub async fn handle_trigger<P: ProcessManager>(
    manager: &P,
    instance: &str,
    state: &mut P::State,
    trigger: Trigger<'_, P::Event, P::Command>,
    trigger_id: Uuid,
    base: &CommandContext,
    limits: TriggerLimits,
) -> Result<Handled<P::Command>, TriggerError> {
    let mut handled = Handled {
        issued: Vec::new(),
        set_deadlines: Vec::new(),
        cancel_deadlines: Vec::new(),
        completed: false,
    };
    let mut pending = manager.decide(state, trigger);
    let mut step: u32 = 0;
    let mut refusals: u32 = 0;
    loop {
        let decision = std::mem::take(&mut pending);
        merge(&mut handled, &decision);
        let mut refused = None;
        for command in decision.commands {
            let id = command_id(manager.name(), instance, trigger_id, step);
            step = step.saturating_add(1);
            let ctx = base
                .clone()
                .with_header(PROCESS_MANAGER_HEADER, manager.name())
                .with_header(TRIGGER_HEADER, trigger_id.to_string())
                .with_command_id(id);
            let outcome = execute_with_retries(manager, &command, id, &ctx, limits).await?;
            handled.issued.push(IssuedCommand {
                command: command.clone(),
                command_id: id,
                causation_id: trigger_id,
                refused: outcome.clone(),
            });
            if let Some(reason) = outcome {
                refused = Some((command, reason));
                // The rest of this decision's commands are dropped: the compensation decides
                // what comes next.
                break;
            }
        }
        let Some((command, reason)) = refused else {
            return Ok(handled);
        };
        refusals += 1;
        if refusals > limits.max_refusals {
            return Err(TriggerError::TooManyRefusals {
                refusals,
                last: reason,
            });
        }
        pending = manager.decide(
            state,
            Trigger::Refused {
                command: &command,
                reason: &reason,
            },
        );
    }
}

/// Carries out one command, retrying [`CommandFailure::Failed`]; `Ok(Some(reason))` when
/// refused.
async fn execute_with_retries<P: ProcessManager>(
    manager: &P,
    command: &P::Command,
    id: Uuid,
    ctx: &CommandContext,
    limits: TriggerLimits,
) -> Result<Option<String>, TriggerError> {
    let mut delay = limits.backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match manager.execute(command, ctx).await {
            Ok(()) => return Ok(None),
            Err(CommandFailure::Refused(reason)) => return Ok(Some(reason)),
            Err(CommandFailure::Failed(error)) if attempt >= limits.max_attempts.max(1) => {
                return Err(TriggerError::CommandFailed {
                    command: format!("{command:?}"),
                    command_id: id,
                    attempts: attempt,
                    source: error,
                });
            }
            Err(CommandFailure::Failed(error)) => {
                tracing::warn!(manager = manager.name(), command = ?command, %id, attempt, %error, "command failed; retrying");
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
            }
        }
    }
}

fn merge<C>(handled: &mut Handled<C>, decision: &Decision<C>) {
    for name in &decision.cancel_deadlines {
        handled.set_deadlines.retain(|(set, _)| set != name);
        handled.cancel_deadlines.push(name.clone());
    }
    handled
        .set_deadlines
        .extend(decision.set_deadlines.iter().cloned());
    handled.completed |= decision.completed;
}
