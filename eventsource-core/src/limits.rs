//! Limits on appended data, checked before anything reaches a store.

use std::collections::HashSet;

use crate::error::ValidationError;
use crate::event::NewEvent;
use crate::event_store::StreamAppend;
use crate::expected_version::ExpectedVersion;
use crate::json_nesting::{self, MAX_READ_DEPTH};
use crate::stream_id::StreamId;

/// Size limits a store enforces on appends. Both stores refuse input past them with a typed
/// [`ValidationError`] before touching storage, so a store never holds what its readers cannot
/// read back.
///
/// ```
/// use eventsource_core::Limits;
/// let limits = Limits::default().with_max_payload_bytes(256 * 1024).with_max_json_depth(32);
/// assert_eq!(limits.max_payload_bytes, 256 * 1024);
/// assert_eq!(limits.max_append_bytes, 32 * 1024 * 1024);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// The largest encoded JSON payload of one event, in bytes (default 1 MiB).
    pub max_payload_bytes: usize,
    /// The most events one append may carry (default 10,000).
    pub max_events_per_append: usize,
    /// The deepest nesting of arrays and objects in a payload (default 64; at most
    /// [`MAX_READ_DEPTH`], the deepest a reader accepts).
    pub max_json_depth: usize,
    /// The largest encoded metadata (correlation, causation, actor, headers) of one event, in
    /// bytes (default 64 KiB).
    pub max_metadata_bytes: usize,
    /// The longest event type name, in bytes (default 256).
    pub max_event_type_bytes: usize,
    /// The most bytes one append may carry: payloads, metadata and type names together
    /// (default 32 MiB).
    pub max_append_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1024 * 1024,
            max_events_per_append: 10_000,
            max_json_depth: 64,
            max_metadata_bytes: 64 * 1024,
            max_event_type_bytes: 256,
            max_append_bytes: 32 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// The same limits with another payload size limit.
    pub fn with_max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    /// The same limits with another event count limit per append.
    pub fn with_max_events_per_append(mut self, events: usize) -> Self {
        self.max_events_per_append = events;
        self
    }

    /// The same limits with another payload nesting limit (lowered to [`MAX_READ_DEPTH`]).
    pub fn with_max_json_depth(mut self, depth: usize) -> Self {
        self.max_json_depth = depth;
        self
    }

    /// The same limits with another metadata size limit.
    pub fn with_max_metadata_bytes(mut self, bytes: usize) -> Self {
        self.max_metadata_bytes = bytes;
        self
    }

    /// The same limits with another type name length limit.
    pub fn with_max_event_type_bytes(mut self, bytes: usize) -> Self {
        self.max_event_type_bytes = bytes;
        self
    }

    /// The same limits with another size limit for a whole append.
    pub fn with_max_append_bytes(mut self, bytes: usize) -> Self {
        self.max_append_bytes = bytes;
        self
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
    /// Refuses: more events than allowed, an empty or overlong type name, a schema version
    /// outside `1..=i32::MAX`, a payload nested too deep or over the size limit, metadata over
    /// its limit, an append over its byte limit, an event id given twice, U+0000 in a type
    /// name, actor, header or payload string, and an exact expected version that the events
    /// would push past the version range.
    ///
    /// The payload's depth is measured first, without recursion: the checks after it walk the
    /// payload recursively, which is only safe once its depth is bounded.
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
        let max_depth = self.max_json_depth.min(MAX_READ_DEPTH);
        let mut append_bytes = 0usize;
        let mut ids = HashSet::with_capacity(events.len());
        let mut encoded = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            if event.event_type.is_empty() {
                return Err(ValidationError::EmptyEventType { index });
            }
            if event.event_type.len() > self.max_event_type_bytes {
                return Err(ValidationError::EventTypeTooLong {
                    index,
                    len: event.event_type.len(),
                    limit: self.max_event_type_bytes,
                });
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
            let shape = json_nesting::inspect(&event.payload, max_depth);
            if shape.depth > max_depth {
                return Err(ValidationError::PayloadTooDeep {
                    event_type: event.event_type.clone(),
                    limit: max_depth,
                });
            }
            if shape.has_nul {
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
            if metadata_json.len() > self.max_metadata_bytes {
                return Err(ValidationError::MetadataTooLarge {
                    event_type: event.event_type.clone(),
                    size: metadata_json.len(),
                    limit: self.max_metadata_bytes,
                });
            }
            append_bytes = append_bytes
                .saturating_add(payload_json.len())
                .saturating_add(metadata_json.len())
                .saturating_add(event.event_type.len());
            if append_bytes > self.max_append_bytes {
                return Err(ValidationError::AppendTooLarge {
                    events: events.len(),
                    size_so_far: append_bytes,
                    limit: self.max_append_bytes,
                });
            }
            encoded.push(EncodedEvent {
                event,
                payload_json,
                metadata_json,
            });
        }
        Ok(encoded)
    }

    /// Checks an append to several streams and encodes its events (one list per stream, in the
    /// order given). Every store's [`append_to_streams`](crate::EventAppender::append_to_streams)
    /// calls this first.
    ///
    /// Each stream's events are checked as by [`check_append`](Self::check_append); besides,
    /// the limits on events and bytes per append apply to all the streams' events together, a
    /// stream may appear only once and an event id only once in the whole append.
    pub fn check_multi_append<'a>(
        &self,
        appends: &'a [StreamAppend],
    ) -> Result<Vec<Vec<EncodedEvent<'a>>>, ValidationError> {
        let count = appends
            .iter()
            .fold(0usize, |n, a| n.saturating_add(a.events.len()));
        if count > self.max_events_per_append {
            return Err(ValidationError::TooManyEvents {
                count,
                limit: self.max_events_per_append,
            });
        }
        let mut streams = HashSet::with_capacity(appends.len());
        let mut ids = HashSet::with_capacity(count);
        let mut append_bytes = 0usize;
        let mut encoded = Vec::with_capacity(appends.len());
        for append in appends {
            if !streams.insert(&append.stream) {
                return Err(ValidationError::StreamGivenTwice {
                    stream: append.stream.clone(),
                });
            }
            let checked = self.check_append(&append.stream, append.expected, &append.events)?;
            for event in &checked {
                if !ids.insert(event.event.event_id) {
                    return Err(ValidationError::DuplicateEventId {
                        event_id: event.event.event_id,
                    });
                }
                append_bytes = append_bytes
                    .saturating_add(event.payload_json.len())
                    .saturating_add(event.metadata_json.len())
                    .saturating_add(event.event.event_type.len());
            }
            if append_bytes > self.max_append_bytes {
                return Err(ValidationError::AppendTooLarge {
                    events: count,
                    size_so_far: append_bytes,
                    limit: self.max_append_bytes,
                });
            }
            encoded.push(checked);
        }
        Ok(encoded)
    }
}
