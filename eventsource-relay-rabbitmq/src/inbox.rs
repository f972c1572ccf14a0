//! The consuming side: [`RabbitMqInbox`] consumes a queue through an [`Inbox`], so that each
//! message is handled exactly once in effect, and dead-letters the messages its handler fails
//! on.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use eventsource_core::BoxError;
use eventsource_postgres::inbox::{
    failure_header, Disposition, Inbox, InboxHandler, IncomingMessage,
};
use eventsource_postgres::relay::header;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Confirmation, Connection};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::amqp::{self, short, text_headers, text_value, within};
use crate::error::RabbitMqError;
use crate::topology::QueueTopology;

/// The longest error text put in a dead-lettered message's `inbox-error` header (the whole
/// header table must fit in one AMQP frame).
const MAX_ERROR_BYTES: usize = 4096;

/// How a [`RabbitMqInbox`] consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxOptions {
    /// Messages the broker sends ahead of acknowledgements (AMQP `basic.qos` prefetch; default
    /// 100).
    pub prefetch: u16,
    /// Messages handled at the same time (default 8), each in its own transaction on a
    /// connection of the inbox's store: the throughput is about `workers` over the time of one
    /// transaction (its commit waits for the disk), so raise it, with the store's pool size,
    /// when the queue backs up. Messages of one stream (header `stream`) always go to the same
    /// worker, so they are handled one at a time in queue order.
    pub workers: usize,
    /// The first wait before reconnecting after the broker was lost, and before retrying a
    /// message after the database failed (default 100 ms); doubled after each further failure
    /// up to `max_backoff`.
    pub backoff: Duration,
    /// The longest such wait (default 5 s).
    pub max_backoff: Duration,
    /// How long connecting, declaring and dead-lettering may take before the connection is
    /// dropped and opened again (default 30 s).
    pub timeout: Duration,
    /// The connection's name in `rabbitmqctl list_connections` (default `eventsource-inbox`).
    pub connection_name: String,
}

impl Default for InboxOptions {
    fn default() -> Self {
        Self {
            prefetch: 100,
            workers: 8,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            connection_name: "eventsource-inbox".to_owned(),
        }
    }
}

/// What a [`RabbitMqInbox`] has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxStatus {
    /// Whether it is connected and consuming.
    pub consuming: bool,
    /// Messages handled (the handler's transaction committed) and acknowledged.
    pub handled: u64,
    /// Redeliveries of messages handled before, acknowledged without running the handler.
    pub duplicates: u64,
    /// Messages sent to the dead-letter queue (the handler failed on every attempt, or the
    /// message had no id).
    pub dead_lettered: u64,
    /// Times it connected and started consuming.
    pub sessions: u64,
    /// Why it is not consuming, or cannot reach the database, while that lasts.
    pub outage: Option<String>,
}

/// Consumes a RabbitMQ queue into an [`Inbox`].
///
/// For each message: [`Inbox::receive`] records its id and runs the handler in one PostgreSQL
/// transaction, then the message is acknowledged.
/// - A redelivery of a message handled before (the consumer died between the commit and the
///   acknowledgement) is acknowledged without running the handler.
/// - When the handler fails on every attempt ([`InboxRetry`](eventsource_postgres::inbox::InboxRetry)),
///   a copy of the message, with the headers `inbox-error`, `inbox-attempts` and `inbox` added
///   ([`failure_header`]), is published to the dead-letter exchange and confirmed, and then
///   the original is acknowledged. (A plain reject would dead-letter it without the error.)
/// - When the database is unreachable, the message stays unacknowledged and is retried with
///   backoff until the database answers (or the inbox stops: the broker then delivers it
///   again).
///
/// On each connection it declares its [`QueueTopology`], sets the prefetch and consumes; when
/// the broker is lost it reconnects with backoff; unacknowledged messages come again and are
/// deduplicated. Messages are handled by [`InboxOptions::workers`] workers at once, the
/// messages of one stream by one worker in order.
///
/// ```no_run
/// use eventsource_postgres::inbox::{Inbox, InboxHandler, IncomingMessage};
/// use eventsource_postgres::{PgConnection, PostgresStore};
/// use eventsource_relay_rabbitmq::{QueueTopology, RabbitMqInbox};
/// use tokio_util::sync::CancellationToken;
///
/// struct CountOrders;
///
/// #[async_trait::async_trait]
/// impl InboxHandler for CountOrders {
///     type Error = eventsource_postgres::sqlx::Error;
///
///     async fn handle(&self, tx: &mut PgConnection, message: &IncomingMessage) -> Result<(), Self::Error> {
///         eventsource_postgres::sqlx::query("UPDATE order_count SET n = n + 1")
///             .execute(tx)
///             .await?;
///         Ok(())
///     }
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresStore::connect("postgres://postgres@127.0.0.1/billing").await?;
/// let consumer = RabbitMqInbox::new(
///     "amqp://guest:guest@127.0.0.1:5672/%2f",
///     Inbox::new(store, "billing"),
///     QueueTopology::new("orders", "billing").bind("order.*"),
/// )?;
/// let shutdown = CancellationToken::new();
/// consumer.run(&CountOrders, shutdown).await?;
/// # Ok(())
/// # }
/// ```
pub struct RabbitMqInbox {
    uri: AMQPUri,
    inbox: Inbox,
    topology: QueueTopology,
    options: InboxOptions,
    status: watch::Sender<InboxStatus>,
}

/// Why a session ended.
enum SessionEnd {
    /// Shutdown was requested.
    Shutdown,
    /// The broker was lost, or refused something.
    Failed(RabbitMqError),
}

impl From<RabbitMqError> for SessionEnd {
    fn from(error: RabbitMqError) -> Self {
        Self::Failed(error)
    }
}

impl RabbitMqInbox {
    /// Consumes the queue of `topology` on the broker at `url` into `inbox`. Nothing is
    /// connected yet; the names are checked.
    pub fn new(url: &str, inbox: Inbox, topology: QueueTopology) -> Result<Self, RabbitMqError> {
        let uri = amqp::parse_url(url)?;
        topology.check()?;
        Ok(Self {
            uri,
            inbox,
            topology,
            options: InboxOptions::default(),
            status: watch::channel(InboxStatus::default()).0,
        })
    }

    /// Replaces the options (checked by [`run`](Self::run)).
    pub fn with_options(mut self, options: InboxOptions) -> Self {
        self.options = options;
        self
    }

    /// The topology it declares and consumes.
    pub fn topology(&self) -> &QueueTopology {
        &self.topology
    }

    /// The inbox it records in.
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// Watches what it has done.
    pub fn status(&self) -> watch::Receiver<InboxStatus> {
        self.status.subscribe()
    }

    /// Connects once and declares the topology, so that the queue exists (and receives the
    /// relay's messages) before the consumer first runs. [`run`](Self::run) declares it too.
    pub async fn declare(&self) -> Result<(), RabbitMqError> {
        let connection = amqp::connect(
            &self.uri,
            &self.options.connection_name,
            self.options.timeout,
        )
        .await?;
        let declared = within(self.options.timeout, "declare the topology", async {
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| RabbitMqError::unavailable("open a channel", e))?;
            let declared = self.topology.declare(&channel).await;
            if channel.status().connected() {
                let _ = channel.close(200, "declared".into()).await;
            }
            declared
        })
        .await;
        let _ = connection.close(200, "declared".into()).await;
        declared
    }

    /// Consumes until `shutdown` is cancelled (then `Ok`), reconnecting with backoff whenever
    /// the broker is lost. It fails only for good: the options or the topology cannot be used
    /// ([`RabbitMqError::is_permanent`]).
    pub async fn run<H: InboxHandler + ?Sized>(
        &self,
        handler: &H,
        shutdown: CancellationToken,
    ) -> Result<(), RabbitMqError> {
        self.check_options()?;
        let mut delay = self.options.backoff;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let consumed_before = self.consumed();
            let ended = self.session(handler, &shutdown).await;
            self.status.send_modify(|s| s.consuming = false);
            match ended {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::Failed(error) if error.is_permanent() => {
                    self.status
                        .send_modify(|s| s.outage = Some(error.to_string()));
                    return Err(error);
                }
                SessionEnd::Failed(error) => {
                    if self.consumed() != consumed_before {
                        // It worked for a while: start the backoff again.
                        delay = self.options.backoff;
                    }
                    let reason = error.to_string();
                    tracing::warn!(inbox = %self.inbox.name(), queue = %self.topology.queue, %reason, retry_in = ?delay, "RabbitMQ consumer lost; reconnecting");
                    self.status.send_modify(|s| s.outage = Some(reason));
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => return Ok(()),
                    }
                    delay = (delay * 2).min(self.options.max_backoff);
                }
            }
        }
    }

    fn check_options(&self) -> Result<(), RabbitMqError> {
        let problem = if self.options.workers == 0 {
            "InboxOptions::workers is 0; use at least 1"
        } else if self.options.prefetch == 0 {
            "InboxOptions::prefetch is 0, which RabbitMQ reads as unlimited; use at least 1 (default 100)"
        } else if self.options.timeout.is_zero() {
            "InboxOptions::timeout is zero; use at least a second (default 30 s)"
        } else {
            return Ok(());
        };
        Err(RabbitMqError::Misconfigured {
            problem: problem.to_owned(),
        })
    }

    /// Messages acknowledged so far, of any kind.
    fn consumed(&self) -> u64 {
        let s = self.status.borrow();
        s.handled + s.duplicates + s.dead_lettered
    }

    /// One connection: declare, consume, handle, until the broker is lost or shutdown.
    async fn session<H: InboxHandler + ?Sized>(
        &self,
        handler: &H,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let opened = tokio::select! {
            opened = within(self.options.timeout, "start consuming", self.open()) => opened,
            () = shutdown.cancelled() => return SessionEnd::Shutdown,
        };
        let (connection, channel, dead_letters, consumer) = match opened {
            Ok(opened) => opened,
            Err(error) => return SessionEnd::Failed(error),
        };
        self.status.send_modify(|s| {
            s.consuming = true;
            s.sessions += 1;
            s.outage = None;
        });
        tracing::debug!(inbox = %self.inbox.name(), queue = %self.topology.queue, "consuming");

        // The session stops when shutdown comes or a worker loses the broker.
        let stop = shutdown.child_token();
        let workers = self.options.workers;
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| mpsc::channel::<Delivery>(usize::from(self.options.prefetch)))
            .unzip();
        let dispatch = async {
            let mut consumer = consumer;
            let ended = loop {
                let next = tokio::select! {
                    () = stop.cancelled() => break None,
                    next = consumer.next() => next,
                };
                let delivery = match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(error)) => {
                        break Some(RabbitMqError::unavailable("receive from the queue", error))
                    }
                    None => {
                        break Some(RabbitMqError::Interrupted {
                            what: format!(
                                "the broker cancelled the consumer of queue `{}` (the queue was deleted, or the connection closed)",
                                self.topology.queue
                            ),
                        })
                    }
                };
                let worker = worker_for(&delivery, workers);
                if senders[worker].send(delivery).await.is_err() {
                    break None;
                }
            };
            drop(senders);
            if ended.is_some() {
                stop.cancel();
            }
            ended
        };
        let work = futures::future::join_all(receivers.into_iter().map(|receiver| {
            let stop = &stop;
            let dead_letters = &dead_letters;
            async move {
                let ended = self.work(handler, receiver, dead_letters, stop).await;
                if ended.is_err() {
                    stop.cancel();
                }
                ended
            }
        }));
        let (dispatched, worked) = tokio::join!(dispatch, work);

        // Unacknowledged messages go back to the queue when the channel closes.
        let _ =
            tokio::time::timeout(Duration::from_secs(5), channel.close(200, "bye".into())).await;
        let _ =
            tokio::time::timeout(Duration::from_secs(5), connection.close(200, "bye".into())).await;
        let failure = worked.into_iter().find_map(Result::err).or(dispatched);
        match failure {
            Some(error) if !shutdown.is_cancelled() => SessionEnd::Failed(error),
            _ => SessionEnd::Shutdown,
        }
    }

    /// Connects, declares the topology, and starts consuming.
    async fn open(&self) -> Result<(Connection, Channel, Channel, lapin::Consumer), RabbitMqError> {
        let connection = amqp::connect(
            &self.uri,
            &self.options.connection_name,
            self.options.timeout,
        )
        .await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| RabbitMqError::unavailable("open a channel", e))?;
        self.topology.declare(&channel).await?;
        channel
            .basic_qos(self.options.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| RabbitMqError::unavailable("set the prefetch", e))?;
        let dead_letters = connection
            .create_channel()
            .await
            .map_err(|e| RabbitMqError::unavailable("open the dead-letter channel", e))?;
        dead_letters
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| {
                RabbitMqError::unavailable("put the dead-letter channel in confirm mode", e)
            })?;
        let consumer = channel
            .basic_consume(
                short("queue", &self.topology.queue)?,
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                RabbitMqError::declaration(format!("consume queue `{}`", self.topology.queue), e)
            })?;
        Ok((connection, channel, dead_letters, consumer))
    }

    /// A worker: handles the deliveries sent to it, one at a time, until the session stops.
    async fn work<H: InboxHandler + ?Sized>(
        &self,
        handler: &H,
        mut deliveries: mpsc::Receiver<Delivery>,
        dead_letters: &Channel,
        stop: &CancellationToken,
    ) -> Result<(), RabbitMqError> {
        while let Some(delivery) = deliveries.recv().await {
            if stop.is_cancelled() {
                // Left unacknowledged: the broker delivers it again.
                break;
            }
            self.process(handler, delivery, dead_letters, stop).await?;
        }
        Ok(())
    }

    /// Handles one delivery through the inbox, then acknowledges or dead-letters it.
    async fn process<H: InboxHandler + ?Sized>(
        &self,
        handler: &H,
        delivery: Delivery,
        dead_letters: &Channel,
        stop: &CancellationToken,
    ) -> Result<(), RabbitMqError> {
        let message = match incoming(&delivery) {
            Ok(message) => message,
            Err(problem) => {
                tracing::error!(inbox = %self.inbox.name(), routing_key = %delivery.routing_key, %problem, "dead-lettering a message without an id");
                self.dead_letter(&delivery, &problem, 0, dead_letters)
                    .await?;
                return self.ack(&delivery, |s| s.dead_lettered += 1).await;
            }
        };
        let mut delay = self.options.backoff;
        loop {
            match self.inbox.receive(handler, &message).await {
                Ok(Disposition::Handled) => return self.ack(&delivery, |s| s.handled += 1).await,
                Ok(Disposition::Duplicate) => {
                    return self.ack(&delivery, |s| s.duplicates += 1).await
                }
                Ok(Disposition::Failed { error, attempts }) => {
                    let error = error_text(&error);
                    tracing::error!(inbox = %self.inbox.name(), message_id = %message.message_id, attempts, %error, "handler failed on every attempt; dead-lettering the message");
                    self.dead_letter(&delivery, &error, attempts, dead_letters)
                        .await?;
                    return self.ack(&delivery, |s| s.dead_lettered += 1).await;
                }
                Err(error) => {
                    // The database is unreachable: keep the message, try again.
                    let reason = error.to_string();
                    tracing::warn!(inbox = %self.inbox.name(), message_id = %message.message_id, %reason, retry_in = ?delay, "inbox failed; retrying the message");
                    self.status.send_modify(|s| s.outage = Some(reason));
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        // Left unacknowledged: the broker delivers it again.
                        () = stop.cancelled() => return Ok(()),
                    }
                    delay = (delay * 2).min(self.options.max_backoff);
                }
            }
        }
    }

    /// Acknowledges `delivery`, then counts it.
    async fn ack(
        &self,
        delivery: &Delivery,
        count: impl FnOnce(&mut InboxStatus),
    ) -> Result<(), RabbitMqError> {
        let acked = delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| RabbitMqError::unavailable("acknowledge a message", e))?;
        if !acked {
            return Err(RabbitMqError::Interrupted {
                what: "the channel closed before a message was acknowledged (the broker delivers it again, and the inbox acknowledges it as a duplicate)".to_owned(),
            });
        }
        self.status.send_modify(|s| {
            count(s);
            s.outage = None;
        });
        Ok(())
    }

    /// Publishes a copy of `delivery`, with the failure headers added, to the dead-letter
    /// exchange, and waits for the broker's confirm.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        error: &str,
        attempts: u32,
        channel: &Channel,
    ) -> Result<(), RabbitMqError> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(failure_header::ERROR.into(), text_value(error));
        headers.insert(
            failure_header::ATTEMPTS.into(),
            text_value(attempts.to_string()),
        );
        headers.insert(failure_header::INBOX.into(), text_value(self.inbox.name()));
        let properties = delivery.properties.clone().with_headers(headers);
        let exchange = &self.topology.dead_letter_exchange;
        let operation = format!("dead-letter a message to exchange `{exchange}`");
        let confirmation = within(self.options.timeout, &operation, async {
            channel
                .basic_publish(
                    short("exchange", exchange)?,
                    delivery.routing_key.clone(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &delivery.data,
                    properties,
                )
                .await
                .map_err(|e| RabbitMqError::unavailable(&operation, e))?
                .await
                .map_err(|e| RabbitMqError::unavailable(&operation, e))
        })
        .await?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            // The session ends and the next one declares the dead-letter queue and its binding
            // again; the message, still unacknowledged, comes back.
            Confirmation::Ack(Some(_)) => Err(RabbitMqError::Interrupted {
                what: format!(
                    "could not {operation}: it routes to no queue (was queue `{}` deleted or unbound?)",
                    self.topology.dead_letter_queue
                ),
            }),
            Confirmation::Nack(_) | Confirmation::NotRequested => {
                Err(RabbitMqError::Interrupted {
                    what: format!("could not {operation}: the broker could not store it"),
                })
            }
        }
    }
}

/// The worker for a delivery: by its stream, so that a stream's messages stay in order.
fn worker_for(delivery: &Delivery, workers: usize) -> usize {
    if workers <= 1 {
        return 0;
    }
    let headers = delivery.properties.headers().as_ref();
    let key = headers
        .and_then(|h| h.inner().get(header::STREAM))
        .and_then(amqp::header_text)
        .or_else(|| {
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
        })
        .unwrap_or_default();
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % workers as u64) as usize
}

/// The message the inbox sees, or why there is none (no message id).
fn incoming(delivery: &Delivery) -> Result<IncomingMessage, String> {
    let headers = text_headers(delivery.properties.headers().as_ref());
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(ShortString::to_string)
        .filter(|id| !id.is_empty())
        .or_else(|| headers.get(header::MESSAGE_ID).cloned())
        .ok_or_else(|| {
            "the message has neither a message_id property nor a `message-id` header, so the inbox cannot deduplicate it; publish it with a message id (a relay sets the event id)".to_owned()
        })?;
    Ok(IncomingMessage {
        message_id,
        subject: delivery.routing_key.to_string(),
        headers,
        payload: delivery.data.clone(),
    })
}

/// An error with its sources, cut to [`MAX_ERROR_BYTES`].
fn error_text(error: &BoxError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    if text.len() > MAX_ERROR_BYTES {
        let mut end = MAX_ERROR_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_error_is_cut_on_a_character_boundary() {
        let error: BoxError = "é".repeat(MAX_ERROR_BYTES).into();
        let text = error_text(&error);
        assert!(text.len() <= MAX_ERROR_BYTES + '…'.len_utf8());
        assert!(text.ends_with('…'));
    }

    #[test]
    fn a_stream_always_goes_to_the_same_worker() {
        let delivery = |stream: &str| {
            let mut headers = FieldTable::default();
            headers.insert(header::STREAM.into(), text_value(stream));
            let mut delivery =
                Delivery::mock(1, "x".into(), "order.Placed".into(), false, Vec::new());
            delivery.properties = lapin::BasicProperties::default().with_headers(headers);
            delivery
        };
        for stream in ["order-1", "order-2", "order-3"] {
            assert_eq!(
                worker_for(&delivery(stream), 4),
                worker_for(&delivery(stream), 4)
            );
        }
        let spread: std::collections::HashSet<usize> = (0..64)
            .map(|n| worker_for(&delivery(&format!("order-{n}")), 4))
            .collect();
        assert_eq!(spread.len(), 4);
    }
}
