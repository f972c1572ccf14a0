//! The projection runner: catch up from the checkpoint, follow the feed live, one active runner
//! per projection across processes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventsource_core::{
    BoxError, FeedBatch, FeedFollower, FeedItem, FeedOptions, FeedPosition, RecordedEvent,
    StoreError,
};
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::error::ProjectionError;
use super::scope::check_identifier;
use super::setup::install;
use super::setup_lock::setup_lock;
use super::{checkpoint, dead_letters, read_filter, registry, Projection};
use crate::single_instance::{self, ActiveRole, Ended};
use crate::store::PostgresStore;

/// The kind of a projection runner's lock (`eventsource.projection/<name>`).
pub(crate) const RUNNER: &str = "projection";

/// What the runner does when the handler keeps failing on an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Stop with [`ProjectionError::HandlerFailed`]; the checkpoint stays before the event.
    Stop,
    /// Park the event in `eventsource.dead_letters` with its error, move past it, go on.
    DeadLetter,
}

/// Bounded retries with exponential backoff, then [`OnFailure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailurePolicy {
    /// Attempts per batch (and per event, when the runner narrows a failing batch down), at
    /// least 1.
    pub max_attempts: u32,
    /// The wait after the first failure; doubled after each further one.
    pub backoff: Duration,
    /// What to do once the attempts are spent.
    pub on_failure: OnFailure,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Duration::from_millis(200),
            on_failure: OnFailure::Stop,
        }
    }
}

/// How a runner reads, waits and fails.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerOptions {
    /// How the runner follows the feed: events and bytes per batch and transaction, poll
    /// interval, holdup warnings, reconnect backoff. Its `filter` is ignored: the runner reads
    /// what [`Projection::filter`](super::Projection::filter) asks for.
    pub feed: FeedOptions,
    /// How often a standby tries to become active (default 1 s).
    pub standby_retry: Duration,
    /// What to do when the handler fails.
    pub failure: FailurePolicy,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            feed: FeedOptions::default(),
            standby_retry: Duration::from_secs(1),
            failure: FailurePolicy::default(),
        }
    }
}

/// Where a runner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerState {
    /// Not started.
    Starting,
    /// Another runner of the projection is active; this one waits to take over.
    Standby,
    /// Active, behind the head.
    CatchingUp,
    /// Active, at the head, following new events.
    Live,
    /// Shut down on request.
    Stopped,
    /// Stopped by an error.
    Failed,
}

/// A runner's observable progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerStatus {
    /// Where it is.
    pub state: RunnerState,
    /// The checkpoint it last committed.
    pub position: FeedPosition,
    /// Events applied by this runner.
    pub events_applied: u64,
    /// Events this runner parked as dead letters.
    pub dead_lettered: u64,
    /// Times this runner became the active one.
    pub activations: u64,
}

/// Runs one projection: see the [module documentation](super).
pub struct ProjectionRunner<P> {
    store: PostgresStore,
    projection: Arc<P>,
    options: RunnerOptions,
    status: watch::Sender<RunnerStatus>,
    instance: String,
}

/// Why an attempt at a batch failed.
enum BatchError {
    /// The handler failed (`retry`: retry, then apply the failure policy), or an event did not
    /// decode (no `retry`: it will not decode next time either).
    Handler { error: BoxError, retry: bool },
    /// The runner's own work failed (connection, checkpoint): give up being active.
    Runner(ProjectionError),
}

impl BatchError {
    /// The error of a batch without events, which runs no handler.
    fn without_handler(self) -> ProjectionError {
        match self {
            Self::Runner(error) => error,
            Self::Handler { error, .. } => ProjectionError::Store(StoreError::Corrupt {
                what: format!("a batch without events reported a handler error: {error}"),
            }),
        }
    }
}

impl<P: Projection> ProjectionRunner<P> {
    /// A runner of `projection` on `store`, with default options.
    pub fn new(store: PostgresStore, projection: P) -> Self {
        Self::with_shared(store, Arc::new(projection))
    }

    /// A runner of a shared projection.
    pub fn with_shared(store: PostgresStore, projection: Arc<P>) -> Self {
        let (status, _) = watch::channel(RunnerStatus {
            state: RunnerState::Starting,
            position: FeedPosition::START,
            events_applied: 0,
            dead_lettered: 0,
            activations: 0,
        });
        Self {
            store,
            projection,
            options: RunnerOptions::default(),
            status,
            instance: registry::default_instance(),
        }
    }

    /// Names this runner instance (default: host, process id and a random suffix), as other
    /// processes see it in [`active_runner`](super::active_runner).
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = instance.into();
        self
    }

    /// This runner instance's name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The projection this runner runs.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// Waits until this runner (running in another task) has applied every event up to
    /// `target` (its checkpoint is at or past it), and returns its checkpoint then.
    ///
    /// Fails with [`ProjectionError::RunnerEnded`] if the runner stops or fails first. While
    /// another process's runner is the active one, this runner's checkpoint does not move:
    /// wait on the active runner, or use [`lag_of`](super::lag::lag_of) from any process.
    pub async fn wait_until_applied(
        &self,
        target: FeedPosition,
    ) -> Result<FeedPosition, ProjectionError> {
        let mut status = self.status.subscribe();
        let done = |s: &RunnerStatus| {
            s.position >= target || matches!(s.state, RunnerState::Stopped | RunnerState::Failed)
        };
        // The sender is this runner's own, so the watch cannot close while `self` is borrowed.
        let (state, position) = match status.wait_for(done).await {
            Ok(now) => (now.state, now.position),
            Err(_) => (RunnerState::Stopped, FeedPosition::START),
        };
        if position >= target {
            Ok(position)
        } else {
            Err(self.ended(state, target))
        }
    }

    /// Waits until this runner (running in another task) has applied every event committed
    /// before the call; see [`ProjectionRunner::wait_until_applied`].
    pub async fn wait_until_caught_up(&self) -> Result<FeedPosition, ProjectionError> {
        let head = self
            .store
            .head_position()
            .await?
            .unwrap_or(FeedPosition::START);
        self.wait_until_applied(head).await
    }

    fn ended(&self, state: RunnerState, target: FeedPosition) -> ProjectionError {
        ProjectionError::RunnerEnded {
            projection: self.projection.name().to_owned(),
            state,
            target,
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: RunnerOptions) -> Self {
        self.options = options;
        self
    }

    /// Watches the runner's status.
    pub fn status(&self) -> watch::Receiver<RunnerStatus> {
        self.status.subscribe()
    }

    /// Runs until `shutdown` is cancelled (then `Ok`) or the failure policy stops it.
    ///
    /// While another runner of the same projection is active anywhere, this one stands by and
    /// retries every `standby_retry`; when the active one dies or loses its connection, one
    /// standby takes over from the checkpoint. Losing its own connection sends a runner back to
    /// standby. On shutdown the batch in hand is finished (or rolled back), never half-applied.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), ProjectionError> {
        self.run_inner(shutdown, None).await
    }

    /// Waits to become active, applies every event committed before the call, and returns the
    /// checkpoint (for tools and tests: the read model then reflects everything committed
    /// before the call). If such an event waits behind a write transaction still open on the
    /// server, this waits for that transaction too.
    pub async fn run_until_caught_up(&self) -> Result<FeedPosition, ProjectionError> {
        let target = self
            .store
            .head_position()
            .await?
            .unwrap_or(FeedPosition::START);
        self.run_inner(CancellationToken::new(), Some(target))
            .await?;
        Ok(self.status.borrow().position)
    }

    /// Runs until shutdown, or (with `stop_at`) until the checkpoint has reached `stop_at`.
    async fn run_inner(
        &self,
        shutdown: CancellationToken,
        stop_at: Option<FeedPosition>,
    ) -> Result<(), ProjectionError> {
        let name = self.projection.name();
        check_identifier(name, "schema", self.projection.schema())?;
        for table in self.projection.tables() {
            check_identifier(name, "table", table)?;
        }
        if self.options.feed.batch().check().is_err() {
            return Err(ProjectionError::misconfigured(
                name,
                "RunnerOptions::feed allows 0 events or 0 bytes per batch; use at least 1",
            ));
        }
        let role = ActiveProjection {
            runner: self,
            stop_at,
        };
        let ended = single_instance::run(
            &self.store,
            RUNNER,
            name,
            self.options.standby_retry,
            &shutdown,
            &role,
        )
        .await?;
        if ended == Ended::Finished {
            self.set_state(if stop_at.is_some() {
                RunnerState::Live
            } else {
                RunnerState::Stopped
            });
        }
        Ok(())
    }

    /// The active role, on the connection holding the projection's lock.
    async fn active(
        &self,
        conn: &mut PgConnection,
        shutdown: &CancellationToken,
        stop_at: Option<FeedPosition>,
    ) -> Result<(), ProjectionError> {
        let mut position = self.ensure_setup(conn).await?;
        registry::register(
            conn,
            self.projection.name(),
            &read_filter(&*self.projection),
            &self.instance,
        )
        .await?;
        self.status.send_modify(|s| {
            s.position = position;
            s.state = RunnerState::CatchingUp;
        });
        let options = self
            .options
            .feed
            .clone()
            .with_filter(read_filter(&*self.projection));
        let mut feed = FeedFollower::new(self.store.clone(), position, options);
        loop {
            let batch = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                batch = feed.next() => batch?,
            };
            let moved = if !batch.events.is_empty() {
                self.apply_batch(conn, position, &batch).await
            } else if batch.next != position {
                // Only unwanted events: move the checkpoint past them.
                self.move_checkpoint(conn, position, batch.next)
                    .await
                    .map(|()| batch.next)
            } else {
                Ok(position)
            };
            position = match moved {
                Ok(position) => position,
                // This runner holds the projection's lock, so only a rebuild's swap (or an
                // operator) moved the checkpoint: the tables now match the new one.
                Err(ProjectionError::CheckpointMoved { found, .. }) => {
                    tracing::info!(projection = self.projection.name(), from = %found, "the checkpoint was moved (a rebuild swapped its tables in); continuing from it");
                    feed.seek(found);
                    found
                }
                Err(error) => return Err(error),
            };
            self.status.send_modify(|s| s.position = position);
            if batch.reached_head {
                self.set_state(RunnerState::Live);
                if stop_at.is_some_and(|target| position >= target) {
                    return Ok(());
                }
            }
        }
    }

    /// Creates the read model and the checkpoint on the first run; returns the checkpoint.
    async fn ensure_setup(&self, conn: &mut PgConnection) -> Result<FeedPosition, ProjectionError> {
        let name = self.projection.name();
        let db = |op: &'static str| move |e| ProjectionError::database(name, op, e);
        let mut tx = conn.begin().await.map_err(db("begin setup"))?;
        // Serializes concurrent first starts (and a rebuild's swap): the second waits here,
        // then finds the row.
        setup_lock(&mut tx, name).await?;
        if let Some(position) = checkpoint::read_for_update(&mut tx, name, name).await? {
            tx.commit().await.map_err(db("commit setup"))?;
            return Ok(position);
        }
        let schema = self.projection.schema();
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .execute(&mut *tx)
            .await
            .map_err(db("create the projection's schema"))?;
        install(&*self.projection, &mut tx, schema, name).await?;
        tx.commit().await.map_err(db("commit setup"))?;
        Ok(FeedPosition::START)
    }

    /// Applies a batch in one transaction, with retries; when it keeps failing, narrows it down
    /// event by event and applies the failure policy to the event that fails. Returns the new
    /// checkpoint.
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        from: FeedPosition,
        batch: &FeedBatch,
    ) -> Result<FeedPosition, ProjectionError> {
        match self
            .with_retries(conn, from, &batch.events, batch.next)
            .await?
        {
            None => return Ok(batch.next),
            Some(_) if batch.events.len() == 1 => {}
            Some(_) => tracing::warn!(
                projection = self.projection.name(),
                events = batch.events.len(),
                "batch keeps failing; applying its events one by one to find the failing one"
            ),
        }
        let mut position = from;
        for event in &batch.events {
            if let Some((error, attempts)) = self
                .with_retries(conn, position, std::slice::from_ref(event), event.position)
                .await?
            {
                self.on_failure(conn, position, event, error, attempts)
                    .await?;
            }
            position = event.position;
        }
        if position != batch.next {
            self.move_checkpoint(conn, position, batch.next).await?;
        }
        Ok(batch.next)
    }

    /// Tries `events` up to `max_attempts` times (once when an event does not decode);
    /// `Some((last error, attempts))` if the handler never succeeded.
    async fn with_retries(
        &self,
        conn: &mut PgConnection,
        from: FeedPosition,
        events: &[RecordedEvent],
        next: FeedPosition,
    ) -> Result<Option<(BoxError, u32)>, ProjectionError> {
        let policy = self.options.failure;
        let mut delay = policy.backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.commit_events(conn, from, events, next).await {
                Ok(()) => {
                    self.status
                        .send_modify(|s| s.events_applied += events.len() as u64);
                    return Ok(None);
                }
                Err(BatchError::Runner(error)) => return Err(error),
                Err(BatchError::Handler { error, retry })
                    if !retry || attempt >= policy.max_attempts.max(1) =>
                {
                    return Ok(Some((error, attempt)));
                }
                Err(BatchError::Handler { error, .. }) => {
                    tracing::warn!(projection = self.projection.name(), attempt, %error, "handler failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                }
            }
        }
    }

    /// One transaction: check the checkpoint is still `from`, run the handler, move the
    /// checkpoint to `next`, commit.
    async fn commit_events(
        &self,
        conn: &mut PgConnection,
        from: FeedPosition,
        events: &[RecordedEvent],
        next: FeedPosition,
    ) -> Result<(), BatchError> {
        let name = self.projection.name();
        let runner =
            |op: &'static str| move |e| BatchError::Runner(ProjectionError::database(name, op, e));
        let span = tracing::info_span!("projection_batch", projection = name, events = events.len(), from = %from, to = %next);
        async {
            let mut tx = conn.begin().await.map_err(runner("begin a batch"))?;
            match self.fill_batch(&mut tx, from, events, next).await {
                Ok(()) => tx.commit().await.map_err(runner("commit a batch")),
                Err(error) => {
                    // Rolled back now, not when the connection is next used: the transaction
                    // holds a transaction id (from the checkpoint row lock), which would hold
                    // the feed back, and this runner's next read with it.
                    let _ = tx.rollback().await;
                    Err(error)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// The statements of one batch in `tx`: lock the checkpoint and check it is still `from`,
    /// run the handler, move the checkpoint to `next`.
    async fn fill_batch(
        &self,
        tx: &mut PgConnection,
        from: FeedPosition,
        events: &[RecordedEvent],
        next: FeedPosition,
    ) -> Result<(), BatchError> {
        let name = self.projection.name();
        let found = checkpoint::lock_in_schema(tx, name, name, self.projection.schema())
            .await
            .map_err(BatchError::Runner)?;
        let Some(found) = found else {
            return Err(BatchError::Runner(ProjectionError::CheckpointMissing {
                projection: name.to_owned(),
            }));
        };
        if found != from {
            return Err(BatchError::Runner(ProjectionError::CheckpointMoved {
                projection: name.to_owned(),
                expected: from,
                found,
            }));
        }
        if !events.is_empty() {
            let items = P::Event::view(events).map_err(|(_, error)| BatchError::Handler {
                error,
                retry: false,
            })?;
            self.projection
                .handle(tx, &items)
                .await
                .map_err(|e| BatchError::Handler {
                    error: e.into(),
                    retry: true,
                })?;
        }
        checkpoint::write(tx, name, name, next)
            .await
            .map_err(BatchError::Runner)
    }

    /// Moves the checkpoint from `from` to `next` without running the handler.
    async fn move_checkpoint(
        &self,
        conn: &mut PgConnection,
        from: FeedPosition,
        next: FeedPosition,
    ) -> Result<(), ProjectionError> {
        self.commit_events(conn, from, &[], next)
            .await
            .map_err(BatchError::without_handler)
    }

    /// The handler failed on `event` every time: stop, or park it and move past it.
    async fn on_failure(
        &self,
        conn: &mut PgConnection,
        from: FeedPosition,
        event: &RecordedEvent,
        error: BoxError,
        attempts: u32,
    ) -> Result<(), ProjectionError> {
        let name = self.projection.name();
        match self.options.failure.on_failure {
            OnFailure::Stop => Err(ProjectionError::handler_failed(
                name, event, attempts, error,
            )),
            OnFailure::DeadLetter => {
                tracing::error!(projection = name, stream = %event.stream_id, version = %event.version, %error, "parking event as a dead letter");
                dead_letters::park(conn, name, from, event, &error.to_string(), attempts).await?;
                self.status.send_modify(|s| s.dead_lettered += 1);
                Ok(())
            }
        }
    }

    fn set_state(&self, state: RunnerState) {
        self.status.send_modify(|s| s.state = state);
    }
}

/// A runner's active role, until shutdown or (with `stop_at`) until its checkpoint reaches it.
struct ActiveProjection<'a, P> {
    runner: &'a ProjectionRunner<P>,
    stop_at: Option<FeedPosition>,
}

#[async_trait]
impl<P: Projection> ActiveRole for ActiveProjection<'_, P> {
    type Error = ProjectionError;

    async fn active(
        &self,
        conn: &mut PgConnection,
        shutdown: &CancellationToken,
    ) -> Result<(), ProjectionError> {
        self.runner.active(conn, shutdown, self.stop_at).await
    }

    fn lock_failed(&self, error: sqlx::Error) -> ProjectionError {
        ProjectionError::database(
            self.runner.projection.name(),
            "take the projection's runner lock",
            error,
        )
    }

    fn is_terminal(&self, error: &ProjectionError) -> bool {
        is_terminal(error)
    }

    fn set_state(&self, state: RunnerState) {
        self.runner.set_state(state);
    }

    fn activated(&self) {
        self.runner.status.send_modify(|s| s.activations += 1);
    }
}

/// Errors that stop a runner for good, because retrying cannot clear them (the others, such as
/// a lost connection, send it back to standby).
fn is_terminal(error: &ProjectionError) -> bool {
    matches!(
        error,
        ProjectionError::HandlerFailed { .. }
            | ProjectionError::SetupFailed { .. }
            | ProjectionError::Misconfigured { .. }
            | ProjectionError::CheckpointMissing { .. }
            | ProjectionError::Store(
                StoreError::Invalid(_)
                    | StoreError::Decode { .. }
                    | StoreError::Corrupt { .. }
                    | StoreError::TransactionIdsWentBackwards { .. }
            )
    )
}
