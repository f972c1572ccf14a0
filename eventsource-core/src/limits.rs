//! Limits on appended data, checked before anything reaches a store.

use std::collections::HashSet;

use crate::error::ValidationError;
use crate::event::NewEvent;
use crate::expected_version::ExpectedVersion;
use crate::stream_id::StreamId;

/// Size limits a store enforces on appends. Both stores refuse input past them with a typed
/// [`ValidationError`] before touching storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest encoded JSON payload of one event, in bytes (default 1 MiB).
    pub max_payload_bytes: usize,
    /// The most events one append may carry (default 10,000).
    pub max_events_per_append: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1024 * 1024,
            max_events_per_append: 10_000,
        }
    }
}

/// An event checked against the limits, with its payload and metadata encoded as JSON text.
#[derive(Debug)]
pub struct EncodedEvent<'a> {
    /// The event as given.
    pub event: &'a NewEvent,
    /// `event.payload` as JSON text.
    pub payload_json: String,
    /// `event.metadata` as JSON text.
    pub metadata_json: String,
}

impl Limits {
    /// Checks an append and encodes its events. Every store calls this first.
    ///
    /// Refuses: more events than allowed, an empty type name, a schema version outside
    /// `1..=i32::MAX`, a payload over the limit, an event id given twice, U+0000 in a type name,
    /// actor, header or payload string, and an exact expected version that the events would
    /// push past the version range.
    pub fn check_append<'a>(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &'a [NewEvent],
    ) -> Result<Vec<EncodedEvent<'a>>, ValidationError> {
        if events.len() > self.max_events_per_append {
            return Err(ValidationError::TooManyEvents {
                count: events.len(),
                limit: self.max_events_per_append,
            });
        }
        if let ExpectedVersion::Exact(after) = expected {
            if after.checked_add(events.len() as u64).is_none() {
                return Err(ValidationError::VersionOverflow {
                    stream: stream.clone(),
                    after,
                    count: events.len(),
                });
            }
        }
        let mut ids = HashSet::with_capacity(events.len());
        let mut encoded = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            if event.event_type.is_empty() {
                return Err(ValidationError::EmptyEventType { index });
            }
            if event.schema_version == 0 || i32::try_from(event.schema_version).is_err() {
                return Err(ValidationError::SchemaVersionOutOfRange {
                    event_type: event.event_type.clone(),
                    schema_version: event.schema_version,
                });
            }
            if !ids.insert(event.event_id) {
                return Err(ValidationError::DuplicateEventId {
                    event_id: event.event_id,
                });
            }
            let metadata = &event.metadata;
            let nul_in = if event.event_type.contains('\0') {
                Some("type name")
            } else if metadata.actor.as_deref().is_some_and(|a| a.contains('\0')) {
                Some("actor")
            } else if metadata
                .headers
                .iter()
                .any(|(k, v)| k.contains('\0') || v.contains('\0'))
            {
                Some("header")
            } else {
                None
            };
            if let Some(field) = nul_in {
                return Err(ValidationError::NulInEventText {
                    event_type: event.event_type.clone(),
                    field,
                });
            }
            if contains_nul(&event.payload) {
                return Err(ValidationError::NulInPayload {
                    event_type: event.event_type.clone(),
                });
            }
            // Display of a serde_json::Value is its JSON text and cannot fail.
            let payload_json = event.payload.to_string();
            if payload_json.len() > self.max_payload_bytes {
                return Err(ValidationError::PayloadTooLarge {
                    event_type: event.event_type.clone(),
                    size: payload_json.len(),
                    limit: self.max_payload_bytes,
                });
            }
            let metadata_json = serde_json::to_string(&event.metadata).map_err(|e| {
                ValidationError::MetadataEncoding {
                    index,
                    reason: e.to_string(),
                }
            })?;
            encoded.push(EncodedEvent {
                event,
                payload_json,
                metadata_json,
            });
        }
        Ok(encoded)
    }
}

/// Whether any string or key in `value` holds U+0000, which PostgreSQL `jsonb` cannot store.
fn contains_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}
