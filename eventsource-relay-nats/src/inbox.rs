//! The consuming side: [`NatsInbox`] reads a durable JetStream pull consumer into an
//! [`Inbox`], and dead-letters what the handler cannot handle.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind, ErrorCode};
use async_nats::HeaderMap;
use eventsource_postgres::inbox::{
    failure_header, Disposition, Inbox, InboxHandler, IncomingMessage,
};
use eventsource_postgres::relay::header;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::SetupError;
use crate::subject;
use crate::topology::{self, StreamSetup};

/// Where a [`NatsInbox`] reads, where it dead-letters, and how it retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsInboxOptions {
    /// The stream the consumer reads (the relay's stream). It must exist.
    pub stream: String,
    /// The durable consumer's name (one per consuming service; its position survives restarts).
    pub consumer: String,
    /// Which subjects of the stream the consumer takes (`events.order.>`; default: all).
    pub filter_subject: Option<String>,
    /// A failed message is copied to `<dead_letter_prefix>.<its subject>` (default `dlq`).
    pub dead_letter_prefix: String,
    /// The stream [`NatsInbox::ensure_topology`] declares for `<dead_letter_prefix>.>` (default
    /// `DLQ`).
    pub dead_letter_stream: String,
    /// How long the server waits for an acknowledgement before it delivers a message again
    /// (default 30 s). While the handler runs, the inbox extends it (progress acks).
    pub ack_wait: Duration,
    /// How many times the server delivers a message at most (default 20; -1: no limit). A
    /// message that still fails to be recorded (the database is down) on its last delivery is
    /// dead-lettered with that error rather than dropped unseen; one whose every delivery
    /// crashed the process is dropped by the server (which publishes a max-deliveries
    /// advisory).
    pub max_deliver: i64,
    /// Messages pulled per request, and held at most (default 100).
    pub batch: usize,
    /// Event streams handled at once (default 16): messages of one stream (header `stream`,
    /// else the subject) are handled one at a time in delivery order, those of different
    /// streams concurrently, each in its own transaction. 1 handles every message in turn.
    pub concurrency: usize,
    /// How long a message waits before it comes again when the inbox could not record it (the
    /// database is down) or could not dead-letter it (default 1 s); doubled per delivery, up to
    /// `max_requeue_delay`.
    pub requeue_delay: Duration,
    /// The longest such wait (default 30 s).
    pub max_requeue_delay: Duration,
    /// The first wait before reconnecting after a broker outage (default 100 ms); doubled per
    /// failure, up to `max_reconnect_backoff`.
    pub reconnect_backoff: Duration,
    /// The longest wait between two reconnection attempts (default 5 s).
    pub max_reconnect_backoff: Duration,
    /// How long connecting may take (default 5 s).
    pub connect_timeout: Duration,
    /// The connection's name, as the server's monitoring shows it (default `eventsource-inbox`).
    pub connection_name: String,
}

impl NatsInboxOptions {
    /// Reads the stream `stream` through the durable consumer `consumer`, with the defaults.
    pub fn new(stream: impl Into<String>, consumer: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            consumer: consumer.into(),
            filter_subject: None,
            dead_letter_prefix: "dlq".to_owned(),
            dead_letter_stream: "DLQ".to_owned(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 20,
            batch: 100,
            concurrency: 16,
            requeue_delay: Duration::from_secs(1),
            max_requeue_delay: Duration::from_secs(30),
            reconnect_backoff: Duration::from_millis(100),
            max_reconnect_backoff: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            connection_name: "eventsource-inbox".to_owned(),
        }
    }

    /// The same options taking only the subjects `filter` matches.
    pub fn with_filter_subject(mut self, filter: impl Into<String>) -> Self {
        self.filter_subject = Some(filter.into());
        self
    }

    /// The same options dead-lettering to `<prefix>.<subject>`, in the stream `stream`.
    pub fn with_dead_letters(
        mut self,
        prefix: impl Into<String>,
        stream: impl Into<String>,
    ) -> Self {
        self.dead_letter_prefix = prefix.into();
        self.dead_letter_stream = stream.into();
        self
    }

    fn check(&self) -> Result<(), SetupError> {
        for (what, name) in [("stream", &self.stream), ("consumer", &self.consumer)] {
            if name.is_empty()
                || name
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>'))
            {
                return Err(SetupError::invalid(format!(
                    "NatsInboxOptions: the {what} name {name:?} is empty or holds `.`, `*`, `>` or whitespace"
                )));
            }
        }
        topology::check_prefix("the dead-letter prefix", &self.dead_letter_prefix)?;
        if self.batch == 0
            || self.concurrency == 0
            || self.ack_wait.is_zero()
            || self.connect_timeout.is_zero()
        {
            return Err(SetupError::invalid(
                "NatsInboxOptions: batch, concurrency, ack_wait and connect_timeout must be more than zero",
            ));
        }
        Ok(())
    }

    fn consumer_config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(self.consumer.clone()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            filter_subject: self.filter_subject.clone().unwrap_or_default(),
            ..pull::Config::default()
        }
    }

    /// How long a message waits before its next delivery, after `delivered` deliveries.
    fn requeue_delay(&self, delivered: i64) -> Duration {
        let doublings = u32::try_from(delivered.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
        self.requeue_delay
            .saturating_mul(1 << doublings)
            .min(self.max_requeue_delay)
    }
}

/// What an inbox has done since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsInboxStatus {
    /// Whether it is reading from the consumer now.
    pub connected: bool,
    /// Messages handled (the handler's transaction committed), then acknowledged.
    pub handled: u64,
    /// Redelivered messages found already handled, acknowledged without running the handler.
    pub duplicates: u64,
    /// Messages copied to the dead-letter subject, then terminated.
    pub dead_lettered: u64,
    /// Messages given back to the server for a later delivery (database down, dead-letter
    /// stream unavailable).
    pub requeued: u64,
    /// Why the broker is unavailable now, while it is.
    pub broker_outage: Option<String>,
}

/// Consumes a JetStream stream through a durable pull consumer into an [`Inbox`]: each message
/// is handled exactly once in effect, then acknowledged.
///
/// For each message: [`Inbox::receive`] records its id and runs the handler in one PostgreSQL
/// transaction; then
/// - handled, or a duplicate (a redelivery of a handled message): ack;
/// - failed on every attempt ([`Disposition::Failed`]): the message is copied to
///   `<dead_letter_prefix>.<subject>` with its headers plus `inbox-error`, `inbox-attempts` and
///   `inbox` (JetStream PubAck awaited), then terminated (`AckKind::Term`) so that it never
///   comes again;
/// - the inbox could not reach the database ([`InboxError`](eventsource_postgres::inbox::InboxError)):
///   nak with a delay (it comes again), and the loop pauses as long before the next message.
///   On the last delivery `max_deliver` allows, the message is dead-lettered instead (with the
///   database error), so the server never drops it unseen.
///
/// Messages of one event stream (the header `stream`, else the subject) are handled one at a
/// time in delivery order; up to [`concurrency`](NatsInboxOptions::concurrency) streams at once.
///
/// The message id is the `Nats-Msg-Id` header (a relay sets it to the event id), else the
/// `message-id` header, else `<stream>:<stream sequence>`.
///
/// Topology ([`ensure_topology`](NatsInbox::ensure_topology)): the user provides the stream
/// to read (the relay's, see [`ensure_stream`](crate::ensure_stream)); the inbox declares the
/// durable consumer (explicit acks, `ack_wait`, `max_deliver`, the filter) and the dead-letter
/// stream capturing `<dead_letter_prefix>.>`.
pub struct NatsInbox {
    url: String,
    inbox: Inbox,
    options: NatsInboxOptions,
    status: watch::Sender<NatsInboxStatus>,
}

/// Why a session with the consumer could not open.
enum Open {
    /// The stream or consumer is missing at start: a misconfiguration, returned.
    Fatal(SetupError),
    /// The broker is unreachable or did not answer: retried with backoff.
    Transient(String),
}

impl NatsInbox {
    /// An inbox reading from the server at `url` (`nats://host:port`) per `options`, recording
    /// in `inbox` (whose name should be the consumer's). Fails only when the options cannot
    /// work.
    pub fn new(
        url: impl Into<String>,
        inbox: Inbox,
        options: NatsInboxOptions,
    ) -> Result<Self, SetupError> {
        options.check()?;
        let (status, _) = watch::channel(NatsInboxStatus::default());
        Ok(Self {
            url: url.into(),
            inbox,
            options,
            status,
        })
    }

    /// The options.
    pub fn options(&self) -> &NatsInboxOptions {
        &self.options
    }

    /// Watches what the inbox has done.
    pub fn status(&self) -> watch::Receiver<NatsInboxStatus> {
        self.status.subscribe()
    }

    /// Declares what the inbox needs, where absent: the dead-letter stream (capturing
    /// `<dead_letter_prefix>.>`, see [`StreamSetup::for_prefix`]) and the durable consumer on
    /// the stream to read (created, or updated to these options where the server allows).
    /// The stream to read must exist ([`SetupError::Missing`] otherwise).
    pub async fn ensure_topology(&self) -> Result<(), SetupError> {
        let client = self.connect().await?;
        let jetstream = jetstream::new(client);
        let dead_letters = StreamSetup::for_prefix(
            &self.options.dead_letter_stream,
            &self.options.dead_letter_prefix,
        );
        topology::ensure_stream(&jetstream, &dead_letters).await?;
        let stream = jetstream.get_stream(&self.options.stream).await.map_err(|e| {
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND) {
                SetupError::Missing {
                    what: format!("the stream {}", self.options.stream),
                }
            } else {
                SetupError::jetstream(format!("read the stream {}", self.options.stream), e)
            }
        })?;
        stream
            .create_consumer(self.options.consumer_config())
            .await
            .map_err(|e| {
                SetupError::jetstream(
                    format!(
                        "declare the durable consumer {} on the stream {}",
                        self.options.consumer, self.options.stream
                    ),
                    e,
                )
            })?;
        Ok(())
    }

    async fn connect(&self) -> Result<async_nats::Client, SetupError> {
        topology::connect(
            &self.url,
            &self.options.connection_name,
            self.options.connect_timeout,
            None,
        )
        .await
    }

    /// Runs until `shutdown` is cancelled (then `Ok`).
    ///
    /// Broker outages are waited out: the inbox reconnects with backoff and goes on from the
    /// consumer's position. It returns an error only when, at start, the stream or the consumer
    /// does not exist ([`SetupError::Missing`]: call [`ensure_topology`](Self::ensure_topology)).
    pub async fn run<H: InboxHandler>(
        &self,
        handler: &H,
        shutdown: CancellationToken,
    ) -> Result<(), SetupError> {
        let mut client: Option<async_nats::Client> = None;
        let mut opened_before = false;
        let mut delay = self.options.reconnect_backoff;
        loop {
            let opened = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                opened = self.open(&mut client, opened_before) => opened,
            };
            let ended = match opened {
                Err(Open::Fatal(error)) => return Err(error),
                Err(Open::Transient(reason)) => reason,
                Ok((jetstream, messages)) => {
                    opened_before = true;
                    delay = self.options.reconnect_backoff;
                    self.status.send_modify(|s| {
                        s.connected = true;
                        s.broker_outage = None;
                    });
                    // Cancelling mid-message is safe: its transaction rolls back or has
                    // committed, and an unacknowledged message comes again.
                    match self.session(&jetstream, messages, handler, &shutdown).await {
                        Some(reason) => reason,
                        None => return Ok(()),
                    }
                }
            };
            tracing::warn!(inbox = %self.inbox.name(), reason = %ended, retry_in = ?delay, "NATS consumer unavailable; reconnecting");
            self.status.send_modify(|s| {
                s.connected = false;
                s.broker_outage = Some(ended);
            });
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
            delay = delay
                .saturating_mul(2)
                .min(self.options.max_reconnect_backoff);
        }
    }

    /// Handles the messages of one pull session until the stream fails (returns why) or
    /// `shutdown` (returns `None`).
    ///
    /// Messages of one event stream (the header `stream`, else the subject) are handled one at a
    /// time, in delivery order; up to `concurrency` event streams at once. At most `batch`
    /// messages are held (handled or waiting for their stream's turn) before pulling more.
    async fn session<H: InboxHandler>(
        &self,
        jetstream: &jetstream::Context,
        mut messages: pull::Stream,
        handler: &H,
        shutdown: &CancellationToken,
    ) -> Option<String> {
        let mut in_flight = FuturesUnordered::new();
        let mut waiting: HashMap<String, VecDeque<jetstream::Message>> = HashMap::new();
        let mut held = 0usize;
        loop {
            let can_pull = held < self.options.batch.max(self.options.concurrency)
                && in_flight.len() < self.options.concurrency.max(1);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return None,
                Some(key) = in_flight.next(), if !in_flight.is_empty() => {
                    held -= 1;
                    let next = waiting.get_mut(&key).and_then(VecDeque::pop_front);
                    match next {
                        Some(message) => in_flight.push(self.process_in_turn(jetstream, handler, message, key, shutdown)),
                        None => {
                            waiting.remove(&key);
                        }
                    }
                }
                next = messages.next(), if can_pull => match next {
                    Some(Ok(message)) => {
                        held += 1;
                        let key = order_key(&message);
                        match waiting.get_mut(&key) {
                            Some(queue) => queue.push_back(message),
                            None => {
                                waiting.insert(key.clone(), VecDeque::new());
                                in_flight.push(self.process_in_turn(jetstream, handler, message, key, shutdown));
                            }
                        }
                    }
                    Some(Err(error)) => return Some(format!("reading the consumer failed: {error}")),
                    None => return Some("the consumer's message stream ended".to_owned()),
                },
            }
        }
    }

    /// [`process`](Self::process), then hands back the message's order key.
    async fn process_in_turn<H: InboxHandler>(
        &self,
        jetstream: &jetstream::Context,
        handler: &H,
        message: jetstream::Message,
        key: String,
        shutdown: &CancellationToken,
    ) -> String {
        self.process(jetstream, handler, message, shutdown).await;
        key
    }

    /// Connects (unless connected) and opens a pull on the durable consumer.
    async fn open(
        &self,
        client: &mut Option<async_nats::Client>,
        opened_before: bool,
    ) -> Result<(jetstream::Context, pull::Stream), Open> {
        let connected = match client {
            Some(client) => client.clone(),
            None => {
                let connected = self
                    .connect()
                    .await
                    .map_err(|e| Open::Transient(e.to_string()))?;
                *client = Some(connected.clone());
                connected
            }
        };
        let jetstream = jetstream::new(connected);
        let consumer: jetstream::consumer::Consumer<pull::Config> = jetstream
            .get_consumer_from_stream(&self.options.consumer, &self.options.stream)
            .await
            .map_err(|e| {
                let missing = matches!(e.kind(), jetstream::stream::ConsumerErrorKind::JetStream(ref e)
                    if e.error_code() == ErrorCode::CONSUMER_NOT_FOUND || e.error_code() == ErrorCode::STREAM_NOT_FOUND);
                let what = format!(
                    "the durable consumer {} on the stream {}",
                    self.options.consumer, self.options.stream
                );
                if missing && !opened_before {
                    Open::Fatal(SetupError::Missing { what })
                } else {
                    Open::Transient(format!("reading {what} failed: {e}"))
                }
            })?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.options.batch)
            .messages()
            .await
            .map_err(|e| {
                Open::Transient(format!(
                    "pulling from the consumer {} failed: {e}",
                    self.options.consumer
                ))
            })?;
        Ok((jetstream, messages))
    }

    /// Handles one message and acknowledges, dead-letters or requeues it.
    async fn process<H: InboxHandler>(
        &self,
        jetstream: &jetstream::Context,
        handler: &H,
        message: jetstream::Message,
        shutdown: &CancellationToken,
    ) {
        let incoming = incoming_message(&message);
        let delivered = message.info().map(|info| info.delivered).unwrap_or(1);
        let last_delivery = self.options.max_deliver > 0 && delivered >= self.options.max_deliver;
        let outcome = {
            // Keep the message ours while the handler (and its retries) run.
            let receive = self.inbox.receive(handler, &incoming);
            tokio::pin!(receive);
            let every = (self.options.ack_wait / 3).max(Duration::from_millis(100));
            let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    outcome = &mut receive => break outcome,
                    _ = progress.tick() => {
                        if let Err(error) = message.ack_with(AckKind::Progress).await {
                            tracing::debug!(inbox = %self.inbox.name(), %error, "progress ack failed");
                        }
                    }
                }
            }
        };
        let inbox = self.inbox.name();
        let message_id = incoming.message_id.as_str();
        match outcome {
            Ok(Disposition::Handled) => {
                self.ack(&message, AckKind::Ack, message_id).await;
                self.status.send_modify(|s| s.handled += 1);
            }
            Ok(Disposition::Duplicate) => {
                self.ack(&message, AckKind::Ack, message_id).await;
                self.status.send_modify(|s| s.duplicates += 1);
            }
            Ok(Disposition::Failed { error, attempts }) => {
                let error = error.to_string();
                tracing::error!(inbox, message_id, %error, attempts, "handler failed on every attempt; dead-lettering the message");
                self.dead_letter_or_requeue(
                    jetstream, &message, &incoming, &error, attempts, delivered,
                )
                .await;
            }
            Err(error) if last_delivery => {
                tracing::error!(inbox, message_id, %error, delivered, "the inbox cannot record the message and this is its last delivery; dead-lettering it");
                self.dead_letter_or_requeue(
                    jetstream,
                    &message,
                    &incoming,
                    &error.to_string(),
                    0,
                    delivered,
                )
                .await;
            }
            Err(error) => {
                let delay = self.options.requeue_delay(delivered);
                tracing::warn!(inbox, message_id, %error, retry_in = ?delay, "the inbox cannot record the message; it comes again later");
                self.ack(&message, AckKind::Nak(Some(delay)), message_id)
                    .await;
                self.status.send_modify(|s| s.requeued += 1);
                // The next message would meet the same database: wait as long.
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }

    /// Copies `message` to its dead-letter subject, then terminates it; when the copy fails,
    /// gives it back for a later delivery instead.
    async fn dead_letter_or_requeue(
        &self,
        jetstream: &jetstream::Context,
        message: &jetstream::Message,
        incoming: &IncomingMessage,
        error: &str,
        attempts: u32,
        delivered: i64,
    ) {
        let message_id = incoming.message_id.as_str();
        match self
            .dead_letter(jetstream, message, incoming, error, attempts)
            .await
        {
            Ok(()) => {
                self.ack(message, AckKind::Term, message_id).await;
                self.status.send_modify(|s| s.dead_lettered += 1);
            }
            Err(reason) => {
                let delay = self.options.requeue_delay(delivered);
                tracing::error!(inbox = %self.inbox.name(), message_id, %reason, retry_in = ?delay, "cannot dead-letter the message; it comes again later");
                self.ack(message, AckKind::Nak(Some(delay)), message_id)
                    .await;
                self.status.send_modify(|s| s.requeued += 1);
            }
        }
    }

    /// Publishes a copy of `message` to `<dead_letter_prefix>.<subject>` with the failure
    /// headers, and waits for its PubAck.
    async fn dead_letter(
        &self,
        jetstream: &jetstream::Context,
        message: &jetstream::Message,
        incoming: &IncomingMessage,
        error: &str,
        attempts: u32,
    ) -> Result<(), String> {
        let subject = subject::dead_letter(&self.options.dead_letter_prefix, &incoming.subject);
        let mut headers = HeaderMap::new();
        if let Some(original) = &message.headers {
            for (name, values) in original.iter() {
                // Expectations of the original publish would fail on the dead-letter stream.
                let name_text: &str = name.as_ref();
                if name_text.starts_with("Nats-Expected") || name_text == NATS_MSG_ID {
                    continue;
                }
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        headers.insert(failure_header::ERROR, one_line(error));
        headers.insert(failure_header::ATTEMPTS, attempts.to_string());
        headers.insert(failure_header::INBOX, one_line(self.inbox.name()));
        // Per inbox, so that inboxes sharing a dead-letter stream do not drop each other's copy;
        // a copy sent again (after a crash before the Term) is dropped by the stream.
        let id = one_line(&format!("{}:{}", self.inbox.name(), incoming.message_id));
        let publish = PublishMessage::build()
            .payload(message.payload.clone())
            .headers(headers)
            .message_id(id);
        let ack = jetstream
            .send_publish(subject.clone(), publish)
            .await
            .map_err(|e| format!("publishing to {subject} failed: {e}"))?;
        ack.await.map_err(|e| {
            format!("no PubAck for {subject}: {e}; is there a stream capturing it (NatsInbox::ensure_topology declares one)?")
        })?;
        Ok(())
    }

    async fn ack(&self, message: &jetstream::Message, kind: AckKind, message_id: &str) {
        if let Err(error) = message.ack_with(kind).await {
            // The server delivers it again after ack_wait; the inbox then finds it recorded.
            tracing::warn!(inbox = %self.inbox.name(), message_id, %error, "acknowledgement failed; the message will come again");
        }
    }
}

/// A JetStream message as the inbox sees it: the message id (`Nats-Msg-Id`, else the header
/// `message-id`, else `<stream>:<stream sequence>`), the subject, the headers (the last value
/// of each) and the body.
pub fn incoming_message(message: &jetstream::Message) -> IncomingMessage {
    let mut headers = BTreeMap::new();
    if let Some(map) = &message.headers {
        for (name, values) in map.iter() {
            if let Some(value) = values.last() {
                headers.insert(name.to_string(), value.as_str().to_owned());
            }
        }
    }
    let message_id = headers
        .get(NATS_MSG_ID)
        .or_else(|| headers.get(header::MESSAGE_ID))
        .cloned()
        .unwrap_or_else(|| match message.info() {
            Ok(info) => format!("{}:{}", info.stream, info.stream_sequence),
            // Not a JetStream delivery: an id never seen, so the message is handled (at least
            // once) rather than taken for another.
            Err(_) => uuid::Uuid::now_v7().to_string(),
        });
    IncomingMessage {
        message_id,
        subject: message.subject.to_string(),
        headers,
        payload: message.payload.to_vec(),
    }
}

/// What orders a message among others: its event stream (header `stream`), else its subject.
fn order_key(message: &jetstream::Message) -> String {
    message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(header::STREAM))
        .map(|stream| stream.as_str().to_owned())
        .unwrap_or_else(|| message.subject.to_string())
}

/// JetStream's deduplication header.
const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// `text` without line breaks (NATS header values cannot carry them).
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}
