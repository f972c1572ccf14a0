//! The message a relay hands to a broker, and the headers every message carries.

use chrono::{DateTime, SecondsFormat, Utc};
use eventsource_core::{FeedPosition, RecordedEvent};
use uuid::Uuid;

use super::mapping::IntegrationEvent;

/// Header names, the same on every broker, so that a consumer needs none of our code (nor our
/// database) to read an event's envelope. Values are text.
pub mod header {
    /// The message id: the event's id. Deduplicate by it.
    pub const MESSAGE_ID: &str = "message-id";
    /// The integration event's name.
    pub const EVENT_TYPE: &str = "event-type";
    /// The integration event's schema version.
    pub const EVENT_VERSION: &str = "event-version";
    /// The stream the event was recorded in (`category-id`).
    pub const STREAM: &str = "stream";
    /// The stream's category.
    pub const CATEGORY: &str = "category";
    /// The event's version in its stream.
    pub const STREAM_VERSION: &str = "stream-version";
    /// The event's position in the global feed (`transaction/position`).
    pub const FEED_POSITION: &str = "feed-position";
    /// The correlation id of the business transaction.
    pub const CORRELATION_ID: &str = "correlation-id";
    /// The id of the command or event that caused the event.
    pub const CAUSATION_ID: &str = "causation-id";
    /// Who acted.
    pub const ACTOR: &str = "actor";
    /// When the event was recorded (RFC 3339, UTC).
    pub const RECORDED_AT: &str = "recorded-at";
    /// The W3C trace context, when the event carried one (its metadata header `traceparent`).
    pub const TRACEPARENT: &str = "traceparent";
}

/// One integration event on its way to a broker, with its envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    /// The message id: the event's id.
    pub message_id: Uuid,
    /// The integration event's name.
    pub event_type: String,
    /// The integration event's schema version.
    pub event_version: u32,
    /// The stream's category (the first part of a routing key, subject or Kafka topic).
    pub category: String,
    /// The stream (`category-id`): the Kafka key, so that a stream stays in one partition.
    pub stream: String,
    /// The event's version in its stream.
    pub stream_version: u64,
    /// The event's position in the global feed.
    pub position: FeedPosition,
    /// The correlation id.
    pub correlation_id: Option<Uuid>,
    /// The causation id.
    pub causation_id: Option<Uuid>,
    /// Who acted.
    pub actor: Option<String>,
    /// When the event was recorded.
    pub recorded_at: DateTime<Utc>,
    /// The W3C `traceparent` the event carried in its metadata headers.
    pub traceparent: Option<String>,
    /// The JSON body.
    pub payload: Vec<u8>,
}

impl OutgoingMessage {
    /// The message for `event`, published as `public`.
    pub fn new(event: &RecordedEvent, public: &IntegrationEvent) -> Self {
        let metadata = &event.metadata;
        Self {
            message_id: event.event_id,
            event_type: public.name.clone(),
            event_version: public.version,
            category: event.stream_id.category().as_str().to_owned(),
            stream: event.stream_id.to_string(),
            stream_version: event.version.get(),
            position: event.position,
            correlation_id: metadata.correlation_id,
            causation_id: metadata.causation_id,
            actor: metadata.actor.clone(),
            recorded_at: event.recorded_at,
            traceparent: metadata.headers.get(header::TRACEPARENT).cloned(),
            // A `Value` always serializes: its keys are strings and its numbers finite.
            payload: serde_json::to_vec(&public.payload).unwrap_or_default(),
        }
    }

    /// `<category>.<event type>`: the RabbitMQ routing key, and the NATS subject after its
    /// prefix.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.category, self.event_type)
    }

    /// The envelope as header name and value pairs (names from [`header`]); absent values are
    /// left out.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            (header::MESSAGE_ID, self.message_id.to_string()),
            (header::EVENT_TYPE, self.event_type.clone()),
            (header::EVENT_VERSION, self.event_version.to_string()),
            (header::STREAM, self.stream.clone()),
            (header::CATEGORY, self.category.clone()),
            (header::STREAM_VERSION, self.stream_version.to_string()),
            (header::FEED_POSITION, self.position.to_string()),
            (
                header::RECORDED_AT,
                self.recorded_at
                    .to_rfc3339_opts(SecondsFormat::Micros, true),
            ),
        ];
        let optional = [
            (
                header::CORRELATION_ID,
                self.correlation_id.map(|id| id.to_string()),
            ),
            (
                header::CAUSATION_ID,
                self.causation_id.map(|id| id.to_string()),
            ),
            (header::ACTOR, self.actor.clone()),
            (header::TRACEPARENT, self.traceparent.clone()),
        ];
        headers.extend(
            optional
                .into_iter()
                .filter_map(|(name, value)| value.map(|value| (name, value))),
        );
        headers
    }
}
