//! Process managers (sagas) on PostgreSQL: the runner of an
//! [`eventsource_core::process_manager::ProcessManager`].
//!
//! A [`ProcessManagerRunner`] is one more sink over the feed follower, run through the same
//! one-active-instance cycle as projection runners and relays (lock
//! `process-manager/<name>`), and a [`Component`](crate::Component) for the supervisor. For
//! each event an instance wants, the active runner:
//! 1. loads the instance's state (a row of `eventsource.process_manager_instances`);
//! 2. decides and carries out the commands, each with a deterministic command id (manager,
//!    instance, trigger id, step), the instance's correlation id, and the trigger's id as the
//!    `trigger-id` header; a refused command goes back into `decide` (bounded);
//! 3. stores the new state, the deadlines set or cancelled, and the checkpoint, in one
//!    transaction (on the connection that holds the lock, after checking that the checkpoint
//!    is where it left it).
//!
//! A crash anywhere before 3 commits re-runs the event from the old state: the same decisions,
//! the same command ids, and the repository's idempotent command ids make the commands already
//! carried out no-ops. The effects are exactly once; the calls to `execute` are at least once.
//!
//! Why the state is a row and not a stream: see [`instance`].
//!
//! Deadlines are rows of `eventsource.process_manager_deadlines` ([`deadlines`]), set and
//! cancelled in the instance's transaction. The active runner fires the due ones (it sleeps
//! until the next one while it waits for events), each in its own transaction that removes the
//! row: a deadline survives restarts and failover, and fires once.
//!
//! A command that fails (not a refusal) is retried with backoff (`FailurePolicy`, shared with
//! projections); then the runner stops, or parks the trigger: an event as a dead letter in
//! `eventsource.dead_letters` under the name [`checkpoint_name`], a deadline as a parked
//! deadline row.

pub mod deadlines;
mod error;
pub mod instance;
mod runner;

pub use deadlines::{deadlines, Deadline};
pub use error::ProcessManagerError;
pub use instance::{instance, instances, InstanceRecord};
pub use runner::{
    checkpoint_name, ProcessManagerOptions, ProcessManagerRunner, ProcessManagerStatus,
};
