//! Wake-up notifications for the store's own autocommit appends, sent after their commit and
//! coalesced.
//!
//! A transaction that runs `NOTIFY` holds a database-wide lock from its commit until the commit
//! is durable, so appends that notified in their own transaction would commit one at a time.
//! The store's autocommit appends skip the events table's trigger instead (see `append.sql`)
//! and ask this notifier to send one `pg_notify` on the feed's channel after they returned:
//! appends that complete while a notification is on its way share the next one.

use std::sync::OnceLock;

use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::listener::CHANNEL;

/// The payload of these notifications (the trigger's are empty). Subscribers ignore payloads;
/// it tells an operator watching the channel which path notified.
const PAYLOAD: &str = "after-commit";

/// Sends the feed's wake-up notifications for one store (and its clones).
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    /// Requests to the sending task, started by the first append. A full channel means a
    /// request is already waiting, which covers the new one too.
    requests: OnceLock<mpsc::Sender<()>>,
}

impl Notifier {
    /// Asks for one notification to be sent after this call.
    ///
    /// Relies on the caller's events being committed already: the notification may be sent
    /// at once. Every call is followed by a `pg_notify` that *starts* after it (a request taken
    /// by the task before this call sits behind the one this call leaves, or this call's
    /// request is the one waiting), so no committed append goes unannounced unless the
    /// notification fails, which subscriptions survive by polling.
    pub(crate) fn appended(&self, pool: &PgPool) {
        let requests = match self.requests.get() {
            Some(requests) => requests,
            None => {
                // Outside a runtime (an append future dropped there) nothing can be sent:
                // subscribers find the events by polling.
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                self.requests.get_or_init(|| start(&runtime, pool.clone()))
            }
        };
        // Full: a request is waiting already. Closed: the task ended, with the pool or with
        // the runtime it was started on (subscribers then rely on polling).
        let _ = requests.try_send(());
    }
}

/// Asks the store's notifier for a notification when dropped: when the append returned, and
/// also when its future is dropped part-way (its statement may have committed by then).
pub(crate) struct NotifyWhenDone<'a> {
    pub(crate) notifier: &'a Notifier,
    pub(crate) pool: &'a PgPool,
}

impl Drop for NotifyWhenDone<'_> {
    fn drop(&mut self) {
        self.notifier.appended(self.pool);
    }
}

/// Starts the sending task; it ends when the store (every sender) is gone or its pool closed.
fn start(runtime: &tokio::runtime::Handle, pool: PgPool) -> mpsc::Sender<()> {
    let (requests, mut received) = mpsc::channel(1);
    runtime.spawn(async move {
        while received.recv().await.is_some() {
            let sent = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(PAYLOAD)
                .execute(&pool)
                .await;
            match sent {
                Ok(_) => {}
                Err(_) if pool.is_closed() => return,
                Err(error) => tracing::warn!(
                    %error,
                    "could not notify subscribers of new events; they find them by polling"
                ),
            }
        }
    });
    requests
}
