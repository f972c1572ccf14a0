//! The relay runner: follows the feed from its checkpoint, publishes, waits for the broker's
//! acknowledgements, then moves its checkpoint.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventsource_core::store::filter_for;
use eventsource_core::{FeedFollower, FeedItem, FeedOptions, FeedPosition, RecordedEvent};
use sqlx::{PgConnection, Row};
use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::dead_letters;
use super::error::RelayError;
use super::mapping::Mapping;
use super::message::OutgoingMessage;
use super::publisher::{PublishError, Publisher};
use crate::projection::lag::ProjectionLag;
use crate::projection::RunnerState;
use crate::row::{feed_position, position_column};
use crate::single_instance::{self, ActiveRole, Ended};
use crate::store::PostgresStore;

/// The kind of a relay's lock (`eventsource.relay/<name>`).
const RELAY: &str = "relay";

const READ_CHECKPOINT: &str = include_str!("sql/read_relay_checkpoint.sql");
const WRITE_CHECKPOINT: &str = include_str!("../projection/sql/write_checkpoint.sql");

/// The name of a relay's checkpoint in `eventsource.checkpoints`.
pub fn checkpoint_name(relay: &str) -> String {
    format!("relay/{relay}")
}

/// What a relay does with a message refused for good (too large, unroutable, or unmappable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnRefusal {
    /// Park it as a relay dead letter and go on with the next message (the default). Later
    /// events of the same stream are still published.
    #[default]
    Park,
    /// Park it and stop with [`RelayError::Refused`]; the checkpoint stays before it.
    Stop,
}

/// How a relay reads, retries and fails.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayOptions {
    /// How the relay follows the feed (batch bounds, poll interval, holdup warnings). Its
    /// `filter` is ignored: the relay reads what its [`Mapping::filter`] asks for.
    pub feed: FeedOptions,
    /// How often a standby tries to become active (default 1 s).
    pub standby_retry: Duration,
    /// The first wait after the broker was unavailable (default 100 ms); doubled after each
    /// further failure, up to `max_retry_backoff`.
    pub retry_backoff: Duration,
    /// The longest wait between two attempts while the broker is unavailable (default 5 s).
    pub max_retry_backoff: Duration,
    /// What to do with a message refused for good.
    pub on_refusal: OnRefusal,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            feed: FeedOptions::default(),
            standby_retry: Duration::from_secs(1),
            retry_backoff: Duration::from_millis(100),
            max_retry_backoff: Duration::from_secs(5),
            on_refusal: OnRefusal::Park,
        }
    }
}

/// A relay's observable progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayStatus {
    /// Where it is (the same states as a projection runner's).
    pub state: RunnerState,
    /// The checkpoint it last committed: every event before it is acknowledged by the broker.
    pub position: FeedPosition,
    /// Messages the broker acknowledged, each counted once per batch (a wave resent after an
    /// outage is counted once; messages republished after a restart count again).
    pub published: u64,
    /// Events parked as relay dead letters.
    pub parked: u64,
    /// Times this relay became the active one.
    pub activations: u64,
    /// Why the broker is unavailable now, while it is.
    pub broker_outage: Option<String>,
}

/// Publishes the feed to a broker: see the [module documentation](super).
pub struct Relay<P, M> {
    store: PostgresStore,
    name: String,
    publisher: Mutex<P>,
    mapping: Arc<M>,
    options: RelayOptions,
    status: watch::Sender<RelayStatus>,
}

impl<P: Publisher, M: Mapping> Relay<P, M> {
    /// A relay named `name` (unique per database: it names the checkpoint and the lock) that
    /// publishes what `mapping` makes of the feed through `publisher`.
    pub fn new(store: PostgresStore, name: impl Into<String>, publisher: P, mapping: M) -> Self {
        let (status, _) = watch::channel(RelayStatus {
            state: RunnerState::Starting,
            position: FeedPosition::START,
            published: 0,
            parked: 0,
            activations: 0,
            broker_outage: None,
        });
        Self {
            store,
            name: name.into(),
            publisher: Mutex::new(publisher),
            mapping: Arc::new(mapping),
            options: RelayOptions::default(),
            status,
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: RelayOptions) -> Self {
        self.options = options;
        self
    }

    /// The relay's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Watches the relay's status.
    pub fn status(&self) -> watch::Receiver<RelayStatus> {
        self.status.subscribe()
    }

    /// Measures how far the relay is behind the head: the events it reads that are after its
    /// checkpoint, and the oldest one's age.
    pub async fn lag(&self) -> Result<ProjectionLag, RelayError> {
        let filter = filter_for::<M::Event>(self.mapping.filter());
        crate::projection::lag::measure(&self.store, &checkpoint_name(&self.name), &filter)
            .await
            .map_err(RelayError::Store)
    }

    /// Runs until `shutdown` is cancelled (then `Ok`), or until a refusal stops it under
    /// [`OnRefusal::Stop`].
    ///
    /// One relay of a name is active across processes; the others stand by and take over from
    /// the checkpoint when it dies or loses its connection. A broker outage never ends the
    /// relay: it retries with backoff, and the checkpoint does not move meanwhile.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), RelayError> {
        if self.name.is_empty() {
            return Err(self.misconfigured(
                "the relay's name is empty; give it a name unique in the database",
            ));
        }
        if self.options.feed.batch().check().is_err() {
            return Err(self.misconfigured(
                "RelayOptions::feed allows 0 events or 0 bytes per batch; use at least 1",
            ));
        }
        let ended = single_instance::run(
            &self.store,
            RELAY,
            &self.name,
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

    fn misconfigured(&self, problem: &str) -> RelayError {
        RelayError::Misconfigured {
            relay: self.name.clone(),
            problem: problem.to_owned(),
        }
    }

    fn set_state(&self, state: RunnerState) {
        self.status.send_modify(|s| s.state = state);
    }

    async fn read_checkpoint(&self, conn: &mut PgConnection) -> Result<FeedPosition, RelayError> {
        let db = |e| RelayError::database(&self.name, "read the checkpoint", e);
        let row = sqlx::query(READ_CHECKPOINT)
            .bind(checkpoint_name(&self.name))
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
        let Some(row) = row else {
            return Ok(FeedPosition::START);
        };
        let transaction: String = row.try_get("transaction_id").map_err(db)?;
        let position: i64 = row.try_get("position").map_err(db)?;
        Ok(feed_position(&transaction, position)?)
    }

    async fn write_checkpoint(
        &self,
        conn: &mut PgConnection,
        position: FeedPosition,
    ) -> Result<(), RelayError> {
        sqlx::query(WRITE_CHECKPOINT)
            .bind(checkpoint_name(&self.name))
            .bind(position.transaction_id.to_string())
            .bind(position_column(position.global_position))
            .execute(&mut *conn)
            .await
            .map_err(|e| RelayError::database(&self.name, "write the checkpoint", e))?;
        Ok(())
    }

    /// Publishes a batch's events, then returns; the caller moves the checkpoint.
    ///
    /// The messages go out in waves: a wave holds at most one message per stream, and the next
    /// wave starts once every message of this one is acknowledged. So a stream's message is
    /// only sent once its predecessor is acknowledged, and a wave resent after a failure cannot
    /// put a stream's versions out of order, whatever the broker acknowledged of it.
    async fn publish_batch(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
        shutdown: &CancellationToken,
    ) -> Result<Published, RelayError> {
        let items = match M::Event::view(events) {
            Ok(items) => items,
            Err((index, error)) => {
                // One event does not decode: publish those before it, park it, go on after it.
                let before = Box::pin(self.publish_batch(conn, &events[..index], shutdown)).await?;
                if before == Published::Interrupted {
                    return Ok(before);
                }
                self.refuse(conn, &events[index], "mapping", &error.to_string())
                    .await?;
                return Box::pin(self.publish_batch(conn, &events[index + 1..], shutdown)).await;
            }
        };
        let mut messages = Vec::with_capacity(events.len());
        for (event, item) in events.iter().zip(items.iter()) {
            match self.mapping.map(item) {
                Ok(Some(public)) => messages.push((event, OutgoingMessage::new(event, &public))),
                Ok(None) => {}
                Err(error) => {
                    self.refuse(conn, event, "mapping", &error.to_string())
                        .await?;
                }
            }
        }
        for wave in waves(messages) {
            if self
                .publish_wave(conn, &wave.items, &wave.messages, shutdown)
                .await?
                == Published::Interrupted
            {
                return Ok(Published::Interrupted);
            }
        }
        Ok(Published::All)
    }

    /// Publishes one wave until the broker has acknowledged or refused each message.
    async fn publish_wave(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
        messages: &[OutgoingMessage],
        shutdown: &CancellationToken,
    ) -> Result<Published, RelayError> {
        let mut delay = self.options.retry_backoff;
        let mut publisher = self.publisher.lock().await;
        loop {
            let results = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(Published::Interrupted),
                results = publisher.publish(messages) => results,
            };
            let unavailable = results.iter().find_map(|r| match r {
                Err(PublishError::Unavailable(e)) => Some(e.to_string()),
                _ => None,
            });
            if let Some(reason) = unavailable {
                // Resend the whole wave: what was acknowledged of it comes again (consumers
                // deduplicate by message id), and no stream's next message was sent.
                tracing::warn!(relay = %self.name, %reason, retry_in = ?delay, "broker unavailable; resending");
                self.status.send_modify(|s| s.broker_outage = Some(reason));
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return Ok(Published::Interrupted),
                }
                delay = (delay * 2).min(self.options.max_retry_backoff);
                continue;
            }
            let mut acknowledged = 0;
            for ((event, message), result) in events.iter().zip(messages).zip(results) {
                match result {
                    Ok(()) => acknowledged += 1,
                    Err(error) => {
                        let destination = publisher.destination(message);
                        self.refuse(conn, event, &destination, &error.to_string())
                            .await?;
                    }
                }
            }
            self.status.send_modify(|s| {
                s.broker_outage = None;
                s.published += acknowledged;
            });
            return Ok(Published::All);
        }
    }

    /// Parks `event`, then goes on or stops per [`OnRefusal`].
    async fn refuse(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
        destination: &str,
        reason: &str,
    ) -> Result<Published, RelayError> {
        tracing::error!(relay = %self.name, stream = %event.stream_id, version = %event.version, destination, reason, "parking a refused message as a relay dead letter");
        dead_letters::park(conn, &self.name, event, destination, reason).await?;
        self.status.send_modify(|s| s.parked += 1);
        match self.options.on_refusal {
            OnRefusal::Park => Ok(Published::All),
            OnRefusal::Stop => Err(RelayError::Refused {
                relay: self.name.clone(),
                stream: event.stream_id.clone(),
                version: event.version,
                position: event.position,
                reason: reason.to_owned(),
            }),
        }
    }
}

/// Whether a batch went out whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Published {
    /// Every message was acknowledged or parked.
    All,
    /// Shutdown came first: the checkpoint must not move.
    Interrupted,
}

/// One wave: its messages, and beside each (same index) what it was made from.
struct Wave<T> {
    items: Vec<T>,
    messages: Vec<OutgoingMessage>,
}

/// Splits messages (in feed order) into waves: a stream's n-th message in the batch goes in the
/// n-th wave, so each wave holds at most one message per stream, and a stream's messages go
/// out in feed (version) order.
fn waves<T>(messages: Vec<(T, OutgoingMessage)>) -> Vec<Wave<T>> {
    let mut waves: Vec<Wave<T>> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (item, message) in messages {
        let wave = seen.entry(message.stream.clone()).or_insert(0);
        if waves.len() <= *wave {
            waves.push(Wave {
                items: Vec::new(),
                messages: Vec::new(),
            });
        }
        waves[*wave].items.push(item);
        waves[*wave].messages.push(message);
        *wave += 1;
    }
    waves
}

#[async_trait]
impl<P: Publisher, M: Mapping> ActiveRole for Relay<P, M> {
    type Error = RelayError;

    async fn active(
        &self,
        conn: &mut PgConnection,
        shutdown: &CancellationToken,
    ) -> Result<(), RelayError> {
        let mut position = self.read_checkpoint(conn).await?;
        self.status.send_modify(|s| {
            s.position = position;
            s.state = RunnerState::CatchingUp;
        });
        let options = self
            .options
            .feed
            .clone()
            .with_filter(filter_for::<M::Event>(self.mapping.filter()));
        let mut feed = FeedFollower::new(self.store.clone(), position, options);
        loop {
            let batch = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                batch = feed.next() => batch?,
            };
            if !batch.events.is_empty() {
                let span = tracing::info_span!("relay_batch", relay = %self.name, events = batch.events.len(), from = %position, to = %batch.next);
                let published = self
                    .publish_batch(conn, &batch.events, shutdown)
                    .instrument(span)
                    .await?;
                if published == Published::Interrupted {
                    return Ok(());
                }
            }
            if batch.next != position {
                self.write_checkpoint(conn, batch.next).await?;
                position = batch.next;
                self.status.send_modify(|s| s.position = position);
            }
            if batch.reached_head {
                self.set_state(RunnerState::Live);
            }
        }
    }

    fn lock_failed(&self, error: sqlx::Error) -> RelayError {
        RelayError::database(&self.name, "take the relay's lock", error)
    }

    fn is_terminal(&self, error: &RelayError) -> bool {
        match error {
            RelayError::Refused { .. } | RelayError::Misconfigured { .. } => true,
            RelayError::Store(error) => !error.is_transient(),
            RelayError::Database { .. } => false,
        }
    }

    fn set_state(&self, state: RunnerState) {
        Relay::set_state(self, state);
    }

    fn activated(&self) {
        self.status.send_modify(|s| s.activations += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(stream: &str, version: u64) -> OutgoingMessage {
        OutgoingMessage {
            message_id: uuid::Uuid::now_v7(),
            event_type: "Happened".into(),
            event_version: 1,
            category: "thing".into(),
            stream: stream.into(),
            stream_version: version,
            position: FeedPosition::START,
            correlation_id: None,
            causation_id: None,
            actor: None,
            recorded_at: chrono::Utc::now(),
            traceparent: None,
            payload: b"{}".to_vec(),
        }
    }

    #[test]
    fn waves_hold_one_message_per_stream_in_version_order() {
        let batch = vec![
            ((), message("a", 1)),
            ((), message("a", 2)),
            ((), message("b", 1)),
            ((), message("a", 3)),
            ((), message("b", 2)),
            ((), message("c", 1)),
        ];
        let waves: Vec<Vec<(String, u64)>> = waves(batch)
            .into_iter()
            .map(|wave| {
                wave.messages
                    .into_iter()
                    .map(|m| (m.stream, m.stream_version))
                    .collect()
            })
            .collect();
        let expected: Vec<Vec<(String, u64)>> = vec![
            vec![("a".into(), 1), ("b".into(), 1), ("c".into(), 1)],
            vec![("a".into(), 2), ("b".into(), 2)],
            vec![("a".into(), 3)],
        ];
        assert_eq!(waves, expected);
    }
}
