//! The process manager runner: a sink over the feed follower that drives each event and each
//! due deadline through the manager's decisions, and stores the instance's state with the
//! checkpoint (or the deadline's removal) in one transaction.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventsource_core::process_manager::{
    deadline_id, handle_trigger, Handled, ProcessManager, Trigger, TriggerLimits,
};
use eventsource_core::store::filter_for;
use eventsource_core::{
    CommandContext, FeedFollower, FeedItem, FeedOptions, FeedPosition, RecordedEvent,
};
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::deadlines::{self, Due};
use super::error::ProcessManagerError;
use super::instance::{self, Loaded};
use crate::projection::{checkpoint, dead_letters, FailurePolicy, OnFailure, RunnerState};
use crate::single_instance::{self, ActiveRole, Ended};
use crate::store::PostgresStore;

/// The kind of a process manager's lock (`eventsource.process-manager/<name>`).
const PROCESS_MANAGER: &str = "process-manager";

/// Due deadlines fired per round, before the runner reads the feed again.
const DEADLINES_PER_ROUND: i64 = 100;

/// The name of a process manager's checkpoint in `eventsource.checkpoints`, and the name its
/// parked events carry in `eventsource.dead_letters` (list them with
/// `projection::dead_letters::list(&store, &checkpoint_name(name))`).
pub fn checkpoint_name(manager: &str) -> String {
    format!("process-manager/{manager}")
}

/// How a process manager runner reads, retries and fails.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessManagerOptions {
    /// How the runner follows the feed. Its `filter` is ignored: the runner reads what
    /// [`ProcessManager::filter`] asks for.
    pub feed: FeedOptions,
    /// How often a standby tries to become active (default 1 s).
    pub standby_retry: Duration,
    /// Retries of a command that fails with `CommandFailure::Failed` (per command, with
    /// backoff), then what to do with the trigger: stop, or park it (an event as a dead letter
    /// in `eventsource.dead_letters`, a deadline as a parked deadline row).
    pub failure: FailurePolicy,
    /// Refusals fed back into `decide` per trigger before it counts as failed (default 8).
    pub max_refusals: u32,
}

impl Default for ProcessManagerOptions {
    fn default() -> Self {
        Self {
            feed: FeedOptions::default(),
            standby_retry: Duration::from_secs(1),
            failure: FailurePolicy::default(),
            max_refusals: 8,
        }
    }
}

/// A process manager runner's observable progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessManagerStatus {
    /// Where it is (the same states as a projection runner's).
    pub state: RunnerState,
    /// The checkpoint it last committed.
    pub position: FeedPosition,
    /// Events handled by an instance (stored with their effects) by this runner.
    pub events_handled: u64,
    /// Commands carried out or refused (re-issued ones after a restart counted again).
    pub commands_issued: u64,
    /// Deadlines fired.
    pub deadlines_fired: u64,
    /// Events and deadlines parked.
    pub parked: u64,
    /// Times this runner became the active one.
    pub activations: u64,
}

/// Runs one process manager: see the [module documentation](super).
pub struct ProcessManagerRunner<P> {
    store: PostgresStore,
    manager: Arc<P>,
    options: ProcessManagerOptions,
    status: watch::Sender<ProcessManagerStatus>,
}

impl<P: ProcessManager> ProcessManagerRunner<P> {
    /// A runner of `manager` on `store`, with default options.
    pub fn new(store: PostgresStore, manager: P) -> Self {
        Self::with_shared(store, Arc::new(manager))
    }

    /// A runner of a shared process manager.
    pub fn with_shared(store: PostgresStore, manager: Arc<P>) -> Self {
        let (status, _) = watch::channel(ProcessManagerStatus {
            state: RunnerState::Starting,
            position: FeedPosition::START,
            events_handled: 0,
            commands_issued: 0,
            deadlines_fired: 0,
            parked: 0,
            activations: 0,
        });
        Self {
            store,
            manager,
            options: ProcessManagerOptions::default(),
            status,
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: ProcessManagerOptions) -> Self {
        self.options = options;
        self
    }

    /// The process manager it runs.
    pub fn manager(&self) -> &P {
        &self.manager
    }

    /// Watches the runner's status.
    pub fn status(&self) -> watch::Receiver<ProcessManagerStatus> {
        self.status.subscribe()
    }

    /// Waits until this runner (running in another task) has handled every event committed
    /// before the call, and returns its checkpoint; fails if it stops first. Deadlines are not
    /// waited for.
    pub async fn wait_until_caught_up(&self) -> Result<FeedPosition, ProcessManagerError> {
        let head = self
            .store
            .head_position()
            .await?
            .unwrap_or(FeedPosition::START);
        let mut status = self.status.subscribe();
        let done = |s: &ProcessManagerStatus| {
            s.position >= head || matches!(s.state, RunnerState::Stopped | RunnerState::Failed)
        };
        let position = match status.wait_for(done).await {
            Ok(now) => now.position,
            Err(_) => FeedPosition::START,
        };
        if position >= head {
            Ok(position)
        } else {
            Err(self.misconfigured("the runner stopped before it caught up"))
        }
    }

    /// Runs until `shutdown` is cancelled (then `Ok`) or the failure policy stops it.
    ///
    /// One runner of a manager is active across processes (the lock `process-manager/<name>`,
    /// through the same standby/active cycle as projection runners and relays); the others
    /// stand by and take over from the checkpoint, with every instance's state and pending
    /// deadlines, when it dies or loses its connection.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), ProcessManagerError> {
        if self.manager.name().is_empty() {
            return Err(self.misconfigured(
                "the process manager's name is empty; give it a name unique in the database",
            ));
        }
        if self.options.feed.batch().check().is_err() {
            return Err(self.misconfigured(
                "ProcessManagerOptions::feed allows 0 events or 0 bytes per batch; use at least 1",
            ));
        }
        let ended = single_instance::run(
            &self.store,
            PROCESS_MANAGER,
            self.manager.name(),
            self.options.standby_retry,
            &shutdown,
            self,
        )
        .await?;
        if ended == Ended::Finished {
            self.set_state(RunnerState::Stopped);
        }
        Ok(())
    }

    fn name(&self) -> &str {
        self.manager.name()
    }

    fn misconfigured(&self, problem: &str) -> ProcessManagerError {
        ProcessManagerError::Misconfigured {
            manager: self.name().to_owned(),
            problem: problem.to_owned(),
        }
    }

    fn set_state(&self, state: RunnerState) {
        self.status.send_modify(|s| s.state = state);
    }

    fn limits(&self) -> TriggerLimits {
        TriggerLimits {
            max_attempts: self.options.failure.max_attempts,
            backoff: self.options.failure.backoff,
            max_refusals: self.options.max_refusals,
        }
    }

    /// The checkpoint, created at the start of the feed on the first run.
    async fn ensure_checkpoint(
        &self,
        conn: &mut PgConnection,
    ) -> Result<FeedPosition, ProcessManagerError> {
        let name = checkpoint_name(self.name());
        let db = |op| move |e| ProcessManagerError::database(self.name(), op, e);
        let mut tx = conn.begin().await.map_err(db("begin setup"))?;
        let found = checkpoint::read_for_update(&mut tx, &name, &name).await?;
        let position = match found {
            Some(position) => position,
            None => {
                checkpoint::write(&mut tx, &name, &name, FeedPosition::START).await?;
                FeedPosition::START
            }
        };
        tx.commit().await.map_err(db("commit setup"))?;
        Ok(position)
    }

    /// Handles one batch: each event that belongs to an instance in its own transaction (after
    /// its commands), then the checkpoint past the rest. Returns the new checkpoint.
    async fn handle_batch(
        &self,
        conn: &mut PgConnection,
        mut position: FeedPosition,
        events: &[RecordedEvent],
        next: FeedPosition,
    ) -> Result<FeedPosition, ProcessManagerError> {
        let items = match P::Event::view(events) {
            Ok(items) => items,
            Err((index, error)) => {
                // Handle those before it, then the one that does not decode, then the rest.
                position =
                    Box::pin(self.handle_batch(conn, position, &events[..index], position)).await?;
                let event = &events[index];
                self.on_failure(conn, position, event, None, || {
                    ProcessManagerError::Undecodable {
                        manager: self.name().to_owned(),
                        source: error,
                    }
                })
                .await?;
                position = event.position;
                return Box::pin(self.handle_batch(conn, position, &events[index + 1..], next))
                    .await;
            }
        };
        for (event, item) in events.iter().zip(items.iter()) {
            if let Some(instance) = self.manager.instance_of(item) {
                self.handle_event(conn, position, event, item, &instance)
                    .await?;
                position = event.position;
            }
        }
        if position < next {
            self.move_checkpoint(conn, position, next).await?;
            position = next;
        }
        Ok(position)
    }

    /// One event of one instance: decide and carry out, then store the state, the deadlines
    /// and the checkpoint (`from` -> the event's position) in one transaction.
    async fn handle_event(
        &self,
        conn: &mut PgConnection,
        from: FeedPosition,
        event: &RecordedEvent,
        item: &P::Event,
        instance: &str,
    ) -> Result<(), ProcessManagerError> {
        let name = self.name();
        let loaded = instance::load::<P::State>(conn, name, instance).await?;
        let mut loaded = match loaded {
            Some(loaded) if loaded.completed => {
                // A complete instance ignores later events.
                return self.move_checkpoint(conn, from, event.position).await;
            }
            Some(loaded) => loaded,
            None => Loaded {
                state: P::State::default(),
                correlation_id: event.metadata.correlation_id.unwrap_or(event.event_id),
                completed: false,
            },
        };
        let base = CommandContext::caused_by(event).with_correlation_id(loaded.correlation_id);
        let handled = handle_trigger(
            &*self.manager,
            instance,
            &mut loaded.state,
            Trigger::Event(item),
            event.event_id,
            &base,
            self.limits(),
        )
        .await;
        let handled = match handled {
            Ok(handled) => handled,
            Err(source) => {
                let trigger = format!(
                    "event {} ({} at version {} of {})",
                    event.event_id, event.event_type, event.version, event.stream_id
                );
                let error = ProcessManagerError::TriggerFailed {
                    manager: name.to_owned(),
                    instance: instance.to_owned(),
                    trigger,
                    source: Box::new(source),
                };
                let attempts = self.options.failure.max_attempts;
                return self
                    .on_failure(conn, from, event, Some(attempts), || error)
                    .await;
            }
        };
        let db = |op| move |e| ProcessManagerError::database(name, op, e);
        let mut tx = conn
            .begin()
            .await
            .map_err(db("begin an instance's transaction"))?;
        let stored = async {
            self.check_checkpoint(&mut tx, from).await?;
            self.store_outcome(&mut tx, instance, &mut loaded, &handled, event.event_id)
                .await?;
            checkpoint::write(
                &mut tx,
                &checkpoint_name(name),
                &checkpoint_name(name),
                event.position,
            )
            .await?;
            Ok::<_, ProcessManagerError>(())
        }
        .await;
        match stored {
            Ok(()) => tx
                .commit()
                .await
                .map_err(db("commit an instance's transaction"))?,
            Err(error) => {
                let _ = tx.rollback().await;
                return Err(error);
            }
        }
        self.status.send_modify(|s| {
            s.events_handled += 1;
            s.commands_issued += handled.issued.len() as u64;
        });
        Ok(())
    }

    /// Writes what a trigger led to: the instance's state and completion, and its deadlines
    /// (cancelled, then set; all removed once it completes).
    async fn store_outcome(
        &self,
        tx: &mut PgConnection,
        instance: &str,
        loaded: &mut Loaded<P::State>,
        handled: &Handled<P::Command>,
        trigger_id: Uuid,
    ) -> Result<(), ProcessManagerError> {
        let name = self.name();
        loaded.completed |= handled.completed;
        instance::save(tx, name, instance, loaded).await?;
        if loaded.completed {
            return deadlines::cancel_all(tx, name, instance).await;
        }
        for deadline in &handled.cancel_deadlines {
            deadlines::cancel(tx, name, instance, deadline).await?;
        }
        for (deadline, after) in &handled.set_deadlines {
            let id = deadline_id(name, instance, trigger_id, deadline);
            deadlines::set(tx, name, instance, deadline, id, *after).await?;
        }
        Ok(())
    }

    /// Locks the checkpoint and checks it is still where this runner left it.
    async fn check_checkpoint(
        &self,
        tx: &mut PgConnection,
        from: FeedPosition,
    ) -> Result<(), ProcessManagerError> {
        let name = checkpoint_name(self.name());
        let found = checkpoint::read_for_update(tx, &name, &name).await?;
        if found != Some(from) {
            return Err(ProcessManagerError::CheckpointMoved {
                manager: self.name().to_owned(),
                expected: from,
                found: found.unwrap_or(FeedPosition::START),
            });
        }
        Ok(())
    }

    /// Moves the checkpoint from `from` to `next` (events no instance wanted).
    async fn move_checkpoint(
        &self,
        conn: &mut PgConnection,
        from: FeedPosition,
        next: FeedPosition,
    ) -> Result<(), ProcessManagerError> {
        let name = self.name();
        let db = |op| move |e| ProcessManagerError::database(name, op, e);
        let mut tx = conn
            .begin()
            .await
            .map_err(db("begin moving the checkpoint"))?;
        let moved = async {
            self.check_checkpoint(&mut tx, from).await?;
            checkpoint::write(
                &mut tx,
                &checkpoint_name(name),
                &checkpoint_name(name),
                next,
            )
            .await?;
            Ok::<_, ProcessManagerError>(())
        }
        .await;
        match moved {
            Ok(()) => tx
                .commit()
                .await
                .map_err(db("commit moving the checkpoint")),
            Err(error) => {
                let _ = tx.rollback().await;
                Err(error)
            }
        }
    }

    /// An event's trigger failed for good: stop with `error`, or park the event as a dead
    /// letter and move the checkpoint past it (the projection's dead letters, under the
    /// manager's checkpoint name).
    async fn on_failure(
        &self,
        conn: &mut PgConnection,
        from: FeedPosition,
        event: &RecordedEvent,
        attempts: Option<u32>,
        error: impl FnOnce() -> ProcessManagerError,
    ) -> Result<(), ProcessManagerError> {
        let error = error();
        match self.options.failure.on_failure {
            OnFailure::Stop => Err(error),
            OnFailure::DeadLetter => {
                tracing::error!(manager = self.name(), stream = %event.stream_id, version = %event.version, %error, "parking the event as a dead letter");
                let text = error_chain(&error);
                let name = checkpoint_name(self.name());
                dead_letters::park(conn, &name, from, event, &text, attempts.unwrap_or(1)).await?;
                self.status.send_modify(|s| s.parked += 1);
                Ok(())
            }
        }
    }

    /// Fires every due deadline, each in its own transaction; returns how many fired.
    async fn fire_due_deadlines(
        &self,
        conn: &mut PgConnection,
        shutdown: &CancellationToken,
    ) -> Result<(), ProcessManagerError> {
        loop {
            let due = deadlines::due(conn, self.name(), DEADLINES_PER_ROUND).await?;
            let full = due.len() as i64 == DEADLINES_PER_ROUND;
            for deadline in &due {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                self.fire(conn, deadline).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Fires one deadline: decide and carry out, then remove its row and store the state and
    /// deadlines in one transaction (if that transaction does not commit, the deadline fires
    /// again, with the same command ids).
    async fn fire(&self, conn: &mut PgConnection, due: &Due) -> Result<(), ProcessManagerError> {
        let name = self.name();
        let db = |op| move |e| ProcessManagerError::database(name, op, e);
        let loaded = instance::load::<P::State>(conn, name, &due.instance).await?;
        let Some(mut loaded) = loaded.filter(|l| !l.completed) else {
            // No instance, or a complete one: nothing to decide; the row goes.
            let mut tx = conn
                .begin()
                .await
                .map_err(db("begin removing a deadline"))?;
            deadlines::take(&mut tx, name, due).await?;
            return tx.commit().await.map_err(db("commit removing a deadline"));
        };
        let base = CommandContext::new().with_correlation_id(loaded.correlation_id);
        let handled = handle_trigger(
            &*self.manager,
            &due.instance,
            &mut loaded.state,
            Trigger::Deadline { name: &due.name },
            due.id,
            &base,
            self.limits(),
        )
        .await;
        let handled = match handled {
            Ok(handled) => handled,
            Err(source) => {
                let error = ProcessManagerError::TriggerFailed {
                    manager: name.to_owned(),
                    instance: due.instance.clone(),
                    trigger: format!("deadline `{}` ({})", due.name, due.id),
                    source: Box::new(source),
                };
                return match self.options.failure.on_failure {
                    OnFailure::Stop => Err(error),
                    OnFailure::DeadLetter => {
                        tracing::error!(manager = name, instance = %due.instance, deadline = %due.name, %error, "parking the deadline");
                        deadlines::park(conn, name, due, &error_chain(&error)).await?;
                        self.status.send_modify(|s| s.parked += 1);
                        Ok(())
                    }
                };
            }
        };
        let mut tx = conn.begin().await.map_err(db("begin firing a deadline"))?;
        let stored = async {
            if !deadlines::take(&mut tx, name, due).await? {
                return Ok(false);
            }
            self.store_outcome(&mut tx, &due.instance, &mut loaded, &handled, due.id)
                .await?;
            Ok::<_, ProcessManagerError>(true)
        }
        .await;
        match stored {
            Ok(true) => tx.commit().await.map_err(db("commit firing a deadline"))?,
            Ok(false) => {
                // Moved or cancelled since it was read: its commands were idempotent no-ops
                // or will be re-decided by whoever moved it.
                let _ = tx.rollback().await;
                return Ok(());
            }
            Err(error) => {
                let _ = tx.rollback().await;
                return Err(error);
            }
        }
        self.status.send_modify(|s| {
            s.deadlines_fired += 1;
            s.commands_issued += handled.issued.len() as u64;
        });
        Ok(())
    }
}

/// An error with its sources, as stored with a parked trigger.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[async_trait]
impl<P: ProcessManager> ActiveRole for ProcessManagerRunner<P> {
    type Error = ProcessManagerError;

    async fn active(
        &self,
        conn: &mut PgConnection,
        shutdown: &CancellationToken,
    ) -> Result<(), ProcessManagerError> {
        let mut position = self.ensure_checkpoint(conn).await?;
        self.status.send_modify(|s| {
            s.position = position;
            s.state = RunnerState::CatchingUp;
        });
        let options = self
            .options
            .feed
            .clone()
            .with_filter(filter_for::<P::Event>(self.manager.filter()));
        let mut feed = FeedFollower::new(self.store.clone(), position, options);
        loop {
            self.fire_due_deadlines(conn, shutdown).await?;
            // Only the active runner sets deadlines (in its own transactions), so the next due
            // time read here stays right until the next batch is handled.
            let next_due = deadlines::next_due_in(conn, self.name()).await?;
            let deadline = async {
                match next_due {
                    Some(due) => tokio::time::sleep(due).await,
                    None => std::future::pending().await,
                }
            };
            let batch = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                batch = feed.next() => batch?,
                // The follower's read is cancel-safe: a deadline that comes due while it waits
                // at the head is fired, then the follower reads again from where it was.
                () = deadline => continue,
            };
            if !batch.events.is_empty() || batch.next != position {
                position = match self
                    .handle_batch(conn, position, &batch.events, batch.next)
                    .await
                {
                    Ok(position) => position,
                    Err(error) => {
                        // Whatever was stored before the failure is in the checkpoint: the
                        // next activation reads it again.
                        return Err(error);
                    }
                };
                self.status.send_modify(|s| s.position = position);
            }
            if batch.reached_head {
                self.set_state(RunnerState::Live);
            }
        }
    }

    fn lock_failed(&self, error: sqlx::Error) -> ProcessManagerError {
        ProcessManagerError::database(self.name(), "take the process manager's lock", error)
    }

    fn is_terminal(&self, error: &ProcessManagerError) -> bool {
        error.is_terminal()
    }

    fn set_state(&self, state: RunnerState) {
        ProcessManagerRunner::set_state(self, state);
    }

    fn activated(&self) {
        self.status.send_modify(|s| s.activations += 1);
    }
}
