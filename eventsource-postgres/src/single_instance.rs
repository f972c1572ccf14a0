//! The standby and active cycle of every component that runs once across processes (projection
//! runners, relays): contend for the component's [`ActiveInstance`] lock, work while holding
//! it, stand by while another process holds it, take over when it is released.

use std::fmt::Display;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use crate::active_instance::ActiveInstance;
use crate::projection::RunnerState;
use crate::store::PostgresStore;

/// What a single-instance component does, and how it reports.
#[async_trait]
pub(crate) trait ActiveRole: Sync {
    /// The component's error.
    type Error: Display + Send;

    /// Works while active, on `conn`, which holds the lock: `Ok` when done or on shutdown.
    async fn active(
        &self,
        conn: &mut PgConnection,
        shutdown: &CancellationToken,
    ) -> Result<(), Self::Error>;

    /// The error for a failure to contend for the lock.
    fn lock_failed(&self, error: sqlx::Error) -> Self::Error;

    /// Whether `error` ends the component for good (otherwise it goes back to standby).
    fn is_terminal(&self, error: &Self::Error) -> bool;

    /// Records the component's state.
    fn set_state(&self, state: RunnerState);

    /// Called each time the component becomes the active one.
    fn activated(&self);
}

/// How a cycle ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Shutdown was requested (the state is then [`RunnerState::Stopped`]).
    Shutdown,
    /// The active role returned `Ok` before shutdown (the caller sets the state).
    Finished,
}

/// Runs `role` as the one active instance of `name` among components of `kind`, standing by
/// (retrying every `standby_retry`) while another holds it.
///
/// Relies on `role.active` returning promptly once `shutdown` is cancelled. A lost connection
/// or any other non-terminal error sends the component back to standby; terminal errors, and
/// any error once the store's pool is closed, end it in [`RunnerState::Failed`].
pub(crate) async fn run<R: ActiveRole>(
    store: &PostgresStore,
    kind: &str,
    name: &str,
    standby_retry: Duration,
    shutdown: &CancellationToken,
    role: &R,
) -> Result<Ended, R::Error> {
    let mut instance = ActiveInstance::new(store, kind, name);
    loop {
        if shutdown.is_cancelled() {
            instance.close().await;
            role.set_state(RunnerState::Stopped);
            return Ok(Ended::Shutdown);
        }
        let outcome = match instance.try_acquire().await {
            Ok(Some(mut conn)) => {
                role.activated();
                tracing::info!(kind, name, "now the active instance");
                let outcome = role.active(&mut conn, shutdown).await;
                instance.release(conn).await;
                Some(outcome)
            }
            Ok(None) => None,
            Err(error) => Some(Err(role.lock_failed(error))),
        };
        match outcome {
            Some(Ok(())) if shutdown.is_cancelled() => {}
            Some(Ok(())) => return Ok(Ended::Finished),
            Some(Err(error)) if role.is_terminal(&error) || store.pool().is_closed() => {
                role.set_state(RunnerState::Failed);
                tracing::error!(kind, name, %error, "stopped");
                return Err(error);
            }
            Some(Err(error)) => {
                tracing::warn!(kind, name, %error, "lost the active role; standing by");
            }
            None => {}
        }
        if shutdown.is_cancelled() {
            continue;
        }
        role.set_state(RunnerState::Standby);
        tokio::select! {
            () = tokio::time::sleep(standby_retry) => {}
            () = shutdown.cancelled() => {}
        }
    }
}
