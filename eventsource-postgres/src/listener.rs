//! One LISTEN connection per store, shared by all its subscriptions, turning notifications into
//! wake-ups.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventsource_core::store::WakeSignal;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::watch;

/// The channel the events table's trigger notifies (see the feed migration).
pub(crate) const CHANNEL: &str = "eventsource_events";

/// Counters of the shared listener, for monitoring and tests.
#[derive(Debug, Default)]
pub struct ListenerStats {
    connections: AtomicU64,
    notifications: AtomicU64,
}

impl ListenerStats {
    /// How many times the listening connection was (re)established.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// How many notifications arrived.
    pub fn notifications(&self) -> u64 {
        self.notifications.load(Ordering::Relaxed)
    }
}

/// Starts the listener task: it keeps one listening connection, reconnecting with backoff when
/// it drops, and bumps the returned signal on every notification and after every (re)connect
/// (notifications sent while it was away are lost, so subscribers must re-read). The task ends
/// when every receiver of the signal is gone or the store's pool is closed.
pub(crate) fn start(pool: PgPool, stats: Arc<ListenerStats>) -> WakeSignal {
    let (wake, signal) = watch::channel(0u64);
    tokio::spawn(async move {
        const FIRST_BACKOFF: Duration = Duration::from_millis(100);
        let mut backoff = FIRST_BACKOFF;
        while !wake.is_closed() && !pool.is_closed() {
            let connections = stats.connections();
            match listen_until_lost(&pool, &wake, &stats).await {
                Ok(()) => return,
                // The store was closed: the listener goes with it.
                Err(_) if pool.is_closed() => return,
                Err(error) => {
                    tracing::warn!(%error, "the feed's LISTEN connection failed; subscriptions poll until it is back");
                }
            }
            if stats.connections() != connections {
                // It was connected: this is a new outage, not a longer one.
                backoff = FIRST_BACKOFF;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = wake.closed() => return,
                () = pool.close_event() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
    signal
}

/// Listens until the connection is lost (an error), or every receiver is gone or the pool is
/// closed (`Ok`).
async fn listen_until_lost(
    pool: &PgPool,
    wake: &watch::Sender<u64>,
    stats: &ListenerStats,
) -> Result<(), sqlx::Error> {
    // A pool of its own: the listening connection never returns, and must not take one of the
    // store's connections for good.
    let own = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with((*pool.connect_options()).clone());
    let mut listener = PgListener::connect_with(&own).await?;
    listener.listen(CHANNEL).await?;
    stats.connections.fetch_add(1, Ordering::Relaxed);
    wake.send_modify(|n| *n = n.wrapping_add(1));
    loop {
        tokio::select! {
            received = listener.try_recv() => match received? {
                Some(_) => {
                    stats.notifications.fetch_add(1, Ordering::Relaxed);
                    wake.send_modify(|n| *n = n.wrapping_add(1));
                }
                None => return Err(sqlx::Error::Protocol("the listening connection was closed".into())),
            },
            () = wake.closed() => return Ok(()),
            () = pool.close_event() => return Ok(()),
        }
    }
}
