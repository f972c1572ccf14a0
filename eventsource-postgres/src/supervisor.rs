//! The supervisor: several long-running components (projection runners today; relays and
//! process managers later) under one shutdown token, with one status view, and restarts with
//! backoff for a component that fails.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use eventsource_core::process_manager::ProcessManager;
use eventsource_core::{BoxError, FeedPosition};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::process_manager::ProcessManagerRunner;
use crate::projection::{Projection, ProjectionRunner, RunnerState};
use crate::relay::{Mapping, Publisher, Relay};

/// A long-running part of a service that a [`Supervisor`] starts, watches and restarts.
///
/// [`ProjectionRunner`] implements it; implement it for anything else that follows the feed
/// until shutdown.
///
/// ```
/// use async_trait::async_trait;
/// use eventsource_core::BoxError;
/// use eventsource_postgres::Component;
/// use tokio_util::sync::CancellationToken;
///
/// /// Logs a heartbeat every minute until shutdown.
/// struct Heartbeat;
///
/// #[async_trait]
/// impl Component for Heartbeat {
///     fn name(&self) -> String {
///         "heartbeat".into()
///     }
///
///     async fn run(&self, shutdown: CancellationToken) -> Result<(), BoxError> {
///         loop {
///             tokio::select! {
///                 () = shutdown.cancelled() => return Ok(()),
///                 () = tokio::time::sleep(std::time::Duration::from_secs(60)) => {
///                     tracing::info!("still here");
///                 }
///             }
///         }
///     }
/// }
/// ```
#[async_trait]
pub trait Component: Send + Sync + 'static {
    /// The name it is shown and logged under; unique within a supervisor.
    fn name(&self) -> String;

    /// Runs until `shutdown` is cancelled, then finishes the work in hand and returns `Ok`.
    ///
    /// An `Err` (or a panic) makes the supervisor run it again after a backoff; an `Ok` before
    /// shutdown means it is finished and it is not run again. The supervisor may call `run`
    /// again on the same value after an error, never twice at once.
    async fn run(&self, shutdown: CancellationToken) -> Result<(), BoxError>;

    /// What it says about itself now (default: [`ComponentProgress::default`], plain
    /// "running"). Called by [`Supervisor::status`], so it must be quick and must not block.
    fn progress(&self) -> ComponentProgress {
        ComponentProgress::default()
    }
}

/// Where a supervised component is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ComponentState {
    /// The supervisor has not started it yet.
    NotStarted,
    /// Started, not yet working (a runner before it tries to become active).
    Starting,
    /// Another process runs the same work; this one waits to take over.
    Standby,
    /// Active, behind the head of the feed.
    CatchingUp,
    /// Active, at the head, following new events.
    Live,
    /// Running (a component that reports nothing finer).
    Running,
    /// Its `run` failed; waiting out the backoff before the supervisor runs it again.
    Restarting,
    /// Its `run` returned `Ok` before shutdown: done, not run again.
    Finished,
    /// Shut down on request.
    Stopped,
    /// Failed and will not be run again (it failed during shutdown).
    Failed,
}

impl ComponentState {
    /// The state as lower-case text, as [`fmt::Display`] writes it: `"live"`, `"catching up"`...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "not started",
            Self::Starting => "starting",
            Self::Standby => "standby",
            Self::CatchingUp => "catching up",
            Self::Live => "live",
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::Finished => "finished",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for ComponentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl From<RunnerState> for ComponentState {
    fn from(state: RunnerState) -> Self {
        match state {
            RunnerState::Starting => Self::Starting,
            RunnerState::Standby => Self::Standby,
            RunnerState::CatchingUp => Self::CatchingUp,
            RunnerState::Live => Self::Live,
            RunnerState::Stopped => Self::Stopped,
            RunnerState::Failed => Self::Failed,
        }
    }
}

/// What a component reports about itself (see [`Component::progress`]); the supervisor adds
/// its own view to make a [`ComponentStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentProgress {
    /// Its own state while it runs.
    pub state: ComponentState,
    /// Its checkpoint in the feed, if it follows the feed.
    pub position: Option<FeedPosition>,
    /// Events it has handled (applied, published...), counted since this process started.
    pub events_handled: u64,
    /// Events it has parked as dead letters.
    pub dead_lettered: u64,
    /// Times it became the active instance (for components with one active instance across
    /// processes).
    pub activations: u64,
}

impl Default for ComponentProgress {
    /// Running, no position, nothing counted.
    fn default() -> Self {
        Self {
            state: ComponentState::Running,
            position: None,
            events_handled: 0,
            dead_lettered: 0,
            activations: 0,
        }
    }
}

/// One line of [`Supervisor::status`]: a component's own progress and the supervisor's view
/// of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentStatus {
    /// Its [`Component::name`].
    pub name: String,
    /// Where it is: its own state while it runs, else the supervisor's (not started,
    /// restarting, finished, stopped, failed).
    pub state: ComponentState,
    /// When the supervisor first saw it in `state`. Changes the supervisor makes are timed
    /// exactly; a component's own changes (catching up to live) when the supervisor next looks:
    /// at each [`Supervisor::status`] call and every [`SupervisorOptions::observe_interval`].
    pub since: DateTime<Utc>,
    /// Its checkpoint in the feed, if it follows the feed.
    pub position: Option<FeedPosition>,
    /// Events it has handled (see [`ComponentProgress::events_handled`]).
    pub events_handled: u64,
    /// Events it has parked as dead letters.
    pub dead_lettered: u64,
    /// Times it became the active instance.
    pub activations: u64,
    /// Times the supervisor ran it again after a failure.
    pub restarts: u64,
    /// The error of its latest failure, kept after it recovers.
    pub last_error: Option<String>,
}

/// How a [`Supervisor`] restarts and stops components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorOptions {
    /// The wait before the first restart after a failure (default 1 s); doubled after each
    /// further failure, up to `max_backoff`.
    pub initial_backoff: Duration,
    /// The longest wait between restarts (default 60 s).
    pub max_backoff: Duration,
    /// A component that ran at least this long before failing had recovered: it is restarted
    /// after `initial_backoff` again, not after the doubled wait (default 60 s).
    pub healthy_after: Duration,
    /// How long to wait, once shutdown is requested, for a component to return before aborting
    /// its task (default 30 s). A projection runner aborted mid-batch has its transaction
    /// rolled back: nothing is half-applied, the batch is applied again at the next start.
    pub shutdown_timeout: Duration,
    /// How often the supervisor looks at each component's state while running, to time
    /// [`ComponentStatus::since`] (default 100 ms).
    pub observe_interval: Duration,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            healthy_after: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            observe_interval: Duration::from_millis(100),
        }
    }
}

/// Why [`Supervisor::run`] refused to start.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// `run` was called while another call of it on the same supervisor is still running.
    #[error("this supervisor is already running; call run() once, and share the supervisor (in an Arc) to read its status")]
    AlreadyRunning,
    /// Two components have the same name, so their status and logs could not be told apart.
    #[error("two components are named `{0}`; give each component of a supervisor its own name (a projection runner is named after its projection, so register each projection once)")]
    DuplicateName(String),
}

/// Runs several [`Component`]s until one shutdown token is cancelled.
///
/// - Each component runs in its own task, all with the same token.
/// - A component whose `run` fails (or panics) is logged with `tracing::error!`, counted, and
///   run again after a backoff ([`SupervisorOptions`]: 1 s doubling up to 60 s by default).
/// - A component whose `run` returns `Ok` before shutdown is finished: it is not run again.
/// - [`Supervisor::status`] shows every component, also while `run` runs (hold the supervisor
///   in an [`Arc`]).
/// - On shutdown, `run` waits for every component to finish the work in hand (up to
///   [`SupervisorOptions::shutdown_timeout`]), then returns `Ok(())`.
///
/// ```no_run
/// use std::sync::Arc;
///
/// use eventsource_postgres::projection::{Projection, ProjectionRunner};
/// use eventsource_postgres::{PostgresStore, Supervisor};
/// use tokio_util::sync::CancellationToken;
///
/// async fn serve(
///     store: PostgresStore,
///     orders: impl Projection,
///     customers: impl Projection,
/// ) -> Result<(), Box<dyn std::error::Error>> {
///     let supervisor = Arc::new(
///         Supervisor::new()
///             .with(ProjectionRunner::new(store.clone(), orders))
///             .with(ProjectionRunner::new(store, customers)),
///     );
///     let shutdown = CancellationToken::new();
///     let running = tokio::spawn({
///         let (supervisor, shutdown) = (supervisor.clone(), shutdown.clone());
///         async move { supervisor.run(shutdown).await }
///     });
///     // ... serve requests; show `supervisor.status()` on a health endpoint ...
///     for component in supervisor.status() {
///         println!("{} {} {:?}", component.name, component.state, component.position);
///     }
///     shutdown.cancel();
///     running.await??;
///     Ok(())
/// }
/// ```
pub struct Supervisor {
    entries: Vec<Entry>,
    options: SupervisorOptions,
    running: AtomicBool,
}

/// A component and the supervisor's record of it.
struct Entry {
    name: String,
    component: Arc<dyn Component>,
    record: Mutex<Record>,
}

/// The supervisor's view of one component.
struct Record {
    phase: Phase,
    restarts: u64,
    last_error: Option<String>,
    /// The state last shown, and since when.
    shown: ComponentState,
    since: DateTime<Utc>,
}

/// What the supervisor is doing with a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    NotStarted,
    Running,
    Restarting,
    Finished,
    Stopped,
    Failed,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    /// A supervisor with no components and default options.
    pub fn new() -> Self {
        Self {
            entries: Vec::new(),
            options: SupervisorOptions::default(),
            running: AtomicBool::new(false),
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: SupervisorOptions) -> Self {
        self.options = options;
        self
    }

    /// Adds a component (a [`ProjectionRunner`], for one).
    pub fn with(self, component: impl Component) -> Self {
        self.with_shared(Arc::new(component))
    }

    /// Adds a shared component; keep a clone to use it beside the supervisor (for example
    /// [`ProjectionRunner::wait_until_caught_up`]).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use eventsource_postgres::projection::{Projection, ProjectionRunner};
    /// # use eventsource_postgres::{PostgresStore, Supervisor};
    /// fn supervised<P: Projection>(store: PostgresStore, projection: P) -> (Supervisor, Arc<ProjectionRunner<P>>) {
    ///     let runner = Arc::new(ProjectionRunner::new(store, projection));
    ///     (Supervisor::new().with_shared(runner.clone()), runner)
    /// }
    /// ```
    pub fn with_shared(mut self, component: Arc<dyn Component>) -> Self {
        self.entries.push(Entry {
            name: component.name(),
            component,
            record: Mutex::new(Record {
                phase: Phase::NotStarted,
                restarts: 0,
                last_error: None,
                shown: ComponentState::NotStarted,
                since: Utc::now(),
            }),
        });
        self
    }

    /// Every component's status, in the order they were added. Quick and non-blocking: call it
    /// from a health endpoint while [`Supervisor::run`] runs.
    pub fn status(&self) -> Vec<ComponentStatus> {
        self.entries.iter().map(Entry::observe).collect()
    }

    /// Runs every component until `shutdown` is cancelled, restarting those that fail (see the
    /// [type documentation](Supervisor)), and returns `Ok(())` once all of them have returned:
    /// after shutdown, or earlier if every component finished on its own (at once, with no
    /// components).
    ///
    /// Fails without running anything if two components share a name, or if `run` is already
    /// running on this supervisor. Once it has returned it may be called again (with a new
    /// token); restart counts and last errors are kept.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), SupervisorError> {
        let mut names = HashSet::new();
        if let Some(entry) = self.entries.iter().find(|e| !names.insert(e.name.as_str())) {
            return Err(SupervisorError::DuplicateName(entry.name.clone()));
        }
        if self.running.swap(true, Ordering::SeqCst) {
            return Err(SupervisorError::AlreadyRunning);
        }
        let _running = RunningFlag(&self.running);
        let all = futures::future::join_all(
            self.entries
                .iter()
                .map(|entry| self.supervise(entry, &shutdown)),
        );
        tokio::pin!(all);
        let mut observe = tokio::time::interval(self.options.observe_interval.max(MIN_OBSERVE));
        observe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut all => return Ok(()),
                _ = observe.tick() => {
                    for entry in &self.entries {
                        entry.observe();
                    }
                }
            }
        }
    }

    /// Runs one component until shutdown or until it finishes, restarting it after failures.
    async fn supervise(&self, entry: &Entry, shutdown: &CancellationToken) {
        let name = entry.name.as_str();
        let mut backoff = self.options.initial_backoff;
        loop {
            if shutdown.is_cancelled() {
                entry.set_phase(Phase::Stopped);
                return;
            }
            entry.set_phase(Phase::Running);
            let started = tokio::time::Instant::now();
            let error = match self.attempt(entry, shutdown).await {
                Ok(()) if shutdown.is_cancelled() => {
                    entry.set_phase(Phase::Stopped);
                    return;
                }
                Ok(()) => {
                    tracing::info!(
                        component = name,
                        "component finished before shutdown; not running it again"
                    );
                    entry.set_phase(Phase::Finished);
                    return;
                }
                Err(error) => error,
            };
            if shutdown.is_cancelled() {
                tracing::error!(component = name, %error, "component failed during shutdown; not restarting it");
                entry.fail(Phase::Failed, error);
                return;
            }
            if started.elapsed() >= self.options.healthy_after {
                // It ran well for a while: this is a new failure, not a failure loop.
                backoff = self.options.initial_backoff;
            }
            let restarts = entry.fail(Phase::Restarting, error.clone());
            tracing::error!(
                component = name,
                %error,
                restarts,
                retry_in = ?backoff,
                "component failed; running it again after the backoff"
            );
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.cancelled() => {
                    entry.set_phase(Phase::Stopped);
                    return;
                }
            }
            backoff = backoff.saturating_mul(2).min(self.options.max_backoff);
        }
    }

    /// One run of a component in a task of its own; its error (or panic) as text.
    async fn attempt(&self, entry: &Entry, shutdown: &CancellationToken) -> Result<(), String> {
        let component = entry.component.clone();
        let token = shutdown.clone();
        let mut task = AbortOnDrop(tokio::spawn(async move { component.run(token).await }));
        let timeout = self.options.shutdown_timeout;
        let grace_over = async {
            shutdown.cancelled().await;
            tokio::time::sleep(timeout).await;
        };
        let joined = tokio::select! {
            joined = &mut task.0 => joined,
            () = grace_over => {
                task.0.abort();
                return Err(format!(
                    "did not stop within {timeout:?} of shutdown and was aborted; make its run() \
                     return soon after the shutdown token is cancelled, or raise \
                     SupervisorOptions::shutdown_timeout"
                ));
            }
        };
        match joined {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(error) if error.is_panic() => Err(format!("panicked: {}", panic_message(error))),
            Err(error) => Err(format!("its task was cancelled: {error}")),
        }
    }
}

/// A floor for the observation interval (a zero interval would make `tokio::time::interval`
/// panic).
const MIN_OBSERVE: Duration = Duration::from_millis(10);

impl Entry {
    fn record(&self) -> MutexGuard<'_, Record> {
        // The record is plain data, consistent after any statement: a panic elsewhere while
        // holding the lock leaves nothing half-updated.
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_phase(&self, phase: Phase) {
        self.record().phase = phase;
        self.observe();
    }

    /// Records a failure; returns the restart count (counting the coming restart, if any).
    fn fail(&self, phase: Phase, error: String) -> u64 {
        let restarts = {
            let mut record = self.record();
            record.phase = phase;
            record.last_error = Some(error);
            if phase == Phase::Restarting {
                record.restarts += 1;
            }
            record.restarts
        };
        self.observe();
        restarts
    }

    /// The status now; notes the time if the state changed since last looked at.
    fn observe(&self) -> ComponentStatus {
        let progress = self.component.progress();
        let mut record = self.record();
        let state = match record.phase {
            Phase::NotStarted => ComponentState::NotStarted,
            Phase::Running => progress.state,
            Phase::Restarting => ComponentState::Restarting,
            Phase::Finished => ComponentState::Finished,
            Phase::Stopped => ComponentState::Stopped,
            Phase::Failed => ComponentState::Failed,
        };
        if state != record.shown {
            record.shown = state;
            record.since = Utc::now();
        }
        ComponentStatus {
            name: self.name.clone(),
            state,
            since: record.since,
            position: progress.position,
            events_handled: progress.events_handled,
            dead_lettered: progress.dead_lettered,
            activations: progress.activations,
            restarts: record.restarts,
            last_error: record.last_error.clone(),
        }
    }
}

/// Clears the running flag when `run` returns or is dropped.
struct RunningFlag<'a>(&'a AtomicBool);

impl Drop for RunningFlag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Aborts a component's task if `run` is dropped before it ends, so that no component keeps
/// running unsupervised.
struct AbortOnDrop(JoinHandle<Result<(), BoxError>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn panic_message(error: tokio::task::JoinError) -> String {
    let payload = error.into_panic();
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(a panic payload that is not text)".to_owned()
    }
}

/// A projection runner as a supervised component, named after its projection; its status comes
/// from [`ProjectionRunner::status`].
#[async_trait]
impl<P: Projection> Component for ProjectionRunner<P> {
    fn name(&self) -> String {
        self.projection().name().to_owned()
    }

    async fn run(&self, shutdown: CancellationToken) -> Result<(), BoxError> {
        ProjectionRunner::run(self, shutdown)
            .await
            .map_err(BoxError::from)
    }

    fn progress(&self) -> ComponentProgress {
        let status = self.status().borrow().clone();
        ComponentProgress {
            state: status.state.into(),
            position: Some(status.position),
            events_handled: status.events_applied,
            dead_lettered: status.dead_lettered,
            activations: status.activations,
        }
    }
}

#[async_trait]
impl<P: Publisher, M: Mapping> Component for Relay<P, M> {
    fn name(&self) -> String {
        format!("relay {}", Relay::name(self))
    }

    async fn run(&self, shutdown: CancellationToken) -> Result<(), BoxError> {
        Relay::run(self, shutdown).await.map_err(BoxError::from)
    }

    fn progress(&self) -> ComponentProgress {
        let status = self.status().borrow().clone();
        ComponentProgress {
            state: status.state.into(),
            position: Some(status.position),
            events_handled: status.published,
            dead_lettered: status.parked,
            activations: status.activations,
        }
    }
}

/// A process manager runner as a supervised component, named `process manager <name>`.
#[async_trait]
impl<P: ProcessManager> Component for ProcessManagerRunner<P> {
    fn name(&self) -> String {
        format!("process manager {}", self.manager().name())
    }

    async fn run(&self, shutdown: CancellationToken) -> Result<(), BoxError> {
        ProcessManagerRunner::run(self, shutdown)
            .await
            .map_err(BoxError::from)
    }

    fn progress(&self) -> ComponentProgress {
        let status = self.status().borrow().clone();
        ComponentProgress {
            state: status.state.into(),
            position: Some(status.position),
            events_handled: status.events_handled,
            dead_lettered: status.parked,
            activations: status.activations,
        }
    }
}
