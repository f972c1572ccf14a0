//! Subscriptions: catch up on the feed in bounded batches, then follow it live.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, Stream, StreamExt};

use crate::error::StoreError;
use crate::event::RecordedEvent;
use crate::event_store::FeedReader;
use crate::feed::{BatchSize, FeedFilter};
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
    /// It rides out transient failures ([`StoreError::is_transient`]: a lost connection, a
    /// server restart): it logs the outage, retries with backoff (up to
    /// `options.max_reconnect_delay` apart) and resumes from its position;
    /// [`Subscription::status`] reports the outage meanwhile. It ends only with an error that
    /// cannot clear by itself (corrupt data, a restored database, a closed store).
    fn subscribe(&self, after: FeedPosition, options: SubscriptionOptions) -> Subscription {
        Subscription::new(self.clone(), after, options)
    }
}

/// How a subscription reads and waits.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionOptions {
    /// Events examined per read (default 500).
    pub batch_size: usize,
    /// Bytes of payloads and metadata per read (default 16 MiB; always at least one event).
    pub max_batch_bytes: usize,
    /// Which events to deliver (default: all).
    pub filter: FeedFilter,
    /// How often to re-read when no wake-up comes (default 1 s).
    pub poll_interval: Duration,
    /// After how long a holdup is logged at warn level (default 30 s).
    pub holdup_warning_after: Duration,
    /// The longest wait between two reads while the store is unavailable (default 2 s; the
    /// first retry comes after 50 ms, and each wait doubles).
    pub max_reconnect_delay: Duration,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            max_batch_bytes: BatchSize::DEFAULT_BYTES,
            max_reconnect_delay: Duration::from_secs(2),
            filter: FeedFilter::all(),
            poll_interval: Duration::from_secs(1),
            holdup_warning_after: Duration::from_secs(30),
        }
    }
}

impl SubscriptionOptions {
    /// The same options with a filter.
    pub fn with_filter(mut self, filter: FeedFilter) -> Self {
        self.filter = filter;
        self
    }

    /// The same options with another batch size.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// The same options with another byte budget per read.
    pub fn with_max_batch_bytes(mut self, bytes: usize) -> Self {
        self.max_batch_bytes = bytes;
        self
    }

    /// The bound of one read.
    pub fn batch(&self) -> BatchSize {
        BatchSize::events(self.batch_size).with_bytes(self.max_batch_bytes)
    }

    /// The same options with another poll interval.
    pub fn with_poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval;
        self
    }

    /// The same options with another holdup warning delay.
    pub fn with_holdup_warning_after(mut self, after: Duration) -> Self {
        self.holdup_warning_after = after;
        self
    }
}

/// A live stream of recorded events; see [`Subscribe::subscribe`].
///
/// [`Subscription::position`] is where to resume after a restart: the position of the last
/// event delivered, or further when the filter skipped events after it.
pub struct Subscription {
    events: BoxStream<'static, Result<RecordedEvent, StoreError>>,
    position: Arc<Mutex<FeedPosition>>,
    status: Arc<Mutex<SubscriptionStatus>>,
}

/// How a subscription's reads are going; see [`Subscription::status`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionStatus {
    /// The store is unavailable: reads have failed since then, and are being retried.
    pub outage: Option<Outage>,
    /// Outages the subscription rode out so far.
    pub outages_recovered: u64,
}

/// Reads failing with transient errors, retried with backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    /// When the first read failed.
    pub since: Instant,
    /// Failed reads so far.
    pub failed_reads: u32,
    /// The last error.
    pub last_error: String,
}

impl Subscription {
    fn new<S: Subscribe>(store: S, after: FeedPosition, options: SubscriptionOptions) -> Self {
        let position = Arc::new(Mutex::new(after));
        let status = Arc::new(Mutex::new(SubscriptionStatus::default()));
        let follower = Follower {
            status: status.clone(),
            wake: store.wake_signal(),
            store,
            after,
            options,
            buffer: VecDeque::new(),
            batch_next: after,
            position: position.clone(),
            stalled_since: None,
            last_holdup_check: None,
            warned: false,
        };
        let events = stream::try_unfold(follower, |mut f| async move {
            let event = f.next_event().await?;
            Ok(Some((event, f)))
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

    /// Whether reads are failing right now (an outage the subscription is riding out), and how
    /// many outages it recovered from.
    pub fn status(&self) -> SubscriptionStatus {
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

/// The state of a subscription between two events.
struct Follower<S> {
    store: S,
    wake: WakeSignal,
    /// Where the next read starts.
    after: FeedPosition,
    options: SubscriptionOptions,
    /// Events read but not yet delivered.
    buffer: VecDeque<RecordedEvent>,
    /// The `next` of the batch in `buffer`.
    batch_next: FeedPosition,
    /// Shared with [`Subscription::position`].
    position: Arc<Mutex<FeedPosition>>,
    /// Shared with [`Subscription::status`].
    status: Arc<Mutex<SubscriptionStatus>>,
    stalled_since: Option<Instant>,
    last_holdup_check: Option<Instant>,
    warned: bool,
}

impl<S: Subscribe> Follower<S> {
    fn set_position(&self, position: FeedPosition) {
        *self
            .position
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = position;
    }

    /// The next event: from the buffer, else from the next batch, else after waiting.
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
            // Mark wake-ups seen *before* reading: one that arrives during the read makes the
            // wait below return at once.
            self.wake.borrow_and_update();
            let read = self
                .store
                .read_feed_batch(self.after, self.options.batch(), &self.options.filter)
                .await;
            let batch = match read {
                Ok(batch) => {
                    self.recovered();
                    batch
                }
                Err(error) if error.is_transient() => {
                    let delay = self.failed(&error);
                    tokio::time::sleep(delay).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            self.after = batch.next;
            self.batch_next = batch.next;
            if batch.events.is_empty() {
                self.set_position(batch.next);
            } else {
                self.stalled_since = None;
                self.warned = false;
                self.buffer.extend(batch.events);
                continue;
            }
            if !batch.reached_head {
                continue;
            }
            self.watch_holdup().await;
            let poll = tokio::time::sleep(self.options.poll_interval);
            tokio::pin!(poll);
            tokio::select! {
                changed = self.wake.changed() => {
                    if changed.is_err() {
                        // The signal's source is gone: polling alone keeps delivering.
                        poll.await;
                    }
                }
                () = &mut poll => {}
            }
        }
    }

    fn status(&self) -> std::sync::MutexGuard<'_, SubscriptionStatus> {
        self.status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a transient failure of a read; returns how long to wait before the next one
    /// (50 ms, doubling up to `max_reconnect_delay`).
    fn failed(&self, error: &StoreError) -> Duration {
        let mut status = self.status();
        let outage = status.outage.get_or_insert_with(|| Outage {
            since: Instant::now(),
            failed_reads: 0,
            last_error: String::new(),
        });
        outage.failed_reads = outage.failed_reads.saturating_add(1);
        outage.last_error = error.to_string();
        let failed_reads = outage.failed_reads;
        if failed_reads == 1 || failed_reads % 20 == 0 {
            tracing::warn!(%error, failed_reads, "the subscription cannot read the feed; retrying from its position");
        }
        Duration::from_millis(50)
            .saturating_mul(1 << failed_reads.saturating_sub(1).min(16))
            .min(self.options.max_reconnect_delay)
    }

    /// Ends an outage, if there was one.
    fn recovered(&self) {
        let mut status = self.status();
        if let Some(outage) = status.outage.take() {
            status.outages_recovered += 1;
            tracing::info!(
                failed_reads = outage.failed_reads,
                "the subscription reads the feed again after {:?}",
                outage.since.elapsed()
            );
        }
    }

    /// Checks (at most once per poll interval) whether a transaction holds the feed back, and
    /// logs it at warn level once it has held for `holdup_warning_after`.
    async fn watch_holdup(&mut self) {
        let now = Instant::now();
        if self
            .last_holdup_check
            .is_some_and(|t| now.duration_since(t) < self.options.poll_interval)
        {
            return;
        }
        self.last_holdup_check = Some(now);
        match self.store.feed_holdup().await {
            Ok(Some(holdup)) => {
                let since = *self.stalled_since.get_or_insert(now);
                if !self.warned && now.duration_since(since) >= self.options.holdup_warning_after {
                    self.warned = true;
                    tracing::warn!(
                        pid = holdup.pid,
                        since = ?holdup.transaction_started,
                        query = holdup.query.as_deref(),
                        events_waiting = holdup.events_waiting,
                        "feed held back for {:?}: {holdup}; events are delayed, not lost",
                        now.duration_since(since)
                    );
                }
            }
            Ok(None) => {
                self.stalled_since = None;
                self.warned = false;
            }
            Err(error) => tracing::debug!(%error, "could not check what holds the feed back"),
        }
    }
}
