//! The relay's side: [`NatsPublisher`] publishes to JetStream and waits for each PubAck.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{HeaderMap, HeaderValue};
use async_trait::async_trait;
use eventsource_postgres::relay::{OutgoingMessage, PublishError, Publisher};
use tokio::sync::watch;

use crate::error::SetupError;
use crate::topology::{self, StreamSetup};
use crate::{subject, CONTENT_TYPE, JSON};

/// How a [`NatsPublisher`] connects and where it publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsPublisherOptions {
    /// The first token(s) of every subject: a message goes to
    /// `<subject_prefix>.<category>.<EventType>` (default `events`).
    pub subject_prefix: String,
    /// How long to wait for a message's PubAck, and for the client to take the message
    /// (default 5 s). A message not acknowledged in time is resent after the relay's backoff
    /// (with the same `Nats-Msg-Id`, so the stream stores it once).
    pub ack_timeout: Duration,
    /// How long connecting may take (default 5 s).
    pub connect_timeout: Duration,
    /// The connection's name, as the server's monitoring shows it (default
    /// `eventsource-relay`).
    pub connection_name: String,
}

impl Default for NatsPublisherOptions {
    fn default() -> Self {
        Self {
            subject_prefix: "events".to_owned(),
            ack_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            connection_name: "eventsource-relay".to_owned(),
        }
    }
}

/// Publishes a relay's messages to NATS JetStream, each with its PubAck awaited.
///
/// - Subject: `<subject_prefix>.<category>.<EventType>`. A JetStream stream must capture it
///   (`<subject_prefix>.>`): declare one with [`NatsPublisher::ensure_stream`] or
///   [`ensure_stream`](crate::ensure_stream).
/// - Headers: `Nats-Msg-Id` = the event id, so that JetStream drops a republished message
///   within the stream's duplicate window; every envelope header of
///   [`OutgoingMessage::headers`]; `Content-Type: application/json`. The body is the event's
///   JSON.
/// - Pipelining: all the messages of a call (a relay wave, at most one per stream) are sent
///   before any acknowledgement is awaited; then every PubAck is awaited.
/// - Connection: made on the first call; the client then reconnects by itself after an outage.
///   While it is disconnected, a call returns [`PublishError::Unavailable`] at once and the
///   relay retries after its backoff.
///
/// What is refused for good ([`PublishError::Refused`]: the relay parks the event as a dead
/// letter): what no retry can change —
/// - a message larger than the server's `max_payload` or the stream's `max_msg_size`, or
///   whose headers exceed the stream's limit;
/// - a subject NATS cannot publish to (an event type or category with whitespace, a wildcard
///   or an empty token);
/// - a header value with a line break (an actor or traceparent carrying `\r` or `\n`).
///
/// What is transient ([`PublishError::Unavailable`]: the relay waits and resends): a lost
/// connection, an acknowledgement not received in time, and every other JetStream error,
/// in particular **no stream capturing the subject** (NATS answers "no responders"). That one
/// is a deployment state, not a property of the message: the stream is not declared yet, is
/// being recreated, or JetStream is still recovering after a restart. Parking would turn a
/// missing stream into one dead letter per event; waiting keeps the feed in order and shows
/// the cause in [`RelayStatus::broker_outage`](eventsource_postgres::relay::RelayStatus) until
/// the stream exists. A full stream (storage or message limits with the discard-new policy)
/// is transient for the same reason.
pub struct NatsPublisher {
    url: String,
    options: NatsPublisherOptions,
    connection: Option<(async_nats::Client, jetstream::Context)>,
    /// Counts lost connections, so that acknowledgements that can no longer come are not
    /// awaited until their timeout.
    disconnects: Arc<watch::Sender<u64>>,
}

impl NatsPublisher {
    /// A publisher to the server at `url` (`nats://host:port`); it connects on first use.
    ///
    /// Fails only when the options cannot work (a subject prefix NATS cannot publish to, a zero
    /// timeout).
    pub fn new(url: impl Into<String>, options: NatsPublisherOptions) -> Result<Self, SetupError> {
        topology::check_prefix("the subject prefix", &options.subject_prefix)?;
        if options.ack_timeout.is_zero() || options.connect_timeout.is_zero() {
            return Err(SetupError::invalid(
                "NatsPublisherOptions: ack_timeout and connect_timeout must be more than zero",
            ));
        }
        Ok(Self {
            url: url.into(),
            options,
            connection: None,
            disconnects: Arc::new(watch::channel(0).0),
        })
    }

    /// The options.
    pub fn options(&self) -> &NatsPublisherOptions {
        &self.options
    }

    /// The subject `message` is published to.
    pub fn subject(&self, message: &OutgoingMessage) -> String {
        subject::for_message(&self.options.subject_prefix, message)
    }

    /// Declares the stream named `name` capturing `<subject_prefix>.>` when absent (see
    /// [`ensure_stream`](crate::ensure_stream)), with the server's default limits and a
    /// 2-minute duplicate window. Use [`ensure_stream`](crate::ensure_stream) with a
    /// [`StreamSetup`] for other settings.
    pub async fn ensure_stream(&mut self, name: &str) -> Result<(), SetupError> {
        let setup = StreamSetup::for_prefix(name, &self.options.subject_prefix);
        let jetstream = self.connect().await?;
        topology::ensure_stream(&jetstream, &setup).await?;
        Ok(())
    }

    /// The JetStream context, connecting first when there is no connection yet.
    async fn connect(&mut self) -> Result<jetstream::Context, SetupError> {
        if let Some((_, jetstream)) = &self.connection {
            return Ok(jetstream.clone());
        }
        let client = topology::connect(
            &self.url,
            &self.options.connection_name,
            self.options.connect_timeout,
            Some(self.disconnects.clone()),
        )
        .await?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(self.options.ack_timeout)
            .build(client.clone());
        self.connection = Some((client, jetstream.clone()));
        Ok(jetstream)
    }

    /// The headers and body of `message` for `subject`, or why it can never be published.
    fn prepare(&self, subject: &str, message: &OutgoingMessage) -> Result<PublishMessage, String> {
        subject::check(subject)?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, JSON);
        for (name, value) in message.headers() {
            let value: HeaderValue = value.parse().map_err(|_| {
                format!("the header {name} holds a line break, which NATS headers cannot carry")
            })?;
            headers.insert(name, value);
        }
        Ok(PublishMessage::build()
            .payload(message.payload.clone().into())
            .headers(headers)
            .message_id(message.message_id.to_string()))
    }
}

#[async_trait]
impl Publisher for NatsPublisher {
    fn destination(&self, message: &OutgoingMessage) -> String {
        self.subject(message)
    }

    async fn publish(&mut self, messages: &[OutgoingMessage]) -> Vec<Result<(), PublishError>> {
        let all_unavailable = |reason: &str| {
            messages
                .iter()
                .map(|_| Err(PublishError::unavailable(reason.to_owned())))
                .collect()
        };
        let mut disconnected = self.disconnects.subscribe();
        let jetstream = match self.connect().await {
            Ok(jetstream) => jetstream,
            Err(error) => return all_unavailable(&error.to_string()),
        };
        if let Some((client, _)) = &self.connection {
            if client.connection_state() != State::Connected {
                return all_unavailable(&format!(
                    "the connection to NATS at {} is down; the client is reconnecting",
                    self.url
                ));
            }
        }
        // Send every message of the wave, then await the acknowledgements.
        let mut sent: Vec<(String, Result<PublishAckFuture, PublishError>)> =
            Vec::with_capacity(messages.len());
        for message in messages {
            let subject = self.subject(message);
            let result = match self.prepare(&subject, message) {
                Ok(publish) => jetstream
                    .send_publish(subject.clone(), publish)
                    .await
                    .map_err(|e| classify(&subject, e)),
                Err(reason) => Err(PublishError::Refused(reason)),
            };
            sent.push((subject, result));
        }
        let acks = sent.into_iter().map(|(subject, sent)| async move {
            match sent {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| classify(&subject, e)),
                Err(error) => Err(error),
            }
        });
        tokio::select! {
            results = futures::future::join_all(acks) => results,
            _ = disconnected.changed() => all_unavailable(&format!(
                "the connection to NATS at {} was lost while awaiting PubAcks; the client is reconnecting",
                self.url
            )),
        }
    }
}

/// Sorts a JetStream publish error into refused for good or transient (see [`NatsPublisher`]).
fn classify(subject: &str, error: jetstream::context::PublishError) -> PublishError {
    match error.kind() {
        PublishErrorKind::MaxPayloadExceeded => PublishError::Refused(format!(
            "the message to {subject} is larger than the server's max_payload: {error}"
        )),
        PublishErrorKind::StreamNotFound => PublishError::unavailable(format!(
            "no JetStream stream captures the subject {subject} (no responders); declare one (NatsPublisher::ensure_stream) or fix the subject prefix"
        )),
        PublishErrorKind::TimedOut => PublishError::unavailable(format!(
            "no PubAck for {subject} in time: {error}"
        )),
        _ => {
            let code = error
                .source()
                .and_then(|source| source.downcast_ref::<jetstream::Error>())
                .map(jetstream::Error::error_code);
            match code {
                Some(ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)
                | Some(ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM) => PublishError::Refused(format!(
                    "the stream capturing {subject} refused the message as too large: {error}"
                )),
                _ => PublishError::unavailable(format!("publishing to {subject} failed: {error}")),
            }
        }
    }
}
