//! The one loop that follows the feed. Subscriptions, projection runners, rebuilds and the
//! in-memory catch-up each take batches from a [`FeedFollower`] and decide only what to do with
//! them and where their position is kept.
//!
//! A follower reads bounded batches (by events and bytes) from its position, waits at the head
//! for a wake-up or the poll interval, reports what holds the feed back, and rides out
//! transient store failures with backoff.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::error::StoreError;
use crate::event_store::FeedReader;
use crate::feed::{BatchSize, FeedBatch, FeedFilter};
use crate::position::FeedPosition;
use crate::subscription::{FeedHoldup, Subscribe, WakeSignal};

/// How a feed follower reads and waits: shared by subscriptions, projection runners and
/// rebuilds.
///
/// ```
/// use std::time::Duration;
/// use eventsource_core::{FeedFilter, FeedOptions};
/// let options = FeedOptions::default()
///     .with_batch_size(100)
///     .with_poll_interval(Duration::from_millis(200))
///     .with_filter(FeedFilter::all().with_event_types(["OrderPlaced"]));
/// assert_eq!(options.batch().events, 100);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct FeedOptions {
    /// Events examined per read (default 500).
    pub batch_size: usize,
    /// Bytes of payloads and metadata per read (default 16 MiB; always at least one event).
    pub max_batch_bytes: usize,
    /// Which events to deliver (default: all). Others are passed over without stalling the
    /// position.
    pub filter: FeedFilter,
    /// How often to re-read at the head when no wake-up comes (default 1 s).
    pub poll_interval: Duration,
    /// After how long a holdup is logged at warn level (default 30 s).
    pub holdup_warning_after: Duration,
    /// The longest wait between two reads while the store is unavailable (default 2 s; the
    /// first retry comes after 50 ms, and each wait doubles).
    pub max_reconnect_delay: Duration,
}

impl Default for FeedOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            max_batch_bytes: BatchSize::DEFAULT_BYTES,
            filter: FeedFilter::all(),
            poll_interval: Duration::from_secs(1),
            holdup_warning_after: Duration::from_secs(30),
            max_reconnect_delay: Duration::from_secs(2),
        }
    }
}

impl FeedOptions {
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

    /// The same options with another ceiling on the wait between reads during an outage.
    pub fn with_max_reconnect_delay(mut self, delay: Duration) -> Self {
        self.max_reconnect_delay = delay;
        self
    }

    /// The bound of one read.
    pub fn batch(&self) -> BatchSize {
        BatchSize::events(self.batch_size).with_bytes(self.max_batch_bytes)
    }
}

/// How a follower's reads are going.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FollowerStatus {
    /// The store is unavailable: reads have failed since then, and are being retried.
    pub outage: Option<Outage>,
    /// Outages ridden out so far.
    pub outages_recovered: u64,
    /// What held the feed back at the last check at the head, if anything.
    pub holdup: Option<FeedHoldup>,
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

/// Follows the feed from a position; see the [module documentation](self).
///
/// [`FeedFollower::next`] is the loop: it waits at the head when the previous batch reached
/// it, then reads the next batch. A consumer calls it, handles the batch, and calls it again.
///
/// ```
/// use eventsource_core::*;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryStore::new();
/// let id = StreamId::new("order", "1")?;
/// let e = NewEvent::new("OrderPlaced", 1, serde_json::json!({}), EventMetadata::default());
/// store.append(&id, ExpectedVersion::NoStream, vec![e]).await?;
///
/// let mut follower = FeedFollower::new(store.clone(), FeedPosition::START, FeedOptions::default());
/// let batch = follower.next().await?;
/// assert_eq!(batch.events.len(), 1);
/// assert!(batch.reached_head);
/// assert_eq!(follower.position(), batch.next);
/// # Ok(()) }
/// ```
pub struct FeedFollower<S> {
    store: S,
    /// How to wait at the head; `None` for a catch-up that never waits.
    live: Option<Live>,
    position: FeedPosition,
    options: FeedOptions,
    /// Whether the last batch reached the head: the next call waits before reading.
    at_head: bool,
    status: Arc<Mutex<FollowerStatus>>,
    /// Since when the feed has been held back, as last checked.
    held_since: Option<Instant>,
    last_holdup_check: Option<Instant>,
    warned: bool,
}

/// What a live follower waits on at the head.
struct Live {
    wake: WakeSignal,
    holdup:
        Box<dyn Fn() -> BoxFuture<'static, Result<Option<FeedHoldup>, StoreError>> + Send + Sync>,
}

impl<S: Subscribe> FeedFollower<S> {
    /// A follower of `store`'s feed after `after`, which waits at the head for new events.
    pub fn new(store: S, after: FeedPosition, options: FeedOptions) -> Self {
        let probe = store.clone();
        let live = Live {
            wake: store.wake_signal(),
            holdup: Box::new(move || {
                let store = probe.clone();
                async move { store.feed_holdup().await }.boxed()
            }),
        };
        Self::with_live(store, Some(live), after, options)
    }
}

impl<S: FeedReader> FeedFollower<S> {
    /// A follower that only catches up: at the head, [`FeedFollower::next`] returns an empty
    /// batch at once instead of waiting (for reading up to the head, as a rebuild does).
    pub fn catch_up(store: S, after: FeedPosition, options: FeedOptions) -> Self {
        Self::with_live(store, None, after, options)
    }

    fn with_live(store: S, live: Option<Live>, after: FeedPosition, options: FeedOptions) -> Self {
        Self {
            live,
            store,
            position: after,
            options,
            at_head: false,
            status: Arc::default(),
            held_since: None,
            last_holdup_check: None,
            warned: false,
        }
    }

    /// Where the next read starts: every event up to here was returned or filtered out.
    pub fn position(&self) -> FeedPosition {
        self.position
    }

    /// Moves the position (a checkpoint moved by someone else); the next call reads at once.
    pub fn seek(&mut self, position: FeedPosition) {
        self.position = position;
        self.at_head = false;
    }

    /// The options it follows with.
    pub fn options(&self) -> &FeedOptions {
        &self.options
    }

    /// How its reads are going.
    pub fn status(&self) -> FollowerStatus {
        lock(&self.status).clone()
    }

    /// A handle on its status, readable from elsewhere while it runs.
    pub fn status_handle(&self) -> Arc<Mutex<FollowerStatus>> {
        self.status.clone()
    }

    /// The next batch from the position: waits first when the previous batch reached the head
    /// (for a wake-up or the poll interval), then reads, retrying transient failures with
    /// backoff. The position moves to the batch's `next`. The batch may hold no events: only
    /// filtered-out ones (the position still moved), or nothing new yet (at the head).
    ///
    /// Cancel-safe: a call dropped part-way moves nothing.
    ///
    /// Fails only with errors that cannot clear by themselves (corrupt data, a restored
    /// database, a refused batch size, a closed store).
    pub async fn next(&mut self) -> Result<FeedBatch, StoreError> {
        if self.at_head {
            self.wait().await;
        }
        let batch = self.read().await?;
        self.position = batch.next;
        self.at_head = batch.reached_head;
        if !batch.events.is_empty() {
            self.held_since = None;
            self.warned = false;
        }
        Ok(batch)
    }

    /// Reads once, retrying transient failures with backoff until the store answers.
    async fn read(&mut self) -> Result<FeedBatch, StoreError> {
        loop {
            // Mark wake-ups seen *before* reading: one that arrives during the read makes the
            // next wait return at once.
            if let Some(live) = &mut self.live {
                live.wake.borrow_and_update();
            }
            let read = self
                .store
                .read_feed_batch(self.position, self.options.batch(), &self.options.filter)
                .await;
            match read {
                Ok(batch) => {
                    self.recovered();
                    return Ok(batch);
                }
                Err(error) if error.is_transient() => {
                    let delay = self.failed(&error);
                    tokio::time::sleep(delay).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Waits at the head for a wake-up or the poll interval, checking what holds the feed back
    /// (a catch-up follower does not wait).
    async fn wait(&mut self) {
        if self.live.is_none() {
            return;
        }
        self.watch_holdup().await;
        let Some(live) = &mut self.live else {
            return;
        };
        let poll = tokio::time::sleep(self.options.poll_interval);
        tokio::pin!(poll);
        tokio::select! {
            changed = live.wake.changed() => {
                if changed.is_err() {
                    // The signal's source is gone: polling alone keeps delivering.
                    poll.await;
                }
            }
            () = &mut poll => {}
        }
    }

    /// Records a transient failure of a read; returns how long to wait before the next one
    /// (50 ms, doubling up to `max_reconnect_delay`).
    fn failed(&self, error: &StoreError) -> Duration {
        let mut status = lock(&self.status);
        let outage = status.outage.get_or_insert_with(|| Outage {
            since: Instant::now(),
            failed_reads: 0,
            last_error: String::new(),
        });
        outage.failed_reads = outage.failed_reads.saturating_add(1);
        outage.last_error = error.to_string();
        let failed_reads = outage.failed_reads;
        if failed_reads == 1 || failed_reads % 20 == 0 {
            tracing::warn!(%error, failed_reads, "cannot read the feed; retrying from {}", self.position);
        }
        Duration::from_millis(50)
            .saturating_mul(1 << failed_reads.saturating_sub(1).min(16))
            .min(self.options.max_reconnect_delay)
    }

    /// Ends an outage, if there was one.
    fn recovered(&self) {
        let mut status = lock(&self.status);
        if let Some(outage) = status.outage.take() {
            status.outages_recovered += 1;
            tracing::info!(
                failed_reads = outage.failed_reads,
                "reading the feed again after {:?}",
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
        let Some(live) = &self.live else {
            return;
        };
        match (live.holdup)().await {
            Ok(Some(holdup)) => {
                let since = *self.held_since.get_or_insert(now);
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
                lock(&self.status).holdup = Some(holdup);
            }
            Ok(None) => {
                self.held_since = None;
                self.warned = false;
                lock(&self.status).holdup = None;
            }
            Err(error) => tracing::debug!(%error, "could not check what holds the feed back"),
        }
    }
}

fn lock(status: &Mutex<FollowerStatus>) -> MutexGuard<'_, FollowerStatus> {
    // Every update is one assignment: a poisoned lock still guards consistent data.
    status
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
