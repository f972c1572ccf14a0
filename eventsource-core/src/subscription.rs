//! Subscriptions: catch up on the feed in bounded batches, then follow it live.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, Stream, StreamExt};

use crate::error::StoreError;
use crate::event::RecordedEvent;
use crate::event_store::FeedReader;
use crate::feed_follower::{FeedFollower, FeedOptions, FollowerStatus};
use crate::position::FeedPosition;

/// Changes whenever new events may have become readable (a counter of wake-ups).
pub type WakeSignal = tokio::sync::watch::Receiver<u64>;

/// What holds the feed back: the oldest write transaction still running, while events committed
/// after it wait behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedHoldup {
    /// The holding backend's process id.
    pub pid: Option<i32>,
    /// The database it is connected to.
    pub database: Option<String>,
    /// When its transaction started.
    pub transaction_started: Option<DateTime<Utc>>,
    /// Its state (`active`, `idle in transaction`...).
    pub state: Option<String>,
    /// Its current or last statement (shortened).
    pub query: Option<String>,
    /// Committed events waiting behind it.
    pub events_waiting: u64,
}

impl std::fmt::Display for FeedHoldup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} committed event(s) wait behind ", self.events_waiting)?;
        match self.pid {
            Some(pid) => write!(f, "the write transaction of backend {pid}")?,
            None => write!(f, "a write transaction")?,
        }
        if let Some(db) = &self.database {
            write!(f, " in database {db}")?;
        }
        if let Some(started) = self.transaction_started {
            write!(f, ", open since {started}")?;
        }
        if let Some(state) = &self.state {
            write!(f, ", {state}")?;
        }
        if let Some(query) = &self.query {
            write!(f, ", last statement: {query}")?;
        }
        Ok(())
    }
}

/// A store whose feed can be followed live.
pub trait Subscribe: FeedReader + Clone + Sized + 'static {
    /// A signal that changes whenever new events may have become readable. Missing a change is
    /// harmless: subscriptions also poll.
    fn wake_signal(&self) -> WakeSignal;

    /// What holds the feed back right now, if anything and if the store can tell.
    fn feed_holdup(
        &self,
    ) -> impl std::future::Future<Output = Result<Option<FeedHoldup>, StoreError>> + Send {
        async { Ok(None) }
    }

    /// Subscribes to the feed after `after` (use [`FeedPosition::START`] for all of it).
    ///
    /// The subscription first catches up in batches of `options.batch_size` events and at most
    /// `options.max_batch_bytes` bytes, then follows new events as they become readable, woken
    /// by [`Subscribe::wake_signal`] and polling every `options.poll_interval` as a fallback. It
    /// delivers every committed event after `after` that passes the filter exactly once, each
    /// stream's events in version order.
    ///
    /// It follows the feed with a [`FeedFollower`], so it rides out transient failures
    /// ([`StoreError::is_transient`]: a lost connection, a server restart): it logs the outage,
    /// retries with backoff (up to `options.max_reconnect_delay` apart) and resumes from its
    /// position; [`Subscription::status`] reports the outage meanwhile. It ends only with an
    /// error that cannot clear by itself (corrupt data, a restored database, a closed store).
    fn subscribe(&self, after: FeedPosition, options: FeedOptions) -> Subscription {
        Subscription::new(self.clone(), after, options)
    }
}

/// A live stream of recorded events; see [`Subscribe::subscribe`].
///
/// [`Subscription::position`] is where to resume after a restart: the position of the last
/// event delivered, or further when the filter skipped events after it.
pub struct Subscription {
    events: BoxStream<'static, Result<RecordedEvent, StoreError>>,
    position: Arc<Mutex<FeedPosition>>,
    status: Arc<Mutex<FollowerStatus>>,
}

impl Subscription {
    fn new<S: Subscribe>(store: S, after: FeedPosition, options: FeedOptions) -> Self {
        let follower = FeedFollower::new(store, after, options);
        let status = follower.status_handle();
        let position = Arc::new(Mutex::new(after));
        let state = Delivery {
            follower,
            buffer: VecDeque::new(),
            batch_next: after,
            position: position.clone(),
        };
        let events = stream::try_unfold(state, |mut state| async move {
            let event = state.next_event().await?;
            Ok(Some((event, state)))
        });
        Self {
            events: events.boxed(),
            position,
            status,
        }
    }

    /// Where to resume from: every event up to here was delivered or filtered out.
    pub fn position(&self) -> FeedPosition {
        *self
            .position
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether reads are failing right now (an outage the subscription is riding out), how
    /// many outages it recovered from, and what held the feed back at its last check.
    pub fn status(&self) -> FollowerStatus {
        self.status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl Stream for Subscription {
    type Item = Result<RecordedEvent, StoreError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_next_unpin(cx)
    }
}

/// A subscription between two events: the follower and the batch being delivered.
struct Delivery<S> {
    follower: FeedFollower<S>,
    /// Events read but not yet delivered.
    buffer: VecDeque<RecordedEvent>,
    /// The `next` of the batch in `buffer`.
    batch_next: FeedPosition,
    /// Shared with [`Subscription::position`].
    position: Arc<Mutex<FeedPosition>>,
}

impl<S: Subscribe> Delivery<S> {
    fn set_position(&self, position: FeedPosition) {
        *self
            .position
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = position;
    }

    /// The next event: from the buffer, else from the follower's next batches.
    async fn next_event(&mut self) -> Result<RecordedEvent, StoreError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                let position = if self.buffer.is_empty() {
                    self.batch_next
                } else {
                    event.position
                };
                self.set_position(position);
                return Ok(event);
            }
            let batch = self.follower.next().await?;
            self.batch_next = batch.next;
            if batch.events.is_empty() {
                self.set_position(batch.next);
            }
            self.buffer.extend(batch.events);
        }
    }
}
