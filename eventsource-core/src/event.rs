//! Events on their way into a store ([`NewEvent`]) and out of it ([`RecordedEvent`]).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain_event::{DecodeError, DomainEvent, EncodeError};
use crate::error::StoreError;
use crate::metadata::EventMetadata;
use crate::position::{FeedPosition, GlobalPosition};
use crate::stream_id::StreamId;
use crate::version::StreamVersion;

/// An event to append: its id, type, schema version, JSON payload and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Unique id (UUID v7 by default). Appending an id again is an idempotent no-op.
    pub event_id: Uuid,
    /// The stable type name.
    pub event_type: String,
    /// The schema version of the payload (1 or more).
    pub schema_version: u32,
    /// The event's own data.
    pub payload: serde_json::Value,
    /// Correlation, causation, actor and headers.
    pub metadata: EventMetadata,
}

impl NewEvent {
    /// Builds a new event with a fresh UUID v7 id.
    pub fn new(
        event_type: impl Into<String>,
        schema_version: u32,
        payload: serde_json::Value,
        metadata: EventMetadata,
    ) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version,
            payload,
            metadata,
        }
    }

    /// Encodes a domain event with a fresh UUID v7 id.
    ///
    /// The payload is decoded back once before it is accepted: an event whose encoding does not
    /// read back (an `f64` holding NaN encodes as `null`) is refused with
    /// [`EncodeError::NotReadBack`], so it never reaches a store where its stream would no
    /// longer load.
    pub fn from_domain<E: DomainEvent>(
        event: &E,
        metadata: EventMetadata,
    ) -> Result<Self, EncodeError> {
        let event_type = event.event_type();
        let schema_version = event.schema_version();
        let payload = event.encode()?;
        if let Err(source) = E::decode(event_type, schema_version, &payload) {
            return Err(EncodeError::NotReadBack { event_type, source });
        }
        Ok(Self::new(event_type, schema_version, payload, metadata))
    }
}

/// An event as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// The event's unique id.
    pub event_id: Uuid,
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// Its version within the stream (1, 2, 3... with no gaps).
    pub version: StreamVersion,
    /// Its place in the global feed.
    pub position: FeedPosition,
    /// The stable type name.
    pub event_type: String,
    /// The payload's schema version.
    pub schema_version: u32,
    /// The event's own data.
    pub payload: serde_json::Value,
    /// Correlation, causation, actor and headers.
    pub metadata: EventMetadata,
    /// When the store recorded it (database time).
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    /// The event's global (insert) position.
    pub fn global_position(&self) -> GlobalPosition {
        self.position.global_position
    }

    /// Decodes the payload into a domain event. A failure names the stream, version and type.
    pub fn decode<E: DomainEvent>(&self) -> Result<E, StoreError> {
        E::decode(&self.event_type, self.schema_version, &self.payload)
            .map_err(|source| self.decode_error(source))
    }

    /// Wraps a decoding failure of this event with its stream and version.
    pub fn decode_error(&self, source: DecodeError) -> StoreError {
        StoreError::Decode {
            stream: self.stream_id.clone(),
            version: self.version,
            source,
        }
    }
}
